//! The sensor's Prometheus metrics (`run --metrics-listen`): capture, flow
//! table, disk buffer and uplink, all named `tidewatch_sensor_*`. Values are
//! read at scrape time from the components' own counters, so the hot path
//! pays nothing for them.

use std::sync::{Arc, Mutex};

use tidewatch_proto::metrics::Registry;

use crate::batch::{decode_request, now_us};
use crate::buffer::DiskBuffer;
use crate::pipeline::Progress;
use crate::uplink::UplinkCounters;

type Sample = Vec<(Vec<(&'static str, String)>, f64)>;

fn one(v: f64) -> Sample {
    vec![(Vec::new(), v)]
}

/// Caches the age source of the oldest unacked batch: reading it from disk
/// once per distinct oldest seq, not on every scrape.
#[derive(Default)]
struct OldestCache {
    seq: u64,
    created_us: i64,
}

/// Builds the registry over the running sensor's parts.
pub fn registry(
    progress: Arc<Progress>,
    uplink: Arc<UplinkCounters>,
    disk: Arc<Mutex<DiskBuffer>>,
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
        "Batches the collector refused for good (dropped, logged).",
        batches_rejected
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
    {
        let u = uplink.clone();
        r.gauge_fn(
            "tidewatch_sensor_uplink_connected",
            "1 while an upload stream to the collector is open.",
            move || one(u.connected.get()),
        );
    }

    let buf_gauge = |name: &str, help: &'static str, f: fn(&DiskBuffer) -> f64| {
        let d = disk.clone();
        r.gauge_fn(name, help, move || one(f(&d.lock().expect("buffer lock"))));
    };
    buf_gauge(
        "tidewatch_sensor_buffer_bytes",
        "Bytes of segments in the disk buffer.",
        |d| d.stats().bytes as f64,
    );
    buf_gauge(
        "tidewatch_sensor_buffer_limit_bytes",
        "Size cap of the disk buffer (--buffer-max-mib).",
        |d| d.max_bytes() as f64,
    );
    buf_gauge(
        "tidewatch_sensor_buffer_pending_batches",
        "Batches in the disk buffer not yet acked by the collector.",
        |d| d.stats().pending_batches as f64,
    );
    buf_gauge(
        "tidewatch_sensor_buffer_pending_flows",
        "Flow records in the disk buffer not yet acked by the collector.",
        |d| d.stats().pending_flows as f64,
    );
    {
        let d = disk.clone();
        r.counter_fn(
            "tidewatch_sensor_dropped_flows",
            "Flow records lost on the sensor, by cause (buffer_full: dropped by the buffer cap).",
            move || {
                let s = d.lock().expect("buffer lock").stats();
                vec![(
                    vec![("cause", "buffer_full".into())],
                    s.dropped_flows as f64,
                )]
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
                let buf = d.lock().expect("buffer lock");
                let mut c = cache.lock().expect("cache lock");
                let age = match buf.peek_oldest_pending() {
                    None => 0.0,
                    Some(s) => {
                        if s.seq != c.seq {
                            let created = decode_request(&s.request)
                                .map(|b| b.created_us)
                                .unwrap_or_else(now_us);
                            *c = OldestCache {
                                seq: s.seq,
                                created_us: created,
                            };
                        }
                        ((now_us() - c.created_us) as f64 / 1e6).max(0.0)
                    }
                };
                one(age)
            },
        );
    }
    r
}
