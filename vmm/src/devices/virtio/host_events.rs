//! Serving a virtio device's host side from the VM's event loop: [`HostEvents`] is an
//! `event-manager` subscriber for one transport. It watches the descriptors the device
//! names in [`super::VirtioDevice::host_fds`] (a TAP, a Unix listener and its
//! connections), hands each ready one to [`MmioTransport::host_event`] (which locks the
//! device, lets it use its queues and raises the interrupt), then brings the epoll set in
//! line with the device's new list and lets it close what it dropped
//! ([`MmioTransport::reap`]). Any device with host descriptors gets one; devices without
//! (virtio-blk) cost nothing.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::{HostFd, MmioTransport};

/// The event-loop side of one virtio device.
#[derive(Debug)]
pub struct HostEvents {
    transport: Arc<MmioTransport>,
    watched: Vec<HostFd>,
}

impl HostEvents {
    /// A subscriber for `transport`.
    pub fn new(transport: Arc<MmioTransport>) -> Self {
        HostEvents {
            transport,
            watched: Vec::new(),
        }
    }

    /// Adds, changes and removes watches to match the device's list, then lets it close
    /// what is no longer watched.
    fn sync(&mut self, ops: &mut EventOps) {
        let want = self.transport.host_fds();
        let gone: Vec<HostFd> = self
            .watched
            .iter()
            .filter(|w| !want.iter().any(|h| h.fd == w.fd))
            .copied()
            .collect();
        for w in gone {
            // Failure means the descriptor is no longer in the epoll set anyway.
            let _ = ops.remove(Events::new_raw(w.fd, w.events));
        }
        let mut watched = Vec::with_capacity(want.len());
        for h in want {
            let old = self.watched.iter().find(|w| w.fd == h.fd);
            let ev = Events::new_raw(h.fd, h.events);
            let r = match old {
                Some(o) if o.events == h.events => Ok(()),
                Some(_) => ops.modify(ev),
                None => ops.add(ev),
            };
            match r {
                Ok(()) => watched.push(h),
                Err(e) => eprintln!(
                    "segvmm: event loop: cannot watch fd {} of a virtio device: {e:?}",
                    h.fd
                ),
            }
        }
        self.watched = watched;
        self.transport.reap();
    }
}

impl MutEventSubscriber for HostEvents {
    fn init(&mut self, ops: &mut EventOps) {
        self.sync(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd: RawFd = events.fd();
        self.transport.host_event(fd, events.event_set());
        self.sync(ops);
    }
}
