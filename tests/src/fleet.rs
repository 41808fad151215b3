//! A multi-region fleet of real `geocache-node` processes on loopback, with a WAN
//! proxy ([`geocache_node::fleet::wan_proxy`]) on every ordered pair of regions, for
//! scenario tests: start a fleet, cut or blackhole links, kill and restart nodes,
//! wait for conditions, assert.
//!
//! ```no_run
//! use std::time::Duration;
//! use geocache_tests::fleet::Fleet;
//! let mut f = Fleet::builder("demo").regions(&["eu", "us", "ap"]).nodes_per_region(2).start();
//! f.step("write in eu, read in us");
//! f.put_ok("eu-0", "k", "{\"v\":1}", "");
//! f.wait_for("k in us", Duration::from_secs(10), |f| f.read("us-1", "k").status == 200);
//! f.finish();
//! ```
//!
//! Node `i` of region `r` is called `r-i` (as in `geocache-node fleet`); every node has
//! its own random loopback IP. A node's seeds (`--peers`) are its region mates' peer
//! addresses plus, for every other region, the proxy from its region to that region,
//! which forwards round-robin to that region's nodes; `--advertise-addr` is its own
//! peer address. Cross-region traffic therefore only crosses the proxies — as long as
//! nodes reach other regions through the seeds they were given.
//!
//! Time bounds: every wait is bounded by its own timeout and by the fleet's time limit
//! ([`FleetBuilder::time_limit`]); every HTTP request by [`REQUEST_TIMEOUT`]. Every
//! process is stopped by [`Fleet::finish`] (SIGTERM, checked) or, on a panic, killed
//! when the fleet is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use geocache_node::fleet::wan_proxy::{WanProxy, WanProxyHandle};
use geocache_node::{PeerState, StatusDocument};

use crate::http::{self, HttpResponse};
use crate::resp::{Frame, RespConn};
use crate::{NodeAddrs, NodeOptions, NodeProcess, key_path, node_binary, random_loopback_ip};

/// Time bound of one HTTP request made through the fleet's helpers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How to build a [`Fleet`]; see [`Fleet::builder`].
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    name: String,
    regions: Vec<String>,
    nodes_per_region: usize,
    wan_delay: Duration,
    args: Vec<OsString>,
    node_args: HashMap<String, Vec<OsString>>,
    node_env: HashMap<String, Vec<(OsString, OsString)>>,
    persistent: BTreeSet<String>,
    unseeded: BTreeSet<String>,
    time_limit: Duration,
}

impl FleetBuilder {
    /// Regions (default `eu`, `us`, `ap`).
    pub fn regions(mut self, regions: &[&str]) -> Self {
        self.regions = regions.iter().map(|r| r.to_string()).collect();
        self
    }
    /// Nodes per region (default 2).
    pub fn nodes_per_region(mut self, n: usize) -> Self {
        self.nodes_per_region = n;
        self
    }
    /// One-way delay of every WAN link (default 20 ms).
    pub fn wan_delay(mut self, d: Duration) -> Self {
        self.wan_delay = d;
        self
    }
    /// Extra flags for every node.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Extra flags for one node.
    pub fn node_args<I, S>(mut self, node: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.node_args.entry(node.to_string()).or_default().extend(args.into_iter().map(Into::into));
        self
    }
    /// Extra environment variables for one node (e.g. [`crate::faketime_env`]).
    pub fn node_env<I, K, V>(mut self, node: &str, env: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.node_env.entry(node.to_string()).or_default().extend(env.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
    /// Give this node a `--data-dir` (kept across its restarts).
    pub fn persistent(mut self, node: &str) -> Self {
        self.persistent.insert(node.to_string());
        self
    }
    /// No other node lists this one in its `--peers`: its region mates learn of it
    /// only when it connects and by gossip (so that `--peer-drop-after` applies to it).
    pub fn unseeded(mut self, node: &str) -> Self {
        self.unseeded.insert(node.to_string());
        self
    }
    /// Hard bound of the whole scenario, from the start of the fleet (default 60 s).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// Starts the WAN proxies and every node (all at once), and waits until every
    /// node is ready.
    pub fn start(self) -> Fleet {
        let started = Instant::now();
        assert!(!self.regions.is_empty() && self.nodes_per_region > 0, "a fleet needs regions and nodes");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wan-proxy")
            .enable_all()
            .build()
            .expect("start a runtime for the wan proxies");
        let mut plan: Vec<(String, String, NodeAddrs)> = Vec::new();
        for region in &self.regions {
            for i in 0..self.nodes_per_region {
                plan.push((format!("{region}-{i}"), region.clone(), NodeAddrs::pick()));
            }
        }
        let mut links = Vec::new();
        for from in &self.regions {
            for to in &self.regions {
                if from == to {
                    continue;
                }
                let upstreams: Vec<SocketAddr> =
                    plan.iter().filter(|(_, r, _)| r == to).map(|(_, _, a)| a.peer).collect();
                let listen = SocketAddr::new(random_loopback_ip().into(), 0);
                let proxy = {
                    let _guard = runtime.enter();
                    WanProxy::spawn(listen, upstreams, self.wan_delay)
                        .unwrap_or_else(|e| panic!("start the wan proxy {from} -> {to} on {listen}: {e}"))
                };
                links.push(Link { from: from.clone(), to: to.clone(), proxy });
            }
        }
        let bin = node_binary();
        let mut nodes = Vec::new();
        for (id, region, addrs) in &plan {
            let mut peers: Vec<String> = plan
                .iter()
                .filter(|(other, r, _)| r == region && other != id && !self.unseeded.contains(other))
                .map(|(_, _, a)| a.peer.to_string())
                .collect();
            peers.extend(links.iter().filter(|l| &l.from == region).map(|l| l.proxy.addr().to_string()));
            let mut opts = NodeOptions::new()
                .node_id(id.clone())
                .region(region.clone())
                .addrs(*addrs)
                .arg("--advertise-addr")
                .arg(addrs.peer.to_string());
            if !peers.is_empty() {
                opts = opts.arg("--peers").arg(peers.join(","));
            }
            opts = opts.args(self.args.iter().cloned());
            if let Some(extra) = self.node_args.get(id) {
                opts = opts.args(extra.iter().cloned());
            }
            for (k, v) in self.node_env.get(id).into_iter().flatten() {
                opts = opts.env(k.clone(), v.clone());
            }
            if self.persistent.contains(id) {
                opts = opts.persistent();
            }
            nodes.push(NodeProcess::spawn(&bin, opts));
        }
        for node in &mut nodes {
            node.wait_ready();
        }
        let fleet = Fleet {
            name: self.name,
            regions: self.regions,
            nodes,
            links,
            runtime: Some(runtime),
            started,
            deadline: started + self.time_limit,
            time_limit: self.time_limit,
        };
        fleet.step(&format!(
            "fleet ready: {} nodes in {} regions, {:?} one way between regions, in {:?}",
            fleet.nodes.len(),
            fleet.regions.len(),
            self.wan_delay,
            started.elapsed()
        ));
        fleet
    }
}

struct Link {
    from: String,
    to: String,
    proxy: WanProxyHandle,
}

/// A running fleet; see the [module documentation](self).
pub struct Fleet {
    name: String,
    regions: Vec<String>,
    nodes: Vec<NodeProcess>,
    links: Vec<Link>,
    runtime: Option<tokio::runtime::Runtime>,
    started: Instant,
    deadline: Instant,
    time_limit: Duration,
}

/// What one node answers for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub status: u16,
    /// The `ETag` (the version, quoted) when 200.
    pub etag: Option<String>,
    /// The document when 200.
    pub body: Option<String>,
    pub expires_at: Option<String>,
    pub origin_region: Option<String>,
}

impl KeyState {
    pub fn present(&self) -> bool {
        self.status == 200
    }
    /// The version without the quotes of the `ETag`.
    pub fn version(&self) -> Option<&str> {
        self.etag.as_deref().map(|e| e.trim_matches('"'))
    }
    /// What must be equal on every replica: presence, version and document.
    fn replica_view(&self) -> (bool, Option<&str>, Option<&str>, Option<&str>) {
        (self.present(), self.version(), self.body.as_deref(), self.expires_at.as_deref())
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            200 => write!(
                f,
                "{} v={} exp={}",
                self.body.as_deref().unwrap_or(""),
                self.version().unwrap_or("?"),
                self.expires_at.as_deref().unwrap_or("-")
            ),
            404 => f.write_str("absent"),
            s => write!(f, "HTTP {s} {}", self.body.as_deref().unwrap_or("")),
        }
    }
}

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// `None` when `samples` is empty.
    pub fn of(samples: &[Duration]) -> Option<Percentiles> {
        let mut v = samples.to_vec();
        v.sort();
        let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        Some(Percentiles { count: v.len(), min: *v.first()?, p50: at(0.5), p99: at(0.99), max: *v.last()? })
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} min={:.1?} p50={:.1?} p99={:.1?} max={:.1?}",
            self.count, self.min, self.p50, self.p99, self.max
        )
    }
}

impl Fleet {
    /// A fleet called `name` (used in messages): by default three regions `eu`, `us`,
    /// `ap` of two nodes each, 20 ms one way between regions, 60 s time limit.
    pub fn builder(name: &str) -> FleetBuilder {
        FleetBuilder {
            name: name.to_string(),
            regions: ["eu", "us", "ap"].iter().map(|r| r.to_string()).collect(),
            nodes_per_region: 2,
            wan_delay: Duration::from_millis(20),
            args: Vec::new(),
            node_args: HashMap::new(),
            node_env: HashMap::new(),
            persistent: BTreeSet::new(),
            unseeded: BTreeSet::new(),
            time_limit: Duration::from_secs(60),
        }
    }

    /// Logs a scenario step (shown with the test's output when it fails).
    pub fn step(&self, what: &str) {
        eprintln!("[{} +{:.2?}] {what}", self.name, self.started.elapsed());
    }

    /// Time left before the fleet's time limit.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Time since the fleet started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// Every node id, in region order.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node_id().to_string()).collect()
    }

    /// The ids of the nodes of `region`.
    pub fn ids_in(&self, region: &str) -> Vec<String> {
        self.nodes.iter().filter(|n| n.region() == region).map(|n| n.node_id().to_string()).collect()
    }

    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    pub fn node(&self, id: &str) -> &NodeProcess {
        self.nodes.iter().find(|n| n.node_id() == id).unwrap_or_else(|| panic!("no node {id} in the fleet"))
    }

    pub fn node_mut(&mut self, id: &str) -> &mut NodeProcess {
        self.nodes.iter_mut().find(|n| n.node_id() == id).unwrap_or_else(|| panic!("no node {id} in the fleet"))
    }

    /// The proxy that carries traffic from region `from` to region `to`.
    pub fn link(&self, from: &str, to: &str) -> &WanProxyHandle {
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .map(|l| &l.proxy)
            .unwrap_or_else(|| panic!("no link {from} -> {to}"))
    }

    fn links_between<'a>(&'a self, a: &'a str, b: Option<&'a str>) -> impl Iterator<Item = &'a WanProxyHandle> + 'a {
        self.links
            .iter()
            .filter(move |l| match b {
                Some(b) => (l.from == a && l.to == b) || (l.from == b && l.to == a),
                None => l.from == a || l.to == a,
            })
            .map(|l| &l.proxy)
    }

    /// Cuts both directions between regions `a` and `b` (connections are closed).
    pub fn cut(&self, a: &str, b: &str) {
        self.links_between(a, Some(b)).for_each(|p| p.cut());
    }

    /// Cuts `region` off from every other region.
    pub fn isolate(&self, region: &str) {
        self.links_between(region, None).for_each(|p| p.cut());
    }

    /// Blackholes every link of `region`: connections hang, nothing passes.
    pub fn blackhole_region(&self, region: &str) {
        self.links_between(region, None).for_each(|p| p.blackhole());
    }

    /// Heals both directions between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        self.links_between(a, Some(b)).for_each(|p| p.heal());
    }

    /// Cuts one direction only: connections dialled from region `from` to region `to`
    /// are closed (and new ones refused), those dialled from `to` to `from` still
    /// work. Nodes push writes over the links they dial, so `from` can no longer push
    /// to `to` directly, while `to` still pushes to `from`.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        self.link(from, to).cut();
    }

    /// Heals the one direction `from -> to` (see [`cut_one_way`](Self::cut_one_way)).
    pub fn heal_one_way(&self, from: &str, to: &str) {
        self.link(from, to).heal();
    }

    /// `SIGSTOP` node `id` (see [`NodeProcess::pause`]).
    pub fn pause(&mut self, id: &str) {
        self.node_mut(id).pause();
    }

    /// `SIGCONT` node `id` (see [`NodeProcess::resume`]).
    pub fn resume(&mut self, id: &str) {
        self.node_mut(id).resume();
    }

    /// `kill -9` node `id` and wait for it to exit.
    pub fn kill(&mut self, id: &str) {
        self.node_mut(id).kill();
    }

    /// Starts node `id` again (stopping it first when running) and waits until ready.
    pub fn restart(&mut self, id: &str) {
        self.node_mut(id).restart();
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.links.iter().for_each(|l| l.proxy.heal());
    }

    /// Sets the one-way delay of every link.
    pub fn set_delay(&self, d: Duration) {
        self.links.iter().for_each(|l| l.proxy.set_delay(d));
    }

    /// Bytes carried by every link so far, as `from -> to: bytes`.
    pub fn link_traffic(&self) -> String {
        self.links
            .iter()
            .map(|l| format!("{} -> {}: {:?}", l.from, l.to, l.proxy.stats()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `condition` every 20 ms until it is true; panics when `timeout` (or the
    /// fleet's time limit) passes first. Returns how long it took.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut condition: impl FnMut(&Fleet) -> bool) -> Duration {
        self.wait_for_ok(what, timeout, |f| if condition(f) { Ok(()) } else { Err("still false".into()) }).1
    }

    /// Polls `f` every 20 ms until it returns `Ok`; panics with its last error when
    /// `timeout` (or the fleet's time limit) passes first.
    pub fn wait_for_ok<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Fleet) -> Result<T, String>,
    ) -> (T, Duration) {
        let started = Instant::now();
        let bound = timeout.min(self.remaining());
        let deadline = started + bound;
        loop {
            let last = match f(self) {
                Ok(v) => return (v, started.elapsed()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let why = if bound < timeout {
                    format!("the fleet's time limit of {:?} ran out", self.time_limit)
                } else {
                    format!("not within {timeout:?}")
                };
                panic!("[{}] {what}: {why}; last: {last}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sleeps `d` (bounded by the time limit, which it asserts).
    pub fn sleep(&self, d: Duration) {
        assert!(d <= self.remaining(), "[{}] sleeping {d:?} would exceed the fleet's time limit", self.name);
        std::thread::sleep(d);
    }

    // ----- HTTP helpers ------------------------------------------------------------

    /// One HTTP request to node `id`; panics on I/O errors.
    pub fn http(&self, id: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        let addr = self.node(id).http_addr();
        http::request(addr, method, target, headers, body, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("[{}] {method} {target} on {id} ({addr}): {e}", self.name))
    }

    /// `PUT /v1/keys/{key}{query}` with a JSON body.
    pub fn put(&self, id: &str, key: &str, json: &str, query: &str) -> HttpResponse {
        let target = format!("{}{query}", key_path(key));
        self.http(id, "PUT", &target, &[("Content-Type", "application/json")], json.as_bytes())
    }

    /// A PUT that must answer 200 or 201; returns the body as JSON.
    pub fn put_ok(&self, id: &str, key: &str, json: &str, query: &str) -> serde_json::Value {
        let r = self.put(id, key, json, query);
        assert!(matches!(r.status, 200 | 201), "[{}] PUT {key}{query} on {id}: {} {}", self.name, r.status, r.text());
        r.json()
    }

    /// A DELETE that must answer 204 or 404; returns the status.
    pub fn delete(&self, id: &str, key: &str) -> u16 {
        let r = self.http(id, "DELETE", &key_path(key), &[], b"");
        assert!(matches!(r.status, 204 | 404), "[{}] DELETE {key} on {id}: {} {}", self.name, r.status, r.text());
        r.status
    }

    /// What node `id` answers for `key` (`GET /v1/keys/{key}`).
    pub fn read(&self, id: &str, key: &str) -> KeyState {
        let r = self.http(id, "GET", &key_path(key), &[], b"");
        key_state(&r)
    }

    /// The values of `keys` on node `id` in one `MGET` (None: absent), for large key sets.
    pub fn mget(&self, id: &str, keys: &[String]) -> Vec<Option<String>> {
        let node = self.node(id);
        let mut conn = RespConn::connect(node.resp_addr(), REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("[{}] connect to the Redis port of {id}: {e}", self.name));
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(chunk.iter().map(|k| k.as_bytes()));
            match conn.cmd(&args) {
                Ok(Frame::Array(items)) => out.extend(items.iter().map(Frame::as_text)),
                other => panic!("[{}] MGET on {id}: {other:?}", self.name),
            }
        }
        out
    }

    /// The status document of node `id`, as the node library's type.
    pub fn status(&self, id: &str) -> StatusDocument {
        let r = self.http(id, "GET", "/v1/status", &[], b"");
        assert_eq!(r.status, 200, "[{}] GET /v1/status on {id}: {}", self.name, r.text());
        serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!("[{}] the status of {id} does not follow the contract ({e}): {}", self.name, r.text())
        })
    }

    /// The status document of node `id` as raw JSON (for fields beyond the contract).
    pub fn status_json(&self, id: &str) -> serde_json::Value {
        let r = self.http(id, "GET", "/v1/status", &[], b"");
        assert_eq!(r.status, 200, "[{}] GET /v1/status on {id}: {}", self.name, r.text());
        r.json()
    }

    /// `Ok` when node `id` lists every running node of its region and at least one
    /// node of every other region as an `up` peer; else what is missing.
    pub fn peers_up(&self, id: &str) -> Result<(), String> {
        let doc = self.status(id);
        let region = self.node(id).region().to_string();
        let mut missing = Vec::new();
        for mate in self.nodes.iter().filter(|n| n.region() == region && n.node_id() != id && n.pid().is_some()) {
            match doc.peers.iter().find(|p| p.node_id == mate.node_id()) {
                Some(p) if p.state == PeerState::Up => {}
                Some(p) => missing.push(format!("{} is {:?}", mate.node_id(), p.state)),
                None => missing.push(format!("{} is not listed", mate.node_id())),
            }
        }
        for other in self.regions.iter().filter(|r| **r != region) {
            if !doc.peers.iter().any(|p| &p.region == other && p.state == PeerState::Up) {
                missing.push(format!("no peer of region {other} is up"));
            }
        }
        if missing.is_empty() { Ok(()) } else { Err(format!("{id}: {}; peers: {:?}", missing.join(", "), doc.peers)) }
    }

    /// Waits until every running node sees its region mates and every other region up.
    pub fn wait_all_peers_up(&self, timeout: Duration) -> Duration {
        let ids: Vec<String> =
            self.nodes.iter().filter(|n| n.pid().is_some()).map(|n| n.node_id().to_string()).collect();
        self.wait_for_ok("every node sees its region mates and every other region up", timeout, |f| {
            ids.iter().try_for_each(|id| f.peers_up(id))
        })
        .1
    }

    // ----- convergence -------------------------------------------------------------

    /// `Ok` when every running node answers the same for every key (presence, version,
    /// document, expiry); else a table of the differences.
    pub fn converged(&self, keys: &[String]) -> Result<BTreeMap<String, KeyState>, String> {
        let running: Vec<&NodeProcess> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
        let mut agreed = BTreeMap::new();
        let mut diffs = Vec::new();
        for key in keys {
            let states: Vec<(String, KeyState)> =
                running.iter().map(|n| (n.node_id().to_string(), self.read(n.node_id(), key))).collect();
            let first = &states[0].1;
            if states.iter().all(|(_, s)| s.replica_view() == first.replica_view()) {
                agreed.insert(key.clone(), first.clone());
            } else {
                let per_node: Vec<String> = states.iter().map(|(id, s)| format!("{id}: {s}")).collect();
                diffs.push(format!("{key}: {}", per_node.join(" | ")));
            }
        }
        if diffs.is_empty() {
            Ok(agreed)
        } else {
            let shown = diffs.len().min(10);
            Err(format!("{} of {} keys differ:\n  {}", diffs.len(), keys.len(), diffs[..shown].join("\n  ")))
        }
    }

    /// Waits until every running node answers the same for every key; returns the
    /// agreed states.
    pub fn wait_converged(&self, keys: &[String], timeout: Duration) -> BTreeMap<String, KeyState> {
        self.wait_for_ok(&format!("{} keys converge on every node", keys.len()), timeout, |f| f.converged(keys)).0
    }

    /// Waits until every running node has the same values for `keys` (MGET: values
    /// only, fast for thousands of keys); returns them.
    pub fn wait_values_converged(&self, keys: &[String], timeout: Duration) -> Vec<Option<String>> {
        let what = format!("the values of {} keys converge on every node", keys.len());
        self.wait_for_ok(&what, timeout, |f| {
            let running: Vec<String> =
                f.nodes.iter().filter(|n| n.pid().is_some()).map(|n| n.node_id().to_string()).collect();
            let first = f.mget(&running[0], keys);
            for id in &running[1..] {
                let other = f.mget(id, keys);
                let differing: Vec<&String> =
                    keys.iter().zip(first.iter().zip(&other)).filter(|(_, (a, b))| a != b).map(|(k, _)| k).collect();
                if !differing.is_empty() {
                    return Err(format!(
                        "{} keys differ between {} and {id}, e.g. {:?}",
                        differing.len(),
                        running[0],
                        &differing[..differing.len().min(5)]
                    ));
                }
            }
            Ok(first)
        })
        .0
    }

    // ----- end -----------------------------------------------------------------------

    /// Stops every running node with SIGTERM and asserts that each one exited by
    /// itself; then stops the proxies.
    pub fn finish(mut self) {
        self.step("stopping every node");
        let mut unclean = Vec::new();
        for node in &mut self.nodes {
            if node.pid().is_none() {
                continue;
            }
            let status = node.stop();
            if !status.success() {
                unclean.push(format!("{}: {status}", node.node_id()));
            }
        }
        for l in &self.links {
            l.proxy.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        assert!(unclean.is_empty(), "[{}] nodes did not shut down cleanly on SIGTERM: {unclean:?}", self.name);
        self.step(&format!("done in {:.2?}", self.started.elapsed()));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[{}] wan links at the failure:\n{}", self.name, self.link_traffic());
        }
        // The nodes are killed by their own Drop; stop the proxies without waiting.
        for l in &self.links {
            l.proxy.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A response to `GET /v1/keys/{key}` as a [`KeyState`].
pub fn key_state(r: &HttpResponse) -> KeyState {
    let ok = r.status == 200;
    KeyState {
        status: r.status,
        etag: if ok { r.header("etag").map(str::to_string) } else { None },
        body: if ok || r.status >= 500 { Some(r.text()) } else { None },
        expires_at: if ok { r.header("x-geocache-expires-at").map(str::to_string) } else { None },
        origin_region: if ok { r.header("x-geocache-origin-region").map(str::to_string) } else { None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!((p.count, p.min, p.max), (100, Duration::from_millis(1), Duration::from_millis(100)));
        assert_eq!(p.p50, Duration::from_millis(51));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn key_states_compare_presence_version_document_and_expiry() {
        let raw = b"HTTP/1.1 200 OK\r\nETag: \"00ab-eu-0\"\r\nX-Geocache-Origin-Region: eu\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        let s = key_state(&http::read_response(&mut &raw[..], false).unwrap());
        assert_eq!(s.version(), Some("00ab-eu-0"));
        assert_eq!(s.origin_region.as_deref(), Some("eu"));
        assert_eq!(s.to_string(), "{\"a\":1} v=00ab-eu-0 exp=-");
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        let gone = key_state(&http::read_response(&mut &raw[..], false).unwrap());
        assert!(!gone.present());
        assert_ne!(s.replica_view(), gone.replica_view());
    }
}
