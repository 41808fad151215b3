//! Optional leader election with a `coordination.k8s.io/v1` Lease, so that several
//! replicas of the operator can run and only one reconciles.
//!
//! The holder renews the Lease every `renew_every`; a candidate takes it over once it has
//! not been renewed for `lease_duration`. Updates use the Lease's resourceVersion, so two
//! candidates cannot both win. A leader that cannot renew within `lease_duration` stops
//! reconciling (the process exits and restarts as a candidate).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// What to do with the Lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// Someone else holds it.
    Wait { holder: String },
}

/// Decides from the Lease's spec, purely.
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

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// One attempt to become or stay the leader.
pub async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<Outcome, kube::Error> {
    let now = Timestamp::now();
    let duration_secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
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
    let mut spec = lease.spec.clone().unwrap_or_default();
    match decide(Some(&spec), &config.identity, now, config.lease_duration) {
        Decision::Wait { holder } => return Ok(Outcome::HeldBy(holder)),
        Decision::Renew => spec.renew_time = Some(MicroTime(now)),
        Decision::Acquire => {
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

/// Waits until this replica holds the Lease. Returns `false` if `stop` fired first.
pub async fn acquire(api: &Api<Lease>, config: &LeaseConfig, stop: impl std::future::Future<Output = ()>) -> bool {
    let mut stop = std::pin::pin!(stop);
    loop {
        match try_acquire_or_renew(api, config).await {
            Ok(Outcome::Leading) => {
                tracing::info!(lease = %config.name, identity = %config.identity, "acquired leadership");
                return true;
            }
            Ok(Outcome::HeldBy(holder)) => {
                tracing::debug!(lease = %config.name, %holder, "another replica leads, standing by")
            }
            Ok(Outcome::Conflict) => tracing::debug!(lease = %config.name, "lease changed while taking it, retrying"),
            Err(error) => tracing::warn!(lease = %config.name, error = %error, "failed to read or take the lease"),
        }
        tokio::select! {
            () = &mut stop => return false,
            () = tokio::time::sleep(config.renew_every) => {}
        }
    }
}

/// Renews the Lease until `stop` fires (returns `true`) or renewal fails for longer than
/// the lease duration (returns `false`: leadership is lost).
pub async fn keep_leading(api: &Api<Lease>, config: &LeaseConfig, stop: impl std::future::Future<Output = ()>) -> bool {
    let mut stop = std::pin::pin!(stop);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = &mut stop => return true,
            () = tokio::time::sleep(config.renew_every) => {}
        }
        match try_acquire_or_renew(api, config).await {
            Ok(Outcome::Leading) => last_renewed = tokio::time::Instant::now(),
            Ok(Outcome::HeldBy(holder)) => {
                tracing::error!(lease = %config.name, %holder, "another replica took the lease");
                return false;
            }
            Ok(Outcome::Conflict) => tracing::warn!(lease = %config.name, "lease changed while renewing it, retrying"),
            Err(error) => tracing::warn!(lease = %config.name, error = %error, "failed to renew the lease"),
        }
        if last_renewed.elapsed() > config.lease_duration {
            tracing::error!(lease = %config.name, "could not renew the lease in time");
            return false;
        }
    }
}

/// Gives the Lease up on shutdown so that a standby replica takes over at once.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else { return };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = None;
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %config.name, "released leadership"),
        Err(error) => tracing::warn!(lease = %config.name, error = %error, "failed to release the lease"),
    }
}

#[cfg(test)]
mod tests {
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
}
