//! Keys and string values: GET, SET (and its forms), MGET, MSET, DEL/UNLINK, EXISTS,
//! TYPE, DBSIZE.

use super::*;

pub(super) fn dbsize(ctx: &mut Ctx<'_>, _args: Args<'_>) -> CommandResult {
    ctx.out.int(ctx.state.db.store().len() as i64);
    Ok(())
}

pub(super) fn get(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let out = &mut *ctx.out;
    ctx.state
        .db
        .read(key, |cur| match cur {
            Some(c) => out.bulk(c.value.bytes),
            None => out.null(),
        })
        .map_err(CommandError::db)
}

/// Which existing state a write requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Condition {
    Always,
    /// Only when the key does not exist.
    Nx,
    /// Only when the key exists.
    Xx,
}

impl Condition {
    pub(super) fn allows(self, exists: bool) -> bool {
        match self {
            Condition::Always => true,
            Condition::Nx => !exists,
            Condition::Xx => exists,
        }
    }
}

/// The expiry a `SET` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SetExpiry {
    /// No option: the node's default TTL.
    Default,
    /// `KEEPTTL`.
    Keep,
    /// `EX`/`PX`/`EXAT`/`PXAT`, resolved to Unix milliseconds.
    At(i64),
}

/// Resolves an expiry argument to Unix milliseconds as Redis' `SET` does: it must be
/// a positive integer, and must not overflow once converted and made absolute.
pub(super) fn resolve_set_expiry(arg: &[u8], unit_ms: i64, relative: bool, command: &str) -> Result<i64, CommandError> {
    let v = int_arg(arg)?;
    if v <= 0 {
        return Err(CommandError::invalid_expire(command));
    }
    let ms = v.checked_mul(unit_ms).ok_or_else(|| CommandError::invalid_expire(command))?;
    let at = if relative { ms.checked_add(now_ms()) } else { Some(ms) };
    at.filter(|&at| at <= MAX_EXPIRY_MS).ok_or_else(|| CommandError::invalid_expire(command))
}

/// Writes `value` at `key` under `condition` with `expiry`; when `get` the old value
/// (or null) is the reply, else `+OK` (or null when the condition failed). An expiry
/// in the past deletes the key (as Redis 7 does).
pub(super) fn set_value(
    ctx: &mut Ctx<'_>,
    key: &str,
    value: Value,
    condition: Condition,
    expiry: SetExpiry,
    get: bool,
) -> CommandResult {
    let default = ctx.state.default_expiry();
    let now = now_ms();
    let mark = ctx.out.len();
    let out = &mut *ctx.out;
    let result = ctx.state.db.update(key, |current| {
        let exists = current.is_some();
        if get {
            match &current {
                Some(c) => out.bulk(c.value.bytes),
                None => out.null(),
            }
        }
        if !condition.allows(exists) {
            return Ok(Decision::Keep(false));
        }
        let expires_at = match expiry {
            SetExpiry::Default => default.resolve(None),
            SetExpiry::Keep => Expiry::Keep.resolve(current.as_ref()),
            SetExpiry::At(at) if at <= now => {
                return Ok(if exists {
                    Decision::Write { value: None, expires_at: None, reply: true }
                } else {
                    Decision::Keep(true)
                });
            }
            SetExpiry::At(at) => Some(at as u64),
        };
        Ok(Decision::Write { value: Some(value), expires_at, reply: true })
    });
    match result {
        Ok(written) => {
            let done = ctx.note(written);
            if !get {
                if done { ctx.out.ok() } else { ctx.out.null() }
            }
            Ok(())
        }
        Err(e) => {
            ctx.out.truncate(mark);
            Err(CommandError::db(e))
        }
    }
}

/// A value argument: within the size limit, stored as JSON when it is JSON.
pub(super) fn value_arg(ctx: &Ctx<'_>, arg: &[u8]) -> Result<Value, CommandError> {
    ctx.state.db.check_value(arg.len()).map_err(CommandError::db)?;
    Ok(Value::from_resp(arg))
}

pub(super) fn set(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let mut condition = Condition::Always;
    let mut get = false;
    // (argument, unit in ms, relative)
    let mut expire: Option<(&[u8], i64, bool)> = None;
    let mut keep_ttl = false;
    let mut i = 3;
    while i < args.len() {
        let opt = args.get(i);
        let has_expiry = expire.is_some() || keep_ttl;
        if is(opt, "nx") && condition != Condition::Xx {
            condition = Condition::Nx;
        } else if is(opt, "xx") && condition != Condition::Nx {
            condition = Condition::Xx;
        } else if is(opt, "get") {
            get = true;
        } else if is(opt, "keepttl") && !has_expiry {
            keep_ttl = true;
        } else if !has_expiry
            && i + 1 < args.len()
            && (is(opt, "ex") || is(opt, "px") || is(opt, "exat") || is(opt, "pxat"))
        {
            let unit = if is(opt, "ex") || is(opt, "exat") { 1000 } else { 1 };
            let relative = is(opt, "ex") || is(opt, "px");
            expire = Some((args.get(i + 1), unit, relative));
            i += 1;
        } else {
            return Err(CommandError::syntax());
        }
        i += 1;
    }
    let expiry = match expire {
        Some((arg, unit, relative)) => SetExpiry::At(resolve_set_expiry(arg, unit, relative, "set")?),
        None if keep_ttl => SetExpiry::Keep,
        None => SetExpiry::Default,
    };
    let key = ctx.key(args.get(1))?;
    let value = value_arg(ctx, args.get(2))?;
    set_value(ctx, key, value, condition, expiry, get)
}

pub(super) fn setex_generic(ctx: &mut Ctx<'_>, args: Args<'_>, unit_ms: i64, command: &str) -> CommandResult {
    let at = resolve_set_expiry(args.get(2), unit_ms, true, command)?;
    let key = ctx.key(args.get(1))?;
    let value = value_arg(ctx, args.get(3))?;
    set_value(ctx, key, value, Condition::Always, SetExpiry::At(at), false)
}

pub(super) fn setex(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    setex_generic(ctx, args, 1000, "setex")
}

pub(super) fn psetex(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    setex_generic(ctx, args, 1, "psetex")
}

/// Checks every key argument of a multi-key command before any is used.
pub(super) fn keys_args<'k>(ctx: &Ctx<'_>, args: Args<'k>) -> Result<Vec<&'k str>, CommandError> {
    args.iter().map(|a| ctx.key(a)).collect()
}

pub(super) fn mget(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let keys = keys_args(ctx, args.tail(1))?;
    let out = &mut *ctx.out;
    out.array(keys.len());
    for key in keys {
        let found = ctx.state.db.read(key, |cur| match cur {
            Some(c) => out.bulk(c.value.bytes),
            None => out.null(),
        });
        if found.is_err() {
            // Keys were checked above; keep the array well-formed regardless.
            out.null();
        }
    }
    Ok(())
}

pub(super) fn mset(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    if args.len().is_multiple_of(2) {
        return Err(CommandError::arity("mset"));
    }
    let pairs = args.tail(1);
    for (i, arg) in pairs.iter().enumerate() {
        if i % 2 == 0 {
            ctx.key(arg)?;
        } else {
            ctx.state.db.check_value(arg.len()).map_err(CommandError::db)?;
        }
    }
    // All the keys at once (no reader of this node sees half of an MSET), acknowledged
    // together once the journal holds every one.
    let expires_at = ctx.state.default_expiry().resolve(None);
    let mut entries = Vec::with_capacity(pairs.len() / 2);
    for i in (0..pairs.len()).step_by(2) {
        entries.push((ctx.key(pairs.get(i))?, Value::from_resp(pairs.get(i + 1))));
    }
    let written = ctx.state.db.put_many(entries, expires_at).map_err(CommandError::db)?;
    for w in written {
        ctx.note(w);
    }
    ctx.out.ok();
    Ok(())
}

pub(super) fn del(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let keys = keys_args(ctx, args.tail(1))?;
    let mut deleted = 0;
    for key in keys {
        let written = ctx.state.db.delete(key).map_err(CommandError::db)?;
        if ctx.note(written) {
            deleted += 1;
        }
    }
    ctx.out.int(deleted);
    Ok(())
}

pub(super) fn exists(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let keys = keys_args(ctx, args.tail(1))?;
    let mut found = 0;
    for key in keys {
        // A key given twice counts twice, as in Redis.
        if ctx.state.db.read(key, |cur| cur.is_some()).map_err(CommandError::db)? {
            found += 1;
        }
    }
    ctx.out.int(found);
    Ok(())
}

pub(super) fn type_(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let exists = ctx.state.db.read(key, |cur| cur.is_some()).map_err(CommandError::db)?;
    ctx.out.simple(if exists { "string" } else { "none" });
    Ok(())
}
