//! `tidewatch-sensor estimate`: the link bytes per flow record a capture
//! would cost, with the batching, layout and compression of `run`, and
//! optionally what each group of fields costs within that.

use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use tidewatch_proto::codec;
use tidewatch_proto::link::{self, LinkEncoder, LinkTable};
use tidewatch_proto::v1::{Batch, DirectionCounters, FlowRecord};
use tidewatch_sensor::batch::{decode_request, Batcher, Group, Sealer, SeqStore};
use tidewatch_sensor::pipeline::{meter_file, Progress};

use super::EstimateArgs;

/// gRPC frame (5) + UploadRequest fields (seq, encoding, payload tag+len).
const FRAMING: u64 = 5 + 16;

/// How to leave a group of fields out of a flow record.
type Blank = fn(&mut FlowRecord);

/// The groups of fields `--by-field` accounts for.
const FIELD_GROUPS: [(&str, Blank); 6] = [
    ("addresses", |f| {
        f.client_ip.clear();
        f.server_ip.clear();
    }),
    ("ports", |f| {
        f.client_port = 0;
        f.server_port = 0;
    }),
    ("times", |f| {
        f.first_seen_us = 0;
        f.last_seen_us = 0;
    }),
    ("counters", |f| {
        for d in [&mut f.c2s, &mut f.s2c].into_iter().flatten() {
            *d = DirectionCounters::default();
        }
    }),
    ("protocol_and_operations", |f| {
        f.ip_protocol = 0;
        f.app_protocol.clear();
        f.vlan = 0;
        f.end = 0;
        f.operations.clear();
    }),
    ("indicators", |f| f.indicators.clear()),
];

pub fn main(args: EstimateArgs) -> anyhow::Result<()> {
    let EstimateArgs {
        file,
        batch_flows,
        seal,
        by_field,
        flush_interval,
        meter: meter_args,
    } = args;
    let file = file.as_path();
    if batch_flows == 0 {
        bail!("--batch-flows must be at least 1");
    }
    if flush_interval.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
        bail!("--flush-interval must be a positive number of seconds");
    }
    let flush_us = flush_interval.map(|s| ((s * 1e6) as i64).max(1));
    // The interval (capture time / interval) at which the next timed
    // flush is due.
    let mut next_flush: Option<i64> = None;
    let cfg = seal.config(batch_flows)?;
    let mut table = meter_args.table(true)?;
    let scratch = std::env::temp_dir().join(format!("tidewatch-estimate-{}", std::process::id()));
    let mut batcher = Batcher::new(cfg.clone());
    let mut sealer = Sealer::new(cfg.clone(), SeqStore::open(&scratch)?);
    let (mut flows, mut assets, mut batches, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    // Bytes with each field group left out, then with all of them out.
    let mut without = [0u64; FIELD_GROUPS.len() + 1];
    let level = cfg.compress.then_some(cfg.zstd_level);
    // Time spent sealing (encoding and compression), apart from metering
    // (one thread: time taken is CPU time).
    let mut sealing = std::time::Duration::ZERO;
    // What one upload stream to a collector that keeps a link table
    // carries (every batch accepted in turn), and the time re-encoding
    // took.
    let mut link = LinkEncoder::new(link::DEFAULT_BYTES);
    let (mut linked_bytes, mut linking) = (0u64, std::time::Duration::ZERO);
    // Ingest's side of the same stream: its table, and the time it takes
    // to read each linked batch and store it self-contained again.
    let mut ingest_table = LinkTable::new(link::DEFAULT_BYTES);
    let mut resealing = std::time::Duration::ZERO;
    let mut count = |g: Group| -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let sealed = sealer.seal(g)?;
        sealing += started.elapsed();
        for b in sealed {
            batches += 1;
            bytes += b.request.payload.len() as u64 + FRAMING;
            // The batch sealed: what linking must give back, and what the
            // field groups are left out of.
            let batch = decode_request(&b.request).context("decoding a batch just sealed")?;
            let started = std::time::Instant::now();
            match codec::encode_linked(&b.request, &mut link) {
                Some((linked, kept)) => {
                    link.accepted(&kept);
                    linking += started.elapsed();
                    linked_bytes += linked.payload.len() as u64 + FRAMING;
                    // As ingest: read it with the stream's table, store it
                    // self-contained; it must be the batch sealed.
                    let started = std::time::Instant::now();
                    let (read, read_kept) = codec::decode_linked(
                        linked.encoding,
                        &linked.payload,
                        codec::DecodeLimits::INGEST,
                        &ingest_table,
                    )
                    .context("reading a linked batch as ingest does")?;
                    ingest_table.append(&read_kept);
                    std::hint::black_box(codec::encode(
                        &read,
                        codec::Layout::Columns,
                        Some(link::STORED_ZSTD_LEVEL),
                    ));
                    resealing += started.elapsed();
                    if read != batch || read_kept != kept {
                        bail!("batch {} linked does not read back as sealed", b.seq);
                    }
                }
                None => linked_bytes += b.request.payload.len() as u64 + FRAMING,
            }
            if !by_field {
                continue;
            }
            let size = |blank: &dyn Fn(&mut FlowRecord)| {
                let mut x: Batch = batch.clone();
                x.flows.iter_mut().for_each(blank);
                codec::encode(&x, cfg.layout, level).payload.len() as u64 + FRAMING
            };
            for (k, (_, blank)) in FIELD_GROUPS.iter().enumerate() {
                without[k] += size(blank);
            }
            without[FIELD_GROUPS.len()] +=
                size(&|f: &mut FlowRecord| FIELD_GROUPS.iter().for_each(|(_, blank)| blank(f)));
        }
        Ok(())
    };
    let stop = AtomicBool::new(false);
    let metered = meter_file(
        file,
        &mut table,
        None,
        &stop,
        &Progress::default(),
        |mut recs, a| {
            flows += recs.len() as u64;
            assets += a.len() as u64;
            let Some(every) = flush_us else {
                for g in batcher.push(recs, a) {
                    count(g)?;
                }
                return Ok(());
            };
            // Timed flushes by capture time: each record goes in at its
            // last packet, and what is pending is sealed at every multiple
            // of the interval.
            recs.sort_by_key(|r| r.last_seen_us);
            for r in recs {
                let at = r.last_seen_us.div_euclid(every);
                if next_flush.is_some_and(|n| at >= n) {
                    for g in batcher.flush(None) {
                        count(g)?;
                    }
                }
                next_flush = Some(at + 1);
                for g in batcher.push(vec![r], Vec::new()) {
                    count(g)?;
                }
            }
            for g in batcher.push(Vec::new(), a) {
                count(g)?;
            }
            Ok(())
        },
    )
    .with_context(|| format!("reading {}", file.display()));
    let last = metered.and_then(|m| match m.cut {
        // An estimate from part of a file would be misleading.
        Some(e) => Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
        None => batcher.flush(None).into_iter().try_for_each(&mut count),
    });
    let _ = std::fs::remove_dir_all(&scratch);
    last?;
    let per_flow = |b: u64| {
        if flows > 0 {
            (b as f64 / flows as f64 * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let us_per_flow = |t: std::time::Duration| {
        if flows > 0 {
            (t.as_secs_f64() * 1e6 / flows as f64 * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    };
    let mut out = serde_json::json!({
        "flows": flows, "assets": assets, "batches": batches, "bytes": bytes,
        "bytes_per_flow": per_flow(bytes),
        "compressed": cfg.compress,
        "layout": format!("{:?}", cfg.layout).to_lowercase(),
        "flush_interval_secs": flush_interval,
        "seal_us_per_flow": us_per_flow(sealing),
        "link_bytes": linked_bytes,
        "link_bytes_per_flow": per_flow(linked_bytes),
        "link_us_per_flow": us_per_flow(linking),
        "ingest_link_us_per_flow": us_per_flow(resealing),
    });
    if by_field {
        let mut groups = serde_json::Map::new();
        for (k, (name, _)) in FIELD_GROUPS.iter().enumerate() {
            groups.insert(
                name.to_string(),
                per_flow(bytes.saturating_sub(without[k])).into(),
            );
        }
        groups.insert(
            "framing".into(),
            per_flow(without[FIELD_GROUPS.len()]).into(),
        );
        out["by_field_bytes_per_flow"] = groups.into();
    }
    println!("{out}");
    Ok(())
}
