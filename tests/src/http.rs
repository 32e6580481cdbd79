//! A minimal HTTP client (ClickHouse's HTTP interface, metrics and health
//! endpoints): no dependency for two requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Minimal HTTP GET; the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    request(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
        Duration::from_secs(10),
    )
}

/// Minimal HTTP/1.0 POST (enough for ClickHouse's HTTP interface).
pub fn http_post(port: u16, path: &str, body: &str) -> Result<String, String> {
    request(
        port,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        Duration::from_secs(60),
    )
}

/// The value of an unlabelled metric served at 127.0.0.1:`port`/metrics
/// (`None` while it cannot be scraped or does not have it).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let body = http_get(port, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Sends one HTTP/1.0 request to 127.0.0.1:`port`; the body of a 200
/// answer, else the status line and body.
fn request(port: u16, request: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(format!("{}: {body}", head.lines().next().unwrap_or("")))
    }
}
