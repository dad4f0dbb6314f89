//! Durations in Istio resources, read as Istio reads them: Go's
//! `time.ParseDuration` syntax (`250ms`, `1.5s`, `1h30m`), then Istio's
//! validation (`pkg/config/validation/agent` `ValidateDuration`, and the
//! CRDs' CEL rule `duration(self) >= duration('1ms')`): at least 1ms, whole
//! milliseconds. Stricter than the clients' command-line parser on purpose:
//! what the mesh accepts, a cluster accepts.

use std::{fmt, time::Duration};

use serde::de::{self, Deserialize, Deserializer, Visitor};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "invalid duration {0:?}: expected a number with a unit ms, s, m or h (e.g. 250ms, 1.5s, 1h30m)"
    )]
    Syntax(String),
    /// Istio's own words (`ValidateDuration`).
    #[error("duration {0:?} must be greater than 1ms")]
    UnderOneMillisecond(String),
    #[error("duration {0:?}: only durations to ms precision are supported")]
    FinerThanMilliseconds(String),
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses `input` as Istio accepts it in a DestinationRule or Sidecar.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let nanos = go_nanos(input)?;
    if nanos < 1_000_000 {
        return Err(DurationError::UnderOneMillisecond(input.to_owned()));
    }
    if nanos % 1_000_000 != 0 {
        return Err(DurationError::FinerThanMilliseconds(input.to_owned()));
    }
    let secs = u64::try_from(nanos / 1_000_000_000)
        .map_err(|_| DurationError::TooLarge(input.to_owned()))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A duration field of an Istio resource: a string [`parse`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IstioDuration(pub Duration);

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = IstioDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<IstioDuration, E> {
                parse(text).map(IstioDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// Go's duration syntax, in signed nanoseconds (exact decimal arithmetic,
/// so `1.1s` is 1_100_000_000 and `1.5us` is 1_500).
fn go_nanos(input: &str) -> Result<i128, DurationError> {
    let syntax = || DurationError::Syntax(input.to_owned());
    let (sign, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (-1, &input[1..]),
        Some(b'+') => (1, &input[1..]),
        _ => (1, input),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(syntax()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(syntax());
        }
        let too_large = || DurationError::TooLarge(input.to_owned());
        let mut part: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse::<i128>().map_err(|_| too_large())?
        };
        part = part.checked_mul(unit_nanos).ok_or_else(too_large)?;
        // Digits past the unit's nanosecond resolution are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            scale /= 10;
            part += i128::from(digit - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(too_large)?;
        rest = tail;
    }
    Ok(sign * total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax_at_millisecond_precision_is_accepted() {
        for (text, want) in [
            ("1ms", Duration::from_millis(1)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.001s", Duration::from_millis(1)),
            ("1h30m", Duration::from_secs(5400)),
            ("2m0.5s", Duration::from_millis(120_500)),
            ("1000us", Duration::from_millis(1)),
            ("+10s", Duration::from_secs(10)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn under_one_millisecond_or_finer_is_refused_as_istio_does() {
        for text in ["0", "0s", "0ms", "500us", "999999ns", "-1s"] {
            assert_eq!(
                parse(text),
                Err(DurationError::UnderOneMillisecond(text.into())),
                "{text}"
            );
        }
        for text in ["1.5ms", "1001us", "1.0005s"] {
            assert_eq!(
                parse(text),
                Err(DurationError::FinerThanMilliseconds(text.into())),
                "{text}"
            );
        }
        assert_eq!(
            parse("1.5us"),
            Err(DurationError::UnderOneMillisecond("1.5us".into()))
        );
    }

    #[test]
    fn malformed_durations_are_syntax_errors() {
        for text in ["", "10", "s", "1.2.3s", "5 s", "1d", ".s", "-", "1h-5m"] {
            assert!(
                matches!(parse(text), Err(DurationError::Syntax(_))),
                "{text}: {:?}",
                parse(text)
            );
        }
        assert!(matches!(
            parse("99999999999999999999999h"),
            Err(DurationError::TooLarge(_))
        ));
    }
}
