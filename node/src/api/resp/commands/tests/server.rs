//! Key and value limits, dispatch, connection and server commands, authentication.

use super::*;

#[test]
fn keys_must_be_valid_utf8_not_empty_and_not_too_long() {
    let mut h = Harness::with(None, Limits { max_key_bytes: 8, max_value_bytes: 16 });
    assert_eq!(h.run_bytes(&[b"SET", b"\xff\xfe", b"v"]), b"-ERR key must be valid UTF-8\r\n");
    assert_eq!(h.run(&["GET", ""]), "-ERR key must not be empty\r\n");
    assert_eq!(h.run(&["SET", "123456789", "v"]), "-ERR key is 9 bytes, the limit is 8\r\n");
    assert_eq!(h.run(&["MGET", "ok", "123456789"]), "-ERR key is 9 bytes, the limit is 8\r\n");
    assert_eq!(h.run(&["SET", "12345678", "v"]), OK);
}

#[test]
fn values_above_the_limit_are_refused() {
    let mut h = Harness::with(None, Limits { max_key_bytes: 8, max_value_bytes: 16 });
    let big = "x".repeat(17);
    assert_eq!(h.run(&["SET", "k", &big]), "-ERR value is 17 bytes, the limit is 16\r\n");
    assert_eq!(h.run(&["MSET", "a", "1", "k", &big]), "-ERR value is 17 bytes, the limit is 16\r\n");
    assert_eq!(
        h.run(&["JSON.SET", "k", "$", &format!("\"{}\"", "y".repeat(15))]),
        "-ERR value is 17 bytes, the limit is 16\r\n"
    );
    assert_eq!(h.run(&["DBSIZE"]), ":0\r\n");
    assert_eq!(h.run(&["SET", "k", &"x".repeat(16)]), OK);
}

#[test]
fn an_unknown_command_is_refused_with_the_redis_wording() {
    let mut h = Harness::new();
    assert_eq!(
        h.run(&["FLUSHALL", "ASYNC", "now"]),
        "-ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' 'now' \r\n"
    );
    assert_eq!(h.run(&["xyz"]), "-ERR unknown command 'xyz', with args beginning with: \r\n");
    let long = "a".repeat(300);
    let reply = h.run(&["nope", &long, "b"]);
    assert!(reply.len() < 300, "{reply}");
    assert!(h.metric("geocache_resp_commands_total{command=\"other\"}").ends_with(" 3"));
    assert!(h.metric("geocache_resp_errors_total").ends_with(" 3"));
}

#[test]
fn a_wrong_number_of_arguments_is_refused_with_the_redis_wording() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["GET"]), "-ERR wrong number of arguments for 'get' command\r\n");
    assert_eq!(h.run(&["GET", "a", "b"]), "-ERR wrong number of arguments for 'get' command\r\n");
    assert_eq!(h.run(&["set", "a"]), "-ERR wrong number of arguments for 'set' command\r\n");
    assert_eq!(h.run(&["PING", "a", "b"]), "-ERR wrong number of arguments for 'ping' command\r\n");
    assert_eq!(h.run(&["JSON.SET", "a", "$"]), "-ERR wrong number of arguments for 'json.set' command\r\n");
}

#[test]
fn command_names_are_case_insensitive_and_counted_by_lowercase_name() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["sEt", "k", "v"]), OK);
    assert_eq!(h.run(&["get", "k"]), bulk("v"));
    assert_eq!(h.run(&["Json.Get", "k"]), bulk("\"v\""));
    assert!(h.metric("geocache_resp_commands_total{command=\"set\"}").ends_with(" 1"));
    assert!(h.metric("geocache_resp_commands_total{command=\"json.get\"}").ends_with(" 1"));
    assert!(h.metric("geocache_resp_errors_total").ends_with(" 0"));
}

#[test]
fn ping_echo_and_select_answer_like_redis() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["PING"]), "+PONG\r\n");
    assert_eq!(h.run(&["PING", "hi"]), bulk("hi"));
    assert_eq!(h.run(&["ECHO", "x y"]), bulk("x y"));
    assert_eq!(h.run(&["SELECT", "0"]), OK);
    assert_eq!(h.run(&["SELECT", "1"]), "-ERR DB index is out of range\r\n");
    assert_eq!(h.run(&["SELECT", "zero"]), "-ERR value is not an integer or out of range\r\n");
}

#[test]
fn hello_3_switches_the_connection_to_resp3_and_replies_with_a_map() {
    let mut h = Harness::new();
    let reply = h.run(&["HELLO", "3"]);
    assert!(reply.starts_with("%7\r\n$6\r\nserver\r\n$8\r\ngeocache\r\n$7\r\nversion\r\n"), "{reply}");
    assert!(reply.contains("$5\r\nproto\r\n:3\r\n"), "{reply}");
    assert!(reply.contains("$2\r\nid\r\n:1\r\n"), "{reply}");
    assert!(reply.contains("$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"), "{reply}");
    assert!(reply.ends_with("$7\r\nmodules\r\n*0\r\n"), "{reply}");
    assert_eq!(h.run(&["CONFIG", "GET", "databases"]), format!("%1\r\n{}{}", bulk("databases"), bulk("1")));
    let reply = h.run(&["HELLO", "2"]);
    assert!(reply.starts_with("*14\r\n"), "{reply}");
    assert!(reply.contains("$5\r\nproto\r\n:2\r\n"), "{reply}");
    assert_eq!(h.run(&["GET", "x"]), NIL);
}

#[test]
fn hello_without_arguments_keeps_the_protocol() {
    let mut h = Harness::new();
    assert!(h.run(&["HELLO"]).starts_with("*14\r\n"));
}

#[test]
fn hello_with_an_unsupported_protocol_is_refused() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["HELLO", "4"]), "-NOPROTO unsupported protocol version\r\n");
    assert_eq!(h.run(&["HELLO", "1"]), "-NOPROTO unsupported protocol version\r\n");
    assert_eq!(h.run(&["HELLO", "three"]), "-ERR Protocol version is not an integer or out of range\r\n");
    assert_eq!(h.run(&["GET", "x"]), NIL);
}

#[test]
fn hello_parses_auth_and_setname() {
    let mut h = Harness::new();
    let reply = h.run(&["HELLO", "3", "AUTH", "default", "anything", "SETNAME", "app"]);
    assert!(reply.starts_with("%7\r\n"), "{reply}");
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("app"));
    assert_eq!(
        h.run(&["HELLO", "2", "AUTH", "alice", "secret"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(h.run(&["HELLO", "3", "AUTH", "default"]), "-ERR Syntax error in HELLO option 'AUTH'\r\n");
    assert_eq!(
        h.run(&["HELLO", "3", "SETNAME", "a b"]),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    // Failed HELLOs changed nothing.
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("app"));
    assert_eq!(h.run(&["GET", "x"]), "_\r\n");
}

#[test]
fn auth_without_a_configured_password_answers_like_redis() {
    let mut h = Harness::new();
    assert_eq!(
        h.run(&["AUTH", "secret"]),
        "-ERR AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?\r\n"
    );
    assert_eq!(h.run(&["AUTH", "default", "secret"]), OK);
    assert_eq!(h.run(&["AUTH", "bob", "secret"]), "-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    assert_eq!(h.run(&["AUTH", "a", "b", "c"]), "-ERR syntax error\r\n");
}

#[test]
fn client_subcommands_used_by_client_libraries_work() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), NIL);
    assert_eq!(h.run(&["CLIENT", "SETNAME", "worker-1"]), OK);
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("worker-1"));
    assert_eq!(
        h.run(&["CLIENT", "SETNAME", "bad name"]),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(h.run(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]), OK);
    assert_eq!(h.run(&["CLIENT", "SETINFO", "lib-ver", "5.0.1"]), OK);
    assert_eq!(h.run(&["CLIENT", "SETINFO", "color", "red"]), "-ERR Unrecognized option 'color'\r\n");
    assert_eq!(h.run(&["CLIENT", "ID"]), ":1\r\n");
    let info = h.run(&["CLIENT", "INFO"]);
    assert!(
        info.contains("id=1 ") && info.contains("name=worker-1 ") && info.contains("lib-name=redis-py lib-ver=5.0.1\n"),
        "{info}"
    );
    assert_eq!(h.run(&["CLIENT", "SETNAME"]), "-ERR wrong number of arguments for 'client|setname' command\r\n");
    assert_eq!(h.run(&["CLIENT", "KILL", "x"]), "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n");
    assert_eq!(h.run(&["CLIENT"]), "-ERR wrong number of arguments for 'client' command\r\n");
    assert!(h.run(&["CLIENT", "HELP"]).starts_with("*13\r\n+CLIENT"));
}

#[test]
fn config_get_answers_the_parameters_benchmarks_ask_for() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["CONFIG", "GET", "save"]), format!("*2\r\n{}$0\r\n\r\n", bulk("save")));
    assert_eq!(h.run(&["CONFIG", "GET", "appendonly"]), format!("*2\r\n{}{}", bulk("appendonly"), bulk("no")));
    assert_eq!(h.run(&["CONFIG", "GET", "MAXMEMORY*"]).lines().filter(|l| l.starts_with('$')).count(), 4);
    assert_eq!(h.run(&["CONFIG", "GET", "nothing"]), "*0\r\n");
    assert_eq!(h.run(&["CONFIG", "GET", "save", "sa*"]), format!("*2\r\n{}$0\r\n\r\n", bulk("save")));
    assert!(h.run(&["CONFIG", "SET", "save", ""]).starts_with("-ERR CONFIG SET is not supported"));
    assert_eq!(h.run(&["CONFIG", "GET"]), "-ERR wrong number of arguments for 'config|get' command\r\n");
}

#[test]
fn command_and_its_subcommands_satisfy_client_handshakes() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["COMMAND"]), "*0\r\n");
    assert_eq!(h.run(&["COMMAND", "COUNT"]), format!(":{}\r\n", COMMANDS.len()));
    assert_eq!(h.run(&["COMMAND", "DOCS"]), "*0\r\n");
    assert_eq!(h.run(&["COMMAND", "INFO", "get", "set"]), "*2\r\n*-1\r\n*-1\r\n");
    assert!(h.run(&["COMMAND", "LIST"]).contains(&bulk("json.get")));
    h.run(&["HELLO", "3"]);
    assert_eq!(h.run(&["COMMAND", "DOCS"]), "%0\r\n");
}

#[test]
fn info_has_redis_style_sections_and_a_keyspace_line() {
    let mut h = Harness::new();
    h.run(&["MSET", "a", "1", "b", "2"]);
    let info = h.run(&["INFO"]);
    assert!(info.contains("# Server\r\nredis_version:7.2.0\r\ngeocache_version:"), "{info}");
    assert!(info.contains("# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n"), "{info}");
    assert!(info.contains("role:master\r\n"), "{info}");
    let keyspace = h.run(&["INFO", "keyspace"]);
    assert!(!keyspace.contains("# Server"), "{keyspace}");
    assert!(keyspace.contains("db0:keys=2"), "{keyspace}");
    h.run(&["HELLO", "3"]);
    assert!(h.run(&["INFO", "server"]).starts_with("="), "a verbatim string in resp3");
}

#[test]
fn dbsize_counts_the_keys() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["DBSIZE"]), ":0\r\n");
    h.run(&["MSET", "a", "1", "b", "2"]);
    h.run(&["DEL", "a"]);
    assert_eq!(h.run(&["DBSIZE"]), ":1\r\n");
}

#[test]
fn quit_answers_ok_and_asks_to_close() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["QUIT"]), OK);
    assert!(h.session.quit);
}

#[test]
fn integers_parse_as_strictly_as_in_redis() {
    assert_eq!(parse_i64(b"0"), Some(0));
    assert_eq!(parse_i64(b"-12"), Some(-12));
    assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
    for bad in
        [&b""[..], b"-", b"+1", b"01", b"-0", b" 1", b"1 ", b"1.0", b"9223372036854775808", b"99999999999999999999"]
    {
        assert_eq!(parse_i64(bad), None, "{bad:?}");
    }
}

#[test]
fn time_replies_with_seconds_and_microseconds() {
    let mut h = Harness::new();
    let reply = h.run(&["TIME"]);
    assert!(reply.starts_with("*2\r\n$10\r\n"), "{reply}");
}

#[test]
fn writes_are_counted_for_acknowledgement_even_without_a_log() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v"]);
    let mut ctx = Ctx::new(&h.state, &h.shared, &mut h.session, &mut h.out);
    let mut wire = Vec::new();
    encode_command(&["SET", "k", "w"], &mut wire);
    let mut parser = Parser::new(ParserLimits::default());
    parser.parse(&wire).unwrap();
    execute(&mut ctx, parser.args(&wire));
    // No log position to wait for, but a sequence number that ack levels wait for.
    assert_eq!((ctx.lsn, ctx.journaled), (None, 1));
    assert!(ctx.seq.is_some());
}

// ---------------------------------------------------------------------------------
// Authentication (--auth-file)

impl Harness {
    /// A node that requires one of `passwords`, and a connection that has not
    /// authenticated yet.
    fn with_passwords(passwords: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("passwords");
        std::fs::write(&path, passwords).expect("write passwords");
        let auth = crate::security::ClientAuth::load(&path, false).expect("load passwords");
        let security = crate::security::Security { auth: Some(Arc::new(auth)), ..Default::default() };
        let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
        let db = Db::standalone(
            Store::new(StoreConfig::default(), origins),
            Limits::default(),
            Arc::new(Metrics::default()),
        );
        let state = NodeState::standalone(db, NodeInfo { node_id: "eu-0".into(), region: "eu".into() }, None)
            .with_security(security);
        let shared = Shared::new(6379);
        let mut session = Session::new(shared.next_client_id(), None, None);
        session.authenticated = false;
        Harness { state: Arc::new(state), shared, session, out: Out::new() }
    }

    fn auth_failures(&self) -> u64 {
        let auth = self.state.security.auth.as_ref().expect("auth on");
        auth.failures_resp.load(Ordering::Relaxed)
    }
}

const NOAUTH_REPLY: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS_REPLY: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

#[test]
fn before_auth_every_command_but_auth_hello_quit_and_reset_gets_noauth() {
    let mut h = Harness::with_passwords("s3cret\n");
    for cmd in
        [&["PING"][..], &["GET", "k"], &["SET", "k", "v"], &["INFO"], &["COMMAND"], &["NOSUCH", "x"], &["SELECT", "0"]]
    {
        assert_eq!(h.run(cmd), NOAUTH_REPLY, "{cmd:?}");
    }
    assert_eq!(h.state.db.store().len(), 0, "nothing was written");
    assert_eq!(h.run(&["AUTH", "s3cret"]), OK);
    assert_eq!(h.run(&["PING"]), "+PONG\r\n");
    assert_eq!(h.run(&["SET", "k", "v"]), OK);
}

#[test]
fn a_wrong_password_or_user_is_refused_with_wrongpass_and_leaves_the_client_unauthenticated() {
    let mut h = Harness::with_passwords("s3cret\n");
    assert_eq!(h.run(&["AUTH", "guess"]), WRONGPASS_REPLY);
    assert_eq!(h.run(&["AUTH", "admin", "s3cret"]), WRONGPASS_REPLY);
    assert_eq!(h.run(&["AUTH", "default", ""]), WRONGPASS_REPLY);
    assert_eq!(h.run(&["GET", "k"]), NOAUTH_REPLY);
    assert_eq!(h.auth_failures(), 4);
    assert_eq!(h.run(&["AUTH", "default", "s3cret"]), OK);
    assert_eq!(h.run(&["GET", "k"]), NIL);
}

#[test]
fn hello_authenticates_with_its_auth_option_and_otherwise_asks_for_it() {
    let mut h = Harness::with_passwords("old\nnew\n");
    let reply = h.run(&["HELLO", "3"]);
    assert!(reply.starts_with("-NOAUTH HELLO must be called with the client already authenticated"), "{reply}");
    assert!(!h.out.resp3(), "a refused HELLO does not switch the protocol");
    assert_eq!(h.run(&["HELLO", "3", "AUTH", "default", "wrong"]), WRONGPASS_REPLY);
    let reply = h.run(&["HELLO", "3", "AUTH", "default", "new", "SETNAME", "app"]);
    assert!(reply.starts_with("%7\r\n"), "{reply}");
    assert!(h.out.resp3());
    assert_eq!(h.session.name.as_deref(), Some(&b"app"[..]));
    assert_eq!(h.run(&["GET", "k"]), "_\r\n");
}

#[test]
fn reset_returns_to_the_unauthenticated_default_user() {
    let mut h = Harness::with_passwords("pw\n");
    assert_eq!(h.run(&["AUTH", "pw"]), OK);
    assert_eq!(h.run(&["RESET"]), "+RESET\r\n");
    assert_eq!(h.run(&["GET", "k"]), NOAUTH_REPLY);
}

#[test]
fn without_an_auth_file_the_default_user_needs_no_password() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["GET", "k"]), NIL);
    assert_eq!(h.run(&["AUTH", "default", "anything"]), OK);
    assert_eq!(h.run(&["AUTH", "someone", "anything"]), WRONGPASS_REPLY);
    assert!(h.run(&["AUTH", "pw"]).starts_with("-ERR AUTH <password> called without any password configured"));
}
