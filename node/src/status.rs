//! The node's status document (`GET /v1/status`). The operator reads it too, so it is
//! a public type of this library and the operator depends on it.

use serde::{Deserialize, Serialize};

/// The status of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDocument {
    pub node_id: String,
    pub region: String,
    /// Version of the node software.
    pub version: String,
    pub uptime_s: u64,
    /// Keys held (tombstones excluded).
    pub keys: u64,
    /// Bytes accounted to entries.
    pub memory_bytes: u64,
    /// True once recovery finished and the node serves traffic.
    pub ready: bool,
    /// Replication peers (filled by replication).
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
}

/// Whether a peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Up,
    Down,
}

/// How far behind a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lag {
    pub writes: u64,
    pub ms: u64,
}

/// One replication peer as seen by this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: String,
    pub region: String,
    pub addr: String,
    pub state: PeerState,
    pub last_seen_ms_ago: Option<u64>,
    pub lag: Lag,
    /// Round-trip time of the last heartbeat answered (`null` before the first).
    #[serde(default)]
    pub rtt_ms: Option<u64>,
    /// The peer's clock minus ours, measured over a round trip (`null` until measured).
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// The peer's clock is beyond `--max-clock-skew` of ours: writes there and here may
    /// not be ordered as they happened, and expiry instants follow the writer's clock.
    #[serde(default)]
    pub clock_skewed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_document_has_the_field_names_of_the_contract() {
        let doc = StatusDocument {
            node_id: "eu-0".into(),
            region: "eu".into(),
            version: "0.1.0".into(),
            uptime_s: 3,
            keys: 10,
            memory_bytes: 1000,
            ready: true,
            peers: vec![PeerStatus {
                node_id: "us-0".into(),
                region: "us".into(),
                addr: "10.0.0.1:7946".into(),
                state: PeerState::Up,
                last_seen_ms_ago: Some(12),
                lag: Lag { writes: 2, ms: 40 },
                rtt_ms: Some(80),
                clock_offset_ms: Some(-3),
                clock_skewed: false,
            }],
        };
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node_id": "eu-0", "region": "eu", "version": "0.1.0", "uptime_s": 3, "keys": 10,
                "memory_bytes": 1000, "ready": true,
                "peers": [{"node_id": "us-0", "region": "us", "addr": "10.0.0.1:7946", "state": "up",
                           "last_seen_ms_ago": 12, "lag": {"writes": 2, "ms": 40},
                           "rtt_ms": 80, "clock_offset_ms": -3, "clock_skewed": false}]
            })
        );
        let back: StatusDocument = serde_json::from_value(v).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn a_status_document_of_an_older_node_without_rtt_or_clock_fields_still_reads() {
        let v = serde_json::json!({
            "node_id": "eu-0", "region": "eu", "version": "0.1.0", "uptime_s": 3, "keys": 10,
            "memory_bytes": 1000, "ready": true,
            "peers": [{"node_id": "us-0", "region": "us", "addr": "h:1", "state": "up",
                       "last_seen_ms_ago": 12, "lag": {"writes": 2, "ms": 40}}]
        });
        let doc: StatusDocument = serde_json::from_value(v).unwrap();
        assert_eq!(doc.peers[0].rtt_ms, None);
        assert!(!doc.peers[0].clock_skewed);
    }
}
