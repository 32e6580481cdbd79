//! The link table: strings, addresses and flow counters that one upload
//! stream has already carried, so that later batches of the stream refer to
//! them instead of spelling them again (`ENCODING_COLUMNS_LINKED_ZSTD`).
//!
//! A columnar batch is self-contained: every name it uses (DNS names, TLS
//! server names, operation names, addresses) is spelled once in its tables.
//! On real traffic most of those names recur from batch to batch, and
//! spelling them again is the largest share of a batch's bytes. The link
//! table removes that repetition on the link alone:
//!
//! - Ingest offers a table on an upload stream by the response header
//!   [`HEADER`] (its byte capacity). A sensor that does not see it, or an
//!   older sensor, sends self-contained batches, as before.
//! - In a linked batch each new table entry of the batch is either spelled,
//!   with a mark saying whether to keep it, or a reference to an entry of
//!   the stream's link table.
//! - Both ends append the kept entries of a batch to their table when
//!   ingest **accepts** it (the ack), in the stream's order, up to the
//!   first that does not fit ([`MAX_ENTRIES`], the advertised bytes). A sensor
//!   refers only to entries of batches whose ack it has received, which
//!   ingest appended before sending that ack, so both ends agree whatever
//!   is in flight; a refused batch adds nothing on either side.
//! - The table lives as long as the stream: a reconnect starts empty.
//!   Nothing about it is stored: the disk buffer holds self-contained
//!   batches (the sensor re-encodes each one as it sends it), and ingest
//!   writes each batch self-contained to Kafka, so the sink, the detector
//!   and the dead-letter tools never see a reference.
//!
//! Which entries are worth keeping is the sensor's choice: an entry is kept
//! the second time the stream spells it ([`LinkEncoder`]), so names seen once
//! (per-request CDN shards, trackers) do not fill the table.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// The response header of an upload stream on which ingest keeps a link
/// table: its capacity in bytes of entries.
pub const HEADER: &str = "tidewatch-link-table-bytes";

/// zstd level of linked batches: the link is where bytes count, and on
/// these columns level 6 costs about what level 3 does (measured with
/// `tidewatch-sensor estimate`: 0.7 % fewer bytes).
pub const ZSTD_LEVEL: i32 = 6;

/// zstd level at which ingest stores a linked batch self-contained (the
/// sensors' sealing level).
pub const STORED_ZSTD_LEVEL: i32 = 3;

/// Ingest's default capacity of a stream's table (`--link-table-bytes`).
pub const DEFAULT_BYTES: usize = 256 * 1024;

/// Entries a link table holds at most, whatever its bytes.
pub const MAX_ENTRIES: usize = 65_536;

/// Distinct entries spelled once that the sensor remembers (as 64-bit
/// hashes) to keep them when spelled again; forgotten all at once when
/// full.
const SEEN_MAX: usize = 65_536;

/// Byte strings one after another: one arena and the end of each (4 bytes
/// of overhead an entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entries {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Entries {
    fn push(&mut self, entry: &[u8]) {
        self.bytes.extend_from_slice(entry);
        self.ends.push(self.bytes.len() as u32);
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.bytes[start..end])
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(s, &e)| &self.bytes[s as usize..e as usize])
    }
}

/// A stream's entries, in the order both ends appended them (so the
/// memory ingest gives a stream is its advertised bytes and little more).
#[derive(Debug, Clone, Default)]
pub struct LinkTable {
    entries: Entries,
    max_bytes: usize,
}

impl LinkTable {
    /// An empty table of at most `max_bytes` bytes of entries.
    pub fn new(max_bytes: usize) -> Self {
        LinkTable {
            entries: Entries::default(),
            max_bytes: max_bytes.min(u32::MAX as usize),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.ends.is_empty()
    }

    /// Bytes of entries held.
    pub fn bytes(&self) -> usize {
        self.entries.bytes.len()
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.entries.get(i)
    }

    /// Whether no entry of `len` bytes fits any more.
    fn full_for(&self, len: usize) -> bool {
        self.len() >= MAX_ENTRIES || self.bytes() + len > self.max_bytes
    }

    /// Appends the kept entries of an accepted batch, in order, up to the
    /// first that does not fit (the rule both ends apply); returns how many.
    pub fn append(&mut self, kept: &Kept) -> usize {
        let mut n = 0;
        for e in kept.iter() {
            if self.full_for(e.len()) {
                break;
            }
            self.entries.push(e);
            n += 1;
        }
        n
    }

    /// An empty [`Kept`] for a batch read against this table: it takes
    /// entries only while they could still be appended now (the room only
    /// shrinks until the batch's ack), so what a hostile batch marks to
    /// keep costs at most the table's room.
    pub fn kept(&self) -> Kept {
        Kept {
            room: Some((
                self.max_bytes.saturating_sub(self.bytes()),
                MAX_ENTRIES.saturating_sub(self.len()),
            )),
            ..Kept::default()
        }
    }
}

/// The entries a batch spelled and marked to keep, in the order it spelled
/// them: what both ends append once the batch is accepted.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    entries: Entries,
    /// Bytes and entries it may still take (unbounded if `None`): once one
    /// does not fit, no later one is taken (only a prefix is ever appended).
    room: Option<(usize, usize)>,
}

/// Kept entries are equal when they hold the same entries.
impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Kept {}

impl Kept {
    pub fn push(&mut self, entry: &[u8]) {
        if let Some((bytes, entries)) = &mut self.room {
            if entry.len() > *bytes || *entries == 0 {
                *bytes = 0;
                *entries = 0;
                return;
            }
            *bytes -= entry.len();
            *entries -= 1;
        }
        self.entries.push(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter()
    }
}

/// The sensor's end of a stream's link table: the table, an index of it,
/// and the entries spelled once (kept when spelled again).
#[derive(Debug, Default)]
pub struct LinkEncoder {
    table: LinkTable,
    index: HashMap<Box<[u8]>, u32>,
    seen: HashSet<u64>,
}

impl LinkEncoder {
    /// For a stream whose ingest advertised `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        LinkEncoder {
            table: LinkTable::new(max_bytes),
            ..LinkEncoder::default()
        }
    }

    /// The table index of `entry`, if the table holds it.
    pub fn find(&self, entry: &[u8]) -> Option<u32> {
        self.index.get(entry).copied()
    }

    /// Whether a batch spelling `entry` should mark it to keep: the second
    /// time the stream spells it, while it could still fit.
    pub fn keep(&mut self, entry: &[u8]) -> bool {
        if self.table.full_for(entry.len()) {
            return false;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        entry.hash(&mut h);
        let h = h.finish();
        if self.seen.remove(&h) {
            return true;
        }
        if self.seen.len() >= SEEN_MAX {
            self.seen.clear();
        }
        self.seen.insert(h);
        false
    }

    /// The batch that kept `kept` was accepted: append them, as ingest did.
    pub fn accepted(&mut self, kept: &Kept) {
        let first = self.table.len();
        let n = self.table.append(kept);
        for (i, e) in kept.iter().take(n).enumerate() {
            self.index.entry(e.into()).or_insert((first + i) as u32);
        }
    }

    /// The table as both ends hold it.
    pub fn table(&self) -> &LinkTable {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(entries: &[&[u8]]) -> Kept {
        let mut k = Kept::default();
        entries.iter().for_each(|e| k.push(e));
        k
    }

    #[test]
    fn both_ends_append_the_same_entries_and_stop_at_the_capacity() {
        let mut sensor = LinkEncoder::new(10);
        let mut ingest = LinkTable::new(10);
        let k = kept(&[b"abcd", b"", b"efgh", b"ijk", b"l"]);
        // 4 + 0 + 4 bytes fit; "ijk" would make 11, and nothing after the
        // first that does not fit is appended ("l" would have).
        assert_eq!(ingest.append(&k), 3);
        sensor.accepted(&k);
        assert_eq!(sensor.table().len(), 3);
        assert_eq!(ingest.get(2), Some(&b"efgh"[..]));
        assert_eq!(ingest.get(3), None);
        for i in 0..3 {
            assert_eq!(sensor.table().get(i), ingest.get(i));
        }
        assert_eq!(sensor.find(b"efgh"), Some(2));
        assert_eq!(sensor.find(b"l"), None);
        // What a batch read now may keep is bounded by the room left (2
        // bytes), as a prefix.
        let mut room = ingest.kept();
        for e in [&b"x"[..], b"yz", b"w"] {
            room.push(e);
        }
        assert_eq!(room, kept(&[b"x"]));
        // Too full for an entry: it is not marked to keep.
        assert!(!sensor.keep(b"xyz"));
        assert!(!sensor.keep(b"xyz"));
    }

    #[test]
    fn an_entry_is_kept_the_second_time_it_is_spelled() {
        let mut s = LinkEncoder::new(1 << 20);
        assert!(!s.keep(b"once.example"));
        assert!(!s.keep(b"twice.example"));
        assert!(s.keep(b"twice.example"));
        assert!(!s.keep(b"twice.example"), "the third time starts again");
    }

    #[test]
    fn the_entry_count_is_capped_too() {
        let mut t = LinkTable::new(usize::MAX);
        let mut k = Kept::default();
        (0..MAX_ENTRIES + 5).for_each(|_| k.push(b""));
        assert_eq!(t.append(&k), MAX_ENTRIES);
        assert_eq!(t.len(), MAX_ENTRIES);
        let mut room = t.kept();
        room.push(b"");
        assert!(room.is_empty());
    }
}
