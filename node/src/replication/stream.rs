//! Streams and positions.
//!
//! Every node numbers the writes it coordinates: a **stream** is one run of a node
//! (its id and an epoch chosen at start), and its writes get sequence numbers 1, 2, 3…
//! A node starts a new stream at every start, so a node that lost its state can never
//! reuse a sequence number that peers already hold.
//!
//! **Positions** say, per stream, up to which sequence number a node has applied every
//! write (a contiguous prefix). Peers exchange positions to resume after a break, to
//! measure lag, and to confirm `ack=region|global` writes.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One run of a node: its writes are numbered 1, 2, 3… within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub node: Arc<str>,
    pub epoch: u64,
}

impl StreamId {
    pub fn new(node: impl Into<Arc<str>>, epoch: u64) -> Self {
        StreamId { node: node.into(), epoch }
    }
}

/// Highest contiguous sequence number applied, per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<StreamId, u64>);

/// Bytes that do not decode as positions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed positions: {0}")]
pub struct PositionsError(pub &'static str);

impl Positions {
    pub fn new() -> Self {
        Positions::default()
    }

    pub fn get(&self, stream: &StreamId) -> u64 {
        self.0.get(stream).copied().unwrap_or(0)
    }

    pub fn set(&mut self, stream: StreamId, seq: u64) {
        self.0.insert(stream, seq);
    }

    /// Raises every position to at least the one in `other`.
    pub fn merge_max(&mut self, other: &Positions) {
        for (s, &seq) in &other.0 {
            let e = self.0.entry(s.clone()).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&StreamId, u64)> {
        self.0.iter().map(|(s, &q)| (s, q))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes we have that `other` lacks, summed over streams.
    pub fn ahead_of(&self, other: &Positions) -> u64 {
        self.0.iter().map(|(s, &q)| q.saturating_sub(other.get(s))).sum()
    }

    /// True when `other` has everything we have.
    pub fn covered_by(&self, other: &Positions) -> bool {
        self.0.iter().all(|(s, &q)| other.get(s) >= q)
    }

    /// `u32 count`, then per stream `u8 node length, node, u64 epoch, u64 seq` (LE).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (s, &seq) in &self.0 {
            let node = &s.node.as_bytes()[..s.node.len().min(255)];
            out.push(node.len() as u8);
            out.extend_from_slice(node);
            out.extend_from_slice(&s.epoch.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
    }

    /// Decodes positions from the start of `buf`; returns them and the bytes used.
    pub fn decode(buf: &[u8]) -> Result<(Positions, usize), PositionsError> {
        let take = |at: usize, n: usize| buf.get(at..at + n).ok_or(PositionsError("truncated"));
        let count = u32::from_le_bytes(take(0, 4)?.try_into().map_err(|_| PositionsError("truncated"))?) as usize;
        // Each entry takes at least 17 bytes: refuse counts the buffer cannot hold.
        if count > buf.len() / 17 + 1 {
            return Err(PositionsError("count larger than the data"));
        }
        let mut at = 4;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let len = take(at, 1)?[0] as usize;
            at += 1;
            let node = std::str::from_utf8(take(at, len)?).map_err(|_| PositionsError("node id is not utf-8"))?;
            at += len;
            let epoch = u64::from_le_bytes(take(at, 8)?.try_into().map_err(|_| PositionsError("truncated"))?);
            at += 8;
            let seq = u64::from_le_bytes(take(at, 8)?.try_into().map_err(|_| PositionsError("truncated"))?);
            at += 8;
            map.insert(StreamId::new(node, epoch), seq);
        }
        Ok((Positions(map), at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(node: &str, epoch: u64) -> StreamId {
        StreamId::new(node, epoch)
    }

    #[test]
    fn merging_keeps_the_highest_position_per_stream() {
        let mut a = Positions::new();
        a.set(s("eu-0", 1), 5);
        a.set(s("us-0", 1), 2);
        let mut b = Positions::new();
        b.set(s("eu-0", 1), 3);
        b.set(s("us-0", 1), 9);
        b.set(s("ap-0", 7), 1);
        a.merge_max(&b);
        assert_eq!((a.get(&s("eu-0", 1)), a.get(&s("us-0", 1)), a.get(&s("ap-0", 7))), (5, 9, 1));
    }

    #[test]
    fn lag_counts_what_the_other_side_lacks() {
        let mut mine = Positions::new();
        mine.set(s("eu-0", 1), 10);
        mine.set(s("us-0", 1), 4);
        let mut theirs = Positions::new();
        theirs.set(s("eu-0", 1), 7);
        theirs.set(s("us-0", 1), 6);
        assert_eq!(mine.ahead_of(&theirs), 3);
        assert!(!mine.covered_by(&theirs));
        theirs.set(s("eu-0", 1), 10);
        assert!(mine.covered_by(&theirs));
    }

    proptest! {
        #[test]
        fn positions_round_trip(entries in proptest::collection::vec(("[a-z0-9-]{1,12}", any::<u64>(), any::<u64>()), 0..10)) {
            let mut p = Positions::new();
            for (n, e, q) in entries { p.set(s(&n, e), q); }
            let mut buf = Vec::new();
            p.encode(&mut buf);
            let (back, used) = Positions::decode(&buf).unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(back, p);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Positions::decode(&bytes);
        }
    }
}
