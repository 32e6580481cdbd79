//! Live capture on a network interface through libpcap: promiscuous,
//! nanosecond timestamps where the kernel gives them, an optional BPF
//! filter, and the kernel's receive/drop counters. Not in immediate mode:
//! the kernel hands the ring over in blocks (when full, or after the read
//! timeout), so a busy link costs one wake-up per block, not per packet.
//!
//! Needs CAP_NET_RAW (and CAP_NET_ADMIN for promiscuous mode on some
//! systems), not root.

use super::RawPacket;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot open interface {iface}: {source} (live capture needs CAP_NET_RAW, e.g. the systemd unit's AmbientCapabilities)")]
    Open { iface: String, source: pcap::Error },
    #[error("invalid capture filter {filter:?}: {source}")]
    Filter { filter: String, source: pcap::Error },
    #[error("capture on {iface} failed: {source}")]
    Read { iface: String, source: pcap::Error },
}

/// Kernel counters of a live capture.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveStats {
    pub received: u64,
    /// Dropped by the kernel (buffer full) or the interface.
    pub dropped: u64,
}

/// What to capture live, and the kernel ring's size.
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig<'a> {
    pub iface: &'a str,
    /// BPF filter in tcpdump syntax.
    pub filter: Option<&'a str>,
    pub buffer_bytes: usize,
}

pub struct LiveCapture {
    iface: String,
    cap: pcap::Capture<pcap::Active>,
    linktype: u32,
    nanos: bool,
    wait: std::time::Duration,
    /// The last read found a packet: read again before polling.
    ready: bool,
}

impl LiveCapture {
    /// Opens the interface of `cfg`; `read_timeout_ms` bounds how long
    /// `next_packet` waits.
    pub fn open(cfg: LiveConfig<'_>, read_timeout_ms: i32) -> Result<Self, LiveError> {
        let LiveConfig {
            iface,
            filter,
            buffer_bytes,
        } = cfg;
        let open_err = |source| LiveError::Open {
            iface: iface.to_string(),
            source,
        };
        let inactive = pcap::Capture::from_device(iface)
            .map_err(open_err)?
            .promisc(true)
            .snaplen(65535)
            .immediate_mode(false)
            .buffer_size(buffer_bytes.min(i32::MAX as usize) as i32)
            .timeout(read_timeout_ms)
            .precision(pcap::Precision::Nano);
        // Non-blocking: libpcap's read timeout is not honoured in every
        // mode (immediate mode with a kernel filter that drops everything
        // can block forever), so the caller polls and naps instead.
        let mut cap = inactive
            .open()
            .map_err(open_err)?
            .setnonblock()
            .map_err(open_err)?;
        if let Some(f) = filter {
            cap.filter(f, true).map_err(|source| LiveError::Filter {
                filter: f.to_string(),
                source,
            })?;
        }
        let linktype = cap.get_datalink().0 as u32;
        Ok(LiveCapture {
            iface: iface.to_string(),
            cap,
            linktype,
            nanos: true,
            wait: std::time::Duration::from_millis(read_timeout_ms.max(1) as u64),
            ready: false,
        })
    }

    /// The next packet, or `None` after about `read_timeout_ms` without one.
    /// While packets are waiting, each is one non-blocking read; only an
    /// empty ring costs a `poll` (a system call per packet would cap the
    /// rate far below the wire's).
    #[allow(unsafe_code)] // see the SAFETY comments
    pub fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, LiveError> {
        use std::os::fd::AsRawFd;
        if !self.ready {
            let mut pfd = libc::pollfd {
                fd: self.cap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = self.wait.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call; the fd
            // is owned by `self.cap`, which outlives it.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready == 0 {
                return Ok(None);
            }
            self.ready = true;
        }
        match self.cap.next_packet() {
            Ok(p) => {
                // time_t/suseconds_t are 32-bit on 32-bit ARM sensors.
                #[allow(clippy::unnecessary_cast)]
                let frac = p.header.ts.tv_usec as i64;
                #[allow(clippy::unnecessary_cast)]
                let ts_ns = p.header.ts.tv_sec as i64 * 1_000_000_000
                    + if self.nanos { frac } else { frac * 1000 };
                Ok(Some(RawPacket {
                    ts_ns,
                    linktype: self.linktype,
                    orig_len: p.header.len,
                    data: p.data,
                }))
            }
            Err(pcap::Error::TimeoutExpired) => {
                // The ring is empty: wait in poll next time.
                self.ready = false;
                Ok(None)
            }
            Err(source) => Err(LiveError::Read {
                iface: self.iface.clone(),
                source,
            }),
        }
    }

    pub fn stats(&mut self) -> LiveStats {
        match self.cap.stats() {
            Ok(s) => LiveStats {
                received: s.received as u64,
                dropped: s.dropped as u64 + s.if_dropped as u64,
            },
            Err(_) => LiveStats::default(),
        }
    }
}
