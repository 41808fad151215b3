//! Replication between nodes.
//!
//! - [`stream`](StreamId): every node numbers its writes in a stream; positions say how
//!   far a node got in every stream.
//! - [`Backlog`]: the records applied most recently, for peers that resume.
//! - `frame`: the peer protocol; `link`: pushing to a peer; `inbound`: receiving.
//! - `service`: the peer table, acknowledgement levels, read-your-writes.

mod backlog;
mod frame;
mod inbound;
mod io;
mod link;
mod service;
mod stream;
mod transport;

pub use backlog::{Backlog, BacklogEntry, Read};
pub use frame::{Frame, FrameError, Identity, MAX_FRAME, PROTOCOL_VERSION, PeerInfo};
pub use service::{
    AckLevel, AckTimeout, Replication, ReplicationConfig, ReplicationCounters, Token, spawn, wait_for_token,
};
pub use stream::{Positions, PositionsError, StreamId};
