//! The synthetic fleet (ground truth for the analysts' query pack) goes
//! through the real pipeline: mTLS ingest, Kafka, sink, ClickHouse. Every
//! record arrives once and every planted anomaly is in storage as planted.

use tidewatch_tests::fleet::{Loaded, Spec};

#[test]
fn synthetic_fleet_arrives_whole_with_every_planted_anomaly() {
    let loaded = Loaded::start(Spec::default());
    let (stack, fleet) = (&loaded.stack, &loaded.fleet);
    let t = &fleet.truth;
    let w = t.window_start_s;
    let q = |sql: &str| stack.query_u64(sql);
    let ws = format!("toDateTime({w})");

    // Addresses are stored as text.
    let bytes_of = |ip: &str| format!("'{ip}'");
    // New destination: once, on the planted vessel only, in the window.
    let (v, dst) = &t.new_destinations[0];
    assert_eq!(
        q(&format!(
            "SELECT count() FROM tidewatch.flows WHERE server_ip = {} AND vessel = '{v}' AND first_seen >= {ws}",
            bytes_of(dst)
        )),
        1
    );
    assert_eq!(
        q(&format!(
            "SELECT count() FROM tidewatch.flows WHERE server_ip = {}",
            bytes_of(dst)
        )),
        1
    );
    // The campaign destination: every vessel, only in the window, within 2 h.
    let (camp, vessels) = &t.campaigns[0];
    assert_eq!(
        q(&format!(
            "SELECT uniqExact(vessel) FROM tidewatch.flows WHERE server_ip = {} AND first_seen >= {ws}",
            bytes_of(camp)
        )),
        vessels.len() as u64
    );
    assert_eq!(
        q(&format!(
            "SELECT max(first_seen) - min(first_seen) < 7200 FROM tidewatch.flows WHERE server_ip = {}",
            bytes_of(camp)
        )),
        1
    );
    // Beacon: 360 connections one minute apart.
    let (v, client, dst) = &t.beacons[0];
    let dst_ip = dst.split(':').next().unwrap();
    assert_eq!(
        q(&format!(
            "SELECT count() FROM tidewatch.flows WHERE vessel = '{v}' AND client_ip = {} AND server_ip = {} AND server_port = 8443",
            bytes_of(client),
            bytes_of(dst_ip)
        )),
        360
    );
    // Scan: 354 probes from one host.
    let (v, scanner) = &t.scans[0];
    assert_eq!(
        q(&format!(
            "SELECT count() FROM tidewatch.flows WHERE vessel = '{v}' AND client_ip = {}",
            bytes_of(scanner)
        )),
        354
    );
    // The unexpected OT write.
    let (v, writer, plc) = &t.unexpected_ot_writes[0];
    assert_eq!(
        q(&format!(
            "SELECT count() FROM tidewatch.flows WHERE vessel = '{v}' AND client_ip = {} \
             AND server_ip = {} AND has(op_classes, 'write')",
            bytes_of(writer),
            bytes_of(plc)
        )),
        1
    );
    // Volume spike: 500 MB up in the planted hour.
    let (v, client, dst, hour) = &t.volume_spikes[0];
    assert_eq!(
        q(&format!(
            "SELECT max(c2s_bytes) FROM tidewatch.flows WHERE vessel = '{v}' AND client_ip = {} \
             AND server_ip = {} AND first_seen >= toDateTime({hour}) AND first_seen < toDateTime({})",
            bytes_of(client),
            bytes_of(dst),
            hour + 3600
        )),
        500_000_000
    );
    // Assets: the new one, and the vendor change.
    let (v, new_ip) = &t.new_assets[0];
    assert_eq!(
        q(&format!(
            "SELECT min(first_seen_us) >= {w}000000 FROM tidewatch.assets WHERE vessel = '{v}' AND has(ips, {})",
            bytes_of(new_ip)
        )),
        1
    );
    let (v, changed, _, _) = &t.changed_vendors[0];
    assert_eq!(
        q(&format!(
            "SELECT uniqExact(vendor) FROM tidewatch.assets WHERE vessel = '{v}' AND has(ips, {})",
            bytes_of(changed)
        )),
        2
    );
    // Sensor health: the silent one stopped 12 h into the window.
    let silent = &t
        .sensor_health
        .iter()
        .find(|(_, p)| p == "silent")
        .unwrap()
        .0;
    assert_eq!(
        q(&format!(
            "SELECT max(observed_us) < ({w} + 12 * 3600) * 1000000 FROM tidewatch.sensor_status WHERE sensor_id = '{silent}'"
        )),
        1
    );
    let drops = &t
        .sensor_health
        .iter()
        .find(|(_, p)| p == "drops")
        .unwrap()
        .0;
    assert!(
        q(&format!(
            "SELECT max(records_dropped) FROM tidewatch.sensor_status WHERE sensor_id = '{drops}'"
        )) > 0
    );
    // The registry names every sensor.
    assert_eq!(
        q("SELECT count() FROM tidewatch.fleet_registry WHERE active = 1"),
        fleet.sensors.len() as u64
    );
    // The ground truth serializes for the query tests.
    let truth = serde_json::to_string(t).unwrap();
    assert!(truth.contains("\"campaigns\""));
}
