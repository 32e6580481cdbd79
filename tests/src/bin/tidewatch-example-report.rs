//! `tidewatch-example-report [DIR]`: the example E26 report kept in the
//! repository (`docs/examples/` by default): the synthetic fleet (the
//! tests' default: 4 vessels, 3 days) loaded through the real pipeline into
//! a local ClickHouse 18.16, then `tidewatch-collector report e26` for
//! vessel mv-02 (the 61162-450 bridge network faults, a vendor change, an
//! inbound Modbus from ashore, the detection service's alarms, one of them
//! acknowledged) over its last day with a 100 MB per zone-hour threshold,
//! and a PNG of the page rendered by headless Chromium. Run it with
//! `deploy/local/example-report.sh`.

use std::path::PathBuf;

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
    // Alarms, one of them handled.
    loaded.acknowledged_intrusion_alert();
    // 100 MB per zone and hour: the crew zone's busiest hours show as
    // exceedances.
    let printed = loaded.report_e26(&vessel, &out, &["--zone-hour-bytes", "100000000"]);
    print!("{printed}");
    let html = out.join(format!("e26-{vessel}.html"));
    let png = out.join(format!("e26-{vessel}.png"));
    chromium(&[
        "--window-size=1280,1800",
        &format!("--screenshot={}", png.display()),
        &format!("file://{}", html.display()),
    ]);
    println!("first screen: {}", png.display());
}
