//! Commands driven in-process through the parser and the dispatcher, against a real
//! node state (no sockets).

use std::sync::Arc;

use super::*;
use crate::api::resp::codec::{Parser, ParserLimits, encode_command};
use crate::db::{Db, Limits};
use crate::metrics::Metrics;
use crate::state::NodeInfo;
use crate::store::{Origin, OriginTable, Store, StoreConfig};

struct Harness {
    state: Arc<NodeState>,
    shared: Shared,
    session: Session,
    out: Out,
}

fn node_state(default_ttl_ms: Option<u64>, limits: Limits) -> Arc<NodeState> {
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
    let db = Db::standalone(Store::new(StoreConfig::default(), origins), limits, Arc::new(Metrics::default()));
    Arc::new(NodeState::standalone(db, NodeInfo { node_id: "eu-0".into(), region: "eu".into() }, default_ttl_ms))
}

impl Harness {
    fn new() -> Self {
        Self::with(None, Limits::default())
    }

    fn with(default_ttl_ms: Option<u64>, limits: Limits) -> Self {
        let shared = Shared::new(6379);
        let session = Session::new(shared.next_client_id(), None, None);
        Harness { state: node_state(default_ttl_ms, limits), shared, session, out: Out::new() }
    }

    /// Runs one command; returns its reply bytes.
    fn run_bytes(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        let mut parser = Parser::new(ParserLimits::default());
        let n = parser.parse(&wire).expect("valid frame").expect("complete frame");
        assert_eq!(n, wire.len());
        self.out.clear();
        let mut ctx = Ctx::new(&self.state, &self.shared, &mut self.session, &mut self.out);
        execute(&mut ctx, parser.args(&wire));
        self.out.as_bytes().to_vec()
    }

    /// Runs one command given as words; returns its reply as text.
    fn run(&mut self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        String::from_utf8(self.run_bytes(&args)).expect("utf-8 reply")
    }

    fn pttl(&mut self, key: &str) -> i64 {
        let reply = self.run(&["PTTL", key]);
        reply.trim_start_matches(':').trim_end().parse().expect("integer reply")
    }

    fn metric(&self, line_start: &str) -> String {
        let rendered = self.state.db.metrics().render(&Default::default());
        rendered.lines().find(|l| l.starts_with(line_start)).map(str::to_owned).unwrap_or_default()
    }
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

const OK: &str = "+OK\r\n";
const NIL: &str = "$-1\r\n";

#[test]
fn get_of_a_missing_key_is_null_in_resp2_and_in_resp3() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["GET", "nope"]), NIL);
    h.run(&["HELLO", "3"]);
    assert_eq!(h.run(&["GET", "nope"]), "_\r\n");
}

#[test]
fn set_then_get_round_trips_any_bytes() {
    let mut h = Harness::new();
    let value: &[u8] = b"\x00\xff\r\n binary \x80";
    assert_eq!(h.run_bytes(&[b"SET", b"k", value]), OK.as_bytes());
    let mut expected = format!("${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(value);
    expected.extend_from_slice(b"\r\n");
    assert_eq!(h.run_bytes(&[b"GET", b"k"]), expected);
    assert_eq!(h.run(&["SET", "empty", ""]), OK);
    assert_eq!(h.run(&["GET", "empty"]), "$0\r\n\r\n");
}

#[test]
fn values_that_are_json_are_stored_as_json_and_others_as_raw() {
    let mut h = Harness::new();
    h.run(&["SET", "doc", "{\"a\": 1}"]);
    h.run(&["SET", "text", "hello"]);
    let db = &h.state.db;
    assert_eq!(db.get("doc").unwrap().unwrap().value.encoding, Encoding::Json);
    assert_eq!(db.get("text").unwrap().unwrap().value.encoding, Encoding::Raw);
    assert_eq!(h.run(&["GET", "doc"]), bulk("{\"a\": 1}"));
}

#[test]
fn set_with_nx_does_not_overwrite_an_existing_key() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SET", "k", "1", "NX"]), OK);
    assert_eq!(h.run(&["SET", "k", "2", "nx"]), NIL);
    assert_eq!(h.run(&["GET", "k"]), bulk("1"));
}

#[test]
fn set_with_xx_does_not_create_a_missing_key() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SET", "k", "1", "XX"]), NIL);
    assert_eq!(h.run(&["GET", "k"]), NIL);
    h.run(&["SET", "k", "1"]);
    assert_eq!(h.run(&["SET", "k", "2", "XX"]), OK);
    assert_eq!(h.run(&["GET", "k"]), bulk("2"));
}

#[test]
fn set_with_get_returns_the_old_value() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SET", "k", "1", "GET"]), NIL);
    assert_eq!(h.run(&["SET", "k", "2", "GET"]), bulk("1"));
    // NX + GET: the old value, and nothing written.
    assert_eq!(h.run(&["SET", "k", "3", "NX", "GET"]), bulk("2"));
    assert_eq!(h.run(&["GET", "k"]), bulk("2"));
    // XX + GET on a missing key: null, and nothing written.
    assert_eq!(h.run(&["SET", "other", "3", "GET", "XX"]), NIL);
    assert_eq!(h.run(&["EXISTS", "other"]), ":0\r\n");
}

#[test]
fn set_with_conflicting_or_incomplete_options_is_a_syntax_error() {
    let mut h = Harness::new();
    for args in [
        &["SET", "k", "v", "NX", "XX"][..],
        &["SET", "k", "v", "EX", "10", "PX", "100"],
        &["SET", "k", "v", "EX", "10", "KEEPTTL"],
        &["SET", "k", "v", "KEEPTTL", "EXAT", "10"],
        &["SET", "k", "v", "EX"],
        &["SET", "k", "v", "BOGUS"],
    ] {
        assert_eq!(h.run(args), "-ERR syntax error\r\n", "{args:?}");
    }
    assert_eq!(h.run(&["EXISTS", "k"]), ":0\r\n");
}

#[test]
fn set_with_expiry_options_sets_the_ttl() {
    let mut h = Harness::new();
    h.run(&["SET", "ex", "v", "EX", "100"]);
    let ttl = h.pttl("ex");
    assert!((99_000..=100_000).contains(&ttl), "{ttl}");
    assert_eq!(h.run(&["TTL", "ex"]), ":100\r\n");
    h.run(&["SET", "px", "v", "PX", "5000"]);
    assert!((4_000..=5_000).contains(&h.pttl("px")));
    let at = clock::now_ms() / 1000 + 200;
    h.run(&["SET", "exat", "v", "EXAT", &at.to_string()]);
    assert!((198_000..=200_000).contains(&h.pttl("exat")));
    let at_ms = clock::now_ms() + 300_000;
    h.run(&["SET", "pxat", "v", "PXAT", &at_ms.to_string()]);
    assert_eq!(h.run(&["PEXPIRETIME", "pxat"]), format!(":{at_ms}\r\n"));
    assert_eq!(h.run(&["EXPIRETIME", "pxat"]), format!(":{}\r\n", (at_ms + 500) / 1000));
}

#[test]
fn set_with_a_non_positive_or_non_integer_expiry_is_refused() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SET", "k", "v", "EX", "0"]), "-ERR invalid expire time in 'set' command\r\n");
    assert_eq!(h.run(&["SET", "k", "v", "PX", "-5"]), "-ERR invalid expire time in 'set' command\r\n");
    assert_eq!(h.run(&["SET", "k", "v", "EX", "9223372036854775807"]), "-ERR invalid expire time in 'set' command\r\n");
    assert_eq!(h.run(&["SET", "k", "v", "EX", "ten"]), "-ERR value is not an integer or out of range\r\n");
    assert_eq!(h.run(&["SET", "k", "v", "EX", "1.5"]), "-ERR value is not an integer or out of range\r\n");
    assert_eq!(h.run(&["EXISTS", "k"]), ":0\r\n");
    // Past the end of year 9999 (expiries must be printable as RFC 3339 timestamps).
    assert_eq!(h.run(&["SET", "k", "v", "PXAT", "253402300800000"]), "-ERR invalid expire time in 'set' command\r\n");
    assert_eq!(h.run(&["SET", "k", "v", "PXAT", "253402300799999"]), OK);
    assert_eq!(h.run(&["EXPIREAT", "k", "253402300800"]), "-ERR invalid expire time in 'expireat' command\r\n");
    assert_eq!(h.run(&["PEXPIREAT", "k", "253402300799999"]), ":1\r\n");
}

#[test]
fn set_with_an_expiry_in_the_past_deletes_the_key() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v"]);
    assert_eq!(h.run(&["SET", "k", "w", "PXAT", "1000"]), OK);
    assert_eq!(h.run(&["GET", "k"]), NIL);
    assert_eq!(h.run(&["SET", "new", "w", "EXAT", "1"]), OK);
    assert_eq!(h.run(&["EXISTS", "new"]), ":0\r\n");
}

#[test]
fn set_without_expiry_clears_the_ttl_and_keepttl_keeps_it() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v", "EX", "100"]);
    h.run(&["SET", "k", "w", "KEEPTTL"]);
    assert!(h.pttl("k") > 90_000);
    assert_eq!(h.run(&["GET", "k"]), bulk("w"));
    h.run(&["SET", "k", "x"]);
    assert_eq!(h.pttl("k"), -1);
    // KEEPTTL on a new key: no expiry.
    h.run(&["SET", "fresh", "x", "KEEPTTL"]);
    assert_eq!(h.pttl("fresh"), -1);
}

#[test]
fn set_without_expiry_uses_the_default_ttl_of_the_node() {
    let mut h = Harness::with(Some(60_000), Limits::default());
    h.run(&["SET", "k", "v"]);
    assert!((59_000..=60_000).contains(&h.pttl("k")));
    h.run(&["MSET", "a", "1"]);
    assert!(h.pttl("a") > 59_000);
    h.run(&["SET", "k", "v", "EX", "5"]);
    assert!(h.pttl("k") <= 5_000);
}

#[test]
fn setex_and_psetex_set_the_value_and_the_ttl() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SETEX", "a", "100", "v"]), OK);
    assert_eq!(h.run(&["GET", "a"]), bulk("v"));
    assert!(h.pttl("a") > 99_000);
    assert_eq!(h.run(&["PSETEX", "b", "1500", "w"]), OK);
    assert!((1_000..=1_500).contains(&h.pttl("b")));
    assert_eq!(h.run(&["SETEX", "a", "0", "v"]), "-ERR invalid expire time in 'setex' command\r\n");
    assert_eq!(h.run(&["PSETEX", "a", "-1", "v"]), "-ERR invalid expire time in 'psetex' command\r\n");
    assert_eq!(h.run(&["SETEX", "a", "x", "v"]), "-ERR value is not an integer or out of range\r\n");
    assert_eq!(h.run(&["SETEX", "a", "10"]), "-ERR wrong number of arguments for 'setex' command\r\n");
}

#[test]
fn mset_writes_every_pair_and_mget_reads_them_in_order() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["MSET", "a", "1", "b", "2", "a", "3"]), OK);
    assert_eq!(h.run(&["MGET", "a", "missing", "b"]), format!("*3\r\n{}{NIL}{}", bulk("3"), bulk("2")));
}

#[test]
fn mset_with_an_odd_number_of_arguments_is_an_arity_error() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["MSET", "a", "1", "b"]), "-ERR wrong number of arguments for 'mset' command\r\n");
    assert_eq!(h.run(&["EXISTS", "a"]), ":0\r\n");
}

#[test]
fn mset_with_one_invalid_key_writes_nothing() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["MSET", "a", "1", "", "2"]), "-ERR key must not be empty\r\n");
    assert_eq!(h.run(&["EXISTS", "a"]), ":0\r\n");
}

#[test]
fn del_and_unlink_count_the_keys_they_deleted() {
    let mut h = Harness::new();
    h.run(&["MSET", "a", "1", "b", "2", "c", "3"]);
    assert_eq!(h.run(&["DEL", "a", "b", "missing", "a"]), ":2\r\n");
    assert_eq!(h.run(&["UNLINK", "c"]), ":1\r\n");
    assert_eq!(h.run(&["DBSIZE"]), ":0\r\n");
}

#[test]
fn exists_counts_repeated_keys_like_redis() {
    let mut h = Harness::new();
    h.run(&["SET", "a", "1"]);
    assert_eq!(h.run(&["EXISTS", "a", "a", "b", "a"]), ":3\r\n");
}

#[test]
fn expire_sets_a_ttl_only_on_an_existing_key() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["EXPIRE", "k", "100"]), ":0\r\n");
    h.run(&["SET", "k", "v"]);
    assert_eq!(h.run(&["EXPIRE", "k", "100"]), ":1\r\n");
    assert!(h.pttl("k") > 99_000);
    assert_eq!(h.run(&["PEXPIRE", "k", "5000"]), ":1\r\n");
    assert!(h.pttl("k") <= 5_000);
    let at = clock::now_ms() / 1000 + 50;
    assert_eq!(h.run(&["EXPIREAT", "k", &at.to_string()]), ":1\r\n");
    assert!((48_000..=50_000).contains(&h.pttl("k")));
    let at_ms = clock::now_ms() + 7_000;
    assert_eq!(h.run(&["PEXPIREAT", "k", &at_ms.to_string()]), ":1\r\n");
    assert!((6_000..=7_000).contains(&h.pttl("k")));
    assert_eq!(h.run(&["GET", "k"]), bulk("v"));
}

#[test]
fn expire_with_a_non_positive_ttl_or_a_past_time_deletes_the_key() {
    let mut h = Harness::new();
    h.run(&["MSET", "a", "1", "b", "2", "c", "3"]);
    assert_eq!(h.run(&["EXPIRE", "a", "0"]), ":1\r\n");
    assert_eq!(h.run(&["PEXPIRE", "b", "-10"]), ":1\r\n");
    assert_eq!(h.run(&["EXPIREAT", "c", "1"]), ":1\r\n");
    assert_eq!(h.run(&["EXISTS", "a", "b", "c"]), ":0\r\n");
}

#[test]
fn expire_follows_the_nx_xx_gt_and_lt_conditions() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v"]);
    // No expiry yet: XX and GT refuse, NX and LT accept.
    assert_eq!(h.run(&["EXPIRE", "k", "100", "XX"]), ":0\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "100", "GT"]), ":0\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "100", "NX"]), ":1\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "200", "NX"]), ":0\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "200", "GT"]), ":1\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "150", "GT"]), ":0\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "300", "LT"]), ":0\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "50", "lt"]), ":1\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "60", "XX"]), ":1\r\n");
    assert_eq!(h.run(&["TTL", "k"]), ":60\r\n");
    h.run(&["SET", "p", "v"]);
    assert_eq!(h.run(&["EXPIRE", "p", "60", "LT"]), ":1\r\n");
}

#[test]
fn expire_with_incompatible_or_unknown_options_is_refused() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v"]);
    assert_eq!(
        h.run(&["EXPIRE", "k", "10", "NX", "XX"]),
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    );
    assert_eq!(
        h.run(&["EXPIRE", "k", "10", "GT", "LT"]),
        "-ERR GT and LT options at the same time are not compatible\r\n"
    );
    assert_eq!(h.run(&["EXPIRE", "k", "10", "SOON"]), "-ERR Unsupported option SOON\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "soon"]), "-ERR value is not an integer or out of range\r\n");
    assert_eq!(h.run(&["EXPIRE", "k", "9223372036854775807"]), "-ERR invalid expire time in 'expire' command\r\n");
    assert_eq!(h.pttl("k"), -1);
}

#[test]
fn persist_removes_the_ttl_of_a_key_that_has_one() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["PERSIST", "k"]), ":0\r\n");
    h.run(&["SET", "k", "v"]);
    assert_eq!(h.run(&["PERSIST", "k"]), ":0\r\n");
    h.run(&["EXPIRE", "k", "100"]);
    assert_eq!(h.run(&["PERSIST", "k"]), ":1\r\n");
    assert_eq!(h.run(&["TTL", "k"]), ":-1\r\n");
    assert_eq!(h.run(&["GET", "k"]), bulk("v"));
}

#[test]
fn ttl_and_pttl_are_minus_two_when_absent_and_minus_one_without_expiry() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["TTL", "k"]), ":-2\r\n");
    assert_eq!(h.run(&["PTTL", "k"]), ":-2\r\n");
    assert_eq!(h.run(&["EXPIRETIME", "k"]), ":-2\r\n");
    h.run(&["SET", "k", "v"]);
    assert_eq!(h.run(&["TTL", "k"]), ":-1\r\n");
    assert_eq!(h.run(&["PTTL", "k"]), ":-1\r\n");
    assert_eq!(h.run(&["PEXPIRETIME", "k"]), ":-1\r\n");
}

#[test]
fn an_expired_key_is_gone() {
    let mut h = Harness::new();
    h.run(&["SET", "k", "v", "PX", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(h.run(&["GET", "k"]), NIL);
    assert_eq!(h.run(&["TTL", "k"]), ":-2\r\n");
}

#[test]
fn type_is_string_for_every_value_and_none_when_absent() {
    let mut h = Harness::new();
    h.run(&["SET", "s", "text"]);
    h.run(&["JSON.SET", "j", "$", "{\"a\":1}"]);
    assert_eq!(h.run(&["TYPE", "s"]), "+string\r\n");
    assert_eq!(h.run(&["TYPE", "j"]), "+string\r\n");
    assert_eq!(h.run(&["TYPE", "x"]), "+none\r\n");
}

#[test]
fn json_get_returns_the_document_and_wraps_it_in_an_array_for_dollar() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["JSON.SET", "d", "$", "{\"a\": [1, 2]}"]), OK);
    assert_eq!(h.run(&["JSON.GET", "d"]), bulk("{\"a\": [1, 2]}"));
    assert_eq!(h.run(&["JSON.GET", "d", "."]), bulk("{\"a\": [1, 2]}"));
    assert_eq!(h.run(&["JSON.GET", "d", "$"]), bulk("[{\"a\": [1, 2]}]"));
    assert_eq!(h.run(&["JSON.GET", "d", "$", "."]), bulk("{\"$\":[{\"a\": [1, 2]}],\".\":{\"a\": [1, 2]}}"));
    assert_eq!(h.run(&["JSON.GET", "missing"]), NIL);
    // A document written with SET reads the same.
    assert_eq!(h.run(&["GET", "d"]), bulk("{\"a\": [1, 2]}"));
}

#[test]
fn json_get_of_a_raw_value_reads_it_as_a_json_string() {
    let mut h = Harness::new();
    h.run(&["SET", "r", "say \"hi\""]);
    assert_eq!(h.run(&["JSON.GET", "r"]), bulk("\"say \\\"hi\\\"\""));
    assert_eq!(h.run(&["JSON.GET", "r", "$"]), bulk("[\"say \\\"hi\\\"\"]"));
}

#[test]
fn json_commands_refuse_paths_other_than_the_root() {
    let mut h = Harness::new();
    h.run(&["JSON.SET", "d", ".", "{\"a\":1}"]);
    let refused = "-ERR only the root path ($ or .) is supported\r\n";
    assert_eq!(h.run(&["JSON.GET", "d", "$.a"]), refused);
    assert_eq!(h.run(&["JSON.SET", "d", "$.a", "2"]), refused);
    assert_eq!(h.run(&["JSON.DEL", "d", ".a"]), refused);
    assert_eq!(h.run(&["JSON.GET", "d"]), bulk("{\"a\":1}"));
}

#[test]
fn json_get_lays_out_the_document_with_indent_newline_and_space() {
    let mut h = Harness::new();
    h.run(&["JSON.SET", "d", "$", "{\"a\": [1, {}], \"b\": \"x, y: z\", \"c\": []}"]);
    assert_eq!(
        h.run(&["JSON.GET", "d", "INDENT", "  ", "NEWLINE", "\n", "SPACE", " "]),
        bulk("{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": \"x, y: z\",\n  \"c\": []\n}")
    );
    assert_eq!(h.run(&["JSON.GET", "d", "SPACE", " ", "$"]), bulk("[{\"a\": [1,{}],\"b\": \"x, y: z\",\"c\": []}]"));
}

#[test]
fn json_set_refuses_invalid_json_and_writes_nothing() {
    let mut h = Harness::new();
    let reply = h.run(&["JSON.SET", "d", "$", "{\"a\":"]);
    assert!(reply.starts_with("-ERR invalid json: "), "{reply}");
    assert_eq!(h.run(&["EXISTS", "d"]), ":0\r\n");
    assert_eq!(h.run(&["JSON.SET", "d", "$", "1", "MAYBE"]), "-ERR syntax error\r\n");
}

#[test]
fn json_set_follows_nx_and_xx_and_keeps_the_ttl_of_a_replaced_document() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["JSON.SET", "d", "$", "1", "XX"]), NIL);
    assert_eq!(h.run(&["JSON.SET", "d", "$", "1", "NX"]), OK);
    assert_eq!(h.run(&["JSON.SET", "d", "$", "2", "NX"]), NIL);
    h.run(&["EXPIRE", "d", "100"]);
    assert_eq!(h.run(&["JSON.SET", "d", "$", "3", "XX"]), OK);
    assert!(h.pttl("d") > 99_000);
    assert_eq!(h.run(&["JSON.GET", "d"]), bulk("3"));
}

#[test]
fn json_del_deletes_the_whole_document() {
    let mut h = Harness::new();
    h.run(&["JSON.SET", "d", "$", "[1]"]);
    assert_eq!(h.run(&["JSON.DEL", "d", "$"]), ":1\r\n");
    assert_eq!(h.run(&["JSON.DEL", "d"]), ":0\r\n");
    assert_eq!(h.run(&["JSON.GET", "d"]), NIL);
}

#[test]
fn json_type_names_the_type_of_the_document() {
    let mut h = Harness::new();
    for (doc, name) in [
        ("{}", "object"),
        ("[]", "array"),
        ("\"s\"", "string"),
        ("true", "boolean"),
        ("null", "null"),
        ("12", "integer"),
        ("1.5", "number"),
        (" -3e2", "number"),
    ] {
        h.run(&["JSON.SET", "d", "$", doc]);
        assert_eq!(h.run(&["JSON.TYPE", "d"]), format!("+{name}\r\n"), "{doc}");
    }
    h.run(&["SET", "raw", "text"]);
    assert_eq!(h.run(&["JSON.TYPE", "raw", "$"]), format!("*1\r\n{}", bulk("string")));
    assert_eq!(h.run(&["JSON.TYPE", "missing"]), NIL);
}

#[test]
fn json_mget_reads_several_documents() {
    let mut h = Harness::new();
    h.run(&["JSON.SET", "a", "$", "1"]);
    h.run(&["JSON.SET", "b", "$", "{\"x\":2}"]);
    assert_eq!(
        h.run(&["JSON.MGET", "a", "missing", "b", "$"]),
        format!("*3\r\n{}{NIL}{}", bulk("[1]"), bulk("[{\"x\":2}]"))
    );
    assert_eq!(h.run(&["JSON.MGET", "a", "."]), format!("*1\r\n{}", bulk("1")));
}

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
fn scan_returns_every_key_once_across_calls() {
    let mut h = Harness::new();
    for i in 0..300 {
        h.run(&["SET", &format!("key:{i}"), "v"]);
    }
    h.run(&["SET", "other", "v"]);
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let reply = h.run_bytes(&[b"SCAN", cursor.as_bytes(), b"MATCH", b"key:*", b"COUNT", b"20"]);
        let text = String::from_utf8(reply).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        cursor = lines[2].to_string();
        for key in lines[4..].iter().skip(1).step_by(2) {
            assert!(seen.insert(key.to_string()), "{key} twice");
        }
        calls += 1;
        if cursor == "0" {
            break;
        }
        assert!(calls < 100);
    }
    assert_eq!(seen.len(), 300);
    assert!(calls > 1);
    assert_eq!(h.run(&["SCAN", "x"]), "-ERR invalid cursor\r\n");
    assert_eq!(h.run(&["SCAN", "0", "COUNT", "0"]), "-ERR syntax error\r\n");
    assert_eq!(h.run(&["SCAN", "0", "TYPE", "hash"]), "*2\r\n$1\r\n0\r\n*0\r\n");
}

#[test]
fn keys_returns_the_keys_matching_a_pattern() {
    let mut h = Harness::new();
    h.run(&["MSET", "user:1", "a", "user:2", "b", "order:1", "c"]);
    let reply = h.run(&["KEYS", "user:*"]);
    assert!(reply.starts_with("*2\r\n") && reply.contains("user:1") && reply.contains("user:2"), "{reply}");
    assert_eq!(h.run(&["KEYS", "nothing*"]), "*0\r\n");
}

#[test]
fn glob_patterns_match_like_redis() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "", true),
        ("*", "anything", true),
        ("a*", "abc", true),
        ("a*c", "abbbc", true),
        ("a*c", "abbb", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("h[ae]llo", "hello", true),
        ("h[ae]llo", "hillo", false),
        ("h[^e]llo", "hallo", true),
        ("h[^e]llo", "hello", false),
        ("h[a-c]llo", "hbllo", true),
        ("h[c-a]llo", "hbllo", true),
        ("h[a-c]llo", "hdllo", false),
        ("a\\*b", "a*b", true),
        ("a\\*b", "axb", false),
        ("*.json", "doc.json", true),
        ("*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ("[", "x", false),
        ("", "", true),
        ("", "a", false),
    ];
    for &(pattern, s, expected) in cases {
        assert_eq!(glob_match(pattern.as_bytes(), s.as_bytes(), false), expected, "{pattern} ~ {s}");
    }
    assert!(glob_match(b"SAVE", b"save", true));
    assert!(!glob_match(b"SAVE", b"save", false));
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
