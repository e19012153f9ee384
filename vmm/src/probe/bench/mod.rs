//! `segvmm bench`: the matrix of workloads × host backings × environments (measurement
//! guest with each guest page size, host-native twin, Linux guest) × footprints ×
//! repeats. This module expands the matrix and runs it; [`output`] summarizes and writes
//! results, [`plot`] draws them. A cell that fails is recorded with its reason and the
//! others go on; one the host cannot give is recorded as "unavailable" with the reason.

pub mod dirty_overhead;
pub mod linux;
pub mod matrix;
pub mod output;
pub mod plot;
pub mod project;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use workloads::kernels::Workload;

use super::guest::{self, GuestOptions, GuestSpec};
use super::layout::PageSize;
use super::{native, Measurement, WorkloadSpec};
use crate::host::HostInfo;
use crate::memory::Backing;
use crate::vm;
use output::{DirtyRow, Row, Status};

/// Where a workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// The host-native twin.
    Native,
    /// The measurement guest, buffer mapped with this guest page size.
    Guest(PageSize),
    /// A static binary in a Linux guest.
    Linux,
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Environment::Native => f.write_str("native"),
            Environment::Guest(p) => write!(f, "guest-{p}"),
            Environment::Linux => f.write_str("linux"),
        }
    }
}

/// What the matrix spans.
#[derive(Debug, Clone)]
pub struct MatrixSpec {
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Host backings.
    pub backings: Vec<Backing>,
    /// Guest page sizes of the measurement guest.
    pub guest_pages: Vec<PageSize>,
    /// Footprints, bytes.
    pub footprints: Vec<u64>,
    /// Repeats of every cell.
    pub repeat: u32,
    /// Also run the host-native twin.
    pub native: bool,
    /// Also run the workloads in a Linux guest: kernel and initrd.
    pub linux: Option<(PathBuf, PathBuf)>,
    /// Seed.
    pub seed: u64,
    /// Operations (None: each workload's default).
    pub count: Option<u64>,
    /// Grow hugetlb pools as needed (root).
    pub grow_pool: bool,
    /// Per-run timeout.
    pub timeout: Duration,
    /// Track the dirty pages of every measurement-guest run (issue #8).
    pub track_dirty: Option<MatrixDirty>,
}

/// Dirty tracking of the matrix's own measurement-guest runs: each run (every backing ×
/// guest page size × footprint × repeat) writes `hotness/<run>.hot` and `.svg` into the
/// output directory ([`hotness_name`]). Native runs have no KVM to ask, and Linux-guest
/// runs are not tracked (their ns/op would include minutes of emulated fault handling).
/// The tracked runs' ns/op include the tracking's cost.
#[derive(Debug, Clone)]
pub struct MatrixDirty {
    /// Collection interval.
    pub interval: Duration,
    /// Ring or bitmap.
    pub mode: crate::dirty::DirtyMode,
    /// Ring bytes per vCPU (`None`: default).
    pub ring_bytes: Option<u32>,
    /// The bench's output directory.
    pub out: PathBuf,
}

/// Where a run's hotness file goes, relative to the output directory:
/// `hotness/<workload>-<environment>-<backing>-<footprint>-r<repeat>.hot` (the heat map
/// beside it with `.svg`).
pub fn hotness_name(cell: &Cell) -> String {
    let fp = if cell.footprint % (1 << 20) == 0 {
        format!("{}M", cell.footprint >> 20)
    } else {
        format!("{}B", cell.footprint)
    };
    format!(
        "hotness/{}-{}-{}-{fp}-r{}.hot",
        cell.workload.name(),
        cell.environment,
        cell.backing,
        cell.repeat
    )
}

/// One run of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Workload.
    pub workload: Workload,
    /// Environment.
    pub environment: Environment,
    /// Host backing.
    pub backing: Backing,
    /// Footprint, bytes.
    pub footprint: u64,
    /// Repeat index (0-based).
    pub repeat: u32,
}

/// Expands the matrix in run order: footprint, workload, backing, repeat, environment;
/// interleaving environments within a repeat keeps slow drifts of a shared host from
/// landing on one environment only.
pub fn expand(spec: &MatrixSpec) -> Vec<Cell> {
    let mut envs: Vec<Environment> = Vec::new();
    if spec.native {
        envs.push(Environment::Native);
    }
    envs.extend(spec.guest_pages.iter().map(|&p| Environment::Guest(p)));
    if spec.linux.is_some() {
        envs.push(Environment::Linux);
    }
    let mut cells = Vec::new();
    for &footprint in &spec.footprints {
        for &workload in &spec.workloads {
            for &backing in &spec.backings {
                for repeat in 0..spec.repeat {
                    for &environment in &envs {
                        cells.push(Cell {
                            workload,
                            environment,
                            backing,
                            footprint,
                            repeat,
                        });
                    }
                }
            }
        }
    }
    cells
}

/// Why a cell cannot run on this host at all, known before trying.
pub fn unavailable_reason(cell: &Cell, host: &HostInfo) -> Option<String> {
    match cell.environment {
        Environment::Guest(PageSize::Size1G) if !host.guest_1g_pages => {
            Some("1 GiB guest pages: this host's KVM does not offer pdpe1gb to guests".into())
        }
        _ => None,
    }
}

/// Runs one cell.
pub fn run_cell(cell: &Cell, spec: &MatrixSpec, host: &HostInfo) -> Row {
    run_cell_with_ptsnap(cell, spec, host, None)
}

/// Runs one cell; with `ptsnap = Some((file, name))` a guest run also writes a
/// page-table capture to `file` when its workload signals that its data is touched
/// (issue #6), and the row records `name` (the file relative to the output directory)
/// and the time the ptsnap took (paused and in all).
pub fn run_cell_with_ptsnap(
    cell: &Cell,
    spec: &MatrixSpec,
    host: &HostInfo,
    ptsnap: Option<(&std::path::Path, &str)>,
) -> Row {
    let work = WorkloadSpec {
        workload: cell.workload,
        footprint: cell.footprint,
        seed: spec.seed,
        count: spec.count,
    };
    if let Some(why) = unavailable_reason(cell, host) {
        return Row::new(cell, Status::Unavailable, None, Some(why));
    }
    let mut taken: Option<(f64, f64)> = None;
    let mut tracked: Option<DirtyRow> = None;
    let result: Result<Measurement, (Status, String)> = match cell.environment {
        Environment::Native => native::run(&work, cell.backing, spec.grow_pool, host.tsc_khz)
            .map_err(|e| match e {
                native::Error::Unavailable(_) => (Status::Unavailable, e.to_string()),
                e => (Status::Failed, e.to_string()),
            }),
        Environment::Guest(pages) => {
            let hook = ptsnap.map(|(file, _)| {
                let file = file.to_path_buf();
                let h: super::device::PtsnapHook =
                    std::sync::Arc::new(move |_| Ok(Some(file.clone())));
                h
            });
            let hot = spec.track_dirty.as_ref().map(|d| {
                let name = hotness_name(cell);
                let cfg = crate::dirty::DirtyConfig::new(d.interval, Some(d.out.join(&name)))
                    .with_mode(d.mode)
                    .with_ring_bytes(d.ring_bytes);
                (name, cfg)
            });
            let opts = GuestOptions {
                backing: cell.backing,
                grow_pool: spec.grow_pool,
                timeout: spec.timeout,
                ptsnap: hook,
                track_dirty: hot.as_ref().map(|h| h.1.clone()),
            };
            match guest::run(
                GuestSpec {
                    work,
                    guest_pages: pages,
                },
                &opts,
            ) {
                Ok(run) => {
                    taken = run.report.ptsnaps.first().map(|s| (s.ms, s.paused_ms));
                    if let (Some(d), Some((name, _))) = (&run.report.dirty, &hot) {
                        tracked = Some(DirtyRow::new(d, name));
                    }
                    run.measurement.map_err(|e| (Status::Failed, e.to_string()))
                }
                Err(e) => Err((classify(&e), e.to_string())),
            }
        }
        Environment::Linux => match &spec.linux {
            Some((kernel, initrd)) => {
                linux::run(&work, cell.backing, kernel, initrd, spec, host.tsc_khz)
            }
            None => Err((Status::Failed, "no Linux kernel given".into())),
        },
    };
    let mut row = match result {
        Ok(m) => Row::new(cell, Status::Ok, Some(m), None),
        Err((status, why)) => Row::new(cell, status, None, Some(why)),
    };
    if let (Some((ms, paused_ms)), Some((_, name))) = (taken, ptsnap) {
        row.ptsnap = Some(name.to_string());
        row.ptsnap_ms = Some(ms);
        row.ptsnap_paused_ms = Some(paused_ms);
    }
    row.dirty = tracked;
    row
}

/// Host refusals (memory the host cannot give, features it lacks) are "unavailable";
/// everything else "failed".
fn classify(e: &guest::Error) -> Status {
    match e {
        guest::Error::Unavailable(_)
        | guest::Error::Machine(vm::Error::Memory(_))
        | guest::Error::Machine(vm::Error::Host(_)) => Status::Unavailable,
        _ => Status::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MatrixSpec {
        MatrixSpec {
            workloads: vec![Workload::Chase, Workload::Gups],
            backings: vec![Backing::Anon4k, Backing::Thp, Backing::Huge2m],
            guest_pages: vec![PageSize::Size4K, PageSize::Size2M],
            footprints: vec![64 << 20, 1 << 30],
            repeat: 3,
            native: true,
            linux: None,
            seed: 1,
            count: None,
            grow_pool: false,
            timeout: Duration::from_secs(10),
            track_dirty: None,
        }
    }

    #[test]
    fn expansion_covers_every_combination_once() {
        let s = spec();
        let cells = expand(&s);
        assert_eq!(cells.len(), 2 * 3 * 3 * 2 * 3);
        let mut keys: Vec<_> = cells
            .iter()
            .map(|c| {
                (
                    c.workload,
                    c.environment,
                    c.backing.to_string(),
                    c.footprint,
                    c.repeat,
                )
            })
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), cells.len());
        // Environments interleave within a repeat.
        assert_eq!(cells[0].environment, Environment::Native);
        assert_eq!(cells[1].environment, Environment::Guest(PageSize::Size4K));
        assert_eq!(cells[2].environment, Environment::Guest(PageSize::Size2M));
        assert_eq!(cells[3].repeat, 1);
    }

    #[test]
    fn expansion_options() {
        let mut s = spec();
        s.native = false;
        s.linux = Some(("k".into(), "i".into()));
        let cells = expand(&s);
        assert_eq!(cells.len(), 2 * 3 * 3 * 2 * 3);
        assert!(cells.iter().all(|c| c.environment != Environment::Native));
        assert!(cells.iter().any(|c| c.environment == Environment::Linux));
        s.repeat = 0;
        assert!(expand(&s).is_empty());
    }

    #[test]
    fn hotness_names_are_unique_per_run() {
        let s = spec();
        let mut names: Vec<String> = expand(&s).iter().map(hotness_name).collect();
        assert_eq!(names[1], "hotness/chase-guest-4k-4k-64M-r0.hot");
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn environment_names() {
        assert_eq!(Environment::Guest(PageSize::Size2M).to_string(), "guest-2m");
        assert_eq!(Environment::Native.to_string(), "native");
    }
}
