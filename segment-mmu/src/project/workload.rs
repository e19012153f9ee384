//! The streams of the five measured workloads, as the projection replays them.
//!
//! A measured run times a loop; the projection must replay *that loop's* accesses in the
//! state the loop found the machine in. So each workload's stream has three parts:
//!
//! 1. a **prelude**: what the workload did to its buffer before the timed part, replayed
//!    so that TLBs, walk caches and (for shadow paging) the shadow table are in the state
//!    the timed part met. `stream` initialises its three arrays before timing, so its
//!    prelude writes every 4 KiB page once; `touch` and `ptchurn` time from a cold buffer
//!    (their whole point), so they have none; chase and GUPS warm up on their own stream
//!    (below) instead.
//! 2. **warm-up operations** ([`WorkloadStream::warm_ops`]): the first W operations of the
//!    timed stream, replayed but not counted. Only chase and GUPS need them: their random
//!    streams reach a steady state only after every page has been visited several times;
//!    `stream` is steady from its first element (each page is new to the TLB in every
//!    pass), and counting `touch` and `ptchurn` from their first operation is the point.
//! 3. the **counted operations**: the next N operations of the timed loop.
//!
//! One operation is what the bench divides its time by: a chase step (one load), a GUPS
//! update (one read-modify-write), a triad element (`a[i] = b[i] + s·c[i]`: two loads and
//! a store), a touched 4 KiB page (one store), a ptchurn cycle (map, store, load, unmap:
//! two page-table writes and two accesses). The projection therefore divides counts by
//! operations, not by accesses ([`super::Features::per_op`]).
//!
//! Chase and GUPS use the `workloads` generators the guest runs (same seed, same order);
//! `stream`, `touch` and `ptchurn` are deterministic loops whose addresses follow from the
//! footprint alone (`workloads::kernels::stream_elems`, `TOUCH_PAGE_BYTES`, the slot
//! layout of `kernels::ptchurn_run`).

use std::collections::HashSet;

use workloads::kernels::{self, Workload, TOUCH_PAGE_BYTES};

use crate::stream::gen::{Chase, Gups};
use crate::stream::{AddressStream, Event, EventKind, IterStream};

/// Largest number of warm-up operations replayed before counting (chase, GUPS).
pub const MAX_WARM_OPS: u64 = 16 << 20;

/// One run's workload stream: what the measured loop did, address by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadStream {
    /// The workload.
    pub workload: Workload,
    /// Buffer bytes.
    pub footprint: u64,
    /// Seed of the random streams (chase, GUPS).
    pub seed: u64,
    /// Virtual address of the buffer's first byte.
    pub base: u64,
    /// `ptchurn` only: bytes per slot (the guest page size the stub maps; natively one
    /// 4 KiB `mmap`). Ignored by the other workloads.
    pub slot_bytes: u64,
}

/// Events of a cycle of ptchurn on one slot: map, write, read back, unmap.
fn churn_cycle(va: u64) -> [Event; 4] {
    [
        Event {
            va,
            kind: EventKind::Map,
        },
        Event::write(va),
        Event::read(va),
        Event {
            va,
            kind: EventKind::Unmap,
        },
    ]
}

impl WorkloadStream {
    /// Operations of the timed loop replayed, uncounted, before the `n` counted ones:
    /// for chase and GUPS at least `n`, and 8 per 4 KiB page of the footprint (a
    /// uniformly random stream then leaves e^-8 ≈ 0.03% of the pages unvisited, so the
    /// shadow table and the TLBs are in the steady state of the measured warm loop), at
    /// most [`MAX_WARM_OPS`]; zero for the others (see the module docs).
    pub fn warm_ops(&self, n: u64) -> u64 {
        match self.workload {
            Workload::Chase | Workload::Gups => {
                n.max((8 * (self.footprint / 4096)).min(MAX_WARM_OPS))
            }
            Workload::Stream | Workload::Touch | Workload::PtChurn => 0,
        }
    }

    /// Operations the timed loop can perform at most without repeating itself in a way
    /// the model does not follow: a touch run touches each page once.
    pub fn max_ops(&self) -> Option<u64> {
        match self.workload {
            Workload::Touch => Some((self.footprint / TOUCH_PAGE_BYTES as u64).max(1)),
            _ => None,
        }
    }

    fn slots(&self) -> u64 {
        (self.footprint / self.slot_bytes.max(1)).max(1)
    }

    /// Prelude events (see the module docs).
    fn prelude(&self) -> Box<dyn Iterator<Item = Event> + Send> {
        match self.workload {
            Workload::Stream => {
                let (base, pages) = (self.base, self.footprint / 4096);
                Box::new((0..pages).map(move |p| Event::write(base + 4096 * p)))
            }
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The timed loop's first `ops` operations as events.
    fn timed(&self, ops: u64) -> Box<dyn Iterator<Item = Event> + Send> {
        let base = self.base;
        match self.workload {
            Workload::Chase => Box::new(Chase::new(base, self.footprint, ops, self.seed)),
            Workload::Gups => Box::new(Gups::new(base, self.footprint, ops, self.seed)),
            Workload::Stream => {
                // a, b and c back to back, `n` u64 elements each; passes wrap.
                let n = kernels::stream_elems((self.footprint / 8) as usize).max(1) as u64;
                Box::new((0..ops).flat_map(move |k| {
                    let i = k % n;
                    [
                        Event::read(base + 8 * (n + i)),
                        Event::read(base + 8 * (2 * n + i)),
                        Event::write(base + 8 * i),
                    ]
                }))
            }
            Workload::Touch => {
                let page = TOUCH_PAGE_BYTES as u64;
                Box::new((0..ops).map(move |p| Event::write(base + page * p)))
            }
            Workload::PtChurn => {
                let (slots, bytes) = (self.slots(), self.slot_bytes.max(1));
                Box::new((0..ops).flat_map(move |i| churn_cycle(base + bytes * (i % slots))))
            }
        }
    }

    /// The stream to replay: prelude, then the first `ops` operations of the timed loop.
    /// Replaying it with `ops = W` and with `ops = W + N` and subtracting the counts gives
    /// operations W..W+N in the state the measured loop met them.
    pub fn build(&self, ops: u64) -> Box<dyn AddressStream> {
        Box::new(IterStream::new(self.prelude().chain(self.timed(ops)), None))
    }

    /// Host pages of `host_page` bytes that operations `warm..warm + n` of the timed
    /// loop touch for the first time (not touched by the prelude or earlier operations),
    /// per operation. This is what a VMM that fills the host dimension lazily (KVM's EPT
    /// or NPT: one exit per host page on the guest's first access) pays in the counted
    /// part. The buffer is assumed host-page aligned in guest-physical memory (the
    /// measurement guest places it 2 MiB aligned; a native buffer is its own host
    /// memory), so virtual offsets from the base stand for guest-physical ones. Only
    /// `touch` and `ptchurn` touch fresh memory in their timed part; the others return 0
    /// without replaying (their buffers were written before the timing started).
    pub fn first_touches_per_op(&self, warm: u64, n: u64, host_page: u64) -> f64 {
        if n == 0 || !matches!(self.workload, Workload::Touch | Workload::PtChurn) {
            return 0.0;
        }
        let page = host_page.max(1);
        let mut seen = HashSet::new();
        let key = |e: &Event| e.va.wrapping_sub(self.base) / page;
        for e in self.prelude().chain(self.timed(warm)) {
            if e.is_access() {
                seen.insert(key(&e));
            }
        }
        let mut fresh = 0u64;
        for e in self
            .timed(warm + n)
            .skip(warm as usize * self.events_per_op())
        {
            if e.is_access() && seen.insert(key(&e)) {
                fresh += 1;
            }
        }
        fresh as f64 / n as f64
    }

    /// Events per operation of the timed loop (for skipping operations).
    fn events_per_op(&self) -> usize {
        match self.workload {
            Workload::Chase | Workload::Gups | Workload::Touch => 1,
            Workload::Stream => 3,
            Workload::PtChurn => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(workload: Workload, slot_bytes: u64) -> WorkloadStream {
        WorkloadStream {
            workload,
            footprint: 8 << 20,
            seed: 3,
            base: 0x40_0000_0000,
            slot_bytes,
        }
    }

    fn events(w: &WorkloadStream, ops: u64) -> Vec<Event> {
        let mut s = w.build(ops);
        let mut v = Vec::new();
        while let Some(e) = s.next_event().unwrap() {
            v.push(e);
        }
        v
    }

    #[test]
    fn stream_is_a_page_sweep_then_the_triad() {
        let w = ws(Workload::Stream, 0);
        let v = events(&w, 2);
        let pages = (8 << 20) / 4096;
        assert_eq!(v.len(), pages + 6);
        let n = kernels::stream_elems((8 << 20) / 8) as u64;
        assert_eq!(
            &v[pages..],
            &[
                Event::read(w.base + 8 * n),
                Event::read(w.base + 16 * n),
                Event::write(w.base),
                Event::read(w.base + 8 * (n + 1)),
                Event::read(w.base + 8 * (2 * n + 1)),
                Event::write(w.base + 8),
            ]
        );
        assert_eq!(w.warm_ops(1000), 0);
        assert_eq!(w.first_touches_per_op(0, 1000, 4096), 0.0);
    }

    #[test]
    fn touch_writes_each_page_once_from_cold() {
        let w = ws(Workload::Touch, 0);
        let v = events(&w, 3);
        assert_eq!(
            v,
            vec![
                Event::write(w.base),
                Event::write(w.base + 4096),
                Event::write(w.base + 8192)
            ]
        );
        assert_eq!(w.max_ops(), Some(2048));
        // Every touch is a fresh 4 KiB host page; one 2 MiB host page per 512 touches.
        assert_eq!(w.first_touches_per_op(0, 2048, 4096), 1.0);
        assert_eq!(w.first_touches_per_op(0, 2048, 2 << 20), 4.0 / 2048.0);
    }

    #[test]
    fn ptchurn_cycles_over_its_slots() {
        let w = ws(Workload::PtChurn, 2 << 20);
        let v = events(&w, 5);
        assert_eq!(v.len(), 20);
        // Four 2 MiB slots in 8 MiB: the fifth cycle reuses slot 0.
        assert_eq!(v[16].va, w.base);
        assert_eq!(v[16].kind, EventKind::Map);
        assert_eq!(v[19].kind, EventKind::Unmap);
        assert_eq!(v[4].va, w.base + (2 << 20));
        // Over 8 cycles, only the first 4 touch a new 2 MiB page.
        assert_eq!(w.first_touches_per_op(0, 8, 2 << 20), 0.5);
        assert_eq!(w.first_touches_per_op(4, 4, 2 << 20), 0.0);
        assert_eq!(w.warm_ops(100), 0);
    }

    #[test]
    fn chase_and_gups_warm_up_on_their_own_stream() {
        let w = ws(Workload::Gups, 0);
        assert_eq!(w.warm_ops(10), 8 * 2048);
        assert_eq!(w.warm_ops(1 << 20), 1 << 20);
        let v = events(&w, 4);
        let want: Vec<Event> = Gups::new(w.base, 8 << 20, 4, 3).collect();
        assert_eq!(v, want);
        assert_eq!(w.first_touches_per_op(0, 100, 4096), 0.0);
    }
}
