//! The peers file (`--peers-file`): the seeds a node starts from. The operator writes
//! it into a ConfigMap mounted into every node; the node reloads it when it changes.
//!
//! Format (JSON):
//!
//! ```json
//! {
//!   "version": 1,
//!   "peers": [
//!     { "addr": "geocache-eu-0.geocache-eu-peers.default.svc.cluster.local:7946", "region": "eu", "node_id": "geocache-eu-0" },
//!     { "addr": "geocache-eu-1.geocache-eu-peers.default.svc.cluster.local:7946", "region": "eu", "node_id": "geocache-eu-1" },
//!     { "addr": "203.0.113.10:7946", "region": "us" }
//!   ]
//! }
//! ```
//!
//! - `version` is the format version (1). A file with a newer version is refused.
//! - `addr` is `host:port` of a peer listener: a node of this region (by its stable
//!   DNS name), or another region's replication endpoint (a Service that reaches any
//!   node of that region), in which case `node_id` is absent.
//! - `region` and `node_id` are optional hints; what a peer says about itself wins.
//! - Unknown fields are ignored, so that newer operators can add some.

use serde::{Deserialize, Serialize};

/// The current format version.
pub const PEERS_FILE_VERSION: u32 = 1;

/// The content of a peers file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeersFile {
    pub version: u32,
    pub peers: Vec<PeerEntry>,
}

/// One seed peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// `host:port` of the peer listener.
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// Why a peers file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeersFileError {
    #[error("peers file is not valid json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("peers file has version {0}, this node reads version {PEERS_FILE_VERSION}")]
    Version(u32),
    #[error("peer {index}: {message}")]
    Peer { index: usize, message: String },
}

impl PeersFile {
    pub fn new(peers: Vec<PeerEntry>) -> Self {
        PeersFile { version: PEERS_FILE_VERSION, peers }
    }

    /// Parses and validates a peers file.
    pub fn parse(bytes: &[u8]) -> Result<PeersFile, PeersFileError> {
        let file: PeersFile = serde_json::from_slice(bytes)?;
        if file.version != PEERS_FILE_VERSION {
            return Err(PeersFileError::Version(file.version));
        }
        for (index, peer) in file.peers.iter().enumerate() {
            validate_addr(&peer.addr).map_err(|message| PeersFileError::Peer { index, message })?;
        }
        Ok(file)
    }

    /// The file as written by the operator (pretty JSON, stable order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Checks that `addr` is `host:port` with a non-empty host and a valid port.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("address {addr:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("address {addr:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("address {addr:?} has an invalid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = br#"{"version":1,"peers":[
            {"addr":"geocache-eu-0.geocache-eu-peers.default.svc.cluster.local:7946","region":"eu","node_id":"geocache-eu-0"},
            {"addr":"203.0.113.10:7946","region":"us","future_field":true}]}"#;
        let file = PeersFile::parse(text).unwrap();
        assert_eq!(file.peers.len(), 2);
        assert_eq!(file.peers[1].node_id, None);
        assert_eq!(file.peers[1].region.as_deref(), Some("us"));
    }

    #[test]
    fn what_the_operator_writes_the_node_reads_back() {
        let file =
            PeersFile::new(vec![PeerEntry { addr: "[::1]:7946".into(), region: Some("ap".into()), node_id: None }]);
        assert_eq!(PeersFile::parse(file.to_json().as_bytes()).unwrap(), file);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        assert!(matches!(PeersFile::parse(b"{"), Err(PeersFileError::Json(_))));
        assert!(matches!(PeersFile::parse(br#"{"version":2,"peers":[]}"#), Err(PeersFileError::Version(2))));
        let e = PeersFile::parse(br#"{"version":1,"peers":[{"addr":"nohost"}]}"#).unwrap_err();
        assert!(e.to_string().contains("peer 0"), "{e}");
        assert!(PeersFile::parse(br#"{"version":1,"peers":[{"addr":"h:0"}]}"#).is_err());
    }
}
