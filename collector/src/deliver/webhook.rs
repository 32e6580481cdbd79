//! Alerts as JSON POSTs to a webhook (a case tool, a SOAR), over HTTP or
//! HTTPS. The body is the alert; `Idempotency-Key` and
//! `X-Tidewatch-Alert-Id` carry its id for the receiver to key on; with a
//! secret, `X-Tidewatch-Signature: sha256=HEX` is the HMAC-SHA256 of the
//! body, so the receiver can tell tidewatch's posts from anyone's. A 2xx
//! answer is a delivery; anything else is retried.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::alerts::Alert;

pub struct Webhook {
    url: hyper::Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    secret: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

/// The value of `X-Tidewatch-Signature` for `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Webhook {
    /// To `url` (http or https; https verified against `ca` or the system's
    /// CAs), signing with the secret in `secret_file`, with extra `headers`
    /// ("Name: value").
    pub fn new(
        url: &str,
        ca: Option<&PathBuf>,
        secret_file: Option<&PathBuf>,
        headers: &[String],
    ) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("invalid --webhook {url:?}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("--webhook {url:?}: use an http:// or https:// URL"),
        };
        let host = uri
            .host()
            .with_context(|| format!("--webhook {url:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(super::syslog::tls_connector(ca)?)
        } else {
            None
        };
        let secret = match secret_file {
            Some(p) => {
                let s = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                let s = s.trim_ascii();
                if s.is_empty() {
                    bail!("webhook secret {} is empty", p.display());
                }
                Some(s.to_vec())
            }
            None => None,
        };
        let headers = headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .filter(|(k, _)| !k.is_empty())
                    .with_context(|| format!("--webhook-header {h:?}: expected \"Name: value\""))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Webhook {
            url: uri,
            host,
            port,
            tls,
            secret,
            headers,
        })
    }

    /// Posts one alert; a 2xx answer is a delivery.
    pub async fn send(&self, a: &Alert) -> anyhow::Result<()> {
        let body = serde_json::to_vec(a)?;
        let path = self
            .url
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let mut req = Request::post(path)
            .header(
                hyper::header::HOST,
                self.url.authority().map_or("", |x| x.as_str()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &a.id)
            .header("X-Tidewatch-Alert-Id", &a.id);
        if let Some(k) = &self.secret {
            req = req.header("X-Tidewatch-Signature", signature(k, &body));
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("cannot connect to {}:{}", self.host, self.port))?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                Some(c) => {
                    let name = rustls_pki_types::ServerName::try_from(self.host.clone())?;
                    let s = c.connect(name, tcp).await.context("TLS handshake")?;
                    post(TokioIo::new(s), req).await
                }
                None => post(TokioIo::new(tcp), req).await,
            }
        };
        let (status, text) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .context("no answer within 30 s")??;
        if !status.is_success() {
            bail!(
                "the webhook answered {status}: {}",
                text.chars().take(200).collect::<String>()
            );
        }
        Ok(())
    }
}

/// One HTTP/1.1 exchange on a fresh connection.
async fn post<T>(io: T, req: Request<Full<Bytes>>) -> anyhow::Result<(hyper::StatusCode, String)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
