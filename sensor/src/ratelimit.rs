//! Token-bucket limit on the bytes the uplink puts on the link per second,
//! so a sensor never saturates a narrow satellite channel shared with the
//! ship's other traffic.

use std::time::{Duration, Instant};

/// Refills `rate` bytes per second up to a burst of one second's worth (or
/// the largest single send, whichever is larger).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        TokenBucket {
            rate: bytes_per_sec as f64,
            tokens: bytes_per_sec as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, cap: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(cap);
        self.last = now;
    }

    /// How long to wait before `bytes` may be sent at `now`; the bytes are
    /// accounted as sent once that wait is over.
    pub fn reserve(&mut self, bytes: usize, now: Instant) -> Duration {
        let cap = self.rate.max(bytes as f64);
        self.refill(now, cap);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_is_the_limit() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        let mut now = t0;
        // Send 100 chunks of 500 bytes as fast as the bucket allows.
        for _ in 0..100 {
            now += b.reserve(500, now);
        }
        // 50 000 bytes at 1000 B/s with a 1000-byte initial burst: 49 s.
        let elapsed = now - t0;
        assert!((elapsed.as_secs_f64() - 49.0).abs() < 0.01, "{elapsed:?}");
    }

    #[test]
    fn idle_time_refills_up_to_one_second_of_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(b.reserve(1000, t0), Duration::ZERO);
        // After a long pause only one second's worth is available again.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve(1000, later), Duration::ZERO);
        assert_eq!(b.reserve(500, later), Duration::from_millis(500));
        // A single send larger than the rate is allowed as one burst.
        let mut big = TokenBucket::new(100, t0);
        assert_eq!(big.reserve(100, t0), Duration::ZERO);
        assert_eq!(
            big.reserve(1000, t0 + Duration::from_secs(100)),
            Duration::ZERO
        );
    }
}
