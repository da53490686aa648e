//! Durations as people write them in the config: `30s`, `10m`, `2h`, `1h30m`,
//! `1d`, or plain seconds.
//!
//! Contract: [`parse`] accepts one or more `<digits><unit>` parts with units
//! `d`, `h`, `m`, `s`, each at most once and largest first, or bare digits
//! (seconds). Results never exceed `u32::MAX` seconds, so every consumer can
//! store them as 32-bit seconds or 64-bit nanoseconds. [`format`] writes the
//! shortest such text and `parse(format(d)) == d`.

use std::time::Duration;

/// Longest duration the config accepts anywhere.
pub(crate) const MAX_SECS: u64 = u32::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DurationError {
    /// Not a duration at all.
    Invalid,
    /// Well formed, but longer than [`MAX_SECS`].
    TooLong,
}

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Parses a duration in whole seconds.
pub(crate) fn parse(text: &str) -> Result<u64, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Invalid);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return parse_digits(text);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    // Index into UNITS of the next unit allowed: parts go largest first.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Invalid);
        }
        let amount = parse_digits(&rest[..digits])?;
        let unit = rest[digits..].chars().next().ok_or(DurationError::Invalid)?;
        let offset = UNITS[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or(DurationError::Invalid)?;
        let scale = UNITS[next_unit + offset].1;
        next_unit += offset + 1;
        total = amount
            .checked_mul(scale)
            .and_then(|s| s.checked_add(total))
            .ok_or(DurationError::TooLong)?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    if total > MAX_SECS {
        return Err(DurationError::TooLong);
    }
    Ok(total)
}

fn parse_digits(digits: &str) -> Result<u64, DurationError> {
    // Only digits reach here, so a failure can only be overflow.
    match digits.parse::<u64>() {
        Ok(v) if v <= MAX_SECS => Ok(v),
        _ => Err(DurationError::TooLong),
    }
}

/// Writes `d` (whole seconds; sub-second parts are dropped) the way the
/// config would spell it: `90s` becomes `1m30s`, `7200s` becomes `2h`.
pub(crate) fn format(d: &Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, scale) in UNITS {
        if secs >= scale {
            out.push_str(&format!("{}{unit}", secs / scale));
            secs %= scale;
        }
    }
    out
}

/// serde helpers so the effective config prints durations as the config
/// spells them rather than as `{secs, nanos}`.
pub(crate) mod serde_text {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(d))
    }

    pub(crate) fn serialize_opt<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format(d)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_combinations_parse_to_seconds() {
        assert_eq!(parse("30s"), Ok(30));
        assert_eq!(parse("10m"), Ok(600));
        assert_eq!(parse("2h"), Ok(7_200));
        assert_eq!(parse("1h30m"), Ok(5_400));
        assert_eq!(parse("1d2h3m4s"), Ok(93_784));
        assert_eq!(parse("45"), Ok(45));
        assert_eq!(parse("0s"), Ok(0));
    }

    #[test]
    fn malformed_durations_are_invalid() {
        for bad in ["", "s", "10x", "1.5h", "30m1h", "1h1h", "h1", "-5s", " 5s", "5 s"] {
            assert_eq!(parse(bad), Err(DurationError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn durations_past_u32_seconds_are_too_long() {
        assert_eq!(parse("4294967296"), Err(DurationError::TooLong));
        assert_eq!(parse("99999999999999999999999s"), Err(DurationError::TooLong));
        assert_eq!(parse("50000d"), Err(DurationError::TooLong));
        assert_eq!(parse("4294967295s"), Ok(4_294_967_295));
    }

    #[test]
    fn format_round_trips_through_parse() {
        for secs in [1, 59, 60, 61, 3_600, 5_400, 7_200, 86_400, 93_784, 10_800] {
            let text = format(&Duration::from_secs(secs));
            assert_eq!(parse(&text), Ok(secs), "{text}");
        }
        assert_eq!(format(&Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format(&Duration::from_secs(0)), "0s");
    }
}
