//! The sensor as the tests run it: [`SensorRun`] (a builder for
//! `tidewatch-sensor run`) and [`read_flows`] (what `read` reports for a
//! capture, the expected side of most checks).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pki::SensorCert;
use crate::process::{bin, run_ok, Proc};

/// `tidewatch-sensor run` on a capture, uploading to an ingest on
/// 127.0.0.1 with one sensor's certificate:
///
/// ```ignore
/// let mut s = SensorRun::new(&cert, port, &pcap, &state)
///     .args(&["--batch-flows", "10"])
///     .spawn("sensor", stack.path());
/// ```
pub struct SensorRun {
    cert: SensorCert,
    ingest_port: u16,
    /// `--pcap FILE` or `--interface IFACE`.
    source: [std::ffi::OsString; 2],
    state: PathBuf,
    args: Vec<String>,
}

impl SensorRun {
    /// Replays `pcap` with its state (buffer, seq, budget) in `state`.
    pub fn new(cert: &SensorCert, ingest_port: u16, pcap: &Path, state: &Path) -> SensorRun {
        SensorRun {
            cert: cert.clone(),
            ingest_port,
            source: ["--pcap".into(), pcap.into()],
            state: state.to_path_buf(),
            args: Vec::new(),
        }
    }

    /// Captures live on `iface` (needs CAP_NET_RAW) instead.
    pub fn live(cert: &SensorCert, ingest_port: u16, iface: &str, state: &Path) -> SensorRun {
        SensorRun {
            source: ["--interface".into(), iface.into()],
            ..SensorRun::new(cert, ingest_port, Path::new(""), state)
        }
    }

    /// More `run` options.
    pub fn args(mut self, args: &[&str]) -> SensorRun {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts it as `name`, logging to `log_dir/NAME.log`.
    pub fn spawn(self, name: &str, log_dir: &Path) -> Proc {
        let mut cmd = Command::new(bin("tidewatch-sensor"));
        cmd.arg("run")
            .args(&self.source)
            .arg("--collector")
            .arg(format!("https://127.0.0.1:{}", self.ingest_port))
            .arg("--server-name")
            .arg("localhost")
            .arg("--ca")
            .arg(&self.cert.ca)
            .arg("--cert")
            .arg(&self.cert.cert)
            .arg("--key")
            .arg(&self.cert.key)
            .arg("--state-dir")
            .arg(&self.state)
            .args(&self.args)
            .env("RUST_LOG", "info");
        Proc::spawn(name, log_dir, &mut cmd)
    }
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

/// The batches a finished `run` logged as acked ("upload complete ...
/// batches_acked=N"); panics if it logged none.
pub fn batches_acked(log: &str) -> u64 {
    log.split("upload complete")
        .nth(1)
        .and_then(|r| r.split("batches_acked=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no batches_acked in the sensor log:\n{log}"))
}

/// Runs the sensor on an empty capture with its state in `state`: it
/// delivers what its disk buffer holds, waits for every ack and exits.
/// Panics unless it succeeds within two minutes.
pub fn deliver_buffered(
    cert: &SensorCert,
    ingest_port: u16,
    state: &Path,
    name: &str,
    log_dir: &Path,
) -> Proc {
    let empty = log_dir.join(format!("{name}-empty.pcap"));
    crate::pcapgen::write_udp_flows(&empty, 0, 0, 1_700_000_000).expect("empty capture");
    let mut s = SensorRun::new(cert, ingest_port, &empty, state).spawn(name, log_dir);
    let st = s.wait(std::time::Duration::from_secs(120));
    assert!(st.success(), "{name} exited {st}:\n{}", s.log_text());
    s
}

/// A capture of `secs` seconds from `start_s` (Unix seconds): 100
/// two-packet UDP flows a second, replayed in real time with
/// [`PACED_RUN`], so that a test can act while it streams.
pub fn paced_capture(path: &Path, secs: u32, start_s: u32) -> PathBuf {
    crate::pcapgen::write_udp_flows_spaced(path, secs * 100, 2, start_s, 10_000)
        .expect("paced capture");
    path.to_path_buf()
}

/// `run` options for a [`paced_capture`]: real-time replay, flows closed
/// half a second after their last packet, small batches sealed twice a
/// second.
pub const PACED_RUN: &[&str] = &[
    "--idle-timeout",
    "0.5",
    "--replay-speed",
    "1",
    "--batch-flows",
    "100",
    "--flush-interval",
    "0.5",
];
