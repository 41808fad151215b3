//! Optional leader election with a `coordination.k8s.io/v1` Lease, so that several
//! replicas of the operator can run and at most one reconciles at any moment.
//!
//! The rules are those of client-go's `leaderelection`, for the same reasons:
//! - The leader renews the Lease every `retry_period`. Every attempt (a read and a write of
//!   the Lease) is bounded by [`Timing::attempt_timeout`], so a stalled connection cannot
//!   hold the loop; a hung attempt is abandoned and retried.
//! - The leader stops acting at `renew_deadline` after the *start* of its last successful
//!   renewal, measured on its own monotonic clock, whether or not a call is still hanging
//!   ([`keep_leading_with`] returns then; the caller drops the controller and exits). A
//!   [`Watchdog`] thread ends the process shortly after, should the async runtime be too
//!   blocked to do it.
//! - A candidate takes over a Lease held by another replica only once the Lease record (its
//!   `resourceVersion`) has stayed unchanged for `lease_duration` as seen on the
//!   candidate's own monotonic clock (and the holder's `renewTime` plus the duration has
//!   passed by the wall clock, see [`decide`]).
//!
//! Why that cannot give two leaders: say the leader's last successful renewal started at
//! real time `t0`. Its write landed after `t0`, so every candidate first saw that record
//! after `t0` and cannot take over before `t0 + lease_duration`, while the leader stopped
//! at `t0 + renew_deadline`. The gap `lease_duration - renew_deadline` absorbs the time the
//! leader takes to stop and any drift between the two monotonic clocks. No wall clocks are
//! compared across machines: a candidate whose clock runs ahead cannot take a Lease that is
//! being renewed. Writes carry the Lease's `resourceVersion`, so two candidates cannot both
//! win.
//!
//! kube-lease-manager 0.13 (the maintained crate, and it supports kube 5) was considered and
//! not used: it decides expiry from the Lease's wall-clock `renewTime` against the local
//! wall clock, does not bound its API calls, and so keeps reporting "leader" while a
//! renewal hangs — the defect this module fixes.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::time::Instant;

/// The exit status of a process that lost leadership (it restarts as a candidate).
pub const EXIT_LOST_LEADERSHIP: i32 = 1;

/// Bad leader-election timing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("leader election durations must be above zero")]
    Zero,
    #[error("the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({lease_duration:?})")]
    DeadlineNotBelowDuration { renew_deadline: Duration, lease_duration: Duration },
    #[error("the retry period ({retry_period:?}) must be shorter than the renew deadline ({renew_deadline:?})")]
    RetryNotBelowDeadline { retry_period: Duration, renew_deadline: Duration },
}

/// How long a Lease lasts, and when its holder gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a candidate waits, after it last saw the Lease change, before taking it
    /// over; written to the Lease as `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How long after the start of its last successful renewal the leader stops acting.
    pub renew_deadline: Duration,
    /// Time between two attempts, of the leader to renew and of a candidate to acquire.
    pub retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks `retry_period < renew_deadline < lease_duration`, which the safety argument
    /// of this module needs.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Timing, TimingError> {
        if lease_duration.is_zero() || renew_deadline.is_zero() || retry_period.is_zero() {
            return Err(TimingError::Zero);
        }
        if renew_deadline >= lease_duration {
            return Err(TimingError::DeadlineNotBelowDuration { renew_deadline, lease_duration });
        }
        if retry_period >= renew_deadline {
            return Err(TimingError::RetryNotBelowDeadline { retry_period, renew_deadline });
        }
        Ok(Timing { lease_duration, renew_deadline, retry_period })
    }

    /// The bound of one attempt (read and write of the Lease): short enough that a hung
    /// attempt leaves time for another one before the renew deadline.
    pub fn attempt_timeout(&self) -> Duration {
        (self.retry_period * 2).min(self.renew_deadline / 2)
    }

    /// When the [`Watchdog`] ends the process: after the renew deadline (where the async
    /// path stops acting), halfway to the lease duration (before anyone may take over).
    pub fn watchdog_delay(&self) -> Duration {
        self.renew_deadline + (self.lease_duration - self.renew_deadline) / 2
    }
}

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    pub timing: Timing,
}

/// What to do with the Lease as it stands, by its record and the wall clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// Someone else holds it.
    Wait { holder: String },
}

/// Decides from the Lease's spec, purely, by the wall clock. A candidate acts on
/// [`Decision::Acquire`] of a Lease that names another holder only when
/// [`unchanged_long_enough`] agrees too.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp, default_duration: Duration) -> Decision {
    let Some(spec) = spec else { return Decision::Acquire };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .map(|s| SignedDuration::from_secs(i64::from(s)))
        .unwrap_or_else(|| SignedDuration::from_secs(default_duration.as_secs() as i64));
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    match last {
        Some(last) if last + duration > now => Decision::Wait { holder: holder.to_string() },
        _ => Decision::Acquire,
    }
}

/// Whether a Lease held by another replica has stayed unchanged for long enough, on our
/// own monotonic clock, to be taken over: the longer of its `leaseDurationSeconds` and
/// ours, so that replicas configured differently still wait for each other.
pub fn unchanged_long_enough(spec: &LeaseSpec, unchanged_for: Duration, own_duration: Duration) -> bool {
    let stated =
        spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs).unwrap_or_default();
    unchanged_for >= stated.max(own_duration)
}

/// The last Lease record a replica saw (its `resourceVersion`) and since when, on the
/// replica's monotonic clock: how a candidate knows that the holder stopped renewing
/// without trusting the holder's wall clock.
#[derive(Debug, Default)]
pub struct Observed {
    version: Option<String>,
    since: Option<Instant>,
}

impl Observed {
    /// Notes the record `version` seen at `now`; returns how long it has been unchanged.
    pub fn note(&mut self, version: Option<&str>, now: Instant) -> Duration {
        match (&self.version, self.since) {
            (Some(seen), Some(since)) if Some(seen.as_str()) == version => now.saturating_duration_since(since),
            _ => {
                self.version = version.map(str::to_string);
                self.since = Some(now);
                Duration::ZERO
            }
        }
    }
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// We hold the Lease.
    Leading,
    /// Another replica holds it.
    HeldBy(String),
    /// Someone else wrote the Lease between our read and our write; try again.
    Conflict,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// No renewal succeeded within the renew deadline.
    Deadline { last_renewal_started: Duration },
    /// Another replica holds the Lease.
    TakenBy(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Deadline { last_renewal_started } => {
                write!(
                    f,
                    "renew deadline passed ({} ms since the last successful renewal started)",
                    last_renewal_started.as_millis()
                )
            }
            Lost::TakenBy(holder) => write!(f, "the lease is held by {holder}"),
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// One attempt to become or stay the leader. `observed` is what this replica saw of the
/// Lease before; it is updated with what it sees now.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &Mutex<Observed>,
) -> Result<Outcome, kube::Error> {
    let duration = config.timing.lease_duration;
    let duration_secs = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let existing = api.get_opt(&config.name).await?;
    let now = Timestamp::now();
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(duration_secs),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Outcome::Leading),
            Err(e) if is_conflict(&e) => Ok(Outcome::Conflict),
            Err(e) => Err(e),
        };
    };
    // Taken after the read returned: the record was written before this instant.
    let unchanged_for = observed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .note(lease.metadata.resource_version.as_deref(), Instant::now());
    let mut spec = lease.spec.clone().unwrap_or_default();
    match decide(Some(&spec), &config.identity, now, duration) {
        Decision::Wait { holder } => return Ok(Outcome::HeldBy(holder)),
        Decision::Renew => spec.renew_time = Some(MicroTime(now)),
        Decision::Acquire => {
            let holder = spec.holder_identity.clone().unwrap_or_default();
            if !holder.is_empty() && !unchanged_long_enough(&spec, unchanged_for, duration) {
                // Expired by the wall clock, but we have not seen it unchanged for a lease
                // duration ourselves: the holder's clock may be behind, or we just started.
                return Ok(Outcome::HeldBy(holder));
            }
            spec.holder_identity = Some(config.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec.lease_duration_seconds = Some(duration_secs);
    lease.spec = Some(spec);
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Outcome::Leading),
        Err(e) if is_conflict(&e) => Ok(Outcome::Conflict),
        Err(e) => Err(e),
    }
}

/// Tries `attempt` every `retry_period`, each try bounded by the attempt timeout, until
/// one leads; returns the instant that successful attempt *started* (leadership counts
/// from there), or `None` if `stop` fired first.
pub async fn acquire_with<A, F>(
    timing: &Timing,
    lease: &str,
    mut attempt: A,
    stop: impl Future<Output = ()>,
) -> Option<Instant>
where
    A: FnMut() -> F,
    F: Future<Output = Result<Outcome, kube::Error>>,
{
    let mut stop = std::pin::pin!(stop);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            () = &mut stop => return None,
            result = tokio::time::timeout(timing.attempt_timeout(), attempt()) => result,
        };
        match result {
            Ok(Ok(Outcome::Leading)) => return Some(started),
            Ok(Ok(Outcome::HeldBy(holder))) => tracing::debug!(lease, %holder, "another replica leads, standing by"),
            Ok(Ok(Outcome::Conflict)) => tracing::debug!(lease, "lease changed while taking it, retrying"),
            Ok(Err(error)) => tracing::warn!(lease, error = %error, "failed to read or take the lease"),
            Err(_) => {
                tracing::warn!(lease, timeout_ms = timing.attempt_timeout().as_millis() as u64, "lease call timed out")
            }
        }
        tokio::select! {
            () = &mut stop => return None,
            () = tokio::time::sleep(timing.retry_period) => {}
        }
    }
}

/// Renews through `attempt` until leadership is lost, and returns why. Leadership lasts
/// until `renew_deadline` after the start of the last successful renewal (`leading_since`
/// at first), on the monotonic clock: when that passes, this returns even while an
/// attempt hangs. `on_renewed` gets the start of every successful renewal (to move a
/// [`Watchdog`]). Drop the future to stop renewing.
pub async fn keep_leading_with<A, F>(
    timing: &Timing,
    lease: &str,
    leading_since: Instant,
    mut attempt: A,
    mut on_renewed: impl FnMut(Instant),
) -> Lost
where
    A: FnMut() -> F,
    F: Future<Output = Result<Outcome, kube::Error>>,
{
    let mut renewed_at = leading_since;
    loop {
        let deadline = renewed_at + timing.renew_deadline;
        let renew = async {
            loop {
                tokio::time::sleep(timing.retry_period).await;
                let started = Instant::now();
                match tokio::time::timeout(timing.attempt_timeout(), attempt()).await {
                    Ok(Ok(Outcome::Leading)) => return Ok(started),
                    Ok(Ok(Outcome::HeldBy(holder))) => return Err(Lost::TakenBy(holder)),
                    Ok(Ok(Outcome::Conflict)) => tracing::warn!(lease, "lease changed while renewing it, retrying"),
                    Ok(Err(error)) => tracing::warn!(lease, error = %error, "failed to renew the lease"),
                    Err(_) => tracing::warn!(
                        lease,
                        timeout_ms = timing.attempt_timeout().as_millis() as u64,
                        "lease renewal timed out"
                    ),
                }
            }
        };
        tokio::select! {
            // The deadline first: a renewal that ends after it does not count.
            biased;
            () = tokio::time::sleep_until(deadline) => {
                return Lost::Deadline { last_renewal_started: renewed_at.elapsed() };
            }
            renewed = renew => match renewed {
                Ok(started) => {
                    renewed_at = started;
                    on_renewed(started);
                }
                Err(lost) => return lost,
            },
        }
    }
}

/// Leader election on one Lease: [`acquire`](Self::acquire), then
/// [`keep_leading`](Self::keep_leading) while the controller runs, then
/// [`release`](Self::release) on a clean shutdown.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Mutex<Observed>,
}

impl Elector {
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        Elector { api, config, observed: Mutex::new(Observed::default()) }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    async fn attempt(&self) -> Result<Outcome, kube::Error> {
        try_acquire_or_renew(&self.api, &self.config, &self.observed).await
    }

    /// Waits until this replica holds the Lease; returns when leadership started (see
    /// [`acquire_with`]), or `None` if `stop` fired first.
    pub async fn acquire(&self, stop: impl Future<Output = ()>) -> Option<Instant> {
        let since = acquire_with(&self.config.timing, &self.config.name, || self.attempt(), stop).await?;
        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "acquired leadership");
        Some(since)
    }

    /// Renews the Lease until leadership is lost (see [`keep_leading_with`]).
    pub async fn keep_leading(&self, leading_since: Instant, on_renewed: impl FnMut(Instant)) -> Lost {
        keep_leading_with(&self.config.timing, &self.config.name, leading_since, || self.attempt(), on_renewed).await
    }

    /// Gives the Lease up on shutdown so that a standby replica takes over at once. Bounded
    /// by the attempt timeout, like every Lease call.
    pub async fn release(&self) {
        let timeout = self.config.timing.attempt_timeout();
        match tokio::time::timeout(timeout, self.try_release()).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.config.name, "released leadership"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(lease = %self.config.name, error = %error, "failed to release the lease"),
            Err(_) => {
                tracing::warn!(lease = %self.config.name, timeout_ms = timeout.as_millis() as u64, "releasing the lease timed out")
            }
        }
    }

    async fn try_release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(false) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(false) };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        self.api.replace(&self.config.name, &PostParams::default(), &lease).await?;
        Ok(true)
    }
}

/// A thread that ends the process when leadership is held past its deadline: the backstop
/// of [`keep_leading_with`], for when the async runtime is too blocked to stop the
/// controller itself (a timer cannot fire while every worker is stuck).
#[derive(Clone)]
pub struct Watchdog {
    shared: Arc<(Mutex<Option<std::time::Instant>>, Condvar)>,
}

impl Watchdog {
    /// Starts the thread, disarmed.
    pub fn start() -> std::io::Result<Watchdog> {
        let shared = Arc::new((Mutex::new(None::<std::time::Instant>), Condvar::new()));
        let watched = shared.clone();
        std::thread::Builder::new().name("leader-watchdog".into()).spawn(move || {
            let (deadline, changed) = &*watched;
            let mut armed = deadline.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let current = *armed;
                armed = match current {
                    None => changed.wait(armed).unwrap_or_else(PoisonError::into_inner),
                    Some(at) => {
                        let now = std::time::Instant::now();
                        if now >= at {
                            tracing::error!(
                                late_ms = now.duration_since(at).as_millis() as u64,
                                "leadership held past its deadline and the runtime did not stop; exiting"
                            );
                            std::process::exit(EXIT_LOST_LEADERSHIP);
                        }
                        changed.wait_timeout(armed, at - now).unwrap_or_else(PoisonError::into_inner).0
                    }
                };
            }
        })?;
        Ok(Watchdog { shared })
    }

    /// Ends the process at `deadline` unless re-armed or disarmed before.
    pub fn arm(&self, deadline: std::time::Instant) {
        let (armed, changed) = &*self.shared;
        *armed.lock().unwrap_or_else(PoisonError::into_inner) = Some(deadline);
        changed.notify_all();
    }

    pub fn disarm(&self) {
        let (armed, changed) = &*self.shared;
        *armed.lock().unwrap_or_else(PoisonError::into_inner) = None;
        changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    const DURATION: Duration = Duration::from_secs(15);

    #[test]
    fn a_missing_or_unheld_lease_is_taken() {
        assert_eq!(decide(None, "a", at(100), DURATION), Decision::Acquire);
        assert_eq!(decide(Some(&LeaseSpec::default()), "a", at(100), DURATION), Decision::Acquire);
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        assert_eq!(decide(Some(&held_by("a", 10)), "a", at(100), DURATION), Decision::Renew);
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_respected() {
        assert_eq!(decide(Some(&held_by("b", 95)), "a", at(100), DURATION), Decision::Wait { holder: "b".into() });
    }

    #[test]
    fn an_expired_lease_of_another_replica_is_taken_over() {
        assert_eq!(decide(Some(&held_by("b", 80)), "a", at(100), DURATION), Decision::Acquire);
    }

    // --- timing -------------------------------------------------------------------------

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_renew_deadline_must_be_below_the_lease_duration_and_the_retry_period_below_both() {
        assert_eq!(Timing::new(secs(15), secs(10), secs(2)), Ok(Timing::default()));
        assert!(matches!(Timing::new(secs(10), secs(10), secs(2)), Err(TimingError::DeadlineNotBelowDuration { .. })));
        assert!(matches!(Timing::new(secs(10), secs(12), secs(2)), Err(TimingError::DeadlineNotBelowDuration { .. })));
        assert!(matches!(Timing::new(secs(15), secs(10), secs(10)), Err(TimingError::RetryNotBelowDeadline { .. })));
        assert_eq!(Timing::new(secs(15), secs(10), Duration::ZERO), Err(TimingError::Zero));
    }

    #[test]
    fn an_attempt_is_bounded_so_that_a_second_one_fits_before_the_deadline() {
        let t = Timing::default();
        assert_eq!(t.attempt_timeout(), secs(4));
        assert!(t.retry_period + t.attempt_timeout() < t.renew_deadline);
        let tight = Timing::new(secs(4), secs(3), secs(2)).unwrap();
        assert_eq!(tight.attempt_timeout(), Duration::from_millis(1500));
        assert!(t.watchdog_delay() > t.renew_deadline && t.watchdog_delay() < t.lease_duration);
    }

    // --- the leader: paused time, attempts scripted -------------------------------------

    type Attempt = std::pin::Pin<Box<dyn Future<Output = Result<Outcome, kube::Error>> + Send>>;

    fn hang() -> Attempt {
        Box::pin(std::future::pending())
    }

    fn lead_after(delay: Duration) -> Attempt {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Outcome::Leading)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_hang_stops_at_the_renew_deadline() {
        let t = Timing::default();
        let start = Instant::now();
        let lost = keep_leading_with(&t, "l", start, hang, |_| {}).await;
        assert_eq!(start.elapsed(), t.renew_deadline);
        assert_eq!(lost, Lost::Deadline { last_renewal_started: t.renew_deadline });
        assert!(lost.to_string().starts_with("renew deadline passed"), "{lost}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_succeed_keeps_leading() {
        let t = Timing::default();
        let renewals = AtomicUsize::new(0);
        let kept = tokio::time::timeout(
            secs(3600),
            keep_leading_with(
                &t,
                "l",
                Instant::now(),
                || lead_after(Duration::from_millis(30)),
                |_| {
                    renewals.fetch_add(1, Ordering::Relaxed);
                },
            ),
        )
        .await;
        assert!(kept.is_err(), "lost leadership: {kept:?}");
        assert!(renewals.load(Ordering::Relaxed) > 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_start_of_the_last_successful_renewal() {
        // The first renewal starts after one retry period and takes 3 s; every later one
        // hangs. Leadership ends a renew deadline after that first renewal *started*.
        let t = Timing::default();
        let start = Instant::now();
        let calls = AtomicUsize::new(0);
        let mut renewed = Vec::new();
        let lost = keep_leading_with(
            &t,
            "l",
            start,
            || if calls.fetch_add(1, Ordering::Relaxed) == 0 { lead_after(secs(3)) } else { hang() },
            |at| renewed.push(at - start),
        )
        .await;
        assert_eq!(renewed, vec![t.retry_period]);
        assert_eq!(start.elapsed(), t.retry_period + t.renew_deadline);
        assert!(matches!(lost, Lost::Deadline { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_is_abandoned_and_retried_before_the_deadline() {
        let t = Timing::default();
        let calls = AtomicUsize::new(0);
        let kept = tokio::time::timeout(
            secs(600),
            keep_leading_with(
                &t,
                "l",
                Instant::now(),
                // Every other attempt hangs: each is cut at the attempt timeout, and the next
                // one still renews in time.
                || {
                    if calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                        hang()
                    } else {
                        lead_after(Duration::ZERO)
                    }
                },
                |_| {},
            ),
        )
        .await;
        assert!(kept.is_err(), "lost leadership: {kept:?}");
        assert!(calls.load(Ordering::Relaxed) > 50);
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_do_not_extend_leadership() {
        let t = Timing::default();
        let start = Instant::now();
        let lost =
            keep_leading_with(&t, "l", start, || Box::pin(async { Ok(Outcome::Conflict) }) as Attempt, |_| {}).await;
        assert_eq!(start.elapsed(), t.renew_deadline);
        assert!(matches!(lost, Lost::Deadline { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_by_another_replica_ends_leadership_at_the_next_renewal() {
        let t = Timing::default();
        let start = Instant::now();
        let lost = keep_leading_with(
            &t,
            "l",
            start,
            || Box::pin(async { Ok(Outcome::HeldBy("b".into())) }) as Attempt,
            |_| {},
        )
        .await;
        assert_eq!(lost, Lost::TakenBy("b".into()));
        assert_eq!(start.elapsed(), t.retry_period);
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_abandons_hung_attempts_and_leads_from_the_start_of_the_one_that_won() {
        let t = Timing::default();
        let start = Instant::now();
        let calls = AtomicUsize::new(0);
        let since = acquire_with(
            &t,
            "l",
            || if calls.fetch_add(1, Ordering::Relaxed) == 0 { hang() } else { lead_after(secs(1)) },
            std::future::pending(),
        )
        .await;
        // First attempt cut at the attempt timeout, then one retry period, then the winner.
        assert_eq!(since, Some(start + t.attempt_timeout() + t.retry_period));
        assert_eq!(start.elapsed(), t.attempt_timeout() + t.retry_period + secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_stops_trying_when_asked() {
        let t = Timing::default();
        let since = acquire_with(&t, "l", hang, tokio::time::sleep(secs(30))).await;
        assert_eq!(since, None);
    }

    // --- the candidate: what it has seen ------------------------------------------------

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_keeps_changing_is_never_taken_over_whatever_its_renew_time_says() {
        // The holder's wall clock is far behind ours: by its renewTime the lease looks
        // expired (decide says Acquire), but it is renewed every 2 s, so it never stays
        // unchanged for a lease duration.
        let mut seen = Observed::default();
        let spec = held_by("b", 0);
        assert_eq!(decide(Some(&spec), "a", at(1_000), DURATION), Decision::Acquire);
        for version in 0..100 {
            let unchanged = seen.note(Some(&version.to_string()), Instant::now());
            assert!(!unchanged_long_enough(&spec, unchanged, DURATION));
            tokio::time::advance(secs(2)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_unchanged_for_its_duration_on_our_clock_is_taken_over() {
        let mut seen = Observed::default();
        let spec = held_by("b", 0);
        assert_eq!(seen.note(Some("7"), Instant::now()), Duration::ZERO);
        tokio::time::advance(secs(14)).await;
        assert!(!unchanged_long_enough(&spec, seen.note(Some("7"), Instant::now()), DURATION));
        tokio::time::advance(secs(1)).await;
        assert!(unchanged_long_enough(&spec, seen.note(Some("7"), Instant::now()), DURATION));
        // A change starts the wait over.
        assert_eq!(seen.note(Some("8"), Instant::now()), Duration::ZERO);
    }

    #[test]
    fn the_longer_of_the_stated_and_our_own_duration_is_waited_for() {
        let spec = LeaseSpec { lease_duration_seconds: Some(30), ..held_by("b", 0) };
        assert!(!unchanged_long_enough(&spec, secs(20), DURATION));
        assert!(unchanged_long_enough(&spec, secs(30), DURATION));
        let unstated = LeaseSpec { lease_duration_seconds: None, ..held_by("b", 0) };
        assert!(!unchanged_long_enough(&unstated, secs(14), DURATION));
        assert!(unchanged_long_enough(&unstated, secs(15), DURATION));
    }

    #[tokio::test(start_paused = true)]
    async fn the_old_leader_stops_before_a_candidate_may_take_over() {
        // The leader's last successful renewal starts at t0; a candidate sees the record it
        // wrote right after. Whatever happens next (here: every call hangs), the leader is
        // gone at t0 + renew deadline, and the candidate may act at t0 + lease duration.
        let t = Timing::default();
        let t0 = Instant::now();
        let mut seen = Observed::default();
        seen.note(Some("renewed-at-t0"), t0);
        let leader = keep_leading_with(&t, "l", t0, hang, |_| {});
        let candidate = async {
            loop {
                tokio::time::sleep(t.retry_period).await;
                let unchanged = seen.note(Some("renewed-at-t0"), Instant::now());
                if unchanged_long_enough(&held_by("b", 0), unchanged, t.lease_duration) {
                    return Instant::now();
                }
            }
        };
        let (lost, took_over) = tokio::join!(async { (leader.await, Instant::now()) }, candidate);
        assert!(matches!(lost.0, Lost::Deadline { .. }));
        assert!(lost.1 < took_over, "leader stopped at {:?}, candidate took over at {:?}", lost.1 - t0, took_over - t0);
        assert!(took_over - lost.1 >= t.lease_duration - t.renew_deadline);
    }
}
