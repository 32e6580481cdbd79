//! Flow totals per sensor, expected (from `read`) against stored (in
//! ClickHouse), and the wait for them to match.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::stack::Stack;

/// Per-sensor totals of a set of flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
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
