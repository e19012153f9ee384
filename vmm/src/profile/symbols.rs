//! A kernel's `System.map` (`nm -n vmlinux`): `ADDRESS TYPE NAME` per line, parsed into
//! a sorted table that maps a guest RIP to the symbol it lies in by binary search.
//!
//! Every symbol is kept (data symbols bound the text before them), but only text symbols
//! (`T`/`t`, and `W`/`w` weak code) count as a hit: an address whose nearest symbol below
//! is data, or that lies below the first symbol, is not in kernel text.

use std::path::{Path, PathBuf};

/// The largest map accepted (the Debian kernel's System.map is ~6 MB).
pub const MAX_MAP_BYTES: u64 = 64 << 20;
/// The most symbols accepted.
pub const MAX_SYMBOLS: usize = 2_000_000;

/// Errors reading a System.map.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("System.map {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Larger than [`MAX_MAP_BYTES`] or more than [`MAX_SYMBOLS`] lines.
    #[error("System.map {path}: too large (at most {MAX_MAP_BYTES} bytes, {MAX_SYMBOLS} symbols)")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line that is not `ADDRESS TYPE NAME`.
    #[error("System.map {path}: line {line} is not 'ADDRESS TYPE NAME': {text:?}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line (cut to 80 bytes).
        text: String,
    },
    /// A symbol every kernel map has is missing.
    #[error("System.map {path}: no '{symbol}' symbol: not a Linux kernel's System.map")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The symbol.
        symbol: &'static str,
    },
}

/// One symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Its address.
    pub addr: u64,
    /// Its name.
    pub name: String,
    /// Whether it is code (`T`, `t`, `W`, `w`).
    pub text: bool,
}

/// A parsed System.map, sorted by address.
#[derive(Debug, Clone)]
pub struct SymbolMap {
    syms: Vec<Symbol>,
}

fn is_text(kind: u8) -> bool {
    matches!(kind, b'T' | b't' | b'W' | b'w')
}

fn parse_line(line: &str) -> Option<Symbol> {
    let mut it = line.split_ascii_whitespace();
    let (addr, kind, name) = (it.next()?, it.next()?, it.next()?);
    // Module maps (`/proc/kallsyms`) add `[module]`; anything else after the name is not
    // a System.map line.
    if it.next().is_some_and(|m| !m.starts_with('[')) {
        return None;
    }
    if addr.len() > 16 || kind.len() != 1 || !kind.as_bytes()[0].is_ascii_graphic() {
        return None;
    }
    let addr = u64::from_str_radix(addr, 16).ok()?;
    Some(Symbol {
        addr,
        name: name.to_string(),
        text: is_text(kind.as_bytes()[0]),
    })
}

impl SymbolMap {
    /// Parses the text of a map; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut syms = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let sym = parse_line(line).ok_or_else(|| Error::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.chars().take(80).collect(),
            })?;
            if syms.len() >= MAX_SYMBOLS {
                return Err(Error::TooLarge {
                    path: path.to_path_buf(),
                });
            }
            syms.push(sym);
        }
        // Stable: of symbols at one address (aliases), the first listed names it.
        syms.sort_by_key(|s| s.addr);
        let map = SymbolMap { syms };
        for symbol in ["_text", "linux_banner"] {
            if map.address_of(symbol).is_none() {
                return Err(Error::Missing {
                    path: path.to_path_buf(),
                    symbol,
                });
            }
        }
        Ok(map)
    }

    /// Reads and parses the map at `path` (no symlink is refused: a map is only read).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let read = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_MAP_BYTES {
            return Err(Error::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text, path)
    }

    /// The symbols, sorted by address.
    pub fn symbols(&self) -> &[Symbol] {
        &self.syms
    }

    /// The address of the first symbol called `name`.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| s.name == name).map(|s| s.addr)
    }

    /// The index of the symbol that `addr` lies in: the last one at or below it (the
    /// first of several aliases), if that is a text symbol.
    pub fn lookup(&self, addr: u64) -> Option<usize> {
        let after = self.syms.partition_point(|s| s.addr <= addr);
        let last = after.checked_sub(1)?;
        let at = self.syms[last].addr;
        let first = self.syms[..=last].partition_point(|s| s.addr < at);
        self.syms[first..=last]
            .iter()
            .position(|s| s.text)
            .map(|p| first + p)
    }
}
