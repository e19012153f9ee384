//! The vCPU thread as an explicit state machine, after Firecracker's: **Running** (in and
//! out of KVM_RUN, exits dispatched to the device bus), **Paused** (parked on its event
//! channel, registers read fresh when it stopped) and **Exited** (the guest ended or
//! failed; the thread still answers the VMM until told to finish).
//!
//! The VMM drives a thread through a [`VcpuHandle`]: it queues an event and kicks the
//! thread with a signal. The signal handler sets `kvm_run.immediate_exit` through a
//! thread-local pointer, so a kick that lands just before KVM_RUN makes it return at once
//! and one that lands inside makes it return with EINTR: an event is seen within one exit,
//! with no polling and no sleep. What the thread reports goes to the VM through
//! [`VcpuHooks`], which the VM layer implements (dirty tracking and page-table captures
//! attach there; this module imports neither).

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Once};
use std::time::Instant;

use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::emulate;
use crate::devices::{Access, DeviceAction, IoBus};
use crate::memory::GuestRam;

/// Errors driving vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thread could not be started.
    #[error("spawning the thread of vCPU {id}: {source}")]
    Spawn {
        /// vCPU.
        id: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU did not answer in time.
    #[error("vCPU {id} did not pause within {ms} ms")]
    PauseTimeout {
        /// vCPU.
        id: usize,
        /// The wait, ms.
        ms: u128,
    },
    /// A vCPU thread is gone.
    #[error("vCPU {id}'s thread has ended")]
    Gone {
        /// vCPU.
        id: usize,
    },
    /// A vCPU answered a request with an error.
    #[error("vCPU {id}: {why}")]
    Answer {
        /// vCPU.
        id: usize,
        /// Its answer.
        why: String,
    },
    /// A vCPU did not save its state.
    #[error(transparent)]
    Save(SaveError),
    /// A vCPU could not read its registers.
    #[error("vCPU {id}: reading registers: {source}")]
    Registers {
        /// vCPU.
        id: usize,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Why a vCPU stopped running the guest.
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
}

/// A vCPU's registers, read by its own thread when it stopped.
#[derive(Debug, Clone, Copy)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers (CR3, CR4, EFER for page-table captures).
    pub sregs: kvm_sregs,
}

impl VcpuState {
    /// Reads the state of `vcpu` (on its own thread, or while it is not running).
    pub fn read(id: usize, vcpu: &VcpuFd) -> Result<Self, Error> {
        let err = |source| Error::Registers { id, source };
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(err)?,
            sregs: vcpu.get_sregs().map_err(err)?,
        })
    }
}

/// What the VMM asks of a vCPU thread.
pub enum VcpuEvent {
    /// Stop running the guest and answer [`VcpuResponse::Paused`].
    Pause,
    /// Run the guest again (no answer).
    Resume,
    /// Run `f` on the vCPU (stopped: paused or exited) and answer with its result: whole-VM
    /// state is read and written on the vCPU's own thread, as KVM expects.
    With(Box<dyn FnOnce(&mut VcpuFd) -> VcpuResponse + Send>),
    /// Save the whole vCPU state ([`crate::snapshot::save_vcpu`], every MSR of the given
    /// KVM_GET_MSR_INDEX_LIST) and answer [`VcpuResponse::Saved`]. Answered from Paused
    /// (or Exited) only: a running vCPU answers an error and keeps running.
    SaveState(Arc<Vec<u32>>),
    /// Record the guest's RIP in the context's profile, if running, and run on.
    Sample,
    /// End the thread; it returns its vCPU fd.
    Finish,
}

impl std::fmt::Debug for VcpuEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VcpuEvent::Pause => "Pause",
            VcpuEvent::Resume => "Resume",
            VcpuEvent::With(_) => "With",
            VcpuEvent::SaveState(_) => "SaveState",
            VcpuEvent::Sample => "Sample",
            VcpuEvent::Finish => "Finish",
        })
    }
}

/// What a vCPU thread answers.
#[derive(Debug)]
pub enum VcpuResponse {
    /// Paused, with the registers read after it left KVM_RUN for this pause.
    Paused(Box<VcpuState>),
    /// The answer of a [`VcpuEvent::With`] closure.
    Done(Result<Box<dyn std::any::Any + Send>, String>),
    /// The answer of [`VcpuEvent::SaveState`].
    Saved(Result<Box<crate::snapshot::VcpuSnapshot>, SaveError>),
}

/// Why a vCPU did not save its state.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// It was running: state is saved from Paused only.
    #[error("vCPU {0} is running: pause it before saving its state")]
    NotPaused(usize),
    /// KVM refused.
    #[error("vCPU {id}: {source}")]
    Kvm {
        /// vCPU.
        id: usize,
        /// Why.
        #[source]
        source: crate::snapshot::Error,
    },
}

/// An observer's failure, as the vCPU reports it.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// What a vCPU thread tells the VM. Implemented by the VM layer, which attaches dirty
/// tracking and page-table captures here.
pub trait VcpuHooks: Send + Sync {
    /// The vCPU stopped running the guest for good.
    fn stopped(&self, id: usize, why: VcpuStop);
    /// The guest asked (through a device) for a page-table capture into `path`. The vCPU
    /// has paused itself with `state`; the VM pauses the others, captures and resumes all.
    fn ptsnap_requested(&self, id: usize, state: VcpuState, path: PathBuf);
    /// KVM_EXIT_DIRTY_RING_FULL: harvest this vCPU's dirty ring before it can run again.
    fn dirty_ring_full(&self, id: usize) -> Result<(), HookError>;
}

/// The signal that kicks vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run` (null on threads that run no vCPU).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` is this thread's own kvm_run mapping, set by `Vcpu::run` while it owns
        // the vCPU fd and cleared before the fd leaves the thread; a volatile byte store is
        // all KVM asks (it reads immediate_exit on entry to KVM_RUN).
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A handler that cannot be installed leaves kicks to EINTR alone: reported by the
        // pause timeout if it ever matters.
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
    });
}

/// The VMM's side of one vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    id: usize,
    events: Sender<VcpuEvent>,
    responses: Receiver<VcpuResponse>,
    thread: Option<std::thread::JoinHandle<VcpuFd>>,
}

impl VcpuHandle {
    /// This vCPU's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Queues `ev` and kicks the thread out of KVM_RUN.
    pub fn send(&self, ev: VcpuEvent) -> Result<(), Error> {
        self.events
            .send(ev)
            .map_err(|_| Error::Gone { id: self.id })?;
        self.kick();
        Ok(())
    }

    fn kick(&self) {
        use std::os::unix::thread::JoinHandleExt;
        if let Some(t) = self.thread.as_ref().filter(|t| !t.is_finished()) {
            // SAFETY: signalling our own live thread with the kick signal, whose handler
            // only sets immediate_exit in that thread's kvm_run.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
    }

    /// Waits for the next answer until `deadline`.
    pub fn response(&self, deadline: Instant) -> Result<VcpuResponse, Error> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.responses.recv_timeout(wait).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::PauseTimeout {
                id: self.id,
                ms: wait.as_millis(),
            },
            RecvTimeoutError::Disconnected => Error::Gone { id: self.id },
        })
    }

    /// Ends the thread (after the guest stopped) and returns its vCPU fd.
    pub fn finish(mut self) -> Option<VcpuFd> {
        let _ = self.events.send(VcpuEvent::Finish);
        self.kick();
        self.thread.take().and_then(|t| t.join().ok())
    }
}

/// What a vCPU thread needs besides its fd.
#[allow(missing_debug_implementations)] // Holds trait objects; nothing to show.
pub struct VcpuContext {
    /// Guest RAM (instruction completion reads and writes it).
    pub ram: Arc<GuestRam>,
    /// The device bus.
    pub bus: Arc<IoBus>,
    /// Counts of instructions the VMM completed.
    pub counters: Arc<emulate::Counters>,
    /// The VM's observers.
    pub hooks: Arc<dyn VcpuHooks>,
    /// Where [`VcpuEvent::Sample`] records RIPs (`--profile-guest`).
    pub samples: Option<Arc<crate::profile::Samples>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Exited,
    Finished,
}

/// A vCPU on its own thread.
struct Vcpu {
    id: usize,
    fd: VcpuFd,
    ctx: VcpuContext,
    events: Receiver<VcpuEvent>,
    responses: Sender<VcpuResponse>,
}

/// Starts vCPU `id` on a thread named `vcpuN`, running the guest at once.
pub fn spawn(id: usize, fd: VcpuFd, ctx: VcpuContext) -> Result<VcpuHandle, Error> {
    install_kick_handler();
    let (ev_tx, ev_rx) = channel();
    let (resp_tx, resp_rx) = channel();
    let vcpu = Vcpu {
        id,
        fd,
        ctx,
        events: ev_rx,
        responses: resp_tx,
    };
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || vcpu.run())
        .map_err(|source| Error::Spawn { id, source })?;
    Ok(VcpuHandle {
        id,
        events: ev_tx,
        responses: resp_rx,
        thread: Some(thread),
    })
}

impl Vcpu {
    /// The state machine; returns the fd when told to finish.
    fn run(mut self) -> VcpuFd {
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run()));
        // Confined before the guest's first instruction on this vCPU.
        let mut state = match crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
            Ok(()) => State::Running,
            Err(e) => self.stop(VcpuStop::Unhandled(e.to_string())),
        };
        while state != State::Finished {
            state = match state {
                State::Running => self.running(),
                State::Paused | State::Exited => self.stopped(state),
                State::Finished => State::Finished,
            };
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        self.fd
    }

    /// One pass of the running state: take an event if one is queued, else one KVM_RUN.
    fn running(&mut self) -> State {
        match self.events.try_recv() {
            Ok(ev) => return self.on_event(ev, State::Running),
            Err(TryRecvError::Disconnected) => return State::Finished,
            Err(TryRecvError::Empty) => {}
        }
        match self.run_once() {
            Ok(DeviceAction::Continue) => State::Running,
            Ok(DeviceAction::Exit(s)) => self.stop(VcpuStop::GuestExit(s)),
            Ok(DeviceAction::Reset) => self.stop(VcpuStop::Reset),
            Ok(DeviceAction::Ptsnap(path)) => match VcpuState::read(self.id, &self.fd) {
                Ok(st) => {
                    self.ctx.hooks.ptsnap_requested(self.id, st, path);
                    State::Paused
                }
                Err(e) => self.stop(VcpuStop::Unhandled(e.to_string())),
            },
            Err(why) => self.stop(why),
        }
    }

    fn stop(&self, why: VcpuStop) -> State {
        self.ctx.hooks.stopped(self.id, why);
        State::Exited
    }

    /// Paused or exited: block on the event channel.
    fn stopped(&mut self, state: State) -> State {
        match self.events.recv() {
            Ok(ev) => self.on_event(ev, state),
            Err(_) => State::Finished,
        }
    }

    fn on_event(&mut self, ev: VcpuEvent, state: State) -> State {
        match ev {
            VcpuEvent::Pause => {
                let resp = match VcpuState::read(self.id, &self.fd) {
                    Ok(st) => VcpuResponse::Paused(Box::new(st)),
                    Err(e) => VcpuResponse::Done(Err(e.to_string())),
                };
                let _ = self.responses.send(resp);
                if state == State::Exited {
                    State::Exited
                } else {
                    State::Paused
                }
            }
            VcpuEvent::Resume if state == State::Paused => State::Running,
            VcpuEvent::Resume => state,
            VcpuEvent::With(f) => {
                let _ = self.responses.send(f(&mut self.fd));
                state
            }
            VcpuEvent::SaveState(msrs) => {
                let r = if state == State::Running {
                    Err(SaveError::NotPaused(self.id))
                } else {
                    crate::snapshot::cpu::complete_pending_io(&mut self.fd);
                    crate::snapshot::cpu::save_vcpu(&self.fd, &msrs)
                        .map(Box::new)
                        .map_err(|source| SaveError::Kvm {
                            id: self.id,
                            source,
                        })
                };
                let _ = self.responses.send(VcpuResponse::Saved(r));
                state
            }
            VcpuEvent::Sample => {
                if let (State::Running, Some(samples)) = (state, &self.ctx.samples) {
                    record_sample(&self.fd, samples);
                }
                state
            }
            VcpuEvent::Finish => State::Finished,
        }
    }

    /// One KVM_RUN and the handling of its exit.
    fn run_once(&mut self) -> Result<DeviceAction, VcpuStop> {
        let access_id = self.id;
        let exit = self.fd.run();
        let (bus, hooks) = (&self.ctx.bus, &self.ctx.hooks);
        let action = match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                let data = data.to_vec();
                let access = Access {
                    vcpu: &self.fd,
                    id: access_id,
                };
                bus.pio_write(&access, port, &data)
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                bus.pio_read(port, data);
                DeviceAction::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let data = data.to_vec();
                let access = Access {
                    vcpu: &self.fd,
                    id: access_id,
                };
                bus.mmio_write(&access, addr, &data)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bus.mmio_read(addr, data);
                DeviceAction::Continue
            }
            Ok(VcpuExit::Unsupported(kvm_bindings::KVM_EXIT_DIRTY_RING_FULL)) => {
                hooks
                    .dirty_ring_full(access_id)
                    .map_err(|e| VcpuStop::Unhandled(format!("KVM_EXIT_DIRTY_RING_FULL: {e}")))?;
                DeviceAction::Continue
            }
            Ok(VcpuExit::Shutdown) => {
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(VcpuStop::TripleFault { rip });
            }
            Ok(VcpuExit::InternalError) => return self.on_internal_error(),
            Ok(VcpuExit::Intr) => DeviceAction::Continue,
            Ok(VcpuExit::Hlt) => {
                return Err(VcpuStop::Unhandled(
                    "guest halted with no interrupt controller to wake it".into(),
                ))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(VcpuStop::Unhandled(format!(
                    "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on cpu {cpu}"
                )))
            }
            Ok(other) => return Err(VcpuStop::Unhandled(format!("unhandled KVM exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                DeviceAction::Continue
            }
            Err(e) => return Err(VcpuStop::Unhandled(format!("KVM_RUN failed: {e}"))),
        };
        Ok(action)
    }

    /// KVM_EXIT_INTERNAL_ERROR: complete the instruction KVM could not emulate, if we can.
    fn on_internal_error(&mut self) -> Result<DeviceAction, VcpuStop> {
        // SAFETY: reading `internal.suberror` of the kvm_run union after a
        // KVM_EXIT_INTERNAL_ERROR exit; plain integers.
        let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if sub != kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
            return Err(VcpuStop::Unhandled(format!(
                "KVM internal error, suberror {sub}"
            )));
        }
        emulate::complete(&mut self.fd, &self.ctx.ram, &self.ctx.counters)
            .map(|()| DeviceAction::Continue)
            .map_err(|e| VcpuStop::EmulationFailure(e.to_string()))
    }
}

/// Counts where `vcpu` is: its RIP, or "not running" when KVM holds it halted or not yet
/// started (an application processor before its start-up IPI has no meaningful RIP). A
/// failed read loses one sample; the guest runs on regardless.
fn record_sample(vcpu: &VcpuFd, samples: &crate::profile::Samples) {
    let runnable = vcpu
        .get_mp_state()
        .map_or(true, |m| m.mp_state == kvm_bindings::KVM_MP_STATE_RUNNABLE);
    if !runnable {
        samples.record_not_running();
    } else if let Ok(regs) = vcpu.get_regs() {
        samples.record(regs.rip);
    }
}

/// Pauses every vCPU in `handles` except `skip` and returns their fresh registers, in
/// handle order. On failure the ones already paused are resumed.
pub fn pause_all(
    handles: &[VcpuHandle],
    skip: Option<usize>,
    deadline: Instant,
) -> Result<Vec<(usize, VcpuState)>, Error> {
    let targets: Vec<&VcpuHandle> = handles.iter().filter(|h| Some(h.id) != skip).collect();
    for h in &targets {
        h.send(VcpuEvent::Pause)?;
    }
    let mut states = Vec::with_capacity(targets.len());
    for h in &targets {
        match h.response(deadline) {
            Ok(VcpuResponse::Paused(st)) => states.push((h.id, *st)),
            Ok(VcpuResponse::Done(Err(why))) => {
                resume_all(handles);
                return Err(Error::Answer { id: h.id, why });
            }
            Ok(VcpuResponse::Done(Ok(_)) | VcpuResponse::Saved(_)) => {}
            Err(e) => {
                resume_all(handles);
                return Err(e);
            }
        }
    }
    Ok(states)
}

/// Asks every (paused) vCPU in `handles` to save its state; answers in handle order.
pub fn save_all(
    handles: &[VcpuHandle],
    msrs: &Arc<Vec<u32>>,
    deadline: Instant,
) -> Result<Vec<crate::snapshot::VcpuSnapshot>, Error> {
    for h in handles {
        h.send(VcpuEvent::SaveState(msrs.clone()))?;
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.response(deadline)? {
            VcpuResponse::Saved(Ok(s)) => out.push(*s),
            VcpuResponse::Saved(Err(e)) => return Err(Error::Save(e)),
            _ => {
                return Err(Error::Answer {
                    id: h.id,
                    why: "answered something else than its saved state".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Lets every vCPU in `handles` run again (a vCPU that paused itself for a capture waits
/// for this too; one that exited ignores it).
pub fn resume_all(handles: &[VcpuHandle]) {
    for h in handles {
        let _ = h.send(VcpuEvent::Resume);
    }
}
