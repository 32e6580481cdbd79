//! Counters of what each component did. Logged periodically and at shutdown;
//! the Prometheus endpoint builds on these.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Counters {
    pub batches_received: AtomicU64,
    pub batches_acked: AtomicU64,
    pub records_acked: AtomicU64,
    pub bytes_received: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    pub fn inc_refused(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .expect("counter lock")
            .entry(reason)
            .or_default() += 1;
    }

    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused.lock().expect("counter lock").clone()
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
