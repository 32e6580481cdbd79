//! `tidewatch-collector signer`: the one process that holds the sensor CA's
//! key, so that ingest (exposed to every ship) never does.
//!
//! Ingest forwards a sensor's renewal to it over mutual TLS, presenting an
//! ingest certificate (`pki issue-ingest`: SAN URI `urn:tidewatch:ingest:*`);
//! any other client is refused. The signer trusts ingest with nothing but
//! the transport: it checks the sensor certificate itself ([`Pki::renew_sensor`]:
//! signed by its CA, a sensor certificate, in its index under the same
//! identity, not revoked, not expired) and signs the CSR's key for that
//! identity only, entering the new certificate in its index (so `pki
//! revoke` on this directory revokes it too). Run one replica, with the
//! PKI directory on storage of its own; only ingest may reach its port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tidewatch_proto::v1::signer_server::{Signer, SignerServer};
use tidewatch_proto::v1::{RenewResponse, SignRenewalRequest};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::identity::{san_uris, INGEST_URI_PREFIX};
use crate::pki::{Pki, PkiError};

#[derive(Debug, clap::Args)]
pub struct SignerArgs {
    /// PKI directory with the sensor CA (ca.pem, ca-key.pem) and its index.
    #[arg(long, env = "TIDEWATCH_PKI_DIR", default_value = "pki")]
    pub dir: PathBuf,
    /// Address to listen on for ingest.
    #[arg(long, env = "TIDEWATCH_SIGNER_LISTEN", default_value = "0.0.0.0:4444")]
    pub listen: SocketAddr,
    /// The signer's server certificate chain (PEM). Default: DIR/signer.pem,
    /// issued by the CA at the first start for the --dns names.
    #[arg(
        long,
        env = "TIDEWATCH_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The signer's server key (PEM). Default: DIR/signer-key.pem.
    #[arg(
        long,
        env = "TIDEWATCH_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Names ingest reaches the signer by, for the certificate made at the
    /// first start (repeatable).
    #[arg(long = "dns", default_value = "localhost")]
    pub dns: Vec<String>,
    /// CA that signed the ingest certificates (default: DIR/ca.pem).
    #[arg(long, env = "TIDEWATCH_CLIENT_CA", value_name = "PEM")]
    pub client_ca: Option<PathBuf>,
    /// Lifetime of a renewed certificate, in days.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// Lifetime of a renewed certificate in seconds, instead of --days
    /// (short-lived fleets, tests).
    #[arg(long, conflicts_with = "days")]
    pub lifetime_secs: Option<u64>,
}

struct SignerService {
    pki: Arc<Pki>,
    lifetime_secs: u64,
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn sign_renewal(
        &self,
        request: Request<SignRenewalRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let caller = request
            .peer_certs()
            .and_then(|c| c.first().map(|d| d.to_vec()))
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let ingest = x509_parser::parse_x509_certificate(&caller)
            .ok()
            .and_then(|(_, c)| {
                san_uris(&c, INGEST_URI_PREFIX)
                    .first()
                    .map(|s| s.to_string())
            });
        let Some(ingest) = ingest else {
            warn!("renewal refused: the caller is not an ingest (no {INGEST_URI_PREFIX}* SAN URI)");
            return Err(Status::permission_denied(
                "only ingest may ask for renewals",
            ));
        };
        let req = request.into_inner();
        let pki = self.pki.clone();
        let lifetime = self.lifetime_secs;
        let r = tokio::task::spawn_blocking(move || {
            pki.renew_sensor(&req.presented_certificate, &req.csr, lifetime)
        })
        .await
        .map_err(|_| Status::internal("signing panicked"))?;
        match r {
            Ok((pem, not_after)) => {
                let id = crate::identity::identity_from_pem(pem.as_bytes())
                    .map(|i| (i.sensor_id, i.serial))
                    .unwrap_or_default();
                info!(sensor = %id.0, serial = %id.1, not_after, ingest = %ingest, "sensor certificate renewed");
                Ok(Response::new(RenewResponse {
                    certificate_pem: pem,
                    not_after,
                }))
            }
            Err(e @ (PkiError::Renewal(_) | PkiError::Name(_))) => {
                warn!(ingest = %ingest, reason = %e, "renewal refused");
                Err(Status::permission_denied(e.to_string()))
            }
            Err(e @ PkiError::TooEarly(_)) => {
                warn!(ingest = %ingest, reason = %e, "renewal asked for too early");
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e @ PkiError::Csr(_)) => {
                warn!(ingest = %ingest, reason = %e, "renewal refused");
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => {
                warn!(ingest = %ingest, error = %e, "renewal failed");
                Err(Status::unavailable(e.to_string()))
            }
        }
    }
}

pub async fn run(args: SignerArgs) -> anyhow::Result<()> {
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let pki = Pki::new(&args.dir);
    let stop = crate::metrics::stop_on_signal("signer stopping");
    // A fresh volume: wait (running, so that an operator can exec into the
    // pod) until the CA is created there.
    if !pki.ca_cert_path().exists() {
        warn!(dir = %args.dir.display(), "no CA yet: waiting for `tidewatch-collector pki init-ca` in this directory");
        while !pki.ca_cert_path().exists() {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = stop.wait() => return Ok(()),
            }
        }
    }
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let (c, k) = (args.dir.join("signer.pem"), args.dir.join("signer-key.pem"));
            if !c.exists() || !k.exists() {
                pki.issue_server_as("signer", &args.dns, crate::pki::Validity::new(825, None))?;
                info!(names = ?args.dns, cert = %c.display(), "issued the signer's server certificate");
            }
            (c, k)
        }
    };
    let client_ca = args.client_ca.clone().unwrap_or_else(|| pki.ca_cert_path());
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("server certificate", &cert)?,
            read("server key", &key)?,
        ))
        .client_ca_root(Certificate::from_pem(read("client CA", &client_ca)?));
    let lifetime_secs = args
        .lifetime_secs
        .unwrap_or(u64::from(args.days) * 86_400)
        .max(1);
    let svc = SignerService {
        pki: Arc::new(pki),
        lifetime_secs,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %listener.local_addr()?, dir = %args.dir.display(), lifetime_secs, "signer listening");
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(SignerServer::new(svc).max_decoding_message_size(256 * 1024))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                stop.wait().await;
            },
        )
        .await
        .context("signer failed")?;
    Ok(())
}
