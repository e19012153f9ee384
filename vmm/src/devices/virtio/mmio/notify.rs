//! Queue notifications through KVM ioeventfds: one eventfd per queue, registered (by the
//! VM builder) on the QueueNotify register with the queue index as datamatch, so that a
//! guest's notify signals the eventfd in the kernel instead of exiting to user space. The
//! event loop watches them (as host descriptors of the transport) and serves the queue on
//! its own thread with every check of a notify written through the bus.
//!
//! Order is kept: a notify signalled but not yet served is served before a status write
//! (a reset, DRIVER_OK) changes what it means, and before a snapshot saves the queues.
//! Each eventfd is read under the transport's lock, so a notify is served exactly once.

use std::os::unix::io::{AsRawFd, RawFd};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{MmioTransport, State};
use crate::devices::virtio::HostFd;

impl MmioTransport {
    /// The number of queues (one ioeventfd each).
    pub fn queue_count(&self) -> usize {
        self.state.lock().map(|s| s.queues.len()).unwrap_or(0)
    }

    /// Takes the eventfds KVM signals on QueueNotify, one per queue in order (the event
    /// loop watches them from its next sync on); false, and nothing changed, if this
    /// transport has them already.
    pub fn set_notify_fds(&self, fds: Vec<EventFd>) -> bool {
        self.notify_fds.set(fds).is_ok()
    }

    /// Whether queue notifications arrive through ioeventfds.
    pub fn notifies_by_eventfd(&self) -> bool {
        self.notify_fds.get().is_some_and(|f| !f.is_empty())
    }

    /// The queue whose notify eventfd is `fd`.
    pub(super) fn notified_queue(&self, fd: RawFd) -> Option<u32> {
        let fds = self.notify_fds.get()?;
        let i = fds.iter().position(|e| e.as_raw_fd() == fd)?;
        u32::try_from(i).ok()
    }

    /// The notify eventfds, as host descriptors for the event loop.
    pub(super) fn notify_watches(&self) -> impl Iterator<Item = HostFd> + '_ {
        self.notify_fds.get().into_iter().flatten().map(|e| HostFd {
            fd: e.as_raw_fd(),
            events: EventSet::IN,
        })
    }

    /// Queue `q`'s eventfd fired (the event loop): served as a notify of `q`, unless a
    /// status write has served it already.
    pub(super) fn ioevent(&self, q: u32) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if take(self.notify_fds.get().and_then(|f| f.get(q as usize))) {
            self.notify(&mut st, q);
        }
    }

    /// Serves every notify signalled and not yet served, in queue order.
    pub(super) fn serve_pending(&self, st: &mut State) {
        let Some(fds) = self.notify_fds.get() else {
            return;
        };
        for (q, e) in (0u32..).zip(fds) {
            if take(Some(e)) {
                self.notify(st, q);
            }
        }
    }

    /// Serves the notifies signalled and not yet served (before a snapshot saves the
    /// queues, with the vCPUs paused).
    pub fn serve_pending_notifies(&self) {
        if let Ok(mut st) = self.state.lock() {
            self.serve_pending(&mut st);
        }
    }
}

/// Whether `e` had been signalled (its count is reset); non-blocking.
fn take(e: Option<&EventFd>) -> bool {
    e.is_some_and(|e| e.read().is_ok_and(|n| n > 0))
}
