//! The measurement guest's side of the signal MMIO window: it timestamps the guest's
//! "start" and "stop" with the VMM's own clock (to cross-check the guest's TSC), reads
//! KVM's vCPU counters at both so that the timed part's exits and shadow page faults are
//! known, runs the ptsnap hook, and copies the results page before the VM ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use workloads::protocol::{
    MMIO_FAULT, MMIO_PTSNAP, MMIO_RESULT, MMIO_START, MMIO_STOP, RESULTS_VA,
};

use crate::devices::{DeviceAction, MmioHandler};
use crate::vstate::stats::StatsFd;

/// Called when the guest signals that its data is allocated and touched (issue #6 takes a
/// page-table capture there). Gets the vCPU so it can read CR3/CR4/EFER. Returning a
/// file asks the VMM for a page-table capture there (`DeviceAction::Ptsnap`: the vCPU
/// loop pauses the other vCPUs, captures and resumes); `None` asks for nothing.
pub type PtsnapHook =
    Arc<dyn Fn(&VcpuFd) -> Result<Option<std::path::PathBuf>, HookError> + Send + Sync>;

/// Why a ptsnap hook failed: its own words (the hook is the caller's code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ptsnap hook: {0}")]
pub struct HookError(pub String);

/// Exit status the device gives the VM when the guest's ring-0 stub reports a fault.
pub const FAULT_EXIT_STATUS: i32 = 70;

/// Words of the results page that are copied back.
pub const RESULT_WORDS: usize = 32;

/// What the device saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// VMM clock at the guest's start signal.
    pub start: Option<Instant>,
    /// VMM clock at the stop signal.
    pub stop: Option<Instant>,
    /// vCPU counters at start (empty when the host has no binary stats).
    pub stats_start: BTreeMap<String, u64>,
    /// vCPU counters at stop.
    pub stats_stop: BTreeMap<String, u64>,
    /// The results page (when the guest signalled a result or a fault).
    pub results: Option<[u64; RESULT_WORDS]>,
    /// Whether the ring-0 stub reported a fault.
    pub fault: bool,
    /// Ptsnap hook calls and their outcome.
    pub ptsnaps: Vec<Result<(), HookError>>,
}

/// The device behind the window.
pub struct ProbeDevice {
    state: Mutex<State>,
    ptsnap: Option<PtsnapHook>,
}

struct State {
    /// Guest memory, attached by the loader; only read while the VM runs.
    mem: Option<GuestMemoryMmap>,
    stats: Option<StatsFd>,
    outcome: Outcome,
}

impl std::fmt::Debug for ProbeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeDevice")
            .field("ptsnap_hook", &self.ptsnap.is_some())
            .finish()
    }
}

impl ProbeDevice {
    /// A device with an optional ptsnap hook.
    pub fn new(ptsnap: Option<PtsnapHook>) -> Self {
        ProbeDevice {
            state: Mutex::new(State {
                mem: None,
                stats: None,
                outcome: Outcome::default(),
            }),
            ptsnap,
        }
    }

    /// Gives the device the guest memory to read the results page from.
    pub fn attach(&self, mem: GuestMemoryMmap) {
        if let Ok(mut s) = self.state.lock() {
            s.mem = Some(mem);
        }
    }

    /// What was seen (and drops the memory view: the VM is over).
    pub fn outcome(&self) -> Outcome {
        match self.state.lock() {
            Ok(mut s) => {
                s.mem = None;
                s.outcome.clone()
            }
            Err(_) => Outcome::default(),
        }
    }

    fn read_stats(state: &mut State, vcpu: &VcpuFd) -> BTreeMap<String, u64> {
        if state.stats.is_none() {
            state.stats = StatsFd::open(vcpu).ok();
        }
        state
            .stats
            .as_ref()
            .and_then(|s| s.read().ok())
            .unwrap_or_default()
    }

    fn copy_results(state: &mut State) {
        let mut words = [0u64; RESULT_WORDS];
        if let Some(mem) = &state.mem {
            let mut bytes = [0u8; RESULT_WORDS * 8];
            if mem.read_slice(&mut bytes, GuestAddress(RESULTS_VA)).is_ok() {
                for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    *w = u64::from_le_bytes(a);
                }
                state.outcome.results = Some(words);
            }
        }
    }
}

impl MmioHandler for ProbeDevice {
    fn write(&self, vcpu: &VcpuFd, offset: u64, data: &[u8]) -> DeviceAction {
        let Ok(mut s) = self.state.lock() else {
            return DeviceAction::Exit(FAULT_EXIT_STATUS);
        };
        match offset {
            MMIO_START => {
                s.outcome.stats_start = Self::read_stats(&mut s, vcpu);
                s.outcome.start = Some(Instant::now());
            }
            MMIO_STOP => {
                s.outcome.stop = Some(Instant::now());
                s.outcome.stats_stop = Self::read_stats(&mut s, vcpu);
            }
            MMIO_PTSNAP => {
                if let Some(hook) = &self.ptsnap {
                    let r = hook(vcpu);
                    s.outcome
                        .ptsnaps
                        .push(r.as_ref().map(|_| ()).map_err(Clone::clone));
                    if let Ok(Some(path)) = r {
                        return DeviceAction::Ptsnap(path);
                    }
                }
            }
            MMIO_RESULT => {
                Self::copy_results(&mut s);
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                return DeviceAction::Exit(i32::from_le_bytes(v));
            }
            MMIO_FAULT => {
                Self::copy_results(&mut s);
                s.outcome.fault = true;
                return DeviceAction::Exit(FAULT_EXIT_STATUS);
            }
            _ => {}
        }
        DeviceAction::Continue
    }

    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
}
