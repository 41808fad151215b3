//! An incremental parser of RESP requests: multibulk frames (`*N\r\n$len\r\n...`, what
//! every client library sends) and inline commands (a space-separated line, what a
//! person types into telnet).
//!
//! The parser never copies a multibulk argument: it records each argument as a range
//! into the read buffer and the caller reads them through [`Parser::args`] once a frame
//! is complete, then drops the frame from the buffer. Parsing is resumable: when a frame
//! is incomplete the parser remembers how far it got, so a large frame that trickles in
//! is scanned once, not once per read. The caller must not move or drop bytes of the
//! buffer while a frame is pending (appending is fine).
//!
//! Lengths sent by the client are checked against [`ParserLimits`] before anything is
//! reserved for them, and a frame as a whole is bounded too, so a client cannot make the
//! node allocate more than the limits allow.

use std::fmt;
use std::ops::Range;

/// Bounds on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Longest bulk string (`$len`).
    pub max_bulk: usize,
    /// Most arguments in one multibulk frame (`*N`).
    pub max_args: usize,
    /// Longest inline command line, and longest `*N` / `$len` header line.
    pub max_inline: usize,
    /// Largest frame, all arguments together.
    pub max_frame: usize,
}

impl ParserLimits {
    /// Most arguments in one command, as in Redis.
    pub const MAX_ARGS: usize = 1024 * 1024;
    /// Longest inline command, as in Redis.
    pub const MAX_INLINE: usize = 64 * 1024;
    /// Slack on top of the largest value for the key and the other arguments.
    pub const BULK_SLACK: usize = 64 * 1024;
    /// Largest frame (Redis closes a client whose query buffer reaches 1 GiB).
    pub const MAX_FRAME: usize = 512 * 1024 * 1024;

    /// The limits before a client authenticated (when a password is required), as in
    /// Redis: enough for `AUTH` and `HELLO ... AUTH ... SETNAME ...`, no more.
    pub const UNAUTHENTICATED: ParserLimits =
        ParserLimits { max_bulk: 16 * 1024, max_args: 10, max_inline: 16 * 1024, max_frame: 64 * 1024 };

    /// The limits for a node that accepts keys and values up to these sizes.
    pub fn for_values(max_key_bytes: usize, max_value_bytes: usize) -> Self {
        let max_bulk = max_value_bytes.saturating_add(Self::BULK_SLACK).max(max_key_bytes);
        ParserLimits {
            max_bulk,
            max_args: Self::MAX_ARGS,
            max_inline: Self::MAX_INLINE,
            max_frame: Self::MAX_FRAME.max(max_bulk.saturating_mul(2)),
        }
    }
}

impl Default for ParserLimits {
    fn default() -> Self {
        let limits = crate::db::Limits::default();
        Self::for_values(limits.max_key_bytes, limits.max_value_bytes)
    }
}

/// A malformed or oversized request. The connection is answered
/// `-ERR Protocol error: <what>` and closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(what: impl Into<String>) -> Self {
        ProtocolError(what.into())
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Where the parser is inside the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a frame.
    Start,
    /// Inside a multibulk frame; `remaining` arguments to go, the next one's header
    /// not read yet.
    Header { remaining: usize },
    /// Inside a multibulk frame; the header of the next argument said `len` bytes,
    /// which start at `pos`.
    Body { remaining: usize, len: usize },
}

/// Where the arguments of the last complete frame live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Ranges into the read buffer (multibulk).
    Buffer,
    /// Ranges into the parser's scratch buffer (inline, after unquoting).
    Inline,
}

/// The incremental request parser of one connection.
#[derive(Debug)]
pub struct Parser {
    limits: ParserLimits,
    state: State,
    /// Bytes of the current frame consumed so far.
    pos: usize,
    args: Vec<Range<usize>>,
    inline: Vec<u8>,
    source: Source,
}

/// The arguments of one command, borrowed from the read buffer (or the inline scratch).
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    data: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The `i`-th argument (0 is the command name); empty when out of range.
    pub fn get(&self, i: usize) -> &'a [u8] {
        self.ranges.get(i).and_then(|r| self.data.get(r.clone())).unwrap_or_default()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let data = self.data;
        self.ranges.iter().map(move |r| data.get(r.clone()).unwrap_or_default())
    }

    /// The first `n` arguments (all of them when there are fewer).
    pub fn prefix(&self, n: usize) -> Args<'a> {
        Args { data: self.data, ranges: &self.ranges[..n.min(self.ranges.len())] }
    }

    /// Arguments `from..` (empty when `from` is past the end).
    pub fn tail(&self, from: usize) -> Args<'a> {
        Args { data: self.data, ranges: self.ranges.get(from..).unwrap_or_default() }
    }
}

/// Finds `\r\n` in `buf[from..]`; returns the position of `\r`.
fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(rest) = buf.get(from..) else { return Ok(None) };
    match rest.iter().position(|&b| b == b'\r') {
        None => Ok(None),
        Some(i) => {
            let cr = from + i;
            match buf.get(cr + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some(cr)),
                Some(_) => Err(ProtocolError::new("expected '\\n' after '\\r'")),
            }
        }
    }
}

/// Parses the decimal integer of a `*N` or `$len` header, as Redis does (an optional
/// minus sign, no leading zeros, no spaces). `None` when it is not one.
fn parse_header_int(digits: &[u8]) -> Option<i64> {
    crate::api::resp::commands::parse_i64(digits)
}

impl Parser {
    pub fn new(limits: ParserLimits) -> Self {
        Parser { limits, state: State::Start, pos: 0, args: Vec::new(), inline: Vec::new(), source: Source::Buffer }
    }

    pub fn limits(&self) -> &ParserLimits {
        &self.limits
    }

    /// Changes the limits from the next frame on (call between frames).
    pub fn set_limits(&mut self, limits: ParserLimits) {
        self.limits = limits;
    }

    /// Parses the frame at the start of `buf`, resuming where the last call stopped.
    ///
    /// Returns `Ok(Some(n))` when a complete frame of `n` bytes starts `buf`: its
    /// arguments are then available through [`Parser::args`] (none for an empty
    /// command, which the caller skips) until [`Parser::consume`] is called; the
    /// caller then drops those `n` bytes from the buffer. `Ok(None)` means more bytes
    /// are needed.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if self.state == State::Start {
            let Some(&first) = buf.first() else { return Ok(None) };
            if first != b'*' {
                return self.parse_inline(buf);
            }
            let Some(cr) = find_crlf(buf, 1)? else {
                if buf.len() > self.limits.max_inline {
                    return Err(ProtocolError::new("too big mbulk count string"));
                }
                return Ok(None);
            };
            if cr > self.limits.max_inline {
                return Err(ProtocolError::new("too big mbulk count string"));
            }
            let count = match parse_header_int(&buf[1..cr]) {
                Some(n) if n > self.limits.max_args as i64 => {
                    return Err(ProtocolError::new("invalid multibulk length"));
                }
                Some(n) => n,
                None => return Err(ProtocolError::new("invalid multibulk length")),
            };
            self.source = Source::Buffer;
            self.args.clear();
            self.pos = cr + 2;
            if count <= 0 {
                // `*0` and `*-1` are empty commands, skipped as Redis does.
                let n = self.pos;
                self.pos = 0;
                return Ok(Some(n));
            }
            self.state = State::Header { remaining: count as usize };
            // Do not trust the count for the allocation beyond a modest size.
            self.args.reserve((count as usize).min(64));
        }
        loop {
            match self.state {
                State::Start => return Ok(None),
                State::Header { remaining: 0 } => {
                    let n = self.pos;
                    self.state = State::Start;
                    self.pos = 0;
                    return Ok(Some(n));
                }
                State::Header { remaining } => {
                    let Some(&first) = buf.get(self.pos) else { return Ok(None) };
                    if first != b'$' {
                        return Err(ProtocolError(format!("expected '$', got '{}'", printable(first))));
                    }
                    let Some(cr) = find_crlf(buf, self.pos + 1)? else {
                        if buf.len().saturating_sub(self.pos) > self.limits.max_inline {
                            return Err(ProtocolError::new("too big bulk count string"));
                        }
                        return Ok(None);
                    };
                    if cr - self.pos > self.limits.max_inline {
                        return Err(ProtocolError::new("too big bulk count string"));
                    }
                    let len = match parse_header_int(&buf[self.pos + 1..cr]) {
                        Some(len) if len >= 0 && len as u64 <= self.limits.max_bulk as u64 => len as usize,
                        _ => return Err(ProtocolError::new("invalid bulk length")),
                    };
                    self.pos = cr + 2;
                    if self.pos.saturating_add(len) > self.limits.max_frame {
                        return Err(ProtocolError::new("command is too large"));
                    }
                    self.state = State::Body { remaining, len };
                }
                State::Body { remaining, len } => {
                    let end = self.pos + len;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(ProtocolError::new("expected '\\r\\n' after bulk data"));
                    }
                    self.args.push(self.pos..end);
                    self.pos = end + 2;
                    self.state = State::Header { remaining: remaining - 1 };
                }
            }
        }
    }

    /// How many more bytes the pending frame needs at least (a hint for reserving
    /// read buffer space; bounded by the limits).
    pub fn needed(&self, buffered: usize) -> usize {
        match self.state {
            State::Body { len, .. } => (self.pos + len + 2).saturating_sub(buffered),
            _ => 0,
        }
    }

    fn parse_inline(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.limits.max_inline {
                return Err(ProtocolError::new("too big inline request"));
            }
            return Ok(None);
        };
        if nl > self.limits.max_inline {
            return Err(ProtocolError::new("too big inline request"));
        }
        let mut line = &buf[..nl];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        self.source = Source::Inline;
        self.args.clear();
        self.inline.clear();
        split_inline(line, &mut self.inline, &mut self.args)?;
        Ok(Some(nl + 1))
    }

    /// The arguments of the frame the last [`Parser::parse`] completed; `buf` is the
    /// same buffer that was parsed.
    pub fn args<'a>(&'a self, buf: &'a [u8]) -> Args<'a> {
        let data = match self.source {
            Source::Buffer => buf,
            Source::Inline => &self.inline,
        };
        Args { data, ranges: &self.args }
    }

    /// Forgets the arguments of the last frame; releases memory a huge frame left.
    pub fn consume(&mut self) {
        self.args.clear();
        if self.args.capacity() > 4096 {
            self.args = Vec::new();
        }
        if self.inline.capacity() > 4 * self.limits.max_inline.max(1024) {
            self.inline = Vec::new();
        }
    }
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline command line into arguments like Redis' `sdssplitargs`: words
/// separated by white space; `"..."` with the escapes `\n \r \t \b \a \\ \" \xHH`;
/// `'...'` with `\'`. A closing quote must be followed by white space or the end.
fn split_inline(line: &[u8], out: &mut Vec<u8>, ranges: &mut Vec<Range<usize>>) -> Result<(), ProtocolError> {
    let unbalanced = || ProtocolError::new("unbalanced quotes in request");
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(());
        }
        let start = out.len();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let Some(&c) = line.get(i) else {
                if in_double || in_single {
                    return Err(unbalanced());
                }
                break;
            };
            if in_double {
                match c {
                    b'\\' => {
                        let hex = |at: usize| line.get(at).and_then(|&b| hex_value(b));
                        match (line.get(i + 1), hex(i + 2), hex(i + 3)) {
                            (Some(b'x'), Some(hi), Some(lo)) => {
                                out.push(hi * 16 + lo);
                                i += 3;
                            }
                            (Some(&escaped), _, _) => {
                                out.push(match escaped {
                                    b'n' => b'\n',
                                    b'r' => b'\r',
                                    b't' => b'\t',
                                    b'b' => 0x08,
                                    b'a' => 0x07,
                                    other => other,
                                });
                                i += 1;
                            }
                            (None, _, _) => out.push(b'\\'),
                        }
                    }
                    b'"' => {
                        // The closing quote must be followed by a space or the end.
                        if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                            return Err(unbalanced());
                        }
                        i += 1;
                        break;
                    }
                    other => out.push(other),
                }
            } else if in_single {
                match c {
                    b'\\' if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        out.push(b'\'');
                    }
                    b'\'' => {
                        if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                            return Err(unbalanced());
                        }
                        i += 1;
                        break;
                    }
                    other => out.push(other),
                }
            } else {
                match c {
                    c if is_space(c) => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => out.push(other),
                }
            }
            i += 1;
        }
        ranges.push(start..out.len());
    }
}

/// Encodes a command as a multibulk frame (what clients send).
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small_limits() -> ParserLimits {
        ParserLimits { max_bulk: 100, max_args: 10, max_inline: 50, max_frame: 1000 }
    }

    type Command = Vec<Vec<u8>>;

    /// Parses every complete frame of `input`; returns the commands and the bytes left.
    fn parse_all(parser: &mut Parser, input: &[u8]) -> Result<(Vec<Command>, usize), ProtocolError> {
        let mut buf = input.to_vec();
        let mut commands = Vec::new();
        while let Some(n) = parser.parse(&buf)? {
            let args = parser.args(&buf);
            if !args.is_empty() {
                commands.push(args.iter().map(<[u8]>::to_vec).collect());
            }
            parser.consume();
            buf.drain(..n);
        }
        Ok((commands, buf.len()))
    }

    fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_complete_multibulk_frame_parses_into_its_arguments() {
        let mut p = Parser::new(ParserLimits::default());
        let (cmds, left) = parse_all(&mut p, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n").unwrap();
        assert_eq!(cmds, vec![cmd(&["SET", "k", "hello"])]);
        assert_eq!(left, 0);
    }

    #[test]
    fn bulk_arguments_may_hold_any_bytes_including_crlf() {
        let mut p = Parser::new(ParserLimits::default());
        let (cmds, _) = parse_all(&mut p, b"*2\r\n$4\r\na\r\nb\r\n$0\r\n\r\n").unwrap();
        assert_eq!(cmds, vec![vec![b"a\r\nb".to_vec(), Vec::new()]]);
    }

    #[test]
    fn an_incomplete_frame_waits_for_more_bytes_at_every_split_point() {
        let frame = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
        for split in 0..frame.len() {
            let mut p = Parser::new(ParserLimits::default());
            assert_eq!(p.parse(&frame[..split]), Ok(None), "split at {split}");
            assert_eq!(p.parse(frame), Ok(Some(frame.len())), "split at {split}");
            assert_eq!(p.args(frame).iter().collect::<Vec<_>>(), vec![&b"GET"[..], b"0123456789"]);
        }
    }

    #[test]
    fn a_frame_fed_one_byte_at_a_time_parses_once_complete() {
        let frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n";
        let mut p = Parser::new(ParserLimits::default());
        for end in 1..frame.len() {
            assert_eq!(p.parse(&frame[..end]), Ok(None));
        }
        assert_eq!(p.parse(frame), Ok(Some(frame.len())));
        assert_eq!(p.args(frame).get(2), b"v\r\n");
    }

    #[test]
    fn pipelined_frames_parse_one_after_the_other() {
        let mut p = Parser::new(ParserLimits::default());
        let input = b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n*2\r\n$3\r\nGET";
        let (cmds, left) = parse_all(&mut p, input).unwrap();
        assert_eq!(cmds, vec![cmd(&["PING"]), cmd(&["GET", "a"]), cmd(&["PING"])]);
        assert_eq!(left, b"*2\r\n$3\r\nGET".len());
    }

    #[test]
    fn empty_multibulk_frames_are_skipped() {
        let mut p = Parser::new(ParserLimits::default());
        let (cmds, left) = parse_all(&mut p, b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(cmds, vec![cmd(&["PING"])]);
        assert_eq!(left, 0);
    }

    #[test]
    fn inline_commands_split_on_white_space() {
        let mut p = Parser::new(ParserLimits::default());
        let (cmds, _) = parse_all(&mut p, b"SET  k\tv\r\nGET k\n\r\n   \r\nPING\r\n").unwrap();
        assert_eq!(cmds, vec![cmd(&["SET", "k", "v"]), cmd(&["GET", "k"]), cmd(&["PING"])]);
    }

    #[test]
    fn inline_commands_understand_quotes_and_escapes() {
        let mut p = Parser::new(ParserLimits::default());
        let (cmds, _) = parse_all(&mut p, b"SET \"a key\" 'it\\'s' \"x\\x41\\n\\\"\" \"\"\r\n").unwrap();
        assert_eq!(
            cmds,
            vec![vec![b"SET".to_vec(), b"a key".to_vec(), b"it's".to_vec(), b"xA\n\"".to_vec(), Vec::new()]]
        );
    }

    #[test]
    fn inline_commands_with_unbalanced_quotes_are_protocol_errors() {
        for line in [&b"SET \"abc\r\n"[..], b"SET 'abc\r\n", b"SET \"abc\"def\r\n"] {
            let mut p = Parser::new(ParserLimits::default());
            let err = parse_all(&mut p, line).unwrap_err();
            assert_eq!(err.to_string(), "Protocol error: unbalanced quotes in request");
        }
    }

    #[test]
    fn an_inline_command_without_newline_waits_until_the_inline_limit() {
        let mut p = Parser::new(small_limits());
        assert_eq!(p.parse(&[b'a'; 50]), Ok(None));
        assert_eq!(p.parse(&[b'a'; 51]), Err(ProtocolError::new("too big inline request")));
        let mut long = vec![b'a'; 60];
        long.push(b'\n');
        assert_eq!(Parser::new(small_limits()).parse(&long), Err(ProtocolError::new("too big inline request")));
    }

    #[test]
    fn a_multibulk_count_above_the_limit_is_refused() {
        let mut p = Parser::new(small_limits());
        assert_eq!(p.parse(b"*10\r\n"), Ok(None));
        let mut p = Parser::new(small_limits());
        assert_eq!(p.parse(b"*11\r\n"), Err(ProtocolError::new("invalid multibulk length")));
        let mut p = Parser::new(ParserLimits::default());
        assert_eq!(p.parse(b"*1048576\r\n"), Ok(None));
        let mut p = Parser::new(ParserLimits::default());
        assert_eq!(p.parse(b"*1048577\r\n"), Err(ProtocolError::new("invalid multibulk length")));
        let mut p = Parser::new(ParserLimits::default());
        assert_eq!(p.parse(b"*99999999999999999999999\r\n"), Err(ProtocolError::new("invalid multibulk length")));
    }

    #[test]
    fn a_malformed_multibulk_count_is_refused() {
        for frame in [&b"*abc\r\n"[..], b"*\r\n", b"*+1\r\n", b"*01\r\n", b"* 1\r\n"] {
            let mut p = Parser::new(ParserLimits::default());
            assert_eq!(p.parse(frame), Err(ProtocolError::new("invalid multibulk length")), "{frame:?}");
        }
    }

    #[test]
    fn a_header_line_without_crlf_is_refused_past_the_inline_limit() {
        let mut p = Parser::new(small_limits());
        let mut frame = b"*1".to_vec();
        frame.extend(std::iter::repeat_n(b'1', 60));
        assert_eq!(p.parse(&frame), Err(ProtocolError::new("too big mbulk count string")));
        let mut p = Parser::new(small_limits());
        let mut frame = b"*1\r\n$".to_vec();
        frame.extend(std::iter::repeat_n(b'1', 60));
        assert_eq!(p.parse(&frame), Err(ProtocolError::new("too big bulk count string")));
    }

    #[test]
    fn a_bulk_length_above_the_limit_is_refused_before_any_data_arrives() {
        let mut p = Parser::new(small_limits());
        assert_eq!(p.parse(b"*1\r\n$100\r\n"), Ok(None));
        assert_eq!(p.needed(b"*1\r\n$100\r\n".len()), 102);
        let mut p = Parser::new(small_limits());
        assert_eq!(p.parse(b"*1\r\n$101\r\n"), Err(ProtocolError::new("invalid bulk length")));
        let mut p = Parser::new(small_limits());
        assert_eq!(p.parse(b"*1\r\n$-1\r\n"), Err(ProtocolError::new("invalid bulk length")));
    }

    #[test]
    fn the_default_bulk_limit_is_the_value_limit_plus_slack() {
        let limits = ParserLimits::for_values(1024, 1024 * 1024);
        assert_eq!(limits.max_bulk, 1024 * 1024 + 64 * 1024);
        assert_eq!(ParserLimits::for_values(1 << 20, 10).max_bulk, 1 << 20);
    }

    #[test]
    fn a_frame_larger_than_the_frame_limit_is_refused() {
        let mut p = Parser::new(ParserLimits { max_bulk: 100, max_args: 100, max_inline: 50, max_frame: 250 });
        let mut frame = b"*3\r\n".to_vec();
        for _ in 0..3 {
            frame.extend_from_slice(b"$100\r\n");
            frame.extend_from_slice(&[b'x'; 100]);
            frame.extend_from_slice(b"\r\n");
        }
        assert_eq!(p.parse(&frame), Err(ProtocolError::new("command is too large")));
    }

    #[test]
    fn a_missing_dollar_or_crlf_is_a_protocol_error() {
        let mut p = Parser::new(ParserLimits::default());
        assert_eq!(p.parse(b"*1\r\n:3\r\n"), Err(ProtocolError::new("expected '$', got ':'")));
        let mut p = Parser::new(ParserLimits::default());
        assert_eq!(p.parse(b"*1\r\n$3\r\nabcXY"), Err(ProtocolError::new("expected '\\r\\n' after bulk data")));
        let mut p = Parser::new(ParserLimits::default());
        assert_eq!(p.parse(b"*1\rX"), Err(ProtocolError::new("expected '\\n' after '\\r'")));
    }

    #[test]
    fn a_huge_count_does_not_reserve_memory_for_it() {
        let mut p = Parser::new(ParserLimits::default());
        assert_eq!(p.parse(b"*1048576\r\n"), Ok(None));
        assert!(p.args.capacity() <= 64);
    }

    #[test]
    fn encoded_commands_parse_back() {
        let mut buf = Vec::new();
        encode_command(&[&b"SET"[..], b"k\r\n", b""], &mut buf);
        let mut p = Parser::new(ParserLimits::default());
        let (cmds, left) = parse_all(&mut p, &buf).unwrap();
        assert_eq!(cmds, vec![vec![b"SET".to_vec(), b"k\r\n".to_vec(), Vec::new()]]);
        assert_eq!(left, 0);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut p = Parser::new(small_limits());
            let _ = parse_all(&mut p, &bytes);
            // Random bytes after a valid prefix, fed in pieces.
            let mut p = Parser::new(small_limits());
            let mut buf = b"*2\r\n$3\r\nGET\r\n".to_vec();
            for chunk in bytes.chunks(7) {
                buf.extend_from_slice(chunk);
                match p.parse(&buf) {
                    Ok(Some(n)) => { let _ = p.args(&buf).iter().count(); p.consume(); buf.drain(..n); }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn any_encoded_command_parses_back_whatever_the_read_boundaries(
            commands in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..5),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for c in &commands {
                encode_command(c, &mut wire);
            }
            let mut p = Parser::new(ParserLimits::default());
            let mut buf = Vec::new();
            let mut parsed = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(n) = p.parse(&buf).unwrap() {
                    parsed.push(p.args(&buf).iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
                    p.consume();
                    buf.drain(..n);
                }
            }
            prop_assert_eq!(parsed, commands);
            prop_assert!(buf.is_empty());
        }
    }
}
