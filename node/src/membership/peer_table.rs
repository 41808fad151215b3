//! The peer table: every peer this node pushes writes to, how it learned of it, and
//! what it knows about it (identity, liveness, what it has confirmed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::replication::Positions;

/// How a peer entered the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--peers` or the peers file: kept until the configuration drops it.
    Seed,
    /// Told by another node: dropped after `--peer-drop-after` of silence.
    Gossip,
}

/// One peer, keyed by the address we dial.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: String,
    pub source: Source,
    /// Region hint from the configuration, then what the peer said.
    pub region: Option<String>,
    pub node_id: Option<String>,
    pub connected: bool,
    pub added: Instant,
    pub last_seen: Option<Instant>,
    /// Positions the peer confirmed.
    pub acked: Positions,
    /// Clock difference seen in the last round trip that could tell (peer minus us, ms).
    pub skew_ms: Option<i64>,
    /// Whether that difference is beyond `--max-clock-skew`.
    pub clock_skewed: bool,
    /// Round-trip time of the last ping answered.
    pub rtt_ms: Option<u64>,
    /// The address turned out to be this node, or a node we already have a link to.
    pub redundant: bool,
    pub last_error: Option<String>,
    /// Snapshots sent to this peer / resumptions from the backlog.
    pub snapshots: u64,
    pub resumes: u64,
}

impl Peer {
    pub fn new(addr: String, source: Source, region: Option<String>, node_id: Option<String>) -> Self {
        Peer {
            addr,
            source,
            region,
            node_id,
            connected: false,
            added: Instant::now(),
            last_seen: None,
            acked: Positions::new(),
            skew_ms: None,
            clock_skewed: false,
            rtt_ms: None,
            redundant: false,
            last_error: None,
            snapshots: 0,
            resumes: 0,
        }
    }

    /// Up when connected and heard from within `timeout`.
    pub fn is_up(&self, now: Instant, timeout: Duration) -> bool {
        self.connected && self.last_seen.is_some_and(|t| now.duration_since(t) <= timeout)
    }
}

/// All peers, by dial address.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: BTreeMap<String, Peer>,
}

impl PeerTable {
    pub fn get(&self, addr: &str) -> Option<&Peer> {
        self.peers.get(addr)
    }

    pub fn get_mut(&mut self, addr: &str) -> Option<&mut Peer> {
        self.peers.get_mut(addr)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    pub fn contains(&self, addr: &str) -> bool {
        self.peers.contains_key(addr)
    }

    /// Adds a peer unless its address is known; returns whether it was added.
    pub fn add(&mut self, peer: Peer) -> bool {
        if self.peers.contains_key(&peer.addr) {
            return false;
        }
        self.peers.insert(peer.addr.clone(), peer);
        true
    }

    /// Makes the seeds exactly `seeds` (address, region hint, node id hint): new ones
    /// are added, seeds no longer listed are removed. Gossip peers are kept.
    pub fn set_seeds(&mut self, seeds: &[(String, Option<String>, Option<String>)]) -> (Vec<String>, Vec<String>) {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        self.peers.retain(|addr, p| {
            let keep = p.source != Source::Seed || seeds.iter().any(|(a, ..)| a == addr);
            if !keep {
                removed.push(addr.clone());
            }
            keep
        });
        for (addr, region, node_id) in seeds {
            match self.peers.get_mut(addr) {
                Some(p) => {
                    p.source = Source::Seed;
                    if p.region.is_none() {
                        p.region = region.clone();
                    }
                }
                None => {
                    self.peers
                        .insert(addr.clone(), Peer::new(addr.clone(), Source::Seed, region.clone(), node_id.clone()));
                    added.push(addr.clone());
                }
            }
        }
        (added, removed)
    }

    /// Drops gossip peers silent for longer than `drop_after`; returns their addresses.
    pub fn drop_silent(&mut self, now: Instant, drop_after: Duration) -> Vec<String> {
        let mut dropped = Vec::new();
        self.peers.retain(|addr, p| {
            let since = p.last_seen.unwrap_or(p.added);
            let keep = p.source == Source::Seed || p.connected || now.duration_since(since) <= drop_after;
            if !keep {
                dropped.push(addr.clone());
            }
            keep
        });
        dropped
    }

    /// True when another connected peer (not `addr`) has node id `node_id`.
    pub fn linked_elsewhere(&self, addr: &str, node_id: &str) -> bool {
        self.peers.values().any(|p| p.addr != addr && p.connected && p.node_id.as_deref() == Some(node_id))
    }

    /// Regions known from the configuration and from peers.
    pub fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> =
            self.peers.values().filter(|p| !p.redundant).filter_map(|p| p.region.clone()).collect();
        r.sort();
        r.dedup();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(addr: &str, region: &str) -> (String, Option<String>, Option<String>) {
        (addr.into(), Some(region.into()), None)
    }

    #[test]
    fn seeds_follow_the_configuration_and_gossip_peers_stay() {
        let mut t = PeerTable::default();
        t.set_seeds(&[seed("a:1", "eu"), seed("b:1", "us")]);
        t.add(Peer::new("g:1".into(), Source::Gossip, Some("eu".into()), Some("eu-9".into())));
        let (added, removed) = t.set_seeds(&[seed("b:1", "us"), seed("c:1", "ap")]);
        assert_eq!(added, vec!["c:1".to_string()]);
        assert_eq!(removed, vec!["a:1".to_string()]);
        assert!(t.contains("g:1"));
        assert_eq!(t.regions(), vec!["ap".to_string(), "eu".to_string(), "us".to_string()]);
    }

    #[test]
    fn silent_gossip_peers_are_dropped_but_seeds_are_not() {
        let mut t = PeerTable::default();
        t.set_seeds(&[seed("a:1", "eu")]);
        t.add(Peer::new("g:1".into(), Source::Gossip, None, None));
        let later = Instant::now() + Duration::from_secs(120);
        assert_eq!(t.drop_silent(later, Duration::from_secs(60)), vec!["g:1".to_string()]);
        assert!(t.contains("a:1"));
    }

    #[test]
    fn a_peer_is_up_only_while_connected_and_recently_heard() {
        let mut p = Peer::new("a:1".into(), Source::Seed, None, None);
        let now = Instant::now();
        assert!(!p.is_up(now, Duration::from_secs(3)));
        p.connected = true;
        p.last_seen = Some(now);
        assert!(p.is_up(now, Duration::from_secs(3)));
        assert!(!p.is_up(now + Duration::from_secs(4), Duration::from_secs(3)));
    }
}
