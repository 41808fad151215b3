//! The Secrets (and cert-manager Certificates) that secure a region's nodes.
//!
//! - `<name>-ca` (operator's cluster, owned by the GeoCache): the CA the operator keeps for
//!   the GeoCache when no cert-manager issuer is named. Valid ten years.
//! - `<name>-<region>-peer-tls` (region's cluster): the region's certificate, its key and
//!   the CA (`tls.crt`, `tls.key`, `ca.crt`), for the identity `geocache://<region>/*` and
//!   the region's DNS names. Valid 90 days, renewed 30 days before it expires (or at once
//!   when the CA or the names change); the nodes reload it without a restart.
//! - `<name>-client-auth` (operator's cluster, owned by the GeoCache): the generated
//!   client password, unless the spec references a Secret of its own.
//! - `<name>-<region>-client-auth` (region's cluster): the accepted passwords, mounted as
//!   the nodes' `--auth-file`.
//!
//! Nothing here talks to a cluster; secrets are never logged.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};

use super::metadata;
use crate::crd::IssuerRef;
use crate::names::{APP_NAME, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER, PASSWORDS_KEY, ca_secret};
use crate::validate::{Plan, RegionPlan};

/// Validity of the operator's CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a region's certificate.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A region's certificate is renewed once it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// When the region's certificate expires (Unix seconds).
pub const NOT_AFTER_ANNOTATION: &str = "geocache.dev/not-after";
/// Which CA signed it (SHA-256 of the CA certificate, hex).
pub const CA_ANNOTATION: &str = "geocache.dev/ca-sha256";
/// The DNS names it was issued for, comma separated.
pub const DNS_NAMES_ANNOTATION: &str = "geocache.dev/dns-names";

/// The name in the operator's CA certificate (the CA is rebuilt from its key with it).
pub fn ca_name(plan: &Plan) -> String {
    format!("geocache {}/{}", plan.namespace, plan.instance)
}

/// SHA-256 of a PEM text, hex.
pub fn fingerprint(pem: &str) -> String {
    geocache_node::security::pki::sha256(pem.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The DNS names of a region's certificate: its pods' stable names, its replication
/// Service, and the host of its public endpoint when that is a name.
pub fn region_dns_names(plan: &Plan, region: &RegionPlan, endpoint: Option<&str>) -> Vec<String> {
    let (ns, domain, names) = (&plan.namespace, &region.cluster_domain, &region.names);
    let mut out = vec![
        format!("*.{}.{ns}.svc.{domain}", names.peers),
        format!("{}.{ns}.svc.{domain}", names.replication),
        format!("{}.{ns}.svc", names.replication),
    ];
    if let Some(host) = endpoint.and_then(|e| e.rsplit_once(':')).map(|(h, _)| h.trim_matches(['[', ']']))
        && host.parse::<std::net::IpAddr>().is_err()
        && !out.iter().any(|n| n == host)
    {
        out.push(host.to_string());
    }
    out
}

/// Labels of a GeoCache-wide object (no region: the sweep of removed regions never
/// selects it).
fn instance_labels(plan: &Plan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), plan.instance.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
    ])
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The Secret of the operator's CA.
pub fn build_ca_secret(plan: &Plan, cert_pem: &str, key_pem: &str, owner: Option<&OwnerReference>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(ca_secret(&plan.instance)),
            namespace: Some(plan.namespace.clone()),
            labels: Some(instance_labels(plan)),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([("tls.crt".into(), bytes(cert_pem)), ("tls.key".into(), bytes(key_pem))])),
        ..Secret::default()
    }
}

/// The CA certificate and key of a CA Secret.
pub fn ca_of(secret: &Secret) -> Option<(String, String)> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some((text("tls.crt")?, text("tls.key")?))
}

/// A region's certificate as issued.
#[derive(Clone)]
pub struct RegionCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA that signed it.
    pub ca_pem: String,
    /// What the nodes trust (`ca.crt`): the signing CA, followed, during a CA rotation,
    /// by the previous one, so that nodes that reloaded and nodes that did not yet still
    /// accept each other. The previous CA is dropped at the next renewal.
    pub trusted_pem: String,
    pub not_after: i64,
    pub dns_names: Vec<String>,
}

impl std::fmt::Debug for RegionCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionCert").field("not_after", &self.not_after).field("dns_names", &self.dns_names).finish()
    }
}

/// The Secret of a region's peer certificate.
/// The DNS names of a region's client-port certificate: its client Service under every
/// name a client in the cluster may use, and its pods' stable names.
pub fn client_dns_names(plan: &Plan, region: &RegionPlan) -> Vec<String> {
    let (ns, domain, names) = (&plan.namespace, &region.cluster_domain, &region.names);
    vec![
        names.base.clone(),
        format!("{}.{ns}", names.base),
        format!("{}.{ns}.svc", names.base),
        format!("{}.{ns}.svc.{domain}", names.base),
        format!("*.{}.{ns}.svc.{domain}", names.peers),
    ]
}

/// The ConfigMap that publishes the CA clients trust (`ca.crt`), in the region's namespace.
pub fn build_client_ca_config_map(
    plan: &Plan,
    region: &RegionPlan,
    ca_pem: &str,
    owner: Option<&OwnerReference>,
) -> k8s_openapi::api::core::v1::ConfigMap {
    k8s_openapi::api::core::v1::ConfigMap {
        metadata: metadata(plan, region, &region.names.client_ca, owner),
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..Default::default()
    }
}

/// A region's certificate Secret `name` (`tls.crt`, `tls.key`, `ca.crt`), annotated with
/// what decides its renewal.
pub fn build_tls_secret(
    plan: &Plan,
    region: &RegionPlan,
    name: &str,
    cert: &RegionCert,
    owner: Option<&OwnerReference>,
) -> Secret {
    let mut meta = metadata(plan, region, name, owner);
    meta.annotations = Some(BTreeMap::from([
        (NOT_AFTER_ANNOTATION.to_string(), cert.not_after.to_string()),
        (CA_ANNOTATION.to_string(), fingerprint(&cert.ca_pem)),
        (DNS_NAMES_ANNOTATION.to_string(), cert.dns_names.join(",")),
    ]));
    Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".into(), bytes(&cert.cert_pem)),
            ("tls.key".into(), bytes(&cert.key_pem)),
            ("ca.crt".into(), bytes(&cert.trusted_pem)),
        ])),
        ..Secret::default()
    }
}

/// What a region's nodes trust when its certificate is issued for `reason`: the signing
/// CA, plus the CA the existing Secret was signed by when the CA changed.
pub fn trusted_cas(reason: &str, existing: Option<&Secret>, ca_pem: &str) -> String {
    let previous = existing
        .filter(|_| reason == REASON_OTHER_CA)
        .and_then(|s| s.data.as_ref()?.get("ca.crt"))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .and_then(first_pem_block)
        .filter(|old| old.trim() != ca_pem.trim());
    match previous {
        Some(old) => format!("{}\n{}\n", ca_pem.trim_end(), old.trim_end()),
        None => ca_pem.to_string(),
    }
}

/// The first PEM block of `text`.
fn first_pem_block(text: &str) -> Option<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find(END)? + start + END.len();
    Some(&text[start..end])
}

const REASON_OTHER_CA: &str = "signed by another ca";

/// Why a region's certificate Secret must be (re)issued, or `None` when it is good.
pub fn renewal_reason(existing: Option<&Secret>, ca_pem: &str, dns_names: &[String], now: i64) -> Option<&'static str> {
    let Some(secret) = existing else { return Some("missing") };
    let has_files =
        secret.data.as_ref().is_some_and(|d| ["tls.crt", "tls.key", "ca.crt"].iter().all(|k| d.contains_key(*k)));
    if !has_files {
        return Some("incomplete");
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(CA_ANNOTATION).map(String::as_str) != Some(fingerprint(ca_pem).as_str()) {
        return Some(REASON_OTHER_CA);
    }
    if annotations.get(DNS_NAMES_ANNOTATION).map(String::as_str) != Some(dns_names.join(",").as_str()) {
        return Some("names changed");
    }
    match annotations.get(NOT_AFTER_ANNOTATION).and_then(|v| v.parse::<i64>().ok()) {
        Some(not_after) if not_after - now > RENEW_BEFORE.as_secs() as i64 => None,
        Some(_) => Some("expires soon"),
        None => Some("expiry unknown"),
    }
}

/// The cert-manager Certificate that fills a region's peer certificate Secret.
/// What a cert-manager Certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPurpose {
    /// Mutual TLS between nodes (`<base>-peer`, identity URI, server and client auth).
    Peer,
    /// The client ports (`<base>-client`, server auth).
    Client,
}

pub fn build_certificate(
    plan: &Plan,
    region: &RegionPlan,
    issuer: &IssuerRef,
    dns_names: &[String],
    purpose: CertPurpose,
    owner: Option<&OwnerReference>,
) -> DynamicObject {
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "certificates");
    let (suffix, secret_name) = match purpose {
        CertPurpose::Peer => ("peer", &region.names.peer_tls),
        CertPurpose::Client => ("client", &region.names.client_tls),
    };
    let name = format!("{}-{suffix}", region.names.base);
    let mut object = DynamicObject::new(&name, &resource).within(&plan.namespace);
    object.metadata.labels = Some(crate::names::labels(&plan.instance, &region.name));
    object.metadata.owner_references = owner.map(|o| vec![o.clone()]);
    let mut spec = serde_json::json!({
        "secretName": secret_name,
        "duration": format!("{}h", CERT_VALIDITY.as_secs() / 3600),
        "renewBefore": format!("{}h", RENEW_BEFORE.as_secs() / 3600),
        "commonName": format!("geocache-{}", region.name),
        "dnsNames": dns_names,
        "usages": ["digital signature", "key encipherment", "server auth"],
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
    });
    if purpose == CertPurpose::Peer {
        spec["uris"] = serde_json::json!([geocache_node::security::cert::region_uri(&region.name)]);
        spec["usages"] = serde_json::json!(["digital signature", "key encipherment", "server auth", "client auth"]);
    }
    object.data = serde_json::json!({ "spec": spec });
    object
}

/// The API resource of cert-manager Certificates.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"), "certificates")
}

/// The Secret of the client password the operator generates.
pub fn build_generated_password_secret(
    plan: &Plan,
    name: &str,
    key: &str,
    password: &str,
    owner: Option<&OwnerReference>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(plan.namespace.clone()),
            labels: Some(instance_labels(plan)),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(key.to_string(), bytes(password))])),
        ..Secret::default()
    }
}

/// The Secret of a region's accepted passwords (the nodes' `--auth-file`).
pub fn build_client_auth_secret(
    plan: &Plan,
    region: &RegionPlan,
    passwords: &[u8],
    owner: Option<&OwnerReference>,
) -> Secret {
    Secret {
        metadata: metadata(plan, region, &region.names.client_auth, owner),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(PASSWORDS_KEY.to_string(), ByteString(passwords.to_vec()))])),
        ..Secret::default()
    }
}

/// The first password of a password file (what the operator itself authenticates with).
pub fn first_password(passwords: &[u8]) -> Option<String> {
    std::str::from_utf8(passwords)
        .ok()?
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::{owner, two_region_plan};

    fn cert(ca_pem: &str, dns: &[String], not_after: i64) -> RegionCert {
        RegionCert {
            cert_pem: "C".into(),
            key_pem: "K".into(),
            ca_pem: ca_pem.into(),
            trusted_pem: ca_pem.into(),
            not_after,
            dns_names: dns.to_vec(),
        }
    }

    #[test]
    fn a_region_certificate_names_the_pods_the_replication_service_and_the_endpoint() {
        let plan = two_region_plan();
        let eu = &plan.regions[0];
        let names = region_dns_names(&plan, eu, Some("geocache-eu.example.com:7946"));
        assert_eq!(
            names,
            vec![
                "*.cache-eu-peers.default.svc.cluster.local",
                "cache-eu-replication.default.svc.cluster.local",
                "cache-eu-replication.default.svc",
                "geocache-eu.example.com",
            ]
        );
        assert_eq!(region_dns_names(&plan, eu, Some("10.0.0.7:7946")).len(), 3, "an address is no dns name");
    }

    #[test]
    fn a_certificate_is_renewed_when_missing_from_another_ca_renamed_or_expiring() {
        let plan = two_region_plan();
        let eu = &plan.regions[0];
        let dns = region_dns_names(&plan, eu, None);
        let now = 1_000_000_000;
        let fresh = now + CERT_VALIDITY.as_secs() as i64;
        let secret = build_tls_secret(&plan, eu, &eu.names.peer_tls, &cert("CA1", &dns, fresh), Some(&owner()));
        assert_eq!(renewal_reason(None, "CA1", &dns, now), Some("missing"));
        assert_eq!(renewal_reason(Some(&secret), "CA1", &dns, now), None);
        assert_eq!(renewal_reason(Some(&secret), "CA2", &dns, now), Some("signed by another ca"));
        assert_eq!(renewal_reason(Some(&secret), "CA1", &dns[..1], now), Some("names changed"));
        let later = fresh - RENEW_BEFORE.as_secs() as i64 + 1;
        assert_eq!(renewal_reason(Some(&secret), "CA1", &dns, later), Some("expires soon"));
    }

    #[test]
    fn during_a_ca_rotation_the_nodes_trust_the_new_and_the_previous_ca() {
        let plan = two_region_plan();
        let eu = &plan.regions[0];
        let old = "-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n";
        let new = "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n";
        let mut previous = cert(old, &[], 5);
        previous.trusted_pem = format!("{old}{old}");
        let existing = build_tls_secret(&plan, eu, &eu.names.peer_tls, &previous, None);
        let reason = renewal_reason(Some(&existing), new, &[], 0).unwrap();
        let trusted = trusted_cas(reason, Some(&existing), new);
        assert_eq!(trusted.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(trusted.starts_with(new.trim_end()) && trusted.contains("OLD"));
        assert_eq!(trusted_cas("expires soon", Some(&existing), new), new, "a renewal drops the previous ca");
    }

    #[test]
    fn the_peer_tls_secret_holds_the_certificate_key_and_ca_of_its_region() {
        let plan = two_region_plan();
        let us = &plan.regions[1];
        let s = build_tls_secret(&plan, us, &us.names.peer_tls, &cert("CA", &[], 5), None);
        assert_eq!(s.metadata.name.as_deref(), Some("cache-us-peer-tls"));
        assert_eq!(s.metadata.labels.as_ref().unwrap()["geocache.dev/region"], "us");
        let data = s.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);
        assert!(!format!("{:?}", cert("CA", &[], 5)).contains('K'), "no key in debug output");
    }

    #[test]
    fn a_cert_manager_certificate_asks_for_the_region_identity_and_both_usages() {
        let plan = two_region_plan();
        let eu = &plan.regions[0];
        let issuer =
            IssuerRef { name: "fleet-ca".into(), kind: "ClusterIssuer".into(), group: "cert-manager.io".into() };
        let c = build_certificate(&plan, eu, &issuer, &["a.example".to_string()], CertPurpose::Peer, None);
        assert_eq!(c.metadata.name.as_deref(), Some("cache-eu-peer"));
        assert_eq!(c.types.as_ref().unwrap().api_version, "cert-manager.io/v1");
        let spec = &c.data["spec"];
        assert_eq!(spec["secretName"], "cache-eu-peer-tls");
        assert_eq!(spec["uris"][0], "geocache://eu/*");
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert!(spec["usages"].as_array().unwrap().iter().any(|u| u == "client auth"));
    }

    #[test]
    fn a_client_certificate_names_the_client_service_and_the_pods_and_serves_only() {
        let plan = two_region_plan();
        let eu = &plan.regions[0];
        let names = client_dns_names(&plan, eu);
        assert_eq!(
            names,
            vec![
                "cache-eu",
                "cache-eu.default",
                "cache-eu.default.svc",
                "cache-eu.default.svc.cluster.local",
                "*.cache-eu-peers.default.svc.cluster.local",
            ]
        );
        let issuer = IssuerRef { name: "ca".into(), kind: "Issuer".into(), group: "cert-manager.io".into() };
        let c = build_certificate(&plan, eu, &issuer, &names, CertPurpose::Client, None);
        assert_eq!(c.metadata.name.as_deref(), Some("cache-eu-client"));
        let spec = &c.data["spec"];
        assert_eq!(spec["secretName"], "cache-eu-client-tls");
        assert!(spec.get("uris").is_none(), "no peer identity on a client certificate");
        assert!(!spec["usages"].as_array().unwrap().iter().any(|u| u == "client auth"));
        let ca = build_client_ca_config_map(&plan, eu, "PEM", None);
        assert_eq!(ca.metadata.name.as_deref(), Some("cache-eu-ca"));
        assert_eq!(ca.data.unwrap()["ca.crt"], "PEM");
    }

    #[test]
    fn the_operator_authenticates_with_the_first_password_of_the_file() {
        assert_eq!(first_password(b"# rotating\n\n new \nold\n").as_deref(), Some("new"));
        assert_eq!(first_password(b"# none\n"), None);
    }
}
