//! Parser for the original Azure public trace `vmtable.csv` (AzurePublicDatasetV1).
//!
//! Columns: vmid, subscriptionid, deploymentid, vmcreated, vmdeleted, maxcpu, avgcpu,
//! p95maxcpu, vmcategory, vmcorecountbucket, vmmemorybucket. Times are seconds. Memory is a
//! bucket in GB (`2`, `4`, `8`, `32`, `64`, `>64`): a VM gets the bucket's upper bound, and
//! `>64` gets [`OVER_64_GIB`]. A header line starting with `vmid` is allowed; every other line
//! must parse, or the error names the file and line.

use super::size::GIB;
use super::workload::{VmRequest, Workload};

/// Memory given to VMs of the open-ended `>64` bucket: the largest size (GiB) in Azure's
/// 2017 flavor list (the 112 GB flavor of the shipped sample).
pub const OVER_64_GIB: u64 = 112;

/// A vmtable that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// No VM at all.
    #[error("{0}: no VM lines")]
    Empty(String),
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Reads and parses `path`.
pub fn load(path: &std::path::Path) -> Result<Workload, Error> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: name.clone(),
        source,
    })?;
    parse(&name, &text)
}

fn memory_bucket(b: &str) -> Option<u64> {
    if let Some(rest) = b.strip_prefix('>') {
        return (rest.trim() == "64").then_some(OVER_64_GIB * GIB);
    }
    let g: f64 = b.parse().ok()?;
    (g.is_finite() && g > 0.0 && g < 1e6).then(|| (g * GIB as f64).round() as u64)
}

/// Parses the CSV text. VMs are sorted by creation time (the public file is not); the
/// simulation runs from the first creation to the last event in the file, and VMs deleted at
/// that last instant count as still running.
pub fn parse(name: &str, text: &str) -> Result<Workload, Error> {
    let mut vms = Vec::new();
    let mut end = 0u64;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || (i == 0 && line.to_ascii_lowercase().starts_with("vmid")) {
            continue;
        }
        let bad = |m: String| Error::Line {
            file: name.to_string(),
            line: i + 1,
            msg: m,
        };
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 11 {
            return Err(bad(format!(
                "expected 11 comma-separated fields, found {}",
                f.len()
            )));
        }
        let created: u64 = f[3]
            .parse()
            .map_err(|_| bad(format!("vmcreated {:?} is not an integer", f[3])))?;
        let deleted: u64 = f[4]
            .parse()
            .map_err(|_| bad(format!("vmdeleted {:?} is not an integer", f[4])))?;
        if deleted < created {
            return Err(bad(format!(
                "vmdeleted {deleted} is before vmcreated {created}"
            )));
        }
        for (col, v) in [("maxcpu", f[5]), ("avgcpu", f[6]), ("p95maxcpu", f[7])] {
            v.parse::<f64>()
                .map_err(|_| bad(format!("{col} {v:?} is not a number")))?;
        }
        let memory = memory_bucket(f[10])
            .ok_or_else(|| bad(format!("vmmemorybucket {:?} is not a GB bucket", f[10])))?;
        end = end.max(deleted);
        // A zero-length VM would leave before it arrives; give it one second.
        vms.push(VmRequest {
            arrival: created,
            lifetime: Some((deleted - created).max(1)),
            memory,
        });
    }
    if vms.is_empty() {
        return Err(Error::Empty(name.to_string()));
    }
    vms.sort_by_key(|v| v.arrival);
    let start = vms[0].arrival;
    Ok(Workload {
        source: name.to_string(),
        vms,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "\
vmid,subscriptionid,deploymentid,vmcreated,vmdeleted,maxcpu,avgcpu,p95maxcpu,vmcategory,vmcorecountbucket,vmmemorybucket
x1,s1,d1,600,1200,90.5,10.1,80.2,Interactive,2,4
x2,s1,d1,0,2400,50,5,40,Delay-insensitive,8,>64
x3,s2,d2,300,2400,1,1,1,Unknown,1,2
";

    #[test]
    fn parses_hand_made_csv() {
        let w = parse("v.csv", CSV).unwrap();
        assert_eq!(w.vms.len(), 3);
        assert_eq!((w.start, w.end), (0, 2400));
        assert_eq!(
            w.vms[0],
            VmRequest {
                arrival: 0,
                lifetime: Some(2400),
                memory: 112 * GIB
            }
        );
        assert_eq!(w.vms[1].memory, 2 * GIB);
        assert_eq!(w.vms[2].lifetime, Some(600));
        // Deleted at the last instant: still running when the simulation stops.
        assert_eq!(w.vms[0].departure(w.end), None);
        assert_eq!(w.vms[2].departure(w.end), Some(1200));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let e = |t: &str| parse("v.csv", t).unwrap_err().to_string();
        assert_eq!(
            e("a,b,c\n"),
            "v.csv:1: expected 11 comma-separated fields, found 3"
        );
        assert!(e("x,s,d,0,10,1,1,1,c,2,4\nx,s,d,zero,10,1,1,1,c,2,4\n")
            .starts_with("v.csv:2: vmcreated"));
        assert!(e("x,s,d,10,0,1,1,1,c,2,4\n").contains("before"));
        assert!(e("x,s,d,0,10,1,1,1,c,2,huge\n").contains("vmmemorybucket"));
        assert!(e("x,s,d,0,10,1,1,1,c,2,>32\n").contains("vmmemorybucket"));
        assert!(e("x,s,d,0,10,1,cpu,1,c,2,4\n").contains("avgcpu"));
        assert_eq!(e(""), "v.csv: no VM lines");
    }
}
