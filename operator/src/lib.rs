//! The GeoCache operator library. It reads the nodes' status documents, whose type
//! lives in the node crate so that both sides share one definition.

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
