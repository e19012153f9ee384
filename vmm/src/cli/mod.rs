//! One module per subcommand. Each defines `Args` (clap) and `run(Args) -> CliResult`.
//! Keeping them apart keeps `main.rs` a table and lets each command grow on its own.

pub mod bench;
pub mod host;
pub mod layout;
pub mod model;
pub mod place;
pub mod project;
pub mod ptsnap;
pub mod run;
pub mod tier;

/// A failed command: one line of text and the process exit code.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code (2 for bad input or usage, 1 for a failure while running).
    pub exit_code: i32,
    /// One line naming the problem.
    pub message: String,
}

impl CliError {
    /// Bad input: a malformed spec, file or option. Exit code 2.
    pub fn bad_input(e: impl std::fmt::Display) -> Self {
        Self {
            exit_code: 2,
            message: e.to_string(),
        }
    }
    /// A failure while running (the guest died, the host refused). Exit code 1.
    pub fn failed(e: impl std::fmt::Display) -> Self {
        Self {
            exit_code: 1,
            message: e.to_string(),
        }
    }
}

/// What a command returns: the exit code on success (usually 0).
pub type CliResult = Result<i32, CliError>;

/// Parses a size with an optional K/M/G/T suffix (powers of 1024): `256M`, `2G`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("size '{s}': unknown unit '{c}' (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("size '{s}': not a number"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}': too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
