//! Results of a matrix: one row per run, a summary per cell (median and spread over
//! repeats, slowdown against native), and the writers: `results.json`, `results.csv` and
//! `summary.md` (the table the README shows).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{Cell, Environment};
use crate::host::HostInfo;
use crate::memory::Backing;
use crate::probe::layout::PageSize;
use crate::probe::Measurement;

/// Errors writing results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a file.
    #[error("writing {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Serializing.
    #[error("serializing results: {0}")]
    Json(#[from] serde_json::Error),
}

/// How a run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured.
    Ok,
    /// Tried and failed (reason given).
    Failed,
    /// The host cannot give this combination (reason given).
    Unavailable,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Unavailable => "unavailable",
        }
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Workload.
    pub workload: String,
    /// Environment ("native", "guest-4k", "guest-2m", "linux").
    pub environment: String,
    /// Host backing.
    pub backing: Backing,
    /// Guest page size (guest runs only).
    pub guest_pages: Option<PageSize>,
    /// Footprint, bytes.
    pub footprint: u64,
    /// Repeat index.
    pub repeat: u32,
    /// Outcome.
    pub status: Status,
    /// Why it failed or is unavailable.
    pub reason: Option<String>,
    /// The measurement, when there is one.
    pub measurement: Option<Measurement>,
    /// Page-table ptsnap the guest asked for (`--ptsnap`, issue #6), relative to the
    /// output directory; `segvmm project` replays over it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptsnap: Option<String>,
    /// Time from the guest's request to the ptsnap file being written, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptsnap_ms: Option<f64>,
    /// Of that, how long the guest was stopped, ms (the table copy; the rest happens after
    /// it resumed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptsnap_paused_ms: Option<f64>,
    /// Dirty tracking of this run (`--track-dirty`, issue #8): method, counts and the
    /// hotness file and heat map written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<DirtyRow>,
}

/// What dirty tracking of one run found, for results.json and summary.md.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirtyRow {
    /// `dirty-ring`, `bitmap+manual-protect` or `bitmap`.
    pub method: String,
    /// Interval, ms.
    pub interval_ms: f64,
    /// Intervals collected.
    pub intervals: u64,
    /// Distinct 4 KiB pages written.
    pub pages_written: u64,
    /// `KVM_EXIT_DIRTY_RING_FULL` exits (ring only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_full_exits: Option<u64>,
    /// Mean collection time, µs.
    pub collect_mean_us: f64,
    /// Hotness file, relative to the output directory (`segvmm tier --hotness`).
    pub hotness: String,
    /// Heat map, relative to the output directory.
    pub heatmap: String,
}

impl DirtyRow {
    /// From a run's report; `hotness` is the file's name relative to the output directory.
    pub fn new(d: &crate::dirty::DirtyReport, hotness: &str) -> Self {
        DirtyRow {
            method: d.method.clone(),
            interval_ms: d.interval_ms,
            intervals: d.intervals,
            pages_written: d.summary.distinct_pages_4k,
            ring_full_exits: d.ring_full_exits,
            collect_mean_us: d.collect_mean_us,
            hotness: hotness.to_string(),
            heatmap: Path::new(hotness)
                .with_extension("svg")
                .to_string_lossy()
                .into_owned(),
        }
    }
}

impl Row {
    /// A row for `cell`.
    pub fn new(
        cell: &Cell,
        status: Status,
        measurement: Option<Measurement>,
        reason: Option<String>,
    ) -> Self {
        Row {
            workload: cell.workload.name().into(),
            environment: cell.environment.to_string(),
            backing: cell.backing,
            guest_pages: match cell.environment {
                Environment::Guest(p) => Some(p),
                _ => None,
            },
            footprint: cell.footprint,
            repeat: cell.repeat,
            status,
            reason,
            measurement,
            ptsnap: None,
            ptsnap_ms: None,
            ptsnap_paused_ms: None,
            dirty: None,
        }
    }
}

/// Median and spread of one cell over its repeats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Workload.
    pub workload: String,
    /// Environment.
    pub environment: String,
    /// Backing.
    pub backing: Backing,
    /// Footprint.
    pub footprint: u64,
    /// Ok when at least one repeat was measured, else the first failed run's status.
    pub status: Status,
    /// Successful repeats.
    pub n: usize,
    /// Repeats tried.
    pub tried: usize,
    /// Median ns/op.
    pub median_ns_per_op: Option<f64>,
    /// Smallest.
    pub min_ns_per_op: Option<f64>,
    /// Largest.
    pub max_ns_per_op: Option<f64>,
    /// Median over the native median of the same workload, backing and footprint.
    pub slowdown_vs_native: Option<f64>,
    /// Median KVM exits in the timed part.
    pub median_kvm_exits: Option<u64>,
    /// Median shadow page faults in the timed part.
    pub median_shadow_page_faults: Option<u64>,
    /// Page-table ptsnap of the cell (`--ptsnap`: first repeat), request to file, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptsnap_ms: Option<f64>,
    /// Of that, how long the guest was paused, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptsnap_paused_ms: Option<f64>,
    /// When nothing was measured: the first reason given.
    pub reason: Option<String>,
}

/// Median of a non-empty sorted slice (mean of the middle two for even lengths).
pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn median_u64(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// (workload, environment, backing, footprint); backing by name (Backing has no order).
type Key = (String, String, String, u64);

/// Summarizes rows per (workload, environment, backing, footprint), in first-seen order.
pub fn summarize(rows: &[Row]) -> Vec<Summary> {
    let mut order: Vec<Key> = Vec::new();
    let mut groups: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let k = (
            r.workload.clone(),
            r.environment.clone(),
            r.backing.to_string(),
            r.footprint,
        );
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    let mut out: Vec<Summary> = order
        .iter()
        .map(|k| {
            let g = &groups[k];
            let ok: Vec<&Measurement> = g
                .iter()
                .filter(|r| r.status == Status::Ok)
                .filter_map(|r| r.measurement.as_ref())
                .collect();
            let mut v: Vec<f64> = ok.iter().map(|m| m.ns_per_op).collect();
            v.sort_by(f64::total_cmp);
            Summary {
                workload: k.0.clone(),
                environment: k.1.clone(),
                backing: g[0].backing,
                footprint: k.3,
                status: if v.is_empty() {
                    g.iter()
                        .map(|r| r.status)
                        .find(|s| *s != Status::Ok)
                        .unwrap_or(Status::Failed)
                } else {
                    Status::Ok
                },
                n: v.len(),
                tried: g.len(),
                median_ns_per_op: median(&v),
                min_ns_per_op: v.first().copied(),
                max_ns_per_op: v.last().copied(),
                slowdown_vs_native: None,
                median_kvm_exits: median_u64(ok.iter().filter_map(|m| m.kvm_exits).collect()),
                median_shadow_page_faults: median_u64(
                    ok.iter().filter_map(|m| m.shadow_page_faults).collect(),
                ),
                ptsnap_ms: g.iter().find_map(|r| r.ptsnap_ms),
                ptsnap_paused_ms: g.iter().find_map(|r| r.ptsnap_paused_ms),
                reason: if v.is_empty() {
                    g.iter().find_map(|r| r.reason.clone())
                } else {
                    None
                },
            }
        })
        .collect();
    let native: BTreeMap<(String, String, u64), f64> = out
        .iter()
        .filter(|s| s.environment == "native")
        .filter_map(|s| {
            Some((
                (s.workload.clone(), s.backing.to_string(), s.footprint),
                s.median_ns_per_op?,
            ))
        })
        .collect();
    for s in &mut out {
        if let (Some(m), Some(n)) = (
            s.median_ns_per_op,
            native.get(&(s.workload.clone(), s.backing.to_string(), s.footprint)),
        ) {
            if *n > 0.0 {
                s.slowdown_vs_native = Some(m / n);
            }
        }
    }
    out
}

/// Everything `results.json` holds.
#[derive(Debug, Serialize)]
pub struct Results<'a> {
    /// The host: KVM module, MMU mode, TSC, pools.
    pub host: &'a HostInfo,
    /// The command line that produced them.
    pub command: String,
    /// `/proc/loadavg` before and after the matrix: other load on the host perturbs
    /// latency-bound workloads, so the numbers carry it.
    pub load_average: [Option<String>; 2],
    /// Every run.
    pub rows: &'a [Row],
    /// Per cell.
    pub summary: &'a [Summary],
}

fn write(path: &Path, s: &str) -> Result<(), Error> {
    std::fs::write(path, s).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Appends `s` to the file at `path`.
pub fn append(path: &Path, s: &str) -> Result<(), Error> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(s.as_bytes()))
        .map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
}

/// The host's load averages (1, 5, 15 min), as `/proc/loadavg` gives them.
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Writes `results.json`.
pub fn write_json(path: &Path, results: &Results) -> Result<(), Error> {
    write(path, &serde_json::to_string_pretty(results)?)
}

/// The CSV header.
pub const CSV_HEADER: &str = "workload,environment,backing,guest_pages,footprint,repeat,status,ns_per_op,ops,kvm_exits,shadow_page_faults,contiguous_runs,checksum,seed,data_va,elapsed_ns,wall_ns,ptsnap_ms,ptsnap_paused_ms,kvm_module,mmu_mode,reason";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV text: one line per run.
pub fn csv(rows: &[Row], host: &HostInfo) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in rows {
        let m = r.measurement.as_ref();
        let fields = [
            r.workload.clone(),
            r.environment.clone(),
            r.backing.to_string(),
            r.guest_pages.map(|p| p.to_string()).unwrap_or_default(),
            r.footprint.to_string(),
            r.repeat.to_string(),
            r.status.as_str().to_string(),
            opt(m.map(|m| format!("{:.3}", m.ns_per_op))),
            opt(m.map(|m| m.ops.to_string())),
            opt(m.and_then(|m| m.kvm_exits).map(|v| v.to_string())),
            opt(m.and_then(|m| m.shadow_page_faults).map(|v| v.to_string())),
            opt(m.and_then(|m| m.contiguous_runs).map(|v| v.to_string())),
            opt(m.map(|m| format!("{:#x}", m.checksum))),
            opt(m.map(|m| m.seed.to_string())),
            opt(m.map(|m| format!("{:#x}", m.data_va))),
            opt(m.map(|m| format!("{:.0}", m.elapsed_ns))),
            opt(m.map(|m| format!("{:.0}", m.wall_ns))),
            opt(r.ptsnap_ms.map(|v| format!("{v:.3}"))),
            opt(r.ptsnap_paused_ms.map(|v| format!("{v:.3}"))),
            host.kvm_module.clone(),
            host.mmu_mode.to_string(),
            r.reason.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Writes `results.csv`.
pub fn write_csv(path: &Path, rows: &[Row], host: &HostInfo) -> Result<(), Error> {
    write(path, &csv(rows, host))
}

fn ns(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

/// A Markdown table per footprint: rows = workload × backing, columns = environments,
/// cells = median ns/op [min–max] and the slowdown against native.
pub fn markdown(summary: &[Summary], host: &HostInfo) -> String {
    let mut envs: Vec<String> = Vec::new();
    for s in summary {
        if !envs.contains(&s.environment) {
            envs.push(s.environment.clone());
        }
    }
    let mut out = format!(
        "Host: {} ({} paging), TSC {} kHz. Cells: median ns/op over repeats [min–max], ×slowdown against native.\n",
        host.kvm_module,
        host.mmu_mode,
        host.tsc_khz.map_or("unknown".into(), |k| k.to_string())
    );
    let mut footprints: Vec<u64> = summary.iter().map(|s| s.footprint).collect();
    footprints.dedup();
    footprints.sort_unstable();
    footprints.dedup();
    for fp in footprints {
        let _ = writeln!(out, "\nFootprint {} MiB\n", fp >> 20);
        let _ = writeln!(out, "| workload | backing | {} |", envs.join(" | "));
        let _ = writeln!(out, "|---|---|{}", "---|".repeat(envs.len()));
        let mut seen: Vec<(String, Backing)> = Vec::new();
        for s in summary.iter().filter(|s| s.footprint == fp) {
            let k = (s.workload.clone(), s.backing);
            if seen.contains(&k) {
                continue;
            }
            seen.push(k.clone());
            let cells: Vec<String> = envs
                .iter()
                .map(|e| {
                    match summary.iter().find(|x| {
                        x.footprint == fp
                            && x.workload == k.0
                            && x.backing == k.1
                            && &x.environment == e
                    }) {
                        None => "–".into(),
                        Some(x) => match (x.median_ns_per_op, x.min_ns_per_op, x.max_ns_per_op) {
                            (Some(m), Some(lo), Some(hi)) => {
                                let slow = match x.slowdown_vs_native {
                                    Some(r) if x.environment != "native" => format!(" ×{r:.2}"),
                                    _ => String::new(),
                                };
                                format!("{} [{}–{}]{slow}", ns(m), ns(lo), ns(hi))
                            }
                            _ => format!(
                                "{}: {}",
                                x.status.as_str(),
                                x.reason.clone().unwrap_or_default().replace('|', "/")
                            ),
                        },
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} | {} | {} |", k.0, k.1, cells.join(" | "));
        }
    }
    let snaps: Vec<&Summary> = summary.iter().filter(|s| s.ptsnap_ms.is_some()).collect();
    if !snaps.is_empty() {
        let _ = writeln!(
            out,
            "\nPage-table ptsnaps (first repeat): guest paused / request to file written, ms\n"
        );
        let _ = writeln!(
            out,
            "| workload | environment | backing | footprint | paused | to file |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for s in snaps {
            let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} MiB | {} | {} |",
                s.workload,
                s.environment,
                s.backing,
                s.footprint >> 20,
                ms(s.ptsnap_paused_ms),
                ms(s.ptsnap_ms)
            );
        }
    }
    out
}

/// The tracked runs as a Markdown section (`None` when no run was tracked): one line per
/// run with its method, counts, hotness file and heat map.
pub fn dirty_markdown(rows: &[Row]) -> Option<String> {
    let tracked: Vec<(&Row, &DirtyRow)> = rows
        .iter()
        .filter_map(|r| r.dirty.as_ref().map(|d| (r, d)))
        .collect();
    let (_, first) = tracked.first()?;
    let mut out = format!(
        "\nDirty tracking every {:.0} ms ({}); tracked runs' ns/op include its cost. `segvmm tier --hotness FILE` replays a file.\n\n",
        first.interval_ms, first.method
    );
    out.push_str("| run | method | intervals | pages written | ring-full exits | collect µs | hotness file | heat map |\n|---|---|---|---|---|---|---|---|\n");
    for (r, d) in tracked {
        let _ = writeln!(
            out,
            "| {} {} {} {} MiB #{} | {} | {} | {} | {} | {:.0} | [{}]({}) | [{}]({}) |",
            r.workload,
            r.environment,
            r.backing,
            r.footprint >> 20,
            r.repeat + 1,
            d.method,
            d.intervals,
            d.pages_written,
            d.ring_full_exits.map_or("–".into(), |v| v.to_string()),
            d.collect_mean_us,
            d.hotness,
            d.hotness,
            d.heatmap,
            d.heatmap
        );
    }
    Some(out)
}

/// Writes `summary.md`.
pub fn write_markdown(path: &Path, summary: &[Summary], host: &HostInfo) -> Result<(), Error> {
    write(path, &markdown(summary, host))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::MmuMode;
    use workloads::kernels::Workload;

    pub(crate) fn host() -> HostInfo {
        HostInfo {
            kvm_api_version: 12,
            kvm_module: "kvm_pvm".into(),
            mmu_mode: MmuMode::Shadow,
            mmu_mode_source: "test".into(),
            capabilities: Default::default(),
            hugepage_pools: vec![],
            thp_mode: "madvise".into(),
            guest_1g_pages: false,
            tsc_khz: Some(2_000_000),
            workarounds: vec![],
        }
    }

    pub(crate) fn row(env: Environment, backing: Backing, repeat: u32, ns: Option<f64>) -> Row {
        let cell = Cell {
            workload: Workload::Chase,
            environment: env,
            backing,
            footprint: 64 << 20,
            repeat,
        };
        match ns {
            Some(v) => {
                let m = Measurement {
                    workload: "chase".into(),
                    environment: if env == Environment::Native {
                        "native"
                    } else {
                        "guest"
                    }
                    .into(),
                    backing,
                    guest_pages: None,
                    footprint: 64 << 20,
                    seed: 1,
                    data_va: 0x40_0000_0000,
                    ops: 100,
                    elapsed_ns: v * 100.0,
                    wall_ns: v * 100.0,
                    tsc_khz: Some(2_000_000),
                    ns_per_op: v,
                    checksum: 7,
                    init_ns: 0.0,
                    kvm_exits: Some(3),
                    shadow_page_faults: Some(1),
                    contiguous_runs: Some(2),
                };
                Row::new(&cell, Status::Ok, Some(m), None)
            }
            None => Row::new(
                &cell,
                Status::Unavailable,
                None,
                Some("unavailable on this host: no pool, really".into()),
            ),
        }
    }

    fn rows() -> Vec<Row> {
        let g = Environment::Guest(PageSize::Size4K);
        vec![
            row(Environment::Native, Backing::Thp, 0, Some(100.0)),
            row(g, Backing::Thp, 0, Some(300.0)),
            row(Environment::Native, Backing::Thp, 1, Some(120.0)),
            row(g, Backing::Thp, 1, Some(200.0)),
            row(Environment::Native, Backing::Thp, 2, Some(110.0)),
            row(g, Backing::Thp, 2, Some(250.0)),
            row(g, Backing::Huge1g, 0, None),
        ]
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, 2.0, 9.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), Some(3.0));
    }

    #[test]
    fn summary_has_median_spread_and_slowdown() {
        let s = summarize(&rows());
        assert_eq!(s.len(), 3);
        let n = &s[0];
        assert_eq!(
            (
                n.environment.as_str(),
                n.n,
                n.median_ns_per_op,
                n.min_ns_per_op,
                n.max_ns_per_op
            ),
            ("native", 3, Some(110.0), Some(100.0), Some(120.0))
        );
        let g = &s[1];
        assert_eq!(g.median_ns_per_op, Some(250.0));
        assert!((g.slowdown_vs_native.unwrap_or(0.0) - 250.0 / 110.0).abs() < 1e-9);
        assert_eq!(
            (g.median_kvm_exits, g.median_shadow_page_faults),
            (Some(3), Some(1))
        );
        let u = &s[2];
        assert_eq!((u.n, u.tried, u.median_ns_per_op), (0, 1, None));
        assert!(u.reason.as_deref().unwrap_or("").contains("no pool"));
    }

    #[test]
    fn csv_has_one_line_per_run_and_quotes() {
        let text = csv(&rows(), &host());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 7);
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[1]
            .starts_with("chase,native,thp,,67108864,0,ok,100.000,100,3,1,2,0x7,1,0x4000000000,"));
        assert!(lines[7].contains(",unavailable,"));
        assert!(lines[7].ends_with("\"unavailable on this host: no pool, really\""));
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,\"b"), "\"a,\"\"b\"");
    }

    #[test]
    fn markdown_table() {
        let md = markdown(&summarize(&rows()), &host());
        assert!(md.contains("| workload | backing | native | guest-4k |"));
        assert!(md.contains("| chase | thp | 110 [100–120] | 250 [200–300] ×2.27 |"));
        assert!(md.contains("| chase | 1g | – | unavailable: "));
    }

    #[test]
    fn ptsnap_times_in_rows_csv_and_summary() {
        let mut r = rows();
        assert!(!markdown(&summarize(&r), &host()).contains("Page-table ptsnaps"));
        r[1].ptsnap = Some("ptsnaps/x.ptsnap".into());
        r[1].ptsnap_ms = Some(12.5);
        r[1].ptsnap_paused_ms = Some(1.5);
        let text = csv(&r, &host());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains(",12.500,1.500,kvm_pvm,"), "{}", lines[2]);
        assert!(lines[1].contains(",,,kvm_pvm,"), "{}", lines[1]);
        let s = summarize(&r);
        assert_eq!(
            (s[1].ptsnap_ms, s[1].ptsnap_paused_ms),
            (Some(12.5), Some(1.5))
        );
        let md = markdown(&s, &host());
        assert!(
            md.contains("| chase | guest-4k | thp | 64 MiB | 1.5 | 12.5 |"),
            "{md}"
        );
        let v = serde_json::to_value(&r[1]).unwrap();
        assert_eq!(v["ptsnap_paused_ms"], 1.5);
    }

    #[test]
    fn dirty_section_lists_tracked_runs() {
        let mut r = rows();
        assert_eq!(dirty_markdown(&r), None);
        r[1].dirty = Some(DirtyRow {
            method: "dirty-ring".into(),
            interval_ms: 100.0,
            intervals: 12,
            pages_written: 530,
            ring_full_exits: Some(0),
            collect_mean_us: 41.2,
            hotness: "hotness/chase-guest-4k-thp-64M-r0.hot".into(),
            heatmap: "hotness/chase-guest-4k-thp-64M-r0.svg".into(),
        });
        let md = dirty_markdown(&r).unwrap();
        assert!(md.contains("every 100 ms (dirty-ring)"), "{md}");
        assert!(
            md.contains("| chase guest-4k thp 64 MiB #1 | dirty-ring | 12 | 530 | 0 | 41 | [hotness/chase-guest-4k-thp-64M-r0.hot]"),
            "{md}"
        );
        let v = serde_json::to_value(&r[1]).unwrap();
        assert_eq!(
            v["dirty"]["heatmap"],
            "hotness/chase-guest-4k-thp-64M-r0.svg"
        );
        assert!(serde_json::to_value(&r[0]).unwrap().get("dirty").is_none());
    }

    #[test]
    fn json_round_trip() {
        let r = rows();
        let s = summarize(&r);
        let h = host();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.json");
        write_json(
            &p,
            &Results {
                host: &h,
                command: "segvmm bench".into(),
                load_average: [None, None],
                rows: &r,
                summary: &s,
            },
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["rows"].as_array().map(|a| a.len()), Some(7));
        assert_eq!(v["host"]["kvm_module"], "kvm_pvm");
        assert_eq!(v["rows"][1]["measurement"]["ns_per_op"], 300.0);
        assert_eq!(
            v["summary"][2]["reason"],
            "unavailable on this host: no pool, really"
        );
    }
}
