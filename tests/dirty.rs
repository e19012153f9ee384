//! Dirty tracking on live guests (issue #8): the pages found are exactly the pages the guest
//! writes, within a stated bound for the guest's own bookkeeping, with the dirty ring and
//! with the bitmap; a ring far smaller than what the guest dirties loses nothing; the
//! hotness file and heat map are written; `segvmm tier` replays the file and rejects
//! malformed ones with exit 2.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{have_kvm, run};
use segment_mmu::hotness::HotnessLog;
use segvmm::dirty::{DirtyConfig, DirtyMode, HostDirty};
use segvmm::memory::Backing;
use segvmm::probe::guest::{self, GuestOptions, GuestSpec};
use segvmm::probe::layout::PageSize;
use segvmm::probe::WorkloadSpec;
use workloads::kernels::Workload;

/// Pages the guests may write besides their known set: the test guest's page tables
/// (6 pages), stack and data; the measurement guest's results page, stacks, image data and
/// the accessed/dirty bits the CPU sets in its page tables.
const OTHERS_BOUND: usize = 32;

fn pages_of(log: &HotnessLog) -> BTreeSet<u64> {
    log.footprint().into_iter().collect()
}

/// The methods to test: the bitmap always, the ring where the host offers it.
fn modes() -> Vec<DirtyMode> {
    let mut m = vec![DirtyMode::Bitmap];
    if HostDirty::of_host().is_some_and(|h| h.has_ring()) {
        m.push(DirtyMode::Ring);
    } else {
        eprintln!("SKIP (ring): this host's KVM has no KVM_CAP_DIRTY_LOG_RING");
    }
    m
}

/// The method name a mode must report.
fn method_prefix(m: DirtyMode) -> &'static str {
    match m {
        DirtyMode::Ring => "dirty-ring",
        _ => "bitmap",
    }
}

/// The bare-metal test guest writes one quadword in every 2 MiB page of RAM above its own
/// image (from 2 MiB here: the VMM's memory map has RAM from 1 MiB, which the guest rounds
/// up to 2 MiB) to the end of RAM, after its page tables (below 2 MiB), whose accessed and
/// dirty bits it then also sets.
#[test]
fn test_guest_known_pages() {
    if !have_kvm() {
        return;
    }
    for mode in modes() {
        test_guest_known_pages_with(mode);
    }
}

fn test_guest_known_pages_with(mode: DirtyMode) {
    let dir = tempfile::tempdir().unwrap();
    let hot = dir.path().join("t.hot");
    let rep = dir.path().join("r.json");
    let (code, out, err) = run(&[
        "run",
        "--guest",
        "test",
        "--memory",
        "64M",
        "--quiet",
        "--track-dirty",
        "5ms",
        "--dirty-mode",
        &mode.to_string(),
        "--hotness-out",
        hot.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{mode}: {out}\n{err}");
    let method = method_prefix(mode);
    assert!(
        err.contains(&format!("dirty tracking ({method}")),
        "{mode}: {err}"
    );
    let log = HotnessLog::read(&hot).unwrap();
    assert!(log.method.starts_with(method), "{mode}: {}", log.method);
    assert!(hot.with_extension("svg").exists());
    let dirty = pages_of(&log);
    let want: BTreeSet<u64> = (1..32u64).map(|i| i * 512).collect();
    let high: BTreeSet<u64> = dirty.iter().copied().filter(|&p| p >= 512).collect();
    assert_eq!(high, want, "{mode}: pages at or above 2 MiB");
    let others: Vec<u64> = dirty.iter().copied().filter(|&p| p < 512).collect();
    assert!(
        !others.is_empty() && others.len() <= OTHERS_BOUND,
        "{mode}: others: {others:x?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(
        v["dirty"]["summary"]["distinct_pages_4k"].as_u64(),
        Some(dirty.len() as u64)
    );
    assert_eq!(v["dirty"]["mode"].as_str(), Some(mode.to_string().as_str()));
    assert!(v["dirty"]["method"]
        .as_str()
        .is_some_and(|m| m.starts_with(method)));
}

/// The measurement guest running gups over a 2 MiB buffer writes every page of it (its
/// initialisation writes every word); every other page written must belong to a writable
/// mapping of the guest that is not the buffer, and there are at most `OTHERS_BOUND`.
#[test]
fn measurement_guest_gups_known_pages() {
    if !have_kvm() {
        return;
    }
    for mode in modes() {
        let cfg = |hot| DirtyConfig::new(Duration::from_millis(5), Some(hot)).with_mode(mode);
        let (r, dirty) = gups_pages(2 << 20, 1 << 20, cfg);
        let rep = r.report.dirty.as_ref().unwrap();
        assert!(rep.method.starts_with(method_prefix(mode)), "{mode}: {rep}");
        if mode == DirtyMode::Ring {
            // 64 Ki-entry rings hold everything a 2 MiB buffer dirties: no full exits.
            assert_eq!(rep.ring_full_exits, Some(0), "{rep}");
        }
        check_gups_pages(&r, &dirty, 512);
    }
}

/// A 4 KiB dirty ring (256 entries, 192 before KVM calls it full) against a guest that
/// dirties 1024 buffer pages within one interval (an hour: the run's only interval): the
/// vCPU keeps stopping with KVM_EXIT_DIRTY_RING_FULL, harvests its ring and resets, and
/// every page still arrives in the interval.
#[test]
fn dirty_ring_full_loses_nothing() {
    if !have_kvm() || !modes().contains(&DirtyMode::Ring) {
        return;
    }
    let cfg = |hot| {
        DirtyConfig::new(Duration::from_secs(3600), Some(hot))
            .with_mode(DirtyMode::Ring)
            .with_ring_bytes(Some(4096))
    };
    let (r, dirty) = gups_pages(4 << 20, 100_000, cfg);
    let rep = r.report.dirty.as_ref().unwrap();
    assert_eq!(rep.method, "dirty-ring");
    assert_eq!(rep.ring_entries, Some(256));
    assert_eq!(rep.intervals, 1, "{rep}");
    let full = rep.ring_full_exits.unwrap();
    assert!(full >= 1024 / 192, "only {full} ring-full exits: {rep}");
    assert!(rep.ring_harvested.unwrap() >= dirty.len() as u64, "{rep}");
    check_gups_pages(&r, &dirty, 1024);
}

/// Runs gups over `footprint` in the measurement guest, tracked by `cfg(file)`; returns
/// the run and the pages the hotness file holds.
fn gups_pages(
    footprint: u64,
    count: u64,
    cfg: impl Fn(std::path::PathBuf) -> DirtyConfig,
) -> (guest::GuestRun, BTreeSet<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let hot = dir.path().join("gups.hot");
    let spec = GuestSpec {
        work: WorkloadSpec {
            workload: Workload::Gups,
            footprint,
            seed: 7,
            count: Some(count),
        },
        guest_pages: PageSize::Size4K,
    };
    let opts = GuestOptions {
        backing: Backing::Thp,
        grow_pool: false,
        timeout: Duration::from_secs(120),
        ptsnap: None,
        track_dirty: Some(cfg(hot.clone())),
    };
    let r = guest::run(spec, &opts).unwrap();
    let m = r.measurement.as_ref().expect("the guest measured");
    assert!(m.ops > 0);
    let rep = r.report.dirty.as_ref().expect("a dirty report");
    assert!(rep.intervals >= 1);
    let log = HotnessLog::read(&hot).unwrap();
    assert_eq!(log.method, rep.method);
    let dirty = pages_of(&log);
    (r, dirty)
}

/// The measurement guest running gups writes every page of its buffer (its initialisation
/// writes every word); every other page written must belong to a writable mapping of the
/// guest that is not the buffer, and there are at most `OTHERS_BOUND`.
fn check_gups_pages(r: &guest::GuestRun, dirty: &BTreeSet<u64>, buffer_pages: u64) {
    let method = &r.report.dirty.as_ref().unwrap().method;
    let first = r.plan.data_gpa >> 12;
    let buffer: BTreeSet<u64> = (first..first + buffer_pages).collect();
    assert!(
        buffer.is_subset(dirty),
        "{method}: {} of {buffer_pages} buffer pages seen",
        buffer.intersection(dirty).count()
    );
    let others: Vec<u64> = dirty.difference(&buffer).copied().collect();
    assert!(
        others.len() <= OTHERS_BOUND,
        "{method}: {} pages outside the buffer: {others:x?}",
        others.len()
    );
    let writable_elsewhere = |p: u64| {
        r.plan.layout.mappings.iter().any(|mp| {
            mp.writable
                && !mp.name.starts_with("data")
                && (mp.gpa >> 12..(mp.gpa + mp.len).div_ceil(4096)).contains(&p)
        })
    };
    let stray: Vec<u64> = others
        .iter()
        .copied()
        .filter(|&p| !writable_elsewhere(p))
        .collect();
    assert!(
        stray.is_empty(),
        "{method}: written pages in no writable mapping: {stray:x?}"
    );
}

/// `segvmm run` with the measurement guest writes the file and heat map, `segvmm tier`
/// replays it, and a malformed file is refused with exit code 2.
#[test]
fn cli_run_then_tier() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hot = dir.path().join("g.hot");
    let (code, out, err) = run(&[
        "run",
        "--workload",
        "gups",
        "--footprint",
        "4M",
        "--count",
        "400000",
        "--track-dirty",
        "10ms",
        "--hotness-out",
        hot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(hot.exists() && hot.with_extension("svg").exists());
    let json = dir.path().join("t.json");
    let (code, out, err) = run(&[
        "tier",
        "--hotness",
        hot.to_str().unwrap(),
        "--fast",
        "25%",
        "--latency-ratio",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for p in ["none", "temperature", "oracle", "hybrid", "2m", "4k"] {
        assert!(out.contains(p), "{p} missing: {out}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 9);
    // Two guests share one pool.
    let (code, out, _) = run(&[
        "tier",
        "--hotness",
        hot.to_str().unwrap(),
        "--hotness",
        hot.to_str().unwrap(),
        "--fast",
        "1M",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("share"), "{out}");

    let bad = dir.path().join("bad.hot");
    let mut b = std::fs::read(&hot).unwrap();
    b.truncate(b.len() / 2);
    std::fs::write(&bad, &b).unwrap();
    let (code, _, err) = run(&["tier", "--hotness", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.hot")
            && (err.contains("truncated") || err.contains("checksum") || err.contains("malformed")),
        "{err}"
    );
    let (code, _, err) = run(&["tier", "--hotness", hot.to_str().unwrap(), "--fast", "200%"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["run", "--guest", "test", "--track-dirty", "soon"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&[
        "run",
        "--guest",
        "test",
        "--track-dirty",
        "10ms",
        "--dirty-mode",
        "bitmap",
        "--dirty-ring-bytes",
        "4096",
    ]);
    assert_eq!(code, 2, "{err}");
    if modes().contains(&DirtyMode::Ring) {
        let (code, _, err) = run(&[
            "run",
            "--guest",
            "test",
            "--track-dirty",
            "10ms",
            "--dirty-ring-bytes",
            "5000",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("power of two"), "{err}");
    }
}
