//! Fleet PKI: a private CA that signs one client certificate per sensor (from
//! a CSR whose key was born on the sensor, [`Pki::sign_sensor_csr`]; renewed
//! over the link through the signer, [`Pki::renew_sensor`]), the ingest
//! nodes' certificates towards the signer, and (unless the server has a CA
//! of its own: run a second PKI directory) the collector's server
//! certificates; plus a CRL for revoked sensors.
//!
//! Identity convention (read back by ingest, see [`crate::identity`]): a sensor
//! certificate carries the SAN URIs `urn:tidewatch:sensor:<ID>` and
//! `urn:tidewatch:vessel:<VESSEL>` and the clientAuth usage; its subject CN
//! is the sensor id. The names a CSR asks for are ignored: the identity is
//! the operator's (`pki sign --id --vessel`) or, on renewal, the one of the
//! certificate being renewed.
//!
//! Files in the PKI directory (keys are written with mode 0600):
//! `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
//! `sensors/<ID>.pem` (and `sensors/<ID>-key.pem` from the lab-only
//! `issue-sensor`), `ingest/<NAME>.pem`, `ingest/<NAME>-key.pem`,
//! `index.tsv` (every certificate issued: serial, kind, id, vessel,
//! not-after, revoked-at) and `crl.pem`.
//!
//! Every file is replaced atomically and fsynced (never truncated by a crash
//! or a full disk, never written through a symlink, see
//! [`tidewatch_proto::state_file`]); a certificate is entered in the index
//! before its files are written, so none can exist that a revocation would
//! miss; and one `pki` command at a time holds the directory (`.lock`).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use tidewatch_proto::state_file::{self, Access, Durability};
use time::{Duration, OffsetDateTime};

use crate::identity::{
    identity_of, validate_name, IdentityPolicy, InvalidName, INGEST_URI_PREFIX, SENSOR_URI_PREFIX,
    VESSEL_URI_PREFIX,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0} already exists; refusing to overwrite it (remove it first if you mean to)")]
    Exists(PathBuf),
    #[error("no CA in {0}; run `tidewatch-collector pki init-ca --dir {0}` first")]
    NoCa(PathBuf),
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error("no certificate issued for sensor {0:?} in the index")]
    UnknownSensor(String),
    #[error("corrupt index line {line}: {content:?}")]
    Index { line: usize, content: String },
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    #[error("renewal refused: {0}")]
    Renewal(String),
    #[error("renewal too early: {0}")]
    TooEarly(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Replaces `path` by `data` (atomically, synced), creating parent dirs;
/// `secret` files get 0600.
fn write_file(path: &Path, data: &str, secret: bool, overwrite: bool) -> Result<(), PkiError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        return Err(PkiError::Exists(path.to_path_buf()));
    }
    let access = if secret {
        Access::Private
    } else {
        Access::Shared
    };
    state_file::replace_with(path, data.as_bytes(), Durability::Synced, access)
        .map_err(io_err(path))
}

pub struct Pki {
    dir: PathBuf,
}

/// A certificate may be renewed once at most this fraction of its lifetime
/// is left (sensors ask at a third by default, at most at half).
pub const RENEWAL_WINDOW: f64 = 0.6;

/// Validity of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now for `secs` seconds (backdated by a tenth of that, at most
    /// five minutes, for clocks slightly behind).
    pub fn for_secs(secs: u64) -> Self {
        let now = OffsetDateTime::now_utc();
        let secs = secs.min(100 * 365 * 86_400) as i64;
        Validity {
            not_before: now - Duration::seconds((secs / 10).min(300)),
            not_after: now + Duration::seconds(secs),
        }
    }

    /// From now for `days` days, or ending at `not_after` if given.
    pub fn new(days: u32, not_after: Option<OffsetDateTime>) -> Self {
        let now = OffsetDateTime::now_utc();
        match not_after {
            Some(end) => Validity {
                not_before: (end - Duration::days(30)).min(now - Duration::minutes(5)),
                not_after: end,
            },
            None => Validity {
                not_before: now - Duration::minutes(5),
                not_after: now + Duration::days(days as i64),
            },
        }
    }
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Pki { dir: dir.into() }
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    fn index_path(&self) -> PathBuf {
        self.dir.join("index.tsv")
    }

    /// Holds the PKI directory against other `pki` commands until dropped.
    fn lock(&self) -> Result<fs::File, PkiError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let p = self.dir.join(".lock");
        let f = fs::File::create(&p).map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        Ok(f)
    }

    /// Creates the fleet CA (refuses to overwrite an existing one).
    pub fn init_ca(&self, name: &str, days: u32) -> Result<(PathBuf, PathBuf), PkiError> {
        let _held = self.lock()?;
        let (cert_p, key_p) = (self.ca_cert_path(), self.ca_key_path());
        for p in [&cert_p, &key_p] {
            if p.exists() {
                return Err(PkiError::Exists(p.clone()));
            }
        }
        let key = KeyPair::generate()?;
        let params = ca_params(name, Validity::new(days, None));
        let cert = params.self_signed(&key)?;
        write_file(&key_p, &key.serialize_pem(), true, false)?;
        write_file(&cert_p, &cert.pem(), false, false)?;
        // An empty CRL so ingest can be started with --crl from day one.
        self.write_crl(&[])?;
        Ok((cert_p, key_p))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let (cert_p, key_p) = (self.ca_cert_path(), self.ca_key_path());
        if !cert_p.exists() || !key_p.exists() {
            return Err(PkiError::NoCa(self.dir.clone()));
        }
        let key_pem = fs::read_to_string(&key_p).map_err(io_err(&key_p))?;
        let cert_pem = fs::read_to_string(&cert_p).map_err(io_err(&cert_p))?;
        let key = KeyPair::from_pem(&key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
    }

    /// Issues the collector's server certificate for the given DNS names /
    /// IPs (`server.pem`, `server-key.pem`).
    pub fn issue_server(
        &self,
        names: &[String],
        validity: Validity,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        self.issue_server_as("server", names, validity)
    }

    /// Issues a server certificate as `BASE.pem`, `BASE-key.pem`.
    pub fn issue_server_as(
        &self,
        base: &str,
        names: &[String],
        validity: Validity,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        if names.is_empty() {
            return Err(PkiError::Invalid {
                what: "server names",
                value: String::new(),
                why: "give at least one --dns or --ip the sensors will connect to",
            });
        }
        let _held = self.lock()?;
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = leaf_params(&names[0], validity);
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serial = params.serial_number.clone().expect("set by leaf_params");
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_p, key_p) = (
            self.dir.join(format!("{base}.pem")),
            self.dir.join(format!("{base}-key.pem")),
        );
        self.add_to_index(&serial, "server", &names[0], "-", validity.not_after)?;
        write_file(&key_p, &key.serialize_pem(), true, true)?;
        write_file(&cert_p, &cert.pem(), false, true)?;
        Ok((cert_p, key_p))
    }

    /// Issues a sensor certificate and its key, both made here (lab use:
    /// the key travels to the sensor; in a fleet the key is born on the
    /// sensor, see [`Pki::sign_sensor_csr`]).
    pub fn issue_sensor(
        &self,
        id: &str,
        vessel: &str,
        validity: Validity,
        out_dir: Option<&Path>,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let _held = self.lock()?;
        let key = KeyPair::generate()?;
        let pem = self.sign_sensor(id, vessel, validity, &key)?;
        let dir = out_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.join("sensors"));
        let (cert_p, key_p) = (
            dir.join(format!("{id}.pem")),
            dir.join(format!("{id}-key.pem")),
        );
        write_file(&key_p, &key.serialize_pem(), true, true)?;
        write_file(&cert_p, &pem, false, true)?;
        Ok((cert_p, key_p))
    }

    /// Signs a sensor's CSR (PEM or DER) for the identity the operator
    /// gives; the names the CSR asks for are ignored, only its key (whose
    /// possession its signature proves) is used. Writes the certificate to
    /// `out` (default `DIR/sensors/ID.pem`).
    pub fn sign_sensor_csr(
        &self,
        csr: &[u8],
        id: &str,
        vessel: &str,
        validity: Validity,
        out: Option<&Path>,
    ) -> Result<PathBuf, PkiError> {
        let pem = self.sign_sensor_csr_pem(csr, id, vessel, validity)?;
        let out = out
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.join("sensors").join(format!("{id}.pem")));
        write_file(&out, &pem, false, true)?;
        Ok(out)
    }

    /// As [`Pki::sign_sensor_csr`], returning the certificate's PEM.
    pub fn sign_sensor_csr_pem(
        &self,
        csr: &[u8],
        id: &str,
        vessel: &str,
        validity: Validity,
    ) -> Result<String, PkiError> {
        let csr = parse_csr(csr)?;
        let _held = self.lock()?;
        self.sign_sensor(id, vessel, validity, &csr.public_key)
    }

    /// Renews a sensor certificate: `presented` (DER, the certificate the
    /// sensor is connected with) must be signed by this CA, be a valid
    /// sensor certificate, be in the index under the same identity, not be
    /// revoked and not be expired, and be in its renewal window (at most
    /// [`RENEWAL_WINDOW`] of its lifetime left: a sensor cannot have
    /// certificates made for it at will); the new certificate, for the key
    /// of `csr` (DER or PEM), carries the same identity. Returns its PEM and
    /// not-after (Unix seconds).
    pub fn renew_sensor(
        &self,
        presented: &[u8],
        csr: &[u8],
        lifetime_secs: u64,
    ) -> Result<(String, i64), PkiError> {
        let refuse = |why: String| PkiError::Renewal(why);
        let csr = parse_csr(csr)?;
        let (_, cert) = x509_parser::parse_x509_certificate(presented)
            .map_err(|e| refuse(format!("presented certificate cannot be parsed: {e}")))?;
        let ca_pem = fs::read(self.ca_cert_path()).map_err(io_err(&self.ca_cert_path()))?;
        let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem)
            .map_err(|e| refuse(format!("CA certificate unreadable: {e}")))?;
        let ca = ca
            .parse_x509()
            .map_err(|e| refuse(format!("CA certificate unreadable: {e}")))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| refuse("presented certificate is not signed by this CA".into()))?;
        if !cert.validity().is_valid() {
            return Err(refuse(
                "presented certificate is expired (or not yet valid): re-enroll the sensor".into(),
            ));
        }
        let id =
            identity_of(&cert, IdentityPolicy::default()).map_err(|e| refuse(e.to_string()))?;
        let _held = self.lock()?;
        let rows = self.read_index()?;
        let row = rows
            .iter()
            .find(|r| r[0] == id.serial)
            .ok_or_else(|| refuse(format!("certificate {} is not in the index", id.serial)))?;
        if row[1] != "sensor" || row[2] != id.sensor_id || row[3] != id.vessel {
            return Err(refuse(format!(
                "certificate {} is indexed as {} {} {}, not sensor {} {}",
                id.serial, row[1], row[2], row[3], id.sensor_id, id.vessel
            )));
        }
        if row[5] != "-" {
            return Err(refuse(format!(
                "certificate {} of sensor {} is revoked: re-enroll the sensor",
                id.serial, id.sensor_id
            )));
        }
        let v = cert.validity();
        let life = (v.not_after.timestamp() - v.not_before.timestamp()).max(1) as f64;
        let left = (v.not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp()) as f64;
        if left > life * RENEWAL_WINDOW {
            return Err(PkiError::TooEarly(format!(
                "certificate {} has {:.0} s of {:.0} s left; renewal opens with {:.0} s left",
                id.serial,
                left,
                life,
                life * RENEWAL_WINDOW
            )));
        }
        let validity = Validity::for_secs(lifetime_secs);
        let pem = self.sign_sensor(&id.sensor_id, &id.vessel, validity, &csr.public_key)?;
        Ok((pem, validity.not_after.unix_timestamp()))
    }

    /// Signs a sensor certificate for `key` and enters it in the index
    /// (the caller holds the lock). Returns its PEM.
    fn sign_sensor(
        &self,
        id: &str,
        vessel: &str,
        validity: Validity,
        key: &impl PublicKeyData,
    ) -> Result<String, PkiError> {
        validate_name("sensor id", id)?;
        validate_name("vessel", vessel)?;
        let issuer = self.issuer()?;
        let mut params = leaf_params(id, validity);
        params.subject_alt_names = vec![
            SanType::URI(format!("{SENSOR_URI_PREFIX}{id}").try_into()?),
            SanType::URI(format!("{VESSEL_URI_PREFIX}{vessel}").try_into()?),
        ];
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, vessel);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = params.serial_number.clone().expect("set by leaf_params");
        let cert = params.signed_by(key, &issuer)?;
        self.add_to_index(&serial, "sensor", id, vessel, validity.not_after)?;
        Ok(cert.pem())
    }

    /// Issues an ingest node's client certificate towards the signer
    /// (SAN URI `urn:tidewatch:ingest:<NAME>`, clientAuth): not a sensor,
    /// ingest refuses it as one.
    pub fn issue_ingest(
        &self,
        name: &str,
        validity: Validity,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let (key, cert) = self.make_ingest(name, validity)?;
        let dir = self.dir.join("ingest");
        let (cert_p, key_p) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        write_file(&key_p, &key, true, true)?;
        write_file(&cert_p, &cert, false, true)?;
        Ok((cert_p, key_p))
    }

    /// An ingest certificate, indexed: its key and certificate PEM.
    pub fn make_ingest(
        &self,
        name: &str,
        validity: Validity,
    ) -> Result<(String, String), PkiError> {
        validate_name("ingest name", name)?;
        let _held = self.lock()?;
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = leaf_params(name, validity);
        params.subject_alt_names = vec![SanType::URI(
            format!("{INGEST_URI_PREFIX}{name}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = params.serial_number.clone().expect("set by leaf_params");
        let cert = params.signed_by(&key, &issuer)?;
        self.add_to_index(&serial, "ingest", name, "-", validity.not_after)?;
        Ok((key.serialize_pem(), cert.pem()))
    }

    /// Enters a certificate in the index (the whole index rewritten).
    fn add_to_index(
        &self,
        serial: &SerialNumber,
        kind: &str,
        id: &str,
        vessel: &str,
        not_after: OffsetDateTime,
    ) -> Result<(), PkiError> {
        let mut rows = self.read_index()?;
        rows.push(
            [
                hex(serial.as_ref()),
                kind.into(),
                id.into(),
                vessel.into(),
                not_after.unix_timestamp().to_string(),
                "-".into(),
            ]
            .into(),
        );
        self.write_index(&rows)
    }

    fn write_index(&self, rows: &[Vec<String>]) -> Result<(), PkiError> {
        let text: String = rows.iter().map(|r| r.join("\t") + "\n").collect();
        write_file(&self.index_path(), &text, false, true)
    }

    fn read_index(&self) -> Result<Vec<Vec<String>>, PkiError> {
        let p = self.index_path();
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(&p)(e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let cols: Vec<String> = l.split('\t').map(str::to_string).collect();
                if cols.len() != 6 {
                    return Err(PkiError::Index {
                        line: i + 1,
                        content: l.to_string(),
                    });
                }
                Ok(cols)
            })
            .collect()
    }

    /// Revokes every certificate issued to sensor `id` and rewrites the CRL.
    /// Returns how many certificates were newly revoked.
    pub fn revoke_sensor(&self, id: &str) -> Result<usize, PkiError> {
        let _held = self.lock()?;
        let mut rows = self.read_index()?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut found = false;
        let mut newly = 0;
        for r in rows.iter_mut() {
            if r[1] == "sensor" && r[2] == id {
                found = true;
                if r[5] == "-" {
                    r[5] = now.to_string();
                    newly += 1;
                }
            }
        }
        if !found {
            return Err(PkiError::UnknownSensor(id.to_string()));
        }
        self.write_index(&rows)?;
        self.write_crl(&rows)?;
        Ok(newly)
    }

    fn write_crl(&self, rows: &[Vec<String>]) -> Result<(), PkiError> {
        let issuer = self.issuer()?;
        let mut revoked = Vec::new();
        for r in rows.iter().filter(|r| r[5] != "-") {
            let serial = unhex(&r[0]).ok_or_else(|| PkiError::Index {
                line: 0,
                content: r.join("\t"),
            })?;
            let at = r[5]
                .parse::<i64>()
                .ok()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at.unwrap_or_else(OffsetDateTime::now_utc),
                reason_code: Some(RevocationReason::CessationOfOperation),
                invalidity_date: None,
            });
        }
        let now = OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)?;
        write_file(&self.crl_path(), &crl.pem()?, false, true)
    }
}

fn ca_params(name: &str, v: Validity) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "tidewatch fleet");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = v.not_before;
    p.not_after = v.not_after;
    p.serial_number = Some(random_serial());
    p
}

fn leaf_params(cn: &str, v: Validity) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "tidewatch fleet");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.not_before = v.not_before;
    p.not_after = v.not_after;
    p.serial_number = Some(random_serial());
    p
}

/// Parses a CSR (PEM or DER), checking its signature (proof that the
/// requester holds the key).
fn parse_csr(csr: &[u8]) -> Result<CertificateSigningRequestParams, PkiError> {
    if csr.len() > 64 * 1024 {
        return Err(PkiError::Csr(format!("{} bytes is not a CSR", csr.len())));
    }
    let r = match std::str::from_utf8(csr) {
        Ok(text) if text.contains("-----BEGIN") => CertificateSigningRequestParams::from_pem(text),
        _ => CertificateSigningRequestParams::from_der(&csr.to_vec().into()),
    };
    r.map_err(|e| PkiError::Csr(e.to_string()))
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses `YYYY-MM-DD` (UTC midnight).
pub fn parse_date(s: &str) -> Result<OffsetDateTime, PkiError> {
    let bad = || PkiError::Invalid {
        what: "date",
        value: s.to_string(),
        why: "expected YYYY-MM-DD",
    };
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() != 3 {
        return Err(bad());
    }
    let y: i32 = parts[0].parse().map_err(|_| bad())?;
    let m: u8 = parts[1].parse().map_err(|_| bad())?;
    let d: u8 = parts[2].parse().map_err(|_| bad())?;
    let month = time::Month::try_from(m).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(y, month, d).map_err(|_| bad())?;
    Ok(date.midnight().assume_utc())
}

/// How long a certificate is valid: `--days`, `--lifetime-secs` (short-lived
/// fleets and tests) or `--not-after`.
#[derive(Debug, Clone, clap::Args)]
pub struct LifetimeArgs {
    /// Days of validity from now.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// Seconds of validity from now, instead of --days.
    #[arg(long, conflicts_with_all = ["days", "not_after"])]
    pub lifetime_secs: Option<u64>,
    /// End of validity (YYYY-MM-DD) instead of --days; may be in the past.
    #[arg(long, conflicts_with = "days")]
    pub not_after: Option<String>,
}

impl LifetimeArgs {
    pub fn validity(&self) -> Result<Validity, PkiError> {
        if let Some(s) = self.lifetime_secs {
            if s == 0 {
                return Err(PkiError::Invalid {
                    what: "--lifetime-secs",
                    value: "0".into(),
                    why: "must be at least 1",
                });
            }
            return Ok(Validity::for_secs(s));
        }
        let end = self.not_after.as_deref().map(parse_date).transpose()?;
        Ok(Validity::new(self.days, end))
    }
}

/// What `pki print` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PrintWhat {
    Ca,
    Crl,
}

/// The `pki` subcommands.
#[derive(clap::Subcommand)]
pub enum PkiCmd {
    /// Create a CA (ca.pem, ca-key.pem) and an empty CRL. One CA can sign
    /// everything; for a separate server CA, run init-ca and issue-server in
    /// a second directory and give sensors that ca.pem as --ca.
    InitCa {
        /// CA common name.
        #[arg(long, default_value = "tidewatch fleet CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue the collector's server certificate (server.pem, server-key.pem).
    IssueServer {
        /// DNS name the sensors connect to (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP address the sensors connect to (repeatable).
        #[arg(long = "ip")]
        ip: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Sign a sensor's certificate signing request (made on the sensor by
    /// `tidewatch-sensor enroll`; its key never leaves the sensor). The
    /// identity is the one given here; names in the CSR are ignored.
    Sign {
        /// The CSR (PEM or DER); `-`: standard input.
        #[arg(long)]
        csr: PathBuf,
        /// Sensor id (1-64 of A-Z a-z 0-9 . _ -), unique in the fleet.
        #[arg(long)]
        id: String,
        /// Vessel, crane or site the sensor belongs to.
        #[arg(long)]
        vessel: String,
        #[command(flatten)]
        lifetime: LifetimeArgs,
        /// Where to write the certificate (default: DIR/sensors/ID.pem;
        /// `-`: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// LAB USE: issue a sensor certificate together with its private key,
    /// both made here (the key must then be carried to the sensor). In a
    /// fleet, use `tidewatch-sensor enroll` and `pki sign`.
    IssueSensor {
        /// Sensor id (1-64 of A-Z a-z 0-9 . _ -), unique in the fleet.
        #[arg(long)]
        id: String,
        /// Vessel, crane or site the sensor belongs to.
        #[arg(long)]
        vessel: String,
        #[command(flatten)]
        lifetime: LifetimeArgs,
        /// Where to write ID.pem and ID-key.pem (default: DIR/sensors).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue an ingest node's client certificate towards the signer
    /// (ingest/NAME.pem, ingest/NAME-key.pem); it is not a sensor
    /// certificate and cannot upload.
    IssueIngest {
        /// Name of the ingest node or deployment.
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Print the key and certificate (one PEM text, for a Kubernetes
        /// Secret) instead of writing files.
        #[arg(long)]
        print: bool,
    },
    /// Print a public file of the PKI: the CA certificate (ingest's
    /// --client-ca, the sensors' --ca when it signed the server) or the
    /// current CRL (ingest's --crl).
    Print {
        #[arg(value_enum)]
        what: PrintWhat,
    },
    /// Revoke every certificate of a sensor and rewrite crl.pem.
    Revoke {
        #[arg(long)]
        id: String,
    },
}

/// Runs `tidewatch-collector pki` over the PKI in `dir`.
pub fn run(dir: &Path, cmd: PkiCmd) -> anyhow::Result<()> {
    let p = Pki::new(dir);
    match cmd {
        PkiCmd::InitCa { name, days } => {
            let (c, k) = p.init_ca(&name, days)?;
            println!("created CA\n  certificate: {}  (sensors: --ca if it signs the server certificate; ingest: --client-ca if it signs sensors)\n  private key: {}  (keep offline, or in the signer only)\n  CRL:         {}  (ingest --crl)", c.display(), k.display(), p.crl_path().display());
        }
        PkiCmd::IssueServer { dns, ip, days } => {
            let mut names = dns;
            names.extend(ip.iter().map(|i| i.to_string()));
            let (c, k) = p.issue_server(&names, Validity::new(days, None))?;
            println!(
                "issued server certificate for {}\n  ingest --tls-cert {} --tls-key {}",
                names.join(", "),
                c.display(),
                k.display()
            );
        }
        PkiCmd::Sign {
            csr,
            id,
            vessel,
            lifetime,
            out,
        } => {
            let bytes = if csr.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(io_err(&csr))?;
                b
            } else {
                fs::read(&csr).map_err(io_err(&csr))?
            };
            if out.as_deref().is_some_and(|o| o.as_os_str() == "-") {
                print!(
                    "{}",
                    p.sign_sensor_csr_pem(&bytes, &id, &vessel, lifetime.validity()?)?
                );
                return Ok(());
            }
            let c =
                p.sign_sensor_csr(&bytes, &id, &vessel, lifetime.validity()?, out.as_deref())?;
            println!("signed sensor certificate {id} (vessel {vessel}): {}\n  copy it and {} to the sensor (--cert, --ca)", c.display(), p.ca_cert_path().display());
        }
        PkiCmd::IssueSensor {
            id,
            vessel,
            lifetime,
            out,
        } => {
            let (c, k) = p.issue_sensor(&id, &vessel, lifetime.validity()?, out.as_deref())?;
            eprintln!("warning: issue-sensor made the private key here (lab use); in a fleet the key is born on the sensor: `tidewatch-sensor enroll`, then `pki sign`");
            println!("issued sensor certificate {id} (vessel {vessel})\n  copy to the sensor: {} {} {}\n  tidewatch-sensor run --ca ca.pem --cert {id}.pem --key {id}-key.pem ...", p.ca_cert_path().display(), c.display(), k.display());
        }
        PkiCmd::IssueIngest { name, days, print } => {
            if print {
                let (k, c) = p.make_ingest(&name, Validity::new(days, None))?;
                print!("{k}{c}");
                return Ok(());
            }
            let (c, k) = p.issue_ingest(&name, Validity::new(days, None))?;
            println!(
                "issued ingest certificate {name}\n  ingest --signer-cert {} --signer-key {}",
                c.display(),
                k.display()
            );
        }
        PkiCmd::Print { what } => {
            let path = match what {
                PrintWhat::Ca => p.ca_cert_path(),
                PrintWhat::Crl => p.crl_path(),
            };
            print!("{}", fs::read_to_string(&path).map_err(io_err(&path))?);
        }
        PkiCmd::Revoke { id } => {
            let n = p.revoke_sensor(&id)?;
            println!("revoked {n} certificate(s) of sensor {id}; CRL rewritten: {}\n  ingest reloads it within seconds and closes the sensor's open streams; copy it where ingest reads --crl (the chart's Secret) if that is elsewhere", p.crl_path().display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("id", "crane-07.port_a").is_ok());
        for bad in ["", "a b", "x/y", ".hidden", &"x".repeat(65), "ü"] {
            assert!(validate_name("id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn issue_and_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init_ca("test CA", 30).unwrap();
        assert!(matches!(pki.init_ca("again", 30), Err(PkiError::Exists(_))));
        let (c, k) = pki
            .issue_sensor("s1", "mv-aurora", Validity::new(10, None), None)
            .unwrap();
        assert!(c.exists() && k.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&k).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let pem = fs::read(&c).unwrap();
        let id = crate::identity::identity_from_pem(&pem).unwrap();
        assert_eq!(id.not_after, {
            let (_, c) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            c.parse_x509().unwrap().validity().not_after.timestamp()
        });
        assert_eq!(id.sensor_id, "s1");
        assert_eq!(id.vessel, "mv-aurora");
        assert_eq!(pki.revoke_sensor("s1").unwrap(), 1);
        assert_eq!(pki.revoke_sensor("s1").unwrap(), 0);
        assert!(matches!(
            pki.revoke_sensor("nobody"),
            Err(PkiError::UnknownSensor(_))
        ));
        assert!(fs::read_to_string(pki.crl_path())
            .unwrap()
            .contains("X509 CRL"));
    }

    /// A CSR for a fresh key, asking for names of its own choosing.
    fn csr_asking_for(uri: &str) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
        let der = p.serialize_request(&key).unwrap().der().to_vec();
        (key, der)
    }

    fn der_of(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn a_csr_is_signed_for_the_operators_identity_and_renewed_only_for_a_valid_unrevoked_sensor() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init_ca("test CA", 30).unwrap();
        // The CSR asks to be another sensor: ignored.
        let (key, csr) = csr_asking_for("urn:tidewatch:sensor:admiral");
        // Issued 29 days ago, one day left: in its renewal window.
        let tomorrow = OffsetDateTime::now_utc() + Duration::days(1);
        let out = pki
            .sign_sensor_csr(
                &csr,
                "s1",
                "mv-aurora",
                Validity::new(10, Some(tomorrow)),
                None,
            )
            .unwrap();
        let pem = fs::read_to_string(&out).unwrap();
        let id = crate::identity::identity_from_pem(pem.as_bytes()).unwrap();
        assert_eq!(
            (id.sensor_id.as_str(), id.vessel.as_str()),
            ("s1", "mv-aurora")
        );
        let der = der_of(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(
            crate::identity::san_uris(&cert, SENSOR_URI_PREFIX),
            vec!["s1"]
        );
        // A CSR whose signature does not match (altered) is refused.
        let mut altered = csr.clone();
        let n = altered.len();
        altered[n - 5] ^= 0x55;
        assert!(matches!(
            pki.sign_sensor_csr(&altered, "s2", "mv-aurora", Validity::new(10, None), None),
            Err(PkiError::Csr(_))
        ));

        // Renewal: same identity, new key, longer life; in the index.
        let presented = der_of(&pem);
        let (new_key, new_csr) = csr_asking_for("urn:tidewatch:sensor:admiral");
        let (renewed, not_after) = pki.renew_sensor(&presented, &new_csr, 3600).unwrap();
        let rid = crate::identity::identity_from_pem(renewed.as_bytes()).unwrap();
        assert_eq!(
            (rid.sensor_id.as_str(), rid.vessel.as_str()),
            ("s1", "mv-aurora")
        );
        assert_eq!(rid.not_after, not_after);
        let rder = der_of(&renewed);
        let (_, rc) = x509_parser::parse_x509_certificate(&rder).unwrap();
        assert_eq!(
            rc.public_key().subject_public_key.data.as_ref(),
            new_key.public_key_raw()
        );
        assert!(pki.read_index().unwrap().iter().any(|r| r[0] == rid.serial));

        // The renewed one has its whole life ahead: too early to renew it.
        assert!(matches!(
            pki.renew_sensor(&rder, &new_csr, 3600),
            Err(PkiError::TooEarly(_))
        ));
        let refused = |presented: &[u8]| match pki.renew_sensor(presented, &new_csr, 3600) {
            Err(PkiError::Renewal(why)) => why,
            other => panic!("renewal not refused: {other:?}"),
        };
        // Not a sensor certificate: the server's.
        let (server, _) = pki
            .issue_server(&["localhost".into()], Validity::new(10, None))
            .unwrap();
        assert!(refused(&der_of(&fs::read_to_string(server).unwrap())).contains("clientAuth"));
        // Expired.
        let (old, _) = pki
            .issue_sensor(
                "old",
                "mv-aurora",
                Validity::new(1, parse_date("2020-01-01").ok()),
                None,
            )
            .unwrap();
        assert!(refused(&der_of(&fs::read_to_string(old).unwrap())).contains("expired"));
        // From another CA, under the same name.
        let other = tempfile::tempdir().unwrap();
        let rogue = Pki::new(other.path());
        rogue.init_ca("rogue CA", 30).unwrap();
        let (forged, _) = rogue
            .issue_sensor("s1", "mv-aurora", Validity::new(10, None), None)
            .unwrap();
        assert!(refused(&der_of(&fs::read_to_string(forged).unwrap()))
            .contains("not signed by this CA"));
        // Revoked (every certificate of the sensor, the renewed one too).
        pki.revoke_sensor("s1").unwrap();
        assert!(refused(&presented).contains("revoked"));
        assert!(refused(&der_of(&renewed)).contains("revoked"));
        // Signed by this CA but never entered in its index.
        let issuer = pki.issuer().unwrap();
        let mut p = leaf_params("ghost", Validity::new(10, None));
        p.subject_alt_names = vec![SanType::URI(
            "urn:tidewatch:sensor:ghost".try_into().unwrap(),
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let ghost = p.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
        assert!(refused(ghost.der()).contains("not in the index"));
    }

    #[test]
    fn dates_parse() {
        assert!(parse_date("2024-02-29").is_ok());
        assert!(parse_date("2023-02-29").is_err());
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn concurrent_commands_lose_no_index_row_and_revocations_stay_in_the_crl() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init_ca("test CA", 30).unwrap();
        std::thread::scope(|s| {
            for i in 0..6 {
                let pki = Pki::new(dir.path());
                s.spawn(move || {
                    pki.issue_sensor(&format!("s{i}"), "mv-aurora", Validity::new(10, None), None)
                        .unwrap()
                });
            }
        });
        assert_eq!(pki.read_index().unwrap().len(), 6);
        for id in ["s1", "s4"] {
            assert_eq!(pki.revoke_sensor(id).unwrap(), 1);
        }
        let crl = fs::read_to_string(pki.crl_path()).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(crl.as_bytes())
            .map(|c: rustls_pki_types::CertificateRevocationListDer| c.to_vec())
            .unwrap();
        let revoked: Vec<String> = pki
            .read_index()
            .unwrap()
            .into_iter()
            .filter(|r| r[5] != "-")
            .map(|r| r[0].clone())
            .collect();
        assert_eq!(revoked.len(), 2);
        for serial in &revoked {
            let bytes = unhex(serial).unwrap();
            assert!(
                der.windows(bytes.len()).any(|w| w == bytes.as_slice()),
                "serial {serial} missing from the CRL"
            );
        }
        // A symlink planted at the CRL is refused, its target untouched.
        fs::remove_file(pki.crl_path()).unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, pki.crl_path()).unwrap();
        assert!(matches!(pki.revoke_sensor("s2"), Err(PkiError::Io { .. })));
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }
}
