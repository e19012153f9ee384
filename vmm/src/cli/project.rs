//! `segvmm project`: joins measured runs (a `segvmm bench` results directory) with model
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
//! not run. Bad results or ptsnap files exit with 2 and one line naming the problem.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use segment_mmu::designs::{DesignKind, DesignReport, Env, ModelConfig};
use segment_mmu::mem::PageStore;
use segment_mmu::paging::{PageSize as MmuPageSize, PagingMode};
use segment_mmu::project::workload::WorkloadStream;
use segment_mmu::project::{self, Calibration, Checked, Features, Observation, Slope};
use segment_mmu::ptsnap::{AddressSpace, Ptsnap, RamRange, SyntheticSpec};
use segment_mmu::replay::replay;
use segment_mmu::tlb::TlbConfig;
use serde::{Deserialize, Serialize};
use workloads::kernels::Workload;

use super::{CliError, CliResult};
use crate::memory::{MMIO_HOLE_END, MMIO_HOLE_START};
use crate::probe::guest::{GuestPlan, GuestSpec};
use crate::probe::layout::PageSize;
use crate::probe::WorkloadSpec;

/// The model, as printed by `--help` and written to proj.json.
pub const MODEL: &str = "t(run, design) = I_g + a_g*R + b*X + (8*L + 1*B)/f  [ns/op], per operation of the workload. \
R, L, B: walk references, L2-TLB hits, base-bound checks per op from replaying the run's own stream over its page tables; \
X: VM exits per op (MODEL of a measured guest run: KVM's exit count of its timed part; PROJECTED: the design's replay, \
plus one per host page first touched for designs that fill EPT/NPT lazily); f: TSC GHz. \
Calibrated by least squares on the measured runs: I_g per group (workload and footprint; native touch/ptchurn runs, \
whose timed part does host-kernel work, get their own), a_g for chase and gups (others take the pooled value), \
b shared (from the within-group variation of exits: touch with 4K vs 2M guest pages; 2000 cycles ASSUMED if none varies). \
ptchurn PROJECTED uses the native run's intercept (guest kernel work at the host kernel's cost, ASSUMED).";

/// Options of `segvmm project`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = MODEL)]
pub struct Args {
    /// A `segvmm bench --out` directory (holds results.json).
    #[arg(long)]
    pub results: PathBuf,
    /// Directory of the runs' `.ptsnap` ptsnaps (default: RESULTS/ptsnaps, RESULTS).
    #[arg(long)]
    pub ptsnaps: Option<PathBuf>,
    /// Designs to project: `all` or a comma list (native, nested, shadow, compromis,
    /// dual-direct, vmm-direct, guest-direct, enlarged-tdp, dynamic-switch). Nested is
    /// also projected with 4 KiB and 2 MiB host pages (nested-4k-host, nested-2m-host).
    #[arg(long, default_value = "all")]
    pub designs: String,
    /// TLB preset of the model: intel, amd or none.
    #[arg(long, default_value = "intel")]
    pub tlb: String,
    /// Host backing whose runs calibrate the model for the held-out check; the other
    /// backings' runs are predicted from it (runs of this backing are checked
    /// leave-one-out).
    #[arg(long, default_value = "thp")]
    pub calibrate_on: String,
    /// Accesses replayed per run (a prefix of the run's own stream).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_accesses: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the SVG plot (measured and projected bars side by side) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Errors of `segvmm project`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The results file is missing or malformed.
    #[error("{path}: {why}")]
    Results {
        /// File.
        path: String,
        /// Why.
        why: String,
    },
    /// A ptsnap file is unreadable or malformed.
    #[error("ptsnap {path}: {why}")]
    Ptsnap {
        /// File.
        path: String,
        /// Why.
        why: String,
    },
    /// A run's page tables or stream could not be set up.
    #[error("{run}: {why}")]
    Run {
        /// Which run.
        run: String,
        /// Why.
        why: String,
    },
    /// The model could not be calibrated.
    #[error("calibration: {0}")]
    Calibration(#[from] project::Error),
    /// Writing an output.
    #[error("writing {path}: {why}")]
    Write {
        /// File.
        path: String,
        /// Why.
        why: String,
    },
}

impl Error {
    fn exit(self) -> CliError {
        match self {
            Error::Write { .. } => CliError::failed(self),
            _ => CliError::bad_input(self),
        }
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

/// Where a run's page tables came from.
#[derive(Debug, Clone, Serialize)]
struct TablesSource {
    /// "ptsnap", "plan" (rebuilt from the guest's plan: no ptsnap found) or
    /// "synthetic" (native runs).
    source: &'static str,
    /// The file or spec.
    detail: String,
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
    let e = |why: String| Error::Results {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|err| e(err.to_string()))?;
    let r: ResultsIn = serde_json::from_str(&text)
        .map_err(|err| e(format!("not a segvmm bench results file ({err})")))?;
    if !r
        .rows
        .iter()
        .any(|row| row.status == "ok" && row.measurement.is_some())
    {
        return Err(e(
            "no measured run (every row failed or is unavailable)".into()
        ));
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

/// Host page size of a backing name (THP is taken as fully huge: the bench asks for it
/// with MADV_HUGEPAGE on a 2 MiB aligned buffer).
fn backing_page(backing: &str) -> Option<u64> {
    match backing {
        "4k" => Some(4096),
        "thp" | "2m" => Some(2 << 20),
        "1g" => Some(1 << 30),
        _ => None,
    }
}

fn guest_pages(environment: &str) -> Option<PageSize> {
    match environment {
        "guest-4k" => Some(PageSize::Size4K),
        "guest-2m" => Some(PageSize::Size2M),
        "guest-1g" => Some(PageSize::Size1G),
        _ => None,
    }
}

fn read_ptsnap(path: &Path) -> Result<Ptsnap, Error> {
    let e = |why: String| Error::Ptsnap {
        path: path.display().to_string(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|err| e(err.to_string()))?;
    Ptsnap::from_bytes(&bytes).map_err(|err| e(err.to_string()))
}

/// The measurement guest's tables for `cell`, rebuilt from its plan, as a ptsnap.
fn plan_ptsnap(cell: &Cell, pages: PageSize, host_page: u64) -> Result<Ptsnap, Error> {
    let err = |why: String| Error::Run {
        run: cell.name(),
        why,
    };
    let mut workload =
        Workload::from_name(&cell.workload).ok_or_else(|| err("unknown workload".into()))?;
    if workload == Workload::PtChurn {
        // ptchurn's plan leaves the buffer's leaf entries not present (its stub sets
        // them one at a time); the layout is otherwise the same as touch's. Each access
        // of the stream happens while its slot is mapped, so replay the mapped state.
        workload = Workload::Touch;
    }
    let spec = GuestSpec {
        work: WorkloadSpec {
            workload,
            footprint: cell.footprint,
            seed: cell.seed,
            count: Some(cell.ops),
        },
        guest_pages: pages,
    };
    let plan = GuestPlan::new(spec).map_err(|e| err(e.to_string()))?;
    let mut store = PageStore::new();
    for t in &plan.tables.tables {
        store.insert(t.gpa, *t.entries);
    }
    let range = |gpa_start: u64, len: u64| RamRange {
        gpa_start,
        len,
        host_va: 0,
        host_page_size: host_page,
        runs: None,
    };
    let ram = if plan.ram_size <= MMIO_HOLE_START {
        vec![range(0, plan.ram_size)]
    } else {
        vec![
            range(0, MMIO_HOLE_START),
            range(MMIO_HOLE_END, plan.ram_size - MMIO_HOLE_START),
        ]
    };
    // The guest's CR4 (PAE, OSFXSR, OSXMMEXCPT) and EFER (LME, LMA): see probe::guest.
    let mut snap = Ptsnap {
        mode: PagingMode::Level4,
        cr4: (1 << 5) | (1 << 9) | (1 << 10),
        efer: (1 << 8) | (1 << 10),
        spaces: vec![AddressSpace {
            cr3: plan.tables.cr3,
            label: "probe".into(),
        }],
        ram,
        pages: store,
    };
    snap.validate()
        .map_err(|e| err(format!("rebuilt tables: {e}")))?;
    snap.optimize();
    Ok(snap)
}

/// The native buffer as a synthetic address space in the backing's page size.
fn native_ptsnap(cell: &Cell, host_page: u64) -> Result<(Ptsnap, String), Error> {
    let err = |why: String| Error::Run {
        run: cell.name(),
        why,
    };
    // Native ptchurn maps fresh 4 KiB pages whatever the backing.
    let churn = cell.workload == "ptchurn";
    let page = if churn { 4096 } else { host_page };
    let base = cell.stream()?.base;
    let large = MmuPageSize::at_most(page);
    let spec = SyntheticSpec {
        heap: cell.footprint,
        large,
        large_fraction: if large == MmuPageSize::Size4K {
            0.0
        } else {
            1.0
        },
        base,
        host_page: page,
        ..SyntheticSpec::default()
    };
    let detail = format!(
        "heap={},pages={},base={base:#x}",
        cell.footprint,
        if churn {
            "4k (fresh mmaps)"
        } else {
            &cell.backing
        }
    );
    Ok((spec.build().map_err(|e| err(e.to_string()))?, detail))
}

/// Finds and loads the page tables of `cell`.
fn tables_for(
    cell: &Cell,
    dirs: &[PathBuf],
    results_dir: &Path,
) -> Result<(Ptsnap, TablesSource), Error> {
    let err = |why: String| Error::Run {
        run: cell.name(),
        why,
    };
    let host_page = backing_page(&cell.backing)
        .ok_or_else(|| err(format!("unknown backing {:?}", cell.backing)))?;
    if cell.environment == "native" {
        let (s, detail) = native_ptsnap(cell, host_page)?;
        return Ok((
            s,
            TablesSource {
                source: "synthetic",
                detail,
            },
        ));
    }
    let pages = guest_pages(&cell.environment).ok_or_else(|| {
        err(format!(
            "environment {:?} cannot be modelled",
            cell.environment
        ))
    })?;
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = &cell.ptsnap {
        let p = PathBuf::from(p);
        candidates.push(if p.is_relative() {
            results_dir.join(p)
        } else {
            p
        });
    }
    let name = ptsnap_file_name(
        &cell.workload,
        &cell.environment,
        &cell.backing,
        cell.footprint,
    );
    candidates.extend(dirs.iter().map(|d| d.join(&name)));
    if let Some(p) = candidates.into_iter().find(|p| p.exists()) {
        let s = read_ptsnap(&p)?;
        return Ok((
            s,
            TablesSource {
                source: "ptsnap",
                detail: p.display().to_string(),
            },
        ));
    }
    let s = plan_ptsnap(cell, pages, host_page)?;
    Ok((
        s,
        TablesSource {
            source: "plan",
            detail: "no ptsnap found: the tables the VMM built, rebuilt from the guest's plan"
                .into(),
        },
    ))
}

/// (warm-up, full) report pairs per design, W (warm-up operations) and N (counted).
type Replays = (Vec<(DesignReport, DesignReport)>, u64, u64);

/// Replays the cell's stream through `designs` over `snap` twice, up to W and to W+N
/// operations of its timed loop (W = [`WorkloadStream::warm_ops`], N = the run's
/// operations capped at `max`; both after the workload's prelude), and returns the
/// (warm-up, full) report pairs and N: [`Features::per_op`] takes the difference.
fn replay_cell(
    cell: &Cell,
    snap: &Ptsnap,
    designs: &[DesignKind],
    tlb: &TlbConfig,
    max: u64,
) -> Result<Replays, Error> {
    let err = |why: String| Error::Run {
        run: cell.name(),
        why,
    };
    let ws = cell.stream()?;
    let env = Env::new(
        snap,
        0,
        ModelConfig {
            tlb: tlb.clone(),
            ..ModelConfig::default()
        },
    )
    .map_err(|e| err(e.to_string()))?;
    let mut n = cell.ops.min(max).max(1);
    if let Some(m) = ws.max_ops() {
        n = n.min(m);
    }
    let run = |ops: u64| -> Result<Vec<DesignReport>, Error> {
        let mut stream = ws.build(ops);
        replay(&env, &mut stream, designs, None).map_err(|e| err(e.to_string()))
    };
    let w = ws.warm_ops(n);
    let (warm, full) = (run(w)?, run(w + n)?);
    if let Some(r) = full.iter().find(|r| r.faults * 100 > r.accesses) {
        return Err(err(format!(
            "{} of {} replayed accesses fault in these page tables: the ptsnap does not map the run's buffer at {:#x}",
            r.faults, r.accesses, ws.base
        )));
    }
    Ok((warm.into_iter().zip(full).collect(), w, n))
}

fn with_host_page(snap: &Ptsnap, page: u64) -> Ptsnap {
    let mut s = snap.clone();
    for r in &mut s.ram {
        r.host_page_size = page;
    }
    s
}

/// Host page size of the lazily filled host dimension of `design` for a run on
/// `backing`, or `None` for designs whose host dimension is not filled page by page on
/// the guest's first access: native (no host dimension), shadow (its fills are the
/// hidden faults its replay counts), dynamic switching (its replay charges its own
/// mode's exits), and the designs whose host dimension is a VMM segment (Compromis,
/// VMM and dual direct: the VMM maps guest memory up front, as Gandhi et al.'s and
/// Teabe et al.'s designs require).
fn lazy_host_page(design: &str, backing: &str) -> Option<u64> {
    match design {
        "nested" | "enlarged-tdp" | "guest-direct" => backing_page(backing),
        "nested-4k-host" => Some(4096),
        "nested-2m-host" => Some(2 << 20),
        _ => None,
    }
}

/// Replays one cell: native runs through the native design, guest runs through every
/// selected design plus the one modelling the host's mode, and nested with 4 KiB and
/// 2 MiB host pages.
fn replay_one(
    cell: &Cell,
    designs: &[DesignKind],
    host_mode: DesignKind,
    a: &Args,
    tlb: &TlbConfig,
    dirs: &[PathBuf],
) -> Result<Replayed, Error> {
    let (snap, tables) = tables_for(cell, dirs, &a.results)?;
    let per_op = |(pairs, _, n): Replays,
                  rename: Option<&str>|
     -> Result<Vec<(String, Features, u64)>, Error> {
        pairs
            .into_iter()
            .map(|(w, f)| {
                let x = Features::per_op(&w, &f, n).ok_or_else(|| Error::Run {
                    run: cell.name(),
                    why: format!("{}: nothing replayed", f.name),
                })?;
                Ok((rename.map_or(f.name.clone(), str::to_string), x, n))
            })
            .collect()
    };
    let mut out = Vec::new();
    let measured_as = if cell.environment == "native" {
        out.extend(per_op(
            replay_cell(cell, &snap, &[DesignKind::Native], tlb, a.max_accesses)?,
            None,
        )?);
        "native".to_string()
    } else {
        let mut ds = designs.to_vec();
        if !ds.contains(&host_mode) {
            ds.push(host_mode);
        }
        out.extend(per_op(
            replay_cell(cell, &snap, &ds, tlb, a.max_accesses)?,
            None,
        )?);
        if designs.contains(&DesignKind::Nested) {
            for (page, name) in [(4096u64, "nested-4k-host"), (2 << 20, "nested-2m-host")] {
                let s = with_host_page(&snap, page);
                out.extend(per_op(
                    replay_cell(cell, &s, &[DesignKind::Nested], tlb, a.max_accesses)?,
                    Some(name),
                )?);
            }
        }
        host_mode.name().to_string()
    };
    let ops = out.first().map_or(0, |x| x.2);
    let ws = cell.stream()?;
    let warm = ws.warm_ops(ops);
    let mut first_touches = BTreeMap::new();
    if cell.environment != "native" {
        for (name, _, _) in &out {
            if let Some(page) = lazy_host_page(name, &cell.backing) {
                first_touches.insert(name.clone(), ws.first_touches_per_op(warm, ops, page));
            }
        }
    }
    Ok(Replayed {
        cell: cell.clone(),
        tables,
        reports: out.into_iter().map(|(n, f, _)| (n, f)).collect(),
        first_touches,
        ops,
        measured_as,
    })
}

/// One run of proj.json.
#[derive(Debug, Serialize)]
struct RunOut {
    workload: String,
    environment: String,
    backing: String,
    footprint: u64,
    /// Median ns/op over the repeats (measured).
    measured_ns_per_op: f64,
    repeats: usize,
    /// The design modelling the measured run.
    measured_as: String,
    /// The calibrated model's ns/op for the measured configuration.
    model_ns_per_op: Option<f64>,
    /// (model prediction from a calibration that did not see this run − measured) /
    /// measured.
    model_error: Option<f64>,
    /// How the error was checked: held-out or leave-one-out.
    model_error_check: Option<project::Check>,
    /// Projected ns/op per design (model values, not measurements).
    projected: BTreeMap<String, f64>,
    /// Per projected design: the terms that add up to it, and where each came from.
    projected_terms: BTreeMap<String, Terms>,
    /// Per design: what the replay counted per operation.
    translation: BTreeMap<String, Features>,
    /// KVM exits per operation of the timed part (median over repeats; guest runs).
    measured_exits_per_op: Option<f64>,
    /// Calibration group of this run (its intercept).
    group: String,
    /// Group whose intercept the projections use.
    projection_group: String,
    /// Where the page tables came from.
    page_tables: TablesSource,
    /// Operations counted (after the prelude and warm-up).
    replayed_ops: u64,
}

/// One projected figure, term by term (ns/op); `source` says which are calibrated on
/// this host's runs and which are assumed.
#[derive(Debug, Clone, Serialize)]
struct Terms {
    /// `I`: the intercept of `projection_group`.
    ideal_ns: f64,
    /// `a · R`: walk references per op from the replay × ns per reference.
    walk_ns: f64,
    /// `b · X`: exits per op × ns per exit.
    exit_ns: f64,
    /// L2-TLB hits and base-bound checks at fixed latencies.
    fixed_ns: f64,
    /// `X`: exits per op (the replay's, plus `first_touch_exits_per_op`).
    exits_per_op: f64,
    /// Of `X`: host pages first touched per op, one exit each (lazily filled EPT/NPT).
    first_touch_exits_per_op: f64,
    /// Where each term came from.
    source: String,
}

#[derive(Debug, Serialize)]
struct ErrorSummary {
    mean_abs: f64,
    max_abs: f64,
    checked_runs: usize,
}

#[derive(Debug, Serialize)]
struct ProjOut<'a> {
    runs: Vec<RunOut>,
    calibration: &'a Calibration,
    /// Runs whose backing calibrated the held-out check.
    calibrated_on: String,
    /// The model's equation and what each symbol is.
    model: &'static str,
    model_error: Option<ErrorSummary>,
    host: HostOut,
    tlb: String,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct HostOut {
    kvm_module: String,
    mmu_mode: String,
    tsc_khz: Option<u32>,
}

/// Design columns in report order.
fn design_columns(designs: &[DesignKind]) -> Vec<String> {
    let mut v = Vec::new();
    for d in designs {
        v.push(d.name().to_string());
        if *d == DesignKind::Nested {
            v.push("nested-4k-host".into());
            v.push("nested-2m-host".into());
        }
    }
    v
}

/// Runs `segvmm project`.
pub fn run(a: Args) -> CliResult {
    let designs = DesignKind::parse_list(&a.designs).map_err(CliError::bad_input)?;
    let tlb = TlbConfig::preset(&a.tlb).map_err(CliError::bad_input)?;
    if a.max_accesses == 0 {
        return Err(CliError::bad_input("--max-accesses must be at least 1"));
    }
    let results = parse_results(&a.results.join("results.json")).map_err(Error::exit)?;
    let ghz = results
        .host
        .tsc_khz
        .or_else(|| results.rows.iter().find_map(|r| r.measurement.as_ref().and_then(|m| m.tsc_khz)))
        .map(|k| f64::from(k) / 1e6)
        .ok_or_else(|| CliError::bad_input("results.json: the host's TSC frequency is unknown; cycles cannot be converted to time"))?;
    let host_mode = match results.host.mmu_mode.as_str() {
        "shadow" => DesignKind::Shadow,
        _ => DesignKind::Nested,
    };
    let mut notes = Vec::new();
    let cells = cells(&results.rows, &mut notes);
    if cells.is_empty() {
        return Err(CliError::bad_input(format!(
            "{}: no measured chase or gups run to project",
            a.results.display()
        )));
    }
    let mut dirs: Vec<PathBuf> = a.ptsnaps.iter().cloned().collect();
    dirs.push(a.results.join("ptsnaps"));
    dirs.push(a.results.clone());
    if let Some(d) = &a.ptsnaps {
        if !d.is_dir() {
            return Err(CliError::bad_input(format!(
                "--ptsnaps {}: not a directory",
                d.display()
            )));
        }
    }
    let mut replayed = Vec::new();
    // Progress only on a terminal: scripts and tests get errors as their one line.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for c in &cells {
        if tty {
            eprintln!("segvmm project: replaying {} ...", c.name());
        }
        replayed.push(replay_one(c, &designs, host_mode, &a, &tlb, &dirs).map_err(Error::exit)?);
    }

    // Calibrate on every measured run; check each run from a calibration without it.
    // A guest run's exits are KVM's own count of its timed part when the results have
    // it (what the run paid); the replay's count otherwise.
    let obs: Vec<Observation> = replayed
        .iter()
        .map(|r| {
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
        })
        .collect();
    let cfg = project::Config::new(ghz);
    let cal = project::calibrate(&obs, &cfg).map_err(|e| Error::Calibration(e).exit())?;
    let any_split = cells.iter().any(|c| c.backing == a.calibrate_on)
        && cells.iter().any(|c| c.backing != a.calibrate_on);
    let split: Vec<bool> = cells
        .iter()
        .map(|c| !any_split || c.backing == a.calibrate_on)
        .collect();
    if !cells.iter().any(|c| c.backing == a.calibrate_on) {
        notes.push(format!(
            "no run with backing {:?} (--calibrate-on): every run is checked leave-one-out",
            a.calibrate_on
        ));
    }
    let calibrated_on = if any_split {
        format!("backing {}", a.calibrate_on)
    } else {
        "all runs (leave-one-out)".to_string()
    };
    let checks: Vec<Option<Checked>> = project::checked_errors(&obs, &split, &cfg);
    let summary =
        project::error_summary(&checks).map(|(mean_abs, max_abs, checked_runs)| ErrorSummary {
            mean_abs,
            max_abs,
            checked_runs,
        });

    let columns = design_columns(&designs);
    let exit_src = match cal.exit_cost {
        project::Source::Calibrated => "calibrated",
        _ => "ASSUMED",
    };
    let mut runs = Vec::new();
    let mut borrowed_native = false;
    for ((r, o), chk) in replayed.iter().zip(&obs).zip(&checks) {
        let mut projected = BTreeMap::new();
        let mut projected_terms = BTreeMap::new();
        let mut translation = BTreeMap::new();
        let native = r.cell.environment == "native";
        let mut pgroup = r.cell.projection_group();
        if cal.group(&pgroup).is_none() {
            pgroup = r.cell.group();
        } else if pgroup != r.cell.group() {
            borrowed_native = true;
        }
        for (name, f) in &r.reports {
            translation.insert(name.clone(), *f);
            let shown = !native && columns.contains(name);
            if !(shown || (native && name == "native")) {
                continue;
            }
            let ft = r.first_touches.get(name).copied().unwrap_or(0.0);
            let x = Features {
                exits: f.exits + ft,
                ..*f
            };
            let (Some(p), Some(g)) = (cal.predict(&pgroup, &x), cal.group(&pgroup)) else {
                continue;
            };
            projected.insert(name.clone(), p);
            let ideal_src = if native {
                "this run's own intercept (host kernel work included)"
            } else if pgroup != r.cell.group() {
                "native run's intercept: guest kernel work at the host kernel's measured cost (ASSUMED equal)"
            } else {
                "calibrated on the guest runs"
            };
            projected_terms.insert(
                name.clone(),
                Terms {
                    ideal_ns: g.ideal_ns_per_op,
                    walk_ns: g.ns_per_ref * x.refs,
                    exit_ns: cal.ns_per_exit * x.exits,
                    fixed_ns: p - g.ideal_ns_per_op - g.ns_per_ref * x.refs - cal.ns_per_exit * x.exits,
                    exits_per_op: x.exits,
                    first_touch_exits_per_op: ft,
                    source: format!(
                        "I: {ideal_src}; a: {} ({}); b: {exit_src}; R and X: replay{}; L2 and base-bound latencies: assumed",
                        match g.ref_cost {
                            project::Source::Pooled => "pooled from chase/gups",
                            project::Source::ClampedToZero => "clamped to 0",
                            _ => "calibrated",
                        },
                        pgroup,
                        if ft > 0.0 { " + first touches of host pages (lazy EPT/NPT fill, ASSUMED one exit each)" } else { "" }
                    ),
                },
            );
        }
        runs.push(RunOut {
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
        });
    }
    if replayed.iter().any(|r| r.tables.source == "plan") {
        notes.push("some guest runs had no ptsnap: their page tables were rebuilt from the measurement guest's plan (the tables the VMM wrote), with the host-physical layout unknown".into());
    }
    if cal.exit_cost == project::Source::Assumed {
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
    let out = ProjOut {
        runs,
        calibration: &cal,
        calibrated_on,
        model: MODEL,
        model_error: summary,
        host: HostOut {
            kvm_module: results.host.kvm_module.clone(),
            mmu_mode: results.host.mmu_mode.clone(),
            tsc_khz: results.host.tsc_khz,
        },
        tlb: a.tlb.clone(),
        notes,
    };
    print!("{}", table(&out, &columns));
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&out).map_err(CliError::failed)?;
        std::fs::write(p, text).map_err(|e| {
            Error::Write {
                path: p.display().to_string(),
                why: e.to_string(),
            }
            .exit()
        })?;
    }
    if let Some(p) = &a.plot {
        plot(p, &out, &columns).map_err(|why| {
            Error::Write {
                path: p.display().to_string(),
                why,
            }
            .exit()
        })?;
    }
    Ok(0)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |e| format!("{:+.1}%", 100.0 * e))
}

fn short(name: &str) -> String {
    name.replace("-host", "h")
        .replace("dynamic-switch", "dyn-switch")
}

/// The table: per workload, one line per measured run with the measured value, the model
/// for it and its checked error, then every projected design.
fn table(out: &ProjOut, columns: &[String]) -> String {
    let c = out.calibration;
    let mut s = format!(
        "Host {} ({} paging), {:.3} GHz. MEASURED = bench median; MODEL = calibrated model for the measured run, err = its checked error ({}); PROJECTED = model only.\n",
        out.host.kvm_module,
        out.host.mmu_mode,
        c.config.ghz,
        out.calibrated_on
    );
    let _ = writeln!(s, "Model: {MODEL}");
    let exit = match (c.exit_cost, c.exit_stderr_cycles, c.exit_fit_rms_ns) {
        (project::Source::Calibrated, se, rms) => format!(
            "VM exit: {:.0} cycles = {:.0} ns (CALIBRATED{} on {} runs whose exits vary, their rms residual {})",
            c.cycles_per_exit,
            c.ns_per_exit,
            se.map_or(String::new(), |v| format!(", standard error {v:.0} cycles")),
            c.exit_fit_runs,
            rms.map_or("-".into(), |v| format!("{v:.1} ns/op"))
        ),
        _ => format!(
            "VM exit: {:.0} cycles (ASSUMED: no group's exits vary between its runs)",
            c.cycles_per_exit
        ),
    };
    let _ = writeln!(
        s,
        "{exit}; rms residual of the whole fit {:.1} ns/op over {} runs; pooled walk cost {:.1} cycles per reference.",
        c.rms_residual_ns,
        c.runs,
        c.pooled_ns_per_ref * c.config.ghz
    );
    let mut groups: Vec<String> = Vec::new();
    for r in &out.runs {
        let g = format!("{}/{}M", r.workload, r.footprint >> 20);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for g in groups {
        let _ = writeln!(s);
        let mut seen = Vec::new();
        for r in out
            .runs
            .iter()
            .filter(|r| format!("{}/{}M", r.workload, r.footprint >> 20) == g)
        {
            for name in [&r.group, &r.projection_group] {
                if seen.contains(name) {
                    continue;
                }
                seen.push(name.clone());
                if let Some(f) = c.group(name) {
                    let _ = writeln!(
                        s,
                        "{name}: ideal {:.1} ns/op (calibrated on {} run{}), {:.1} cycles per walk reference ({})",
                        f.ideal_ns_per_op,
                        f.runs,
                        if f.runs == 1 { "" } else { "s" },
                        f.cycles_per_ref,
                        match f.ref_cost {
                            project::Source::Pooled => "pooled",
                            project::Source::ClampedToZero => "clamped to 0",
                            project::Source::Assumed => "assumed",
                            project::Source::Calibrated => "calibrated",
                        }
                    );
                }
            }
        }
        let mut head = format!(
            "{:<9} {:<5} {:>9} {:>7} {:>9} {:>7} | PROJECTED:",
            "env", "back", "MEASURED", "exit/op", "MODEL", "err"
        );
        for col in columns {
            let _ = write!(head, " {:>11}", short(col));
        }
        let _ = writeln!(s, "{head}");
        for r in out
            .runs
            .iter()
            .filter(|r| format!("{}/{}M", r.workload, r.footprint >> 20) == g)
        {
            let mut line = format!(
                "{:<9} {:<5} {:>9.1} {:>7} {:>9} {:>7} |           ",
                r.environment,
                r.backing,
                r.measured_ns_per_op,
                r.measured_exits_per_op
                    .map_or("-".into(), |x| format!("{x:.3}")),
                r.model_ns_per_op.map_or("-".into(), |v| format!("{v:.1}")),
                pct(r.model_error)
            );
            for col in columns {
                let v = r
                    .projected
                    .get(col)
                    .map_or("".into(), |v| format!("{v:.1}"));
                let _ = write!(line, " {v:>11}");
            }
            let _ = writeln!(s, "{}", line.trim_end());
        }
    }
    match &out.model_error {
        Some(e) => {
            let _ = writeln!(
                s,
                "\nModel error on {} checked runs: mean |err| {:.1}%, max {:.1}%.",
                e.checked_runs,
                100.0 * e.mean_abs,
                100.0 * e.max_abs
            );
        }
        None => s.push_str("\nModel error: no run could be checked.\n"),
    }
    for n in &out.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

/// The SVG: one panel per workload; per measured run, the measured bar (black, solid)
/// beside the projected bars (coloured, hatched outline), with the checked error above.
fn plot(path: &Path, out: &ProjOut, columns: &[String]) -> Result<(), String> {
    let mut groups: Vec<(String, u64)> = Vec::new();
    for r in &out.runs {
        if !groups.contains(&(r.workload.clone(), r.footprint)) {
            groups.push((r.workload.clone(), r.footprint));
        }
    }
    if groups.is_empty() {
        return Err("nothing to plot".into());
    }
    let per = 120 + 36 * (columns.len() as u32 + 1);
    let width = out
        .runs
        .iter()
        .filter(|r| r.workload == groups[0].0)
        .count()
        .max(1) as u32
        * per
        / 2
        + 200;
    let root = SVGBackend::new(path, (width.clamp(900, 2400), 420 * groups.len() as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (area, (w, fp)) in root.split_evenly((groups.len(), 1)).iter().zip(&groups) {
        let runs: Vec<&RunOut> = out
            .runs
            .iter()
            .filter(|r| &r.workload == w && r.footprint == *fp)
            .collect();
        let n = runs.len();
        let series: Vec<String> = std::iter::once("measured".to_string())
            .chain(columns.iter().cloned())
            .collect();
        let mut ymax: f64 = 0.0;
        for r in &runs {
            ymax = ymax.max(r.measured_ns_per_op);
            for v in r.projected.values() {
                ymax = ymax.max(*v);
            }
        }
        let ymax = if ymax > 0.0 { ymax * 2.0 } else { 1.0 };
        let labels: Vec<String> = runs
            .iter()
            .map(|r| {
                format!(
                    "{} / {} (err {})",
                    r.environment,
                    r.backing,
                    r.model_error
                        .map_or("unchecked".to_string(), |e| format!("{:+.1}%", 100.0 * e))
                )
            })
            .collect();
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{w}, {} MiB: MEASURED (black) vs PROJECTED (colours), ns/op",
                    fp >> 20
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&|x| {
                let g = x - 0.5;
                if g >= -1e-6 && (g - g.round()).abs() < 1e-6 {
                    labels.get(g.round() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("ns per operation")
            .draw()
            .map_err(|e| e.to_string())?;
        let bw = 0.8 / series.len() as f64;
        for (s, name) in series.iter().enumerate() {
            let measured = s == 0;
            let c = if measured { BLACK } else { color(s) };
            let mut rects = Vec::new();
            for (g, r) in runs.iter().enumerate() {
                let v = if measured {
                    Some(r.measured_ns_per_op)
                } else {
                    r.projected.get(name).copied()
                };
                let Some(v) = v else { continue };
                let x0 = g as f64 + 0.1 + s as f64 * bw;
                let style = if measured {
                    c.filled()
                } else {
                    c.mix(0.45).filled()
                };
                rects.push(Rectangle::new([(x0, 0.0), (x0 + bw * 0.9, v)], style));
                if !measured {
                    rects.push(Rectangle::new(
                        [(x0, 0.0), (x0 + bw * 0.9, v)],
                        c.stroke_width(1),
                    ));
                }
            }
            let label = if measured {
                "MEASURED".to_string()
            } else {
                format!("projected: {name}")
            };
            chart
                .draw_series(rects)
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 10, y + 5)],
                        if measured {
                            c.filled()
                        } else {
                            c.mix(0.45).filled()
                        },
                    )
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 10))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
