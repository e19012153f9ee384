//! One parser for every duration a user gives (timeouts, intervals): a number with an
//! optional unit, checked against a stated range before it becomes a [`Duration`], so a
//! huge, negative or non-finite value is an error that names the cap, never a panic.

use std::time::Duration;

/// The longest duration [`parse`] accepts: 30 days.
pub const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a number followed by a known unit.
    #[error("duration '{0}': not a number with a unit (use e.g. 250ms, 1.5s, 10)")]
    NotANumber(String),
    /// A unit this parser does not know.
    #[error("duration '{text}': unknown unit '{unit}' (use us, ms, s, m or h)")]
    Unit {
        /// The input.
        text: String,
        /// The unit.
        unit: String,
    },
    /// Zero, negative, NaN or infinite.
    #[error("duration '{0}': must be a positive, finite number")]
    NotPositive(String),
    /// Outside `[min, max]`.
    #[error("duration '{text}': must be between {min:?} and {max:?}")]
    OutOfRange {
        /// The input.
        text: String,
        /// Smallest accepted.
        min: Duration,
        /// Largest accepted.
        max: Duration,
    },
}

/// Parses `text` (`"1.5"`, `"250ms"`, `"2s"`, `"10us"`, `"5m"`, `"1h"`); a bare number is in
/// `default_unit` seconds (1.0 for seconds, 1e-3 for milliseconds). The result lies in
/// `[min, max]`; `max` is itself capped at [`MAX`].
pub fn parse_in(
    text: &str,
    default_unit: f64,
    min: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    let t = text.trim();
    let split = t
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::NotANumber(text.to_owned()))?;
    let scale = match unit.trim() {
        "" => default_unit,
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => {
            return Err(Error::Unit {
                text: text.to_owned(),
                unit: u.to_owned(),
            })
        }
    };
    let secs = v * scale;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(Error::NotPositive(text.to_owned()));
    }
    let max = max.min(MAX);
    let out_of_range = || Error::OutOfRange {
        text: text.to_owned(),
        min,
        max,
    };
    if secs > max.as_secs_f64() {
        return Err(out_of_range());
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|_| out_of_range())?;
    if d < min || d > max {
        return Err(out_of_range());
    }
    Ok(d)
}

/// A timeout in seconds (bare numbers are seconds), from 1 ms to [`MAX`].
pub fn parse(text: &str) -> Result<Duration, Error> {
    parse_in(text, 1.0, Duration::from_millis(1), MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_caps() {
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1e3"), Ok(Duration::from_secs(1000)));
        for bad in [
            "1e300",
            "inf",
            "NaN",
            "-1",
            "0",
            "1e-9",
            "x",
            "5 parsecs",
            "1e20",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(parse("1e300"), Err(Error::OutOfRange { .. })));
        assert!(parse(&format!("{}", MAX.as_secs())).is_ok());
        assert!(parse(&format!("{}", MAX.as_secs() + 1)).is_err());
    }
}
