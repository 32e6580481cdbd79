//! A minimal HTTP client (ClickHouse's HTTP interface, metrics and health
//! endpoints): no dependency for two requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Minimal HTTP GET; the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    text(request(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
        Duration::from_secs(10),
    ))
}

/// Minimal HTTP/1.0 POST (enough for ClickHouse's HTTP interface).
pub fn http_post(port: u16, path: &str, body: &str) -> Result<String, String> {
    text(http_post_bytes(port, path, body.as_bytes()))
}

/// As [`http_post`], with a binary body and answer (RowBinary data).
pub fn http_post_bytes(port: u16, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    request(port, req, Duration::from_secs(300))
}

/// The value of an unlabelled metric served at 127.0.0.1:`port`/metrics
/// (`None` while it cannot be scraped or does not have it).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let body = http_get(port, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn text(r: Result<Vec<u8>, String>) -> Result<String, String> {
    r.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Sends one HTTP/1.0 request to 127.0.0.1:`port`; the body of a 200
/// answer, else the status line and body.
fn request(port: u16, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(&request).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let body = resp.get(split + 4..).unwrap_or_default().to_vec();
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body)
    } else {
        Err(format!(
            "{}: {}",
            head.lines().next().unwrap_or(""),
            String::from_utf8_lossy(&body)
        ))
    }
}
