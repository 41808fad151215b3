//! Command-line flags (each also settable as a `GEOCACHE_<FLAG>` environment variable)
//! and their validation into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use std::time::Duration;

use crate::duration::{parse_size, parse_ttl_ms};
use crate::membership::validate_addr;
use crate::persist::FsyncPolicy;
use crate::replication::ReplicationConfig;
use crate::security::{PeerTlsFiles, SecurityConfig};

/// Flags of `geocache-node`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "geocache-node",
    version,
    about = "GeoCache node: a geo-distributed cache of JSON documents",
    args_conflicts_with_subcommands = true
)]
pub struct Flags {
    /// Subcommands; without one, the node runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Unique id of this node in the fleet (default: the host name).
    #[arg(long, env = "GEOCACHE_NODE_ID")]
    pub node_id: Option<String>,
    /// Region this node serves.
    #[arg(long, env = "GEOCACHE_REGION", default_value = "local")]
    pub region: String,
    /// Address of the HTTP API.
    #[arg(long, env = "GEOCACHE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Address of the Redis-protocol listener, or `off`.
    #[arg(long, env = "GEOCACHE_RESP_ADDR", default_value = "127.0.0.1:6379")]
    pub resp_addr: String,
    /// Address of the replication listener.
    #[arg(long, env = "GEOCACHE_PEER_ADDR", default_value = "127.0.0.1:7946")]
    pub peer_addr: SocketAddr,
    /// Address other nodes use to reach this node's peer listener (default: --peer-addr).
    #[arg(long, env = "GEOCACHE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Seed peers, `host:port,...`; `host:port@region` names the peer's region, so that
    /// `ack=region|global` count it in the right place before it is reached.
    #[arg(long, env = "GEOCACHE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// File listing peers (written by the operator; reloaded on change).
    #[arg(long, env = "GEOCACHE_PEERS_FILE")]
    pub peers_file: Option<PathBuf>,
    /// Directory of the append-only log and snapshots (absent: memory only).
    #[arg(long, env = "GEOCACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When to fsync the log: `every-second` (default) or `always` (before every acknowledgement).
    #[arg(long, env = "GEOCACHE_FSYNC", value_enum, default_value_t = Fsync::EverySecond)]
    pub fsync: Fsync,
    /// Memory for entries before cold ones are evicted, e.g. `512mb` (default: no limit).
    #[arg(long, env = "GEOCACHE_MAX_MEMORY")]
    pub max_memory: Option<String>,
    /// TTL of writes that do not give one, e.g. `1h` (default: none).
    #[arg(long, env = "GEOCACHE_DEFAULT_TTL")]
    pub default_ttl: Option<String>,
    /// Largest key in bytes.
    #[arg(long, env = "GEOCACHE_MAX_KEY_BYTES", default_value_t = 1024)]
    pub max_key_bytes: usize,
    /// Largest value in bytes, e.g. `1mb`.
    #[arg(long, env = "GEOCACHE_MAX_VALUE_BYTES", default_value = "1mb")]
    pub max_value_bytes: String,
    /// How long a delete's tombstone is kept, e.g. `24h`.
    #[arg(long, env = "GEOCACHE_TOMBSTONE_RETENTION", default_value = "1h")]
    pub tombstone_retention: String,
    /// Compact the log once it exceeds this size and the last snapshot's, e.g. `64mb`.
    #[arg(long, env = "GEOCACHE_COMPACT_MIN", default_value = "64mb")]
    pub compact_min: String,
    /// A peer silent this long is marked down, e.g. `3s`.
    #[arg(long, env = "GEOCACHE_PEER_TIMEOUT", default_value = "3s")]
    pub peer_timeout: String,
    /// A peer learned by gossip and silent this long is dropped from the peer table.
    #[arg(long, env = "GEOCACHE_PEER_DROP_AFTER", default_value = "5m")]
    pub peer_drop_after: String,
    /// Bytes of recent writes kept for peers that come back after a break.
    #[arg(long, env = "GEOCACHE_BACKLOG_SIZE", default_value = "64mb")]
    pub backlog_size: String,
    /// How long `ack=region|global` writes and read-your-writes reads wait.
    #[arg(long, env = "GEOCACHE_ACK_TIMEOUT", default_value = "5s")]
    pub ack_timeout: String,
    /// Peers whose clocks are further ahead than this are reported, and their
    /// timestamps not merged into ours.
    #[arg(long, env = "GEOCACHE_MAX_CLOCK_SKEW", default_value = "500ms")]
    pub max_clock_skew: String,
    /// Certificate for mutual TLS between nodes.
    #[arg(long, env = "GEOCACHE_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// Private key for mutual TLS between nodes.
    #[arg(long, env = "GEOCACHE_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// CA that peer certificates must chain to.
    #[arg(long, env = "GEOCACHE_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Certificate for TLS on the HTTP and Redis ports.
    #[arg(long, env = "GEOCACHE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key for TLS on the HTTP and Redis ports.
    #[arg(long, env = "GEOCACHE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// File of accepted client passwords, one per line (`#` comments and blank lines
    /// ignored; reloaded on change). Clients then authenticate with Redis `AUTH` /
    /// `HELLO ... AUTH` or HTTP `Authorization: Bearer <password>`.
    #[arg(long, env = "GEOCACHE_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// With --auth-file, `/metrics` needs the password too (by default it is open, like
    /// `/healthz` and `/readyz`).
    #[arg(long, env = "GEOCACHE_METRICS_AUTH")]
    pub metrics_auth: bool,
    /// Log format.
    #[arg(long, env = "GEOCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Subcommands of `geocache-node`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Start a multi-region fleet on loopback addresses, with simulated WAN delay between regions.
    Fleet(crate::fleet::FleetArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    EverySecond,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub region: String,
    pub http_addr: SocketAddr,
    pub resp_addr: Option<SocketAddr>,
    pub peer_addr: SocketAddr,
    pub replication: ReplicationConfig,
    pub backlog_bytes: usize,
    pub data_dir: Option<PathBuf>,
    pub fsync: FsyncPolicy,
    pub max_memory: Option<u64>,
    pub default_ttl_ms: Option<u64>,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub tombstone_retention_ms: u64,
    pub compact_min_bytes: u64,
    pub log_format: LogFormat,
    pub security: SecurityConfig,
}

/// A flag with a value we cannot use.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn err(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { flag, message: message.into() }
}

/// Node ids and region names appear in peer lists, DNS names and metrics: keep them
/// to letters, digits, `-`, `_` and `.`.
fn check_name(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 63 {
        return Err(err(flag, format!("{value:?} must be 1 to 63 characters")));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(err(flag, format!("{value:?} may only contain letters, digits, '-', '_' and '.'")));
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_string())
}

impl Flags {
    /// Validates the flags into a [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let security = self.security()?;
        let node_id = self.node_id.unwrap_or_else(hostname);
        check_name("node-id", &node_id)?;
        check_name("region", &self.region)?;
        let resp_addr = match self.resp_addr.trim() {
            "off" => None,
            addr => Some(addr.parse().map_err(|e| err("resp-addr", format!("{addr:?} is not host:port or off: {e}")))?),
        };
        let advertise = match self.advertise_addr {
            Some(a) => {
                validate_addr(&a).map_err(|m| err("advertise-addr", m))?;
                a
            }
            None if self.peer_addr.ip().is_unspecified() => format!("{}:{}", hostname(), self.peer_addr.port()),
            None => self.peer_addr.to_string(),
        };
        let mut seeds = Vec::new();
        for p in self.peers.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let (addr, region) = match p.split_once('@') {
                Some((addr, region)) => {
                    check_name("peers", region)?;
                    (addr, Some(region.to_string()))
                }
                None => (p, None),
            };
            validate_addr(addr).map_err(|m| err("peers", m))?;
            seeds.push((addr.to_string(), region));
        }
        let ms = |flag: &'static str, v: &str| parse_ttl_ms(v).map_err(|m| err(flag, m));
        let peer_timeout = ms("peer-timeout", &self.peer_timeout)?;
        if peer_timeout < 100 {
            return Err(err("peer-timeout", "must be at least 100ms"));
        }
        let replication = ReplicationConfig {
            advertise,
            seeds,
            peers_file: self.peers_file,
            peer_timeout: Duration::from_millis(peer_timeout),
            drop_after: Duration::from_millis(ms("peer-drop-after", &self.peer_drop_after)?),
            ack_timeout: Duration::from_millis(ms("ack-timeout", &self.ack_timeout)?),
            max_skew_ms: ms("max-clock-skew", &self.max_clock_skew)?,
        };
        let backlog_bytes = parse_size(&self.backlog_size).map_err(|m| err("backlog-size", m))?;
        if backlog_bytes == 0 {
            return Err(err("backlog-size", "must be greater than 0"));
        }
        let max_memory = self.max_memory.as_deref().map(parse_size).transpose().map_err(|m| err("max-memory", m))?;
        if max_memory == Some(0) {
            return Err(err("max-memory", "must be greater than 0"));
        }
        let default_ttl_ms =
            self.default_ttl.as_deref().map(parse_ttl_ms).transpose().map_err(|m| err("default-ttl", m))?;
        if default_ttl_ms == Some(0) {
            return Err(err("default-ttl", "must be greater than 0"));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > u16::MAX as usize {
            return Err(err("max-key-bytes", format!("must be between 1 and {}", u16::MAX)));
        }
        let max_value_bytes = parse_size(&self.max_value_bytes).map_err(|m| err("max-value-bytes", m))?;
        if max_value_bytes == 0 || max_value_bytes > 512 << 20 {
            return Err(err("max-value-bytes", "must be between 1 byte and 512mb"));
        }
        let tombstone_retention_ms =
            parse_ttl_ms(&self.tombstone_retention).map_err(|m| err("tombstone-retention", m))?;
        let compact_min_bytes = parse_size(&self.compact_min).map_err(|m| err("compact-min", m))?;
        Ok(Config {
            node_id,
            region: self.region,
            http_addr: self.http_addr,
            resp_addr,
            peer_addr: self.peer_addr,
            replication,
            backlog_bytes: backlog_bytes as usize,
            data_dir: self.data_dir,
            fsync: match self.fsync {
                Fsync::EverySecond => FsyncPolicy::EverySecond,
                Fsync::Always => FsyncPolicy::Always,
            },
            max_memory,
            default_ttl_ms,
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: max_value_bytes as usize,
            tombstone_retention_ms,
            compact_min_bytes,
            log_format: self.log_format,
            security,
        })
    }

    /// The security flags: each file flag needs its partners.
    fn security(&self) -> Result<SecurityConfig, ConfigError> {
        let client_tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) => return Err(err("tls-cert", "needs --tls-key too")),
            (None, Some(_)) => return Err(err("tls-key", "needs --tls-cert too")),
        };
        let peer_tls = match (&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(PeerTlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            (None, None, None) => None,
            (cert, key, _) => {
                let flag = if cert.is_none() {
                    "peer-tls-cert"
                } else if key.is_none() {
                    "peer-tls-key"
                } else {
                    "peer-tls-ca"
                };
                return Err(err(
                    flag,
                    "mutual tls between nodes needs --peer-tls-cert, --peer-tls-key and --peer-tls-ca",
                ));
            }
        };
        if self.metrics_auth && self.auth_file.is_none() {
            return Err(err("metrics-auth", "needs --auth-file"));
        }
        Ok(SecurityConfig { auth_file: self.auth_file.clone(), metrics_auth: self.metrics_auth, client_tls, peer_tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["geocache-node", "--node-id", "n1"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).map_err(|e| err("parse", e.to_string()))?.validate()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.resp_addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:6379"));
        assert_eq!(c.peer_addr.to_string(), "127.0.0.1:7946");
        assert_eq!(c.data_dir, None);
        assert_eq!(c.fsync, FsyncPolicy::EverySecond);
        assert_eq!(c.max_memory, None);
        assert_eq!(c.max_key_bytes, 1024);
        assert_eq!(c.max_value_bytes, 1 << 20);
    }

    #[test]
    fn peers_and_replication_timings_are_parsed() {
        let c = parse(&[
            "--peers",
            "a:1, b:2",
            "--peer-timeout",
            "2s",
            "--ack-timeout",
            "750ms",
            "--advertise-addr",
            "n1:7946",
        ])
        .unwrap();
        assert_eq!(c.replication.seeds, vec![("a:1".to_string(), None), ("b:2".to_string(), None)]);
        let hinted = parse(&["--peers", "a:1@us,b:2"]).unwrap();
        assert_eq!(
            hinted.replication.seeds,
            vec![("a:1".to_string(), Some("us".to_string())), ("b:2".to_string(), None)]
        );
        assert_eq!(c.replication.peer_timeout, Duration::from_secs(2));
        assert_eq!(c.replication.ack_timeout, Duration::from_millis(750));
        assert_eq!(c.replication.advertise, "n1:7946");
        assert_eq!(c.backlog_bytes, 64 << 20);
    }

    #[test]
    fn security_files_are_taken_as_given_and_loaded_at_start() {
        let c = parse(&[
            "--auth-file",
            "/run/pw",
            "--metrics-auth",
            "--tls-cert",
            "/t/c",
            "--tls-key",
            "/t/k",
            "--peer-tls-cert",
            "/p/c",
            "--peer-tls-key",
            "/p/k",
            "--peer-tls-ca",
            "/p/ca",
        ])
        .unwrap();
        assert_eq!(c.security.auth_file, Some(PathBuf::from("/run/pw")));
        assert!(c.security.metrics_auth);
        assert_eq!(c.security.client_tls, Some((PathBuf::from("/t/c"), PathBuf::from("/t/k"))));
        assert_eq!(c.security.peer_tls.map(|p| p.ca), Some(PathBuf::from("/p/ca")));
        assert_eq!(parse(&[]).unwrap().security, SecurityConfig::default());
    }

    #[test]
    fn the_redis_port_can_be_turned_off() {
        assert_eq!(parse(&["--resp-addr", "off"]).unwrap().resp_addr, None);
    }

    #[test]
    fn sizes_and_ttls_are_parsed() {
        let c = parse(&["--max-memory", "64mb", "--default-ttl", "1h", "--fsync", "always"]).unwrap();
        assert_eq!(c.max_memory, Some(64 << 20));
        assert_eq!(c.default_ttl_ms, Some(3_600_000));
        assert_eq!(c.fsync, FsyncPolicy::Always);
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--max-memory", "lots"][..], "max-memory"),
            (&["--default-ttl", "5x"][..], "default-ttl"),
            (&["--region", "eu west"][..], "region"),
            (&["--resp-addr", "nowhere"][..], "resp-addr"),
            (&["--max-key-bytes", "0"][..], "max-key-bytes"),
            (&["--peers", "10.0.0.1"][..], "peers"),
            (&["--peers", "10.0.0.1:7946@eu west"][..], "peers"),
            (&["--peers", "10.0.0.1:7946@"][..], "peers"),
            (&["--peer-timeout", "soon"][..], "peer-timeout"),
            (&["--backlog-size", "0"][..], "backlog-size"),
            (&["--tls-cert", "/x"][..], "tls-cert"),
            (&["--tls-key", "/x"][..], "tls-key"),
            (&["--peer-tls-cert", "/c", "--peer-tls-key", "/k"][..], "peer-tls-ca"),
            (&["--peer-tls-ca", "/a"][..], "peer-tls-cert"),
            (&["--metrics-auth"][..], "metrics-auth"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.flag, flag, "{args:?}: {e}");
        }
    }
}
