//! The replay engine: one pass over a stream, every selected design fed in parallel.
//!
//! Events are read in chunks. For each chunk the functional guest walks are computed
//! once (in parallel), then every design consumes the whole chunk on its own rayon
//! task. Designs never share mutable state, so the result does not depend on thread
//! count or scheduling: a given seed gives the same reports every time.

use rayon::prelude::*;

use crate::designs::{Design, DesignKind, DesignReport, Env, EnvError, ModelConfig, Translation};
use crate::ptsnap::Ptsnap;
use crate::stream::{AddressStream, EventKind};
use crate::walker::Fault;

/// Events per chunk: large enough to amortise the fork/join, small enough (≈1.5 MiB
/// of walks) to stay in cache.
pub const CHUNK: usize = 8192;

/// Errors of a replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The stream failed (a corrupt trace).
    #[error(transparent)]
    Stream(#[from] crate::stream::Error),
    /// A design could not be built.
    #[error(transparent)]
    Design(#[from] crate::designs::Error),
    /// The environment could not be built.
    #[error(transparent)]
    Env(#[from] EnvError),
}

/// Replays `stream` through `designs` over `env`. `progress` is called after each chunk
/// with the number of events consumed so far.
pub fn replay(
    env: &Env,
    stream: &mut dyn AddressStream,
    designs: &[DesignKind],
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Vec<DesignReport>, Error> {
    let mut ds: Vec<Box<dyn Design>> = designs
        .iter()
        .map(|k| k.build(env))
        .collect::<Result<_, _>>()?;
    let mut events = Vec::with_capacity(CHUNK);
    let mut walks: Vec<Translation> = Vec::with_capacity(CHUNK);
    let mut done = 0u64;
    loop {
        events.clear();
        while events.len() < CHUNK {
            match stream.next_event()? {
                Some(e) => events.push(e),
                None => break,
            }
        }
        if events.is_empty() {
            break;
        }
        events
            .par_iter()
            .with_min_len(1024)
            .map(|e| {
                if e.is_access() {
                    env.translate(e.va, e.kind == EventKind::Write)
                } else {
                    Err(Fault::NonCanonical(e.va)) // unused for page-table events
                }
            })
            .collect_into_vec(&mut walks);
        ds.par_iter_mut().for_each(|d| {
            for (e, t) in events.iter().zip(walks.iter()) {
                match e.kind {
                    EventKind::Read => d.access(env, e.va, false, t),
                    EventKind::Write => d.access(env, e.va, true, t),
                    EventKind::Unmap | EventKind::Map => d.pt_write(env, e.va),
                }
            }
        });
        done += events.len() as u64;
        if let Some(p) = progress {
            p(done);
        }
    }
    let mut reports: Vec<DesignReport> = ds.iter().map(|d| d.report(env)).collect();
    compare_switching(&mut reports);
    Ok(reports)
}

/// Fills dynamic-switch's cost relative to fixed shadow and nested, when they ran.
fn compare_switching(reports: &mut [DesignReport]) {
    let cyc = |n: &str, r: &[DesignReport]| r.iter().find(|d| d.name == n).map(|d| d.cycles);
    let (s, n) = (cyc("shadow", reports), cyc("nested", reports));
    for r in reports.iter_mut() {
        let c = r.cycles;
        if let Some(sw) = r.switching.as_mut() {
            sw.vs_shadow = s.filter(|&v| v > 0.0).map(|v| c / v);
            sw.vs_nested = n.filter(|&v| v > 0.0).map(|v| c / v);
        }
    }
}

/// Convenience: replays address space `space` of `snap` under `cfg`.
pub fn replay_ptsnap(
    snap: &Ptsnap,
    space: usize,
    stream: &mut dyn AddressStream,
    designs: &[DesignKind],
    cfg: ModelConfig,
) -> Result<Vec<DesignReport>, Error> {
    let env = Env::new(snap, space, cfg)?;
    replay(&env, stream, designs, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptsnap::SyntheticSpec;
    use crate::stream::StreamSpec;
    use crate::tlb::TlbConfig;

    fn run(synth: &str, stream: &str, tlb: TlbConfig) -> Vec<DesignReport> {
        let snap = synth.parse::<SyntheticSpec>().unwrap().build().unwrap();
        let env = Env::new(
            &snap,
            0,
            ModelConfig {
                tlb,
                ..Default::default()
            },
        )
        .unwrap();
        let base = env.guest_segment.unwrap().base;
        let mut s = stream.parse::<StreamSpec>().unwrap().build(base);
        replay(&env, &mut s, &DesignKind::ALL, None).unwrap()
    }

    fn get<'a>(r: &'a [DesignReport], n: &str) -> &'a DesignReport {
        r.iter().find(|d| d.name == n).unwrap()
    }

    #[test]
    fn tlb_hits_cost_nothing_and_sequential_is_cheap() {
        let r = run(
            "heap=64M",
            "seq:footprint=64M,count=200k",
            TlbConfig::intel(),
        );
        for d in &r {
            assert_eq!(d.accesses, 200_000, "{}", d.name);
            assert_eq!(d.l1_hits + d.l2_hits + d.walks, d.accesses, "{}", d.name);
            assert_eq!(d.faults, 0);
        }
        // 8-byte steps: one walk per 4 KiB page = 512 accesses.
        let n = get(&r, "native");
        assert!(n.walks <= 200_000 / 512 + 1, "{n:?}");
        assert!(get(&r, "nested").cycles > n.cycles);
    }

    #[test]
    fn large_pages_shorten_walks_in_both_dimensions() {
        let small = run(
            "heap=256M,pages=4k,host=4k",
            "gups:footprint=256M,count=50k",
            TlbConfig::none(),
        );
        let big = run(
            "heap=256M,pages=2m,host=2m",
            "gups:footprint=256M,count=50k",
            TlbConfig::none(),
        );
        assert_eq!(get(&small, "nested").refs_per_walk, 24.0);
        // 3 guest levels, 3 host levels: (3+1)(3+1)-1 = 15.
        assert_eq!(get(&big, "nested").refs_per_walk, 15.0);
        assert_eq!(get(&big, "native").refs_per_walk, 3.0);
        assert_eq!(get(&small, "enlarged-tdp").refs_per_walk, 14.0);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = run(
            "heap=64M",
            "gups:footprint=64M,count=30k,seed=5",
            TlbConfig::amd(),
        );
        let b = run(
            "heap=64M",
            "gups:footprint=64M,count=30k,seed=5",
            TlbConfig::amd(),
        );
        assert_eq!(a, b);
        let c = run(
            "heap=64M",
            "gups:footprint=64M,count=30k,seed=6",
            TlbConfig::amd(),
        );
        assert_ne!(a, c);
    }

    #[test]
    fn shadow_pays_exits_for_churn_and_dynamic_reports() {
        let r = run(
            "heap=64M",
            "ptchurn:footprint=64M,count=300k,rate=0.01",
            TlbConfig::intel(),
        );
        let sh = get(&r, "shadow");
        assert!(sh.pt_writes > 4000);
        // One exit per page-table write plus hidden faults.
        assert!(sh.vm_exits >= sh.pt_writes);
        assert_eq!(get(&r, "nested").vm_exits, 0);
        let dy = get(&r, "dynamic-switch");
        let sw = dy.switching.unwrap();
        assert_eq!(sw.intervals, 3);
        assert!(sw.vs_shadow.is_some() && sw.vs_nested.is_some());
    }

    #[test]
    fn dynamic_switch_settles_on_shadow_for_a_stable_working_set() {
        let r = run(
            "heap=256M",
            "zipf:footprint=64M,count=3M,theta=0.6",
            TlbConfig::intel(),
        );
        let (sh, ne, dy) = (
            get(&r, "shadow"),
            get(&r, "nested"),
            get(&r, "dynamic-switch"),
        );
        assert!(sh.cycles < ne.cycles, "shadow should win here");
        let sw = dy.switching.unwrap();
        assert!((1..=3).contains(&sw.switches), "{sw:?}");
        assert!(
            dy.cycles < ne.cycles,
            "{} vs nested {}",
            dy.cycles,
            ne.cycles
        );
    }

    #[test]
    fn outside_the_mapping_is_a_fault_not_a_panic() {
        let r = run(
            "heap=4M",
            "gups:footprint=64M,count=1000",
            TlbConfig::intel(),
        );
        for d in &r {
            assert!(d.faults > 800, "{}: {}", d.name, d.faults);
        }
    }
}
