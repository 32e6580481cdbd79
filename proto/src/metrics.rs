//! Prometheus metrics shared by the sensor and the collector: a small
//! registry (counters, gauges, histograms, labelled counters, gauges computed
//! at scrape time) rendered in the Prometheus text exposition format 0.0.4,
//! and an HTTP endpoint serving `GET /metrics` and `GET /healthz`.
//!
//! Names follow the Prometheus conventions: `tidewatch_<component>_...`,
//! base units (seconds, bytes), `_total` on counters (added by the
//! registry), `_seconds`/`_bytes` suffixes on the rest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as f64 bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub fn add(&self, d: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + d).to_bits())
            });
    }
}

/// Counts per label value (one label), e.g. refusals by reason.
#[derive(Debug)]
pub struct CounterVec {
    label: &'static str,
    values: Mutex<BTreeMap<String, u64>>,
}

impl CounterVec {
    pub fn inc(&self, value: &str) {
        self.add(value, 1);
    }
    pub fn add(&self, value: &str, n: u64) {
        let mut m = self.values.lock().expect("metrics lock");
        match m.get_mut(value) {
            Some(v) => *v += n,
            None => {
                m.insert(value.to_string(), n);
            }
        }
    }
    pub fn get(&self, value: &str) -> u64 {
        self.values
            .lock()
            .expect("metrics lock")
            .get(value)
            .copied()
            .unwrap_or(0)
    }
    /// Makes `value` appear (at 0) before it first happens.
    pub fn touch(&self, value: &str) {
        self.add(value, 0);
    }
}

/// Observations in cumulative buckets (upper bounds in the metric's unit).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum: Gauge,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: Gauge::default(),
        }
    }
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.add(v);
    }
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Latency buckets from 1 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

type GaugeFn = Box<dyn Fn() -> Vec<(Vec<(&'static str, String)>, f64)> + Send + Sync>;

enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    CounterVec(Arc<CounterVec>),
    Histogram(Arc<Histogram>),
    /// Evaluated at each scrape: labelled values.
    GaugeFn(GaugeFn),
    /// A counter kept elsewhere, read at each scrape.
    CounterFn(GaugeFn),
}

struct Family {
    name: String,
    help: &'static str,
    metric: Metric,
}

/// The metrics of one process.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Registry::default())
    }

    fn push(&self, name: String, help: &'static str, metric: Metric) {
        let mut f = self.families.lock().expect("metrics lock");
        assert!(
            !f.iter().any(|x| x.name == name),
            "metric {name} registered twice"
        );
        f.push(Family { name, help, metric });
    }

    /// A counter named `name` + `_total`.
    pub fn counter(&self, name: &str, help: &'static str) -> Arc<Counter> {
        let c = Arc::new(Counter::default());
        self.push(format!("{name}_total"), help, Metric::Counter(c.clone()));
        c
    }

    /// A counter named `name` + `_total` with one label.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &'static str,
        label: &'static str,
    ) -> Arc<CounterVec> {
        let c = Arc::new(CounterVec {
            label,
            values: Mutex::new(BTreeMap::new()),
        });
        self.push(format!("{name}_total"), help, Metric::CounterVec(c.clone()));
        c
    }

    pub fn gauge(&self, name: &str, help: &'static str) -> Arc<Gauge> {
        let g = Arc::new(Gauge::default());
        self.push(name.to_string(), help, Metric::Gauge(g.clone()));
        g
    }

    pub fn histogram(&self, name: &str, help: &'static str, bounds: &[f64]) -> Arc<Histogram> {
        let h = Arc::new(Histogram::new(bounds));
        self.push(name.to_string(), help, Metric::Histogram(h.clone()));
        h
    }

    /// A gauge computed when scraped; `f` returns (labels, value) pairs.
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &'static str,
        f: impl Fn() -> Vec<(Vec<(&'static str, String)>, f64)> + Send + Sync + 'static,
    ) {
        self.push(name.to_string(), help, Metric::GaugeFn(Box::new(f)));
    }

    /// A counter (named `name` + `_total`) whose value is kept elsewhere
    /// and read when scraped; `f` returns (labels, value) pairs.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &'static str,
        f: impl Fn() -> Vec<(Vec<(&'static str, String)>, f64)> + Send + Sync + 'static,
    ) {
        self.push(
            format!("{name}_total"),
            help,
            Metric::CounterFn(Box::new(f)),
        );
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for f in self.families.lock().expect("metrics lock").iter() {
            let kind = match f.metric {
                Metric::Counter(_) | Metric::CounterVec(_) | Metric::CounterFn(_) => "counter",
                Metric::Gauge(_) | Metric::GaugeFn(_) => "gauge",
                Metric::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            match &f.metric {
                Metric::Counter(c) => line(&mut out, &f.name, &[], c.get() as f64),
                Metric::Gauge(g) => line(&mut out, &f.name, &[], g.get()),
                Metric::CounterVec(c) => {
                    for (v, n) in c.values.lock().expect("metrics lock").iter() {
                        line(&mut out, &f.name, &[(c.label, v.clone())], *n as f64);
                    }
                }
                Metric::Histogram(h) => {
                    let mut cum = 0u64;
                    let bucket = format!("{}_bucket", f.name);
                    for (b, c) in h.bounds.iter().zip(&h.counts) {
                        cum += c.load(Ordering::Relaxed);
                        line(&mut out, &bucket, &[("le", fmt_value(*b))], cum as f64);
                    }
                    let count = h.count();
                    line(&mut out, &bucket, &[("le", "+Inf".into())], count as f64);
                    line(&mut out, &format!("{}_sum", f.name), &[], h.sum.get());
                    line(&mut out, &format!("{}_count", f.name), &[], count as f64);
                }
                Metric::GaugeFn(g) | Metric::CounterFn(g) => {
                    for (labels, v) in g() {
                        line(&mut out, &f.name, &labels, v);
                    }
                }
            }
        }
        out
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn line(out: &mut String, name: &str, labels: &[(&'static str, String)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", fmt_value(v));
}

/// Readiness reported on `/healthz`: `Ok(())` answers 200, `Err(why)` 503.
pub type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds `addr` and serves the registry until the task is dropped.
/// Returns the bound address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let registry = registry.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    answer(&mut sock, &registry, &health),
                )
                .await;
            });
        }
    });
    Ok((local, task))
}

/// Reads one HTTP/1.x request head (at most 8 KiB) and answers it; the
/// connection is closed afterwards.
async fn answer(
    sock: &mut tokio::net::TcpStream,
    registry: &Registry,
    health: &Health,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 8192 {
            return respond(
                sock,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(sock, "405 Method Not Allowed", "text/plain", "GET only\n").await;
    }
    match path {
        "/metrics" => {
            let body = registry.render();
            respond(
                sock,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => match health() {
            Ok(()) => respond(sock, "200 OK", "text/plain", "ok\n").await,
            Err(why) => {
                respond(
                    sock,
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("{why}\n"),
                )
                .await
            }
        },
        _ => {
            respond(
                sock,
                "404 Not Found",
                "text/plain",
                "try /metrics or /healthz\n",
            )
            .await
        }
    }
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_kind_in_text_format() {
        let r = Registry::new();
        let c = r.counter("tw_test_batches", "Batches.");
        c.add(3);
        let v = r.counter_vec("tw_test_refused", "Refused \"batches\".", "reason");
        v.inc("too_large");
        v.inc("a\"b");
        let g = r.gauge("tw_test_backlog_bytes", "Backlog.");
        g.set(1.5);
        let h = r.histogram("tw_test_latency_seconds", "Latency.", &[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        r.gauge_fn("tw_test_lag", "Lag.", || {
            vec![(vec![("partition", "0".into())], 4.0)]
        });
        let text = r.render();
        let expect = "\
# HELP tw_test_batches_total Batches.
# TYPE tw_test_batches_total counter
tw_test_batches_total 3
# HELP tw_test_refused_total Refused \"batches\".
# TYPE tw_test_refused_total counter
tw_test_refused_total{reason=\"a\\\"b\"} 1
tw_test_refused_total{reason=\"too_large\"} 1
# HELP tw_test_backlog_bytes Backlog.
# TYPE tw_test_backlog_bytes gauge
tw_test_backlog_bytes 1.5
# HELP tw_test_latency_seconds Latency.
# TYPE tw_test_latency_seconds histogram
tw_test_latency_seconds_bucket{le=\"0.1\"} 1
tw_test_latency_seconds_bucket{le=\"1\"} 2
tw_test_latency_seconds_bucket{le=\"+Inf\"} 3
tw_test_latency_seconds_sum 7.55
tw_test_latency_seconds_count 3
# HELP tw_test_lag Lag.
# TYPE tw_test_lag gauge
tw_test_lag{partition=\"0\"} 4
";
        assert_eq!(text, expect);
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let r = Registry::new();
        r.counter("tw_http_hits", "Hits.").add(2);
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let o = ok.clone();
        let health: Health = Arc::new(move || {
            if o.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("kafka unreachable".into())
            }
        });
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), r, health)
            .await
            .unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let m = get("/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(
            m.contains("\r\n\r\n# HELP tw_http_hits_total Hits.\n"),
            "{m}"
        );
        assert!(m.contains("tw_http_hits_total 2\n"), "{m}");
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200 OK"));
        ok.store(false, Ordering::Relaxed);
        let h = get("/healthz").await;
        assert!(
            h.starts_with("HTTP/1.1 503 ") && h.ends_with("kafka unreachable\n"),
            "{h}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404 "));
        task.abort();
    }
}
