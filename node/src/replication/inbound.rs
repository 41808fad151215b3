//! The receiving side: accepts peers' links, applies the records they push (each the
//! next of its stream, so positions stay contiguous), and confirms with acks carrying
//! the positions reached. A malformed or hostile frame closes that link only.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::frame::{Frame, PROTOCOL_VERSION};
use super::io::LinkError;
use crate::journal::Offered;
use crate::persist::record;
use crate::state::NodeState;

/// Remembers which refusals were logged recently, so that a peer retrying every few
/// seconds is reported once a minute, not at every try.
#[derive(Default)]
struct RefusalLog {
    logged: Mutex<std::collections::HashMap<(std::net::IpAddr, String), std::time::Instant>>,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn should_log(&self, remote: std::net::IpAddr, reason: &str) -> bool {
        let now = std::time::Instant::now();
        let mut logged = self.logged.lock();
        if logged.len() > 1024 {
            logged.retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        match logged.get(&(remote, reason.to_string())) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ => {
                logged.insert((remote, reason.to_string()), now);
                true
            }
        }
    }
}

/// Accepts peer connections until shutdown.
pub async fn accept_loop(listener: TcpListener, state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>) {
    let refusals = Arc::new(RefusalLog::default());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((socket, remote)) => {
                let state = state.clone();
                let mut shutdown = shutdown.clone();
                let refusals = refusals.clone();
                tokio::spawn(async move {
                    let result = tokio::select! {
                        r = receive(&state, socket) => r,
                        _ = shutdown.wait_for(|stop| *stop) => Ok(()),
                    };
                    if let Err(e) = result {
                        state.replication.counters.link_errors.fetch_add(1, Ordering::Relaxed);
                        if let LinkError::Tls(reason) | LinkError::Identity(reason) = &e {
                            if refusals.should_log(remote.ip(), reason) {
                                tracing::warn!(remote = %remote, reason = %reason, category = e.category(), "refused a peer link");
                            }
                        } else if matches!(e, LinkError::Frame(_) | LinkError::Record(_) | LinkError::Unexpected(_)) {
                            state.replication.counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(remote = %remote, error = %e, "closed a peer link after a malformed frame");
                        } else {
                            tracing::debug!(remote = %remote, error = %e, "inbound link ended");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a peer connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn receive(state: &Arc<NodeState>, socket: TcpStream) -> Result<(), LinkError> {
    let repl = &state.replication;
    let journal = state.db.journal();
    let timeout = repl.config.peer_timeout;
    let super::transport::Connection { mut reader, mut writer, cert } =
        super::transport::accept(state, socket, timeout).await?;
    let peer = match reader.next_within(timeout, "hello").await? {
        Frame::Hello(id) => id,
        _ => {
            writer.goodbye("expected hello").await;
            return Err(LinkError::Unexpected("expected hello"));
        }
    };
    if !super::frame::speaks(peer.version) {
        writer
            .goodbye(&format!("unsupported protocol version {}, this node speaks {PROTOCOL_VERSION}", peer.version))
            .await;
        return Err(LinkError::Refused(format!("peer speaks protocol {}", peer.version)));
    }
    if let Err(e) = super::transport::check_identity(state, cert.as_ref(), &peer.node_id, &peer.region) {
        writer.goodbye(&format!("{}{e}", super::link::REFUSED_PREFIX)).await;
        return Err(e);
    }
    writer.send(&Frame::Welcome(repl.identity(journal.local_stream().epoch), journal.positions())).await?;
    if peer.node_id == repl.node_id() {
        // We dialled ourselves: the pusher side notices and stops.
        return Ok(());
    }
    // Pushers of protocol 1 do not know Pong.
    let pongs = peer.version >= 2;
    repl.learn(&[super::frame::PeerInfo {
        node_id: peer.node_id.clone(),
        region: peer.region.clone(),
        addr: peer.advertise.clone(),
    }]);
    writer.send(&Frame::Gossip(repl.gossip())).await?;
    let max_skew = repl.config.max_skew_ms;
    let mut in_snapshot = false;
    loop {
        let frame = reader.next_within(timeout * 2, "records or pings").await?;
        match frame {
            Frame::Batch(records) => {
                let mut lsn = None;
                let mut at = 0;
                while at < records.len() {
                    let (d, used) = record::decode(&records[at..])?;
                    if d.marker.is_some() || d.seq == 0 {
                        writer.goodbye("a batch holds only numbered records").await;
                        return Err(LinkError::Unexpected("unnumbered record in a batch"));
                    }
                    let encoded: Bytes = records.slice(at..at + used);
                    at += used;
                    let applied = state.db.apply_remote(&d, &encoded, max_skew);
                    match applied.offered {
                        Offered::Applied { .. } => {
                            repl.counters.records_received.fetch_add(1, Ordering::Relaxed);
                            lsn = applied.lsn.or(lsn);
                        }
                        Offered::Duplicate => {
                            repl.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Offered::Gap { have } => {
                            repl.counters.gaps.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                peer = %peer.node_id, stream = %d.node_id, have, got = d.seq,
                                "records missing before this one; asking the peer to resync"
                            );
                            state.db.wait_durable(lsn).await.map_err(|e| LinkError::Refused(e.to_string()))?;
                            writer.goodbye("gap in a stream: reconnect and resync").await;
                            return Err(LinkError::Refused("gap in a stream".into()));
                        }
                    }
                }
                state.db.wait_durable(lsn).await.map_err(|e| LinkError::Refused(e.to_string()))?;
                writer.send(&Frame::Ack(journal.positions())).await?;
            }
            Frame::SnapshotBegin => {
                in_snapshot = true;
                tracing::info!(peer = %peer.node_id, "receiving a full snapshot");
            }
            Frame::SnapshotChunk(records) if in_snapshot => {
                let mut lsn = None;
                let mut at = 0;
                while at < records.len() {
                    let (d, used) = record::decode(&records[at..])?;
                    at += used;
                    if d.marker.is_some() {
                        return Err(LinkError::Unexpected("marker in a snapshot"));
                    }
                    lsn = state.db.apply_snapshot_record(&d, max_skew).or(lsn);
                }
                state.db.wait_durable(lsn).await.map_err(|e| LinkError::Refused(e.to_string()))?;
                // Keeps the pusher's reply reader alive through a long snapshot.
                writer.send(&Frame::Ping(crate::clock::now_ms())).await?;
            }
            Frame::SnapshotEnd(reached) if in_snapshot => {
                in_snapshot = false;
                let lsn = journal.finish_snapshot(&reached);
                state.db.wait_durable(lsn).await.map_err(|e| LinkError::Refused(e.to_string()))?;
                repl.counters.snapshots_received.fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %peer.node_id, "full snapshot applied");
                writer.send(&Frame::Ack(journal.positions())).await?;
            }
            Frame::Ping(echo_ms) => {
                // The pusher measures clocks over this round trip; a one-way timestamp
                // is not trusted here (a frame that waited in a paused process would
                // look like skew).
                if pongs {
                    writer.send(&Frame::Pong { echo_ms, wall_ms: crate::clock::now_ms() }).await?;
                }
                writer.send(&Frame::Ack(journal.positions())).await?;
            }
            Frame::Gossip(peers) => repl.learn(&peers),
            Frame::Goodbye(_) => return Ok(()),
            _ => {
                writer.goodbye("unexpected frame").await;
                return Err(LinkError::Unexpected("unexpected frame from a pusher"));
            }
        }
    }
}
