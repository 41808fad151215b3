//! What a run did: every client operation with what it answered, every fault with
//! when it was injected, and the node clocks' offsets — the input of the checker.
//!
//! Times are milliseconds since the run started (the harness's monotonic clock), plus
//! the real Unix time at the start and end of each operation, from which the checker
//! derives what each node's (possibly offset) clock read.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// A version as the node renders it (`ETag`, write bodies): `<hlc, 16 hex digits>-<node id>`.
/// Ordered as the node orders versions: by HLC timestamp, then by node id (bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub hlc: u64,
    pub node: String,
}

impl Version {
    /// Parses `0000018f2a3b4c5d-eu-0` (quotes of an `ETag` allowed).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_matches('"');
        let (hex, node) = s.split_once('-')?;
        if hex.len() != 16 || node.is_empty() {
            return None;
        }
        Some(Version { hlc: u64::from_str_radix(hex, 16).ok()?, node: node.to_string() })
    }

    /// The wall-clock milliseconds of the HLC timestamp.
    pub fn ms(&self) -> u64 {
        self.hlc >> 16
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hlc.cmp(&other.hlc).then_with(|| self.node.as_bytes().cmp(other.node.as_bytes()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.hlc, self.node)
    }
}

/// The first HLC timestamp of millisecond `ms`.
pub fn hlc_floor(ms: u64) -> u64 {
    ms << 16
}

/// The last HLC timestamp of millisecond `ms`.
pub fn hlc_ceil(ms: u64) -> u64 {
    (ms << 16) | 0xffff
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Put,
    Patch,
    Delete,
    Expire,
    /// A plain read.
    Get,
    /// A read with `X-Geocache-After: <token of an earlier write>` (read-your-writes).
    GetAfter,
    /// A read right after an `ack=region|global` write, on a node that must have it.
    Probe,
}

impl Kind {
    pub fn is_write(self) -> bool {
        matches!(self, Kind::Put | Kind::Patch | Kind::Delete | Kind::Expire)
    }
    pub fn is_read(self) -> bool {
        !self.is_write()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ack {
    Local,
    Region,
    Global,
}

impl Ack {
    pub fn as_str(self) -> &'static str {
        match self {
            Ack::Local => "local",
            Ack::Region => "region",
            Ack::Global => "global",
        }
    }
}

/// The TTL a write asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No TTL (PUT: none; PATCH: keep the current expiry).
    Unset,
    /// `ttl=<ms>ms`.
    Ms(u64),
    /// EXPIRE `ttl=0`: expire now.
    Now,
    /// EXPIRE `ttl=none`: clear the expiry.
    Clear,
}

/// What an operation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer other than 504. For writes: 200/201/204 acknowledged, 404
    /// nothing to delete or expire (nothing written). For reads: 200 or 404.
    Done {
        status: u16,
        /// Of a 200/201 write (body) or a 200 read (`ETag`).
        version: Option<Version>,
        /// Unix ms; of a write (body) or a read (`X-Geocache-Expires-At`).
        expires_at: Option<u64>,
        /// Read-your-writes token of a write.
        token: Option<String>,
        /// The document of a 200 read; the error body of an unexpected status.
        body: Option<String>,
    },
    /// 504: a write applied on the node but not confirmed at its ack level
    /// (`ack_timeout`), or a read that did not catch up (`not_caught_up`).
    Timeout { code: String },
    /// The connection was refused: the request never reached a node process.
    Refused { error: String },
    /// Sent, then no complete answer (timeout, reset): the write may be applied,
    /// even later (a paused node reads its socket when it resumes).
    Unknown { error: String },
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Done { status, .. } => Some(*status),
            Outcome::Timeout { .. } => Some(504),
            _ => None,
        }
    }
}

/// One client operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub id: usize,
    pub client: usize,
    pub node: String,
    pub region: String,
    pub kind: Kind,
    pub key: String,
    pub ack: Ack,
    pub ttl: Ttl,
    /// The request body (PUT, PATCH).
    pub body: Option<String>,
    /// GetAfter: the write whose token was passed; Probe: the write probed for.
    pub after: Option<usize>,
    /// Milliseconds since the run started.
    pub start: u64,
    pub end: u64,
    /// Real Unix ms (this machine's clock) at start and end.
    pub start_unix: u64,
    pub end_unix: u64,
    pub outcome: Outcome,
}

impl Op {
    /// A write the node acknowledged (2xx at its ack level).
    pub fn acknowledged(&self) -> bool {
        self.kind.is_write() && matches!(self.outcome, Outcome::Done { status: 200 | 201 | 204, .. })
    }

    /// A write that may have been applied on some node (acknowledged, 504, or no answer).
    pub fn maybe_applied(&self) -> bool {
        self.kind.is_write()
            && match &self.outcome {
                Outcome::Done { status, .. } => matches!(status, 200 | 201 | 204),
                Outcome::Timeout { .. } | Outcome::Unknown { .. } => true,
                Outcome::Refused { .. } => false,
            }
    }

    /// The version the write returned (PUT, PATCH, EXPIRE acknowledged).
    pub fn version(&self) -> Option<&Version> {
        match &self.outcome {
            Outcome::Done { version, .. } => version.as_ref(),
            _ => None,
        }
    }

    pub fn expires_at(&self) -> Option<u64> {
        match &self.outcome {
            Outcome::Done { expires_at, .. } => *expires_at,
            _ => None,
        }
    }

    pub fn token(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Done { token, .. } => token.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} +{}..{}ms c{} {} {:?} {}",
            self.id, self.start, self.end, self.client, self.node, self.kind, self.key
        )?;
        if self.kind.is_write() {
            write!(f, " ack={}", self.ack.as_str())?;
        }
        match self.ttl {
            Ttl::Unset => {}
            Ttl::Ms(ms) => write!(f, " ttl={ms}ms")?,
            Ttl::Now => write!(f, " ttl=0")?,
            Ttl::Clear => write!(f, " ttl=none")?,
        }
        if let Some(b) = &self.body {
            write!(f, " {b}")?;
        }
        if let Some(a) = self.after {
            write!(f, " after=#{a}")?;
        }
        match &self.outcome {
            Outcome::Done { status, version, expires_at, body, .. } => {
                write!(f, " -> {status}")?;
                if let Some(v) = version {
                    write!(f, " v={v}")?;
                }
                if let Some(e) = expires_at {
                    write!(f, " exp={e}")?;
                }
                if let Some(b) = body {
                    write!(f, " {b}")?;
                }
                Ok(())
            }
            Outcome::Timeout { code } => write!(f, " -> 504 {code}"),
            Outcome::Refused { error } => write!(f, " -> refused ({error})"),
            Outcome::Unknown { error } => write!(f, " -> no answer ({error})"),
        }
    }
}

/// A fault the nemesis injected (or undid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The link carrying connections dialled from `from` to `to` is cut.
    Cut {
        from: String,
        to: String,
    },
    Heal {
        from: String,
        to: String,
    },
    /// `kill -9`; `persistent`: the node has a data dir.
    Kill {
        node: String,
        persistent: bool,
    },
    /// Started again, its clock `offset_ms` off.
    Start {
        node: String,
        offset_ms: i64,
    },
    /// SIGSTOP.
    Pause {
        node: String,
    },
    /// SIGCONT.
    Resume {
        node: String,
    },
    /// One-way delay of every WAN link.
    Delay {
        ms: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Cut { from, to } => write!(f, "cut {from} -> {to}"),
            Fault::Heal { from, to } => write!(f, "heal {from} -> {to}"),
            Fault::Kill { node, persistent } => {
                write!(f, "kill -9 {node} ({})", if *persistent { "data dir" } else { "memory only" })
            }
            Fault::Start { node, offset_ms } => write!(f, "start {node} (clock {offset_ms:+} ms)"),
            Fault::Pause { node } => write!(f, "SIGSTOP {node}"),
            Fault::Resume { node } => write!(f, "SIGCONT {node}"),
            Fault::Delay { ms } => write!(f, "wan delay {ms} ms"),
        }
    }
}

/// A fault and when it was injected: `at` before the action, `end` once it returned
/// (a restart returns once the node is ready).
#[derive(Debug, Clone)]
pub struct FaultEvent {
    pub at: u64,
    pub end: u64,
    pub fault: Fault,
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Region of every node.
    pub nodes: BTreeMap<String, String>,
    /// Nodes with a data dir.
    pub persistent: Vec<String>,
    /// Clock offset of every node at the start (ms; later ones in `Start` events).
    pub initial_offsets: BTreeMap<String, i64>,
    /// Real Unix ms at the run's time 0.
    pub start_unix: u64,
    pub ops: Vec<Op>,
    pub faults: Vec<FaultEvent>,
    /// Run-time intervals (ms) during which a harness thread that should wake every
    /// 50 ms did not: the machine was starved, and node heartbeats may have been late.
    pub stalls: Vec<(u64, u64)>,
}

/// How much later than a cut (after the call returned) bytes may still pass, and
/// how much earlier than a heal (before the call) they may pass again.
pub const LINK_SLACK_MS: u64 = 250;

/// An interval during which something was possibly on, and the part of it when it
/// was certainly on (`None` when never certainly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    possibly: (u64, u64),
    certainly: Option<(u64, u64)>,
}

impl History {
    pub fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self.nodes.values().cloned().collect();
        r.sort();
        r.dedup();
        r
    }

    pub fn nodes_in(&self, region: &str) -> Vec<String> {
        self.nodes.iter().filter(|(_, r)| *r == region).map(|(n, _)| n.clone()).collect()
    }

    pub fn region_of(&self, node: &str) -> &str {
        self.nodes.get(node).map(String::as_str).unwrap_or("?")
    }

    pub fn op(&self, id: usize) -> Option<&Op> {
        self.ops.binary_search_by_key(&id, |o| o.id).ok().map(|i| &self.ops[i])
    }

    /// The clock offset of `node`'s process at run time `t` (ms).
    pub fn offset_at(&self, node: &str, t: u64) -> i64 {
        let mut offset = self.initial_offsets.get(node).copied().unwrap_or(0);
        for e in &self.faults {
            if e.at > t {
                break;
            }
            if let Fault::Start { node: n, offset_ms } = &e.fault
                && n == node
            {
                offset = *offset_ms;
            }
        }
        offset
    }

    /// What `node`'s clock read (Unix ms) when this machine's read `unix_ms`, at run time `t`.
    pub fn node_clock(&self, node: &str, t: u64, unix_ms: u64) -> u64 {
        unix_ms.saturating_add_signed(self.offset_at(node, t))
    }

    /// The largest clock offset any node had during the run.
    pub fn max_offset(&self) -> i64 {
        let starts = self.faults.iter().filter_map(|e| match e.fault {
            Fault::Start { offset_ms, .. } => Some(offset_ms),
            _ => None,
        });
        self.initial_offsets.values().copied().chain(starts).max().unwrap_or(0).max(0)
    }

    /// Spans of an entity that starts on at time 0 and is switched by `off`/`on` events.
    fn spans(&self, off: impl Fn(&Fault) -> bool, on: impl Fn(&Fault) -> bool, slack: u64) -> Vec<Span> {
        let mut out = Vec::new();
        // (possibly on since, certainly on since)
        let mut current: Option<(u64, Option<u64>)> = Some((0, Some(0)));
        for e in &self.faults {
            if off(&e.fault) {
                if let Some((p, c)) = current.take() {
                    let certainly = c.filter(|c| *c < e.at).map(|c| (c, e.at));
                    out.push(Span { possibly: (p, e.end + slack), certainly });
                }
            } else if on(&e.fault) && current.is_none() {
                current = Some((e.at.saturating_sub(slack), Some(e.end)));
            }
        }
        if let Some((p, c)) = current {
            out.push(Span { possibly: (p, u64::MAX), certainly: c.map(|c| (c, u64::MAX)) });
        }
        out
    }

    fn link_spans(&self, from: &str, to: &str) -> Vec<Span> {
        let is = |f: &Fault, cut: bool| match f {
            Fault::Cut { from: a, to: b } if cut => a == from && b == to,
            Fault::Heal { from: a, to: b } if !cut => a == from && b == to,
            _ => false,
        };
        self.spans(|f| is(f, true), |f| is(f, false), LINK_SLACK_MS)
    }

    /// Spans when `node`'s process ran (alive and not paused).
    fn node_spans(&self, node: &str) -> Vec<Span> {
        let off = |f: &Fault| matches!(f, Fault::Kill { node: n, .. } | Fault::Pause { node: n } if n == node);
        let on = |f: &Fault| matches!(f, Fault::Start { node: n, .. } | Fault::Resume { node: n } if n == node);
        self.spans(off, on, 0)
    }

    /// Whether link `from -> to` may have carried bytes at some moment of `[a, b]`.
    pub fn link_possibly_up(&self, from: &str, to: &str, a: u64, b: u64) -> bool {
        self.link_spans(from, to).iter().any(|s| s.possibly.0 <= b && a <= s.possibly.1)
    }

    /// Whether link `from -> to` was up during all of `[a, b]`.
    pub fn link_certainly_up(&self, from: &str, to: &str, a: u64, b: u64) -> bool {
        self.link_spans(from, to).iter().any(|s| s.certainly.is_some_and(|(x, y)| x <= a && b < y))
    }

    /// Whether `node` may have been running (alive, not paused) at some moment of `[a, b]`.
    pub fn node_possibly_running(&self, node: &str, a: u64, b: u64) -> bool {
        self.node_spans(node).iter().any(|s| s.possibly.0 <= b && a <= s.possibly.1)
    }

    /// Whether `node` ran, neither killed nor paused nor restarted, during all of `[a, b]`.
    pub fn node_certainly_running(&self, node: &str, a: u64, b: u64) -> bool {
        self.node_spans(node).iter().any(|s| s.certainly.is_some_and(|(x, y)| x <= a && b < y))
    }

    /// Whether `node` was killed while memory-only at or after run time `t`.
    pub fn lost_memory_after(&self, node: &str, t: u64) -> bool {
        self.faults
            .iter()
            .any(|e| matches!(&e.fault, Fault::Kill { node: n, persistent: false } if n == node) && e.end >= t)
    }

    /// Whether a stall of the machine overlaps `[a, b]`.
    pub fn stalled(&self, a: u64, b: u64) -> bool {
        self.stalls.iter().any(|(x, y)| *x <= b && a <= *y)
    }

    /// The faults as a timeline, one line each.
    pub fn fault_timeline(&self) -> String {
        let mut lines: Vec<(u64, String)> =
            self.faults.iter().map(|e| (e.at, format!("  +{}..{}ms {}\n", e.at, e.end, e.fault))).collect();
        lines.extend(
            self.stalls
                .iter()
                .map(|(a, b)| (*a, format!("  +{a}..{b}ms (machine stalled: a harness thread overslept)\n"))),
        );
        lines.sort_by_key(|(at, _)| *at);
        lines.into_iter().map(|(_, l)| l).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_like_the_node() {
        let a = Version::parse("\"0000018f00000001-eu-0\"").unwrap();
        assert_eq!((a.hlc, a.node.as_str()), (0x18f00000001, "eu-0"));
        assert_eq!(a.to_string(), "0000018f00000001-eu-0");
        let b = Version::parse("0000018f00000001-us-0").unwrap();
        let c = Version::parse("0000018f00000002-ap-1").unwrap();
        assert!(a < b && b < c);
        assert_eq!(Version::parse("18f-eu-0"), None);
        assert_eq!(Version::parse("0000018f00000001"), None);
        assert_eq!(a.ms(), 0x18f00000001 >> 16);
    }

    fn ev(at: u64, end: u64, fault: Fault) -> FaultEvent {
        FaultEvent { at, end, fault }
    }

    #[test]
    fn link_and_node_spans_follow_the_faults_with_slack() {
        let h = History {
            faults: vec![
                ev(1000, 1001, Fault::Cut { from: "eu".into(), to: "us".into() }),
                ev(5000, 5001, Fault::Heal { from: "eu".into(), to: "us".into() }),
                ev(2000, 2001, Fault::Pause { node: "us-0".into() }),
                ev(3000, 3001, Fault::Resume { node: "us-0".into() }),
                ev(6000, 6010, Fault::Kill { node: "us-0".into(), persistent: false }),
                ev(7000, 7500, Fault::Start { node: "us-0".into(), offset_ms: 300 }),
            ],
            ..History::default()
        };
        assert!(h.link_possibly_up("eu", "us", 1100, 1200), "within the slack after the cut");
        assert!(!h.link_possibly_up("eu", "us", 1300, 4700));
        assert!(h.link_possibly_up("eu", "us", 4800, 4900), "within the slack before the heal");
        assert!(h.link_certainly_up("eu", "us", 0, 999));
        assert!(!h.link_certainly_up("eu", "us", 900, 1000));
        assert!(h.link_certainly_up("eu", "us", 5001, 9000));
        assert!(h.link_certainly_up("us", "eu", 0, 9000), "the other direction was never cut");
        assert!(!h.node_possibly_running("us-0", 2002, 2999));
        assert!(h.node_possibly_running("us-0", 2500, 3000));
        assert!(!h.node_certainly_running("us-0", 1000, 3500));
        assert!(h.node_certainly_running("us-0", 3001, 5999));
        assert!(!h.node_possibly_running("us-0", 6011, 6999));
        assert!(h.node_certainly_running("us-0", 7500, 8000));
        assert!(h.lost_memory_after("us-0", 6000) && !h.lost_memory_after("us-0", 6011));
        assert_eq!((h.offset_at("us-0", 6500), h.offset_at("us-0", 7000)), (0, 300));
        assert_eq!(h.max_offset(), 300);
    }
}
