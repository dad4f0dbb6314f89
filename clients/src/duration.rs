//! Durations on the command line: `100ms`, `2s`, `1.5s`, `1m30s`, `0`, read
//! by `humantime` (the server's flags use it too); this module only names
//! the flag value in the error.

use std::time::Duration;

const EXAMPLES: &str = "e.g. 100ms, 2s, 1.5s, 1m30s, or 0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration ({EXAMPLES})")]
    Empty,
    #[error("invalid duration {input:?}: {reason} ({EXAMPLES})")]
    Invalid { input: String, reason: String },
    #[error("duration {0:?} is too large, or finer than a nanosecond")]
    TooLarge(String),
}

/// One or more `<number><unit>` parts (`1m30s`, `1m 30s`); a bare `0` is
/// zero. Units: ns, us/µs, ms, s, m, h and humantime's longer spellings
/// (`sec`, `min`, `days`, ...).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::Empty => DurationError::Empty,
        humantime::DurationError::NumberOverflow => DurationError::TooLarge(input.to_owned()),
        reason => DurationError::Invalid {
            input: input.to_owned(),
            reason: reason.to_string(),
        },
    })
}

/// Short human form for logs and messages: `0s`, `5s`, `1s 500ms`, `250us`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
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
            ("0.5s", Duration::from_millis(500)),
            ("1.1s", Duration::from_millis(1100)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            (" 10ms ", Duration::from_millis(10)),
            // humantime's additions.
            ("1m 30s", Duration::from_secs(90)),
            ("2min", Duration::from_secs(120)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_missing_or_unknown_units_and_garbage() {
        // `.5s` was accepted by the parser this replaced: humantime wants
        // the leading 0.
        for input in [
            "1", "10", "1x", "s", "ms", "-1s", "1..5s", ".s", "1s2", "abc", ".5s",
        ] {
            assert!(
                matches!(parse_duration(input), Err(DurationError::Invalid { .. })),
                "{input:?} -> {:?}",
                parse_duration(input)
            );
        }
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
    }

    #[test]
    fn errors_name_the_value_and_say_what_is_expected() {
        let message = parse_duration("5").unwrap_err().to_string();
        assert!(message.starts_with("invalid duration \"5\": "), "{message}");
        assert!(message.contains("100ms"), "{message}");
        let message = parse_duration("1x").unwrap_err().to_string();
        assert!(message.contains("unknown time unit \"x\""), "{message}");
    }

    #[test]
    fn rejects_overflow_instead_of_wrapping() {
        assert!(matches!(
            parse_duration("99999999999999999999999h"),
            Err(DurationError::Invalid { .. } | DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse_duration("6000000000000000h"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_in_exact_units() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(format_duration(Duration::from_micros(3)), "3us");
        assert_eq!(format_duration(Duration::from_nanos(3)), "3ns");
    }

    #[test]
    fn format_round_trips_through_parse() {
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(2),
            Duration::from_nanos(9),
            Duration::from_secs(90),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
