//! Notices when this node itself stopped running — SIGSTOP, a paused VM or container, a
//! process starved of CPU — so that peers' silence during that time is not taken for
//! theirs. Without it, a node resumed after a pause longer than the peer timeout counts
//! every peer down (their last frames are old, and the links' read deadlines passed
//! while it was stopped), and an `ack=region|global` write taken right after the resume
//! would be confirmed without peers that were up all along.
//!
//! Time is `Instant` (monotonic), which keeps running while the process is stopped: a
//! gap between two observations longer than `gap` is a pause. Observations come from a
//! ticker (the peer manager, every 250 ms) and from every judgment of a peer's liveness,
//! so a request served right after the resume, before the ticker runs, sees it too.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The last pause: when this node was last seen running before it, and when after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub stopped: Instant,
    pub resumed: Instant,
}

impl Pause {
    pub fn length(&self) -> Duration {
        self.resumed.saturating_duration_since(self.stopped)
    }
}

#[derive(Debug)]
pub struct PauseDetector {
    gap: Duration,
    /// The last observation (none yet), and the last pause.
    state: Mutex<(Option<Instant>, Option<Pause>)>,
}

impl PauseDetector {
    /// A gap longer than `gap` between observations is a pause. The first observation
    /// starts the watch (a slow start, a long recovery from disk, is no pause).
    pub fn new(gap: Duration) -> Self {
        PauseDetector { gap, state: Mutex::new((None, None)) }
    }

    /// Records that this node runs at `now`; gives the last pause (a new one when the
    /// previous observation is more than `gap` ago).
    pub fn observe(&self, now: Instant) -> Option<Pause> {
        let mut s = self.state.lock();
        let (last, pause) = &mut *s;
        if let Some(last) = *last
            && now.saturating_duration_since(last) > self.gap
        {
            let p = Pause { stopped: last, resumed: now };
            tracing::warn!(
                paused_ms = p.length().as_millis() as u64,
                "this node was not running (stopped, paused or starved): peers' silence meanwhile is not held against them"
            );
            *pause = Some(p);
        }
        if last.is_none_or(|l| now > l) {
            *last = Some(now);
        }
        *pause
    }

    /// Whether a peer last heard at `last_seen` is still given the benefit of the doubt
    /// at `now`: it was up when this node stopped, and this node resumed less than
    /// `timeout` ago (the peer has that long to be heard again, as after a start).
    pub fn excuses(pause: Option<Pause>, last_seen: Option<Instant>, now: Instant, timeout: Duration) -> bool {
        let Some(p) = pause else { return false };
        let Some(seen) = last_seen else { return false };
        now.saturating_duration_since(p.resumed) <= timeout && p.stopped.saturating_duration_since(seen) <= timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_gap_longer_than_the_threshold_is_a_pause_and_short_ones_are_not() {
        let t0 = Instant::now();
        let d = PauseDetector::new(SEC);
        assert_eq!(d.observe(t0), None, "the first observation starts the watch");
        assert_eq!(d.observe(t0 + SEC / 4), None);
        assert_eq!(d.observe(t0 + SEC), None, "three quarters of a second between observations");
        let p = d.observe(t0 + 5 * SEC).expect("four seconds without running");
        assert_eq!((p.stopped, p.resumed), (t0 + SEC, t0 + 5 * SEC));
        assert_eq!(d.observe(t0 + 5 * SEC + SEC / 4), Some(p), "the last pause is remembered");
        // An observation from a caller that took `now` a little earlier changes nothing.
        assert_eq!(d.observe(t0 + 5 * SEC), Some(p));
    }

    #[test]
    fn a_peer_up_before_the_pause_is_excused_for_one_timeout_after_the_resume() {
        let t0 = Instant::now();
        let timeout = 2 * SEC;
        let pause = Some(Pause { stopped: t0 + 10 * SEC, resumed: t0 + 14 * SEC });
        let seen_before = Some(t0 + 9 * SEC);
        assert!(PauseDetector::excuses(pause, seen_before, t0 + 14 * SEC, timeout));
        assert!(PauseDetector::excuses(pause, seen_before, t0 + 16 * SEC, timeout));
        assert!(!PauseDetector::excuses(pause, seen_before, t0 + 16 * SEC + SEC / 10, timeout), "grace over");
        assert!(!PauseDetector::excuses(pause, Some(t0 + 7 * SEC), t0 + 14 * SEC, timeout), "already silent before");
        assert!(!PauseDetector::excuses(pause, None, t0 + 14 * SEC, timeout), "never heard");
        assert!(!PauseDetector::excuses(None, seen_before, t0 + 14 * SEC, timeout), "no pause");
    }
}
