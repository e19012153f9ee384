//! Known-answer tests of the projection (issue #6): synthetic page tables, the real
//! replay engine, "measurements" generated from a known linear truth; calibration must
//! recover the truth and project designs that were never "measured" exactly.

use segment_mmu::designs::{DesignKind, DesignReport, Env, ModelConfig};
use segment_mmu::project::{self, Check, Config, Features, Observation, Source};
use segment_mmu::ptsnap::SyntheticSpec;
use segment_mmu::replay::replay;
use segment_mmu::stream::StreamSpec;
use segment_mmu::tlb::TlbConfig;

/// Steady-state features of `designs` for `stream` over `synth` (warm-up = count).
fn features(
    synth: &str,
    stream: &str,
    tlb: TlbConfig,
    designs: &[DesignKind],
) -> Vec<(String, Features)> {
    let snap = synth.parse::<SyntheticSpec>().unwrap().build().unwrap();
    let env = Env::new(
        &snap,
        0,
        ModelConfig {
            tlb,
            ..ModelConfig::default()
        },
    )
    .unwrap();
    let base = env.guest_segment.unwrap().base;
    let spec: StreamSpec = stream.parse().unwrap();
    let run = |count: u64| -> Vec<DesignReport> {
        let mut s = StreamSpec {
            count,
            ..spec.clone()
        }
        .build(base);
        replay(&env, &mut s, designs, None).unwrap()
    };
    let (warm, full) = (run(spec.count), run(2 * spec.count));
    warm.iter()
        .zip(&full)
        .map(|(w, f)| (f.name.clone(), Features::steady(w, f).unwrap()))
        .collect()
}

fn get(v: &[(String, Features)], n: &str) -> Features {
    v.iter().find(|x| x.0 == n).map(|x| x.1).unwrap()
}

#[test]
fn without_tlbs_the_projection_is_the_textbook_walk_count() {
    // TLBs and walk caches off: every access walks; native 4K = 4 references, 2M = 3,
    // nested 4K over 4K = 24, nested 2M over 2M = 15.
    let d = [DesignKind::Native, DesignKind::Nested];
    let small = features(
        "heap=64M,pages=4k,host=4k",
        "gups:footprint=64M,count=20k",
        TlbConfig::none(),
        &d,
    );
    let big = features(
        "heap=64M,pages=2m,host=2m",
        "gups:footprint=64M,count=20k",
        TlbConfig::none(),
        &d,
    );
    assert_eq!(get(&small, "native").refs, 4.0);
    assert_eq!(get(&big, "native").refs, 3.0);
    assert_eq!(get(&small, "nested").refs, 24.0);
    assert_eq!(get(&big, "nested").refs, 15.0);
    // Truth: ideal 50 ns/op, 100 cycles per reference at 2.5 GHz = 40 ns per reference.
    let cfg = Config {
        ghz: 2.5,
        l2_hit_cycles: 0.0,
        base_bound_cycles: 0.0,
        prior_exit_cycles: 2000.0,
    };
    let t = |f: Features| 50.0 + 40.0 * f.refs;
    let obs = vec![
        Observation {
            group: "gups".into(),
            measured_ns: t(get(&small, "native")),
            features: get(&small, "native"),
            ..Observation::default()
        },
        Observation {
            group: "gups".into(),
            measured_ns: t(get(&big, "native")),
            features: get(&big, "native"),
            ..Observation::default()
        },
    ];
    let cal = project::calibrate(&obs, &cfg).unwrap();
    let g = cal.group("gups").unwrap();
    assert!(
        (g.cycles_per_ref - 100.0).abs() < 1e-9 && (g.ideal_ns_per_op - 50.0).abs() < 1e-9,
        "{g:?}"
    );
    assert_eq!(cal.exit_cost, Source::Assumed);
    // Projected nested 4K/4K: 50 + 24 × 40 = 1010 ns; 2M/2M: 50 + 15 × 40 = 650 ns.
    assert!((cal.predict("gups", &get(&small, "nested")).unwrap() - 1010.0).abs() < 1e-9);
    assert!((cal.predict("gups", &get(&big, "nested")).unwrap() - 650.0).abs() < 1e-9);
}

#[test]
fn with_tlbs_the_projection_predicts_a_held_out_run_exactly() {
    // Intel-like TLBs and caches: counts are whatever the model says; the truth is
    // linear in them, so the calibration on the "THP" runs (2M guest pages over 2M
    // host pages, a half-2M heap, native) predicts the 4K run exactly, and every design's
    // projection equals the truth evaluated on its own counts.
    let all = DesignKind::ALL;
    let stream = "chase:footprint=32M,count=200k,seed=7";
    let f4 = features(
        "heap=32M,pages=4k,host=4k",
        stream,
        TlbConfig::intel(),
        &all,
    );
    let f2 = features(
        "heap=32M,pages=2m,host=2m",
        stream,
        TlbConfig::intel(),
        &all,
    );
    let fm = features(
        "heap=32M,pages=2m:0.5,host=2m",
        stream,
        TlbConfig::intel(),
        &all,
    );
    let cfg = Config::new(2.0);
    let truth = |f: &Features| {
        120.0
            + (60.0 * f.refs
                + 3000.0 * f.exits
                + cfg.l2_hit_cycles * f.l2_hits
                + cfg.base_bound_cycles * f.base_bound)
                / 2.0
    };
    let mk = |f: Features| Observation {
        group: "chase".into(),
        measured_ns: truth(&f),
        features: f,
        ..Observation::default()
    };
    let obs = vec![
        mk(get(&f2, "shadow")),
        mk(get(&fm, "shadow")),
        mk(get(&f4, "shadow")),
        mk(get(&f2, "native")),
    ];
    assert!(
        get(&f4, "shadow").refs - get(&f2, "shadow").refs > 0.1,
        "the 4K run must walk more: {obs:?}"
    );
    let checks = project::checked_errors(&obs, &[true, true, false, true], &cfg);
    let held = checks[2].unwrap();
    assert_eq!(held.check, Check::HeldOut);
    assert!(held.relative_error.abs() < 1e-9, "{held:?}");
    let cal = project::calibrate(&obs, &cfg).unwrap();
    assert!((cal.group("chase").unwrap().cycles_per_ref - 60.0).abs() < 1e-6);
    // After the warm-up every page is shadowed: no exits in the steady state.
    assert_eq!(get(&f4, "shadow").exits, 0.0);
    for (name, f) in f4.iter().chain(&f2) {
        if f.exits == 0.0 {
            let p = cal.predict("chase", f).unwrap();
            assert!((p - truth(f)).abs() < 1e-6, "{name}: {p} vs {}", truth(f));
        }
    }
    // Designs order as the literature says for 4K pages everywhere: native is cheapest,
    // nested pays the 2D walk, dual direct removes both dimensions.
    let p = |n: &str| cal.predict("chase", &get(&f4, n)).unwrap();
    assert!(p("native") < p("nested"));
    assert!(p("dual-direct") <= p("native"));
    assert!(p("vmm-direct") < p("nested"));
}

/// Per-operation features of a workload's stream (prelude, warm-up, then `n` counted
/// operations) over a synthetic space, as `segvmm project` computes them.
fn workload_features(
    synth: &str,
    workload: workloads::kernels::Workload,
    n: u64,
    d: DesignKind,
) -> Features {
    use segment_mmu::project::workload::WorkloadStream;
    let snap = synth.parse::<SyntheticSpec>().unwrap().build().unwrap();
    let env = Env::new(&snap, 0, ModelConfig::default()).unwrap();
    let ws = WorkloadStream {
        workload,
        footprint: 16 << 20,
        seed: 9,
        base: env.guest_segment.unwrap().base,
        slot_bytes: 4096,
    };
    let w = ws.warm_ops(n);
    let run = |ops: u64| replay(&env, &mut ws.build(ops), &[d], None).unwrap();
    Features::per_op(&run(w)[0], &run(w + n)[0], n).unwrap()
}

#[test]
fn the_exit_cost_is_recovered_from_replayed_touch_runs() {
    use workloads::kernels::Workload;
    // Truth at 2.6 GHz: chase ideal 150 ns and 30 cycles per reference; touch ideal
    // 12 ns, the same walk cost (pooled), and 7000 cycles per VM exit. The features are
    // the model's own replays of the workloads over 4 KiB and 2 MiB pages (shadow: one
    // hidden-fault exit per fresh page), the "measurements" the truth evaluated on them.
    let cfg = Config::new(2.6);
    let (a, b) = (30.0 / 2.6, 7000.0 / 2.6);
    let truth = |i: f64, f: &Features| {
        i + a * f.refs
            + b * f.exits
            + (cfg.l2_hit_cycles * f.l2_hits + cfg.base_bound_cycles * f.base_bound) / 2.6
    };
    let mut obs = Vec::new();
    for synth in [
        "heap=16M,pages=4k,host=4k",
        "heap=16M,pages=2m,host=2m",
        "heap=16M,pages=2m:0.5,host=2m",
    ] {
        let c = workload_features(synth, Workload::Chase, 50_000, DesignKind::Shadow);
        obs.push(Observation {
            group: "chase".into(),
            measured_ns: truth(150.0, &c),
            features: c,
            slope: project::Slope::Own,
        });
        let t = workload_features(synth, Workload::Touch, 4096, DesignKind::Shadow);
        obs.push(Observation {
            group: "touch".into(),
            measured_ns: truth(12.0, &t),
            features: t,
            slope: project::Slope::Pooled,
        });
    }
    assert_eq!(obs[1].features.exits, 1.0, "{:?}", obs[1]);
    assert_eq!(obs[3].features.exits, 1.0 / 512.0, "{:?}", obs[3]);
    let cal = project::calibrate(&obs, &cfg).unwrap();
    let rel = |x: f64, y: f64| ((x - y) / y).abs();
    assert_eq!(cal.exit_cost, Source::Calibrated);
    assert!(rel(cal.cycles_per_exit, 7000.0) < 1e-6, "{cal:?}");
    for (g, i) in [("chase", 150.0), ("touch", 12.0)] {
        let f = cal.group(g).unwrap();
        assert!(
            rel(f.cycles_per_ref, 30.0) < 1e-6 && rel(f.ideal_ns_per_op, i) < 1e-6,
            "{f:?}"
        );
    }
}
