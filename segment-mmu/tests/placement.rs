//! End-to-end checks of the placement simulator: the shipped Azure sample, hand-built
//! scenarios with known answers, and the error path for malformed traces.

use std::path::PathBuf;

use segment_mmu::placement::size::GIB;
use segment_mmu::placement::{
    azure_flavors, simulate, vmtable, ClusterSpec, Config, Fit, Mode, Simulator, VmRequest,
    Workload,
};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/azure-v1-flavors")
}

fn shipped(seed: u64) -> Workload {
    let d = data_dir();
    azure_flavors::load(
        &d.join("v1.dev.txt"),
        &d.join("v1.dev.c2100000.txt"),
        None,
        None,
        seed,
    )
    .unwrap()
}

#[test]
fn placement_shipped_sample_parses_as_documented() {
    let w = shipped(1);
    assert_eq!(w.vms.len(), 259_159, "every VM of the sample, none skipped");
    assert_eq!((w.start, w.end), (1_800_000, 2_100_000));
    let censored = w.vms.iter().filter(|v| v.lifetime.is_none()).count();
    assert_eq!(censored, 14_317);
    assert!(w.vms.iter().all(|v| v
        .departure(w.end)
        .is_none_or(|d| d > v.arrival && d < w.end)));
    // The issue: the sample peaks near 110 TiB of live VM memory.
    let peak_tib = w.peak_live_memory(2 << 20) as f64 / (1u64 << 40) as f64;
    assert!((100.0..120.0).contains(&peak_tib), "peak {peak_tib} TiB");
    for f in ["README.md", "LICENSE-DATA"] {
        assert!(data_dir().join(f).is_file(), "{f} ships with the data");
    }
}

#[test]
fn placement_shipped_sample_runs_on_auto_sized_cluster() {
    let w = shipped(1);
    let mut spec = ClusterSpec {
        hosts: 0,
        host_memory: 256 * GIB,
        reserved: GIB,
        align: 2 << 20,
        bad_pages_per_host: 0,
        seed: 1,
    };
    spec.hosts = spec.auto_hosts(&w, 0.9).unwrap();
    let cfg = Config {
        host: Fit::First.host(),
        extent: Fit::First.extent(),
        ..Config::default()
    };
    let r = simulate(&w, &spec, cfg.clone()).unwrap();
    assert_eq!(r.placed + r.rejected, r.vms);
    assert_eq!(r.segments_histogram.values().sum::<u64>(), r.placed);
    assert!((r.peak_live_memory as f64) <= 0.9 * (spec.hosts as u64 * 255 * GIB) as f64 + 1.0);
    let frac = r.single_segment_fraction.unwrap();
    assert!(frac > 0.99, "one-segment fraction {frac}");
    // Same seed, same answer.
    let again = simulate(&w, &spec, cfg).unwrap();
    assert_eq!(
        (again.single_segment, again.rejected),
        (r.single_segment, r.rejected)
    );
    assert_eq!(again.segments_histogram, r.segments_histogram);
}

#[test]
fn placement_malformed_shipped_copy_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "v1.dev.txt",
        "v1.dev.c2100000.txt",
        "flav_map.txt",
        "v1.interval_map.txt",
    ] {
        std::fs::copy(data_dir().join(f), dir.path().join(f)).unwrap();
    }
    let p = dir.path().join("v1.dev.c2100000.txt");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[41] = lines[41].replacen("U", "Q", 1);
    std::fs::write(&p, lines.join("\n")).unwrap();
    let e = azure_flavors::load(&dir.path().join("v1.dev.txt"), &p, None, None, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("v1.dev.c2100000.txt:42:"), "{e}");
}

#[test]
fn placement_vmtable_csv_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vmtable.csv");
    std::fs::write(
        &p,
        "a,s,d,0,100,1,1,1,Interactive,2,4\nb,s,d,10,50,1,1,1,Interactive,2,8\nc,s,d,60,100,1,1,1,Unknown,4,>64\n",
    )
    .unwrap();
    let w = vmtable::load(&p).unwrap();
    let spec = ClusterSpec {
        hosts: 1,
        host_memory: 128 * GIB,
        reserved: 0,
        align: GIB,
        bad_pages_per_host: 0,
        seed: 0,
    };
    let r = simulate(&w, &spec, Config::default()).unwrap();
    // 4 + 8 fit; b leaves at 50, so the 112 GiB VM finds 124 GiB free (one extent).
    assert_eq!((r.placed, r.rejected, r.single_segment), (3, 0, 3));
    std::fs::write(&p, "a,s,d,0,100,1,1,1,Interactive,2,4\nbroken line\n").unwrap();
    let e = vmtable::load(&p).unwrap_err().to_string();
    assert!(
        e.ends_with("vmtable.csv:2: expected 11 comma-separated fields, found 1"),
        "{e}"
    );
}

fn gib_vm(arrival: u64, lifetime: Option<u64>, gib: u64) -> VmRequest {
    VmRequest {
        arrival,
        lifetime,
        memory: gib * GIB,
    }
}

/// 16 GiB host filled with 2 GiB VMs; every other one leaves: 8 GiB free as four 2 GiB
/// holes. A 6 GiB VM needs three segments; after compaction, one.
#[test]
fn placement_comb_pattern_needs_three_segments_or_compaction() {
    let mut vms: Vec<VmRequest> = (0..8)
        .map(|i| gib_vm(i, if i % 2 == 0 { Some(100 - i) } else { None }, 2))
        .collect();
    vms.push(gib_vm(200, None, 6));
    let w = Workload {
        source: "comb".into(),
        vms,
        start: 0,
        end: 1000,
    };
    let spec = ClusterSpec {
        hosts: 1,
        host_memory: 16 * GIB,
        reserved: 0,
        align: GIB,
        bad_pages_per_host: 0,
        seed: 0,
    };
    let r = simulate(&w, &spec, Config::default()).unwrap();
    assert_eq!(r.segments_histogram.get(&3), Some(&1));
    let r2 = simulate(
        &w,
        &spec,
        Config {
            max_segments: 2,
            ..Config::default()
        },
    )
    .unwrap();
    assert_eq!(r2.rejected, 1, "three holes are needed, two are allowed");
    let rc = simulate(
        &w,
        &spec,
        Config {
            compaction: true,
            ..Config::default()
        },
    )
    .unwrap();
    assert_eq!((rc.single_segment, rc.compactions), (9, 1));
    // The cheapest 6 GiB window is hole + VM + hole: one 2 GiB VM moves to another hole.
    assert_eq!(rc.bytes_compacted, 2 * GIB);
    let rp = simulate(
        &w,
        &spec,
        Config {
            mode: Mode::Paging,
            ..Config::default()
        },
    )
    .unwrap();
    assert_eq!(rp.rejected, 0);
}

#[test]
fn placement_checked_run_of_a_synthetic_workload_keeps_invariants() {
    let spec_text = "vms=400,rate=0.2,sizes=1G:5/2G:3/5G:2,lifetime=exp:300";
    let w = segment_mmu::placement::synthetic::generate(&spec_text.parse().unwrap(), 3);
    let spec = ClusterSpec {
        hosts: 3,
        host_memory: 32 * GIB,
        reserved: GIB,
        align: GIB,
        bad_pages_per_host: 2,
        seed: 3,
    };
    // Totals over all runs, to show the checked runs went through every path.
    let (mut split, mut compactions, mut ballooned, mut rejected, mut absorbed) = (0, 0, 0, 0, 0);
    for fit in Fit::ALL {
        for (compaction, balloon) in [(false, false), (false, true), (true, true)] {
            let cfg = Config {
                host: fit.host(),
                extent: fit.extent(),
                compaction,
                balloon,
                escape_filter: 1,
                ..Config::default()
            };
            let (r, c) = Simulator::new(&w, &spec, cfg)
                .unwrap()
                .run_checked()
                .unwrap();
            assert_eq!(r.placed + r.rejected, 400);
            let used: u64 = c.hosts().iter().map(|h| h.usable() - h.free_bytes()).sum();
            assert_eq!(used, r.final_live_memory);
            split += r.placed - r.single_segment;
            compactions += r.compactions;
            ballooned += r.ballooned_vms;
            rejected += r.rejected;
            absorbed += r.faults_absorbed;
        }
    }
    assert!(split > 0 && compactions > 0 && ballooned > 0 && rejected > 0 && absorbed > 0,
        "split {split} compactions {compactions} ballooned {ballooned} rejected {rejected} absorbed {absorbed}");
}
