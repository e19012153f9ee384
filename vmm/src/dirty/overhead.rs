//! What dirty tracking costs a guest, measured: the same measurement-guest workload with
//! tracking off and at several intervals, in one invocation, interleaved (off, i1, i2, …,
//! then again for each repeat) so slow drift of a shared host hits every setting alike.
//! Reported per setting: the median ns/op and KVM exits of the timed part, and both as a
//! ratio to tracking off.
//!
//! Where the cost comes from: every collection write-protects the pages it reports, so the
//! next write to each of them exits to KVM to be logged and unprotected again; a shorter
//! interval re-arms more often. The collector's own ioctl time runs on another host thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use workloads::kernels::Workload;

use super::DirtyConfig;
use crate::memory::Backing;
use crate::probe::guest::{self, GuestOptions, GuestSpec};
use crate::probe::layout::PageSize;
use crate::probe::WorkloadSpec;

/// One setting's result.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRow {
    /// Workload.
    pub workload: String,
    /// Buffer MiB.
    pub footprint_mib: u64,
    /// Tracking interval, ms (`None`: tracking off).
    pub interval_ms: Option<f64>,
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
}

fn median_by<T: Clone>(v: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| key(a).total_cmp(&key(b)));
    s.get(s.len() / 2).cloned()
}

/// Runs `spec` with tracking off and at each of `intervals`, `repeats` times each,
/// interleaved; hotness files go to `out_dir` (named `<workload>-<interval>.hot`).
pub fn measure(
    spec: GuestSpec,
    base: &GuestOptions,
    intervals: &[Duration],
    repeats: usize,
    out_dir: Option<&Path>,
) -> Result<Vec<OverheadRow>, String> {
    let settings: Vec<Option<Duration>> = std::iter::once(None)
        .chain(intervals.iter().copied().map(Some))
        .collect();
    let name = spec.work.workload.name();
    let file_for = |d: Duration| out_dir.map(|o| o.join(format!("{name}-{}ms.hot", d.as_millis())));
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); settings.len()];
    for _ in 0..repeats.max(1) {
        for (i, s) in settings.iter().enumerate() {
            let opts = GuestOptions {
                track_dirty: s.map(|d| DirtyConfig::new(d, file_for(d))),
                ..base.clone()
            };
            let run = guest::run(spec, &opts).map_err(|e| e.to_string())?;
            let m = run.measurement.map_err(|e| format!("{name}: {e}"))?;
            let d = run.report.dirty.as_ref();
            samples[i].push(Sample {
                ns: m.ns_per_op,
                exits: m.kvm_exits.unwrap_or(0),
                intervals: d.map(|d| d.intervals),
                collect_us: d.map(|d| d.collect_mean_us),
                pages: d.map(|d| d.summary.distinct_pages_4k),
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
            interval_ms: s.map(|d| d.as_secs_f64() * 1e3),
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
            hotness_file: s.and_then(file_for),
        })
        .collect())
}

/// The tracked pass of `segvmm bench --track-dirty`: every workload × footprint, on one
/// backing and guest page size, with tracking off and at every interval.
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
    /// Repeats of each setting.
    pub repeats: usize,
    /// Output directory: hotness files and heat maps go to `hotness/` in it, the table to
    /// `dirty-overhead.md` and `dirty-overhead.json`.
    pub out: PathBuf,
}

/// Runs the pass; writes the files; returns the rows.
pub fn run_pass(spec: &PassSpec) -> Result<Vec<OverheadRow>, String> {
    let dir = spec.out.join("hotness");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let base = GuestOptions {
        backing: spec.backing,
        grow_pool: spec.grow_pool,
        timeout: spec.timeout,
        snapshot: None,
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
            std::fs::create_dir_all(&sub)
                .map_err(|e| format!("creating {}: {e}", sub.display()))?;
            rows.extend(measure(
                g,
                &base,
                &spec.intervals,
                spec.repeats,
                Some(&sub),
            )?);
        }
    }
    let md = spec.out.join("dirty-overhead.md");
    std::fs::write(&md, markdown(&rows)).map_err(|e| format!("writing {}: {e}", md.display()))?;
    let js = spec.out.join("dirty-overhead.json");
    let text = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
    std::fs::write(&js, text).map_err(|e| format!("writing {}: {e}", js.display()))?;
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[OverheadRow]) -> String {
    let mut s = String::from(
        "| workload | buffer | tracking | ns/op | × off | KVM exits | × off | intervals | collect µs | pages written |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        s.push_str(&format!(
            "| {} | {} MiB | {} | {:.2} | {:.2} | {} | {:.1} | {} | {} | {} |\n",
            r.workload,
            r.footprint_mib,
            r.interval_ms.map_or("off".into(), |m| format!("{m:.0} ms")),
            r.ns_per_op,
            r.ns_ratio,
            r.kvm_exits,
            r.exits_ratio,
            opt(r.intervals.map(|v| v.to_string())),
            opt(r.collect_mean_us.map(|v| format!("{v:.0}"))),
            opt(r.pages_written.map(|v| v.to_string())),
        ));
    }
    s
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
            repeats: 3,
            ns_per_op: 10.0,
            kvm_exits: 4,
            ns_ratio: 1.0,
            exits_ratio: 1.0,
            intervals: None,
            collect_mean_us: None,
            pages_written: None,
            hotness_file: None,
        };
        let t = markdown(&[row]);
        assert!(t.contains("| gups | 64 MiB | off | 10.00 | 1.00 | 4 | 1.0 | – | – | – |"));
    }
}
