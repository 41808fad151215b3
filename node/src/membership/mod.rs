//! Membership: who the peers are — the peers file the operator writes (`--peers-file`)
//! and the peer table with liveness, timeouts and what each peer confirmed, and the
//! detector of this node's own pauses (whose silence is not the peers').

mod pause_detector;
mod peer_table;
mod peers_file;

pub use pause_detector::{Pause, PauseDetector};
pub use peer_table::{Peer, PeerTable, Source};
pub use peers_file::{PeerEntry, PeersFile, PeersFileError, validate_addr};
