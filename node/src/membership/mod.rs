//! Membership: who the peers are — the peers file the operator writes (`--peers-file`)
//! and the peer table with liveness, timeouts and what each peer confirmed.

mod peer_table;
mod peers_file;

pub use peer_table::{Peer, PeerTable, Source};
pub use peers_file::{PeerEntry, PeersFile, PeersFileError, validate_addr};
