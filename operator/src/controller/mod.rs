//! The controller: watches `GeoCache` objects and the children it owns, and runs the
//! reconcile pipeline for each (see [`reconcile`]).

mod apply;
mod backoff;
mod observe;
mod reconcile;
mod security;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{FutureExt, Shared, join_all};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, controller, watcher};
use kube::{Api, Client, ResourceExt};

pub use reconcile::{error_policy, reconcile};

use crate::clusters::ClusterClients;
use crate::crd::GeoCache;
use crate::events::EventRecorder;
use crate::metrics::Metrics;
use crate::names::{LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER};
use crate::status::PeerWatch;
use backoff::Backoff;

/// Tunables of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// When to look again at a GeoCache that is at its desired state (to refresh lag).
    pub requeue_stable: Duration,
    /// When to look again at a GeoCache that is still converging.
    pub requeue_progressing: Duration,
    /// When to look again after the status changed: the nodes' view settles within
    /// seconds of a change (links being made, a peers file reloaded).
    pub requeue_settling: Duration,
    /// How long a node must keep seeing a peer down before the GeoCache is `Degraded`
    /// (a node marks a silent peer down after 3 s; links are remade within about 2 s).
    pub peer_down_grace: Duration,
    /// How long to wait for a node's `/v1/status` through the API server.
    pub node_status_timeout: Duration,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            requeue_stable: Duration::from_secs(60),
            requeue_progressing: Duration::from_secs(10),
            requeue_settling: Duration::from_secs(3),
            peer_down_grace: Duration::from_secs(10),
            node_status_timeout: Duration::from_secs(3),
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The operator's own cluster.
    pub client: Client,
    /// One recorder for every Event, so that repeats of the same Event are counted.
    pub events: EventRecorder,
    pub metrics: Arc<Metrics>,
    pub clusters: ClusterClients,
    pub settings: Settings,
    /// Retry delays after failures, per object.
    backoff: Backoff,
    /// Since when nodes have seen peers down, per object.
    peer_watch: Mutex<HashMap<String, PeerWatch>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let instance = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty());
        Context {
            events: EventRecorder::new(client.clone(), MANAGER, instance),
            client,
            metrics,
            clusters: ClusterClients::default(),
            backoff: Backoff::new(settings.base_backoff, settings.max_backoff),
            peer_watch: Mutex::new(HashMap::new()),
            settings,
        }
    }

    /// Runs `f` on the peer watch of `key`.
    pub fn with_peer_watch<T>(&self, key: &str, f: impl FnOnce(&mut PeerWatch) -> T) -> T {
        let mut watches = self.peer_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(watches.entry(key.to_string()).or_default())
    }

    /// Forgets the peer watch of a GeoCache that is gone.
    pub fn forget_peer_watch(&self, key: &str) {
        self.peer_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }

    /// The delay before retrying `key` after a failure (see [`Backoff`]).
    pub fn next_backoff(&self, key: &str) -> Duration {
        self.backoff.next(key, std::time::Instant::now())
    }

    /// Forgets the failures of `key` after it reconciled successfully.
    pub fn reset_backoff(&self, key: &str) {
        self.backoff.reset(key);
    }
}

/// A shutdown signal that several controllers can wait on.
pub type Shutdown = Shared<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// Makes a [`Shutdown`] out of any future.
pub fn shutdown_signal(fut: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    let boxed: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(fut);
    boxed.shared()
}

/// Runs the controller over `namespaces` (empty: every namespace) until `shutdown`.
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>, shutdown: Shutdown) {
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    join_all(scopes.into_iter().map(|ns| run_scope(ctx.clone(), ns, shutdown.clone()))).await;
}

fn api_in<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_scope(ctx: Arc<Context>, namespace: Option<String>, shutdown: Shutdown) {
    let ns = namespace.as_deref();
    tracing::info!(namespace = ns.unwrap_or("*"), "starting controller");
    let client = &ctx.client;
    // Only the operator's children are cached, not every StatefulSet of the cluster.
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    // Pods are the StatefulSets' children, not the GeoCache's: a pod that becomes ready or
    // fails is mapped to its GeoCache by the instance label, so the status follows at once.
    let pods = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER},{LABEL_INSTANCE}"));
    // Secrets the GeoCaches reference (member kubeconfigs, password Secrets) are not labelled:
    // every Secret of the watched namespaces is seen, and mapped to the GeoCaches that name
    // it (or, for the operator's own, carry its instance label).
    // Only their metadata is kept from the stream.
    let controller =
        Controller::new(api_in::<DeserializeGuard<GeoCache>>(client, ns), watcher::Config::default().any_semantic());
    let geocaches = controller.store();
    controller
        .watches(api_in::<PartialObjectMeta<Secret>>(client, ns), watcher::Config::default(), move |secret| {
            let known: Vec<GeoCache> =
                geocaches.state().iter().filter_map(|guard| guard.0.as_ref().ok().cloned()).collect();
            geocaches_of_secret(&secret.metadata, &known)
        })
        .owns(api_in::<StatefulSet>(client, ns), owned.clone())
        .owns(api_in::<Service>(client, ns), owned.clone())
        .owns(api_in::<ConfigMap>(client, ns), owned.clone())
        .owns(api_in::<PodDisruptionBudget>(client, ns), owned)
        .watches(api_in::<Pod>(client, ns), pods, |pod: Pod| by_instance_label(&pod))
        .with_config(controller::Config::default().concurrency(8).debounce(Duration::from_millis(500)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => tracing::debug!(object = %object, ?action, "reconciled"),
                // Logged once, by the error policy, with the retry delay.
                Err(controller::Error::ReconcilerFailed(error, object)) => {
                    tracing::debug!(object = %object, category = error.category(), error = %error, "reconcile failed")
                }
                // A change to an owned object can trigger a reconcile of a GeoCache that was
                // deleted in the meantime: nothing to do, not a failure.
                Err(controller::Error::ObjectNotFound(object)) => {
                    tracing::debug!(object = %object, "geocache gone before its reconcile")
                }
                Err(error) => tracing::warn!(error = %error, "controller error"),
            }
        })
        .await;
    tracing::info!(namespace = ns.unwrap_or("*"), "controller stopped");
}

/// The GeoCaches a Secret matters to: the one whose instance label it carries (the CA, the
/// client password and the regions' Secrets the operator made), and those whose spec names
/// it (member kubeconfigs, `passwordSecretRef`), in its namespace.
fn geocaches_of_secret(
    secret: &kube::api::ObjectMeta,
    geocaches: &[GeoCache],
) -> Vec<ObjectRef<DeserializeGuard<GeoCache>>> {
    let namespace = secret.namespace.clone().unwrap_or_default();
    let name = secret.name.clone().unwrap_or_default();
    let instance = secret.labels.as_ref().and_then(|l| l.get(LABEL_INSTANCE));
    geocaches
        .iter()
        .filter(|gc| gc.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|gc| instance == Some(&gc.name_any()) || crate::validate::referenced_secrets(&gc.spec).contains(&name))
        .map(|gc| ObjectRef::new(&gc.name_any()).within(&namespace))
        .collect()
}

/// The GeoCache an object of the operator belongs to, by its instance label.
fn by_instance_label<K: kube::Resource>(object: &K) -> Option<ObjectRef<DeserializeGuard<GeoCache>>> {
    let instance = object.meta().labels.as_ref()?.get(LABEL_INSTANCE)?;
    let namespace = object.meta().namespace.as_deref()?;
    Some(ObjectRef::new(instance).within(namespace))
}
