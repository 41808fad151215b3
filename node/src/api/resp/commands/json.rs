//! JSON documents (whole documents only, as RedisJSON's root path): JSON.GET, JSON.SET,
//! JSON.DEL/FORGET, JSON.MGET, JSON.TYPE.

use super::*;

/// A JSON path argument: only the root. `true` for `$` (JSONPath: replies wrap the
/// document in an array), `false` for the legacy `.`.
pub(super) fn root_path(arg: &[u8]) -> Result<bool, CommandError> {
    match arg {
        b"$" => Ok(true),
        b"." => Ok(false),
        _ => Err(CommandError::root_path_only()),
    }
}

pub(super) fn trim_json(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// RedisJSON's output formatting options.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct JsonFormat<'a> {
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
pub(super) fn json_get_options<'a>(args: Args<'a>) -> Result<(JsonFormat<'a>, Vec<bool>), CommandError> {
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
pub(super) fn json_for_paths(doc: &[u8], paths: &[bool], out: &mut Vec<u8>) {
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

pub(super) fn json_get(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn json_mget(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn json_set(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn json_del(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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
pub(super) fn json_type_name(encoding: Encoding, bytes: &[u8]) -> &'static str {
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

pub(super) fn json_type(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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
