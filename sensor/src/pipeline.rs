//! capture -> decode -> flow table: the metering half of the sensor, shared by
//! `read` (local inspection) and `run` (upload).

use std::path::Path;

use tidewatch_proto::v1::{AssetObservation, FlowRecord};

use crate::capture::{CaptureError, PcapReader};
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

/// Meters a capture file through `table`, handing records and asset changes
/// to `sink` as they are emitted (in chunks), and flushing every flow at the
/// end of the file.
pub fn meter_file(
    path: &Path,
    table: &mut FlowTable,
    mut sink: impl FnMut(Vec<FlowRecord>, Vec<AssetObservation>) -> anyhow::Result<()>,
) -> Result<(CaptureStats, FlowStats), MeterError> {
    let mut reader = PcapReader::open(path)?;
    let mut stats = CaptureStats::default();
    while let Some(pkt) = reader.next_packet()? {
        stats.frames += 1;
        match decode(&pkt) {
            Ok(info) => {
                stats.ip_packets += 1;
                table.process(&info);
            }
            Err(Undecoded::Arp) => {
                stats.arp_frames += 1;
                if let Some((mac, ip)) = arp_sender(&pkt) {
                    table.on_arp(mac, ip, pkt.ts_ns.div_euclid(1000));
                }
            }
            Err(Undecoded::NonIp) => stats.non_ip_frames += 1,
            Err(Undecoded::UnsupportedLink) => stats.unsupported_link += 1,
            Err(Undecoded::Malformed) => stats.malformed += 1,
        }
        if table.emitted_len() >= 1024 {
            sink(table.take_emitted(), table.take_asset_changes()).map_err(MeterError::Sink)?;
        }
    }
    loop {
        let more = table.flush_step(1024);
        let rest = table.take_emitted();
        let assets = table.take_asset_changes();
        if !rest.is_empty() || !assets.is_empty() {
            sink(rest, assets).map_err(MeterError::Sink)?;
        }
        if !more {
            break;
        }
    }
    Ok((stats, table.stats()))
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("downstream stopped: {0}")]
    Sink(anyhow::Error),
}
