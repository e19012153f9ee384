//! Number syntax shared by every spec parser: `8G`, `4k`, `0x7f00...`, `10M`.
//!
//! Sizes use binary suffixes (`4G` = 4 GiB) because they describe memory; counts use
//! decimal suffixes (`10M` = 10 000 000) because that is how access counts are quoted.

/// A number that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad number {0:?} (expected e.g. 4096, 0x1000, 4k, 2M, 8G)")]
pub struct Error(pub String);

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
    r.map_err(|_| Error(orig.to_string()))
}

/// A byte size with binary suffixes (k, M, G, T), or a hex/decimal number.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    if s.trim().starts_with("0x") {
        return plain(s.trim(), s);
    }
    let (n, bin, _) = split(s);
    plain(n, s)?
        .checked_mul(bin)
        .ok_or_else(|| Error(s.to_string()))
}

/// A count with decimal suffixes (k, M, G).
pub fn parse_count(s: &str) -> Result<u64, Error> {
    if s.trim().starts_with("0x") {
        return plain(s.trim(), s);
    }
    let (n, _, dec) = split(s);
    plain(n, s)?
        .checked_mul(dec)
        .ok_or_else(|| Error(s.to_string()))
}

/// A plain float.
pub fn parse_f64(s: &str) -> Result<f64, Error> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error(s.to_string()))
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
        assert!(parse_size("99999999999T").is_err());
        let v: Vec<_> = pairs("a=1, b ,c=x").collect();
        assert_eq!(v, vec![("a", "1"), ("b", ""), ("c", "x")]);
    }
}
