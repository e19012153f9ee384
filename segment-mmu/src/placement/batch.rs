//! A `segvmm place` invocation: the run configurations one command asks for (every fit
//! policy, each with the paging baseline first and then every compaction × balloon
//! combination), run in order, and the JSON that reports them.

use super::sim::{self, Config, Simulator};
use super::{ClusterSpec, Fit, Mode, Report, Workload};

/// A batch that could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration the simulator refuses (bad input).
    #[error(transparent)]
    Setup(sim::Error),
    /// A simulation that failed while running.
    #[error(transparent)]
    Run(sim::Error),
    /// No segment run to report.
    #[error("no segment run")]
    NoSegmentRun,
    /// Serialising a report.
    #[error("serializing the placement report: {0}")]
    Json(#[from] serde_json::Error),
}

/// The runs of a batch: per fit policy, the paging baseline, then one run per
/// compaction × balloon setting (with `extent`'s extent policy when given).
pub fn configs(
    fits: &[Fit],
    extent: Option<Fit>,
    compaction: &[bool],
    balloon: &[bool],
    base: &Config,
) -> Vec<Config> {
    let mut runs = Vec::new();
    for &f in fits {
        runs.push(Config {
            host: f.host(),
            extent: f.extent(),
            mode: Mode::Paging,
            ..base.clone()
        });
        for &c in compaction {
            for &b in balloon {
                runs.push(Config {
                    host: f.host(),
                    extent: extent.unwrap_or(f).extent(),
                    compaction: c,
                    balloon: b,
                    ..base.clone()
                });
            }
        }
    }
    runs
}

/// Runs every configuration in order; each segment run records the rejections of the
/// paging run before it. `progress(run, events_done)` is called as runs advance.
pub fn run_all(
    w: &Workload,
    spec: &ClusterSpec,
    runs: Vec<Config>,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<Vec<Report>, Error> {
    let mut reports = Vec::with_capacity(runs.len());
    let mut paging_rejected = 0;
    for (i, cfg) in runs.into_iter().enumerate() {
        let paging = cfg.mode == Mode::Paging;
        let sim = Simulator::new(w, spec, cfg).map_err(Error::Setup)?;
        let mut r = sim
            .run(&mut |done, _| progress(i, done))
            .map_err(Error::Run)?;
        if paging {
            paging_rejected = r.rejected;
        } else {
            r.paging_rejected = Some(paging_rejected);
        }
        reports.push(r);
    }
    Ok(reports)
}

/// The report as JSON: the first segment run's fields at the top level (so a one-policy
/// run reads as one flat object), every run under `runs`, and the workload and cluster
/// under their own keys (`auto`: the host count was sized automatically).
pub fn json(
    w: &Workload,
    spec: &ClusterSpec,
    auto: bool,
    seg: &[Report],
    all: &[Report],
) -> Result<serde_json::Value, Error> {
    let first = seg.first().ok_or(Error::NoSegmentRun)?;
    let mut v = serde_json::to_value(first)?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "workload".into(),
            serde_json::json!({
                "source": w.source, "vms": w.vms.len(), "start": w.start, "end": w.end,
                "total_memory": w.total_memory(), "peak_live_memory": w.peak_live_memory(spec.align),
            }),
        );
        o.insert(
            "cluster".into(),
            serde_json::json!({
                "hosts": spec.hosts, "auto": auto, "host_memory": spec.host_memory, "reserved": spec.reserved,
                "align": spec.align, "bad_pages_per_host": spec.bad_pages_per_host,
            }),
        );
        o.insert("runs".into(), serde_json::to_value(all)?);
    }
    Ok(v)
}
