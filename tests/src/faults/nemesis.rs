//! The nemesis: seeded random faults injected into a running [`Fleet`] — partitions
//! between regions, a region isolated, one-way cuts, `kill -9` of nodes with and
//! without a data dir (restarted later, possibly with another clock offset),
//! SIGSTOP past the peer timeout then SIGCONT, WAN delay changes — each undone after
//! a random while, every action recorded with its time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::generator::Shared;
use super::history::{Fault, FaultEvent};
use super::rng::Rng;
use crate::faketime_offset;
use crate::fleet::Fleet;

/// Kinds of faults the nemesis may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Both directions between two regions.
    Partition,
    /// Every link of one region, both directions.
    Isolate,
    /// One direction between two regions.
    OneWay,
    /// `kill -9` a node, start it again later.
    Kill,
    /// SIGSTOP a node past the peer timeout, then SIGCONT.
    Pause,
    /// Change the WAN delay for a while.
    Delay,
    /// Isolate a region and, while it is cut off, `kill -9` one of its nodes and start
    /// it again (a node that comes back to find no other region).
    IsolateAndRestart,
    /// SIGSTOP a node and, while it is paused, `kill -9` its region mate and start it
    /// again (a node that comes back to find its mate silent).
    PauseMateAndRestart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Partition,
        FaultKind::Isolate,
        FaultKind::IsolateAndRestart,
        FaultKind::PauseMateAndRestart,
        FaultKind::OneWay,
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Delay,
    ];
}

/// Settings of the nemesis.
#[derive(Debug, Clone)]
pub struct NemesisSettings {
    pub kinds: Vec<FaultKind>,
    /// Time between two new faults, ms (`lo..hi`).
    pub interval_ms: (u64, u64),
    /// How long a fault lasts, ms (`lo..hi`).
    pub duration_ms: (u64, u64),
    /// At most this many faults at once.
    pub max_active: usize,
    pub peer_timeout: Duration,
    /// Clock offsets a killed node may come back with (empty: its offset stays).
    pub restart_offsets: Vec<i64>,
    /// The WAN delay between faults.
    pub base_delay_ms: u64,
}

enum Undo {
    Links(Vec<(String, String)>),
    Start(String),
    Resume(String),
    Delay,
}

struct Active {
    until: u64,
    undo: Undo,
}

/// Injects faults and records them.
pub struct Nemesis {
    pub settings: NemesisSettings,
    pub rng: Rng,
    pub events: Vec<FaultEvent>,
    /// Current clock offset of every node (ms).
    pub offsets: BTreeMap<String, i64>,
    active: Vec<Active>,
    cuts: BTreeMap<(String, String), usize>,
    busy_nodes: BTreeSet<String>,
    delay_changed: bool,
}

impl Nemesis {
    pub fn new(settings: NemesisSettings, rng: Rng, offsets: BTreeMap<String, i64>) -> Nemesis {
        Nemesis {
            settings,
            rng,
            events: Vec::new(),
            offsets,
            active: Vec::new(),
            cuts: BTreeMap::new(),
            busy_nodes: BTreeSet::new(),
            delay_changed: false,
        }
    }

    fn record(&mut self, f: &Fleet, shared: &Shared, at: u64, fault: Fault) {
        f.step(&format!("nemesis: {fault}"));
        self.events.push(FaultEvent { at, end: shared.now(), fault });
    }

    /// Runs faults until `shared.stop` is set or `until_ms` (run time) passes.
    pub fn run(&mut self, f: &mut Fleet, shared: &Shared, until_ms: u64) {
        let (lo, hi) = self.settings.interval_ms;
        let mut next = shared.now() + self.rng.range(lo, hi);
        loop {
            let now = shared.now();
            if now >= until_ms || shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            self.undo_due(f, shared, now);
            if now >= next && !self.settings.kinds.is_empty() {
                if self.active.len() < self.settings.max_active {
                    self.inject(f, shared);
                }
                next = shared.now() + self.rng.range(lo, hi);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn undo_due(&mut self, f: &mut Fleet, shared: &Shared, now: u64) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].until <= now {
                let a = self.active.remove(i);
                self.undo(f, shared, a.undo);
            } else {
                i += 1;
            }
        }
    }

    /// Undoes every fault still in force.
    pub fn undo_all(&mut self, f: &mut Fleet, shared: &Shared) {
        for a in std::mem::take(&mut self.active) {
            self.undo(f, shared, a.undo);
        }
    }

    fn undo(&mut self, f: &mut Fleet, shared: &Shared, undo: Undo) {
        match undo {
            Undo::Links(links) => {
                for (from, to) in links {
                    let n = self.cuts.entry((from.clone(), to.clone())).or_default();
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        let at = shared.now();
                        f.heal_one_way(&from, &to);
                        self.record(f, shared, at, Fault::Heal { from, to });
                    }
                }
            }
            Undo::Start(node) => {
                let offset = if self.settings.restart_offsets.is_empty() {
                    self.offsets.get(&node).copied().unwrap_or(0)
                } else {
                    *self.rng.pick(&self.settings.restart_offsets)
                };
                if offset != self.offsets.get(&node).copied().unwrap_or(0) {
                    f.node_mut(&node).set_env("FAKETIME", faketime_offset(offset));
                    self.offsets.insert(node.clone(), offset);
                }
                let at = shared.now();
                f.restart(&node);
                self.record(f, shared, at, Fault::Start { node: node.clone(), offset_ms: offset });
                self.release(shared, &node);
            }
            Undo::Resume(node) => {
                let at = shared.now();
                f.resume(&node);
                self.record(f, shared, at, Fault::Resume { node: node.clone() });
                self.release(shared, &node);
            }
            Undo::Delay => {
                let at = shared.now();
                let ms = self.settings.base_delay_ms;
                f.set_delay(Duration::from_millis(ms));
                self.delay_changed = false;
                self.record(f, shared, at, Fault::Delay { ms });
            }
        }
    }

    /// Marks `node` busy (and down for the clients).
    fn claim(&mut self, shared: &Shared, node: &str) {
        self.busy_nodes.insert(node.to_string());
        if let Ok(mut d) = shared.down.lock() {
            d.insert(node.to_string());
        }
    }

    /// `kill -9`, a short while down, start again (keeping its clock offset).
    fn kill_and_restart(&mut self, f: &mut Fleet, shared: &Shared, node: &str) {
        self.claim(shared, node);
        let at = shared.now();
        let persistent = f.node(node).data_dir().is_some();
        f.kill(node);
        self.record(f, shared, at, Fault::Kill { node: node.to_string(), persistent });
        std::thread::sleep(Duration::from_millis(self.rng.range(100, 800)));
        let offset = self.offsets.get(node).copied().unwrap_or(0);
        let at = shared.now();
        f.restart(node);
        self.record(f, shared, at, Fault::Start { node: node.to_string(), offset_ms: offset });
        self.release(shared, node);
    }

    fn free_nodes(&self, f: &Fleet) -> Vec<String> {
        f.ids().into_iter().filter(|n| !self.busy_nodes.contains(n)).collect()
    }

    fn release(&mut self, shared: &Shared, node: &str) {
        self.busy_nodes.remove(node);
        if let Ok(mut d) = shared.down.lock() {
            d.remove(node);
        }
    }

    fn cut(&mut self, f: &Fleet, shared: &Shared, links: &[(String, String)]) {
        for (from, to) in links {
            let n = self.cuts.entry((from.clone(), to.clone())).or_default();
            *n += 1;
            if *n == 1 {
                let at = shared.now();
                f.cut_one_way(from, to);
                self.record(f, shared, at, Fault::Cut { from: from.clone(), to: to.clone() });
            }
        }
    }

    fn inject(&mut self, f: &mut Fleet, shared: &Shared) {
        let kind = *self.rng.pick(&self.settings.kinds);
        let (lo, hi) = self.settings.duration_ms;
        let regions = f.regions().to_vec();
        let mut two = || {
            let a = self.rng.pick(&regions).clone();
            let others: Vec<String> = regions.iter().filter(|r| **r != a).cloned().collect();
            let b = self.rng.pick(&others).clone();
            (a, b)
        };
        let undo = match kind {
            FaultKind::Partition => {
                let (a, b) = two();
                let links = vec![(a.clone(), b.clone()), (b, a)];
                self.cut(f, shared, &links);
                Undo::Links(links)
            }
            FaultKind::OneWay => {
                let (a, b) = two();
                let links = vec![(a, b)];
                self.cut(f, shared, &links);
                Undo::Links(links)
            }
            FaultKind::Isolate => {
                let r = self.rng.pick(&regions).clone();
                let links: Vec<(String, String)> = regions
                    .iter()
                    .filter(|o| **o != r)
                    .flat_map(|o| [(r.clone(), o.clone()), (o.clone(), r.clone())])
                    .collect();
                self.cut(f, shared, &links);
                Undo::Links(links)
            }
            FaultKind::IsolateAndRestart => {
                let r = self.rng.pick(&regions).clone();
                let free: Vec<String> = self.free_nodes(f).into_iter().filter(|n| f.node(n).region() == r).collect();
                if free.is_empty() {
                    return;
                }
                let links: Vec<(String, String)> = regions
                    .iter()
                    .filter(|o| **o != r)
                    .flat_map(|o| [(r.clone(), o.clone()), (o.clone(), r.clone())])
                    .collect();
                self.cut(f, shared, &links);
                let node = self.rng.pick(&free).clone();
                self.kill_and_restart(f, shared, &node);
                Undo::Links(links)
            }
            FaultKind::PauseMateAndRestart => {
                let free = self.free_nodes(f);
                let pairs: Vec<(String, String)> = free
                    .iter()
                    .flat_map(|a| free.iter().map(move |b| (a.clone(), b.clone())))
                    .filter(|(a, b)| a != b && f.node(a).region() == f.node(b).region())
                    .collect();
                if pairs.is_empty() {
                    return;
                }
                let (paused, restarted) = self.rng.pick(&pairs).clone();
                self.claim(shared, &paused);
                let at = shared.now();
                f.pause(&paused);
                self.record(f, shared, at, Fault::Pause { node: paused.clone() });
                self.kill_and_restart(f, shared, &restarted);
                Undo::Resume(paused)
            }
            FaultKind::Kill | FaultKind::Pause => {
                let free: Vec<String> = f.ids().into_iter().filter(|n| !self.busy_nodes.contains(n)).collect();
                if free.is_empty() {
                    return;
                }
                let node = self.rng.pick(&free).clone();
                self.busy_nodes.insert(node.clone());
                if let Ok(mut d) = shared.down.lock() {
                    d.insert(node.clone());
                }
                let at = shared.now();
                if kind == FaultKind::Kill {
                    let persistent = f.node(&node).data_dir().is_some();
                    f.kill(&node);
                    self.record(f, shared, at, Fault::Kill { node: node.clone(), persistent });
                    Undo::Start(node)
                } else {
                    f.pause(&node);
                    self.record(f, shared, at, Fault::Pause { node: node.clone() });
                    // Past the peer timeout: the others must see it down.
                    let past = self.settings.peer_timeout.as_millis() as u64 + self.rng.range(300, 2500);
                    self.active.push(Active { until: shared.now() + past, undo: Undo::Resume(node) });
                    return;
                }
            }
            FaultKind::Delay => {
                if self.delay_changed {
                    return;
                }
                let ms = self.rng.range(2, 120);
                let at = shared.now();
                f.set_delay(Duration::from_millis(ms));
                self.delay_changed = true;
                self.record(f, shared, at, Fault::Delay { ms });
                Undo::Delay
            }
        };
        let until = shared.now() + self.rng.range(lo, hi);
        self.active.push(Active { until, undo });
    }
}
