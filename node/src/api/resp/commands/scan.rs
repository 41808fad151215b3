//! Walking the keyspace: SCAN and KEYS, and the glob patterns they match with.

use super::*;

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`. The cursor is the index of
/// the next shard to scan; each call scans whole shards until it has `COUNT` keys, so
/// every key present for the whole iteration is returned (exactly once).
pub(super) fn scan(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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

pub(super) fn keys(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
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
pub(super) fn match_class(pattern: &[u8], mut p: usize, c: u8, nocase: bool) -> Option<usize> {
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
