//! Parser for the compact Azure 2017 trace (flavor letters per 300 s bin, lifetime bins).
//!
//! Format (see `segment-mmu/data/azure-v1-flavors/README.md`): the arrivals file has one line
//! per 300 s bin, `TIMESTAMP f,f,|,f,...`; the lifetimes file has the same shape with `U<bin>`
//! (ended inside the trace) or `C<bin>` (censored: still running at the cut). Lifetimes are
//! bins of `v1.interval_map.txt`; the exact lifetime inside a bin is drawn from a seeded
//! generator so that runs are reproducible. Every malformed line is an error naming the file
//! and the line: a silently skipped VM would bias the one-segment fraction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::rng::Rng;
use super::size::{GIB, MIB};
use super::workload::{VmRequest, Workload};

/// Width of one arrival bin, seconds (fixed by the data set).
pub const BIN_SECONDS: u64 = 300;

/// A trace that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{file}:{line}: {msg}")]
    Line {
        /// File name as given.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A file is malformed as a whole (empty, missing companion file, ...).
    #[error("{file}: {msg}")]
    File {
        /// File name as given.
        file: String,
        /// What is wrong.
        msg: String,
    },
}

/// The text of one input file together with the name used in error messages.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Name shown in errors.
    pub name: &'a str,
    /// Contents.
    pub text: &'a str,
}

fn line_err(file: &str, line: usize, msg: impl Into<String>) -> Error {
    Error::Line {
        file: file.to_string(),
        line,
        msg: msg.into(),
    }
}

/// Reads a whole file, naming it on failure.
pub fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the four files; `flavors` and `intervals` default to `flav_map.txt` and
/// `v1.interval_map.txt` beside the arrivals file.
pub fn load(
    trace: &Path,
    lifetimes: &Path,
    flavors: Option<&Path>,
    intervals: Option<&Path>,
    seed: u64,
) -> Result<Workload, Error> {
    let dir = trace.parent().unwrap_or(Path::new("."));
    let fpath = flavors.map_or_else(|| dir.join("flav_map.txt"), Path::to_path_buf);
    let ipath = intervals.map_or_else(|| dir.join("v1.interval_map.txt"), Path::to_path_buf);
    let (t, l, f, i) = (read(trace)?, read(lifetimes)?, read(&fpath)?, read(&ipath)?);
    let names = [trace, lifetimes, &fpath, &ipath].map(|p| p.display().to_string());
    parse(
        Source {
            name: &names[0],
            text: &t,
        },
        Source {
            name: &names[1],
            text: &l,
        },
        Source {
            name: &names[2],
            text: &f,
        },
        Source {
            name: &names[3],
            text: &i,
        },
        seed,
    )
}

/// Parses `VCPUS,MEMORY_GB LETTER` lines into letter → bytes (GB in the data are binary
/// gigabytes: Azure's 0.75, 1.75 and 3.5 GB sizes are 768, 1792 and 3584 MiB).
pub fn parse_flavors(src: Source<'_>) -> Result<HashMap<String, u64>, Error> {
    let mut map = HashMap::new();
    for (i, raw) in src.text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: &str| line_err(src.name, i + 1, format!("{m}: {line:?}"));
        let (sizes, letter) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `VCPUS,MEMORY_GB LETTER`"))?;
        let (cpus, mem) = sizes
            .split_once(',')
            .ok_or_else(|| bad("expected `VCPUS,MEMORY_GB`"))?;
        cpus.trim()
            .parse::<u32>()
            .map_err(|_| bad("vCPU count is not an integer"))?;
        let gb: f64 = mem
            .trim()
            .parse()
            .map_err(|_| bad("memory is not a number"))?;
        if !(gb.is_finite() && gb > 0.0 && gb < 1e6) {
            return Err(bad("memory out of range"));
        }
        let bytes = ((gb * GIB as f64) / MIB as f64).round() as u64 * MIB;
        if map.insert(letter.trim().to_string(), bytes).is_some() {
            return Err(bad("flavor letter defined twice"));
        }
    }
    if map.is_empty() {
        return Err(Error::File {
            file: src.name.into(),
            msg: "no flavors".into(),
        });
    }
    Ok(map)
}

/// Parses `LOWER_S BIN` lines into per-bin `[lower, upper)` seconds. The last bin has no
/// upper line, so it is closed one map step after the last lower bound.
pub fn parse_intervals(src: Source<'_>) -> Result<Vec<(u64, u64)>, Error> {
    let mut lows: Vec<u64> = Vec::new();
    let (mut last_s, mut step) = (None::<u64>, BIN_SECONDS);
    for (i, raw) in src.text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: &str| line_err(src.name, i + 1, format!("{m}: {line:?}"));
        let mut it = line.split_whitespace();
        let (Some(s), Some(b), None) = (it.next(), it.next(), it.next()) else {
            return Err(bad("expected `LOWER_SECONDS BIN`"));
        };
        let s: u64 = s.parse().map_err(|_| bad("seconds are not an integer"))?;
        let b: usize = b.parse().map_err(|_| bad("bin is not an integer"))?;
        if let Some(p) = last_s {
            if s <= p {
                return Err(bad("seconds are not increasing"));
            }
            step = s - p;
        }
        last_s = Some(s);
        match b.cmp(&lows.len()) {
            std::cmp::Ordering::Equal => lows.push(s),
            std::cmp::Ordering::Less if b + 1 == lows.len() => {}
            _ => return Err(bad("bins must start at 0 and increase by one")),
        }
    }
    let Some(last) = last_s else {
        return Err(Error::File {
            file: src.name.into(),
            msg: "no intervals".into(),
        });
    };
    let mut bins: Vec<(u64, u64)> = lows.windows(2).map(|w| (w[0], w[1])).collect();
    bins.push((*lows.last().unwrap_or(&0), last + step));
    Ok(bins)
}

/// Splits `TIMESTAMP items` into the timestamp and the comma-separated items.
fn split_line<'a>(file: &str, n: usize, line: &'a str) -> Result<(u64, Vec<&'a str>), Error> {
    let (ts, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let t = ts
        .parse::<u64>()
        .map_err(|_| line_err(file, n, format!("timestamp {ts:?} is not an integer")))?;
    let items: Vec<&str> = rest.trim().split(',').map(str::trim).collect();
    // A line ends with `,` after its last item; that one empty item is the terminator.
    let items = match items.split_last() {
        Some((&"", head)) => head.to_vec(),
        _ => items,
    };
    Ok((t, items))
}

/// Parses arrivals and lifetimes into a workload; lifetimes inside a bin are uniform, drawn
/// from `seed`. The simulation ends one bin after the last arrival bin (the censoring time).
pub fn parse(
    trace: Source<'_>,
    lifetimes: Source<'_>,
    flavors: Source<'_>,
    intervals: Source<'_>,
    seed: u64,
) -> Result<Workload, Error> {
    let flav = parse_flavors(flavors)?;
    let bins = parse_intervals(intervals)?;
    let parsed = pair_lines(&trace, &lifetimes)?;
    let start = parsed[0].0;
    let end = parsed[parsed.len() - 1].0 + BIN_SECONDS;
    let mut rng = Rng::new(seed);
    let mut vms = Vec::new();
    for (t, tn, fi, ln, lt) in parsed {
        if fi.len() != lt.len() {
            return Err(line_err(
                lifetimes.name,
                ln,
                format!(
                    "{} items, but {}:{tn} has {}",
                    lt.len(),
                    trace.name,
                    fi.len()
                ),
            ));
        }
        for (k, (f, l)) in fi.iter().zip(&lt).enumerate() {
            if *f == "|" || *l == "|" {
                if f != l {
                    return Err(line_err(
                        lifetimes.name,
                        ln,
                        format!(
                            "item {}: batch separators of the two files do not line up",
                            k + 1
                        ),
                    ));
                }
                continue;
            }
            let memory = *flav.get(*f).ok_or_else(|| {
                line_err(
                    trace.name,
                    tn,
                    format!("item {}: unknown flavor {f:?}", k + 1),
                )
            })?;
            let lifetime = draw_lifetime(l, &bins, (t, end), &mut rng).map_err(|e| {
                line_err(lifetimes.name, ln, format!("item {} ({l:?}): {e}", k + 1))
            })?;
            vms.push(VmRequest {
                arrival: t,
                lifetime,
                memory,
            });
        }
    }
    Ok(Workload {
        source: trace.name.to_string(),
        vms,
        start,
        end,
    })
}

/// One arrival line and its lifetime line: (timestamp, arrival line number, flavors,
/// lifetime line number, lifetimes).
type LinePair<'a> = (u64, usize, Vec<&'a str>, usize, Vec<&'a str>);

/// Pairs the arrival and lifetime lines, checking that their timestamps agree and never go
/// backwards.
fn pair_lines<'a>(trace: &Source<'a>, lifetimes: &Source<'a>) -> Result<Vec<LinePair<'a>>, Error> {
    let tl: Vec<(usize, &str)> = trace
        .text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let ll: Vec<(usize, &str)> = lifetimes
        .text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    if tl.is_empty() {
        return Err(Error::File {
            file: trace.name.into(),
            msg: "no arrival lines".into(),
        });
    }
    if tl.len() != ll.len() {
        return Err(Error::File {
            file: lifetimes.name.into(),
            msg: format!("{} lines, but {} has {}", ll.len(), trace.name, tl.len()),
        });
    }
    // Timestamps first: the end of the simulation bounds lifetimes of VMs that ended.
    let mut parsed = Vec::with_capacity(tl.len());
    let mut prev = None;
    for (&(ti, tline), &(li, lline)) in tl.iter().zip(&ll) {
        let (t, fi) = split_line(trace.name, ti + 1, tline.trim())?;
        let (t2, lt) = split_line(lifetimes.name, li + 1, lline.trim())?;
        if t != t2 {
            return Err(line_err(
                lifetimes.name,
                li + 1,
                format!("timestamp {t2} but {}:{} has {t}", trace.name, ti + 1),
            ));
        }
        if prev.is_some_and(|p| t < p) {
            return Err(line_err(trace.name, ti + 1, "timestamps go backwards"));
        }
        prev = Some(t);
        parsed.push((t, ti + 1, fi, li + 1, lt));
    }
    Ok(parsed)
}

/// A lifetime item that cannot be right.
#[derive(Debug, thiserror::Error)]
enum LifetimeError {
    /// Neither `U<bin>` nor `C<bin>`.
    #[error("expected U<bin> or C<bin>")]
    Syntax,
    /// A bin the interval map lacks.
    #[error("bin {0} is not in the interval map")]
    NoBin(usize),
    /// A bin that starts after the trace ends.
    #[error("bin [{lo}, {hi}) s cannot end before the trace ends at {end}")]
    AfterEnd {
        /// Bin start, s.
        lo: u64,
        /// Bin end, s.
        hi: u64,
        /// End of the trace, s.
        end: u64,
    },
}

/// A lifetime `U<bin>` (ended: uniform in the bin, at least 1 s, cut at `end`, the end of
/// the trace, for a VM that arrived at `t`) or `C<bin>` (still running at the end: `None`).
fn draw_lifetime(
    l: &str,
    bins: &[(u64, u64)],
    (t, end): (u64, u64),
    rng: &mut Rng,
) -> Result<Option<u64>, LifetimeError> {
    let (kind, bin) = l.split_at(l.chars().next().map_or(0, char::len_utf8));
    let bin: usize = bin.parse().map_err(|_| LifetimeError::Syntax)?;
    let &(lo, hi) = bins.get(bin).ok_or(LifetimeError::NoBin(bin))?;
    match kind {
        "U" => {
            let (a, b) = (lo.max(1), hi.min(end - t));
            if a >= b {
                return Err(LifetimeError::AfterEnd { lo, hi, end });
            }
            Ok(Some(rng.range(a, b)))
        }
        "C" => Ok(None),
        _ => Err(LifetimeError::Syntax),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAV: &str = "1,0.75 a\n2,4 h\n";
    const INT: &str = "0 0\n300 1\n600 2\n900 2\n";

    fn src(name: &'static str, text: &'static str) -> Source<'static> {
        Source { name, text }
    }

    fn run(t: &'static str, l: &'static str) -> Result<Workload, Error> {
        parse(
            src("t.txt", t),
            src("l.txt", l),
            src("f.txt", FLAV),
            src("i.txt", INT),
            1,
        )
    }

    #[test]
    fn parses_small_trace() {
        let w = run(
            "100 a,|,h,h,|,\n400 a,|,\n",
            "100 U0,|,U1,C2,|,\n400 U0,|,\n",
        )
        .unwrap();
        assert_eq!(w.vms.len(), 4);
        assert_eq!((w.start, w.end), (100, 700));
        assert_eq!(w.vms[0].memory, 768 * MIB);
        assert_eq!(w.vms[1].memory, 4 * GIB);
        assert!((1..300).contains(&w.vms[0].lifetime.unwrap()));
        assert!((300..600).contains(&w.vms[1].lifetime.unwrap()));
        assert_eq!(w.vms[2].lifetime, None);
        assert_eq!(w.vms[3].arrival, 400);
    }

    #[test]
    fn lifetimes_are_seeded() {
        let t = "0 a,a,a,a,a,a,a,a,\n300 a,\n600 a,\n900 a,\n";
        let l = "0 U2,U2,U2,U2,U2,U2,U2,U2,\n300 U0,\n600 U0,\n900 U0,\n";
        let p = |s| parse(src("t", t), src("l", l), src("f", FLAV), src("i", INT), s).unwrap();
        assert_eq!(p(5), p(5));
        assert_ne!(p(5), p(6));
    }

    #[test]
    fn intervals_close_last_bin() {
        assert_eq!(
            parse_intervals(src("i", INT)).unwrap(),
            vec![(0, 300), (300, 600), (600, 1200)]
        );
        assert!(parse_intervals(src("i", "0 0\n300 2\n")).is_err());
        assert!(parse_intervals(src("i", "0 0\n0 1\n")).is_err());
    }

    fn err(t: &'static str, l: &'static str) -> String {
        run(t, l).unwrap_err().to_string()
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        assert_eq!(
            err("0 a,\n300 z,\n", "0 U0,\n300 U0,\n"),
            "t.txt:2: item 1: unknown flavor \"z\""
        );
        assert!(err("0 a,\n300 a,\n", "0 U0,\n300 X0,\n").starts_with("l.txt:2:"));
        assert!(err("0 a,\n300 a,\n", "0 U0,\n300 U9,\n").contains("bin 9"));
        assert!(err("0 a,a,\n", "0 U0,\n").starts_with("l.txt:1: 1 items"));
        assert!(err("0 a,|,a,\n", "0 U0,U0,|,\n").contains("separators"));
        assert!(err("x a,\n", "0 U0,\n").starts_with("t.txt:1: timestamp"));
        assert!(err("0 a,\n", "300 U0,\n").starts_with("l.txt:1: timestamp 300"));
        assert!(err("300 a,\n0 a,\n", "300 U0,\n0 U0,\n").contains("backwards"));
        assert!(err("0 a,\n", "0 U2,\n").contains("cannot end"));
        assert!(err("0 a,\n", "").contains("0 lines"));
        assert!(parse_flavors(src("f", "1,x a\n"))
            .unwrap_err()
            .to_string()
            .starts_with("f:1:"));
    }
}
