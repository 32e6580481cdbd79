//! Alerts as syslog messages (RFC 5424) over TCP or TLS, octet-counted
//! (RFC 6587), the body JSON or CEF (ArcSight Common Event Format).
//!
//! Syslog over TCP has no acknowledgement. Each alert goes on a connection
//! of its own, closed by us once written; the receiver's orderly close in
//! return confirms it read the message. A receiver that dies first (reset,
//! timeout) gets the alert again on the next connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::alerts::Alert;

/// The message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Body {
    Json,
    Cef,
}

/// Where and how syslog messages go.
pub struct Syslog {
    addr: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    body: Body,
    hostname: String,
}

/// Private Enterprise Number 32473, reserved for documentation (RFC 5612),
/// names tidewatch's structured data.
const SD_ID: &str = "tidewatch@32473";
/// Facility local4.
const FACILITY: u8 = 20;

impl Syslog {
    /// To `addr` (host:port); with `tls`, verified against `ca` (PEM) as
    /// `server_name` (default: the host of `addr`).
    pub fn new(
        addr: &str,
        tls: bool,
        ca: Option<&PathBuf>,
        server_name: Option<&str>,
        body: Body,
    ) -> anyhow::Result<Self> {
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .with_context(|| format!("syslog address {addr:?} is not host:port"))?;
        let tls = if tls {
            let name =
                rustls_pki_types::ServerName::try_from(server_name.unwrap_or(host).to_string())
                    .with_context(|| format!("invalid TLS server name for {addr}"))?;
            Some((tls_connector(ca)?, name))
        } else {
            None
        };
        Ok(Syslog {
            addr: addr.to_string(),
            tls,
            body,
            hostname: crate::kafka::node_name(),
        })
    }

    /// Delivers one alert, confirmed by the receiver's close.
    pub async fn send(&self, a: &Alert) -> anyhow::Result<()> {
        let msg = frame(&rfc5424(a, self.body, &self.hostname));
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            Some((connector, name)) => {
                let s = tokio::time::timeout(
                    Duration::from_secs(10),
                    connector.connect(name.clone(), tcp),
                )
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
                confirm(s, &msg).await
            }
            None => confirm(tcp, &msg).await,
        }
    }
}

/// A TLS client verifying servers against `ca` (PEM; default: the
/// system's CAs).
pub fn tls_connector(ca: Option<&PathBuf>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = ca
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&ca)
        .with_context(|| format!("cannot read CA {}", ca.display()))?
    {
        roots.add(c.with_context(|| format!("bad certificate in {}", ca.display()))?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// Writes `msg`, closes our side and waits for the receiver to close its.
async fn confirm<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, msg: &[u8]) -> anyhow::Result<()> {
    let io = async {
        s.write_all(msg).await?;
        s.flush().await?;
        s.shutdown().await?;
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // A TLS receiver that closes the connection without a
                // close_notify has still read all we sent before our close
                // (unread data would have made it a reset).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), io)
        .await
        .context("the receiver did not confirm within 15 s")?
        .context("the receiver did not confirm")
}

/// RFC 6587 octet counting: the length, a space, the message.
pub fn frame(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

fn syslog_severity(s: &str) -> u8 {
    match s {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        "low" => 5,
        _ => 6,
    }
}

/// A structured-data parameter value: `"`, `\` and `]` escaped.
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A printable-ASCII header field of at most `max` characters, `-` if empty.
fn header_field(v: &str, max: usize) -> String {
    let s: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The alert as an RFC 5424 message.
pub fn rfc5424(a: &Alert, body: Body, hostname: &str) -> String {
    let pri = FACILITY * 8 + syslog_severity(&a.severity);
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(a.first_seen_us as i128 * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into());
    let sd = format!(
        "[{SD_ID} id=\"{}\" rule=\"{}\" severity=\"{}\" vessel=\"{}\" sensor=\"{}\"]",
        sd_escape(&a.id),
        sd_escape(&a.rule),
        sd_escape(&a.severity),
        sd_escape(&a.vessel),
        sd_escape(&a.sensor_id)
    );
    let msg = match body {
        Body::Json => serde_json::to_string(a).unwrap_or_default(),
        Body::Cef => cef(a),
    };
    format!(
        "<{pri}>1 {ts} {} tidewatch - {} {sd} {msg}",
        header_field(hostname, 255),
        header_field(&a.rule, 32)
    )
}

/// CEF header field: `\` and `|` escaped.
fn cef_header(v: &str) -> String {
    v.replace('\\', "\\\\").replace('|', "\\|")
}

/// CEF extension value: `\`, `=` and line breaks escaped.
fn cef_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

fn cef_severity(s: &str) -> u8 {
    match s {
        "critical" => 10,
        "high" => 8,
        "medium" => 5,
        "low" => 3,
        _ => 1,
    }
}

/// The alert in ArcSight Common Event Format.
pub fn cef(a: &Alert) -> String {
    let ev: serde_json::Value = serde_json::from_str(&a.evidence).unwrap_or_default();
    let mut ext = vec![
        ("rt", (a.first_seen_us / 1000).to_string()),
        ("externalId", a.id.clone()),
        ("cs1Label", "vessel".into()),
        ("cs1", a.vessel.clone()),
        ("cs2Label", "sensor".into()),
        ("cs2", a.sensor_id.clone()),
        ("cs3Label", "subject".into()),
        ("cs3", a.subject.clone()),
    ];
    for (key, field) in [("src", "client_ip"), ("dst", "server_ip")] {
        if let Some(v) = ev.get(field).and_then(|v| v.as_str()) {
            ext.push((key, v.to_string()));
        }
    }
    if let Some(p) = ev.get("server_port").and_then(|v| v.as_u64()) {
        ext.push(("dpt", p.to_string()));
    }
    ext.push(("msg", a.summary.clone()));
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", cef_value(&v)))
        .collect();
    format!(
        "CEF:0|tidewatch|tidewatch|{}|{}|{}|{}|{}",
        cef_header(env!("CARGO_PKG_VERSION")),
        cef_header(&a.rule),
        cef_header(&a.summary),
        cef_severity(&a.severity),
        ext.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            id: "ab12".into(),
            rule: "intel-contact".into(),
            severity: "high".into(),
            vessel: "mv-aurora".into(),
            sensor_id: "bridge-1".into(),
            subject: "203.0.113.7".into(),
            bucket_start: 1_700_000_000,
            first_seen_us: 1_700_000_000_123_456,
            summary: "10.1.0.5 -> 203.0.113.7:443 contacted ip 203.0.113.7 (cert|x: a=b)".into(),
            evidence:
                r#"{"client_ip": "10.1.0.5", "server_ip": "203.0.113.7", "server_port": 443}"#
                    .into(),
            raised_at: 1_700_000_100,
            evidence_rank: 0,
        }
    }

    #[test]
    fn rfc5424_messages_are_octet_counted_with_structured_data() {
        let m = rfc5424(&alert(), Body::Json, "shore-1");
        assert!(
            m.starts_with("<163>1 2023-11-14T22:13:20.123456Z shore-1 tidewatch - intel-contact [tidewatch@32473 id=\"ab12\" rule=\"intel-contact\" severity=\"high\" vessel=\"mv-aurora\" sensor=\"bridge-1\"] {"),
            "{m}"
        );
        let json = m.split_once("] ").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["id"], "ab12");
        let f = frame(&m);
        let (len, rest) = std::str::from_utf8(&f).unwrap().split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        assert_eq!(sd_escape(r#"a"b]c\d"#), r#"a\"b\]c\\d"#);
    }

    #[test]
    fn cef_escapes_its_header_and_extension() {
        let c = cef(&alert());
        assert!(c.starts_with(&format!(
            "CEF:0|tidewatch|tidewatch|{}|intel-contact|10.1.0.5 -> 203.0.113.7:443 contacted ip 203.0.113.7 (cert\\|x: a=b)|8|rt=1700000000123 externalId=ab12 ",
            env!("CARGO_PKG_VERSION")
        )), "{c}");
        assert!(c.contains(" src=10.1.0.5 dst=203.0.113.7 dpt=443 "), "{c}");
        assert!(
            c.ends_with("msg=10.1.0.5 -> 203.0.113.7:443 contacted ip 203.0.113.7 (cert|x: a\\=b)"),
            "{c}"
        );
    }
}
