//! SCAN, KEYS and glob patterns.

use super::*;

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
