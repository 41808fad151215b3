//! An outbound link: connects to a peer and pushes every record the peer lacks, as
//! it is applied here — from the backlog after a short break, or as a full snapshot
//! when the backlog no longer reaches back — then keeps streaming. It reconnects with
//! backoff until the peer leaves the table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::frame::{Frame, PROTOCOL_VERSION};
use super::io::{FrameReader, FrameWriter, LinkError};
use super::{Positions, Read};
use crate::clock;
use crate::persist::record;
use crate::state::NodeState;
use crate::store::OriginId;

/// Target size of one batch or snapshot chunk.
const CHUNK_BYTES: usize = 256 << 10;

/// Runs the link to `addr` until shutdown or until the peer leaves the table.
pub async fn run_link(state: Arc<NodeState>, addr: String, mut shutdown: watch::Receiver<bool>) {
    let repl = &state.replication;
    let mut backoff = Duration::from_millis(100);
    // The last security refusal logged, so that a link retrying every few seconds
    // says why once, and again only when the reason changes.
    let mut last_refusal: Option<String> = None;
    loop {
        if *shutdown.borrow() || !repl.table.lock().contains(&addr) {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = connect_and_push(&state, &addr) => r,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let mut redundant = false;
        if let Some(p) = repl.table.lock().get_mut(&addr) {
            p.connected = false;
            redundant = p.redundant;
            if let Err(e) = &result {
                p.last_error = Some(e.to_string());
            }
        }
        repl.acks.notify_waiters();
        match &result {
            Err(e @ (LinkError::Tls(_) | LinkError::Identity(_))) => {
                repl.counters.link_errors.fetch_add(1, Ordering::Relaxed);
                let reason = e.to_string();
                if last_refusal.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(peer = %addr, reason = %reason, category = e.category(), "peer link refused");
                    last_refusal = Some(reason);
                }
            }
            Err(e) => {
                repl.counters.link_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %addr, error = %e, category = e.category(), "link ended");
                if started.elapsed() > Duration::from_secs(5) {
                    last_refusal = None;
                }
            }
            Ok(()) => last_refusal = None,
        }
        if redundant {
            // This address is us, or a node we already reach another way: look again
            // later, in case that other way goes away.
            backoff = Duration::from_secs(10);
        } else if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect_and_push(state: &Arc<NodeState>, addr: &str) -> Result<(), LinkError> {
    let repl = &state.replication;
    let timeout = repl.config.peer_timeout;
    let super::transport::Connection { mut reader, mut writer, cert } =
        super::transport::dial(state, addr, timeout).await?;
    let journal = state.db.journal();
    let hello = repl.identity(journal.local_stream().epoch);
    let hello_sent_ms = hello.wall_ms;
    writer.send(&Frame::Hello(hello)).await?;
    let (peer, peer_positions) = match reader.next_within(timeout, "welcome").await? {
        Frame::Welcome(id, positions) => (id, positions),
        Frame::Goodbye(reason) => return Err(refusal_or_goodbye(reason)),
        _ => return Err(LinkError::Unexpected("expected welcome")),
    };
    if let Err(e) = super::transport::check_identity(state, cert.as_ref(), &peer.node_id, &peer.region) {
        writer.goodbye(&format!("{REFUSED_PREFIX}{e}")).await;
        return Err(e);
    }
    if !super::frame::speaks(peer.version) {
        writer.goodbye("unsupported protocol version").await;
        return Err(LinkError::Refused(format!("peer speaks protocol {}, we speak {PROTOCOL_VERSION}", peer.version)));
    }
    let redundant = {
        let mut table = repl.table.lock();
        let redundant = peer.node_id == repl.node_id() || table.linked_elsewhere(addr, &peer.node_id);
        if let Some(p) = table.get_mut(addr) {
            p.redundant = redundant;
            p.node_id = Some(peer.node_id.clone());
            p.region = Some(peer.region.clone());
            if !redundant {
                // Tombstones are held while a peer is unreachable, but not forever.
                let held_ms = state.db.store().tombstone_hold_ms();
                if let Some(away) = p.last_seen.map(|t| t.elapsed()).filter(|a| a.as_millis() as u64 > held_ms) {
                    // Deletes older than that are forgotten: one that happened on one side
                    // of this partition cannot reach the other any more.
                    repl.counters.long_partitions.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        peer = %peer.node_id, region = %peer.region, away_s = away.as_secs(), held_s = held_ms / 1000,
                        "peer returns after a partition longer than deletes are held (10 x --tombstone-retention): keys deleted meanwhile on one side may come back"
                    );
                }
                p.connected = true;
                p.last_seen = Some(Instant::now());
                p.acked = peer_positions.clone();
                p.last_error = None;
            }
        }
        redundant
    };
    if redundant {
        writer.goodbye("redundant link").await;
        return Err(LinkError::Refused(format!("{addr} is this node or already linked as {}", peer.node_id)));
    }
    // Hello and Welcome are a round trip: the first clock comparison.
    repl.observe_round_trip(addr, hello_sent_ms, peer.wall_ms);
    repl.acks.notify_waiters();
    writer.send(&Frame::Gossip(repl.gossip())).await?;

    // Acks, pings and gossip come back on the same connection.
    let reader_state = state.clone();
    let reader_addr = addr.to_string();
    let mut reader_task = tokio::spawn(async move { read_replies(&reader_state, &reader_addr, &mut reader).await });
    let peer_stream = super::StreamId::new(peer.node_id.as_str(), peer.epoch);
    let result = push(state, addr, &peer_stream, peer_positions, &mut writer, &mut reader_task).await;
    reader_task.abort();
    if let Err(LinkError::Goodbye(_) | LinkError::Closed) = &result {
    } else {
        writer.goodbye("link closing").await;
    }
    result
}

/// How a goodbye that refuses the link for a security reason starts.
pub(super) const REFUSED_PREFIX: &str = "refused: ";

/// A goodbye; one that refuses us for a security reason is reported as such.
fn refusal_or_goodbye(reason: String) -> LinkError {
    match reason.strip_prefix(REFUSED_PREFIX) {
        Some(why) => LinkError::Identity(format!("the peer refused this node: {why}")),
        None => LinkError::Goodbye(reason),
    }
}

/// Handles what the receiver sends back: acks (positions), pongs, pings, gossip.
async fn read_replies(state: &NodeState, addr: &str, reader: &mut FrameReader) -> Result<(), LinkError> {
    let repl = &state.replication;
    let timeout = repl.config.peer_timeout;
    loop {
        let frame = reader.next_within(timeout * 2, "acks").await?;
        let mut table = repl.table.lock();
        let Some(p) = table.get_mut(addr) else { return Ok(()) };
        p.last_seen = Some(Instant::now());
        match frame {
            Frame::Ack(positions) => {
                p.acked = positions;
                drop(table);
                repl.acks.notify_waiters();
            }
            Frame::Pong { echo_ms, wall_ms } => {
                drop(table);
                repl.observe_round_trip(addr, echo_ms, wall_ms);
            }
            // Sent while the receiver applies a long snapshot: liveness only (a one-way
            // timestamp says nothing reliable about its clock).
            Frame::Ping(_) => {}
            Frame::Gossip(peers) => {
                drop(table);
                repl.learn(&peers);
            }
            Frame::Goodbye(reason) => return Err(LinkError::Goodbye(reason)),
            _ => return Err(LinkError::Unexpected("receiver sent a pusher frame")),
        }
    }
}

/// Streams records to the peer until the connection fails.
async fn push(
    state: &Arc<NodeState>,
    addr: &str,
    peer_stream: &super::StreamId,
    peer_positions: Positions,
    writer: &mut FrameWriter,
    reader_task: &mut tokio::task::JoinHandle<Result<(), LinkError>>,
) -> Result<(), LinkError> {
    let repl = &state.replication;
    let journal = state.db.journal();
    let peer_node = &*peer_stream.node;
    let mut sent = peer_positions;
    let mut heartbeat = tokio::time::interval(repl.config.heartbeat());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gossip_every = 0u32;
    // Where to resume: the backlog when it reaches back far enough, else a snapshot.
    let (mut need_snapshot, mut snapshots_seen) = {
        let st = journal.lock();
        (!st.backlog.reaches_back(&st.positions, &sent), st.snapshots_applied)
    };
    loop {
        let mut from = if std::mem::take(&mut need_snapshot) {
            let resume = send_snapshot(state, peer_node, writer, &mut sent).await?;
            if let Some(p) = repl.table.lock().get_mut(addr) {
                p.snapshots += 1;
            }
            resume
        } else {
            repl.counters.backlog_resumes.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = repl.table.lock().get_mut(addr) {
                p.resumes += 1;
            }
            tracing::info!(peer = %peer_node, "link up: resuming from the backlog");
            journal.lock().backlog.start()
        };
        // Stream from `from` until the backlog drops records we still need.
        loop {
            let notified = journal.new_records().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A snapshot this node received raised its positions for records that are not
            // in its backlog: a peer lacking them gets them only from a snapshot of ours
            // (nothing else relays them to it, when the node that wrote them does not link
            // to it directly).
            if journal.lock().snapshots_applied != snapshots_seen {
                if let Some(p) = repl.table.lock().get(addr) {
                    sent.merge_max(&p.acked);
                }
                let st = journal.lock();
                snapshots_seen = st.snapshots_applied;
                need_snapshot = !st.backlog.reaches_back(&st.positions, &sent);
            }
            if need_snapshot {
                tracing::info!(
                    peer = %peer_node,
                    "this node received records by a full snapshot that the peer lacks; sending it a full snapshot"
                );
                break;
            }
            let read = journal.lock().backlog.read(from, CHUNK_BYTES);
            let (entries, next) = match read {
                Read::Entries(entries, next) => (entries, next),
                Read::Evicted => {
                    tracing::warn!(peer = %peer_node, "peer fell behind the backlog while connected; sending a full snapshot");
                    need_snapshot = true;
                    break;
                }
            };
            from = next;
            // What the peer confirmed it has (from anyone) need not be sent again.
            if let Some(p) = repl.table.lock().get(addr) {
                sent.merge_max(&p.acked);
            }
            let mut batch: Vec<&[u8]> = Vec::with_capacity(entries.len());
            for e in &entries {
                // The peer's own writes of this run are never echoed back to it.
                if sent.get(&e.stream) >= e.seq || e.stream == *peer_stream {
                    continue;
                }
                batch.push(&e.encoded);
                sent.set(e.stream.clone(), e.seq);
            }
            if !batch.is_empty() {
                writer.send_batch(&batch).await?;
                repl.counters.records_sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
            if !entries.is_empty() {
                continue;
            }
            tokio::select! {
                _ = &mut notified => {
                    // Let writers running right now append theirs too: fewer, larger
                    // batches under load, no added delay when idle.
                    tokio::task::yield_now().await;
                }
                _ = heartbeat.tick() => {
                    writer.send(&Frame::Ping(clock::now_ms())).await?;
                    gossip_every += 1;
                    if gossip_every.is_multiple_of(10) {
                        writer.send(&Frame::Gossip(repl.gossip())).await?;
                    }
                }
                r = &mut *reader_task => {
                    return match r {
                        Ok(Ok(())) => Err(LinkError::Closed),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(LinkError::Closed),
                    };
                }
            }
        }
    }
}

/// Sends every live entry and tombstone, then the positions they reach; returns the
/// backlog index to stream from afterwards.
async fn send_snapshot(
    state: &Arc<NodeState>,
    peer_node: &str,
    writer: &mut FrameWriter,
    sent: &mut Positions,
) -> Result<u64, LinkError> {
    let repl = &state.replication;
    let journal = state.db.journal();
    let store = state.db.store();
    let started = Instant::now();
    // Positions and backlog index taken together: everything up to them is in the
    // store now, and everything after them is in the backlog from `resume` on.
    let (reached, resume) = {
        let st = journal.lock();
        (st.positions.clone(), st.backlog.end())
    };
    tracing::info!(peer = %peer_node, "peer is behind the backlog: sending a full snapshot");
    writer.send(&Frame::SnapshotBegin).await?;
    let mut entries = 0u64;
    let local = store.origins().local();
    for shard in 0..store.shard_count() {
        let mut buf = Vec::new();
        let now = clock::now_ms();
        store.scan_shard_for_resync(shard, now, |rec| {
            let origin = if rec.version.origin == OriginId::LOCAL {
                local.clone()
            } else {
                store.origins().get(rec.version.origin).unwrap_or_else(|| local.clone())
            };
            record::encode(&mut buf, 0, 0, &origin, rec);
            entries += 1;
        });
        let buf = Bytes::from(buf);
        let mut at = 0;
        while at < buf.len() {
            // Split on record boundaries.
            let mut end = at;
            while end < buf.len() && end - at < CHUNK_BYTES {
                let len = u32::from_le_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]) as usize;
                end += record::HEADER_LEN + len;
            }
            writer.send(&Frame::SnapshotChunk(buf.slice(at..end))).await?;
            at = end;
        }
    }
    writer.send(&Frame::SnapshotEnd(reached.clone())).await?;
    sent.merge_max(&reached);
    repl.counters.snapshots_sent.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        peer = %peer_node, entries, elapsed_ms = started.elapsed().as_millis() as u64,
        "full snapshot sent; streaming resumes after it"
    );
    Ok(resume)
}
