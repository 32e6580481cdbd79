//! Signed envelopes: ingest signs every `IngestedBatch` it writes to Kafka,
//! and the sink stores only envelopes whose signature checks out, so a
//! client that reaches the broker some other way cannot write batches
//! under a sensor's name (the sink dead-letters them, with the reason).
//!
//! - Ed25519: ingest holds the signing key, the sinks only verify keys
//!   (PEM files openssl reads and writes too: `openssl genpkey -algorithm
//!   ed25519`, `openssl pkey -pubout`), so a sink cannot sign.
//! - The signature covers the record's value (the encoded envelope:
//!   sensor, vessel, seq, payload): Ed25519 over a domain tag and the
//!   value's SHA-512 (one pass over a large batch instead of Ed25519's two),
//!   and travels in the Kafka header [`SIGNATURE_HEADER`]: key id (the first
//!   8 bytes of the SHA-256 of the public key) then the 64-byte signature.
//! - Rotation: give the sinks the new verify key beside the old one, then
//!   switch ingest to the new signing key, then, once the topic holds no
//!   record signed with the old key (its retention, or the sinks' lag at
//!   zero), drop the old verify key.

use std::path::{Path, PathBuf};

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use tidewatch_proto::state_file::{self, Access, Durability};

/// Kafka header carrying the envelope's signature.
pub const SIGNATURE_HEADER: &str = "tidewatch-signature";
/// What is signed: this tag, then the SHA-512 of the record's value.
const DOMAIN: &[u8] = b"tidewatch.v1.IngestedBatch/sha512\0";

/// The message signed for a record value.
fn signed_message(value: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA512, value);
    let mut msg = Vec::with_capacity(DOMAIN.len() + digest.as_ref().len());
    msg.extend_from_slice(DOMAIN);
    msg.extend_from_slice(digest.as_ref());
    msg
}
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the
/// 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const KEY_ID_LEN: usize = 8;
const SIG_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
}

/// Why an envelope is not taken as ingest's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("unsigned envelope (no {SIGNATURE_HEADER} header): not written by ingest")]
    Unsigned,
    #[error("envelope signature header of {0} bytes is malformed")]
    Malformed(usize),
    #[error("envelope signed with unknown key {0} (not one of the sink's --envelope-verify-key)")]
    UnknownKey(String),
    #[error("envelope signature does not match its content: forged or altered")]
    BadSignature,
}

fn key_id(public: &[u8]) -> [u8; KEY_ID_LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, public);
    d.as_ref()[..KEY_ID_LEN]
        .try_into()
        .expect("digest is longer")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_err(path: &Path) -> impl FnOnce(String) -> KeyError + '_ {
    move |why| KeyError::Read {
        path: path.to_path_buf(),
        why,
    }
}

/// Ingest's signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: [u8; KEY_ID_LEN],
}

impl SigningKey {
    /// Reads an Ed25519 private key (PKCS#8 PEM).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let der =
            PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| read_err(path)(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| read_err(path)(format!("not an Ed25519 private key: {e}")))?;
        let id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, id })
    }

    /// The key id, hex, for logs.
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    /// The signature header's value for a record value.
    pub fn sign(&self, value: &[u8]) -> Vec<u8> {
        let sig = self.pair.sign(&signed_message(value));
        let mut out = self.id.to_vec();
        out.extend_from_slice(sig.as_ref());
        out
    }
}

/// The sink's verify keys.
#[derive(Default)]
pub struct VerifyKeys {
    keys: Vec<([u8; KEY_ID_LEN], Vec<u8>)>,
}

impl VerifyKeys {
    /// Reads Ed25519 public keys (SubjectPublicKeyInfo PEM).
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for path in paths {
            let spki = SubjectPublicKeyInfoDer::from_pem_file(path)
                .map_err(|e| read_err(path)(e.to_string()))?;
            let raw = spki
                .as_ref()
                .strip_prefix(&ED25519_SPKI_PREFIX[..])
                .filter(|k| k.len() == 32)
                .ok_or_else(|| read_err(path)("not an Ed25519 public key".into()))?;
            keys.push((key_id(raw), raw.to_vec()));
        }
        Ok(VerifyKeys { keys })
    }

    /// The key ids, hex, for logs.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| hex(id)).collect()
    }

    /// Checks a record value against its signature header.
    pub fn verify(&self, value: &[u8], header: Option<&[u8]>) -> Result<(), EnvelopeError> {
        let h = header.ok_or(EnvelopeError::Unsigned)?;
        if h.len() != KEY_ID_LEN + SIG_LEN {
            return Err(EnvelopeError::Malformed(h.len()));
        }
        let (id, sig) = h.split_at(KEY_ID_LEN);
        let (_, public) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| EnvelopeError::UnknownKey(hex(id)))?;
        UnparsedPublicKey::new(&signature::ED25519, public)
            .verify(&signed_message(value), sig)
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

/// How a consumer of the batches topic (the sink, the detector) checks
/// who wrote each record.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Ed25519 public key(s) (PEM) of ingest's envelope signing key; a
    /// record not signed by one of them is refused (the sink dead-letters
    /// it, never stores it). Repeat (or separate with commas) to accept the
    /// old and the new key during a rotation.
    #[arg(
        long,
        env = "TIDEWATCH_ENVELOPE_VERIFY_KEYS",
        value_name = "PEM",
        value_delimiter = ',',
        required_unless_present = "accept_unsigned_envelopes"
    )]
    pub envelope_verify_key: Vec<PathBuf>,
    /// Take envelopes without checking who wrote them (anything that can
    /// write to the topic can then write under any sensor's name; for a
    /// topic holding records from before signing, during an upgrade).
    #[arg(long)]
    pub accept_unsigned_envelopes: bool,
}

impl VerifyArgs {
    /// The verify keys, or `None` when signatures are not checked.
    pub fn keys(&self) -> Result<Option<VerifyKeys>, KeyError> {
        if self.accept_unsigned_envelopes {
            tracing::warn!("--accept-unsigned-envelopes: envelope signatures are not checked");
            return Ok(None);
        }
        if self.envelope_verify_key.is_empty() {
            return Err(KeyError::Read {
                path: PathBuf::from("--envelope-verify-key"),
                why: "give ingest's envelope verify key(s), or --accept-unsigned-envelopes \
                      to take records without checking who wrote them"
                    .into(),
            });
        }
        let keys = VerifyKeys::load(&self.envelope_verify_key)?;
        tracing::info!(key_ids = ?keys.ids(), "envelope signatures are checked");
        Ok(Some(keys))
    }
}

/// The `tidewatch-signature` header of a Kafka record (the last one, if
/// repeated).
pub fn signature_of<M: rdkafka::message::Message>(m: &M) -> Option<Vec<u8>> {
    use rdkafka::message::Headers;
    m.headers().and_then(|h| {
        h.iter()
            .filter(|h| h.key == SIGNATURE_HEADER)
            .filter_map(|h| h.value.map(<[u8]>::to_vec))
            .last()
    })
}

/// Writes a new key pair: `DIR/envelope-signing-key.pem` (0600, for
/// ingest) and `DIR/envelope-verify-key.pem` (for the sinks). Refuses to
/// overwrite either.
pub fn generate(dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
    let (sk, vk) = (
        dir.join("envelope-signing-key.pem"),
        dir.join("envelope-verify-key.pem"),
    );
    for p in [&sk, &vk] {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| read_err(dir)(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("just generated");
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    std::fs::create_dir_all(dir).map_err(|e| read_err(dir)(e.to_string()))?;
    let write = |p: &Path, tag: &str, der: &[u8], access| {
        let text = pem::encode(&pem::Pem::new(tag, der));
        state_file::replace_with(p, text.as_bytes(), Durability::Synced, access)
            .map_err(|e| read_err(p)(e.to_string()))
    };
    write(&sk, "PRIVATE KEY", pkcs8.as_ref(), Access::Private)?;
    write(&vk, "PUBLIC KEY", &spki, Access::Shared)?;
    Ok((sk, vk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_envelopes_verify_and_anything_else_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, vk) = generate(dir.path()).unwrap();
        assert!(matches!(generate(dir.path()), Err(KeyError::Exists(_))));
        let key = SigningKey::load(&sk).unwrap();
        let keys = VerifyKeys::load(std::slice::from_ref(&vk)).unwrap();
        assert_eq!(keys.ids(), vec![key.id()]);
        let sig = key.sign(b"envelope");
        assert_eq!(keys.verify(b"envelope", Some(&sig)), Ok(()));
        assert_eq!(keys.verify(b"envelope", None), Err(EnvelopeError::Unsigned));
        assert_eq!(
            keys.verify(b"envelopf", Some(&sig)),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(
            keys.verify(b"envelope", Some(&sig[..10])),
            Err(EnvelopeError::Malformed(10))
        );
        // Another ingest's key (a key the sink was not given).
        let other = tempfile::tempdir().unwrap();
        let (osk, _) = generate(other.path()).unwrap();
        let foreign = SigningKey::load(&osk).unwrap().sign(b"envelope");
        assert!(matches!(
            keys.verify(b"envelope", Some(&foreign)),
            Err(EnvelopeError::UnknownKey(_))
        ));
        // A public key is not a signing key, and the reverse.
        assert!(SigningKey::load(&vk).is_err());
        assert!(VerifyKeys::load(&[sk]).is_err());
    }
}
