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

/// A clock comparison with a peer from one round trip: we sent at `sent_ms` (our wall
/// clock), the peer answered at `remote_ms` (its wall clock), we received at
/// `received_ms` (ours). The peer's answer happened somewhere within the round trip, so
/// its clock is ahead of ours by `offset_ms`, give or take `rtt_ms / 2`. A frame that
/// waited — in a paused process, a stalled link — lengthens the round trip and widens the
/// bound; it is never mistaken for skew, as a one-way timestamp would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    pub rtt_ms: u64,
    /// Peer minus us at the middle of the round trip.
    pub offset_ms: i64,
}

impl RoundTrip {
    /// `None` when our wall clock stepped back during the round trip.
    pub fn measure(sent_ms: u64, remote_ms: u64, received_ms: u64) -> Option<RoundTrip> {
        let rtt_ms = received_ms.checked_sub(sent_ms)?;
        let middle = sent_ms + rtt_ms / 2;
        Some(RoundTrip { rtt_ms, offset_ms: remote_ms as i64 - middle as i64 })
    }

    /// Whether the peer's clock is beyond `max_ms` of ours: `Some(true)` when it is
    /// whatever the delays were, `Some(false)` when it is within whatever they were, and
    /// `None` when the round trip was too long to tell.
    pub fn beyond(&self, max_ms: u64) -> Option<bool> {
        let error = self.rtt_ms.div_ceil(2);
        let off = self.offset_ms.unsigned_abs();
        if off > max_ms.saturating_add(error) {
            Some(true)
        } else if off.saturating_add(error) <= max_ms {
            Some(false)
        } else {
            None
        }
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
    fn a_round_trip_measures_a_peer_clock_ahead_of_ours() {
        let rt = RoundTrip::measure(10_000, 20_040, 10_080).unwrap();
        assert_eq!(rt, RoundTrip { rtt_ms: 80, offset_ms: 10_000 });
        assert_eq!(rt.beyond(500), Some(true));
        let behind = RoundTrip::measure(10_000, 40, 10_080).unwrap();
        assert_eq!(behind.offset_ms, -10_000);
        assert_eq!(behind.beyond(500), Some(true));
    }

    #[test]
    fn synchronised_clocks_are_within_the_bound() {
        let rt = RoundTrip::measure(10_000, 10_045, 10_080).unwrap();
        assert_eq!(rt.beyond(500), Some(false));
    }

    #[test]
    fn an_answer_delayed_by_a_pause_is_not_taken_for_skew() {
        // We were paused 5 s after sending: the answer, made at once, is read 5 s late.
        let we_paused = RoundTrip::measure(10_000, 10_010, 15_000).unwrap();
        assert_ne!(we_paused.beyond(500), Some(true), "{we_paused:?}");
        // The peer was paused 5 s before answering: its answer is stamped 5 s late.
        let it_paused = RoundTrip::measure(10_000, 15_000, 15_010).unwrap();
        assert_ne!(it_paused.beyond(500), Some(true), "{it_paused:?}");
    }

    #[test]
    fn a_wall_clock_stepping_back_during_a_round_trip_measures_nothing() {
        assert_eq!(RoundTrip::measure(10_000, 10_000, 9_000), None);
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
