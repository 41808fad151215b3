//! GeoCache node: a cache of JSON documents by string key, with expiry, served over
//! HTTP/JSON and the Redis protocol, optionally persisted to an append-only log.
//!
//! Layout: [`store`] holds entries (versions, expiry, eviction); [`clock`] is the
//! hybrid logical clock that versions them; [`db`] puts store, clock and the on-disk
//! [`persist`] log behind one write path; [`api`] serves it over HTTP and RESP;
//! [`server`] wires a node together from its [`config`].

pub mod api;
pub mod clock;
pub mod config;
pub mod db;
pub mod duration;
pub mod fleet;
pub mod journal;
pub mod membership;
pub mod metrics;
pub mod persist;
pub mod replication;
pub mod security;
pub mod server;
pub mod state;
pub mod status;
pub mod store;

pub use config::Config;
pub use membership::{PeerEntry, PeersFile};
pub use server::{NodeHandle, spawn_node};
pub use status::{Lag, PeerState, PeerStatus, StatusDocument};
