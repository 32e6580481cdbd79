//! `tidewatch-example-report [DIR]`: the example E26 report kept in the
//! repository (`docs/examples/` by default): the synthetic fleet (the
//! tests' default: 4 vessels, 3 days) loaded through the real pipeline into
//! a local ClickHouse 18.16, then `tidewatch-collector report e26` for
//! vessel mv-02 (the 61162-450 bridge network faults, a vendor change, an
//! inbound Modbus from ashore, the detection service's alarms, one of them
//! acknowledged) over its last day with a 100 MB per
//! zone-hour threshold, and a PNG of the page
//! rendered by headless Chromium. Run it with
//! `deploy/local/example-report.sh`.

use std::path::PathBuf;
use std::process::Command;

use tidewatch_tests::fleet::{Loaded, Spec};
use tidewatch_tests::*;

fn main() {
    let out: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("docs/examples"));
    std::fs::create_dir_all(&out).expect("output directory");
    let loaded = Loaded::start(Spec::default());
    let vessel = loaded.fleet.sensors[2].vessel.clone();
    let since = loaded.fleet.truth.window_start_s;
    // Alarms, one of them handled.
    let id = loaded.detect_until(
        "an alarm of the vessel",
        &format!(
            "SELECT id FROM tidewatch.alerts WHERE vessel = '{vessel}' AND rule = 'zone-crossing' \
             AND subject LIKE '203.0.113.200%'"
        ),
    );
    run_ok(loaded.stack.collector().args([
        "alerts",
        "ack",
        &id,
        "--who",
        "chief-engineer",
        "--note",
        "vendor maintenance window, ticket 88",
    ]));
    let printed = run_ok(
        loaded
            .stack
            .collector()
            .args(["report", "e26", "--vessel", &vessel])
            .args(["--since", &since.to_string()])
            .args(["--until", &(since + 86_400).to_string()])
            // 100 MB per zone and hour: the crew zone's busiest hours show
            // as exceedances.
            .args(["--zone-hour-bytes", "100000000"])
            .arg("--out-dir")
            .arg(&out),
    );
    print!("{printed}");
    let html = out.join(format!("e26-{vessel}.html"));
    let png = out.join(format!("e26-{vessel}.png"));
    let st = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args([
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1280,1800",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("chromium");
    assert!(st.success(), "chromium: {st}");
    println!("first screen: {}", png.display());
}
