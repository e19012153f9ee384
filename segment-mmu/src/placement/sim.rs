//! The event-driven simulator: arrivals and departures in time order, placed on a cluster.
//!
//! A VM first tries to get one segment on some host (host policy, then extent policy). When
//! no host has a large enough extent it tries, in order: compaction (move other VMs' segments
//! within one host to open a window, within a byte budget), then a split into at most
//! `max_segments` extents; otherwise it is rejected. On departures, self-ballooning tries to
//! consolidate the host's multi-segment VMs into one segment each.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::cluster::{self, Cluster, ClusterSpec};
use super::host::Move;
use super::policy::{ExtentPolicy, Fit, HostPolicy, Mode};
use super::results::{Report, Sample};
use super::size::align_up;
use super::workload::Workload;

/// How many of the hosts with the most free memory are evaluated for one compaction; more
/// finds slightly cheaper plans at a linear cost in time.
pub const COMPACTION_HOSTS: usize = 8;

/// A simulation that could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster could not be built, or an internal invariant broke.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// A configuration that cannot be simulated.
    #[error("bad simulation config: {0}")]
    Config(String),
}

/// Most fragmentation samples one run takes (each walks every host).
pub const MAX_SAMPLES: usize = 100_000;

/// Policy knobs of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Host choice.
    pub host: HostPolicy,
    /// Extent choice inside a host.
    pub extent: ExtentPolicy,
    /// Segments or the paging baseline.
    pub mode: Mode,
    /// Most segments one VM may be split into (1: one segment or nothing).
    pub max_segments: usize,
    /// Compaction on or off.
    pub compaction: bool,
    /// Most bytes one compaction may move.
    pub compaction_budget: u64,
    /// Self-ballooning on or off.
    pub balloon: bool,
    /// Faulted pages one VM's escape filter can absorb.
    pub escape_filter: u32,
    /// Number of fragmentation samples over the run.
    pub samples: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: HostPolicy::FirstFit,
            extent: ExtentPolicy::FirstFit,
            mode: Mode::Segments,
            max_segments: 4,
            compaction: false,
            compaction_budget: 64 << 30,
            balloon: false,
            escape_filter: 0,
            samples: 1000,
        }
    }
}

/// Where one placed VM lives.
#[derive(Debug, Clone, Default)]
struct Placed {
    host: u32,
    /// Segments as (start, len), in guest-physical order.
    segs: Vec<(u64, u64)>,
}

/// The running state of one simulation.
#[derive(Debug)]
pub struct Simulator<'w> {
    w: &'w Workload,
    cfg: Config,
    cluster: Cluster,
    spec: ClusterSpec,
    vms: Vec<Option<Placed>>,
    /// Multi-segment VMs per host, for self-ballooning.
    split: Vec<BTreeSet<u32>>,
    live: u64,
    usable: u64,
    report: Report,
}

impl<'w> Simulator<'w> {
    /// Prepares a run of `w` on a fresh cluster.
    pub fn new(w: &'w Workload, spec: &ClusterSpec, cfg: Config) -> Result<Self, Error> {
        if cfg.max_segments == 0 {
            return Err(Error::Config("max segments must be at least 1".into()));
        }
        if cfg.samples > MAX_SAMPLES {
            return Err(Error::Config(format!(
                "{} fragmentation samples: more than {MAX_SAMPLES} (the cap MAX_SAMPLES)",
                cfg.samples
            )));
        }
        let cluster = Cluster::new(spec, cfg.mode, cfg.escape_filter)?;
        let usable = cluster.hosts().iter().map(|h| h.usable()).sum();
        let policy = if cfg.mode == Mode::Paging {
            "paging".to_string()
        } else {
            label(cfg.host, cfg.extent)
        };
        let report = Report {
            policy,
            mode: cfg.mode,
            compaction: cfg.compaction,
            balloon: cfg.balloon,
            max_segments: cfg.max_segments,
            hosts: spec.hosts,
            host_memory: spec.host_memory,
            vms: w.vms.len() as u64,
            placed: 0,
            rejected: 0,
            paging_rejected: None,
            single_segment: 0,
            single_segment_fraction: None,
            segments_histogram: BTreeMap::new(),
            compactions: 0,
            bytes_compacted: 0,
            ballooned_vms: 0,
            bytes_ballooned: 0,
            faults_absorbed: 0,
            peak_live_memory: 0,
            final_live_memory: 0,
            mean_largest_over_free: 1.0,
            min_largest_over_free: 1.0,
            events: 0,
            wall_seconds: 0.0,
            events_per_sec: 0.0,
            fragmentation: Vec::new(),
        };
        Ok(Self {
            w,
            split: vec![BTreeSet::new(); spec.hosts],
            vms: vec![None; w.vms.len()],
            cluster,
            spec: spec.clone(),
            cfg,
            live: 0,
            usable,
            report,
        })
    }

    /// The cluster as it is now (for tests and invariant checks).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Segments of VM `i` as (host, start, len), empty when it is not placed.
    pub fn segments_of(&self, i: usize) -> Vec<(usize, u64, u64)> {
        self.vms[i]
            .as_ref()
            .map(|p| {
                p.segs
                    .iter()
                    .map(|&(s, l)| (p.host as usize, s, l))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs to the end. `progress(done, total)` is called every few thousand events.
    pub fn run(mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<Report, Error> {
        let began = Instant::now();
        let events = self.events();
        let total = events.len() as u64;
        let span = self.w.end.saturating_sub(self.w.start).max(1);
        let every = (span / self.cfg.samples.max(1) as u64).max(1);
        let mut next_sample = self.w.start;
        for (n, &(t, arrive, i)) in events.iter().enumerate() {
            while t >= next_sample && next_sample < self.w.end {
                self.sample(next_sample);
                next_sample = next_sample.saturating_add(every);
            }
            if arrive {
                self.arrive(i as usize)?;
            } else {
                self.depart(i as usize)?;
            }
            if n % 16384 == 0 {
                progress(n as u64, total);
            }
        }
        while next_sample < self.w.end {
            self.sample(next_sample);
            next_sample = next_sample.saturating_add(every);
        }
        progress(total, total);
        let r = &mut self.report;
        r.final_live_memory = self.live;
        r.wall_seconds = began.elapsed().as_secs_f64();
        r.events_per_sec = total as f64 / r.wall_seconds.max(1e-9);
        r.single_segment_fraction = fraction(r);
        let f = &r.fragmentation;
        if !f.is_empty() {
            r.mean_largest_over_free =
                f.iter().map(|s| s.largest_over_free).sum::<f64>() / f.len() as f64;
            r.min_largest_over_free = f.iter().map(|s| s.largest_over_free).fold(1.0, f64::min);
        }
        Ok(self.report)
    }

    /// Runs while checking every invariant after every event (slow: for tests).
    pub fn run_checked(mut self) -> Result<(Report, Cluster), Error> {
        for (_, arrive, i) in self.events() {
            if arrive {
                self.arrive(i as usize)?;
            } else {
                self.depart(i as usize)?;
            }
            self.cluster.check()?;
            self.check_owners()?;
        }
        let c = self.cluster.clone();
        Ok((self.run_tail(), c))
    }

    fn run_tail(mut self) -> Report {
        let r = &mut self.report;
        r.single_segment_fraction = fraction(r);
        r.final_live_memory = self.live;
        self.report
    }

    /// Bytes are conserved (used memory equals live VM memory), and every placed segment is
    /// recorded in its host under its VM, and vice versa.
    fn check_owners(&self) -> Result<(), Error> {
        let used: u64 = (0..self.cluster.len())
            .map(|h| self.cluster.host(h).usable() - self.cluster.free(h))
            .sum();
        if used != self.live {
            return Err(Error::Config(format!(
                "{used} bytes used but {} bytes of live VMs",
                self.live
            )));
        }
        if self.cfg.mode == Mode::Paging {
            return Ok(());
        }
        let mut n = 0usize;
        for (h, host) in self.cluster.hosts().iter().enumerate() {
            for (s, l, o) in host.segments() {
                n += 1;
                let ok = self.vms[o as usize]
                    .as_ref()
                    .is_some_and(|p| p.host as usize == h && p.segs.contains(&(s, l)));
                if !ok {
                    return Err(Error::Config(format!(
                        "host {h} segment {s:#x} not owned by VM {o}"
                    )));
                }
            }
        }
        let m: usize = self.vms.iter().flatten().map(|p| p.segs.len()).sum();
        if m != n {
            return Err(Error::Config(format!(
                "{m} VM segments but {n} host segments"
            )));
        }
        Ok(())
    }

    /// (time, is_arrival, vm) sorted; departures before arrivals at the same instant.
    fn events(&self) -> Vec<(u64, bool, u32)> {
        let mut ev = Vec::with_capacity(self.w.vms.len() * 2);
        for (i, v) in self.w.vms.iter().enumerate() {
            ev.push((v.arrival, true, i as u32));
            if let Some(d) = v.departure(self.w.end) {
                ev.push((d, false, i as u32));
            }
        }
        ev.sort_unstable();
        ev
    }

    fn sample(&mut self, t: u64) {
        let (mut largest, mut free) = (0u64, 0u64);
        for (h, host) in self.cluster.hosts().iter().enumerate() {
            let f = self.cluster.free(h);
            free += f;
            largest += match self.cfg.mode {
                Mode::Segments => host.largest_free(),
                Mode::Paging => f,
            };
        }
        self.report.fragmentation.push(Sample {
            t: t - self.w.start,
            utilization: self.live as f64 / self.usable.max(1) as f64,
            largest_over_free: if free == 0 {
                1.0
            } else {
                largest as f64 / free as f64
            },
        });
    }

    fn arrive(&mut self, i: usize) -> Result<(), Error> {
        self.report.events += 1;
        let size = align_up(self.w.vms[i].memory.max(1), self.spec.align);
        let placed = match self.cfg.mode {
            Mode::Paging => self.place_paged(size),
            Mode::Segments => self.place_segments(i as u32, size)?,
        };
        match placed {
            Some(p) => {
                let k = p.segs.len();
                self.report.placed += 1;
                if self.cfg.mode == Mode::Segments {
                    *self.report.segments_histogram.entry(k).or_insert(0) += 1;
                    if k == 1 {
                        self.report.single_segment += 1;
                    } else {
                        self.split[p.host as usize].insert(i as u32);
                    }
                }
                self.live += size;
                self.report.peak_live_memory = self.report.peak_live_memory.max(self.live);
                self.vms[i] = Some(p);
            }
            None => self.report.rejected += 1,
        }
        Ok(())
    }

    fn place_paged(&mut self, size: u64) -> Option<Placed> {
        let h = self.cluster.candidates(size, self.cfg.host).next()?;
        self.cluster.page(h, true, size);
        Some(Placed {
            host: h as u32,
            segs: vec![(0, size)],
        })
    }

    fn place_segments(&mut self, vm: u32, size: u64) -> Result<Option<Placed>, Error> {
        let (ext, filter) = (self.cfg.extent, self.cfg.escape_filter);
        let one = self.cluster.candidates(size, self.cfg.host).find_map(|h| {
            self.cluster
                .host(h)
                .find(size, ext, filter)
                .map(|(x, n)| (h, x, n))
        });
        if let Some((h, x, n)) = one {
            self.cluster.update(h, |m| m.allocate(x, size, vm))?;
            self.report.faults_absorbed += u64::from(n);
            return Ok(Some(Placed {
                host: h as u32,
                segs: vec![(x, size)],
            }));
        }
        if self.cfg.compaction {
            if let Some(p) = self.compact_and_place(vm, size)? {
                return Ok(Some(p));
            }
        }
        if self.cfg.max_segments > 1 {
            return self.place_split(vm, size);
        }
        Ok(None)
    }

    /// Opens a one-segment window on the cheapest of the emptiest hosts.
    fn compact_and_place(&mut self, vm: u32, size: u64) -> Result<Option<Placed>, Error> {
        let mut hosts = self.cluster.with_free(size, HostPolicy::WorstFit);
        hosts.truncate(COMPACTION_HOSTS);
        let best = hosts
            .into_iter()
            .filter_map(|h| {
                self.cluster
                    .host(h)
                    .plan_compaction(size, self.cfg.escape_filter, self.cfg.compaction_budget)
                    .map(|p| (h, p))
            })
            .min_by_key(|(_, (_, _, cost))| *cost);
        let Some((h, (x, moves, cost))) = best else {
            return Ok(None);
        };
        self.cluster.update(h, |m| m.apply_moves(&moves))?;
        self.record_moves(&moves);
        let n = self.cluster.host(h).bad_pages_in(x, size);
        self.cluster.update(h, |m| m.allocate(x, size, vm))?;
        self.report.faults_absorbed += u64::from(n);
        self.report.compactions += 1;
        self.report.bytes_compacted += cost;
        Ok(Some(Placed {
            host: h as u32,
            segs: vec![(x, size)],
        }))
    }

    fn record_moves(&mut self, moves: &[Move]) {
        for m in moves {
            if let Some(p) = self.vms[m.owner as usize].as_mut() {
                for s in p.segs.iter_mut().filter(|s| s.0 == m.from) {
                    s.0 = m.to;
                }
            }
        }
    }

    /// Splits the VM over the largest clean holes of the first host (in policy order) where
    /// at most `max_segments` of them cover it; largest first, so the split is minimal.
    /// Split segments never cover faulted pages: escape filters are kept for single segments.
    fn place_split(&mut self, vm: u32, size: u64) -> Result<Option<Placed>, Error> {
        let k = self.cfg.max_segments;
        let mut plan = None;
        for h in self.cluster.with_free(size, self.cfg.host) {
            let host = self.cluster.host(h);
            // Cheap necessary conditions first: k of the largest raw extent, or of the longest
            // placeable segment, must cover it.
            if host.largest_extents(k).map(|e| e.1).sum::<u64>() < size
                || host.placeable().saturating_mul(k as u64) < size
            {
                continue;
            }
            let mut left = size;
            let mut segs = Vec::new();
            for (s, l) in host.largest_clean_holes(k) {
                let piece = left.min(l);
                left -= piece;
                segs.push((s, piece));
                if left == 0 {
                    break;
                }
            }
            if left == 0 {
                plan = Some((h, segs));
                break;
            }
        }
        let Some((h, mut segs)) = plan else {
            return Ok(None);
        };
        // Guest-physical order follows host address order, as a guest would hot-plug them.
        segs.sort_unstable();
        for &(s, l) in &segs {
            self.cluster.update(h, |m| m.allocate(s, l, vm))?;
        }
        Ok(Some(Placed {
            host: h as u32,
            segs,
        }))
    }

    fn depart(&mut self, i: usize) -> Result<(), Error> {
        self.report.events += 1;
        let Some(p) = self.vms[i].take() else {
            return Ok(()); // Rejected at arrival: already counted.
        };
        let h = p.host as usize;
        let size: u64 = p.segs.iter().map(|s| s.1).sum();
        self.live -= size;
        match self.cfg.mode {
            Mode::Paging => self.cluster.page(h, false, size),
            Mode::Segments => {
                for &(s, _) in &p.segs {
                    self.cluster.update(h, |m| m.release(s))?;
                }
                self.split[h].remove(&(i as u32));
                if self.cfg.balloon && !self.split[h].is_empty() {
                    self.balloon(h)?;
                }
            }
        }
        Ok(())
    }

    /// Self-ballooning: each multi-segment VM of host `h` gives back its segments and
    /// hot-adds one contiguous segment if the host now has one; bytes whose address changes
    /// count as moved.
    fn balloon(&mut self, h: usize) -> Result<(), Error> {
        let ids: Vec<u32> = self.split[h].iter().copied().collect();
        for vm in ids {
            let Some(p) = self.vms[vm as usize].clone() else {
                continue;
            };
            let size: u64 = p.segs.iter().map(|s| s.1).sum();
            // No cheap pre-check: the VM's own segments, once given back, may join the holes
            // between them into one extent larger than any free extent now.
            for &(s, _) in &p.segs {
                self.cluster.update(h, |m| m.release(s))?;
            }
            match self
                .cluster
                .host(h)
                .find(size, self.cfg.extent, self.cfg.escape_filter)
            {
                Some((x, n)) => {
                    self.cluster.update(h, |m| m.allocate(x, size, vm))?;
                    let mut off = 0;
                    let mut moved = 0;
                    for &(s, l) in &p.segs {
                        if s != x + off {
                            moved += l;
                        }
                        off += l;
                    }
                    self.report.faults_absorbed += u64::from(n);
                    self.report.bytes_ballooned += moved;
                    self.report.ballooned_vms += 1;
                    self.split[h].remove(&vm);
                    self.vms[vm as usize] = Some(Placed {
                        host: h as u32,
                        segs: vec![(x, size)],
                    });
                }
                None => {
                    for &(s, l) in &p.segs {
                        self.cluster.update(h, |m| m.allocate(s, l, vm))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The paper's figure: VMs in one segment over all VMs; none for the paging baseline.
fn fraction(r: &Report) -> Option<f64> {
    match r.mode {
        Mode::Paging => None,
        Mode::Segments if r.vms == 0 => Some(1.0),
        Mode::Segments => Some(r.single_segment as f64 / r.vms as f64),
    }
}

/// `first-fit`, or `first-fit/best-fit` when host and extent policies differ.
pub fn label(host: HostPolicy, extent: ExtentPolicy) -> String {
    let h = match host {
        HostPolicy::FirstFit => Fit::First,
        HostPolicy::BestFit => Fit::Best,
        HostPolicy::WorstFit => Fit::Worst,
    };
    let e = match extent {
        ExtentPolicy::FirstFit => Fit::First,
        ExtentPolicy::BestFit => Fit::Best,
        ExtentPolicy::WorstFit => Fit::Worst,
    };
    if h == e {
        h.to_string()
    } else {
        format!("{h}/{e}")
    }
}

/// Runs `w` once with `cfg`, without progress reporting.
pub fn simulate(w: &Workload, spec: &ClusterSpec, cfg: Config) -> Result<Report, Error> {
    Simulator::new(w, spec, cfg)?.run(&mut |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::size::GIB;
    use crate::placement::workload::VmRequest;

    fn spec(hosts: usize, gib: u64) -> ClusterSpec {
        ClusterSpec {
            hosts,
            host_memory: gib * GIB,
            reserved: 0,
            align: GIB,
            bad_pages_per_host: 0,
            seed: 0,
        }
    }

    fn vm(arrival: u64, lifetime: Option<u64>, gib: u64) -> VmRequest {
        VmRequest {
            arrival,
            lifetime,
            memory: gib * GIB,
        }
    }

    /// Four 1 GiB VMs fill an 4 GiB host; the 1st and 3rd leave; a 2 GiB VM then finds only
    /// two 1 GiB holes.
    fn checkerboard() -> Workload {
        Workload {
            source: "t".into(),
            vms: vec![
                vm(0, Some(10), 1),
                vm(1, None, 1),
                vm(2, Some(8), 1),
                vm(3, None, 1),
                vm(20, None, 2),
            ],
            start: 0,
            end: 100,
        }
    }

    #[test]
    fn fragmentation_forces_two_segments() {
        let w = checkerboard();
        let r = simulate(&w, &spec(1, 4), Config::default()).unwrap();
        assert_eq!((r.placed, r.rejected), (5, 0));
        assert_eq!(r.segments_histogram.get(&2), Some(&1));
        assert_eq!(r.single_segment, 4);
        assert!((r.single_segment_fraction.unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(r.events, 7);
        // With one segment allowed and nothing else, the VM is rejected.
        let r1 = simulate(
            &w,
            &spec(1, 4),
            Config {
                max_segments: 1,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(r1.rejected, 1);
        // The paging baseline takes it.
        let rp = simulate(
            &w,
            &spec(1, 4),
            Config {
                mode: Mode::Paging,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(rp.rejected, 0);
        assert_eq!(rp.single_segment_fraction, None);
        assert!(rp.segments_histogram.is_empty());
    }

    #[test]
    fn compaction_yields_one_segment() {
        let w = checkerboard();
        let cfg = Config {
            compaction: true,
            ..Config::default()
        };
        let r = simulate(&w, &spec(1, 4), cfg.clone()).unwrap();
        assert_eq!(r.single_segment, 5);
        assert_eq!((r.compactions, r.bytes_compacted), (1, GIB));
        // A budget below one segment forbids it: back to two segments.
        let r = simulate(
            &w,
            &spec(1, 4),
            Config {
                compaction_budget: GIB - 1,
                ..cfg
            },
        )
        .unwrap();
        assert_eq!((r.compactions, r.single_segment), (0, 4));
    }

    #[test]
    fn balloon_consolidates_when_space_frees() {
        let mut w = checkerboard();
        // The VM at 1G leaves at 30: the split VM (segments at 0 and 2G) can become one.
        w.vms[1].lifetime = Some(29);
        let r = simulate(
            &w,
            &spec(1, 4),
            Config {
                balloon: true,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(r.segments_histogram.get(&2), Some(&1));
        assert_eq!(r.ballooned_vms, 1);
        // First fit puts the new segment at 0: the first GiB stays, the second moves.
        assert_eq!(r.bytes_ballooned, GIB);
        let r = simulate(&w, &spec(1, 4), Config::default()).unwrap();
        assert_eq!(r.ballooned_vms, 0);
    }

    #[test]
    fn balloon_joins_own_segments_with_the_hole_between() {
        // 12 GiB: A[0,2) B[2,4) c[4,5) D[5,7) E[7,12). B and D leave; X (4 GiB) gets [2,4) and
        // [5,7). When c leaves, [2,7) is free once X gives its segments back.
        let w = Workload {
            source: "t".into(),
            vms: vec![
                vm(0, None, 2),
                vm(1, Some(9), 2),
                vm(2, Some(28), 1),
                vm(3, Some(7), 2),
                vm(4, None, 5),
                vm(20, None, 4),
            ],
            start: 0,
            end: 100,
        };
        let r = simulate(
            &w,
            &spec(1, 12),
            Config {
                balloon: true,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(r.segments_histogram.get(&2), Some(&1));
        assert_eq!((r.ballooned_vms, r.bytes_ballooned), (1, 2 * GIB));
    }

    #[test]
    fn escape_filter_absorbs_faulted_pages() {
        let w = Workload {
            source: "t".into(),
            vms: vec![vm(0, None, 4)],
            start: 0,
            end: 10,
        };
        let s = ClusterSpec {
            bad_pages_per_host: 1,
            ..spec(1, 4)
        };
        let r = simulate(
            &w,
            &s,
            Config {
                max_segments: 1,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(
            r.rejected, 1,
            "a whole-host segment must cover the faulted page"
        );
        let r = simulate(
            &w,
            &s,
            Config {
                max_segments: 1,
                escape_filter: 1,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!((r.rejected, r.faults_absorbed), (0, 1));
    }

    #[test]
    fn host_policies_differ() {
        let w = Workload {
            source: "t".into(),
            vms: vec![vm(0, None, 3), vm(1, None, 1), vm(2, None, 2)],
            start: 0,
            end: 10,
        };
        let run = |f: crate::placement::policy::Fit| {
            let cfg = Config {
                host: f.host(),
                extent: f.extent(),
                ..Config::default()
            };
            let sim = Simulator::new(&w, &spec(2, 4), cfg).unwrap();
            let (_, c) = sim.run_checked().unwrap();
            c.hosts()
                .iter()
                .map(|h| h.free_bytes() / GIB)
                .collect::<Vec<_>>()
        };
        use crate::placement::policy::Fit;
        // first-fit: 3G and 1G on host 0, 2G on host 1.
        assert_eq!(run(Fit::First), vec![0, 2]);
        // best-fit: same (host 0 has the least room that fits).
        assert_eq!(run(Fit::Best), vec![0, 2]);
        // worst-fit: 3G on 0, 1G on 1, 2G on 1 (3 free) .
        assert_eq!(run(Fit::Worst), vec![1, 1]);
    }

    #[test]
    fn labels_name_policies() {
        assert_eq!(
            label(HostPolicy::BestFit, ExtentPolicy::BestFit),
            "best-fit"
        );
        assert_eq!(
            label(HostPolicy::FirstFit, ExtentPolicy::WorstFit),
            "first-fit/worst-fit"
        );
    }

    #[test]
    fn samples_cover_the_run() {
        let w = checkerboard();
        let r = simulate(
            &w,
            &spec(1, 4),
            Config {
                samples: 10,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(r.fragmentation.len(), 10);
        assert!(r
            .fragmentation
            .iter()
            .all(|s| (0.0..=1.0).contains(&s.largest_over_free)));
        // Samples show the state just before the events of their instant: at t=20 the 1st and
        // 3rd VMs have left and the 2 GiB VM has not arrived: free memory is two holes.
        let s = r.fragmentation.iter().find(|s| s.t == 20).unwrap();
        assert!((s.largest_over_free - 0.5).abs() < 1e-12, "{s:?}");
    }
}
