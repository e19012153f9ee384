//! Number syntax shared by every spec parser and every command: `8G`, `4k`, `0x7f00...`,
//! `10M`, `0.75G`.
//!
//! Sizes use binary suffixes (`4G` = 4 GiB) because they describe memory; counts use
//! decimal suffixes (`10M` = 10 000 000) because that is how access counts are quoted.
//!
//! **The one size syntax** ([`parse_size`]), used by the CLI, the synthetic specs, the
//! stream specs and the placement simulator alike:
//!
//! * a decimal integer (`4096`, `1_000`), a hex integer (`0x7f00_0000_0000`), or a decimal
//!   fraction (`0.75`; only with a suffix it makes sense, the result is rounded to a byte);
//! * an optional suffix, case-insensitive: `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`,
//!   `G`/`GB`/`GiB`, `T`/`TB`/`TiB`, all binary (`K` = 1024), because memory is sold in
//!   binary units; hex numbers take no suffix;
//! * surrounding white space is ignored; anything else (an empty number, a sign, an unknown
//!   suffix, a value above `u64::MAX`) is an error naming the text.

/// One KiB in bytes.
pub const KIB: u64 = 1 << 10;
/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;
/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;
/// One TiB in bytes.
pub const TIB: u64 = 1 << 40;

/// A number or size that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a number with an optional unit.
    #[error("bad number {0:?} (expected e.g. 4096, 0x1000, 4k, 2M, 0.75G, 8GiB)")]
    Syntax(String),
    /// A suffix that is not a size unit.
    #[error("bad size {text:?}: unknown unit {unit:?} (use B, K, M, G or T; binary units)")]
    Unit {
        /// The whole text.
        text: String,
        /// The suffix.
        unit: String,
    },
    /// Too large for 64 bits, negative, or not finite.
    #[error("size {0:?} is out of range")]
    Range(String),
}

fn split(s: &str) -> (&str, u64, u64) {
    let t = s.trim();
    match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1 << 10, 1_000),
        Some('m') => (&t[..t.len() - 1], 1 << 20, 1_000_000),
        Some('g') => (&t[..t.len() - 1], 1 << 30, 1_000_000_000),
        Some('t') => (&t[..t.len() - 1], 1 << 40, 1_000_000_000_000),
        _ => (t, 1, 1),
    }
}

fn plain(s: &str, orig: &str) -> Result<u64, Error> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(&h.replace('_', ""), 16)
    } else {
        s.replace('_', "").parse::<u64>()
    };
    r.map_err(|_| Error::Syntax(orig.to_string()))
}

/// The multiplier of a size unit (see the module docs), or `None`.
fn unit(u: &str) -> Option<u64> {
    Some(match u.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => GIB,
        "T" | "TB" | "TIB" => TIB,
        _ => return None,
    })
}

/// A byte size in the one syntax of the module docs: `4096`, `0x1000`, `4k`, `2M`,
/// `0.75G`, `1TiB`.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    if t.starts_with("0x") || t.starts_with("0X") {
        return plain(t, s);
    }
    let i = t
        .char_indices()
        .find(|(_, c)| c.is_ascii_alphabetic())
        .map_or(t.len(), |(i, _)| i);
    let (num, u) = (t[..i].trim(), &t[i..]);
    let mult = unit(u).ok_or_else(|| Error::Unit {
        text: s.to_string(),
        unit: u.to_string(),
    })?;
    if num.is_empty() || num.starts_with(['+', '-']) {
        return Err(Error::Syntax(s.to_string()));
    }
    if let Ok(n) = plain(num, s) {
        return n
            .checked_mul(mult)
            .ok_or_else(|| Error::Range(s.to_string()));
    }
    if num.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        // Only digits but not a u64: too large.
        return Err(Error::Range(s.to_string()));
    }
    let f: f64 = num.parse().map_err(|_| Error::Syntax(s.to_string()))?;
    let bytes = f * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(Error::Range(s.to_string()));
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

/// A count with decimal suffixes (k, M, G).
pub fn parse_count(s: &str) -> Result<u64, Error> {
    if s.trim().starts_with("0x") {
        return plain(s.trim(), s);
    }
    let (n, _, dec) = split(s);
    plain(n, s)?
        .checked_mul(dec)
        .ok_or_else(|| Error::Range(s.to_string()))
}

/// A plain float.
pub fn parse_f64(s: &str) -> Result<f64, Error> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error::Syntax(s.to_string()))
}

/// Splits `k=v,k=v` into pairs; a bare word is returned with an empty value.
pub fn pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (p.trim(), ""),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("0x7f00_0000_0000"), Ok(0x7f00_0000_0000));
        assert_eq!(parse_count("10M"), Ok(10_000_000));
        assert!(parse_size("12Q").is_err());
        assert!(matches!(parse_size("99999999999T"), Err(Error::Range(_))));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("0.75G"), Ok(768 * MIB));
        assert_eq!(parse_size("1TiB"), Ok(TIB));
        assert_eq!(parse_size("512KB"), Ok(512 * KIB));
        assert_eq!(parse_size("16B"), Ok(16));
        assert_eq!(parse_size("1_000"), Ok(1000));
        for bad in [
            "", "M", "G", "12X", "-1G", "+1G", "1.5.2G", "0x", "NaNG", "infG",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(Error::Range(_))
        ));
        let v: Vec<_> = pairs("a=1, b ,c=x").collect();
        assert_eq!(v, vec![("a", "1"), ("b", ""), ("c", "x")]);
    }
}
