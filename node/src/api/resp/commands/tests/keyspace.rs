//! Keys and string values, and their expiry.

use super::*;

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
