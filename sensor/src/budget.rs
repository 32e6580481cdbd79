//! The daily byte budget of the uplink (metered satellite links).
//!
//! The budget counts batch payload bytes put on the link per UTC day
//! (resends included: they cost the same) and is a hard cap: a resend that
//! does not fit in what is left waits for the next day, as a first send
//! does (see `Uplink`). A batch is handed to the uplink
//! only if it fits in what is left today (counting batches already handed
//! over but not yet sent, which are booked as reserved); classes are tried in priority
//! order (sensor status and assets, then OT-write flows, then bulk flows),
//! and bulk flows may use only the budget minus a reserve, so that status,
//! assets and OT writes still get through late in the day. What does not
//! fit waits in the disk buffer for the next day. Usage survives restarts
//! (`STATE_DIR/budget`), so a reboot does not grant a fresh allowance.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::batch::Priority;
use tidewatch_proto::state_file::{self, Durability};

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budget state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid budget: {0}")]
    Config(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Bytes per period; 0 = no budget.
    pub daily_bytes: u64,
    /// Share of the budget (0..=90 percent) bulk flows may not use.
    pub reserve_percent: u8,
    /// Length of a budget period: a UTC day (tests compress it).
    pub period: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            daily_bytes: 0,
            reserve_percent: 10,
            period: Duration::from_secs(86_400),
        }
    }
}

#[derive(Debug)]
pub struct DailyBudget {
    cfg: BudgetConfig,
    path: PathBuf,
    /// Index of the current period since the epoch.
    period_idx: u64,
    used: u64,
    /// Bytes of batches handed to the uplink but not yet on the link.
    reserved: u64,
    /// Usage not yet written to the state file.
    dirty: bool,
    last_persist: Option<std::time::Instant>,
}

fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl DailyBudget {
    /// Loads today's usage from `state_dir/budget` (if it is from today).
    pub fn open(state_dir: &Path, cfg: BudgetConfig) -> Result<Self, BudgetError> {
        if cfg.reserve_percent > 90 {
            return Err(BudgetError::Config(format!(
                "reserve of {}% leaves too little for bulk flows (at most 90%)",
                cfg.reserve_percent
            )));
        }
        if cfg.period.is_zero() {
            return Err(BudgetError::Config("budget period must be positive".into()));
        }
        let path = state_dir.join("budget");
        let mut b = DailyBudget {
            cfg,
            path,
            period_idx: 0,
            used: 0,
            reserved: 0,
            dirty: false,
            last_persist: None,
        };
        b.period_idx = b.index_at(now_secs_f64());
        match fs::read_to_string(&b.path) {
            Ok(s) => {
                let mut it = s.split_whitespace().map(str::parse::<u64>);
                if let (Some(Ok(idx)), Some(Ok(used))) = (it.next(), it.next()) {
                    if idx == b.period_idx {
                        b.used = used;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BudgetError::Io {
                    path: b.path.clone(),
                    source: e,
                })
            }
        }
        Ok(b)
    }

    fn index_at(&self, secs: f64) -> u64 {
        (secs / self.cfg.period.as_secs_f64()).floor().max(0.0) as u64
    }

    /// Starts a new period if the clock has moved into one.
    fn roll(&mut self) {
        let idx = self.index_at(now_secs_f64());
        if idx != self.period_idx {
            self.period_idx = idx;
            self.used = 0;
            self.dirty = true;
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.daily_bytes > 0
    }

    pub fn limit(&self) -> u64 {
        self.cfg.daily_bytes
    }

    /// Bytes sent in the current period.
    pub fn used(&mut self) -> u64 {
        self.roll();
        self.used
    }

    /// What `class` may use of the period's budget.
    fn allowance(&self, class: Priority) -> u64 {
        match class {
            Priority::Bulk => {
                self.cfg.daily_bytes - self.cfg.daily_bytes * self.cfg.reserve_percent as u64 / 100
            }
            _ => self.cfg.daily_bytes,
        }
    }

    /// Whether `bytes` of `class` may be handed to the uplink now.
    pub fn allows(&mut self, class: Priority, bytes: u64) -> bool {
        if !self.enabled() {
            return true;
        }
        self.roll();
        self.used + self.reserved + bytes <= self.allowance(class)
    }

    /// Books `bytes` handed to the uplink and not yet sent.
    pub fn reserve(&mut self, bytes: u64) {
        self.reserved += bytes;
    }

    /// A batch that reserved `reserved` bytes went on the link as `sent`
    /// bytes (fewer when linked to the stream's table).
    pub fn commit(&mut self, reserved: u64, sent: u64) {
        self.reserved = self.reserved.saturating_sub(reserved);
        self.charge(sent);
    }

    /// Accounts `bytes` as sent (resends, or anything not reserved).
    pub fn charge(&mut self, bytes: u64) {
        self.roll();
        self.used += bytes;
        self.dirty = true;
    }

    /// Time until the next period starts.
    pub fn until_next_period(&self) -> Duration {
        let p = self.cfg.period.as_secs_f64();
        let now = now_secs_f64();
        let next = ((now / p).floor() + 1.0) * p;
        Duration::from_secs_f64((next - now).max(0.0))
    }

    /// Writes the period's usage if it changed and the last write is more
    /// than a second old (a crash forgets at most a second of use).
    pub fn persist_if_due(&mut self) -> Result<(), BudgetError> {
        if self
            .last_persist
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.persist()
    }

    /// Writes the period's usage (atomically) if it changed.
    pub fn persist(&mut self) -> Result<(), BudgetError> {
        if !self.dirty {
            return Ok(());
        }
        self.last_persist = Some(std::time::Instant::now());
        let io = |source| BudgetError::Io {
            path: self.path.clone(),
            source,
        };
        // Atomic, not synced: a power loss forgets at most the last
        // second's use, as a crash does.
        let line = format!("{} {}\n", self.period_idx, self.used);
        state_file::replace(&self.path, line.as_bytes(), Durability::Atomic).map_err(io)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(bytes: u64, period: Duration) -> BudgetConfig {
        BudgetConfig {
            daily_bytes: bytes,
            reserve_percent: 20,
            period,
        }
    }

    #[test]
    fn bulk_stops_at_the_reserve_and_the_rest_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DailyBudget::open(dir.path(), cfg(1000, Duration::from_secs(86_400))).unwrap();
        assert!(b.allows(Priority::Bulk, 800));
        b.reserve(700);
        assert!(!b.allows(Priority::Control, 301), "reserved bytes count");
        b.commit(700, 700);
        assert_eq!(b.used(), 700);
        assert!(!b.allows(Priority::Bulk, 101), "bulk may use 80% only");
        assert!(b.allows(Priority::Bulk, 100));
        assert!(b.allows(Priority::OtWrite, 300));
        assert!(!b.allows(Priority::Control, 301));
        b.charge(300);
        assert!(!b.allows(Priority::Control, 1));
        assert_eq!(b.used(), 1000);
    }

    #[test]
    fn a_batch_sent_smaller_than_it_reserved_releases_the_rest() {
        // Linked to its stream's table, a batch goes out smaller than
        // sealed: the whole reservation is released, the bytes sent used.
        let dir = tempfile::tempdir().unwrap();
        let mut b = DailyBudget::open(dir.path(), cfg(1000, Duration::from_secs(86_400))).unwrap();
        b.reserve(900);
        assert!(!b.allows(Priority::Control, 101));
        b.commit(900, 400);
        assert_eq!(b.used(), 400);
        assert!(b.allows(Priority::Control, 600));
        assert!(!b.allows(Priority::Control, 601));
    }

    #[test]
    fn usage_survives_a_restart_within_the_period_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DailyBudget::open(dir.path(), cfg(1000, Duration::from_secs(86_400))).unwrap();
        b.charge(600);
        b.persist().unwrap();
        drop(b);
        let mut b = DailyBudget::open(dir.path(), cfg(1000, Duration::from_secs(86_400))).unwrap();
        assert_eq!(b.used(), 600);
        // A state file from another period does not count.
        fs::write(dir.path().join("budget"), "3 999\n").unwrap();
        let mut b = DailyBudget::open(dir.path(), cfg(1000, Duration::from_secs(86_400))).unwrap();
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_new_period_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DailyBudget::open(dir.path(), cfg(100, Duration::from_millis(300))).unwrap();
        b.charge(100);
        assert!(!b.allows(Priority::Control, 1));
        let wait = b.until_next_period();
        assert!(wait <= Duration::from_millis(300));
        std::thread::sleep(wait + Duration::from_millis(20));
        assert!(b.allows(Priority::Control, 100));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn no_budget_allows_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DailyBudget::open(dir.path(), BudgetConfig::default()).unwrap();
        assert!(b.allows(Priority::Bulk, u64::MAX / 2));
        assert!(DailyBudget::open(
            dir.path(),
            BudgetConfig {
                reserve_percent: 95,
                ..BudgetConfig::default()
            }
        )
        .is_err());
    }
}
