//! Application protocol identification by payload, and per-flow operation
//! summaries. One module per protocol; each has `detect` (validates the
//! protocol's framing on one payload, never trusting the port) and `observe`
//! (adds the operations it finds to the flow's [`Ops`]).
//!
//! A protocol may also `identify` the device that sent a payload: what it
//! says about itself in its own replies or banners ([`DeviceIdentity`]),
//! which the asset inventory keeps.
//!
//! A flow is identified from its first payload-carrying packets (up to
//! [`MAX_TRIES`]); after that it stays unknown. Parsing is per packet: PDUs
//! are expected to start at the beginning of a TCP segment (which is how OT
//! masters and outstations send them); several PDUs in one segment are
//! walked where the framing gives their lengths. Nothing here allocates in
//! proportion to the input, and nothing panics on malformed input.

pub mod bacnet;
pub mod dnp3;
pub mod dns;
pub mod enip;
pub mod ftp;
pub mod http;
pub mod iec104;
pub mod modbus;
pub mod mqtt;
pub mod nmea;
pub mod opcua;
pub mod rdp;
pub mod s7comm;
pub mod ssh;
pub mod store;
pub mod telnet;
pub mod tls;
pub mod vnc;

use std::borrow::Cow;

use tidewatch_proto::v1::{Operation, OperationClass};

pub use store::OpStore;

/// Payload-carrying packets examined before a flow is left unknown.
pub const MAX_TRIES: u8 = 8;
/// Distinct operations kept per flow record, distinct indicators (DNS names,
/// SNI, Host) kept per flow record, longest indicator kept in bytes: the
/// wire protocol's limits, which ingest enforces.
pub use tidewatch_proto::limits::{
    MAX_IDENTITY_LEN, MAX_INDICATORS, MAX_INDICATOR_LEN, MAX_OPERATIONS,
};

/// One protocol, described once: everything the sensor knows of it outside
/// its parser. [`PROTOCOLS`] lists them all; detection, dispatch, the
/// server-port list of flow orientation, asset roles and the fuzz target
/// are all driven from there.
pub struct Protocol {
    /// The stable lowercase name used in records and in ClickHouse.
    pub name: &'static str,
    /// Validates the protocol's framing on one TCP payload (never the port).
    pub tcp: Option<fn(&[u8]) -> bool>,
    /// The same over UDP.
    pub udp: Option<fn(&[u8]) -> bool>,
    /// Well-known server ports: orient a flow whose start was not seen
    /// (identification itself never looks at ports).
    pub server_ports: &'static [u16],
    /// What the parser takes from each payload of an identified flow.
    pub observe: Observer,
    /// Asset roles the two ends of such a flow get.
    pub roles: Roles,
    /// Who the sender of one payload of an identified flow says it is, if
    /// the payload says (a device identification reply, a banner).
    pub identify: Option<fn(Payload<'_>) -> Option<DeviceIdentity>>,
}

/// What a device says about itself in one payload: its maker, product,
/// firmware and serial (a device identification reply) or the software it
/// runs (a banner). Every field is bounded text ([`identity_text`]); empty
/// where the payload did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The maker by name.
    pub vendor: String,
    /// The maker by a protocol's number for it ("CIP vendor 1"), which a
    /// name, when the device gives one, replaces.
    pub vendor_id: String,
    pub product: String,
    pub firmware: String,
    pub serial: String,
    /// A software banner: an SSH version line, an HTTP `Server` header.
    pub software: String,
}

impl DeviceIdentity {
    /// `None` when the payload said nothing.
    fn some(self) -> Option<DeviceIdentity> {
        (self != DeviceIdentity::default()).then_some(self)
    }
}

/// Device text as kept: printable ASCII (anything else becomes `?`),
/// without the padding devices add (spaces, NULs), at most
/// [`MAX_IDENTITY_LEN`] bytes.
pub fn identity_text(b: &[u8]) -> String {
    let pad = |c: &u8| *c == b' ' || *c == 0 || *c == b'\t';
    let start = b.iter().position(|c| !pad(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !pad(c)).map_or(start, |e| e + 1);
    b[start..end]
        .iter()
        .take(MAX_IDENTITY_LEN)
        .map(|c| {
            if (0x20..0x7f).contains(c) {
                *c as char
            } else {
                '?'
            }
        })
        .collect()
}

/// One payload of an identified flow, as a parser sees it.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub data: &'a [u8],
    /// IP protocol number (6 TCP, 17 UDP).
    pub transport: u8,
    /// Sent by the flow's client.
    pub from_client: bool,
}

/// A protocol's parser: operations (OT protocols) or indicators (names the
/// traffic reveals: DNS queries, TLS SNI, HTTP Host).
#[derive(Clone, Copy)]
pub enum Observer {
    Operations(fn(Payload<'_>, &mut Ops<'_>)),
    Indicators(fn(Payload<'_>, &mut Indicators<'_>)),
}

/// Asset roles from a flow of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// None.
    None,
    /// A controller protocol: the server is a `controller`; the client an
    /// `engineering_station` if it wrote, controlled or programmed, else an
    /// `ot_client`.
    Controller,
    /// Fixed roles for the client and the server.
    Fixed {
        client: Option<&'static str>,
        server: Option<&'static str>,
    },
}

/// Every protocol, in detection order: a payload is named by the first
/// whose detector for its transport accepts it (the stricter framings come
/// first). Adding a protocol: a module with its `PROTOCOL` and one line here.
pub const PROTOCOLS: &[&Protocol] = &[
    &s7comm::CLASSIC,
    &s7comm::PLUS,
    &modbus::PROTOCOL,
    &bacnet::PROTOCOL,
    &dnp3::PROTOCOL,
    &iec104::PROTOCOL,
    &enip::PROTOCOL,
    &opcua::PROTOCOL,
    &rdp::PROTOCOL,
    &tls::PROTOCOL,
    &http::PROTOCOL,
    &ssh::PROTOCOL,
    &vnc::PROTOCOL,
    &telnet::PROTOCOL,
    &ftp::PROTOCOL,
    &mqtt::PROTOCOL,
    &nmea::PROTOCOL,
    &dns::PROTOCOL,
];

/// An identified application protocol: its place in [`PROTOCOLS`] (one
/// byte, so that a flow's state stays small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppProto(u8);

impl AppProto {
    /// Every protocol, in [`PROTOCOLS`] order.
    pub fn all() -> impl Iterator<Item = AppProto> {
        (0..PROTOCOLS.len() as u8).map(AppProto)
    }

    /// The protocol of that name.
    pub fn by_name(name: &str) -> Option<AppProto> {
        AppProto::all().find(|a| a.name() == name)
    }

    /// Its description.
    pub fn protocol(self) -> &'static Protocol {
        PROTOCOLS[self.0 as usize]
    }

    /// The stable lowercase name used in records and in ClickHouse.
    pub fn name(self) -> &'static str {
        self.protocol().name
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Identifies the protocol of one payload, or `None`.
pub fn detect(transport: u8, p: &[u8]) -> Option<AppProto> {
    if p.is_empty() {
        return None;
    }
    AppProto::all().find(|a| {
        let detector = match transport {
            TCP => a.protocol().tcp,
            UDP => a.protocol().udp,
            _ => None,
        };
        detector.is_some_and(|d| d(p))
    })
}

/// A well-known server port of some protocol (see [`Protocol::server_ports`]).
pub fn is_known_server_port(port: u16) -> bool {
    PROTOCOLS.iter().any(|p| p.server_ports.contains(&port))
}

#[derive(Debug, Clone)]
struct OpEntry {
    code: u32,
    class: OperationClass,
    name: Cow<'static, str>,
    count: u64,
    errors: u64,
}

/// Equal strings of equal length; names are short (NMEA addresses are five
/// characters), so those up to 8 bytes are compared as one word rather than
/// through a call to memcmp.
#[inline]
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() <= 8 && a.len() == b.len() {
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w[..s.len()].copy_from_slice(s);
            u64::from_ne_bytes(w)
        };
        return word(a) == word(b);
    }
    a == b
}

/// Operation entries as records, ordered by code then name.
fn into_operations(mut v: Vec<OpEntry>) -> Vec<Operation> {
    let mut out = Vec::new();
    write_operations(&mut v, &mut out);
    out
}

/// Moves operation entries into `out` as records, ordered by code then
/// name; `out`'s records and name strings are reused (records handed back
/// by the output are filled again without allocating).
fn write_operations(v: &mut Vec<OpEntry>, out: &mut Vec<Operation>) {
    v.sort_by(|a, b| (a.code, &a.name).cmp(&(b.code, &b.name)));
    out.truncate(v.len());
    for (i, e) in v.drain(..).enumerate() {
        match out.get_mut(i) {
            Some(o) => {
                o.code = e.code;
                o.name.clear();
                o.name.push_str(&e.name);
                o.class = e.class as i32;
                o.count = e.count;
                o.errors = e.errors;
            }
            None => out.push(Operation {
                code: e.code,
                name: e.name.into_owned(),
                class: e.class as i32,
                count: e.count,
                errors: e.errors,
            }),
        }
    }
}

/// The distinct operations of one flow record, bounded to [`MAX_OPERATIONS`], as
/// parsers see them: a flow's list in its table's [`OpStore`] while
/// metering, or a vector of their own ([`Ops::default`], for tests and
/// fuzzing). A flow has a handful of distinct operations, so a short list
/// scanned linearly is both faster and smaller than a map.
pub struct Ops<'a> {
    entries: Entries<'a>,
    /// Operations not recorded because the list was full.
    pub overflow: u64,
}

enum Entries<'a> {
    Own(Vec<OpEntry>),
    Store {
        store: &'a mut OpStore,
        head: &'a mut u32,
    },
}

impl Default for Ops<'_> {
    fn default() -> Self {
        Ops {
            entries: Entries::Own(Vec::new()),
            overflow: 0,
        }
    }
}

impl<'a> Ops<'a> {
    /// The operations of the flow whose list starts at `head` in `store`.
    fn in_store(store: &'a mut OpStore, head: &'a mut u32) -> Self {
        Ops {
            entries: Entries::Store { store, head },
            overflow: 0,
        }
    }

    /// The entry of (`code`, `name`), added if new (`owned` makes the name
    /// to keep, so a name taken from the payload is copied only once).
    fn entry(
        &mut self,
        code: u32,
        name: &str,
        owned: impl FnOnce() -> Cow<'static, str>,
        class: OperationClass,
    ) -> Option<&mut OpEntry> {
        // Names are mostly the same static string: compare addresses first.
        let same = |e: &OpEntry| {
            e.code == code
                && e.name.len() == name.len()
                && (e.name.as_ptr() == name.as_ptr() || same_text(&e.name, name))
        };
        let new = || OpEntry {
            code,
            class,
            name: owned(),
            count: 0,
            errors: 0,
        };
        let found = match &mut self.entries {
            Entries::Store { store, head } => store.find_or_add(head, same, new),
            Entries::Own(v) => match v.iter().position(same) {
                Some(i) => Some(&mut v[i]),
                None if v.len() >= MAX_OPERATIONS => None,
                None => {
                    v.push(new());
                    v.last_mut()
                }
            },
        };
        if found.is_none() {
            self.overflow += 1;
        }
        found
    }

    fn entry_cow(
        &mut self,
        code: u32,
        name: Cow<'static, str>,
        class: OperationClass,
    ) -> Option<&mut OpEntry> {
        match name {
            Cow::Borrowed(s) => self.entry(code, s, || Cow::Borrowed(s), class),
            Cow::Owned(s) => self.entry(code, &s, || Cow::Owned(s.clone()), class),
        }
    }

    /// Counts one operation.
    pub fn add(&mut self, code: u32, name: impl Into<Cow<'static, str>>, class: OperationClass) {
        if let Some(e) = self.entry_cow(code, name.into(), class) {
            e.count += 1;
        }
    }

    /// Counts an error/exception answering the operation.
    pub fn error(&mut self, code: u32, name: impl Into<Cow<'static, str>>, class: OperationClass) {
        if let Some(e) = self.entry_cow(code, name.into(), class) {
            e.errors += 1;
        }
    }

    /// [`Ops::add`] (`valid`) or [`Ops::error`] for a name read from the
    /// payload: it is copied only when first seen in the flow.
    pub fn count_named(&mut self, code: u32, name: &str, class: OperationClass, valid: bool) {
        if let Some(e) = self.entry(code, name, || Cow::Owned(name.to_string()), class) {
            if valid {
                e.count += 1;
            } else {
                e.errors += 1;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.entries {
            Entries::Own(v) => v.is_empty(),
            Entries::Store { head, .. } => **head == store::NONE,
        }
    }

    /// The operations, ordered by code then name.
    pub fn to_proto(&self) -> Vec<Operation> {
        match &self.entries {
            Entries::Own(v) => into_operations(v.clone()),
            Entries::Store { store, head } => into_operations(store.entries(**head)),
        }
    }
}

/// Per-flow application state (16 bytes): the protocol, the flow's
/// operation entries in the table's [`OpStore`], and indicators (allocated
/// only once there is one).
#[derive(Debug, Clone)]
pub struct AppState {
    pub proto: Option<AppProto>,
    tries: u8,
    /// First of the flow's entries in the [`OpStore`], or [`store::NONE`].
    ops: u32,
    /// Boxed: 8 bytes in every flow instead of 24; most flows have none.
    #[allow(clippy::box_collection)]
    indicators: Option<Box<Vec<String>>>,
}

impl Default for AppState {
    fn default() -> Self {
        AppState::NEW
    }
}

impl AppState {
    /// A flow whose protocol is not known yet.
    pub const NEW: AppState = AppState {
        proto: None,
        tries: 0,
        ops: store::NONE,
        indicators: None,
    };

    /// Looks at one payload (`from_client`: sent by the flow's client);
    /// operations go to `store`.
    pub fn on_payload(&mut self, transport: u8, p: &[u8], from_client: bool, store: &mut OpStore) {
        if p.is_empty() {
            return;
        }
        if self.proto.is_none() {
            if self.tries >= MAX_TRIES {
                return;
            }
            self.tries += 1;
            self.proto = detect(transport, p);
        }
        let Some(proto) = self.proto else { return };
        let payload = Payload {
            data: p,
            transport,
            from_client,
        };
        match proto.protocol().observe {
            Observer::Indicators(observe) => {
                let list = self.indicators.get_or_insert_with(Default::default);
                observe(payload, &mut Indicators(list));
                if list.is_empty() {
                    self.indicators = None;
                }
            }
            Observer::Operations(observe) => {
                observe(payload, &mut Ops::in_store(store, &mut self.ops))
            }
        }
    }

    /// The operation summary, ordered by code; the entries leave `store`.
    pub fn take_operations(&mut self, store: &mut OpStore) -> Vec<Operation> {
        let mut out = Vec::new();
        self.take_operations_into(store, &mut out);
        out
    }

    /// [`AppState::take_operations`] written over `out` (reusing its records).
    pub fn take_operations_into(&mut self, store: &mut OpStore, out: &mut Vec<Operation>) {
        store.take_into(&mut self.ops, out);
    }

    /// Indicators (DNS names, SNI, Host), in order of appearance.
    pub fn take_indicators(&mut self) -> Vec<String> {
        self.indicators.take().map(|b| *b).unwrap_or_default()
    }

    /// Starts a new record for the same flow (active timeout): the protocol
    /// stays, the counters restart. The previous record's operations stay
    /// with the copy of the state that reports them.
    pub fn restart(&mut self) {
        self.ops = store::NONE;
        self.indicators = None;
    }
}

/// Bounded set of indicator strings.
pub struct Indicators<'a>(&'a mut Vec<String>);

impl Indicators<'_> {
    pub fn add(&mut self, s: &str) {
        let s = s.trim();
        if s.is_empty() || self.0.len() >= MAX_INDICATORS {
            return;
        }
        let mut end = s.len().min(MAX_INDICATOR_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let s = &s[..end];
        if !self.0.iter().any(|x| x == s) {
            self.0.push(s.to_string());
        }
    }
}

/// Index of the first `b` in `hay`, eight bytes at a time (NMEA sentences
/// are found by their line ends on every packet of a navigation feed).
pub(crate) fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * b as u64;
    let mut i = 0;
    while i + 8 <= hay.len() {
        let w = u64::from_le_bytes(hay[i..i + 8].try_into().expect("8 bytes")) ^ pattern;
        // The lowest flagged byte is the first zero byte of `w`.
        let zero = w.wrapping_sub(LO) & !w & HI;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..].iter().position(|x| *x == b).map(|p| i + p)
}

/// Reads a big-endian u16.
pub(crate) fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads a big-endian u32.
pub(crate) fn be32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *p.get(at)?,
        *p.get(at + 1)?,
        *p.get(at + 2)?,
        *p.get(at + 3)?,
    ]))
}

/// Reads a little-endian u16.
pub(crate) fn le16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads a little-endian u32.
pub(crate) fn le32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *p.get(at)?,
        *p.get(at + 1)?,
        *p.get(at + 2)?,
        *p.get(at + 3)?,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_unknown_and_never_panics() {
        let mut seed = 0x2545_f491u32;
        for len in 0..300 {
            let mut p = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                p.push(seed as u8);
            }
            for t in [TCP, UDP] {
                let mut st = AppState::default();
                let mut store = OpStore::default();
                for _ in 0..3 {
                    st.on_payload(t, &p, true, &mut store);
                }
                let _ = st.take_operations(&mut store);
                assert!(store.is_empty());
            }
        }
    }

    #[test]
    fn find_byte_finds_the_first() {
        let mut seed = 7u32;
        for len in 0..200 {
            let hay: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    [b'\n', b'a', 0, 0xff, b'\r', 0x0b][(seed >> 16) as usize % 6]
                })
                .collect();
            for b in [b'\n', 0, 0xff, b'z'] {
                assert_eq!(
                    find_byte(&hay, b),
                    hay.iter().position(|x| *x == b),
                    "{hay:?} {b}"
                );
            }
        }
    }

    #[test]
    fn registry_names_are_unique_and_every_protocol_is_detectable() {
        let mut names: Vec<&str> = PROTOCOLS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROTOCOLS.len());
        for a in AppProto::all() {
            assert_eq!(AppProto::by_name(a.name()), Some(a));
            let p = a.protocol();
            assert!(
                p.tcp.is_some() || p.udp.is_some(),
                "{} has no detector",
                p.name
            );
        }
    }

    #[test]
    fn identities_are_bounded_printable_text() {
        assert_eq!(identity_text(b"  6ES7 315\0\0  "), "6ES7 315");
        assert_eq!(identity_text(b"a\x1b[2Jb\xff"), "a?[2Jb?");
        assert_eq!(identity_text(&[b'x'; 500]).len(), MAX_IDENTITY_LEN);
        assert_eq!(identity_text(b"\0\0"), "");
        let said = |name: &str, data: &[u8], from_client: bool| {
            let p = AppProto::by_name(name).unwrap().protocol();
            (p.identify.unwrap())(Payload {
                data,
                transport: TCP,
                from_client,
            })
        };
        // Banners: the SSH version line of either side, the HTTP server's
        // Server header (bounded with its prefix); requests say nothing.
        let ssh = said("ssh", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", true).unwrap();
        assert_eq!(ssh.software, "SSH-2.0-OpenSSH_9.2p1 Debian-2");
        let long = [
            &b"HTTP/1.1 200 OK\r\nServer: "[..],
            &[b'n'; 300],
            b"\r\n\r\n",
        ]
        .concat();
        let http = said("http", &long, false).unwrap();
        assert!(
            http.software.starts_with("Server: nnn") && http.software.len() == MAX_IDENTITY_LEN
        );
        assert!(said("http", b"GET / HTTP/1.1\r\nServer: x\r\n\r\n", true).is_none());
        assert!(said("http", b"HTTP/1.1 200 OK\r\nServer: \r\n\r\n", false).is_none());
        // A Modbus 43/14 response whose object runs past the ADU keeps the
        // objects before it; a request says nothing.
        let adu = [
            0, 1, 0, 0, 0, 16, 1, 0x2B, 0x0E, 1, 1, 0, 0, 2, 0, 3, b'A', b'B', b'C', 1, 200, b'x',
        ];
        assert_eq!(said("modbus", &adu, false).unwrap().vendor, "ABC");
        assert!(said("modbus", &adu, true).is_none());
    }

    #[test]
    fn ops_are_bounded() {
        let mut ops = Ops::default();
        for i in 0..200u32 {
            ops.add(i, "x", OperationClass::Read);
        }
        assert_eq!(ops.to_proto().len(), MAX_OPERATIONS);
        assert_eq!(ops.overflow, 200 - MAX_OPERATIONS as u64);
    }
}
