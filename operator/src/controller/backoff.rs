//! Retry delays after failed reconciles: base, 2×base, 4×base… up to a maximum, per object.
//!
//! A failure counts once per scheduled retry. Reconciles also run on watch events (the
//! operator's own status writes, changes of children), and while a member cluster is away
//! each of those fails too; counting them all would take the delay to its maximum within a
//! second, and the object would then recover minutes after the cluster came back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Backoff {
    base: Duration,
    max: Duration,
    /// Per object: failures counted so far, and when the scheduled retry is due.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, failures: Mutex::new(HashMap::new()) }
    }

    /// The delay before retrying `key` after a failure at `now`: the next step when the
    /// failure is the scheduled retry's (or the first), else what is left of the current one.
    pub fn next(&self, key: &str, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (attempt, due) = failures.entry(key.to_string()).or_insert((0, now));
        if now < *due {
            return *due - now;
        }
        let delay = self.base.saturating_mul(1u32 << (*attempt).min(16)).min(self.max);
        *attempt = attempt.saturating_add(1);
        *due = now + delay;
        delay
    }

    /// Forgets the failures of `key` after it reconciled successfully.
    pub fn reset(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn scheduled_retries_that_fail_double_the_delay_up_to_the_maximum() {
        let b = Backoff::new(5 * S, 60 * S);
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..6 {
            let d = b.next("ns/gc", now);
            delays.push(d.as_secs());
            now += d;
        }
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn failures_between_retries_do_not_raise_the_delay() {
        let b = Backoff::new(5 * S, 60 * S);
        let start = Instant::now();
        assert_eq!(b.next("ns/gc", start), 5 * S);
        // A storm of event-triggered failures in the same second.
        for ms in [10, 50, 300, 900] {
            let d = b.next("ns/gc", start + Duration::from_millis(ms));
            assert_eq!(d, 5 * S - Duration::from_millis(ms), "the retry stays where it was scheduled");
        }
        assert_eq!(b.next("ns/gc", start + 5 * S), 10 * S, "the scheduled retry's failure is the next step");
    }

    #[test]
    fn a_success_starts_over_and_objects_are_independent() {
        let b = Backoff::new(5 * S, 60 * S);
        let now = Instant::now();
        b.next("a", now);
        assert_eq!(b.next("a", now + 5 * S), 10 * S);
        assert_eq!(b.next("b", now + 5 * S), 5 * S);
        b.reset("a");
        assert_eq!(b.next("a", now + 6 * S), 5 * S);
    }
}
