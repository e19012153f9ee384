//! Integration tests of the measurement guest (issue #5): every workload runs in the guest
//! and natively with the same checksum for the same seed; 2 MiB guest pages; refusals; the
//! ptsnap hook; and `segvmm run` booting the measurement guest by default.
//! Footprints are tiny so the suite stays fast on a shared 2-core CI host.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{have_kvm, run};
use segvmm::memory::Backing;
use segvmm::probe::device::HookError;
use segvmm::probe::guest::{self, GuestOptions, GuestPlan, GuestSpec};
use segvmm::probe::layout::PageSize;
use segvmm::probe::{native, WorkloadSpec};
use workloads::kernels::Workload;

fn opts() -> GuestOptions {
    GuestOptions {
        backing: Backing::Anon4k,
        timeout: Duration::from_secs(60),
        ..GuestOptions::default()
    }
}

fn work(w: Workload, count: u64) -> WorkloadSpec {
    WorkloadSpec {
        workload: w,
        footprint: 2 << 20,
        seed: 1234,
        count: Some(count),
    }
}

#[test]
fn every_workload_matches_its_native_twin() {
    if !have_kvm() {
        return;
    }
    for (w, count) in [
        (Workload::Chase, 50_000),
        (Workload::Gups, 50_000),
        (Workload::Stream, 200_000),
        (Workload::Touch, 0),
        (Workload::PtChurn, 64),
    ] {
        let spec = work(w, count);
        let g = guest::run(
            GuestSpec {
                work: spec,
                guest_pages: PageSize::Size4K,
            },
            &opts(),
        )
        .unwrap();
        let m = g.measurement.unwrap_or_else(|e| panic!("{w:?}: {e}"));
        let n = native::run(&spec, Backing::Anon4k, false, g.report.host.tsc_khz).unwrap();
        assert_eq!(
            (m.ops, m.checksum),
            (n.ops, n.checksum),
            "{w:?}: guest and native disagree"
        );
        assert!(m.ops > 0 && m.ns_per_op > 0.0, "{w:?}: {m:?}");
        assert_eq!(m.seed, 1234);
        assert_eq!(m.data_va, workloads::protocol::DATA_VA);
        // TSC and the VMM's clock agree to within the two signal exits (and scheduling on
        // a loaded CI host).
        assert!(
            m.wall_ns >= m.elapsed_ns * 0.9,
            "{w:?}: TSC {} ns vs VMM clock {} ns",
            m.elapsed_ns,
            m.wall_ns
        );
        assert!(
            m.wall_ns <= m.elapsed_ns * 1.5 + 50e6,
            "{w:?}: TSC {} ns vs VMM clock {} ns",
            m.elapsed_ns,
            m.wall_ns
        );
        if w == Workload::Touch {
            // One shadow page fault per 4 KiB page touched, at least.
            assert!(m.shadow_page_faults.unwrap_or(0) >= 512, "{m:?}");
        }
    }
}

#[test]
fn two_mib_guest_pages() {
    if !have_kvm() {
        return;
    }
    for w in [Workload::Chase, Workload::PtChurn] {
        let spec = WorkloadSpec {
            workload: w,
            footprint: 4 << 20,
            seed: 9,
            count: Some(64),
        };
        let g = guest::run(
            GuestSpec {
                work: spec,
                guest_pages: PageSize::Size2M,
            },
            &GuestOptions {
                backing: Backing::Thp,
                ..opts()
            },
        )
        .unwrap();
        let m = g.measurement.unwrap_or_else(|e| panic!("{w:?}: {e}"));
        let n = native::run(&spec, Backing::Thp, false, None).unwrap();
        assert_eq!(m.checksum, n.checksum, "{w:?}");
        assert_eq!(m.guest_pages, Some(PageSize::Size2M));
    }
}

#[test]
fn ptsnap_hook_sees_the_planned_page_tables() {
    if !have_kvm() {
        return;
    }
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = seen.clone();
    let hook: segvmm::probe::device::PtsnapHook = Arc::new(move |vcpu| {
        let err = |e: &dyn std::fmt::Display| HookError(e.to_string());
        let sregs = vcpu.get_sregs().map_err(|e| err(&e))?;
        s.lock().map_err(|e| err(&e))?.push(sregs.cr3);
        Ok(None)
    });
    let spec = GuestSpec {
        work: work(Workload::Gups, 1000),
        guest_pages: PageSize::Size4K,
    };
    let g = guest::run(
        spec,
        &GuestOptions {
            ptsnap: Some(hook),
            ..opts()
        },
    )
    .unwrap();
    assert!(g.measurement.is_ok(), "{:?}", g.measurement);
    let plan = GuestPlan::new(spec).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![plan.tables.cr3]);
    assert_eq!(g.outcome.ptsnaps, vec![Ok(())]);
}

#[test]
fn one_gib_guest_pages_refused_without_pdpe1gb() {
    if !have_kvm() {
        return;
    }
    let info = segvmm::host::probe().unwrap();
    let spec = GuestSpec {
        work: WorkloadSpec {
            workload: Workload::Chase,
            footprint: 1 << 30,
            seed: 1,
            count: Some(10),
        },
        guest_pages: PageSize::Size1G,
    };
    if info.guest_1g_pages {
        eprintln!("SKIP: this host offers 1 GiB guest pages");
        return;
    }
    let e = guest::run(spec, &opts()).unwrap_err();
    assert!(matches!(e, guest::Error::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("pdpe1gb"), "{e}");
}

#[test]
fn segvmm_run_boots_the_measurement_guest_by_default() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let (code, out, err) = run(&[
        "run",
        "--footprint",
        "2M",
        "--count",
        "10000",
        "--native",
        "--backing",
        "4k",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    assert!(
        out.contains("guest chase (backing 4k, guest pages 4k, footprint 2 MiB, seed 42)"),
        "{out}"
    );
    assert!(out.contains("native chase"), "{out}");
    assert!(out.contains("same checksum"), "{out}");
    assert!(
        err.contains("memory: ") && err.contains("kvm: exits"),
        "{err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["measurement"]["workload"], "chase");
    assert_eq!(
        v["measurement"]["data_va"].as_u64(),
        Some(workloads::protocol::DATA_VA)
    );
    assert_eq!(
        v["run"]["host"]["kvm_module"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true)
    );
}

#[test]
fn segvmm_run_refuses_bad_probe_input() {
    for (args, needle) in [
        (
            &["run", "--workload", "nope"][..],
            "unknown workload 'nope'",
        ),
        (
            &["run", "--footprint", "3M", "--guest-pages", "2m"][..],
            "multiple of the guest page size",
        ),
        (&["run", "--footprint", "0"][..], "non-zero"),
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: stdout {out}\nstderr {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn test_guest_still_boots() {
    if !have_kvm() {
        return;
    }
    let (code, out, err) = run(&["run", "--guest", "test", "--quiet", "--timeout", "60"]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    assert!(err.contains("guest exited with status 0"), "{err}");
}
