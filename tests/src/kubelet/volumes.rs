//! A pod's volumes as host directories: ConfigMaps and Secrets written out as files (kept
//! up to date, each file replaced atomically so a reader never sees half of one), projected
//! volumes (ConfigMaps, Secrets, the downward API and ServiceAccount tokens from the
//! TokenRequest API, renewed before they expire: what a pod reads at
//! `/var/run/secrets/kubernetes.io/serviceaccount`), emptyDirs, and persistent volume claims
//! (the directory of the bound volume, see [`super::storage`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, ProjectedVolumeSource, Secret, ServiceAccount,
    ServiceAccountTokenProjection, Volume, VolumeMount,
};
use kube::api::PostParams;
use kube::{Api, Client};

use super::runtime::Bind;

/// Default file mode of ConfigMap and Secret volumes (Kubernetes' default).
const DEFAULT_MODE: u32 = 0o644;
/// Lifetime of a projected ServiceAccount token when the pod asks for none (Kubernetes' default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The host directory of each volume of a pod, under `pod_dir/volumes/<name>`.
pub fn volume_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir.join("volumes").join(volume)
}

/// Makes every volume of `pod` (fetching ConfigMaps, Secrets and claims) and returns the
/// bind mounts of the container's `mounts`. `fs_group` owns the files, as with `fsGroup`.
pub async fn materialize(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    mounts: &[VolumeMount],
    fs_group: Option<u32>,
    volumes_dir: &Path,
) -> anyhow::Result<Vec<Bind>> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for volume in &volumes {
        let path = write_volume(client, pod, volume, pod_dir, fs_group, volumes_dir)
            .await
            .with_context(|| format!("volume {}", volume.name))?;
        sources.insert(volume.name.clone(), path);
    }
    mounts
        .iter()
        .map(|m| {
            let source = sources.get(&m.name).ok_or_else(|| anyhow!("volume mount {} names no volume", m.name))?;
            let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) if !sub.contains("..") => source.join(sub),
                Some(sub) => bail!("volume mount {}: subPath {sub:?} leaves the volume", m.name),
                None => source.clone(),
            };
            Ok(Bind { source, target: PathBuf::from(&m.mount_path), read_only: m.read_only.unwrap_or(false) })
        })
        .collect()
}

/// Rewrites the ConfigMap and Secret volumes of `pod` whose content changed; returns
/// how many files changed.
pub async fn refresh(client: &Client, pod: &Pod, pod_dir: &Path, fs_group: Option<u32>) -> anyhow::Result<usize> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut changed = 0;
    for volume in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let dir = volume_dir(pod_dir, &volume.name);
        if volume.config_map.is_some() || volume.secret.is_some() {
            changed += write_keys_of(client, namespace, volume, &dir, fs_group).await?;
        }
        if let Some(projected) = &volume.projected {
            changed += write_projected(client, pod, projected, &dir, fs_group).await?;
        }
    }
    Ok(changed)
}

async fn write_volume(
    client: &Client,
    pod: &Pod,
    volume: &Volume,
    pod_dir: &Path,
    fs_group: Option<u32>,
    volumes_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = volume_dir(pod_dir, &volume.name);
    if volume.config_map.is_some() || volume.secret.is_some() || volume.projected.is_some() {
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        match &volume.projected {
            Some(projected) => write_projected(client, pod, projected, &dir, fs_group).await?,
            None => write_keys_of(client, namespace, volume, &dir, fs_group).await?,
        };
        return Ok(dir);
    }
    if volume.empty_dir.is_some() {
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        return Ok(dir);
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
            .get(&claim.claim_name)
            .await
            .with_context(|| format!("reading claim {}", claim.claim_name))?;
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| anyhow!("claim {} is not bound yet", claim.claim_name))?;
        let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await?;
        let path = pv
            .spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref())
            .map(|h| PathBuf::from(&h.path))
            .ok_or_else(|| anyhow!("volume {pv_name} is not a local volume of this kubelet"))?;
        if !path.starts_with(volumes_dir) {
            bail!("volume {pv_name} lies outside this kubelet's volume directory");
        }
        fs::create_dir_all(&path)?;
        if let Some(gid) = fs_group {
            chown(&path, Some(0), Some(gid))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o2775))?;
        }
        return Ok(path);
    }
    bail!("unsupported volume type (this kubelet knows configMap, secret, projected, emptyDir, persistentVolumeClaim)")
}

/// Writes a projected volume: each source's files at their paths, with the volume's mode.
/// A ServiceAccount token is requested when the volume has none yet or when 80 % of its
/// lifetime has passed (as the kubelet does), and kept as it is otherwise.
async fn write_projected(
    client: &Client,
    pod: &Pod,
    projected: &ProjectedVolumeSource,
    dir: &Path,
    fs_group: Option<u32>,
) -> anyhow::Result<usize> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for source in projected.sources.iter().flatten() {
        if let Some(cm) = &source.config_map {
            if let Some(data) = configmap_data(client, namespace, &cm.name, cm.optional).await? {
                select_items(&data, cm.items.as_deref(), &mut files)?;
            }
        } else if let Some(secret) = &source.secret {
            if let Some(data) = secret_data(client, namespace, &secret.name, secret.optional).await? {
                select_items(&data, secret.items.as_deref(), &mut files)?;
            }
        } else if let Some(downward) = &source.downward_api {
            for item in downward.items.iter().flatten() {
                let field = item.field_ref.as_ref().ok_or_else(|| {
                    anyhow!("downwardAPI item {}: only fieldRef is supported by this kubelet", item.path)
                })?;
                let value = pod_field(pod, &field.field_path).ok_or_else(|| {
                    anyhow!("downwardAPI item {}: field {} is not known here", item.path, field.field_path)
                })?;
                files.insert(item.path.clone(), value.into_bytes());
            }
        } else if let Some(token) = &source.service_account_token {
            let path = dir.join(&token.path);
            let lifetime = token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
            let bytes = match fs::read(&path) {
                Ok(bytes) if !token_due(&path, lifetime) => bytes,
                _ => request_token(client, pod, token, lifetime).await?.into_bytes(),
            };
            files.insert(token.path.clone(), bytes);
        } else {
            bail!(
                "projected volume: unsupported source (this kubelet knows configMap, secret, downwardAPI, serviceAccountToken)"
            );
        }
    }
    let mode = projected.default_mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(DEFAULT_MODE);
    write_keys(dir, &files, None, mode, fs_group)
}

/// The keys of ConfigMap `namespace/name` (`data` and `binaryData`); `None` when it is
/// missing and `optional`, an error when it is missing otherwise.
async fn configmap_data(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    match Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt(name).await? {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> =
                cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
            Ok(Some(data))
        }
        None if optional.unwrap_or(false) => Ok(None),
        None => bail!("configmap {namespace}/{name} not found"),
    }
}

/// The keys of Secret `namespace/name` (`data` and `stringData`), like [`configmap_data`].
async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    match Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await? {
        Some(secret) => {
            let mut data: BTreeMap<String, Vec<u8>> =
                secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            data.extend(secret.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
            Ok(Some(data))
        }
        None if optional.unwrap_or(false) => Ok(None),
        None => bail!("secret {namespace}/{name} not found"),
    }
}

/// The keys of `data` a projection selects (every key, or its `items` at their paths).
fn select_items(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<()> {
    match items {
        Some(items) => {
            for item in items {
                let bytes = data.get(&item.key).ok_or_else(|| anyhow!("key {} not found", item.key))?;
                files.insert(item.path.clone(), bytes.clone());
            }
        }
        None => files.extend(data.iter().map(|(k, v)| (k.clone(), v.clone()))),
    }
    Ok(())
}

/// A field of the pod's own, by its downward API path (`status.*` fields are the runner's).
pub fn pod_field(pod: &Pod, path: &str) -> Option<String> {
    match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
        _ => {
            let label = path.strip_prefix("metadata.labels['")?.strip_suffix("']")?;
            pod.metadata.labels.as_ref()?.get(label).cloned()
        }
    }
}

/// True when the token file at `path` is older than 80 % of `lifetime_seconds`.
fn token_due(path: &Path, lifetime_seconds: i64) -> bool {
    let renew_after = Duration::from_secs(u64::try_from(lifetime_seconds).unwrap_or(0) * 8 / 10);
    let age =
        fs::metadata(path).and_then(|m| m.modified()).map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
    age.map(|age| age >= renew_after).unwrap_or(true)
}

/// A token of the pod's ServiceAccount, bound to the pod (it stops working when the pod goes).
async fn request_token(
    client: &Client,
    pod: &Pod,
    projection: &ServiceAccountTokenProjection,
    lifetime_seconds: i64,
) -> anyhow::Result<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: projection.audience.clone().map(|audience| vec![audience]),
            expiration_seconds: Some(lifetime_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token of serviceaccount {namespace}/{account}"))?;
    response
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("the token request returned no token"))
}

async fn write_keys_of(
    client: &Client,
    namespace: &str,
    volume: &Volume,
    dir: &Path,
    fs_group: Option<u32>,
) -> anyhow::Result<usize> {
    let (data, items, mode) = if let Some(source) = &volume.config_map {
        let data = configmap_data(client, namespace, &source.name, source.optional).await?.unwrap_or_default();
        (data, source.items.clone(), source.default_mode)
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let data = secret_data(client, namespace, &name, source.optional).await?.unwrap_or_default();
        (data, source.items.clone(), source.default_mode)
    } else {
        return Ok(0);
    };
    let mode = mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(DEFAULT_MODE);
    write_keys(dir, &data, items.as_deref(), mode, fs_group)
}

/// Writes `data` into `dir` (all keys, or the listed `items` at their paths) and removes
/// files of keys that went away. Each changed file is written beside and renamed into place.
pub fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    fs_group: Option<u32>,
) -> anyhow::Result<usize> {
    let mut wanted: BTreeMap<String, (&[u8], u32)> = BTreeMap::new();
    match items {
        Some(items) => {
            for item in items {
                let bytes = data.get(&item.key).ok_or_else(|| anyhow!("key {} not found", item.key))?;
                if item.path.contains("..") || item.path.starts_with('/') || item.path.contains('/') {
                    bail!("item path {:?} is not a plain file name", item.path);
                }
                let item_mode = item.mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(mode);
                wanted.insert(item.path.clone(), (bytes.as_slice(), item_mode));
            }
        }
        None => {
            for (key, bytes) in data {
                if key.contains('/') || key.starts_with("..") || key == "." {
                    bail!("key {key:?} is not a plain file name");
                }
                wanted.insert(key.clone(), (bytes.as_slice(), mode));
            }
        }
    }
    let mut changed = 0;
    for (name, (bytes, mode)) in &wanted {
        let path = dir.join(name);
        if fs::read(&path).ok().as_deref() == Some(*bytes) {
            continue;
        }
        let tmp = dir.join(format!("..{name}.tmp"));
        fs::write(&tmp, bytes)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(*mode))?;
        if let Some(gid) = fs_group {
            chown(&tmp, Some(0), Some(gid))?;
        }
        fs::rename(&tmp, &path)?;
        changed += 1;
    }
    let present: BTreeSet<String> = wanted.keys().cloned().collect();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !present.contains(&name) {
            fs::remove_file(entry.path())?;
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_files_and_go_away_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = BTreeMap::from([("a".to_string(), b"1".to_vec()), ("b".to_string(), b"2".to_vec())]);
        assert_eq!(write_keys(dir.path(), &data, None, 0o440, None).unwrap(), 2);
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"1");
        let mode = fs::metadata(dir.path().join("b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o440);
        assert_eq!(write_keys(dir.path(), &data, None, 0o440, None).unwrap(), 0, "unchanged keys are not rewritten");
        data.remove("a");
        data.insert("b".into(), b"3".to_vec());
        assert_eq!(write_keys(dir.path(), &data, None, 0o440, None).unwrap(), 2);
        assert!(!dir.path().join("a").exists());
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"3");
    }

    #[test]
    fn a_key_that_would_leave_the_volume_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = BTreeMap::from([("../evil".to_string(), b"x".to_vec())]);
        assert!(write_keys(dir.path(), &data, None, 0o644, None).is_err());
        let items = [KeyToPath { key: "k".into(), path: "../x".into(), ..KeyToPath::default() }];
        let data = BTreeMap::from([("k".to_string(), b"x".to_vec())]);
        assert!(write_keys(dir.path(), &data, Some(&items), 0o644, None).is_err());
    }

    #[test]
    fn a_projected_token_is_renewed_after_80_percent_of_its_lifetime_or_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        assert!(token_due(&token, 3600), "no token yet");
        fs::write(&token, b"t").unwrap();
        assert!(!token_due(&token, 3600), "a token written just now lasts");
        assert!(token_due(&token, 0), "a token past 80 % of its lifetime is renewed");
    }

    #[test]
    fn a_projection_selects_the_listed_keys_at_their_paths_or_every_key() {
        let data = BTreeMap::from([("ca.crt".to_string(), b"pem".to_vec()), ("other".to_string(), b"x".to_vec())]);
        let items = [KeyToPath { key: "ca.crt".into(), path: "root.crt".into(), ..KeyToPath::default() }];
        let mut files = BTreeMap::new();
        select_items(&data, Some(&items), &mut files).unwrap();
        assert_eq!(files, BTreeMap::from([("root.crt".to_string(), b"pem".to_vec())]));
        select_items(&data, None, &mut files).unwrap();
        assert_eq!(files.len(), 3);
        let missing = [KeyToPath { key: "nope".into(), path: "x".into(), ..KeyToPath::default() }];
        assert!(select_items(&data, Some(&missing), &mut files).is_err());
    }
}
