//! The sensor's Prometheus metrics (`run --metrics-listen`): capture, flow
//! table, disk buffer and uplink, all named `tidewatch_sensor_*`. Values are
//! read at scrape time from the components' own counters, so the hot path
//! pays nothing for them.

use std::sync::{Arc, Mutex};

use tidewatch_proto::metrics::Registry;

use crate::batch::{decode_request, now_us, Priority};
use crate::budget::DailyBudget;
use crate::buffer::ClassedBuffer;
use crate::forward::Refusals;
use crate::pipeline::Progress;
use crate::uplink::UplinkCounters;

type Sample = Vec<(Vec<(&'static str, String)>, f64)>;

fn one(v: f64) -> Sample {
    vec![(Vec::new(), v)]
}

/// Caches when the oldest unacked batch of each class was sealed: read
/// from disk once per distinct oldest seq, not on every scrape.
#[derive(Default)]
struct OldestCache {
    seen: [(u64, i64); 3],
}

/// Builds the registry over the running sensor's parts.
pub fn registry(
    progress: Arc<Progress>,
    uplink: Arc<UplinkCounters>,
    refusals: Arc<Refusals>,
    disk: Arc<Mutex<ClassedBuffer>>,
    budget: Arc<Mutex<DailyBudget>>,
) -> Arc<Registry> {
    let r = Registry::new();
    macro_rules! progress_counter {
        ($name:expr, $help:expr, $field:ident) => {{
            let p = progress.clone();
            r.counter_fn($name, $help, move || one(Progress::get(&p.$field) as f64));
        }};
    }
    progress_counter!(
        "tidewatch_sensor_capture_frames",
        "Frames read from the capture (interface or file).",
        frames
    );
    progress_counter!(
        "tidewatch_sensor_capture_kernel_drops",
        "Packets the kernel or the interface dropped before the sensor saw them (live capture).",
        kernel_drops
    );
    progress_counter!(
        "tidewatch_sensor_capture_malformed_frames",
        "Frames that could not be decoded.",
        malformed
    );
    progress_counter!(
        "tidewatch_sensor_flow_records",
        "Flow records emitted by the flow table.",
        records_emitted
    );
    progress_counter!(
        "tidewatch_sensor_flows_evicted",
        "Flows emitted early because the flow table reached --max-flows.",
        flows_evicted
    );
    progress_counter!(
        "tidewatch_sensor_fragments_overflow",
        "First IP fragments not remembered because --max-fragments datagrams were (their later fragments are metered without ports).",
        fragments_overflow
    );
    {
        let p = progress.clone();
        r.gauge_fn(
            "tidewatch_sensor_active_flows",
            "Flows currently in the flow table.",
            move || one(Progress::get(&p.active_flows) as f64),
        );
    }

    macro_rules! uplink_counter {
        ($name:expr, $help:expr, $field:ident) => {{
            let u = uplink.clone();
            r.counter_fn($name, $help, move || one(u.$field.get() as f64));
        }};
    }
    uplink_counter!(
        "tidewatch_sensor_uplink_batches_acked",
        "Batches the collector acked (durably in Kafka).",
        batches_acked
    );
    uplink_counter!(
        "tidewatch_sensor_uplink_flows_acked",
        "Flow records in acked batches.",
        flows_acked
    );
    uplink_counter!(
        "tidewatch_sensor_uplink_batches_rejected",
        "Batches the collector refused for good, or over its message limit (split or set aside, logged).",
        batches_rejected
    );
    macro_rules! refusal_counter {
        ($name:expr, $help:expr, $field:ident) => {{
            let f = refusals.clone();
            r.counter_fn($name, $help, move || one(f.$field.get() as f64));
        }};
    }
    refusal_counter!(
        "tidewatch_sensor_batches_split",
        "Batches refused as too large and split into smaller ones (new seqs, same records).",
        split
    );
    refusal_counter!(
        "tidewatch_sensor_batches_set_aside",
        "Batches set aside on disk since start (refused for good; see `buffer set-aside list`).",
        set_aside
    );
    uplink_counter!(
        "tidewatch_sensor_uplink_batches_resent",
        "Batches sent again after a reconnect.",
        resent
    );
    uplink_counter!(
        "tidewatch_sensor_uplink_reconnects",
        "Upload stream reconnects (link cuts, timeouts, collector restarts).",
        reconnects
    );
    uplink_counter!(
        "tidewatch_sensor_uplink_sent_bytes",
        "Batch payload bytes put on the link, resends included.",
        bytes_sent
    );
    uplink_counter!(
        "tidewatch_sensor_certificate_renewals",
        "Certificates renewed over the link.",
        renewals
    );
    uplink_counter!(
        "tidewatch_sensor_certificate_renewal_failures",
        "Renewal attempts that failed (logged with the reason; retried within the window).",
        renewal_failures
    );
    {
        let u = uplink.clone();
        r.gauge_fn(
            "tidewatch_sensor_uplink_connected",
            "1 while an upload stream to the collector is open.",
            move || one(u.connected.get()),
        );
        let u = uplink.clone();
        r.gauge_fn(
            "tidewatch_sensor_certificate_not_after_seconds",
            "End of validity of the certificate in use, Unix seconds (alert well before it).",
            move || one(u.cert_not_after.get()),
        );
    }

    {
        let b = budget.clone();
        r.gauge_fn(
            "tidewatch_sensor_uplink_budget_bytes",
            "Daily byte budget of the uplink (--daily-budget-bytes; 0: none).",
            move || one(b.lock().expect("budget lock").limit() as f64),
        );
        let b = budget.clone();
        r.gauge_fn(
            "tidewatch_sensor_uplink_budget_used_bytes",
            "Bytes sent today (UTC) against the daily budget, resends included.",
            move || one(b.lock().expect("budget lock").used() as f64),
        );
    }

    let buf_gauge = |name: &str, help: &'static str, f: fn(&ClassedBuffer) -> f64| {
        let d = disk.clone();
        r.gauge_fn(name, help, move || one(f(&d.lock().expect("buffer lock"))));
    };
    buf_gauge(
        "tidewatch_sensor_buffer_bytes",
        "Bytes of segments in the disk buffer.",
        |d| d.stats().bytes as f64,
    );
    buf_gauge(
        "tidewatch_sensor_set_aside_batches",
        "Batches held set aside on disk now, until retried or deleted.",
        |d| d.set_aside_stats().batches as f64,
    );
    buf_gauge(
        "tidewatch_sensor_set_aside_flows",
        "Flow records in the batches held set aside now.",
        |d| d.set_aside_stats().flows as f64,
    );
    buf_gauge(
        "tidewatch_sensor_buffer_limit_bytes",
        "Size cap of the disk buffer (--buffer-max-mib).",
        |d| d.max_bytes() as f64,
    );
    let per_class = |name: &str, help: &'static str, f: fn(&ClassedBuffer, Priority) -> f64| {
        let d = disk.clone();
        r.gauge_fn(name, help, move || {
            let d = d.lock().expect("buffer lock");
            Priority::ALL
                .iter()
                .map(|c| (vec![("class", c.name().to_string())], f(&d, *c)))
                .collect()
        });
    };
    per_class(
        "tidewatch_sensor_buffer_pending_batches",
        "Batches in the disk buffer not yet acked by the collector, by upload class.",
        |d, c| d.class(c).stats().pending_batches as f64,
    );
    per_class(
        "tidewatch_sensor_buffer_pending_flows",
        "Flow records in the disk buffer not yet acked by the collector, by upload class.",
        |d, c| d.class(c).stats().pending_flows as f64,
    );
    {
        let d = disk.clone();
        r.counter_fn(
            "tidewatch_sensor_dropped_flows",
            "Flow records lost on the sensor, by cause (buffer_full: dropped by the buffer cap; disk_full: dropped to make room on a full disk) and upload class.",
            move || {
                let d = d.lock().expect("buffer lock");
                Priority::ALL
                    .iter()
                    .flat_map(|c| {
                        let full = d.disk_full_flows(*c);
                        let all = d.class(*c).stats().dropped_flows;
                        [("buffer_full", all - full), ("disk_full", full)].map(|(cause, v)| {
                            (
                                vec![("cause", cause.into()), ("class", c.name().into())],
                                v as f64,
                            )
                        })
                    })
                    .collect()
            },
        );
    }
    {
        let d = disk.clone();
        r.counter_fn(
            "tidewatch_sensor_buffer_corrupt_records",
            "Damaged buffer records (torn writes, bad CRC) found and skipped since start.",
            move || one(d.lock().expect("buffer lock").stats().corrupt_records as f64),
        );
    }
    {
        let d = disk.clone();
        let cache = Mutex::new(OldestCache::default());
        r.gauge_fn(
            "tidewatch_sensor_buffer_oldest_unacked_age_seconds",
            "Age of the oldest batch not yet acked (since it was sealed); 0 when all is acked.",
            move || {
                let oldest = d.lock().expect("buffer lock").oldest_pending();
                let mut c = cache.lock().expect("cache lock");
                let now = now_us();
                let mut created = None::<i64>;
                for (class, s) in oldest {
                    let slot = &mut c.seen[class as usize];
                    if slot.0 != s.seq {
                        *slot = (
                            s.seq,
                            decode_request(&s.request)
                                .map(|b| b.created_us)
                                .unwrap_or(now),
                        );
                    }
                    created = Some(created.map_or(slot.1, |x| x.min(slot.1)));
                }
                one(created.map_or(0.0, |t| ((now - t) as f64 / 1e6).max(0.0)))
            },
        );
    }
    r
}
