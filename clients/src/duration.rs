//! Durations on the command line: `100ms`, `2s`, `1.5s`, `1m30s`, `0`
//! (Go's `time.ParseDuration` syntax, which users of the Go demo know).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (e.g. 100ms, 2s, 1.5s, 0)")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected a number with a unit ns, us, ms, s, m or h (e.g. 100ms, 2s, 1.5s, 1m30s) or 0"
    )]
    Invalid(String),
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses one or more `<number><unit>` parts (`1m30s`); a bare `0` is zero.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_owned());
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        total = total
            .checked_add(decimal_times(number, unit_nanos).ok_or_else(invalid)?)
            .ok_or_else(|| DurationError::TooLarge(input.to_owned()))?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| DurationError::TooLarge(input.to_owned()))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// `number` (digits with at most one `.`) times `unit` nanoseconds, exactly:
/// no floating point, so `1.1s` is 1_100_000_000 ns.
fn decimal_times(number: &str, unit: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(unit)?;
    // Digits beyond nanosecond precision cannot matter; 30 keeps 10^n in u128.
    let frac = &frac[..frac.len().min(30)];
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        value = value.checked_add(digits.checked_mul(unit)? / 10u128.pow(frac.len() as u32))?;
    }
    Some(value)
}

/// Short human form for logs and docs: `0s`, `1s`, `1500ms`, `250us`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("100ms", Duration::from_millis(100)),
            ("2s", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1.1s", Duration::from_millis(1100)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            (" 10ms ", Duration::from_millis(10)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_missing_or_unknown_units_and_garbage() {
        for input in [
            "1", "10", "1x", "s", "ms", "-1s", "1..5s", ".s", "1s2", "abc", "1 s",
        ] {
            assert!(
                matches!(parse_duration(input), Err(DurationError::Invalid(_))),
                "{input:?} -> {:?}",
                parse_duration(input)
            );
        }
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
    }

    #[test]
    fn rejects_overflow_instead_of_wrapping() {
        assert!(matches!(
            parse_duration("99999999999999999999999h"),
            Err(DurationError::Invalid(_) | DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse_duration("6000000000000000h"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_micros(3)), "3us");
        assert_eq!(format_duration(Duration::from_nanos(3)), "3ns");
    }

    #[test]
    fn format_round_trips_through_parse() {
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(2),
            Duration::from_nanos(9),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
