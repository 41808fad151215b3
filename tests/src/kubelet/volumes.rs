//! A pod's volumes as host directories: ConfigMaps and Secrets written out as files (kept
//! up to date, each file replaced atomically so a reader never sees half of one), emptyDirs,
//! and persistent volume claims (the directory of the bound volume, see [`super::storage`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume, VolumeMount,
};
use kube::{Api, Client};

use super::runtime::Bind;

/// Default file mode of ConfigMap and Secret volumes (Kubernetes' default).
const DEFAULT_MODE: u32 = 0o644;

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
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for volume in &volumes {
        let path = write_volume(client, namespace, volume, pod_dir, fs_group, volumes_dir)
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
        if volume.config_map.is_some() || volume.secret.is_some() {
            let dir = volume_dir(pod_dir, &volume.name);
            changed += write_keys_of(client, namespace, volume, &dir, fs_group).await?;
        }
    }
    Ok(changed)
}

async fn write_volume(
    client: &Client,
    namespace: &str,
    volume: &Volume,
    pod_dir: &Path,
    fs_group: Option<u32>,
    volumes_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let dir = volume_dir(pod_dir, &volume.name);
    if volume.config_map.is_some() || volume.secret.is_some() {
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        write_keys_of(client, namespace, volume, &dir, fs_group).await?;
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
    bail!("unsupported volume type (this kubelet knows configMap, secret, emptyDir, persistentVolumeClaim)")
}

async fn write_keys_of(
    client: &Client,
    namespace: &str,
    volume: &Volume,
    dir: &Path,
    fs_group: Option<u32>,
) -> anyhow::Result<usize> {
    let (data, items, mode) = if let Some(source) = &volume.config_map {
        let optional = source.optional.unwrap_or(false);
        let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt(&source.name).await?;
        let data = match cm {
            Some(cm) => {
                let mut data: BTreeMap<String, Vec<u8>> =
                    cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                data
            }
            None if optional => BTreeMap::new(),
            None => bail!("configmap {namespace}/{} not found", source.name),
        };
        (data, source.items.clone(), source.default_mode)
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let optional = source.optional.unwrap_or(false);
        let secret = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(&name).await?;
        let data = match secret {
            Some(secret) => {
                let mut data: BTreeMap<String, Vec<u8>> =
                    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                data.extend(secret.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
                data
            }
            None if optional => BTreeMap::new(),
            None => bail!("secret {namespace}/{name} not found"),
        };
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
}
