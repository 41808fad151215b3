//! One RESP connection: read, execute the pipelined commands, wait for the journal
//! once per batch, write the replies.
//!
//! Durability: a batch's writes are acknowledged only after [`Db::wait_durable`] for the
//! highest journal position they produced returned. When it fails, none of the batch's
//! writes may be acknowledged, and replies of reads that ran after a write could show
//! data that is not durable: every reply from the first command that wrote to the
//! journal on is replaced by `-ERR persistence failed: ...`, one per command, so the
//! client still gets exactly one reply per command. The connection stays open (the
//! client may retry). Replies of commands before the first write are sent as they are.
//!
//! [`Db::wait_durable`]: crate::db::Db::wait_durable

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::codec::{Parser, ParserLimits};
use super::commands::{self, Ctx, Session, Shared};
use super::reply::Out;
use crate::persist::Lsn;
use crate::state::NodeState;

/// Bytes the read buffer keeps free for the next read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies are written (after waiting for the journal) once this many bytes piled up,
/// even in the middle of a batch, to bound the output buffer.
const FLUSH_AT: usize = 256 * 1024;
/// A read buffer this large is released once empty.
const SHRINK_ABOVE: usize = 1024 * 1024;

/// The replies not yet written and the journal positions they wait for.
#[derive(Debug, Default)]
struct Pending {
    /// The highest journal position written.
    lsn: Option<Lsn>,
    /// Where in the output the reply of the first command that wrote to the journal
    /// starts.
    first_write_at: Option<usize>,
    /// Commands from that first write on.
    commands_since_first_write: usize,
    /// Commands executed.
    commands: u64,
    /// The highest sequence number of this node's stream written.
    seq: Option<u64>,
}

impl Pending {
    fn record(&mut self, reply_at: usize, lsn: Option<Lsn>, journaled: u64) {
        self.commands += 1;
        if self.first_write_at.is_some() {
            self.commands_since_first_write += 1;
        } else if journaled > 0 {
            self.first_write_at = Some(reply_at);
            self.commands_since_first_write = 1;
        }
        if let Some(lsn) = lsn {
            self.lsn = Some(self.lsn.map_or(lsn, |cur| cur.max(lsn)));
        }
    }
}

/// Runs a connection until the client leaves, a protocol error, `QUIT` or shutdown.
pub(super) async fn run<S>(
    mut stream: S,
    state: &NodeState,
    shared: &Shared,
    mut session: Session,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = state.db.limits();
    let full_limits = ParserLimits::for_values(limits.max_key_bytes, limits.max_value_bytes);
    // Like Redis, a client that has not authenticated yet may only send small
    // commands: it cannot make the node buffer large values.
    let parser_limits = |authenticated: bool| if authenticated { full_limits } else { ParserLimits::UNAUTHENTICATED };
    let mut parser = Parser::new(parser_limits(session.authenticated));
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Out::new();
    let mut pending = Pending::default();
    let client_id = session.id;
    // One long-lived future rather than a new `changed()` per read: registering with
    // the watch channel on every request would contend across connections.
    let shutdown_requested = async move {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                // The sender is gone: the node is going away.
                break;
            }
        }
    };
    tokio::pin!(shutdown_requested);
    loop {
        let mut close = false;
        let mut protocol_error = None;
        loop {
            match parser.parse(&rbuf) {
                Ok(Some(n)) => {
                    let args = parser.args(&rbuf);
                    if !args.is_empty() {
                        let was_authenticated = session.authenticated;
                        let reply_at = out.len();
                        let mut ctx = Ctx::new(state, shared, &mut session, &mut out);
                        commands::execute(&mut ctx, args);
                        let (lsn, journaled, seq) = (ctx.lsn, ctx.journaled, ctx.seq);
                        pending.record(reply_at, lsn, journaled);
                        if let Some(seq) = seq {
                            pending.seq = Some(pending.seq.map_or(seq, |cur| cur.max(seq)));
                        }
                        if session.authenticated != was_authenticated {
                            parser.set_limits(parser_limits(session.authenticated));
                        }
                    }
                    parser.consume();
                    rbuf.advance(n);
                    if session.quit {
                        close = true;
                        break;
                    }
                    if out.len() >= FLUSH_AT
                        && flush(&mut stream, state, shared, &mut out, &mut pending, session.ack).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    state.db.metrics().resp_protocol_error();
                    tracing::debug!(client_id, error = %e, "resp protocol error, closing the connection");
                    protocol_error = Some(e);
                    close = true;
                    break;
                }
            }
        }
        if flush(&mut stream, state, shared, &mut out, &mut pending, session.ack).await.is_err() {
            return;
        }
        if let Some(e) = protocol_error {
            // After the replies of the commands before it (which `flush` may refuse).
            out.error(format!("ERR {e}").as_bytes());
            if flush(&mut stream, state, shared, &mut out, &mut pending, session.ack).await.is_err() {
                return;
            }
        }
        if close {
            break;
        }
        if rbuf.is_empty() && rbuf.capacity() > SHRINK_ABOVE {
            rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        // A frame in progress says how much it still needs (bounded by the limits).
        rbuf.reserve(parser.needed(rbuf.len()).max(READ_CHUNK));
        tokio::select! {
            biased;
            read = stream.read_buf(&mut rbuf) => match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(client_id, error = %e, "resp read failed");
                    break;
                }
            },
            () = &mut shutdown_requested => break,
        }
    }
    let _ = stream.shutdown().await;
}

/// Replaces every reply from the first command that wrote to the journal on by the
/// error `msg`; returns how many replies were replaced.
fn refuse_unacknowledged(out: &mut Out, batch: &Pending, msg: &str) -> usize {
    let Some(at) = batch.first_write_at else { return 0 };
    out.truncate(at);
    for _ in 0..batch.commands_since_first_write {
        out.error(msg.as_bytes());
    }
    batch.commands_since_first_write
}

/// Waits for the journal to hold the pending writes, then writes the replies.
async fn flush<S>(
    stream: &mut S,
    state: &NodeState,
    shared: &Shared,
    out: &mut Out,
    pending: &mut Pending,
    ack: crate::replication::AckLevel,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let batch = std::mem::take(pending);
    if batch.commands > 0 {
        shared.commands_total.fetch_add(batch.commands, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(lsn) = batch.lsn
        && let Err(e) = state.db.wait_durable(Some(lsn)).await
    {
        tracing::warn!(error = %e, commands = batch.commands_since_first_write, "journal failed, refusing the batch's writes");
        let refused = refuse_unacknowledged(out, &batch, &format!("ERR persistence failed: {e}"));
        for _ in 0..refused {
            state.db.metrics().resp_error();
        }
    } else if let Some(seq) = batch.seq
        && let Err(e) = state.replication.wait_for_ack(state.db.journal().local_stream(), seq, ack).await
    {
        let refused = refuse_unacknowledged(out, &batch, &format!("ACKTIMEOUT {}", e.0));
        for _ in 0..refused {
            state.db.metrics().resp_error();
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    let written = stream.write_all(out.as_bytes()).await;
    out.clear();
    if let Err(e) = &written {
        tracing::debug!(error = %e, "resp write failed");
    }
    written?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_journal_refuses_every_reply_from_the_first_write_on() {
        let mut out = Out::new();
        let mut pending = Pending::default();
        // A read before any write.
        let at = out.len();
        out.null();
        pending.record(at, None, 0);
        // A journaled write.
        let at = out.len();
        out.ok();
        pending.record(at, Some(7), 1);
        // A read that may show the unacknowledged write, and a write that wrote nothing.
        let at = out.len();
        out.bulk(b"v");
        pending.record(at, None, 0);
        let at = out.len();
        out.int(0);
        pending.record(at, None, 0);
        assert_eq!(pending.lsn, Some(7));
        assert_eq!(pending.commands, 4);
        let refused = refuse_unacknowledged(&mut out, &pending, "ERR persistence failed: disk full");
        assert_eq!(refused, 3);
        assert_eq!(
            String::from_utf8_lossy(out.as_bytes()),
            "$-1\r\n-ERR persistence failed: disk full\r\n-ERR persistence failed: disk full\r\n\
             -ERR persistence failed: disk full\r\n"
        );
    }

    #[test]
    fn a_batch_without_journaled_writes_refuses_nothing() {
        let mut out = Out::new();
        out.ok();
        let mut pending = Pending::default();
        pending.record(0, None, 0);
        assert_eq!(refuse_unacknowledged(&mut out, &pending, "ERR x"), 0);
        assert_eq!(out.as_bytes(), b"+OK\r\n");
        assert_eq!(pending.lsn, None);
    }

    #[test]
    fn the_highest_journal_position_of_a_batch_is_awaited() {
        let mut pending = Pending::default();
        pending.record(0, Some(5), 1);
        pending.record(5, Some(9), 2);
        pending.record(10, Some(3), 1);
        assert_eq!(pending.lsn, Some(9));
        assert_eq!(pending.first_write_at, Some(0));
        assert_eq!(pending.commands_since_first_write, 3);
    }
}
