//! The dereference step: a client for each region's cluster. A region without `cluster`
//! lives in the operator's own cluster; otherwise its kubeconfig is read from the referenced
//! Secret in the GeoCache's namespace. Clients are cached and rebuilt when the Secret changes.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::Mutex;

use crate::crd::ClusterRef;
use crate::error::DereferenceError;

/// How long to wait for a member cluster's API server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a member cluster's answer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

type CacheKey = (String, ClusterRef);

/// Clients of member clusters, by namespace and Secret, with the Secret's resourceVersion.
#[derive(Default)]
pub struct ClusterClients {
    cache: Mutex<HashMap<CacheKey, (String, Client)>>,
}

impl ClusterClients {
    /// The client of the cluster `cluster` names (`None`: `local`, the operator's own).
    pub async fn client_for(
        &self,
        local: &Client,
        namespace: &str,
        cluster: Option<&ClusterRef>,
    ) -> Result<Client, DereferenceError> {
        let Some(cluster) = cluster else { return Ok(local.clone()) };
        let secret_ref = &cluster.kubeconfig_secret_ref;
        let secret_name = format!("{namespace}/{}", secret_ref.name);
        let secret = Api::<Secret>::namespaced(local.clone(), namespace)
            .get_opt(&secret_ref.name)
            .await
            .map_err(|source| DereferenceError::ReadSecret { secret: secret_name.clone(), source })?
            .ok_or_else(|| DereferenceError::SecretNotFound { secret: secret_name.clone() })?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        let key = (namespace.to_string(), cluster.clone());
        if let Some((cached_version, client)) = self.cache.lock().await.get(&key)
            && *cached_version == version
        {
            return Ok(client.clone());
        }

        let bytes =
            secret.data.as_ref().and_then(|d| d.get(&secret_ref.key)).map(|b| b.0.clone()).ok_or_else(|| {
                DereferenceError::MissingKey { secret: secret_name.clone(), key: secret_ref.key.clone() }
            })?;
        let client = client_from_kubeconfig(&bytes, &secret_name).await?;
        self.cache.lock().await.insert(key, (version, client.clone()));
        tracing::info!(secret = %secret_name, "created client for member cluster");
        Ok(client)
    }

    /// Forgets the client of a cluster (after it failed, so the next try starts afresh).
    pub async fn forget(&self, namespace: &str, cluster: &ClusterRef) {
        self.cache.lock().await.remove(&(namespace.to_string(), cluster.clone()));
    }
}

/// A client from kubeconfig bytes, with short timeouts so an unreachable cluster fails fast.
pub async fn client_from_kubeconfig(bytes: &[u8], secret: &str) -> Result<Client, DereferenceError> {
    let invalid = |source| DereferenceError::InvalidKubeconfig { secret: secret.to_string(), source };
    let text = String::from_utf8_lossy(bytes);
    let kubeconfig = Kubeconfig::from_yaml(&text).map_err(invalid)?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.map_err(invalid)?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    Client::try_from(config).map_err(|source| DereferenceError::Client { secret: secret.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "
apiVersion: v1
kind: Config
clusters:
- name: us
  cluster:
    server: https://198.51.100.10:6443
    insecure-skip-tls-verify: true
users:
- name: operator
  user:
    token: abc
contexts:
- name: us
  context: {cluster: us, user: operator, namespace: geocache}
current-context: us
";

    #[tokio::test]
    async fn a_token_kubeconfig_from_a_secret_makes_a_client() {
        let client = client_from_kubeconfig(KUBECONFIG.as_bytes(), "geocache/us").await.unwrap();
        assert_eq!(client.default_namespace(), "geocache");
    }

    #[tokio::test]
    async fn a_kubeconfig_that_is_not_yaml_is_reported_with_its_secret() {
        let Err(err) = client_from_kubeconfig(b"{not yaml", "geocache/us").await else {
            panic!("a bad kubeconfig made a client")
        };
        assert!(matches!(err, DereferenceError::InvalidKubeconfig { .. }));
        assert!(err.to_string().starts_with("kubeconfig in secret geocache/us is invalid"), "{err}");
    }
}
