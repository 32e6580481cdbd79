//! TLS for ingest: rustls server config requiring client certificates signed
//! by the fleet CA (optionally checked against a CRL), and the accept loop
//! that performs handshakes, reads the sensor identity from the verified
//! certificate and hands established connections to the gRPC server.
//!
//! Revocation bites on open connections too: [`watch_files`] reloads the
//! TLS material when a file changes (a CRL rewritten by `pki revoke`, a
//! Kubernetes Secret updated in place) and closes at once every open
//! connection whose certificate the new CRL lists ([`OpenConns`]). Every
//! connection also ends at a maximum age, or when its certificate expires
//! if that comes first: it drains (no new batch is read, those read are
//! acked, the stream ends with UNAVAILABLE) and the sensor reconnects,
//! going through the handshake and its checks again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tracing::{debug, error, info, warn};

use crate::identity::{identity_from_der, IdentityPolicy, SensorIdentity};
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
    #[error("CRL {path} cannot be parsed: {why}")]
    Crl { path: String, why: String },
}

/// Paths of the TLS material ingest needs.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file's content, to notice a change.
    fn contents(&self) -> Vec<Option<Vec<u8>>> {
        [
            Some(&self.cert),
            Some(&self.key),
            Some(&self.client_ca),
            self.crl.as_ref(),
        ]
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::read(p).ok()))
        .collect()
    }
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
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("server certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsSetupError::Read {
        what: "server key",
        path: files.key.display().to_string(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("client CA", &files.client_ca)? {
        roots.add(ca)?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl_path) = &files.crl {
        let crls = crls(crl_path)?;
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

/// The CRLs of a PEM file (at least one).
fn crls(crl_path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsSetupError> {
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
    Ok(crls)
}

/// The serials (lowercase hex, as [`SensorIdentity::serial`]) the CRL file
/// lists.
pub fn revoked_serials(crl_path: &Path) -> Result<HashSet<String>, TlsSetupError> {
    let mut out = HashSet::new();
    for der in crls(crl_path)? {
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| TlsSetupError::Crl {
            path: crl_path.display().to_string(),
            why: e.to_string(),
        })?;
        for r in crl.iter_revoked_certificates() {
            out.insert(r.raw_serial_as_string().replace(':', ""));
        }
    }
    Ok(out)
}

/// Watches the TLS material every `every` and, when a file changed,
/// reloads it: new handshakes use the new configuration, and every open
/// connection whose certificate the new CRL lists is closed at once. A
/// change that cannot be loaded is logged and counted; the previous
/// configuration stays in use. Runs until `cfg` has no receiver left.
pub async fn watch_files(
    files: TlsFiles,
    cfg: watch::Sender<Arc<ServerConfig>>,
    conns: Arc<OpenConns>,
    metrics: Arc<IngestMetrics>,
    every: Duration,
) {
    let mut seen = files.contents();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cfg.closed() => return,
        }
        let now = files.contents();
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = server_config(&files).and_then(|c| {
            let revoked = match &files.crl {
                Some(p) => revoked_serials(p)?,
                None => HashSet::new(),
            };
            Ok((c, revoked))
        });
        match loaded {
            Ok((c, revoked)) => {
                cfg.send_replace(c);
                metrics.tls_reloads.inc();
                metrics.crl_revoked.set(revoked.len() as f64);
                let closed = conns.close_revoked(&revoked, &metrics);
                info!(
                    revoked = revoked.len(),
                    connections_closed = closed,
                    "TLS material changed and reloaded (CRL, client CA, server certificate)"
                );
            }
            Err(e) => {
                metrics.tls_reload_failures.inc();
                error!(error = %e, "TLS material changed but cannot be loaded; keeping the previous one");
            }
        }
    }
}

/// Why ingest ends a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    Open,
    /// Read no new batch, ack those read, end the streams: the sensor
    /// reconnects (and is checked again).
    Draining(&'static str),
    /// Closed at once: the connection's reads and writes fail, nothing more
    /// it sent goes to Kafka.
    Closed(&'static str),
}

impl Closing {
    pub fn is_open(self) -> bool {
        self == Closing::Open
    }
}

/// An open connection as [`OpenConns`] knows it.
struct OpenConn {
    sensor: String,
    serial: String,
    closing: watch::Sender<Closing>,
}

/// The open connections, by certificate serial, so that a revocation can
/// close them.
#[derive(Default)]
pub struct OpenConns {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, OpenConn>>,
}

impl OpenConns {
    /// Registers a connection; it is forgotten when the returned guard drops.
    fn add(self: &Arc<Self>, identity: &SensorIdentity) -> (ConnEntry, watch::Sender<Closing>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(Closing::Open);
        self.conns.lock().expect("connection registry lock").insert(
            id,
            OpenConn {
                sensor: identity.sensor_id.clone(),
                serial: identity.serial.clone(),
                closing: tx.clone(),
            },
        );
        (
            ConnEntry {
                conns: self.clone(),
                id,
            },
            tx,
        )
    }

    /// Closes every connection whose certificate serial is in `revoked`;
    /// how many.
    pub fn close_revoked(&self, revoked: &HashSet<String>, metrics: &IngestMetrics) -> usize {
        let m = self.conns.lock().expect("connection registry lock");
        let mut n = 0;
        for c in m.values().filter(|c| revoked.contains(&c.serial)) {
            let closed = Closing::Closed("revoked");
            if c.closing.send_replace(closed) != closed {
                n += 1;
                metrics.connections_closed.inc("revoked");
                warn!(sensor = %c.sensor, serial = %c.serial, "certificate revoked: its open connection is closed");
            }
        }
        n
    }
}

/// A connection's place in [`OpenConns`].
struct ConnEntry {
    conns: Arc<OpenConns>,
    id: u64,
}

impl Drop for ConnEntry {
    fn drop(&mut self) {
        self.conns
            .conns
            .lock()
            .expect("connection registry lock")
            .remove(&self.id);
    }
}

/// Ends a connection at `max_age` (±10 %, so a fleet does not reconnect
/// at once) or when its certificate expires, whichever comes first: it
/// drains, then after `grace` is closed.
async fn age_out(
    tx: watch::Sender<Closing>,
    not_after: i64,
    max_age: Duration,
    grace: Duration,
    metrics: Arc<IngestMetrics>,
    sensor: String,
) {
    let age = max_age.mul_f64(rand::random_range(0.9..1.1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let expiry = Duration::from_secs((not_after - now).max(0) as u64);
    let (wait, why) = if expiry < age {
        (expiry, "certificate_expired")
    } else {
        (age, "max_age")
    };
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = tx.closed() => return,
    }
    if !tx.borrow().is_open() {
        return;
    }
    metrics.connections_closed.inc(why);
    info!(sensor = %sensor, reason = %why, "connection drained: the sensor reconnects and is checked again");
    tx.send_replace(Closing::Draining(why));
    tokio::select! {
        _ = tokio::time::sleep(grace) => {}
        _ = tx.closed() => return,
    }
    tx.send_if_modified(|c| {
        let open = matches!(c, Closing::Draining(_));
        if open {
            *c = Closing::Closed(why);
        }
        open
    });
}

/// Who is on the other end of a connection; inserted into every request's
/// extensions by tonic.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub identity: SensorIdentity,
    /// The verified certificate (DER), for renewal.
    pub certificate: Arc<[u8]>,
    /// Whether ingest is ending the connection, and why.
    pub closing: watch::Receiver<Closing>,
}

/// An established, authenticated connection. Holds its places under the
/// connection limits ([`AcceptLimits`]) and in [`OpenConns`] until it is
/// dropped; fails its reads and writes once closed ([`Closing::Closed`]).
pub struct SensorConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    closed: Pin<Box<dyn Future<Output = &'static str> + Send>>,
    _slots: ConnSlots,
    _entry: ConnEntry,
}

impl SensorConn {
    /// An error once ingest closed the connection (registering the waker
    /// otherwise).
    fn check_closed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(why) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("connection closed by ingest: {why}"),
            )),
            Poll::Pending => Ok(()),
        }
    }
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
    /// A connection drains at this age (or when its certificate expires).
    pub max_age: Duration,
    /// How long a draining connection has to finish before it is closed.
    pub drain_grace: Duration,
    /// What passes for a sensor certificate.
    pub identity: IdentityPolicy,
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
        self.check_closed(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SensorConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_closed(cx)?;
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
        self.check_closed(cx)?;
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
    cfg: watch::Receiver<Arc<ServerConfig>>,
    conns: mpsc::Sender<Result<SensorConn, io::Error>>,
    open: Arc<OpenConns>,
    metrics: Arc<IngestMetrics>,
    limits: AcceptLimits,
) {
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
        let acceptor = TlsAcceptor::from(cfg.borrow().clone());
        let open = open.clone();
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
                    let revoked = e.to_string().contains("Revoked");
                    metrics
                        .refused
                        .inc(if revoked { "revoked" } else { "tls_handshake" });
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
            let identity = match identity_from_der(der, limits.identity) {
                Ok(id) => id,
                Err(e) => {
                    metrics.refused.inc(e.reason());
                    warn!(peer = %remote, reason = %e.reason(), error = %e, "client certificate refused");
                    return;
                }
            };
            let certificate: Arc<[u8]> = Arc::from(der.as_ref());
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
            let (entry, closing) = open.add(&identity);
            tokio::spawn(age_out(
                closing.clone(),
                identity.not_after,
                limits.max_age,
                limits.drain_grace,
                metrics.clone(),
                identity.sensor_id.clone(),
            ));
            let slots = ConnSlots {
                _total: total,
                per_sensor,
                sensor: identity.sensor_id.clone(),
                metrics,
            };
            let mut rx = closing.subscribe();
            let closed = Box::pin(async move {
                let why = match rx.wait_for(|c| matches!(c, Closing::Closed(_))).await {
                    Ok(c) => match *c {
                        Closing::Closed(why) => Some(why),
                        _ => None,
                    },
                    Err(_) => None,
                };
                match why {
                    Some(why) => why,
                    // The registry forgot the connection: it is going away.
                    None => std::future::pending().await,
                }
            });
            let conn = SensorConn {
                inner: tls,
                info: PeerInfo {
                    remote,
                    identity,
                    certificate,
                    closing: closing.subscribe(),
                },
                closed,
                _slots: slots,
                _entry: entry,
            };
            let _ = conns.send(Ok(conn)).await;
        });
    }
}
