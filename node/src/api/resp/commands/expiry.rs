//! Expiry: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, PERSIST, TTL, PTTL, EXPIRETIME,
//! PEXPIRETIME.

use super::*;

/// The conditions of `EXPIRE key t [NX|XX|GT|LT]`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

impl ExpireFlags {
    fn parse(args: Args<'_>) -> Result<Self, CommandError> {
        let mut f = ExpireFlags::default();
        for opt in args.iter() {
            if is(opt, "nx") {
                f.nx = true;
            } else if is(opt, "xx") {
                f.xx = true;
            } else if is(opt, "gt") {
                f.gt = true;
            } else if is(opt, "lt") {
                f.lt = true;
            } else {
                return Err(CommandError::owned(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(truncated(opt, 128))
                )));
            }
        }
        if f.nx && (f.xx || f.gt || f.lt) {
            return Err(CommandError::new("ERR NX and XX, GT or LT options at the same time are not compatible"));
        }
        if f.gt && f.lt {
            return Err(CommandError::new("ERR GT and LT options at the same time are not compatible"));
        }
        Ok(f)
    }

    /// Whether the new expiry `when` may replace `current` (`None` = no expiry, which
    /// counts as an infinite TTL for GT and LT, as in Redis).
    fn allow(self, current: Option<u64>, when: i64) -> bool {
        let current = current.map(|c| c.min(i64::MAX as u64) as i64);
        if self.nx && current.is_some() {
            return false;
        }
        if self.xx && current.is_none() {
            return false;
        }
        if self.gt && current.is_none_or(|c| when <= c) {
            return false;
        }
        if self.lt && current.is_some_and(|c| when >= c) {
            return false;
        }
        true
    }
}

/// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`: 1 when the expiry was set, 0 when
/// the key does not exist or a condition failed. An expiry that is not in the future
/// deletes the key.
pub(super) fn expire_generic(
    ctx: &mut Ctx<'_>,
    args: Args<'_>,
    unit_ms: i64,
    relative: bool,
    command: &str,
) -> CommandResult {
    let flags = ExpireFlags::parse(args.tail(3))?;
    let v = int_arg(args.get(2))?;
    let now = now_ms();
    let when = v
        .checked_mul(unit_ms)
        .and_then(|ms| if relative { ms.checked_add(now) } else { Some(ms) })
        .filter(|&when| when <= MAX_EXPIRY_MS)
        .ok_or_else(|| CommandError::invalid_expire(command))?;
    let key = ctx.key(args.get(1))?;
    let written = ctx
        .state
        .db
        .update(key, |current| {
            let Some(cur) = current else { return Ok(Decision::Keep(0)) };
            if !flags.allow(cur.expires_at, when) {
                return Ok(Decision::Keep(0));
            }
            if when <= now {
                return Ok(Decision::Write { value: None, expires_at: None, reply: 1 });
            }
            Ok(Decision::Write { value: Some(cur.value.to_owned()), expires_at: Some(when as u64), reply: 1 })
        })
        .map_err(CommandError::db)?;
    let reply = ctx.note(written);
    ctx.out.int(reply);
    Ok(())
}

pub(super) fn expire(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1000, true, "expire")
}

pub(super) fn pexpire(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1, true, "pexpire")
}

pub(super) fn expireat(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1000, false, "expireat")
}

pub(super) fn pexpireat(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    expire_generic(ctx, args, 1, false, "pexpireat")
}

pub(super) fn persist(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let written = ctx
        .state
        .db
        .update(key, |current| match current {
            Some(cur) if cur.expires_at.is_some() => {
                Ok(Decision::Write { value: Some(cur.value.to_owned()), expires_at: None, reply: 1 })
            }
            _ => Ok(Decision::Keep(0)),
        })
        .map_err(CommandError::db)?;
    let reply = ctx.note(written);
    ctx.out.int(reply);
    Ok(())
}

/// `TTL`-like replies: -2 when absent, -1 without expiry, else `f(expires_at, now)`.
pub(super) fn ttl_generic(ctx: &mut Ctx<'_>, args: Args<'_>, f: fn(u64, u64) -> u64) -> CommandResult {
    let key = ctx.key(args.get(1))?;
    let now = clock::now_ms();
    let reply = ctx
        .state
        .db
        .read(key, |cur| match cur {
            None => -2,
            Some(Current { expires_at: None, .. }) => -1,
            Some(Current { expires_at: Some(at), .. }) => f(at, now).min(i64::MAX as u64) as i64,
        })
        .map_err(CommandError::db)?;
    ctx.out.int(reply);
    Ok(())
}

pub(super) fn ttl(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, now| (at.saturating_sub(now) + 500) / 1000)
}

pub(super) fn pttl(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, now| at.saturating_sub(now))
}

pub(super) fn expiretime(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, _| (at + 500) / 1000)
}

pub(super) fn pexpiretime(ctx: &mut Ctx<'_>, args: Args<'_>) -> CommandResult {
    ttl_generic(ctx, args, |at, _| at)
}
