//! The replication service of a node: its peer table, the listener that accepts
//! peers' streams, one link task per peer pushing our records, the peers-file
//! watcher, failure detection, and the waits for `ack=region|global` and for
//! read-your-writes tokens.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::frame::{Identity, PROTOCOL_VERSION, PeerInfo};
use super::stream::StreamId;
use crate::clock;
use crate::membership::{Peer, PeerTable, PeersFile, Source};
use crate::state::NodeState;
use crate::status::{Lag, PeerState, PeerStatus};

/// Replication settings.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Where peers reach our peer listener.
    pub advertise: String,
    /// `--peers`.
    pub seeds: Vec<String>,
    pub peers_file: Option<PathBuf>,
    /// A peer silent this long is down.
    pub peer_timeout: Duration,
    /// A gossip-learned peer silent this long is dropped.
    pub drop_after: Duration,
    /// How long `ack=region|global` and read-your-writes wait.
    pub ack_timeout: Duration,
    /// Remote clocks further ahead than this are reported and not merged.
    pub max_skew_ms: u64,
}

impl ReplicationConfig {
    /// No peers, default timings (for tests and tools).
    pub fn standalone() -> Self {
        ReplicationConfig {
            advertise: "127.0.0.1:0".into(),
            seeds: Vec::new(),
            peers_file: None,
            peer_timeout: Duration::from_secs(3),
            drop_after: Duration::from_secs(300),
            ack_timeout: Duration::from_secs(5),
            max_skew_ms: 500,
        }
    }

    pub fn heartbeat(&self) -> Duration {
        (self.peer_timeout / 3).max(Duration::from_millis(50))
    }
}

/// Counters for `/metrics` and `/v1/status`.
#[derive(Debug, Default)]
pub struct ReplicationCounters {
    pub snapshots_sent: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub backlog_resumes: AtomicU64,
    pub records_sent: AtomicU64,
    pub records_received: AtomicU64,
    pub duplicates: AtomicU64,
    pub gaps: AtomicU64,
    pub dropped_frames: AtomicU64,
    pub link_errors: AtomicU64,
    pub skewed_peers: AtomicU64,
    /// Links made again after a partition longer than tombstones are held.
    pub long_partitions: AtomicU64,
}

/// The level a write waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    Local,
    Region,
    Global,
}

/// A write's read-your-writes token: `<epoch hex>-<seq hex>-<node id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub stream: StreamId,
    pub seq: u64,
}

impl Token {
    pub fn parse(s: &str) -> Option<Token> {
        let mut parts = s.trim().splitn(3, '-');
        let epoch = u64::from_str_radix(parts.next()?, 16).ok()?;
        let seq = u64::from_str_radix(parts.next()?, 16).ok()?;
        let node = parts.next()?;
        if node.is_empty() || seq == 0 {
            return None;
        }
        Some(Token { stream: StreamId::new(node, epoch), seq })
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}-{}", self.stream.epoch, self.seq, self.stream.node)
    }
}

/// Why an acknowledgement level was not met.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AckTimeout(pub String);

/// The replication state shared by the node's tasks.
pub struct Replication {
    pub config: ReplicationConfig,
    pub table: Mutex<PeerTable>,
    /// Woken when a peer confirms positions.
    pub acks: Notify,
    pub counters: ReplicationCounters,
    node_id: String,
    region: String,
}

impl Replication {
    pub fn new(config: ReplicationConfig, node_id: &str, region: &str) -> Self {
        let mut table = PeerTable::default();
        let seeds: Vec<_> = config.seeds.iter().map(|a| (a.clone(), None, None)).collect();
        table.set_seeds(&seeds);
        Replication {
            config,
            table: Mutex::new(table),
            acks: Notify::new(),
            counters: ReplicationCounters::default(),
            node_id: node_id.to_string(),
            region: region.to_string(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// What we say about ourselves at the start of a link.
    pub fn identity(&self, epoch: u64) -> Identity {
        Identity {
            version: PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
            region: self.region.clone(),
            epoch,
            advertise: self.config.advertise.clone(),
            wall_ms: clock::now_ms(),
        }
    }

    /// Peers we know, for gossip (ourselves included).
    pub fn gossip(&self) -> Vec<PeerInfo> {
        let table = self.table.lock();
        let mut out: Vec<PeerInfo> = table
            .iter()
            .filter(|p| !p.redundant)
            .filter_map(|p| {
                Some(PeerInfo { node_id: p.node_id.clone()?, region: p.region.clone()?, addr: p.addr.clone() })
            })
            .collect();
        out.push(PeerInfo {
            node_id: self.node_id.clone(),
            region: self.region.clone(),
            addr: self.config.advertise.clone(),
        });
        out
    }

    /// Learns peers from gossip. Only peers of our own region are dialled directly:
    /// other regions are reached through their configured endpoints (load balancers,
    /// WAN links), never around them.
    pub fn learn(&self, peers: &[PeerInfo]) {
        let mut table = self.table.lock();
        for p in peers {
            if p.node_id == self.node_id || p.region != self.region || p.addr == self.config.advertise {
                continue;
            }
            if crate::membership::validate_addr(&p.addr).is_err() {
                continue;
            }
            if table.iter().any(|known| known.node_id.as_deref() == Some(p.node_id.as_str())) {
                continue;
            }
            let peer = Peer::new(p.addr.clone(), Source::Gossip, Some(p.region.clone()), Some(p.node_id.clone()));
            if table.add(peer) {
                tracing::info!(peer = %p.node_id, addr = %p.addr, "learned a peer of this region by gossip");
            }
        }
    }

    /// Records a clock difference seen with a peer; reports it (once per link, via
    /// `reported`) when beyond the bound.
    pub fn observe_skew(&self, addr_opt: Option<&str>, node: &str, remote_wall_ms: u64, reported: &mut bool) {
        let skew = remote_wall_ms as i64 - clock::now_ms() as i64;
        if let Some(addr) = addr_opt
            && let Some(p) = self.table.lock().get_mut(addr)
        {
            p.skew_ms = Some(skew);
        }
        let beyond = skew.unsigned_abs() > self.config.max_skew_ms;
        if beyond && !*reported {
            self.counters.skewed_peers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %node, skew_ms = skew, max_ms = self.config.max_skew_ms,
                "clock skew with a peer beyond the bound; its timestamps are not merged into our clock"
            );
        } else if !beyond && *reported {
            tracing::info!(peer = %node, skew_ms = skew, "clock skew with a peer back within the bound");
        }
        *reported = beyond;
    }

    /// Status of every peer for `/v1/status`.
    pub fn peer_statuses(&self, state: &NodeState) -> Vec<PeerStatus> {
        let now = Instant::now();
        let now_ms = clock::now_ms();
        let peers: Vec<Peer> = self.table.lock().iter().filter(|p| !p.redundant).cloned().collect();
        let st = state.db.journal().lock();
        peers
            .into_iter()
            .map(|p| {
                let lag_ms = st.backlog.oldest_missing_at(&p.acked).map(|at| now_ms.saturating_sub(at)).unwrap_or(0);
                PeerStatus {
                    node_id: p.node_id.clone().unwrap_or_default(),
                    region: p.region.clone().unwrap_or_default(),
                    addr: p.addr.clone(),
                    state: if p.is_up(now, self.config.peer_timeout) { PeerState::Up } else { PeerState::Down },
                    last_seen_ms_ago: p.last_seen.map(|t| now.duration_since(t).as_millis() as u64),
                    lag: Lag { writes: st.positions.ahead_of(&p.acked), ms: lag_ms },
                }
            })
            .collect()
    }

    /// Replication metrics in the Prometheus text format.
    pub fn render_metrics(&self, state: &NodeState, out: &mut String) {
        use std::fmt::Write as _;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        let peers = self.peer_statuses(state);
        let (backlog_bytes, backlog_records) = {
            let st = state.db.journal().lock();
            (st.backlog.bytes(), st.backlog.len())
        };
        let up = peers.iter().filter(|p| p.state == PeerState::Up).count();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "geocache_replication_peers",
            "gauge",
            "Peers by state.",
            &[("{state=\"up\"}".into(), up as u64), ("{state=\"down\"}".into(), (peers.len() - up) as u64)],
        );
        let per_peer = |f: &dyn Fn(&PeerStatus) -> u64| -> Vec<(String, u64)> {
            peers
                .iter()
                .map(|p| (format!("{{peer=\"{}\",region=\"{}\"}}", label(&p.node_id, &p.addr), p.region), f(p)))
                .collect()
        };
        metric(
            "geocache_replication_lag_writes",
            "gauge",
            "Writes a peer has not confirmed.",
            &per_peer(&|p| p.lag.writes),
        );
        metric(
            "geocache_replication_lag_ms",
            "gauge",
            "Age of the oldest write a peer has not confirmed.",
            &per_peer(&|p| p.lag.ms),
        );
        metric(
            "geocache_replication_backlog_bytes",
            "gauge",
            "Bytes of recent writes kept for peers.",
            &[(String::new(), backlog_bytes as u64)],
        );
        metric(
            "geocache_replication_backlog_records",
            "gauge",
            "Recent writes kept for peers.",
            &[(String::new(), backlog_records as u64)],
        );
        metric(
            "geocache_replication_resyncs_total",
            "counter",
            "Links (re)started, by how they caught up: from the backlog or with a full snapshot.",
            &[
                ("{kind=\"backlog\"}".into(), load(&c.backlog_resumes)),
                ("{kind=\"snapshot\"}".into(), load(&c.snapshots_sent)),
            ],
        );
        metric(
            "geocache_replication_snapshots_received_total",
            "counter",
            "Full snapshots received from peers.",
            &[(String::new(), load(&c.snapshots_received))],
        );
        metric(
            "geocache_replication_records_sent_total",
            "counter",
            "Records pushed to peers.",
            &[(String::new(), load(&c.records_sent))],
        );
        metric(
            "geocache_replication_records_received_total",
            "counter",
            "Records received from peers and applied.",
            &[(String::new(), load(&c.records_received))],
        );
        metric(
            "geocache_replication_duplicates_total",
            "counter",
            "Records received that were already applied.",
            &[(String::new(), load(&c.duplicates))],
        );
        metric(
            "geocache_replication_gaps_total",
            "counter",
            "Links closed because records were missing before a received one.",
            &[(String::new(), load(&c.gaps))],
        );
        metric(
            "geocache_replication_dropped_frames_total",
            "counter",
            "Links closed after a malformed or unexpected frame.",
            &[(String::new(), load(&c.dropped_frames))],
        );
        metric(
            "geocache_replication_link_errors_total",
            "counter",
            "Peer links that ended with an error.",
            &[(String::new(), load(&c.link_errors))],
        );
        metric(
            "geocache_replication_clock_skew_reports_total",
            "counter",
            "Times a peer's clock was seen beyond --max-clock-skew.",
            &[(String::new(), load(&c.skewed_peers))],
        );
        metric(
            "geocache_replication_long_partitions_total",
            "counter",
            "Peers that came back after a partition longer than deletes are held (10 x --tombstone-retention; deleted keys may come back).",
            &[(String::new(), load(&c.long_partitions))],
        );
    }

    /// Waits until the write `seq` of our stream `stream` is confirmed at `level`.
    pub async fn wait_for_ack(&self, stream: &StreamId, seq: u64, level: AckLevel) -> Result<(), AckTimeout> {
        if level == AckLevel::Local {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.config.ack_timeout;
        loop {
            let notified = self.acks.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let missing = self.missing_acks(stream, seq, level);
            if missing.is_empty() {
                return Ok(());
            }
            // Peers going down do not notify: look again now and then, since a region
            // that became unreachable may no longer be waited for.
            let recheck = (tokio::time::Instant::now() + ACK_RECHECK).min(deadline);
            if tokio::time::timeout_at(recheck, notified).await.is_err() && recheck == deadline {
                let missing = self.missing_acks(stream, seq, level);
                if missing.is_empty() {
                    return Ok(());
                }
                return Err(AckTimeout(format!(
                    "not confirmed by {} within {} ms (the write is applied on this node and will replicate when they are reachable)",
                    missing.join(", "),
                    self.config.ack_timeout.as_millis()
                )));
            }
        }
    }

    /// Who has not confirmed yet: region peers (by node id) or regions.
    fn missing_acks(&self, stream: &StreamId, seq: u64, level: AckLevel) -> Vec<String> {
        let now = Instant::now();
        let table = self.table.lock();
        match level {
            AckLevel::Local => Vec::new(),
            AckLevel::Region => table
                .iter()
                .filter(|p| !p.redundant && p.region.as_deref() == Some(self.region.as_str()))
                .filter(|p| p.is_up(now, self.config.peer_timeout))
                .filter(|p| p.acked.get(stream) < seq)
                .map(|p| p.node_id.clone().unwrap_or_else(|| p.addr.clone()))
                .collect(),
            AckLevel::Global => {
                let regions: Vec<RegionAck> = table
                    .regions()
                    .into_iter()
                    .filter(|r| *r != self.region)
                    .map(|r| {
                        let of_region = || table.iter().filter(|p| !p.redundant && p.region.as_deref() == Some(&r));
                        RegionAck {
                            reachable: of_region().any(|p| p.is_up(now, self.config.peer_timeout)),
                            acked: of_region().any(|p| p.acked.get(stream) >= seq),
                            name: r,
                        }
                    })
                    .collect();
                missing_global(&regions)
            }
        }
    }
}

/// How often a write waiting for `ack=global` looks again at which regions are reachable.
const ACK_RECHECK: Duration = Duration::from_millis(100);

/// Another region, as `ack=global` sees it.
#[derive(Debug, Clone)]
struct RegionAck {
    name: String,
    /// A node of the region is linked and answering.
    reachable: bool,
    /// A node of the region has confirmed the write.
    acked: bool,
}

/// What `ack=global` still waits for, given the other regions: a confirmation from every
/// reachable region, and from a majority of all regions (this one included). An unreachable
/// region is not waited for once a majority has confirmed, so a region that is down does not
/// fail every global write; but a region cut off from most others never confirms a global
/// write on its own.
fn missing_global(others: &[RegionAck]) -> Vec<String> {
    let mut missing: Vec<String> =
        others.iter().filter(|r| r.reachable && !r.acked).map(|r| format!("region {}", r.name)).collect();
    let total = others.len() + 1;
    let confirmed = others.iter().filter(|r| r.acked).count() + 1;
    if confirmed * 2 <= total {
        let unreachable: Vec<&str> =
            others.iter().filter(|r| !r.reachable && !r.acked).map(|r| r.name.as_str()).collect();
        missing.push(format!(
            "a majority of regions ({confirmed} of {total} confirmed; unreachable: {})",
            unreachable.join(", ")
        ));
    }
    missing
}

/// A Prometheus label value: the node id, or the address when it is not known yet.
fn label(node_id: &str, addr: &str) -> String {
    let v = if node_id.is_empty() { addr } else { node_id };
    v.replace(['\\', '"', '\n'], "_")
}

/// Waits until this node applied write `token` (read-your-writes).
pub async fn wait_for_token(state: &NodeState, token: &Token) -> Result<(), AckTimeout> {
    let journal = state.db.journal();
    let deadline = tokio::time::Instant::now() + state.replication.config.ack_timeout;
    loop {
        let notified = journal.new_records().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if journal.lock().positions.get(&token.stream) >= token.seq {
            return Ok(());
        }
        // Records applied without a backlog do not notify: poll as well.
        let tick = tokio::time::sleep(Duration::from_millis(20));
        tokio::select! {
            _ = notified => {}
            _ = tick => {}
            _ = tokio::time::sleep_until(deadline) => {
                if journal.lock().positions.get(&token.stream) >= token.seq {
                    return Ok(());
                }
                return Err(AckTimeout(format!(
                    "this node has not received write {token} within {} ms",
                    state.replication.config.ack_timeout.as_millis()
                )));
            }
        }
    }
}

/// Starts the replication tasks: the listener (when given) and the peer manager.
pub fn spawn(
    state: Arc<NodeState>,
    listener: Option<TcpListener>,
    shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) {
    if let Some(listener) = listener {
        tasks.spawn(super::inbound::accept_loop(listener, state.clone(), shutdown.clone()));
    }
    tasks.spawn(manage_peers(state, shutdown));
}

fn file_mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the peers file into the table's seeds (with the `--peers` flags).
fn reload_peers_file(state: &NodeState, path: &std::path::Path) {
    let repl = &state.replication;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the peers file; keeping the current peers");
            return;
        }
    };
    match PeersFile::parse(&bytes) {
        Ok(file) => {
            let mut seeds: Vec<(String, Option<String>, Option<String>)> =
                repl.config.seeds.iter().map(|a| (a.clone(), None, None)).collect();
            for p in file.peers {
                if p.addr == repl.config.advertise || p.node_id.as_deref() == Some(repl.node_id()) {
                    continue;
                }
                seeds.push((p.addr, p.region, p.node_id));
            }
            let (added, removed) = repl.table.lock().set_seeds(&seeds);
            tracing::info!(path = %path.display(), peers = seeds.len(), added = added.len(), removed = removed.len(), "peers file loaded");
        }
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "peers file refused; keeping the current peers"),
    }
}

/// Keeps one link task per peer, reloads the peers file, and drops silent peers.
/// While a peer is unreachable it misses deletes, and after a long partition it may only
/// get them from a full resync, which carries tombstones but not forgotten ones: so the
/// store keeps them past the retention until every peer is up again.
fn hold_tombstones_while_a_peer_is_unreachable(state: &NodeState) {
    let repl = &state.replication;
    let now = Instant::now();
    let down: Vec<String> = repl
        .table
        .lock()
        .iter()
        .filter(|p| !p.redundant && !p.is_up(now, repl.config.peer_timeout))
        .map(|p| p.node_id.clone().unwrap_or_else(|| p.addr.clone()))
        .collect();
    let store = state.db.store();
    let hold = !down.is_empty();
    if store.set_tombstone_hold(hold) != hold {
        if hold {
            tracing::info!(
                peers = ?down, hold_s = store.tombstone_retention_ms() / 1000,
                "peers unreachable: keeping deletes past the tombstone retention until they are back"
            );
        } else {
            tracing::info!("every peer is reachable: deletes older than the tombstone retention are forgotten again");
        }
    }
}

async fn manage_peers(state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>) {
    let repl = &state.replication;
    let mut links: std::collections::HashMap<String, tokio::task::JoinHandle<()>> = std::collections::HashMap::new();
    let mut file_seen: Option<SystemTime> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        if let Some(path) = &repl.config.peers_file {
            let mtime = file_mtime(path);
            if mtime != file_seen {
                file_seen = mtime;
                if mtime.is_some() {
                    reload_peers_file(&state, path);
                }
            }
        }
        let dropped = repl.table.lock().drop_silent(Instant::now(), repl.config.drop_after);
        for addr in dropped {
            tracing::info!(addr = %addr, "dropped a silent peer learned by gossip");
        }
        hold_tombstones_while_a_peer_is_unreachable(&state);
        let addrs: Vec<String> = repl.table.lock().iter().map(|p| p.addr.clone()).collect();
        // Records are kept for peers only while there are peers to push to.
        state.db.journal().set_backlog(!addrs.is_empty());
        links.retain(|addr, handle| {
            let keep = addrs.contains(addr) && !handle.is_finished();
            if !keep {
                handle.abort();
            }
            keep
        });
        for addr in addrs {
            if let std::collections::hash_map::Entry::Vacant(slot) = links.entry(addr) {
                let addr = slot.key().clone();
                slot.insert(tokio::spawn(super::link::run_link(state.clone(), addr, shutdown.clone())));
            }
        }
    }
    for (_, handle) in links {
        handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, reachable: bool, acked: bool) -> RegionAck {
        RegionAck { name: name.into(), reachable, acked }
    }

    #[test]
    fn ack_global_waits_for_every_reachable_region() {
        let missing = missing_global(&[region("us", true, true), region("ap", true, false)]);
        assert_eq!(missing, ["region ap"]);
        assert!(missing_global(&[region("us", true, true), region("ap", true, true)]).is_empty());
    }

    #[test]
    fn ack_global_does_not_wait_for_an_unreachable_region_once_a_majority_confirmed() {
        // eu (this one) and us of eu, us, ap: a majority; ap is down.
        assert!(missing_global(&[region("us", true, true), region("ap", false, false)]).is_empty());
    }

    #[test]
    fn ack_global_never_succeeds_on_a_minority_however_few_regions_are_reachable() {
        let missing = missing_global(&[region("us", false, false), region("ap", false, false)]);
        assert_eq!(missing, ["a majority of regions (1 of 3 confirmed; unreachable: us, ap)"]);
        // Two regions: the other one is needed, reachable or not.
        assert_eq!(missing_global(&[region("us", false, false)]).len(), 1);
        // Four regions: two confirmations are not a majority.
        let missing = missing_global(&[region("b", true, true), region("c", false, false), region("d", false, false)]);
        assert_eq!(missing.len(), 1, "{missing:?}");
    }

    #[test]
    fn ack_global_on_a_single_region_needs_no_one_else() {
        assert!(missing_global(&[]).is_empty());
    }
}
