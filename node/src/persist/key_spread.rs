//! Log replay on several cores. The log is read in order by one thread, which hands each
//! record to the worker that owns its key (by a hash of the key), so that every key's
//! records are still applied in log order while different keys are applied in parallel.
//! Order per key matters: a delete older than the tombstone retention removes the entry
//! it finds, so applied before the older write it hides, it would let that write come back.
//!
//! Records travel in batches of their on-disk encoding (already checked by the reader),
//! each preceded by its origin id; the queues are bounded, so memory stays small whatever
//! the size of the log.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use super::record;
use crate::store::{OriginId, RecordRef};

/// Bytes of records per batch handed to a worker.
const BATCH_BYTES: usize = 256 << 10;
/// Batches waiting per worker before the reader waits for it.
const QUEUED_BATCHES: usize = 4;

/// The reader's side: one queue per worker, and the batch being filled for each.
pub(super) struct KeySpread<'scope> {
    senders: Vec<SyncSender<Vec<u8>>>,
    batches: Vec<Vec<u8>>,
    workers: Vec<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> KeySpread<'scope> {
    /// Starts `workers` threads in `scope`, each applying the records of its keys with `apply`.
    pub fn spawn<'env, F>(scope: &'scope Scope<'scope, 'env>, workers: usize, apply: &'env F) -> KeySpread<'scope>
    where
        F: Fn(RecordRef<'_>) + Sync,
    {
        let workers = workers.max(1);
        let mut spread = KeySpread {
            senders: Vec::with_capacity(workers),
            batches: (0..workers).map(|_| Vec::with_capacity(BATCH_BYTES + 4096)).collect(),
            workers: Vec::with_capacity(workers),
        };
        for _ in 0..workers {
            let (sender, receiver) = mpsc::sync_channel(QUEUED_BATCHES);
            spread.senders.push(sender);
            spread.workers.push(scope.spawn(move || apply_batches(receiver, apply)));
        }
        spread
    }

    /// Queues `record`, whose encoding is `frame`, for the worker that owns its key.
    pub fn push(&mut self, record: &RecordRef<'_>, frame: &[u8]) {
        let worker = owner(record.key.as_bytes(), self.senders.len());
        let batch = &mut self.batches[worker];
        batch.extend_from_slice(&record.version.origin.0.to_le_bytes());
        batch.extend_from_slice(frame);
        if batch.len() >= BATCH_BYTES {
            let full = std::mem::replace(batch, Vec::with_capacity(BATCH_BYTES + 4096));
            // A worker that is gone has panicked: `finish` reports it.
            let _ = self.senders[worker].send(full);
        }
    }

    /// Hands over the last batches and waits until every record is applied; an error when
    /// a worker panicked.
    pub fn finish(self) -> Result<(), &'static str> {
        let KeySpread { senders, batches, workers } = self;
        for (sender, batch) in senders.into_iter().zip(batches) {
            if !batch.is_empty() {
                let _ = sender.send(batch);
            }
        }
        for worker in workers {
            worker.join().map_err(|_| "a log replay worker panicked")?;
        }
        Ok(())
    }
}

fn apply_batches(batches: Receiver<Vec<u8>>, apply: &(impl Fn(RecordRef<'_>) + Sync)) {
    for batch in batches {
        let mut at = 0;
        while let Some(origin) = batch.get(at..at + 4) {
            let origin = OriginId(u32::from_le_bytes([origin[0], origin[1], origin[2], origin[3]]));
            match record::decode(&batch[at + 4..]) {
                Ok((decoded, used)) => {
                    apply(decoded.record(origin));
                    at += 4 + used;
                }
                Err(error) => {
                    // The reader decoded this very record before queueing it.
                    tracing::error!(%error, "log replay: a queued record does not decode; dropping its batch");
                    break;
                }
            }
        }
    }
}

/// The worker that owns `key` (FNV-1a: the same key always goes to the same worker).
fn owner(key: &[u8], workers: usize) -> usize {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % workers as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::{Encoding, Origin, ValueRef, Version};

    fn encoded(key: &str, hlc: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let value = Some(ValueRef { encoding: Encoding::Json, bytes: b"{}" });
        let record = RecordRef { key, version: Version { hlc, origin: OriginId(7) }, expires_at: None, value };
        let origin = Origin { node_id: "node-a".into(), region: "eu".into() };
        record::encode(&mut out, hlc, 1, &origin, record);
        out
    }

    #[test]
    fn every_key_s_records_are_applied_in_log_order_by_one_worker() {
        let applied: Mutex<Vec<(String, u64, std::thread::ThreadId)>> = Mutex::new(Vec::new());
        let apply = |r: RecordRef<'_>| {
            applied.lock().unwrap().push((r.key.to_string(), r.version.hlc, std::thread::current().id()));
            assert_eq!(r.version.origin, OriginId(7), "the origin travels with the record");
        };
        std::thread::scope(|scope| {
            let mut spread = KeySpread::spawn(scope, 3, &apply);
            for hlc in 1..=2000u64 {
                let key = format!("key-{}", hlc % 50);
                let frame = encoded(&key, hlc);
                let (decoded, _) = record::decode(&frame).unwrap();
                spread.push(&decoded.record(OriginId(7)), &frame);
            }
            spread.finish().unwrap();
        });
        let applied = applied.into_inner().unwrap();
        assert_eq!(applied.len(), 2000);
        for k in 0..50 {
            let key = format!("key-{k}");
            let of_key: Vec<_> = applied.iter().filter(|(kk, _, _)| *kk == key).collect();
            assert!(of_key.windows(2).all(|w| w[0].1 < w[1].1), "{key} applied out of log order");
            assert!(of_key.iter().all(|r| r.2 == of_key[0].2), "{key} applied by more than one worker");
        }
        let threads: std::collections::HashSet<_> = applied.iter().map(|r| r.2).collect();
        assert!(threads.len() > 1, "the keys were spread over the workers");
    }
}
