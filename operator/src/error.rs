//! Errors of the reconcile pipeline, one enum per step, wrapped by the crate's [`Error`].
//! [`Error::category`] is a fixed label for metrics and Events (never the error's text,
//! which would make label values unbounded).

use crate::validate::InvalidSpec;

/// One line for a Kubernetes client error: the API server's own message (never the
/// debug dump of its `Status`), then what to do about it.
pub fn brief(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let message = one_line(if status.message.trim().is_empty() { &status.reason } else { &status.message });
            let hint = match status.code {
                401 => "; the credentials were refused: renew the token or kubeconfig",
                403 => {
                    "; grant these rights to the operator's ServiceAccount (the chart's RBAC, or examples/member-cluster-rbac.yaml in a member cluster)"
                }
                404 => "; the namespace or resource type may be missing in that cluster",
                409 => "; another writer changed the object: retrying",
                422 | 400 => "; correct the GeoCache's spec",
                429 | 500.. => "; the API server is overloaded or failing: retrying",
                _ => "",
            };
            format!("{message} (http {}){hint}", status.code)
        }
        other => {
            let text = one_line(&other.to_string());
            format!("{text}; check that the cluster's API server is reachable: retrying")
        }
    }
}

/// The first line of `text`, at most 400 characters.
fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(400) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_string(),
    }
}

/// Failures of the dereference step: reaching a region's cluster.
#[derive(Debug, thiserror::Error)]
pub enum DereferenceError {
    #[error("failed to read kubeconfig secret {secret}: {}", brief(.source))]
    ReadSecret {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("kubeconfig secret {secret} not found")]
    SecretNotFound { secret: String },
    #[error("kubeconfig secret {secret} has no key {key}")]
    MissingKey { secret: String, key: String },
    #[error("kubeconfig in secret {secret} is invalid: {source}")]
    InvalidKubeconfig {
        secret: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("failed to create a client for the cluster in secret {secret}: {}", brief(.source))]
    Client {
        secret: String,
        #[source]
        source: kube::Error,
    },
}

/// Failures of the apply step (server-side apply, sweeping removed regions).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("failed to apply {kind} {name}: {}", brief(.source))]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to list {kind}: {}", brief(.source))]
    List {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete {kind} {name}: {}", brief(.source))]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Failures of securing the nodes: the CA, the certificates and the client passwords.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("failed to read secret {secret}: {}", brief(.source))]
    ReadSecret {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("secret {secret} referenced by security.clientAuth.passwordSecretRef not found")]
    PasswordSecretNotFound { secret: String },
    #[error("secret {secret} has no key {key} (or it holds no password)")]
    NoPassword { secret: String, key: String },
    #[error("the ca in secret {secret} cannot be used ({message}); fix or delete it to make a new ca")]
    BadCa { secret: String, message: String },
    #[error("cannot make a certificate: {0}")]
    Pki(#[from] geocache_node::security::pki::PkiError),
}

/// Every way a reconcile can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid object: {0}")]
    InvalidObject(String),
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),
    #[error(transparent)]
    Dereference(#[from] DereferenceError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("failed to update status: {}", brief(.0))]
    UpdateStatus(#[source] kube::Error),
    #[error("{count} of {total} regions failed, first {region}: {source}")]
    Regions {
        count: usize,
        total: usize,
        region: String,
        #[source]
        source: Box<Error>,
    },
    #[error("cleanup of member clusters failed: {0}")]
    Cleanup(#[source] Box<Error>),
    /// Boxed: the finalizer's error type contains this one.
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A fixed label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidObject(_) => "invalid_object",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Dereference(DereferenceError::SecretNotFound { .. } | DereferenceError::MissingKey { .. }) => {
                "kubeconfig_secret"
            }
            Error::Dereference(DereferenceError::InvalidKubeconfig { .. }) => "kubeconfig_invalid",
            Error::Dereference(DereferenceError::ReadSecret { .. }) => "kubeconfig_secret",
            Error::Dereference(DereferenceError::Client { .. }) => "cluster_client",
            Error::Apply(ApplyError::Apply { .. }) => "apply",
            Error::Apply(ApplyError::List { .. }) => "list",
            Error::Apply(ApplyError::Delete { .. }) => "delete_removed",
            Error::Security(SecurityError::PasswordSecretNotFound { .. } | SecurityError::NoPassword { .. }) => {
                "password_secret"
            }
            Error::Security(SecurityError::ReadSecret { .. }) => "read_secret",
            Error::Security(SecurityError::BadCa { .. } | SecurityError::Pki(_)) => "certificates",
            Error::UpdateStatus(_) => "update_status",
            Error::Regions { source, .. } | Error::Cleanup(source) => source.category(),
            Error::Finalizer(inner) => {
                match inner.as_ref() {
                    kube::runtime::finalizer::Error::ApplyFailed(e)
                    | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                    kube::runtime::finalizer::Error::AddFinalizer(_)
                    | kube::runtime::finalizer::Error::RemoveFinalizer(_) => "finalizer",
                    kube::runtime::finalizer::Error::UnnamedObject
                    | kube::runtime::finalizer::Error::InvalidFinalizer => "invalid_object",
                }
            }
        }
    }

    /// Errors that only a change of the object can fix: no retry until it changes.
    pub fn needs_object_change(&self) -> bool {
        matches!(self.category(), "invalid_object" | "invalid_spec")
    }
}

/// Every category [`Error::category`] returns, for metrics that start at zero.
pub const CATEGORIES: &[&str] = &[
    "invalid_object",
    "invalid_spec",
    "kubeconfig_secret",
    "kubeconfig_invalid",
    "cluster_client",
    "apply",
    "list",
    "delete_removed",
    "password_secret",
    "read_secret",
    "certificates",
    "update_status",
    "finalizer",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_spec_waits_for_a_change_and_is_labelled_as_such() {
        let e = Error::from(InvalidSpec { problems: vec!["region names must be unique".into()] });
        assert_eq!(e.category(), "invalid_spec");
        assert!(e.needs_object_change());
        assert_eq!(e.to_string(), "invalid spec: region names must be unique");
    }

    #[test]
    fn a_region_failure_takes_the_category_of_its_cause() {
        let cause = Error::from(DereferenceError::SecretNotFound { secret: "default/us".into() });
        let e = Error::Regions { count: 1, total: 2, region: "us".into(), source: Box::new(cause) };
        assert_eq!(e.category(), "kubeconfig_secret");
        assert!(!e.needs_object_change());
        assert!(CATEGORIES.contains(&e.category()));
    }

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            status: Some(kube::core::response::StatusSummary::Failure),
            code,
            message: message.into(),
            reason: reason.into(),
            metadata: None,
            details: None,
        }))
    }

    #[test]
    fn an_api_error_reads_as_one_line_with_what_to_do_and_no_debug_dump() {
        let source = api_error(
            422,
            "Invalid",
            "StatefulSet.apps \"demo-eu\" is invalid: spec.template.spec.containers[0].resources.requests[memory]: \
             Invalid value: \"10zz\": quantities must match the regular expression",
        );
        let e = Error::from(ApplyError::Apply { kind: "StatefulSet", name: "demo-eu".into(), source });
        let text = e.to_string();
        assert!(
            text.starts_with("failed to apply StatefulSet demo-eu: StatefulSet.apps \"demo-eu\" is invalid"),
            "{text}"
        );
        assert!(text.ends_with("(http 422); correct the GeoCache's spec"), "{text}");
        assert!(!text.contains("ErrorResponse") && !text.contains("Status {") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn a_forbidden_error_says_which_rights_to_grant() {
        let text = brief(&api_error(403, "Forbidden", "secrets \"x\" is forbidden: cannot get"));
        assert!(text.contains("grant these rights"), "{text}");
    }

    #[test]
    fn a_multi_line_message_is_cut_to_its_first_line() {
        let text = brief(&api_error(500, "InternalError", "first line\nsecond line"));
        assert_eq!(text, "first line (http 500); the API server is overloaded or failing: retrying");
    }

    #[test]
    fn a_wrapped_finalizer_failure_keeps_the_inner_category() {
        let inner = Error::from(InvalidSpec { problems: vec!["x".into()] });
        let e = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(inner)));
        assert_eq!(e.category(), "invalid_spec");
    }
}
