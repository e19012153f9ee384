//! The replay engine: one pass over a stream, every selected design fed in parallel.
//!
//! Events are read in chunks. For each chunk the functional guest walks are computed
//! once (in parallel), then every design consumes the whole chunk on its own rayon
//! task. Designs never share mutable state, so the result does not depend on thread
//! count or scheduling: a given seed gives the same reports every time.

use rayon::prelude::*;

use crate::designs::{Design, DesignKind, DesignReport, Env, EnvError, ModelConfig, Translation};
use crate::ptsnap::Ptsnap;
use crate::stream::{AddressStream, Event, EventKind};
use crate::walker::Fault;

pub mod repro;

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

/// How much of a replay is warm-up (cold start) before steady state is measured.
///
/// Steady state means "as if the workload had been running for a while over the same
/// page tables": caches warm and every page of the footprint already filled. So two
/// things are cold-start cost and are reported apart from steady state:
/// * everything in the warm-up window (compulsory TLB, PWC and nested-TLB misses and
///   whatever else happens there), and
/// * after it, every *first* fill of a page: a shadow-paging hidden fault on a page
///   never shadowed before, a lazy EPT/NPT violation on a host page never touched
///   before ([`crate::designs::NptMode::Lazy`]). A long-running workload pays these once
///   per page; a short replay over a big footprint would otherwise be dominated by them.
///
/// Re-fills (a page shadowed again after a guest page-table write, or after a switch
/// back to shadow mode) and write-protect exits are steady-state cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Warmup {
    /// No warm-up window (first fills are still cold-start cost).
    None,
    /// The first N accesses.
    Accesses(u64),
    /// Until the cost settles: the window ends at the first chunk boundary after which
    /// [`AUTO_STABLE_CHUNKS`] consecutive chunks of [`CHUNK`] events each cost (steady
    /// cycles per access, first fills excluded) within [`AUTO_TOLERANCE`] (relative) or
    /// [`AUTO_ABS_CYCLES`] (absolute) of the chunk before, for every design but
    /// dynamic-switch (whose cost moves with its mode by design); at most half the
    /// stream when its length is known.
    Auto,
}

/// Relative change of per-chunk cost under which [`Warmup::Auto`] calls it settled.
pub const AUTO_TOLERANCE: f64 = 0.05;
/// Absolute change (cycles per access) under which [`Warmup::Auto`] calls it settled.
pub const AUTO_ABS_CYCLES: f64 = 0.25;
/// Consecutive stable chunks [`Warmup::Auto`] needs.
pub const AUTO_STABLE_CHUNKS: u32 = 2;

impl std::str::FromStr for Warmup {
    type Err = crate::stream::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "none" => Ok(Warmup::None),
            "auto" => Ok(Warmup::Auto),
            v => crate::units::parse_count(v)
                .map(Warmup::Accesses)
                .map_err(|_| {
                    crate::stream::Error::Spec(format!(
                        "warm-up {v:?}: expected auto, none or a number of accesses"
                    ))
                }),
        }
    }
}

/// Where the warm-up ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WarmupReport {
    /// The rule asked for.
    pub rule: Warmup,
    /// Accesses in the warm-up window.
    pub accesses: u64,
    /// False when the stream ended (or the auto cap was reached) inside the window.
    pub settled: bool,
}

/// One design's cost split into cold start and steady state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhasedReport {
    /// Design name.
    pub name: String,
    /// The whole replay.
    pub total: DesignReport,
    /// The warm-up window.
    pub warmup: DesignReport,
    /// After the warm-up window, first fills included (see `steady_cycles`).
    pub after_warmup: DesignReport,
    /// First-fill exits, whole replay.
    pub fill_exits: u64,
    /// First-fill exits after the warm-up window.
    pub fill_exits_after_warmup: u64,
    /// Cold-start cycles: the warm-up window plus first fills after it.
    pub cold_start_cycles: f64,
    /// Steady-state cycles: after the window, first fills excluded.
    pub steady_cycles: f64,
    /// `steady_cycles` per access after the window.
    pub steady_cycles_per_access: f64,
}

/// A replay's result: per design, total, cold start and steady state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Replay {
    /// The warm-up window.
    pub warmup: WarmupReport,
    /// One per design, in the order asked.
    pub designs: Vec<PhasedReport>,
}

impl Replay {
    /// The whole-replay reports (what [`replay`] returns).
    pub fn totals(&self) -> Vec<DesignReport> {
        self.designs.iter().map(|d| d.total.clone()).collect()
    }

    /// Steady-state cycles per access of `name`, if it ran.
    pub fn steady(&self, name: &str) -> Option<f64> {
        self.designs
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.steady_cycles_per_access)
    }

    /// Cold-start cycles per access (cold-start cycles over all accesses) of `name`.
    pub fn cold(&self, name: &str) -> Option<f64> {
        self.designs.iter().find(|d| d.name == name).map(|d| {
            if d.total.accesses == 0 {
                0.0
            } else {
                d.cold_start_cycles / d.total.accesses as f64
            }
        })
    }
}

/// Replays `stream` through `designs` over `env`; whole-replay reports (no warm-up
/// split). `progress` is called after each chunk with the number of events consumed.
pub fn replay(
    env: &Env,
    stream: &mut dyn AddressStream,
    designs: &[DesignKind],
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Vec<DesignReport>, Error> {
    Ok(replay_phased(env, stream, designs, Warmup::None, progress)?.totals())
}

type Snap = Vec<(DesignReport, u64)>;

fn snapshot(ds: &[Box<dyn Design>], env: &Env) -> Snap {
    ds.iter().map(|d| (d.report(env), d.fill_exits())).collect()
}

/// Per-chunk steady cost (cycles per access, first fills excluded) of each design
/// between two snapshots; `None` for dynamic-switch and empty intervals.
fn chunk_costs(now: &Snap, prev: &Snap, exit: f64) -> Vec<Option<f64>> {
    now.iter()
        .zip(prev)
        .map(|((n, nf), (p, pf))| {
            let acc = n.accesses.saturating_sub(p.accesses);
            (n.switching.is_none() && acc > 0)
                .then(|| (n.cycles - p.cycles - nf.saturating_sub(*pf) as f64 * exit) / acc as f64)
        })
        .collect()
}

/// The auto warm-up detector.
struct Settle {
    prev: Option<Snap>,
    last: Vec<Option<f64>>,
    stable: u32,
}

impl Settle {
    fn step(&mut self, now: Snap, exit: f64) -> bool {
        let Some(prev) = self.prev.replace(now) else {
            return false;
        };
        let costs = chunk_costs(self.prev.as_ref().unwrap_or(&prev), &prev, exit);
        let ok = !self.last.is_empty()
            && costs.iter().zip(&self.last).all(|(c, l)| match (c, l) {
                (Some(c), Some(l)) => {
                    (c - l).abs() <= (AUTO_TOLERANCE * l.abs()).max(AUTO_ABS_CYCLES)
                }
                _ => true,
            });
        self.last = costs;
        self.stable = if ok { self.stable + 1 } else { 0 };
        self.stable >= AUTO_STABLE_CHUNKS
    }
}

/// Replays `stream` through `designs` over `env`, splitting each design's cost into
/// cold start and steady state by `warmup` (see [`Warmup`]).
pub fn replay_phased(
    env: &Env,
    stream: &mut dyn AddressStream,
    designs: &[DesignKind],
    warmup: Warmup,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Replay, Error> {
    let mut ds: Vec<Box<dyn Design>> = designs
        .iter()
        .map(|k| k.build(env))
        .collect::<Result<_, _>>()?;
    let exit = env.cfg.tlb.costs.vm_exit_cycles;
    let cap = match warmup {
        Warmup::None => 0,
        Warmup::Accesses(n) => n,
        Warmup::Auto => stream.len_hint().map_or(u64::MAX, |l| l / 2),
    };
    let mut boundary: Option<(Snap, u64)> = None;
    let mut settle = Settle {
        prev: None,
        last: Vec::new(),
        stable: 0,
    };
    let mut settled = warmup == Warmup::None;
    let mut events = Vec::with_capacity(CHUNK);
    let mut walks: Vec<Translation> = Vec::with_capacity(CHUNK);
    let (mut done, mut accesses) = (0u64, 0u64);
    loop {
        if boundary.is_none() && (settled || accesses >= cap) {
            settled |= accesses >= cap && warmup != Warmup::Auto;
            boundary = Some((snapshot(&ds, env), accesses));
        }
        // Up to the warm-up boundary exactly, so the boundary falls between chunks.
        let limit = (boundary.is_none() && warmup != Warmup::Auto).then(|| cap - accesses);
        accesses += fill_chunk(stream, &mut events, limit)?;
        if events.is_empty() {
            break;
        }
        run_chunk(env, &mut ds, &events, &mut walks);
        done += events.len() as u64;
        if boundary.is_none() && warmup == Warmup::Auto {
            settled = settle.step(snapshot(&ds, env), exit);
        }
        if let Some(p) = progress {
            p(done);
        }
    }
    let end = snapshot(&ds, env);
    let (start, warm_accesses) = boundary.unwrap_or_else(|| (end.clone(), accesses));
    Ok(Replay {
        warmup: WarmupReport {
            rule: warmup,
            accesses: warm_accesses,
            settled,
        },
        designs: phased_reports(&end, &start, exit),
    })
}

/// Refills `events` with up to [`CHUNK`] events (at most `limit` accesses when given);
/// returns the accesses among them.
fn fill_chunk(
    stream: &mut dyn AddressStream,
    events: &mut Vec<Event>,
    limit: Option<u64>,
) -> Result<u64, Error> {
    events.clear();
    let mut accesses = 0u64;
    while events.len() < CHUNK {
        let room = (CHUNK - events.len()) as u64;
        let want = limit.map_or(room, |l| (l - accesses).min(room)) as usize;
        if want == 0 {
            break;
        }
        let before = events.len();
        stream.fill(events, before + want)?;
        if events.len() == before {
            break;
        }
        accesses += events[before..].iter().filter(|e| e.is_access()).count() as u64;
    }
    Ok(accesses)
}

/// Events walked per rayon task (and the prefetch pipeline's length).
const WALK_BATCH: usize = 1024;

/// How many walks ahead [`walk_events`] prefetches: enough to overlap the last-level
/// misses of several walks, few enough that the prefetched lines are still cached.
const PREFETCH_AHEAD: usize = 12;

/// The functional walks of `events` into `out` (same length), prefetching the
/// last-level entry of the walk [`PREFETCH_AHEAD`] events ahead.
fn walk_events(env: &Env, events: &[Event], out: &mut [Translation]) {
    for (i, (e, o)) in events.iter().zip(out.iter_mut()).enumerate() {
        if let Some(n) = events.get(i + PREFETCH_AHEAD).filter(|n| n.is_access()) {
            env.prefetch(n.va);
        }
        *o = if e.is_access() {
            env.translate(e.va, e.kind == EventKind::Write)
        } else {
            Err(Fault::NonCanonical(e.va)) // unused for page-table events
        };
    }
}

/// Walks the chunk's accesses once (in parallel) and feeds every design the whole chunk.
fn run_chunk(
    env: &Env,
    ds: &mut [Box<dyn Design>],
    events: &[Event],
    walks: &mut Vec<Translation>,
) {
    walks.clear();
    walks.resize(events.len(), Err(Fault::NonCanonical(0)));
    walks
        .par_chunks_mut(WALK_BATCH)
        .zip(events.par_chunks(WALK_BATCH))
        .for_each(|(w, e)| walk_events(env, e, w));
    ds.par_iter_mut().for_each(|d| {
        for (e, t) in events.iter().zip(walks.iter()) {
            match e.kind {
                EventKind::Read => d.access(env, e.va, false, t),
                EventKind::Write => d.access(env, e.va, true, t),
                EventKind::Unmap | EventKind::Map => d.pt_write(env, e.va),
            }
        }
    });
}

/// Each design's totals split at the warm-up boundary `start` into cold start and
/// steady state (fill exits after the boundary count as cold, not steady).
fn phased_reports(
    end: &[(DesignReport, u64)],
    start: &[(DesignReport, u64)],
    exit: f64,
) -> Vec<PhasedReport> {
    let mut totals: Vec<DesignReport> = end.iter().map(|(r, _)| r.clone()).collect();
    compare_switching(&mut totals);
    totals
        .into_iter()
        .zip(end.iter().zip(start))
        .map(|(total, ((e, ef), (s, sf)))| {
            let warm = s.clone();
            let after = e.since(s);
            let fills_after = ef.saturating_sub(*sf);
            let steady_cycles = (after.cycles - fills_after as f64 * exit).max(0.0);
            PhasedReport {
                name: total.name.clone(),
                cold_start_cycles: total.cycles - steady_cycles,
                steady_cycles,
                steady_cycles_per_access: if after.accesses == 0 {
                    0.0
                } else {
                    steady_cycles / after.accesses as f64
                },
                fill_exits: *ef,
                fill_exits_after_warmup: fills_after,
                total,
                warmup: warm,
                after_warmup: after,
            }
        })
        .collect()
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
