//! Harness for tidewatch's end-to-end tests: starts the local stack through
//! the project's own `deploy/local/stack.sh`, runs the real binaries as
//! processes, and stops everything it started when dropped.
//!
//! The binaries must be built first (`cargo build --workspace --bins`); the
//! README's test command does that.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod fleet;
pub mod grpc;
pub mod linkemu;
pub mod pcapgen;
pub mod synth;

/// Root of the workspace.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The shared pcap corpus (`../shared/pcaps` next to the checkout).
pub fn pcaps() -> PathBuf {
    let p = root().join("../shared/pcaps");
    assert!(p.is_dir(), "pcap corpus not found at {}", p.display());
    p.canonicalize().expect("canonical pcaps path")
}

/// Path of a workspace binary in the same target profile as this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace --bins` first (the README test command does)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The number after `--name` on the command line, or `default` (for the
/// benchmark binaries).
pub fn number_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running process whose output goes to a log file; killed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, log_dir: &Path, cmd: &mut Command) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            log,
            child: Some(child),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Some(st) = self.try_wait() {
                panic!(
                    "{} exited ({st}) before logging {needle:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < end,
                "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            if Instant::now() > end {
                let log = self.log_text();
                self.kill();
                panic!("{} did not exit within {timeout:?}; log:\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after 10 s; returns the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion and returns stdout; panics with its output
/// on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One local stack (ClickHouse + broker) with its own ports and data.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub ch_http_port: u16,
    pub kafka_port: u16,
}

impl Stack {
    pub fn start() -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("tidewatch-test-")
            .tempdir()
            .expect("temp dir");
        let stack_dir = dir.path().join("stack");
        run_ok(
            Command::new(root().join("deploy/local/stack.sh"))
                .arg("start")
                .arg(&stack_dir),
        );
        let env = fs::read_to_string(stack_dir.join("stack.env")).expect("stack.env");
        let get = |k: &str| -> u16 {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} missing in stack.env"))
        };
        Stack {
            ch_http_port: get("CH_HTTP_PORT"),
            kafka_port: get("KAFKA_PORT"),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn stack_cmd(&self, what: &str) {
        run_ok(
            Command::new(root().join("deploy/local/stack.sh"))
                .arg(what)
                .arg(self.dir.path().join("stack")),
        );
    }

    pub fn stop_clickhouse(&self) {
        self.stack_cmd("stop-clickhouse");
    }
    pub fn start_clickhouse(&self) {
        self.stack_cmd("start-clickhouse");
    }
    pub fn stop_kafka(&self) {
        self.stack_cmd("stop-kafka");
    }
    pub fn start_kafka(&self) {
        self.stack_cmd("start-kafka");
    }
    /// SIGKILL, as a crash would.
    pub fn kill_kafka(&self) {
        self.stack_cmd("kill-kafka");
    }
    /// SIGKILL, as a crash would.
    pub fn kill_clickhouse(&self) {
        self.stack_cmd("kill-clickhouse");
    }

    pub fn clickhouse_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ch_http_port)
    }
    pub fn kafka_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// Environment for collector commands talking to this stack.
    pub fn collector(&self) -> Command {
        let mut c = Command::new(bin("tidewatch-collector"));
        c.env("TIDEWATCH_CLICKHOUSE_URL", self.clickhouse_url())
            .env("TIDEWATCH_KAFKA_BROKERS", self.kafka_brokers())
            .env("RUST_LOG", "info,rdkafka=warn");
        c
    }

    /// Runs `migrate` against this stack.
    pub fn migrate(&self) {
        run_ok(self.collector().arg("migrate"));
    }

    /// Runs a SQL query over ClickHouse's HTTP interface (TabSeparated result).
    pub fn query(&self, sql: &str) -> Result<String, String> {
        http_post(self.ch_http_port, "/", sql)
    }

    /// As [`Stack::query`], with `tidewatch` as the default database (as the
    /// collector's own queries expect).
    pub fn query_tidewatch(&self, sql: &str) -> Result<String, String> {
        http_post(self.ch_http_port, "/?database=tidewatch", sql)
    }

    /// Runs a query returning one number.
    pub fn query_u64(&self, sql: &str) -> u64 {
        let out = self.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
    }

    /// Starts ingest with the given PKI and returns it once it listens.
    pub fn ingest(&self, pki: &Pki, port: u16, extra: &[&str]) -> Proc {
        let mut cmd = self.collector();
        cmd.arg("ingest")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(pki.dir.join("server.pem"))
            .arg("--tls-key")
            .arg(pki.dir.join("server-key.pem"))
            .arg("--client-ca")
            .arg(pki.dir.join("ca.pem"))
            .arg("--crl")
            .arg(pki.dir.join("crl.pem"))
            .args(extra);
        let mut p = Proc::spawn(&format!("ingest-{port}"), self.path(), &mut cmd);
        p.wait_log("ingest listening", Duration::from_secs(90));
        p
    }

    /// Starts a sink with extra arguments.
    pub fn sink(&self, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.collector();
        cmd.arg("sink").args(["--max-wait-ms", "300"]).args(extra);
        let mut p = Proc::spawn(name, self.path(), &mut cmd);
        p.wait_log("sink started", Duration::from_secs(90));
        p
    }

    /// Prints the last lines of every process log of this stack (the
    /// collector's, the sensors', the broker's and ClickHouse's errors).
    pub fn dump_logs(&self) {
        let stack = self.path().join("stack");
        let mut logs: Vec<PathBuf> = [self.path().to_path_buf(), stack.join("kafka")]
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.push(stack.join("clickhouse/log/clickhouse-server.err.log"));
        logs.sort();
        for log in logs {
            let Ok(text) = fs::read_to_string(&log) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!(
                "----- {} (last {} of {} lines)\n{}",
                log.display(),
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            // Kept for a closer look (the services are stopped below).
            self.dir.disable_cleanup(true);
            eprintln!("----- test directory kept: {}", self.path().display());
        }
        let _ = Command::new(root().join("deploy/local/stack.sh"))
            .arg("stop")
            .arg(self.dir.path().join("stack"))
            .output();
    }
}

/// Minimal HTTP GET; the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(format!("{}: {body}", head.lines().next().unwrap_or("")))
    }
}

/// Minimal HTTP/1.0 POST (enough for ClickHouse's HTTP interface).
pub fn http_post(port: u16, path: &str, body: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(format!("{}: {body}", head.lines().next().unwrap_or("")))
    }
}

/// A fleet PKI made with `tidewatch-collector pki`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf) -> Pki {
        Pki::with_ca_name(dir, "tidewatch fleet CA")
    }

    pub fn with_ca_name(dir: PathBuf, name: &str) -> Pki {
        let p = Pki { dir };
        p.run(&["init-ca", "--name", name]);
        p.run(&["issue-server", "--dns", "localhost", "--ip", "127.0.0.1"]);
        p
    }

    pub fn run(&self, args: &[&str]) -> String {
        run_ok(
            Command::new(bin("tidewatch-collector"))
                .arg("pki")
                .arg("--dir")
                .arg(&self.dir)
                .args(args),
        )
    }

    pub fn sensor(&self, id: &str, vessel: &str) -> SensorCert {
        self.run(&["issue-sensor", "--id", id, "--vessel", vessel]);
        self.cert(id)
    }

    pub fn cert(&self, id: &str) -> SensorCert {
        SensorCert {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("sensors/{id}.pem")),
            key: self.dir.join(format!("sensors/{id}-key.pem")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SensorCert {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `tidewatch-sensor run` on a capture until every batch is acked.
pub fn sensor_run(
    name: &str,
    log_dir: &Path,
    cert: &SensorCert,
    ingest_port: u16,
    pcap: &Path,
    state: &Path,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(bin("tidewatch-sensor"));
    cmd.arg("run")
        .arg("--pcap")
        .arg(pcap)
        .arg("--collector")
        .arg(format!("https://127.0.0.1:{ingest_port}"))
        .arg("--server-name")
        .arg("localhost")
        .arg("--ca")
        .arg(&cert.ca)
        .arg("--cert")
        .arg(&cert.cert)
        .arg("--key")
        .arg(&cert.key)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "info");
    Proc::spawn(name, log_dir, &mut cmd)
}

/// Per-sensor totals of a set of flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Flows the sensor's own `read` command reports for a capture, with the
/// timeouts `run` uses by default.
pub fn read_flows(pcap: &Path) -> Vec<serde_json::Value> {
    read_flows_with(pcap, &[])
}

/// As [`read_flows`], with extra `read` options (e.g. timeouts).
pub fn read_flows_with(pcap: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run_ok(
        Command::new(bin("tidewatch-sensor"))
            .arg("read")
            .args(args)
            .arg(pcap),
    );
    out.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

pub fn totals(flows: &[serde_json::Value]) -> Totals {
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing"));
    flows.iter().fold(Totals::default(), |t, f| Totals {
        flows: t.flows + 1,
        packets: t.packets + n(f, "c2s_packets") + n(f, "s2c_packets"),
        bytes: t.bytes + n(f, "c2s_bytes") + n(f, "s2c_bytes"),
    })
}

/// Totals per sensor from the de-duplicated `flows` view (or another table).
pub fn ch_totals(stack: &Stack, table: &str) -> BTreeMap<String, Totals> {
    let out = stack
        .query(&format!(
            "SELECT sensor_id, count(), sum(c2s_packets + s2c_packets), sum(c2s_bytes + s2c_bytes) \
             FROM tidewatch.{table} GROUP BY sensor_id ORDER BY sensor_id"
        ))
        .expect("totals query");
    out.lines()
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                c[0].to_string(),
                Totals {
                    flows: c[1].parse().unwrap(),
                    packets: c[2].parse().unwrap(),
                    bytes: c[3].parse().unwrap(),
                },
            )
        })
        .collect()
}

/// Waits until the exactly-once `flows` view holds exactly `want` per sensor,
/// then checks that nothing more arrives.
pub fn expect_flows(stack: &Stack, want: &BTreeMap<String, Totals>) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let got = ch_totals(stack, "flows");
        if got == *want {
            break;
        }
        if Instant::now() > end {
            let raw = ch_totals(stack, "flows_raw");
            let ledger = stack
                .query("SELECT sensor_id, count(), uniqExact(seq), max(seq) FROM tidewatch.batches GROUP BY sensor_id")
                .unwrap_or_else(|e| e);
            panic!(
                "timed out after 120 s waiting for the expected flows in ClickHouse\n\
                 want:      {want:?}\n\
                 flows:     {got:?}\n\
                 flows_raw: {raw:?}\n\
                 batches ledger (sensor, rows, distinct seqs, max seq):\n{ledger}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        &ch_totals(stack, "flows"),
        want,
        "flows changed after reaching the expected totals"
    );
}
