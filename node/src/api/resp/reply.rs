//! Encoding of replies, in RESP2 (the default) or RESP3 (after `HELLO 3`).
//!
//! Replies of a batch of pipelined commands are appended to one [`Out`] buffer that is
//! written to the socket once.

/// The output buffer of a connection and the protocol version it speaks.
#[derive(Debug, Default)]
pub struct Out {
    buf: Vec<u8>,
    resp3: bool,
    errors: u64,
}

/// Writes the decimal digits of `v` into the end of `scratch`; returns the digits.
fn digits(mut v: u64, scratch: &mut [u8; 20]) -> &[u8] {
    let mut i = scratch.len();
    loop {
        i -= 1;
        scratch[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &scratch[i..]
}

impl Out {
    pub fn new() -> Self {
        Out::default()
    }

    /// True after `HELLO 3`.
    pub fn resp3(&self) -> bool {
        self.resp3
    }

    pub fn set_resp3(&mut self, resp3: bool) {
        self.resp3 = resp3;
    }

    /// The protocol version: 2 or 3.
    pub fn protocol(&self) -> i64 {
        if self.resp3 { 3 } else { 2 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Drops everything from `len` on (to take back replies of a failed batch).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// Empties the buffer after it was written; releases memory a huge reply left.
    pub fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::with_capacity(16 * 1024);
        }
    }

    /// Error replies written so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    fn line_u64(&mut self, prefix: u8, v: u64) {
        let mut scratch = [0u8; 20];
        self.buf.push(prefix);
        self.buf.extend_from_slice(digits(v, &mut scratch));
        self.buf.extend_from_slice(b"\r\n");
    }

    fn line_i64(&mut self, prefix: u8, v: i64) {
        let mut scratch = [0u8; 20];
        self.buf.push(prefix);
        if v < 0 {
            self.buf.push(b'-');
        }
        self.buf.extend_from_slice(digits(v.unsigned_abs(), &mut scratch));
        self.buf.extend_from_slice(b"\r\n");
    }

    /// `+OK`.
    pub fn ok(&mut self) {
        self.buf.extend_from_slice(b"+OK\r\n");
    }

    /// A simple string (`+PONG`); must not contain CR or LF.
    pub fn simple(&mut self, s: &str) {
        self.buf.push(b'+');
        self.push_line_bytes(s.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// An error reply; `msg` starts with the error code (`ERR ...`, `NOPROTO ...`).
    /// CR and LF in the message become spaces.
    pub fn error(&mut self, msg: &[u8]) {
        self.errors += 1;
        self.buf.push(b'-');
        self.push_line_bytes(msg);
        self.buf.extend_from_slice(b"\r\n");
    }

    fn push_line_bytes(&mut self, s: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(s);
        for b in &mut self.buf[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
    }

    pub fn int(&mut self, v: i64) {
        self.line_i64(b':', v);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.line_u64(b'$', data.len() as u64);
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The null reply: `_` in RESP3, the null bulk string in RESP2.
    pub fn null(&mut self) {
        if self.resp3 {
            self.buf.extend_from_slice(b"_\r\n");
        } else {
            self.buf.extend_from_slice(b"$-1\r\n");
        }
    }

    /// The null array: `_` in RESP3, `*-1` in RESP2.
    pub fn null_array(&mut self) {
        if self.resp3 {
            self.buf.extend_from_slice(b"_\r\n");
        } else {
            self.buf.extend_from_slice(b"*-1\r\n");
        }
    }

    /// The header of an array of `n` elements.
    pub fn array(&mut self, n: usize) {
        self.line_u64(b'*', n as u64);
    }

    /// The header of a map of `n` pairs: `%n` in RESP3, a flat array of `2n` in RESP2.
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.line_u64(b'%', n as u64);
        } else {
            self.line_u64(b'*', 2 * n as u64);
        }
    }

    /// The header of a set of `n` elements: `~n` in RESP3, an array in RESP2.
    pub fn set(&mut self, n: usize) {
        self.line_u64(if self.resp3 { b'~' } else { b'*' }, n as u64);
    }

    /// A double: `,1.5` in RESP3, a bulk string in RESP2.
    pub fn double(&mut self, v: f64) {
        let text = if v.is_nan() {
            "nan".to_string()
        } else if v.is_infinite() {
            if v > 0.0 { "inf".to_string() } else { "-inf".to_string() }
        } else {
            v.to_string()
        };
        if self.resp3 {
            self.buf.push(b',');
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text.as_bytes());
        }
    }

    /// A boolean: `#t`/`#f` in RESP3, the integers 1/0 in RESP2.
    pub fn boolean(&mut self, v: bool) {
        if self.resp3 {
            self.buf.extend_from_slice(if v { b"#t\r\n" } else { b"#f\r\n" });
        } else {
            self.int(v as i64);
        }
    }

    /// A verbatim string (`=len\r\ntxt:...`) in RESP3, a bulk string in RESP2.
    /// `format` is three bytes: `txt` or `mkd`.
    pub fn verbatim(&mut self, format: &[u8; 3], text: &[u8]) {
        if self.resp3 {
            self.line_u64(b'=', text.len() as u64 + 4);
            self.buf.extend_from_slice(format);
            self.buf.push(b':');
            self.buf.extend_from_slice(text);
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(f: impl Fn(&mut Out)) -> (String, String) {
        let mut two = Out::new();
        f(&mut two);
        let mut three = Out::new();
        three.set_resp3(true);
        f(&mut three);
        (String::from_utf8_lossy(two.as_bytes()).into_owned(), String::from_utf8_lossy(three.as_bytes()).into_owned())
    }

    #[test]
    fn scalars_encode_the_same_in_both_protocols() {
        assert_eq!(both(|o| o.ok()), ("+OK\r\n".into(), "+OK\r\n".into()));
        assert_eq!(both(|o| o.int(-42)).0, ":-42\r\n");
        assert_eq!(both(|o| o.int(0)).0, ":0\r\n");
        assert_eq!(both(|o| o.int(i64::MIN)).0, format!(":{}\r\n", i64::MIN));
        assert_eq!(both(|o| o.int(i64::MAX)).1, format!(":{}\r\n", i64::MAX));
        assert_eq!(both(|o| o.bulk(b"a\r\nb")).0, "$4\r\na\r\nb\r\n");
        assert_eq!(both(|o| o.bulk(b"")).1, "$0\r\n\r\n");
        assert_eq!(both(|o| o.array(3)).1, "*3\r\n");
    }

    #[test]
    fn null_is_an_underscore_in_resp3_and_a_null_bulk_in_resp2() {
        assert_eq!(both(|o| o.null()), ("$-1\r\n".into(), "_\r\n".into()));
        assert_eq!(both(|o| o.null_array()), ("*-1\r\n".into(), "_\r\n".into()));
    }

    #[test]
    fn maps_are_flat_arrays_in_resp2() {
        assert_eq!(both(|o| o.map(2)), ("*4\r\n".into(), "%2\r\n".into()));
        assert_eq!(both(|o| o.set(2)), ("*2\r\n".into(), "~2\r\n".into()));
    }

    #[test]
    fn doubles_booleans_and_verbatim_strings_degrade_in_resp2() {
        assert_eq!(both(|o| o.double(1.5)), ("$3\r\n1.5\r\n".into(), ",1.5\r\n".into()));
        assert_eq!(both(|o| o.double(f64::NEG_INFINITY)).1, ",-inf\r\n");
        assert_eq!(both(|o| o.double(f64::NAN)).1, ",nan\r\n");
        assert_eq!(both(|o| o.boolean(true)), (":1\r\n".into(), "#t\r\n".into()));
        assert_eq!(both(|o| o.boolean(false)).1, "#f\r\n");
        assert_eq!(both(|o| o.verbatim(b"txt", b"a:b")), ("$3\r\na:b\r\n".into(), "=7\r\ntxt:a:b\r\n".into()));
    }

    #[test]
    fn errors_never_contain_line_breaks_and_are_counted() {
        let mut o = Out::new();
        o.error(b"ERR bad\r\nthing");
        o.simple("a\nb");
        assert_eq!(o.as_bytes(), b"-ERR bad  thing\r\n+a b\r\n");
        assert_eq!(o.errors(), 1);
    }

    #[test]
    fn truncate_takes_back_replies() {
        let mut o = Out::new();
        o.ok();
        let mark = o.len();
        o.int(5);
        o.truncate(mark);
        assert_eq!(o.as_bytes(), b"+OK\r\n");
        o.clear();
        assert!(o.is_empty());
    }
}
