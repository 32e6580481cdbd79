//! Packet sources: capture files (pcap and pcapng, detected by their magic
//! bytes, never by file name) and live capture on an interface (libpcap).
//! Both yield [`RawPacket`]s.

pub mod live;
pub mod pcap;
mod readahead;

pub use self::pcap::{CaptureError, PcapReader};
pub use live::{LiveCapture, LiveConfig, LiveError, LiveStats};

/// Link-layer header types (LINKTYPE_* values of the pcap/pcapng formats).
pub mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    pub const RAW: u32 = 101;
    pub const RAW_ALT_12: u32 = 12;
    pub const RAW_ALT_14: u32 = 14;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

/// One captured frame, borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawPacket<'a> {
    /// Capture timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// LINKTYPE_* of the interface that captured it.
    pub linktype: u32,
    /// Length of the frame on the wire (may exceed `data.len()` if truncated).
    pub orig_len: u32,
    pub data: &'a [u8],
}
