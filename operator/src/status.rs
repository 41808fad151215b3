//! The update-status step, pure part: from what was observed of each region (its
//! StatefulSet, its pods, its endpoint, its nodes' `/v1/status` documents) to the
//! GeoCache's status, and from the old and new status to the Events worth publishing.
//!
//! The status model (README, "Status"):
//! - `Ready`: every region serves (it has a ready node, or is stopped with `replicas: 0`);
//! - `Reconciling` (kstatus) and `Progressing`: the spec is not yet realised (pods
//!   starting or rolling, an endpoint pending);
//! - `Stalled` (kstatus): progress needs a fix (invalid spec, a region's apply fails, pods
//!   cannot start);
//! - `Degraded`: something that should work does not (a reconcile failure, nodes that crashed,
//!   peers that the nodes have seen down for longer than a grace period);
//! - `ClockSkew`: nodes see peers' clocks beyond their bound.
//!
//! Peers seen down count only when they should be up: a peer that is a pod of the spec
//! (not of a removed region, not of a scaled-down ordinal) and ready, or the replication
//! endpoint of a region in the spec of which the node sees no node up.

use std::collections::{BTreeMap, BTreeSet};

use geocache_node::{PeerState, StatusDocument};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ClusterRef, GeoCacheStatus, RegionStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const DEGRADED: &str = "Degraded";
pub const CLOCK_SKEW: &str = "ClockSkew";

/// Region states (`status.regions[].state`).
pub const STATE_READY: &str = "Ready";
pub const STATE_PROGRESSING: &str = "Progressing";
pub const STATE_DEGRADED: &str = "Degraded";
pub const STATE_UNAVAILABLE: &str = "Unavailable";
pub const STATE_FAILED: &str = "Failed";
pub const STATE_PENDING: &str = "Pending";
pub const STATE_STOPPED: &str = "Stopped";

/// Container waiting reasons that need a fix, not patience.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// What one reconcile saw of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodObservation {
    pub name: String,
    pub ready: bool,
    /// Restarts of its container.
    pub restarts: i32,
    /// Why its container waits, when it does (`CrashLoopBackOff`, `ImagePullBackOff`, ...).
    pub waiting: Option<String>,
    /// Being deleted.
    pub terminating: bool,
}

impl PodObservation {
    /// Not ready for a reason other than starting: it crashed, or it cannot start.
    fn failing(&self) -> bool {
        !self.ready && !self.terminating && (self.restarts > 0 || self.stuck())
    }

    fn stuck(&self) -> bool {
        self.waiting.as_deref().is_some_and(|w| STUCK_REASONS.contains(&w))
    }

    fn why(&self) -> String {
        match &self.waiting {
            Some(reason) => format!("{} is not ready ({reason})", self.name),
            None => format!("{} is not ready after {} restarts", self.name, self.restarts),
        }
    }
}

/// What one reconcile saw of one region.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegionObservation {
    pub name: String,
    /// Nodes wanted.
    pub replicas: i32,
    /// The node ids (pod names) the spec wants in this region.
    pub node_ids: Vec<String>,
    /// The StatefulSet as the API server returned it (absent when applying failed).
    pub statefulset: Option<StatefulSet>,
    /// The region's pods.
    pub pods: Vec<PodObservation>,
    /// The region's endpoint for the other regions, when known.
    pub endpoint: Option<String>,
    /// Another cluster needs the endpoint and it is not known yet.
    pub endpoint_pending: bool,
    /// One entry per node asked: its status document, or why it did not answer.
    pub nodes: Vec<Result<StatusDocument, String>>,
    /// Why the region could not be reconciled (its cluster is unreachable, an apply failed).
    pub error: Option<String>,
}

/// A node that sees a peer down which should be up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerDown {
    /// Region of the node that sees it.
    pub region: String,
    /// Identifies the pair across observations.
    pub key: String,
    /// For people: `demo-eu-0 sees demo-us-1 (us) down`.
    pub message: String,
}

impl RegionObservation {
    fn ready_replicas(&self) -> i32 {
        self.statefulset.as_ref().and_then(|s| s.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0)
    }

    /// The StatefulSet controller has not caught up with the spec, or pods are rolling.
    fn rolling(&self) -> bool {
        let Some(sts) = &self.statefulset else { return false };
        let Some(status) = &sts.status else { return self.replicas > 0 };
        let stale = status.observed_generation.unwrap_or(0) < sts.metadata.generation.unwrap_or(0);
        let updating = status.updated_replicas.unwrap_or(0) < self.replicas
            || status.update_revision.is_some() && status.current_revision != status.update_revision;
        stale || updating || status.replicas != self.replicas
    }

    fn failing_pods(&self) -> Vec<&PodObservation> {
        self.pods.iter().filter(|p| p.failing()).collect()
    }

    /// It answers clients: a ready node (or none wanted), its endpoint known, no failure.
    fn serving(&self) -> bool {
        self.error.is_none() && !self.endpoint_pending && (self.replicas == 0 || self.ready_replicas() > 0)
    }

    /// Every node wanted is ready and up to date.
    fn complete(&self) -> bool {
        self.serving() && !self.rolling() && self.ready_replicas() >= self.replicas
    }

    /// The spec is not yet realised here, and nothing says it will not be.
    fn reconciling(&self) -> bool {
        self.error.is_none()
            && (self.endpoint_pending
                || self.rolling()
                || (self.ready_replicas() < self.replicas && self.failing_pods().is_empty()))
    }

    fn answered(&self) -> impl Iterator<Item = &StatusDocument> {
        self.nodes.iter().filter_map(|n| n.as_ref().ok())
    }

    /// The fewest peers of the spec any node of the region sees up.
    fn peers_up(&self, expected: &BTreeSet<&str>) -> Option<i64> {
        self.answered()
            .map(|doc| {
                let up: BTreeSet<&str> = doc
                    .peers
                    .iter()
                    .filter(|p| p.state == PeerState::Up && expected.contains(p.node_id.as_str()))
                    .map(|p| p.node_id.as_str())
                    .collect();
                up.len() as i64
            })
            .min()
    }

    fn max_lag_ms(&self, expected: &BTreeSet<&str>) -> Option<i64> {
        self.answered()
            .flat_map(|doc| doc.peers.iter())
            .filter(|p| expected.contains(p.node_id.as_str()))
            .map(|p| i64::try_from(p.lag.ms).unwrap_or(i64::MAX))
            .max()
    }

    /// `(observer node, peer region, offset ms)` where a node of this region sees a peer's
    /// clock beyond its `--max-clock-skew`.
    fn skewed_peers(&self) -> Vec<(String, String, i64)> {
        self.answered()
            .flat_map(|doc| {
                doc.peers
                    .iter()
                    .filter(|p| p.clock_skewed)
                    .map(move |p| (doc.node_id.clone(), p.region.clone(), p.clock_offset_ms.unwrap_or(0)))
            })
            .collect()
    }

    fn message(&self) -> Option<String> {
        if let Some(error) = &self.error {
            return Some(error.clone());
        }
        if self.endpoint_pending {
            return Some("waiting for the replication Service's external address".to_string());
        }
        let failing = self.failing_pods();
        if !failing.is_empty() {
            return Some(failing.iter().map(|p| p.why()).collect::<Vec<_>>().join(", "));
        }
        let silent: Vec<&str> = self.nodes.iter().filter_map(|n| n.as_ref().err().map(String::as_str)).collect();
        (!silent.is_empty())
            .then(|| format!("{} of {} nodes did not answer: {}", silent.len(), self.nodes.len(), silent[0]))
    }

    fn nodes_ready(&self) -> String {
        format!("{}/{}", self.ready_replicas(), self.replicas)
    }
}

/// The peers that nodes see down and should see up (see the module's notes), as observed
/// now; [`PeerWatch`] keeps those that last.
pub fn peers_seen_down(regions: &[RegionObservation]) -> Vec<PeerDown> {
    let expected: BTreeSet<&str> = regions.iter().flat_map(|r| r.node_ids.iter().map(String::as_str)).collect();
    let ready_pods: BTreeSet<&str> =
        regions.iter().flat_map(|r| r.pods.iter().filter(|p| p.ready).map(|p| p.name.as_str())).collect();
    let serving: BTreeSet<&str> =
        regions.iter().filter(|r| r.pods.iter().any(|p| p.ready)).map(|r| r.name.as_str()).collect();
    let mut down = BTreeSet::new();
    for region in regions {
        for doc in region.answered() {
            let regions_up: BTreeSet<&str> = doc
                .peers
                .iter()
                .filter(|p| p.state == PeerState::Up && expected.contains(p.node_id.as_str()))
                .map(|p| p.region.as_str())
                .collect();
            for peer in doc.peers.iter().filter(|p| p.state == PeerState::Down) {
                if !peer.node_id.is_empty() {
                    if expected.contains(peer.node_id.as_str()) && ready_pods.contains(peer.node_id.as_str()) {
                        down.insert(PeerDown {
                            region: region.name.clone(),
                            key: format!("{}>{}", doc.node_id, peer.node_id),
                            message: format!("{} sees {} ({}) down", doc.node_id, peer.node_id, peer.region),
                        });
                    }
                } else if peer.region != region.name
                    && serving.contains(peer.region.as_str())
                    && !regions_up.contains(peer.region.as_str())
                {
                    down.insert(PeerDown {
                        region: region.name.clone(),
                        key: format!("{}>{}", doc.node_id, peer.addr),
                        message: format!("{} cannot reach region {} at {}", doc.node_id, peer.region, peer.addr),
                    });
                }
            }
        }
    }
    down.into_iter().collect()
}

/// Remembers since when each pair has been seen down, so that a link still being made
/// (a node that just started, a peers file just changed) is not reported as a failure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerWatch {
    since: BTreeMap<String, i64>,
}

impl PeerWatch {
    /// Records this observation (at `now_s`, in seconds) and returns the pairs seen down in
    /// every observation for at least `grace_s`, and whether others are still within it.
    pub fn confirm(&mut self, observed: Vec<PeerDown>, now_s: i64, grace_s: i64) -> (Vec<PeerDown>, bool) {
        let keys: BTreeSet<&str> = observed.iter().map(|p| p.key.as_str()).collect();
        self.since.retain(|k, _| keys.contains(k.as_str()));
        let mut pending = false;
        let mut confirmed = Vec::new();
        for peer in observed {
            let since = *self.since.entry(peer.key.clone()).or_insert(now_s);
            if now_s - since >= grace_s {
                confirmed.push(peer);
            } else {
                pending = true;
            }
        }
        (confirmed, pending)
    }
}

/// Computes the status. `old` supplies the conditions' transition times; `now` is the time
/// of a transition; `peers_down` are the confirmed pairs (see [`PeerWatch`]).
pub fn compute_status(
    generation: Option<i64>,
    old: Option<&GeoCacheStatus>,
    regions: &[RegionObservation],
    peers_down: &[PeerDown],
    member_clusters: Vec<ClusterRef>,
    now: Time,
) -> GeoCacheStatus {
    let total = regions.len();
    let complete = regions.iter().filter(|r| r.complete()).count();
    let expected: BTreeSet<&str> = regions.iter().flat_map(|r| r.node_ids.iter().map(String::as_str)).collect();
    let nodes_summary =
        regions.iter().map(|r| format!("{} {}", r.name, r.nodes_ready())).collect::<Vec<_>>().join(", ");

    let not_serving: Vec<String> = regions
        .iter()
        .filter(|r| !r.serving())
        .map(|r| match (&r.error, r.endpoint_pending) {
            (Some(e), _) => format!("{}: {e}", r.name),
            (None, true) => format!("{}: waiting for its replication endpoint", r.name),
            (None, false) => format!("{}: no node ready (0/{})", r.name, r.replicas),
        })
        .collect();
    let ready = if not_serving.is_empty() {
        condition(
            READY,
            true,
            "AllRegionsServing",
            &format!("{total} of {total} regions serve ({nodes_summary} nodes ready)"),
        )
    } else {
        condition(READY, false, "RegionsNotServing", &not_serving.join("; "))
    };

    let reconciling_regions: Vec<String> = regions
        .iter()
        .filter(|r| r.reconciling())
        .map(|r| {
            if r.endpoint_pending {
                format!("{}: waiting for its replication endpoint", r.name)
            } else {
                format!("{}: {} nodes ready and up to date", r.name, r.nodes_ready())
            }
        })
        .collect();
    let (reconciling, progressing) = if reconciling_regions.is_empty() {
        let message = "every region is at its desired state";
        (condition(RECONCILING, false, "Reconciled", message), condition(PROGRESSING, false, "Stable", message))
    } else {
        let reason = if regions.iter().any(|r| r.endpoint_pending) { "WaitingForEndpoints" } else { "RollingOut" };
        let message = reconciling_regions.join("; ");
        (condition(RECONCILING, true, reason, &message), condition(PROGRESSING, true, reason, &message))
    };

    let failed: Vec<String> =
        regions.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.name))).collect();
    let stuck: Vec<String> = regions
        .iter()
        .flat_map(|r| {
            r.pods.iter().filter(|p| p.stuck() && !p.terminating).map(move |p| format!("{}: {}", r.name, p.why()))
        })
        .collect();
    let stalled = if !failed.is_empty() {
        condition(STALLED, true, "ReconcileFailed", &failed.join("; "))
    } else if !stuck.is_empty() {
        condition(STALLED, true, "PodsCannotStart", &stuck.join("; "))
    } else {
        condition(STALLED, false, "AsExpected", "nothing blocks progress")
    };

    let failing_nodes: Vec<String> = regions
        .iter()
        .filter(|r| r.error.is_none() && !r.failing_pods().is_empty())
        .map(|r| {
            let why: Vec<String> = r.failing_pods().iter().map(|p| p.why()).collect();
            format!("{}: {} nodes ready, {}", r.name, r.nodes_ready(), why.join(", "))
        })
        .collect();
    let degraded = if !failed.is_empty() {
        condition(DEGRADED, true, "ReconcileFailed", &failed.join("; "))
    } else if !failing_nodes.is_empty() {
        condition(DEGRADED, true, "NodesFailing", &failing_nodes.join("; "))
    } else if !peers_down.is_empty() {
        let message: Vec<&str> = peers_down.iter().map(|p| p.message.as_str()).collect();
        condition(DEGRADED, true, "PeersDown", &message.join("; "))
    } else {
        condition(DEGRADED, false, "AsExpected", "no failures observed")
    };

    let clock_skew = clock_skew_condition(regions);

    let old_regions: BTreeMap<&str, &RegionStatus> =
        old.map(|s| s.regions.iter().map(|r| (r.name.as_str(), r)).collect()).unwrap_or_default();
    let region_status: Vec<RegionStatus> = regions
        .iter()
        .map(|r| {
            let applied_before =
                old_regions.get(r.name.as_str()).is_some_and(|o| o.state.as_deref() != Some(STATE_PENDING));
            let peers_down_here = peers_down.iter().any(|p| p.region == r.name);
            let state = if r.error.is_some() {
                if r.statefulset.is_none() && !applied_before { STATE_PENDING } else { STATE_FAILED }
            } else if r.replicas == 0 && !r.rolling() {
                STATE_STOPPED
            } else if !r.serving() && !r.failing_pods().is_empty() {
                STATE_UNAVAILABLE
            } else if !r.failing_pods().is_empty() || (peers_down_here && r.serving()) {
                STATE_DEGRADED
            } else if r.complete() {
                STATE_READY
            } else {
                STATE_PROGRESSING
            };
            RegionStatus {
                name: r.name.clone(),
                state: Some(state.to_string()),
                replicas: r.replicas,
                ready_replicas: r.ready_replicas(),
                endpoint: r.endpoint.clone(),
                peers_up: r.peers_up(&expected),
                peers_expected: Some(expected.len().saturating_sub(1) as i64),
                max_lag_ms: r.max_lag_ms(&expected),
                message: r.message(),
            }
        })
        .collect();
    let max_lag = region_status.iter().filter_map(|r| r.max_lag_ms).max();
    let summary = region_status
        .iter()
        .map(|r| format!("{} {} {}/{}", r.name, r.state.as_deref().unwrap_or("-"), r.ready_replicas, r.replicas))
        .collect::<Vec<_>>()
        .join(", ");

    GeoCacheStatus {
        observed_generation: generation,
        conditions: with_transition_times(
            old,
            vec![ready, reconciling, stalled, degraded, progressing, clock_skew],
            generation,
            now,
        ),
        ready: Some(format!("{complete}/{total}")),
        region_names: Some(regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(",")),
        max_lag: max_lag.map(format_lag),
        region_summary: Some(summary),
        regions: region_status,
        member_clusters,
    }
}
/// `ClockSkew`: True while nodes see peers' clocks beyond their `--max-clock-skew`, naming
/// the region whose clock is off — the one seen skewed from the most other regions (with
/// two regions, both are named: either may be the one that is off).
fn clock_skew_condition(regions: &[RegionObservation]) -> Condition {
    let mut seen_by: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for r in regions {
        for (observer, peer_region, offset) in r.skewed_peers() {
            seen_by
                .entry(peer_region)
                .or_default()
                .entry(r.name.clone())
                .or_default()
                .push(format!("{observer} sees it {offset:+} ms"));
        }
    }
    let most = seen_by.values().map(BTreeMap::len).max().unwrap_or(0);
    if most == 0 {
        return condition(CLOCK_SKEW, false, "ClocksInSync", "every node sees its peers' clocks within the bound");
    }
    let suspects: Vec<String> = seen_by
        .iter()
        .filter(|(_, observers)| observers.len() == most)
        .map(|(region, observers)| {
            let seen: Vec<&str> = observers.values().flatten().map(String::as_str).collect();
            format!("region {region}'s clock is off ({})", seen.join(", "))
        })
        .collect();
    let message = format!(
        "{}; last-writer-wins may not follow real time across these regions and expiry instants follow the writer's clock: synchronise the clocks (NTP)",
        suspects.join("; ")
    );
    condition(CLOCK_SKEW, true, "ClockSkew", &message)
}

/// The status of an object whose spec is invalid: nothing was applied, so the regions
/// keep what was last observed of them and serve as before (`Ready` is kept); the spec
/// must be fixed (`Stalled`, `Degraded`).
pub fn invalid_status(
    generation: Option<i64>,
    old: Option<&GeoCacheStatus>,
    message: &str,
    now: Time,
) -> GeoCacheStatus {
    let old_or_default = old.cloned().unwrap_or_default();
    let ready = find(old, READY).cloned().unwrap_or_else(|| condition(READY, false, "InvalidSpec", message));
    let waiting = "the spec must be fixed before anything is applied";
    let mut conditions = vec![
        ready,
        condition(RECONCILING, false, "InvalidSpec", waiting),
        condition(STALLED, true, "InvalidSpec", message),
        condition(DEGRADED, true, "InvalidSpec", message),
        condition(PROGRESSING, false, "InvalidSpec", waiting),
    ];
    conditions.extend(find(old, CLOCK_SKEW).cloned());
    GeoCacheStatus {
        observed_generation: generation,
        conditions: with_transition_times(old, conditions, generation, now),
        ..old_or_default
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        // The API server caps a condition's message at 32768 bytes.
        message: truncate(message, 4096),
        last_transition_time: Time(Default::default()),
        observed_generation: None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Keeps a condition's transition time while its status stays the same.
fn with_transition_times(
    old: Option<&GeoCacheStatus>,
    conditions: Vec<Condition>,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let old_by_type: BTreeMap<&str, &Condition> =
        old.map(|s| s.conditions.iter().map(|c| (c.type_.as_str(), c)).collect()).unwrap_or_default();
    conditions
        .into_iter()
        .map(|mut c| {
            c.last_transition_time = match old_by_type.get(c.type_.as_str()) {
                Some(o) if o.status == c.status => o.last_transition_time.clone(),
                _ => now.clone(),
            };
            c.observed_generation = generation;
            c
        })
        .collect()
}

/// `35ms`, `1.2s`, `3m5s`.
pub fn format_lag(ms: i64) -> String {
    match ms {
        ..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// An Event worth publishing on the GeoCache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    /// The region it is about, if one.
    pub region: Option<String>,
}

fn find<'a>(status: Option<&'a GeoCacheStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether two statuses differ in what people and tools act on (conditions and region
/// states), not merely in the replication lag.
pub fn materially_different(old: Option<&GeoCacheStatus>, new: &GeoCacheStatus) -> bool {
    let Some(old) = old else { return true };
    let conditions_differ =
        old.conditions.len() != new.conditions.len()
            || old.conditions.iter().zip(&new.conditions).any(|(a, b)| {
                (&a.type_, &a.status, &a.reason, &a.message) != (&b.type_, &b.status, &b.reason, &b.message)
            });
    let regions_differ = old.regions.len() != new.regions.len()
        || old.regions.iter().zip(&new.regions).any(|(a, b)| {
            (&a.name, &a.state, a.replicas, a.ready_replicas, a.peers_up)
                != (&b.name, &b.state, b.replicas, b.ready_replicas, b.peers_up)
        });
    conditions_differ || regions_differ
}

/// The notable transitions between two statuses: a region created or scaled (once its
/// objects are applied), readiness gained or lost, degradation starting (or changing its
/// reason) and ending. Removed regions are reported by the sweep that deletes them.
pub fn transitions(old: Option<&GeoCacheStatus>, new: &GeoCacheStatus) -> Vec<Notice> {
    let mut notices = Vec::new();
    let notice = |warning, reason, note: String, region: Option<&str>| Notice {
        warning,
        reason,
        note,
        region: region.map(str::to_string),
    };

    let old_regions: BTreeMap<&str, &RegionStatus> =
        old.map(|s| s.regions.iter().map(|r| (r.name.as_str(), r)).collect()).unwrap_or_default();
    for region in &new.regions {
        let applied = !matches!(region.state.as_deref(), None | Some(STATE_PENDING));
        if !applied {
            continue;
        }
        match old_regions.get(region.name.as_str()) {
            None => notices.push(notice(
                false,
                "RegionCreated",
                format!("region {} created with {} nodes", region.name, region.replicas),
                Some(&region.name),
            )),
            Some(o) if o.state.as_deref() == Some(STATE_PENDING) => notices.push(notice(
                false,
                "RegionCreated",
                format!("region {} created with {} nodes", region.name, region.replicas),
                Some(&region.name),
            )),
            Some(o) if o.replicas != region.replicas => notices.push(notice(
                false,
                "RegionScaled",
                format!("region {} scaled from {} to {} nodes", region.name, o.replicas, region.replicas),
                Some(&region.name),
            )),
            Some(_) => {}
        }
    }

    let was = |t: &str| find(old, t).map(|c| c.status == "True");
    if let Some(ready) = find(Some(new), READY) {
        match (was(READY), ready.status == "True") {
            (Some(true), true) | (None | Some(false), false) => {}
            (_, true) => notices.push(notice(false, "Ready", ready.message.clone(), None)),
            (Some(true), false) => notices.push(notice(true, "NotReady", ready.message.clone(), None)),
        }
    }
    if let Some(degraded) = find(Some(new), DEGRADED) {
        let before = find(old, DEGRADED).filter(|o| o.status == "True");
        if degraded.status == "True" && before.is_none_or(|o| o.reason != degraded.reason) {
            let reason = match degraded.reason.as_str() {
                "InvalidSpec" => "InvalidSpec",
                "PeersDown" => "PeersDown",
                "NodesFailing" => "NodesFailing",
                _ => "ReconcileFailed",
            };
            notices.push(notice(true, reason, degraded.message.clone(), None));
        } else if let (Some(before), false) = (before, degraded.status == "True") {
            notices.push(notice(false, "Recovered", format!("no longer degraded (was {})", before.reason), None));
        }
    }
    notices
}

#[cfg(test)]
mod tests {
    use geocache_node::{Lag, PeerStatus};
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;

    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn sts(replicas: i32, ready: i32) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta { generation: Some(1), ..Default::default() },
            status: Some(StatefulSetStatus {
                observed_generation: Some(1),
                replicas,
                ready_replicas: Some(ready),
                updated_replicas: Some(replicas),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn peer(node_id: &str, region: &str, state: PeerState, lag_ms: u64) -> PeerStatus {
        PeerStatus {
            node_id: node_id.into(),
            region: region.into(),
            addr: format!("{node_id}.peers:7946"),
            state,
            last_seen_ms_ago: Some(1),
            lag: Lag { writes: 0, ms: lag_ms },
            rtt_ms: Some(1),
            clock_offset_ms: Some(0),
            clock_skewed: false,
        }
    }

    fn doc(id: &str, region: &str, peers: Vec<PeerStatus>) -> Result<StatusDocument, String> {
        Ok(StatusDocument {
            node_id: id.into(),
            region: region.into(),
            version: "0.1.0".into(),
            uptime_s: 1,
            keys: 0,
            memory_bytes: 0,
            ready: true,
            peers,
        })
    }

    /// Region `name` of GeoCache `c` with `replicas` nodes, the first `ready` of them ready.
    fn region(name: &str, replicas: i32, ready: i32) -> RegionObservation {
        let node_ids: Vec<String> = (0..replicas).map(|i| format!("c-{name}-{i}")).collect();
        RegionObservation {
            name: name.into(),
            replicas,
            pods: node_ids
                .iter()
                .enumerate()
                .map(|(i, id)| PodObservation { name: id.clone(), ready: (i as i32) < ready, ..Default::default() })
                .collect(),
            node_ids,
            statefulset: Some(sts(replicas, ready)),
            endpoint: Some(format!("{name}.example.com:7946")),
            ..Default::default()
        }
    }

    fn status(regions: &[RegionObservation]) -> GeoCacheStatus {
        compute_status(Some(1), None, regions, &[], vec![], at(10))
    }

    fn cond<'a>(s: &'a GeoCacheStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn is(s: &GeoCacheStatus, t: &str) -> bool {
        cond(s, t).status == "True"
    }

    #[test]
    fn all_regions_ready_makes_the_geocache_ready_current_and_not_degraded() {
        let s = compute_status(Some(4), None, &[region("eu", 3, 3), region("us", 2, 2)], &[], vec![], at(10));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.region_names.as_deref(), Some("eu,us"));
        assert_eq!(s.region_summary.as_deref(), Some("eu Ready 3/3, us Ready 2/2"));
        assert!(is(&s, READY) && !is(&s, RECONCILING) && !is(&s, STALLED) && !is(&s, DEGRADED) && !is(&s, PROGRESSING));
        assert_eq!(cond(&s, READY).message, "2 of 2 regions serve (eu 3/3, us 2/2 nodes ready)");
        assert_eq!(cond(&s, READY).observed_generation, Some(4));
        assert_eq!(s.regions[0].state.as_deref(), Some(STATE_READY));
    }

    #[test]
    fn a_region_starting_its_nodes_serves_once_one_is_ready_and_is_reconciling_not_degraded() {
        let s = status(&[region("eu", 3, 1), region("us", 2, 2)]);
        assert_eq!(s.ready.as_deref(), Some("1/2"), "regions with every node ready");
        assert!(is(&s, READY), "every region serves");
        assert!(is(&s, RECONCILING) && is(&s, PROGRESSING));
        assert_eq!(cond(&s, RECONCILING).reason, "RollingOut");
        assert!(cond(&s, RECONCILING).message.contains("eu: 1/3 nodes ready"));
        assert!(!is(&s, DEGRADED) && !is(&s, STALLED));
        assert_eq!(s.regions[0].state.as_deref(), Some(STATE_PROGRESSING));
    }

    #[test]
    fn a_region_without_a_ready_node_is_not_serving() {
        let s = status(&[region("eu", 3, 0), region("us", 2, 2)]);
        assert!(!is(&s, READY));
        assert_eq!(cond(&s, READY).message, "eu: no node ready (0/3)");
    }

    #[test]
    fn a_node_that_crashed_degrades_the_geocache_without_making_it_unready() {
        let mut eu = region("eu", 3, 2);
        eu.pods[2].restarts = 1;
        let s = status(&[eu, region("us", 2, 2)]);
        assert!(is(&s, READY));
        assert!(is(&s, DEGRADED));
        assert_eq!(cond(&s, DEGRADED).reason, "NodesFailing");
        assert_eq!(cond(&s, DEGRADED).message, "eu: 2/3 nodes ready, c-eu-2 is not ready after 1 restarts");
        assert!(!is(&s, RECONCILING), "a crash is not progress");
        assert_eq!(s.regions[0].state.as_deref(), Some(STATE_DEGRADED));
    }

    #[test]
    fn pods_that_cannot_start_stall_the_geocache() {
        let mut eu = region("eu", 1, 0);
        eu.pods[0].waiting = Some("ImagePullBackOff".into());
        let s = status(&[eu]);
        assert!(is(&s, STALLED));
        assert_eq!(cond(&s, STALLED).reason, "PodsCannotStart");
        assert!(cond(&s, STALLED).message.contains("c-eu-0 is not ready (ImagePullBackOff)"));
        assert_eq!(s.regions[0].state.as_deref(), Some(STATE_UNAVAILABLE));
    }

    #[test]
    fn an_unreachable_cluster_degrades_and_stalls_the_geocache_and_names_the_region() {
        let mut us = region("us", 2, 0);
        us.statefulset = None;
        us.error = Some("cluster unreachable: connection refused".into());
        let s = status(&[region("eu", 3, 3), us]);
        assert!(is(&s, DEGRADED) && is(&s, STALLED) && !is(&s, READY));
        assert_eq!(cond(&s, DEGRADED).reason, "ReconcileFailed");
        assert!(cond(&s, DEGRADED).message.starts_with("us: cluster unreachable"));
        assert_eq!(s.regions[1].message.as_deref(), Some("cluster unreachable: connection refused"));
        assert_eq!(s.regions[1].state.as_deref(), Some(STATE_PENDING), "never applied");
        let again = compute_status(
            Some(1),
            Some(&status(&[region("eu", 3, 3), region("us", 2, 2)])),
            &[region("eu", 3, 3), {
                let mut us = region("us", 2, 0);
                us.statefulset = None;
                us.error = Some("gone".into());
                us
            }],
            &[],
            vec![],
            at(20),
        );
        assert_eq!(again.regions[1].state.as_deref(), Some(STATE_FAILED), "applied before");
    }

    #[test]
    fn a_pending_load_balancer_keeps_the_geocache_reconciling() {
        let mut eu = region("eu", 3, 3);
        eu.endpoint = None;
        eu.endpoint_pending = true;
        let s = status(&[eu]);
        assert_eq!(cond(&s, RECONCILING).reason, "WaitingForEndpoints");
        assert!(!is(&s, READY));
    }

    #[test]
    fn a_region_scaled_to_zero_is_stopped_and_does_not_block_readiness() {
        let s = status(&[region("eu", 0, 0), region("us", 1, 1)]);
        assert!(is(&s, READY));
        assert_eq!(s.regions[0].state.as_deref(), Some(STATE_STOPPED));
    }

    /// Two regions, eu (2 nodes) and us (1), each node seeing the others.
    fn linked(eu_sees_us: PeerState) -> Vec<RegionObservation> {
        let mut eu = region("eu", 2, 2);
        eu.nodes = vec![
            doc("c-eu-0", "eu", vec![peer("c-eu-1", "eu", PeerState::Up, 12), peer("c-us-0", "us", eu_sees_us, 40)]),
            doc("c-eu-1", "eu", vec![peer("c-eu-0", "eu", PeerState::Up, 7), peer("c-us-0", "us", PeerState::Up, 9)]),
        ];
        let mut us = region("us", 1, 1);
        us.nodes = vec![doc(
            "c-us-0",
            "us",
            vec![peer("c-eu-0", "eu", PeerState::Up, 3), peer("c-eu-1", "eu", PeerState::Up, 5)],
        )];
        vec![eu, us]
    }

    #[test]
    fn peers_up_counts_the_nodes_of_the_spec_each_node_sees_up_the_same_way_in_every_region() {
        let s = status(&linked(PeerState::Up));
        assert_eq!(s.regions[0].peers_up, Some(2));
        assert_eq!(s.regions[1].peers_up, Some(2));
        assert_eq!(s.regions[0].peers_expected, Some(2));
        assert_eq!(s.regions[0].max_lag_ms, Some(40));
        assert_eq!(s.max_lag.as_deref(), Some("40ms"));
        assert!(peers_seen_down(&linked(PeerState::Up)).is_empty());
    }

    #[test]
    fn a_ready_peer_seen_down_is_named_and_degrades_once_confirmed() {
        let regions = linked(PeerState::Down);
        let down = peers_seen_down(&regions);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].message, "c-eu-0 sees c-us-0 (us) down");
        let s = compute_status(Some(1), None, &regions, &down, vec![], at(10));
        assert_eq!(cond(&s, DEGRADED).reason, "PeersDown");
        assert_eq!(cond(&s, DEGRADED).message, "c-eu-0 sees c-us-0 (us) down");
        assert_eq!(s.regions[0].state.as_deref(), Some(STATE_DEGRADED));
        assert_eq!(s.regions[0].peers_up, Some(1));
    }

    #[test]
    fn peers_of_removed_regions_scaled_down_ordinals_and_unready_pods_are_not_down() {
        let mut regions = linked(PeerState::Up);
        regions[0].nodes = vec![doc(
            "c-eu-0",
            "eu",
            vec![
                peer("c-eu-1", "eu", PeerState::Up, 1),
                peer("c-us-0", "us", PeerState::Up, 1),
                peer("c-ap-0", "ap", PeerState::Down, 1), // region removed from the spec
                peer("c-us-1", "us", PeerState::Down, 1), // ordinal scaled away
            ],
        )];
        assert!(peers_seen_down(&regions).is_empty(), "{:?}", peers_seen_down(&regions));
        // A pod that is not ready is reported as such, not as a peer down.
        let mut regions = linked(PeerState::Down);
        regions[1].pods[0].ready = false;
        assert!(peers_seen_down(&regions).is_empty());
        let s = status(&regions);
        assert_eq!(s.regions[0].peers_up, Some(1), "only nodes of the spec count: c-eu-1");
    }

    #[test]
    fn an_unidentified_endpoint_counts_only_when_its_region_is_not_reached_otherwise() {
        let endpoint = |state| PeerStatus {
            node_id: String::new(),
            region: "us".into(),
            addr: "203.0.113.7:7946".into(),
            state,
            last_seen_ms_ago: None,
            lag: Lag::default(),
            rtt_ms: None,
            clock_offset_ms: None,
            clock_skewed: false,
        };
        let mut regions = linked(PeerState::Up);
        regions[0].nodes =
            vec![doc("c-eu-0", "eu", vec![peer("c-us-0", "us", PeerState::Up, 1), endpoint(PeerState::Down)])];
        assert!(peers_seen_down(&regions).is_empty(), "us is reached through c-us-0");
        regions[0].nodes = vec![doc("c-eu-0", "eu", vec![endpoint(PeerState::Down)])];
        let down = peers_seen_down(&regions);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].message, "c-eu-0 cannot reach region us at 203.0.113.7:7946");
        // No message with an empty name, whatever the node reports.
        assert!(!down[0].message.contains("  "));
    }

    #[test]
    fn a_peer_down_is_confirmed_only_after_the_grace_in_every_observation() {
        let down = peers_seen_down(&linked(PeerState::Down));
        let mut watch = PeerWatch::default();
        assert_eq!(watch.confirm(down.clone(), 100, 10), (vec![], true));
        assert_eq!(watch.confirm(down.clone(), 105, 10), (vec![], true));
        assert_eq!(watch.confirm(down.clone(), 110, 10), (down.clone(), false));
        // Seen up once: the count starts again.
        assert_eq!(watch.confirm(vec![], 111, 10), (vec![], false));
        assert_eq!(watch.confirm(down.clone(), 112, 10), (vec![], true));
    }

    /// A node of `region` seeing each `(peer region, offset)`; skewed beyond 500 ms.
    fn seeing_clocks(id: &str, region: &str, peers: &[(&str, i64)]) -> Result<StatusDocument, String> {
        let peers = peers
            .iter()
            .map(|&(peer_region, offset)| PeerStatus {
                clock_offset_ms: Some(offset),
                clock_skewed: offset.abs() > 500,
                ..peer(&format!("c-{peer_region}-0"), peer_region, PeerState::Up, 0)
            })
            .collect();
        doc(id, region, peers)
    }

    #[test]
    fn a_region_whose_clock_is_off_is_named_in_a_clock_skew_condition() {
        let mut eu = region("eu", 1, 1);
        eu.nodes = vec![seeing_clocks("c-eu-0", "eu", &[("us", 10_000), ("ap", 3)])];
        let mut us = region("us", 1, 1);
        us.nodes = vec![seeing_clocks("c-us-0", "us", &[("eu", -10_000), ("ap", -9_990)])];
        let mut ap = region("ap", 1, 1);
        ap.nodes = vec![seeing_clocks("c-ap-0", "ap", &[("eu", -3), ("us", 9_990)])];
        let s = status(&[eu, us, ap]);
        let c = cond(&s, CLOCK_SKEW);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "ClockSkew"));
        assert!(
            c.message.starts_with("region us's clock is off (c-ap-0 sees it +9990 ms, c-eu-0 sees it +10000 ms)"),
            "{}",
            c.message
        );
        assert!(!c.message.contains("region eu's"), "{}", c.message);
        // Skew alone does not make the GeoCache unready.
        assert!(is(&s, READY));
    }

    #[test]
    fn clocks_within_the_bound_make_the_clock_skew_condition_false() {
        let mut eu = region("eu", 1, 1);
        eu.nodes = vec![seeing_clocks("c-eu-0", "eu", &[("us", 40)])];
        assert!(!is(&status(&[eu]), CLOCK_SKEW));
    }

    #[test]
    fn nodes_that_do_not_answer_are_reported_without_failing_the_region() {
        let mut eu = region("eu", 2, 2);
        eu.nodes = vec![doc("c-eu-0", "eu", vec![]), Err("c-eu-1: connection refused".into())];
        let s = status(&[eu]);
        assert_eq!(s.regions[0].message.as_deref(), Some("1 of 2 nodes did not answer: c-eu-1: connection refused"));
        assert!(is(&s, READY));
    }

    #[test]
    fn an_unchanged_observation_yields_an_identical_status() {
        let regions = [region("eu", 3, 3)];
        let first = compute_status(Some(1), None, &regions, &[], vec![], at(10));
        let second = compute_status(Some(1), Some(&first), &regions, &[], vec![], at(99));
        assert_eq!(first, second, "transition times are kept, so nothing needs writing");
        assert!(!materially_different(Some(&first), &second));
    }

    #[test]
    fn a_lag_change_alone_is_not_a_material_change() {
        let mut a = linked(PeerState::Up);
        let first = status(&a);
        a[0].nodes[0] =
            doc("c-eu-0", "eu", vec![peer("c-eu-1", "eu", PeerState::Up, 1), peer("c-us-0", "us", PeerState::Up, 900)]);
        let second = compute_status(Some(1), Some(&first), &a, &[], vec![], at(20));
        assert_ne!(first, second);
        assert!(!materially_different(Some(&first), &second));
    }

    #[test]
    fn a_condition_that_flips_gets_a_new_transition_time() {
        let first = status(&[region("eu", 3, 3)]);
        let second = compute_status(Some(1), Some(&first), &[region("eu", 3, 0)], &[], vec![], at(99));
        assert_eq!(cond(&second, READY).last_transition_time, at(99));
        assert_eq!(cond(&second, DEGRADED).last_transition_time, at(10));
        assert!(materially_different(Some(&first), &second));
    }

    #[test]
    fn an_invalid_spec_keeps_the_last_observed_regions_and_readiness_and_stalls() {
        let good = status(&[region("eu", 3, 3)]);
        let bad = invalid_status(Some(2), Some(&good), "region names must be unique", at(20));
        assert_eq!(bad.observed_generation, Some(2));
        assert_eq!(bad.regions, good.regions);
        assert_eq!(cond(&bad, DEGRADED).reason, "InvalidSpec");
        assert_eq!(cond(&bad, STALLED).reason, "InvalidSpec");
        assert!(is(&bad, READY), "the caches still serve as before");
        assert!(!is(&invalid_status(Some(1), None, "x", at(20)), READY));
    }

    #[test]
    fn lag_reads_well_at_every_scale() {
        assert_eq!(format_lag(35), "35ms");
        assert_eq!(format_lag(1234), "1.2s");
        assert_eq!(format_lag(185_000), "3m5s");
    }

    fn reasons(n: &[Notice]) -> Vec<&str> {
        n.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn each_region_created_is_its_own_event_and_readiness_follows_once() {
        let starting = status(&[region("eu", 2, 0), region("us", 2, 0), region("ap", 1, 0)]);
        let created = transitions(None, &starting);
        let notes: Vec<&str> = created.iter().map(|n| n.note.as_str()).collect();
        assert_eq!(
            notes,
            vec!["region eu created with 2 nodes", "region us created with 2 nodes", "region ap created with 1 nodes"]
        );
        assert!(created.iter().all(|n| !n.warning));
        let ready = compute_status(
            Some(1),
            Some(&starting),
            &[region("eu", 2, 2), region("us", 2, 2), region("ap", 1, 1)],
            &[],
            vec![],
            at(20),
        );
        let notices = transitions(Some(&starting), &ready);
        assert_eq!(reasons(&notices), vec!["Ready"]);
        assert_eq!(notices[0].note, "3 of 3 regions serve (eu 2/2, us 2/2, ap 1/1 nodes ready)");
        assert!(transitions(Some(&ready), &ready).is_empty());
    }

    #[test]
    fn a_region_that_failed_to_apply_is_not_announced_as_created_until_it_is() {
        let mut us = region("us", 2, 0);
        us.statefulset = None;
        us.error = Some("failed to apply StatefulSet c-us: invalid".into());
        let failed = status(&[region("eu", 1, 1), us]);
        let notices = transitions(None, &failed);
        assert!(!notices.iter().any(|n| n.note.contains("region us created")), "{notices:?}");
        assert!(notices.iter().any(|n| n.reason == "ReconcileFailed" && n.warning));
        let fixed =
            compute_status(Some(2), Some(&failed), &[region("eu", 1, 1), region("us", 2, 0)], &[], vec![], at(20));
        let notices = transitions(Some(&failed), &fixed);
        assert!(notices.iter().any(|n| n.reason == "RegionCreated" && n.note == "region us created with 2 nodes"));
        assert!(notices.iter().any(|n| n.reason == "Recovered" && !n.warning), "{notices:?}");
    }

    #[test]
    fn a_normal_scale_up_is_one_normal_event_and_no_warning() {
        let before = status(&[region("eu", 2, 2), region("us", 2, 2)]);
        let scaling =
            compute_status(Some(2), Some(&before), &[region("eu", 2, 2), region("us", 3, 2)], &[], vec![], at(20));
        let notices = transitions(Some(&before), &scaling);
        assert_eq!(reasons(&notices), vec!["RegionScaled"]);
        assert_eq!(notices[0].note, "region us scaled from 2 to 3 nodes");
        assert!(!notices[0].warning);
        let done =
            compute_status(Some(2), Some(&scaling), &[region("eu", 2, 2), region("us", 3, 3)], &[], vec![], at(30));
        assert!(transitions(Some(&scaling), &done).is_empty());
    }

    #[test]
    fn losing_service_is_a_warning_and_a_new_degradation_too() {
        let ready = status(&[region("eu", 1, 1)]);
        let lost = compute_status(Some(1), Some(&ready), &[region("eu", 1, 0)], &[], vec![], at(30));
        let notices = transitions(Some(&ready), &lost);
        assert_eq!(reasons(&notices), vec!["NotReady"]);
        assert!(notices[0].warning);
        let mut broken = region("eu", 1, 1);
        broken.error = Some("apply failed".into());
        let failed = compute_status(Some(2), Some(&ready), &[broken], &[], vec![], at(20));
        let notices = transitions(Some(&ready), &failed);
        let reasons = reasons(&notices);
        assert!(reasons.contains(&"ReconcileFailed"), "{reasons:?}");
        assert!(reasons.contains(&"NotReady"), "{reasons:?}");
    }
}
