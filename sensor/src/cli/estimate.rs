//! `tidewatch-sensor estimate`: the link bytes per flow record a capture
//! would cost, with the batching and compression of `run`.

use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use tidewatch_sensor::batch::{BatchConfig, Batcher, Group, Sealer, SeqStore};
use tidewatch_sensor::pipeline::{meter_file, Progress};

use super::EstimateArgs;

pub fn main(args: EstimateArgs) -> anyhow::Result<()> {
    let EstimateArgs {
        file,
        batch_flows,
        batch_max_bytes,
        no_compress,
        meter: meter_args,
    } = args;
    let file = file.as_path();
    if batch_flows == 0 {
        bail!("--batch-flows must be at least 1");
    }
    super::check_batch_max_bytes(batch_max_bytes)?;
    let mut table = meter_args.table(true)?;
    let scratch = std::env::temp_dir().join(format!("tidewatch-estimate-{}", std::process::id()));
    let cfg = BatchConfig {
        max_flows: batch_flows,
        max_bytes: batch_max_bytes,
        compress: !no_compress,
        ..BatchConfig::default()
    };
    let mut batcher = Batcher::new(cfg.clone());
    let mut sealer = Sealer::new(cfg, SeqStore::open(&scratch)?);
    let (mut flows, mut assets, mut batches, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut count = |g: Group| -> anyhow::Result<()> {
        for b in sealer.seal(g)? {
            batches += 1;
            // gRPC frame (5) + UploadRequest fields (seq, encoding, payload tag+len).
            bytes += b.request.payload.len() as u64 + 5 + 16;
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
        |recs, a| {
            flows += recs.len() as u64;
            assets += a.len() as u64;
            for g in batcher.push(recs, a) {
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
    let per_flow = if flows > 0 {
        bytes as f64 / flows as f64
    } else {
        0.0
    };
    println!(
        "{}",
        serde_json::json!({
            "flows": flows, "assets": assets, "batches": batches, "bytes": bytes,
            "bytes_per_flow": (per_flow * 100.0).round() / 100.0,
            "compressed": !no_compress,
        })
    );
    Ok(())
}
