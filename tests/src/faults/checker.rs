//! The checks of a fault-injection run, as pure functions of the [`History`] and of
//! what every node answered at the end. Each check is sound: it reports only what no
//! correct execution could have produced, given what the harness knows (versions the
//! writes returned, when each request started and ended, which faults were in force,
//! every node's clock offset). Where the harness cannot know (a write that got no
//! answer may be applied with any version, even later), the check gives way.
//!
//! - **convergence**: after healing, every node answers the same for every key
//!   (presence, version, document, expiry), except that a node whose clock passed an
//!   entry's expiry does not serve it;
//! - **no acknowledged write lost**: a node's final version of a key is at least every
//!   acknowledged write's version; a key absent at the end is explained by a delete or
//!   an expiry that may order after every acknowledged write;
//! - **nothing deleted comes back**: a key present after an acknowledged DELETE has a
//!   version above the delete's (which is at least the deleting node's clock when the
//!   request was sent: DELETE returns no version);
//! - **nothing expired is served**, by any read, with the reading node's clock;
//! - **honest ack levels**: an `ack=global` write is acknowledged only while a majority
//!   of regions could have confirmed it; right after an `ack=region|global`
//!   acknowledgement, the nodes that must have confirmed it (region mates; nodes of
//!   other regions joined to the writer by links that were up) hold it;
//! - **read-your-writes**: a read passing a write's token reflects that write, or
//!   answers 504 — never a staler state;
//! - every document served was written by some request (no phantom value).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::history::{Ack, History, Kind, Op, Outcome, Ttl, Version, hlc_ceil, hlc_floor};

/// How long a link and the nodes at both ends must have been up before a write for
/// the writer to count that region as reachable (peer timeout, reconnect backoff).
#[derive(Debug, Clone, Copy)]
pub struct CheckSettings {
    pub settle_ms: u64,
    /// `--max-clock-skew` of the nodes.
    pub max_skew_ms: u64,
}

/// Slack on the lower bound of a delete's version (clock granularity).
const LOWER_SLACK_MS: u64 = 20;
/// Slack on the upper bound of a version (scheduling between the answer and the clock).
const UPPER_SLACK_MS: u64 = 250;

/// What one node answered for one key at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub node: String,
    pub key: String,
    /// Run time (ms) and real Unix ms when the read was sent.
    pub at: u64,
    pub at_unix: u64,
    /// Real Unix ms when the answer was in.
    pub end_unix: u64,
    pub state: State,
}

/// What a read answered for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Absent,
    Present {
        version: Version,
        body: String,
        expires_at: Option<u64>,
    },
    /// Anything else (an error status, no answer).
    Error(String),
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Absent => f.write_str("absent"),
            State::Present { version, body, expires_at } => {
                write!(f, "{body} v={version}")?;
                if let Some(e) = expires_at {
                    write!(f, " exp={e}")?;
                }
                Ok(())
            }
            State::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// One violated guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Short name of the check, e.g. `lost-write`.
    pub check: &'static str,
    pub key: Option<String>,
    /// Ops involved (shown with the violation).
    pub ops: Vec<usize>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.check)?;
        if let Some(k) = &self.key {
            write!(f, " key {k}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// The checker: the history indexed by key.
pub struct Checker<'a> {
    h: &'a History,
    settings: CheckSettings,
    by_key: BTreeMap<&'a str, Vec<&'a Op>>,
    /// Upper bound (ms) of any node's clock, relative to real time.
    max_ahead_ms: u64,
    /// How many times each check applied (a check that never applies proves nothing).
    counts: std::cell::RefCell<BTreeMap<&'static str, usize>>,
}

impl<'a> Checker<'a> {
    pub fn new(h: &'a History, settings: CheckSettings) -> Self {
        let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &h.ops {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
        let max_ahead_ms = h.max_offset() as u64 + settings.max_skew_ms + UPPER_SLACK_MS;
        Checker { h, settings, by_key, max_ahead_ms, counts: Default::default() }
    }

    fn count(&self, check: &'static str) {
        *self.counts.borrow_mut().entry(check).or_default() += 1;
    }

    /// How many times each check applied so far, e.g. `ack-global-probed-regions: 812`.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.counts.borrow().clone()
    }

    fn ops_on(&self, key: &str) -> &[&'a Op] {
        self.by_key.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The lowest HLC timestamp the version of write `op` can have: the writing
    /// node's clock when the request was sent.
    fn lower_hlc(&self, op: &Op) -> u64 {
        if let Some(v) = op.version() {
            return v.hlc;
        }
        let clock = self.h.node_clock(&op.node, op.start, op.start_unix);
        hlc_floor(clock.saturating_sub(LOWER_SLACK_MS))
    }

    /// The highest HLC timestamp the version of write `op` can have (`u64::MAX` when
    /// it got no answer: it may be applied later). A node's clock takes remote
    /// timestamps at most `--max-clock-skew` ahead of its own, and a local write is
    /// at most one tick above the key's current version, itself made by some clock.
    fn upper_hlc(&self, op: &Op) -> u64 {
        if let Some(v) = op.version() {
            return v.hlc;
        }
        match op.outcome {
            Outcome::Unknown { .. } => u64::MAX,
            _ => hlc_ceil(op.end_unix + self.max_ahead_ms),
        }
    }

    /// The fastest node clock (Unix ms) when this machine's read `unix_ms`, at run time
    /// `t`. An entry with an expiry may be absent on every node once *any* node's clock
    /// passed it: that node's sweeper frees the value, and a full resync from it carries
    /// only a tombstone of the same version, which a node whose clock is behind cannot
    /// turn back into the value. With clocks within `--max-clock-skew` that is the same
    /// instant everywhere; with one clock far ahead, entries leave early by its lead.
    fn expiry_clock(&self, t: u64, unix_ms: u64) -> u64 {
        self.h.nodes.keys().map(|n| self.h.node_clock(n, t, unix_ms)).max().unwrap_or(unix_ms)
    }

    /// Whether write `o` may have left the key absent (a tombstone, or an entry
    /// expired by `clock_ms`) with a version at least `than`.
    fn may_remove_at_or_above(&self, o: &Op, than: u64, clock_ms: u64) -> bool {
        if !o.maybe_applied() {
            return false;
        }
        if let Some(v) = o.version() {
            // Known version and expiry: it removes the key only once expired.
            return v.hlc >= than && o.expires_at().is_some_and(|e| e <= clock_ms);
        }
        if self.upper_hlc(o) < than {
            return false;
        }
        match o.kind {
            Kind::Delete | Kind::Expire | Kind::Patch => true,
            Kind::Put => matches!(o.ttl, Ttl::Ms(_)),
            _ => false,
        }
    }

    /// Whether `state`, read when the fastest node clock read `clock_ms` (see
    /// [`Checker::expiry_clock`]), is consistent with the reading node having applied write `w`, given the other writes on the key that
    /// started before `before` (run ms). `Err` says why not.
    fn reflects(&self, w: &Op, state: &State, clock_ms: u64, before: u64) -> Result<(), String> {
        let others = || self.ops_on(&w.key).iter().filter(|o| o.start <= before);
        match (w.kind, state) {
            (_, State::Error(_)) => Ok(()),
            (Kind::Delete, State::Absent) => Ok(()),
            (Kind::Delete, State::Present { version, .. }) => {
                let lower = self.lower_hlc(w);
                if version.hlc >= lower {
                    Ok(())
                } else {
                    Err(format!(
                        "present with version {version}, below the delete's (at least {:016x}: the deleting node's clock when it was sent)",
                        lower
                    ))
                }
            }
            (_, State::Present { version, .. }) => {
                let v = w.version().ok_or("the write returned no version")?;
                if version >= v {
                    Ok(())
                } else {
                    Err(format!("present with version {version}, below the write's {v}"))
                }
            }
            (_, State::Absent) => {
                let v = w.version().ok_or("the write returned no version")?;
                if others().any(|o| self.may_remove_at_or_above(o, v.hlc, clock_ms)) {
                    Ok(())
                } else {
                    Err(format!(
                        "absent, and no delete or expiry of this key can order after the write's version {v} (node clock {clock_ms})"
                    ))
                }
            }
        }
    }

    /// Whether node `node`'s memory loss can excuse losing write `w` (a memory-only
    /// node killed after the write started, that alone may have held it).
    fn may_be_lost(&self, w: &Op) -> bool {
        let lost = |n: &str| self.h.lost_memory_after(n, w.start);
        match w.ack {
            Ack::Local => lost(&w.node),
            Ack::Region => self.h.nodes_in(&w.region).iter().all(|n| lost(n)),
            Ack::Global => {
                self.h.nodes_in(&w.region).iter().all(|n| lost(n))
                    && self
                        .h
                        .regions()
                        .iter()
                        .filter(|r| **r != w.region)
                        .any(|r| self.h.nodes_in(r).iter().all(|n| lost(n)))
            }
        }
    }

    // ----- checks on the operations ------------------------------------------------

    /// Every check that needs only the history.
    pub fn check_ops(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        for op in &self.h.ops {
            self.check_status(op, &mut v);
            self.check_served(op, &mut v);
            match op.kind {
                Kind::GetAfter => self.check_read_your_writes(op, &mut v),
                Kind::Put | Kind::Patch | Kind::Delete | Kind::Expire if op.acknowledged() => {
                    match op.ack {
                        Ack::Global => self.check_global_majority(op, &mut v),
                        Ack::Region => self.check_region_majority(op, &mut v),
                        Ack::Local => {}
                    }
                    if op.ack != Ack::Local {
                        self.check_probes(op, &mut v);
                    }
                }
                _ => {}
            }
        }
        v
    }

    /// Answers outside the contract.
    fn check_status(&self, op: &Op, out: &mut Vec<Violation>) {
        let Outcome::Done { status, body, .. } = &op.outcome else { return };
        let ok = match op.kind {
            Kind::Put | Kind::Patch => matches!(status, 200 | 201),
            Kind::Delete => matches!(status, 204 | 404),
            Kind::Expire => matches!(status, 200 | 404),
            Kind::Get | Kind::GetAfter | Kind::Probe => matches!(status, 200 | 404),
        };
        let versioned = !matches!(op.kind, Kind::Put | Kind::Patch | Kind::Expire)
            || !matches!(status, 200 | 201)
            || op.version().is_some();
        if !ok || !versioned {
            out.push(Violation {
                check: "unexpected-answer",
                key: Some(op.key.clone()),
                ops: vec![op.id],
                message: format!("{op}: {status} {}", body.as_deref().unwrap_or("(no version)")),
            });
        }
    }

    /// A read served an entry whose expiry the reading node's clock had passed, or a
    /// document no request wrote.
    fn check_served(&self, op: &Op, out: &mut Vec<Violation>) {
        if !op.kind.is_read() {
            return;
        }
        let Outcome::Done { status: 200, expires_at, body, .. } = &op.outcome else { return };
        let clock = self.h.node_clock(&op.node, op.start, op.start_unix);
        if let Some(e) = expires_at
            && e + 1 < clock
        {
            out.push(Violation {
                check: "expired-served",
                key: Some(op.key.clone()),
                ops: vec![op.id],
                message: format!(
                    "{op}: served an entry that expired at {e}, {} ms before the node's clock read",
                    clock - e
                ),
            });
        }
        if let Some(b) = body
            && let Err(e) = self.written_by_someone(&op.key, b)
        {
            out.push(Violation {
                check: "phantom-value",
                key: Some(op.key.clone()),
                ops: vec![op.id],
                message: format!("{op}: {e}"),
            });
        }
    }

    /// The document's `op` field names the last PUT or PATCH that wrote it.
    fn written_by_someone(&self, key: &str, body: &str) -> Result<(), String> {
        let doc: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("the document is not JSON ({e})"))?;
        let id = doc.get("op").and_then(|v| v.as_u64()).ok_or("the document has no op field")? as usize;
        match self.h.op(id) {
            Some(w) if w.key == key && matches!(w.kind, Kind::Put | Kind::Patch) && w.maybe_applied() => Ok(()),
            Some(w) => Err(format!("the document names op #{id}, which cannot have written it: {w}")),
            None => Err(format!("the document names op #{id}, which no client sent")),
        }
    }

    fn read_state(op: &Op) -> State {
        match &op.outcome {
            Outcome::Done { status: 200, version: Some(v), body, expires_at, .. } => {
                State::Present { version: v.clone(), body: body.clone().unwrap_or_default(), expires_at: *expires_at }
            }
            Outcome::Done { status: 404, .. } => State::Absent,
            other => State::Error(format!("{other:?}")),
        }
    }

    /// A read with a write's token reflects that write (or answers 504).
    fn check_read_your_writes(&self, op: &Op, out: &mut Vec<Violation>) {
        let Some(w) = op.after.and_then(|id| self.h.op(id)) else { return };
        let state = Self::read_state(op);
        // The node may have looked at the expiry as late as when it answered.
        let clock = self.expiry_clock(op.end, op.end_unix);
        if !matches!(state, State::Error(_)) {
            self.count("read-your-writes reads answered");
        }
        if let Err(why) = self.reflects(w, &state, clock, op.end) {
            out.push(Violation {
                check: "stale-read-your-writes",
                key: Some(op.key.clone()),
                ops: vec![w.id, op.id],
                message: format!(
                    "a read on {} with the token of #{} ({:?} on {}) is {why}",
                    op.node, w.id, w.kind, w.node
                ),
            });
        }
    }

    /// Regions that may have confirmed write `w`: its own, and every region with a
    /// node that may have run during the write and a path of links (either
    /// direction, through any region) that may have been up during it.
    fn possible_confirmers(&self, w: &Op) -> BTreeSet<String> {
        let (a, b) = (w.start, w.end);
        let regions = self.h.regions();
        let linked = |x: &str, y: &str| self.h.link_possibly_up(x, y, a, b) || self.h.link_possibly_up(y, x, a, b);
        let alive = |r: &str| self.h.nodes_in(r).iter().any(|n| self.h.node_possibly_running(n, a, b));
        let mut reached: BTreeSet<String> = BTreeSet::from([w.region.clone()]);
        loop {
            let next: Vec<String> = regions
                .iter()
                .filter(|r| !reached.contains(*r) && alive(r) && reached.iter().any(|x| linked(x, r)))
                .cloned()
                .collect();
            if next.is_empty() {
                return reached;
            }
            reached.extend(next);
        }
    }

    /// `ack=global` needs a majority of all regions: acknowledged while fewer could
    /// have confirmed is a lie.
    fn check_global_majority(&self, w: &Op, out: &mut Vec<Violation>) {
        let regions = self.h.regions();
        let majority = regions.len() / 2 + 1;
        let could = self.possible_confirmers(w);
        self.count("ack=global acknowledgements checked for a majority");
        if could.len() < majority {
            out.push(Violation {
                check: "ack-global-without-majority",
                key: Some(w.key.clone()),
                ops: vec![w.id],
                message: format!(
                    "{w}: acknowledged while only {could:?} could have confirmed it (no link to the other regions was up, or none of their nodes ran, during the request); a majority is {majority} of {}",
                    regions.len()
                ),
            });
        }
    }

    /// The voters of write `w`'s ack level other than the writer's own: for `global`
    /// the other regions (each a group of nodes), for `region` the mates (each alone).
    fn other_voters(&self, w: &Op) -> Vec<(String, Vec<String>)> {
        match w.ack {
            Ack::Local => Vec::new(),
            Ack::Region => {
                self.h.nodes_in(&w.region).into_iter().filter(|n| *n != w.node).map(|n| (n.clone(), vec![n])).collect()
            }
            Ack::Global => self
                .h
                .regions()
                .into_iter()
                .filter(|r| *r != w.region)
                .map(|r| (r.clone(), self.h.nodes_in(&r)))
                .collect(),
        }
    }

    /// How many voters, the writer's own included, make a majority.
    fn majority(&self, w: &Op) -> usize {
        let voters = self.other_voters(w).len() + 1;
        voters / 2 + 1
    }

    /// `ack=region` needs a majority of the region's nodes: acknowledged while fewer
    /// mates could have confirmed (none of them ran during the request) is a lie.
    fn check_region_majority(&self, w: &Op, out: &mut Vec<Violation>) {
        let majority = self.majority(w);
        let could: Vec<String> = self
            .other_voters(w)
            .into_iter()
            .filter(|(_, nodes)| nodes.iter().any(|n| self.h.node_possibly_running(n, w.start, w.end)))
            .map(|(name, _)| name)
            .collect();
        self.count("ack=region acknowledgements checked for a majority");
        if could.len() + 1 < majority {
            out.push(Violation {
                check: "ack-region-without-majority",
                key: Some(w.key.clone()),
                ops: vec![w.id],
                message: format!(
                    "{w}: acknowledged while only {could:?} of its mates could have confirmed it (the others were paused or down during the whole request); a majority of the region is {majority}"
                ),
            });
        }
    }

    /// Right after an `ack=region|global` acknowledgement, the voters that confirmed
    /// it hold it. Two rules, each checked only where the harness can tell:
    /// - *majority*: a majority of the voters, the writer's included, confirmed it; so
    ///   when every node of every other voter ran from the write until the probe and
    ///   answered it, at least `majority - 1` of them hold it;
    /// - *every reachable voter*: a voter that, with the links both ways, was up since
    ///   `settle_ms` before the write until the probe was reachable and confirmed it:
    ///   one of its nodes holds it (checked when all its nodes ran throughout).
    fn check_probes(&self, w: &Op, out: &mut Vec<Violation>) {
        let probes: Vec<&Op> =
            self.ops_on(&w.key).iter().filter(|o| o.kind == Kind::Probe && o.after == Some(w.id)).copied().collect();
        let Some(last) = probes.iter().map(|p| p.end).max() else { return };
        let level = if w.ack == Ack::Global { "global" } else { "region" };
        // Whether a probe of `node` shows the write; None: no usable answer.
        let mut why = Vec::new();
        let mut holds = |node: &str| -> Option<bool> {
            let p = probes.iter().find(|p| p.node == node)?;
            let state = Self::read_state(p);
            if matches!(state, State::Error(_)) {
                return None;
            }
            let clock = self.expiry_clock(p.end, p.end_unix);
            match self.reflects(w, &state, clock, p.end) {
                Ok(()) => Some(true),
                Err(e) => {
                    why.push(format!("{}: {e}", p.node));
                    Some(false)
                }
            }
        };
        let voters = self.other_voters(w);
        let mut held: BTreeMap<String, Option<bool>> = BTreeMap::new();
        for (name, nodes) in &voters {
            let answers: Vec<Option<bool>> = nodes.iter().map(|n| holds(n)).collect();
            let v = if answers.contains(&Some(true)) {
                Some(true)
            } else if answers.iter().all(|a| *a == Some(false)) {
                Some(false)
            } else {
                None
            };
            held.insert(name.clone(), v);
        }
        let running =
            |nodes: &[String], since: u64| nodes.iter().all(|n| self.h.node_certainly_running(n, since, last));

        // Majority.
        let majority = self.majority(w);
        let all_ran = voters.iter().all(|(_, nodes)| running(nodes, w.start));
        if all_ran && held.values().all(Option::is_some) {
            self.count(if w.ack == Ack::Global {
                "ack=global acknowledgements probed for a majority"
            } else {
                "ack=region acknowledgements probed for a majority"
            });
            let holding = held.values().filter(|v| **v == Some(true)).count();
            if holding + 1 < majority {
                out.push(Violation {
                    check: if w.ack == Ack::Global { "ack-global-majority-not-held" } else { "ack-region-majority-not-held" },
                    key: Some(w.key.clone()),
                    ops: std::iter::once(w.id).chain(probes.iter().map(|p| p.id)).collect(),
                    message: format!(
                        "{w}: acknowledged, but right after it only {holding} other {} held it, with every node running since the write; a majority is {majority} of {}: {}",
                        if w.ack == Ack::Global { "region(s)" } else { "node(s) of the region" },
                        voters.len() + 1,
                        why.join("; ")
                    ),
                });
                return;
            }
        }

        // Every reachable voter.
        let since = w.start.saturating_sub(self.settings.settle_ms);
        for (name, nodes) in &voters {
            let linked = w.ack == Ack::Region
                || (self.h.link_certainly_up(&w.region, name, since, last)
                    && self.h.link_certainly_up(name, &w.region, since, last));
            // Whether the writer saw the voter up depends on heartbeats arriving within
            // the peer timeout: not bound when the machine stalled meanwhile.
            let stalled = self.h.stalled(since, last);
            if !linked || stalled || !running(nodes, since) || held.get(name).copied().flatten().is_none() {
                continue;
            }
            self.count(if w.ack == Ack::Global {
                "ack=global reachable regions probed"
            } else {
                "ack=region reachable mates probed"
            });
            if held.get(name).copied().flatten() == Some(false) {
                out.push(Violation {
                    check: if w.ack == Ack::Global { "ack-global-not-confirmed" } else { "ack-region-not-confirmed" },
                    key: Some(w.key.clone()),
                    ops: std::iter::once(w.id).chain(probes.iter().map(|p| p.id)).collect(),
                    message: format!(
                        "{w}: acknowledged at ack={level}, but right after it {name} (up, and linked to the writer, since {since} ms) did not hold it: {}",
                        why.join("; ")
                    ),
                });
            }
        }
    }

    // ----- checks on the final state -------------------------------------------------

    /// Checks what every node answered at the end: served expiry, phantom values, no
    /// acknowledged write lost, nothing deleted back.
    pub fn check_final(&self, observed: &[Observed]) -> Vec<Violation> {
        let mut out = Vec::new();
        for obs in observed {
            let clock = self.h.node_clock(&obs.node, obs.at, obs.at_unix);
            if let State::Present { expires_at: Some(e), .. } = &obs.state
                && e + 1 < clock
            {
                out.push(Violation {
                    check: "expired-served",
                    key: Some(obs.key.clone()),
                    ops: vec![],
                    message: format!(
                        "{} serves {} at the end, expired {} ms before its clock read",
                        obs.node,
                        obs.state,
                        clock - e
                    ),
                });
            }
            if let State::Present { body, .. } = &obs.state
                && let Err(e) = self.written_by_someone(&obs.key, body)
            {
                out.push(Violation {
                    check: "phantom-value",
                    key: Some(obs.key.clone()),
                    ops: vec![],
                    message: format!("{} at the end: {e}", obs.node),
                });
            }
            let end_clock = self.expiry_clock(obs.at, obs.end_unix);
            for w in self.ops_on(&obs.key).iter().filter(|w| w.acknowledged()) {
                if self.may_be_lost(w) {
                    continue;
                }
                self.count("acknowledged writes checked against a final state");
                if let Err(why) = self.reflects(w, &obs.state, end_clock, u64::MAX) {
                    let check = if w.kind == Kind::Delete { "deleted-came-back" } else { "lost-write" };
                    out.push(Violation {
                        check,
                        key: Some(obs.key.clone()),
                        ops: vec![w.id],
                        message: format!("after healing, {} has {}: {why} (acknowledged {w})", obs.node, obs.state),
                    });
                }
            }
        }
        out
    }

    /// `Ok` when every node answers the same for every key, allowing a node not to serve
    /// an entry once any node's clock passed its expiry (see [`Checker::expiry_clock`]);
    /// else the differences.
    pub fn converged(&self, observed: &[Observed]) -> Result<(), Vec<String>> {
        let mut by_key: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
        for o in observed {
            by_key.entry(o.key.as_str()).or_default().push(o);
        }
        let mut diffs = Vec::new();
        for (key, obs) in by_key {
            let present: Vec<&State> =
                obs.iter().map(|o| &o.state).filter(|s| matches!(s, State::Present { .. })).collect();
            let errors = obs.iter().any(|o| matches!(o.state, State::Error(_)));
            let same_present = present.windows(2).all(|w| w[0] == w[1]);
            let absent_explained = obs.iter().filter(|o| o.state == State::Absent).all(|o| match present.first() {
                None => true,
                Some(State::Present { expires_at: Some(e), .. }) => *e <= self.expiry_clock(o.at, o.end_unix) + 1,
                Some(_) => false,
            });
            if errors || !same_present || !absent_explained {
                let per_node: Vec<String> = obs.iter().map(|o| format!("{}: {}", o.node, o.state)).collect();
                diffs.push(format!("{key}: {}", per_node.join(" | ")));
            }
        }
        if diffs.is_empty() { Ok(()) } else { Err(diffs) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::{Fault, FaultEvent};
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn v(ms: u64, node: &str) -> Version {
        Version { hlc: hlc_floor(ms), node: node.into() }
    }

    fn history() -> History {
        let mut h = History { start_unix: T0, ..History::default() };
        for (n, r) in [("eu-0", "eu"), ("eu-1", "eu"), ("us-0", "us"), ("us-1", "us"), ("ap-0", "ap"), ("ap-1", "ap")] {
            h.nodes.insert(n.into(), r.into());
            h.initial_offsets.insert(n.into(), 0);
        }
        h.persistent = vec!["eu-0".into(), "us-0".into(), "ap-0".into()];
        h
    }

    fn op(id: usize, node: &str, kind: Kind, start: u64, end: u64, outcome: Outcome) -> Op {
        Op {
            id,
            client: 0,
            node: node.into(),
            region: node.split('-').next().unwrap().into(),
            kind,
            key: "k".into(),
            ack: Ack::Local,
            ttl: Ttl::Unset,
            body: None,
            after: None,
            start,
            end,
            start_unix: T0 + start,
            end_unix: T0 + end,
            outcome,
        }
    }

    fn written(version: Version, expires_at: Option<u64>) -> Outcome {
        Outcome::Done { status: 200, version: Some(version), expires_at, token: Some("t".into()), body: None }
    }

    fn deleted() -> Outcome {
        Outcome::Done { status: 204, version: None, expires_at: None, token: Some("t".into()), body: None }
    }

    fn read(version: Option<Version>, body: &str) -> Outcome {
        match version {
            Some(v) => {
                Outcome::Done { status: 200, version: Some(v), expires_at: None, token: None, body: Some(body.into()) }
            }
            None => Outcome::Done { status: 404, version: None, expires_at: None, token: None, body: None },
        }
    }

    fn obs(node: &str, at: u64, state: State) -> Observed {
        Observed { node: node.into(), key: "k".into(), at, at_unix: T0 + at, end_unix: T0 + at + 2, state }
    }

    fn present(version: Version, op: usize) -> State {
        State::Present { version, body: format!("{{\"op\":{op}}}"), expires_at: None }
    }

    const SETTINGS: CheckSettings = CheckSettings { settle_ms: 3000, max_skew_ms: 500 };

    fn checks(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.check).collect()
    }

    #[test]
    fn a_final_version_below_an_acknowledged_write_is_a_lost_write() {
        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), None)));
        h.ops.push(op(2, "us-0", Kind::Put, 2000, 2010, written(v(T0 + 2000, "us-0"), None)));
        let c = Checker::new(&h, SETTINGS);
        let ok = c.check_final(&[obs("ap-0", 9000, present(v(T0 + 2000, "us-0"), 2))]);
        assert!(ok.is_empty(), "{ok:?}");
        let bad = c.check_final(&[obs("ap-0", 9000, present(v(T0 + 1000, "eu-0"), 1))]);
        assert_eq!(checks(&bad), ["lost-write"], "{bad:?}");
        let absent = c.check_final(&[obs("ap-0", 9000, State::Absent)]);
        assert_eq!(checks(&absent), ["lost-write", "lost-write"], "nothing removes the key: {absent:?}");
    }

    #[test]
    fn absence_is_explained_by_a_delete_that_may_order_later_or_by_an_expiry() {
        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), Some(T0 + 3000))));
        let c = Checker::new(&h, SETTINGS);
        assert!(c.check_final(&[obs("us-0", 9000, State::Absent)]).is_empty(), "expired");
        assert_eq!(checks(&c.check_final(&[obs("us-0", 1500, State::Absent)])), ["lost-write"], "not expired yet");

        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), None)));
        h.ops.push(op(2, "us-0", Kind::Delete, 500, 520, deleted()));
        let c = Checker::new(&h, SETTINGS);
        assert!(
            c.check_final(&[obs("us-0", 9000, State::Absent)]).is_empty(),
            "the delete may order after it (within the skew bound)"
        );
        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 5000, 5010, written(v(T0 + 5000, "eu-0"), None)));
        h.ops.push(op(2, "us-0", Kind::Delete, 500, 520, deleted()));
        let c = Checker::new(&h, SETTINGS);
        assert_eq!(
            checks(&c.check_final(&[obs("us-0", 9000, State::Absent)])),
            ["lost-write"],
            "the delete is seconds older"
        );
    }

    #[test]
    fn a_key_present_below_an_acknowledged_delete_came_back() {
        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), None)));
        h.ops.push(op(2, "us-0", Kind::Delete, 2000, 2020, deleted()));
        let c = Checker::new(&h, SETTINGS);
        let back = c.check_final(&[obs("ap-1", 9000, present(v(T0 + 1000, "eu-0"), 1))]);
        assert_eq!(checks(&back), ["deleted-came-back"], "{back:?}");
        // With us's clock 10 s behind, the delete's version may be below the put's.
        h.initial_offsets.insert("us-0".into(), -10_000);
        let c = Checker::new(&h, SETTINGS);
        assert!(c.check_final(&[obs("ap-1", 9000, present(v(T0 + 1000, "eu-0"), 1))]).is_empty());
    }

    #[test]
    fn memory_only_nodes_killed_after_a_local_write_may_lose_it() {
        let mut h = history();
        h.ops.push(op(1, "eu-1", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-1"), None)));
        h.faults.push(FaultEvent {
            at: 1020,
            end: 1030,
            fault: Fault::Kill { node: "eu-1".into(), persistent: false },
        });
        let c = Checker::new(&h, SETTINGS);
        assert!(c.check_final(&[obs("eu-1", 9000, State::Absent)]).is_empty());
        h.ops[0].ack = Ack::Region;
        let c = Checker::new(&h, SETTINGS);
        assert_eq!(checks(&c.check_final(&[obs("eu-1", 9000, State::Absent)])), ["lost-write"], "eu-0 confirmed it");
    }

    #[test]
    fn expired_entries_served_and_phantom_documents_are_caught() {
        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), Some(T0 + 2000))));
        let mut r = op(2, "us-0", Kind::Get, 2500, 2510, read(Some(v(T0 + 1000, "eu-0")), "{\"op\":1}"));
        if let Outcome::Done { expires_at, .. } = &mut r.outcome {
            *expires_at = Some(T0 + 2000);
        }
        h.ops.push(r);
        h.ops.push(op(3, "us-0", Kind::Get, 1500, 1510, read(Some(v(T0 + 1000, "eu-0")), "{\"op\":7}")));
        let found = Checker::new(&h, SETTINGS).check_ops();
        assert_eq!(checks(&found), ["expired-served", "phantom-value"], "{found:?}");
        // A node whose clock is 1 s behind still serves it legitimately.
        h.initial_offsets.insert("us-0".into(), -1000);
        let found = Checker::new(&h, SETTINGS).check_ops();
        assert_eq!(checks(&found), ["phantom-value"], "{found:?}");
    }

    #[test]
    fn a_read_with_a_token_must_reflect_the_write() {
        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), None)));
        h.ops.push(op(2, "us-0", Kind::Put, 900, 905, written(v(T0 + 900, "us-0"), None)));
        let mut stale = op(3, "ap-0", Kind::GetAfter, 1100, 1200, read(Some(v(T0 + 900, "us-0")), "{\"op\":2}"));
        stale.after = Some(1);
        let mut fine = op(4, "ap-0", Kind::GetAfter, 1100, 1200, Outcome::Timeout { code: "not_caught_up".into() });
        fine.after = Some(1);
        h.ops.extend([stale, fine]);
        assert_eq!(checks(&Checker::new(&h, SETTINGS).check_ops()), ["stale-read-your-writes"]);
    }

    #[test]
    fn ack_global_while_isolated_is_caught() {
        let mut h = history();
        for to in ["us", "ap"] {
            h.faults.push(FaultEvent { at: 100, end: 101, fault: Fault::Cut { from: "eu".into(), to: to.into() } });
            h.faults.push(FaultEvent { at: 100, end: 101, fault: Fault::Cut { from: to.into(), to: "eu".into() } });
        }
        let mut w = op(1, "eu-0", Kind::Put, 1000, 1004, written(v(T0 + 1000, "eu-0"), None));
        w.ack = Ack::Global;
        h.ops.push(w);
        let found = Checker::new(&h, SETTINGS).check_ops();
        assert_eq!(checks(&found), ["ack-global-without-majority"], "{found:?}");
        // One direction healed: us may have confirmed.
        h.faults.push(FaultEvent { at: 900, end: 901, fault: Fault::Heal { from: "eu".into(), to: "us".into() } });
        assert!(Checker::new(&h, SETTINGS).check_ops().is_empty());
    }

    #[test]
    fn a_region_that_was_up_and_linked_must_hold_a_global_write_right_after() {
        let mut h = history();
        let mut w = op(1, "eu-0", Kind::Put, 5000, 5100, written(v(T0 + 5000, "eu-0"), None));
        w.ack = Ack::Global;
        h.ops.push(w);
        for (i, n) in ["us-0", "us-1", "ap-0", "ap-1"].iter().enumerate() {
            let has = *n != "us-0" && *n != "us-1";
            let state = if has { read(Some(v(T0 + 5000, "eu-0")), "{\"op\":1}") } else { read(None, "") };
            let mut p = op(10 + i, n, Kind::Probe, 5101, 5110, state);
            p.after = Some(1);
            h.ops.push(p);
        }
        let found = Checker::new(&h, SETTINGS).check_ops();
        assert_eq!(checks(&found), ["ack-global-not-confirmed"], "{found:?}");
        // us was cut off shortly before the write: the writer may not have waited for it.
        h.faults.push(FaultEvent { at: 4000, end: 4001, fault: Fault::Cut { from: "eu".into(), to: "us".into() } });
        h.faults.push(FaultEvent { at: 4500, end: 4501, fault: Fault::Heal { from: "eu".into(), to: "us".into() } });
        assert!(Checker::new(&h, SETTINGS).check_ops().is_empty());
    }

    #[test]
    fn ack_region_while_the_mate_was_paused_is_caught() {
        let mut h = history();
        h.faults.push(FaultEvent { at: 500, end: 501, fault: Fault::Pause { node: "eu-1".into() } });
        let mut w = op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), None));
        w.ack = Ack::Region;
        h.ops.push(w);
        assert_eq!(checks(&Checker::new(&h, SETTINGS).check_ops()), ["ack-region-without-majority"]);
        h.faults.push(FaultEvent { at: 1005, end: 1006, fault: Fault::Resume { node: "eu-1".into() } });
        assert!(Checker::new(&h, SETTINGS).check_ops().is_empty(), "resumed during the request");
    }

    #[test]
    fn a_global_write_no_other_region_holds_right_after_is_caught_without_settling() {
        let mut h = history();
        // A partition that healed just before the write: no region is bound as
        // reachable, but a majority must still hold the write.
        h.faults.push(FaultEvent { at: 900, end: 901, fault: Fault::Cut { from: "eu".into(), to: "us".into() } });
        h.faults.push(FaultEvent { at: 950, end: 951, fault: Fault::Heal { from: "eu".into(), to: "us".into() } });
        let mut w = op(1, "eu-0", Kind::Put, 1000, 1004, written(v(T0 + 1000, "eu-0"), None));
        w.ack = Ack::Global;
        h.ops.push(w);
        for (i, n) in ["us-0", "us-1", "ap-0", "ap-1"].iter().enumerate() {
            let mut p = op(10 + i, n, Kind::Probe, 1005, 1010, read(None, ""));
            p.after = Some(1);
            h.ops.push(p);
        }
        let found = Checker::new(&h, SETTINGS).check_ops();
        assert_eq!(checks(&found), ["ack-global-majority-not-held"], "{found:?}");
        // ap-1 was restarted meanwhile: it may have been the one that confirmed.
        h.faults.push(FaultEvent {
            at: 1004,
            end: 1005,
            fault: Fault::Kill { node: "ap-1".into(), persistent: false },
        });
        assert!(Checker::new(&h, SETTINGS).check_ops().is_empty());
    }

    #[test]
    fn convergence_allows_absence_only_once_some_node_clock_passed_the_expiry() {
        let p =
            State::Present { version: v(T0 + 1000, "eu-0"), body: "{\"op\":1}".into(), expires_at: Some(T0 + 5000) };
        let mut h = history();
        h.ops.push(op(1, "eu-0", Kind::Put, 1000, 1010, written(v(T0 + 1000, "eu-0"), Some(T0 + 5000))));
        {
            let c = Checker::new(&h, SETTINGS);
            assert!(
                c.converged(&[obs("eu-0", 2000, p.clone()), obs("eu-1", 2000, State::Absent)]).is_err(),
                "no clock passed the expiry"
            );
        }
        h.initial_offsets.insert("us-0".into(), 10_000);
        let c = Checker::new(&h, SETTINGS);
        assert!(
            c.converged(&[obs("eu-0", 2000, p.clone()), obs("us-0", 2000, State::Absent)]).is_ok(),
            "us's clock passed it"
        );
        assert!(
            c.converged(&[obs("eu-0", 2000, p.clone()), obs("eu-1", 2000, State::Absent)]).is_ok(),
            "us's sweeper freed it, and a resync from us carries only its tombstone"
        );
        let other = State::Present { version: v(T0 + 900, "us-0"), body: "{\"op\":1}".into(), expires_at: None };
        assert!(c.converged(&[obs("eu-0", 2000, p), obs("ap-0", 2000, other)]).is_err());
    }

    #[test]
    fn a_read_your_writes_read_may_miss_an_entry_a_faster_clock_expired() {
        let mut h = history();
        h.initial_offsets.insert("us-0".into(), 10_000);
        h.initial_offsets.insert("us-1".into(), 10_000);
        // us-0 writes with a 2 s TTL by its clock (10 s ahead); ap-0 reads it 3 s later.
        let w = written(v(T0 + 11_000, "us-0"), Some(T0 + 13_000));
        h.ops.push(op(1, "us-0", Kind::Patch, 1000, 1010, w));
        let mut read = op(2, "ap-0", Kind::GetAfter, 4000, 4010, read(None, ""));
        read.after = Some(1);
        h.ops.push(read);
        assert!(checks(&Checker::new(&h, SETTINGS).check_ops()).is_empty(), "us's clock passed the expiry");
        // With every clock in step, the same read is stale.
        h.initial_offsets.insert("us-0".into(), 0);
        h.initial_offsets.insert("us-1".into(), 0);
        let w = written(v(T0 + 1000, "us-0"), Some(T0 + 13_000));
        h.ops[0] = op(1, "us-0", Kind::Patch, 1000, 1010, w);
        assert_eq!(checks(&Checker::new(&h, SETTINGS).check_ops()), ["stale-read-your-writes"]);
    }
}
