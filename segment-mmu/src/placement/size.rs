//! Byte sizes for the placement simulator: the one size syntax of [`crate::units`]
//! (re-exported here) and alignment.

pub use crate::units::{format_size, parse_size, Error, GIB, KIB, MIB, TIB};

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
