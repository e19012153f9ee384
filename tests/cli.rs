//! Bad input to the model-side commands: a one-line error naming the problem (file and
//! line where there is one) and exit code 2, never a panic. No KVM needed.

mod common;

use common::{root, run};

fn assert_bad(args: &[&str], needle: &str) {
    let err = common::assert_exit_2(args, needle);
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("segvmm: error:"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn place_rejects_malformed_trace_lines_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("segment-mmu/data/azure-v1-flavors");
    // A copy of the shipped trace with line 3 broken.
    let src = std::fs::read_to_string(data.join("v1.dev.txt")).unwrap();
    let mut lines: Vec<&str> = src.lines().collect();
    lines[2] = "1800600 f,f,|,!,@";
    for f in ["flav_map.txt", "v1.interval_map.txt", "batch_size_map.txt"] {
        std::fs::copy(data.join(f), dir.path().join(f)).unwrap();
    }
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let life = std::fs::read_to_string(data.join("v1.dev.c2100000.txt")).unwrap();
    let lifetimes = dir.path().join("lifetimes.txt");
    std::fs::write(&lifetimes, life).unwrap();
    let (t, l) = (bad.to_str().unwrap(), lifetimes.to_str().unwrap());
    assert_bad(
        &[
            "place",
            "--trace",
            t,
            "--lifetimes",
            l,
            "--hosts",
            "4",
            "--host-memory",
            "256G",
        ],
        "bad.txt:3",
    );
    assert_bad(
        &["place", "--trace", "/nonexistent/trace.txt", "--hosts", "4"],
        "/nonexistent/trace.txt",
    );
}

#[test]
fn layout_rejects_a_malformed_ptsnap() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.ptsnap");
    std::fs::write(&bad, b"not a ptsnap at all").unwrap();
    assert_bad(&["layout", "--ptsnap", bad.to_str().unwrap()], "bad.ptsnap");
}

#[test]
fn model_rejects_bad_specs_and_files() {
    assert_bad(
        &[
            "model",
            "--synthetic",
            "heap=8X,pages=4k",
            "--stream",
            "gups:footprint=4M,count=1000",
        ],
        "bad value \"8X\" for heap",
    );
    assert_bad(
        &[
            "model",
            "--synthetic",
            "heap=64M,pages=4k",
            "--stream",
            "bogus:footprint=4M",
        ],
        "unknown stream kind",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("t.trace");
    std::fs::write(&bad, b"\x01\x02\x03").unwrap();
    let (code, _, err) = run(&[
        "model",
        "--synthetic",
        "heap=64M,pages=4k",
        "--trace",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn model_prints_the_papers_table_without_tlbs() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let (code, out, err) = run(&[
        "model",
        "--synthetic",
        "heap=64M,pages=4k",
        "--stream",
        "gups:footprint=16M,count=20k",
        "--designs",
        "all",
        "--tlb",
        "none",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nested"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let get = |name: &str| {
        v["designs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(get("native")["refs_per_walk"].as_f64().unwrap(), 4.0);
    assert_eq!(get("nested")["refs_per_walk"].as_f64().unwrap(), 24.0);
    for d in [
        "native",
        "nested",
        "shadow",
        "compromis",
        "dual-direct",
        "vmm-direct",
        "guest-direct",
        "enlarged-tdp",
        "dynamic-switch",
    ] {
        assert!(get(d)["cycles_per_access"].as_f64().is_some(), "{d}");
    }
}

#[test]
fn a_report_path_that_cannot_be_written_is_refused_before_the_guest_runs() {
    let (code, _, stderr) = run(&[
        "run",
        "--guest",
        "test",
        "--report",
        "/nonexistent-segvmm-dir/r.json",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--report /nonexistent-segvmm-dir/r.json"),
        "{stderr}"
    );
    assert!(!stderr.contains("guest exited"), "{stderr}");
}
