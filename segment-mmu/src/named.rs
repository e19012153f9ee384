//! Library enums that users pick by name (`--backing thp`, `--dirty-mode ring`).
//!
//! The library says which names exist and what they mean; the command line (clap) is
//! only an adapter over this trait (`segvmm::cli::named`), so no library module depends
//! on the argument parser.

/// An enum with a fixed set of user-facing names.
pub trait Named: Sized + Copy + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];
    /// The name a user types (and reports print).
    fn name(self) -> &'static str;
    /// One line for `--help`; empty for none.
    fn help(self) -> &'static str {
        ""
    }
    /// The value with this exact name.
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == s)
    }
    /// Every name, comma-separated (for error messages).
    fn names() -> String {
        Self::ALL
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A name that is not one of a [`Named`] type's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (expected one of: {expected})")]
pub struct UnknownName {
    /// What was being named ("backing", "page size").
    pub what: &'static str,
    /// The text given.
    pub name: String,
    /// The names accepted.
    pub expected: String,
}

/// Parses a [`Named`] value, naming the kind in the error.
pub fn parse<T: Named>(what: &'static str, s: &str) -> Result<T, UnknownName> {
    T::from_name(s).ok_or_else(|| UnknownName {
        what,
        name: s.to_string(),
        expected: T::names(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Colour {
        Red,
        Blue,
    }
    impl Named for Colour {
        const ALL: &'static [Self] = &[Colour::Red, Colour::Blue];
        fn name(self) -> &'static str {
            match self {
                Colour::Red => "red",
                Colour::Blue => "blue",
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for &c in Colour::ALL {
            assert_eq!(Colour::from_name(c.name()), Some(c));
        }
        assert_eq!(parse::<Colour>("colour", "blue"), Ok(Colour::Blue));
        let e = parse::<Colour>("colour", "Blue").unwrap_err();
        assert_eq!(e.expected, "red, blue");
        assert!(e.to_string().contains("unknown colour \"Blue\""));
    }
}
