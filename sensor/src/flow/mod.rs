//! The flow table: turns decoded packets into bidirectional flow records.
//!
//! A flow is keyed by (VLAN, IP protocol, the two endpoints) in canonical
//! order, so both directions land in one entry. Orientation (who is the
//! client) is fixed when the flow starts:
//! 1. a TCP SYN without ACK: its sender is the client (SYN+ACK: its sender is
//!    the server);
//! 2. otherwise the sender of the first packet seen is the client, unless its
//!    port is a well-known server port (below 1024, or one a protocol declares
//!    in [`crate::protocols::PROTOCOLS`]) and the receiver's port is not: then
//!    the receiver is.
//!
//! The application protocol is identified from payloads, never from ports
//! (see [`crate::protocols`]).
//!
//! Records leave the table on idle timeout, on active timeout (the flow goes on
//! and the next record counts from there, like IPFIX), shortly after a TCP
//! close (FIN both ways or RST, with a short linger for the last ACKs), when the
//! table is full (the least recently seen flows are evicted and counted), and
//! at end of input. All times are capture times, never the wall clock.

mod store;

use std::collections::HashMap;

/// Per-process randomly seeded fast hashing (foldhash) for the small
/// fragment map.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::IpAddr;

use tidewatch_proto::v1::{DirectionCounters, FlowEnd, FlowRecord};

use crate::assets::{AssetTable, FlowSide};
use crate::decode::PacketInfo;
use crate::protocols::{AppState, OpStore, Payload};
pub use store::FlowKey;
use store::FlowStore;

/// Flow table settings.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// A flow with no packet for this long is emitted.
    pub idle_timeout_us: i64,
    /// A flow older than this is emitted and restarted.
    pub active_timeout_us: i64,
    /// Hard cap on concurrent flows.
    pub max_flows: usize,
    /// Hard cap on IP datagrams whose first fragment is remembered (so that
    /// their later fragments join its flow). Beyond it a first fragment is
    /// not remembered and counted; its later fragments are still metered,
    /// as a flow without ports. A flood of distinct fragments cannot grow
    /// the sensor's memory past it.
    pub max_fragments: usize,
    /// Time a closed TCP flow stays to collect trailing ACKs/retransmissions.
    pub close_linger_us: i64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            idle_timeout_us: 120_000_000,
            active_timeout_us: 1_800_000_000,
            max_flows: 262_144,
            max_fragments: 65_536,
            close_linger_us: 2_000_000,
        }
    }
}

/// Counters of what the table saw and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub flows_created: u64,
    pub records_emitted: u64,
    pub flows_evicted: u64,
    pub fragments_unmatched: u64,
    /// First fragments not remembered because `max_fragments` were.
    pub fragments_overflow: u64,
}

/// Counters of one direction of a flow. Packets are counted in 32 bits (a
/// record is cut, like an active timeout, before the count would wrap:
/// that is 4 billion packets in one direction within one record), which
/// keeps a table entry at 136 bytes (with `packed(4)`: 20 bytes, not 24).
#[derive(Debug, Default, Clone, Copy)]
#[repr(C, packed(4))]
struct DirCounters {
    packets: u32,
    ip_bytes: u64,
    payload_bytes: u64,
}

impl DirCounters {
    fn to_proto(self, tcp_flags: u8) -> DirectionCounters {
        DirectionCounters {
            packets: self.packets as u64,
            ip_bytes: self.ip_bytes,
            payload_bytes: self.payload_bytes,
            tcp_flags: tcp_flags as u32,
        }
    }
}

/// `Flow::bits`: the slot holds a flow.
const LIVE: u8 = 1;
/// `Flow::bits`: endpoint `a` is the client.
const CLIENT_IS_A: u8 = 2;
/// `Flow::bits`: a FIN was seen from `a` / from `b`.
const A_FIN: u8 = 4;
const B_FIN: u8 = 8;
/// `Flow::bits`: a MAC address is known for `a` / for `b`.
const A_MAC: u8 = 16;
const B_MAC: u8 = 32;
/// `Flow::closed_at` of a flow that is not closed.
const OPEN: i64 = i64::MAX;

/// One flow's state (96 bytes; with its key, 136 per table entry).
#[derive(Debug, Clone)]
pub struct Flow {
    first_us: i64,
    last_us: i64,
    /// Capture time of the RST or the second FIN, or [`OPEN`].
    closed_at: i64,
    a2b: DirCounters,
    b2a: DirCounters,
    app: AppState,
    a_mac: [u8; 6],
    b_mac: [u8; 6],
    a2b_flags: u8,
    b2a_flags: u8,
    bits: u8,
}

impl Flow {
    /// What a freed slab slot holds.
    const VACANT: Flow = Flow {
        first_us: 0,
        last_us: 0,
        closed_at: OPEN,
        a2b: DirCounters {
            packets: 0,
            ip_bytes: 0,
            payload_bytes: 0,
        },
        b2a: DirCounters {
            packets: 0,
            ip_bytes: 0,
            payload_bytes: 0,
        },
        app: AppState::NEW,
        a_mac: [0; 6],
        b_mac: [0; 6],
        a2b_flags: 0,
        b2a_flags: 0,
        bits: 0,
    };

    fn new(client_is_a: bool, ts_us: i64) -> Flow {
        Flow {
            first_us: ts_us,
            last_us: ts_us,
            bits: LIVE | if client_is_a { CLIENT_IS_A } else { 0 },
            ..Flow::VACANT
        }
    }

    fn is_live(&self) -> bool {
        self.bits & LIVE != 0
    }

    fn client_is_a(&self) -> bool {
        self.bits & CLIENT_IS_A != 0
    }

    fn mac(&self, a: bool) -> Option<[u8; 6]> {
        match a {
            true if self.bits & A_MAC != 0 => Some(self.a_mac),
            false if self.bits & B_MAC != 0 => Some(self.b_mac),
            _ => None,
        }
    }

    /// No packet since the last record of this flow.
    fn is_empty(&self) -> bool {
        self.a2b.packets == 0 && self.b2a.packets == 0
    }

    /// The earliest capture time at which a sweep acts on this flow (idle,
    /// active or close timeout), as things stand.
    fn due_us(&self, cfg: &FlowConfig) -> i64 {
        let idle = self
            .last_us
            .saturating_add(cfg.idle_timeout_us)
            .saturating_add(1);
        if self.is_empty() {
            return idle;
        }
        let due = idle.min(self.first_us.saturating_add(cfg.active_timeout_us));
        if self.closed_at == OPEN {
            due
        } else {
            due.min(self.closed_at.saturating_add(cfg.close_linger_us))
        }
    }

    /// Starts the next record of the same flow (active timeout).
    fn restart(&mut self, now_us: i64) {
        self.first_us = now_us;
        self.a2b = DirCounters::default();
        self.b2a = DirCounters::default();
        self.a2b_flags = 0;
        self.b2a_flags = 0;
        self.bits &= !(A_FIN | B_FIN);
        self.app.restart();
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Server ports of services the sensor has no parser for (the parsed
/// protocols declare theirs in [`crate::protocols::PROTOCOLS`]).
const OTHER_SERVER_PORTS: &[u16] = &[
    1900, // SSDP
];

/// A port treated as "server side" for orientation when no handshake is
/// seen: below 1024, or a well-known port of a protocol.
fn is_server_port(p: u16) -> bool {
    (p != 0 && p < 1024)
        || crate::protocols::is_known_server_port(p)
        || OTHER_SERVER_PORTS.contains(&p)
}

/// Which endpoint of the first packet is the client: `true` = the sender.
fn sender_is_client(info: &PacketInfo<'_>) -> bool {
    if info.ip_protocol == 6 {
        let f = info.tcp_flags;
        if f & TCP_SYN != 0 && f & TCP_ACK == 0 {
            return true;
        }
        if f & TCP_SYN != 0 && f & TCP_ACK != 0 {
            return false;
        }
    }
    !is_server_port(info.src_port) || is_server_port(info.dst_port)
}

/// (source, destination, IP protocol, fragment id) of a fragmented datagram.
type FragmentKey = (IpAddr, IpAddr, u8, u32);
/// (source port, destination port, time of the first fragment in µs).
type FragmentPorts = (u16, u16, i64);

/// A packet's flow key, worked out ahead of processing (see
/// [`FlowTable::process_batch`]).
#[derive(Clone, Copy)]
struct Keyed {
    key: FlowKey,
    src_is_a: bool,
    hash: u64,
}

pub struct FlowTable {
    cfg: FlowConfig,
    flows: FlowStore,
    /// The operation summaries of the flows.
    ops: OpStore,
    /// First IPv4/IPv6 fragment's ports, so later fragments join its flow.
    fragments: FastMap<FragmentKey, FragmentPorts>,
    emitted: Vec<FlowRecord>,
    /// Remaining flows of a flush in progress: (first seen, entry), newest first.
    flush_order: Option<Vec<(i64, u32)>>,
    /// Key hashes of the batch being processed (reused between batches).
    batch_hashes: Vec<Option<u64>>,
    /// Records handed back for reuse (see [`FlowTable::recycle_from`]).
    spare: Vec<FlowRecord>,
    recycler: Option<std::sync::mpsc::Receiver<Vec<FlowRecord>>>,
    /// Operation classes of the record being emitted (for the assets).
    classes: Vec<tidewatch_proto::v1::OperationClass>,
    assets: Option<AssetTable>,
    now_us: i64,
    last_sweep_us: i64,
    /// No flow can time out before this (capture time): sweeps until then
    /// would find nothing to do and are skipped.
    next_due_us: i64,
    stats: FlowStats,
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            flows: FlowStore::new(),
            ops: OpStore::default(),
            fragments: FastMap::default(),
            emitted: Vec::new(),
            flush_order: None,
            batch_hashes: Vec::new(),
            spare: Vec::new(),
            recycler: None,
            classes: Vec::new(),
            assets: None,
            now_us: i64::MIN,
            last_sweep_us: i64::MIN,
            next_due_us: i64::MIN,
            stats: FlowStats::default(),
        }
    }

    /// Keeps a passive asset inventory alongside the flows.
    pub fn with_assets(mut self, assets: AssetTable) -> Self {
        self.assets = Some(assets);
        self
    }

    pub fn assets(&self) -> Option<&AssetTable> {
        self.assets.as_ref()
    }

    /// Asset observations that appeared or changed since the last call.
    pub fn take_asset_changes(&mut self) -> Vec<tidewatch_proto::v1::AssetObservation> {
        self.assets
            .as_mut()
            .map(AssetTable::take_changed)
            .unwrap_or_default()
    }

    /// An ARP sender (MAC, IPv4) for the inventory.
    pub fn on_arp(&mut self, mac: [u8; 6], ip: std::net::Ipv4Addr, ts_us: i64) {
        if let Some(a) = self.assets.as_mut() {
            a.on_address(mac, IpAddr::V4(ip), ts_us);
        }
    }

    pub fn stats(&self) -> FlowStats {
        self.stats
    }

    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Records emitted since the last call.
    pub fn take_emitted(&mut self) -> Vec<FlowRecord> {
        // The next chunk is probably as large as this one: room for it now
        // rather than growing (and copying) it record by record.
        let room = self.emitted.len();
        std::mem::replace(&mut self.emitted, Vec::with_capacity(room))
    }

    /// Number of records waiting in [`FlowTable::take_emitted`].
    pub fn emitted_len(&self) -> usize {
        self.emitted.len()
    }

    /// Advances the table's clock (capture time) and runs the timeout sweep
    /// at most once a second. Live capture calls it while no packet arrives,
    /// so flows still time out on a quiet network.
    #[inline]
    pub fn tick(&mut self, now_us: i64) {
        if now_us > self.now_us {
            self.now_us = now_us;
        }
        if self.now_us.saturating_sub(self.last_sweep_us) >= 1_000_000 {
            if self.now_us >= self.next_due_us {
                self.sweep();
            }
            let frag_horizon = self.now_us - 30_000_000;
            self.fragments.retain(|_, (_, _, ts)| *ts >= frag_horizon);
            self.last_sweep_us = self.now_us;
        }
    }

    /// Accounts one decoded packet.
    pub fn process(&mut self, info: &PacketInfo<'_>) {
        self.flows.ensure_indexed();
        let keyed = self.key_of(info);
        self.process_keyed(info, keyed);
    }

    /// Accounts decoded packets in order, exactly as [`FlowTable::process`]
    /// one by one would, but looks their flows up a batch ahead: with many
    /// concurrent flows, lookups miss the CPU caches, and overlapping the
    /// misses of a batch is most of the speed of metering.
    pub fn process_batch(&mut self, infos: &[PacketInfo<'_>]) {
        self.flows.ensure_indexed();
        // Hashes only: keys are cheap to build again, and keeping them in
        // between costs more in memory traffic than it saves.
        let mut hashes = std::mem::take(&mut self.batch_hashes);
        hashes.clear();
        for info in infos {
            // Fragments are keyed when processed: their ports come from the
            // fragment map as it is at that moment.
            let h = info.fragment.is_none().then(|| self.key_of(info).hash);
            if let Some(h) = h {
                self.flows.prefetch_index(h);
            }
            hashes.push(h);
        }
        for h in hashes.iter().flatten() {
            self.flows.prefetch_entry(*h);
        }
        for (info, h) in infos.iter().zip(&hashes) {
            let k = match h {
                Some(hash) => {
                    let (key, src_is_a) = FlowKey::new(
                        info.vlan,
                        info.ip_protocol,
                        info.src,
                        info.src_port,
                        info.dst,
                        info.dst_port,
                    );
                    Keyed {
                        key,
                        src_is_a,
                        hash: *hash,
                    }
                }
                None => self.key_of(info),
            };
            self.process_keyed(info, k);
        }
        self.batch_hashes = hashes;
    }

    /// The flow key of a packet (a non-first fragment takes the ports of
    /// its datagram's first fragment, if seen).
    #[inline]
    fn key_of(&mut self, info: &PacketInfo<'_>) -> Keyed {
        let (mut sport, mut dport) = (info.src_port, info.dst_port);
        if let Some(frag) = info.fragment {
            let fk = (info.src, info.dst, info.ip_protocol, frag.id);
            if frag.first {
                if self.fragments.len() < self.cfg.max_fragments || self.fragments.contains_key(&fk)
                {
                    self.fragments.insert(fk, (sport, dport, info.ts_us));
                } else {
                    self.stats.fragments_overflow += 1;
                }
            } else if let Some((s, d, _)) = self.fragments.get(&fk) {
                (sport, dport) = (*s, *d);
            } else {
                self.stats.fragments_unmatched += 1;
            }
        }
        let (key, src_is_a) = FlowKey::new(
            info.vlan,
            info.ip_protocol,
            info.src,
            sport,
            info.dst,
            dport,
        );
        Keyed {
            key,
            src_is_a,
            hash: self.flows.hash(&key),
        }
    }

    fn process_keyed(&mut self, info: &PacketInfo<'_>, k: Keyed) {
        self.stats.packets += 1;
        self.tick(info.ts_us);
        // A packet during a flush: order again from what is left.
        self.flush_order = None;
        let Keyed {
            key,
            src_is_a,
            hash,
        } = k;
        let flags = info.tcp_flags;
        let is_tcp = info.ip_protocol == 6;

        // Idle timeout checked on arrival too (the sweep runs once a second
        // of capture time): a gap longer than the timeout starts a new flow;
        // so does a new handshake on a closed flow.
        let new_syn = is_tcp && flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
        let new_flow = || {
            let sender_client = sender_is_client(info);
            Flow::new(sender_client == src_is_a, info.ts_us)
        };
        let idx = match self.flows.find(&key, hash) {
            Some(idx) => {
                let f = &mut self.flows.get_mut(idx).flow;
                let end = if info.ts_us - f.last_us > self.cfg.idle_timeout_us {
                    Some(FlowEnd::IdleTimeout)
                } else if new_syn && f.closed_at != OPEN {
                    Some(FlowEnd::TcpClose)
                } else {
                    None
                };
                if let Some(end) = end {
                    let old = std::mem::replace(f, new_flow());
                    self.stats.flows_created += 1;
                    self.emit(&key, old, end);
                }
                idx
            }
            None => {
                if self.flows.len() >= self.cfg.max_flows {
                    self.evict();
                }
                self.stats.flows_created += 1;
                self.flows.insert(key, hash, new_flow())
            }
        };
        let e = self.flows.get_mut(idx);
        if e.flow.a2b.packets == u32::MAX || e.flow.b2a.packets == u32::MAX {
            // A counter is full: this record ends here, the flow goes on.
            let k = e.key;
            let snapshot = e.flow.clone();
            e.flow.restart(info.ts_us);
            self.emit(&k, snapshot, FlowEnd::ActiveTimeout);
        }
        let flow = &mut self.flows.get_mut(idx).flow;
        if flow.is_empty() {
            // First packet of this record (new flow, or after an active timeout).
            flow.first_us = info.ts_us;
        }
        flow.last_us = flow.last_us.max(info.ts_us);
        flow.first_us = flow.first_us.min(info.ts_us);
        if let Some(mac) = info.src_mac {
            if src_is_a {
                flow.a_mac = mac;
                flow.bits |= A_MAC;
            } else {
                flow.b_mac = mac;
                flow.bits |= B_MAC;
            }
        }
        let continuation = info.fragment.is_some_and(|f| !f.first);
        if !info.payload.is_empty() && !continuation {
            let from_client = src_is_a == flow.client_is_a();
            flow.app
                .on_payload(info.ip_protocol, info.payload, from_client, &mut self.ops);
            if let (Some(proto), Some(mac), Some(assets)) =
                (flow.app.proto, info.src_mac, self.assets.as_mut())
            {
                let payload = Payload {
                    data: info.payload,
                    transport: info.ip_protocol,
                    from_client,
                };
                if let Some(said) = proto.protocol().identify.and_then(|id| id(payload)) {
                    assets.on_identity(mac, info.src, proto.name(), said, info.ts_us);
                }
            }
        }
        let (dir, dir_flags, fin_bit) = if src_is_a {
            (&mut flow.a2b, &mut flow.a2b_flags, A_FIN)
        } else {
            (&mut flow.b2a, &mut flow.b2a_flags, B_FIN)
        };
        dir.packets += 1;
        dir.ip_bytes += info.ip_bytes as u64;
        dir.payload_bytes += info.payload_len as u64;
        if is_tcp {
            *dir_flags |= flags;
            if flags & TCP_FIN != 0 {
                flow.bits |= fin_bit;
            }
            if flow.closed_at == OPEN
                && (flags & TCP_RST != 0 || flow.bits & (A_FIN | B_FIN) == A_FIN | B_FIN)
            {
                flow.closed_at = info.ts_us;
            }
        }
        self.next_due_us = self.next_due_us.min(flow.due_us(&self.cfg));
        if let (Some(mac), Some(a)) = (info.src_mac, self.assets.as_mut()) {
            a.on_address(mac, info.src, info.ts_us);
        }
    }

    /// Emits every flow whose timeout has passed at the current capture time.
    fn sweep(&mut self) {
        let now = self.now_us;
        let cfg = &self.cfg;
        let mut done: Vec<(i64, u32, FlowEnd)> = Vec::new();
        let mut restart: Vec<(i64, u32)> = Vec::new();
        let mut next_due = i64::MAX;
        for (i, e) in self.flows.iter() {
            let f = &e.flow;
            if f.is_empty() {
                // Restarted by an active timeout and silent since: nothing to
                // report; forget it once idle.
                if now - f.last_us > cfg.idle_timeout_us {
                    done.push((f.first_us, i, FlowEnd::IdleTimeout));
                } else {
                    next_due = next_due.min(f.due_us(cfg));
                }
                continue;
            }
            if f.closed_at != OPEN && now - f.closed_at >= cfg.close_linger_us {
                done.push((f.first_us, i, FlowEnd::TcpClose));
                continue;
            }
            if now - f.last_us > cfg.idle_timeout_us {
                done.push((f.first_us, i, FlowEnd::IdleTimeout));
            } else if now - f.first_us >= cfg.active_timeout_us {
                restart.push((f.first_us, i));
            } else {
                next_due = next_due.min(f.due_us(cfg));
            }
        }
        // Deterministic output order: by first packet time, then key.
        let flows = &self.flows;
        done.sort_unstable_by_key(|x| (x.0, flows.get(x.1).key));
        for (_, i, end) in done {
            let (k, f) = self.flows.remove(i);
            self.emit(&k, f, end);
        }
        let flows = &self.flows;
        restart.sort_unstable_by_key(|x| (x.0, flows.get(x.1).key));
        for (_, i) in restart {
            let e = self.flows.get_mut(i);
            let k = e.key;
            let snapshot = e.flow.clone();
            e.flow.restart(now);
            next_due = next_due.min(e.flow.due_us(&self.cfg));
            self.emit(&k, snapshot, FlowEnd::ActiveTimeout);
        }
        self.next_due_us = next_due;
    }

    /// Evicts the least recently seen tenth of the table (at least one flow).
    fn evict(&mut self) {
        let mut last: Vec<i64> = self.flows.iter().map(|(_, e)| e.flow.last_us).collect();
        if last.is_empty() {
            return;
        }
        let idx = (last.len() / 10).min(last.len() - 1);
        let (_, cutoff, _) = last.select_nth_unstable(idx);
        let cutoff = *cutoff;
        drop(last);
        let mut victims: Vec<(i64, u32)> = self
            .flows
            .iter()
            .filter(|(_, e)| e.flow.last_us <= cutoff)
            .map(|(i, e)| (e.flow.first_us, i))
            .collect();
        let flows = &self.flows;
        victims.sort_unstable_by_key(|x| (x.0, flows.get(x.1).key));
        for (_, i) in victims {
            let (k, f) = self.flows.remove(i);
            self.stats.flows_evicted += 1;
            self.emit(&k, f, FlowEnd::Evicted);
        }
    }

    /// Emits every remaining flow (end of a capture file, or shutdown).
    pub fn flush_all(&mut self) {
        while self.flush_step(usize::MAX) {}
    }

    /// Emits up to `max` of the remaining flows (oldest first); returns
    /// whether more remain. Lets the caller hand records on in chunks so the
    /// end of a large capture does not hold every record in memory at once.
    pub fn flush_step(&mut self, max: usize) -> bool {
        let flows = &self.flows;
        let order = self.flush_order.get_or_insert_with(|| {
            let mut v: Vec<(i64, u32)> = flows.iter().map(|(i, e)| (e.flow.first_us, i)).collect();
            // Emitted from the back: newest first in the vector. Ordered by
            // start time, then (only among flows that started in the same
            // microsecond, so the entries are rarely touched) by key.
            v.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
            for run in v.chunk_by_mut(|a, b| a.0 == b.0) {
                if run.len() > 1 {
                    run.sort_unstable_by_key(|x| std::cmp::Reverse(flows.get(x.1).key));
                }
            }
            v
        });
        let n = order.len().min(max);
        let batch: Vec<(i64, u32)> = order.split_off(order.len() - n);
        // Entries are visited in start order, all over the store: load a
        // few ahead so that their cache misses overlap.
        const AHEAD: usize = 8;
        for (j, &(_, i)) in batch.iter().enumerate().rev() {
            if let Some(&(_, next)) = j.checked_sub(AHEAD).map(|a| &batch[a]) {
                self.flows.prefetch_slot(next);
            }
            let (k, f) = self.flows.take(i);
            self.emit(&k, f, FlowEnd::EndOfInput);
        }
        if self.flush_order.as_ref().is_some_and(|o| !o.is_empty()) {
            return true;
        }
        self.flush_order = None;
        self.flows.clear();
        self.ops.clear();
        self.fragments.clear();
        false
    }

    fn emit(&mut self, key: &FlowKey, mut f: Flow, end: FlowEnd) {
        // Buffers of a record the output handed back, if any.
        let FlowRecord {
            mut client_ip,
            mut server_ip,
            mut app_protocol,
            mut operations,
            ..
        } = self.spare_record();
        f.app.take_operations_into(&mut self.ops, &mut operations);
        if f.is_empty() {
            return;
        }
        let a_client = f.client_is_a();
        let (c2s, s2c) = if a_client {
            (f.a2b.to_proto(f.a2b_flags), f.b2a.to_proto(f.b2a_flags))
        } else {
            (f.b2a.to_proto(f.b2a_flags), f.a2b.to_proto(f.a2b_flags))
        };
        let (client_port, server_port) = if a_client {
            (key.a_port(), key.b_port())
        } else {
            (key.b_port(), key.a_port())
        };
        key.ip_into(a_client, &mut client_ip);
        key.ip_into(!a_client, &mut server_ip);
        if let Some(assets) = self.assets.as_mut() {
            let classes = &mut self.classes;
            classes.clear();
            classes.extend(operations.iter().map(|o| {
                tidewatch_proto::v1::OperationClass::try_from(o.class).unwrap_or_default()
            }));
            assets.on_flow(
                FlowSide {
                    mac: f.mac(a_client),
                    ip: &client_ip,
                },
                FlowSide {
                    mac: f.mac(!a_client),
                    ip: &server_ip,
                },
                f.app.proto,
                classes,
                f.last_us,
            );
        }
        app_protocol.clear();
        if let Some(p) = f.app.proto {
            app_protocol.push_str(p.name());
        }
        self.stats.records_emitted += 1;
        self.emitted.push(FlowRecord {
            first_seen_us: f.first_us,
            last_seen_us: f.last_us,
            client_ip,
            server_ip,
            client_port: client_port as u32,
            server_port: server_port as u32,
            ip_protocol: key.proto() as u32,
            c2s: Some(c2s),
            s2c: Some(s2c),
            app_protocol,
            vlan: key.vlan() as u32,
            end: end as i32,
            operations,
            indicators: f.app.take_indicators(),
        });
    }

    /// A record to fill: one handed back through [`FlowTable::recycle_from`]
    /// (its buffers are reused; every field is overwritten), else a new one.
    fn spare_record(&mut self) -> FlowRecord {
        if self.spare.is_empty() {
            if let Some(back) = self.recycler.as_ref().and_then(|rx| rx.try_recv().ok()) {
                self.spare = back;
            }
        }
        self.spare.pop().unwrap_or_default()
    }

    /// Records the consumer of [`FlowTable::take_emitted`] is done with come
    /// back through `rx`, and their buffers are used again for new records:
    /// `read` prints a record per flow on another thread, and allocating
    /// (and freeing) each record's strings and vectors was a tenth of the
    /// metering thread's time.
    pub fn recycle_from(&mut self, rx: std::sync::mpsc::Receiver<Vec<FlowRecord>>) {
        self.recycler = Some(rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn pkt(
        ts: i64,
        src: [u8; 4],
        sp: u16,
        dst: [u8; 4],
        dp: u16,
        flags: u8,
    ) -> PacketInfo<'static> {
        PacketInfo {
            ts_us: ts,
            vlan: 0,
            src: IpAddr::from(src),
            dst: IpAddr::from(dst),
            ip_protocol: 6,
            src_port: sp,
            dst_port: dp,
            tcp_flags: flags,
            ip_bytes: 60,
            payload_len: 20,
            payload: &[],
            fragment: None,
            src_mac: None,
        }
    }

    const C: [u8; 4] = [10, 0, 0, 9];
    const S: [u8; 4] = [10, 0, 0, 1];

    #[test]
    fn handshake_sets_orientation_even_from_high_address() {
        let mut t = FlowTable::new(FlowConfig::default());
        t.process(&pkt(1, C, 40000, S, 502, TCP_SYN));
        t.process(&pkt(2, S, 502, C, 40000, TCP_SYN | TCP_ACK));
        t.process(&pkt(3, C, 40000, S, 502, TCP_ACK));
        t.flush_all();
        let r = t.take_emitted();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].client_ip, C.to_vec());
        assert_eq!(r[0].server_port, 502);
        assert_eq!(r[0].c2s.unwrap().packets, 2);
        assert_eq!(r[0].s2c.unwrap().packets, 1);
        assert_eq!(r[0].c2s.unwrap().ip_bytes, 120);
    }

    #[test]
    fn without_handshake_well_known_port_is_server() {
        let mut t = FlowTable::new(FlowConfig::default());
        // First packet seen is the server's answer.
        t.process(&pkt(1, S, 502, C, 40000, TCP_ACK));
        t.flush_all();
        let r = t.take_emitted();
        assert_eq!(r[0].client_ip, C.to_vec());
        assert_eq!(r[0].server_port, 502);
        assert_eq!(r[0].s2c.unwrap().packets, 1);
    }

    #[test]
    fn idle_and_active_timeouts_and_close() {
        let cfg = FlowConfig {
            idle_timeout_us: 10_000_000,
            active_timeout_us: 100_000_000,
            max_flows: 100,
            close_linger_us: 1_000_000,
            ..FlowConfig::default()
        };
        let mut t = FlowTable::new(cfg);
        t.process(&pkt(0, C, 40000, S, 502, TCP_ACK));
        // 20 s later: the first flow idled out, a new one starts.
        t.process(&pkt(20_000_000, C, 40000, S, 502, TCP_ACK));
        assert_eq!(t.take_emitted().len(), 1);
        // Keep it busy past the active timeout.
        for i in 1..=12 {
            t.process(&pkt(20_000_000 + i * 9_000_000, C, 40000, S, 502, TCP_ACK));
        }
        let r = t.take_emitted();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].end, FlowEnd::ActiveTimeout as i32);
        // RST closes; after the linger the flow is emitted as closed.
        t.process(&pkt(130_000_000, S, 502, C, 40000, TCP_RST));
        t.process(&pkt(133_000_000, C, 1, S, 2, TCP_ACK));
        let r = t.take_emitted();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].end, FlowEnd::TcpClose as i32);
    }

    #[test]
    fn cap_evicts_and_counts() {
        let cfg = FlowConfig {
            max_flows: 50,
            ..FlowConfig::default()
        };
        let mut t = FlowTable::new(cfg);
        for i in 0..200u16 {
            t.process(&pkt(i as i64, C, 10000 + i, S, 502, TCP_ACK));
        }
        assert!(t.active_flows() <= 50);
        assert!(t.stats().flows_evicted >= 150);
        t.flush_all();
        let total: u64 = t
            .take_emitted()
            .iter()
            .map(|r| r.c2s.unwrap().packets)
            .sum();
        assert_eq!(total, 200, "no packet lost to eviction");
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::decode::Fragment;

    /// Pseudo-random packets over a few hundred flows: handshakes, closes,
    /// fragments, long gaps (idle and active timeouts) and a small table cap.
    fn packets() -> Vec<PacketInfo<'static>> {
        let mut seed = 0x9e37_79b9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut ts = 0i64;
        (0..20_000)
            .map(|_| {
                let r = next();
                ts += if r % 97 == 0 {
                    200_000_000
                } else {
                    (r % 50_000) as i64
                };
                let flow = (r >> 8) % 300;
                let from_client = r & 1 == 0;
                let c = IpAddr::from([10, 0, (flow >> 8) as u8, flow as u8]);
                let s = IpAddr::from([10, 9, 0, 1]);
                let cp = 40000 + flow as u16;
                let (src, dst, sp, dp) = if from_client {
                    (c, s, cp, 502)
                } else {
                    (s, c, 502, cp)
                };
                let fragment = (r % 13 == 0).then_some(Fragment {
                    id: flow,
                    first: r % 26 == 0,
                });
                let flags =
                    [TCP_SYN, TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, 0x18][(r >> 20) as usize % 5];
                PacketInfo {
                    ts_us: ts,
                    vlan: (flow % 3) as u16,
                    src,
                    dst,
                    ip_protocol: if flow % 4 == 0 { 17 } else { 6 },
                    src_port: if fragment.is_some_and(|f| !f.first) {
                        0
                    } else {
                        sp
                    },
                    dst_port: if fragment.is_some_and(|f| !f.first) {
                        0
                    } else {
                        dp
                    },
                    tcp_flags: flags,
                    ip_bytes: 60 + r % 1400,
                    payload_len: r % 1400,
                    payload: &[],
                    fragment,
                    src_mac: Some([0, 1, 2, 3, 4, (flow % 7) as u8]),
                }
            })
            .collect()
    }

    #[test]
    fn batches_give_the_same_records_as_single_packets() {
        let cfg = FlowConfig {
            idle_timeout_us: 60_000_000,
            active_timeout_us: 300_000_000,
            max_flows: 200,
            close_linger_us: 1_000_000,
            ..FlowConfig::default()
        };
        let pkts = packets();
        let mut one = FlowTable::new(cfg.clone());
        for p in &pkts {
            one.process(p);
        }
        one.flush_all();
        let mut batched = FlowTable::new(cfg);
        for chunk in pkts.chunks(32) {
            batched.process_batch(chunk);
        }
        batched.flush_all();
        let (a, b) = (one.take_emitted(), batched.take_emitted());
        assert!(a.len() > 300, "{} records", a.len());
        assert_eq!(a, b);
        assert_eq!(one.stats(), batched.stats());
        assert!(one.stats().flows_evicted > 0);
        let packets: u64 = a
            .iter()
            .map(|r| r.c2s.unwrap().packets + r.s2c.unwrap().packets)
            .sum();
        assert_eq!(
            packets,
            pkts.len() as u64,
            "every packet in exactly one record"
        );
    }
}

#[cfg(test)]
mod recycle_tests {
    use super::*;

    /// Modbus/TCP requests: read (fc 3) or write (fc 6), transaction `t`.
    fn modbus(fc: u8, t: u16) -> Vec<u8> {
        let pdu: &[u8] = if fc == 3 {
            &[3, 0, 0, 0, 10]
        } else {
            &[6, 0, 1, 0, 7]
        };
        let mut v = t.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0, pdu.len() as u8 + 1, 1]);
        v.extend_from_slice(pdu);
        v
    }

    #[test]
    fn reused_records_are_the_same_as_new_ones() {
        // Per flow of three packets: a write and reads, reads only, or
        // something that is not Modbus.
        let payloads: Vec<Vec<u8>> = (0..400u16)
            .map(|i| match ((i / 3) % 3, i % 3) {
                (0, 0) => modbus(6, i),
                (0 | 1, _) => modbus(3, i),
                _ => b"not modbus at all".to_vec(),
            })
            .collect();
        let cfg = FlowConfig {
            idle_timeout_us: 5_000_000,
            ..FlowConfig::default()
        };
        let mut plain = FlowTable::new(cfg.clone());
        let mut reusing = FlowTable::new(cfg);
        let (back, rx) = std::sync::mpsc::sync_channel(4);
        reusing.recycle_from(rx);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, p) in payloads.iter().enumerate() {
            // Flows of one to three packets, some with writes, some not
            // Modbus, some over IPv6; idle ones leave as time goes on.
            let flow = (i / 3) as u8;
            let (c, s) = if flow.is_multiple_of(5) {
                (
                    IpAddr::from([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, flow]),
                    IpAddr::from([0xfd; 16]),
                )
            } else {
                (IpAddr::from([10, 0, 1, flow]), IpAddr::from([10, 0, 0, 1]))
            };
            let pkt = PacketInfo {
                ts_us: i as i64 * 1_000_000,
                vlan: flow as u16 % 2,
                src: c,
                dst: s,
                ip_protocol: 6,
                src_port: 40_000 + flow as u16,
                dst_port: if flow.is_multiple_of(7) { 1502 } else { 502 },
                tcp_flags: 0x18,
                ip_bytes: 40 + p.len() as u32,
                payload_len: p.len() as u32,
                payload: p,
                fragment: None,
                src_mac: None,
            };
            plain.process(&pkt);
            reusing.process(&pkt);
            if i % 10 == 9 {
                a.extend(plain.take_emitted());
                let recs = reusing.take_emitted();
                b.extend(recs.iter().cloned());
                let _ = back.try_send(recs);
            }
        }
        plain.flush_all();
        reusing.flush_all();
        a.extend(plain.take_emitted());
        b.extend(reusing.take_emitted());
        assert!(a.len() > 100, "{} records", a.len());
        let ops: Vec<usize> = a.iter().map(|r| r.operations.len()).collect();
        assert!(
            ops.contains(&2) && ops.contains(&1) && ops.contains(&0),
            "{ops:?}"
        );
        assert!(
            a.iter().any(|r| r.app_protocol.is_empty())
                && a.iter().any(|r| r.client_ip.len() == 16)
        );
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod counter_tests {
    use super::*;

    #[test]
    fn a_full_packet_counter_cuts_the_record_and_loses_nothing() {
        let mut t = FlowTable::new(FlowConfig::default());
        let p = |ts| PacketInfo {
            ts_us: ts,
            vlan: 0,
            src: IpAddr::from([10, 0, 0, 9]),
            dst: IpAddr::from([10, 0, 0, 1]),
            ip_protocol: 17,
            src_port: 40000,
            dst_port: 10110,
            tcp_flags: 0,
            ip_bytes: 100,
            payload_len: 72,
            payload: &[],
            fragment: None,
            src_mac: None,
        };
        t.process(&p(1));
        let idx = t.flows.iter().next().expect("one flow").0;
        // The sender (10.0.0.9) is the higher address: endpoint `b`.
        t.flows.get_mut(idx).flow.b2a.packets = u32::MAX - 1;
        t.process(&p(2));
        assert!(t.take_emitted().is_empty());
        t.process(&p(3));
        let r = t.take_emitted();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].c2s.unwrap().packets, u32::MAX as u64);
        assert_eq!(r[0].end, FlowEnd::ActiveTimeout as i32);
        t.flush_all();
        let r = t.take_emitted();
        assert_eq!((r[0].c2s.unwrap().packets, r[0].first_seen_us), (1, 3));
    }

    #[test]
    fn end_of_input_emits_by_start_time_then_key_in_flush_steps() {
        let mut t = FlowTable::new(FlowConfig::default());
        // 300 flows, most of them starting in the same few microseconds, fed
        // in a scrambled order.
        for i in 0..300u32 {
            let j = (i * 7919) % 300;
            let host = [10, 1, (j % 5) as u8, (j / 5) as u8];
            t.process(&tests::pkt(
                (j % 3) as i64,
                host,
                30000 + (j % 11) as u16,
                [10, 0, 0, 1],
                502,
                TCP_ACK,
            ));
        }
        let mut want: Vec<(i64, FlowKey)> = t
            .flows
            .iter()
            .map(|(_, e)| (e.flow.first_us, e.key))
            .collect();
        want.sort();
        let want: Vec<(i64, Vec<u8>, u32)> = want
            .iter()
            .map(|(ts, k)| (*ts, k.ip(false), k.b_port() as u32))
            .collect();
        // In steps smaller than the table, as `read` and `run` flush.
        let mut got = Vec::new();
        while t.flush_step(64) {
            got.extend(t.take_emitted());
        }
        got.extend(t.take_emitted());
        let got: Vec<(i64, Vec<u8>, u32)> = got
            .iter()
            .map(|r| (r.first_seen_us, r.client_ip.clone(), r.client_port))
            .collect();
        assert_eq!(got.len(), 300);
        assert_eq!(got, want);
    }
}

#[cfg(test)]
mod size_tests {
    /// The per-flow memory budget (100k concurrent flows on a small box):
    /// keep the table entry and the per-flow application state this small.
    #[test]
    fn flow_entries_stay_small() {
        assert_eq!(std::mem::size_of::<super::FlowKey>(), 40);
        assert!(std::mem::size_of::<super::Flow>() <= 96);
        assert!(std::mem::size_of::<super::store::Entry>() <= 136);
        assert!(std::mem::size_of::<crate::protocols::AppState>() <= 16);
    }
}
