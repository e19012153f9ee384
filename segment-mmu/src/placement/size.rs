//! Byte sizes as users write them (`256G`, `2M`, `0.75G`).
//!
//! Kept apart so the CLI, the synthetic spec and the trace parsers agree on one spelling.

/// One KiB, MiB, GiB, TiB in bytes.
pub const KIB: u64 = 1 << 10;
/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;
/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;
/// One TiB in bytes.
pub const TIB: u64 = 1 << 40;

/// A size that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not a number followed by an optional K/M/G/T suffix.
    #[error(
        "bad size {0:?}: expected a number with an optional K, M, G or T suffix (binary units)"
    )]
    Syntax(String),
    /// Too large for 64 bits, negative, or not finite.
    #[error("size {0:?} is out of range")]
    Range(String),
}

/// Parses `512G`, `2M`, `0.75G`, `4096` (bytes). Suffixes are binary (G = 2^30), because
/// host and VM memory is sold in binary units.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => GIB,
        "T" | "TB" | "TIB" => TIB,
        _ => return Err(Error::Syntax(text.to_string())),
    };
    if num.is_empty() {
        return Err(Error::Syntax(text.to_string()));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| Error::Range(text.to_string()));
    }
    let f: f64 = num.parse().map_err(|_| Error::Syntax(text.to_string()))?;
    let bytes = f * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(Error::Range(text.to_string()));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes with the largest binary unit that keeps the number readable.
pub fn format_size(bytes: u64) -> String {
    let units = [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")];
    for (u, s) in units {
        if bytes >= u {
            let v = bytes as f64 / u as f64;
            return if bytes % u == 0 {
                format!("{}{s}", bytes / u)
            } else {
                format!("{v:.2}{s}")
            };
        }
    }
    format!("{bytes}B")
}

/// Rounds `x` up to a multiple of `align` (a power of two).
pub fn align_up(x: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (x + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("256G"), Ok(256 * GIB));
        assert_eq!(parse_size("2M"), Ok(2 * MIB));
        assert_eq!(parse_size("0.75G"), Ok(768 * MIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1TiB"), Ok(TIB));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(matches!(parse_size("99999999999T"), Err(Error::Range(_))));
    }

    #[test]
    fn formats_and_aligns() {
        assert_eq!(format_size(256 * GIB), "256G");
        assert_eq!(format_size(768 * MIB), "768M");
        assert_eq!(align_up(768 * MIB, GIB), GIB);
        assert_eq!(align_up(2 * MIB, 2 * MIB), 2 * MIB);
    }
}
