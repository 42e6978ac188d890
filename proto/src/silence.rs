//! Noticing a silent peer without reading the clock for every frame.
//!
//! Both ends close a connection on which nothing has arrived for [`SILENT_INTERVALS`]
//! heartbeat intervals. Reading the clock per frame to know when the last one arrived
//! would cost a busy connection a clock read per frame; instead, the reader marks that it heard
//! something ([`Silence::heard`], a plain store) and a timer ticking once per interval
//! asks [`Silence::tick`] whether a whole run of intervals went by unheard.

/// Heartbeat intervals without a frame after which a peer is considered gone.
pub const SILENT_INTERVALS: u32 = 3;

/// Counts heartbeat ticks since something last arrived.
///
/// ```
/// let mut s = rtc_proto::silence::Silence::default();
/// s.heard();
/// assert!(!s.tick()); // heard since the last tick
/// assert!(!s.tick());
/// assert!(!s.tick());
/// assert!(s.tick()); // three whole intervals unheard
/// ```
#[derive(Debug, Default, Clone)]
pub struct Silence {
    heard: bool,
    quiet_ticks: u32,
}

impl Silence {
    /// Records that a frame arrived.
    #[inline]
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// Call once per heartbeat interval; `true` once [`SILENT_INTERVALS`] ticks in a row
    /// found nothing heard since the tick before: the peer has then been silent for at
    /// least that many whole intervals (and less than one more).
    pub fn tick(&mut self) -> bool {
        if std::mem::take(&mut self.heard) {
            self.quiet_ticks = 0;
            return false;
        }
        self.quiet_ticks += 1;
        self.quiet_ticks >= SILENT_INTERVALS
    }

    /// Whether the last tick found nothing heard during its interval (the connection is
    /// idle: a moment to give back buffers a burst made grow).
    pub fn is_quiet(&self) -> bool {
        self.quiet_ticks > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_only_after_whole_intervals_unheard() {
        let mut s = Silence::default();
        // A new connection that sends nothing: silent at the third tick.
        for _ in 1..SILENT_INTERVALS {
            assert!(!s.tick());
        }
        assert!(s.tick());
        // Anything heard restarts the count: the tick after it, then three unheard.
        assert!(s.is_quiet());
        s.heard();
        assert!(!s.tick());
        assert!(!s.is_quiet());
        for _ in 1..SILENT_INTERVALS {
            assert!(!s.tick());
            assert!(s.is_quiet());
        }
        assert!(s.tick());
    }
}
