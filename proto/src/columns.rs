//! The columnar batch format (`ENCODING_COLUMNS`, `ENCODING_COLUMNS_ZSTD`):
//! the same `Batch` as the protobuf encodings, exactly (decoding gives back
//! the very message that was encoded, field for field and in order), laid
//! out so that a compressor finds what flow records have in common.
//!
//! Protobuf writes each flow record whole: tags, lengths and full-width
//! values, record after record, and zstd then compresses that mix with one
//! model. Here the flows of a batch are cut into columns (all first-seen
//! times together, all client ports together, ...), each value is written
//! relative to what the batch already holds, and each column is compressed
//! on its own:
//!
//! - times: first-seen as the difference from the previous flow's (the
//!   sensor seals flows in first-seen order, so these are small), last-seen
//!   as the flow's duration;
//! - addresses and strings (application protocol, operation names,
//!   indicators) from tables built within the batch: a value already in the
//!   table is its index, a new one is the next index, its bytes following in
//!   the table's columns (lengths and bytes apart);
//! - what most flows share (IP protocol, application protocol, VLAN, end
//!   reason, which directions have counters) as one "shape" index, from a
//!   table of the batch's distinct shapes;
//! - IP bytes as the header bytes beside the payload bytes, written as
//!   header bytes per packet and a remainder (a UDP flow's are 28 and 0
//!   whatever its length).
//!
//! Integers are LEB128 varints (signed ones zigzag-coded); arithmetic wraps,
//! so any value of the message, sensible or not, comes back unchanged. The
//! columns of near-random numbers (times, client ports, payload bytes) are
//! split in byte planes: a value's first varint byte goes to the column's
//! first stream, its second byte to the second, any further bytes to the
//! third, so that each stream holds bytes of one kind for the compressor.
//! Everything that is not a flow (seq, sensor id, creation time, asset
//! observations, sensor status) is the `Head` column: a protobuf `Batch`
//! without flows.
//!
//! Layout: [`VERSION`] (1 byte), the packing (1 byte), the number of flows
//! (varint), then every stream of every column in [`Col`] order, each as a
//! varint `length << 1 | compressed` and its bytes. Compression, which only
//! `ENCODING_COLUMNS_ZSTD` allows, is either per stream (a stream is a zstd
//! frame where that makes it smaller: packing 0) or of all the streams in
//! one zstd frame (packing 1), whichever is smaller for the batch: large
//! batches gain from a model per stream, small ones lose more to the
//! frames' own bytes than they gain.
//!
//! Linked (`ENCODING_COLUMNS_LINKED_ZSTD`, on the link only): the payload
//! refers to the upload stream's link table ([`crate::link`]). After the
//! number of flows comes `L`, the number of link table entries the batch
//! may refer to. Every value that names a string, an address or counters
//! is then a link table entry if below `L`, and the batch's own table
//! index plus `L` otherwise (the next one a new entry, spelled). A spelled
//! address's length value is `length << 1 | keep`, the keep mark asking
//! both ends to add it to the link table once the batch is accepted. A
//! spelled string's is `length << 2 | split << 1 | keep`: split, only its
//! first label is spelled and the rest after the dot is a string value of
//! its own in `StringRest` (spelled next if new), so names under a common
//! domain spell only what differs. The server port is part of the shape
//! (the shape's last field), not a column of its own. More columns follow
//! the others: a flow's counters (packets, bytes, payload
//! bytes and TCP flags of the directions its shape has) are such a value,
//! into a table of the batch's distinct counters, since polls, lookups and
//! handshakes repeat them exactly; a new entry's keep mark (0 or 1) is in
//! `CounterNew`, its values in the counter columns, and its link table
//! bytes are [`counter_key`]'s.
//!
//! Decoding checks everything against [`crate::limits`] before it
//! allocates in proportion to a count: decompressed streams total at most
//! the caller's byte limit, a column cannot claim more flows, operations or
//! indicators than it has bytes for, a table index must exist, a string or
//! address must fit its limit, and the strings and addresses copied into
//! the records total at most the byte limit too. Any inconsistency is an
//! error, never a panic.

use prost::Message;

use crate::codec::{decompress, CodecError};
use crate::limits::{
    check_shape, ShapeError, MAX_ADDRESS_LEN, MAX_INDICATORS, MAX_INDICATOR_LEN, MAX_NAME_LEN,
    MAX_OPERATIONS,
};
use crate::link::{Kept, LinkEncoder, LinkTable};
use crate::v1::{Batch, DirectionCounters, FlowRecord, Operation};

/// Format version, the payload's first byte.
pub const VERSION: u8 = 1;

/// The columns, in payload order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    /// The batch without its flows, as protobuf.
    Head,
    /// First-seen minus the previous flow's first-seen (zigzag; planes).
    FirstSeen,
    /// Last-seen minus first-seen (zigzag; planes).
    Duration,
    /// Index of the flow's shape; a new shape's fields go to `Shapes`.
    Shape,
    Shapes,
    ClientAddr,
    ServerAddr,
    /// New addresses: lengths, and bytes.
    AddressLen,
    AddressBytes,
    /// Planes.
    ClientPort,
    ServerPort,
    Packets,
    /// Planes.
    PayloadBytes,
    /// Header bytes per packet, and the remainder.
    HeaderPerPacket,
    HeaderRest,
    TcpFlags,
    OpCount,
    OpCode,
    OpName,
    OpClass,
    OpTimes,
    OpErrors,
    IndicatorCount,
    Indicator,
    /// New strings: lengths, and bytes.
    StringLen,
    StringBytes,
    // Linked payloads only (the streams below follow the others):
    /// The flow's counters (the directions its shape has): a link table
    /// entry, or an index of the batch's table of counters; a new one is
    /// spelled in the counter columns.
    CounterIndex,
    /// The keep mark of each new counters entry.
    CounterNew,
    /// What follows the first dot of a string spelled in two parts.
    StringRest,
}

const COLUMNS: usize = Col::StringRest as usize + 1;

/// Streams of a column split in byte planes.
const PLANES: usize = 3;

/// Streams of column `c`: the near-random numbers in planes and, linked,
/// the values that name table entries too (link table indices run into
/// the thousands).
const fn planes(c: usize, linked: bool) -> usize {
    let named = c == Col::Indicator as usize
        || c == Col::ClientAddr as usize
        || c == Col::ServerAddr as usize
        || c == Col::CounterIndex as usize
        || c == Col::StringRest as usize;
    if c == Col::FirstSeen as usize
        || c == Col::Duration as usize
        || c == Col::ClientPort as usize
        || c == Col::PayloadBytes as usize
        || (linked && named)
    {
        PLANES
    } else {
        1
    }
}

/// Where each column's streams are in a payload.
struct Plan {
    /// Each column's first stream, and the number of streams.
    base: [usize; COLUMNS + 1],
    /// Each column's last plane (0 unless split).
    last: [usize; COLUMNS],
}

const fn plan(linked: bool) -> Plan {
    let mut base = [0; COLUMNS + 1];
    let mut last = [0; COLUMNS];
    let mut c = 0;
    while c < COLUMNS {
        base[c + 1] = base[c] + planes(c, linked);
        last[c] = planes(c, linked) - 1;
        c += 1;
    }
    Plan { base, last }
}

/// A self-contained payload's columns and a linked one's.
const SELF: Plan = plan(false);
const LINKED: Plan = plan(true);
/// Streams of a linked payload (every column).
const STREAMS: usize = LINKED.base[COLUMNS];
/// Streams of a self-contained payload (those before `CounterIndex`).
const STREAMS_SELF: usize = SELF.base[Col::CounterIndex as usize];

/// Streams shorter than this are never compressed (a zstd frame's own
/// bytes would outweigh the gain).
const MIN_COMPRESSED: usize = 32;

/// Linked: what a shape says beyond the common fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Service {
    port: u32,
    operations: u64,
    indicators: u64,
}

/// Linked: client ports at most this much above the client's last one are
/// written as the difference (see `Encoder::client_port`).
const SEQUENTIAL: u64 = 8;

/// Bits of a shape's `present` field: which directions carry counters.
const C2S: u64 = 1;
const S2C: u64 = 2;

/// Why a columnar payload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnsError {
    #[error("columnar format version {0} is not known")]
    Version(u8),
    #[error("columnar payload is malformed: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("the batch head is not valid protobuf: {0}")]
    Head(#[from] prost::DecodeError),
    #[error("a column cannot be decompressed: {0}")]
    Decompress(String),
    #[error("columnar payload expands to more than {max} bytes")]
    TooLarge { max: usize },
}

// ---------------------------------------------------------------- encoding

/// The streams being written.
struct Streams {
    s: Vec<Vec<u8>>,
    plan: &'static Plan,
}

impl Streams {
    /// Column `c`'s first stream.
    fn of(&mut self, c: Col) -> &mut Vec<u8> {
        &mut self.s[self.plan.base[c as usize]]
    }

    fn put(&mut self, c: Col, mut v: u64) {
        let (base, last) = (self.plan.base[c as usize], self.plan.last[c as usize]);
        let mut k = 0;
        loop {
            let more = v >= 0x80;
            let byte = (v & 0x7f) as u8 | if more { 0x80 } else { 0 };
            let plane = k.min(last);
            self.s[base + plane].push(byte);
            if !more {
                return;
            }
            v >>= 7;
            k += 1;
        }
    }

    fn put_signed(&mut self, c: Col, v: i64) {
        self.put(c, zigzag(v));
    }

    /// A flow's counters in the counter columns (IP bytes as header bytes
    /// per packet and a remainder).
    fn put_counters(&mut self, f: &FlowRecord) {
        for d in [&f.c2s, &f.s2c].into_iter().flatten() {
            self.put(Col::Packets, d.packets);
            self.put(Col::PayloadBytes, d.payload_bytes);
            let header = d.ip_bytes.wrapping_sub(d.payload_bytes);
            let per_packet = header.checked_div(d.packets).unwrap_or(0);
            self.put(Col::HeaderPerPacket, per_packet);
            self.put(Col::HeaderRest, header - per_packet * d.packets);
            self.put(Col::TcpFlags, d.tcp_flags.into());
        }
    }

    /// A table entry: its length in `len`, its bytes in `bytes`.
    fn put_bytes(&mut self, len: Col, bytes: Col, b: &[u8]) {
        self.put(len, b.len() as u64);
        self.of(bytes).extend_from_slice(b);
    }
}

/// A table built within the batch: value -> index, in first-use order.
struct Table<K> {
    index: std::collections::HashMap<K, u64>,
}

impl<K: std::hash::Hash + Eq> Table<K> {
    fn new() -> Self {
        Table {
            index: std::collections::HashMap::new(),
        }
    }

    /// The value's index, and whether it is new (its bytes must follow).
    fn intern(&mut self, k: K) -> (u64, bool) {
        let next = self.index.len() as u64;
        match self.index.entry(k) {
            std::collections::hash_map::Entry::Occupied(e) => (*e.get(), false),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
                (next, true)
            }
        }
    }
}

struct Encoder<'a> {
    c: Streams,
    /// Linked: the batch's counters by their key (see [`counter_key`]).
    counters: std::collections::HashMap<Vec<u8>, u64>,
    /// Linked: each client address value's last port.
    ports: std::collections::HashMap<u64, u32>,
    /// The stream's link table, when linked; and the entries kept.
    link: Option<&'a mut LinkEncoder>,
    kept: Kept,
    /// Linked: the link table's entries when the batch began, which a
    /// value below refers to (the batch's own entries follow them).
    link_len: u64,
    strings: Table<&'a str>,
    addresses: Table<&'a [u8]>,
    shapes: Table<(u32, u32, i32, u64, u64, Option<Service>)>,
}

impl<'a> Encoder<'a> {
    /// The value that stands for `b`, and whether it is new to the batch
    /// (then it must be spelled): an entry of the link table (linked), or
    /// the batch's own table from `link_len` on.
    fn value<K>(
        link: Option<&LinkEncoder>,
        link_len: u64,
        table: &mut Table<K>,
        key: K,
        b: &[u8],
    ) -> (u64, bool)
    where
        K: std::hash::Hash + Eq,
    {
        if let Some(i) = link.and_then(|l| l.find(b)) {
            return (i.into(), false);
        }
        let (i, new) = table.intern(key);
        (link_len + i, new)
    }

    fn string_value(&mut self, s: &'a str) -> (u64, bool) {
        let link = self.link.as_deref();
        Self::value(link, self.link_len, &mut self.strings, s, s.as_bytes())
    }

    fn string(&mut self, c: Col, s: &'a str) {
        let (v, new) = self.string_value(s);
        self.c.put(c, v);
        if new {
            self.spell_string(s);
        }
    }

    /// A new string: spelled whole, or, linked, as its first label spelled
    /// and the rest after the dot as a string value of its own (itself
    /// spelled next if new), so that names under a common domain spell
    /// only what differs.
    fn spell_string(&mut self, s: &'a str) {
        let Some(link) = self.link.as_deref_mut() else {
            self.c
                .put_bytes(Col::StringLen, Col::StringBytes, s.as_bytes());
            return;
        };
        let keep = link.keep(s.as_bytes());
        let parts = s.split_once('.').filter(|(_, rest)| !rest.is_empty());
        let first = parts.map_or(s, |(label, _)| label);
        let split = u64::from(parts.is_some());
        self.c.put(
            Col::StringLen,
            (first.len() as u64) << 2 | split << 1 | u64::from(keep),
        );
        self.c
            .of(Col::StringBytes)
            .extend_from_slice(first.as_bytes());
        if let Some((_, rest)) = parts {
            let (v, new) = self.string_value(rest);
            self.c.put(Col::StringRest, v);
            if new {
                self.spell_string(rest);
            }
        }
        // After the rest: the decoder has the whole string only then.
        if keep {
            self.kept.push(s.as_bytes());
        }
    }

    /// An address; its value.
    fn address(&mut self, c: Col, a: &'a [u8]) -> u64 {
        let link = self.link.as_deref();
        let (v, new) = Self::value(link, self.link_len, &mut self.addresses, a, a);
        self.c.put(c, v);
        if new {
            self.entry(Col::AddressLen, Col::AddressBytes, a);
        }
        v
    }

    /// The client port; linked, as `0..SEQUENTIAL` when it is that much
    /// more than one above the client's last port in the batch (hosts that
    /// hand out ports in order), `SEQUENTIAL` more than itself otherwise.
    fn client_port(&mut self, client: u64, port: u32) {
        if self.link.is_none() {
            self.c.put(Col::ClientPort, port.into());
            return;
        }
        let v = match self.ports.insert(client, port) {
            Some(last) if port > last && u64::from(port - last) <= SEQUENTIAL => {
                u64::from(port - last - 1)
            }
            _ => u64::from(port) + SEQUENTIAL,
        };
        self.c.put(Col::ClientPort, v);
    }

    /// A new address spelled: its length in `len` (linked: with its keep
    /// mark, `length << 1 | keep`), its bytes in `bytes`.
    fn entry(&mut self, len: Col, bytes: Col, b: &[u8]) {
        let Some(link) = self.link.as_deref_mut() else {
            self.c.put_bytes(len, bytes, b);
            return;
        };
        let keep = link.keep(b);
        self.c.put(len, (b.len() as u64) << 1 | u64::from(keep));
        self.c.of(bytes).extend_from_slice(b);
        if keep {
            self.kept.push(b);
        }
    }

    /// A flow's counters: in the counter columns, or, linked, by their
    /// index in the batch's table of counters.
    fn counters(&mut self, f: &FlowRecord, present: u64) {
        if present == 0 {
            return;
        }
        let Some(link) = self.link.as_deref_mut() else {
            self.c.put_counters(f);
            return;
        };
        let key = counter_key(present, f.c2s.as_ref(), f.s2c.as_ref());
        if let Some(i) = link.find(&key) {
            self.c.put(Col::CounterIndex, i.into());
            return;
        }
        let next = self.counters.len() as u64;
        if let Some(&i) = self.counters.get(&key) {
            self.c.put(Col::CounterIndex, self.link_len + i);
            return;
        }
        self.c.put(Col::CounterIndex, self.link_len + next);
        let keep = link.keep(&key);
        self.c.put(Col::CounterNew, u64::from(keep));
        self.c.put_counters(f);
        if keep {
            self.kept.push(&key);
        }
        self.counters.insert(key, next);
    }

    fn flow(&mut self, f: &'a FlowRecord, prev_first: &mut i64) {
        let c = &mut self.c;
        c.put_signed(Col::FirstSeen, f.first_seen_us.wrapping_sub(*prev_first));
        *prev_first = f.first_seen_us;
        c.put_signed(Col::Duration, f.last_seen_us.wrapping_sub(f.first_seen_us));
        // The shape: what most flows of a batch share.
        let present = if f.c2s.is_some() { C2S } else { 0 } | if f.s2c.is_some() { S2C } else { 0 };
        let (app, app_new) = self.string_value(&f.app_protocol);
        // Linked: the server port and how many operations and indicators
        // the flow has are part of the shape (they follow from the rest of
        // it).
        let service = self.link.is_some().then_some(Service {
            port: f.server_port,
            operations: f.operations.len() as u64,
            indicators: f.indicators.len() as u64,
        });
        let (shape, new) =
            self.shapes
                .intern((f.ip_protocol, f.vlan, f.end, app, present, service));
        let c = &mut self.c;
        c.put(Col::Shape, shape);
        if new {
            c.put(Col::Shapes, f.ip_protocol.into());
            c.put(Col::Shapes, f.vlan.into());
            c.put_signed(Col::Shapes, f.end.into());
            c.put(Col::Shapes, present);
            c.put(Col::Shapes, app);
            if let Some(s) = service {
                c.put(Col::Shapes, s.port.into());
                c.put(Col::Shapes, s.operations);
                c.put(Col::Shapes, s.indicators);
            }
        }
        if app_new {
            self.spell_string(&f.app_protocol);
        }
        let client = self.address(Col::ClientAddr, &f.client_ip);
        self.address(Col::ServerAddr, &f.server_ip);
        self.client_port(client, f.client_port);
        let c = &mut self.c;
        if service.is_none() {
            c.put(Col::ServerPort, f.server_port.into());
        }
        self.counters(f, present);
        let c = &mut self.c;
        if service.is_none() {
            c.put(Col::OpCount, f.operations.len() as u64);
        }
        for o in &f.operations {
            self.c.put(Col::OpCode, o.code.into());
            self.string(Col::OpName, &o.name);
            self.c.put_signed(Col::OpClass, o.class.into());
            self.c.put(Col::OpTimes, o.count);
            self.c.put(Col::OpErrors, o.errors);
        }
        if service.is_none() {
            self.c.put(Col::IndicatorCount, f.indicators.len() as u64);
        }
        for i in &f.indicators {
            self.string(Col::Indicator, i);
        }
    }
}

/// `batch` in the columnar format; each stream zstd-compressed at
/// `zstd_level` when given and where that makes it smaller.
pub fn encode(batch: &Batch, zstd_level: Option<i32>) -> Vec<u8> {
    encode_with(batch, zstd_level, None).0
}

/// `batch` linked to a stream's table (see [`crate::link`]), compressed at
/// `zstd_level`; with the entries it marked to keep, for
/// [`LinkEncoder::accepted`] once ingest accepts it.
pub fn encode_linked(batch: &Batch, zstd_level: i32, link: &mut LinkEncoder) -> (Vec<u8>, Kept) {
    encode_with(batch, Some(zstd_level), Some(link))
}

fn encode_with(
    batch: &Batch,
    zstd_level: Option<i32>,
    link: Option<&mut LinkEncoder>,
) -> (Vec<u8>, Kept) {
    let mut e = Encoder {
        c: Streams {
            s: vec![Vec::new(); STREAMS],
            plan: if link.is_some() { &LINKED } else { &SELF },
        },
        counters: std::collections::HashMap::new(),
        ports: std::collections::HashMap::new(),
        link_len: link.as_ref().map_or(0, |l| l.table().len() as u64),
        link,
        kept: Kept::default(),
        strings: Table::new(),
        addresses: Table::new(),
        shapes: Table::new(),
    };
    *e.c.of(Col::Head) = Batch {
        seq: batch.seq,
        sensor_id: batch.sensor_id.clone(),
        created_us: batch.created_us,
        flows: Vec::new(),
        assets: batch.assets.clone(),
        status: batch.status.clone(),
    }
    .encode_to_vec();
    let mut prev_first = 0;
    for f in &batch.flows {
        e.flow(f, &mut prev_first);
    }
    // Each stream compressed where that makes it smaller, or all of them
    // in one frame: the smaller of the two (one frame wins on small
    // batches, where a frame per stream costs more than it saves).
    // One compression context for all of them.
    let mut zstd = zstd_level.and_then(|l| zstd::bulk::Compressor::new(l).ok());
    let streams = if e.link.is_some() {
        &e.c.s[..]
    } else {
        &e.c.s[..STREAMS_SELF]
    };
    let mut plain = Vec::with_capacity(streams.iter().map(|c| c.len() + 5).sum());
    let mut apart = Vec::new();
    for stream in streams {
        put_stream(&mut plain, stream, false);
        let packed = zstd
            .as_mut()
            .filter(|_| stream.len() >= MIN_COMPRESSED)
            .and_then(|z| z.compress(stream).ok())
            .filter(|z| z.len() < stream.len());
        match packed {
            Some(z) => put_stream(&mut apart, &z, true),
            None => put_stream(&mut apart, stream, false),
        }
    }
    let whole = zstd.as_mut().and_then(|z| z.compress(&plain).ok());
    let (packing, body) = match whole {
        Some(w) if w.len() < apart.len() => (Packing::OneFrame, w),
        _ if zstd.is_some() => (Packing::Streams, apart),
        _ => (Packing::Streams, plain),
    };
    let mut out = Vec::with_capacity(16 + body.len());
    out.push(VERSION);
    out.push(packing as u8);
    put_varint(&mut out, batch.flows.len() as u64);
    if e.link.is_some() {
        put_varint(&mut out, e.link_len);
    }
    out.extend_from_slice(&body);
    (out, e.kept)
}

/// How the streams follow the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    /// Each stream as it is, compressed or not.
    Streams = 0,
    /// One zstd frame holding every stream, uncompressed.
    OneFrame = 1,
}

fn put_stream(out: &mut Vec<u8>, bytes: &[u8], compressed: bool) {
    put_varint(out, (bytes.len() as u64) << 1 | u64::from(compressed));
    out.extend_from_slice(bytes);
}

// ---------------------------------------------------------------- decoding

/// A stream being read.
#[derive(Clone, Copy)]
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ColumnsError> {
        let (&x, rest) = self
            .b
            .split_first()
            .ok_or(ColumnsError::Malformed("a column ends early"))?;
        self.b = rest;
        Ok(x)
    }

    fn varint(&mut self) -> Result<u64, ColumnsError> {
        read_varint(|_| self.byte())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ColumnsError> {
        if n > self.b.len() {
            return Err(ColumnsError::Malformed("length past the end"));
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }
}

/// A string of the batch being decoded: in the payload or the link table,
/// or (linked) put together from a label and the rest.
#[derive(Clone)]
enum Str<'a> {
    In(&'a str),
    Joined(std::rc::Rc<str>),
}

impl Str<'_> {
    fn as_str(&self) -> &str {
        match self {
            Str::In(s) => s,
            Str::Joined(s) => s,
        }
    }
}

/// Tables of the batch being decoded, and its streams.
struct Decoder<'a> {
    s: [Reader<'a>; STREAMS],
    plan: &'static Plan,
    strings: Vec<Str<'a>>,
    addresses: Vec<&'a [u8]>,
    /// IP protocol, VLAN, end, directions, application protocol and
    /// (linked) server port and counts.
    shapes: Vec<(u32, u32, i32, u64, Str<'a>, Option<Service>)>,
    /// Bytes of strings and addresses the records may still be given (a
    /// table entry is copied into every record that refers to it).
    budget: usize,
    max_bytes: usize,
    /// The stream's link table, when linked; and the entries kept.
    link: Option<&'a LinkTable>,
    kept: Kept,
    /// Linked: the link table's entries the batch may refer to (values
    /// below it); the batch's own entries follow them.
    link_len: u64,
    /// Linked: the batch's table of counters.
    counters: Vec<(Option<DirectionCounters>, Option<DirectionCounters>)>,
    /// Linked: each client address value's last port.
    ports: std::collections::HashMap<u64, u32>,
}

impl<'a> Decoder<'a> {
    /// A value of column `c`: its `i`-th varint byte from the column's
    /// `i`-th stream (the last one for the rest), a single stream unless
    /// the column is split in planes.
    fn varint(&mut self, c: Col) -> Result<u64, ColumnsError> {
        let (base, last) = (self.plan.base[c as usize], self.plan.last[c as usize]);
        read_varint(|i| self.s[base + i.min(last)].byte())
    }

    fn signed(&mut self, c: Col) -> Result<i64, ColumnsError> {
        self.varint(c).map(unzigzag)
    }

    fn u32(&mut self, c: Col, what: &'static str) -> Result<u32, ColumnsError> {
        u32::try_from(self.varint(c)?).map_err(|_| ColumnsError::Malformed(what))
    }

    fn i32(&mut self, c: Col, what: &'static str) -> Result<i32, ColumnsError> {
        i32::try_from(self.signed(c)?).map_err(|_| ColumnsError::Malformed(what))
    }

    /// A table entry of at most `max` bytes: length from `len`, bytes
    /// from `bytes`.
    fn entry(
        &mut self,
        len: Col,
        bytes: Col,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], ColumnsError> {
        let mut n = self.varint(len)?;
        let mut keep = false;
        if self.link.is_some() {
            keep = n & 1 != 0;
            n >>= 1;
        }
        if n > max as u64 {
            return Err(ShapeError::TooLong {
                field,
                len: usize::try_from(n).unwrap_or(usize::MAX),
                max,
            }
            .into());
        }
        let e = self.s[self.plan.base[bytes as usize]].take(n as usize)?;
        if keep {
            self.kept.push(e);
        }
        Ok(e)
    }

    fn spend(&mut self, n: usize) -> Result<(), ColumnsError> {
        self.budget = self.budget.checked_sub(n).ok_or(ColumnsError::TooLarge {
            max: self.max_bytes,
        })?;
        Ok(())
    }

    /// A string by the index read from `c` (see [`Self::string_at`]),
    /// copied into the record.
    fn string(&mut self, c: Col, field: &'static str, max: usize) -> Result<String, ColumnsError> {
        let i = self.varint(c)?;
        let s = self.string_at(i, field, max)?;
        self.spend(s.as_str().len())?;
        Ok(s.as_str().to_owned())
    }

    /// Linked: the link table entry that value `v` stands for, if below
    /// `link_len`; otherwise `v` less `link_len`, an index of the batch's
    /// own table.
    fn linked(&self, v: u64) -> Result<Result<&'a [u8], u64>, ColumnsError> {
        match self.link {
            Some(link) if v < self.link_len => Ok(Ok(link
                .get(v as usize)
                .ok_or(ColumnsError::Malformed("link table index out of range"))?)),
            _ => Ok(Err(v - self.link_len)),
        }
    }

    /// The string of value `v` (see [`Self::linked`]); the next index is a
    /// new string, read from the string columns. Refused past `max` bytes.
    fn string_at(
        &mut self,
        v: u64,
        field: &'static str,
        max: usize,
    ) -> Result<Str<'a>, ColumnsError> {
        let s = match self.linked(v)? {
            Ok(b) => Str::In(utf8(b)?),
            Err(i) => self.local_string(i, field, max)?,
        };
        within(s.as_str().len(), field, max)?;
        Ok(s)
    }

    /// The string of index `i` of the batch's own table.
    fn local_string(
        &mut self,
        i: u64,
        field: &'static str,
        max: usize,
    ) -> Result<Str<'a>, ColumnsError> {
        if i != self.strings.len() as u64 {
            return self
                .strings
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .cloned()
                .ok_or(ColumnsError::Malformed("string index out of range"));
        }
        if self.link.is_none() {
            let s = Str::In(utf8(self.entry(
                Col::StringLen,
                Col::StringBytes,
                field,
                max,
            )?)?);
            self.strings.push(s.clone());
            return Ok(s);
        }
        // Linked: `length << 2 | split << 1 | keep`; the string's index is
        // taken before a rest spelled after it.
        let n = self.varint(Col::StringLen)?;
        let (len, split, keep) = (n >> 2, n & 2 != 0, n & 1 != 0);
        within(usize::try_from(len).unwrap_or(usize::MAX), field, max)?;
        let at = self.plan.base[Col::StringBytes as usize];
        let first = utf8(self.s[at].take(len as usize)?)?;
        self.strings.push(Str::In(first));
        let s = if split {
            // The rest is shorter than the whole by the label and the dot:
            // a chain of parts ends within `max`.
            let max = max
                .checked_sub(first.len() + 1)
                .ok_or(ShapeError::TooLong {
                    field,
                    len: first.len() + 1,
                    max,
                })?;
            let v = self.varint(Col::StringRest)?;
            let rest = self.string_at(v, field, max)?;
            let whole = format!("{first}.{}", rest.as_str());
            self.spend(whole.len())?;
            Str::Joined(whole.into())
        } else {
            Str::In(first)
        };
        if keep {
            self.kept.push(s.as_str().as_bytes());
        }
        self.strings[i as usize] = s.clone();
        Ok(s)
    }

    fn address(&mut self, c: Col) -> Result<Vec<u8>, ColumnsError> {
        let v = self.varint(c)?;
        self.address_value(v)
    }

    /// The client port of a flow from client address value `client` (see
    /// `Encoder::client_port`).
    fn client_port(&mut self, client: u64) -> Result<u32, ColumnsError> {
        let v = self.varint(Col::ClientPort)?;
        if self.link.is_none() {
            return u32::try_from(v).map_err(|_| ColumnsError::Malformed("client port"));
        }
        let port = if v < SEQUENTIAL {
            let last = self
                .ports
                .get(&client)
                .ok_or(ColumnsError::Malformed("no earlier port of the client"))?;
            u64::from(*last) + 1 + v
        } else {
            v - SEQUENTIAL
        };
        let port = u32::try_from(port).map_err(|_| ColumnsError::Malformed("client port"))?;
        self.ports.insert(client, port);
        Ok(port)
    }

    /// The address of value `v`.
    fn address_value(&mut self, v: u64) -> Result<Vec<u8>, ColumnsError> {
        let i = match self.linked(v)? {
            Ok(a) => {
                if a.len() > MAX_ADDRESS_LEN {
                    return Err(ShapeError::TooLong {
                        field: "address",
                        len: a.len(),
                        max: MAX_ADDRESS_LEN,
                    }
                    .into());
                }
                self.spend(a.len())?;
                return Ok(a.to_vec());
            }
            Err(i) => i,
        };
        if i == self.addresses.len() as u64 {
            let a = self.entry(
                Col::AddressLen,
                Col::AddressBytes,
                "address",
                MAX_ADDRESS_LEN,
            )?;
            self.addresses.push(a);
        }
        let a = *self
            .addresses
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .ok_or(ColumnsError::Malformed("address index out of range"))?;
        self.spend(a.len())?;
        Ok(a.to_vec())
    }

    /// A flow's counters, for the directions `present` names.
    fn flow_counters(
        &mut self,
        present: u64,
    ) -> Result<(Option<DirectionCounters>, Option<DirectionCounters>), ColumnsError> {
        if self.link.is_none() || present == 0 {
            return self.spelled_counters(present);
        }
        let v = self.varint(Col::CounterIndex)?;
        let i = match self.linked(v)? {
            Ok(key) => return read_counter_key(key, present),
            Err(i) => i,
        };
        if i == self.counters.len() as u64 {
            let keep = self.varint(Col::CounterNew)?;
            if keep > 1 {
                return Err(ColumnsError::Malformed("keep mark other than 0 or 1"));
            }
            let entry = self.spelled_counters(present)?;
            if keep == 1 {
                self.kept
                    .push(&counter_key(present, entry.0.as_ref(), entry.1.as_ref()));
            }
            self.counters.push(entry);
        }
        self.counters
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .cloned()
            .ok_or(ColumnsError::Malformed("counters index out of range"))
    }

    fn spelled_counters(
        &mut self,
        present: u64,
    ) -> Result<(Option<DirectionCounters>, Option<DirectionCounters>), ColumnsError> {
        let c2s = if present & C2S != 0 {
            Some(self.counters()?)
        } else {
            None
        };
        let s2c = if present & S2C != 0 {
            Some(self.counters()?)
        } else {
            None
        };
        Ok((c2s, s2c))
    }

    fn counters(&mut self) -> Result<DirectionCounters, ColumnsError> {
        let packets = self.varint(Col::Packets)?;
        let payload_bytes = self.varint(Col::PayloadBytes)?;
        let per_packet = self.varint(Col::HeaderPerPacket)?;
        let rest = self.varint(Col::HeaderRest)?;
        let header = per_packet.wrapping_mul(packets).wrapping_add(rest);
        Ok(DirectionCounters {
            packets,
            ip_bytes: payload_bytes.wrapping_add(header),
            payload_bytes,
            tcp_flags: self.u32(Col::TcpFlags, "tcp flags")?,
        })
    }

    fn flow(&mut self, prev_first: &mut i64) -> Result<FlowRecord, ColumnsError> {
        let first_seen_us = prev_first.wrapping_add(self.signed(Col::FirstSeen)?);
        *prev_first = first_seen_us;
        let last_seen_us = first_seen_us.wrapping_add(self.signed(Col::Duration)?);
        let shape = self.varint(Col::Shape)?;
        if shape == self.shapes.len() as u64 {
            let ip_protocol = self.u32(Col::Shapes, "ip protocol")?;
            let vlan = self.u32(Col::Shapes, "vlan")?;
            let end = self.i32(Col::Shapes, "flow end")?;
            let present = self.varint(Col::Shapes)?;
            let app = self.varint(Col::Shapes)?;
            let app = self.string_at(app, "app_protocol", MAX_NAME_LEN)?;
            let service = match self.link {
                Some(_) => Some(Service {
                    port: self.u32(Col::Shapes, "server port")?,
                    operations: self.varint(Col::Shapes)?,
                    indicators: self.varint(Col::Shapes)?,
                }),
                None => None,
            };
            self.shapes
                .push((ip_protocol, vlan, end, present, app, service));
        }
        let (ip_protocol, vlan, end, present, app, service) = self
            .shapes
            .get(usize::try_from(shape).unwrap_or(usize::MAX))
            .cloned()
            .ok_or(ColumnsError::Malformed("shape index out of range"))?;
        let client = self.varint(Col::ClientAddr)?;
        let client_ip = self.address_value(client)?;
        let server_ip = self.address(Col::ServerAddr)?;
        let client_port = self.client_port(client)?;
        let server_port = match service {
            Some(s) => s.port,
            None => self.u32(Col::ServerPort, "server port")?,
        };
        let (c2s, s2c) = self.flow_counters(present)?;
        let given = service.map(|s| s.operations);
        let ops = self.count(
            given,
            Col::OpCount,
            Col::OpCode,
            "operations",
            MAX_OPERATIONS,
        )?;
        let mut operations = Vec::with_capacity(ops);
        for _ in 0..ops {
            let code = self.u32(Col::OpCode, "operation code")?;
            let name = self.string(Col::OpName, "operation name", MAX_NAME_LEN)?;
            operations.push(Operation {
                code,
                name,
                class: self.i32(Col::OpClass, "operation class")?,
                count: self.varint(Col::OpTimes)?,
                errors: self.varint(Col::OpErrors)?,
            });
        }
        let n = self.count(
            service.map(|s| s.indicators),
            Col::IndicatorCount,
            Col::Indicator,
            "indicators",
            MAX_INDICATORS,
        )?;
        let mut indicators = Vec::with_capacity(n);
        for _ in 0..n {
            indicators.push(self.string(Col::Indicator, "indicator", MAX_INDICATOR_LEN)?);
        }
        let app_protocol = app.as_str().to_owned();
        self.spend(app_protocol.len())?;
        Ok(FlowRecord {
            first_seen_us,
            last_seen_us,
            client_ip,
            server_ip,
            client_port,
            server_port,
            ip_protocol,
            c2s,
            s2c,
            app_protocol: app_protocol.to_owned(),
            vlan,
            end,
            operations,
            indicators,
        })
    }

    /// A per-flow count (`given` by the shape, or read from `c`), within
    /// `max` and within the bytes left in `items` (each item takes at
    /// least one byte there).
    fn count(
        &mut self,
        given: Option<u64>,
        c: Col,
        items: Col,
        field: &'static str,
        max: usize,
    ) -> Result<usize, ColumnsError> {
        let n = match given {
            Some(n) => n,
            None => self.varint(c)?,
        };
        if n > max as u64 {
            return Err(ShapeError::TooMany {
                field,
                count: usize::try_from(n).unwrap_or(usize::MAX),
                max,
            }
            .into());
        }
        if n as usize > self.s[self.plan.base[items as usize]].b.len() {
            return Err(ColumnsError::Malformed("more entries than bytes"));
        }
        Ok(n as usize)
    }
}

/// Decodes a columnar payload holding at most `max_records` records
/// (flows, assets and statuses together), whose compressed streams (only
/// where `compressed` allows them) decompress to at most `max_bytes` in
/// all, and whose strings and addresses, once copied into every record
/// that refers to them, total at most `max_bytes` too.
pub fn decode(
    raw: &[u8],
    compressed: bool,
    max_records: usize,
    max_bytes: usize,
) -> Result<Batch, ColumnsError> {
    decode_with(raw, compressed, max_records, max_bytes, None).map(|(b, _)| b)
}

/// Decodes a linked payload (compressed) with its stream's table, as
/// [`decode`] does; with the entries it marked to keep, for
/// [`LinkTable::append`] once the batch is accepted.
pub fn decode_linked(
    raw: &[u8],
    max_records: usize,
    max_bytes: usize,
    link: &LinkTable,
) -> Result<(Batch, Kept), ColumnsError> {
    decode_with(raw, true, max_records, max_bytes, Some(link))
}

fn decode_with(
    raw: &[u8],
    compressed: bool,
    max_records: usize,
    max_bytes: usize,
    link: Option<&LinkTable>,
) -> Result<(Batch, Kept), ColumnsError> {
    let mut r = Reader { b: raw };
    let version = r.byte()?;
    if version != VERSION {
        return Err(ColumnsError::Version(version));
    }
    let packing = r.byte()?;
    let flows = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
    if flows > max_records {
        return Err(ShapeError::TooManyRecords {
            count: flows,
            max: max_records,
        }
        .into());
    }
    let link_len = match link {
        Some(t) => {
            let n = r.varint()?;
            if n > t.len() as u64 {
                return Err(ColumnsError::Malformed(
                    "refers to more link table entries than the stream kept",
                ));
            }
            n
        }
        None => 0,
    };
    let too_large = |e| match e {
        CodecError::TooLarge { .. } => ColumnsError::TooLarge { max: max_bytes },
        e => ColumnsError::Decompress(e.to_string()),
    };
    let mut left = max_bytes;
    let frame;
    if packing == Packing::OneFrame as u8 {
        if !compressed {
            return Err(ColumnsError::Malformed(
                "a compressed frame in an uncompressed payload",
            ));
        }
        frame = decompress(r.b, left).map_err(too_large)?;
        left -= frame.len();
        r = Reader { b: &frame };
    } else if packing != Packing::Streams as u8 {
        return Err(ColumnsError::Malformed("unknown packing"));
    }
    let (plan, streams) = match link {
        Some(_) => (&LINKED, STREAMS),
        None => (&SELF, STREAMS_SELF),
    };
    let mut packed: Vec<(&[u8], bool)> = Vec::with_capacity(streams);
    for _ in 0..streams {
        let h = r.varint()?;
        let len = usize::try_from(h >> 1).unwrap_or(usize::MAX);
        packed.push((r.take(len)?, h & 1 == 1));
    }
    if !r.b.is_empty() {
        return Err(ColumnsError::Malformed("bytes after the last column"));
    }
    let mut unpacked: Vec<Option<Vec<u8>>> = Vec::with_capacity(streams);
    for &(b, z) in &packed {
        if !z {
            unpacked.push(None);
            continue;
        }
        if !compressed || packing == Packing::OneFrame as u8 {
            return Err(ColumnsError::Malformed(
                "a compressed column in an uncompressed payload",
            ));
        }
        let out = decompress(b, left).map_err(too_large)?;
        left -= out.len();
        unpacked.push(Some(out));
    }
    let mut s = [Reader { b: &[] }; STREAMS];
    for (k, reader) in s.iter_mut().enumerate().take(streams) {
        reader.b = unpacked[k].as_deref().unwrap_or(packed[k].0);
    }
    let head = s[plan.base[Col::Head as usize]].b;
    s[plan.base[Col::Head as usize]].b = &[];
    check_shape(head, max_records - flows)?;
    let mut batch = Batch::decode(head)?;
    if !batch.flows.is_empty() {
        return Err(ColumnsError::Malformed("flows in the batch head"));
    }
    // Every flow takes at least one byte of its first-seen column.
    if flows > s[plan.base[Col::FirstSeen as usize]].b.len() {
        return Err(ColumnsError::Malformed("more flows than bytes"));
    }
    let mut d = Decoder {
        s,
        plan,
        strings: Vec::new(),
        addresses: Vec::new(),
        shapes: Vec::new(),
        budget: max_bytes,
        max_bytes,
        link,
        kept: link.map(LinkTable::kept).unwrap_or_default(),
        link_len,
        counters: Vec::new(),
        ports: std::collections::HashMap::new(),
    };
    batch.flows.reserve_exact(flows);
    let mut prev_first = 0;
    for _ in 0..flows {
        batch.flows.push(d.flow(&mut prev_first)?);
    }
    if d.s.iter().any(|c| !c.b.is_empty()) {
        return Err(ColumnsError::Malformed("bytes left in a column"));
    }
    Ok((batch, d.kept))
}

fn utf8(b: &[u8]) -> Result<&str, ColumnsError> {
    std::str::from_utf8(b).map_err(|_| ColumnsError::Malformed("string not UTF-8"))
}

/// Refuses a `field` of `len` bytes past `max`.
fn within(len: usize, field: &'static str, max: usize) -> Result<(), ColumnsError> {
    if len > max {
        return Err(ShapeError::TooLong { field, len, max }.into());
    }
    Ok(())
}

/// The bytes a flow's counters are kept by in a link table: the directions
/// present, then packets, IP bytes, payload bytes and TCP flags of each, as
/// varints.
fn counter_key(
    present: u64,
    c2s: Option<&DirectionCounters>,
    s2c: Option<&DirectionCounters>,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    put_varint(&mut key, present);
    for d in [c2s, s2c].into_iter().flatten() {
        put_varint(&mut key, d.packets);
        put_varint(&mut key, d.ip_bytes);
        put_varint(&mut key, d.payload_bytes);
        put_varint(&mut key, d.tcp_flags.into());
    }
    key
}

/// The counters a link table entry holds, for a flow whose shape has the
/// directions `present`.
fn read_counter_key(
    key: &[u8],
    present: u64,
) -> Result<(Option<DirectionCounters>, Option<DirectionCounters>), ColumnsError> {
    let mut r = Reader { b: key };
    if r.varint()? != present {
        return Err(ColumnsError::Malformed(
            "counters of other directions than the flow's",
        ));
    }
    let mut one = |on: bool| -> Result<Option<DirectionCounters>, ColumnsError> {
        if !on {
            return Ok(None);
        }
        Ok(Some(DirectionCounters {
            packets: r.varint()?,
            ip_bytes: r.varint()?,
            payload_bytes: r.varint()?,
            tcp_flags: u32::try_from(r.varint()?)
                .map_err(|_| ColumnsError::Malformed("tcp flags"))?,
        }))
    };
    let c2s = one(present & C2S != 0)?;
    let s2c = one(present & S2C != 0)?;
    if !r.b.is_empty() {
        return Err(ColumnsError::Malformed("bytes left in a counters entry"));
    }
    Ok((c2s, s2c))
}

/// A LEB128 varint whose `i`-th byte `byte(i)` gives.
fn read_varint(
    mut byte: impl FnMut(usize) -> Result<u8, ColumnsError>,
) -> Result<u64, ColumnsError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = byte(i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ColumnsError::Malformed("overlong varint"))
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{AssetObservation, SensorStatus};

    fn flow(i: u64) -> FlowRecord {
        let dir = |k: u64| DirectionCounters {
            packets: k,
            ip_bytes: k * 52 + i % 3,
            payload_bytes: k * 12,
            tcp_flags: (k % 256) as u32,
        };
        FlowRecord {
            first_seen_us: 1_764_000_000_000_000 + (i * 7919) as i64,
            last_seen_us: 1_764_000_000_000_000 + (i * 7919 + i * i) as i64,
            client_ip: vec![10, 0, (i % 7) as u8, 1],
            server_ip: if i.is_multiple_of(5) {
                vec![0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
            } else {
                vec![192, 168, 0, (i % 3) as u8]
            },
            client_port: 40_000 + i as u32,
            server_port: [502, 53, 443][i as usize % 3],
            ip_protocol: [6, 17][i as usize % 2],
            c2s: Some(dir(i + 1)),
            s2c: (!i.is_multiple_of(4)).then(|| dir(i * 3)),
            app_protocol: ["modbus", "dns", ""][i as usize % 3].into(),
            vlan: (i % 2 * 10) as u32,
            end: (i % 6) as i32,
            operations: (0..i % 3)
                .map(|k| Operation {
                    code: k as u32 + 3,
                    name: format!("op{k}"),
                    class: k as i32,
                    count: i * 10 + k,
                    errors: k,
                })
                .collect(),
            indicators: (0..i % 2)
                .map(|k| format!("host{}.example", (i + k) % 4))
                .collect(),
        }
    }

    fn batch(flows: u64) -> Batch {
        Batch {
            seq: 77,
            sensor_id: "vessel-1".into(),
            created_us: 1_764_000_000_123_456,
            flows: (0..flows).map(flow).collect(),
            assets: vec![AssetObservation {
                mac: vec![0, 1, 2, 3, 4, 5],
                vendor: "Siemens".into(),
                ..AssetObservation::default()
            }],
            status: vec![SensorStatus {
                capture_packets: 9,
                ..SensorStatus::default()
            }],
        }
    }

    const BIG: usize = 1 << 24;

    #[test]
    fn linked_batches_decode_to_exactly_the_batch_and_shrink_once_entries_are_kept() {
        let mut sensor = LinkEncoder::new(1 << 20);
        let mut ingest = LinkTable::new(1 << 20);
        let plain = encode(&batch(60), Some(3)).len();
        let mut sizes = Vec::new();
        for round in 0..4 {
            let b = batch(60);
            let (wire, kept) = encode_linked(&b, 3, &mut sensor);
            let (back, read_kept) = decode_linked(&wire, BIG, BIG, &ingest).unwrap();
            assert_eq!(back, b, "round {round}");
            assert_eq!(read_kept, kept);
            // Accepted: both ends append.
            ingest.append(&read_kept);
            sensor.accepted(&kept);
            assert_eq!(ingest.len(), sensor.table().len());
            sizes.push(wire.len());
        }
        // Spelled, spelled and kept, then referred to.
        assert!(sizes[0] <= plain + plain / 10, "{sizes:?} vs {plain}");
        assert!(sizes[2] < sizes[0], "{sizes:?}");
        assert!(!ingest.is_empty());
        // A batch refused (not appended) changes nothing: the next one
        // still decodes against the same table.
        let (wire, _) = encode_linked(&batch(3), 3, &mut sensor);
        assert_eq!(decode_linked(&wire, BIG, BIG, &ingest).unwrap().0, batch(3));
        // Without the table, or against a shorter one, a reference is refused.
        let err = decode_linked(&wire, BIG, BIG, &LinkTable::new(1 << 20)).unwrap_err();
        assert_eq!(
            err,
            ColumnsError::Malformed("refers to more link table entries than the stream kept")
        );
        assert!(decode(&wire, true, BIG, BIG).is_err());
    }

    #[test]
    fn a_link_reference_is_checked_like_a_spelled_entry() {
        // Entry 0: an address-like entry that is not UTF-8; entry 1: a
        // string longer than an application protocol may be.
        let mut t = LinkTable::new(1 << 20);
        let mut k = Kept::default();
        k.push(&[0xff, 0xfe]);
        k.push("x".repeat(MAX_NAME_LEN + 1).as_bytes());
        t.append(&k);
        // One flow whose application protocol is value `app` and whose
        // addresses are entry 0, in a batch that may refer to `link_len`
        // entries; `more` adds streams.
        let one_at = |link_len: u64, app: u8, port: u8, more: &[(Col, Vec<u8>)]| {
            let mut cols = vec![
                (Col::FirstSeen, vec![0]),
                (Col::Duration, vec![0]),
                (Col::Shape, vec![0]),
                (Col::Shapes, vec![6, 0, 0, 0, app, 2, 0, 0]),
                (Col::ClientAddr, vec![0]),
                (Col::ServerAddr, vec![0]),
                (Col::ClientPort, vec![port]),
            ];
            cols.extend_from_slice(more);
            payload_of(STREAMS, Some(link_len), 1, &cols)
        };
        // Client port 9: port 1 (not 0..8, one after an earlier port of
        // the client, which this batch has none of).
        let one = |link_len: u64, app: u8, more: &[(Col, Vec<u8>)]| one_at(link_len, app, 9, more);
        let err = |p: Vec<u8>| decode_linked(&p, BIG, BIG, &t).unwrap_err();
        assert_eq!(
            err(one(2, 0, &[])),
            ColumnsError::Malformed("string not UTF-8")
        );
        assert!(matches!(
            err(one(2, 1, &[])),
            ColumnsError::Shape(ShapeError::TooLong { .. })
        ));
        // Client port 9: port 1, not one written after an earlier port of
        // the client (0..8), which this batch does not have.
        let early = one_at(
            2,
            2,
            1,
            &[
                (Col::StringLen, vec![3 << 2]),
                (Col::StringBytes, b"tcp".to_vec()),
            ],
        );
        assert_eq!(
            err(early),
            ColumnsError::Malformed("no earlier port of the client")
        );
        assert_eq!(
            err(one(3, 0, &[])),
            ColumnsError::Malformed("refers to more link table entries than the stream kept")
        );
        // Value 2, past the 2 entries: the batch's first own string,
        // spelled "tcp" with its keep mark (3 << 2 | 1), kept for the table.
        let spelled = one(
            2,
            2,
            &[
                (Col::StringLen, vec![3 << 2 | 1]),
                (Col::StringBytes, b"tcp".to_vec()),
            ],
        );
        let (b, kept) = decode_linked(&spelled, BIG, BIG, &t).unwrap();
        assert_eq!(b.flows[0].app_protocol, "tcp");
        assert_eq!(b.flows[0].client_ip, [0xff, 0xfe]);
        assert_eq!(kept.iter().collect::<Vec<_>>(), [b"tcp"]);
        // In two parts: "www" (3 << 2 | split 2 | keep 1), then the rest,
        // value 3 (the batch's next string), spelled "example" (7 << 2).
        let two = one(
            2,
            2,
            &[
                (Col::StringLen, vec![3 << 2 | 3, 7 << 2]),
                (Col::StringBytes, b"wwwexample".to_vec()),
                (Col::StringRest, vec![3]),
            ],
        );
        let (b, kept) = decode_linked(&two, BIG, BIG, &t).unwrap();
        assert_eq!(b.flows[0].app_protocol, "www.example");
        assert_eq!(kept.iter().collect::<Vec<_>>(), [b"www.example"]);
        // A chain of empty labels, each rest the next new string: refused
        // once the parts cannot fit the field, never a deep recursion.
        let mut rest = Vec::new();
        (3..100_000u64).for_each(|v| put_varint(&mut rest, v));
        let chain = one(
            2,
            2,
            &[(Col::StringLen, vec![2; 100_000]), (Col::StringRest, rest)],
        );
        assert!(matches!(
            decode_linked(&chain, BIG, BIG, &t).unwrap_err(),
            ColumnsError::Shape(ShapeError::TooLong { .. })
        ));
    }

    #[test]
    fn decodes_to_exactly_the_batch_encoded() {
        for level in [None, Some(3)] {
            for n in [0, 1, 2, 50, 2000] {
                let b = batch(n);
                assert_eq!(
                    decode(&encode(&b, level), true, usize::MAX, BIG).unwrap(),
                    b,
                    "{n} flows"
                );
            }
        }
        // Values no sensor sends still come back unchanged: extremes,
        // negative times and durations, IP bytes below the payload's,
        // counters without packets, unknown enum values.
        let odd = FlowRecord {
            first_seen_us: i64::MIN,
            last_seen_us: i64::MAX,
            client_ip: Vec::new(),
            server_ip: vec![1; 16],
            client_port: u32::MAX,
            server_port: 70_000,
            ip_protocol: u32::MAX,
            c2s: Some(DirectionCounters {
                packets: 0,
                ip_bytes: 5,
                payload_bytes: u64::MAX,
                tcp_flags: u32::MAX,
            }),
            s2c: Some(DirectionCounters {
                packets: u64::MAX,
                ip_bytes: 0,
                payload_bytes: 1,
                tcp_flags: 0,
            }),
            app_protocol: "x".repeat(MAX_NAME_LEN),
            vlan: u32::MAX,
            end: -7,
            operations: vec![Operation {
                code: u32::MAX,
                name: String::new(),
                class: i32::MIN,
                count: u64::MAX,
                errors: u64::MAX,
            }],
            indicators: vec![String::new(), "é".repeat(MAX_INDICATOR_LEN / 2)],
        };
        let mut b = batch(3);
        b.flows.insert(1, odd.clone());
        b.flows.push(FlowRecord::default());
        // The same client again, one port down and at the top.
        b.flows.push(FlowRecord {
            client_port: u32::MAX - 1,
            ..odd.clone()
        });
        b.flows.push(odd);
        for level in [None, Some(3)] {
            assert_eq!(
                decode(&encode(&b, level), true, usize::MAX, BIG).unwrap(),
                b
            );
        }
        // Linked, twice over the same stream (the second time by
        // reference to what the first kept, and the third).
        let (mut sensor, mut ingest) = (LinkEncoder::new(1 << 20), LinkTable::new(1 << 20));
        for _ in 0..3 {
            let (wire, kept) = encode_linked(&b, 3, &mut sensor);
            let (back, read) = decode_linked(&wire, usize::MAX, BIG, &ingest).unwrap();
            assert_eq!(back, b);
            ingest.append(&read);
            sensor.accepted(&kept);
        }
        assert!(!ingest.is_empty());
    }

    #[test]
    fn shared_values_are_written_once() {
        // 2000 flows with 5 addresses and 6 strings: the address and string
        // columns hold each once.
        let raw = encode(&batch(2000), None);
        let protobuf = batch(2000).encode_to_vec();
        assert!(
            raw.len() * 2 < protobuf.len(),
            "{} vs {}",
            raw.len(),
            protobuf.len()
        );
        // Compressed columns, and a compressed column where the payload
        // says none may be.
        // Small batches compress as one frame, large ones stream by stream;
        // neither is allowed in a payload that says it is uncompressed.
        for (n, packing) in [(20, Packing::OneFrame), (2000, Packing::Streams)] {
            let z = encode(&batch(n), Some(3));
            assert_eq!(z[1], packing as u8, "{n} flows");
            assert!(z.len() < encode(&batch(n), None).len(), "{n} flows");
            assert!(matches!(
                decode(&z, false, usize::MAX, BIG),
                Err(ColumnsError::Malformed(_))
            ));
        }
    }

    #[test]
    fn any_truncation_or_corruption_is_an_error_never_a_panic() {
        for level in [None, Some(3)] {
            let raw = encode(&batch(40), level);
            for cut in 0..raw.len() {
                assert!(
                    decode(&raw[..cut], true, usize::MAX, BIG).is_err(),
                    "cut at {cut}"
                );
            }
        }
        let raw = encode(&batch(40), None);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut bad = raw.clone();
            for _ in 0..1 + x % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % bad.len() as u64) as usize;
                bad[at] = (x >> 32) as u8;
            }
            // Either an error or some batch; never a panic, never more
            // records than allowed.
            if let Ok(b) = decode(&bad, true, 100, BIG) {
                assert!(b.flows.len() + b.assets.len() + b.status.len() <= 100);
            }
        }
        assert_eq!(
            decode(&[2], true, 10, BIG).unwrap_err(),
            ColumnsError::Version(2)
        );
    }

    /// Hand-built payloads: an empty head, then (uncompressed) columns
    /// given as (column, bytes); a planed column's bytes are all in its
    /// first stream (single-byte varints).
    /// A self-contained payload of these streams.
    fn payload(flows: u64, cols: &[(Col, Vec<u8>)]) -> Vec<u8> {
        payload_of(STREAMS_SELF, None, flows, cols)
    }

    /// A payload of `streams` streams; linked if `link_len` is given.
    fn payload_of(
        streams: usize,
        link_len: Option<u64>,
        flows: u64,
        cols: &[(Col, Vec<u8>)],
    ) -> Vec<u8> {
        let mut out = vec![VERSION, Packing::Streams as u8];
        put_varint(&mut out, flows);
        if let Some(n) = link_len {
            put_varint(&mut out, n);
        }
        for stream in 0..streams {
            let mut body = Vec::new();
            for (col, b) in cols {
                let plan = if link_len.is_some() { &LINKED } else { &SELF };
                if plan.base[*col as usize] == stream {
                    body.extend_from_slice(b);
                }
            }
            put_varint(&mut out, (body.len() as u64) << 1);
            out.extend_from_slice(&body);
        }
        out
    }

    /// One flow of shape 0 (TCP, no counters) with client and server
    /// address 0 (10.0.0.1), given operation and indicator columns.
    fn one_flow(extra: &[(Col, Vec<u8>)]) -> Vec<u8> {
        let mut cols = vec![
            (Col::FirstSeen, vec![0]),
            (Col::Duration, vec![0]),
            (Col::Shape, vec![0]),
            (Col::Shapes, vec![6, 0, 0, 0, 0]),
            (Col::StringLen, vec![0]),
            (Col::ClientAddr, vec![0]),
            (Col::ServerAddr, vec![0]),
            (Col::AddressLen, vec![4]),
            (Col::AddressBytes, vec![10, 0, 0, 1]),
            (Col::ClientPort, vec![1]),
            (Col::ServerPort, vec![2]),
        ];
        cols.extend_from_slice(extra);
        payload(1, &cols)
    }

    #[test]
    fn hand_built_payloads_decode_or_are_refused_for_what_they_are() {
        let ok = one_flow(&[(Col::OpCount, vec![0]), (Col::IndicatorCount, vec![0])]);
        let b = decode(&ok, true, 10, BIG).unwrap();
        assert_eq!(b.flows[0].client_ip, [10, 0, 0, 1]);
        assert_eq!(b.flows[0].server_ip, [10, 0, 0, 1]);
        assert_eq!(b.flows[0].ip_protocol, 6);
        // Too many operations for one flow.
        let many = one_flow(&[
            (Col::OpCount, vec![65]),
            (Col::OpCode, vec![1; 65]),
            (Col::IndicatorCount, vec![0]),
        ]);
        assert!(matches!(
            decode(&many, true, 10, BIG),
            Err(ColumnsError::Shape(ShapeError::TooMany {
                field: "operations",
                ..
            }))
        ));
        // A count larger than its column: refused before allocating.
        let claim = one_flow(&[(Col::OpCount, vec![60]), (Col::IndicatorCount, vec![0])]);
        assert_eq!(
            decode(&claim, true, 10, BIG).unwrap_err(),
            ColumnsError::Malformed("more entries than bytes")
        );
        // A value no flow reads.
        let left = one_flow(&[
            (Col::OpCount, vec![0]),
            (Col::IndicatorCount, vec![0]),
            (Col::ServerPort, vec![3]),
        ]);
        assert_eq!(
            decode(&left, true, 10, BIG).unwrap_err(),
            ColumnsError::Malformed("bytes left in a column")
        );
        // An index past the table.
        let far = one_flow(&[
            (Col::OpCount, vec![0]),
            (Col::IndicatorCount, vec![1]),
            (Col::Indicator, vec![5]),
        ]);
        assert_eq!(
            decode(&far, true, 10, BIG).unwrap_err(),
            ColumnsError::Malformed("string index out of range")
        );
        // An indicator longer than the limit.
        let long = one_flow(&[
            (Col::OpCount, vec![0]),
            (Col::IndicatorCount, vec![1]),
            (Col::Indicator, vec![1]),
            (Col::StringLen, vec![129, 1]),
            (Col::StringBytes, vec![b'a'; 129]),
        ]);
        assert!(matches!(
            decode(&long, true, 10, BIG),
            Err(ColumnsError::Shape(ShapeError::TooLong {
                field: "indicator",
                ..
            }))
        ));
        // More flows than records allowed, or than bytes.
        assert!(matches!(
            decode(&payload(11, &[]), true, 10, BIG),
            Err(ColumnsError::Shape(ShapeError::TooManyRecords { .. }))
        ));
        assert_eq!(
            decode(&payload(5, &[(Col::FirstSeen, vec![0; 4])]), true, 10, BIG).unwrap_err(),
            ColumnsError::Malformed("more flows than bytes")
        );
    }

    #[test]
    fn a_table_entry_repeated_into_every_record_is_bounded_by_the_byte_limit() {
        // One 128-byte indicator referred to by 16 indicators in each of
        // 5,000 flows: 10 MB of strings from under 200 KB of columns.
        let name = "n".repeat(MAX_INDICATOR_LEN);
        let f = FlowRecord {
            indicators: vec![name; MAX_INDICATORS],
            ..FlowRecord::default()
        };
        let b = Batch {
            flows: vec![f; 5000],
            ..Batch::default()
        };
        let raw = encode(&b, None);
        assert!(raw.len() < 200_000, "{}", raw.len());
        assert_eq!(
            decode(&raw, true, usize::MAX, 1 << 20).unwrap_err(),
            ColumnsError::TooLarge { max: 1 << 20 }
        );
        assert_eq!(decode(&raw, true, usize::MAX, 16 << 20).unwrap(), b);
        // Compressed, the columns themselves are refused past the limit.
        let z = encode(&b, Some(19));
        assert!(z.len() < 2_000, "{}", z.len());
        assert_eq!(
            decode(&z, true, usize::MAX, 50_000).unwrap_err(),
            ColumnsError::TooLarge { max: 50_000 }
        );
    }
}
