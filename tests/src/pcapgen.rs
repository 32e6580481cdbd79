//! Writes synthetic classic-pcap captures (Ethernet/IPv4) for tests and
//! benchmarks that need more flows than the reference corpus has, or
//! traffic crafted as a hostile host would send it.

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
    let mut w = PcapWriter::create(path, start_s)?;
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
            w.frame(t_us, &eth_ipv4(src, dst, 17, &udp(sp, dp, &payload)))?;
        }
    }
    w.finish()
}

/// A classic pcap (Ethernet) being written, frames timed in microseconds
/// after a start in Unix seconds.
pub struct PcapWriter {
    w: BufWriter<std::fs::File>,
    start_s: u32,
    frames: u64,
}

impl PcapWriter {
    pub fn create(path: &Path, start_s: u32) -> std::io::Result<PcapWriter> {
        let mut w = BufWriter::new(std::fs::File::create(path)?);
        // Global header: magic, version 2.4, zone, sigfigs, snaplen, Ethernet.
        w.write_all(&0xa1b2c3d4u32.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        for v in [0u32, 0, 65535, 1] {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(PcapWriter {
            w,
            start_s,
            frames: 0,
        })
    }

    /// Writes `frame` at `t_us` after the start.
    pub fn frame(&mut self, t_us: u64, frame: &[u8]) -> std::io::Result<()> {
        let secs = self.start_s + (t_us / 1_000_000) as u32;
        let usec = (t_us % 1_000_000) as u32;
        for v in [secs, usec, frame.len() as u32, frame.len() as u32] {
            self.w.write_all(&v.to_le_bytes())?;
        }
        self.frames += 1;
        self.w.write_all(frame)
    }

    /// Flushes; returns the number of frames written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.w.flush()?;
        Ok(self.frames)
    }
}

/// An Ethernet frame carrying an IPv4 packet of protocol `proto` (header
/// checksum left 0: the sensor does not check it).
pub fn eth_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + 20 + l4.len());
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(l4);
    frame
}

/// A UDP header and payload.
pub fn udp(sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&sp.to_be_bytes());
    d.extend_from_slice(&dp.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}

/// A TCP header (20 bytes, `flags` e.g. 0x18 PSH+ACK) and payload.
pub fn tcp(sp: u16, dp: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(20 + payload.len());
    d.extend_from_slice(&sp.to_be_bytes());
    d.extend_from_slice(&dp.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&ack.to_be_bytes());
    d.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    d.extend_from_slice(payload);
    d
}

/// A DNS query (one question, type A) for `name`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// What a hostile host on the watched network can send to make the largest
/// flow records: `dns_flows` DNS conversations (each from its own client
/// port) of `names` queries for distinct random-looking names of 119
/// characters (two 59-letter labels: they do not compress), then
/// `modbus_polls` Modbus/TCP polls (read holding registers, each on its own
/// connection). Returns the number of frames.
pub fn write_dns_flood_then_modbus(
    path: &Path,
    dns_flows: u32,
    names: u32,
    modbus_polls: u32,
    start_s: u32,
) -> std::io::Result<u64> {
    let mut w = PcapWriter::create(path, start_s)?;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut letters = |n: usize| -> String {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b'a' + (x % 26) as u8) as char
            })
            .collect()
    };
    let mut t_us = 0u64;
    let (client, resolver) = ([10, 1, 0, 66], [10, 1, 0, 53]);
    for f in 0..dns_flows {
        let cport = 10_000 + (f % 50_000) as u16;
        for q in 0..names {
            let name = format!("{}.{}", letters(59), letters(59));
            let query = dns_query((f * names + q) as u16, &name);
            w.frame(
                t_us,
                &eth_ipv4(client, resolver, 17, &udp(cport, 53, &query)),
            )?;
            t_us += 10;
        }
    }
    let (hmi, plc) = ([10, 2, 0, 10], [10, 2, 0, 20]);
    for p in 0..modbus_polls {
        let cport = 40_000 + p as u16;
        let tid = (p as u16).to_be_bytes();
        let req = [tid[0], tid[1], 0, 0, 0, 6, 1, 3, 0, 0, 0, 10];
        let mut resp = vec![tid[0], tid[1], 0, 0, 0, 23, 1, 3, 20];
        resp.extend_from_slice(&[0u8; 20]);
        w.frame(
            t_us,
            &eth_ipv4(hmi, plc, 6, &tcp(cport, 502, 1, 1, 0x18, &req)),
        )?;
        w.frame(
            t_us + 500,
            &eth_ipv4(plc, hmi, 6, &tcp(502, cport, 1, 13, 0x18, &resp)),
        )?;
        t_us += 100_000;
    }
    w.finish()
}
