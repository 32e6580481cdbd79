//! A slab: numbered slots in fixed-size chunks that never move, with freed
//! slots reused first (LIFO). The flow table keeps its flows in one and the
//! operation summaries in another: growing never copies what is stored (no
//! peak of old and new storage at once), and a slot number (4 bytes) stands
//! in for a pointer.

use crate::prefault::prefault;

/// Slots in chunks of `1 << BITS`.
pub struct Slab<T, const BITS: u32> {
    chunks: Vec<Vec<T>>,
    free: Vec<u32>,
}

impl<T, const BITS: u32> Default for Slab<T, BITS> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T, const BITS: u32> Slab<T, BITS> {
    const CHUNK: usize = 1 << BITS;

    #[inline]
    pub fn get(&self, i: u32) -> &T {
        let i = i as usize;
        &self.chunks[i >> BITS][i & (Self::CHUNK - 1)]
    }

    #[inline]
    pub fn get_mut(&mut self, i: u32) -> &mut T {
        let i = i as usize;
        &mut self.chunks[i >> BITS][i & (Self::CHUNK - 1)]
    }

    /// Stores `value` in a freed slot, or a new one; returns its number. A
    /// new chunk is mapped in at once (it will be filled anyway).
    pub fn insert(&mut self, value: T) -> u32 {
        if let Some(i) = self.free.pop() {
            *self.get_mut(i) = value;
            return i;
        }
        if self.chunks.last().is_none_or(|c| c.len() == Self::CHUNK) {
            let mut chunk = Vec::with_capacity(Self::CHUNK);
            prefault(&mut chunk);
            self.chunks.push(chunk);
        }
        let full = (self.chunks.len() - 1) * Self::CHUNK;
        let last = self.chunks.last_mut().expect("pushed");
        let i = (full + last.len()) as u32;
        last.push(value);
        i
    }

    /// Marks slot `i` free for reuse; what it holds stays until then (the
    /// owner leaves a vacant value there).
    pub fn release(&mut self, i: u32) {
        self.free.push(i);
    }

    /// Every slot ever used, free or not, with its number.
    pub fn slots(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| (i as u32, v))
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum::<usize>() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Chunks allocated (for tests).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_numbered_across_chunks_and_reused_last_freed_first() {
        let mut s: Slab<u64, 3> = Slab::default();
        let idx: Vec<u32> = (0..20u64).map(|v| s.insert(v * 10)).collect();
        assert_eq!(idx, (0..20).collect::<Vec<u32>>());
        assert_eq!((s.chunks(), *s.get(17)), (3, 170));
        s.release(4);
        s.release(9);
        assert_eq!(s.len(), 18);
        assert_eq!(s.insert(1), 9);
        assert_eq!(s.insert(2), 4);
        assert_eq!(s.insert(3), 20);
        assert_eq!((*s.get(4), *s.get(9), *s.get(20)), (2, 1, 3));
        assert_eq!(s.slots().count(), 21);
    }
}
