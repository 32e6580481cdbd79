//! Storage of the flow table: compact keys, an open-addressing index and a
//! chunked slab of entries.
//!
//! Why not a `HashMap<FlowKey, Flow>`: a sensor with 100k concurrent flows on
//! a small box must stay within a few tens of MiB, and a growing map holds
//! its old and new tables at once (three times the live entries at the last
//! resize). Here:
//! - entries live in a slab of fixed-size chunks that is never moved: it
//!   grows by one chunk at a time and reuses freed slots (LIFO);
//! - the index holds one 8-byte word per slot (32 hash bits + entry number),
//!   so a resize moves 8 bytes per flow, not the flow;
//! - a lookup touches one index word and one entry, and both can be
//!   prefetched a batch of packets ahead ([`FlowStore::prefetch_index`],
//!   [`FlowStore::prefetch_entry`]), which hides the cache misses that
//!   dominate metering when flows outnumber the CPU caches.
//!
//! The hash is keyed per process (seeded from the OS via foldhash), so
//! crafted traffic cannot aim many flows at one probe sequence.

use std::hash::BuildHasher;
use std::net::IpAddr;

use crate::slab::Slab;

use super::Flow;

/// Entries per slab chunk (about 600 KB each).
const CHUNK_BITS: u32 = 12;
/// Smallest index (slots); it doubles whenever it is half full.
const MIN_SLOTS: usize = 1024;

/// A flow's identity: VLAN, IP protocol and both endpoints in canonical
/// order (the lower address, then port, is `a`). Addresses are kept as two
/// big-endian words (IPv4 in the top 32 bits of the first), so comparing
/// words compares addresses, and building a key needs no byte shuffling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    a: [u64; 2],
    b: [u64; 2],
    /// a port | b port << 16 | VLAN << 32 | protocol << 48 | IPv6 << 56.
    rest: u64,
}

/// An address as two big-endian words.
#[inline]
fn addr_words(ip: IpAddr) -> [u64; 2] {
    match ip {
        IpAddr::V4(v) => [(u32::from(v) as u64) << 32, 0],
        IpAddr::V6(v) => {
            let x = u128::from(v);
            [(x >> 64) as u64, x as u64]
        }
    }
}

impl FlowKey {
    /// The key of a packet from `src` to `dst`, and whether the sender is `a`.
    #[inline]
    pub fn new(
        vlan: u16,
        proto: u8,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
    ) -> (FlowKey, bool) {
        // Mixed families cannot come from one IP header; a v4 address then
        // counts as v6 (its words differ from any real v6 peer's anyway).
        let v6 = src.is_ipv6() || dst.is_ipv6();
        let (s, d) = (addr_words(src), addr_words(dst));
        let src_is_a = (s[0], s[1], sport) <= (d[0], d[1], dport);
        let (a, a_port, b, b_port) = if src_is_a {
            (s, sport, d, dport)
        } else {
            (d, dport, s, sport)
        };
        let rest = a_port as u64
            | (b_port as u64) << 16
            | (vlan as u64) << 32
            | (proto as u64) << 48
            | (v6 as u64) << 56;
        (FlowKey { a, b, rest }, src_is_a)
    }

    pub fn a_port(&self) -> u16 {
        self.rest as u16
    }

    pub fn b_port(&self) -> u16 {
        (self.rest >> 16) as u16
    }

    pub fn vlan(&self) -> u16 {
        (self.rest >> 32) as u16
    }

    pub fn proto(&self) -> u8 {
        (self.rest >> 48) as u8
    }

    fn v6(&self) -> bool {
        (self.rest >> 56) & 1 != 0
    }

    /// Network-order bytes of endpoint `a`'s (or `b`'s) address: 4 for
    /// IPv4, 16 for IPv6.
    pub fn ip(&self, a: bool) -> Vec<u8> {
        let mut v = Vec::new();
        self.ip_into(a, &mut v);
        v
    }

    /// [`FlowKey::ip`] written over `out`.
    pub fn ip_into(&self, a: bool, out: &mut Vec<u8>) {
        let w = if a { self.a } else { self.b };
        out.clear();
        if self.v6() {
            out.extend_from_slice(&(((w[0] as u128) << 64) | w[1] as u128).to_be_bytes());
        } else {
            out.extend_from_slice(&((w[0] >> 32) as u32).to_be_bytes());
        }
    }
}

impl PartialOrd for FlowKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// VLAN, protocol, family (IPv4 first), then endpoint `a` and `b` by
/// address and port: the tie-break of the table's deterministic output order.
impl Ord for FlowKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let t = |k: &FlowKey| {
            (
                k.vlan(),
                k.proto(),
                k.v6(),
                k.a,
                k.a_port(),
                k.b,
                k.b_port(),
            )
        };
        t(self).cmp(&t(other))
    }
}

/// One slab slot: a flow and its key. A vacant slot holds [`Flow::VACANT`].
pub struct Entry {
    pub key: FlowKey,
    pub flow: Flow,
}

/// The flow entries and their index.
pub struct FlowStore {
    /// Index words: 0 = empty, else (hash >> 32) << 32 | (entry number + 1).
    /// The home slot of a word is its hash bits masked, so a word can be
    /// moved without its key.
    slots: Vec<u64>,
    entries: Slab<Entry, CHUNK_BITS>,
    len: usize,
    seed: [u64; 3],
    /// Entries were [taken](FlowStore::take) without unlinking their index
    /// words: the index must be rebuilt before the next lookup.
    stale: bool,
}

#[inline]
fn folded_multiply(x: u64, y: u64) -> u64 {
    let full = (x as u128).wrapping_mul(y as u128);
    (full as u64) ^ ((full >> 64) as u64)
}

#[allow(unsafe_code)] // see the SAFETY comments
#[inline]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: PRFM is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

impl Default for FlowStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowStore {
    pub fn new() -> Self {
        let s = foldhash::fast::RandomState::default();
        FlowStore {
            slots: vec![0; MIN_SLOTS],
            entries: Slab::default(),
            len: 0,
            stale: false,
            seed: [s.hash_one(1u64) | 1, s.hash_one(2u64), s.hash_one(3u64)],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        let ([w0, w1], [w2, w3], w4) = (key.a, key.b, key.rest);
        let [s0, s1, s2] = self.seed;
        let h = folded_multiply(w0 ^ s0, w1 ^ s1);
        let h = folded_multiply(w2 ^ h, w3 ^ s2);
        folded_multiply(w4 ^ h, s0 ^ s2)
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn home(&self, word: u64) -> usize {
        (word >> 32) as usize & self.mask()
    }

    #[inline]
    pub fn get(&self, idx: u32) -> &Entry {
        self.entries.get(idx)
    }

    pub fn get_mut(&mut self, idx: u32) -> &mut Entry {
        self.entries.get_mut(idx)
    }

    /// Starts loading the index word a lookup of `hash` reads first.
    #[inline]
    pub fn prefetch_index(&self, hash: u64) {
        let at = (hash >> 32) as usize & self.mask();
        prefetch(&self.slots[at]);
    }

    /// Starts loading entry `idx` into the CPU caches.
    #[inline]
    pub fn prefetch_slot(&self, idx: u32) {
        let b = self.get(idx) as *const Entry as *const u8;
        prefetch(b);
        prefetch(b.wrapping_add(64));
        prefetch(b.wrapping_add(128));
        prefetch(b.wrapping_add(std::mem::size_of::<Entry>() - 1));
    }

    /// Starts loading the entry a lookup of (`key`, `hash`) will probably
    /// end at (the first index word with the same hash bits).
    #[inline]
    pub fn prefetch_entry(&self, hash: u64) {
        let tag = hash >> 32;
        let mask = self.mask();
        let mut at = tag as usize & mask;
        for _ in 0..4 {
            let w = self.slots[at];
            if w == 0 {
                return;
            }
            if w >> 32 == tag {
                self.prefetch_slot((w as u32) - 1);
                return;
            }
            at = (at + 1) & mask;
        }
    }

    /// The entry number of `key`, if present.
    #[inline]
    pub fn find(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        self.find_slot(key, hash).map(|(_, idx)| idx)
    }

    #[inline]
    fn find_slot(&self, key: &FlowKey, hash: u64) -> Option<(usize, u32)> {
        debug_assert!(!self.stale, "lookup in a stale index");
        let tag = hash >> 32;
        let mask = self.mask();
        let mut at = tag as usize & mask;
        loop {
            let w = self.slots[at];
            if w == 0 {
                return None;
            }
            if w >> 32 == tag {
                let idx = (w as u32) - 1;
                if self.get(idx).key == *key {
                    return Some((at, idx));
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds a flow whose key is not present; returns its entry number.
    pub fn insert(&mut self, key: FlowKey, hash: u64, flow: Flow) -> u32 {
        self.ensure_indexed();
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let idx = self.entries.insert(Entry { key, flow });
        let word = (hash >> 32) << 32 | (idx as u64 + 1);
        let mask = self.mask();
        let mut at = self.home(word);
        while self.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = word;
        self.len += 1;
        idx
    }

    /// Removes entry `idx` (which must be live) and returns its key and flow.
    pub fn remove(&mut self, idx: u32) -> (FlowKey, Flow) {
        self.ensure_indexed();
        let key = self.get(idx).key;
        let hash = self.hash(&key);
        let (slot, found) = self.find_slot(&key, hash).expect("live entry is indexed");
        debug_assert_eq!(found, idx);
        self.unlink(slot);
        self.len -= 1;
        self.entries.release(idx);
        let flow = std::mem::replace(&mut self.get_mut(idx).flow, Flow::VACANT);
        (key, flow)
    }

    /// Takes entry `idx` (which must be live) out without touching the
    /// index: a flush of the whole table takes every entry in time order,
    /// and unlinking each would cost a cache miss per flow for an index that
    /// is about to be dropped. Lookups rebuild it first
    /// ([`FlowStore::ensure_indexed`]).
    pub fn take(&mut self, idx: u32) -> (FlowKey, Flow) {
        let e = self.get_mut(idx);
        let key = e.key;
        let flow = std::mem::replace(&mut e.flow, Flow::VACANT);
        self.len -= 1;
        self.entries.release(idx);
        self.stale = true;
        (key, flow)
    }

    /// Rebuilds the index after [`FlowStore::take`].
    pub fn ensure_indexed(&mut self) {
        if !self.stale {
            return;
        }
        self.slots.fill(0);
        let mask = self.mask();
        let words: Vec<u64> = self
            .iter()
            .map(|(i, e)| (self.hash(&e.key) >> 32) << 32 | (i as u64 + 1))
            .collect();
        for w in words {
            let mut at = self.home(w);
            while self.slots[at] != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = w;
        }
        self.stale = false;
    }

    /// Empties `slot`, shifting later words of its probe run back so every
    /// word stays reachable from its home slot (no tombstones).
    fn unlink(&mut self, slot: usize) {
        let mask = self.mask();
        let mut hole = slot;
        let mut at = slot;
        loop {
            at = (at + 1) & mask;
            let w = self.slots[at];
            if w == 0 {
                break;
            }
            let home = self.home(w);
            if at.wrapping_sub(home) & mask >= at.wrapping_sub(hole) & mask {
                self.slots[hole] = w;
                hole = at;
            }
        }
        self.slots[hole] = 0;
    }

    fn grow(&mut self) {
        let mut bigger = vec![0; self.slots.len() * 2];
        crate::prefault::prefault(&mut bigger);
        let old = std::mem::replace(&mut self.slots, bigger);
        let mask = self.mask();
        for w in old.into_iter().filter(|w| *w != 0) {
            let mut at = self.home(w);
            while self.slots[at] != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = w;
        }
    }

    /// Live entries with their numbers, in slab order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries.slots().filter(|(_, e)| e.flow.is_live())
    }

    /// Drops every entry and gives the memory back.
    pub fn clear(&mut self) {
        *self = FlowStore {
            seed: self.seed,
            ..FlowStore::new()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey::new(
            0,
            6,
            IpAddr::from(i.to_be_bytes()),
            1000,
            IpAddr::from([10, 0, 0, 1]),
            502,
        )
        .0
    }

    fn flow(n: u32) -> Flow {
        let mut f = Flow::new(true, n as i64);
        f.a2b.packets = n;
        f
    }

    #[test]
    fn insert_find_remove_across_growth_and_reuse() {
        let mut s = FlowStore::new();
        let mut idx = Vec::new();
        for i in 0..20_000u32 {
            let k = key(i);
            let h = s.hash(&k);
            assert_eq!(s.find(&k, h), None);
            idx.push(s.insert(k, h, flow(i)));
        }
        assert_eq!(s.len(), 20_000);
        // Remove every third, in an order that exercises back-shifting.
        for i in (0..20_000u32).step_by(3) {
            let (k, f) = s.remove(idx[i as usize]);
            assert_eq!(k, key(i));
            assert_eq!({ f.a2b.packets }, i);
        }
        for i in 0..20_000u32 {
            let k = key(i);
            let found = s.find(&k, s.hash(&k));
            if i % 3 == 0 {
                assert_eq!(found, None, "{i}");
            } else {
                let e = s.get(found.expect("present"));
                assert_eq!(e.key, k);
                assert_eq!({ e.flow.a2b.packets }, i);
            }
        }
        // Freed slots are reused before the slab grows.
        let chunks = s.entries.chunks();
        for i in 20_000..26_000u32 {
            let k = key(i);
            let h = s.hash(&k);
            s.insert(k, h, flow(i));
        }
        assert_eq!(s.entries.chunks(), chunks);
        assert_eq!(s.iter().count(), s.len());
        assert_eq!(s.len(), 20_000 - 6_667 + 6_000);
    }

    #[test]
    fn taken_entries_leave_the_index_consistent_after_rebuild() {
        let mut s = FlowStore::new();
        let idx: Vec<u32> = (0..5000u32)
            .map(|i| {
                let k = key(i);
                let h = s.hash(&k);
                s.insert(k, h, flow(i))
            })
            .collect();
        for i in (0..5000).filter(|i| i % 2 == 0) {
            let (k, _) = s.take(idx[i]);
            assert_eq!(k, key(i as u32));
        }
        s.ensure_indexed();
        assert_eq!(s.len(), 2500);
        for i in 0..5000u32 {
            let k = key(i);
            assert_eq!(s.find(&k, s.hash(&k)).is_some(), i % 2 == 1, "{i}");
        }
        // A re-inserted key is found once, in a reused slot.
        let k = key(0);
        let h = s.hash(&k);
        let at = s.insert(k, h, flow(7));
        assert!(idx.contains(&at));
        assert_eq!(s.find(&k, h), Some(at));
    }

    #[test]
    fn canonical_order_is_the_same_both_ways() {
        let c = IpAddr::from([10, 0, 0, 9]);
        let srv = IpAddr::from([10, 0, 0, 1]);
        let (k1, a1) = FlowKey::new(5, 6, c, 40000, srv, 502);
        let (k2, a2) = FlowKey::new(5, 6, srv, 502, c, 40000);
        assert_eq!(k1, k2);
        assert_ne!(a1, a2);
        assert_eq!(k1.ip(true), vec![10, 0, 0, 1]);
        assert_eq!(
            (k1.a_port(), k1.b_port(), k1.vlan(), k1.proto()),
            (502, 40000, 5, 6)
        );
        let v6 = IpAddr::from([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let (k3, _) = FlowKey::new(0, 17, v6, 1, v6, 2);
        assert_eq!(k3.ip(false).len(), 16);
    }
}
