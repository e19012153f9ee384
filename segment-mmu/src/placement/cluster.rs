//! A cluster of hosts and the indexes that pick a host without scanning all of them.
//!
//! Two indexes are kept up to date on every change: a max-segment-tree over hosts (for
//! first-fit: the lowest-numbered host whose key is large enough, in O(log n)) and an
//! ordered set of (free bytes, host) for best-fit and worst-fit. The key is the largest free
//! extent for segment placement, and the free bytes for the paging baseline.

use std::collections::BTreeSet;

use super::host::{self, HostMemory, PAGE};
use super::policy::{HostPolicy, Mode};
use super::rng::Rng;
use super::size::align_up;
use super::workload::Workload;

/// A cluster that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Zero hosts, or a utilisation target outside (0, 1].
    #[error("bad cluster: {0}")]
    Config(String),
    /// A host could not be built or was corrupted.
    #[error("host {host}: {source}")]
    Host {
        /// Host index.
        host: usize,
        /// Cause.
        source: host::Error,
    },
}

/// Most hosts a simulated cluster may have (each costs a few hundred bytes plus its free
/// lists; 10^5 hosts is a large datacenter cell).
pub const MAX_HOSTS: usize = 100_000;
/// Most hard-faulted pages over the whole cluster (8 bytes each, plus the hosts' extents).
pub const MAX_BAD_PAGES: usize = 1 << 20;

/// How many hosts, of what kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// Number of hosts.
    pub hosts: usize,
    /// Physical memory per host, bytes.
    pub host_memory: u64,
    /// Bytes at the bottom of each host kept by the host kernel.
    pub reserved: u64,
    /// Segment alignment (2 MiB or 1 GiB pages), bytes.
    pub align: u64,
    /// Hard-faulted 4 KiB pages per host, placed at random.
    pub bad_pages_per_host: usize,
    /// Seed for the faulted-page positions.
    pub seed: u64,
}

impl ClusterSpec {
    /// Memory a VM may use on one host.
    pub fn usable_per_host(&self) -> u64 {
        self.host_memory
            .saturating_sub(align_up(self.reserved, self.align.max(1)))
    }

    /// The host count that makes the workload's peak of live memory fill `peak_utilization`
    /// of the cluster: a cluster that is never full says nothing about fragmentation.
    pub fn auto_hosts(&self, w: &Workload, peak_utilization: f64) -> Result<usize, Error> {
        if !(peak_utilization > 0.0 && peak_utilization <= 1.0) {
            return Err(Error::Config(format!(
                "peak utilization {peak_utilization} is not in (0, 1]"
            )));
        }
        let usable = self.usable_per_host();
        if usable == 0 {
            return Err(Error::Config("hosts have no usable memory".into()));
        }
        let peak = w.peak_live_memory(self.align) as f64;
        Ok(((peak / peak_utilization / usable as f64).ceil() as usize).max(1))
    }
}

/// Max segment tree: `first_at_least` finds the lowest index whose value is >= a bound.
#[derive(Debug, Clone)]
struct MaxTree {
    n: usize,
    t: Vec<u64>,
}

impl MaxTree {
    fn new(len: usize) -> Self {
        let n = len.next_power_of_two().max(1);
        Self {
            n,
            t: vec![0; 2 * n],
        }
    }

    fn set(&mut self, i: usize, v: u64) {
        let mut p = i + self.n;
        self.t[p] = v;
        while p > 1 {
            p /= 2;
            self.t[p] = self.t[2 * p].max(self.t[2 * p + 1]);
        }
    }

    fn first_at_least(&self, from: usize, v: u64) -> Option<usize> {
        self.go(1, 0, self.n, from, v)
    }

    fn go(&self, node: usize, lo: usize, hi: usize, from: usize, v: u64) -> Option<usize> {
        if hi <= from || self.t[node] < v {
            return None;
        }
        if hi - lo == 1 {
            return Some(lo);
        }
        let mid = (lo + hi) / 2;
        self.go(2 * node, lo, mid, from, v)
            .or_else(|| self.go(2 * node + 1, mid, hi, from, v))
    }
}

/// The hosts of a cluster and their indexes.
#[derive(Debug, Clone)]
pub struct Cluster {
    hosts: Vec<HostMemory>,
    mode: Mode,
    /// Free bytes per host in paging mode (extents are not tracked there).
    paged_free: Vec<u64>,
    tree: MaxTree,
    by_free: BTreeSet<(u64, u32)>,
}

impl Cluster {
    /// Builds the cluster, with faulted pages drawn from the spec's seed, and escape filters
    /// of `escape_filter` pages.
    pub fn new(spec: &ClusterSpec, mode: Mode, escape_filter: u32) -> Result<Self, Error> {
        if spec.hosts == 0 || spec.hosts > MAX_HOSTS {
            return Err(Error::Config(format!(
                "{} hosts: must be between 1 and {MAX_HOSTS} (the cap MAX_HOSTS)",
                spec.hosts
            )));
        }
        let total_bad = spec.hosts.saturating_mul(spec.bad_pages_per_host);
        if spec.bad_pages_per_host as u64 > spec.host_memory / PAGE || total_bad > MAX_BAD_PAGES {
            return Err(Error::Config(format!(
                "{} bad pages per host over {} hosts: more than the host's pages or the {MAX_BAD_PAGES} in all (the cap MAX_BAD_PAGES)",
                spec.bad_pages_per_host, spec.hosts
            )));
        }
        let mut rng = Rng::new(spec.seed ^ 0xBAD_BA6E);
        let mut hosts = Vec::with_capacity(spec.hosts);
        for i in 0..spec.hosts {
            let pages = spec.host_memory / PAGE;
            let bad: Vec<u64> = (0..spec.bad_pages_per_host)
                .map(|_| rng.range(0, pages) * PAGE)
                .collect();
            hosts.push(
                HostMemory::new(spec.host_memory, spec.reserved, spec.align, &bad)
                    .map_err(|source| Error::Host { host: i, source })?
                    .with_escape_filter(escape_filter),
            );
        }
        let paged_free = hosts.iter().map(HostMemory::free_bytes).collect();
        let mut c = Self {
            tree: MaxTree::new(hosts.len()),
            by_free: BTreeSet::new(),
            hosts,
            mode,
            paged_free,
        };
        for h in 0..c.hosts.len() {
            c.tree.set(h, c.key(h));
            c.by_free.insert((c.free(h), h as u32));
        }
        Ok(c)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }
    /// Whether the cluster has no host (never, once built).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
    /// Host `h`.
    pub fn host(&self, h: usize) -> &HostMemory {
        &self.hosts[h]
    }
    /// All hosts.
    pub fn hosts(&self) -> &[HostMemory] {
        &self.hosts
    }
    /// Free bytes of host `h`.
    pub fn free(&self, h: usize) -> u64 {
        match self.mode {
            Mode::Segments => self.hosts[h].free_bytes(),
            Mode::Paging => self.paged_free[h],
        }
    }

    fn key(&self, h: usize) -> u64 {
        match self.mode {
            Mode::Segments => self.hosts[h].placeable(),
            Mode::Paging => self.paged_free[h],
        }
    }

    /// Changes host `h` through `f`, keeping the indexes right.
    pub fn update<T>(
        &mut self,
        h: usize,
        f: impl FnOnce(&mut HostMemory) -> Result<T, host::Error>,
    ) -> Result<T, Error> {
        let old = self.free(h);
        let r = f(&mut self.hosts[h]).map_err(|source| Error::Host { host: h, source });
        self.reindex(h, old);
        r
    }

    /// Takes (`take`) or gives back bytes in paging mode.
    pub fn page(&mut self, h: usize, take: bool, bytes: u64) {
        let old = self.free(h);
        if take {
            self.paged_free[h] -= bytes;
        } else {
            self.paged_free[h] += bytes;
        }
        self.reindex(h, old);
    }

    fn reindex(&mut self, h: usize, old_free: u64) {
        self.by_free.remove(&(old_free, h as u32));
        self.by_free.insert((self.free(h), h as u32));
        self.tree.set(h, self.key(h));
    }

    /// Hosts whose key (largest extent, or free bytes when paging) is at least `need`, in
    /// the order `policy` prefers them.
    pub fn candidates(
        &self,
        need: u64,
        policy: HostPolicy,
    ) -> Box<dyn Iterator<Item = usize> + '_> {
        match policy {
            HostPolicy::FirstFit => {
                let mut from = 0;
                Box::new(std::iter::from_fn(move || {
                    let h = self.tree.first_at_least(from, need)?;
                    from = h + 1;
                    (h < self.hosts.len()).then_some(h)
                }))
            }
            HostPolicy::BestFit => Box::new(
                self.by_free
                    .range((need, 0)..)
                    .map(|&(_, h)| h as usize)
                    .filter(move |&h| self.key(h) >= need),
            ),
            HostPolicy::WorstFit => Box::new(
                self.by_free
                    .iter()
                    .rev()
                    .take_while(move |&&(f, _)| f >= need)
                    .map(|&(_, h)| h as usize)
                    .filter(move |&h| self.key(h) >= need),
            ),
        }
    }

    /// Hosts with at least `need` free bytes (contiguous or not), in `policy` order: the
    /// hosts where a split placement or a compaction might succeed.
    pub fn with_free(&self, need: u64, policy: HostPolicy) -> Vec<usize> {
        match policy {
            HostPolicy::FirstFit => (0..self.hosts.len())
                .filter(|&h| self.free(h) >= need)
                .collect(),
            HostPolicy::BestFit => self
                .by_free
                .range((need, 0)..)
                .map(|&(_, h)| h as usize)
                .collect(),
            HostPolicy::WorstFit => self
                .by_free
                .iter()
                .rev()
                .take_while(|&&(f, _)| f >= need)
                .map(|&(_, h)| h as usize)
                .collect(),
        }
    }

    /// Checks every host and that the indexes match the hosts.
    pub fn check(&self) -> Result<(), Error> {
        for (h, host) in self.hosts.iter().enumerate() {
            host.check()
                .map_err(|source| Error::Host { host: h, source })?;
            if self.tree.t[self.tree.n + h] != self.key(h)
                || !self.by_free.contains(&(self.free(h), h as u32))
            {
                return Err(Error::Host {
                    host: h,
                    source: host::Error::Invariant("cluster index is stale".into()),
                });
            }
        }
        if self.by_free.len() != self.hosts.len() {
            return Err(Error::Config("free index has stale entries".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::size::GIB;
    use crate::placement::workload::VmRequest;

    fn spec(hosts: usize) -> ClusterSpec {
        ClusterSpec {
            hosts,
            host_memory: 8 * GIB,
            reserved: 0,
            align: GIB,
            bad_pages_per_host: 0,
            seed: 1,
        }
    }

    #[test]
    fn tree_finds_leftmost() {
        let mut t = MaxTree::new(5);
        for (i, v) in [3, 1, 4, 1, 5].into_iter().enumerate() {
            t.set(i, v);
        }
        assert_eq!(t.first_at_least(0, 4), Some(2));
        assert_eq!(t.first_at_least(3, 4), Some(4));
        assert_eq!(t.first_at_least(0, 6), None);
        assert_eq!(
            t.first_at_least(5, 0),
            Some(5),
            "padding leaves are visible to callers that do not bound"
        );
    }

    #[test]
    fn candidates_follow_policy() {
        let mut c = Cluster::new(&spec(3), Mode::Segments, 0).unwrap();
        c.update(0, |h| h.allocate(0, 6 * GIB, 1)).unwrap();
        c.update(1, |h| h.allocate(0, 2 * GIB, 2)).unwrap();
        let order = |p| c.candidates(2 * GIB, p).collect::<Vec<_>>();
        assert_eq!(order(HostPolicy::FirstFit), vec![0, 1, 2]);
        assert_eq!(order(HostPolicy::BestFit), vec![0, 1, 2]);
        assert_eq!(order(HostPolicy::WorstFit), vec![2, 1, 0]);
        assert_eq!(
            c.candidates(7 * GIB, HostPolicy::FirstFit)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(c.with_free(3 * GIB, HostPolicy::WorstFit), vec![2, 1]);
        c.check().unwrap();
    }

    #[test]
    fn auto_hosts_sizes_from_peak() {
        let w = Workload {
            source: "t".into(),
            vms: (0..10)
                .map(|i| VmRequest {
                    arrival: i,
                    lifetime: None,
                    memory: 9 * GIB / 10,
                })
                .collect(),
            start: 0,
            end: 100,
        };
        // 10 VMs of 1 GiB (aligned) = 10 GiB; 90% of 8 GiB hosts = 7.2 GiB each -> 2 hosts.
        assert_eq!(spec(1).auto_hosts(&w, 0.9), Ok(2));
        assert_eq!(spec(1).auto_hosts(&w, 0.5), Ok(3));
        assert!(spec(1).auto_hosts(&w, 0.0).is_err());
        assert!(Cluster::new(&spec(0), Mode::Segments, 0).is_err());
    }
}
