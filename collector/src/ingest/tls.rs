//! TLS for ingest: rustls server config requiring client certificates signed
//! by the fleet CA (optionally checked against a CRL), and the accept loop
//! that performs handshakes, reads the sensor identity from the verified
//! certificate and hands established connections to the gRPC server.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::identity::{identity_from_der, SensorIdentity};
use crate::metrics::IngestMetrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {path} contains no PEM item of the expected kind")]
    Empty { what: &'static str, path: String },
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client verifier configuration: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Paths of the TLS material ingest needs.
#[derive(Debug, Clone)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: &'a Path,
    pub crl: Option<&'a Path>,
}

fn certs(what: &'static str, p: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let v: Vec<_> = CertificateDer::pem_file_iter(p)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Read {
            what,
            path: p.display().to_string(),
            source,
        })?;
    if v.is_empty() {
        return Err(TlsSetupError::Empty {
            what,
            path: p.display().to_string(),
        });
    }
    Ok(v)
}

/// Builds the rustls server config: TLS 1.2/1.3, ALPN h2, client certificate
/// required and verified against the fleet CA and the CRL.
pub fn server_config(files: &TlsFiles<'_>) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("server certificate", files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|source| TlsSetupError::Read {
        what: "server key",
        path: files.key.display().to_string(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("client CA", files.client_ca)? {
        roots.add(ca)?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl_path) = files.crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(crl_path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsSetupError::Read {
                    what: "CRL",
                    path: crl_path.display().to_string(),
                    source,
                })?;
        if crls.is_empty() {
            return Err(TlsSetupError::Empty {
                what: "CRL",
                path: crl_path.display().to_string(),
            });
        }
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Who is on the other end of a connection; inserted into every request's
/// extensions by tonic.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub identity: SensorIdentity,
}

/// An established, authenticated connection. Holds its places under the
/// connection limits ([`AcceptLimits`]) until it is dropped.
pub struct SensorConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    _slots: ConnSlots,
}

/// Bounds on what the accept loop takes on.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// TLS handshakes in progress at once.
    pub handshakes: usize,
    pub handshake_timeout: Duration,
    /// Authenticated connections open at once.
    pub connections: usize,
    /// Authenticated connections of one sensor open at once.
    pub per_sensor: usize,
}

/// Open connections per sensor, shared by the accept loop and the
/// connections themselves.
type PerSensor = Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// A connection's places under the limits: released when it closes.
struct ConnSlots {
    _total: tokio::sync::OwnedSemaphorePermit,
    per_sensor: PerSensor,
    sensor: String,
    metrics: Arc<IngestMetrics>,
}

impl Drop for ConnSlots {
    fn drop(&mut self) {
        let mut m = self.per_sensor.lock().expect("connection map lock");
        if let Some(n) = m.get_mut(&self.sensor) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.sensor);
            }
        }
        self.metrics.connections_open.add(-1.0);
    }
}

impl Connected for SensorConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for SensorConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SensorConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, runs the TLS handshake (bounded in time and in
/// number: a connection beyond `limits.handshakes` is closed at once) and
/// forwards authenticated connections within the connection limits (in
/// total and per sensor; one beyond them is closed, the sensor reconnects
/// with backoff). Refusals are counted and logged with the peer address and
/// the reason (no certificate, unknown CA, expired, revoked, not TLS at all,
/// a limit, ...). Returns when `conns` is closed.
pub async fn accept_loop(
    listener: TcpListener,
    cfg: Arc<ServerConfig>,
    conns: mpsc::Sender<Result<SensorConn, io::Error>>,
    metrics: Arc<IngestMetrics>,
    limits: AcceptLimits,
) {
    let acceptor = TlsAcceptor::from(cfg);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.handshakes));
    let total = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let per_sensor: PerSensor = Arc::default();
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = conns.closed() => return,
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            metrics.refused.inc("handshake_limit");
            debug!(peer = %remote, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        let metrics = metrics.clone();
        let (total, per_sensor) = (total.clone(), per_sensor.clone());
        tokio::spawn(async move {
            metrics.handshakes.add(1.0);
            let r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
            metrics.handshakes.add(-1.0);
            drop(handshake);
            let tls = match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics.refused.inc("tls_handshake");
                    warn!(peer = %remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    metrics.refused.inc("tls_timeout");
                    warn!(peer = %remote, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            let Some(der) = session.peer_certificates().and_then(|c| c.first()) else {
                metrics.refused.inc("no_client_cert");
                warn!(peer = %remote, "connection without client certificate refused");
                return;
            };
            let identity = match identity_from_der(der) {
                Ok(id) => id,
                Err(e) => {
                    metrics.refused.inc("bad_identity");
                    warn!(peer = %remote, error = %e, "client certificate refused");
                    return;
                }
            };
            let Ok(total) = total.try_acquire_owned() else {
                metrics.refused.inc("connection_limit");
                warn!(peer = %remote, sensor = %identity.sensor_id, "too many connections open; connection closed");
                return;
            };
            {
                let mut m = per_sensor.lock().expect("connection map lock");
                let n = m.entry(identity.sensor_id.clone()).or_insert(0);
                if *n >= limits.per_sensor {
                    metrics.refused.inc("sensor_connection_limit");
                    warn!(peer = %remote, sensor = %identity.sensor_id, open = *n,
                        "too many connections of this sensor open; connection closed");
                    return;
                }
                *n += 1;
            }
            metrics.connections.inc();
            metrics.connections_open.add(1.0);
            debug!(peer = %remote, sensor = %identity.sensor_id, vessel = %identity.vessel, "sensor connected");
            let slots = ConnSlots {
                _total: total,
                per_sensor,
                sensor: identity.sensor_id.clone(),
                metrics,
            };
            let conn = SensorConn {
                inner: tls,
                info: PeerInfo { remote, identity },
                _slots: slots,
            };
            let _ = conns.send(Ok(conn)).await;
        });
    }
}
