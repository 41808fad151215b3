//! The commands of the Redis protocol interface, executed against the node's [`Db`].
//!
//! [`execute`] runs one command and appends its reply to the connection's [`Out`]
//! buffer. Writes are applied at once (later commands of the same pipeline see them)
//! but acknowledged only after the connection waited for the journal position
//! collected in [`Ctx::lsn`] (see `super::connection`).
//!
//! Error replies use Redis' wording, so that clients and people recognise them.
//!
//! This module holds what every command shares — the session and its context, errors,
//! argument parsing, and the one table of commands ([`COMMANDS`]: dispatch, arity and
//! `COMMAND` read it) — and each family is a
//! module of its own: [`server`] (connection and server), [`keyspace`] (keys and string
//! values), [`expiry`], [`scan`] (SCAN, KEYS, glob patterns) and [`json`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::codec::Args;
use super::reply::Out;
use crate::clock;
use crate::db::{DbError, Expiry};
use crate::persist::Lsn;
use crate::state::NodeState;
use crate::store::{Current, Decision, Encoding, Value};

mod expiry;
mod json;
mod keyspace;
mod scan;
mod server;

use expiry::*;
use json::*;
use keyspace::*;
use scan::*;
use server::*;

/// The Redis version we answer to handshakes and `INFO`: the command set and the
/// replies follow Redis 7.2.
pub const REDIS_VERSION: &str = "7.2.0";

/// State shared by the connections of one RESP listener.
#[derive(Debug, Default)]
pub struct Shared {
    next_client_id: AtomicU64,
    /// Connections open.
    pub clients: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Commands executed since start (added once per batch).
    pub commands_total: AtomicU64,
    /// The port we listen on (for `INFO`).
    pub port: u16,
}

impl Shared {
    pub fn new(port: u16) -> Self {
        Shared { port, ..Shared::default() }
    }

    /// A new client id (1, 2, ...).
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The per-connection state commands see and change.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub name: Option<Vec<u8>>,
    pub lib_name: Option<Vec<u8>>,
    pub lib_ver: Option<Vec<u8>>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub created: Instant,
    /// Set by `QUIT`: close once the replies are written.
    pub quit: bool,
    /// Set by `GEOCACHE.ACK`: the level this connection's writes wait for.
    pub ack: crate::replication::AckLevel,
    /// Whether the client may run commands: true when no password is required, else
    /// once `AUTH` or `HELLO ... AUTH` gave an accepted one.
    pub authenticated: bool,
}

impl Session {
    pub fn new(id: u64, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Self {
        Session {
            id,
            name: None,
            lib_name: None,
            lib_ver: None,
            peer,
            local,
            created: Instant::now(),
            quit: false,
            ack: crate::replication::AckLevel::Local,
            authenticated: true,
        }
    }
}

/// What a command runs with.
pub struct Ctx<'a> {
    pub state: &'a NodeState,
    pub shared: &'a Shared,
    pub session: &'a mut Session,
    pub out: &'a mut Out,
    /// The highest journal position written by the commands run with this context.
    pub lsn: Option<Lsn>,
    /// Writes recorded in the journal (with a sequence number, and an [`Lsn`] when
    /// there is a log): their replies wait for durability and the ack level.
    pub journaled: u64,
    /// The highest sequence number of this node's stream written by these commands.
    pub seq: Option<u64>,
}

impl<'a> Ctx<'a> {
    pub fn new(state: &'a NodeState, shared: &'a Shared, session: &'a mut Session, out: &'a mut Out) -> Self {
        Ctx { state, shared, session, out, lsn: None, journaled: 0, seq: None }
    }

    /// Takes the reply of a write and remembers its journal position.
    fn note<R>(&mut self, written: crate::db::Written<R>) -> R {
        if let Some(seq) = written.seq {
            self.seq = Some(self.seq.map_or(seq, |cur| cur.max(seq)));
            if written.lsn.is_none() {
                self.journaled += 1;
            }
        }
        if let Some(lsn) = written.lsn {
            self.lsn = Some(self.lsn.map_or(lsn, |cur| cur.max(lsn)));
            self.journaled += 1;
        }
        written.reply
    }

    /// A key argument: valid UTF-8, not empty, not too long.
    fn key<'k>(&self, arg: &'k [u8]) -> Result<&'k str, CommandError> {
        let key = std::str::from_utf8(arg).map_err(|_| CommandError::new("ERR key must be valid UTF-8"))?;
        self.state.db.check_key(key).map_err(CommandError::db)?;
        Ok(key)
    }
}

/// An error reply: the message starts with the error code (`ERR ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(Cow<'static, str>);

impl CommandError {
    fn new(msg: &'static str) -> Self {
        CommandError(Cow::Borrowed(msg))
    }

    fn owned(msg: String) -> Self {
        CommandError(Cow::Owned(msg))
    }

    fn db(e: DbError) -> Self {
        CommandError::owned(format!("ERR {e}"))
    }

    fn syntax() -> Self {
        CommandError::new("ERR syntax error")
    }

    fn not_integer() -> Self {
        CommandError::new("ERR value is not an integer or out of range")
    }

    fn invalid_expire(command: &str) -> Self {
        CommandError::owned(format!("ERR invalid expire time in '{command}' command"))
    }

    fn arity(command: &str) -> Self {
        CommandError::owned(format!("ERR wrong number of arguments for '{command}' command"))
    }

    fn unknown_subcommand(sub: &[u8], command: &str) -> Self {
        CommandError::owned(format!(
            "ERR unknown subcommand '{}'. Try {command} HELP.",
            String::from_utf8_lossy(truncated(sub, 128))
        ))
    }

    fn root_path_only() -> Self {
        CommandError::new("ERR only the root path ($ or .) is supported")
    }
}

type CommandResult = Result<(), CommandError>;

type Handler = fn(&mut Ctx<'_>, Args<'_>) -> CommandResult;

/// A command: its lowercase name, its arity as Redis counts it (the name included;
/// negative = at least), and its handler.
struct Spec {
    name: &'static str,
    arity: i32,
    run: Handler,
}

/// Every command, the most frequent first (the lookup is a linear scan).
static COMMANDS: &[Spec] = &[
    Spec { name: "get", arity: 2, run: get },
    Spec { name: "set", arity: -3, run: set },
    Spec { name: "mget", arity: -2, run: mget },
    Spec { name: "mset", arity: -3, run: mset },
    Spec { name: "del", arity: -2, run: del },
    Spec { name: "exists", arity: -2, run: exists },
    Spec { name: "ping", arity: -1, run: ping },
    Spec { name: "setex", arity: 4, run: setex },
    Spec { name: "psetex", arity: 4, run: psetex },
    Spec { name: "unlink", arity: -2, run: del },
    Spec { name: "expire", arity: -3, run: expire },
    Spec { name: "pexpire", arity: -3, run: pexpire },
    Spec { name: "expireat", arity: -3, run: expireat },
    Spec { name: "pexpireat", arity: -3, run: pexpireat },
    Spec { name: "persist", arity: 2, run: persist },
    Spec { name: "ttl", arity: 2, run: ttl },
    Spec { name: "pttl", arity: 2, run: pttl },
    Spec { name: "expiretime", arity: 2, run: expiretime },
    Spec { name: "pexpiretime", arity: 2, run: pexpiretime },
    Spec { name: "type", arity: 2, run: type_ },
    Spec { name: "json.get", arity: -2, run: json_get },
    Spec { name: "json.set", arity: -4, run: json_set },
    Spec { name: "json.del", arity: -2, run: json_del },
    Spec { name: "json.forget", arity: -2, run: json_del },
    Spec { name: "json.mget", arity: -3, run: json_mget },
    Spec { name: "json.type", arity: -2, run: json_type },
    Spec { name: "dbsize", arity: 1, run: dbsize },
    Spec { name: "scan", arity: -2, run: scan },
    Spec { name: "keys", arity: 2, run: keys },
    Spec { name: "echo", arity: 2, run: echo },
    Spec { name: "hello", arity: -1, run: hello },
    Spec { name: "select", arity: 2, run: select },
    Spec { name: "auth", arity: -2, run: auth },
    Spec { name: "client", arity: -2, run: client },
    Spec { name: "config", arity: -2, run: config },
    Spec { name: "command", arity: -1, run: command },
    Spec { name: "info", arity: -1, run: info },
    Spec { name: "time", arity: 1, run: time },
    Spec { name: "quit", arity: -1, run: quit },
    Spec { name: "reset", arity: 1, run: reset },
    Spec { name: "geocache.ack", arity: -1, run: geocache_ack },
];

/// `GEOCACHE.ACK [local|region|global]`: the level this connection's writes wait for
/// before they are answered (like `?ack=` over HTTP). Without an argument, the current
/// level. A write that is not confirmed in time is answered with `-ACKTIMEOUT`; it
/// stays applied on this node and keeps replicating.
fn geocache_ack(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    use crate::replication::AckLevel;
    if args.len() > 2 {
        return Err(CommandError::arity("geocache.ack"));
    }
    if args.len() == 1 {
        let name = match ctx.session.ack {
            AckLevel::Local => "local",
            AckLevel::Region => "region",
            AckLevel::Global => "global",
        };
        ctx.out.bulk(name.as_bytes());
        return Ok(());
    }
    let level = match args.get(1).to_ascii_lowercase().as_slice() {
        b"local" => AckLevel::Local,
        b"region" => AckLevel::Region,
        b"global" => AckLevel::Global,
        _ => return Err(CommandError::new("ERR ack level must be local, region or global")),
    };
    ctx.session.ack = level;
    ctx.out.ok();
    Ok(())
}

/// The longest command name we know, to lowercase names on the stack.
const MAX_NAME: usize = 16;

fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    COMMANDS.iter().find(|spec| spec.name.as_bytes() == lower)
}

fn arity_ok(arity: i32, argc: usize) -> bool {
    if arity >= 0 { argc == arity as usize } else { argc >= arity.unsigned_abs() as usize }
}

fn truncated(s: &[u8], max: usize) -> &[u8] {
    &s[..s.len().min(max)]
}

/// Commands a client may run before it authenticated (as in Redis).
fn allowed_before_auth(spec: &Spec) -> bool {
    matches!(spec.name, "auth" | "hello" | "quit" | "reset")
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Runs one command (`args` is not empty) and appends its reply to `ctx.out`.
pub fn execute(ctx: &mut Ctx<'_>, args: Args<'_>) {
    let metrics = ctx.state.db.metrics();
    let errors_before = ctx.out.errors();
    let name = args.get(0);
    let spec = lookup(name);
    if !ctx.session.authenticated && !spec.is_some_and(allowed_before_auth) {
        // Nothing but NOAUTH, whatever the command (known or not) and its arguments.
        metrics.resp_command(spec.map_or("other", |s| s.name));
        if let Some(auth) = &ctx.state.security.auth {
            auth.refused(crate::security::Interface::Resp);
        }
        ctx.out.error(NOAUTH.as_bytes());
        metrics.resp_error();
        return;
    }
    match spec {
        None => {
            metrics.resp_command("other");
            // Redis' wording: the name and up to 128 bytes of arguments.
            let mut msg = b"ERR unknown command '".to_vec();
            msg.extend_from_slice(truncated(name, 128));
            msg.extend_from_slice(b"', with args beginning with: ");
            let mut shown = 0;
            for arg in args.iter().skip(1) {
                if shown >= 128 {
                    break;
                }
                let part = truncated(arg, 128 - shown);
                shown += part.len() + 3;
                msg.push(b'\'');
                msg.extend_from_slice(part);
                msg.extend_from_slice(b"' ");
            }
            ctx.out.error(&msg);
        }
        Some(spec) => {
            metrics.resp_command(spec.name);
            let result = if arity_ok(spec.arity, args.len()) {
                (spec.run)(ctx, args)
            } else {
                Err(CommandError::arity(spec.name))
            };
            if let Err(CommandError(msg)) = result {
                ctx.out.error(msg.as_bytes());
            }
        }
    }
    if ctx.out.errors() != errors_before {
        metrics.resp_error();
    }
}

/// The names of every command (for `COMMAND LIST` / `COMMAND COUNT`).
pub fn command_names() -> impl Iterator<Item = &'static str> {
    COMMANDS.iter().map(|s| s.name)
}

/// Parses a decimal integer as Redis does: an optional minus sign, no leading zeros
/// (except `0` itself), no spaces, no plus sign, within `i64`.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ if digits.len() > 19 => return None,
        _ => {}
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    if negative {
        if v == i64::MIN.unsigned_abs() { Some(i64::MIN) } else { i64::try_from(v).ok().map(|v| -v) }
    } else {
        i64::try_from(v).ok()
    }
}

fn int_arg(arg: &[u8]) -> Result<i64, CommandError> {
    parse_i64(arg).ok_or_else(CommandError::not_integer)
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// The latest expiry accepted (the end of year 9999, in Unix milliseconds). Redis
/// accepts any `i64`; expiries are also shown as RFC 3339 timestamps (over HTTP), which
/// end there.
const MAX_EXPIRY_MS: i64 = 253_402_300_799_999;

/// The current time, in the same milliseconds expiries are kept in.
fn now_ms() -> i64 {
    clock::now_ms().min(i64::MAX as u64) as i64
}

#[cfg(test)]
mod tests;
