//! What a simulation reports, as JSON and as a table.
//!
//! Kept apart from the simulator so that adding a column never touches the placement logic.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::policy::Mode;
use super::size::format_size;

/// One sample of fragmentation over time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Simulated time, seconds since the workload start.
    pub t: u64,
    /// Live VM memory over usable cluster memory.
    pub utilization: f64,
    /// Sum over hosts of the largest free extent, over all free memory: 1 when every host's
    /// free memory is one extent, near 0 when it is dust.
    pub largest_over_free: f64,
}

/// Results of one simulation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Policy label (`first-fit`, or `host/extent` when they differ), `paging` for the baseline.
    pub policy: String,
    /// Segments, or the paging baseline.
    pub mode: Mode,
    /// Whether compaction was on.
    pub compaction: bool,
    /// Whether self-ballooning was on.
    pub balloon: bool,
    /// Most segments one VM may get.
    pub max_segments: usize,
    /// Hosts in the cluster.
    pub hosts: usize,
    /// Memory per host, bytes.
    pub host_memory: u64,
    /// VMs that arrived.
    pub vms: u64,
    /// VMs placed.
    pub placed: u64,
    /// VMs refused for lack of room.
    pub rejected: u64,
    /// VMs refused by the paging baseline at the same cluster size (filled in by the caller).
    pub paging_rejected: Option<u64>,
    /// VMs placed as exactly one segment (after compaction when it was needed).
    pub single_segment: u64,
    /// `single_segment / vms`: the paper's figure (rejected VMs count against it); `None`
    /// for the paging baseline, which has no segments.
    pub single_segment_fraction: Option<f64>,
    /// Segments per placed VM at placement → number of VMs.
    pub segments_histogram: BTreeMap<usize, u64>,
    /// Placements that needed a compaction.
    pub compactions: u64,
    /// Bytes moved by compaction.
    pub bytes_compacted: u64,
    /// Multi-segment VMs later consolidated into one segment by self-ballooning.
    pub ballooned_vms: u64,
    /// Bytes moved by self-ballooning.
    pub bytes_ballooned: u64,
    /// Hard-faulted pages covered by segments and absorbed by escape filters.
    pub faults_absorbed: u64,
    /// Peak live VM memory, bytes.
    pub peak_live_memory: u64,
    /// Live VM memory when the simulation stopped, bytes.
    pub final_live_memory: u64,
    /// Mean over samples of `largest_over_free`.
    pub mean_largest_over_free: f64,
    /// Minimum over samples of `largest_over_free`.
    pub min_largest_over_free: f64,
    /// Arrivals plus departures processed.
    pub events: u64,
    /// Wall-clock seconds the simulation took (excluding trace parsing).
    pub wall_seconds: f64,
    /// `events / wall_seconds`.
    pub events_per_sec: f64,
    /// Fragmentation over time.
    pub fragmentation: Vec<Sample>,
}

/// Renders reports as a fixed-width table.
pub fn table(reports: &[Report]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:>4} {:>4} {:>5} {:>8} {:>7} {:>9} {:>10} {:>6} {:>4} {:>9} {:>6} {:>9} {:>7} {:>10}",
        "policy", "cmp", "bal", "hosts", "vms", "reject", "paging_rj", "one_seg", "split", "maxk", "compacted", "consol", "ballooned", "frag", "events/s"
    );
    for r in reports {
        let split: u64 = r
            .segments_histogram
            .iter()
            .filter(|(&k, _)| k > 1)
            .map(|(_, n)| n)
            .sum();
        let maxk = r.segments_histogram.keys().max().copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "{:<22} {:>4} {:>4} {:>5} {:>8} {:>7} {:>9} {:>10} {:>6} {:>4} {:>9} {:>6} {:>9} {:>7.4} {:>10.0}",
            r.policy,
            if r.compaction { "on" } else { "off" },
            if r.balloon { "on" } else { "off" },
            r.hosts,
            r.vms,
            r.rejected,
            r.paging_rejected.map_or("-".to_string(), |n| n.to_string()),
            r.single_segment_fraction.map_or("-".to_string(), |f| format!("{:.3}%", 100.0 * f)),
            split,
            maxk,
            format_size(r.bytes_compacted),
            r.ballooned_vms,
            format_size(r.bytes_ballooned),
            r.mean_largest_over_free,
            r.events_per_sec,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_one_row_per_report() {
        let r = Report {
            policy: "best-fit".into(),
            mode: Mode::Segments,
            compaction: true,
            balloon: false,
            max_segments: 4,
            hosts: 3,
            host_memory: 1 << 30,
            vms: 10,
            placed: 9,
            rejected: 1,
            paging_rejected: Some(0),
            single_segment: 8,
            single_segment_fraction: Some(0.8),
            segments_histogram: [(1, 8), (2, 1)].into_iter().collect(),
            compactions: 1,
            bytes_compacted: 2 << 30,
            ballooned_vms: 0,
            bytes_ballooned: 0,
            faults_absorbed: 0,
            peak_live_memory: 0,
            final_live_memory: 0,
            mean_largest_over_free: 0.5,
            min_largest_over_free: 0.25,
            events: 19,
            wall_seconds: 0.1,
            events_per_sec: 190.0,
            fragmentation: vec![],
        };
        let t = table(&[r.clone(), r.clone()]);
        assert_eq!(t.lines().count(), 3);
        let row = t.lines().nth(1).unwrap();
        assert!(row.starts_with("best-fit"));
        assert!(row.contains("80.000%"), "{row}");
        assert!(row.contains("2G"), "{row}");
        // The JSON keys the issue names, with the histogram keyed by segment count.
        let j = serde_json::to_value(&r).unwrap();
        for k in [
            "vms",
            "placed",
            "rejected",
            "single_segment_fraction",
            "segments_histogram",
            "bytes_compacted",
            "events_per_sec",
        ] {
            assert!(j.get(k).is_some(), "missing {k}");
        }
        assert_eq!(j["segments_histogram"]["2"], 1);
        assert_eq!(j["mode"], "segments");
    }
}
