//! The RESP request parser (`api::resp::codec::Parser`) on arbitrary bytes, as a
//! hostile client would send them, fed whole and in two pieces split where the input
//! says: it must never panic, never loop, stay within its limits, and give the same
//! commands however the bytes arrive.
#![no_main]

use geocache_node::api::resp::codec::{Parser, ParserLimits};
use libfuzzer_sys::fuzz_target;

/// Parses `chunks` as one connection would receive them; returns the commands and
/// whether the stream ended in a protocol error.
fn run(limits: ParserLimits, chunks: &[&[u8]]) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut parser = Parser::new(limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut commands = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&buf) {
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= buf.len(), "frame of {n} bytes in a buffer of {}", buf.len());
                    let args: Vec<Vec<u8>> = parser.args(&buf).iter().map(<[u8]>::to_vec).collect();
                    // `max_args` bounds multibulk frames; inline ones are bounded by
                    // `max_inline` bytes.
                    if buf.first() == Some(&b'*') {
                        assert!(args.len() <= limits.max_args);
                    }
                    assert!(args.iter().all(|a| a.len() <= limits.max_bulk.max(limits.max_inline)));
                    if !args.is_empty() {
                        commands.push(args);
                    }
                    parser.consume();
                    buf.drain(..n);
                }
                Ok(None) => {
                    let _ = parser.needed(buf.len());
                    break;
                }
                Err(_) => return (commands, true),
            }
        }
    }
    (commands, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    // Small limits, so that the fuzzer reaches them.
    let limits = ParserLimits { max_bulk: 512, max_args: 16, max_inline: 256, max_frame: 4096 };
    let whole = run(limits, &[rest]);
    let at = (split as usize).min(rest.len());
    let (a, b) = rest.split_at(at);
    let pieces = run(limits, &[a, b]);
    assert_eq!(whole, pieces, "the commands depend on how the bytes arrived");
    let _ = run(ParserLimits::UNAUTHENTICATED, &[rest]);
});
