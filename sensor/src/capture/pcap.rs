//! Streaming reader for classic pcap (both byte orders, micro- and nanosecond
//! variants) and pcapng (any number of sections and interfaces). The format is
//! chosen from the first four bytes of the file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::readahead::{ReadAhead, HEADROOM};
use super::RawPacket;

/// Largest block or record we accept; anything larger is a corrupt file.
const MAX_RECORD: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture {path}")]
    Open { path: String, source: io::Error },
    #[error("read error")]
    Io(#[from] io::Error),
    #[error("not a pcap or pcapng file (magic bytes {0:02x?})")]
    UnknownFormat([u8; 4]),
    #[error("corrupt capture at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
}

#[derive(Debug, Clone, Copy)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(a),
            Endian::Big => u16::from_be_bytes(a),
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: u32,
    /// Timestamp units per second.
    ts_units_per_sec: u64,
}

enum Format {
    Pcap {
        endian: Endian,
        nanos: bool,
        linktype: u32,
    },
    PcapNg {
        endian: Endian,
        interfaces: Vec<Interface>,
    },
}

/// Size of the read buffer; a record larger than this grows it.
const BUF_SIZE: usize = 256 * 1024;

/// Where a packet of the current batch lies in the read buffer.
#[derive(Debug, Clone, Copy)]
struct PacketPos {
    ts_ns: i64,
    linktype: u32,
    orig_len: u32,
    at: usize,
    len: usize,
}

/// What the buffer holds of the next `n` bytes.
enum Avail {
    Ready,
    /// Not buffered, and the caller may not move the buffer now.
    Later,
    /// End of input after this many bytes.
    Short(usize),
}

/// What parsing the next record gave.
enum Step {
    Packet(PacketPos),
    /// A block without a packet (interface description, statistics...).
    Skipped,
    /// The next record is not fully buffered (batch ends here).
    Later,
    Eof,
}

/// Reads packets in batches straight from one read buffer (no copy per
/// packet); memory use is the buffer (256 KiB, or the largest record),
/// whatever the file size.
pub struct PcapReader<R: Read> {
    input: Source<R>,
    format: Format,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    eof: bool,
    batch: Vec<PacketPos>,
    /// An error met after some packets of a batch: reported by the next
    /// `fill_batch`, so the packets before it are not lost.
    failed: Option<CaptureError>,
}

/// Where the bytes come from: any reader, or a file read ahead on a helper
/// thread.
enum Source<R> {
    Read(R),
    Ahead(ReadAhead),
}

impl PcapReader<File> {
    /// Opens a capture file; it is read ahead on a helper thread.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::with_source(Source::Ahead(ReadAhead::spawn(file)?), Vec::new())
    }
}

impl<R: Read> PcapReader<R> {
    pub fn new(input: R) -> Result<Self, CaptureError> {
        Self::with_source(Source::Read(input), vec![0; BUF_SIZE])
    }

    fn with_source(input: Source<R>, buf: Vec<u8>) -> Result<Self, CaptureError> {
        let mut reader = PcapReader {
            input,
            format: Format::Pcap {
                endian: Endian::Little,
                nanos: false,
                linktype: 0,
            },
            buf,
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
            batch: Vec::new(),
            failed: None,
        };
        let magic = match reader.available(4, true)? {
            Avail::Ready => {
                let b = &reader.buf[reader.start..reader.start + 4];
                [b[0], b[1], b[2], b[3]]
            }
            _ => return Err(reader.corrupt("file too short for a capture header")),
        };
        match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => reader.read_pcap_header(Endian::Little, false)?,
            [0xa1, 0xb2, 0xc3, 0xd4] => reader.read_pcap_header(Endian::Big, false)?,
            [0x4d, 0x3c, 0xb2, 0xa1] => reader.read_pcap_header(Endian::Little, true)?,
            [0xa1, 0xb2, 0x3c, 0x4d] => reader.read_pcap_header(Endian::Big, true)?,
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                reader.format = Format::PcapNg {
                    endian: Endian::Little,
                    interfaces: Vec::new(),
                };
                // The section header block: checked now, so a bad file fails at open.
                reader.next_pcapng(true)?;
            }
            other => return Err(CaptureError::UnknownFormat(other)),
        }
        Ok(reader)
    }

    /// Whether the file is pcapng (as opposed to classic pcap).
    pub fn is_pcapng(&self) -> bool {
        matches!(self.format, Format::PcapNg { .. })
    }

    fn corrupt(&self, reason: impl Into<String>) -> CaptureError {
        CaptureError::Corrupt {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// Makes `n` unconsumed bytes available in the buffer, reading (and,
    /// if `may_move`, compacting or growing the buffer) as needed.
    fn available(&mut self, n: usize, may_move: bool) -> Result<Avail, CaptureError> {
        if self.end - self.start >= n {
            return Ok(Avail::Ready);
        }
        if !may_move {
            return Ok(Avail::Later);
        }
        if let Source::Ahead(ahead) = &mut self.input {
            while self.end - self.start < n {
                let chunk = match ahead.next()? {
                    Some(c) => c,
                    None => return Ok(Avail::Short(self.end - self.start)),
                };
                let tail = self.end - self.start;
                if tail <= HEADROOM {
                    // The unparsed tail goes in front of the new data.
                    let mut buf = chunk.buf;
                    buf[HEADROOM - tail..HEADROOM].copy_from_slice(&self.buf[self.start..self.end]);
                    ahead.recycle(std::mem::replace(&mut self.buf, buf));
                    self.start = HEADROOM - tail;
                    self.end = HEADROOM + chunk.len;
                } else {
                    // A record longer than the headroom: gather it here.
                    self.buf.copy_within(self.start..self.end, 0);
                    self.buf.truncate(tail);
                    self.buf
                        .extend_from_slice(&chunk.buf[HEADROOM..HEADROOM + chunk.len]);
                    self.start = 0;
                    self.end = self.buf.len();
                    ahead.recycle(chunk.buf);
                }
            }
            return Ok(Avail::Ready);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        let Source::Read(input) = &mut self.input else {
            unreachable!("read-ahead input handled above")
        };
        while self.end < n {
            if self.eof {
                return Ok(Avail::Short(self.end));
            }
            match input.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Avail::Ready)
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
    }

    fn read_pcap_header(&mut self, endian: Endian, nanos: bool) -> Result<(), CaptureError> {
        if !matches!(self.available(24, true)?, Avail::Ready) {
            return Err(self.corrupt("truncated pcap file header"));
        }
        // magic (4), version (4), thiszone (4), sigfigs (4), snaplen (4), network (4)
        let hdr = &self.buf[self.start..self.start + 24];
        let linktype = endian.u32(&hdr[20..24]) & 0x0fff_ffff;
        self.format = Format::Pcap {
            endian,
            nanos,
            linktype,
        };
        self.consume(24);
        Ok(())
    }

    /// Reads up to `max` packets into the current batch, ending it early
    /// where the next record is not buffered yet; at least one packet unless
    /// the file has ended. Returns the batch size (0 = end of file).
    ///
    /// A corrupt or truncated record ends the batch before it; the error is
    /// returned by the next call.
    pub fn fill_batch(&mut self, max: usize) -> Result<usize, CaptureError> {
        self.batch.clear();
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        while self.batch.len() < max {
            let may_move = self.batch.is_empty();
            let step = match self.format {
                Format::Pcap {
                    endian,
                    nanos,
                    linktype,
                } => self.next_pcap(endian, nanos, linktype, may_move),
                Format::PcapNg { .. } => self.next_pcapng(may_move),
            };
            let step = match step {
                Ok(s) => s,
                Err(e) if self.batch.is_empty() => return Err(e),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            };
            match step {
                Step::Packet(p) => self.batch.push(p),
                Step::Skipped => {}
                Step::Later | Step::Eof => break,
            }
        }
        Ok(self.batch.len())
    }

    /// Packet `i` of the current batch.
    pub fn batch_packet(&self, i: usize) -> RawPacket<'_> {
        let p = self.batch[i];
        RawPacket {
            ts_ns: p.ts_ns,
            linktype: p.linktype,
            orig_len: p.orig_len,
            data: &self.buf[p.at..p.at + p.len],
        }
    }

    /// The next packet, or `None` at the end of the file.
    pub fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, CaptureError> {
        if self.fill_batch(1)? == 0 {
            return Ok(None);
        }
        Ok(Some(self.batch_packet(0)))
    }

    fn next_pcap(
        &mut self,
        endian: Endian,
        nanos: bool,
        linktype: u32,
        may_move: bool,
    ) -> Result<Step, CaptureError> {
        match self.available(16, may_move)? {
            Avail::Ready => {}
            Avail::Later => return Ok(Step::Later),
            Avail::Short(0) => return Ok(Step::Eof),
            Avail::Short(got) => {
                return Err(self.corrupt(format!("truncated record header ({got} of 16 bytes)")))
            }
        }
        let h = &self.buf[self.start..self.start + 16];
        let secs = endian.u32(&h[0..4]) as i64;
        let frac = endian.u32(&h[4..8]) as i64;
        let incl = endian.u32(&h[8..12]) as usize;
        let orig = endian.u32(&h[12..16]);
        if incl > MAX_RECORD {
            return Err(self.corrupt(format!("record length {incl} too large")));
        }
        match self.available(16 + incl, may_move)? {
            Avail::Ready => {}
            Avail::Later => return Ok(Step::Later),
            Avail::Short(got) => {
                return Err(self.corrupt(format!(
                    "truncated record ({} of {incl} bytes)",
                    got.saturating_sub(16)
                )))
            }
        }
        let ts_ns = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        let at = self.start + 16;
        self.consume(16 + incl);
        Ok(Step::Packet(PacketPos {
            ts_ns,
            linktype,
            orig_len: orig,
            at,
            len: incl,
        }))
    }

    fn next_pcapng(&mut self, may_move: bool) -> Result<Step, CaptureError> {
        match self.available(12, may_move)? {
            Avail::Ready => {}
            Avail::Later => return Ok(Step::Later),
            Avail::Short(0) => return Ok(Step::Eof),
            // The smallest block is 12 bytes.
            Avail::Short(got) => return Err(self.corrupt(format!("truncated block ({got} bytes)"))),
        }
        let s = self.start;
        let raw_type = [
            self.buf[s],
            self.buf[s + 1],
            self.buf[s + 2],
            self.buf[s + 3],
        ];
        let shb = raw_type == [0x0a, 0x0d, 0x0d, 0x0a];
        let endian = if shb {
            match &self.buf[s + 8..s + 12] {
                [0x4d, 0x3c, 0x2b, 0x1a] => Endian::Little,
                [0x1a, 0x2b, 0x3c, 0x4d] => Endian::Big,
                _ => return Err(self.corrupt("bad pcapng byte-order magic")),
            }
        } else {
            match &self.format {
                Format::PcapNg { endian, .. } => *endian,
                Format::Pcap { .. } => unreachable!("pcapng reader in pcap mode"),
            }
        };
        let btype = endian.u32(&raw_type);
        let total = endian.u32(&self.buf[s + 4..s + 8]) as usize;
        let min = if shb { 28 } else { 12 };
        if !(min..=MAX_RECORD).contains(&total) || !total.is_multiple_of(4) {
            return Err(self.corrupt(format!("bad block length {total} (type {btype:#x})")));
        }
        match self.available(total, may_move)? {
            Avail::Ready => {}
            Avail::Later => return Ok(Step::Later),
            Avail::Short(got) => {
                return Err(self.corrupt(format!("truncated block ({got} of {total} bytes)")))
            }
        }
        let s = self.start;
        let body = s + 8..s + total - 4;
        let body_len = total - 12;
        let step = match btype {
            _ if shb => {
                // A new section: its own byte order, interfaces start again.
                self.format = Format::PcapNg {
                    endian,
                    interfaces: Vec::new(),
                };
                Step::Skipped
            }
            1 => {
                // Interface Description Block
                if body_len < 8 {
                    return Err(self.corrupt("short interface description block"));
                }
                let b = &self.buf[body];
                let linktype = endian.u16(&b[0..2]) as u32;
                let ts_units_per_sec = parse_tsresol(&b[8..], endian);
                if let Format::PcapNg { interfaces, .. } = &mut self.format {
                    interfaces.push(Interface {
                        linktype,
                        ts_units_per_sec,
                    });
                }
                Step::Skipped
            }
            6 | 2 => {
                // Enhanced Packet Block (6) / obsolete Packet Block (2)
                if body_len < 20 {
                    return Err(self.corrupt("short packet block"));
                }
                let b = &self.buf[body.clone()];
                let iface = if btype == 6 {
                    endian.u32(&b[0..4]) as usize
                } else {
                    endian.u16(&b[0..2]) as usize
                };
                let ts = ((endian.u32(&b[4..8]) as u64) << 32) | endian.u32(&b[8..12]) as u64;
                let cap = endian.u32(&b[12..16]) as usize;
                let orig = endian.u32(&b[16..20]);
                if 20 + cap > body_len {
                    return Err(self.corrupt("packet data overruns its block"));
                }
                let ifc = self.interface(iface)?;
                Step::Packet(PacketPos {
                    ts_ns: ts_to_ns(ts, ifc.ts_units_per_sec),
                    linktype: ifc.linktype,
                    orig_len: orig,
                    at: body.start + 20,
                    len: cap,
                })
            }
            3 => {
                // Simple Packet Block: interface 0, no timestamp.
                if body_len < 4 {
                    return Err(self.corrupt("short simple packet block"));
                }
                let orig = endian.u32(&self.buf[body.start..body.start + 4]);
                let cap = (orig as usize).min(body_len - 4);
                let ifc = self.interface(0)?;
                Step::Packet(PacketPos {
                    ts_ns: 0,
                    linktype: ifc.linktype,
                    orig_len: orig,
                    at: body.start + 4,
                    len: cap,
                })
            }
            _ => Step::Skipped, // statistics, name resolution, custom blocks
        };
        self.consume(total);
        Ok(step)
    }

    fn interface(&self, idx: usize) -> Result<Interface, CaptureError> {
        match &self.format {
            Format::PcapNg { interfaces, .. } => interfaces
                .get(idx)
                .copied()
                .ok_or_else(|| self.corrupt(format!("packet for undeclared interface {idx}"))),
            Format::Pcap { .. } => unreachable!(),
        }
    }
}

fn ts_to_ns(ts: u64, units_per_sec: u64) -> i64 {
    let secs = ts / units_per_sec;
    let frac = ts % units_per_sec;
    let ns = (frac as u128 * 1_000_000_000u128 / units_per_sec as u128) as u64;
    (secs as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ns as i64)
}

/// Finds `if_tsresol` (option 9) in IDB options; default is microseconds.
fn parse_tsresol(mut opts: &[u8], endian: Endian) -> u64 {
    while opts.len() >= 4 {
        let code = endian.u16(&opts[0..2]);
        let len = endian.u16(&opts[2..4]) as usize;
        let padded = (len + 3) & !3;
        if code == 0 || opts.len() < 4 + len {
            break;
        }
        if code == 9 && len >= 1 {
            let v = opts[4];
            let exp = (v & 0x7f) as u32;
            let units = if v & 0x80 != 0 {
                2u64.checked_pow(exp)
            } else {
                10u64.checked_pow(exp)
            };
            return units.filter(|u| *u > 0).unwrap_or(1_000_000);
        }
        if opts.len() < 4 + padded {
            break;
        }
        opts = &opts[4 + padded..];
    }
    1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_file(nanos: bool, big: bool, packets: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        let magic: u32 = if nanos { 0xa1b23c4d } else { 0xa1b2c3d4 };
        let w32 = |v: &mut Vec<u8>, x: u32| {
            if big {
                v.extend_from_slice(&x.to_be_bytes())
            } else {
                v.extend_from_slice(&x.to_le_bytes())
            }
        };
        w32(&mut v, magic);
        let (maj, min): (u16, u16) = (2, 4);
        if big {
            v.extend_from_slice(&maj.to_be_bytes());
            v.extend_from_slice(&min.to_be_bytes());
        } else {
            v.extend_from_slice(&maj.to_le_bytes());
            v.extend_from_slice(&min.to_le_bytes());
        }
        w32(&mut v, 0);
        w32(&mut v, 0);
        w32(&mut v, 65535);
        w32(&mut v, 1);
        for (s, f, d) in packets {
            w32(&mut v, *s);
            w32(&mut v, *f);
            w32(&mut v, d.len() as u32);
            w32(&mut v, d.len() as u32);
            v.extend_from_slice(d);
        }
        v
    }

    #[test]
    fn reads_pcap_both_orders_and_resolutions() {
        for (nanos, big) in [(false, false), (false, true), (true, false), (true, true)] {
            let f = pcap_file(nanos, big, &[(10, 5, b"abc"), (11, 7, b"defg")]);
            let mut r = PcapReader::new(&f[..]).unwrap();
            let p = r.next_packet().unwrap().unwrap();
            assert_eq!(p.data, b"abc");
            assert_eq!(p.linktype, 1);
            let mult = if nanos { 1 } else { 1000 };
            assert_eq!(p.ts_ns, 10_000_000_000 + 5 * mult);
            let p = r.next_packet().unwrap().unwrap();
            assert_eq!(p.data, b"defg");
            assert!(r.next_packet().unwrap().is_none());
        }
    }

    #[test]
    fn truncated_record_is_an_error_not_a_panic() {
        let mut f = pcap_file(false, false, &[(1, 0, b"abcdef")]);
        f.truncate(f.len() - 2);
        let mut r = PcapReader::new(&f[..]).unwrap();
        assert!(matches!(r.next_packet(), Err(CaptureError::Corrupt { .. })));
    }

    #[test]
    fn packets_before_a_corrupt_record_in_the_same_batch_are_kept() {
        let mut f = pcap_file(false, false, &[(1, 0, b"abc"), (2, 0, b"defg")]);
        let good = f.len() as u64;
        // A record header claiming more than any record may hold.
        for x in [3u32, 0, u32::MAX, u32::MAX] {
            f.extend_from_slice(&x.to_le_bytes());
        }
        let mut r = PcapReader::new(&f[..]).unwrap();
        assert_eq!(r.fill_batch(64).unwrap(), 2);
        assert_eq!(r.batch_packet(1).data, b"defg");
        match r.fill_batch(64) {
            Err(CaptureError::Corrupt { offset, reason }) => {
                assert_eq!(offset, good);
                assert!(reason.contains("too large"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_magic_is_rejected() {
        let f = b"GIF89a-------------------------";
        assert!(matches!(
            PcapReader::new(&f[..]),
            Err(CaptureError::UnknownFormat(_))
        ));
    }

    #[test]
    fn reads_pcapng_with_tsresol() {
        let mut v = Vec::new();
        // SHB
        v.extend_from_slice(&[0x0a, 0x0d, 0x0d, 0x0a]);
        v.extend_from_slice(&28u32.to_le_bytes());
        v.extend_from_slice(&0x1a2b3c4du32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&(-1i64).to_le_bytes());
        v.extend_from_slice(&28u32.to_le_bytes());
        // IDB with if_tsresol = 9 (ns)
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&32u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes()); // ethernet
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes()); // snaplen
        v.extend_from_slice(&9u16.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&[9, 0, 0, 0]);
        v.extend_from_slice(&0u16.to_le_bytes()); // opt_endofopt
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&32u32.to_le_bytes());
        // EPB with 5 bytes of data (padded to 8)
        let ts: u64 = 1_600_000_000_123_456_789;
        v.extend_from_slice(&6u32.to_le_bytes());
        v.extend_from_slice(&40u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        v.extend_from_slice(&(ts as u32).to_le_bytes());
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(b"hello\0\0\0");
        v.extend_from_slice(&40u32.to_le_bytes());
        let mut r = PcapReader::new(&v[..]).unwrap();
        assert!(r.is_pcapng());
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.data, b"hello");
        assert_eq!(p.ts_ns, ts as i64);
        assert!(r.next_packet().unwrap().is_none());
    }

    /// A reader that hands out at most `step` bytes per read, so records
    /// straddle reads and the buffer boundary in every possible way.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(out.len()).min(self.step);
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn batches_equal_single_reads_across_buffer_refills_and_huge_records() {
        let small: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| vec![(i % 251) as u8; 20 + (i as usize * 37) % 1400])
            .collect();
        let huge = vec![0x5au8; BUF_SIZE + 12_345];
        let mut packets: Vec<(u32, u32, &[u8])> = small
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u32, 0, &d[..]))
            .collect();
        packets.insert(2500, (9999, 1, &huge[..]));
        let f = pcap_file(false, false, &packets);
        fn check<R: Read>(mut r: PcapReader<R>, packets: &[(u32, u32, &[u8])], how: &str) {
            let mut seen = 0;
            loop {
                let n = r.fill_batch(32).unwrap();
                if n == 0 {
                    break;
                }
                for i in 0..n {
                    let p = r.batch_packet(i);
                    let (secs, frac, data) = packets[seen];
                    assert_eq!(p.data, data, "packet {seen} ({how})");
                    assert_eq!(p.ts_ns, secs as i64 * 1_000_000_000 + frac as i64 * 1000);
                    seen += 1;
                }
            }
            assert_eq!(seen, packets.len(), "{how}");
        }
        for step in [f.len(), 4096, 1000] {
            let r = PcapReader::new(Trickle { data: &f, step }).unwrap();
            check(r, &packets, &format!("reads of {step} bytes"));
        }
        // From a file: read ahead on a helper thread, in chunks; the huge
        // record is longer than the room in front of a chunk.
        assert!(huge.len() > HEADROOM && f.len() > 10 * HEADROOM);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pcap");
        std::fs::write(&path, &f).unwrap();
        check(PcapReader::open(&path).unwrap(), &packets, "read ahead");
        // A file cut inside a record still says so.
        std::fs::write(&path, &f[..f.len() - 100]).unwrap();
        let mut r = PcapReader::open(&path).unwrap();
        let err = loop {
            match r.fill_batch(64) {
                Ok(0) => panic!("a cut file read to the end"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn pcapng_sections_may_change_byte_order() {
        fn block(big: bool, btype: u32, body: &[u8]) -> Vec<u8> {
            let w = |x: u32| {
                if big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                }
            };
            let total = 12 + body.len() as u32;
            let mut v = Vec::new();
            v.extend_from_slice(&w(btype));
            v.extend_from_slice(&w(total));
            v.extend_from_slice(body);
            v.extend_from_slice(&w(total));
            v
        }
        fn section(big: bool, payload: &[u8]) -> Vec<u8> {
            let w32 = |x: u32| {
                if big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                }
            };
            let w16 = |x: u16| {
                if big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                }
            };
            let mut shb = w32(0x1a2b3c4d).to_vec();
            shb.extend_from_slice(&w16(1));
            shb.extend_from_slice(&w16(0));
            shb.extend_from_slice(&(-1i64).to_le_bytes());
            let mut v = block(big, 0x0a0d0d0a, &shb);
            let mut idb = w16(113).to_vec(); // Linux cooked
            idb.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            v.extend(block(big, 1, &idb));
            let mut epb = Vec::new();
            epb.extend_from_slice(&w32(0));
            epb.extend_from_slice(&w32(0));
            epb.extend_from_slice(&w32(7_000_000));
            epb.extend_from_slice(&w32(payload.len() as u32));
            epb.extend_from_slice(&w32(payload.len() as u32));
            epb.extend_from_slice(payload);
            while epb.len() % 4 != 0 {
                epb.push(0);
            }
            v.extend(block(big, 6, &epb));
            v
        }
        let mut f = section(false, b"first");
        f.extend(section(true, b"second!"));
        let mut r = PcapReader::new(&f[..]).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.data, p.linktype, p.ts_ns),
            (&b"first"[..], 113, 7_000_000_000)
        );
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.data, p.linktype, p.ts_ns),
            (&b"second!"[..], 113, 7_000_000_000)
        );
        assert!(r.next_packet().unwrap().is_none());
        // Cut inside the second section's packet block: an error naming the cut.
        let cut = &f[..f.len() - 6];
        let mut r = PcapReader::new(cut).unwrap();
        assert!(r.next_packet().unwrap().is_some());
        match r.next_packet() {
            Err(CaptureError::Corrupt { reason, .. }) => {
                assert!(reason.contains("truncated"), "{reason}")
            }
            other => panic!("expected a corrupt-capture error, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_tiny_files_are_refused_clearly() {
        for f in [&b""[..], &b"\xd4\xc3"[..]] {
            match PcapReader::new(f) {
                Err(CaptureError::Corrupt { reason, .. }) => assert!(reason.contains("too short")),
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("accepted a {}-byte file", f.len()),
            }
        }
        // A pcap header cut short.
        let f = pcap_file(false, false, &[]);
        assert!(matches!(
            PcapReader::new(&f[..10]),
            Err(CaptureError::Corrupt { .. })
        ));
    }
}
