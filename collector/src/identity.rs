//! Sensor identity, read from the verified client certificate, never from the
//! payload.
//!
//! Convention (written by `tidewatch-collector pki issue-sensor`):
//! - sensor id: SAN URI `urn:tidewatch:sensor:<ID>`; if absent, the subject CN;
//! - vessel (or crane/site): SAN URI `urn:tidewatch:vessel:<VESSEL>`; if
//!   absent, the subject OU; if that is absent too, empty.
//!
//! A certificate from which no valid sensor id can be read is refused.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

pub const SENSOR_URI_PREFIX: &str = "urn:tidewatch:sensor:";
pub const VESSEL_URI_PREFIX: &str = "urn:tidewatch:vessel:";

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
    /// Certificate serial, hex, for logs.
    pub serial: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("client certificate cannot be parsed: {0}")]
    Parse(String),
    #[error(
        "client certificate carries no sensor identity (no {SENSOR_URI_PREFIX}* SAN and no CN)"
    )]
    Missing,
    #[error("client certificate identity {0:?} is not a valid sensor id")]
    Invalid(String),
}

/// Reads the identity from a DER certificate.
pub fn identity_from_der(der: &[u8]) -> Result<SensorIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut sensor = None;
    let mut vessel = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(SENSOR_URI_PREFIX) {
                    sensor.get_or_insert_with(|| id.to_string());
                } else if let Some(v) = uri.strip_prefix(VESSEL_URI_PREFIX) {
                    vessel.get_or_insert_with(|| v.to_string());
                }
            }
        }
    }
    let subject = cert.subject();
    let sensor = sensor
        .or_else(|| {
            subject
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
                .map(str::to_string)
        })
        .ok_or(IdentityError::Missing)?;
    validate_name("sensor id", &sensor).map_err(|_| IdentityError::Invalid(sensor.clone()))?;
    let vessel = vessel
        .or_else(|| {
            subject
                .iter_organizational_unit()
                .next()
                .and_then(|c| c.as_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    Ok(SensorIdentity {
        sensor_id: sensor,
        vessel,
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// Reads the identity from the first certificate of a PEM file.
pub fn identity_from_pem(pem: &[u8]) -> Result<SensorIdentity, IdentityError> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| IdentityError::Parse(e.to_string()))?;
    identity_from_der(&p.contents)
}
