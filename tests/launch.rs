//! Launch cost (issue #17): `--prefault off` leaves guest RAM unpopulated at start, parallel
//! prefault populates all of it on every backing the host's pools allow, hugetlb pools are
//! still checked before anything runs, and bad `--prefault` values are refused with exit 2.

mod common;

use std::num::NonZeroUsize;

use segvmm::memory::{self, Backing, GuestRam, MemoryConfig, Prefault};

const MIB: u64 = 1 << 20;

fn ram(size: u64, backing: Backing, prefault: Prefault) -> Result<GuestRam, memory::Error> {
    GuestRam::new(&MemoryConfig {
        size,
        backing,
        grow_pool: false,
        prefault,
    })
}

fn threads(n: usize) -> Prefault {
    Prefault::Threads(NonZeroUsize::new(n).unwrap())
}

#[test]
fn off_leaves_guest_ram_unpopulated_at_start() {
    for backing in [Backing::Anon4k, Backing::Thp] {
        let r = ram(256 * MIB, backing, Prefault::Off).unwrap();
        let p = r.prefault_report();
        assert_eq!(p.resident_at_start_bytes, 0, "{backing}: {p:?}");
        assert_eq!(
            (p.threads, p.gib_per_s, p.memset_gib_per_s),
            (0, None, None)
        );
        assert!(!r.prefaulted());
    }
}

#[test]
fn two_threads_populate_all_of_guest_ram() {
    for backing in [Backing::Anon4k, Backing::Thp] {
        // Odd size: the last thread's slice is shorter than the others.
        let size = 98 * MIB + 4096;
        let size = if backing == Backing::Thp {
            size
        } else {
            size - 4096
        };
        let r = ram(size, backing, threads(2)).unwrap();
        let p = r.prefault_report();
        assert_eq!(p.resident_at_start_bytes, size, "{backing}: {p:?}");
        assert_eq!(p.threads, 2);
        assert!(p.gib_per_s.is_some_and(|g| g > 0.0), "{p:?}");
        assert!(p.memset_gib_per_s.is_some_and(|g| g > 0.0), "{p:?}");
        assert_eq!(p.memset_bytes, size.min(256 * MIB));
    }
}

#[test]
fn hugetlb_is_populated_by_threads_and_pools_are_still_checked() {
    let free = memory::hugetlb_free(2 * MIB);
    // More than the pool holds: refused before anything is mapped, threads or not.
    let too_big = (free + 1) * 2 * MIB;
    assert!(matches!(
        ram(too_big, Backing::Huge2m, threads(2)),
        Err(memory::Error::PoolTooSmall { .. })
    ));
    assert!(matches!(
        ram(too_big, Backing::Huge2m, Prefault::Off),
        Err(memory::Error::PoolTooSmall { .. })
    ));
    if free < 4 {
        eprintln!("SKIP: the 2 MiB hugetlb pool has {free} free pages (need 4)");
        return;
    }
    let r = ram(8 * MIB, Backing::Huge2m, threads(2)).unwrap();
    assert_eq!(r.prefault_report().resident_at_start_bytes, 8 * MIB);
    assert_eq!(r.report().bytes_by_page_size.get("2m"), Some(&(8 * MIB)));
}

#[test]
fn bad_prefault_values_exit_2_before_the_guest_starts() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // available_parallelism may be below the online count (affinity); 64x is above any cap.
    let many = format!("threads={}", 64 * cpus.max(64));
    for (bad, needle) in [
        ("threads=0", "at least one thread"),
        (many.as_str(), "4 per online CPU"),
        ("sometimes", "not a prefault mode"),
    ] {
        let (code, out, err) =
            common::run(&["run", "--guest", "test", "--prefault", bad, "--quiet"]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(needle), "{bad}: {err}");
        assert!(out.is_empty() && !err.contains("guest exited"), "{err}");
    }
    let (code, _, err) = common::run(&["run", "--prefault", "off", "--footprint", "1M"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must not take host faults"), "{err}");
}

fn run_report(prefault: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let (code, _, err) = common::run(&[
        "run",
        "--guest",
        "test",
        "--memory",
        "64M",
        "--prefault",
        prefault,
        "--quiet",
        "--report",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resident at start"), "{err}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn run_reports_resident_memory_at_start() {
    if !common::have_kvm() {
        return;
    }
    let off = run_report("off");
    let p = &off["memory"]["prefault"];
    assert_eq!(p["mode"], "off");
    assert_eq!(p["resident_at_start_bytes"], 0, "{p}");
    assert!(p["memset_gib_per_s"].is_null());
    // Plain `on` (the built-in guests' default) does not pay for the bandwidth memset.
    let on = run_report("on");
    assert_eq!(
        on["memory"]["prefault"]["resident_at_start_bytes"],
        64 * MIB
    );
    assert!(on["memory"]["prefault"]["memset_gib_per_s"].is_null());
    let on = run_report("threads=2");
    let p = &on["memory"]["prefault"];
    assert_eq!(p["mode"], "threads=2");
    assert_eq!(p["resident_at_start_bytes"], 64 * MIB, "{p}");
    assert!(p["gib_per_s"].as_f64().is_some_and(|g| g > 0.0), "{p}");
    assert!(
        p["memset_gib_per_s"].as_f64().is_some_and(|g| g > 0.0),
        "{p}"
    );
}
