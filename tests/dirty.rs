//! Dirty tracking on live guests (issue #8): the pages found are exactly the pages the guest
//! writes, within a stated bound for the guest's own bookkeeping; the hotness file and heat
//! map are written; `segvmm tier` replays the file and rejects malformed ones with exit 2.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{have_kvm, run};
use segment_mmu::hotness::HotnessLog;
use segvmm::dirty::DirtyConfig;
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

/// The bare-metal test guest writes one quadword in every 2 MiB page of RAM above its own
/// image (from 2 MiB here: the VMM's memory map has RAM from 1 MiB, which the guest rounds
/// up to 2 MiB) to the end of RAM, after its page tables (below 2 MiB), whose accessed and
/// dirty bits it then also sets.
#[test]
fn test_guest_known_pages() {
    if !have_kvm() {
        return;
    }
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
        "--hotness-out",
        hot.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("dirty tracking (bitmap"), "{err}");
    let log = HotnessLog::read(&hot).unwrap();
    assert!(hot.with_extension("svg").exists());
    let dirty = pages_of(&log);
    let want: BTreeSet<u64> = (1..32u64).map(|i| i * 512).collect();
    let high: BTreeSet<u64> = dirty.iter().copied().filter(|&p| p >= 512).collect();
    assert_eq!(high, want, "pages at or above 2 MiB");
    let others: Vec<u64> = dirty.iter().copied().filter(|&p| p < 512).collect();
    assert!(
        !others.is_empty() && others.len() <= OTHERS_BOUND,
        "others: {others:x?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(
        v["dirty"]["summary"]["distinct_pages_4k"].as_u64(),
        Some(dirty.len() as u64)
    );
}

/// The measurement guest running gups over a 2 MiB buffer writes every page of it (its
/// initialisation writes every word); every other page written must belong to a writable
/// mapping of the guest that is not the buffer, and there are at most `OTHERS_BOUND`.
#[test]
fn measurement_guest_gups_known_pages() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hot = dir.path().join("gups.hot");
    let spec = GuestSpec {
        work: WorkloadSpec {
            workload: Workload::Gups,
            footprint: 2 << 20,
            seed: 7,
            count: Some(1 << 20),
        },
        guest_pages: PageSize::Size4K,
    };
    let opts = GuestOptions {
        backing: Backing::Thp,
        grow_pool: false,
        timeout: Duration::from_secs(60),
        snapshot: None,
        track_dirty: Some(DirtyConfig::new(
            Duration::from_millis(5),
            Some(hot.clone()),
        )),
    };
    let r = guest::run(spec, &opts).unwrap();
    let m = r.measurement.as_ref().expect("the guest measured");
    assert!(m.ops > 0);
    let rep = r.report.dirty.as_ref().expect("a dirty report");
    assert!(rep.intervals >= 1);
    let log = HotnessLog::read(&hot).unwrap();
    let dirty = pages_of(&log);
    let first = r.plan.data_gpa >> 12;
    let buffer: BTreeSet<u64> = (first..first + 512).collect();
    assert!(
        buffer.is_subset(&dirty),
        "{} of 512 buffer pages seen",
        buffer.intersection(&dirty).count()
    );
    let others: Vec<u64> = dirty.difference(&buffer).copied().collect();
    assert!(
        others.len() <= OTHERS_BOUND,
        "{} pages outside the buffer: {others:x?}",
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
        "written pages in no writable mapping: {stray:x?}"
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
}
