//! Helpers shared by the sensor's integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The reference corpus (`../shared/pcaps` next to the checkout).
#[allow(dead_code)]
pub fn corpus() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps");
    assert!(p.is_dir(), "reference corpus missing at {}", p.display());
    p
}

/// Runs `tidewatch-sensor read ARGS PCAP` and parses its JSON lines.
pub fn read_json(pcap: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch-sensor"))
        .arg("read")
        .args(args)
        .arg(pcap)
        .output()
        .expect("run tidewatch-sensor read");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
