//! Integration tests of issue #6: page-table captures of live guests and the projection.
//!
//! * a ptsnap the measurement guest asks for is, entry for entry, the tables the VMM
//!   built for it (the probe's layout knows every entry);
//! * a ptsnap over the API socket of a running guest (`segvmm run --api-socket` +
//!   `segvmm ptsnap`);
//! * the model's GUPS and pointer-chase streams are, for the first million addresses,
//!   the workloads' own sequences for the same seed;
//! * `segvmm project` end to end on a small results directory, and clear one-line
//!   errors (exit 2) for bad ptsnap and results files.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{have_kvm, ptsnap_when_ready, run, segvmm, Reap};
use segment_mmu::ptsnap::Ptsnap;
use segment_mmu::stream::StreamSpec;
use workloads::kernels;

/// The kernel's GUPS update mix (private in `workloads::kernels`; the checksum below
/// fails if the two drift apart).
const GUPS_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

fn wait_for(path: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn api_socket_ptsnap_of_a_running_guest() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    let out = d.path().join("hang.ptsnap");
    let child = segvmm()
        .args([
            "run",
            "--guest",
            "test-hang",
            "--quiet",
            "--timeout",
            "10",
            "--api-socket",
        ])
        .arg(&sock)
        .arg("--snapshot-dir")
        .arg(d.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn segvmm run");
    let _reap = Reap::new(child);
    assert!(
        wait_for(&sock, Duration::from_secs(8)),
        "the API socket never appeared"
    );
    // The guest may still be setting up long mode right after the socket appears: retry
    // briefly until it pages.
    let last = ptsnap_when_ready(&sock, &out);
    let (code, stdout, stderr) = last;
    assert_eq!(code, 0, "stdout {stdout} stderr {stderr}");
    assert!(
        stdout.contains("page-table pages") && stdout.contains("ms with the guest paused"),
        "{stdout}"
    );
    let snap = Ptsnap::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    assert!(!snap.spaces.is_empty() && !snap.pages.is_empty() && snap.ram_bytes() > 0);
    // The layout command reads it back.
    let (code, stdout, stderr) = run(&["layout", "--ptsnap", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("address space"), "{stdout}");
}

#[test]
fn model_streams_are_the_workloads_sequences_for_a_million_addresses() {
    const N: u64 = 1_000_000;
    let base = workloads::protocol::DATA_VA;
    // GUPS: the model's i-th write is element GupsIndices(seed)[i]; the kernel's own run
    // over a buffer checksums the values it read in that order.
    let footprint = 64u64 << 20;
    let spec: StreamSpec = format!("gups:footprint={footprint},count={N},seed=42")
        .parse()
        .unwrap();
    let mut s = spec.build(base);
    let mut model = Vec::with_capacity(N as usize);
    while let Some(e) = s.next_event().unwrap() {
        model.push((e.va - base) / 8);
    }
    assert_eq!(model.len() as u64, N);
    let theirs: Vec<u64> = workloads::GupsIndices::new(42, footprint / 8, N).collect();
    assert_eq!(model, theirs, "GUPS indices differ");
    let mut buf = vec![0u64; (footprint / 8) as usize];
    kernels::gups_init(&mut buf);
    let want = kernels::gups_run(&mut buf, 42, N);
    let mut buf2 = vec![0u64; (footprint / 8) as usize];
    kernels::gups_init(&mut buf2);
    let mut sum = 0u64;
    for &i in &model {
        let v = buf2[i as usize];
        sum = sum.wrapping_add(v);
        buf2[i as usize] = v ^ (i | 1).wrapping_mul(GUPS_MIX);
    }
    assert_eq!(
        sum, want,
        "the model's GUPS order does not reproduce the kernel's checksum"
    );
    // Chase: the model visits base + 64·k; the kernel's buffer links element k to the
    // next; both start at element 0. 64 MiB = 1 M elements: a full lap.
    let spec: StreamSpec = format!("chase:footprint={footprint},count={N},seed=42")
        .parse()
        .unwrap();
    let mut s = spec.build(base);
    let mut buf = vec![0u64; (footprint / 8) as usize];
    kernels::chase_init(&mut buf, 42);
    let mut cur = 0u64;
    let mut sum = 0u64;
    for i in 0..N {
        let e = s.next_event().unwrap().unwrap();
        assert_eq!(e.va, base + 64 * cur, "chase step {i}");
        sum = sum.wrapping_add(cur);
        cur = buf[(cur * 8) as usize];
    }
    assert!(s.next_event().unwrap().is_none());
    assert_eq!(sum, kernels::chase_run(&buf, N));
}

/// A small results.json (64 MiB footprint, 20k operations): chase measured natively and in the guest, THP and 2M backings.
fn write_results(dir: &Path) {
    let row = |env: &str, backing: &str, ns: f64| {
        let data_va = if env == "native" {
            0x7f00_0000_0000u64
        } else {
            workloads::protocol::DATA_VA
        };
        serde_json::json!({
            "workload": "chase", "environment": env, "backing": backing,
            "guest_pages": if env == "native" { serde_json::Value::Null } else { env.trim_start_matches("guest-").into() },
            "footprint": 64u64 << 20, "repeat": 0, "status": "ok", "reason": null,
            "measurement": {"seed": 5, "data_va": data_va, "ops": 20000, "ns_per_op": ns, "tsc_khz": 2000000}
        })
    };
    let v = serde_json::json!({
        "host": {"kvm_module": "kvm_pvm", "mmu_mode": "shadow", "tsc_khz": 2000000},
        "command": "test",
        "rows": [
            row("native", "thp", 100.0), row("guest-4k", "thp", 160.0), row("guest-2m", "thp", 105.0),
            row("native", "2m", 101.0), row("guest-4k", "2m", 150.0), row("guest-2m", "2m", 104.0),
            {"workload": "chase", "environment": "guest-4k", "backing": "4k", "guest_pages": "4k", "footprint": 64u64 << 20,
             "repeat": 0, "status": "failed", "reason": "no", "measurement": null}
        ],
        "summary": []
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn project_end_to_end_on_a_small_results_directory() {
    let d = tempfile::tempdir().unwrap();
    write_results(d.path());
    let json = d.path().join("proj.json");
    let svg = d.path().join("proj.svg");
    let (code, stdout, stderr) = run(&[
        "project",
        "--results",
        d.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--max-accesses",
        "20000",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("MEASURED")
            && stdout.contains("PROJECTED")
            && stdout.contains("Model error"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    for r in runs {
        for k in [
            "workload",
            "environment",
            "measured_ns_per_op",
            "projected",
            "model_error",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
    }
    let g = runs
        .iter()
        .find(|r| r["environment"] == "guest-4k" && r["backing"] == "2m")
        .unwrap();
    for d in [
        "native",
        "nested",
        "nested-4k-host",
        "nested-2m-host",
        "shadow",
        "compromis",
        "dual-direct",
        "vmm-direct",
        "guest-direct",
        "enlarged-tdp",
        "dynamic-switch",
    ] {
        assert!(
            g["projected"][d].as_f64().is_some_and(|x| x > 0.0),
            "{d}: {g}"
        );
    }
    // No ptsnap was given: the tables are the guest's plan, and it says so.
    assert_eq!(g["page_tables"]["source"], "plan");
    // Held out: the 2M-backed runs are predicted from the THP calibration.
    assert_eq!(g["model_error_check"], "held-out");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}

/// A results.json with all five workloads (16 MiB, THP and 2M backings, native and both
/// guest page sizes), with KVM exit counts for the guest runs as the bench records them:
/// touch exits once per 4 KiB guest page (2800 ns each here) and once per 2 MiB one;
/// ptchurn five times per cycle.
fn write_results_all(dir: &Path) {
    let fp = 16u64 << 20;
    let mut rows = Vec::new();
    for w in ["chase", "gups", "stream", "touch", "ptchurn"] {
        for backing in ["thp", "2m"] {
            for env in ["native", "guest-4k", "guest-2m"] {
                let guest = env != "native";
                let ops: u64 = match w {
                    "touch" => fp / 4096,
                    "ptchurn" => 2000,
                    _ => 20000,
                };
                let exits_per_op = match (w, env) {
                    ("touch", "guest-4k") => 1.0,
                    ("touch", _) => 1.0 / 512.0,
                    ("ptchurn", _) => 5.0,
                    _ => 0.0,
                };
                let jitter = if backing == "2m" { 1.02 } else { 1.0 };
                let ns = jitter
                    * match (w, env) {
                        ("chase", "guest-4k") => 120.0,
                        ("chase", _) => 100.0,
                        ("gups", "guest-4k") => 22.0,
                        ("gups", _) => 18.0,
                        ("stream", _) => 1.1,
                        ("touch", "native") => 400.0,
                        ("touch", _) => 15.0 + 2800.0 * exits_per_op,
                        ("ptchurn", "native") => 7000.0,
                        ("ptchurn", _) => 40000.0,
                        _ => unreachable!(),
                    };
                let data_va = if !guest {
                    0x7f00_0000_0000u64
                } else {
                    workloads::protocol::DATA_VA
                };
                let exits = guest.then(|| (exits_per_op * ops as f64).round() as u64);
                rows.push(serde_json::json!({
                    "workload": w, "environment": env, "backing": backing,
                    "guest_pages": if guest { env.trim_start_matches("guest-").into() } else { serde_json::Value::Null },
                    "footprint": fp, "repeat": 0, "status": "ok", "reason": null,
                    "measurement": {"seed": 5, "data_va": data_va, "ops": ops, "ns_per_op": ns,
                                    "tsc_khz": 2000000, "kvm_exits": exits}
                }));
            }
        }
    }
    let v = serde_json::json!({
        "host": {"kvm_module": "kvm_pvm", "mmu_mode": "shadow", "tsc_khz": 2000000},
        "command": "test", "rows": rows, "summary": []
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn project_projects_all_five_workloads_with_a_calibrated_exit_cost() {
    let d = tempfile::tempdir().unwrap();
    write_results_all(d.path());
    let json = d.path().join("proj.json");
    let (code, stdout, stderr) = run(&[
        "project",
        "--results",
        d.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--max-accesses",
        "5000",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("VM exit:") && stdout.contains("CALIBRATED"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // 2800 ns per exit at 2 GHz, from touch's 4 KiB- against 2 MiB-page runs (the
    // replay adds a few ns of walks the rows do not have: within 2%).
    let cal = &v["calibration"];
    assert_eq!(cal["exit_cost"], "calibrated");
    let cyc = cal["cycles_per_exit"].as_f64().unwrap();
    assert!((cyc / 5600.0 - 1.0).abs() < 0.02, "{cal}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 30);
    for w in ["chase", "gups", "stream", "touch", "ptchurn"] {
        let g = runs
            .iter()
            .find(|r| r["workload"] == w && r["environment"] == "guest-4k")
            .unwrap_or_else(|| panic!("{w} not projected"));
        for d in ["native", "nested", "shadow", "compromis", "dual-direct"] {
            assert!(
                g["projected"][d].as_f64().is_some_and(|x| x > 0.0),
                "{w} {d}: {g}"
            );
            assert!(
                g["projected_terms"][d]["source"].is_string(),
                "{w} {d}: {g}"
            );
        }
        for k in ["measured_ns_per_op", "model_error", "measured_exits_per_op"] {
            assert!(g.get(k).is_some(), "{k} missing in {g}");
        }
    }
    // Touch projected under shadow pays its exits; under nested over 2 MiB host pages
    // only one per 512 pages; ptchurn's designs start from the native kernel's cost.
    let t = runs
        .iter()
        .find(|r| r["workload"] == "touch" && r["environment"] == "guest-4k")
        .unwrap();
    let p = |r: &serde_json::Value, d: &str| r["projected"][d].as_f64().unwrap();
    assert!(p(t, "shadow") > 2000.0 && p(t, "nested") < 100.0, "{t}");
    let c = runs
        .iter()
        .find(|r| r["workload"] == "ptchurn" && r["environment"] == "guest-4k")
        .unwrap();
    assert_eq!(c["projection_group"], "ptchurn/16M/native");
    assert!(
        p(c, "nested") < 10_000.0 && p(c, "shadow") > p(c, "nested"),
        "{c}"
    );
}

#[test]
fn bad_ptsnap_and_results_files_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).to_str().unwrap().to_string();
    let one_line = |code: i32, err: &str, want: &str| {
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "expected {want:?} in {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    };
    // Ptsnaps: garbage, truncated, missing.
    std::fs::write(p("junk.ptsnap"), b"hello, not a ptsnap").unwrap();
    let (code, _, err) = run(&["layout", "--ptsnap", &p("junk.ptsnap")]);
    one_line(code, &err, "bad magic");
    let good: Ptsnap = "heap=16M"
        .parse::<segment_mmu::ptsnap::SyntheticSpec>()
        .unwrap()
        .build()
        .unwrap();
    let bytes = good.to_bytes();
    std::fs::write(p("cut.ptsnap"), &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = run(&["layout", "--ptsnap", &p("cut.ptsnap")]);
    one_line(code, &err, "truncated");
    let (code, _, err) = run(&["layout", "--ptsnap", &p("missing.ptsnap")]);
    one_line(code, &err, "missing.ptsnap");
    // Results: no directory, malformed JSON, no measured run.
    let (code, _, err) = run(&["project", "--results", &p("nowhere")]);
    one_line(code, &err, "results.json");
    std::fs::write(p("results.json"), "{\"rows\": 3}").unwrap();
    let (code, _, err) = run(&["project", "--results", d.path().to_str().unwrap()]);
    one_line(code, &err, "not a segvmm bench results file");
    // A run's ptsnap that is corrupt is an error, not silently replaced by the plan.
    write_results(d.path());
    let snaps = d.path().join("ptsnaps");
    std::fs::create_dir_all(&snaps).unwrap();
    std::fs::write(
        snaps.join(segvmm::cli::project::ptsnap_file_name(
            "chase",
            "guest-4k",
            "thp",
            64 << 20,
        )),
        b"PTSNAP\r\n\x07",
    )
    .unwrap();
    let (code, _, err) = run(&[
        "project",
        "--results",
        d.path().to_str().unwrap(),
        "--max-accesses",
        "1000",
    ]);
    one_line(code, &err, "chase-guest-4k-thp-64M.ptsnap");
}

#[test]
fn measurement_guest_ptsnap_is_the_planned_tables_bit_for_bit() {
    if !have_kvm() {
        return;
    }
    use segvmm::memory::Backing;
    use segvmm::probe::guest::{self, GuestOptions, GuestPlan, GuestSpec};
    use segvmm::probe::layout::PageSize;
    use segvmm::probe::WorkloadSpec;
    use workloads::kernels::Workload;
    /// Accessed and dirty: the only bits the CPU (here KVM's shadow MMU, on the guest's
    /// behalf) may set in the guest's entries while the guest runs.
    const AD: u64 = (1 << 5) | (1 << 6);
    let d = tempfile::tempdir().unwrap();
    // The third case is the ptsnap scale benchmark's guest in small: RAM not prefaulted
    // and `touch` on one page, so the tables map all 64 MiB while almost none of it is
    // resident.
    for (w, pages, backing, footprint, count, prefault) in [
        (
            Workload::Gups,
            PageSize::Size4K,
            Backing::Anon4k,
            16 << 20,
            1000,
            true,
        ),
        (
            Workload::Chase,
            PageSize::Size2M,
            Backing::Thp,
            16 << 20,
            1000,
            true,
        ),
        (
            Workload::Touch,
            PageSize::Size4K,
            Backing::Anon4k,
            64 << 20,
            1,
            false,
        ),
    ] {
        let spec = GuestSpec {
            work: WorkloadSpec {
                workload: w,
                footprint,
                seed: 3,
                count: Some(count),
            },
            guest_pages: pages,
        };
        let file = d.path().join(format!("{}-{pages}.ptsnap", w.name()));
        let f = file.clone();
        let hook: segvmm::probe::device::PtsnapHook =
            std::sync::Arc::new(move |_| Ok(Some(f.clone())));
        let opts = GuestOptions {
            backing,
            timeout: Duration::from_secs(60),
            ptsnap: Some(hook),
            ..GuestOptions::default()
        };
        let g = guest::run_with_prefault(spec, &opts, prefault).unwrap();
        assert!(g.measurement.is_ok(), "{:?}", g.measurement);
        assert_eq!(g.report.ptsnaps.len(), 1, "{:?}", g.report.ptsnaps);
        if !prefault {
            assert_eq!(g.measurement.as_ref().map(|m| m.ops), Ok(count));
            assert!(
                g.report.memory.rss_bytes < footprint / 4,
                "{} bytes of a lazy {footprint}-byte guest resident",
                g.report.memory.rss_bytes
            );
        }
        eprintln!(
            "{} {pages}: ptsnap of {} table pages in {:.2} ms",
            w.name(),
            g.report.ptsnaps[0].table_pages,
            g.report.ptsnaps[0].ms
        );
        let snap = Ptsnap::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
        let plan = GuestPlan::new(spec).unwrap();
        assert_eq!(snap.spaces.len(), 1);
        assert_eq!(snap.spaces[0].cr3, plan.tables.cr3);
        assert_eq!(snap.mode.levels(), 4);
        assert!(snap.ram_bytes() >= plan.ram_size);
        // Exactly the planned tables, every entry equal but for A/D bits.
        assert_eq!(snap.pages.len(), plan.tables.tables.len());
        let mut ad_only = 0usize;
        for t in &plan.tables.tables {
            let got = snap
                .pages
                .page(t.gpa)
                .unwrap_or_else(|| panic!("table {:#x} (level {}) missing", t.gpa, t.level));
            for (i, (&g, &want)) in got.iter().zip(t.entries.iter()).enumerate() {
                assert_eq!(
                    g & !AD,
                    want & !AD,
                    "table {:#x} level {} entry {i}: {g:#x} vs planned {want:#x}",
                    t.gpa,
                    t.level
                );
                ad_only += usize::from(g != want);
            }
        }
        eprintln!(
            "{} {pages}: {} tables, every entry as planned ({ad_only} differ only in A/D bits)",
            w.name(),
            plan.tables.tables.len()
        );
        // The ptsnap maps the buffer where the plan put it.
        let buf = workloads::protocol::DATA_VA;
        let w0 = segment_mmu::walker::walk(
            &snap,
            &snap.walk_config(),
            snap.spaces[0].cr3,
            buf + 4096 + 8,
            Default::default(),
        )
        .unwrap();
        assert_eq!(w0.pa, plan.data_gpa + 4096 + 8);
    }
}
