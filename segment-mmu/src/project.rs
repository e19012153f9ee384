//! Calibration and projection: turns model replays (counts of walk references, VM exits,
//! ...) into runtimes, calibrated against measured runs, and projects every MMU design.
//!
//! The replay engine ([`crate::replay`]) counts what each design's hardware would do for
//! a stream; it does not know how long one walk reference takes on a given machine (that
//! depends on where page-table entries sit in the cache hierarchy and on how much of the
//! walk the out-of-order core hides). This module learns that from measured runs, in the
//! manner of Basu et al. (ISCA'13, "Efficient virtual memory for big memory servers") and
//! Gandhi et al. (MICRO'14, "Efficient memory virtualization"): runtime is an ideal part
//! that translation does not affect plus a translation part proportional to the work the
//! MMU does.
//!
//! # The model
//!
//! For a run `r` of workload group `g` (same workload and footprint; see below) whose
//! stream, replayed through design `d` over the run's page tables, spends per
//! operation `R` walk memory references, `X` VM exits, `L` L2-TLB hits and `B`
//! base-bound computations:
//!
//! ```text
//! t(r, d) = I_g + a_g·R + b·X + (c_l2·L + c_bb·B) / f      [ns/op]
//! ```
//!
//! * `I_g`: ns/op of the workload when translation and exits are free (one per group);
//! * `a_g = c_ref,g / f`: ns per walk reference. A group with [`Slope::Own`] fits its own
//!   (a dependent pointer chase pays each reference in full, GUPS overlaps the walks of
//!   independent updates, so one shared value would misfit both); a group with
//!   [`Slope::Pooled`] takes the pooled slope of the own-slope groups: its translation
//!   part is below its noise (`stream`: one walk per 512 elements per array) or moves
//!   together with its exits (`touch`: every 4 KiB guest page is both a walk and a
//!   shadow fault), so its own data cannot separate the two;
//! * `b = c_exit / f`: ns per VM exit, shared by every group;
//! * `c_l2`, `c_bb`: cycles per L2-TLB hit and per base-bound computation: fixed at the
//!   model's latencies ([`crate::tlb::Costs`]), being too small to calibrate;
//! * `f`: cycles per nanosecond (the host's TSC frequency in GHz).
//!
//! `X` of a measured run is best taken from the run itself (KVM's exit counter over the
//! timed part, per operation); `X` of a projected design comes from its replay. The
//! caller decides; this module only fits numbers.
//!
//! # Calibration
//!
//! With `y_r` the measured ns/op and `y'_r = y_r − (c_l2·L_r + c_bb·B_r)/f`, and bars
//! denoting group means:
//!
//! 1. Own-slope groups (policy [`Slope::Own`] and references spanning at least
//!    [`MIN_REF_SPREAD`] per operation over two or more runs): per group the centred
//!    sums `S_rr = Σ(R−R̄)²`, `S_rx = Σ(R−R̄)(X−X̄)`, `S_ry = Σ(R−R̄)(y'−ȳ')`; pooled over
//!    them `α = ΣS_ry / ΣS_rr`, `β = ΣS_rx / ΣS_rr`, so that the pooled slope given `b`
//!    is `a(b) = α − β·b`. No own-slope group: [`Error::Unidentifiable`].
//! 2. `b` minimises the squared residuals of the runs of the groups whose exits span at
//!    least [`MIN_EXIT_SPREAD`] per operation (the others' exit differences are
//!    counting jitter, which would only let their noise into `b`), with every group's
//!    intercept and slope partialled out (Frisch–Waugh): for own-slope groups `x̃ = X−X̄ −
//!    (S_rx/S_rr)(R−R̄)`, `ỹ = y'−ȳ' − (S_ry/S_rr)(R−R̄)`; for the other groups
//!    `x̃ = X−X̄ − β(R−R̄)`, `ỹ = y'−ȳ' − α(R−R̄)`; `b = Σx̃ỹ / Σx̃²`. When no group's exits
//!    span [`MIN_EXIT_SPREAD`] per operation (no run exercises exits differently from
//!    its group's others), or the fit is negative, `b` cannot be learnt: it is set to
//!    the prior (`prior_exit_cycles`) and reported as [`Source::Assumed`]. Its standard
//!    error is `σ/√Σx̃²` with `σ²` the residual variance of the runs of the groups whose
//!    exits vary (degrees of freedom: those runs − their groups − 1).
//! 3. The pooled slope `a = max(0, α − β·b)`.
//! 4. Per group, with `y'' = y' − b·X`: own-slope groups `a_g = Σ(R−R̄)(y''−ȳ'') /
//!    Σ(R−R̄)²` (negative: clamped to 0 and flagged), the others `a_g = a`; then
//!    `I_g = ȳ'' − a_g·R̄`.
//!
//! Synthetic rows generated from known `I_g`, `a_g` and `b` are recovered exactly
//! (`tests::recovers_a_known_exit_cost_next_to_known_walk_costs`).
//!
//! # Error
//!
//! A run is *checked* by predicting it from a calibration that did not see it: either a
//! held-out split (e.g. calibrate on the THP-backed runs, predict the 4 KiB- and
//! hugetlbfs-backed ones) or leave-one-out. The relative error `(predicted − measured) /
//! measured` is the model's error on that run ([`checked_errors`]).

use serde::Serialize;

use crate::designs::DesignReport;

pub mod plot;
pub mod report;
pub mod workload;

/// Default cycles per VM exit used when the measured runs cannot determine it (the
/// model's documented default, [`crate::tlb::Costs`]).
pub const PRIOR_EXIT_CYCLES: f64 = 2000.0;

/// Errors of calibration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// No usable calibration run.
    #[error("no measured run to calibrate on")]
    NoRuns,
    /// A measured value or frequency is not a positive finite number.
    #[error("{0}: not a positive finite number")]
    BadNumber(String),
    /// Reference counts do not vary inside any group: cycles per reference cannot be
    /// learnt.
    #[error("cannot calibrate cycles per walk reference: inside every workload the calibration runs have the same reference count (need runs that differ in page size or environment)")]
    Unidentifiable,
}

/// What a design spends per operation (from a replay).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Features {
    /// Walk memory references per operation.
    pub refs: f64,
    /// VM exits per operation.
    pub exits: f64,
    /// L2-TLB hits per operation.
    pub l2_hits: f64,
    /// Base-bound computations per operation.
    pub base_bound: f64,
}

impl Features {
    /// Per-access rates of a replay report (one operation = one access for the streams
    /// the projection replays: a chase step is one load, a GUPS update one
    /// read-modify-write). `None` when the report replayed nothing.
    pub fn from_report(r: &DesignReport) -> Option<Self> {
        let n = r.accesses.checked_sub(r.faults).filter(|&n| n > 0)? as f64;
        Some(Self {
            refs: r.refs as f64 / n,
            exits: r.vm_exits as f64 / n,
            l2_hits: r.l2_hits as f64 / n,
            base_bound: r.base_bound_ops as f64 / n,
        })
    }
}

impl Features {
    /// Steady-state per-access rates: the counts of the accesses between a warm-up
    /// replay (`warm`, the stream's first W accesses) and a longer replay of the same
    /// stream (`full`, its first W+N), i.e. of accesses W..W+N. The measured runs time
    /// a warm loop (the data was touched first, so TLBs, page-walk caches and shadow
    /// tables are filled); counting from a cold start would charge compulsory misses
    /// and shadow fills that the timed part never paid. `None` when `full` did not
    /// replay more accesses than `warm` or the reports are of different designs.
    pub fn steady(warm: &DesignReport, full: &DesignReport) -> Option<Self> {
        if warm.name != full.name {
            return None;
        }
        let d = |a: u64, b: u64| b.checked_sub(a);
        Self::from_report(&DesignReport {
            accesses: d(warm.accesses, full.accesses)?,
            faults: d(warm.faults, full.faults)?,
            refs: d(warm.refs, full.refs)?,
            vm_exits: d(warm.vm_exits, full.vm_exits)?,
            l2_hits: d(warm.l2_hits, full.l2_hits)?,
            base_bound_ops: d(warm.base_bound_ops, full.base_bound_ops)?,
            ..full.clone()
        })
    }
}

impl Features {
    /// Steady-state counts per *operation*: like [`Features::steady`], but divided by
    /// `ops`, the operations the W..W+N window holds, instead of by its accesses. The
    /// bench reports ns per operation, and an operation is not always one access (a
    /// triad element is three, a ptchurn cycle two accesses and two page-table writes).
    /// `None` when `ops` is zero, the reports are of different designs, or `full` did
    /// not replay past `warm`.
    pub fn per_op(warm: &DesignReport, full: &DesignReport, ops: u64) -> Option<Self> {
        if warm.name != full.name || ops == 0 {
            return None;
        }
        let d = |a: u64, b: u64| b.checked_sub(a).map(|x| x as f64 / ops as f64);
        if full.accesses <= warm.accesses {
            return None;
        }
        Some(Self {
            refs: d(warm.refs, full.refs)?,
            exits: d(warm.vm_exits, full.vm_exits)?,
            l2_hits: d(warm.l2_hits, full.l2_hits)?,
            base_bound: d(warm.base_bound_ops, full.base_bound_ops)?,
        })
    }
}

/// How a group's cycles per walk reference are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Slope {
    /// Fitted from the group's own runs (when their references vary enough): for
    /// translation-bound workloads.
    #[default]
    Own,
    /// The pooled slope of the own-slope groups: for workloads whose translation part
    /// is below their noise or moves with their exits.
    Pooled,
}

/// One measured run.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Observation {
    /// Group sharing the ideal runtime (e.g. `chase/256M`).
    pub group: String,
    /// Measured ns per operation.
    pub measured_ns: f64,
    /// What the model says this run's translation spent (exits: best the measured ones).
    pub features: Features,
    /// How its group's walk cost is obtained (the first run of a group decides).
    pub slope: Slope,
}

/// Fixed parameters of a calibration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Config {
    /// Cycles per nanosecond (GHz).
    pub ghz: f64,
    /// Cycles per L2-TLB hit (fixed).
    pub l2_hit_cycles: f64,
    /// Cycles per base-bound computation (fixed).
    pub base_bound_cycles: f64,
    /// Cycles per VM exit when it cannot be calibrated.
    pub prior_exit_cycles: f64,
}

impl Config {
    /// The model's default latencies at `ghz`.
    pub fn new(ghz: f64) -> Self {
        let c = crate::tlb::Costs::default();
        Self {
            ghz,
            l2_hit_cycles: c.l2_hit_cycles,
            base_bound_cycles: c.base_bound_cycles,
            prior_exit_cycles: PRIOR_EXIT_CYCLES,
        }
    }

    fn fixed_ns(&self, x: &Features) -> f64 {
        (self.l2_hit_cycles * x.l2_hits + self.base_bound_cycles * x.base_bound) / self.ghz
    }
}

/// Where a calibrated cost came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Fitted to the measured runs.
    Calibrated,
    /// The group could not determine it; the pooled value is used.
    Pooled,
    /// Fitted negative (noise above the effect): clamped to zero.
    ClampedToZero,
    /// Not determinable from these runs: the prior is used.
    Assumed,
}

/// The fit of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupFit {
    /// Group name.
    pub group: String,
    /// Ideal ns/op (translation free).
    pub ideal_ns_per_op: f64,
    /// Nanoseconds per walk reference.
    pub ns_per_ref: f64,
    /// Cycles per walk reference (`ns_per_ref · f`).
    pub cycles_per_ref: f64,
    /// How `ns_per_ref` was obtained.
    pub ref_cost: Source,
    /// The group's slope policy.
    pub slope: Slope,
    /// Calibration runs in the group.
    pub runs: usize,
}

/// A calibrated model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Fixed parameters.
    pub config: Config,
    /// Per group.
    pub groups: Vec<GroupFit>,
    /// Pooled nanoseconds per walk reference (all groups together).
    pub pooled_ns_per_ref: f64,
    /// Nanoseconds per VM exit.
    pub ns_per_exit: f64,
    /// Cycles per VM exit.
    pub cycles_per_exit: f64,
    /// How the exit cost was obtained.
    pub exit_cost: Source,
    /// Standard error of the fitted exit cost, cycles (`None` when assumed or when
    /// there are no degrees of freedom left).
    pub exit_stderr_cycles: Option<f64>,
    /// Runs in the groups whose exits vary (the runs that determine the exit cost).
    pub exit_fit_runs: usize,
    /// Root-mean-square residual of those runs, ns/op (`None` when there are none).
    pub exit_fit_rms_ns: Option<f64>,
    /// Root-mean-square residual over the calibration runs, ns/op.
    pub rms_residual_ns: f64,
    /// Calibration runs.
    pub runs: usize,
}

/// Smallest spread of VM exits per operation (one per 100 operations) inside some group
/// for the exit cost to be fitted: below that, exits are a rounding error of the replay
/// (a few pages not yet shadowed) and a fit would divide measurement noise by them.
pub const MIN_EXIT_SPREAD: f64 = 0.01;

/// Smallest spread of references per operation (max − min) inside a group for the
/// group to determine its own cycles per reference. Runs closer than that differ by
/// less than a tenth of a reference per operation: a slope through them would be
/// measurement noise divided by almost nothing, and extrapolating it to a 24-reference
/// nested walk would be meaningless. Such groups take the pooled slope.
pub const MIN_REF_SPREAD: f64 = 0.1;

fn check(obs: &[Observation], cfg: &Config) -> Result<(), Error> {
    if !(cfg.ghz.is_finite() && cfg.ghz > 0.0) {
        return Err(Error::BadNumber(format!("frequency {} GHz", cfg.ghz)));
    }
    if obs.is_empty() {
        return Err(Error::NoRuns);
    }
    for o in obs {
        if !(o.measured_ns.is_finite() && o.measured_ns > 0.0) {
            return Err(Error::BadNumber(format!(
                "measured ns/op {} of group {}",
                o.measured_ns, o.group
            )));
        }
        let f = o.features;
        if [f.refs, f.exits, f.l2_hits, f.base_bound]
            .iter()
            .any(|v| !v.is_finite() || *v < 0.0)
        {
            return Err(Error::BadNumber(format!(
                "model counts of a {} run",
                o.group
            )));
        }
    }
    Ok(())
}

/// Groups in first-seen order with the indices of their observations.
fn groups(obs: &[Observation]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, o) in obs.iter().enumerate() {
        match out.iter_mut().find(|(g, _)| *g == o.group) {
            Some((_, v)) => v.push(i),
            None => out.push((o.group.clone(), vec![i])),
        }
    }
    out
}

fn mean(idx: &[usize], f: impl Fn(usize) -> f64) -> f64 {
    idx.iter().map(|&i| f(i)).sum::<f64>() / idx.len() as f64
}

fn spread(obs: &[Observation], idx: &[usize], f: impl Fn(&Features) -> f64) -> f64 {
    let (lo, hi) = idx
        .iter()
        .map(|&i| f(&obs[i].features))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    hi - lo
}

/// Calibrates the model on `obs` (see the module docs for the equations).
pub fn calibrate(obs: &[Observation], cfg: &Config) -> Result<Calibration, Error> {
    check(obs, cfg)?;
    let y1: Vec<f64> = obs
        .iter()
        .map(|o| o.measured_ns - cfg.fixed_ns(&o.features))
        .collect();
    let gs = groups(obs);
    // A group fits its own slope when it asks to and its references vary enough.
    let own = |idx: &[usize]| {
        obs[idx[0]].slope == Slope::Own
            && idx.len() >= 2
            && spread(obs, idx, |f| f.refs) >= MIN_REF_SPREAD
    };
    // Centred sums per group: (R̄, X̄, ȳ', S_rr, S_rx, S_ry).
    let sums: Vec<(f64, f64, f64, f64, f64, f64)> = gs
        .iter()
        .map(|(_, idx)| {
            let rm = mean(idx, |i| obs[i].features.refs);
            let xm = mean(idx, |i| obs[i].features.exits);
            let ym = mean(idx, |i| y1[i]);
            let (mut s_rr, mut s_rx, mut s_ry) = (0.0, 0.0, 0.0);
            for &i in idx {
                let r = obs[i].features.refs - rm;
                s_rr += r * r;
                s_rx += r * (obs[i].features.exits - xm);
                s_ry += r * (y1[i] - ym);
            }
            (rm, xm, ym, s_rr, s_rx, s_ry)
        })
        .collect();
    // Step 1: the pooled slope as a function of b, a(b) = α − β·b.
    let (mut p_rr, mut p_rx, mut p_ry) = (0.0, 0.0, 0.0);
    for ((_, idx), s) in gs.iter().zip(&sums) {
        if own(idx) {
            p_rr += s.3;
            p_rx += s.4;
            p_ry += s.5;
        }
    }
    if p_rr == 0.0 {
        return Err(Error::Unidentifiable);
    }
    let (alpha, beta) = (p_ry / p_rr, p_rx / p_rr);
    // Step 2: b from the within-group exit variation of the groups whose exits vary,
    // slopes partialled out. Groups whose exits differ by less than MIN_EXIT_SPREAD per
    // operation are left out: their differences are counting jitter (a few exits in
    // thousands of operations) and would only let their noise leak into b.
    let ef = fit_exit_cost(obs, cfg, &y1, &gs, &sums, &own, (alpha, beta));
    let (b, exit_cost) = (ef.b, ef.source);
    // Step 3: the pooled slope at that b.
    let pooled = (alpha - beta * b).max(0.0);
    // Step 4: per-group slope and intercept.
    let y2: Vec<f64> = obs
        .iter()
        .zip(&y1)
        .map(|(o, y)| y - b * o.features.exits)
        .collect();
    let fits = gs
        .iter()
        .map(|(name, idx)| group_fit(obs, cfg, (name, idx), &y2, own(idx), pooled))
        .collect();
    let mut cal = Calibration {
        config: *cfg,
        groups: fits,
        pooled_ns_per_ref: pooled,
        ns_per_exit: b,
        cycles_per_exit: b * cfg.ghz,
        exit_cost,
        exit_stderr_cycles: None,
        exit_fit_runs: ef.runs.len(),
        exit_fit_rms_ns: None,
        rms_residual_ns: 0.0,
        runs: obs.len(),
    };
    residual_stats(&mut cal, obs, &ef);
    Ok(cal)
}

/// Step 4 of [`calibrate`]: one group's slope (its own when `own`, else `pooled`) and
/// intercept, on `y2` (measured time less fixed and exit costs).
fn group_fit(
    obs: &[Observation],
    cfg: &Config,
    (name, idx): (&str, &[usize]),
    y2: &[f64],
    own: bool,
    pooled: f64,
) -> GroupFit {
    let rm = mean(idx, |i| obs[i].features.refs);
    let ym = mean(idx, |i| y2[i]);
    let (a, src) = if own {
        let (mut s_rr, mut s_ry) = (0.0, 0.0);
        for &i in idx {
            let r = obs[i].features.refs - rm;
            s_rr += r * r;
            s_ry += r * (y2[i] - ym);
        }
        let a = s_ry / s_rr;
        if a >= 0.0 {
            (a, Source::Calibrated)
        } else {
            (0.0, Source::ClampedToZero)
        }
    } else {
        (pooled, Source::Pooled)
    };
    GroupFit {
        group: name.to_string(),
        ideal_ns_per_op: ym - a * rm,
        ns_per_ref: a,
        cycles_per_ref: a * cfg.ghz,
        ref_cost: src,
        slope: obs[idx[0]].slope,
        runs: idx.len(),
    }
}

/// Step 2 of [`calibrate`]: the exit cost and the runs that determine it.
#[derive(Debug)]
struct ExitFit {
    /// ns per exit.
    b: f64,
    /// Calibrated or assumed.
    source: Source,
    /// Σ x̃² over the runs that determine b.
    sxx: f64,
    /// Those runs.
    runs: Vec<usize>,
    /// Their groups.
    groups: usize,
}

/// Centred sums of one group: (R̄, X̄, ȳ', S_rr, S_rx, S_ry).
type Sums = (f64, f64, f64, f64, f64, f64);

/// b from the within-group exit variation of the groups whose exits vary, slopes
/// partialled out (own slopes where `own`, else the pooled a(b) = α − β·b). Groups whose
/// exits differ by less than MIN_EXIT_SPREAD per operation are left out: their
/// differences are counting jitter (a few exits in thousands of operations) and would
/// only let their noise leak into b.
fn fit_exit_cost(
    obs: &[Observation],
    cfg: &Config,
    y1: &[f64],
    gs: &[(String, Vec<usize>)],
    sums: &[Sums],
    own: &dyn Fn(&[usize]) -> bool,
    (alpha, beta): (f64, f64),
) -> ExitFit {
    let (mut sxx, mut sxy, mut xscale) = (0.0, 0.0, 0.0f64);
    let mut exit_runs: Vec<usize> = Vec::new();
    let mut exit_groups = 0usize;
    for ((_, idx), &(rm, xm, ym, s_rr, s_rx, s_ry)) in gs.iter().zip(sums) {
        if idx.len() < 2 || spread(obs, idx, |f| f.exits) < MIN_EXIT_SPREAD {
            continue;
        }
        exit_groups += 1;
        exit_runs.extend(idx);
        let (kx, ky) = if own(idx) {
            (s_rx / s_rr, s_ry / s_rr)
        } else {
            (beta, alpha)
        };
        for &i in idx {
            let r = obs[i].features.refs - rm;
            let xt = obs[i].features.exits - xm - kx * r;
            let yt = y1[i] - ym - ky * r;
            sxx += xt * xt;
            sxy += xt * yt;
            xscale = xscale.max(obs[i].features.exits.abs());
        }
    }
    let prior_b = cfg.prior_exit_cycles / cfg.ghz;
    let (mut b, mut exit_cost) = (prior_b, Source::Assumed);
    if !exit_runs.is_empty() && xscale > 0.0 && sxx > 1e-9 * xscale * xscale {
        let fitted = sxy / sxx;
        if fitted >= 0.0 {
            b = fitted;
            exit_cost = Source::Calibrated;
        }
    }
    ExitFit {
        b,
        source: exit_cost,
        sxx,
        runs: exit_runs,
        groups: exit_groups,
    }
}

/// The fit's residuals: overall rms, rms over the runs that determine b, and b's
/// standard error.
fn residual_stats(cal: &mut Calibration, obs: &[Observation], ef: &ExitFit) {
    let resid: Vec<f64> = obs
        .iter()
        .map(|o| {
            cal.predict(&o.group, &o.features)
                .map_or(0.0, |p| p - o.measured_ns)
        })
        .collect();
    let ss: f64 = resid.iter().map(|r| r * r).sum();
    cal.rms_residual_ns = (ss / obs.len() as f64).sqrt();
    if !ef.runs.is_empty() {
        let se: f64 = ef.runs.iter().map(|&i| resid[i] * resid[i]).sum();
        cal.exit_fit_rms_ns = Some((se / ef.runs.len() as f64).sqrt());
        // Standard error from the runs that determine b: their residual variance over
        // their degrees of freedom (runs − their groups' intercepts − b; their slopes
        // are own-slope partials or the pooled one, counted as known).
        let dof = ef.runs.len().saturating_sub(ef.groups + 1);
        if ef.source == Source::Calibrated && dof > 0 {
            cal.exit_stderr_cycles = Some((se / dof as f64 / ef.sxx).sqrt() * cal.config.ghz);
        }
    }
}

impl Calibration {
    /// The fit of `group`.
    pub fn group(&self, group: &str) -> Option<&GroupFit> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// Predicted ns/op of a run of `group` whose translation spends `x` per operation;
    /// `None` when the calibration saw no run of that group (its ideal time is unknown).
    pub fn predict(&self, group: &str, x: &Features) -> Option<f64> {
        let g = self.group(group)?;
        Some(
            g.ideal_ns_per_op
                + g.ns_per_ref * x.refs
                + self.ns_per_exit * x.exits
                + self.config.fixed_ns(x),
        )
    }

    /// The translation part of [`Calibration::predict`], ns/op.
    pub fn translation_ns(&self, group: &str, x: &Features) -> Option<f64> {
        Some(self.predict(group, x)? - self.group(group)?.ideal_ns_per_op)
    }
}

/// How a run's error was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Predicted from the calibration on the other split.
    HeldOut,
    /// Predicted from a calibration on every other run.
    LeaveOneOut,
}

/// One run's checked prediction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Checked {
    /// Predicted ns/op.
    pub predicted_ns: f64,
    /// `(predicted − measured) / measured`.
    pub relative_error: f64,
    /// How.
    pub check: Check,
}

/// Checks every run against a calibration that did not see it: runs with
/// `in_calibration[i] == false` are predicted from the calibration on the runs with
/// `true` (held out); runs in the calibration split are checked leave-one-out within
/// that split. `None` where the run cannot be checked (its group has no other run in
/// the calibration, cannot determine its own cycles per reference without it, the exit
/// cost is no longer determined without it, or that calibration is not identifiable).
pub fn checked_errors(
    obs: &[Observation],
    in_calibration: &[bool],
    cfg: &Config,
) -> Vec<Option<Checked>> {
    let split: Vec<Observation> = obs
        .iter()
        .zip(in_calibration)
        .filter(|(_, &c)| c)
        .map(|(o, _)| o.clone())
        .collect();
    let main = calibrate(&split, cfg).ok();
    let mut split_at = 0usize;
    obs.iter()
        .zip(in_calibration)
        .map(|(o, &c)| {
            let (cal, check) = if c {
                let rest: Vec<Observation> = split
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != split_at)
                    .map(|(_, x)| x.clone())
                    .collect();
                split_at += 1;
                (calibrate(&rest, cfg).ok(), Check::LeaveOneOut)
            } else {
                (main.clone(), Check::HeldOut)
            };
            let cal = cal?;
            // A group that should fit its own slope but could not without this run
            // borrowed the pooled one (other workloads' cost): not a check of this
            // workload's model. Likewise a run without which the exit cost is no
            // longer determined (it would be checked against the prior, not the fit).
            if o.slope == Slope::Own && cal.group(&o.group)?.ref_cost == Source::Pooled {
                return None;
            }
            if check == Check::LeaveOneOut
                && main.as_ref().map(|m| m.exit_cost) == Some(Source::Calibrated)
                && cal.exit_cost != Source::Calibrated
            {
                return None;
            }
            let p = cal.predict(&o.group, &o.features)?;
            Some(Checked {
                predicted_ns: p,
                relative_error: (p - o.measured_ns) / o.measured_ns,
                check,
            })
        })
        .collect()
}

/// Mean and largest absolute relative error of the checked runs.
pub fn error_summary(errors: &[Option<Checked>]) -> Option<(f64, f64, usize)> {
    let v: Vec<f64> = errors
        .iter()
        .flatten()
        .map(|c| c.relative_error.abs())
        .collect();
    if v.is_empty() {
        return None;
    }
    let max = v.iter().copied().fold(0.0, f64::max);
    Some((v.iter().sum::<f64>() / v.len() as f64, max, v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(g: &str, refs: f64, exits: f64, y: f64) -> Observation {
        Observation {
            group: g.into(),
            measured_ns: y,
            features: Features {
                refs,
                exits,
                l2_hits: 0.0,
                base_bound: 0.0,
            },
            slope: Slope::Own,
        }
    }

    fn pooled(g: &str, refs: f64, exits: f64, y: f64) -> Observation {
        Observation {
            slope: Slope::Pooled,
            ..obs(g, refs, exits, y)
        }
    }

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn recovers_a_known_exit_cost_next_to_known_walk_costs() {
        // Truth at 2.5 GHz: chase ideal 150 ns, 40 cycles/ref; GUPS ideal 15 ns, 10
        // cycles/ref; every exit 7000 cycles. Chase and GUPS barely exit (as measured:
        // a few hundred exits in millions of operations); touch exits once per 4 KiB
        // guest page and takes the pooled walk cost; ptchurn exits 5 times per cycle in
        // every run (no variation: it cannot inform b, only its own intercept).
        let cfg = Config {
            ghz: 2.5,
            l2_hit_cycles: 8.0,
            base_bound_cycles: 1.0,
            prior_exit_cycles: 2000.0,
        };
        let b_true = 7000.0 / 2.5;
        let chase = [(2.1, 1e-5), (0.4, 2e-5), (0.05, 0.0), (2.3, 4e-5)];
        let gups = [(3.2, 1e-5), (0.9, 0.0), (0.02, 3e-5), (3.0, 0.0)];
        let (mut rr, mut ry) = (0.0, 0.0);
        for (pts, a) in [(&chase, 40.0 / 2.5), (&gups, 10.0 / 2.5)] {
            let m = pts.iter().map(|p| p.0).sum::<f64>() / pts.len() as f64;
            for p in pts.iter() {
                rr += (p.0 - m) * (p.0 - m);
                ry += (p.0 - m) * (p.0 - m) * a;
            }
        }
        // The pooled slope is the S_rr-weighted mean of the own slopes.
        let a_pool = ry / rr;
        let mut o = Vec::new();
        let truth = |i: f64, a: f64, f: &Features| {
            i + a * f.refs + b_true * f.exits + (8.0 * f.l2_hits + f.base_bound) / 2.5
        };
        let mut push = |g: &str, slope: Slope, i: f64, a: f64, refs: f64, exits: f64, l2: f64| {
            let features = Features {
                refs,
                exits,
                l2_hits: l2,
                base_bound: 0.1 * l2,
            };
            o.push(Observation {
                group: g.into(),
                measured_ns: truth(i, a, &features),
                features,
                slope,
            });
        };
        for &(r, x) in &chase {
            push("chase", Slope::Own, 150.0, 16.0, r, x, 0.3 * r);
        }
        for &(r, x) in &gups {
            push("gups", Slope::Own, 15.0, 4.0, r, x, 0.1);
        }
        for &(r, x) in &[
            (1.9, 1.0),
            (0.004, 1.0 / 512.0),
            (2.0, 1.0),
            (0.01, 1.0 / 8.0),
        ] {
            push("touch", Slope::Pooled, 11.0, a_pool, r, x, 0.0);
        }
        for &(r, x) in &[(1.0, 5.0), (1.2, 5.0)] {
            push("ptchurn", Slope::Pooled, 30_000.0, a_pool, r, x, 0.0);
        }
        let c = calibrate(&o, &cfg).unwrap();
        assert_eq!(c.exit_cost, Source::Calibrated);
        assert!(rel(c.cycles_per_exit, 7000.0) < 1e-6, "{c:?}");
        assert!(rel(c.pooled_ns_per_ref, a_pool) < 1e-6, "{c:?}");
        for (g, i, cyc) in [
            ("chase", 150.0, 40.0),
            ("gups", 15.0, 10.0),
            ("touch", 11.0, a_pool * 2.5),
            ("ptchurn", 30_000.0, a_pool * 2.5),
        ] {
            let f = c.group(g).unwrap();
            assert!(
                rel(f.ideal_ns_per_op, i) < 1e-6 && rel(f.cycles_per_ref, cyc) < 1e-6,
                "{f:?}"
            );
        }
        assert_eq!(c.group("touch").unwrap().ref_cost, Source::Pooled);
        // Noise-free: no residual, and the fit is exact to rounding.
        assert!(c.rms_residual_ns < 1e-6 && c.exit_fit_runs == 4, "{c:?}");
        assert!(c.exit_stderr_cycles.unwrap() < 1e-6, "{c:?}");
        // Every run checks nearly exactly: leaving a chase or GUPS run out moves the
        // pooled slope (an S_rr-weighted mean) that touch borrows, hence b, a little.
        for e in checked_errors(&o, &vec![true; o.len()], &cfg)
            .iter()
            .flatten()
        {
            assert!(e.relative_error.abs() < 1e-4, "{e:?}");
        }
    }

    #[test]
    fn noisy_exit_fit_reports_its_error() {
        // Touch-like runs with ±2% noise around 3000 ns per exit.
        let o = vec![
            obs("chase", 0.1, 0.0, 100.0),
            obs("chase", 2.0, 0.0, 120.0),
            pooled("touch", 2.0, 1.0, 3060.0 + 10.0),
            pooled("touch", 2.0, 1.0, 2940.0 + 10.0),
            pooled("touch", 0.0, 0.002, 16.0),
        ];
        let c = calibrate(&o, &cfg()).unwrap();
        assert_eq!(c.exit_cost, Source::Calibrated);
        assert!(rel(c.ns_per_exit, 3000.0) < 0.01, "{c:?}");
        assert!(
            c.exit_fit_rms_ns.unwrap() > 10.0 && c.exit_fit_runs == 3,
            "{c:?}"
        );
        assert!(c.exit_stderr_cycles.is_some(), "{c:?}");
        // Leaving out the only low-exit touch run leaves b undetermined: unchecked.
        let e = checked_errors(&o, &[true; 5], &cfg());
        assert!(e[4].is_none() && e[2].is_some(), "{e:?}");
    }

    fn cfg() -> Config {
        Config {
            ghz: 2.0,
            l2_hit_cycles: 0.0,
            base_bound_cycles: 0.0,
            prior_exit_cycles: 2000.0,
        }
    }

    #[test]
    fn recovers_known_costs_exactly() {
        // Group A: ideal 100 ns, 40 cycles/ref (20 ns at 2 GHz); group B: ideal 10 ns,
        // 4 cycles/ref (2 ns); exits cost 3000 cycles (1500 ns) for both.
        let t = |i: f64, a: f64, r: f64, x: f64| i + a * r + 1500.0 * x;
        let o = vec![
            obs("A", 1.0, 0.0, t(100.0, 20.0, 1.0, 0.0)),
            obs("A", 4.0, 0.01, t(100.0, 20.0, 4.0, 0.01)),
            obs("A", 2.5, 0.0, t(100.0, 20.0, 2.5, 0.0)),
            obs("B", 0.5, 0.0, t(10.0, 2.0, 0.5, 0.0)),
            obs("B", 3.0, 0.02, t(10.0, 2.0, 3.0, 0.02)),
            obs("B", 6.0, 0.0, t(10.0, 2.0, 6.0, 0.0)),
        ];
        let c = calibrate(&o, &cfg()).unwrap();
        assert_eq!(c.exit_cost, Source::Calibrated);
        assert!((c.cycles_per_exit - 3000.0).abs() < 1e-6, "{c:?}");
        let a = c.group("A").unwrap();
        assert!(
            (a.ideal_ns_per_op - 100.0).abs() < 1e-9 && (a.cycles_per_ref - 40.0).abs() < 1e-9,
            "{a:?}"
        );
        let b = c.group("B").unwrap();
        assert!(
            (b.ideal_ns_per_op - 10.0).abs() < 1e-9 && (b.cycles_per_ref - 4.0).abs() < 1e-9,
            "{b:?}"
        );
        assert!(c.rms_residual_ns < 1e-9);
        // Projection of a design with 24 refs and 0 exits for A: 100 + 20*24.
        let p = c
            .predict(
                "A",
                &Features {
                    refs: 24.0,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!((p - 580.0).abs() < 1e-9);
        assert_eq!(c.predict("C", &Features::default()), None);
        // Every check is exact on noiseless data.
        let errs = checked_errors(&o, &[true; 6], &cfg());
        for e in &errs {
            let e = e.unwrap();
            assert!(e.relative_error.abs() < 1e-9, "{e:?}");
            assert_eq!(e.check, Check::LeaveOneOut);
        }
    }

    #[test]
    fn exits_without_variation_take_the_prior() {
        let o = vec![obs("A", 1.0, 0.0, 110.0), obs("A", 3.0, 0.0, 130.0)];
        let c = calibrate(&o, &cfg()).unwrap();
        assert_eq!((c.exit_cost, c.cycles_per_exit), (Source::Assumed, 2000.0));
        let g = c.group("A").unwrap();
        assert!((g.ns_per_ref - 10.0).abs() < 1e-9 && (g.ideal_ns_per_op - 100.0).abs() < 1e-9);
        // Projecting exits uses the prior: 1000 ns per exit at 2 GHz.
        let p = c
            .predict(
                "A",
                &Features {
                    refs: 1.0,
                    exits: 0.5,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!((p - (110.0 + 500.0)).abs() < 1e-9);
    }

    #[test]
    fn single_run_groups_pool_and_negative_slopes_clamp() {
        let o = vec![
            obs("A", 1.0, 0.0, 110.0),
            obs("A", 3.0, 0.0, 130.0),
            obs("B", 2.0, 0.0, 50.0),
            obs("C", 1.0, 0.0, 90.0),
            obs("C", 2.0, 0.0, 80.0),
        ];
        let c = calibrate(&o, &cfg()).unwrap();
        let b = c.group("B").unwrap();
        assert_eq!(b.ref_cost, Source::Pooled);
        assert!((b.ns_per_ref - c.pooled_ns_per_ref).abs() < 1e-12);
        assert!((b.ideal_ns_per_op - (50.0 - 2.0 * c.pooled_ns_per_ref)).abs() < 1e-9);
        let cc = c.group("C").unwrap();
        assert_eq!((cc.ref_cost, cc.ns_per_ref), (Source::ClampedToZero, 0.0));
        assert!((cc.ideal_ns_per_op - 85.0).abs() < 1e-9);
        // Checking B (or A without one of its two runs) would borrow other workloads'
        // cost: not a check.
        let e = checked_errors(&o, &[true; 5], &cfg());
        assert!(e[0].is_none() && e[1].is_none() && e[2].is_none());
        // Exits that barely vary (below MIN_EXIT_SPREAD) are not fitted.
        let o = vec![
            obs("A", 1.0, 0.0, 110.0),
            obs("A", 3.0, 0.001, 190.0),
            obs("A", 2.0, 0.0, 120.0),
        ];
        assert_eq!(calibrate(&o, &cfg()).unwrap().exit_cost, Source::Assumed);
    }

    #[test]
    fn held_out_split_predicts_the_other_backing() {
        // Linear truth with noise-free data: calibrate on "thp" (first three), predict
        // the "4k" run (refs 5) exactly.
        let o = vec![
            obs("A", 0.2, 0.0, 104.0),
            obs("A", 1.0, 0.0, 120.0),
            obs("A", 2.0, 0.0, 140.0),
            obs("A", 5.0, 0.0, 200.0),
        ];
        let errs = checked_errors(&o, &[true, true, true, false], &cfg());
        let held = errs[3].unwrap();
        assert_eq!(held.check, Check::HeldOut);
        assert!((held.predicted_ns - 200.0).abs() < 1e-9);
        // A 10% slower measurement shows up as a -9.09% error.
        let mut o2 = o.clone();
        o2[3].measured_ns = 220.0;
        let e = checked_errors(&o2, &[true, true, true, false], &cfg())[3].unwrap();
        assert!((e.relative_error - (200.0 / 220.0 - 1.0)).abs() < 1e-9);
        let (mean, max, n) =
            error_summary(&checked_errors(&o2, &[true, true, true, false], &cfg())).unwrap();
        assert_eq!(n, 4);
        assert!(max >= mean && (max - (1.0 - 200.0 / 220.0)).abs() < 1e-9);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        assert_eq!(calibrate(&[], &cfg()), Err(Error::NoRuns));
        assert!(matches!(
            calibrate(&[obs("A", 1.0, 0.0, f64::NAN)], &cfg()),
            Err(Error::BadNumber(_))
        ));
        assert!(matches!(
            calibrate(&[obs("A", 1.0, 0.0, 5.0)], &Config { ghz: 0.0, ..cfg() }),
            Err(Error::BadNumber(_))
        ));
        assert_eq!(
            calibrate(&[obs("A", 1.0, 0.0, 5.0), obs("A", 1.0, 0.0, 6.0)], &cfg()),
            Err(Error::Unidentifiable)
        );
        // A group with one run cannot be checked leave-one-out.
        let e = checked_errors(
            &[obs("A", 1.0, 0.0, 5.0), obs("A", 2.0, 0.0, 6.0)],
            &[true, true],
            &cfg(),
        );
        assert!(e.iter().all(Option::is_none));
    }

    #[test]
    fn features_from_a_report() {
        let r = DesignReport {
            name: "nested".into(),
            accesses: 110,
            l1_hits: 0,
            l2_hits: 20,
            walks: 80,
            refs: 400,
            refs_per_walk: 5.0,
            refs_histogram: vec![],
            base_bound_ops: 10,
            base_bound_per_walk: 0.0,
            vm_exits: 1,
            pt_writes: 0,
            faults: 10,
            cycles: 0.0,
            cycles_per_access: 0.0,
            escape_filter: None,
            switching: None,
        };
        let f = Features::from_report(&r).unwrap();
        assert_eq!(
            (f.refs, f.l2_hits, f.exits, f.base_bound),
            (4.0, 0.2, 0.01, 0.1)
        );
        let warm = DesignReport {
            accesses: 10,
            faults: 10,
            refs: 100,
            vm_exits: 1,
            l2_hits: 0,
            base_bound_ops: 0,
            ..r.clone()
        };
        let s = Features::steady(&warm, &r).unwrap();
        assert_eq!(
            (s.refs, s.exits, s.l2_hits, s.base_bound),
            (3.0, 0.0, 0.2, 0.1)
        );
        assert_eq!(Features::steady(&r, &warm), None);
        assert_eq!(
            Features::from_report(&DesignReport { accesses: 10, ..r }),
            None
        );
    }
}
