//! The GeoCache operator: it turns a `GeoCache` resource into one fleet of cache nodes per
//! region, across clusters, wires the regions to replicate to each other, and reports
//! replication health in the resource's status.
//!
//! The reconcile pipeline is `dereference -> validate -> build -> apply -> update status`:
//! [`validate`] and [`build`] are pure, and so is the status computation in [`status`];
//! only the controller talks to clusters.

pub mod build;
pub mod clusters;
pub mod controller;
pub mod crd;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod status;
pub mod validate;

#[cfg(test)]
mod fixtures;

pub use crd::{GeoCache, GeoCacheSpec, GeoCacheStatus};
pub use error::Error;
pub use geocache_node::StatusDocument;

/// Parses a node's `GET /v1/status` body.
pub fn parse_node_status(body: &[u8]) -> Result<StatusDocument, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_status_document_parses_into_the_shared_type() {
        let body = br#"{"node_id":"eu-0","region":"eu","version":"0.1.0","uptime_s":5,"keys":3,
            "memory_bytes":512,"ready":true,"peers":[]}"#;
        let doc = parse_node_status(body).unwrap();
        assert_eq!(doc.region, "eu");
        assert!(doc.ready);
    }

    #[test]
    fn a_status_document_missing_a_field_is_an_error_not_a_default() {
        assert!(parse_node_status(br#"{"node_id":"eu-0"}"#).is_err());
    }
}
