//! What reaches the VM's event loop from other threads (vCPUs, the console watcher): a
//! message on a channel plus a write to an eventfd that the loop polls, so the loop sleeps
//! in epoll and wakes for exactly these.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::ConsoleEvent;
use crate::dirty::ring::Rings;
use crate::vstate::vcpu_thread::{HookError, VcpuHooks, VcpuState, VcpuStop};

/// A message for the event loop.
#[derive(Debug)]
pub enum VmEvent {
    /// A vCPU stopped running the guest for good.
    VcpuStopped(usize, VcpuStop),
    /// A vCPU paused itself because the guest asked for a page-table capture.
    PtsnapRequested {
        /// The vCPU.
        id: usize,
        /// Its registers.
        state: Box<VcpuState>,
        /// Where the capture goes (chosen by the VMM's configuration, not the guest).
        path: PathBuf,
    },
    /// Something the console saw.
    Console(ConsoleEvent),
}

/// The sending side, cloned into every thread that reports.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: Sender<VmEvent>,
    efd: Arc<EventFd>,
}

/// The receiving side, owned by the event loop.
#[derive(Debug)]
pub struct Inbox {
    /// Messages.
    pub rx: Receiver<VmEvent>,
    /// Readable when messages wait.
    pub efd: Arc<EventFd>,
}

impl Notifier {
    /// A new pair.
    pub fn new() -> std::io::Result<(Notifier, Inbox)> {
        let efd = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let (tx, rx) = channel();
        Ok((
            Notifier {
                tx,
                efd: efd.clone(),
            },
            Inbox { rx, efd },
        ))
    }

    /// Sends `ev` and wakes the loop.
    pub fn send(&self, ev: VmEvent) {
        if self.tx.send(ev).is_ok() {
            // A full counter (2^64 - 2 wake-ups pending) cannot happen; the message is
            // queued either way.
            let _ = self.efd.write(1);
        }
    }

    /// A console event.
    pub fn console(&self, e: ConsoleEvent) {
        self.send(VmEvent::Console(e));
    }
}

/// The VM's answer to vCPU threads: stops and capture requests go to the loop; a full dirty
/// ring is harvested on the vCPU's own thread, which KVM will not run until it is reset.
#[derive(Debug)]
pub struct VmHooks {
    /// To the loop.
    pub notifier: Notifier,
    /// The dirty rings, when tracking with them.
    pub rings: Option<Arc<Rings>>,
}

impl VcpuHooks for VmHooks {
    fn stopped(&self, id: usize, why: VcpuStop) {
        self.notifier.send(VmEvent::VcpuStopped(id, why));
    }

    fn ptsnap_requested(&self, id: usize, state: VcpuState, path: PathBuf) {
        self.notifier.send(VmEvent::PtsnapRequested {
            id,
            state: Box::new(state),
            path,
        });
    }

    fn dirty_ring_full(&self, id: usize) -> Result<(), HookError> {
        match &self.rings {
            Some(r) => Ok(r.on_full(id)?),
            None => Err("KVM_EXIT_DIRTY_RING_FULL without dirty rings mapped".into()),
        }
    }
}
