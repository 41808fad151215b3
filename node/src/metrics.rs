//! Prometheus metrics, kept as plain atomics on the hot path and rendered as the
//! Prometheus text exposition format by [`Metrics::render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// RESP commands we count individually; everything else is `other`.
pub const RESP_COMMANDS: &[&str] = &[
    "get",
    "set",
    "setex",
    "psetex",
    "mget",
    "mset",
    "del",
    "unlink",
    "exists",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "ttl",
    "pttl",
    "type",
    "dbsize",
    "json.get",
    "json.set",
    "json.del",
    "ping",
    "hello",
    "info",
    "command",
    "geocache.ack",
    "other",
];

/// HTTP routes we label requests with.
pub const HTTP_ROUTES: &[&str] = &["keys", "expire", "status", "healthz", "readyz", "metrics", "other"];

/// HTTP status classes.
const HTTP_CLASSES: &[&str] = &["2xx", "3xx", "4xx", "5xx"];

#[derive(Debug)]
pub struct Metrics {
    resp_commands: Vec<AtomicU64>,
    resp_errors: AtomicU64,
    resp_connections_total: AtomicU64,
    resp_connections_open: AtomicU64,
    resp_protocol_errors: AtomicU64,
    http_requests: Vec<AtomicU64>,
    pub log_appended_bytes: AtomicU64,
    pub log_fsyncs: AtomicU64,
    pub log_write_errors: AtomicU64,
    pub compactions: AtomicU64,
    pub recovered_records: AtomicU64,
    pub recovery_millis: AtomicU64,
    pub corrupt_tails: AtomicU64,
    pub clock_skew_refusals: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            resp_commands: (0..RESP_COMMANDS.len()).map(|_| AtomicU64::new(0)).collect(),
            resp_errors: AtomicU64::new(0),
            resp_connections_total: AtomicU64::new(0),
            resp_connections_open: AtomicU64::new(0),
            resp_protocol_errors: AtomicU64::new(0),
            http_requests: (0..HTTP_ROUTES.len() * HTTP_CLASSES.len()).map(|_| AtomicU64::new(0)).collect(),
            log_appended_bytes: AtomicU64::new(0),
            log_fsyncs: AtomicU64::new(0),
            log_write_errors: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            recovered_records: AtomicU64::new(0),
            recovery_millis: AtomicU64::new(0),
            corrupt_tails: AtomicU64::new(0),
            clock_skew_refusals: AtomicU64::new(0),
        }
    }
}

/// Gauges read at render time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub keys: u64,
    pub tombstones: u64,
    pub memory_bytes: u64,
    pub max_memory_bytes: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub uptime_s: u64,
    pub ready: bool,
    pub expired_total: u64,
    pub evicted_total: u64,
    pub tombstones_purged_total: u64,
    pub local_writes_total: u64,
}

impl Metrics {
    /// Counts one RESP command (lowercase name).
    pub fn resp_command(&self, name: &str) {
        let i = RESP_COMMANDS.iter().position(|c| *c == name).unwrap_or(RESP_COMMANDS.len() - 1);
        self.resp_commands[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn resp_error(&self) {
        self.resp_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resp_protocol_error(&self) {
        self.resp_protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resp_connection_opened(&self) {
        self.resp_connections_total.fetch_add(1, Ordering::Relaxed);
        self.resp_connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resp_connection_closed(&self) {
        self.resp_connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one HTTP request by route and status code.
    pub fn http_request(&self, route: &str, status: u16) {
        let r = HTTP_ROUTES.iter().position(|c| *c == route).unwrap_or(HTTP_ROUTES.len() - 1);
        let c = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.http_requests[r * HTTP_CLASSES.len() + c].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        one("geocache_keys", "gauge", "Keys held (tombstones excluded).", g.keys);
        one("geocache_tombstones", "gauge", "Tombstones held for deleted keys.", g.tombstones);
        one("geocache_memory_bytes", "gauge", "Bytes accounted to entries (keys, values, overhead).", g.memory_bytes);
        one(
            "geocache_max_memory_bytes",
            "gauge",
            "The --max-memory limit (0 = none).",
            g.max_memory_bytes.unwrap_or(0),
        );
        one(
            "geocache_resident_memory_bytes",
            "gauge",
            "Resident set size of the process.",
            g.resident_bytes.unwrap_or(0),
        );
        one("geocache_uptime_seconds", "gauge", "Seconds since the node started.", g.uptime_s);
        one("geocache_ready", "gauge", "1 when the node serves traffic.", g.ready as u64);
        one("geocache_expired_keys_total", "counter", "Entries freed because they expired.", g.expired_total);
        one("geocache_evicted_keys_total", "counter", "Entries evicted under --max-memory.", g.evicted_total);
        one(
            "geocache_tombstones_purged_total",
            "counter",
            "Tombstones dropped after their retention.",
            g.tombstones_purged_total,
        );
        one(
            "geocache_local_writes_total",
            "counter",
            "Writes coordinated by this node (its latest sequence number).",
            g.local_writes_total,
        );
        one(
            "geocache_log_appended_bytes_total",
            "counter",
            "Bytes appended to the on-disk log.",
            load(&self.log_appended_bytes),
        );
        one("geocache_log_fsyncs_total", "counter", "fsync calls on the on-disk log.", load(&self.log_fsyncs));
        one(
            "geocache_log_write_errors_total",
            "counter",
            "Failed writes to the on-disk log.",
            load(&self.log_write_errors),
        );
        one(
            "geocache_log_compactions_total",
            "counter",
            "Snapshots written to compact the log.",
            load(&self.compactions),
        );
        one(
            "geocache_recovered_records",
            "gauge",
            "Records replayed from disk at startup.",
            load(&self.recovered_records),
        );
        one(
            "geocache_recovery_milliseconds",
            "gauge",
            "Time spent recovering from disk at startup.",
            load(&self.recovery_millis),
        );
        one(
            "geocache_log_corrupt_tails_total",
            "counter",
            "Torn or corrupt log tails skipped at startup.",
            load(&self.corrupt_tails),
        );
        one(
            "geocache_resp_connections_total",
            "counter",
            "RESP connections accepted.",
            load(&self.resp_connections_total),
        );
        one("geocache_resp_connections", "gauge", "RESP connections open.", load(&self.resp_connections_open));
        one("geocache_resp_errors_total", "counter", "RESP commands answered with an error.", load(&self.resp_errors));
        one(
            "geocache_resp_protocol_errors_total",
            "counter",
            "RESP connections closed for a protocol error.",
            load(&self.resp_protocol_errors),
        );
        let _ = writeln!(
            out,
            "# HELP geocache_resp_commands_total RESP commands processed.\n# TYPE geocache_resp_commands_total counter"
        );
        for (name, v) in RESP_COMMANDS.iter().zip(&self.resp_commands) {
            let _ = writeln!(out, "geocache_resp_commands_total{{command=\"{name}\"}} {}", load(v));
        }
        let _ = writeln!(
            out,
            "# HELP geocache_http_requests_total HTTP requests by route and status class.\n# TYPE geocache_http_requests_total counter"
        );
        for (r, route) in HTTP_ROUTES.iter().enumerate() {
            for (c, class) in HTTP_CLASSES.iter().enumerate() {
                let v = load(&self.http_requests[r * HTTP_CLASSES.len() + c]);
                let _ = writeln!(out, "geocache_http_requests_total{{route=\"{route}\",status=\"{class}\"}} {v}");
            }
        }
        out
    }
}

/// Resident set size of this process, from /proc.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
