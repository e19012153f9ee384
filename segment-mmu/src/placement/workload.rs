//! What the simulator consumes: VM arrivals with a size and a lifetime.
//!
//! Every trace format is turned into this one shape, so policies and results never depend on
//! where the VMs came from.

use super::size::align_up;

/// One VM request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmRequest {
    /// Arrival time, seconds from the start of the source's clock.
    pub arrival: u64,
    /// Seconds it lives; `None` when it outlives the simulation (a censored lifetime).
    pub lifetime: Option<u64>,
    /// Memory asked for, bytes.
    pub memory: u64,
}

impl VmRequest {
    /// When it leaves, or `None` when it is still running at `end`.
    pub fn departure(&self, end: u64) -> Option<u64> {
        self.lifetime.map(|l| self.arrival + l).filter(|&d| d < end)
    }
}

/// A whole workload, arrivals in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Where it came from, for reports.
    pub source: String,
    /// VMs in arrival order.
    pub vms: Vec<VmRequest>,
    /// First instant simulated.
    pub start: u64,
    /// Instant the simulation stops; VMs alive then are never released.
    pub end: u64,
}

impl Workload {
    /// Peak of live VM memory over time, with each VM rounded up to `align` as the simulator
    /// places it. Departures at an instant are counted before arrivals at the same instant,
    /// as the simulator processes them.
    pub fn peak_live_memory(&self, align: u64) -> u64 {
        let mut ev: Vec<(u64, bool, u64)> = Vec::with_capacity(self.vms.len() * 2);
        for v in &self.vms {
            let m = align_up(v.memory, align);
            ev.push((v.arrival, true, m));
            if let Some(d) = v.departure(self.end) {
                ev.push((d, false, m));
            }
        }
        ev.sort_unstable();
        let (mut live, mut peak) = (0u64, 0u64);
        for (_, arrive, m) in ev {
            if arrive {
                live += m;
                peak = peak.max(live);
            } else {
                live -= m;
            }
        }
        peak
    }

    /// Total memory asked for by all VMs, bytes.
    pub fn total_memory(&self) -> u64 {
        self.vms.iter().map(|v| v.memory).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_departures_first() {
        let w = Workload {
            source: "t".into(),
            vms: vec![
                VmRequest {
                    arrival: 0,
                    lifetime: Some(10),
                    memory: 4,
                },
                VmRequest {
                    arrival: 10,
                    lifetime: Some(10),
                    memory: 4,
                },
                VmRequest {
                    arrival: 5,
                    lifetime: None,
                    memory: 2,
                },
            ],
            start: 0,
            end: 100,
        };
        assert_eq!(w.peak_live_memory(1), 6);
        assert_eq!(w.peak_live_memory(4), 8);
        assert_eq!(w.vms[2].departure(w.end), None);
        assert_eq!(w.vms[0].departure(w.end), Some(10));
        assert_eq!(w.vms[0].departure(5), None);
        assert_eq!(w.total_memory(), 10);
    }
}
