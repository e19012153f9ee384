//! vCPU set-up (registers for each entry mode, CPUID, FPU, local APIC) and the run loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::emulate;
use crate::boot::layout::{BOOT_STACK, GDT, IDT, PML4, PVH_INFO, ZERO_PAGE};
use crate::boot::Entry;
use crate::devices::{DeviceAction, Devices};
use crate::memory::GuestRam;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        /// vCPU.
        id: u8,
        /// Step.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Initial register state of a vCPU.
#[derive(Debug, Clone, Copy)]
pub struct VcpuInit {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
}

fn seg(selector: u16, type_: u8, l: u8, db: u8, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl VcpuInit {
    /// The state a boot protocol expects at the first instruction.
    pub fn for_entry(entry: Entry, base: kvm_sregs) -> Self {
        let mut sregs = base;
        let mut regs = kvm_regs {
            rflags: 2,
            ..Default::default()
        };
        sregs.gdt.base = GDT;
        sregs.gdt.limit = 4 * 8 - 1;
        sregs.idt.base = IDT;
        sregs.idt.limit = 7;
        let mut tr = seg(0, 11, 0, 0, 0);
        tr.s = 0;
        tr.limit = 0xfff;
        tr.g = 0;
        sregs.tr = tr;
        sregs.ldt.unusable = 1;
        match entry {
            Entry::Linux64 { rip } => {
                sregs.cs = seg(0x8, 11, 1, 0, 0);
                let data = seg(0x10, 3, 0, 1, 0);
                (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
                sregs.cr3 = PML4;
                sregs.cr4 = 1 << 5; // PAE
                sregs.cr0 = 0x8000_0011; // PG | ET | PE
                sregs.efer = (1 << 8) | (1 << 10); // LME | LMA
                regs.rip = rip;
                regs.rsp = BOOT_STACK;
                regs.rbp = BOOT_STACK;
                regs.rsi = ZERO_PAGE;
            }
            Entry::Pvh { rip } => {
                sregs.cs = seg(0x18, 11, 0, 1, 0);
                let data = seg(0x10, 3, 0, 1, 0);
                (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
                sregs.cr0 = 0x11; // PE | ET
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rip = rip;
                regs.rbx = PVH_INFO;
            }
        }
        VcpuInit { regs, sregs }
    }
}

/// Programs CPUID, FPU, LAPIC (LINT0 ExtINT, LINT1 NMI) and registers.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    cpuid: &CpuId,
    init: Option<&VcpuInit>,
) -> Result<(), Error> {
    let e = |what| move |source| Error::Kvm { id, what, source };
    vcpu.set_cpuid2(cpuid).map_err(e("KVM_SET_CPUID2"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(e("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    let set = |l: &mut kvm_bindings::kvm_lapic_state, off: usize, mode: u32| {
        let mut v = u32::from_le_bytes([
            l.regs[off] as u8,
            l.regs[off + 1] as u8,
            l.regs[off + 2] as u8,
            l.regs[off + 3] as u8,
        ]);
        v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            l.regs[off + i] = *b as _;
        }
    };
    set(&mut lapic, 0x350, 0x7); // LINT0: ExtINT
    set(&mut lapic, 0x360, 0x4); // LINT1: NMI
    vcpu.set_lapic(&lapic).map_err(e("KVM_SET_LAPIC"))?;
    if let Some(init) = init {
        vcpu.set_sregs(&init.sregs).map_err(e("KVM_SET_SREGS"))?;
        vcpu.set_regs(&init.regs).map_err(e("KVM_SET_REGS"))?;
    }
    Ok(())
}

/// Why a vCPU stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum VcpuStop {
    /// The guest wrote its status to the signal device.
    GuestExit(i32),
    /// The guest pulsed the reset line.
    Reset,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault {
        /// RIP at the time.
        rip: u64,
    },
    /// HLT with no in-kernel irqchip to wake it, or an exit we do not handle.
    Unhandled(String),
    /// An instruction neither KVM nor segvmm can run.
    EmulationFailure(String),
    /// Asked to stop by the VMM.
    Stopped,
}

/// A vCPU's registers as read while it was paused.
#[derive(Debug, Clone, Copy)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers (CR3, CR4, EFER for ptsnaps).
    pub sregs: kvm_sregs,
}

#[derive(Debug, Default)]
struct PauseState {
    paused: usize,
    states: Vec<Option<VcpuState>>,
}

/// Stop and pause requests shared by the VMM and its vCPU threads. A vCPU thread notices
/// them between exits; the VMM kicks threads out of KVM_RUN with a signal (see
/// `machine`), so a request is seen within one exit.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause: AtomicBool,
    state: Mutex<PauseState>,
    cv: Condvar,
}

impl VcpuControl {
    /// A control for `n` vCPUs.
    pub fn new(n: usize) -> Self {
        VcpuControl {
            state: Mutex::new(PauseState {
                paused: 0,
                states: vec![None; n],
            }),
            ..Default::default()
        }
    }

    /// Asks every vCPU to stop for good.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.pause.store(false, Ordering::Release);
        self.cv.notify_all();
    }

    /// Asks every vCPU to pause; `kick` is called repeatedly until all `n` are paused or
    /// `timeout` passes. Returns each vCPU's registers.
    pub fn pause_all(
        &self,
        n: usize,
        timeout: Duration,
        kick: impl Fn(),
    ) -> Result<Vec<VcpuState>, String> {
        self.pause.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        loop {
            {
                let st = self
                    .state
                    .lock()
                    .map_err(|_| "vCPU control lock poisoned".to_string())?;
                if st.paused >= n {
                    return Ok(st.states.iter().flatten().copied().collect());
                }
            }
            if Instant::now() > deadline {
                self.resume_all();
                return Err(format!("vCPUs did not pause within {timeout:?}"));
            }
            kick();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume_all(&self) {
        self.pause.store(false, Ordering::Release);
        self.cv.notify_all();
    }

    /// Called by a vCPU thread between exits: parks while a pause is requested.
    fn park_if_asked(&self, id: usize, vcpu: &VcpuFd) {
        if !self.pause.load(Ordering::Acquire) {
            return;
        }
        let state = match (vcpu.get_regs(), vcpu.get_sregs()) {
            (Ok(regs), Ok(sregs)) => Some(VcpuState { regs, sregs }),
            _ => None,
        };
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(slot) = st.states.get_mut(id) {
            *slot = state;
        }
        st.paused += 1;
        while self.pause.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
            st = match self.cv.wait_timeout(st, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
        st.paused -= 1;
    }
}

/// The vCPU loop: runs until the guest ends, fails, or a stop is requested (the VMM then
/// kicks the thread out of KVM_RUN with a signal); parks while a pause is requested.
///
/// With dirty rings (`rings`), a vCPU whose ring is full stops with
/// `KVM_EXIT_DIRTY_RING_FULL` (kvm-ioctls has no variant for it: `Unsupported(31)`) and
/// KVM will not run it again until entries are reset; the thread harvests its own ring
/// into the tracker and resets instead of waiting for the collector's next interval.
pub fn run_loop(
    id: usize,
    vcpu: &mut VcpuFd,
    ram: &GuestRam,
    devices: &Devices,
    ctl: &VcpuControl,
    counters: &Arc<emulate::Counters>,
    rings: Option<&crate::dirty::ring::Rings>,
) -> VcpuStop {
    loop {
        ctl.park_if_asked(id, vcpu);
        if ctl.stop.load(Ordering::Acquire) {
            return VcpuStop::Stopped;
        }
        let action = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => devices.pio_write(port, data),
            Ok(VcpuExit::IoIn(port, data)) => {
                devices.pio_read(port, data);
                DeviceAction::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let d = data.to_vec();
                devices.mmio_write(vcpu, addr, &d)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                devices.mmio_read(addr, data);
                DeviceAction::Continue
            }
            Ok(VcpuExit::Shutdown) => {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return VcpuStop::TripleFault { rip };
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: reading `internal.suberror` of the kvm_run union after a
                // KVM_EXIT_INTERNAL_ERROR exit; plain integers.
                let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                if sub != kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                    return VcpuStop::Unhandled(format!("KVM internal error, suberror {sub}"));
                }
                match emulate::complete(vcpu, ram, counters) {
                    Ok(()) => DeviceAction::Continue,
                    Err(e) => return VcpuStop::EmulationFailure(e.to_string()),
                }
            }
            Ok(VcpuExit::Intr) => DeviceAction::Continue,
            Ok(VcpuExit::Hlt) => {
                return VcpuStop::Unhandled(
                    "guest halted with no interrupt controller to wake it".into(),
                )
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return VcpuStop::Unhandled(format!(
                    "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on cpu {cpu}"
                ))
            }
            Ok(VcpuExit::Unsupported(kvm_bindings::KVM_EXIT_DIRTY_RING_FULL)) => match rings {
                Some(r) => match r.on_full(id) {
                    Ok(()) => DeviceAction::Continue,
                    Err(e) => return VcpuStop::Unhandled(format!("KVM_EXIT_DIRTY_RING_FULL: {e}")),
                },
                None => {
                    return VcpuStop::Unhandled(
                        "KVM_EXIT_DIRTY_RING_FULL without dirty rings mapped".into(),
                    )
                }
            },
            Ok(other) => return VcpuStop::Unhandled(format!("unhandled KVM exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                DeviceAction::Continue
            }
            Err(e) => return VcpuStop::Unhandled(format!("KVM_RUN failed: {e}")),
        };
        match action {
            DeviceAction::Continue => {}
            DeviceAction::Exit(s) => return VcpuStop::GuestExit(s),
            DeviceAction::Reset => return VcpuStop::Reset,
            DeviceAction::Ptsnap(path) => {
                let r = match devices.ptsnaps.get() {
                    Some(svc) => svc
                        .ptsnap_from_vcpu(vcpu, &path)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Err("this VM has no ptsnap service".to_string()),
                };
                if let Err(e) = r {
                    return VcpuStop::Unhandled(format!(
                        "guest-requested ptsnap to {}: {e}",
                        path.display()
                    ));
                }
            }
        }
    }
}
