//! Hybrid logical clock.
//!
//! A timestamp is a `u64`: the upper 48 bits are wall-clock milliseconds since the
//! Unix epoch, the lower 16 bits a logical counter. Timestamps handed out by one
//! clock strictly increase, even when the wall clock steps backwards, and stay
//! close to the wall clock, so that "the highest version wins" agrees with "the
//! latest write wins" whenever clocks are reasonably synchronised.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Builds a timestamp from its parts.
pub const fn pack(physical_ms: u64, logical: u16) -> u64 {
    (physical_ms << LOGICAL_BITS) | logical as u64
}

/// The wall-clock milliseconds of a timestamp.
pub const fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The logical counter of a timestamp.
pub const fn logical(ts: u64) -> u16 {
    (ts & LOGICAL_MASK) as u16
}

/// A hybrid logical clock shared by every task of a node.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

/// A remote timestamp that is further ahead of our wall clock than we tolerate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("remote clock is {ahead_ms} ms ahead of ours (tolerated: {max_ms} ms)")]
pub struct ClockSkew {
    pub ahead_ms: u64,
    pub max_ms: u64,
}

impl Hlc {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new timestamp, greater than every timestamp this clock produced or observed.
    pub fn now(&self) -> u64 {
        self.tick(now_ms())
    }

    fn tick(&self, wall_ms: u64) -> u64 {
        let wall = pack(wall_ms, 0);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = if wall > last { wall } else { last + 1 };
            match self.last.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }

    /// Merges a timestamp seen on a remote write, so that later local timestamps
    /// order after it. A timestamp more than `max_ahead_ms` ahead of our wall clock
    /// is refused (and not merged): trusting it would let one bad clock push every
    /// future version of the fleet into the future.
    pub fn observe(&self, remote: u64, max_ahead_ms: u64) -> Result<(), ClockSkew> {
        self.observe_at(remote, max_ahead_ms, now_ms())
    }

    fn observe_at(&self, remote: u64, max_ahead_ms: u64, wall_ms: u64) -> Result<(), ClockSkew> {
        let remote_ms = physical_ms(remote);
        if remote_ms > wall_ms.saturating_add(max_ahead_ms) {
            return Err(ClockSkew { ahead_ms: remote_ms - wall_ms, max_ms: max_ahead_ms });
        }
        self.last.fetch_max(remote, Ordering::AcqRel);
        Ok(())
    }

    /// Raises the clock to at least `ts` (used after recovery from disk).
    pub fn advance_to(&self, ts: u64) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_strictly_increase_even_when_the_wall_clock_stands_still() {
        let clock = Hlc::new();
        let a = clock.tick(1_000);
        let b = clock.tick(1_000);
        let c = clock.tick(1_000);
        assert!(a < b && b < c);
        assert_eq!(physical_ms(c), 1_000);
        assert_eq!(logical(c), 2);
    }

    #[test]
    fn timestamps_strictly_increase_when_the_wall_clock_steps_back() {
        let clock = Hlc::new();
        let a = clock.tick(5_000);
        let b = clock.tick(4_000);
        assert!(b > a);
        assert_eq!(physical_ms(b), 5_000);
    }

    #[test]
    fn the_clock_follows_the_wall_clock_when_it_moves_forward() {
        let clock = Hlc::new();
        clock.tick(1_000);
        let b = clock.tick(2_000);
        assert_eq!(b, pack(2_000, 0));
    }

    #[test]
    fn an_observed_remote_timestamp_orders_later_local_ones_after_it() {
        let clock = Hlc::new();
        clock.tick(1_000);
        clock.observe_at(pack(1_200, 7), 500, 1_000).unwrap();
        let next = clock.tick(1_001);
        assert!(next > pack(1_200, 7));
    }

    #[test]
    fn a_remote_timestamp_too_far_ahead_is_refused_and_not_merged() {
        let clock = Hlc::new();
        let before = clock.tick(1_000);
        let err = clock.observe_at(pack(10_000, 0), 500, 1_000).unwrap_err();
        assert_eq!(err.ahead_ms, 9_000);
        assert_eq!(clock.tick(1_000), before + 1);
    }

    #[test]
    fn concurrent_callers_never_get_the_same_timestamp() {
        let clock = std::sync::Arc::new(Hlc::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..10_000).map(|_| clock.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
