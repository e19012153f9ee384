//! Criterion benchmarks of the MMU models (issue #4, point 8).
//!
//! * `tlb_hit`: one design's translation when the L1 dTLB hits (targets ≥ 50 M/s/core);
//! * `native_walk`: functional walk plus 1D costing with every TLB/cache off;
//! * `nested_2d_walk`: functional walk plus full 24-reference 2D costing (≥ 10 M/s);
//! * `gups_10m_all_designs`: a 10 M-access GUPS replay through all nine designs;
//! * `end_to_end`: the whole pipeline for one design: `Env::new` (enumerating the
//!   tables), stream generation, functional walks and the nested model with every cache
//!   off, 10 M GUPS accesses over 4 GiB (issue #18 asks ≥ 10 M/s on one core: run it
//!   with `RAYON_NUM_THREADS=1`; on a shared host the `replay_speed` example gives the
//!   same pipeline's CPU time too).
//!
//! Run: `cargo bench -p segment-mmu --bench mmu`. Figures are recorded in
//! docs/segment-mmu.md.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use segment_mmu::designs::{DesignKind, Env, ModelConfig, Translation};
use segment_mmu::ptsnap::{Ptsnap, SyntheticSpec};
use segment_mmu::replay::replay;
use segment_mmu::stream::StreamSpec;
use segment_mmu::tlb::TlbConfig;
use workloads::XorShift64;

const BATCH: usize = 4096;

fn ptsnap(spec: &str) -> Ptsnap {
    spec.parse::<SyntheticSpec>()
        .expect("spec")
        .build()
        .expect("build")
}

/// Random 8-byte-aligned addresses in the heap with their functional translations.
fn inputs(env: &Env, span: u64, n: usize, seed: u64) -> Vec<(u64, Translation)> {
    let base = env.guest_segment.expect("heap").base;
    let mut rng = XorShift64::new(seed);
    (0..n)
        .map(|_| {
            let va = base + 8 * rng.below(span / 8);
            (va, env.translate(va, false))
        })
        .collect()
}

fn tlb_hit(c: &mut Criterion) {
    let snap = ptsnap("heap=1G,pages=4k");
    let env = Env::new(
        &snap,
        0,
        ModelConfig {
            tlb: TlbConfig::intel(),
            ..Default::default()
        },
    )
    .expect("env");
    // 32 pages: well inside the 96-entry L1 dTLB.
    let xs = inputs(&env, 32 * 4096, BATCH, 1);
    let mut g = c.benchmark_group("tlb_hit");
    g.throughput(Throughput::Elements(BATCH as u64));
    for kind in [
        DesignKind::Native,
        DesignKind::Nested,
        DesignKind::Compromis,
    ] {
        let mut d = kind.build(&env).expect("design");
        for (va, t) in &xs {
            d.access(&env, *va, false, t);
        }
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                for (va, t) in &xs {
                    d.access(&env, black_box(*va), false, t);
                }
            })
        });
    }
    g.finish();
}

/// Full walks: the functional walk is part of the measured work (it is what a replay
/// does on a miss), TLBs and caches are off so every access walks.
fn walks(c: &mut Criterion) {
    let snap = ptsnap("heap=1G,pages=4k");
    let env = Env::new(
        &snap,
        0,
        ModelConfig {
            tlb: TlbConfig::none(),
            ..Default::default()
        },
    )
    .expect("env");
    let base = env.guest_segment.expect("heap").base;
    let mut rng = XorShift64::new(7);
    let vas: Vec<u64> = (0..BATCH)
        .map(|_| base + 8 * rng.below((1 << 30) / 8))
        .collect();
    for (name, kind) in [
        ("native_walk", DesignKind::Native),
        ("nested_2d_walk", DesignKind::Nested),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut d = kind.build(&env).expect("design");
        g.bench_function("4k_1g_heap", |b| {
            b.iter(|| {
                for &va in &vas {
                    let t = env.translate(black_box(va), false);
                    d.access(&env, va, false, &t);
                }
            })
        });
        g.finish();
    }
}

fn gups_replay(c: &mut Criterion) {
    let snap = ptsnap("heap=8G,pages=4k");
    let env = Env::new(&snap, 0, ModelConfig::default()).expect("env");
    let base = env.guest_segment.expect("heap").base;
    let spec: StreamSpec = "gups:footprint=4G,count=10M".parse().expect("stream");
    let mut g = c.benchmark_group("gups_10m_all_designs");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000_000));
    g.bench_function("intel", |b| {
        b.iter_batched(
            || spec.build(base),
            |mut s| replay(&env, &mut s, &DesignKind::ALL, None).expect("replay"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let snap = ptsnap("heap=4G,pages=4k");
    let spec: StreamSpec = "gups:footprint=4G,count=10M".parse().expect("stream");
    let mut g = c.benchmark_group("end_to_end");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000_000));
    g.bench_function("nested_none_gups_4g_10m", |b| {
        b.iter(|| {
            let cfg = ModelConfig {
                tlb: TlbConfig::none(),
                ..Default::default()
            };
            let env = Env::new(&snap, 0, cfg).expect("env");
            let mut s = spec.build(env.guest_segment.expect("heap").base);
            replay(&env, &mut s, &[DesignKind::Nested], None).expect("replay")
        })
    });
    g.finish();
}

criterion_group!(benches, tlb_hit, walks, gups_replay, end_to_end);
criterion_main!(benches);
