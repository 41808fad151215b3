//! The clients: one thread per region that sends seeded random operations to the
//! nodes of its region (reads go anywhere), and records each with what it answered.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::history::{Ack, Kind, Op, Outcome, Ttl, Version};
use super::rng::Rng;
use crate::{http, key_path, now_unix_ms, parse_rfc3339_ms};

/// A node as the clients see it: addresses do not change across restarts.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub region: String,
    pub http: SocketAddr,
}

/// What the clients share with each other and with the nemesis.
pub struct Shared {
    pub started: Instant,
    pub start_unix: u64,
    pub next_id: AtomicUsize,
    pub ops: Mutex<Vec<Op>>,
    /// Nodes the nemesis killed or paused right now (clients mostly avoid them).
    pub down: Mutex<BTreeSet<String>>,
    pub stop: AtomicBool,
    /// Stop once this many operations were sent.
    pub max_ops: usize,
    /// Intervals when the machine was starved (see [`Shared::watch_stalls`]).
    pub stalls: Mutex<Vec<(u64, u64)>>,
}

impl Shared {
    pub fn new(max_ops: usize) -> Shared {
        Shared {
            started: Instant::now(),
            start_unix: now_unix_ms(),
            next_id: AtomicUsize::new(1),
            ops: Mutex::new(Vec::new()),
            down: Mutex::new(BTreeSet::new()),
            stop: AtomicBool::new(false),
            max_ops,
            stalls: Mutex::new(Vec::new()),
        }
    }

    /// Until `stop`: sleeps 50 ms at a time and records every wake-up later than
    /// 500 ms as a stall (the machine was starved; nodes' heartbeats may be late too).
    pub fn watch_stalls(&self) {
        let mut last = self.now();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.now();
            if now - last > 500
                && let Ok(mut s) = self.stalls.lock()
            {
                s.push((last, now));
            }
            last = now;
        }
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_down(&self, id: &str) -> bool {
        self.down.lock().map(|d| d.contains(id)).unwrap_or(false)
    }

    fn record(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }
}

/// Settings of the clients.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub keys: usize,
    /// `--ack-timeout` of the nodes: writes and token reads may wait that long.
    pub ack_timeout: Duration,
    /// Pause between two operations of one client, in ms (`lo..hi`).
    pub think_ms: (u64, u64),
}

/// One request to send.
struct Request<'a> {
    kind: Kind,
    key: String,
    ack: Ack,
    ttl: Ttl,
    body: Option<String>,
    after: Option<(usize, &'a str)>,
}

/// A client: sends to the nodes of `region`, reads anywhere.
pub struct Client {
    pub index: usize,
    pub region: String,
    pub targets: Vec<Target>,
    pub rng: Rng,
    pub settings: ClientSettings,
    pub shared: Arc<Shared>,
}

impl Client {
    /// Runs until told to stop or until the run's operation budget is spent.
    pub fn run(mut self) {
        let mut last_write: Option<(usize, String, String)> = None;
        let mut n = 0u64;
        while !self.shared.stop.load(Ordering::Relaxed) {
            if self.shared.next_id.load(Ordering::Relaxed) > self.shared.max_ops {
                break;
            }
            n += 1;
            let key = format!("k{:02}", self.rng.below(self.settings.keys as u64));
            let kind = self.rng.weighted(&[
                (Kind::Put, 30),
                (Kind::Patch, 12),
                (Kind::Delete, 12),
                (Kind::Expire, 8),
                (Kind::Get, 12),
                (Kind::GetAfter, if last_write.is_some() { 18 } else { 0 }),
            ]);
            match kind {
                Kind::Get => {
                    let node = self.pick_any();
                    self.send(&node, Request { kind, key, ack: Ack::Local, ttl: Ttl::Unset, body: None, after: None });
                }
                Kind::GetAfter => {
                    let Some((after, key, token)) = last_write.clone() else { continue };
                    let node = self.pick_any();
                    let req = Request {
                        kind,
                        key,
                        ack: Ack::Local,
                        ttl: Ttl::Unset,
                        body: None,
                        after: Some((after, &token)),
                    };
                    self.send(&node, req);
                }
                _ => {
                    let ack = self.rng.weighted(&[(Ack::Local, 45), (Ack::Region, 20), (Ack::Global, 35)]);
                    let short = self.rng.range(500, 4000);
                    let ttl = match kind {
                        Kind::Expire => self.rng.weighted(&[
                            (Ttl::Now, 30),
                            (Ttl::Ms(short), 40),
                            (Ttl::Clear, 15),
                            (Ttl::Ms(60_000), 15),
                        ]),
                        Kind::Delete => Ttl::Unset,
                        _ => self.rng.weighted(&[(Ttl::Unset, 50), (Ttl::Ms(short), 35), (Ttl::Ms(120_000), 15)]),
                    };
                    let id_hint = self.index;
                    let body = match kind {
                        Kind::Put => Some(format!("{{\"op\":OPID,\"c\":{id_hint},\"n\":{n}}}")),
                        Kind::Patch if self.rng.percent(20) => Some("{\"op\":OPID,\"c\":null}".to_string()),
                        Kind::Patch => Some(format!("{{\"op\":OPID,\"p{id_hint}\":{n}}}")),
                        _ => None,
                    };
                    let node = self.pick_home();
                    let op = self.send(&node, Request { kind, key, ack, ttl, body, after: None });
                    if op.acknowledged()
                        && let Some(t) = op.token()
                    {
                        last_write = Some((op.id, op.key.clone(), t.to_string()));
                    }
                    if op.acknowledged() && ack != Ack::Local {
                        self.probe(&op);
                    }
                }
            }
            let (lo, hi) = self.settings.think_ms;
            std::thread::sleep(Duration::from_millis(self.rng.range(lo, hi)));
        }
    }

    /// A node of this client's region, mostly one that is not down.
    fn pick_home(&mut self) -> Target {
        let home: Vec<Target> = self.targets.iter().filter(|t| t.region == self.region).cloned().collect();
        self.pick_from(home)
    }

    /// Any node, mostly one that is not down.
    fn pick_any(&mut self) -> Target {
        let all = self.targets.clone();
        self.pick_from(all)
    }

    fn pick_from(&mut self, candidates: Vec<Target>) -> Target {
        let up: Vec<Target> = candidates.iter().filter(|t| !self.shared.is_down(&t.id)).cloned().collect();
        if !up.is_empty() && self.rng.percent(90) {
            self.rng.pick(&up).clone()
        } else {
            self.rng.pick(&candidates).clone()
        }
    }

    /// Reads the key right after an `ack=region|global` acknowledgement on every node
    /// that may be bound to have confirmed it (the checker decides which were).
    fn probe(&mut self, w: &Op) {
        let targets: Vec<Target> = self
            .targets
            .iter()
            .filter(|t| t.id != w.node && (w.ack == Ack::Global) != (t.region == w.region))
            .filter(|t| !self.shared.is_down(&t.id))
            .cloned()
            .collect();
        for t in targets {
            let req = Request {
                kind: Kind::Probe,
                key: w.key.clone(),
                ack: Ack::Local,
                ttl: Ttl::Unset,
                body: None,
                after: None,
            };
            let mut op = self.execute(&t, req, Duration::from_millis(1500));
            op.after = Some(w.id);
            self.shared.record(op);
        }
    }

    fn send(&mut self, node: &Target, req: Request<'_>) -> Op {
        let timeout = match req.kind {
            Kind::Get | Kind::Probe => Duration::from_secs(2),
            _ => self.settings.ack_timeout + Duration::from_secs(2),
        };
        let op = self.execute(node, req, timeout);
        self.shared.record(op.clone());
        op
    }

    fn execute(&self, node: &Target, req: Request<'_>, timeout: Duration) -> Op {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let body = req.body.map(|b| b.replace("OPID", &id.to_string()));
        let mut query = Vec::new();
        if req.kind.is_write() && req.ack != Ack::Local {
            query.push(format!("ack={}", req.ack.as_str()));
        }
        match req.ttl {
            Ttl::Unset => {}
            Ttl::Ms(ms) => query.push(format!("ttl={ms}ms")),
            Ttl::Now => query.push("ttl=0".into()),
            Ttl::Clear => query.push("ttl=none".into()),
        }
        let mut target = key_path(&req.key);
        if req.kind == Kind::Expire {
            target.push_str("/expire");
        }
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query.join("&"));
        }
        let method = match req.kind {
            Kind::Put => "PUT",
            Kind::Patch => "PATCH",
            Kind::Delete => "DELETE",
            Kind::Expire => "POST",
            Kind::Get | Kind::GetAfter | Kind::Probe => "GET",
        };
        let mut headers: Vec<(&str, &str)> = Vec::new();
        match req.kind {
            Kind::Put => headers.push(("Content-Type", "application/json")),
            Kind::Patch => headers.push(("Content-Type", "application/merge-patch+json")),
            _ => {}
        }
        if let Some((_, token)) = req.after {
            headers.push(("X-Geocache-After", token));
        }
        let start = self.shared.now();
        let start_unix = now_unix_ms();
        let result =
            http::request(node.http, method, &target, &headers, body.as_deref().unwrap_or("").as_bytes(), timeout);
        let end_unix = now_unix_ms();
        let end = self.shared.now();
        let outcome = match result {
            Ok(r) => outcome_of(req.kind, &r),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Outcome::Refused { error: e.to_string() },
            Err(e) => Outcome::Unknown { error: e.to_string() },
        };
        Op {
            id,
            client: self.index,
            node: node.id.clone(),
            region: node.region.clone(),
            kind: req.kind,
            key: req.key,
            ack: req.ack,
            ttl: req.ttl,
            body,
            after: req.after.map(|(a, _)| a),
            start,
            end,
            start_unix,
            end_unix,
            outcome,
        }
    }
}

/// What an HTTP answer means for an operation of `kind`.
pub fn outcome_of(kind: Kind, r: &http::HttpResponse) -> Outcome {
    if r.status == 504 {
        let code = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| r.text());
        return Outcome::Timeout { code };
    }
    let token = r.header("x-geocache-token").map(str::to_string);
    match (kind, r.status) {
        (Kind::Put | Kind::Patch | Kind::Expire, 200 | 201) => {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
            Outcome::Done {
                status: r.status,
                version: body["version"].as_str().and_then(Version::parse),
                expires_at: body["expires_at"].as_str().and_then(parse_rfc3339_ms),
                token: body["token"].as_str().map(str::to_string).or(token),
                body: None,
            }
        }
        (Kind::Delete, 204) => Outcome::Done {
            status: 204,
            // A version, should a future node return one with the delete.
            version: r.header("etag").and_then(Version::parse),
            expires_at: None,
            token,
            body: None,
        },
        (Kind::Get | Kind::GetAfter | Kind::Probe, 200) => Outcome::Done {
            status: 200,
            version: r.header("etag").and_then(Version::parse),
            expires_at: r.header("x-geocache-expires-at").and_then(parse_rfc3339_ms),
            token: None,
            body: Some(r.text()),
        },
        (_, 404) => Outcome::Done { status: 404, version: None, expires_at: None, token: None, body: None },
        (_, status) => Outcome::Done { status, version: None, expires_at: None, token: None, body: Some(r.text()) },
    }
}
