//! The VM's event loop on `event-manager`. Subscribers turn file descriptors into messages
//! (the VM's wake-up eventfd, the API socket and its clients, stdin); after each wake-up
//! the loop acts on them as the VM's only controller: it maps vCPU and console events to
//! the run's outcome, pauses vCPUs for page-table captures, answers API requests and ends
//! the run at its timeout.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use serde_json::{json, Value};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::events::VmEvent;
use super::{Error, ExitReason, Milestone, Vm};
use crate::api::{ApiServer, Request};
use crate::devices::legacy::Com1;
use crate::devices::ConsoleEvent;
use crate::outdir::OutFile;
use crate::vstate::vcpu_thread::{self, VcpuState, VcpuStop};

/// How long vCPUs get to pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The loop's longest sleep (API clients' deadlines are checked this often).
const TICK: Duration = Duration::from_millis(500);
/// The sleep while stdin input waits for room in the UART's FIFO.
const STDIN_RETRY: Duration = Duration::from_millis(5);

type Subscriber = Rc<RefCell<dyn MutEventSubscriber>>;

/// Empties the VM's wake-up eventfd; the messages are read by the loop.
struct Wake(Arc<EventFd>);

impl MutEventSubscriber for Wake {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&*self.0, EventSet::IN)) {
            eprintln!("segvmm: event loop: cannot watch the VM's eventfd: {e:?}");
        }
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.read();
    }
}

/// The profile's sampling clock: a periodic timerfd; each expiry asks the loop to send
/// every vCPU a sample request.
struct SampleClock {
    timer: vmm_sys_util::timerfd::TimerFd,
    due: bool,
}

impl SampleClock {
    fn new(period: Duration) -> Result<Self, Error> {
        let io = |source| Error::Io {
            what: "timerfd for --profile-guest",
            source,
        };
        let mut timer = vmm_sys_util::timerfd::TimerFd::new().map_err(|e| io(e.into()))?;
        timer
            .reset(period, Some(period))
            .map_err(|e| io(e.into()))?;
        Ok(SampleClock { timer, due: false })
    }
}

impl MutEventSubscriber for SampleClock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            eprintln!("segvmm: event loop: cannot watch the profile's timer: {e:?}");
        }
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // Readable, so the read does not block; missed periods are not made up.
        self.due |= self.timer.wait().is_ok_and(|n| n > 0);
    }
}

/// Forwards stdin to COM1. While the UART's FIFO is full, stdin is not watched and the
/// loop retries every few milliseconds.
struct Stdin {
    com1: Arc<Com1>,
    pending: Vec<u8>,
    watched: bool,
    eof: bool,
}

impl Stdin {
    fn push(&mut self) {
        while !self.pending.is_empty() {
            let took = self
                .com1
                .0
                .lock()
                .map(|mut s| s.input(&self.pending))
                .unwrap_or(0);
            if took == 0 {
                break;
            }
            self.pending.drain(..took);
        }
    }

    fn set_watch(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watched {
            return;
        }
        let ev = Events::new_raw(libc::STDIN_FILENO, EventSet::IN);
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        self.watched = on && r.is_ok();
    }
}

impl MutEventSubscriber for Stdin {
    fn init(&mut self, ops: &mut EventOps) {
        self.set_watch(ops, true);
    }
    fn process(&mut self, _: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer of the given length from fd 0.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => self.pending.extend_from_slice(&buf[..n as usize]),
            0 => self.eof = true,
            _ => {}
        }
        self.push();
        let want = !self.eof && self.pending.is_empty();
        self.set_watch(ops, want);
    }
}

/// Whether `fd` can be watched by epoll (a regular file or /dev/null cannot).
fn pollable(fd: libc::c_int) -> bool {
    let Ok(ep) = vmm_sys_util::epoll::Epoll::new() else {
        return false;
    };
    let ev = vmm_sys_util::epoll::EpollEvent::new(EventSet::IN, 0);
    ep.ctl(vmm_sys_util::epoll::ControlOperation::Add, fd, ev)
        .is_ok()
}

/// Stdin that epoll cannot watch (a file) is copied by a thread of its own.
fn spawn_stdin_copier(com1: Arc<Com1>) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            crate::seccomp::install_or_warn(crate::seccomp::ThreadKind::Stdin);
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut off = 0;
                while off < n {
                    let put = com1
                        .0
                        .lock()
                        .map(|mut s| s.input(&buf[off..n]))
                        .unwrap_or(n);
                    off += put;
                    if put == 0 {
                        std::thread::sleep(STDIN_RETRY);
                    }
                }
            }
        });
}

/// The loop over one running VM.
pub(super) struct Loop<'a> {
    vm: &'a mut Vm,
    em: EventManager<Subscriber>,
    api: Option<(Rc<RefCell<ApiServer>>, SubscriberId)>,
    stdin: Option<(Rc<RefCell<Stdin>>, SubscriberId)>,
    sampler: Option<Rc<RefCell<SampleClock>>>,
    milestones: Vec<Milestone>,
    user_fault: Option<String>,
    /// When the balloon's statistics were last asked for.
    balloon_stats_at: Instant,
}

impl<'a> Loop<'a> {
    /// Registers the subscribers of `vm`.
    pub(super) fn new(vm: &'a mut Vm) -> Result<Self, Error> {
        let mut em: EventManager<Subscriber> = EventManager::new().map_err(Error::EventLoop)?;
        em.add_subscriber(Rc::new(RefCell::new(Wake(vm.notifier.1.efd.clone()))));
        for t in &vm.virtio {
            let s = crate::devices::virtio::HostEvents::new(t.clone());
            em.add_subscriber(Rc::new(RefCell::new(s)));
        }
        let api = vm.api.take().map(|a| {
            let a = Rc::new(RefCell::new(a));
            let id = em.add_subscriber(a.clone());
            (a, id)
        });
        let stdin = match vm.stdin {
            true if pollable(libc::STDIN_FILENO) => {
                let s = Rc::new(RefCell::new(Stdin {
                    com1: vm.com1.clone(),
                    pending: Vec::new(),
                    watched: false,
                    eof: false,
                }));
                let id = em.add_subscriber(s.clone());
                Some((s, id))
            }
            true => {
                spawn_stdin_copier(vm.com1.clone());
                None
            }
            false => None,
        };
        let sampler = match &vm.profiler {
            Some(p) => {
                let c = Rc::new(RefCell::new(SampleClock::new(p.period())?));
                em.add_subscriber(c.clone());
                Some(c)
            }
            None => None,
        };
        Ok(Loop {
            vm,
            em,
            api,
            stdin,
            sampler,
            milestones: Vec::new(),
            user_fault: None,
            balloon_stats_at: Instant::now(),
        })
    }

    /// Runs until the guest's outcome is known; the vCPUs are left to [`Vm::finish`].
    pub(super) fn run(mut self, run_start: Instant) -> Result<(ExitReason, Vec<Milestone>), Error> {
        let deadline = self.vm.timeout.map(|t| run_start + t);
        loop {
            let wait = self.wait(deadline);
            self.em
                .run_with_timeout(i32::try_from(wait.as_millis()).unwrap_or(i32::MAX))
                .map_err(Error::EventLoop)?;
            if let Some(r) = self.vm_events() {
                return Ok((r, self.milestones));
            }
            if let Some(r) = self.api_requests() {
                return Ok((r, self.milestones));
            }
            self.stdin_retry();
            self.sample();
            self.balloon_stats();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((self.timed_out(), self.milestones));
            }
        }
    }

    fn wait(&self, deadline: Option<Instant>) -> Duration {
        let stdin_waits = self
            .stdin
            .as_ref()
            .is_some_and(|(s, _)| !s.borrow().pending.is_empty());
        let cap = if stdin_waits { STDIN_RETRY } else { TICK };
        match deadline {
            Some(d) => cap.min(d.saturating_duration_since(Instant::now())),
            None => cap,
        }
    }

    /// On a tick of the profile's clock, asks every vCPU for its RIP (a vCPU that is not
    /// running ignores it).
    fn sample(&mut self) {
        let Some(c) = &self.sampler else { return };
        if std::mem::take(&mut c.borrow_mut().due) {
            for h in &self.vm.handles {
                let _ = h.send(vcpu_thread::VcpuEvent::Sample);
            }
        }
    }

    /// Asks the guest for fresh balloon statistics every `--balloon stats=` interval.
    fn balloon_stats(&mut self) {
        let Some(b) = &self.vm.balloon else { return };
        let due = b
            .stats_interval()
            .is_some_and(|every| self.balloon_stats_at.elapsed() >= every);
        if due {
            b.request_stats();
            self.balloon_stats_at = Instant::now();
        }
    }

    fn stdin_retry(&mut self) {
        let Some((s, id)) = &self.stdin else { return };
        let mut s = s.borrow_mut();
        if s.pending.is_empty() {
            return;
        }
        s.push();
        if s.pending.is_empty() && !s.eof {
            if let Ok(mut ops) = self.em.event_ops(*id) {
                s.set_watch(&mut ops, true);
            }
        }
    }

    /// Messages from vCPUs and the console; the outcome once one decides it.
    fn vm_events(&mut self) -> Option<ExitReason> {
        while let Ok(ev) = self.vm.notifier.1.rx.try_recv() {
            let r = match ev {
                VmEvent::VcpuStopped(id, why) => Some(stop_reason(id, why)),
                VmEvent::PtsnapRequested { id, state, path } => {
                    self.guest_ptsnap(id, *state, path);
                    None
                }
                VmEvent::Console(e) => self.console(e),
            };
            if r.is_some() {
                return r;
            }
        }
        None
    }

    fn console(&mut self, e: ConsoleEvent) -> Option<ExitReason> {
        match e {
            ConsoleEvent::Milestone { what, line, at_ms } => {
                self.milestones.push(Milestone {
                    what: what.into(),
                    line,
                    at_ms,
                });
                None
            }
            ConsoleEvent::UserFaultAtKernelIp(l) => {
                self.user_fault = Some(l);
                None
            }
            ConsoleEvent::PowerOff => Some(ExitReason::PowerOff),
            ConsoleEvent::Panic(line) => Some(self.panic_reason(line)),
        }
    }

    fn panic_reason(&self, line: String) -> ExitReason {
        let started_init = self
            .milestones
            .iter()
            .any(|m| m.what.starts_with("Run /init"));
        match &self.user_fault {
            Some(fault) if started_init && line.contains("Attempted to kill init") => {
                ExitReason::UserSyscallsUnavailable {
                    fault: fault.clone(),
                    panic: line,
                }
            }
            _ => ExitReason::Panic { line },
        }
    }

    /// The guest asked for a capture: vCPU `id` has paused itself; pause the others,
    /// copy, resume all, and leave the file to the writer thread.
    fn guest_ptsnap(&mut self, id: usize, own: VcpuState, path: std::path::PathBuf) {
        let started = Instant::now();
        let snapper = self.vm.observers.ptsnapper.clone();
        let buf = snapper.buffer();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let others = vcpu_thread::pause_all(&self.vm.handles, Some(id), deadline);
        let capture = others.map(|o| {
            let mut states = vec![own];
            states.extend(o.into_iter().map(|(_, s)| s));
            snapper.capture(&states, buf)
        });
        vcpu_thread::resume_all(&self.vm.handles);
        let paused_ms = started.elapsed().as_secs_f64() * 1e3;
        match capture {
            Ok(Ok(c)) => snapper.write_later(c, OutFile::Path(path), started, paused_ms),
            Ok(Err(e)) => eprintln!("segvmm: ptsnap {}: {e}", path.display()),
            Err(e) => eprintln!("segvmm: ptsnap {}: {e}", path.display()),
        }
    }

    /// Pauses every vCPU, copies the tables, resumes, and writes `out`.
    fn api_ptsnap(&mut self, out: OutFile) -> Result<Value, ApiError> {
        let started = Instant::now();
        let snapper = self.vm.observers.ptsnapper.clone();
        let buf = snapper.buffer();
        let pause = Instant::now();
        let deadline = pause + PAUSE_TIMEOUT;
        let states = vcpu_thread::pause_all(&self.vm.handles, None, deadline)?;
        let states: Vec<VcpuState> = states.into_iter().map(|(_, s)| s).collect();
        let capture = snapper.capture(&states, buf);
        vcpu_thread::resume_all(&self.vm.handles);
        let paused_ms = pause.elapsed().as_secs_f64() * 1e3;
        let info = capture.and_then(|c| snapper.write_now(c, &out, started, paused_ms))?;
        Ok(serde_json::to_value(info)?)
    }

    /// Answers queued API requests; the outcome when one ends the run.
    fn api_requests(&mut self) -> Option<ExitReason> {
        let (api, id) = self.api.as_ref().map(|(a, id)| (a.clone(), *id))?;
        let requests = api.borrow_mut().take_requests(Instant::now());
        let mut end = None;
        for (client, req) in requests {
            let reply = match req {
                Ok(r) => self.api_request(r, &mut end),
                Err(e) => Err(ApiError::Request(e)),
            };
            api.borrow_mut().reply(client, reply);
        }
        if let Ok(mut ops) = self.em.event_ops(id) {
            api.borrow_mut().close_marked(&mut ops);
        }
        end
    }

    fn api_request(&mut self, r: Request, end: &mut Option<ExitReason>) -> Result<Value, ApiError> {
        let api = self.api.as_ref().map(|(a, _)| a.clone());
        match r {
            Request::Ping {} => Ok(json!({
                "vcpus": self.vm.handles.len(),
                "snapshot_dir": api.and_then(|a| a.borrow().snapshot_dir_path()),
            })),
            Request::Shutdown {} => {
                *end = Some(ExitReason::Shutdown);
                Ok(json!({}))
            }
            Request::Ptsnap { file } => {
                let out = api.ok_or(ApiError::NoApi)?.borrow().out_file(&file)?;
                self.api_ptsnap(out)
            }
            Request::SnapshotCreate { dir, diff } => {
                let out = api.ok_or(ApiError::NoApi)?.borrow().out_dir()?;
                let taken = self.vm.take_snapshot(&out, &dir, diff)?;
                Ok(serde_json::to_value(taken)?)
            }
            Request::Pause {} => {
                let deadline = Instant::now() + PAUSE_TIMEOUT;
                let s = vcpu_thread::pause_all(&self.vm.handles, None, deadline)?;
                self.vm.api_paused = true;
                Ok(json!({ "paused": s.len() }))
            }
            Request::Resume {} => {
                self.vm.api_paused = false;
                vcpu_thread::resume_all(&self.vm.handles);
                Ok(json!({}))
            }
            Request::Balloon { size_mib } => {
                let b = self.vm.balloon.as_ref().ok_or(ApiError::NoBalloon)?;
                b.set_target(size_mib.saturating_mul(1 << 20))?;
                Ok(json!({ "size_mib": size_mib }))
            }
            Request::BalloonStats {} => {
                let b = self.vm.balloon.as_ref().ok_or(ApiError::NoBalloon)?;
                Ok(serde_json::to_value(b.report())?)
            }
        }
    }

    /// The timeout: where each vCPU was, read fresh after pausing it.
    fn timed_out(&mut self) -> ExitReason {
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let rips = vcpu_thread::pause_all(&self.vm.handles, None, deadline)
            .map(|s| s.iter().map(|(_, st)| st.regs.rip).collect())
            .unwrap_or_default();
        ExitReason::Timeout {
            seconds: self.vm.timeout.map_or(0.0, |t| t.as_secs_f64()),
            rips,
        }
    }
}

/// Why an API request failed (its answer's `error`).
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// The line was not a request.
    #[error(transparent)]
    Request(#[from] crate::api::RequestError),
    /// No API server (cannot happen for a request that came from one).
    #[error("no API server")]
    NoApi,
    /// The output file was refused.
    #[error(transparent)]
    OutFile(#[from] crate::outdir::Error),
    /// The vCPUs did not pause.
    #[error(transparent)]
    Pause(#[from] vcpu_thread::Error),
    /// The capture failed.
    #[error(transparent)]
    Ptsnap(#[from] crate::ptsnap::Error),
    /// The snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] super::SaveError),
    /// A balloon request to a VM without one.
    #[error("this VM has no balloon (start it with --balloon)")]
    NoBalloon,
    /// A balloon target the balloon cannot take.
    #[error(transparent)]
    BalloonTarget(#[from] crate::devices::virtio::balloon::TargetError),
    /// The answer could not be encoded.
    #[error("encoding the answer: {0}")]
    Json(#[from] serde_json::Error),
}

/// The run's outcome when vCPU `id` stopped.
fn stop_reason(id: usize, why: VcpuStop) -> ExitReason {
    let vcpu = u8::try_from(id).unwrap_or(u8::MAX);
    match why {
        VcpuStop::GuestExit(status) => ExitReason::GuestExit { status },
        VcpuStop::Reset => ExitReason::Reset,
        VcpuStop::TripleFault { rip } => ExitReason::TripleFault { vcpu, rip },
        VcpuStop::Unhandled(what) => ExitReason::UnhandledExit { vcpu, what },
        VcpuStop::EmulationFailure(what) => ExitReason::EmulationFailure { vcpu, what },
    }
}
