//! Parsing of TTLs and sizes given by users (`30s`, `1h30m`, `500ms`, `64mb`).

/// Parses a TTL: a number with a unit (`ms`, `s`, `m`, `h`, `d`), several of them
/// (`1h30m`), or a bare number of seconds. Returns milliseconds.
pub fn parse_ttl_ms(input: &str) -> Result<u64, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("ttl is empty".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(|| format!("ttl {input:?} is too large"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("ttl {input:?} is not a duration (expected e.g. 30s, 500ms, 1h30m)"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("ttl {input:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("ttl {input:?} needs a unit after {n} (ms, s, m, h or d)")),
            other => return Err(format!("ttl {input:?} has an unknown unit {other:?} (ms, s, m, h or d)")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("ttl {input:?} is too large"))?;
    }
    // Keep absolute expiries far from overflow: 100 years is plenty for a cache.
    if total > 100 * 365 * 86_400_000 {
        return Err(format!("ttl {input:?} is too large (at most 100 years)"));
    }
    Ok(total)
}

/// Parses a size in bytes: a bare number, or with `kb`, `mb`, `gb` (powers of 1024;
/// `kib`, `mib`, `gib` and single letters are accepted too).
pub fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim().to_ascii_lowercase();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!("size {input:?} is not a number of bytes (expected e.g. 512mb)"));
    }
    let n: u64 = s[..digits].parse().map_err(|_| format!("size {input:?} is too large"))?;
    let factor: u64 = match s[digits..].trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("size {input:?} has an unknown unit {other:?} (b, kb, mb, gb, tb)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("size {input:?} is too large"))
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    // humantime cannot format years past 9999: clamp to its last representable ms.
    const MAX_MS: u64 = 253_402_300_799_999;
    let unix_ms = unix_ms.min(MAX_MS);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_accept_units_combinations_and_bare_seconds() {
        assert_eq!(parse_ttl_ms("30s"), Ok(30_000));
        assert_eq!(parse_ttl_ms("500ms"), Ok(500));
        assert_eq!(parse_ttl_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_ttl_ms("2d"), Ok(172_800_000));
        assert_eq!(parse_ttl_ms("45"), Ok(45_000));
        assert_eq!(parse_ttl_ms("0"), Ok(0));
    }

    #[test]
    fn malformed_ttls_are_refused_with_a_reason() {
        for bad in ["", "abc", "10x", "-5s", "5 s", "s", "1.5s", "99999999999999999999s", "1000000d"] {
            assert!(parse_ttl_ms(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_ttl_ms("10x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5pb").is_err());
    }

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_131_400_123), "2025-11-26T04:30:00.123Z");
        assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
