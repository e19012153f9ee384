//! Virtio devices over the virtio-mmio transport (virtio 1.x, modern only; issue #16).
//!
//! [`mmio::MmioTransport`] is a [`super::BusDevice`]: the guest programs it through its
//! registers, and a QueueNotify write makes the device ([`VirtioDevice`]) serve that queue:
//! on the VM's event loop when the write signalled a KVM ioeventfd ([`NotifyPath`]), else
//! on the vCPU thread that wrote it. Queues are `virtio-queue`'s split rings over the
//! guest's vm-memory view, so no guest address is ever turned into a host pointer outside
//! guest RAM. A device signals used buffers through an [`Interrupt`] (a KVM irqfd in a VM,
//! a counter in tests). [`block`] is virtio-blk on a raw image file, [`balloon`]
//! virtio-balloon (inflate/deflate, statistics, free page reporting).

pub mod balloon;
pub mod block;
pub mod host_events;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use balloon::{Balloon, BalloonConfig, BalloonHandle};
pub use block::{Block, DiskConfig};
pub use host_events::HostEvents;
pub use mmio::MmioTransport;
pub use net::{Net, NetConfig};
pub use vsock::{Vsock, VsockConfig};

/// Guest-physical base of the first virtio-mmio window (in the MMIO hole, just after the
/// signal window at 0xd000_0000); device `i` is at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_1000;
/// Size of one virtio-mmio window (the `4K` of `virtio_mmio.device=4K@...`).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC pins given to virtio devices, in order: ISA lines no emulated device uses
/// (COM1 is 4; 8 is the RTC's, 12 the mouse's). Edge-triggered, as irqfd pulses them.
pub const VIRTIO_GSIS: [u32; 8] = [5, 6, 7, 9, 10, 11, 14, 15];
/// Most virtio devices a VM may have (one GSI each).
pub const MAX_VIRTIO_DEVICES: usize = VIRTIO_GSIS.len();

/// Where device `index` lives: its MMIO base and its GSI; `None` past the last slot.
pub fn slot(index: usize) -> Option<(u64, u32)> {
    let gsi = *VIRTIO_GSIS.get(index)?;
    Some((VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE, gsi))
}

/// The Linux command-line words announcing device `index` (`virtio_mmio.device=`).
pub fn cmdline_entry(index: usize) -> Option<String> {
    slot(index).map(|(base, gsi)| format!("virtio_mmio.device=4K@{base:#x}:{gsi}"))
}

/// Raises a device's interrupt line.
pub trait Interrupt: Send + Sync + std::fmt::Debug {
    /// Signals the guest once.
    fn trigger(&self) -> std::io::Result<()>;
}

/// An eventfd registered as a KVM irqfd: writing it pulses the GSI.
#[derive(Debug)]
pub struct IrqFd(pub EventFd);

impl Interrupt for IrqFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Counts the interrupts raised (tests).
#[derive(Debug, Default)]
pub struct CountingInterrupt(pub AtomicU32);

impl CountingInterrupt {
    /// Interrupts raised so far.
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Guest RAM as a device sees it: the vm-memory view, whose regions are exactly guest RAM.
pub trait GuestMemoryView: Send + Sync {
    /// The regions of guest RAM.
    fn memory(&self) -> &GuestMemoryMmap;
}

impl GuestMemoryView for crate::memory::GuestRam {
    fn memory(&self) -> &GuestMemoryMmap {
        crate::memory::GuestRam::memory(self)
    }
}

impl GuestMemoryView for GuestMemoryMmap {
    fn memory(&self) -> &GuestMemoryMmap {
        self
    }
}

/// Why a device stopped serving a queue: the guest broke the virtio contract in a way no
/// status byte can report. The transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring itself is unusable (not ready, bad available index, outside guest RAM).
    #[error("virtqueue: {0}")]
    Ring(#[source] virtio_queue::Error),
    /// A descriptor chain loops, is longer than the queue, or leaves the descriptor table.
    #[error("descriptor chain at head {head} loops, is longer than the queue or leaves the table")]
    BadChain {
        /// Head descriptor index.
        head: u16,
    },
    /// A request's header or status descriptor is missing, too short, in the wrong
    /// direction or outside guest RAM.
    #[error("request at head {head}: {what}")]
    BadRequest {
        /// Head descriptor index.
        head: u16,
        /// What is wrong.
        what: &'static str,
    },
    /// Writing the used ring failed.
    #[error("used ring: {0}")]
    Used(#[source] virtio_queue::Error),
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// A short name for logs ("virtio-blk").
    fn name(&self) -> &'static str;
    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Feature bits offered (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The driver's features, once the transport accepted them (FEATURES_OK).
    fn ack_features(&mut self, _features: u64) {}
    /// The largest size of each queue (powers of two); the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device's configuration space at `offset` (bytes past its end read 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver wrote the configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Serves every available chain of queue `index`; whether any chain was used.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Whether a notify of a ready queue between FEATURES_OK and DRIVER_OK is kept and
    /// served at DRIVER_OK instead of failing the device (Linux's balloon driver kicks its
    /// statistics queue before DRIVER_OK).
    fn early_notify_ok(&self) -> bool {
        false
    }
    /// Host descriptors the VM's event loop watches for this device (a TAP, sockets),
    /// asked again after every [`VirtioDevice::host_event`]; none by default.
    fn host_fds(&self) -> Vec<HostFd> {
        Vec::new()
    }
    /// One of [`VirtioDevice::host_fds`] is ready (the event loop's thread; only while
    /// the driver is running): serve it. A bit mask of the queues that were used.
    fn host_event(
        &mut self,
        _fd: std::os::unix::io::RawFd,
        _events: EventSet,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
    ) -> Result<u32, QueueError> {
        Ok(0)
    }
    /// Closes what the device stopped watching: called after the event loop has taken
    /// descriptors no longer in [`VirtioDevice::host_fds`] out of its epoll set, so a
    /// descriptor is never closed while still registered (its number could be reused).
    fn reap(&mut self) {}
    /// Whether queue notifications are served on the event loop rather than the vCPU
    /// that wrote QueueNotify: the transport then only wakes the loop (an eventfd, added
    /// to the device's host descriptors) and the device serves its queues in
    /// [`VirtioDevice::host_event`]. For devices whose work needs the loop's system calls
    /// (vsock connects and accepts); false by default.
    fn notify_on_event_loop(&self) -> bool {
        false
    }
}

/// A host descriptor a device wants watched, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFd {
    /// The descriptor (owned by the device).
    pub fd: std::os::unix::io::RawFd,
    /// The epoll events (edge-triggered ones are read until EAGAIN or until the guest has
    /// no room; the device resumes when the guest notifies).
    pub events: EventSet,
}

/// A shared interrupt.
pub type SharedInterrupt = Arc<dyn Interrupt>;

/// How QueueNotify writes reach the devices (the run report's `virtio_notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyPath {
    /// KVM ioeventfds (one per queue, on QueueNotify with the queue index as datamatch):
    /// the write stays in the kernel and the event loop serves the queue.
    Ioeventfd,
    /// Each write exits to user space and the vCPU serves the queue (`--ioeventfd off`,
    /// or KVM without KVM_CAP_IOEVENTFD).
    Exit,
}

impl std::fmt::Display for NotifyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotifyPath::Ioeventfd => "ioeventfd (served on the event loop)",
            NotifyPath::Exit => "exit to user space (served on the vCPU)",
        })
    }
}

#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod test_driver;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vsock_tests;
