//! `tidewatch-sensor buffer check|repair|stats`: the disk buffer inspected
//! or repaired offline, class by class; `buffer set-aside ...`: the batches
//! set aside.

use std::path::Path;

use anyhow::{bail, Context};
use tidewatch_sensor::batch::{decode_request, BatchConfig, Priority, Sealer, SeqStore};
use tidewatch_sensor::buffer::classed::{class_dir, set_aside_dir};
use tidewatch_sensor::buffer::set_aside::{entries, Entry, SetAside};
use tidewatch_sensor::buffer::{inspect, repair, ClassedBuffer};
use tidewatch_sensor::output::{asset_json, write_flow_json};

use super::{BufferCmd, BufferCmdArgs, RetryArgs, SetAsideCmd};

pub fn main(args: BufferCmdArgs) -> anyhow::Result<()> {
    let BufferCmdArgs { state_dir, cmd } = args;
    if let BufferCmd::SetAside(cmd) = cmd {
        return set_aside(&state_dir, cmd);
    }
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
            BufferCmd::SetAside(_) => unreachable!("handled above"),
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

fn set_aside(state_dir: &Path, cmd: SetAsideCmd) -> anyhow::Result<()> {
    let dir = set_aside_dir(&state_dir.join("buffer"));
    match cmd {
        SetAsideCmd::List => {
            let all: Vec<Entry> = entries(&dir)?
                .into_iter()
                .filter(|e| !e.is_split())
                .collect();
            for e in &all {
                println!(
                    "{}\tseq {}\t{} flows\t{} bytes\t{}",
                    e.class.name(),
                    e.seq,
                    e.flows(),
                    e.bytes(),
                    e.reason
                );
            }
            println!(
                "{} batch(es) set aside, {} flows, in {}",
                all.len(),
                all.iter().map(Entry::flows).sum::<u64>(),
                dir.display()
            );
        }
        SetAsideCmd::Show { seq } => {
            let e = find(&dir, seq)?;
            let mut out = Vec::new();
            for b in &e.batches {
                let batch = decode_request(&b.request)
                    .with_context(|| format!("set-aside batch {seq} cannot be decoded"))?;
                for f in &batch.flows {
                    write_flow_json(&mut out, f);
                }
                for a in &batch.assets {
                    out.extend_from_slice(asset_json(a).to_string().as_bytes());
                    out.push(b'\n');
                }
            }
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
        }
        SetAsideCmd::Retry(args) => retry(state_dir, args)?,
        SetAsideCmd::Delete { seq } => {
            let e = find(&dir, seq)?;
            SetAside::open(dir.clone())?.remove(&e)?;
            println!(
                "deleted set-aside batch {seq} ({}, {} flows lost)",
                e.class.name(),
                e.flows()
            );
        }
    }
    Ok(())
}

fn find(dir: &Path, seq: u64) -> anyhow::Result<Entry> {
    entries(dir)?
        .into_iter()
        .find(|e| !e.is_split() && e.seq == seq)
        .with_context(|| format!("no set-aside batch with seq {seq} in {}", dir.display()))
}

fn retry(state_dir: &Path, args: RetryArgs) -> anyhow::Result<()> {
    let cfg = args.seal.config(BatchConfig::default().max_flows)?;
    let (mut buf, _) = ClassedBuffer::open(args.buffer.config(state_dir)?)?;
    let mut sealer = Sealer::new(cfg, SeqStore::open(state_dir)?);
    let r = buf.retry_set_aside(&mut sealer)?;
    buf.sync()?;
    println!(
        "put {} set-aside batch(es) back into the queue as {} batch(es), {} flows; the sensor uploads them on its next start",
        r.retried, r.batches, r.flows
    );
    if r.undecodable > 0 {
        bail!(
            "{} set-aside batch(es) cannot be decoded and stay set aside",
            r.undecodable
        );
    }
    Ok(())
}
