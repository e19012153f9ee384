//! `segvmm model`: replay an address stream through every MMU design model.
//!
//! A thin shell over `segment_mmu`: it loads (or synthesises) the guest's page tables,
//! builds the stream, runs `segment_mmu::replay::replay`, prints one row per design and
//! writes the JSON. Bad specs and files exit with 2 and one line naming the problem.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use segment_mmu::designs::{DesignKind, DesignReport, Env, ModelConfig, NptMode};
use segment_mmu::ptsnap::{Ptsnap, SyntheticSpec};
use segment_mmu::replay::repro::{self, Scale};
use segment_mmu::replay::{
    replay_phased, Error as ReplayError, PhasedReport, Replay, Warmup, WarmupReport,
};
use segment_mmu::stream::trace::TraceReader;
use segment_mmu::stream::{AddressStream, StreamSpec};
use segment_mmu::tlb::TlbConfig;

use super::{CliError, CliResult};

/// Options of `segvmm model`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Page-table ptsnap (`.ptsnap`) taken from a guest.
    #[arg(
        long,
        required_unless_present_any = ["synthetic", "reproduce"],
        conflicts_with = "synthetic"
    )]
    pub ptsnap: Option<PathBuf>,
    /// Synthetic address space: `heap=8G,pages=4k` or `heap=8G,pages=2m:0.7`
    /// (also base=0x..., procs=N, levels=4|5, host=4k|2m|1g, segments=K, ram=SIZE).
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Address space to replay (index into the ptsnap's spaces).
    #[arg(long, default_value_t = 0)]
    pub space: usize,
    /// Stream: `gups:footprint=4G,count=10M[,seed=S]`, `chase:..`, `seq:..`,
    /// `stride:..,stride=4096`, `zipf:..,theta=0.99`, `ptchurn:..,rate=0.001`.
    #[arg(
        long,
        required_unless_present_any = ["trace", "reproduce"],
        conflicts_with = "trace"
    )]
    pub stream: Option<String>,
    /// Binary trace (segment-mmu trace format) instead of --stream.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Designs: `all` or a comma list of native, nested, shadow, compromis, dual-direct,
    /// vmm-direct, guest-direct, enlarged-tdp, dynamic-switch.
    #[arg(long, default_value = "all")]
    pub designs: String,
    /// TLB preset: intel, amd, or none (every TLB and cache disabled).
    #[arg(long, default_value = "intel")]
    pub tlb: String,
    /// Cycles charged per VM exit (default: the documented model default, 2000).
    #[arg(long)]
    pub vm_exit_cycles: Option<f64>,
    /// Cycles per page-walk memory reference (default 30).
    #[arg(long)]
    pub ref_cycles: Option<f64>,
    /// Guest-physical pages excluded from the VMM segment (escape filter).
    #[arg(long, default_value_t = 0)]
    pub escape: u64,
    /// Host (nested) paging levels, 4 or 5 (default: as the guest).
    #[arg(long)]
    pub host_levels: Option<u8>,
    /// Levels of the enlarged-TDP host table (1..=4).
    #[arg(long, default_value_t = 2)]
    pub enlarged_levels: u8,
    /// Warm-up before steady state: `auto` (until the per-chunk cost settles), `none`, or
    /// a number of accesses. First fills (shadow, lazy NPT) are cold-start cost either way.
    #[arg(long, default_value = "auto")]
    pub warmup: String,
    /// EPT/NPT population: `lazy` (fill exit on a host page's first touch, as KVM) or
    /// `eager` (pre-populated).
    #[arg(long, default_value = "lazy")]
    pub npt: String,
    /// Print the reproduction tables of docs/reproduction.md (`quick` or `full`) and exit.
    #[arg(long, value_parser = ["quick", "full"])]
    pub reproduce: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the (loaded or synthesised) ptsnap as `.ptsnap`.
    #[arg(long)]
    pub save_ptsnap: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    designs: &'a [DesignReport],
    warmup: &'a WarmupReport,
    phases: &'a [PhasedReport],
    source: String,
    space: usize,
    stream: String,
    tlb: &'a TlbConfig,
    ptsnap: segment_mmu::ptsnap::Summary,
}

/// Runs `segvmm model`.
pub fn run(a: Args) -> CliResult {
    if let Some(scale) = &a.reproduce {
        let scale = if scale == "full" {
            Scale::full()
        } else {
            Scale::quick()
        };
        print!("{}", repro::report(&scale).map_err(CliError::failed)?);
        return Ok(0);
    }
    let (snap, source) = load(&a)?;
    if let Some(p) = &a.save_ptsnap {
        let mut f =
            File::create(p).map_err(|e| CliError::failed(format!("{}: {e}", p.display())))?;
        snap.write_to(&mut f)
            .map_err(|e| CliError::failed(format!("{}: {e}", p.display())))?;
    }
    let designs = DesignKind::parse_list(&a.designs).map_err(bad)?;
    let warmup: Warmup = a.warmup.parse().map_err(bad)?;
    let env = Env::new(&snap, a.space, model_config(&a)?).map_err(bad)?;
    let (mut stream, stream_name) = open_stream(&a, &env)?;
    let bar = ProgressBar::with_draw_target(stream.len_hint(), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {percent}% {pos}/{len} events",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let shown = AtomicBool::new(false);
    let progress = |done: u64| {
        // Only replays longer than a second get a bar.
        if !shown.load(Ordering::Relaxed) && started.elapsed().as_secs_f64() > 1.0 {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            shown.store(true, Ordering::Relaxed);
        }
        bar.set_position(done);
    };
    let result = replay_phased(&env, &mut stream, &designs, warmup, Some(&progress)).map_err(
        |e| match e {
            ReplayError::Stream(e) => bad(e),
            e => CliError::failed(e),
        },
    )?;
    bar.finish_and_clear();
    let reports = result.totals();

    print!("whole replay, from a cold start:\n{}", table(&reports));
    print!("{}", phases_table(&result));
    if let Some(p) = &a.json {
        let out = JsonOut {
            designs: &reports,
            warmup: &result.warmup,
            phases: &result.designs,
            source,
            space: a.space,
            stream: stream_name,
            tlb: &env.cfg.tlb,
            ptsnap: snap.summary(),
        };
        write_json(p, &out)?;
    }
    Ok(0)
}

/// The model's configuration from the arguments.
fn model_config(a: &Args) -> Result<ModelConfig, CliError> {
    let mut tlb = TlbConfig::preset(&a.tlb).map_err(bad)?;
    if let Some(v) = a.vm_exit_cycles {
        tlb.costs.vm_exit_cycles = positive("--vm-exit-cycles", v)?;
    }
    if let Some(v) = a.ref_cycles {
        tlb.costs.ref_cycles = positive("--ref-cycles", v)?;
    }
    let npt = match a.npt.as_str() {
        "lazy" => NptMode::Lazy,
        "eager" => NptMode::Eager,
        v => return Err(bad(format!("--npt {v:?}: expected lazy or eager"))),
    };
    Ok(ModelConfig {
        tlb,
        npt,
        host_levels: a.host_levels,
        enlarged_levels: a.enlarged_levels,
        escape_pages: a.escape,
        ..ModelConfig::default()
    })
}

/// The address stream (`--stream` or `--trace`) and how the report names it.
fn open_stream(a: &Args, env: &Env) -> Result<(Box<dyn AddressStream>, String), CliError> {
    Ok(match (&a.stream, &a.trace) {
        (Some(s), _) => {
            let spec: StreamSpec = s.parse().map_err(bad)?;
            let region = env
                .guest_segment
                .ok_or_else(|| bad("the address space maps nothing"))?;
            if spec.base.is_none() && spec.footprint > region.len() {
                return Err(bad(format!(
                    "stream footprint {} MiB exceeds the mapped heap ({} MiB at {:#x}); shrink footprint= or grow heap=",
                    spec.footprint >> 20,
                    region.len() >> 20,
                    region.base
                )));
            }
            (spec.build(region.base), s.clone())
        }
        (None, Some(p)) => {
            let f = File::open(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
            let len = f.metadata().ok().map(|m| m.len());
            let r = TraceReader::new(f, len).map_err(|e| bad(format!("{}: {e}", p.display())))?;
            (Box::new(r), format!("trace:{}", p.display()))
        }
        (None, None) => return Err(bad("give --stream SPEC or --trace FILE")),
    })
}

/// Writes the JSON report to `p`.
fn write_json(p: &std::path::Path, out: &JsonOut) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(out).map_err(CliError::failed)?;
    let mut f = File::create(p).map_err(|e| CliError::failed(format!("{}: {e}", p.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| CliError::failed(format!("{}: {e}", p.display())))
}

/// The page tables to model (`--ptsnap` or `--synthetic`) and how the report names them.
fn load(a: &Args) -> Result<(Ptsnap, String), CliError> {
    Ok(match (&a.ptsnap, &a.synthetic) {
        (Some(p), _) => {
            let mut f = File::open(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
            (
                Ptsnap::read_from(&mut f).map_err(|e| bad(format!("{}: {e}", p.display())))?,
                p.display().to_string(),
            )
        }
        (None, Some(s)) => {
            let spec: SyntheticSpec = s.parse().map_err(bad)?;
            (spec.build().map_err(bad)?, format!("synthetic:{s}"))
        }
        (None, None) => return Err(bad("give --ptsnap FILE or --synthetic SPEC")),
    })
}

fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::bad_input(e)
}

fn positive(name: &str, v: f64) -> Result<f64, CliError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(CliError::bad_input(format!(
            "{name} must be a non-negative number, got {v}"
        )))
    }
}

/// Steady state against cold start, per design, relative to native's steady state.
fn phases_table(r: &Replay) -> String {
    let w = &r.warmup;
    let mut s = format!(
        "steady state after a warm-up of {} accesses ({:?}{}); cold start = warm-up + first fills\n",
        w.accesses,
        w.rule,
        if w.settled { "" } else { ", did not settle" }
    );
    s += &format!(
        "{:<15} {:>14} {:>11} {:>14} {:>12}\n",
        "design", "steady cyc/acc", "vs-native", "cold-start cyc", "fill exits"
    );
    let native = r.steady("native");
    for d in &r.designs {
        let rel = match native {
            Some(n) if n > 0.0 => format!("{:.2}x", d.steady_cycles_per_access / n),
            _ => "-".to_string(),
        };
        s += &format!(
            "{:<15} {:>14.2} {:>11} {:>14.0} {:>12}\n",
            d.name, d.steady_cycles_per_access, rel, d.cold_start_cycles, d.fill_exits
        );
    }
    s
}

/// One row per design: references per walk, walks per 1000 accesses, base-bound
/// computations per walk, VM exits, translation cycles per access, slowdown against
/// native translation cycles.
fn table(reports: &[DesignReport]) -> String {
    let native = reports
        .iter()
        .find(|r| r.name == "native")
        .map(|r| r.cycles_per_access);
    let mut s = format!(
        "{:<15} {:>10} {:>12} {:>9} {:>10} {:>12} {:>9}\n",
        "design", "refs/walk", "walks/1k", "bb/walk", "vm-exits", "cyc/access", "vs-native"
    );
    for r in reports {
        let per_k = if r.accesses == 0 {
            0.0
        } else {
            1000.0 * r.walks as f64 / r.accesses as f64
        };
        let slow = match native {
            Some(n) if n > 0.0 => format!("{:.2}x", r.cycles_per_access / n),
            _ => "-".to_string(),
        };
        s += &format!(
            "{:<15} {:>10.2} {:>12.2} {:>9.2} {:>10} {:>12.2} {:>9}\n",
            r.name,
            r.refs_per_walk,
            per_k,
            r.base_bound_per_walk,
            r.vm_exits,
            r.cycles_per_access,
            slow
        );
        if let Some(e) = &r.escape_filter {
            s += &format!(
                "  escape filter: {} pages, {} checks, {} true hits, false-positive rate {:.4}\n",
                e.escaped_pages, e.checks, e.true_hits, e.false_positive_rate
            );
        }
        if let Some(w) = &r.switching {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
            s += &format!(
                "  switching: {} switches over {} intervals ({} shadow, {} nested); cost vs shadow {}, vs nested {}\n",
                w.switches,
                w.intervals,
                w.shadow_intervals,
                w.nested_intervals,
                f(w.vs_shadow),
                f(w.vs_nested)
            );
        }
        if r.faults > 0 {
            s += &format!(
                "  {} accesses faulted (unmapped or outside RAM) and were not costed\n",
                r.faults
            );
        }
    }
    s
}
