//! `tidewatch-sensor buffer check|repair|stats`: the disk buffer inspected
//! or repaired offline, class by class.

use anyhow::bail;
use tidewatch_sensor::batch::Priority;
use tidewatch_sensor::buffer::classed::class_dir;
use tidewatch_sensor::buffer::{inspect, repair};

use super::{BufferCmd, BufferCmdArgs};

pub fn main(args: BufferCmdArgs) -> anyhow::Result<()> {
    let BufferCmdArgs { state_dir, cmd } = args;
    let dir = state_dir.join("buffer");
    let dir = dir.as_path();
    let mut damaged = 0;
    let mut total = (0u64, 0u64, 0u64);
    for class in Priority::ALL {
        let cdir = class_dir(dir, class);
        if !cdir.is_dir() {
            println!("buffer {} ({}): empty", cdir.display(), class.name());
            continue;
        }
        match cmd {
            BufferCmd::Stats | BufferCmd::Check => {
                let (segments, bytes, pending, bad) = print_buffer(&cdir, class)?;
                total = (total.0 + segments, total.1 + bytes, total.2 + pending);
                damaged += bad;
            }
            BufferCmd::Repair => {
                let n = repair(&cdir)?;
                println!("removed {n} damaged record(s) from {}", cdir.display());
            }
        }
    }
    if !matches!(cmd, BufferCmd::Repair) {
        println!(
            "total: {} segments, {} bytes, {} batches not yet acked, {} damaged records",
            total.0, total.1, total.2, damaged
        );
    }
    if matches!(cmd, BufferCmd::Check) && damaged > 0 {
        bail!(
            "{damaged} damaged record(s); the sensor skips them on start, or run `buffer repair`"
        );
    }
    Ok(())
}

/// Prints one class's segments; returns its segments, bytes, pending
/// batches and damaged records.
fn print_buffer(dir: &std::path::Path, class: Priority) -> anyhow::Result<(u64, u64, u64, u64)> {
    let ins = inspect(dir)?;
    let pending: u64 = ins.segments.iter().map(|s| s.pending_records).sum();
    let bytes: u64 = ins.segments.iter().map(|s| s.bytes).sum();
    for s in &ins.segments {
        println!(
            "{}  {} bytes  {} batches ({} flows)  seq {}..{}  pending {}  corrupt {}{}{}",
            s.path.display(),
            s.bytes,
            s.records,
            s.flows,
            s.first_seq
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into()),
            s.last_seq
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into()),
            s.pending_records,
            s.corrupt,
            if s.torn_tail_bytes > 0 {
                format!("  torn tail {} bytes", s.torn_tail_bytes)
            } else {
                String::new()
            },
            if s.bad_header {
                "  UNREADABLE HEADER"
            } else {
                ""
            },
        );
    }
    println!(
        "buffer {} ({}): {} segments, {} bytes, {} batches not yet acked, acked up to seq {}, {} damaged records",
        dir.display(),
        class.name(),
        ins.segments.len(),
        bytes,
        pending,
        ins.acked,
        ins.corrupt()
    );
    Ok((ins.segments.len() as u64, bytes, pending, ins.corrupt()))
}
