//! The peer-frame decoder (`replication::Frame::decode`) on arbitrary bytes, as a
//! hostile peer would send them: it must never panic, never loop, and whatever it
//! accepts must encode back to a frame that decodes to the same value. The records
//! inside batches and snapshot chunks go through the record decoder too, as the
//! receiver does.
#![no_main]

use bytes::BytesMut;
use geocache_node::persist::record;
use geocache_node::replication::Frame;
use libfuzzer_sys::fuzz_target;

fn records(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match record::decode(bytes) {
            Ok((_, used)) if used > 0 && used <= bytes.len() => bytes = &bytes[used..],
            Ok((_, used)) => panic!("record decoder consumed {used} of {} bytes", bytes.len()),
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // At most one frame per input byte: a decoder that accepts without consuming
    // would loop here.
    for _ in 0..=data.len() {
        let before = buf.len();
        match Frame::decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a frame was decoded from no bytes");
                if let Frame::Batch(b) | Frame::SnapshotChunk(b) = &frame {
                    records(b);
                }
                let mut again = BytesMut::new();
                frame.encode(&mut again);
                let back = Frame::decode(&mut again).expect("an encoded frame decodes").expect("and is complete");
                assert_eq!(back, frame, "decode(encode(frame)) differs");
                assert!(again.is_empty(), "encode wrote more than one frame");
            }
            Ok(None) | Err(_) => break,
        }
    }
});
