//! What dirty tracking costs a guest, measured: the same measurement-guest workload with
//! tracking off and at several intervals, each with the dirty ring and the bitmap where
//! the host has the ring, in one invocation, interleaved (off, i1 ring, i1 bitmap, …, then
//! again for each repeat) so slow drift of a shared host hits every setting alike.
//! Reported per setting: the median ns/op and KVM exits of the timed part, both as a ratio
//! to tracking off, and ring against bitmap ([`modes_markdown`]).
//!
//! Where the cost comes from: every collection write-protects the pages it reports, so the
//! next write to each of them exits to KVM to be logged and unprotected again; a shorter
//! interval re-arms more often. Both methods pay that; they differ in the collection
//! (bitmap: get + clear over all of RAM; ring: only the entries written, plus a reset) and
//! in the ring's full exits: a ring that fills before the interval ends is harvested and
//! reset at once, which re-protects its pages early. The collector's own ioctl time runs
//! on another host thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use workloads::kernels::Workload;

use crate::dirty::{DirtyConfig, DirtyMode, HostDirty};
use crate::memory::Backing;
use crate::probe::guest::{self, GuestOptions, GuestSpec};
use crate::probe::layout::PageSize;
use crate::probe::WorkloadSpec;

/// Why the overhead pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An output directory could not be created.
    #[error("creating {path}: {source}")]
    Create {
        /// Directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An output file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Serialising the rows.
    #[error("serializing dirty-overhead rows: {0}")]
    Json(#[from] serde_json::Error),
    /// A guest could not be set up or run.
    #[error(transparent)]
    Guest(#[from] guest::Error),
    /// A guest ran but its workload did not report a measurement.
    #[error("{workload}: {why}")]
    Measurement {
        /// Workload.
        workload: &'static str,
        /// What the guest reported.
        #[source]
        why: guest::MeasureError,
    },
}

fn create_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Create {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, text: String) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.display().to_string(),
        source,
    })
}

/// One setting's result.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRow {
    /// Workload.
    pub workload: String,
    /// Buffer MiB.
    pub footprint_mib: u64,
    /// Tracking interval, ms (`None`: tracking off).
    pub interval_ms: Option<f64>,
    /// Method used (`dirty-ring`, `bitmap+manual-protect`, `bitmap`; `None`: off).
    pub method: Option<String>,
    /// Repeats measured.
    pub repeats: usize,
    /// Median ns/op of the timed part.
    pub ns_per_op: f64,
    /// Median KVM exits in the timed part.
    pub kvm_exits: u64,
    /// `ns_per_op` over tracking off.
    pub ns_ratio: f64,
    /// `kvm_exits` over tracking off (exits + 1 over exits + 1, so zero exits stay finite).
    pub exits_ratio: f64,
    /// Intervals collected (median run).
    pub intervals: Option<u64>,
    /// Mean time of one collection, µs (median run).
    pub collect_mean_us: Option<f64>,
    /// Distinct 4 KiB pages written (median run).
    pub pages_written: Option<u64>,
    /// `KVM_EXIT_DIRTY_RING_FULL` exits (ring, median run).
    pub ring_full_exits: Option<u64>,
    /// Hotness file of the last repeat.
    pub hotness_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
struct Sample {
    ns: f64,
    exits: u64,
    intervals: Option<u64>,
    collect_us: Option<f64>,
    pages: Option<u64>,
    method: Option<String>,
    full: Option<u64>,
}

fn median_by<T: Clone>(v: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| key(a).total_cmp(&key(b)));
    s.get(s.len() / 2).cloned()
}

/// The methods `mode` stands for in an overhead comparison: `auto` compares the ring
/// with the bitmap where the host has the ring.
pub fn modes_for(mode: DirtyMode) -> Vec<DirtyMode> {
    match mode {
        DirtyMode::Auto if HostDirty::of_host().is_some_and(|h| h.has_ring()) => {
            vec![DirtyMode::Ring, DirtyMode::Bitmap]
        }
        DirtyMode::Auto => vec![DirtyMode::Bitmap],
        m => vec![m],
    }
}

/// Runs `spec` with tracking off and at each of `intervals` with each of `modes`,
/// `repeats` times each, interleaved; hotness files go to `out_dir` (named
/// `<workload>-<interval>ms-<mode>.hot`).
pub fn measure(
    spec: GuestSpec,
    base: &GuestOptions,
    intervals: &[Duration],
    modes: &[DirtyMode],
    ring_bytes: Option<u32>,
    repeats: usize,
    out_dir: Option<&Path>,
) -> Result<Vec<OverheadRow>, Error> {
    let settings: Vec<Option<(Duration, DirtyMode)>> = std::iter::once(None)
        .chain(
            intervals
                .iter()
                .flat_map(|&d| modes.iter().map(move |&m| Some((d, m)))),
        )
        .collect();
    let name = spec.work.workload.name();
    let file_for = |(d, m): (Duration, DirtyMode)| {
        out_dir.map(|o| o.join(format!("{name}-{}ms-{m}.hot", d.as_millis())))
    };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); settings.len()];
    for _ in 0..repeats.max(1) {
        for (i, s) in settings.iter().enumerate() {
            let opts = GuestOptions {
                track_dirty: s.map(|(d, m)| {
                    DirtyConfig::new(d, file_for((d, m)))
                        .with_mode(m)
                        .with_ring_bytes(if m == DirtyMode::Bitmap {
                            None
                        } else {
                            ring_bytes
                        })
                }),
                ..base.clone()
            };
            let run = guest::run(spec, &opts)?;
            let m = run.measurement.map_err(|why| Error::Measurement {
                workload: name,
                why,
            })?;
            let d = run.report.dirty.as_ref();
            samples[i].push(Sample {
                ns: m.ns_per_op,
                exits: m.kvm_exits.unwrap_or(0),
                intervals: d.map(|d| d.intervals),
                collect_us: d.map(|d| d.collect_mean_us),
                pages: d.map(|d| d.summary.distinct_pages_4k),
                method: d.map(|d| d.method.clone()),
                full: d.and_then(|d| d.ring_full_exits),
            });
        }
    }
    let med: Vec<Sample> = samples
        .iter()
        .map(|v| median_by(v, |s| s.ns).unwrap_or_default())
        .collect();
    let exits: Vec<u64> = samples
        .iter()
        .map(|v| median_by(v, |s| s.exits as f64).map_or(0, |s| s.exits))
        .collect();
    let (base_ns, base_exits) = (med[0].ns, exits[0]);
    Ok(settings
        .iter()
        .enumerate()
        .map(|(i, s)| OverheadRow {
            workload: name.into(),
            footprint_mib: spec.work.footprint >> 20,
            interval_ms: s.map(|(d, _)| d.as_secs_f64() * 1e3),
            method: med[i].method.clone(),
            repeats: samples[i].len(),
            ns_per_op: med[i].ns,
            kvm_exits: exits[i],
            ns_ratio: if base_ns > 0.0 {
                med[i].ns / base_ns
            } else {
                f64::NAN
            },
            exits_ratio: (exits[i] + 1) as f64 / (base_exits + 1) as f64,
            intervals: med[i].intervals,
            collect_mean_us: med[i].collect_us,
            pages_written: med[i].pages,
            ring_full_exits: med[i].full,
            hotness_file: s.and_then(file_for),
        })
        .collect())
}

/// The overhead pass of `segvmm bench --track-dirty I --dirty-overhead`: every workload ×
/// footprint, on one backing and guest page size, with tracking off and at every interval
/// with every method.
#[derive(Debug, Clone)]
pub struct PassSpec {
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Footprints, bytes.
    pub footprints: Vec<u64>,
    /// Host backing.
    pub backing: Backing,
    /// Guest page size of the buffer.
    pub guest_pages: PageSize,
    /// Seed.
    pub seed: u64,
    /// Operations (None: per workload).
    pub count: Option<u64>,
    /// Grow hugetlb pools.
    pub grow_pool: bool,
    /// Per-run timeout.
    pub timeout: Duration,
    /// Tracking intervals (besides off).
    pub intervals: Vec<Duration>,
    /// Methods to compare (see [`modes_for`]).
    pub modes: Vec<DirtyMode>,
    /// Ring bytes per vCPU for the ring (`None`: default).
    pub ring_bytes: Option<u32>,
    /// Repeats of each setting.
    pub repeats: usize,
    /// Output directory: hotness files and heat maps go to `hotness/` in it, the table to
    /// `dirty-overhead.md` and `dirty-overhead.json`.
    pub out: PathBuf,
}

/// Runs the pass; writes the files; returns the rows.
pub fn run_pass(spec: &PassSpec) -> Result<Vec<OverheadRow>, Error> {
    let dir = spec.out.join("hotness");
    create_dir(&dir)?;
    let base = GuestOptions {
        backing: spec.backing,
        grow_pool: spec.grow_pool,
        timeout: spec.timeout,
        ptsnap: None,
        track_dirty: None,
    };
    let mut rows = Vec::new();
    for &footprint in &spec.footprints {
        for &workload in &spec.workloads {
            let g = GuestSpec {
                work: WorkloadSpec {
                    workload,
                    footprint,
                    seed: spec.seed,
                    count: spec.count,
                },
                guest_pages: spec.guest_pages,
            };
            let sub = dir.join(format!("{}M", footprint >> 20));
            create_dir(&sub)?;
            rows.extend(measure(
                g,
                &base,
                &spec.intervals,
                &spec.modes,
                spec.ring_bytes,
                spec.repeats,
                Some(&sub),
            )?);
        }
    }
    let md = spec.out.join("dirty-overhead.md");
    let mut text = markdown(&rows);
    if let Some(m) = modes_markdown(&rows) {
        text.push('\n');
        text.push_str(&m);
    }
    write(&md, text)?;
    let js = spec.out.join("dirty-overhead.json");
    let text = serde_json::to_string_pretty(&rows)?;
    write(&js, text)?;
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[OverheadRow]) -> String {
    let mut s = String::from(
        "| workload | buffer | tracking | method | ns/op | × off | KVM exits | × off | intervals | collect µs | pages written | ring-full exits |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        s.push_str(&format!(
            "| {} | {} MiB | {} | {} | {:.2} | {:.2} | {} | {:.1} | {} | {} | {} | {} |\n",
            r.workload,
            r.footprint_mib,
            r.interval_ms.map_or("off".into(), |m| format!("{m:.0} ms")),
            opt(r.method.clone()),
            r.ns_per_op,
            r.ns_ratio,
            r.kvm_exits,
            r.exits_ratio,
            opt(r.intervals.map(|v| v.to_string())),
            opt(r.collect_mean_us.map(|v| format!("{v:.0}"))),
            opt(r.pages_written.map(|v| v.to_string())),
            opt(r.ring_full_exits.map(|v| v.to_string())),
        ));
    }
    s
}

/// Ring against bitmap at each workload, buffer and interval measured with both: ns/op,
/// KVM exits and collection time as ring ÷ bitmap (`None` when nothing was measured with
/// both).
pub fn modes_markdown(rows: &[OverheadRow]) -> Option<String> {
    let is_ring = |r: &&OverheadRow| r.method.as_deref() == Some("dirty-ring");
    let mut s = String::from(
        "| workload | buffer | interval | ns/op ring ÷ bitmap | KVM exits ring ÷ bitmap | collect µs ring ÷ bitmap |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut any = false;
    for ring in rows.iter().filter(is_ring) {
        let Some(bitmap) = rows.iter().find(|b| {
            !is_ring(b)
                && b.method.is_some()
                && b.workload == ring.workload
                && b.footprint_mib == ring.footprint_mib
                && b.interval_ms == ring.interval_ms
        }) else {
            continue;
        };
        any = true;
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "–".into()
            }
        };
        s.push_str(&format!(
            "| {} | {} MiB | {:.0} ms | {} | {} | {} |\n",
            ring.workload,
            ring.footprint_mib,
            ring.interval_ms.unwrap_or(0.0),
            ratio(ring.ns_per_op, bitmap.ns_per_op),
            ratio((ring.kvm_exits + 1) as f64, (bitmap.kvm_exits + 1) as f64),
            ratio(
                ring.collect_mean_us.unwrap_or(0.0),
                bitmap.collect_mean_us.unwrap_or(0.0)
            ),
        ));
    }
    any.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_median() {
        assert_eq!(median_by(&[3.0, 1.0, 2.0], |x| *x), Some(2.0));
        assert_eq!(median_by::<f64>(&[], |x| *x), None);
        let row = OverheadRow {
            workload: "gups".into(),
            footprint_mib: 64,
            interval_ms: None,
            method: None,
            repeats: 3,
            ns_per_op: 10.0,
            kvm_exits: 4,
            ns_ratio: 1.0,
            exits_ratio: 1.0,
            intervals: None,
            collect_mean_us: None,
            pages_written: None,
            ring_full_exits: None,
            hotness_file: None,
        };
        let t = markdown(std::slice::from_ref(&row));
        assert!(t.contains("| gups | 64 MiB | off | – | 10.00 | 1.00 | 4 | 1.0 | – | – | – | – |"));
        assert_eq!(modes_markdown(std::slice::from_ref(&row)), None);
        let tracked = |method: &str, ns: f64, exits: u64, us: f64| OverheadRow {
            interval_ms: Some(100.0),
            method: Some(method.into()),
            ns_per_op: ns,
            kvm_exits: exits,
            collect_mean_us: Some(us),
            ..row.clone()
        };
        let rows = [
            row.clone(),
            tracked("dirty-ring", 30.0, 99, 50.0),
            tracked("bitmap+manual-protect", 20.0, 199, 100.0),
        ];
        let m = modes_markdown(&rows).unwrap();
        assert!(
            m.contains("| gups | 64 MiB | 100 ms | 1.50 | 0.50 | 0.50 |"),
            "{m}"
        );
    }
}
