//! capture -> decode -> flow table: the metering half of the sensor, shared by
//! `read` (local inspection) and `run` (upload).

use std::path::Path;

use tidewatch_proto::v1::{AssetObservation, FlowRecord};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use crate::capture::{CaptureError, LiveCapture, LiveError, LiveStats, PcapReader, RawPacket};
use crate::decode::{arp_sender, decode, Undecoded};
use crate::flow::{FlowStats, FlowTable, PacketHasher};

/// Frame-level counters of one capture.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureStats {
    pub frames: u64,
    pub ip_packets: u64,
    pub arp_frames: u64,
    pub non_ip_frames: u64,
    pub unsupported_link: u64,
    pub malformed: u64,
}

/// Running totals of a metering run, readable from other threads (metrics,
/// periodic `SensorStatus`). Updated at every hand-off to the sink.
#[derive(Debug, Default)]
pub struct Progress {
    pub frames: AtomicU64,
    pub ip_packets: AtomicU64,
    pub malformed: AtomicU64,
    pub kernel_drops: AtomicU64,
    pub records_emitted: AtomicU64,
    pub flows_evicted: AtomicU64,
    pub active_flows: AtomicU64,
}

impl Progress {
    fn update(&self, cap: &CaptureStats, table: &FlowTable) {
        let f = table.stats();
        self.frames.store(cap.frames, Ordering::Relaxed);
        self.ip_packets.store(cap.ip_packets, Ordering::Relaxed);
        self.malformed.store(cap.malformed, Ordering::Relaxed);
        self.records_emitted
            .store(f.records_emitted, Ordering::Relaxed);
        self.flows_evicted.store(f.flows_evicted, Ordering::Relaxed);
        self.active_flows
            .store(table.active_flows() as u64, Ordering::Relaxed);
    }

    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

/// Meters a capture file through `table`, handing records and asset changes
/// to `sink` as they are emitted (in chunks), and flushing every flow at the
/// end of the file.
///
/// `pace`: `None` reads as fast as possible; `Some(x)` replays at x times
/// the capture's own speed (1.0 = as captured), sleeping between packets and
/// calling `sink` (possibly with nothing) at least twice a second meanwhile. `stop` ends the
/// replay early (remaining flows are still flushed).
pub fn meter_file(
    path: &Path,
    table: &mut FlowTable,
    pace: Option<f64>,
    stop: &AtomicBool,
    progress: &Progress,
    mut sink: impl FnMut(Vec<FlowRecord>, Vec<AssetObservation>) -> anyhow::Result<()>,
) -> Result<(CaptureStats, FlowStats), MeterError> {
    let reader = PcapReader::open(path)?;
    let hasher = table.packet_hasher();
    let mut stats = CaptureStats::default();
    let (full_tx, full) = sync_channel::<Result<Frames, CaptureError>>(1);
    let (empty_tx, empty) = sync_channel::<Frames>(2);
    std::thread::scope(|scope| -> Result<(), MeterError> {
        std::thread::Builder::new()
            .name("capture-decode".into())
            .spawn_scoped(scope, move || read_frames(reader, hasher, full_tx, empty))
            .map_err(CaptureError::Io)?;
        let mut clock: Option<(i64, Instant)> = None;
        let mut metered = || -> Result<(), MeterError> {
            for frames in &full {
                let frames = frames?;
                let mut infos = Vec::with_capacity(frames.len());
                let mut hashes = Vec::with_capacity(frames.len());
                for i in 0..frames.len() {
                    let pkt = frames.packet(i);
                    if let Some(speed) = pace.filter(|s| *s > 0.0) {
                        // Paced: packet by packet, each at its time.
                        table.process_hashed(&infos, &hashes);
                        infos.clear();
                        hashes.clear();
                        let (t0, w0) = *clock.get_or_insert((pkt.ts_ns, Instant::now()));
                        let due = w0
                            + Duration::from_secs_f64(
                                ((pkt.ts_ns - t0).max(0) as f64 / 1e9) / speed,
                            );
                        while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(
                                (due - Instant::now()).min(Duration::from_millis(500)),
                            );
                            progress.update(&stats, table);
                            // Also when empty: the sink's timers (flush, status) run here.
                            sink(table.take_emitted(), table.take_asset_changes())
                                .map_err(MeterError::Sink)?;
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    stats.frames += 1;
                    match decode(&pkt) {
                        Ok(info) => {
                            stats.ip_packets += 1;
                            infos.push(info);
                            hashes.push(frames.hashes[i]);
                        }
                        Err(cause) => {
                            // In capture order: the packets before it first.
                            table.process_hashed(&infos, &hashes);
                            infos.clear();
                            hashes.clear();
                            not_ip(table, &mut stats, &pkt, cause);
                        }
                    }
                    if infos.len() == BATCH {
                        table.process_hashed(&infos, &hashes);
                        infos.clear();
                        hashes.clear();
                    }
                }
                table.process_hashed(&infos, &hashes);
                drop(infos);
                let _ = empty_tx.try_send(frames);
                if table.emitted_len() >= HAND_OFF {
                    progress.update(&stats, table);
                    sink(table.take_emitted(), table.take_asset_changes())
                        .map_err(MeterError::Sink)?;
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Ok(())
        };
        let result = metered();
        // Ends the capture thread if metering stopped early.
        drop(full);
        result
    })?;
    flush(table, &mut sink)?;
    progress.update(&stats, table);
    Ok((stats, table.stats()))
}

/// Frames handed from the capture thread to the flow table: their bytes,
/// where each lies, and the flow-key hash of each IP packet (worked out on
/// the capture thread, so the table only looks flows up).
#[derive(Default)]
struct Frames {
    data: Vec<u8>,
    meta: Vec<FrameMeta>,
    hashes: Vec<Option<u64>>,
}

#[derive(Clone, Copy)]
struct FrameMeta {
    ts_ns: i64,
    linktype: u32,
    orig_len: u32,
    start: usize,
    end: usize,
}

/// Frames per hand-off from the capture thread: large enough that the two
/// threads rarely wait for each other.
const FRAMES: usize = 1024;

/// Packets whose flows are looked up together (see
/// [`FlowTable::process_hashed`]).
const BATCH: usize = 64;

impl Frames {
    fn len(&self) -> usize {
        self.meta.len()
    }

    fn packet(&self, i: usize) -> RawPacket<'_> {
        let m = self.meta[i];
        RawPacket {
            ts_ns: m.ts_ns,
            linktype: m.linktype,
            orig_len: m.orig_len,
            data: &self.data[m.start..m.end],
        }
    }
}

/// The capture thread: reads frames, hashes the flow key of each IP packet,
/// and hands them on in order until the end of the file, an error, or the
/// receiver going away.
fn read_frames(
    mut reader: PcapReader<std::fs::File>,
    hasher: PacketHasher,
    full: SyncSender<Result<Frames, CaptureError>>,
    empty: Receiver<Frames>,
) {
    loop {
        let mut f = empty.try_recv().unwrap_or_default();
        f.data.clear();
        f.meta.clear();
        f.hashes.clear();
        while f.len() < FRAMES {
            let n = match reader.fill_batch(FRAMES - f.len()) {
                Ok(n) => n,
                Err(e) => {
                    let _ = full.send(Err(e));
                    return;
                }
            };
            if n == 0 {
                break;
            }
            for i in 0..n {
                let p = reader.batch_packet(i);
                let start = f.data.len();
                f.data.extend_from_slice(p.data);
                f.meta.push(FrameMeta {
                    ts_ns: p.ts_ns,
                    linktype: p.linktype,
                    orig_len: p.orig_len,
                    start,
                    end: f.data.len(),
                });
                f.hashes
                    .push(decode(&p).ok().and_then(|info| hasher.hash(&info)));
            }
        }
        let last = f.len() < FRAMES;
        if (f.len() > 0 && full.send(Ok(f)).is_err()) || last {
            return;
        }
    }
}

/// Records handed to the sink at a time: small enough that the records in
/// flight (being filled, printed or uploaded, and handed back for reuse)
/// stay well under a megabyte.
const HAND_OFF: usize = 512;

/// Decodes one frame into the table and the frame counters.
fn account(table: &mut FlowTable, stats: &mut CaptureStats, pkt: &RawPacket<'_>) {
    stats.frames += 1;
    match decode(pkt) {
        Ok(info) => {
            stats.ip_packets += 1;
            table.process(&info);
        }
        Err(cause) => not_ip(table, stats, pkt, cause),
    }
}

/// Accounts a frame that is not an IP packet.
fn not_ip(table: &mut FlowTable, stats: &mut CaptureStats, pkt: &RawPacket<'_>, cause: Undecoded) {
    match cause {
        Undecoded::Arp => {
            stats.arp_frames += 1;
            if let Some((mac, ip)) = arp_sender(pkt) {
                table.on_arp(mac, ip, pkt.ts_ns.div_euclid(1000));
            }
        }
        Undecoded::NonIp => stats.non_ip_frames += 1,
        Undecoded::UnsupportedLink => stats.unsupported_link += 1,
        Undecoded::Malformed => stats.malformed += 1,
    }
}

type Sink<'a> = dyn FnMut(Vec<FlowRecord>, Vec<AssetObservation>) -> anyhow::Result<()> + 'a;

/// Emits every remaining flow, handing records on in chunks.
fn flush(table: &mut FlowTable, sink: &mut Sink<'_>) -> Result<(), MeterError> {
    loop {
        let more = table.flush_step(HAND_OFF);
        let rest = table.take_emitted();
        let assets = table.take_asset_changes();
        if !rest.is_empty() || !assets.is_empty() {
            sink(rest, assets).map_err(MeterError::Sink)?;
        }
        if !more {
            return Ok(());
        }
    }
}

/// Meters live traffic on `iface` until `stop` is set or `duration` has
/// passed, handing records on at least once a second; then flushes every
/// flow. `on_stats` receives the kernel counters once a second.
pub fn meter_live(
    iface: &str,
    filter: Option<&str>,
    table: &mut FlowTable,
    stop: &AtomicBool,
    duration: Option<Duration>,
    progress: &Progress,
    mut sink: impl FnMut(Vec<FlowRecord>, Vec<AssetObservation>) -> anyhow::Result<()>,
) -> Result<(CaptureStats, FlowStats, LiveStats), MeterError> {
    let mut cap = LiveCapture::open(iface, filter, 200)?;
    let started = Instant::now();
    let mut last_hand_off = Instant::now();
    let mut stats = CaptureStats::default();
    while !stop.load(Ordering::Relaxed) && duration.is_none_or(|d| started.elapsed() < d) {
        match cap.next_packet()? {
            Some(pkt) => account(table, &mut stats, &pkt),
            None => table.tick(crate::batch::now_us()),
        }
        if table.emitted_len() >= HAND_OFF || last_hand_off.elapsed() >= Duration::from_secs(1) {
            table.tick(crate::batch::now_us());
            progress.update(&stats, table);
            progress
                .kernel_drops
                .store(cap.stats().dropped, Ordering::Relaxed);
            sink(table.take_emitted(), table.take_asset_changes()).map_err(MeterError::Sink)?;
            last_hand_off = Instant::now();
        }
    }
    let live = cap.stats();
    progress.kernel_drops.store(live.dropped, Ordering::Relaxed);
    flush(table, &mut sink)?;
    progress.update(&stats, table);
    Ok((stats, table.stats(), live))
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("downstream stopped: {0}")]
    Sink(anyhow::Error),
}
