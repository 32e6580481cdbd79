//! The sink's memory of which (sensor, seq) batches it has already stored,
//! so a batch delivered twice by Kafka is normally not inserted twice. This is
//! an optimisation on top of the schema's guarantee (ReplacingMergeTree +
//! FINAL views), not the guarantee itself: after a crash between insert and
//! ledger write, a batch may be inserted again and is collapsed by the schema.
//!
//! Per sensor, the most recent `capacity` seqs are remembered; on the first
//! sight of a sensor since start, they are loaded from the `batches` ledger.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug)]
pub struct SeenBatches {
    capacity: usize,
    sensors: HashMap<String, BTreeSet<u64>>,
}

impl SeenBatches {
    pub fn new(capacity: usize) -> Self {
        SeenBatches {
            capacity: capacity.max(1),
            sensors: HashMap::new(),
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

    pub fn contains(&self, sensor: &str, seq: u64) -> bool {
        self.sensors.get(sensor).is_some_and(|s| s.contains(&seq))
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
}
