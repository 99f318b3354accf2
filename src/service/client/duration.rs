//! Durations as the API and the CLI write them: `2s`, `500ms`, `1m`, or plain seconds.

use std::fmt;
use std::time::Duration;

/// Parses a duration: a non-negative number (decimals allowed) followed by `ms`, `s`, `m`
/// or `h`, or a plain number of seconds.
///
/// ```
/// use std::time::Duration;
/// use weft::service::client::parse_duration;
///
/// assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
/// assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
/// assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
/// assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
/// assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError {
        input: text.to_owned(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(err());
    }
    // Whole numbers are exact; decimals go through f64 (nanosecond rounding).
    if let Ok(n) = number.parse::<u64>() {
        let d = match unit.trim() {
            "ms" => Some(Duration::from_millis(n)),
            "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            _ => Some(Duration::from_secs(n)),
        };
        return d.ok_or_else(err);
    }
    let n: f64 = number.parse().map_err(|_| err())?;
    Duration::try_from_secs_f64(n * scale).map_err(|_| err())
}

/// Writes a duration as whole milliseconds (`1500ms`), the form the node's `?wait=` reads.
pub(crate) fn format_millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A duration that [`parse_duration`] could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseDurationError {
    input: String,
}

impl fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?} (expected e.g. 2s, 500ms, 1m or plain seconds)",
            self.input
        )
    }
}

impl std::error::Error for ParseDurationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0ms"), Duration::ZERO);
        assert_eq!(ok("2s"), Duration::from_secs(2));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("60"), Duration::from_secs(60));
        assert_eq!(ok(" 3 s "), Duration::from_secs(3));
        assert_eq!(ok("0.5"), Duration::from_millis(500));
        assert_eq!(ok("1.25m"), Duration::from_secs(75));
        assert_eq!(ok("2.5ms"), Duration::from_micros(2500));
    }

    #[test]
    fn rejects() {
        for bad in [
            "", "s", "ms", "-1", "-1s", "1x", "1.", ".5", "1..2", "1 2", "5 ms s", "abc", "1e3",
            "inf", "NaN",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("18446744073709551615m").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
        assert!(parse_duration("1e400").is_err());
        assert_eq!(
            parse_duration("18446744073709551615ms").unwrap(),
            Duration::from_millis(u64::MAX)
        );
    }

    #[test]
    fn error_names_input() {
        let e = parse_duration("soon").unwrap_err();
        assert!(e.to_string().contains("\"soon\""));
    }

    #[test]
    fn millis_round_trip() {
        let d = Duration::from_millis(1500);
        assert_eq!(format_millis(d), "1500ms");
        assert_eq!(parse_duration(&format_millis(d)).unwrap(), d);
    }
}
