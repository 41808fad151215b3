//! The journal orders every write this node applies — its own and the ones it receives
//! — into one sequence: it numbers local writes in this node's stream, tracks the
//! replication positions reached, appends each record to the on-disk log and to the
//! replication backlog, and wakes the peer links. It is always entered under the shard
//! lock of the written key (shard → journal → log buffer), so the log, the backlog and
//! the store agree on the order of writes to a key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::persist::{Lsn, Persist, record};
use crate::replication::{Backlog, BacklogEntry, Positions, StreamId};
use crate::store::{Origin, RecordRef};

/// The state behind the journal lock.
pub struct JournalState {
    /// Highest contiguous sequence number applied, per stream (ours included).
    pub positions: Positions,
    /// Recent records, for peers that resume after a break.
    pub backlog: Backlog,
    /// Sequence number of the last local write.
    pub local_seq: u64,
    /// Full snapshots applied so far. A snapshot raises positions for records that are
    /// not in the backlog, which links to other peers must then catch up on (see
    /// `replication::link`).
    pub snapshots_applied: u64,
    /// Where records are encoded for the backlog: one allocation shared by many
    /// records instead of one each.
    arena: BytesMut,
}

/// Where a local write landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub seq: u64,
    pub lsn: Option<Lsn>,
}

pub struct Journal {
    state: Mutex<JournalState>,
    persist: Option<Arc<Persist>>,
    local: StreamId,
    local_origin: Origin,
    /// Whether records are kept for peers: only while this node has peers to push to
    /// (a peer that appears later starts with a snapshot).
    keep_backlog: AtomicBool,
    backlog_configured: bool,
    new_records: Notify,
}

/// The outcome of offering a peer's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The next record of its stream: applied (or superseded by a newer version).
    Applied { changed: bool },
    /// Already applied before.
    Duplicate,
    /// Records of its stream are missing before it: the link must resync.
    Gap { have: u64 },
}

impl Journal {
    pub fn new(
        local: StreamId,
        local_origin: Origin,
        persist: Option<Arc<Persist>>,
        positions: Positions,
        backlog_bytes: Option<usize>,
    ) -> Self {
        Journal {
            state: Mutex::new(JournalState {
                positions,
                backlog: Backlog::new(backlog_bytes.unwrap_or(0)),
                local_seq: 0,
                snapshots_applied: 0,
                arena: BytesMut::new(),
            }),
            persist,
            local,
            local_origin,
            keep_backlog: AtomicBool::new(false),
            backlog_configured: backlog_bytes.is_some(),
            new_records: Notify::new(),
        }
    }

    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.persist.as_ref()
    }

    /// Turns the backlog on (there are peers to push to) or off (none: its records
    /// are dropped).
    pub fn set_backlog(&self, on: bool) {
        let on = on && self.backlog_configured;
        if self.keep_backlog.swap(on, Ordering::AcqRel) != on && !on {
            self.state.lock().backlog.clear();
        }
    }

    fn keeps_backlog(&self) -> bool {
        self.keep_backlog.load(Ordering::Relaxed)
    }

    /// This node's stream in this run.
    pub fn local_stream(&self) -> &StreamId {
        &self.local
    }

    pub fn lock(&self) -> MutexGuard<'_, JournalState> {
        self.state.lock()
    }

    /// Woken whenever records are added to the backlog.
    pub fn new_records(&self) -> &Notify {
        &self.new_records
    }

    /// A copy of the positions reached.
    pub fn positions(&self) -> Positions {
        self.state.lock().positions.clone()
    }

    /// Numbers and records a local write (called under the key's shard lock).
    pub fn append_local(&self, record: RecordRef<'_>, now_ms: u64) -> Appended {
        let mut st = self.state.lock();
        st.local_seq += 1;
        let seq = st.local_seq;
        st.positions.set(self.local.clone(), seq);
        if !self.keeps_backlog() {
            let lsn = self.persist.as_ref().map(|p| p.append(Some((&self.local, seq)), record));
            return Appended { seq, lsn };
        }
        let need = 64 + record.key.len() + record.value.map_or(0, |v| v.bytes.len());
        if st.arena.capacity() < need {
            st.arena.reserve(need.max(256 << 10));
        }
        // Encode into the arena's spare room, then split that record off as `Bytes`.
        record::encode(&mut st.arena, seq, self.local.epoch, &self.local_origin, record);
        let encoded = st.arena.split().freeze();
        let lsn = self.persist.as_ref().map(|p| p.append_encoded(&encoded));
        st.backlog.push(BacklogEntry { stream: self.local.clone(), seq, at_ms: now_ms, encoded });
        drop(st);
        self.new_records.notify_waiters();
        Appended { seq, lsn }
    }

    /// Gate for a peer's record (called under the key's shard lock): returns the
    /// locked state when `seq` is the next record of `stream`.
    pub fn gate(&self, stream: &StreamId, seq: u64) -> Result<MutexGuard<'_, JournalState>, Offered> {
        let st = self.state.lock();
        let have = st.positions.get(stream);
        if seq == have + 1 {
            Ok(st)
        } else if seq <= have {
            Err(Offered::Duplicate)
        } else {
            Err(Offered::Gap { have })
        }
    }

    /// Records a peer's record that passed [`Journal::gate`].
    pub fn commit_remote(
        &self,
        mut st: MutexGuard<'_, JournalState>,
        stream: &StreamId,
        seq: u64,
        encoded: &Bytes,
        now_ms: u64,
    ) -> Option<Lsn> {
        st.positions.set(stream.clone(), seq);
        let lsn = self.persist.as_ref().map(|p| p.append_encoded(encoded));
        if self.keeps_backlog() {
            st.backlog.push(BacklogEntry { stream: stream.clone(), seq, at_ms: now_ms, encoded: encoded.clone() });
            drop(st);
            self.new_records.notify_waiters();
        }
        lsn
    }

    /// Records an entry received in a full snapshot (no stream: it is not relayed
    /// from the backlog; peers lacking it get a snapshot from us in turn).
    pub fn append_snapshot_record(&self, record: RecordRef<'_>) -> Option<Lsn> {
        let _order = self.state.lock();
        self.persist.as_ref().map(|p| p.append(None, record))
    }

    /// Raises positions after a full snapshot was applied, and logs them.
    pub fn finish_snapshot(&self, reached: &Positions) -> Option<Lsn> {
        let mut st = self.state.lock();
        st.positions.merge_max(reached);
        st.snapshots_applied += 1;
        let lsn = self.persist.as_ref().map(|p| p.append_marker(reached));
        drop(st);
        self.new_records.notify_waiters();
        lsn
    }
}
