//! The apply step: server-side apply with the operator's one field manager, and removal
//! of what belongs to regions that left the spec.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{RegionServices, RegionWorkload};
use crate::crd::FIELD_MANAGER;
use crate::error::ApplyError;
use crate::names::LABEL_REGION;

/// Server-side applies `object` in `namespace` and returns what the API server stored.
pub async fn apply_object<K>(client: &Client, namespace: &str, object: &K) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(|source| ApplyError::Apply { kind: <K as k8s_openapi::Resource>::KIND, name, source })
}

/// Applies a region's Services; returns the replication Service as stored (its status
/// carries the load balancer's address).
pub async fn apply_services(
    client: &Client,
    namespace: &str,
    services: &RegionServices,
) -> Result<Service, ApplyError> {
    apply_object(client, namespace, &services.peers).await?;
    apply_object(client, namespace, &services.client).await?;
    apply_object(client, namespace, &services.replication).await
}

/// Applies a region's peers file, StatefulSet and PodDisruptionBudget, in that order (the
/// StatefulSet mounts the peers file); returns the StatefulSet as stored.
pub async fn apply_workload(
    client: &Client,
    namespace: &str,
    workload: &RegionWorkload,
) -> Result<StatefulSet, ApplyError> {
    apply_object(client, namespace, &workload.config_map).await?;
    let statefulset = apply_object(client, namespace, &workload.statefulset).await?;
    apply_object(client, namespace, &workload.pdb).await?;
    Ok(statefulset)
}

/// Deletes the operator's objects that match `selector` (see
/// [`crate::names::orphan_selector`]); returns how many it deleted, per region.
pub async fn delete_matching(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<BTreeMap<String, usize>, ApplyError> {
    let mut deleted = BTreeMap::new();
    // StatefulSets first: their pods stop before their Services and peers file go.
    delete_kind::<StatefulSet>(client, namespace, selector, &mut deleted).await?;
    delete_kind::<PodDisruptionBudget>(client, namespace, selector, &mut deleted).await?;
    delete_kind::<Service>(client, namespace, selector, &mut deleted).await?;
    delete_kind::<ConfigMap>(client, namespace, selector, &mut deleted).await?;
    // Only Secrets of a region (its certificate and passwords): the GeoCache-wide CA
    // and password Secrets carry no region label.
    delete_kind::<Secret>(client, namespace, &format!("{selector},{LABEL_REGION}"), &mut deleted).await?;
    Ok(deleted)
}

async fn delete_kind<K>(
    client: &Client,
    namespace: &str,
    selector: &str,
    deleted: &mut BTreeMap<String, usize>,
) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + DeserializeOwned,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await
        .map_err(|source| ApplyError::List { kind, source })?;
    for object in list {
        let region = object.metadata.labels.as_ref().and_then(|l| l.get(LABEL_REGION)).cloned().unwrap_or_default();
        let Some(name) = object.metadata.name else { continue };
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::debug!(kind, namespace, name = %name, region = %region, "deleted object");
                *deleted.entry(region).or_default() += 1;
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(source) => return Err(ApplyError::Delete { kind, name, source }),
        }
    }
    Ok(())
}
