//! The projection behind `segvmm project`: joins measured runs (a `segvmm bench` results directory) with model
//! replays of the same streams over the same page tables, calibrates the linear cost model
//! of `segment_mmu::project` on them, checks it on the runs it can predict, and projects
//! the runtime of every MMU design.
//!
//! Page tables per run, best first: the `.ptsnap` the guest asked for during the run
//! (the row's `ptsnap` field, or `NAME` in `--ptsnaps DIR`, `RESULTS/ptsnaps/` or
//! `RESULTS/`, with NAME from [`ptsnap_file_name`]); else the tables the VMM built for
//! that run, rebuilt from the measurement guest's plan (deterministic: same workload,
//! footprint and guest page size give the same tables) and marked as such; native runs
//! get a synthetic address space of the buffer in the backing's page size. The stream is
//! the run's own (workload generator, seed, footprint, the buffer's virtual address),
//! truncated to `--max-accesses`.
//!
//! Everything computed is marked: "measured" is what the bench timed, "model" the
//! calibrated model's value for the measured configuration, "projected" a design that did
//! not run. Bad results or ptsnap files are an [`Error`] naming the file.
//!
//! The report types, the table and the plot are `segment_mmu::project::{report, plot}`;
//! this module holds what needs the VMM: the measurement guest's plan and memory map.

mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use segment_mmu::designs::DesignKind;
use segment_mmu::project::report::{
    design_columns, ErrorSummary, HostOut, ProjOut, RunOut, TablesSource, Terms, MODEL,
};
use segment_mmu::project::workload::WorkloadStream;
use segment_mmu::project::{self, Calibration, Checked, Features, Observation, Slope, Source};
use segment_mmu::tlb::TlbConfig;
use serde::Deserialize;
use workloads::kernels::Workload;

use crate::probe::layout::PageSize;
use tables::{guest_pages, replay_one};

/// What to project, from what.
#[derive(Debug, Clone)]
pub struct Options {
    /// A `segvmm bench --out` directory (holds results.json).
    pub results: PathBuf,
    /// Directory of the runs' `.ptsnap` files, searched before RESULTS/ptsnaps and RESULTS.
    pub ptsnaps: Option<PathBuf>,
    /// Designs to project.
    pub designs: Vec<DesignKind>,
    /// The model's TLB.
    pub tlb: TlbConfig,
    /// The TLB preset's name, for the report.
    pub tlb_name: String,
    /// Host backing whose runs calibrate the model for the held-out check.
    pub calibrate_on: String,
    /// Accesses replayed per run (at least 1).
    pub max_accesses: u64,
    /// Print progress on stderr.
    pub progress: bool,
}

/// The projection and the design columns its table and plot show.
#[derive(Debug)]
pub struct Projection {
    /// proj.json.
    pub out: ProjOut,
    /// Design columns in report order.
    pub columns: Vec<String>,
}

/// Errors of the projection; all are bad input (results, ptsnaps or runs the model
/// cannot replay).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The results file cannot be read.
    #[error("{path}: {source}")]
    ResultsRead {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The results file is not JSON of the expected shape.
    #[error("{path}: not a segvmm bench results file ({source})")]
    ResultsFormat {
        /// File.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The results file has no measured run.
    #[error("{path}: no measured run (every row failed or is unavailable)")]
    NoMeasuredRun {
        /// File.
        path: String,
    },
    /// Neither the host nor any run recorded the TSC frequency.
    #[error(
        "results.json: the host's TSC frequency is unknown; cycles cannot be converted to time"
    )]
    NoTsc,
    /// No run of a workload the model replays.
    #[error("{path}: no measured chase or gups run to project")]
    NothingToProject {
        /// The results directory.
        path: String,
    },
    /// A ptsnap file cannot be read.
    #[error("ptsnap {path}: {source}")]
    PtsnapRead {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A ptsnap file is malformed.
    #[error("ptsnap {path}: {source}")]
    Ptsnap {
        /// File.
        path: String,
        /// Cause.
        source: segment_mmu::ptsnap::Error,
    },
    /// A run the model cannot set up (unknown workload, backing or environment).
    #[error("{run}: {why}")]
    Run {
        /// Which run.
        run: String,
        /// Why.
        why: String,
    },
    /// A run's guest plan, synthetic space or replay failed.
    #[error("{run}: {source}")]
    RunFailed {
        /// Which run.
        run: String,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The tables rebuilt from the guest's plan do not validate.
    #[error("{run}: rebuilt tables: {source}")]
    RebuiltTables {
        /// Which run.
        run: String,
        /// Cause.
        source: segment_mmu::ptsnap::Error,
    },
    /// The model could not be calibrated.
    #[error("calibration: {0}")]
    Calibration(#[from] project::Error),
}

/// [`Error::RunFailed`] for `cell`.
fn failed(cell: &Cell, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::RunFailed {
        run: cell.name(),
        source: e.into(),
    }
}

/// The ptsnap file name of a run: `chase-guest-4k-thp-256M.ptsnap`.
pub fn ptsnap_file_name(
    workload: &str,
    environment: &str,
    backing: &str,
    footprint: u64,
) -> String {
    format!(
        "{workload}-{environment}-{backing}-{}M.ptsnap",
        footprint >> 20
    )
}

/// The parts of results.json the projection reads.
#[derive(Debug, Deserialize)]
struct ResultsIn {
    host: HostIn,
    rows: Vec<RowIn>,
}

#[derive(Debug, Deserialize)]
struct HostIn {
    kvm_module: String,
    mmu_mode: String,
    tsc_khz: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RowIn {
    workload: String,
    environment: String,
    backing: String,
    footprint: u64,
    status: String,
    measurement: Option<MeasurementIn>,
    #[serde(default)]
    ptsnap: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MeasurementIn {
    seed: u64,
    data_va: u64,
    ops: u64,
    ns_per_op: f64,
    tsc_khz: Option<u32>,
    /// KVM exits of the timed part (guest runs; from the vCPU's binary stats).
    #[serde(default)]
    kvm_exits: Option<u64>,
}

/// One measured configuration: the median over its repeats.
#[derive(Debug, Clone)]
struct Cell {
    workload: String,
    environment: String,
    backing: String,
    footprint: u64,
    seed: u64,
    data_va: u64,
    ops: u64,
    measured: f64,
    repeats: usize,
    ptsnap: Option<String>,
    /// Median over the repeats of KVM's exits per operation in the timed part.
    exits_per_op: Option<f64>,
}

/// Workloads whose native twin does host-kernel work in its timed part that the
/// measurement guest does not do the same way: native `touch` takes the host's page
/// faults on a fresh buffer (the guest's RAM is prefaulted by the VMM), native `ptchurn`
/// calls mmap/munmap (the guest asks its ring-0 stub). Their native runs get their own
/// intercept; their guest runs share one.
fn native_does_kernel_work(workload: &str) -> bool {
    matches!(workload, "touch" | "ptchurn")
}

/// Where native ptchurn's fresh 4 KiB mappings are modelled (the bench records no
/// address for them: the kernel picks one per mmap).
const NATIVE_CHURN_BASE: u64 = 0x7f00_0000_0000;

impl Cell {
    fn name(&self) -> String {
        format!(
            "{} {} backing {} {} MiB",
            self.workload,
            self.environment,
            self.backing,
            self.footprint >> 20
        )
    }
    /// The calibration group: runs sharing an intercept (see the module docs).
    fn group(&self) -> String {
        let base = format!("{}/{}M", self.workload, self.footprint >> 20);
        if self.environment != "native" || !native_does_kernel_work(&self.workload) {
            base
        } else if self.workload == "ptchurn" {
            // Fresh 4 KiB mmaps whatever the backing: one group for all backings.
            format!("{base}/native")
        } else {
            format!("{base}/native-{}", self.backing)
        }
    }

    /// The group whose intercept the projected designs of this run use: the guest's,
    /// except for ptchurn, whose guest kernel work is projected at the cost the native
    /// run measured (this host emulates guest ring 0; hardware with EPT/NPT does not).
    fn projection_group(&self) -> String {
        if self.workload == "ptchurn" && self.environment != "native" {
            format!("{}/{}M/native", self.workload, self.footprint >> 20)
        } else {
            self.group()
        }
    }

    /// Translation-bound workloads fit their own walk cost; the others borrow it.
    fn slope(&self) -> Slope {
        match self.workload.as_str() {
            "chase" | "gups" => Slope::Own,
            _ => Slope::Pooled,
        }
    }

    /// The run's stream as the model replays it.
    fn stream(&self) -> Result<WorkloadStream, Error> {
        let workload = Workload::from_name(&self.workload).ok_or_else(|| Error::Run {
            run: self.name(),
            why: "unknown workload".into(),
        })?;
        let native = self.environment == "native";
        let slot_bytes = if native {
            4096
        } else {
            guest_pages(&self.environment).map_or(4096, PageSize::bytes)
        };
        let base = if native && workload == Workload::PtChurn {
            NATIVE_CHURN_BASE
        } else {
            self.data_va
        };
        Ok(WorkloadStream {
            workload,
            footprint: self.footprint,
            seed: self.seed,
            base,
            slot_bytes,
        })
    }
}

/// What a run's replays gave.
struct Replayed {
    cell: Cell,
    tables: TablesSource,
    /// Design name → steady-state counts per operation, including nested-4k-host and
    /// nested-2m-host.
    reports: Vec<(String, Features)>,
    /// Design name → host pages the counted operations touch first, per operation, for
    /// the designs whose host dimension is filled lazily ([`lazy_host_page`]).
    first_touches: BTreeMap<String, f64>,
    /// Operations counted (after the prelude and warm-up).
    ops: u64,
    /// The design that models the measured run (the host's mode, or native).
    measured_as: String,
}

fn parse_results(path: &Path) -> Result<ResultsIn, Error> {
    let p = || path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::ResultsRead { path: p(), source })?;
    let r: ResultsIn =
        serde_json::from_str(&text).map_err(|source| Error::ResultsFormat { path: p(), source })?;
    if !r
        .rows
        .iter()
        .any(|row| row.status == "ok" && row.measurement.is_some())
    {
        return Err(Error::NoMeasuredRun { path: p() });
    }
    Ok(r)
}

/// Median per (workload, environment, backing, footprint), in first-seen order; only
/// workloads whose stream the model can replay.
fn cells(rows: &[RowIn], skipped: &mut Vec<String>) -> Vec<Cell> {
    let mut order: Vec<(String, String, String, u64)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String, u64), Vec<&RowIn>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.status == "ok" && r.measurement.is_some())
    {
        if Workload::from_name(&r.workload).is_none() {
            let note = format!(
                "{}: no model stream for this workload; not projected",
                r.workload
            );
            if !skipped.contains(&note) {
                skipped.push(note);
            }
            continue;
        }
        let k = (
            r.workload.clone(),
            r.environment.clone(),
            r.backing.clone(),
            r.footprint,
        );
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    order
        .into_iter()
        .filter_map(|k| {
            let g = &groups[&k];
            let ms: Vec<&MeasurementIn> = g.iter().filter_map(|r| r.measurement.as_ref()).collect();
            let mut v: Vec<f64> = ms
                .iter()
                .map(|m| m.ns_per_op)
                .filter(|x| x.is_finite() && *x > 0.0)
                .collect();
            v.sort_by(f64::total_cmp);
            let med = crate::probe::bench::output::median(&v)?;
            let first = ms.first()?;
            let mut x: Vec<f64> = ms
                .iter()
                .filter(|m| m.ops > 0)
                .filter_map(|m| m.kvm_exits.map(|e| e as f64 / m.ops as f64))
                .collect();
            x.sort_by(f64::total_cmp);
            let exits_per_op = crate::probe::bench::output::median(&x);
            Some(Cell {
                workload: k.0,
                environment: k.1,
                backing: k.2,
                footprint: k.3,
                seed: first.seed,
                data_va: first.data_va,
                ops: first.ops,
                measured: med,
                repeats: v.len(),
                ptsnap: g.iter().find_map(|r| r.ptsnap.clone()),
                exits_per_op,
            })
        })
        .collect()
}

/// Runs the projection: reads the results, replays every run, calibrates, checks and
/// projects. Progress goes to stderr when [`Options::progress`] is set.
pub fn project(o: &Options) -> Result<Projection, Error> {
    let results = parse_results(&o.results.join("results.json"))?;
    let ghz = tsc_ghz(&results)?;
    let host_mode = match results.host.mmu_mode.as_str() {
        "shadow" => DesignKind::Shadow,
        _ => DesignKind::Nested,
    };
    let mut notes = Vec::new();
    let cells = cells(&results.rows, &mut notes);
    if cells.is_empty() {
        return Err(Error::NothingToProject {
            path: o.results.display().to_string(),
        });
    }
    let mut dirs: Vec<PathBuf> = o.ptsnaps.iter().cloned().collect();
    dirs.push(o.results.join("ptsnaps"));
    dirs.push(o.results.clone());
    let mut replayed = Vec::new();
    for c in &cells {
        if o.progress {
            eprintln!("segvmm project: replaying {} ...", c.name());
        }
        replayed.push(replay_one(c, &o.designs, host_mode, o, &o.tlb, &dirs)?);
    }

    // Calibrate on every measured run; check each run from a calibration without it.
    let obs: Vec<Observation> = replayed.iter().map(observation).collect();
    let cfg = project::Config::new(ghz);
    let cal = project::calibrate(&obs, &cfg)?;
    let (split, calibrated_on) = calibration_split(&cells, &o.calibrate_on, &mut notes);
    let checks: Vec<Option<Checked>> = project::checked_errors(&obs, &split, &cfg);
    let summary =
        project::error_summary(&checks).map(|(mean_abs, max_abs, checked_runs)| ErrorSummary {
            mean_abs,
            max_abs,
            checked_runs,
        });

    let columns = design_columns(&o.designs);
    let mut borrowed_native = false;
    let runs = replayed
        .iter()
        .zip(&obs)
        .zip(&checks)
        .map(|((r, ob), chk)| run_out(r, ob, *chk, &cal, &columns, &mut borrowed_native))
        .collect();
    notes.extend(closing_notes(&replayed, &cal, borrowed_native));
    let out = ProjOut {
        runs,
        calibration: cal,
        calibrated_on,
        model: MODEL,
        model_error: summary,
        host: HostOut {
            kvm_module: results.host.kvm_module.clone(),
            mmu_mode: results.host.mmu_mode.clone(),
            tsc_khz: results.host.tsc_khz,
        },
        tlb: o.tlb_name.clone(),
        notes,
    };
    Ok(Projection { out, columns })
}

/// The TSC frequency in GHz: the host's, else the first run's.
fn tsc_ghz(results: &ResultsIn) -> Result<f64, Error> {
    results
        .host
        .tsc_khz
        .or_else(|| {
            results
                .rows
                .iter()
                .find_map(|r| r.measurement.as_ref().and_then(|m| m.tsc_khz))
        })
        .map(|k| f64::from(k) / 1e6)
        .ok_or(Error::NoTsc)
}

/// A run as the calibration sees it. A guest run's exits are KVM's own count of its
/// timed part when the results have it (what the run paid); the replay's count otherwise.
fn observation(r: &Replayed) -> Observation {
    let mut f = r
        .reports
        .iter()
        .find(|(n, _)| *n == r.measured_as)
        .map(|(_, f)| *f)
        .unwrap_or_default();
    if r.cell.environment != "native" {
        if let Some(x) = r.cell.exits_per_op {
            f.exits = x;
        }
    }
    Observation {
        group: r.cell.group(),
        measured_ns: r.cell.measured,
        features: f,
        slope: r.cell.slope(),
    }
}

/// Which runs calibrate the held-out check (the `calibrate_on` backing's, when there are
/// runs on both sides; else all, checked leave-one-out), and how the report names that.
fn calibration_split(
    cells: &[Cell],
    calibrate_on: &str,
    notes: &mut Vec<String>,
) -> (Vec<bool>, String) {
    let any_split = cells.iter().any(|c| c.backing == calibrate_on)
        && cells.iter().any(|c| c.backing != calibrate_on);
    let split: Vec<bool> = cells
        .iter()
        .map(|c| !any_split || c.backing == calibrate_on)
        .collect();
    if !cells.iter().any(|c| c.backing == calibrate_on) {
        notes.push(format!(
            "no run with backing {calibrate_on:?} (--calibrate-on): every run is checked leave-one-out"
        ));
    }
    let calibrated_on = if any_split {
        format!("backing {calibrate_on}")
    } else {
        "all runs (leave-one-out)".to_string()
    };
    (split, calibrated_on)
}

/// One run of the report: measured, modelled, checked, and every design projected.
fn run_out(
    r: &Replayed,
    o: &Observation,
    chk: Option<Checked>,
    cal: &Calibration,
    columns: &[String],
    borrowed_native: &mut bool,
) -> RunOut {
    let mut projected = BTreeMap::new();
    let mut projected_terms = BTreeMap::new();
    let mut translation = BTreeMap::new();
    let native = r.cell.environment == "native";
    let mut pgroup = r.cell.projection_group();
    if cal.group(&pgroup).is_none() {
        pgroup = r.cell.group();
    } else if pgroup != r.cell.group() {
        *borrowed_native = true;
    }
    for (name, f) in &r.reports {
        translation.insert(name.clone(), *f);
        let shown = !native && columns.contains(name);
        if !(shown || (native && name == "native")) {
            continue;
        }
        let ft = r.first_touches.get(name).copied().unwrap_or(0.0);
        if let Some((p, terms)) = terms(r, cal, &pgroup, f, ft) {
            projected.insert(name.clone(), p);
            projected_terms.insert(name.clone(), terms);
        }
    }
    RunOut {
        workload: r.cell.workload.clone(),
        environment: r.cell.environment.clone(),
        backing: r.cell.backing.clone(),
        footprint: r.cell.footprint,
        measured_ns_per_op: r.cell.measured,
        repeats: r.cell.repeats,
        measured_as: r.measured_as.clone(),
        model_ns_per_op: cal.predict(&o.group, &o.features),
        model_error: chk.map(|c| c.relative_error),
        model_error_check: chk.map(|c| c.check),
        projected,
        projected_terms,
        translation,
        measured_exits_per_op: if native { None } else { r.cell.exits_per_op },
        group: r.cell.group(),
        projection_group: pgroup,
        page_tables: r.tables.clone(),
        replayed_ops: r.ops,
    }
}

/// One design's projected ns/op for run `r` with the intercept of `pgroup`, term by term;
/// `ft` host pages first touched per op are added to its exits.
fn terms(
    r: &Replayed,
    cal: &Calibration,
    pgroup: &str,
    f: &Features,
    ft: f64,
) -> Option<(f64, Terms)> {
    let x = Features {
        exits: f.exits + ft,
        ..*f
    };
    let (Some(p), Some(g)) = (cal.predict(pgroup, &x), cal.group(pgroup)) else {
        return None;
    };
    let exit_src = match cal.exit_cost {
        Source::Calibrated => "calibrated",
        _ => "ASSUMED",
    };
    let ideal_src = if r.cell.environment == "native" {
        "this run's own intercept (host kernel work included)"
    } else if pgroup != r.cell.group() {
        "native run's intercept: guest kernel work at the host kernel's measured cost (ASSUMED equal)"
    } else {
        "calibrated on the guest runs"
    };
    let terms = Terms {
        ideal_ns: g.ideal_ns_per_op,
        walk_ns: g.ns_per_ref * x.refs,
        exit_ns: cal.ns_per_exit * x.exits,
        fixed_ns: p - g.ideal_ns_per_op - g.ns_per_ref * x.refs - cal.ns_per_exit * x.exits,
        exits_per_op: x.exits,
        first_touch_exits_per_op: ft,
        source: format!(
            "I: {ideal_src}; a: {} ({}); b: {exit_src}; R and X: replay{}; L2 and base-bound latencies: assumed",
            match g.ref_cost {
                Source::Pooled => "pooled from chase/gups",
                Source::ClampedToZero => "clamped to 0",
                _ => "calibrated",
            },
            pgroup,
            if ft > 0.0 { " + first touches of host pages (lazy EPT/NPT fill, ASSUMED one exit each)" } else { "" }
        ),
    };
    Some((p, terms))
}

/// The notes that depend on every run's replay.
fn closing_notes(replayed: &[Replayed], cal: &Calibration, borrowed_native: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if replayed.iter().any(|r| r.tables.source == "plan") {
        notes.push("some guest runs had no ptsnap: their page tables were rebuilt from the measurement guest's plan (the tables the VMM wrote), with the host-physical layout unknown".into());
    }
    if cal.exit_cost == Source::Assumed {
        notes.push(format!("VM exit cost not determinable from these runs (no group's exits vary between its runs): {} cycles ASSUMED", cal.cycles_per_exit));
    }
    if replayed
        .iter()
        .any(|r| r.cell.environment != "native" && r.cell.exits_per_op.is_none())
    {
        notes.push(
            "some guest runs have no KVM exit count: their MODEL uses the replay's exits".into(),
        );
    }
    if borrowed_native {
        notes.push("ptchurn PROJECTED: the guest's map/unmap (ring-0 stub, emulated on this host) is charged at what the native run's mmap/fault/munmap cost (ASSUMED: guest ring 0 runs natively with hardware virtualization), plus each design's exits".into());
    }
    if replayed
        .iter()
        .any(|r| !r.first_touches.is_empty() && r.first_touches.values().any(|v| *v > 0.0))
    {
        notes.push("nested, enlarged-tdp and guest-direct PROJECTED with one exit per host page first touched in the timed part (the EPT/NPT is filled lazily, as KVM does; ASSUMED to cost one calibrated exit); Compromis and VMM/dual direct map guest memory up front".into());
    }
    notes
}

#[cfg(test)]
mod tests {
    use segment_mmu::designs::DesignReport;

    use super::tables::*;
    use super::*;

    #[test]
    fn ptsnap_names_and_backings() {
        assert_eq!(
            ptsnap_file_name("chase", "guest-4k", "thp", 256 << 20),
            "chase-guest-4k-thp-256M.ptsnap"
        );
        assert_eq!(backing_page("thp"), Some(2 << 20));
        assert_eq!(backing_page("5k"), None);
        assert_eq!(guest_pages("guest-2m"), Some(PageSize::Size2M));
        assert_eq!(guest_pages("native"), None);
    }

    #[test]
    fn bad_results_files_are_one_line_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("results.json");
        assert!(parse_results(&p)
            .unwrap_err()
            .to_string()
            .contains("results.json"));
        std::fs::write(&p, "{not json").unwrap();
        let e = parse_results(&p).unwrap_err().to_string();
        assert!(
            e.contains("not a segvmm bench results file") && !e.contains('\n'),
            "{e}"
        );
        std::fs::write(
            &p,
            r#"{"host":{"kvm_module":"kvm","mmu_mode":"shadow","tsc_khz":1},"rows":[]}"#,
        )
        .unwrap();
        assert!(parse_results(&p)
            .unwrap_err()
            .to_string()
            .contains("no measured run"));
    }

    fn cell(workload: &str, environment: &str) -> Cell {
        Cell {
            workload: workload.into(),
            environment: environment.into(),
            backing: "thp".into(),
            footprint: 8 << 20,
            seed: 3,
            data_va: workloads::protocol::DATA_VA,
            ops: 20_000,
            measured: 30.0,
            repeats: 1,
            ptsnap: None,
            exits_per_op: None,
        }
    }

    #[test]
    fn plan_tables_replay_the_run_without_faults() {
        let cell = cell("gups", "guest-4k");
        let snap = plan_ptsnap(&cell, PageSize::Size4K, 2 << 20).unwrap();
        let (pairs, w, n) =
            replay_cell(&cell, &snap, &DesignKind::ALL, &TlbConfig::none(), 5_000).unwrap();
        let r: Vec<DesignReport> = pairs.into_iter().map(|p| p.1).collect();
        let get = |n: &str| r.iter().find(|x| x.name == n).unwrap();
        assert_eq!(get("native").refs_per_walk, 4.0);
        // 4 KiB guest pages over 2 MiB host pages: (4+1)(3+1)-1 = 19.
        assert_eq!(get("nested").refs_per_walk, 19.0);
        assert_eq!((w, n), (8 * 2048, 5_000));
        assert!(r.iter().all(|x| x.faults == 0 && x.accesses == w + n));
    }

    #[test]
    fn every_workload_replays_over_its_tables() {
        // Guest runs over the plan (ptchurn over its mapped state), native runs over a
        // synthetic space; touch and ptchurn count from cold, shadow exits on them.
        for w in ["chase", "gups", "stream", "touch", "ptchurn"] {
            for env in ["guest-4k", "guest-2m", "native"] {
                let c = cell(w, env);
                let (snap, _) = if env == "native" {
                    native_ptsnap(&c, 2 << 20).unwrap()
                } else {
                    let pages = guest_pages(env).unwrap();
                    (plan_ptsnap(&c, pages, 2 << 20).unwrap(), String::new())
                };
                let ds = [DesignKind::Native, DesignKind::Shadow];
                let ds = if env == "native" { &ds[..1] } else { &ds[..] };
                let (pairs, _, n) = replay_cell(&c, &snap, ds, &TlbConfig::intel(), 2_000)
                    .unwrap_or_else(|e| panic!("{w} {env}: {e}"));
                for (a, b) in &pairs {
                    let f = Features::per_op(a, b, n).unwrap();
                    assert!(f.refs >= 0.0 && b.faults == 0, "{w} {env}: {b:?}");
                    if b.name == "shadow" {
                        let want = match (w, env) {
                            // One hidden fault per fresh 4 KiB page; per 2 MiB page.
                            ("touch", "guest-4k") => 1.0,
                            ("touch", _) => 1.0 / 512.0,
                            // Map and unmap write the table, the store faults.
                            ("ptchurn", _) => 3.0,
                            _ => 0.0,
                        };
                        assert!((f.exits - want).abs() < 0.01, "{w} {env}: {f:?}");
                    }
                }
            }
        }
    }
}
