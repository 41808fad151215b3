//! The backlog: the most recent records this node applied (its own writes and the ones
//! it received), in the order it applied them, bounded in bytes. A peer that comes
//! back after a short break resumes from here; when the backlog no longer reaches back
//! far enough it gets a full snapshot instead.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::stream::{Positions, StreamId};

/// One record in the backlog, already encoded for the wire and the log.
#[derive(Debug, Clone)]
pub struct BacklogEntry {
    pub stream: StreamId,
    pub seq: u64,
    /// Wall-clock ms when this node applied it (for lag in ms).
    pub at_ms: u64,
    pub encoded: Bytes,
}

/// A bounded ring of records; positions in it are absolute indexes that keep counting
/// as old records fall off the front.
#[derive(Debug)]
pub struct Backlog {
    entries: VecDeque<BacklogEntry>,
    /// Absolute index of `entries[0]`.
    base: u64,
    bytes: usize,
    max_bytes: usize,
    /// Per stream, the lowest sequence number the ring still holds (or would hold:
    /// after an eviction it is the evicted seq + 1).
    first_seq: HashMap<StreamId, u64>,
}

/// What a read from the backlog gives.
#[derive(Debug)]
pub enum Read {
    /// Records from the requested index on (possibly none), and the next index.
    Entries(Vec<BacklogEntry>, u64),
    /// The requested index fell off the front: the reader must resync.
    Evicted,
}

impl Backlog {
    pub fn new(max_bytes: usize) -> Self {
        Backlog { entries: VecDeque::new(), base: 0, bytes: 0, max_bytes, first_seq: HashMap::new() }
    }

    /// Appends a record; drops the oldest ones beyond the size bound.
    pub fn push(&mut self, entry: BacklogEntry) {
        self.first_seq.entry(entry.stream.clone()).or_insert(entry.seq);
        self.bytes += entry.encoded.len();
        self.entries.push_back(entry);
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.encoded.len();
                self.base += 1;
                self.first_seq.insert(old.stream, old.seq + 1);
            }
        }
    }

    /// Drops every record (indexes keep counting: readers behind must resync).
    pub fn clear(&mut self) {
        self.base += self.entries.len() as u64;
        self.entries.clear();
        self.bytes = 0;
        self.first_seq.clear();
    }

    /// Index just past the newest record.
    pub fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Index of the oldest record held.
    pub fn start(&self) -> u64 {
        self.base
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when every record of `have` that `peer` lacks is still in the backlog.
    pub fn reaches_back(&self, have: &Positions, peer: &Positions) -> bool {
        have.iter().all(|(stream, seq)| {
            let theirs = peer.get(stream);
            theirs >= seq || self.first_seq.get(stream).is_some_and(|&first| first <= theirs + 1)
        })
    }

    /// Up to `max_bytes` of records from index `from` on (at least one when any).
    pub fn read(&self, from: u64, max_bytes: usize) -> Read {
        if from < self.base {
            return Read::Evicted;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        let skip = (from - self.base) as usize;
        for e in self.entries.iter().skip(skip) {
            if !out.is_empty() && bytes + e.encoded.len() > max_bytes {
                break;
            }
            bytes += e.encoded.len();
            out.push(e.clone());
            next += 1;
        }
        Read::Entries(out, next)
    }

    /// Applied time of the oldest record that `peer` lacks, if any (for lag in ms).
    pub fn oldest_missing_at(&self, peer: &Positions) -> Option<u64> {
        self.entries.iter().find(|e| peer.get(&e.stream) < e.seq).map(|e| e.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, seq: u64, size: usize) -> BacklogEntry {
        BacklogEntry { stream: StreamId::new(node, 1), seq, at_ms: seq * 10, encoded: Bytes::from(vec![0u8; size]) }
    }

    fn positions(list: &[(&str, u64)]) -> Positions {
        let mut p = Positions::new();
        for &(n, q) in list {
            p.set(StreamId::new(n, 1), q);
        }
        p
    }

    #[test]
    fn reads_resume_from_an_index_and_respect_the_byte_budget() {
        let mut b = Backlog::new(1 << 20);
        for i in 1..=10 {
            b.push(entry("a", i, 100));
        }
        let Read::Entries(first, next) = b.read(0, 350) else { panic!("evicted") };
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let Read::Entries(rest, end) = b.read(next, 1 << 20) else { panic!("evicted") };
        assert_eq!(rest.len(), 7);
        assert_eq!(end, b.end());
        let Read::Entries(none, same) = b.read(end, 100) else { panic!("evicted") };
        assert!(none.is_empty());
        assert_eq!(same, end);
    }

    #[test]
    fn old_records_fall_off_and_a_reader_behind_them_must_resync() {
        let mut b = Backlog::new(500);
        for i in 1..=10 {
            b.push(entry("a", i, 100));
        }
        assert_eq!(b.len(), 5);
        assert_eq!(b.start(), 5);
        assert!(matches!(b.read(2, 1000), Read::Evicted));
        // A peer at seq 5 needs 6.. which are held; a peer at seq 3 needs 4, gone.
        let have = positions(&[("a", 10)]);
        assert!(b.reaches_back(&have, &positions(&[("a", 5)])));
        assert!(!b.reaches_back(&have, &positions(&[("a", 3)])));
        assert!(b.reaches_back(&have, &positions(&[("a", 10)])));
    }

    #[test]
    fn a_stream_the_backlog_never_held_needs_a_resync_when_the_peer_lacks_it() {
        let b = Backlog::new(500);
        // Recovered from disk or received by snapshot: never in the backlog.
        let have = positions(&[("old", 40)]);
        assert!(!b.reaches_back(&have, &positions(&[])));
        assert!(b.reaches_back(&have, &positions(&[("old", 40)])));
    }

    #[test]
    fn a_cleared_backlog_sends_readers_to_a_resync() {
        let mut b = Backlog::new(1 << 20);
        for i in 1..=3 {
            b.push(entry("a", i, 10));
        }
        b.clear();
        assert!(matches!(b.read(1, 100), Read::Evicted));
        assert!(!b.reaches_back(&positions(&[("a", 3)]), &positions(&[("a", 1)])));
        assert_eq!(b.end(), 3);
    }

    #[test]
    fn lag_in_ms_comes_from_the_oldest_record_the_peer_lacks() {
        let mut b = Backlog::new(1 << 20);
        for i in 1..=5 {
            b.push(entry("a", i, 10));
        }
        assert_eq!(b.oldest_missing_at(&positions(&[("a", 2)])), Some(30));
        assert_eq!(b.oldest_missing_at(&positions(&[("a", 5)])), None);
    }
}
