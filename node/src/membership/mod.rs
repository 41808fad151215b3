//! Membership: who the peers are. For now, the peers file format that the operator
//! writes and the node reads (`--peers-file`); the peer table, heartbeats and
//! timeouts arrive with replication.

mod peers_file;

pub use peers_file::{PeerEntry, PeersFile, PeersFileError};
