//! The controller: watches `GeoCache` objects and the children it owns, and runs the
//! reconcile pipeline for each (see [`reconcile`]).

mod apply;
mod backoff;
mod observe;
mod reconcile;
mod security;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{FutureExt, Shared, join_all};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, controller, watcher};
use kube::{Api, Client};

pub use reconcile::{error_policy, reconcile};

use crate::clusters::ClusterClients;
use crate::crd::GeoCache;
use crate::metrics::Metrics;
use crate::names::{LABEL_MANAGED_BY, MANAGER};
use backoff::Backoff;

/// Tunables of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// When to look again at a GeoCache that is at its desired state (to refresh lag).
    pub requeue_stable: Duration,
    /// When to look again at a GeoCache that is still converging.
    pub requeue_progressing: Duration,
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
    /// One recorder for every Event, so that repeated Events are aggregated.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clusters: ClusterClients,
    pub settings: Settings,
    /// Retry delays after failures, per object.
    backoff: Backoff,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            clusters: ClusterClients::default(),
            backoff: Backoff::new(settings.base_backoff, settings.max_backoff),
            settings,
        }
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
    Controller::new(api_in::<DeserializeGuard<GeoCache>>(client, ns), watcher::Config::default().any_semantic())
        .owns(api_in::<StatefulSet>(client, ns), owned.clone())
        .owns(api_in::<Service>(client, ns), owned.clone())
        .owns(api_in::<ConfigMap>(client, ns), owned.clone())
        .owns(api_in::<PodDisruptionBudget>(client, ns), owned)
        .with_config(controller::Config::default().concurrency(8))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => tracing::debug!(object = %object, ?action, "reconciled"),
                Err(controller::Error::ReconcilerFailed(error, object)) => {
                    tracing::warn!(object = %object, category = error.category(), error = %error, "reconcile failed")
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
