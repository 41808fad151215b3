//! Securing a GeoCache's nodes during a reconcile: the CA and the client password in the
//! operator's cluster first, then each region's certificate and passwords in the
//! region's cluster (before its StatefulSet, which mounts them).

use std::time::{SystemTime, UNIX_EPOCH};

use geocache_node::security::pki::{Authority, LeafSpec, random_password};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::apply::apply_object;
use crate::build::security::{
    CA_VALIDITY, CERT_VALIDITY, CertPurpose, RegionCert, build_ca_secret, build_certificate, build_client_auth_secret,
    build_client_ca_config_map, build_generated_password_secret, build_tls_secret, ca_name, ca_of,
    certificate_resource, client_dns_names, first_password, region_dns_names, renewal_reason, trusted_cas,
};
use crate::crd::FIELD_MANAGER;
use crate::error::{ApplyError, Error, SecurityError};
use crate::names::ca_secret;
use crate::validate::{PeerTlsPlan, Plan, RegionPlan};

/// What the regions need, read or made in the operator's cluster.
pub struct Prepared {
    /// The operator's CA, when it issues the certificates itself.
    ca: Option<Authority>,
    /// The accepted passwords (a password file), when clients must authenticate.
    passwords: Option<Vec<u8>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("ca", &self.ca.is_some())
            .field("passwords", &self.passwords.is_some())
            .finish()
    }
}

impl Prepared {
    /// The password the operator gives to read the nodes' `/v1/status`.
    pub fn status_password(&self) -> Option<String> {
        self.passwords.as_deref().and_then(first_password)
    }
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn get_secret(client: &Client, namespace: &str, name: &str) -> Result<Option<Secret>, SecurityError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|source| SecurityError::ReadSecret { secret: format!("{namespace}/{name}"), source })
}

/// Reads (or makes, the first time) the CA and the client password of the GeoCache.
pub async fn prepare(client: &Client, plan: &Plan, owner: Option<&OwnerReference>) -> Result<Prepared, Error> {
    let ns = &plan.namespace;
    let ca = match &plan.security.peer_tls {
        Some(PeerTlsPlan::OperatorCa) => {
            let name = ca_secret(&plan.instance);
            let authority = match get_secret(client, ns, &name).await? {
                Some(secret) => {
                    let bad = |message: &str| SecurityError::BadCa {
                        secret: format!("{ns}/{name}"),
                        message: message.into(),
                    };
                    let (cert, key) = ca_of(&secret).ok_or_else(|| bad("no tls.crt and tls.key"))?;
                    Authority::from_pem(&ca_name(plan), &cert, &key).map_err(|e| bad(&e.to_string()))?
                }
                None => {
                    let authority = Authority::generate(&ca_name(plan), CA_VALIDITY).map_err(SecurityError::from)?;
                    let secret = build_ca_secret(plan, authority.cert_pem(), &authority.key_pem(), owner);
                    apply_object(client, ns, &secret).await?;
                    tracing::info!(instance = %plan.instance, secret = %name, "made a ca for the geocache's peer links");
                    authority
                }
            };
            Some(authority)
        }
        Some(PeerTlsPlan::CertManager(_)) | None => None,
    };
    let passwords = match &plan.security.client_auth {
        None => None,
        Some(auth) => {
            let text = match get_secret(client, ns, &auth.secret).await? {
                Some(secret) => secret.data.as_ref().and_then(|d| d.get(&auth.key)).map(|b| b.0.clone()),
                None if auth.generated => {
                    // Deleted by mistake: the regions of this cluster still hold the password
                    // clients use; restore it rather than lock them out with a new one.
                    let (password, restored) = match password_in_local_regions(client, plan).await? {
                        Some(password) => (password, true),
                        None => (random_password().map_err(SecurityError::from)?, false),
                    };
                    let secret = build_generated_password_secret(plan, &auth.secret, &auth.key, &password, owner);
                    apply_object(client, ns, &secret).await?;
                    if restored {
                        tracing::info!(instance = %plan.instance, secret = %auth.secret, "restored the deleted client password secret");
                    } else {
                        tracing::info!(instance = %plan.instance, secret = %auth.secret, "made a client password");
                    }
                    Some(password.into_bytes())
                }
                None => {
                    return Err(
                        SecurityError::PasswordSecretNotFound { secret: format!("{ns}/{}", auth.secret) }.into()
                    );
                }
            };
            let text = text.filter(|t| first_password(t).is_some()).ok_or_else(|| SecurityError::NoPassword {
                secret: format!("{ns}/{}", auth.secret),
                key: auth.key.clone(),
            })?;
            Some(text)
        }
    };
    Ok(Prepared { ca, passwords })
}

/// The password the nodes of a region in the operator's cluster accept first, if any.
async fn password_in_local_regions(client: &Client, plan: &Plan) -> Result<Option<String>, SecurityError> {
    for region in plan.regions.iter().filter(|r| r.cluster.is_none()) {
        let secret = get_secret(client, &plan.namespace, &region.names.client_auth).await?;
        let found = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(crate::names::PASSWORDS_KEY).and_then(|b| first_password(&b.0)));
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Applies a region's certificates (issued again only when needed), the CA its clients
/// trust, and its passwords in the region's cluster.
pub async fn apply_region(
    client: &Client,
    plan: &Plan,
    region: &RegionPlan,
    prepared: &Prepared,
    endpoint: Option<&str>,
    owner: Option<&OwnerReference>,
) -> Result<(), Error> {
    let ns = &plan.namespace;
    let peer_names = region_dns_names(plan, region, endpoint);
    let client_names = client_dns_names(plan, region);
    let mut certs = vec![(CertPurpose::Peer, &region.names.peer_tls, peer_names)];
    if plan.security.client_tls {
        certs.push((CertPurpose::Client, &region.names.client_tls, client_names));
    }
    for (purpose, secret, dns_names) in certs {
        match (&plan.security.peer_tls, &prepared.ca) {
            (Some(PeerTlsPlan::OperatorCa), Some(ca)) => {
                ensure_issued(client, plan, region, ca, purpose, secret, dns_names, owner).await?;
            }
            (Some(PeerTlsPlan::CertManager(issuer)), _) => {
                let certificate = build_certificate(plan, region, issuer, &dns_names, purpose, owner);
                let api: Api<kube::api::DynamicObject> =
                    Api::namespaced_with(client.clone(), ns, &certificate_resource());
                let name = certificate.metadata.name.clone().unwrap_or_default();
                api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&certificate))
                    .await
                    .map_err(|source| ApplyError::Apply { kind: "Certificate", name, source })?;
            }
            _ => {}
        }
    }
    if plan.security.client_tls {
        // The CA clients trust: the operator's, or the one cert-manager put in the Secret.
        let ca_pem = match &prepared.ca {
            Some(ca) => Some(ca.cert_pem().to_string()),
            None => get_secret(client, ns, &region.names.client_tls)
                .await?
                .and_then(|s| s.data?.get("ca.crt").and_then(|b| String::from_utf8(b.0.clone()).ok())),
        };
        if let Some(ca_pem) = ca_pem {
            apply_object(client, ns, &build_client_ca_config_map(plan, region, &ca_pem, owner)).await?;
        }
    }
    if let Some(passwords) = &prepared.passwords {
        apply_object(client, ns, &build_client_auth_secret(plan, region, passwords, owner)).await?;
    }
    Ok(())
}

/// Issues the region's certificate of `purpose` into Secret `secret` with the operator's
/// CA, when it is missing, from another CA, for other names or about to expire.
#[allow(clippy::too_many_arguments)]
async fn ensure_issued(
    client: &Client,
    plan: &Plan,
    region: &RegionPlan,
    ca: &Authority,
    purpose: CertPurpose,
    secret: &str,
    dns_names: Vec<String>,
    owner: Option<&OwnerReference>,
) -> Result<(), Error> {
    let ns = &plan.namespace;
    let existing = get_secret(client, ns, secret).await?;
    let Some(reason) = renewal_reason(existing.as_ref(), ca.cert_pem(), &dns_names, now_s()) else {
        return Ok(());
    };
    let uris = match purpose {
        CertPurpose::Peer => vec![geocache_node::security::cert::region_uri(&region.name)],
        CertPurpose::Client => Vec::new(),
    };
    let issued = ca
        .issue(&LeafSpec {
            common_name: format!("geocache-{}", region.name),
            dns_names: dns_names.clone(),
            uris,
            valid_for: CERT_VALIDITY,
            ..LeafSpec::default()
        })
        .map_err(SecurityError::from)?;
    let cert = RegionCert {
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        ca_pem: ca.cert_pem().to_string(),
        trusted_pem: trusted_cas(reason, existing.as_ref(), ca.cert_pem()),
        not_after: issued.not_after,
        dns_names,
    };
    apply_object(client, ns, &build_tls_secret(plan, region, secret, &cert, owner)).await?;
    tracing::info!(
        instance = %plan.instance, region = %region.name, ?purpose, reason, not_after = cert.not_after,
        "issued the region's certificate"
    );
    Ok(())
}
