//! End-to-end test of `segvmm bench` on a tiny matrix: every output is written, rows are
//! complete, guest and native agree on checksums, and an impossible combination is
//! recorded as unavailable while the others go on; with `--track-dirty` every guest run
//! writes its own hotness file and heat map, which `segvmm tier` replays.

mod common;

use common::{have_kvm, run};

#[test]
fn tiny_matrix_end_to_end() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("res");
    let (code, stdout, err) = run(&[
        "bench",
        "--workloads",
        "chase,touch",
        "--backing",
        "4k",
        "--guest-pages",
        "4k,1g",
        "--footprint",
        "2M",
        "--repeat",
        "2",
        "--count",
        "5000",
        "--native",
        "--no-grow-pool",
        "--timeout",
        "60",
        "--out",
        out.to_str().unwrap(),
    ]);
    let info = segvmm::host::probe().unwrap();
    // 1g guest pages are unavailable here unless the host offers pdpe1gb; with a 2 MiB
    // footprint they are refused as a bad layout (not a multiple) otherwise: both are
    // recorded, neither stops the matrix.
    assert!(code == 0 || code == 1, "stdout {stdout}\nstderr {err}");
    for f in [
        "results.json",
        "results.csv",
        "summary.md",
        "ns_per_op.svg",
        "slowdown.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing; stderr {err}");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * 2 * 3, "{csv}");
    assert!(lines[0]
        .starts_with("workload,environment,backing,guest_pages,footprint,repeat,status,ns_per_op"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        v["host"]["kvm_module"].as_str(),
        Some(info.kvm_module.as_str())
    );
    let rows = v["rows"].as_array().unwrap();
    let get = |w: &str, env: &str, rep: u64| {
        rows.iter()
            .find(|r| r["workload"] == w && r["environment"] == env && r["repeat"] == rep)
            .unwrap()
    };
    for w in ["chase", "touch"] {
        for rep in 0..2 {
            let g = get(w, "guest-4k", rep);
            let n = get(w, "native", rep);
            assert_eq!(g["status"], "ok", "{g}");
            assert_eq!(n["status"], "ok", "{n}");
            assert_eq!(g["measurement"]["checksum"], n["measurement"]["checksum"]);
            let big = get(w, "guest-1g", rep);
            assert_ne!(big["status"], "ok", "{big}");
            assert!(big["reason"].as_str().is_some_and(|r| !r.is_empty()));
            if !info.guest_1g_pages {
                assert_eq!(big["status"], "unavailable", "{big}");
            }
        }
    }
    let summary = v["summary"].as_array().unwrap();
    let chase_guest = summary
        .iter()
        .find(|s| s["workload"] == "chase" && s["environment"] == "guest-4k")
        .unwrap();
    assert_eq!(chase_guest["n"], 2);
    assert!(chase_guest["slowdown_vs_native"]
        .as_f64()
        .is_some_and(|x| x > 0.0));
    assert!(stdout.contains("| chase | 4k |"), "{stdout}");
    let svg = std::fs::read_to_string(out.join("ns_per_op.svg")).unwrap();
    assert!(svg.contains("guest-4k") && svg.contains("native"));
}

/// `--track-dirty`: every measurement-guest run of the matrix (both workloads × both guest
/// page sizes) is tracked itself; its hotness file parses, its heat map exists, both are
/// named in results.json and summary.md, and `segvmm tier` runs on one of them.
#[test]
fn tracked_matrix_writes_hotness_per_run() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("res");
    let (code, stdout, err) = run(&[
        "bench",
        "--workloads",
        "gups,chase",
        "--backing",
        "thp",
        "--guest-pages",
        "4k,2m",
        "--footprint",
        "2M",
        "--repeat",
        "1",
        "--count",
        "20000",
        "--native",
        "--no-grow-pool",
        "--timeout",
        "120",
        "--track-dirty",
        "10ms",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout {stdout}\nstderr {err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 3);
    let summary_md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let mut files = Vec::new();
    for r in rows {
        assert_eq!(r["status"], "ok", "{r}");
        if r["environment"] == "native" {
            assert!(r.get("dirty").is_none(), "native runs are not tracked: {r}");
            continue;
        }
        let d = &r["dirty"];
        let hot = d["hotness"].as_str().expect("a hotness file per guest run");
        let svg = d["heatmap"].as_str().unwrap();
        let want = format!(
            "hotness/{}-{}-thp-2M-r0.hot",
            r["workload"].as_str().unwrap(),
            r["environment"].as_str().unwrap()
        );
        assert_eq!(hot, want);
        assert!(out.join(svg).exists(), "{svg} missing");
        assert!(summary_md.contains(hot), "{hot} not in summary.md");
        let log = segment_mmu::hotness::HotnessLog::read(&out.join(hot)).unwrap();
        assert_eq!(log.method, d["method"].as_str().unwrap());
        // The 2 MiB buffer (512 pages) is written during initialisation.
        let pages = log.footprint().len() as u64;
        assert!(pages >= 512, "{hot}: {pages} pages");
        assert_eq!(d["pages_written"].as_u64(), Some(pages));
        files.push(out.join(hot));
    }
    assert_eq!(files.len(), 4);
    let gups = files
        .iter()
        .find(|f| f.to_string_lossy().contains("gups-guest-4k"))
        .unwrap();
    let (code, tier, err) = run(&[
        "tier",
        "--hotness",
        gups.to_str().unwrap(),
        "--fast",
        "25%",
        "--latency-ratio",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    for p in ["none", "temperature", "oracle"] {
        assert!(tier.contains(p), "{p} missing: {tier}");
    }
}

#[test]
fn bench_refuses_bad_input() {
    for (args, needle) in [
        (
            &["bench", "--workloads", "nope", "--out", "/tmp/x"][..],
            "unknown workload",
        ),
        (
            &["bench", "--repeat", "0", "--out", "/tmp/x"][..],
            "--repeat",
        ),
        (
            &["bench", "--linux", "onlyone", "--out", "/tmp/x"][..],
            "KERNEL,INITRD",
        ),
        (
            &["bench", "--dirty-overhead", "--out", "/tmp/x"][..],
            "--track-dirty",
        ),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
