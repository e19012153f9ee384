//! The models' qualitative claims (issue #18): each assertion compares numbers the models
//! compute; none is typed in.

use segment_mmu::designs::{DesignKind, ModelConfig, NptMode};
use segment_mmu::replay::repro::{self, run, run_with, tiering};
use segment_mmu::replay::Warmup;
use segment_mmu::tlb::TlbConfig;

fn steady(r: &segment_mmu::replay::Replay, n: &str) -> f64 {
    r.steady(n).unwrap()
}

#[test]
fn tiering_on_skew() {
    for st in repro::tier_streams(1_000_000) {
        let [n, t, o] = tiering(&st, 10_000).unwrap();
        eprintln!("{st}: none {n:.3} temperature {t:.3} oracle {o:.3}");
    }
}
