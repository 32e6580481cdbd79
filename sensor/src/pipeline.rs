//! capture -> decode -> flow table: the metering half of the sensor, shared by
//! `read` (local inspection) and `run` (upload).

use std::path::Path;

use tidewatch_proto::v1::{AssetObservation, FlowRecord};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::capture::{
    CaptureError, LiveCapture, LiveConfig, LiveError, LiveStats, PcapReader, RawPacket,
};
use crate::decode::{arp_sender, decode, Undecoded};
use crate::flow::{FlowStats, FlowTable};

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
    pub fragments_overflow: AtomicU64,
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
        self.fragments_overflow
            .store(f.fragments_overflow, Ordering::Relaxed);
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
///
/// A corrupt or truncated record (a capture cut short by a killed tcpdump,
/// say) ends the file there: every packet before it is metered and every
/// flow flushed as at a clean end, and the error is returned in
/// [`FileMetered::cut`] for the caller to report. A read error of the file
/// is handled the same way.
pub fn meter_file(
    path: &Path,
    table: &mut FlowTable,
    pace: Option<f64>,
    stop: &AtomicBool,
    progress: &Progress,
    mut sink: impl FnMut(Vec<FlowRecord>, Vec<AssetObservation>) -> anyhow::Result<()>,
) -> Result<FileMetered, MeterError> {
    let mut reader = PcapReader::open(path)?;
    let mut stats = CaptureStats::default();
    let mut clock: Option<(i64, Instant)> = None;
    let mut cut = None;
    // Paced replay goes packet by packet; otherwise in batches, so the flow
    // table can look flows up a batch ahead.
    let batch_size = if pace.is_some() { 1 } else { BATCH };
    loop {
        let n = match reader.fill_batch(batch_size) {
            Ok(n) => n,
            Err(e) => {
                cut = Some(e);
                break;
            }
        };
        if n == 0 || stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(speed) = pace.filter(|s| *s > 0.0) {
            let ts_ns = reader.batch_packet(0).ts_ns;
            let (t0, w0) = *clock.get_or_insert((ts_ns, Instant::now()));
            let due = w0 + Duration::from_secs_f64(((ts_ns - t0).max(0) as f64 / 1e9) / speed);
            while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                std::thread::sleep((due - Instant::now()).min(Duration::from_millis(500)));
                progress.update(&stats, table);
                // Also when empty: the sink's timers (flush, status) run here.
                sink(table.take_emitted(), table.take_asset_changes()).map_err(MeterError::Sink)?;
            }
        }
        let mut infos = Vec::with_capacity(n);
        for i in 0..n {
            let pkt = reader.batch_packet(i);
            stats.frames += 1;
            match decode(&pkt) {
                Ok(info) => {
                    stats.ip_packets += 1;
                    infos.push(info);
                }
                Err(cause) => {
                    // In capture order: the packets before it first.
                    table.process_batch(&infos);
                    infos.clear();
                    not_ip(table, &mut stats, &pkt, cause);
                }
            }
        }
        table.process_batch(&infos);
        if table.emitted_len() >= HAND_OFF {
            progress.update(&stats, table);
            sink(table.take_emitted(), table.take_asset_changes()).map_err(MeterError::Sink)?;
        }
    }
    flush(table, &mut sink)?;
    progress.update(&stats, table);
    Ok(FileMetered {
        capture: stats,
        flows: table.stats(),
        cut,
    })
}

/// What [`meter_file`] did.
#[derive(Debug)]
pub struct FileMetered {
    pub capture: CaptureStats,
    pub flows: FlowStats,
    /// Why reading stopped before the end of the file (a corrupt or
    /// truncated record, or a read error); everything before was metered
    /// and flushed.
    pub cut: Option<CaptureError>,
}

/// Packets decoded before their flows are looked up together (see
/// [`FlowTable::process_batch`]).
const BATCH: usize = 64;

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
/// passed, handing records on at least once a second; then meters what the
/// kernel still holds and flushes every flow. Logs "live capture started"
/// once the interface is open. `on_stats` receives the kernel counters once a second.
pub fn meter_live(
    live: LiveConfig<'_>,
    table: &mut FlowTable,
    stop: &AtomicBool,
    duration: Option<Duration>,
    progress: &Progress,
    mut sink: impl FnMut(Vec<FlowRecord>, Vec<AssetObservation>) -> anyhow::Result<()>,
) -> Result<(CaptureStats, FlowStats, LiveStats), MeterError> {
    let mut cap = LiveCapture::open(live, 200)?;
    tracing::info!(interface = live.iface, filter = ?live.filter, buffer_bytes = live.buffer_bytes, "live capture started");
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
    // Stopping: what the kernel had already captured is metered too (until
    // it has nothing more, for at most a second under a steady stream).
    let draining = Instant::now();
    while draining.elapsed() < Duration::from_secs(1) {
        match cap.next_packet()? {
            Some(pkt) => account(table, &mut stats, &pkt),
            None => break,
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
