//! `reconcile`: `finalizer` around `dereference -> validate -> build -> apply -> update
//! status`, and `cleanup` of member clusters when a GeoCache is deleted.
//!
//! Regions fail independently: a region whose cluster cannot be reached is reported in
//! status and Events while the others are still reconciled, and its last known endpoint
//! stays in the other regions' peers files (the data path may be fine even when the
//! operator cannot reach that cluster's API server).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, Client, Resource, ResourceExt};

use super::Context;
use super::apply::{apply_services, apply_workload, delete_matching};
use super::observe::{list_pods, node_statuses, pod_observation};
use crate::build::{build_region_services, build_region_workload, peers_file};
use crate::crd::{ClusterRef, FIELD_MANAGER, FINALIZER, GeoCache, GeoCacheStatus, ORPHAN_ANNOTATION};
use crate::endpoints::{endpoints_seen_from, observed_endpoint, public_endpoint};
use crate::error::{DereferenceError, Error};
use crate::names::orphan_selector;
use crate::status::{
    RegionObservation, compute_status, invalid_status, materially_different, peers_seen_down, transitions,
};
use crate::validate::{Plan, validate};

fn object_key(meta: &kube::api::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
}

/// The controller's entry point for one GeoCache.
pub async fn reconcile(object: Arc<DeserializeGuard<GeoCache>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let gc = match &object.0 {
        Ok(gc) => Arc::new(gc.clone()),
        Err(invalid) => {
            // A malformed object (stored under an older or hand-edited CRD) is reported, not crashed on.
            let reference = ObjectReference {
                api_version: Some("geocache.dev/v1alpha1".into()),
                kind: Some("GeoCache".into()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            publish(&ctx, &reference, true, "InvalidObject", &format!("the object does not parse: {}", invalid.error))
                .await;
            return Err(Error::InvalidObject(invalid.error.clone()));
        }
    };
    let key = object_key(&gc.metadata);
    let namespace = gc.namespace().unwrap_or_default();
    let api: Api<GeoCache> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, gc, |event| async {
        match event {
            finalizer::Event::Apply(gc) => apply(gc, &ctx).await,
            finalizer::Event::Cleanup(gc) => cleanup(gc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(inner) => inner,
        finalizer::Error::CleanupFailed(inner) => Error::Cleanup(Box::new(inner)),
        other => Error::Finalizer(Box::new(other)),
    });
    if result.is_ok() {
        ctx.reset_backoff(&key);
    }
    result
}

/// What to do after a failed reconcile: wait for a change of an invalid object, retry
/// anything else with exponential backoff.
pub fn error_policy(object: Arc<DeserializeGuard<GeoCache>>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.category());
    let meta = match &object.0 {
        Ok(gc) => &gc.metadata,
        Err(invalid) => &invalid.metadata,
    };
    let key = object_key(meta);
    if error.needs_object_change() {
        tracing::warn!(object = %key, category = error.category(), error = %error, "waiting for the object to change");
        return Action::await_change();
    }
    let delay = ctx.next_backoff(&key);
    tracing::warn!(object = %key, category = error.category(), error = %error, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

fn now() -> Time {
    // Whole seconds: that is what the API server stores, so a round trip compares equal.
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).unwrap_or_else(|_| Timestamp::now()))
}

async fn publish(ctx: &Context, reference: &ObjectReference, warning: bool, reason: &str, note: &str) {
    if let Err(error) = ctx.events.publish(reference, warning, reason, note).await {
        tracing::warn!(reason, error = %crate::error::brief(&error), "failed to publish event");
    }
}

/// Writes `status` when it differs from what is stored, and publishes the Events of the
/// transitions between the two (and logs regions created and scaled).
async fn write_status(ctx: &Context, gc: &GeoCache, status: GeoCacheStatus) -> Result<(), Error> {
    if gc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<GeoCache> = Api::namespaced(ctx.client.clone(), &gc.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "geocache.dev/v1alpha1",
        "kind": "GeoCache",
        "status": status,
    });
    api.patch_status(&gc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::UpdateStatus)?;
    let reference = gc.object_ref(&());
    let instance = gc.name_any();
    for notice in transitions(gc.status.as_ref(), &status) {
        if let Some(region) = &notice.region {
            tracing::info!(instance = %instance, region = %region, reason = notice.reason, "{}", notice.note);
        }
        publish(ctx, &reference, notice.warning, notice.reason, &notice.note).await;
    }
    Ok(())
}

/// One region's progress through a reconcile.
#[derive(Default)]
struct RegionRun {
    client: Option<Client>,
    pods: Vec<Pod>,
    statefulset: Option<StatefulSet>,
    error: Option<Error>,
}

async fn apply(gc: Arc<GeoCache>, ctx: &Context) -> Result<Action, Error> {
    let now = now();
    let key = object_key(&gc.metadata);
    // validate
    let plan = match validate(&gc) {
        Ok(plan) => plan,
        Err(invalid) => {
            let status = invalid_status(gc.metadata.generation, gc.status.as_ref(), &invalid.to_string(), now);
            write_status(ctx, &gc, status).await?;
            return Err(invalid.into());
        }
    };
    let owner = gc.controller_owner_ref(&());

    // the CA and the client password, in the operator's cluster
    let prepared = match super::security::prepare(&ctx.client, &plan, owner.as_ref()).await {
        Ok(prepared) => prepared,
        Err(e) => {
            publish(ctx, &gc.object_ref(&()), true, "SecurityFailed", &e.to_string()).await;
            return Err(e);
        }
    };

    // dereference: one client per cluster
    let mut runs: BTreeMap<String, RegionRun> = BTreeMap::new();
    let mut clients: BTreeMap<Option<ClusterRef>, Option<Client>> = BTreeMap::new();
    for region in &plan.regions {
        let mut run = RegionRun::default();
        match ctx.clusters.client_for(&ctx.client, &plan.namespace, region.cluster.as_ref()).await {
            Ok(client) => {
                clients.insert(region.cluster.clone(), Some(client.clone()));
                run.client = Some(client);
            }
            Err(e) => {
                clients.insert(region.cluster.clone(), None);
                run.error = Some(e.into());
            }
        }
        runs.insert(region.name.clone(), run);
    }

    // build + apply, first the Services: their addresses feed every peers file
    let mut public: BTreeMap<String, String> = BTreeMap::new();
    for region in &plan.regions {
        let Some(run) = runs.get_mut(&region.name) else { continue };
        let Some(client) = run.client.clone() else { continue };
        let owner = region.cluster.is_none().then_some(owner.as_ref()).flatten();
        let services = build_region_services(&plan, region, owner);
        let observed = async {
            let replication = apply_services(&client, &plan.namespace, &services).await?;
            let pods = list_pods(&client, &plan, region).await?;
            Ok::<_, Error>((replication, pods))
        }
        .await;
        match observed {
            Ok((replication, pods)) => {
                if let Some(endpoint) = public_endpoint(&plan, region, observed_endpoint(&replication, &pods).as_ref())
                {
                    public.insert(region.name.clone(), endpoint);
                }
                run.pods = pods;
            }
            Err(e) => run.error = Some(e),
        }
    }
    // A region that could not be observed keeps its last known endpoint.
    for previous in gc.status.iter().flat_map(|s| s.regions.iter()) {
        let failed = runs.get(&previous.name).is_some_and(|r| r.error.is_some());
        if let (true, Some(endpoint)) = (failed, &previous.endpoint) {
            public.entry(previous.name.clone()).or_insert_with(|| endpoint.clone());
        }
    }

    // then the peers files, StatefulSets and PodDisruptionBudgets
    for region in &plan.regions {
        let Some(run) = runs.get_mut(&region.name) else { continue };
        let (Some(client), None) = (run.client.clone(), &run.error) else { continue };
        let owner = region.cluster.is_none().then_some(owner.as_ref()).flatten();
        let endpoint = public.get(&region.name).map(String::as_str);
        if let Err(e) = super::security::apply_region(&client, &plan, region, &prepared, endpoint, owner).await {
            run.error = Some(e);
            continue;
        }
        let peers = peers_file(&plan, region, &endpoints_seen_from(&plan, region, &public));
        let workload = build_region_workload(&plan, region, &peers, owner);
        match apply_workload(&client, &plan.namespace, &workload).await {
            Ok(statefulset) => run.statefulset = Some(statefulset),
            Err(e) => run.error = Some(e.into()),
        }
    }

    // regions removed from the spec (or moved to another cluster) lose their objects
    let (member_clusters, sweep_error) = sweep_removed_regions(ctx, &gc, &plan, &clients).await;

    // update status: StatefulSets from the apply, nodes through the pod proxy
    let timeout = ctx.settings.node_status_timeout;
    let namespace = plan.namespace.as_str();
    let password = prepared.status_password();
    let password = password.as_deref();
    let tls = plan.security.client_tls;
    let node_reports = join_all(plan.regions.iter().map(|region| {
        let run = runs.get(&region.name);
        async move {
            match run.and_then(|r| r.client.as_ref().filter(|_| r.error.is_none()).map(|c| (c, &r.pods))) {
                Some((client, pods)) => node_statuses(client, namespace, pods, password, tls, timeout).await,
                None => Vec::new(),
            }
        }
    }))
    .await;
    let observations: Vec<RegionObservation> = plan
        .regions
        .iter()
        .zip(node_reports)
        .map(|(region, nodes)| {
            let run = runs.get(&region.name);
            let endpoint = public.get(&region.name).cloned();
            let needed_elsewhere = plan.regions.iter().any(|other| !other.same_cluster(region));
            RegionObservation {
                name: region.name.clone(),
                replicas: region.replicas,
                node_ids: (0..region.replicas).map(|ordinal| region.names.pod_name(ordinal)).collect(),
                statefulset: run.and_then(|r| r.statefulset.clone()),
                pods: run.map(|r| r.pods.iter().map(pod_observation).collect()).unwrap_or_default(),
                endpoint_pending: endpoint.is_none() && needed_elsewhere,
                endpoint,
                nodes,
                error: run.and_then(|r| r.error.as_ref().map(ToString::to_string)),
            }
        })
        .collect();
    let grace = i64::try_from(ctx.settings.peer_down_grace.as_secs()).unwrap_or(i64::MAX);
    let (peers_down, peers_pending) =
        ctx.with_peer_watch(&key, |watch| watch.confirm(peers_seen_down(&observations), now.0.as_second(), grace));
    let status =
        compute_status(gc.metadata.generation, gc.status.as_ref(), &observations, &peers_down, member_clusters, now);
    let converging = status.conditions.iter().any(|c| c.type_ == crate::status::RECONCILING && c.status == "True");
    let changed = materially_different(gc.status.as_ref(), &status);
    write_status(ctx, &gc, status).await?;

    // forget the clients of clusters that failed, so the next attempt starts afresh
    let mut failed: Vec<(String, Error)> =
        runs.into_iter().filter_map(|(name, run)| run.error.map(|e| (name, e))).collect();
    for region in plan.regions.iter().filter(|r| failed.iter().any(|(n, _)| *n == r.name)) {
        if let Some(cluster) = &region.cluster {
            ctx.clusters.forget(&plan.namespace, cluster).await;
        }
    }
    if !failed.is_empty() {
        let count = failed.len();
        let (region, source) = failed.swap_remove(0);
        return Err(Error::Regions { count, total: plan.regions.len(), region, source: Box::new(source) });
    }
    if let Some(error) = sweep_error {
        return Err(error);
    }
    // Look again soon after a change (the nodes' view settles within seconds), when a peer
    // seen down may become a failure, and while converging; else at the resync interval.
    let settings = &ctx.settings;
    let next = if changed || peers_pending {
        settings.requeue_settling
    } else if converging {
        settings.requeue_progressing
    } else {
        settings.requeue_stable
    };
    Ok(Action::requeue(next))
}

/// Deletes the objects of regions no longer wanted in each cluster the GeoCache uses or
/// used. Returns the member clusters still to remember, and the first failure.
async fn sweep_removed_regions(
    ctx: &Context,
    gc: &GeoCache,
    plan: &Plan,
    clients: &BTreeMap<Option<ClusterRef>, Option<Client>>,
) -> (Vec<ClusterRef>, Option<Error>) {
    let orphan = gc.annotations().get(ORPHAN_ANNOTATION).is_some_and(|v| v == "true");
    let in_spec: BTreeSet<Option<ClusterRef>> = plan.regions.iter().map(|r| r.cluster.clone()).collect();
    let previous: BTreeSet<Option<ClusterRef>> =
        gc.status.iter().flat_map(|s| s.member_clusters.iter().cloned().map(Some)).collect();
    let mut remembered: BTreeSet<ClusterRef> = in_spec.iter().flatten().cloned().collect();
    let mut first_error = None;
    let reference = gc.object_ref(&());

    let mut targets: BTreeSet<Option<ClusterRef>> = in_spec.clone();
    targets.insert(None); // the operator's own cluster, always
    if !orphan {
        targets.extend(previous);
    }
    for cluster in targets {
        let keep = plan.regions.iter().filter(|r| r.cluster == cluster).map(|r| r.name.as_str());
        let selector = orphan_selector(&plan.instance, keep);
        let client = match clients.get(&cluster) {
            Some(Some(client)) => client.clone(),
            Some(None) => continue, // already reported as a region failure
            None => match ctx.clusters.client_for(&ctx.client, &plan.namespace, cluster.as_ref()).await {
                Ok(client) => client,
                Err(DereferenceError::SecretNotFound { secret }) => {
                    let note = format!(
                        "kubeconfig secret {secret} of a removed region is gone; its objects in that cluster are left behind"
                    );
                    publish(ctx, &reference, true, "ClusterForgotten", &note).await;
                    continue;
                }
                Err(e) => {
                    remembered.extend(cluster.clone());
                    first_error.get_or_insert(Error::from(e));
                    continue;
                }
            },
        };
        match delete_matching(&client, &plan.namespace, &selector).await {
            Ok(deleted) => {
                let place = match &cluster {
                    Some(c) => format!("the cluster of kubeconfig secret {}", c.kubeconfig_secret_ref.name),
                    None => "this cluster".to_string(),
                };
                for (region, objects) in deleted {
                    tracing::info!(instance = %plan.instance, region = %region, objects, cluster = %place, "region removed");
                    let note = format!("region {region} removed: its {objects} objects in {place} deleted");
                    publish(ctx, &reference, false, "RegionDeleted", &note).await;
                }
            }
            Err(e) => {
                remembered.extend(cluster.clone());
                first_error.get_or_insert(Error::from(e));
            }
        }
    }
    (remembered.into_iter().collect(), first_error)
}

/// Deletes the GeoCache's objects in member clusters. Objects in the operator's own
/// cluster are owned by the GeoCache and go with it.
async fn cleanup(gc: Arc<GeoCache>, ctx: &Context) -> Result<Action, Error> {
    let reference = gc.object_ref(&());
    let namespace = gc.namespace().unwrap_or_default();
    let instance = gc.name_any();
    ctx.forget_peer_watch(&object_key(&gc.metadata));
    if gc.annotations().get(ORPHAN_ANNOTATION).is_some_and(|v| v == "true") {
        let note = format!("{ORPHAN_ANNOTATION}=true: objects in member clusters are left behind");
        publish(ctx, &reference, false, "OrphanedRemoteResources", &note).await;
        return Ok(Action::await_change());
    }
    let clusters: BTreeSet<ClusterRef> = gc
        .spec
        .regions
        .iter()
        .filter_map(|r| r.cluster.clone())
        .chain(gc.status.iter().flat_map(|s| s.member_clusters.iter().cloned()))
        .collect();
    for cluster in clusters {
        let secret = format!("{namespace}/{}", cluster.kubeconfig_secret_ref.name);
        let client = match ctx.clusters.client_for(&ctx.client, &namespace, Some(&cluster)).await {
            Ok(client) => client,
            Err(DereferenceError::SecretNotFound { .. }) => {
                let note = format!("kubeconfig secret {secret} is gone; objects in that cluster are left behind");
                publish(ctx, &reference, true, "ClusterForgotten", &note).await;
                continue;
            }
            Err(e) => {
                publish(ctx, &reference, true, "CleanupFailed", &cleanup_hint(&secret, &e.to_string())).await;
                return Err(e.into());
            }
        };
        if let Err(e) = delete_matching(&client, &namespace, &orphan_selector(&instance, [])).await {
            ctx.clusters.forget(&namespace, &cluster).await;
            publish(ctx, &reference, true, "CleanupFailed", &cleanup_hint(&secret, &e.to_string())).await;
            return Err(e.into());
        }
        tracing::info!(instance = %instance, secret = %secret, "deleted objects in member cluster");
    }
    Ok(Action::await_change())
}

fn cleanup_hint(secret: &str, error: &str) -> String {
    format!(
        "cannot clean up the member cluster of kubeconfig secret {secret}: {error}; retrying. If that cluster is \
         gone for good, annotate the GeoCache with {ORPHAN_ANNOTATION}=true to delete it without cleaning up"
    )
}
