//! The commands of the Redis protocol interface, executed against the node's [`Db`].
//!
//! [`execute`] runs one command and appends its reply to the connection's [`Out`]
//! buffer. Writes are applied at once (later commands of the same pipeline see them)
//! but acknowledged only after the connection waited for the journal position
//! collected in [`Ctx::lsn`] (see `super::connection`).
//!
//! Error replies use Redis' wording, so that clients and people recognise them.

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

// ---------------------------------------------------------------------------------
// Connection commands

fn ping(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    match args.len() {
        1 => ctx.out.simple("PONG"),
        2 => ctx.out.bulk(args.get(1)),
        _ => return Err(CommandError::arity("ping")),
    }
    Ok(())
}

fn echo(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ctx.out.bulk(args.get(1));
    Ok(())
}

fn select(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    match int_arg(args.get(1))? {
        0 => {
            ctx.out.ok();
            Ok(())
        }
        _ => Err(CommandError::new("ERR DB index is out of range")),
    }
}

fn quit(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
    ctx.out.ok();
    ctx.session.quit = true;
    Ok(())
}

fn reset(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
    ctx.out.set_resp3(false);
    ctx.session.name = None;
    // Back to the default user, which needs a password when one is required.
    ctx.session.authenticated = !ctx.state.security.auth_required();
    ctx.out.simple("RESET");
    Ok(())
}

fn time(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ctx.out.array(2);
    ctx.out.bulk(now.as_secs().to_string().as_bytes());
    ctx.out.bulk(now.subsec_micros().to_string().as_bytes());
    Ok(())
}

/// Checks credentials and marks the session authenticated when they are accepted.
///
/// With `--auth-file`, the user must be `default` and the password one of the file's.
/// Without it, like Redis' default user without a password, `default` is accepted
/// with any password and every other user refused.
fn authenticate(ctx: &mut Ctx<'_>, user: &[u8], password: &[u8]) -> CommandResult {
    match &ctx.state.security.auth {
        Some(auth) => {
            // The password is checked even for an unknown user, so that the time taken
            // does not tell which users exist.
            let accepted = auth.verify(password, crate::security::Interface::Resp);
            if user == b"default" && accepted {
                ctx.session.authenticated = true;
                Ok(())
            } else {
                if accepted {
                    auth.refused(crate::security::Interface::Resp);
                }
                Err(CommandError::new(WRONGPASS))
            }
        }
        None if user == b"default" => Ok(()),
        None => Err(CommandError::new(WRONGPASS)),
    }
}

fn auth(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    match args.len() {
        2 if ctx.state.security.auth_required() => {
            authenticate(ctx, b"default", args.get(1))?;
            ctx.out.ok();
            Ok(())
        }
        2 => Err(CommandError::new(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        )),
        3 => {
            authenticate(ctx, args.get(1), args.get(2))?;
            ctx.out.ok();
            Ok(())
        }
        _ => Err(CommandError::syntax()),
    }
}

/// Client names and library attributes may not contain spaces or special characters.
fn validate_client_name(name: &[u8]) -> CommandResult {
    if name.iter().all(|&b| (b'!'..=b'~').contains(&b)) {
        Ok(())
    } else {
        Err(CommandError::new("ERR Client names cannot contain spaces, newlines or special characters."))
    }
}

fn hello(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let mut resp3 = ctx.out.resp3();
    let mut name: Option<&[u8]> = None;
    let mut credentials: Option<(&[u8], &[u8])> = None;
    if args.len() >= 2 {
        match parse_i64(args.get(1)) {
            None => return Err(CommandError::new("ERR Protocol version is not an integer or out of range")),
            Some(2) => resp3 = false,
            Some(3) => resp3 = true,
            Some(_) => return Err(CommandError::new("NOPROTO unsupported protocol version")),
        }
        let mut i = 2;
        while i < args.len() {
            let opt = args.get(i);
            if is(opt, "auth") && i + 2 < args.len() {
                credentials = Some((args.get(i + 1), args.get(i + 2)));
                i += 3;
            } else if is(opt, "setname") && i + 1 < args.len() {
                let n = args.get(i + 1);
                validate_client_name(n)?;
                name = Some(n);
                i += 2;
            } else {
                return Err(CommandError::owned(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(truncated(opt, 128))
                )));
            }
        }
    }
    if let Some((user, password)) = credentials {
        authenticate(ctx, user, password)?;
    }
    if !ctx.session.authenticated {
        return Err(CommandError::new(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select \
             the RESP protocol version at the same time",
        ));
    }
    if let Some(n) = name {
        ctx.session.name = (!n.is_empty()).then(|| n.to_vec());
    }
    let out = &mut *ctx.out;
    out.set_resp3(resp3);
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"geocache");
    out.bulk(b"version");
    out.bulk(REDIS_VERSION.as_bytes());
    out.bulk(b"proto");
    out.int(out.protocol());
    out.bulk(b"id");
    out.int(ctx.session.id as i64);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
    Ok(())
}

fn client_info_line(ctx: &Ctx<'_>) -> String {
    let s = &*ctx.session;
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let text = |v: &Option<Vec<u8>>| v.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 \
         user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        s.id,
        addr(s.peer),
        addr(s.local),
        text(&s.name),
        s.created.elapsed().as_secs(),
        ctx.out.protocol(),
        text(&s.lib_name),
        text(&s.lib_ver),
    )
}

fn client(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let sub = args.get(1);
    let argc = args.len();
    let sub_arity = |name: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(CommandError::owned(format!("ERR wrong number of arguments for 'client|{name}' command")))
        }
    };
    if is(sub, "setname") {
        sub_arity("setname", argc == 3)?;
        let name = args.get(2);
        validate_client_name(name)?;
        ctx.session.name = (!name.is_empty()).then(|| name.to_vec());
        ctx.out.ok();
    } else if is(sub, "getname") {
        sub_arity("getname", argc == 2)?;
        match &ctx.session.name {
            Some(n) => ctx.out.bulk(n),
            None => ctx.out.null(),
        }
    } else if is(sub, "id") {
        sub_arity("id", argc == 2)?;
        ctx.out.int(ctx.session.id as i64);
    } else if is(sub, "info") {
        sub_arity("info", argc == 2)?;
        let line = client_info_line(ctx);
        ctx.out.verbatim(b"txt", line.as_bytes());
    } else if is(sub, "setinfo") {
        sub_arity("setinfo", argc == 4)?;
        let (attr, value) = (args.get(2), args.get(3));
        if is(attr, "lib-name") {
            validate_client_name(value).map_err(|_| {
                CommandError::new("ERR lib-name cannot contain spaces, newlines or special characters.")
            })?;
            ctx.session.lib_name = (!value.is_empty()).then(|| value.to_vec());
        } else if is(attr, "lib-ver") {
            validate_client_name(value)
                .map_err(|_| CommandError::new("ERR lib-ver cannot contain spaces, newlines or special characters."))?;
            ctx.session.lib_ver = (!value.is_empty()).then(|| value.to_vec());
        } else {
            return Err(CommandError::owned(format!(
                "ERR Unrecognized option '{}'",
                String::from_utf8_lossy(truncated(attr, 128))
            )));
        }
        ctx.out.ok();
    } else if is(sub, "no-evict") || is(sub, "no-touch") {
        sub_arity(if is(sub, "no-evict") { "no-evict" } else { "no-touch" }, argc == 3)?;
        if !is(args.get(2), "on") && !is(args.get(2), "off") {
            return Err(CommandError::syntax());
        }
        ctx.out.ok();
    } else if is(sub, "help") {
        help(
            ctx.out,
            &[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "    Set client meta attributes.",
                "HELP",
                "    Print this help.",
            ],
        );
    } else {
        return Err(CommandError::unknown_subcommand(sub, "CLIENT"));
    }
    Ok(())
}

fn help(out: &mut Out, lines: &[&str]) {
    out.array(lines.len());
    for line in lines {
        out.simple(line);
    }
}

/// Configuration parameters `CONFIG GET` answers (read-only: the node is configured
/// by its flags).
fn config_params(ctx: &Ctx<'_>) -> Vec<(&'static str, String)> {
    let db = &ctx.state.db;
    vec![
        ("save", String::new()),
        ("appendonly", if db.persist().is_some() { "yes" } else { "no" }.to_string()),
        ("maxmemory", db.store().config().max_memory.unwrap_or(0).to_string()),
        ("maxmemory-policy", "allkeys-lru".to_string()),
        ("databases", "1".to_string()),
        ("timeout", "0".to_string()),
        (
            "proto-max-bulk-len",
            super::codec::ParserLimits::for_values(db.limits().max_key_bytes, db.limits().max_value_bytes)
                .max_bulk
                .to_string(),
        ),
        ("port", ctx.shared.port.to_string()),
    ]
}

fn config(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let sub = args.get(1);
    if is(sub, "get") {
        if args.len() < 3 {
            return Err(CommandError::arity("config|get"));
        }
        let patterns = args.tail(2);
        let matched: Vec<_> = config_params(ctx)
            .into_iter()
            .filter(|(name, _)| patterns.iter().any(|p| glob_match(p, name.as_bytes(), true)))
            .collect();
        ctx.out.map(matched.len());
        for (name, value) in matched {
            ctx.out.bulk(name.as_bytes());
            ctx.out.bulk(value.as_bytes());
        }
        Ok(())
    } else if is(sub, "set") || is(sub, "resetstat") || is(sub, "rewrite") {
        Err(CommandError::owned(format!(
            "ERR CONFIG {} is not supported: the node is configured by its command line flags",
            String::from_utf8_lossy(sub).to_ascii_uppercase()
        )))
    } else if is(sub, "help") {
        help(
            ctx.out,
            &[
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "HELP",
                "    Print this help.",
            ],
        );
        Ok(())
    } else {
        Err(CommandError::unknown_subcommand(sub, "CONFIG"))
    }
}

fn command(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    if args.len() == 1 {
        // Clients only need this to succeed; we do not describe commands.
        ctx.out.array(0);
        return Ok(());
    }
    let sub = args.get(1);
    if is(sub, "count") {
        ctx.out.int(COMMANDS.len() as i64);
    } else if is(sub, "docs") {
        ctx.out.map(0);
    } else if is(sub, "info") {
        let names = args.tail(2);
        ctx.out.array(names.len());
        for _ in names.iter() {
            ctx.out.null_array();
        }
    } else if is(sub, "list") {
        ctx.out.array(COMMANDS.len());
        for name in command_names() {
            ctx.out.bulk(name.as_bytes());
        }
    } else if is(sub, "help") {
        help(
            ctx.out,
            &[
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return an empty array.",
                "COUNT",
                "    Return the number of commands of this server.",
                "LIST",
                "    Return the names of the commands of this server.",
                "HELP",
                "    Print this help.",
            ],
        );
    } else {
        return Err(CommandError::unknown_subcommand(sub, "COMMAND"));
    }
    Ok(())
}

fn info(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    const DEFAULT: &[&str] = &["server", "clients", "memory", "persistence", "stats", "replication", "keyspace"];
    let wanted = |section: &str| {
        args.len() == 1
            || args.iter().skip(1).any(|a| {
                is(a, section)
                    || ((is(a, "default") || is(a, "all") || is(a, "everything")) && DEFAULT.contains(&section))
            })
    };
    let state = ctx.state;
    let store = state.db.store();
    let counters = store.counters();
    let mut s = String::with_capacity(1024);
    let mut section = |name: &str, title: &str, body: &dyn Fn(&mut String)| {
        if wanted(name) {
            if !s.is_empty() {
                s.push_str("\r\n");
            }
            let _ = write!(s, "# {title}\r\n");
            body(&mut s);
        }
    };
    section("server", "Server", &|s| {
        let uptime = state.uptime_s();
        let _ = write!(
            s,
            "redis_version:{REDIS_VERSION}\r\ngeocache_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\n\
             arch_bits:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n\
             node_id:{}\r\nregion:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            usize::BITS,
            std::process::id(),
            ctx.shared.port,
            uptime / 86_400,
            state.info.node_id,
            state.info.region,
        );
    });
    section("clients", "Clients", &|s| {
        let _ = write!(s, "connected_clients:{}\r\nblocked_clients:0\r\n", ctx.shared.clients.load(Ordering::Relaxed));
    });
    section("memory", "Memory", &|s| {
        let used = store.memory_bytes();
        let max = store.config().max_memory.unwrap_or(0);
        let _ = write!(
            s,
            "used_memory:{used}\r\nused_memory_human:{}\r\nused_memory_rss:{}\r\nmaxmemory:{max}\r\n\
             maxmemory_human:{}\r\nmaxmemory_policy:allkeys-lru\r\n",
            human_bytes(used),
            crate::metrics::resident_bytes().unwrap_or(0),
            human_bytes(max),
        );
    });
    section("persistence", "Persistence", &|s| {
        let _ = write!(
            s,
            "loading:{}\r\naof_enabled:{}\r\nrdb_changes_since_last_save:0\r\n",
            u8::from(!state.is_ready()),
            u8::from(state.db.persist().is_some()),
        );
    });
    section("stats", "Stats", &|s| {
        let _ = write!(
            s,
            "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nexpired_keys:{}\r\nevicted_keys:{}\r\n\
             local_writes:{}\r\n",
            ctx.shared.connections_total.load(Ordering::Relaxed),
            ctx.shared.commands_total.load(Ordering::Relaxed),
            counters.expired.load(Ordering::Relaxed),
            counters.evicted.load(Ordering::Relaxed),
            state.db.local_writes(),
        );
    });
    section("replication", "Replication", &|s| {
        s.push_str("role:master\r\nconnected_slaves:0\r\n");
    });
    section("keyspace", "Keyspace", &|s| {
        let keys = store.len();
        if keys > 0 {
            // Keys with an expiry are not counted separately (that would need a scan).
            let _ = write!(s, "db0:keys={keys},expires=0,avg_ttl=0\r\n");
        }
    });
    ctx.out.verbatim(b"txt", s.as_bytes());
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: &[(u64, &str)] = &[(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for &(size, unit) in UNITS {
        if n >= size {
            return format!("{:.2}{unit}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

// ---------------------------------------------------------------------------------
// Keys and values

fn dbsize(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
    ctx.out.int(ctx.state.db.store().len() as i64);
    Ok(())
}

fn get(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let out = &mut *ctx.out;
    ctx.state
        .db
        .read(key, |cur| match cur {
            Some(c) => out.bulk(c.value.bytes),
            None => out.null(),
        })
        .map_err(CommandError::db)
}

/// Which existing state a write requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Always,
    /// Only when the key does not exist.
    Nx,
    /// Only when the key exists.
    Xx,
}

impl Condition {
    fn allows(self, exists: bool) -> bool {
        match self {
            Condition::Always => true,
            Condition::Nx => !exists,
            Condition::Xx => exists,
        }
    }
}

/// The expiry a `SET` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetExpiry {
    /// No option: the node's default TTL.
    Default,
    /// `KEEPTTL`.
    Keep,
    /// `EX`/`PX`/`EXAT`/`PXAT`, resolved to Unix milliseconds.
    At(i64),
}

/// Resolves an expiry argument to Unix milliseconds as Redis' `SET` does: it must be
/// a positive integer, and must not overflow once converted and made absolute.
fn resolve_set_expiry(arg: &[u8], unit_ms: i64, relative: bool, command: &str) -> Result<i64, CommandError> {
    let v = int_arg(arg)?;
    if v <= 0 {
        return Err(CommandError::invalid_expire(command));
    }
    let ms = v.checked_mul(unit_ms).ok_or_else(|| CommandError::invalid_expire(command))?;
    let at = if relative { ms.checked_add(now_ms()) } else { Some(ms) };
    at.filter(|&at| at <= MAX_EXPIRY_MS).ok_or_else(|| CommandError::invalid_expire(command))
}

/// Writes `value` at `key` under `condition` with `expiry`; when `get` the old value
/// (or null) is the reply, else `+OK` (or null when the condition failed). An expiry
/// in the past deletes the key (as Redis 7 does).
fn set_value(
    ctx: &mut Ctx<'_>,
    key: &str,
    value: Value,
    condition: Condition,
    expiry: SetExpiry,
    get: bool,
) -> CommandResult {
    let default = ctx.state.default_expiry();
    let now = now_ms();
    let mark = ctx.out.len();
    let out = &mut *ctx.out;
    let result = ctx.state.db.update(key, |current| {
        let exists = current.is_some();
        if get {
            match &current {
                Some(c) => out.bulk(c.value.bytes),
                None => out.null(),
            }
        }
        if !condition.allows(exists) {
            return Ok(Decision::Keep(false));
        }
        let expires_at = match expiry {
            SetExpiry::Default => default.resolve(None),
            SetExpiry::Keep => Expiry::Keep.resolve(current.as_ref()),
            SetExpiry::At(at) if at <= now => {
                return Ok(if exists {
                    Decision::Write { value: None, expires_at: None, reply: true }
                } else {
                    Decision::Keep(true)
                });
            }
            SetExpiry::At(at) => Some(at as u64),
        };
        Ok(Decision::Write { value: Some(value), expires_at, reply: true })
    });
    match result {
        Ok(written) => {
            let done = ctx.note(written);
            if !get {
                if done { ctx.out.ok() } else { ctx.out.null() }
            }
            Ok(())
        }
        Err(e) => {
            ctx.out.truncate(mark);
            Err(CommandError::db(e))
        }
    }
}

/// A value argument: within the size limit, stored as JSON when it is JSON.
fn value_arg(ctx: &Ctx<'_>, arg: &[u8]) -> Result<Value, CommandError> {
    ctx.state.db.check_value(arg.len()).map_err(CommandError::db)?;
    Ok(Value::from_resp(arg))
}

fn set(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let mut condition = Condition::Always;
    let mut get = false;
    // (argument, unit in ms, relative)
    let mut expire: Option<(&[u8], i64, bool)> = None;
    let mut keep_ttl = false;
    let mut i = 3;
    while i < args.len() {
        let opt = args.get(i);
        let has_expiry = expire.is_some() || keep_ttl;
        if is(opt, "nx") && condition != Condition::Xx {
            condition = Condition::Nx;
        } else if is(opt, "xx") && condition != Condition::Nx {
            condition = Condition::Xx;
        } else if is(opt, "get") {
            get = true;
        } else if is(opt, "keepttl") && !has_expiry {
            keep_ttl = true;
        } else if !has_expiry
            && i + 1 < args.len()
            && (is(opt, "ex") || is(opt, "px") || is(opt, "exat") || is(opt, "pxat"))
        {
            let unit = if is(opt, "ex") || is(opt, "exat") { 1000 } else { 1 };
            let relative = is(opt, "ex") || is(opt, "px");
            expire = Some((args.get(i + 1), unit, relative));
            i += 1;
        } else {
            return Err(CommandError::syntax());
        }
        i += 1;
    }
    let expiry = match expire {
        Some((arg, unit, relative)) => SetExpiry::At(resolve_set_expiry(arg, unit, relative, "set")?),
        None if keep_ttl => SetExpiry::Keep,
        None => SetExpiry::Default,
    };
    let key = ctx.key(args.get(1))?;
    let value = value_arg(ctx, args.get(2))?;
    set_value(ctx, key, value, condition, expiry, get)
}

fn setex_generic(ctx: &mut Ctx<'_>, args: Args<'_>, unit_ms: i64, command: &str) -> CommandResult {
    let at = resolve_set_expiry(args.get(2), unit_ms, true, command)?;
    let key = ctx.key(args.get(1))?;
    let value = value_arg(ctx, args.get(3))?;
    set_value(ctx, key, value, Condition::Always, SetExpiry::At(at), false)
}

fn setex(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    setex_generic(ctx, args, 1000, "setex")
}

fn psetex(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    setex_generic(ctx, args, 1, "psetex")
}

/// Checks every key argument of a multi-key command before any is used.
fn keys_args<'k>(ctx: &Ctx<'_>, args: Args<'k>) -> Result<Vec<&'k str>, CommandError> {
    args.iter().map(|a| ctx.key(a)).collect()
}

fn mget(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let keys = keys_args(ctx, args.tail(1))?;
    let out = &mut *ctx.out;
    out.array(keys.len());
    for key in keys {
        let found = ctx.state.db.read(key, |cur| match cur {
            Some(c) => out.bulk(c.value.bytes),
            None => out.null(),
        });
        if found.is_err() {
            // Keys were checked above; keep the array well-formed regardless.
            out.null();
        }
    }
    Ok(())
}

fn mset(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    if args.len().is_multiple_of(2) {
        return Err(CommandError::arity("mset"));
    }
    let pairs = args.tail(1);
    for (i, arg) in pairs.iter().enumerate() {
        if i % 2 == 0 {
            ctx.key(arg)?;
        } else {
            ctx.state.db.check_value(arg.len()).map_err(CommandError::db)?;
        }
    }
    // All the keys at once (no reader of this node sees half of an MSET), acknowledged
    // together once the journal holds every one.
    let expires_at = ctx.state.default_expiry().resolve(None);
    let mut entries = Vec::with_capacity(pairs.len() / 2);
    for i in (0..pairs.len()).step_by(2) {
        entries.push((ctx.key(pairs.get(i))?, Value::from_resp(pairs.get(i + 1))));
    }
    let written = ctx.state.db.put_many(entries, expires_at).map_err(CommandError::db)?;
    for w in written {
        ctx.note(w);
    }
    ctx.out.ok();
    Ok(())
}

fn del(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let keys = keys_args(ctx, args.tail(1))?;
    let mut deleted = 0;
    for key in keys {
        let written = ctx.state.db.delete(key).map_err(CommandError::db)?;
        if ctx.note(written) {
            deleted += 1;
        }
    }
    ctx.out.int(deleted);
    Ok(())
}

fn exists(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let keys = keys_args(ctx, args.tail(1))?;
    let mut found = 0;
    for key in keys {
        // A key given twice counts twice, as in Redis.
        if ctx.state.db.read(key, |cur| cur.is_some()).map_err(CommandError::db)? {
            found += 1;
        }
    }
    ctx.out.int(found);
    Ok(())
}

fn type_(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let exists = ctx.state.db.read(key, |cur| cur.is_some()).map_err(CommandError::db)?;
    ctx.out.simple(if exists { "string" } else { "none" });
    Ok(())
}

/// The conditions of `EXPIRE key t [NX|XX|GT|LT]`.
#[derive(Debug, Default, Clone, Copy)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

impl ExpireFlags {
    fn parse(args: Args<'_>) -> Result<Self, CommandError> {
        let mut f = ExpireFlags::default();
        for opt in args.iter() {
            if is(opt, "nx") {
                f.nx = true;
            } else if is(opt, "xx") {
                f.xx = true;
            } else if is(opt, "gt") {
                f.gt = true;
            } else if is(opt, "lt") {
                f.lt = true;
            } else {
                return Err(CommandError::owned(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(truncated(opt, 128))
                )));
            }
        }
        if f.nx && (f.xx || f.gt || f.lt) {
            return Err(CommandError::new("ERR NX and XX, GT or LT options at the same time are not compatible"));
        }
        if f.gt && f.lt {
            return Err(CommandError::new("ERR GT and LT options at the same time are not compatible"));
        }
        Ok(f)
    }

    /// Whether the new expiry `when` may replace `current` (`None` = no expiry, which
    /// counts as an infinite TTL for GT and LT, as in Redis).
    fn allow(self, current: Option<u64>, when: i64) -> bool {
        let current = current.map(|c| c.min(i64::MAX as u64) as i64);
        if self.nx && current.is_some() {
            return false;
        }
        if self.xx && current.is_none() {
            return false;
        }
        if self.gt && current.is_none_or(|c| when <= c) {
            return false;
        }
        if self.lt && current.is_some_and(|c| when >= c) {
            return false;
        }
        true
    }
}

/// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`: 1 when the expiry was set, 0 when
/// the key does not exist or a condition failed. An expiry that is not in the future
/// deletes the key.
fn expire_generic(ctx: &mut Ctx<'_>, args: Args<'_>, unit_ms: i64, relative: bool, command: &str) -> CommandResult {
    let flags = ExpireFlags::parse(args.tail(3))?;
    let v = int_arg(args.get(2))?;
    let now = now_ms();
    let when = v
        .checked_mul(unit_ms)
        .and_then(|ms| if relative { ms.checked_add(now) } else { Some(ms) })
        .filter(|&when| when <= MAX_EXPIRY_MS)
        .ok_or_else(|| CommandError::invalid_expire(command))?;
    let key = ctx.key(args.get(1))?;
    let written = ctx
        .state
        .db
        .update(key, |current| {
            let Some(cur) = current else { return Ok(Decision::Keep(0)) };
            if !flags.allow(cur.expires_at, when) {
                return Ok(Decision::Keep(0));
            }
            if when <= now {
                return Ok(Decision::Write { value: None, expires_at: None, reply: 1 });
            }
            Ok(Decision::Write { value: Some(cur.value.to_owned()), expires_at: Some(when as u64), reply: 1 })
        })
        .map_err(CommandError::db)?;
    let reply = ctx.note(written);
    ctx.out.int(reply);
    Ok(())
}

fn expire(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1000, true, "expire")
}

fn pexpire(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1, true, "pexpire")
}

fn expireat(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1000, false, "expireat")
}

fn pexpireat(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1, false, "pexpireat")
}

fn persist(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let written = ctx
        .state
        .db
        .update(key, |current| match current {
            Some(cur) if cur.expires_at.is_some() => {
                Ok(Decision::Write { value: Some(cur.value.to_owned()), expires_at: None, reply: 1 })
            }
            _ => Ok(Decision::Keep(0)),
        })
        .map_err(CommandError::db)?;
    let reply = ctx.note(written);
    ctx.out.int(reply);
    Ok(())
}

/// `TTL`-like replies: -2 when absent, -1 without expiry, else `f(expires_at, now)`.
fn ttl_generic(ctx: &mut Ctx<'_>, args: Args<'_>, f: fn(u64, u64) -> u64) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let now = clock::now_ms();
    let reply = ctx
        .state
        .db
        .read(key, |cur| match cur {
            None => -2,
            Some(Current { expires_at: None, .. }) => -1,
            Some(Current { expires_at: Some(at), .. }) => f(at, now).min(i64::MAX as u64) as i64,
        })
        .map_err(CommandError::db)?;
    ctx.out.int(reply);
    Ok(())
}

fn ttl(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, now| (at.saturating_sub(now) + 500) / 1000)
}

fn pttl(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, now| at.saturating_sub(now))
}

fn expiretime(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, _| (at + 500) / 1000)
}

fn pexpiretime(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, _| at)
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`. The cursor is the index of
/// the next shard to scan; each call scans whole shards until it has `COUNT` keys, so
/// every key present for the whole iteration is returned (exactly once).
fn scan(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let cursor = std::str::from_utf8(args.get(1))
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| CommandError::new("ERR invalid cursor"))?;
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut only_strings = true;
    let mut i = 2;
    while i < args.len() {
        let (opt, value) = (args.get(i), args.get(i + 1));
        if i + 1 >= args.len() {
            return Err(CommandError::syntax());
        }
        if is(opt, "match") {
            pattern = Some(value);
        } else if is(opt, "count") {
            count = match int_arg(value)? {
                n if n < 1 => return Err(CommandError::syntax()),
                n => n as usize,
            };
        } else if is(opt, "type") {
            only_strings = is(value, "string");
        } else {
            return Err(CommandError::syntax());
        }
        i += 2;
    }
    let store = ctx.state.db.store();
    let shards = store.shard_count() as u64;
    let now = clock::now_ms();
    let mut found: Vec<String> = Vec::new();
    let mut next = cursor.min(shards);
    while next < shards && found.len() < count {
        if only_strings {
            store.scan_shard(next as usize, now, |r| {
                if r.value.is_some() && pattern.is_none_or(|p| glob_match(p, r.key.as_bytes(), false)) {
                    found.push(r.key.to_owned());
                }
            });
        }
        next += 1;
    }
    let next = if next >= shards { 0 } else { next };
    ctx.out.array(2);
    ctx.out.bulk(next.to_string().as_bytes());
    ctx.out.array(found.len());
    for key in &found {
        ctx.out.bulk(key.as_bytes());
    }
    Ok(())
}

fn keys(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let pattern = args.get(1);
    let store = ctx.state.db.store();
    let now = clock::now_ms();
    let mut found: Vec<String> = Vec::new();
    for shard in 0..store.shard_count() {
        store.scan_shard(shard, now, |r| {
            if r.value.is_some() && glob_match(pattern, r.key.as_bytes(), false) {
                found.push(r.key.to_owned());
            }
        });
    }
    ctx.out.array(found.len());
    for key in &found {
        ctx.out.bulk(key.as_bytes());
    }
    Ok(())
}

/// Glob-style matching as Redis' `stringmatchlen`: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob_match(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    let eq = |a: u8, b: u8| if nocase { a.eq_ignore_ascii_case(&b) } else { a == b };
    let (mut p, mut i) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern position after it, string position).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if let Some(&pc) = pattern.get(p) {
            let step = match pc {
                b'*' => {
                    while pattern.get(p) == Some(&b'*') {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' => Some(p + 1),
                b'[' => match_class(pattern, p + 1, s[i], nocase),
                b'\\' if p + 1 < pattern.len() => eq(pattern[p + 1], s[i]).then_some(p + 2),
                c => eq(c, s[i]).then_some(p + 1),
            };
            if let Some(next) = step {
                p = next;
                i += 1;
                continue;
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pattern.len()
}

/// Matches `c` against the class starting at `pattern[p]` (just after `[`); returns
/// the pattern position after the class when it matches.
fn match_class(pattern: &[u8], mut p: usize, c: u8, nocase: bool) -> Option<usize> {
    let fold = |b: u8| if nocase { b.to_ascii_lowercase() } else { b };
    let c = fold(c);
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut matched = false;
    loop {
        match pattern.get(p) {
            None => break,
            Some(b']') => {
                p += 1;
                break;
            }
            Some(b'\\') if p + 1 < pattern.len() => {
                matched |= fold(pattern[p + 1]) == c;
                p += 2;
            }
            Some(&lo) if pattern.get(p + 1) == Some(&b'-') && p + 2 < pattern.len() => {
                let (mut a, mut b) = (fold(lo), fold(pattern[p + 2]));
                if a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                matched |= (a..=b).contains(&c);
                p += 3;
            }
            Some(&x) => {
                matched |= fold(x) == c;
                p += 1;
            }
        }
    }
    (matched != negate).then_some(p)
}

// ---------------------------------------------------------------------------------
// JSON documents (whole documents only, as RedisJSON's root path)

/// A JSON path argument: only the root. `true` for `$` (JSONPath: replies wrap the
/// document in an array), `false` for the legacy `.`.
fn root_path(arg: &[u8]) -> Result<bool, CommandError> {
    match arg {
        b"$" => Ok(true),
        b"." => Ok(false),
        _ => Err(CommandError::root_path_only()),
    }
}

fn trim_json(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// RedisJSON's output formatting options.
#[derive(Debug, Default, Clone, Copy)]
struct JsonFormat<'a> {
    indent: &'a [u8],
    newline: &'a [u8],
    space: &'a [u8],
}

impl JsonFormat<'_> {
    fn is_plain(&self) -> bool {
        self.indent.is_empty() && self.newline.is_empty() && self.space.is_empty()
    }

    /// Re-lays out valid JSON `src`: `newline` + `indent` per level between elements,
    /// `space` after colons, no other white space.
    fn write(&self, src: &[u8], out: &mut Vec<u8>) {
        let mut depth = 0usize;
        let mut i = 0;
        let break_line = |out: &mut Vec<u8>, depth: usize| {
            out.extend_from_slice(self.newline);
            for _ in 0..depth {
                out.extend_from_slice(self.indent);
            }
        };
        while let Some(&c) = src.get(i) {
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    let start = i;
                    i += 1;
                    while let Some(&b) = src.get(i) {
                        if b == b'\\' {
                            i += 1;
                        } else if b == b'"' {
                            break;
                        }
                        i += 1;
                    }
                    out.extend_from_slice(&src[start..(i + 1).min(src.len())]);
                }
                b'{' | b'[' => {
                    out.push(c);
                    let close = if c == b'{' { b'}' } else { b']' };
                    let next = src[i + 1..].iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
                    if let Some(n) = next
                        && src[i + 1 + n] == close
                    {
                        out.push(close);
                        i += n + 2;
                        continue;
                    }
                    depth += 1;
                    break_line(out, depth);
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    break_line(out, depth);
                    out.push(c);
                }
                b',' => {
                    out.push(b',');
                    break_line(out, depth);
                }
                b':' => {
                    out.push(b':');
                    out.extend_from_slice(self.space);
                }
                other => out.push(other),
            }
            i += 1;
        }
    }
}

/// Parses `[INDENT s] [NEWLINE s] [SPACE s] [path ...]` of `JSON.GET`.
fn json_get_options<'a>(args: Args<'a>) -> Result<(JsonFormat<'a>, Vec<bool>), CommandError> {
    let mut format = JsonFormat::default();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args.get(i);
        if i + 1 < args.len() && (is(arg, "indent") || is(arg, "newline") || is(arg, "space")) {
            let value = args.get(i + 1);
            if is(arg, "indent") {
                format.indent = value;
            } else if is(arg, "newline") {
                format.newline = value;
            } else {
                format.space = value;
            }
            i += 2;
        } else {
            paths.push(root_path(arg)?);
            i += 1;
        }
    }
    Ok((format, paths))
}

/// The reply of `JSON.GET` for document `doc` and `paths`.
fn json_for_paths(doc: &[u8], paths: &[bool], out: &mut Vec<u8>) {
    let one = |dollar: bool, out: &mut Vec<u8>| {
        if dollar {
            out.push(b'[');
            out.extend_from_slice(trim_json(doc));
            out.push(b']');
        } else {
            out.extend_from_slice(doc);
        }
    };
    match paths {
        [] => out.extend_from_slice(doc),
        [dollar] => one(*dollar, out),
        many => {
            out.push(b'{');
            for (n, &dollar) in many.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(if dollar { b"\"$\":" } else { b"\".\":" });
                one(dollar, out);
            }
            out.push(b'}');
        }
    }
}

fn json_get(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let (format, paths) = json_get_options(args.tail(2))?;
    let key = ctx.key(args.get(1))?;
    let out = &mut *ctx.out;
    ctx.state
        .db
        .read(key, |cur| {
            let Some(cur) = cur else { return out.null() };
            if cur.value.is_binary() {
                return out.error(b"WRONGTYPE the value is binary, not JSON (read it with GET)");
            }
            let doc = cur.value.to_json_bytes();
            if format.is_plain() && matches!(paths.as_slice(), [] | [false]) {
                // The document as stored, byte for byte.
                return out.bulk(&doc);
            }
            let mut reply = Vec::with_capacity(doc.len() + 2);
            json_for_paths(&doc, &paths, &mut reply);
            if format.is_plain() {
                out.bulk(&reply);
            } else {
                let mut pretty = Vec::with_capacity(reply.len() * 2);
                format.write(&reply, &mut pretty);
                out.bulk(&pretty);
            }
        })
        .map_err(CommandError::db)
}

fn json_mget(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let dollar = root_path(args.get(args.len() - 1))?;
    let keys = keys_args(ctx, args.tail(1).prefix(args.len() - 2))?;
    let out = &mut *ctx.out;
    out.array(keys.len());
    let mut reply = Vec::new();
    for key in keys {
        let read = ctx.state.db.read(key, |cur| match cur {
            Some(cur) if cur.value.is_binary() => out.null(),
            Some(cur) => {
                reply.clear();
                json_for_paths(&cur.value.to_json_bytes(), &[dollar], &mut reply);
                out.bulk(&reply);
            }
            None => out.null(),
        });
        if read.is_err() {
            out.null();
        }
    }
    Ok(())
}

fn json_set(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    root_path(args.get(2))?;
    let condition = match args.len() {
        4 => Condition::Always,
        5 if is(args.get(4), "nx") => Condition::Nx,
        5 if is(args.get(4), "xx") => Condition::Xx,
        _ => return Err(CommandError::syntax()),
    };
    let key = ctx.key(args.get(1))?;
    let doc = args.get(3);
    ctx.state.db.check_value(doc.len()).map_err(CommandError::db)?;
    let value = Value::json(doc).map_err(|e| CommandError::owned(format!("ERR {e}")))?;
    let default = ctx.state.default_expiry();
    let written = ctx
        .state
        .db
        .update(key, |current| {
            if !condition.allows(current.is_some()) {
                return Ok(Decision::Keep(false));
            }
            // Replacing a document keeps its expiry; a new one gets the default TTL.
            let expires_at = match &current {
                Some(cur) => cur.expires_at,
                None => default.resolve(None),
            };
            Ok(Decision::Write { value: Some(value), expires_at, reply: true })
        })
        .map_err(CommandError::db)?;
    if ctx.note(written) {
        ctx.out.ok()
    } else {
        ctx.out.null()
    }
    Ok(())
}

fn json_del(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    match args.len() {
        2 => {}
        3 => {
            root_path(args.get(2))?;
        }
        _ => return Err(CommandError::syntax()),
    }
    let key = ctx.key(args.get(1))?;
    let written = ctx.state.db.delete(key).map_err(CommandError::db)?;
    let deleted = ctx.note(written);
    ctx.out.int(deleted as i64);
    Ok(())
}

/// The JSON type name of a document, as RedisJSON names them.
fn json_type_name(encoding: Encoding, bytes: &[u8]) -> &'static str {
    if encoding == Encoding::Raw {
        return "string";
    }
    let doc = trim_json(bytes);
    match doc.first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ if doc.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) => "number",
        _ => "integer",
    }
}

fn json_type(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let dollar = match args.len() {
        2 => false,
        3 => root_path(args.get(2))?,
        _ => return Err(CommandError::syntax()),
    };
    let key = ctx.key(args.get(1))?;
    let name = ctx
        .state
        .db
        .read(key, |cur| cur.map(|c| json_type_name(c.value.encoding, c.value.bytes)))
        .map_err(CommandError::db)?;
    match (name, dollar) {
        (None, false) => ctx.out.null(),
        (None, true) => ctx.out.array(0),
        (Some(name), false) => ctx.out.simple(name),
        (Some(name), true) => {
            ctx.out.array(1);
            ctx.out.bulk(name.as_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
