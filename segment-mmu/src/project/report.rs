//! The projection's report (`segvmm project`): proj.json's types, the model's equation
//! and the text table. Computed by `segvmm::probe::bench::project`, drawn by
//! [`super::plot`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Calibration, Check, Features, Source};
use crate::designs::DesignKind;

/// The model, as printed by `--help` and written to proj.json.
pub const MODEL: &str = "t(run, design) = I_g + a_g*R + b*X + (8*L + 1*B)/f  [ns/op], per operation of the workload. \
R, L, B: walk references, L2-TLB hits, base-bound checks per op from replaying the run's own stream over its page tables; \
X: VM exits per op (MODEL of a measured guest run: KVM's exit count of its timed part; PROJECTED: the design's replay, \
plus one per host page first touched for designs that fill EPT/NPT lazily); f: TSC GHz. \
Calibrated by least squares on the measured runs: I_g per group (workload and footprint; native touch/ptchurn runs, \
whose timed part does host-kernel work, get their own), a_g for chase and gups (others take the pooled value), \
b shared (from the within-group variation of exits: touch with 4K vs 2M guest pages; 2000 cycles ASSUMED if none varies). \
ptchurn PROJECTED uses the native run's intercept (guest kernel work at the host kernel's cost, ASSUMED).";

/// Where a run's page tables came from.
#[derive(Debug, Clone, Serialize)]
pub struct TablesSource {
    /// "ptsnap", "plan" (rebuilt from the guest's plan: no ptsnap found) or
    /// "synthetic" (native runs).
    pub source: &'static str,
    /// The file or spec.
    pub detail: String,
}

/// One run of proj.json.
#[derive(Debug, Serialize)]
pub struct RunOut {
    pub workload: String,
    pub environment: String,
    pub backing: String,
    pub footprint: u64,
    /// Median ns/op over the repeats (measured).
    pub measured_ns_per_op: f64,
    pub repeats: usize,
    /// The design modelling the measured run.
    pub measured_as: String,
    /// The calibrated model's ns/op for the measured configuration.
    pub model_ns_per_op: Option<f64>,
    /// (model prediction from a calibration that did not see this run − measured) /
    /// measured.
    pub model_error: Option<f64>,
    /// How the error was checked: held-out or leave-one-out.
    pub model_error_check: Option<Check>,
    /// Projected ns/op per design (model values, not measurements).
    pub projected: BTreeMap<String, f64>,
    /// Per projected design: the terms that add up to it, and where each came from.
    pub projected_terms: BTreeMap<String, Terms>,
    /// Per design: what the replay counted per operation.
    pub translation: BTreeMap<String, Features>,
    /// KVM exits per operation of the timed part (median over repeats; guest runs).
    pub measured_exits_per_op: Option<f64>,
    /// Calibration group of this run (its intercept).
    pub group: String,
    /// Group whose intercept the projections use.
    pub projection_group: String,
    /// Where the page tables came from.
    pub page_tables: TablesSource,
    /// Operations counted (after the prelude and warm-up).
    pub replayed_ops: u64,
}

/// One projected figure, term by term (ns/op); `source` says which are calibrated on
/// this host's runs and which are assumed.
#[derive(Debug, Clone, Serialize)]
pub struct Terms {
    /// `I`: the intercept of `projection_group`.
    pub ideal_ns: f64,
    /// `a · R`: walk references per op from the replay × ns per reference.
    pub walk_ns: f64,
    /// `b · X`: exits per op × ns per exit.
    pub exit_ns: f64,
    /// L2-TLB hits and base-bound checks at fixed latencies.
    pub fixed_ns: f64,
    /// `X`: exits per op (the replay's, plus `first_touch_exits_per_op`).
    pub exits_per_op: f64,
    /// Of `X`: host pages first touched per op, one exit each (lazily filled EPT/NPT).
    pub first_touch_exits_per_op: f64,
    /// Where each term came from.
    pub source: String,
}

/// The checked errors over all runs.
#[derive(Debug, Serialize)]
pub struct ErrorSummary {
    pub mean_abs: f64,
    pub max_abs: f64,
    pub checked_runs: usize,
}

/// The whole projection: proj.json, and what the table and plot show.
#[derive(Debug, Serialize)]
pub struct ProjOut {
    pub runs: Vec<RunOut>,
    pub calibration: Calibration,
    /// Runs whose backing calibrated the held-out check.
    pub calibrated_on: String,
    /// The model's equation and what each symbol is.
    pub model: &'static str,
    pub model_error: Option<ErrorSummary>,
    pub host: HostOut,
    pub tlb: String,
    pub notes: Vec<String>,
}

/// The host the runs were measured on.
#[derive(Debug, Serialize)]
pub struct HostOut {
    pub kvm_module: String,
    pub mmu_mode: String,
    pub tsc_khz: Option<u32>,
}

/// Design columns in report order.
pub fn design_columns(designs: &[DesignKind]) -> Vec<String> {
    let mut v = Vec::new();
    for d in designs {
        v.push(d.name().to_string());
        if *d == DesignKind::Nested {
            v.push("nested-4k-host".into());
            v.push("nested-2m-host".into());
        }
    }
    v
}

/// A relative error as a signed percentage, `-` for none.
pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |e| format!("{:+.1}%", 100.0 * e))
}

/// A design column's name, shortened for the table.
pub fn short(name: &str) -> String {
    name.replace("-host", "h")
        .replace("dynamic-switch", "dyn-switch")
}

/// The table's first lines: host, model, exit cost and fit quality.
fn header(out: &ProjOut) -> String {
    let c = &out.calibration;
    let mut s = format!(
        "Host {} ({} paging), {:.3} GHz. MEASURED = bench median; MODEL = calibrated model for the measured run, err = its checked error ({}); PROJECTED = model only.\n",
        out.host.kvm_module,
        out.host.mmu_mode,
        c.config.ghz,
        out.calibrated_on
    );
    let _ = writeln!(s, "Model: {MODEL}");
    let exit = match (c.exit_cost, c.exit_stderr_cycles, c.exit_fit_rms_ns) {
        (Source::Calibrated, se, rms) => format!(
            "VM exit: {:.0} cycles = {:.0} ns (CALIBRATED{} on {} runs whose exits vary, their rms residual {})",
            c.cycles_per_exit,
            c.ns_per_exit,
            se.map_or(String::new(), |v| format!(", standard error {v:.0} cycles")),
            c.exit_fit_runs,
            rms.map_or("-".into(), |v| format!("{v:.1} ns/op"))
        ),
        _ => format!(
            "VM exit: {:.0} cycles (ASSUMED: no group's exits vary between its runs)",
            c.cycles_per_exit
        ),
    };
    let _ = writeln!(
        s,
        "{exit}; rms residual of the whole fit {:.1} ns/op over {} runs; pooled walk cost {:.1} cycles per reference.",
        c.rms_residual_ns,
        c.runs,
        c.pooled_ns_per_ref * c.config.ghz
    );
    s
}

/// The table: per workload, one line per measured run with the measured value, the model
/// for it and its checked error, then every projected design.
pub fn table(out: &ProjOut, columns: &[String]) -> String {
    let c = &out.calibration;
    let mut s = header(out);
    let mut groups: Vec<String> = Vec::new();
    for r in &out.runs {
        let g = format!("{}/{}M", r.workload, r.footprint >> 20);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for g in groups {
        let _ = writeln!(s);
        let mut seen = Vec::new();
        for r in out
            .runs
            .iter()
            .filter(|r| format!("{}/{}M", r.workload, r.footprint >> 20) == g)
        {
            for name in [&r.group, &r.projection_group] {
                if seen.contains(name) {
                    continue;
                }
                seen.push(name.clone());
                if let Some(f) = c.group(name) {
                    let _ = writeln!(
                        s,
                        "{name}: ideal {:.1} ns/op (calibrated on {} run{}), {:.1} cycles per walk reference ({})",
                        f.ideal_ns_per_op,
                        f.runs,
                        if f.runs == 1 { "" } else { "s" },
                        f.cycles_per_ref,
                        match f.ref_cost {
                            Source::Pooled => "pooled",
                            Source::ClampedToZero => "clamped to 0",
                            Source::Assumed => "assumed",
                            Source::Calibrated => "calibrated",
                        }
                    );
                }
            }
        }
        let mut head = format!(
            "{:<9} {:<5} {:>9} {:>7} {:>9} {:>7} | PROJECTED:",
            "env", "back", "MEASURED", "exit/op", "MODEL", "err"
        );
        for col in columns {
            let _ = write!(head, " {:>11}", short(col));
        }
        let _ = writeln!(s, "{head}");
        for r in out
            .runs
            .iter()
            .filter(|r| format!("{}/{}M", r.workload, r.footprint >> 20) == g)
        {
            let mut line = format!(
                "{:<9} {:<5} {:>9.1} {:>7} {:>9} {:>7} |           ",
                r.environment,
                r.backing,
                r.measured_ns_per_op,
                r.measured_exits_per_op
                    .map_or("-".into(), |x| format!("{x:.3}")),
                r.model_ns_per_op.map_or("-".into(), |v| format!("{v:.1}")),
                pct(r.model_error)
            );
            for col in columns {
                let v = r
                    .projected
                    .get(col)
                    .map_or("".into(), |v| format!("{v:.1}"));
                let _ = write!(line, " {v:>11}");
            }
            let _ = writeln!(s, "{}", line.trim_end());
        }
    }
    match &out.model_error {
        Some(e) => {
            let _ = writeln!(
                s,
                "\nModel error on {} checked runs: mean |err| {:.1}%, max {:.1}%.",
                e.checked_runs,
                100.0 * e.mean_abs,
                100.0 * e.max_abs
            );
        }
        None => s.push_str("\nModel error: no run could be checked.\n"),
    }
    for n in &out.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}
