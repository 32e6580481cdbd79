//! The sink's memory of which (sensor, seq) batches it has already stored,
//! so a batch delivered twice by Kafka is normally not inserted twice. This is
//! an optimisation on top of the schema's guarantee (ReplacingMergeTree +
//! FINAL views), not the guarantee itself: after a crash between insert and
//! ledger write, a batch may be inserted again and is collapsed by the schema.
//!
//! Per sensor, the most recent `capacity` seqs are remembered; on the first
//! sight of a sensor since start, they are loaded from the `batches` ledger.
//! Batches of the chunk being stored (the collector consumes the next chunk
//! meanwhile) count as seen from the moment they are handed to the store.

use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Debug)]
pub struct SeenBatches {
    capacity: usize,
    sensors: HashMap<String, BTreeSet<u64>>,
    /// Handed to the store, not yet committed.
    storing: HashSet<(String, u64)>,
}

impl SeenBatches {
    pub fn new(capacity: usize) -> Self {
        SeenBatches {
            capacity: capacity.max(1),
            sensors: HashMap::new(),
            storing: HashSet::new(),
        }
    }

    /// Whether seqs of this sensor were loaded (or recorded) already.
    pub fn knows_sensor(&self, sensor: &str) -> bool {
        self.sensors.contains_key(sensor)
    }

    /// Installs seqs loaded from the ledger.
    pub fn load(&mut self, sensor: &str, seqs: impl IntoIterator<Item = u64>) {
        let set = self.sensors.entry(sensor.to_string()).or_default();
        set.extend(seqs);
        Self::trim(set, self.capacity);
    }

    /// Whether the batch is stored, or being stored.
    pub fn contains(&self, sensor: &str, seq: u64) -> bool {
        self.sensors.get(sensor).is_some_and(|s| s.contains(&seq))
            || (!self.storing.is_empty() && self.storing.contains(&(sensor.to_string(), seq)))
    }

    /// Batches handed to the store.
    pub fn storing<'a>(&mut self, batches: impl IntoIterator<Item = &'a (String, u64)>) {
        self.storing.extend(batches.into_iter().cloned());
    }

    /// Batches the store committed (handed to it before).
    pub fn stored(&mut self, batches: impl IntoIterator<Item = (String, u64)>) {
        for (sensor, seq) in batches {
            self.insert(&sensor, seq);
            self.storing.remove(&(sensor, seq));
        }
    }

    pub fn insert(&mut self, sensor: &str, seq: u64) {
        let cap = self.capacity;
        let set = self.sensors.entry(sensor.to_string()).or_default();
        set.insert(seq);
        Self::trim(set, cap);
    }

    fn trim(set: &mut BTreeSet<u64>, cap: usize) {
        while set.len() > cap {
            set.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_seqs_per_sensor() {
        let mut s = SeenBatches::new(3);
        assert!(!s.knows_sensor("a"));
        s.load("a", [1, 2]);
        assert!(s.knows_sensor("a"));
        s.insert("a", 5);
        s.insert("a", 6);
        assert!(!s.contains("a", 1), "oldest forgotten beyond capacity");
        assert!(s.contains("a", 2) && s.contains("a", 6));
        assert!(!s.contains("b", 2));
    }

    #[test]
    fn a_batch_being_stored_counts_as_seen_until_and_after_its_commit() {
        let mut s = SeenBatches::new(3);
        s.load("a", []);
        let chunk = [("a".to_string(), 7), ("b".to_string(), 1)];
        s.storing(&chunk);
        assert!(s.contains("a", 7) && s.contains("b", 1));
        assert!(!s.contains("a", 8));
        s.stored(chunk);
        assert!(s.contains("a", 7) && s.contains("b", 1));
        assert!(s.storing.is_empty());
        // Past capacity, a committed batch is forgotten like any other.
        s.stored([8, 9, 10].map(|q| ("a".to_string(), q)));
        assert!(!s.contains("a", 7));
    }
}
