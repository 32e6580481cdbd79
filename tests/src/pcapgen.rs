//! Writes synthetic classic-pcap captures (Ethernet/IPv4/UDP) for tests and
//! benchmarks that need more flows than the reference corpus has.

use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `flows` UDP flows of `packets` packets each (requests one way,
/// replies the other), 1 ms apart, starting at `start_s` (Unix seconds).
/// Returns the number of packets written.
pub fn write_udp_flows(
    path: &Path,
    flows: u32,
    packets: u32,
    start_s: u32,
) -> std::io::Result<u64> {
    write_udp_flows_spaced(path, flows, packets, start_s, 1000)
}

/// As [`write_udp_flows`], with flows `spacing_us` apart (a long capture:
/// e.g. a day of traffic).
pub fn write_udp_flows_spaced(
    path: &Path,
    flows: u32,
    packets: u32,
    start_s: u32,
    spacing_us: u64,
) -> std::io::Result<u64> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    // Global header: magic, version 2.4, zone, sigfigs, snaplen, Ethernet.
    w.write_all(&0xa1b2c3d4u32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    for v in [0u32, 0, 65535, 1] {
        w.write_all(&v.to_le_bytes())?;
    }
    let mut n = 0u64;
    let payload = [0x42u8; 32];
    for f in 0..flows {
        let client = [10, 20, (f >> 8) as u8, f as u8];
        let server = [10, 99, 0, 1 + (f % 50) as u8];
        let cport = 20000 + (f % 40000) as u16;
        for p in 0..packets {
            let t_us = (f as u64) * spacing_us + p as u64 * 10;
            let (src, dst, sp, dp) = if p % 2 == 0 {
                (client, server, cport, 5000u16)
            } else {
                (server, client, 5000u16, cport)
            };
            let mut frame = Vec::with_capacity(14 + 28 + payload.len());
            frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
            let total = (20 + 8 + payload.len()) as u16;
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
            frame.extend_from_slice(&src);
            frame.extend_from_slice(&dst);
            frame.extend_from_slice(&sp.to_be_bytes());
            frame.extend_from_slice(&dp.to_be_bytes());
            frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            frame.extend_from_slice(&[0, 0]);
            frame.extend_from_slice(&payload);
            let secs = start_s + (t_us / 1_000_000) as u32;
            let usec = (t_us % 1_000_000) as u32;
            for v in [secs, usec, frame.len() as u32, frame.len() as u32] {
                w.write_all(&v.to_le_bytes())?;
            }
            w.write_all(&frame)?;
            n += 1;
        }
    }
    w.flush()?;
    Ok(n)
}
