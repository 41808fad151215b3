//! The update-status step, pure part: from what was observed of each region (its
//! StatefulSet, its endpoint, its nodes' `/v1/status` documents) to the GeoCache's status,
//! and from the old and new status to the Events worth publishing.

use std::collections::BTreeMap;

use geocache_node::{PeerState, StatusDocument};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ClusterRef, GeoCacheStatus, RegionStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const CLOCK_SKEW: &str = "ClockSkew";

/// What one reconcile saw of one region.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegionObservation {
    pub name: String,
    /// Nodes wanted.
    pub replicas: i32,
    /// The StatefulSet as the API server returned it (absent when applying failed).
    pub statefulset: Option<StatefulSet>,
    /// The region's endpoint for the other regions, when known.
    pub endpoint: Option<String>,
    /// Another cluster needs the endpoint and it is not known yet.
    pub endpoint_pending: bool,
    /// One entry per node asked: its status document, or why it did not answer.
    pub nodes: Vec<Result<StatusDocument, String>>,
    /// Why the region could not be reconciled (its cluster is unreachable, an apply failed).
    pub error: Option<String>,
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

    fn ready(&self) -> bool {
        self.error.is_none() && !self.endpoint_pending && !self.rolling() && self.ready_replicas() >= self.replicas
    }

    fn answered(&self) -> impl Iterator<Item = &StatusDocument> {
        self.nodes.iter().filter_map(|n| n.as_ref().ok())
    }

    fn peers_up(&self) -> Option<i64> {
        self.answered().map(|doc| doc.peers.iter().filter(|p| p.state == PeerState::Up).count() as i64).min()
    }

    fn max_lag_ms(&self) -> Option<i64> {
        self.answered().flat_map(|doc| doc.peers.iter()).map(|p| i64::try_from(p.lag.ms).unwrap_or(i64::MAX)).max()
    }

    /// `node -> peer` pairs where the node sees the peer down.
    fn peers_down(&self) -> Vec<String> {
        self.answered()
            .flat_map(|doc| {
                doc.peers
                    .iter()
                    .filter(|p| p.state == PeerState::Down)
                    .map(move |p| format!("{} sees {} ({}) down", doc.node_id, p.node_id, p.region))
            })
            .collect()
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
        let silent: Vec<&str> = self.nodes.iter().filter_map(|n| n.as_ref().err().map(String::as_str)).collect();
        (!silent.is_empty())
            .then(|| format!("{} of {} nodes did not answer: {}", silent.len(), self.nodes.len(), silent[0]))
    }
}

/// Computes the status. `old` supplies the conditions' transition times; `now` is the time
/// of a transition.
pub fn compute_status(
    generation: Option<i64>,
    old: Option<&GeoCacheStatus>,
    regions: &[RegionObservation],
    member_clusters: Vec<ClusterRef>,
    now: Time,
) -> GeoCacheStatus {
    let ready_count = regions.iter().filter(|r| r.ready()).count();
    let total = regions.len();

    let not_ready: Vec<String> = regions
        .iter()
        .filter(|r| !r.ready())
        .map(|r| match r.message() {
            Some(m) if r.error.is_some() || r.endpoint_pending => format!("{}: {m}", r.name),
            _ => format!("{}: {}/{} nodes ready", r.name, r.ready_replicas(), r.replicas),
        })
        .collect();
    let ready = if not_ready.is_empty() {
        condition(READY, true, "AllRegionsReady", &format!("{total} of {total} regions ready"))
    } else {
        condition(READY, false, "RegionsNotReady", &not_ready.join("; "))
    };

    let progressing_regions: Vec<String> = regions
        .iter()
        .filter(|r| r.error.is_none())
        .filter_map(|r| {
            if r.endpoint_pending {
                Some(format!("{}: waiting for its replication endpoint", r.name))
            } else if r.rolling() || r.ready_replicas() < r.replicas {
                Some(format!("{}: {}/{} nodes ready", r.name, r.ready_replicas(), r.replicas))
            } else {
                None
            }
        })
        .collect();
    let progressing = if progressing_regions.is_empty() {
        condition(PROGRESSING, false, "Stable", "every region is at its desired state")
    } else {
        let reason = if regions.iter().any(|r| r.endpoint_pending) { "WaitingForEndpoints" } else { "RollingOut" };
        condition(PROGRESSING, true, reason, &progressing_regions.join("; "))
    };

    let failed: Vec<String> =
        regions.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.name))).collect();
    let peers_down: Vec<String> = regions.iter().flat_map(RegionObservation::peers_down).collect();
    let degraded = if !failed.is_empty() {
        condition(DEGRADED, true, "ReconcileFailed", &failed.join("; "))
    } else if !peers_down.is_empty() {
        condition(DEGRADED, true, "PeersDown", &peers_down.join("; "))
    } else {
        condition(DEGRADED, false, "AsExpected", "no failures observed")
    };

    let clock_skew = clock_skew_condition(regions);

    let region_status: Vec<RegionStatus> = regions
        .iter()
        .map(|r| RegionStatus {
            name: r.name.clone(),
            replicas: r.replicas,
            ready_replicas: r.ready_replicas(),
            endpoint: r.endpoint.clone(),
            peers_up: r.peers_up(),
            max_lag_ms: r.max_lag_ms(),
            message: r.message(),
        })
        .collect();
    let max_lag = region_status.iter().filter_map(|r| r.max_lag_ms).max();

    GeoCacheStatus {
        observed_generation: generation,
        conditions: with_transition_times(old, vec![ready, progressing, degraded, clock_skew], generation, now),
        ready: Some(format!("{ready_count}/{total}")),
        region_names: Some(regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(",")),
        max_lag: max_lag.map(format_lag),
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

/// The status of an object whose spec is invalid: nothing was applied; the regions keep
/// what was last observed of them.
pub fn invalid_status(
    generation: Option<i64>,
    old: Option<&GeoCacheStatus>,
    message: &str,
    now: Time,
) -> GeoCacheStatus {
    let old_or_default = old.cloned().unwrap_or_default();
    let conditions = vec![
        condition(READY, false, "InvalidSpec", message),
        condition(PROGRESSING, false, "InvalidSpec", "the spec must be fixed before anything is applied"),
        condition(DEGRADED, true, "InvalidSpec", message),
    ];
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
}

fn find<'a>(status: Option<&'a GeoCacheStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// The notable transitions between two statuses: readiness gained or lost, degradation
/// starting (or changing its reason), regions appearing and disappearing.
pub fn transitions(old: Option<&GeoCacheStatus>, new: &GeoCacheStatus) -> Vec<Notice> {
    let mut notices = Vec::new();
    let was = |t: &str| find(old, t).map(|c| c.status == "True");
    let now_true = |t: &str| find(Some(new), t).is_some_and(|c| c.status == "True");

    if let Some(ready) = find(Some(new), READY) {
        match (was(READY), now_true(READY)) {
            (Some(true), true) | (None | Some(false), false) => {}
            (_, true) => notices.push(Notice { warning: false, reason: "Ready", note: ready.message.clone() }),
            (Some(true), false) => {
                notices.push(Notice { warning: true, reason: "NotReady", note: ready.message.clone() })
            }
        }
    }
    if let Some(degraded) = find(Some(new), DEGRADED)
        && degraded.status == "True"
        && find(old, DEGRADED).is_none_or(|o| o.status != "True" || o.reason != degraded.reason)
    {
        let reason = match degraded.reason.as_str() {
            "InvalidSpec" => "InvalidSpec",
            "PeersDown" => "PeersDown",
            _ => "ReconcileFailed",
        };
        notices.push(Notice { warning: true, reason, note: degraded.message.clone() });
    }

    let old_regions: Vec<&str> = old.map(|s| s.regions.iter().map(|r| r.name.as_str()).collect()).unwrap_or_default();
    let new_regions: Vec<&str> = new.regions.iter().map(|r| r.name.as_str()).collect();
    for added in new_regions.iter().filter(|r| !old_regions.contains(r)) {
        notices.push(Notice { warning: false, reason: "RegionCreated", note: format!("region {added} created") });
    }
    if !new_regions.is_empty() {
        for removed in old_regions.iter().filter(|r| !new_regions.contains(r)) {
            notices.push(Notice {
                warning: false,
                reason: "RegionDeleted",
                note: format!("region {removed} and its resources deleted"),
            });
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

    fn node(id: &str, peers: Vec<(&str, PeerState, u64)>) -> Result<StatusDocument, String> {
        Ok(StatusDocument {
            node_id: id.into(),
            region: "eu".into(),
            version: "0.1.0".into(),
            uptime_s: 1,
            keys: 0,
            memory_bytes: 0,
            ready: true,
            peers: peers
                .into_iter()
                .map(|(peer, state, ms)| PeerStatus {
                    node_id: peer.into(),
                    region: "us".into(),
                    addr: "x:1".into(),
                    state,
                    last_seen_ms_ago: Some(1),
                    lag: Lag { writes: 0, ms },
                    rtt_ms: Some(1),
                    clock_offset_ms: Some(0),
                    clock_skewed: false,
                })
                .collect(),
        })
    }

    fn region(name: &str, replicas: i32, ready: i32) -> RegionObservation {
        RegionObservation {
            name: name.into(),
            replicas,
            statefulset: Some(sts(replicas, ready)),
            endpoint: Some(format!("{name}.example.com:7946")),
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a GeoCacheStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn all_regions_ready_makes_the_geocache_ready_and_stable() {
        let s = compute_status(Some(4), None, &[region("eu", 3, 3), region("us", 2, 2)], vec![], at(10));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.region_names.as_deref(), Some("eu,us"));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, READY).observed_generation, Some(4));
    }

    #[test]
    fn a_region_short_of_ready_nodes_is_progressing_and_counted_not_ready() {
        let s = compute_status(Some(1), None, &[region("eu", 3, 1), region("us", 2, 2)], vec![], at(10));
        assert_eq!(s.ready.as_deref(), Some("1/2"));
        assert_eq!(cond(&s, READY).status, "False");
        assert!(cond(&s, READY).message.contains("eu: 1/3 nodes ready"));
        assert_eq!(cond(&s, PROGRESSING).reason, "RollingOut");
        assert_eq!(s.regions[0].ready_replicas, 1);
    }

    #[test]
    fn an_unreachable_cluster_degrades_the_geocache_and_names_the_region() {
        let mut us = region("us", 2, 0);
        us.statefulset = None;
        us.error = Some("cluster unreachable: connection refused".into());
        let s = compute_status(Some(1), None, &[region("eu", 3, 3), us], vec![], at(10));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "ReconcileFailed");
        assert!(cond(&s, DEGRADED).message.starts_with("us: cluster unreachable"));
        assert_eq!(s.regions[1].message.as_deref(), Some("cluster unreachable: connection refused"));
    }

    #[test]
    fn a_pending_load_balancer_keeps_the_geocache_progressing() {
        let mut eu = region("eu", 3, 3);
        eu.endpoint = None;
        eu.endpoint_pending = true;
        let s = compute_status(Some(1), None, &[eu], vec![], at(10));
        assert_eq!(cond(&s, PROGRESSING).reason, "WaitingForEndpoints");
        assert_eq!(cond(&s, READY).status, "False");
    }

    #[test]
    fn node_reports_give_peers_up_and_the_highest_lag() {
        let mut eu = region("eu", 2, 2);
        eu.nodes = vec![
            node("eu-0", vec![("us-0", PeerState::Up, 12), ("us-1", PeerState::Up, 40)]),
            node("eu-1", vec![("us-0", PeerState::Up, 7)]),
        ];
        let s = compute_status(Some(1), None, &[eu], vec![], at(10));
        assert_eq!(s.regions[0].peers_up, Some(1));
        assert_eq!(s.regions[0].max_lag_ms, Some(40));
        assert_eq!(s.max_lag.as_deref(), Some("40ms"));
    }

    /// A node of `region` seeing each `(peer region, offset)`; skewed beyond 500 ms.
    fn seeing_clocks(id: &str, region: &str, peers: &[(&str, i64)]) -> Result<StatusDocument, String> {
        let mut doc = node(id, vec![])?;
        doc.region = region.into();
        doc.peers = peers
            .iter()
            .map(|&(peer_region, offset)| PeerStatus {
                node_id: format!("{peer_region}-0"),
                region: peer_region.into(),
                addr: "x:1".into(),
                state: PeerState::Up,
                last_seen_ms_ago: Some(1),
                lag: Lag::default(),
                rtt_ms: Some(80),
                clock_offset_ms: Some(offset),
                clock_skewed: offset.abs() > 500,
            })
            .collect();
        Ok(doc)
    }

    #[test]
    fn a_region_whose_clock_is_off_is_named_in_a_clock_skew_condition() {
        let mut eu = region("eu", 1, 1);
        eu.nodes = vec![seeing_clocks("eu-0", "eu", &[("us", 10_000), ("ap", 3)])];
        let mut us = region("us", 1, 1);
        us.nodes = vec![seeing_clocks("us-0", "us", &[("eu", -10_000), ("ap", -9_990)])];
        let mut ap = region("ap", 1, 1);
        ap.nodes = vec![seeing_clocks("ap-0", "ap", &[("eu", -3), ("us", 9_990)])];
        let s = compute_status(Some(1), None, &[eu, us, ap], vec![], at(10));
        let c = cond(&s, CLOCK_SKEW);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "ClockSkew"));
        assert!(
            c.message.starts_with("region us's clock is off (ap-0 sees it +9990 ms, eu-0 sees it +10000 ms)"),
            "{}",
            c.message
        );
        assert!(!c.message.contains("region eu's"), "{}", c.message);
        // Skew alone does not make the GeoCache unready.
        assert_eq!(cond(&s, READY).status, "True");
    }

    #[test]
    fn clocks_within_the_bound_make_the_clock_skew_condition_false() {
        let mut eu = region("eu", 1, 1);
        eu.nodes = vec![seeing_clocks("eu-0", "eu", &[("us", 40)])];
        let s = compute_status(Some(1), None, &[eu], vec![], at(10));
        assert_eq!(cond(&s, CLOCK_SKEW).status, "False");
    }

    #[test]
    fn a_peer_seen_down_degrades_the_geocache() {
        let mut eu = region("eu", 1, 1);
        eu.nodes = vec![node("eu-0", vec![("us-0", PeerState::Down, 5000)])];
        let s = compute_status(Some(1), None, &[eu], vec![], at(10));
        assert_eq!(cond(&s, DEGRADED).reason, "PeersDown");
        assert!(cond(&s, DEGRADED).message.contains("eu-0 sees us-0 (us) down"));
    }

    #[test]
    fn nodes_that_do_not_answer_are_reported_without_failing_the_region() {
        let mut eu = region("eu", 2, 2);
        eu.nodes = vec![node("eu-0", vec![]), Err("cache-eu-1: connection refused".into())];
        let s = compute_status(Some(1), None, &[eu], vec![], at(10));
        assert_eq!(
            s.regions[0].message.as_deref(),
            Some("1 of 2 nodes did not answer: cache-eu-1: connection refused")
        );
        assert_eq!(cond(&s, READY).status, "True");
    }

    #[test]
    fn an_unchanged_observation_yields_an_identical_status() {
        let regions = [region("eu", 3, 3)];
        let first = compute_status(Some(1), None, &regions, vec![], at(10));
        let second = compute_status(Some(1), Some(&first), &regions, vec![], at(99));
        assert_eq!(first, second, "transition times are kept, so nothing needs writing");
    }

    #[test]
    fn a_condition_that_flips_gets_a_new_transition_time() {
        let first = compute_status(Some(1), None, &[region("eu", 3, 3)], vec![], at(10));
        let second = compute_status(Some(1), Some(&first), &[region("eu", 3, 2)], vec![], at(99));
        assert_eq!(cond(&second, READY).last_transition_time, at(99));
        assert_eq!(cond(&second, DEGRADED).last_transition_time, at(10));
    }

    #[test]
    fn an_invalid_spec_keeps_the_last_observed_regions() {
        let good = compute_status(Some(1), None, &[region("eu", 3, 3)], vec![], at(10));
        let bad = invalid_status(Some(2), Some(&good), "region names must be unique", at(20));
        assert_eq!(bad.observed_generation, Some(2));
        assert_eq!(bad.regions, good.regions);
        assert_eq!(cond(&bad, DEGRADED).reason, "InvalidSpec");
        assert_eq!(cond(&bad, READY).status, "False");
    }

    #[test]
    fn lag_reads_well_at_every_scale() {
        assert_eq!(format_lag(35), "35ms");
        assert_eq!(format_lag(1234), "1.2s");
        assert_eq!(format_lag(185_000), "3m5s");
    }

    #[test]
    fn becoming_ready_and_losing_readiness_are_events() {
        let not_ready = compute_status(Some(1), None, &[region("eu", 3, 1)], vec![], at(10));
        let ready = compute_status(Some(1), Some(&not_ready), &[region("eu", 3, 3)], vec![], at(20));
        let reasons = |n: Vec<Notice>| n.into_iter().map(|n| n.reason).collect::<Vec<_>>();
        assert_eq!(reasons(transitions(None, &not_ready)), vec!["RegionCreated"]);
        assert_eq!(reasons(transitions(Some(&not_ready), &ready)), vec!["Ready"]);
        assert_eq!(reasons(transitions(Some(&ready), &ready)), Vec::<&str>::new());
        let lost = compute_status(Some(1), Some(&ready), &[region("eu", 3, 2)], vec![], at(30));
        let notices = transitions(Some(&ready), &lost);
        assert_eq!(notices[0].reason, "NotReady");
        assert!(notices[0].warning);
    }

    #[test]
    fn removing_a_region_is_an_event_and_so_is_a_new_degradation() {
        let two = compute_status(Some(1), None, &[region("eu", 1, 1), region("us", 1, 1)], vec![], at(10));
        let mut broken = region("eu", 1, 1);
        broken.error = Some("apply failed".into());
        let one = compute_status(Some(2), Some(&two), &[broken], vec![], at(20));
        let notices = transitions(Some(&two), &one);
        let reasons: Vec<&str> = notices.iter().map(|n| n.reason).collect();
        assert!(reasons.contains(&"RegionDeleted"), "{reasons:?}");
        assert!(reasons.contains(&"ReconcileFailed"), "{reasons:?}");
        assert!(reasons.contains(&"NotReady"), "{reasons:?}");
    }
}
