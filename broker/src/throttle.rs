//! Rate limits as token buckets: the per-connection publish rate (sessions, HTTP
//! publish) and presence updates per member. For publishes, a bucket of `publish_burst`
//! tokens refilled at `publish_rate` per second. A publish takes a token; when none is left the
//! session waits until one has accrued before handling it — so an over-eager publisher is
//! slowed down by TCP backpressure, and nothing it sent is dropped. The client is told
//! with `Error{RATE_LIMITED}`, at most once a second.

use std::time::Duration;

use tokio::time::Instant;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    last_told: Option<Instant>,
}

/// How often the client is told that it is being slowed down.
const TELL_EVERY: Duration = Duration::from_secs(1);

impl Throttle {
    /// `None` when `rate` is 0 (no limit).
    pub(crate) fn new(rate: u32, burst: u32) -> Option<Throttle> {
        (rate > 0).then(|| Throttle {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
            last_told: None,
        })
    }

    /// Adds the tokens accrued since the last call; returns now.
    fn refill(&mut self) -> Instant {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now.max(self.last);
        now
    }

    /// Takes a token if one is there; otherwise how long until one is, taking nothing
    /// (for a request that is refused rather than slowed: an HTTP publish).
    pub(crate) fn try_take(&mut self) -> Result<(), Duration> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    /// Takes a token. Returns how long to wait first, if any, and whether the client
    /// should be told now.
    pub(crate) fn take(&mut self) -> Option<(Duration, bool)> {
        let now = self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        // The token that accrues while waiting is the one this publish uses.
        self.tokens = 0.0;
        self.last = now + wait;
        let tell = self
            .last_told
            .is_none_or(|t| now.duration_since(t) >= TELL_EVERY);
        if tell {
            self.last_told = Some(now);
        }
        Some((wait, tell))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_the_rate() {
        let mut t = Throttle::new(10, 3).unwrap();
        for _ in 0..3 {
            assert!(t.take().is_none(), "the burst passes at once");
        }
        let (wait, tell) = t.take().unwrap();
        assert!(tell);
        assert!((wait.as_secs_f64() - 0.1).abs() < 0.01, "{wait:?}");
        tokio::time::sleep(wait).await;
        let (wait2, tell2) = t.take().unwrap();
        assert!(!tell2, "told at most once a second");
        assert!((wait2.as_secs_f64() - 0.1).abs() < 0.01, "{wait2:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..3 {
            assert!(t.take().is_none(), "refilled to the burst, not beyond");
        }
        assert!(t.take().is_some());
        assert!(Throttle::new(0, 10).is_none());
    }
}
