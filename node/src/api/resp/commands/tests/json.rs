//! JSON documents.

use super::*;

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
