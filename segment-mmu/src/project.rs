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
//! For a run `r` of workload group `g` (same workload, footprint and operation count)
//! whose stream, replayed through design `d` over the run's page tables, spends per
//! operation `R` walk memory references, `X` VM exits, `L` L2-TLB hits and `B` base-bound
//! computations:
//!
//! ```text
//! t(r, d) = I_g + (c_ref,g · R + c_exit · X + c_l2 · L + c_bb · B) / f      [ns/op]
//! ```
//!
//! * `I_g`: ideal ns/op of the workload with free translation (one per group);
//! * `c_ref,g`: cycles per walk reference, per workload (a dependent pointer chase pays
//!   each reference in full; GUPS overlaps walks of independent updates, so one shared
//!   value would misfit both);
//! * `c_exit`: cycles per VM exit (shared);
//! * `c_l2`, `c_bb`: cycles per L2-TLB hit and per base-bound computation: fixed at the
//!   model's latencies ([`crate::tlb::Costs`]), being too small to calibrate;
//! * `f`: cycles per nanosecond (the host's TSC frequency in GHz).
//!
//! # Calibration
//!
//! With `y_r` the measured ns/op and `y'_r = y_r − (c_l2·L_r + c_bb·B_r)/f`:
//!
//! 1. `b = c_exit/f` minimises `Σ_r (y'_r − I_g − a_g·R_r − b·X_r)²` (one `I_g` and one
//!    `a_g` per group: the within-group, "fixed effects", least-squares estimator),
//!    computed by partialling out (Frisch–Waugh): inside each group whose `R` varies,
//!    `X` and `y'` are demeaned and regressed on `R`; `b` is the slope of the `y'`
//!    residuals on the `X` residuals. When `X` has no residual variation, or varies by
//!    less than [`MIN_EXIT_SPREAD`] inside every group (no run exercises exits, or
//!    exits move with `R`), `b` cannot be learnt: it is set to the
//!    prior (`prior_exit_cycles`, 2000 cycles) and reported as assumed; a negative fit
//!    is replaced by the prior likewise. The pooled slope `a = Σ_g (S_ry − b·S_rx) /
//!    Σ_g S_rr` over the same groups serves groups that cannot determine their own.
//! 2. per group, `a_g = Σ (R−R̄_g)(y''−ȳ''_g) / Σ (R−R̄_g)²` with `y'' = y' − b·X`; a group
//!    whose calibration runs span less than [`MIN_REF_SPREAD`] references per operation
//!    takes the pooled `a` (only groups with that spread enter steps 1 and 2). A negative slope
//!    (noise larger than the effect) is clamped to 0 and flagged.
//! 3. `I_g = ȳ''_g − a_g·R̄_g`.
//!
//! # Error
//!
//! A run is *checked* by predicting it from a calibration that did not see it: either a
//! held-out split (e.g. calibrate on the THP-backed runs, predict the 4 KiB- and
//! hugetlbfs-backed ones) or leave-one-out. The relative error `(predicted − measured) /
//! measured` is the model's error on that run ([`checked_errors`]).

use serde::Serialize;

use crate::designs::DesignReport;

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

/// One measured run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// Group sharing the ideal runtime (e.g. `chase/256M`).
    pub group: String,
    /// Measured ns per operation.
    pub measured_ns: f64,
    /// What the model says this run's translation spent.
    pub features: Features,
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

/// Calibrates the model on `obs` (see the module docs for the equations).
pub fn calibrate(obs: &[Observation], cfg: &Config) -> Result<Calibration, Error> {
    check(obs, cfg)?;
    let y1: Vec<f64> = obs
        .iter()
        .map(|o| o.measured_ns - cfg.fixed_ns(&o.features))
        .collect();
    let gs = groups(obs);
    // Step 1: the exit cost b, with every group's own reference slope partialled out
    // (Frisch–Waugh): within each group whose R varies, regress X and y' on R and keep
    // the residuals; b is the slope of the y' residuals on the X residuals.
    let varies = |idx: &[usize]| {
        let lo = idx
            .iter()
            .map(|&i| obs[i].features.refs)
            .fold(f64::INFINITY, f64::min);
        let hi = idx
            .iter()
            .map(|&i| obs[i].features.refs)
            .fold(f64::NEG_INFINITY, f64::max);
        idx.len() >= 2 && hi - lo >= MIN_REF_SPREAD
    };
    let (mut sxx, mut sxy, mut pooled_rr, mut pooled_ry, mut pooled_rx) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut xscale: f64 = 0.0;
    for (_, idx) in &gs {
        let rm = mean(idx, |i| obs[i].features.refs);
        let xm = mean(idx, |i| obs[i].features.exits);
        let ym = mean(idx, |i| y1[i]);
        let (mut s_rr, mut s_rx, mut s_ry) = (0.0, 0.0, 0.0);
        for &i in idx {
            let (r, x, y) = (
                obs[i].features.refs - rm,
                obs[i].features.exits - xm,
                y1[i] - ym,
            );
            s_rr += r * r;
            s_rx += r * x;
            s_ry += r * y;
        }
        if !varies(idx) {
            continue;
        }
        pooled_rr += s_rr;
        pooled_rx += s_rx;
        pooled_ry += s_ry;
        for &i in idx {
            let r = obs[i].features.refs - rm;
            let xt = obs[i].features.exits - xm - s_rx / s_rr * r;
            let yt = y1[i] - ym - s_ry / s_rr * r;
            sxx += xt * xt;
            sxy += xt * yt;
            xscale = xscale.max(obs[i].features.exits.abs());
        }
    }
    if pooled_rr == 0.0 {
        return Err(Error::Unidentifiable);
    }
    let prior_b = cfg.prior_exit_cycles / cfg.ghz;
    let (mut b, mut exit_cost) = (prior_b, Source::Assumed);
    let exits_vary = gs.iter().any(|(_, idx)| {
        let lo = idx
            .iter()
            .map(|&i| obs[i].features.exits)
            .fold(f64::INFINITY, f64::min);
        let hi = idx
            .iter()
            .map(|&i| obs[i].features.exits)
            .fold(f64::NEG_INFINITY, f64::max);
        hi - lo >= MIN_EXIT_SPREAD
    });
    if exits_vary && xscale > 0.0 && sxx > 1e-9 * xscale * xscale {
        let fitted = sxy / sxx;
        if fitted >= 0.0 {
            b = fitted;
            exit_cost = Source::Calibrated;
        }
    }
    // With b known, the shared slope of the groups that determine one.
    let pooled = ((pooled_ry - b * pooled_rx) / pooled_rr).max(0.0);
    // Steps 2 and 3: per-group slope and intercept.
    let y2: Vec<f64> = obs
        .iter()
        .zip(&y1)
        .map(|(o, y)| y - b * o.features.exits)
        .collect();
    let mut fits = Vec::new();
    for (name, idx) in &gs {
        let rm = mean(idx, |i| obs[i].features.refs);
        let ym = mean(idx, |i| y2[i]);
        let (mut s_rr, mut s_ry) = (0.0, 0.0);
        for &i in idx {
            let r = obs[i].features.refs - rm;
            s_rr += r * r;
            s_ry += r * (y2[i] - ym);
        }
        let (a, src) = if varies(idx) {
            let a = s_ry / s_rr;
            if a >= 0.0 {
                (a, Source::Calibrated)
            } else {
                (0.0, Source::ClampedToZero)
            }
        } else {
            (pooled, Source::Pooled)
        };
        fits.push(GroupFit {
            group: name.clone(),
            ideal_ns_per_op: ym - a * rm,
            ns_per_ref: a,
            cycles_per_ref: a * cfg.ghz,
            ref_cost: src,
            runs: idx.len(),
        });
    }
    let mut cal = Calibration {
        config: *cfg,
        groups: fits,
        pooled_ns_per_ref: pooled,
        ns_per_exit: b,
        cycles_per_exit: b * cfg.ghz,
        exit_cost,
        rms_residual_ns: 0.0,
        runs: obs.len(),
    };
    let ss: f64 = obs
        .iter()
        .filter_map(|o| {
            cal.predict(&o.group, &o.features)
                .map(|p| (p - o.measured_ns).powi(2))
        })
        .sum();
    cal.rms_residual_ns = (ss / obs.len() as f64).sqrt();
    Ok(cal)
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
/// the calibration, cannot determine its own cycles per reference without it, or that
/// calibration is not identifiable).
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
            // A group that could not fit its own slope borrowed the pooled one (other
            // workloads' cost): not a check of this workload's model.
            if cal.group(&o.group)?.ref_cost == Source::Pooled {
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
        }
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
