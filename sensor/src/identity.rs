//! The sensor's own identity on the link: its private key (born here, never
//! leaving the box) and the certificate the shore signed for it.
//!
//! - Enrollment ([`enroll`]): a fresh key (mode 0600) and a certificate
//!   signing request; the operator has the CSR signed ashore (`tidewatch-
//!   collector pki sign --csr … --id … --vessel …`) and installs the
//!   certificate next to the key (`run --cert … --key …`).
//! - Renewal (driven by the uplink, over its mTLS connection): once the
//!   certificate is in the last part of its lifetime ([`Identity::renew_at`]),
//!   a fresh key and CSR ([`RenewalKey`]); the certificate the shore returns
//!   is checked against that key and saved with it, in one file replaced
//!   atomically, as `STATE_DIR/identity/renewed.pem` (mode 0600). The
//!   enrolled files are never rewritten.
//! - At start ([`Identity::load`]) the sensor uses whichever of the enrolled
//!   and the renewed certificate ends later, so installing a new enrollment
//!   takes over from an older renewal and a renewal from its enrollment.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tidewatch_proto::state_file::{self, Access, Durability};
use x509_parser::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a key (pass --force to replace it, which ends the enrolled identity)")]
    Exists(PathBuf),
    #[error("cannot make a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |error| IdentityError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Writes a new private key to `key` (0600; refused if it exists unless
/// `force`) and its CSR to `csr`. The CSR's subject is informative only:
/// the shore takes the identity from the operator's `pki sign`.
pub fn enroll(key: &Path, csr: &Path, force: bool) -> Result<(), IdentityError> {
    if !force && std::fs::symlink_metadata(key).is_ok() {
        return Err(IdentityError::Exists(key.to_path_buf()));
    }
    let pair = KeyPair::generate()?;
    let request = csr_for(&pair)?;
    for p in [key, csr] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    state_file::replace_with(
        key,
        pair.serialize_pem().as_bytes(),
        Durability::Synced,
        Access::Private,
    )
    .map_err(io_err(key))?;
    state_file::replace_with(
        csr,
        request.pem()?.as_bytes(),
        Durability::Synced,
        Access::Shared,
    )
    .map_err(io_err(csr))?;
    Ok(())
}

fn csr_for(pair: &KeyPair) -> Result<rcgen::CertificateSigningRequest, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "tidewatch sensor");
    params.serialize_request(pair)
}

/// A fresh key and its CSR (DER), made for a renewal.
pub struct RenewalKey {
    pair: KeyPair,
    pub csr_der: Vec<u8>,
}

impl RenewalKey {
    pub fn new() -> Result<Self, IdentityError> {
        let pair = KeyPair::generate()?;
        let csr_der = csr_for(&pair)?.der().to_vec();
        Ok(RenewalKey { pair, csr_der })
    }

    /// The identity made of this key and the certificate the shore
    /// returned, once checked: the certificate is for this key, carries
    /// the same SAN URIs as `current` and ends later.
    pub fn accept(self, cert_pem: &str, current: &Identity) -> Result<Identity, IdentityError> {
        let id = Identity::parse(
            cert_pem.as_bytes().to_vec(),
            self.pair.serialize_pem().into_bytes(),
            Origin::Renewed,
        )?;
        let bad = |why: String| IdentityError::Invalid {
            what: "renewed certificate".into(),
            why,
        };
        if id.public_key_raw != self.pair.public_key_raw() {
            return Err(bad("it is not for the key this sensor asked with".into()));
        }
        if id.uris != current.uris {
            return Err(bad(format!(
                "its identity {:?} differs from the current one {:?}",
                id.uris, current.uris
            )));
        }
        if id.not_after <= current.not_after {
            return Err(bad("it does not end later than the current one".into()));
        }
        Ok(id)
    }
}

/// Where an identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `--cert`/`--key` files the operator installed.
    Enrolled,
    /// `STATE_DIR/identity/renewed.pem`.
    Renewed,
}

/// A certificate and its key, as the uplink presents them.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub origin: Origin,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
    /// The certificate's SAN URIs (sensor and vessel).
    pub uris: Vec<String>,
    public_key_raw: Vec<u8>,
}

impl Identity {
    fn parse(cert_pem: Vec<u8>, key_pem: Vec<u8>, origin: Origin) -> Result<Self, IdentityError> {
        let bad = |why: String| IdentityError::Invalid {
            what: format!("{origin:?} certificate"),
            why,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem)
            .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| bad(format!("cannot be parsed: {e}")))?;
        let uris = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let v = cert.validity();
        Ok(Identity {
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            uris,
            public_key_raw: cert.public_key().subject_public_key.data.to_vec(),
            cert_pem,
            key_pem,
            origin,
        })
    }

    /// The enrolled identity (`cert`, `key`) or the renewed one in
    /// `state_dir`, whichever certificate ends later. A renewed file that
    /// cannot be read is reported and ignored.
    pub fn load(cert: &Path, key: &Path, state_dir: Option<&Path>) -> Result<Self, IdentityError> {
        let cert_pem = std::fs::read(cert).map_err(io_err(cert))?;
        let key_pem = std::fs::read(key).map_err(io_err(key))?;
        let enrolled = Identity::parse(cert_pem, key_pem, Origin::Enrolled)?;
        let Some(dir) = state_dir else {
            return Ok(enrolled);
        };
        let p = renewed_path(dir);
        let renewed = match std::fs::read(&p) {
            Ok(both) => Identity::parse(both.clone(), both, Origin::Renewed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(enrolled),
            Err(e) => Err(io_err(&p)(e)),
        };
        match renewed {
            Ok(r) if r.not_after > enrolled.not_after => Ok(r),
            Ok(_) => Ok(enrolled),
            Err(e) => {
                tracing::warn!(error = %e, "renewed certificate unusable; using the enrolled one");
                Ok(enrolled)
            }
        }
    }

    /// Saves a renewed identity (key and certificate in one file, 0600,
    /// replaced atomically and synced).
    pub fn save_renewed(&self, state_dir: &Path) -> Result<(), IdentityError> {
        let p = renewed_path(state_dir);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut both = self.key_pem.clone();
        both.extend_from_slice(&self.cert_pem);
        state_file::replace_with(&p, &both, Durability::Synced, Access::Private).map_err(io_err(&p))
    }

    /// When to ask for a new certificate: once `fraction` of the lifetime
    /// is left (e.g. 1/3: the last third).
    pub fn renew_at(&self, fraction: f64) -> SystemTime {
        let life = (self.not_after - self.not_before).max(0) as f64;
        let at = self.not_after as f64 - life * fraction.clamp(0.0, 1.0);
        UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0))
    }

    /// Whether the certificate has expired.
    pub fn expired(&self, now: SystemTime) -> bool {
        unix(now) >= self.not_after
    }

    /// Time left until expiry (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        Duration::from_secs((self.not_after - unix(now)).max(0) as u64)
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `STATE_DIR/identity/renewed.pem`.
pub fn renewed_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity").join("renewed.pem")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn enroll_makes_a_private_key_and_a_csr_and_never_overwrites_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, csr) = (dir.path().join("k/key.pem"), dir.path().join("req.csr"));
        enroll(&key, &csr, false).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&csr).unwrap();
        assert!(text.contains("BEGIN CERTIFICATE REQUEST"), "{text}");
        let first = std::fs::read(&key).unwrap();
        assert!(matches!(
            enroll(&key, &csr, false),
            Err(IdentityError::Exists(_))
        ));
        assert_eq!(std::fs::read(&key).unwrap(), first);
        enroll(&key, &csr, true).unwrap();
        assert_ne!(std::fs::read(&key).unwrap(), first);
    }

    #[test]
    fn renewal_window_is_the_last_fraction_of_the_lifetime() {
        let id = Identity {
            cert_pem: vec![],
            key_pem: vec![],
            origin: Origin::Enrolled,
            not_before: 1_000,
            not_after: 1_300,
            serial: String::new(),
            uris: vec![],
            public_key_raw: vec![],
        };
        assert_eq!(
            id.renew_at(1.0 / 3.0),
            UNIX_EPOCH + Duration::from_secs(1_200)
        );
        assert!(!id.expired(UNIX_EPOCH + Duration::from_secs(1_299)));
        assert!(id.expired(UNIX_EPOCH + Duration::from_secs(1_300)));
        assert_eq!(
            id.remaining(UNIX_EPOCH + Duration::from_secs(1_250)),
            Duration::from_secs(50)
        );
    }
}
