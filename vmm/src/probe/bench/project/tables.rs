//! A run's page tables (its ptsnap, the guest's plan, or a synthetic native space) and
//! its replays through the designs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use segment_mmu::designs::{DesignKind, DesignReport, Env, ModelConfig};
use segment_mmu::mem::PageStore;
use segment_mmu::paging::{PageSize as MmuPageSize, PagingMode};
use segment_mmu::project::report::TablesSource;
use segment_mmu::project::Features;
use segment_mmu::ptsnap::{AddressSpace, Ptsnap, RamRange, SyntheticSpec};
use segment_mmu::replay::replay;
use segment_mmu::tlb::TlbConfig;
use workloads::kernels::Workload;

use super::{failed, ptsnap_file_name, Cell, Error, Options, Replayed};
use crate::memory::{MMIO_HOLE_END, MMIO_HOLE_START};
use crate::probe::guest::{GuestPlan, GuestSpec};
use crate::probe::layout::PageSize;
use crate::probe::WorkloadSpec;

/// Host page size of a backing name (THP is taken as fully huge: the bench asks for it
/// with MADV_HUGEPAGE on a 2 MiB aligned buffer).
pub(super) fn backing_page(backing: &str) -> Option<u64> {
    match backing {
        "4k" => Some(4096),
        "thp" | "2m" => Some(2 << 20),
        "1g" => Some(1 << 30),
        _ => None,
    }
}

pub(super) fn guest_pages(environment: &str) -> Option<PageSize> {
    match environment {
        "guest-4k" => Some(PageSize::Size4K),
        "guest-2m" => Some(PageSize::Size2M),
        "guest-1g" => Some(PageSize::Size1G),
        _ => None,
    }
}

pub(super) fn read_ptsnap(path: &Path) -> Result<Ptsnap, Error> {
    let p = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| Error::PtsnapRead { path: p(), source })?;
    Ptsnap::from_bytes(&bytes).map_err(|source| Error::Ptsnap { path: p(), source })
}

/// The measurement guest's tables for `cell`, rebuilt from its plan, as a ptsnap.
pub(super) fn plan_ptsnap(cell: &Cell, pages: PageSize, host_page: u64) -> Result<Ptsnap, Error> {
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
    let plan = GuestPlan::new(spec).map_err(|e| failed(cell, e))?;
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
    snap.validate().map_err(|source| Error::RebuiltTables {
        run: cell.name(),
        source,
    })?;
    snap.optimize();
    Ok(snap)
}

/// The native buffer as a synthetic address space in the backing's page size.
pub(super) fn native_ptsnap(cell: &Cell, host_page: u64) -> Result<(Ptsnap, String), Error> {
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
    Ok((spec.build().map_err(|e| failed(cell, e))?, detail))
}

/// Finds and loads the page tables of `cell`.
pub(super) fn tables_for(
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
pub(super) type Replays = (Vec<(DesignReport, DesignReport)>, u64, u64);

/// Replays the cell's stream through `designs` over `snap` twice, up to W and to W+N
/// operations of its timed loop (W = [`WorkloadStream::warm_ops`], N = the run's
/// operations capped at `max`; both after the workload's prelude), and returns the
/// (warm-up, full) report pairs and N: [`Features::per_op`] takes the difference.
pub(super) fn replay_cell(
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
    .map_err(|e| failed(cell, e))?;
    let mut n = cell.ops.min(max).max(1);
    if let Some(m) = ws.max_ops() {
        n = n.min(m);
    }
    let run = |ops: u64| -> Result<Vec<DesignReport>, Error> {
        let mut stream = ws.build(ops);
        replay(&env, &mut stream, designs, None).map_err(|e| failed(cell, e))
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
pub(super) fn replay_one(
    cell: &Cell,
    designs: &[DesignKind],
    host_mode: DesignKind,
    o: &Options,
    tlb: &TlbConfig,
    dirs: &[PathBuf],
) -> Result<Replayed, Error> {
    let (snap, tables) = tables_for(cell, dirs, &o.results)?;
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
            replay_cell(cell, &snap, &[DesignKind::Native], tlb, o.max_accesses)?,
            None,
        )?);
        "native".to_string()
    } else {
        let mut ds = designs.to_vec();
        if !ds.contains(&host_mode) {
            ds.push(host_mode);
        }
        out.extend(per_op(
            replay_cell(cell, &snap, &ds, tlb, o.max_accesses)?,
            None,
        )?);
        if designs.contains(&DesignKind::Nested) {
            for (page, name) in [(4096u64, "nested-4k-host"), (2 << 20, "nested-2m-host")] {
                let s = with_host_page(&snap, page);
                out.extend(per_op(
                    replay_cell(cell, &s, &[DesignKind::Nested], tlb, o.max_accesses)?,
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
