//! A two-tier memory model that replays hotness logs (vTMM-style tiering).
//!
//! # What is modelled
//!
//! Memory has a fast and a slow tier; the slow tier is `latency_ratio` (`r`) times slower.
//! The unit of work is one *page-interval*: a 4 KiB page written during an interval (the
//! dirty log gives no finer count). It costs 1 when the page is in the fast tier and `r`
//! when it is in the slow tier; moving a 4 KiB page between tiers costs `migration_cost`
//! (`c`) in the same unit (a 2 MiB page costs `512·c`). The projected slowdown of a policy
//! is its total cost over the all-fast cost (the number of page-intervals), so 1.0 means
//! "as fast as all-fast memory" and `r` means "everything was slow".
//!
//! Pages are allocated at their first write (first touch): into the fast tier while the
//! guest's share has room, else into the slow tier. At 2 MiB and hybrid grain the guest
//! allocates whole 2 MiB frames (huge pages); at 4 KiB grain single pages.
//!
//! # Policies (before each interval, a policy may re-place pages)
//!
//! * `none`: first touch only, never migrates.
//! * `temperature`: vTMM's: sort units by temperature (the decayed count of the past, see
//!   [`super`]) and place the hottest in the fast tier, every interval.
//! * `oracle`: the same sort on the *future*'s decayed count, `F_p(k) = Σ_{j≥0} λ^j d_p(k+j)`:
//!   it knows exactly what the next interval writes and, with decaying weight, the ones
//!   after. It is also migration-aware: it ranks by the saving `(r − 1)·F` plus `c` per
//!   page already fast (evicting it would cost that) minus `c` per allocated page still
//!   slow, so it only moves a page when the move pays for itself within the decayed
//!   future. A strong bound for a temperature sort with perfect prediction, not a proven
//!   optimum.
//!
//! Both sorting policies fill the share greedily by density (score per 4 KiB page), keep
//! pages already fast on ties, and keep already-fast pages while room remains.
//!
//! # Grains
//!
//! * `4k`: units are 4 KiB pages, scored by their own temperature.
//! * `2m`: units are 2 MiB frames, scored by the temperature of the derived 2 MiB dirty sets
//!   (what a tracker that only sees huge pages knows); a frame fills 512 pages of the share
//!   even when one of its pages is hot.
//! * `hybrid`: tracking at 4 KiB inside huge pages (vTMM): a frame stays one huge unit when
//!   at least `merge_fraction` of its pages are hot (score ≥ `hot_threshold`), scored by its
//!   mean page score; otherwise it is split and its pages are placed one by one (demoting
//!   the cold ones). The TLB cost of split pages is not modelled.
//!
//! # Several guests, one fast pool
//!
//! Guests advance in lockstep by interval index. With `shares = demand`, before each
//! interval the pool is divided in proportion to each guest's demand (pages in units whose
//! density is ≥ `hot_threshold`; for `oracle` from the future); when the demands fit, each
//! guest gets its demand and the rest is split evenly. `none` cannot rebalance and always
//! uses equal shares, as does `shares = equal`.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;

use super::{decay, Error, HotnessLog, PAGES_PER_HUGE};

/// A placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// First touch, no migration.
    None,
    /// Temperature sort every interval (vTMM).
    Temperature,
    /// Temperature sort on the future.
    Oracle,
}

/// The grain of placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Grain {
    /// 4 KiB pages.
    #[serde(rename = "4k")]
    Small,
    /// 2 MiB frames.
    #[serde(rename = "2m")]
    Huge,
    /// 2 MiB frames split when only part is hot.
    #[serde(rename = "hybrid")]
    Hybrid,
}

impl Policy {
    /// All policies.
    pub const ALL: [Policy; 3] = [Policy::None, Policy::Temperature, Policy::Oracle];
    /// Name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Temperature => "temperature",
            Policy::Oracle => "oracle",
        }
    }
}

impl Grain {
    /// All grains.
    pub const ALL: [Grain; 3] = [Grain::Small, Grain::Huge, Grain::Hybrid];
    /// Name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Grain::Small => "4k",
            Grain::Huge => "2m",
            Grain::Hybrid => "hybrid",
        }
    }
}

/// How the fast pool is divided among guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shares {
    /// In proportion to each guest's hot pages, every interval.
    Demand,
    /// Equal, fixed.
    Equal,
}

/// The fast tier's size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FastCapacity {
    /// A fraction (0..=1) of the guests' combined footprint (distinct 4 KiB pages written).
    Fraction(f64),
    /// Bytes.
    Bytes(u64),
}

/// Model parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Fast tier size.
    pub fast: FastCapacity,
    /// Slow latency / fast latency (≥ 1).
    pub latency_ratio: f64,
    /// Cost of moving one 4 KiB page, in fast page-intervals (≥ 0).
    pub migration_cost: f64,
    /// Temperature half-life in intervals; `None` = each file's own.
    pub half_life: Option<f64>,
    /// A page (or unit, by density) is hot when its score is at least this.
    pub hot_threshold: f64,
    /// Hybrid: a frame stays huge when at least this fraction of its pages are hot.
    pub merge_fraction: f64,
    /// Pool division.
    pub shares: Shares,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            fast: FastCapacity::Fraction(0.25),
            latency_ratio: 3.0,
            migration_cost: 1.0,
            half_life: None,
            hot_threshold: 0.5,
            merge_fraction: 0.5,
            shares: Shares::Demand,
        }
    }
}

impl Params {
    fn check(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::Invalid(s));
        match self.fast {
            FastCapacity::Fraction(f) if !(0.0..=1.0).contains(&f) => {
                return bad(format!("fast tier fraction {f}: must be between 0 and 1"))
            }
            _ => {}
        }
        if !(self.latency_ratio.is_finite() && self.latency_ratio >= 1.0) {
            return bad(format!(
                "latency ratio {}: must be at least 1",
                self.latency_ratio
            ));
        }
        if !(self.migration_cost.is_finite() && self.migration_cost >= 0.0) {
            return bad(format!(
                "migration cost {}: must be a non-negative number",
                self.migration_cost
            ));
        }
        if let Some(h) = self.half_life {
            if !(h.is_finite() && h > 0.0) {
                return bad(format!("half-life {h}: must be positive"));
            }
        }
        if !(self.hot_threshold.is_finite() && self.hot_threshold > 0.0) {
            return bad(format!(
                "hot threshold {}: must be positive",
                self.hot_threshold
            ));
        }
        if !(self.merge_fraction > 0.0 && self.merge_fraction <= 1.0) {
            return bad(format!(
                "merge fraction {}: must be in (0, 1]",
                self.merge_fraction
            ));
        }
        Ok(())
    }
}

/// One guest under one policy and grain.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GuestResult {
    /// Guest name (file name).
    pub guest: String,
    /// Page-intervals (the all-fast cost).
    pub accesses: u64,
    /// Modelled cost, including migrations.
    pub cost: f64,
    /// `cost / accesses`.
    pub slowdown: f64,
    /// Fraction of page-intervals served by the fast tier.
    pub fast_hit_fraction: f64,
    /// 4 KiB pages moved between tiers.
    pub migrated_pages: u64,
    /// Mean fast-tier share over the intervals, 4 KiB pages.
    pub mean_share_pages: f64,
}

/// One policy at one grain, over all guests.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyResult {
    /// Policy.
    pub policy: Policy,
    /// Grain.
    pub grain: Grain,
    /// Total cost over total all-fast cost.
    pub slowdown: f64,
    /// Fast-tier hits over all page-intervals.
    pub fast_hit_fraction: f64,
    /// MiB moved between tiers.
    pub migrated_mib: f64,
    /// Per guest.
    pub guests: Vec<GuestResult>,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Parameters used.
    pub params: Params,
    /// Fast tier, 4 KiB pages.
    pub fast_pages: u64,
    /// Distinct 4 KiB pages written, all guests.
    pub footprint_pages: u64,
    /// One row per policy and grain.
    pub results: Vec<PolicyResult>,
}

impl Report {
    /// A text table (one row per policy × grain).
    pub fn table(&self) -> String {
        let mut s = format!(
            "fast tier {:.1} MiB ({} pages) of a {:.1} MiB footprint; slow/fast latency {}; migration {} per 4 KiB page\n",
            self.fast_pages as f64 / 256.0,
            self.fast_pages,
            self.footprint_pages as f64 / 256.0,
            self.params.latency_ratio,
            self.params.migration_cost
        );
        s.push_str(&format!(
            "{:<12} {:<7} {:>9} {:>9} {:>12}\n",
            "policy", "grain", "slowdown", "fast hit", "migrated MiB"
        ));
        for r in &self.results {
            s.push_str(&format!(
                "{:<12} {:<7} {:>8.3}x {:>8.1}% {:>12.1}\n",
                r.policy.name(),
                r.grain.name(),
                r.slowdown,
                100.0 * r.fast_hit_fraction,
                r.migrated_mib
            ));
            if r.guests.len() > 1 {
                for g in &r.guests {
                    s.push_str(&format!(
                        "  {:<18} {:>8.3}x {:>8.1}%  share {:.1} MiB\n",
                        g.guest,
                        g.slowdown,
                        100.0 * g.fast_hit_fraction,
                        g.mean_share_pages / 256.0
                    ));
                }
            }
        }
        s
    }
}

/// Replays `guests` (name, log) through every policy and grain.
pub fn simulate(guests: &[(String, &HotnessLog)], params: &Params) -> Result<Report, Error> {
    params.check()?;
    if guests.is_empty() {
        return Err(Error::Invalid("no hotness logs to replay".into()));
    }
    let footprint: u64 = guests.iter().map(|(_, l)| l.footprint().len() as u64).sum();
    let fast_pages = match params.fast {
        FastCapacity::Fraction(f) => (footprint as f64 * f).round() as u64,
        FastCapacity::Bytes(b) => b >> super::PAGE_SHIFT,
    };
    let signals: Vec<(Signal, Signal)> = guests
        .iter()
        .map(|(_, l)| {
            let lambda = decay(params.half_life.unwrap_or(l.half_life));
            let small: Vec<&[u64]> = l.intervals.iter().map(|i| i.pages.as_slice()).collect();
            let huge = l.huge_sets();
            let huge: Vec<&[u64]> = huge.iter().map(|s| s.as_slice()).collect();
            (Signal::new(&small, lambda), Signal::new(&huge, lambda))
        })
        .collect();
    let combos: Vec<(Policy, Grain)> = Policy::ALL
        .iter()
        .flat_map(|&p| Grain::ALL.iter().map(move |&g| (p, g)))
        .collect();
    let spaces: Vec<Space> = signals.iter().map(Space::new).collect();
    let results = combos
        .par_iter()
        .map(|&(policy, grain)| {
            run_one(guests, &signals, &spaces, params, fast_pages, policy, grain)
        })
        .collect();
    Ok(Report {
        params: params.clone(),
        fast_pages,
        footprint_pages: footprint,
        results,
    })
}

/// Divides `total` pages among guests with `demands`.
pub fn divide(demands: &[u64], total: u64, shares: Shares) -> Vec<u64> {
    let n = demands.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let sum: u64 = demands.iter().sum();
    if shares == Shares::Equal || sum == 0 {
        return (0..n)
            .map(|i| total / n + u64::from(i < total % n))
            .collect();
    }
    if sum <= total {
        let extra = total - sum;
        return demands
            .iter()
            .enumerate()
            .map(|(i, &d)| d + extra / n + u64::from((i as u64) < extra % n))
            .collect();
    }
    // Proportional, largest remainder.
    let exact: Vec<f64> = demands
        .iter()
        .map(|&d| total as f64 * d as f64 / sum as f64)
        .collect();
    let mut out: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let mut left = total - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// Per key: the intervals it was dirty in, with running sums that give past and future
/// decayed counts in O(log n).
#[derive(Debug)]
struct Signal {
    keys: Vec<u64>,
    times: Vec<Vec<u32>>,
    /// `H_i = Σ_{j≤i} λ^(t_i − t_j)`.
    fwd: Vec<Vec<f64>>,
    /// `G_i = Σ_{j≥i} λ^(t_j − t_i)`.
    bwd: Vec<Vec<f64>>,
    lambda: f64,
}

impl Signal {
    fn new(sets: &[&[u64]], lambda: f64) -> Self {
        let mut m: HashMap<u64, Vec<u32>> = HashMap::new();
        for (k, s) in sets.iter().enumerate() {
            for &p in s.iter() {
                m.entry(p).or_default().push(k as u32);
            }
        }
        let mut keys: Vec<u64> = m.keys().copied().collect();
        keys.sort_unstable();
        let times: Vec<Vec<u32>> = keys
            .iter()
            .map(|k| m.remove(k).unwrap_or_default())
            .collect();
        let pw = |d: u32| lambda.powi(d as i32);
        let fwd = times
            .iter()
            .map(|t| {
                let mut h = Vec::with_capacity(t.len());
                for i in 0..t.len() {
                    h.push(if i == 0 {
                        1.0
                    } else {
                        1.0 + pw(t[i] - t[i - 1]) * h[i - 1]
                    });
                }
                h
            })
            .collect();
        let bwd = times
            .iter()
            .map(|t| {
                let mut g = vec![0.0; t.len()];
                for i in (0..t.len()).rev() {
                    g[i] = if i + 1 == t.len() {
                        1.0
                    } else {
                        1.0 + pw(t[i + 1] - t[i]) * g[i + 1]
                    };
                }
                g
            })
            .collect();
        Signal {
            keys,
            times,
            fwd,
            bwd,
            lambda,
        }
    }

    /// Temperature after interval `k − 1` (0 before the first interval).
    #[cfg(test)]
    fn past(&self, i: usize, k: u32) -> f64 {
        let t = &self.times[i];
        let n = t.partition_point(|&x| x < k);
        if n == 0 {
            return 0.0;
        }
        self.lambda.powi((k - 1 - t[n - 1]) as i32) * self.fwd[i][n - 1]
    }

    /// `Σ_{j≥0} λ^j d(k + j)`.
    #[cfg(test)]
    fn future(&self, i: usize, k: u32) -> f64 {
        let t = &self.times[i];
        let n = t.partition_point(|&x| x < k);
        if n == t.len() {
            return 0.0;
        }
        self.lambda.powi((t[n] - k) as i32) * self.bwd[i][n]
    }

    /// `past` (or, for the oracle, `future`) with a cursor into key `i`'s intervals that
    /// only moves forward as `k` does: O(1) amortized instead of a search.
    fn score(&self, i: usize, k: u32, policy: Policy, cur: &mut u32) -> f64 {
        let t = &self.times[i];
        let mut n = *cur as usize;
        while n < t.len() && t[n] < k {
            n += 1;
        }
        *cur = n as u32;
        match policy {
            Policy::Oracle if n < t.len() => self.lambda.powi((t[n] - k) as i32) * self.bwd[i][n],
            Policy::Oracle => 0.0,
            _ if n == 0 => 0.0,
            _ => self.lambda.powi((k - 1 - t[n - 1]) as i32) * self.fwd[i][n - 1],
        }
    }
}

/// A guest's pages in a dense index space: every page of every 2 MiB frame it wrote, frame
/// by frame (`index = frame_rank · 512 + pfn % 512`), so placement state is a few flat
/// arrays and a unit (a page or a whole frame) is a contiguous index range.
#[derive(Debug)]
struct Space {
    /// Frames written, ascending (the 2 MiB signal's keys).
    frames: Vec<u64>,
    /// Dense index of each 4 KiB signal key.
    small_idx: Vec<usize>,
}

impl Space {
    fn new(sig: &(Signal, Signal)) -> Self {
        let frames = sig.1.keys.clone();
        let small_idx = sig
            .0
            .keys
            .iter()
            .map(|&p| Self::index_in(&frames, p).unwrap_or(0))
            .collect();
        Space { frames, small_idx }
    }
    fn index_in(frames: &[u64], pfn: u64) -> Option<usize> {
        let f = frames.binary_search(&(pfn / PAGES_PER_HUGE)).ok()?;
        Some(f * PAGES_PER_HUGE as usize + (pfn % PAGES_PER_HUGE) as usize)
    }
    fn index(&self, pfn: u64) -> Option<usize> {
        Self::index_in(&self.frames, pfn)
    }
    fn len(&self) -> usize {
        self.frames.len() * PAGES_PER_HUGE as usize
    }
}

/// A placement unit: dense index range `start..start + size` and its score (temperature,
/// past or future, per 4 KiB page).
#[derive(Debug, Clone, Copy)]
struct Unit {
    start: usize,
    size: usize,
    score: f64,
}

const HUGE: usize = PAGES_PER_HUGE as usize;

#[derive(Debug)]
struct State {
    fast: Vec<bool>,
    allocated: Vec<bool>,
    nfast: u64,
    cost: f64,
    accesses: u64,
    hits: u64,
    migrated: u64,
    share_sum: f64,
    intervals: u64,
}

impl State {
    fn new(n: usize) -> Self {
        State {
            fast: vec![false; n],
            allocated: vec![false; n],
            nfast: 0,
            cost: 0.0,
            accesses: 0,
            hits: 0,
            migrated: 0,
            share_sum: 0.0,
            intervals: 0,
        }
    }
}

fn units(
    sig: &(Signal, Signal),
    space: &Space,
    cursors: &mut (Vec<u32>, Vec<u32>),
    k: u32,
    policy: Policy,
    grain: Grain,
    params: &Params,
) -> Vec<Unit> {
    let (small, huge) = sig;
    match grain {
        Grain::Small => (0..small.keys.len())
            .filter_map(|i| {
                let s = small.score(i, k, policy, &mut cursors.0[i]);
                (s > 0.0).then_some(Unit {
                    start: space.small_idx[i],
                    size: 1,
                    score: s,
                })
            })
            .collect(),
        Grain::Huge => (0..huge.keys.len())
            .filter_map(|i| {
                let s = huge.score(i, k, policy, &mut cursors.1[i]);
                (s > 0.0).then_some(Unit {
                    start: i * HUGE,
                    size: HUGE,
                    score: s,
                })
            })
            .collect(),
        Grain::Hybrid => {
            let mut out = Vec::new();
            let mut i = 0;
            while i < small.keys.len() {
                let frame = small.keys[i] / PAGES_PER_HUGE;
                let mut j = i;
                let (mut hot, mut sum) = (0u64, 0.0);
                let mut pages = Vec::new();
                while j < small.keys.len() && small.keys[j] / PAGES_PER_HUGE == frame {
                    let s = small.score(j, k, policy, &mut cursors.0[j]);
                    if s > 0.0 {
                        pages.push(Unit {
                            start: space.small_idx[j],
                            size: 1,
                            score: s,
                        });
                        sum += s;
                        hot += u64::from(s >= params.hot_threshold);
                    }
                    j += 1;
                }
                if hot as f64 >= params.merge_fraction * PAGES_PER_HUGE as f64 {
                    let start = space.small_idx[i] / HUGE * HUGE;
                    out.push(Unit {
                        start,
                        size: HUGE,
                        score: sum / PAGES_PER_HUGE as f64,
                    });
                } else {
                    out.extend(pages);
                }
                i = j;
            }
            out
        }
    }
}

/// Re-places `st` within `cap` pages: units greedily by density (ties: already fast first,
/// then address), then pages already fast while room remains (whole frames at 2 MiB
/// grain). The oracle weighs each unit by what placing it saves, `(r − 1)·score`, plus the
/// migration it avoids (`c` per page already fast: evicting it would cost that) minus the
/// migration it needs (`c` per allocated page still slow), and skips units that do not pay:
/// a slow page displaces a fast one only when its future saving beats the other's by `2c`.
fn place(
    st: &mut State,
    units: Vec<Unit>,
    cap: u64,
    grain: Grain,
    params: &Params,
    policy: Policy,
) {
    let c = params.migration_cost;
    let r = params.latency_ratio;
    let mut ranked: Vec<(f64, bool, Unit)> = units
        .into_iter()
        .filter_map(|u| {
            let range = u.start..u.start + u.size;
            let is_fast = st.fast[u.start];
            let d = if policy == Policy::Oracle {
                let (mut fast, mut slow) = (0usize, 0usize);
                for q in range {
                    fast += usize::from(st.fast[q]);
                    slow += usize::from(st.allocated[q] && !st.fast[q]);
                }
                (r - 1.0) * u.score + c * (fast as f64 - slow as f64) / u.size as f64
            } else {
                u.score
            };
            (d > 0.0).then_some((d, is_fast, u))
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(a.2.start.cmp(&b.2.start))
    });
    let n = st.fast.len();
    let mut new = vec![false; n];
    let mut used = 0u64;
    for (_, _, u) in &ranked {
        if used + u.size as u64 <= cap && !new[u.start] {
            new[u.start..u.start + u.size]
                .iter_mut()
                .for_each(|x| *x = true);
            used += u.size as u64;
        }
    }
    // Keep what is already fast while room remains.
    let group = if grain == Grain::Huge { HUGE } else { 1 };
    let mut g = 0;
    while g < n {
        let range = g..(g + group).min(n);
        let keep: usize = range.clone().filter(|&q| st.fast[q] && !new[q]).count();
        if keep > 0 && used + keep as u64 <= cap {
            for q in range {
                if st.fast[q] {
                    new[q] = true;
                }
            }
            used += keep as u64;
        }
        g += group;
    }
    let moved = (0..n)
        .filter(|&q| new[q] != st.fast[q] && st.allocated[q])
        .count() as u64;
    st.migrated += moved;
    st.cost += c * moved as f64;
    st.fast = new;
    st.nfast = used;
}

fn run_one(
    guests: &[(String, &HotnessLog)],
    signals: &[(Signal, Signal)],
    spaces: &[Space],
    params: &Params,
    fast_pages: u64,
    policy: Policy,
    grain: Grain,
) -> PolicyResult {
    let n = guests
        .iter()
        .map(|(_, l)| l.intervals.len())
        .max()
        .unwrap_or(0);
    let mut states: Vec<State> = spaces.iter().map(|s| State::new(s.len())).collect();
    let mut cursors: Vec<(Vec<u32>, Vec<u32>)> = signals
        .iter()
        .map(|(a, b)| (vec![0; a.keys.len()], vec![0; b.keys.len()]))
        .collect();
    let r = params.latency_ratio;
    for k in 0..n {
        let kk = k as u32;
        let active: Vec<bool> = guests.iter().map(|(_, l)| k < l.intervals.len()).collect();
        let mut us: Vec<Vec<Unit>> = if policy == Policy::None {
            vec![Vec::new(); guests.len()]
        } else {
            signals
                .iter()
                .zip(spaces)
                .zip(cursors.iter_mut())
                .zip(&active)
                .map(|(((s, sp), cur), &a)| {
                    if a {
                        units(s, sp, cur, kk, policy, grain, params)
                    } else {
                        Vec::new()
                    }
                })
                .collect()
        };
        let demands: Vec<u64> = us
            .iter()
            .map(|u| {
                u.iter()
                    .filter(|u| u.score >= params.hot_threshold)
                    .map(|u| u.size as u64)
                    .sum()
            })
            .collect();
        let mode = if policy == Policy::None {
            Shares::Equal
        } else {
            params.shares
        };
        let shares = divide(&demands, fast_pages, mode);
        for (g, st) in states.iter_mut().enumerate() {
            if !active[g] {
                continue;
            }
            st.share_sum += shares[g] as f64;
            st.intervals += 1;
            if policy != Policy::None || st.nfast > shares[g] {
                place(
                    st,
                    std::mem::take(&mut us[g]),
                    shares[g],
                    grain,
                    params,
                    policy,
                );
            }
            for &p in &guests[g].1.intervals[k].pages {
                let Some(q) = spaces[g].index(p) else {
                    continue;
                };
                if !st.allocated[q] {
                    let range = if grain == Grain::Small {
                        q..q + 1
                    } else {
                        q / HUGE * HUGE..q / HUGE * HUGE + HUGE
                    };
                    let to_fast = st.nfast + range.len() as u64 <= shares[g];
                    for x in range {
                        st.allocated[x] = true;
                        if to_fast && !st.fast[x] {
                            st.fast[x] = true;
                            st.nfast += 1;
                        }
                    }
                }
                st.accesses += 1;
                if st.fast[q] {
                    st.hits += 1;
                    st.cost += 1.0;
                } else {
                    st.cost += r;
                }
            }
        }
    }
    let gr: Vec<GuestResult> = guests
        .iter()
        .zip(&states)
        .map(|((name, _), st)| GuestResult {
            guest: name.clone(),
            accesses: st.accesses,
            cost: st.cost,
            slowdown: if st.accesses == 0 {
                1.0
            } else {
                st.cost / st.accesses as f64
            },
            fast_hit_fraction: if st.accesses == 0 {
                0.0
            } else {
                st.hits as f64 / st.accesses as f64
            },
            migrated_pages: st.migrated,
            mean_share_pages: if st.intervals == 0 {
                0.0
            } else {
                st.share_sum / st.intervals as f64
            },
        })
        .collect();
    let acc: u64 = gr.iter().map(|g| g.accesses).sum();
    let cost: f64 = gr.iter().map(|g| g.cost).sum();
    let hits: u64 = states.iter().map(|s| s.hits).sum();
    let moved: u64 = gr.iter().map(|g| g.migrated_pages).sum();
    PolicyResult {
        policy,
        grain,
        slowdown: if acc == 0 { 1.0 } else { cost / acc as f64 },
        fast_hit_fraction: if acc == 0 {
            0.0
        } else {
            hits as f64 / acc as f64
        },
        migrated_mib: moved as f64 / 256.0,
        guests: gr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divide_shares() {
        assert_eq!(divide(&[1, 1], 5, Shares::Equal), vec![3, 2]);
        assert_eq!(divide(&[1, 2], 5, Shares::Demand), vec![2, 3]);
        assert_eq!(divide(&[2, 1], 2, Shares::Demand), vec![1, 1]);
        assert_eq!(divide(&[3, 1], 2, Shares::Demand), vec![2, 0]);
        assert_eq!(divide(&[0, 0], 4, Shares::Demand), vec![2, 2]);
    }

    #[test]
    fn signal_sums() {
        // Key 7 dirty in intervals 0, 1, 3; λ = 0.5.
        let sets: Vec<&[u64]> = vec![&[7], &[7], &[], &[7]];
        let s = Signal::new(&sets, 0.5);
        assert_eq!(s.past(0, 0), 0.0);
        assert!((s.past(0, 2) - 1.5).abs() < 1e-12);
        assert!((s.past(0, 4) - (1.5 * 0.25 + 1.0)).abs() < 1e-12);
        assert!((s.future(0, 0) - (1.0 + 0.5 + 0.125)).abs() < 1e-12);
        assert!((s.future(0, 2) - 0.5).abs() < 1e-12);
        assert_eq!(s.future(0, 4), 0.0);
        let (mut cp, mut cf) = (0, 0);
        for k in 0..6 {
            assert_eq!(s.score(0, k, Policy::Temperature, &mut cp), s.past(0, k));
            assert_eq!(s.score(0, k, Policy::Oracle, &mut cf), s.future(0, k));
        }
    }

    #[test]
    fn bad_params() {
        let l = HotnessLog::new(1, 1.0, "t", vec![(0, 1 << 20)]).unwrap();
        let g = vec![("g".to_string(), &l)];
        for p in [
            Params {
                latency_ratio: 0.5,
                ..Params::default()
            },
            Params {
                fast: FastCapacity::Fraction(1.5),
                ..Params::default()
            },
            Params {
                migration_cost: -1.0,
                ..Params::default()
            },
            Params {
                merge_fraction: 0.0,
                ..Params::default()
            },
        ] {
            assert!(simulate(&g, &p).is_err());
        }
        assert!(simulate(&[], &Params::default()).is_err());
    }
}
