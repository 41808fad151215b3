//! A local-path provisioner: every claim waiting for a volume gets a PersistentVolume
//! backed by a directory of this kubelet, pre-bound to it (the PV controller of the
//! kube-controller-manager completes the binding). Volumes whose claim is gone are deleted
//! with their directory, so a claim kept across pod restarts keeps its data, and a claim
//! deleted with its GeoCache takes its data along.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// Label that marks the volumes this provisioner made.
pub const PROVISIONED_BY: &str = "geocache.dev/test-kubelet";

/// The volume this provisioner makes for `claim`, whose data lives under `volumes_dir`.
pub fn volume_for(claim: &PersistentVolumeClaim, node: &str, volumes_dir: &Path) -> Option<PersistentVolume> {
    let uid = claim.metadata.uid.clone()?;
    let spec = claim.spec.as_ref()?;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".into()));
    let name = format!("pvc-{uid}");
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(PROVISIONED_BY.to_string(), node.to_string())])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), size)])),
            access_modes: spec.access_modes.clone(),
            storage_class_name: spec.storage_class_name.clone(),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            host_path: Some(HostPathVolumeSource {
                path: volumes_dir.join(&name).to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                ..ObjectReference::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

fn waiting_for_a_volume(claim: &PersistentVolumeClaim) -> bool {
    claim.metadata.deletion_timestamp.is_none()
        && claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("").is_empty()
}

/// One pass: volumes for new claims, and released volumes deleted.
pub async fn sync(client: &Client, node: &str, volumes_dir: &Path) -> anyhow::Result<()> {
    let claims = Api::<PersistentVolumeClaim>::all(client.clone()).list(&ListParams::default()).await?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mine = volumes.list(&ListParams::default().labels(&format!("{PROVISIONED_BY}={node}"))).await?;
    for claim in claims.items.iter().filter(|c| waiting_for_a_volume(c)) {
        let Some(volume) = volume_for(claim, node, volumes_dir) else { continue };
        if mine.items.iter().any(|v| v.metadata.name == volume.metadata.name) {
            continue;
        }
        match volumes.create(&PostParams::default(), &volume).await {
            Ok(_) => tracing::info!(
                claim = %claim.metadata.name.as_deref().unwrap_or_default(),
                volume = %volume.metadata.name.as_deref().unwrap_or_default(),
                "provisioned a local volume"
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let live: std::collections::BTreeSet<String> = claims.items.iter().filter_map(|c| c.metadata.uid.clone()).collect();
    for volume in &mine.items {
        let claim_uid = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
        if claim_uid.is_some_and(|uid| live.contains(&uid)) {
            continue;
        }
        let Some(name) = volume.metadata.name.as_deref() else { continue };
        let path: Option<PathBuf> =
            volume.spec.as_ref().and_then(|s| s.host_path.as_ref()).map(|h| PathBuf::from(&h.path));
        volumes.delete(name, &DeleteParams::default()).await?;
        if let Some(path) = path.filter(|p| p.starts_with(volumes_dir)) {
            let _ = std::fs::remove_dir_all(&path);
        }
        tracing::info!(volume = %name, "deleted a released local volume");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};

    use super::*;

    #[test]
    fn a_claim_gets_a_volume_of_its_size_and_class_bound_to_it() {
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-demo-eu-0".into()),
                namespace: Some("default".into()),
                uid: Some("1234".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some("gp3".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity("5Gi".into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        let volume = volume_for(&claim, "node-1", Path::new("/state/volumes")).unwrap();
        let spec = volume.spec.unwrap();
        assert_eq!(volume.metadata.name.as_deref(), Some("pvc-1234"));
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("5Gi".into()));
        assert_eq!(spec.storage_class_name.as_deref(), Some("gp3"));
        assert_eq!(spec.claim_ref.unwrap().name.as_deref(), Some("data-demo-eu-0"));
        assert_eq!(spec.host_path.unwrap().path, "/state/volumes/pvc-1234");
    }
}
