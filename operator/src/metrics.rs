//! Prometheus metrics of the operator, kept as atomics and rendered in the text
//! exposition format (the same approach as the node's metrics).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::error::CATEGORIES;

/// Upper bounds of the reconcile duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: Vec<AtomicU64>,
    buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    leader: AtomicBool,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: AtomicU64::new(0),
            errors: CATEGORIES.iter().map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            duration_count: AtomicU64::new(0),
            duration_sum_micros: AtomicU64::new(0),
            leader: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        }
    }
}

/// Records a reconcile's duration when dropped, however the reconcile ends.
#[must_use = "the duration is recorded when the timer is dropped"]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.observe_duration(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned timer is dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        ReconcileTimer { metrics: self, start: Instant::now() }
    }

    /// Counts a failed reconcile under its [`crate::Error::category`].
    pub fn reconcile_failed(&self, category: &str) {
        if let Some(i) = CATEGORIES.iter().position(|c| *c == category) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn observe_duration(&self, secs: f64) {
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Marks the operator ready (it reached the API server).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP geocache_operator_reconciles_total Reconciles started.");
        let _ = writeln!(out, "# TYPE geocache_operator_reconciles_total counter");
        let _ = writeln!(out, "geocache_operator_reconciles_total {}", self.reconciles.load(Ordering::Relaxed));

        let _ = writeln!(out, "# HELP geocache_operator_reconcile_errors_total Failed reconciles by error category.");
        let _ = writeln!(out, "# TYPE geocache_operator_reconcile_errors_total counter");
        for (category, count) in CATEGORIES.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "geocache_operator_reconcile_errors_total{{category=\"{category}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        let _ = writeln!(out, "# HELP geocache_operator_reconcile_duration_seconds Time a reconcile took.");
        let _ = writeln!(out, "# TYPE geocache_operator_reconcile_duration_seconds histogram");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "geocache_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.duration_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "geocache_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.duration_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "geocache_operator_reconcile_duration_seconds_sum {sum}");
        let _ = writeln!(out, "geocache_operator_reconcile_duration_seconds_count {count}");

        let _ = writeln!(
            out,
            "# HELP geocache_operator_leader Whether this replica runs the controller (1) or stands by (0)."
        );
        let _ = writeln!(out, "# TYPE geocache_operator_leader gauge");
        let _ = writeln!(out, "geocache_operator_leader {}", u8::from(self.is_leader()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_and_durations_are_rendered_for_prometheus() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_started());
        metrics.reconcile_failed("apply");
        metrics.reconcile_failed("not-a-category");
        let text = metrics.render();
        assert!(text.contains("geocache_operator_reconciles_total 1\n"), "{text}");
        assert!(text.contains("geocache_operator_reconcile_errors_total{category=\"apply\"} 1\n"));
        assert!(text.contains("geocache_operator_reconcile_errors_total{category=\"invalid_spec\"} 0\n"));
        assert!(text.contains("geocache_operator_reconcile_duration_seconds_count 1\n"));
        assert!(text.contains("geocache_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("geocache_operator_leader 0\n"));
    }

    #[test]
    fn the_duration_histogram_is_cumulative() {
        let metrics = Metrics::default();
        metrics.observe_duration(0.2);
        let text = metrics.render();
        assert!(text.contains("le=\"0.1\"} 0\n"));
        assert!(text.contains("le=\"0.25\"} 1\n"));
        assert!(text.contains("le=\"30\"} 1\n"));
    }
}
