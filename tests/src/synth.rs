//! Synthetic flow records for benchmarks.

use tidewatch_proto::v1::{DirectionCounters, FlowRecord};

/// A flow with realistic variety (addresses, ports, sizes, times), so that
/// compression and encoding costs are not flattered by identical records.
pub fn bench_flow(i: u64) -> FlowRecord {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t = 1_700_000_000_000_000 + (i as i64) * 2_500 + (next() % 1000) as i64;
    let pk = 1 + next() % 40;
    let sk = next() % 40;
    FlowRecord {
        first_seen_us: t,
        last_seen_us: t + (next() % 60_000_000) as i64,
        client_ip: vec![
            10,
            (next() % 4) as u8,
            (next() % 256) as u8,
            (next() % 254 + 1) as u8,
        ],
        server_ip: if next() % 3 == 0 {
            vec![
                (next() % 223 + 1) as u8,
                (next() % 256) as u8,
                (next() % 256) as u8,
                (next() % 254 + 1) as u8,
            ]
        } else {
            vec![10, 0, 0, (next() % 64 + 1) as u8]
        },
        client_port: (1024 + next() % 64000) as u32,
        server_port: [502u32, 20000, 102, 44818, 47808, 443, 53, 10110][(next() % 8) as usize],
        ip_protocol: if next() % 4 == 0 { 17 } else { 6 },
        c2s: Some(DirectionCounters {
            packets: pk,
            ip_bytes: pk * (40 + next() % 300),
            payload_bytes: pk * (next() % 260),
            tcp_flags: 0x1b,
        }),
        s2c: Some(DirectionCounters {
            packets: sk,
            ip_bytes: sk * (40 + next() % 1400),
            payload_bytes: sk * (next() % 1360),
            tcp_flags: 0x1b,
        }),
        app_protocol: String::new(),
        vlan: (next() % 5) as u32,
        end: 1 + (next() % 5) as i32,
        operations: Vec::new(),
        indicators: Vec::new(),
    }
}
