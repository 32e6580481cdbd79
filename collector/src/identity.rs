//! Sensor identity, read from the verified client certificate, never from the
//! payload.
//!
//! A sensor certificate (issued by `tidewatch-collector pki sign` or
//! `issue-sensor`) carries:
//! - exactly one SAN URI `urn:tidewatch:sensor:<ID>`: the sensor id;
//! - at most one SAN URI `urn:tidewatch:vessel:<VESSEL>` (vessel, crane or
//!   site; empty if absent);
//! - the extended key usage clientAuth.
//!
//! Anything else the CA signed (a server certificate, the ingest's
//! certificate towards the signer, a certificate made for another purpose)
//! is not a sensor and is refused. Certificates from before this convention
//! (identity in the subject CN, vessel in the OU) are accepted only with
//! [`IdentityPolicy::legacy_cn`] (ingest's `--allow-legacy-cn-identity`).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

pub const SENSOR_URI_PREFIX: &str = "urn:tidewatch:sensor:";
pub const VESSEL_URI_PREFIX: &str = "urn:tidewatch:vessel:";
/// SAN URI of an ingest node's certificate towards the signer.
pub const INGEST_URI_PREFIX: &str = "urn:tidewatch:ingest:";

/// A sensor id or vessel name that is not one (see [`validate_name`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid {what} {value:?}: use 1-64 characters from A-Z a-z 0-9 . _ - (not starting with '.')"
)]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
}

/// An id or vessel name: 1-64 chars of `[A-Za-z0-9._-]`, not starting with
/// '.', so it is safe in a URI, a file name and a Kafka key.
pub fn validate_name(what: &'static str, v: &str) -> Result<(), InvalidName> {
    let ok_chars = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if v.is_empty() || v.len() > 64 || !ok_chars || v.starts_with('.') {
        return Err(InvalidName {
            what,
            value: v.to_string(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorIdentity {
    pub sensor_id: String,
    pub vessel: String,
    /// Certificate serial, lowercase hex without separators (as in the PKI
    /// index and the CRL checks).
    pub serial: String,
    /// End of the certificate's validity, Unix seconds.
    pub not_after: i64,
}

/// What ingest accepts as a sensor certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityPolicy {
    /// Accept a certificate without a sensor URI, taking the id from the
    /// subject CN and the vessel from the OU (certificates issued before
    /// the URI convention). Off by default: any certificate the CA ever
    /// signed would pass as a sensor.
    pub legacy_cn: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("client certificate cannot be parsed: {0}")]
    Parse(String),
    #[error(
        "client certificate is not a sensor certificate: it has no {SENSOR_URI_PREFIX}<ID> SAN URI"
    )]
    Missing,
    #[error("client certificate carries {0} {SENSOR_URI_PREFIX}* SAN URIs; a sensor certificate has exactly one")]
    ManySensors(usize),
    #[error("client certificate carries {0} {VESSEL_URI_PREFIX}* SAN URIs; a sensor certificate has at most one")]
    ManyVessels(usize),
    #[error("client certificate lacks the clientAuth extended key usage; it is not a sensor certificate")]
    NoClientAuth,
    #[error("client certificate identity {0:?} is not a valid sensor id")]
    Invalid(String),
}

impl IdentityError {
    /// Short label for refusal counters.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Parse(_) => "bad_certificate",
            IdentityError::Missing => "no_sensor_uri",
            IdentityError::ManySensors(_) => "many_sensor_uris",
            IdentityError::ManyVessels(_) => "many_vessel_uris",
            IdentityError::NoClientAuth => "no_client_auth_eku",
            IdentityError::Invalid(_) => "bad_sensor_id",
        }
    }
}

/// The SAN URIs of `cert` that start with `prefix`, without it.
pub fn san_uris<'a>(cert: &'a X509Certificate<'_>, prefix: &str) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix(prefix),
            _ => None,
        })
        .collect()
}

/// Reads the identity from a parsed certificate under `policy`.
pub fn identity_of(
    cert: &X509Certificate<'_>,
    policy: IdentityPolicy,
) -> Result<SensorIdentity, IdentityError> {
    let client_auth = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
    if !client_auth {
        return Err(IdentityError::NoClientAuth);
    }
    let sensors = san_uris(cert, SENSOR_URI_PREFIX);
    let vessels = san_uris(cert, VESSEL_URI_PREFIX);
    if vessels.len() > 1 {
        return Err(IdentityError::ManyVessels(vessels.len()));
    }
    let subject = cert.subject();
    let (sensor, vessel) = match sensors.as_slice() {
        [one] => (one.to_string(), vessels.first().map(|v| v.to_string())),
        [] if policy.legacy_cn => {
            let first = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue>| {
                it.next().and_then(|c| c.as_str().ok()).map(str::to_string)
            };
            let cn = first(&mut subject.iter_common_name()).ok_or(IdentityError::Missing)?;
            let ou = vessels
                .first()
                .map(|v| v.to_string())
                .or_else(|| first(&mut subject.iter_organizational_unit()));
            (cn, ou)
        }
        [] => return Err(IdentityError::Missing),
        many => return Err(IdentityError::ManySensors(many.len())),
    };
    validate_name("sensor id", &sensor).map_err(|_| IdentityError::Invalid(sensor.clone()))?;
    Ok(SensorIdentity {
        sensor_id: sensor,
        vessel: vessel.unwrap_or_default(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Reads the identity from a DER certificate.
pub fn identity_from_der(
    der: &[u8],
    policy: IdentityPolicy,
) -> Result<SensorIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    identity_of(&cert, policy)
}

/// Reads the identity from the first certificate of a PEM file (other
/// items, such as a key before it, are skipped).
pub fn identity_from_pem(pem: &[u8]) -> Result<SensorIdentity, IdentityError> {
    let cert = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .ok_or_else(|| IdentityError::Parse("no CERTIFICATE in the PEM text".into()))?;
    identity_from_der(&cert.contents, IdentityPolicy::default())
}
