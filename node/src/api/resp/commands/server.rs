//! Connection and server commands: PING, ECHO, SELECT, QUIT, RESET, TIME, AUTH, HELLO,
//! CLIENT, CONFIG, COMMAND, INFO.

use super::*;

pub(super) fn ping(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    match args.len() {
        1 => ctx.out.simple("PONG"),
        2 => ctx.out.bulk(args.get(1)),
        _ => return Err(CommandError::arity("ping")),
    }
    Ok(())
}

pub(super) fn echo(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ctx.out.bulk(args.get(1));
    Ok(())
}

pub(super) fn select(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    match int_arg(args.get(1))? {
        0 => {
            ctx.out.ok();
            Ok(())
        }
        _ => Err(CommandError::new("ERR DB index is out of range")),
    }
}

pub(super) fn quit(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
    ctx.out.ok();
    ctx.session.quit = true;
    Ok(())
}

pub(super) fn reset(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
    ctx.out.set_resp3(false);
    ctx.session.name = None;
    // Back to the default user, which needs a password when one is required.
    ctx.session.authenticated = !ctx.state.security.auth_required();
    ctx.out.simple("RESET");
    Ok(())
}

pub(super) fn time(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
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
pub(super) fn authenticate(ctx: &mut Ctx<'_>, user: &[u8], password: &[u8]) -> CommandResult {
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

pub(super) fn auth(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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
pub(super) fn validate_client_name(name: &[u8]) -> CommandResult {
    if name.iter().all(|&b| (b'!'..=b'~').contains(&b)) {
        Ok(())
    } else {
        Err(CommandError::new("ERR Client names cannot contain spaces, newlines or special characters."))
    }
}

pub(super) fn hello(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn client_info_line(ctx: &Ctx<'_>) -> String {
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

pub(super) fn client(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn help(out: &mut Out, lines: &[&str]) {
    out.array(lines.len());
    for line in lines {
        out.simple(line);
    }
}

/// Configuration parameters `CONFIG GET` answers (read-only: the node is configured
/// by its flags).
pub(super) fn config_params(ctx: &Ctx<'_>) -> Vec<(&'static str, String)> {
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
            crate::api::resp::codec::ParserLimits::for_values(db.limits().max_key_bytes, db.limits().max_value_bytes)
                .max_bulk
                .to_string(),
        ),
        ("port", ctx.shared.port.to_string()),
    ]
}

pub(super) fn config(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn command(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn info(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: &[(u64, &str)] = &[(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for &(size, unit) in UNITS {
        if n >= size {
            return format!("{:.2}{unit}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}
