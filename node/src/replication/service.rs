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
use crate::membership::{Pause, PauseDetector, Peer, PeerTable, PeersFile, Source};
use crate::state::NodeState;
use crate::status::{Lag, PeerState, PeerStatus};

/// Replication settings.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Where peers reach our peer listener.
    pub advertise: String,
    /// `--peers`: addresses, with the region when the flag names it.
    pub seeds: Vec<(String, Option<String>)>,
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
    /// This node's own pauses: peers are not judged by silence it caused.
    pauses: PauseDetector,
    node_id: String,
    region: String,
}

impl Replication {
    pub fn new(config: ReplicationConfig, node_id: &str, region: &str) -> Self {
        let mut table = PeerTable::default();
        // Half the peer timeout: the peer manager observes every 250 ms, and a pause
        // that short cannot have made a peer look down by itself.
        let pause_gap = (config.peer_timeout / 2).max(Duration::from_millis(750));
        let seeds: Vec<_> = config.seeds.iter().map(|(a, region)| (a.clone(), region.clone(), None)).collect();
        table.set_seeds(&seeds);
        Replication {
            config,
            table: Mutex::new(table),
            acks: Notify::new(),
            pauses: PauseDetector::new(pause_gap),
            counters: ReplicationCounters::default(),
            node_id: node_id.to_string(),
            region: region.to_string(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Records that this node runs now; gives the last pause it noticed.
    pub fn observe_running(&self, now: Instant) -> Option<Pause> {
        self.pauses.observe(now)
    }

    /// Whether peer `p` counts as up at `now`: linked and heard within the peer
    /// timeout, or up when this node itself stopped and this node resumed less than a
    /// timeout ago (its links may still be coming back: the silence was ours).
    pub fn reachable(&self, p: &Peer, now: Instant, pause: Option<Pause>) -> bool {
        let timeout = self.config.peer_timeout;
        p.is_up(now, timeout) || PauseDetector::excuses(pause, p.last_seen, now, timeout)
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

    /// Records a round trip with the peer linked at `addr`: its time, and the clock
    /// difference when the round trip was short enough to tell; reports a peer whose
    /// clock goes beyond `--max-clock-skew`, and its return within it.
    pub fn observe_round_trip(&self, addr: &str, sent_ms: u64, remote_ms: u64) {
        let Some(rt) = clock::RoundTrip::measure(sent_ms, remote_ms, clock::now_ms()) else { return };
        let mut table = self.table.lock();
        let Some(p) = table.get_mut(addr) else { return };
        p.rtt_ms = Some(rt.rtt_ms);
        let Some(beyond) = rt.beyond(self.config.max_skew_ms) else { return };
        p.skew_ms = Some(rt.offset_ms);
        let was = std::mem::replace(&mut p.clock_skewed, beyond);
        let node = p.node_id.clone().unwrap_or_else(|| addr.to_string());
        let region = p.region.clone().unwrap_or_default();
        drop(table);
        if beyond && !was {
            self.counters.skewed_peers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %node, region = %region, skew_ms = rt.offset_ms, rtt_ms = rt.rtt_ms, max_ms = self.config.max_skew_ms,
                "clock skew with a peer beyond the bound; its timestamps are not merged into our clock"
            );
        } else if !beyond && was {
            tracing::info!(peer = %node, region = %region, skew_ms = rt.offset_ms, "clock skew with a peer back within the bound");
        }
    }

    /// Status of every peer for `/v1/status`.
    pub fn peer_statuses(&self, state: &NodeState) -> Vec<PeerStatus> {
        let now = Instant::now();
        let pause = self.observe_running(now);
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
                    state: if self.reachable(&p, now, pause) { PeerState::Up } else { PeerState::Down },
                    last_seen_ms_ago: p.last_seen.map(|t| now.duration_since(t).as_millis() as u64),
                    lag: Lag { writes: st.positions.ahead_of(&p.acked), ms: lag_ms },
                    rtt_ms: p.rtt_ms,
                    clock_offset_ms: p.skew_ms,
                    clock_skewed: p.clock_skewed,
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
            "geocache_replication_rtt_ms",
            "gauge",
            "Round-trip time of the last heartbeat a peer answered.",
            &per_peer(&|p| p.rtt_ms.unwrap_or(0)),
        );
        metric(
            "geocache_replication_peer_clock_skewed",
            "gauge",
            "1 while a peer's clock is beyond --max-clock-skew of ours (measured over a round trip).",
            &per_peer(&|p| u64::from(p.clock_skewed)),
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

    /// Who has not confirmed yet: region peers (by node id) or regions. Every configured
    /// peer counts, reached or not: a peer whose region we do not know yet (a seed never
    /// reached, given without a region) may be a region-mate or another region, and counts
    /// as unconfirmed for both levels, so that a node that reached no one confirms nothing.
    fn missing_acks(&self, stream: &StreamId, seq: u64, level: AckLevel) -> Vec<String> {
        let now = Instant::now();
        let pause = self.observe_running(now);
        let table = self.table.lock();
        let peers: Vec<&Peer> = table.iter().filter(|p| !p.redundant).collect();
        let unknown: Vec<Voter> = peers
            .iter()
            .filter(|p| p.region.is_none())
            .map(|p| Voter { name: format!("unreached peer {}", p.addr), reachable: false, acked: false })
            .collect();
        let voter = |p: &Peer| Voter {
            name: p.node_id.clone().unwrap_or_else(|| p.addr.clone()),
            reachable: self.reachable(p, now, pause),
            acked: p.acked.get(stream) >= seq,
        };
        match level {
            AckLevel::Local => Vec::new(),
            AckLevel::Region => {
                let mut voters: Vec<Voter> = peers
                    .iter()
                    .filter(|p| p.region.as_deref() == Some(self.region.as_str()))
                    .map(|p| voter(p))
                    .collect();
                voters.extend(unknown);
                missing_majority(&voters, &format!("nodes of region {}", self.region))
            }
            AckLevel::Global => {
                let mut regions: Vec<&str> =
                    peers.iter().filter_map(|p| p.region.as_deref()).filter(|r| *r != self.region.as_str()).collect();
                regions.sort_unstable();
                regions.dedup();
                let mut voters: Vec<Voter> = regions
                    .into_iter()
                    .map(|r| {
                        let of_region = || peers.iter().filter(|p| p.region.as_deref() == Some(r)).map(|p| voter(p));
                        Voter {
                            name: format!("region {r}"),
                            reachable: of_region().any(|v| v.reachable),
                            acked: of_region().any(|v| v.acked),
                        }
                    })
                    .collect();
                voters.extend(unknown);
                missing_majority(&voters, "regions")
            }
        }
    }
}

/// How often a write waiting for `ack=region|global` looks again at which peers are reachable.
const ACK_RECHECK: Duration = Duration::from_millis(100);

/// A node of this region (`ack=region`) or another region (`ack=global`) whose
/// confirmation counts, or a configured peer not reached yet, which may be either.
#[derive(Debug, Clone)]
struct Voter {
    name: String,
    /// Linked and answering.
    reachable: bool,
    /// Has confirmed the write.
    acked: bool,
}

/// What a write still waits for, given the other voters (this node or region is one
/// more, and has the write): a confirmation from every reachable voter, and from a
/// majority of all of them. A voter that is unreachable is not waited for once a majority
/// confirmed, so one that is down does not fail every write; but a node or region cut off
/// from most others — or that has not reached them yet — never confirms a write on its own.
fn missing_majority(others: &[Voter], what: &str) -> Vec<String> {
    let mut missing: Vec<String> = others.iter().filter(|v| v.reachable && !v.acked).map(|v| v.name.clone()).collect();
    let total = others.len() + 1;
    let confirmed = others.iter().filter(|v| v.acked).count() + 1;
    if confirmed * 2 <= total {
        let unreachable: Vec<&str> =
            others.iter().filter(|v| !v.reachable && !v.acked).map(|v| v.name.as_str()).collect();
        missing.push(format!(
            "a majority of {what} ({confirmed} of {total} confirmed; unreachable: {})",
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
                repl.config.seeds.iter().map(|(a, region)| (a.clone(), region.clone(), None)).collect();
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
    let pause = repl.observe_running(now);
    let down: Vec<String> = repl
        .table
        .lock()
        .iter()
        .filter(|p| !p.redundant && !repl.reachable(p, now, pause))
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

    fn region(name: &str, reachable: bool, acked: bool) -> Voter {
        Voter { name: format!("region {name}"), reachable, acked }
    }

    fn unreached(addr: &str) -> Voter {
        Voter { name: format!("unreached peer {addr}"), reachable: false, acked: false }
    }

    fn global(others: &[Voter]) -> Vec<String> {
        missing_majority(others, "regions")
    }

    #[test]
    fn ack_global_waits_for_every_reachable_region() {
        let missing = global(&[region("us", true, true), region("ap", true, false)]);
        assert_eq!(missing, ["region ap"]);
        assert!(global(&[region("us", true, true), region("ap", true, true)]).is_empty());
    }

    #[test]
    fn ack_global_does_not_wait_for_an_unreachable_region_once_a_majority_confirmed() {
        // eu (this one) and us of eu, us, ap: a majority; ap is down.
        assert!(global(&[region("us", true, true), region("ap", false, false)]).is_empty());
    }

    #[test]
    fn ack_global_never_succeeds_on_a_minority_however_few_regions_are_reachable() {
        let missing = global(&[region("us", false, false), region("ap", false, false)]);
        assert_eq!(missing, ["a majority of regions (1 of 3 confirmed; unreachable: region us, region ap)"]);
        // Two regions: the other one is needed, reachable or not.
        assert_eq!(global(&[region("us", false, false)]).len(), 1);
        // Four regions: two confirmations are not a majority.
        let missing = global(&[region("b", true, true), region("c", false, false), region("d", false, false)]);
        assert_eq!(missing.len(), 1, "{missing:?}");
    }

    #[test]
    fn ack_global_on_a_single_region_needs_no_one_else() {
        assert!(global(&[]).is_empty());
    }

    #[test]
    fn a_node_that_reached_no_peer_yet_confirms_no_global_write() {
        // Right after a start, seeds given without a region are not known to be anything.
        let missing = global(&[unreached("10.0.0.2:7946"), unreached("10.0.0.3:7946")]);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].contains("1 of 3 confirmed"), "{missing:?}");
    }

    #[test]
    fn an_unreached_seed_counts_against_the_majority_as_if_it_were_another_region() {
        // us confirmed; ap's endpoint was never reached since this node started: 2 of 3.
        assert!(global(&[region("us", true, true), unreached("ap-lb:7946")]).is_empty());
        // Two unreached seeds may be two regions: 2 of 4 is not a majority.
        assert_eq!(global(&[region("us", true, true), unreached("a:1"), unreached("b:1")]).len(), 1);
    }

    fn peer(addr: &str, region: Option<&str>, up: bool, acked: bool) -> Peer {
        let mut p = Peer::new(addr.into(), crate::membership::Source::Seed, region.map(Into::into), None);
        if up {
            p.connected = true;
            p.last_seen = Some(Instant::now());
        }
        if acked {
            p.acked.set(StreamId::new("eu-0", 1), 5);
        }
        p
    }

    fn replication(peers: Vec<Peer>) -> Replication {
        let r = Replication::new(ReplicationConfig::standalone(), "eu-0", "eu");
        let mut table = r.table.lock();
        for p in peers {
            table.add(p);
        }
        drop(table);
        r
    }

    fn missing(r: &Replication, level: AckLevel) -> Vec<String> {
        r.missing_acks(&StreamId::new("eu-0", 1), 5, level)
    }

    #[test]
    fn ack_region_and_global_count_configured_peers_never_reached() {
        // Just started: three seeds given as bare addresses, none reached.
        let r = replication(vec![peer("a:1", None, false, false), peer("b:1", None, false, false)]);
        assert_eq!(missing(&r, AckLevel::Region).len(), 1, "{:?}", missing(&r, AckLevel::Region));
        assert_eq!(missing(&r, AckLevel::Global).len(), 1, "{:?}", missing(&r, AckLevel::Global));
    }

    #[test]
    fn ack_region_waits_for_live_region_mates_and_a_majority_of_the_region() {
        // eu-1 up and confirmed, eu-2 down: 2 of 3.
        let r = replication(vec![peer("eu-1:1", Some("eu"), true, true), peer("eu-2:1", Some("eu"), false, false)]);
        assert!(missing(&r, AckLevel::Region).is_empty());
        // eu-1 up and not confirmed yet: waited for.
        let r = replication(vec![peer("eu-1:1", Some("eu"), true, false)]);
        assert_eq!(missing(&r, AckLevel::Region)[0], "eu-1:1");
        // The only region-mate is down: this node alone is not a majority of two.
        let r = replication(vec![peer("eu-1:1", Some("eu"), false, false), peer("us:1", Some("us"), true, true)]);
        assert_eq!(missing(&r, AckLevel::Region).len(), 1);
        // Peers of other regions do not count for ack=region.
        let r = replication(vec![peer("eu-1:1", Some("eu"), true, true), peer("us:1", Some("us"), true, false)]);
        assert!(missing(&r, AckLevel::Region).is_empty());
    }

    #[test]
    fn ack_global_counts_regions_known_from_the_configuration_before_they_are_reached() {
        // The peers file names ap's endpoint with its region: ap counts while never reached.
        let r = replication(vec![peer("us:1", Some("us"), true, true), peer("ap:1", Some("ap"), false, false)]);
        assert!(missing(&r, AckLevel::Global).is_empty());
        let r = replication(vec![peer("us:1", Some("us"), false, false), peer("ap:1", Some("ap"), false, false)]);
        assert_eq!(missing(&r, AckLevel::Global).len(), 1);
    }
}
