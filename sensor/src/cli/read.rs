//! `tidewatch-sensor read`: meters a capture file or a live interface and
//! prints one JSON object per flow (or, with `--assets`, per asset).

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tidewatch_proto::v1::FlowRecord;
use tidewatch_sensor::output::{asset_json, write_flow_json};
use tidewatch_sensor::pipeline::Progress;
use tracing::info;

use super::metering::{meter, stop_flag, Control};
use super::ReadArgs;

pub fn main(args: ReadArgs) -> anyhow::Result<()> {
    let ReadArgs {
        file,
        live,
        duration,
        replay_speed,
        assets,
        meter: meter_args,
    } = args;
    let duration = duration
        .map(|d| {
            if d.is_finite() && d > 0.0 {
                Ok(Duration::from_secs_f64(d))
            } else {
                Err(anyhow::anyhow!(
                    "--duration must be a positive number of seconds"
                ))
            }
        })
        .transpose()?;
    if replay_speed.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
        bail!("--replay-speed must be a positive number");
    }
    let mut table = meter_args.table(assets)?;
    // Live capture stops on SIGTERM/SIGINT: one runtime worker waits for them.
    let rt = match live.interface {
        Some(_) => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?,
        ),
        None => None,
    };
    let stop = match &rt {
        Some(rt) => stop_flag(rt),
        None => Arc::new(AtomicBool::new(false)),
    };
    // Records are formatted and written on their own thread, so printing
    // overlaps metering.
    // Printed records go back to the table, which fills them again.
    let (to_writer, chunks) = std::sync::mpsc::sync_channel::<Vec<FlowRecord>>(1);
    let (back, printed) = std::sync::mpsc::sync_channel::<Vec<FlowRecord>>(1);
    table.recycle_from(printed);
    let writer = std::thread::Builder::new()
        .name("read-output".into())
        .spawn(move || -> std::io::Result<()> {
            let mut out = std::io::stdout().lock();
            let mut buf = Vec::with_capacity(1 << 20);
            for recs in chunks {
                for r in &recs {
                    write_flow_json(&mut buf, r);
                }
                out.write_all(&buf)?;
                out.flush()?;
                buf.clear();
                let _ = back.try_send(recs);
            }
            Ok(())
        })?;
    let m = meter(
        file.as_ref(),
        &live,
        &mut table,
        Control {
            stop: &stop,
            duration,
            pace: replay_speed,
            progress: &Progress::default(),
        },
        |recs, _| {
            if !assets && !recs.is_empty() && to_writer.send(recs).is_err() {
                bail!("output closed");
            }
            Ok(())
        },
    );
    drop(to_writer);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("output thread panicked"))?;
    // A write error (such as a closed pipe) explains a stopped metering run.
    written.context("writing flows")?;
    let m = m?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(inv) = table.assets() {
        for a in inv.all() {
            serde_json::to_writer(&mut out, &asset_json(&a))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    if live.interface.is_some() {
        info!(
            frames = m.frames,
            kernel_drops = m.kernel_drops,
            flows = m.flows,
            "live capture stopped"
        );
    }
    let delivered = if assets {
        "metered, and the inventory printed"
    } else {
        "printed"
    };
    m.cut_error(file.as_ref(), delivered)
}
