//! The `end_to_end` benchmark's pipeline (benches/mmu.rs), timed run by run with wall
//! and on-CPU time, for a loaded shared host where criterion's wall times mostly measure
//! the other tenants: `Env::new`, GUPS stream generation, functional walks and the
//! nested model with every cache off, 10 M accesses over a 4 GiB heap of 4 KiB pages.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p segment-mmu --example replay_speed [RUNS]`
//! prints one line per run and the medians.

use std::time::Instant;

use segment_mmu::designs::{DesignKind, Env, ModelConfig};
use segment_mmu::ptsnap::SyntheticSpec;
use segment_mmu::replay::replay;
use segment_mmu::stream::StreamSpec;
use segment_mmu::tlb::TlbConfig;

const ACCESSES: f64 = 10e6;

/// User plus system CPU seconds of this process so far (from /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 (indices 11 and 12 after the name), in ticks.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let snap = "heap=4G,pages=4k"
        .parse::<SyntheticSpec>()
        .expect("spec")
        .build()
        .expect("build");
    let spec: StreamSpec = "gups:footprint=4G,count=10M".parse().expect("stream");
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let cfg = ModelConfig {
            tlb: TlbConfig::none(),
            ..Default::default()
        };
        let env = Env::new(&snap, 0, cfg).expect("env");
        let env_s = t0.elapsed().as_secs_f64();
        let mut s = spec.build(env.guest_segment.expect("heap").base);
        let r = replay(&env, &mut s, &[DesignKind::Nested], None).expect("replay");
        let (w, c) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        println!(
            "run {run}: {w:.3} s wall ({env_s:.3} s Env::new), {c:.2} s CPU: {:.2} M/s wall, \
             {:.2} M/s per CPU-second ({} refs)",
            ACCESSES / w / 1e6,
            ACCESSES / c / 1e6,
            r[0].refs
        );
        wall.push(w);
        cpu.push(c);
    }
    let (w, c) = (median(&mut wall), median(&mut cpu));
    println!(
        "median of {runs}: {w:.3} s wall = {:.2} M translations/s; {c:.2} s CPU = {:.2} M/s per CPU-second",
        ACCESSES / w / 1e6,
        ACCESSES / c / 1e6
    );
}
