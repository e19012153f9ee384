//! The virtio-mmio transport, version 2 (virtio 1.x "modern" only; the legacy v1 page-frame
//! registers are not decoded). Registers are 32-bit, 4-byte aligned below 0x100; the
//! device's configuration space starts at 0x100.
//!
//! The status register follows the driver's initialisation sequence: ACKNOWLEDGE, DRIVER,
//! FEATURES_OK (accepted only for a subset of the offered features that includes
//! VIRTIO_F_VERSION_1), DRIVER_OK; writing 0 resets the device. Queue registers are
//! accepted between FEATURES_OK and DRIVER_OK. A guest that breaks the contract (a queue
//! size that is not a power of two, a misaligned or out-of-RAM ring, a notify before
//! DRIVER_OK, a chain no status can answer) gets DEVICE_NEEDS_RESET and a config-change
//! interrupt, with one log line; the device serves again after a reset. When the driver
//! accepts VIRTIO_RING_F_EVENT_IDX (only offered by devices that keep avail_event up to
//! date), every queue honours its used_event: an interrupt only when the driver asked.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

use super::{GuestMemoryView, SharedInterrupt, VirtioDevice};

mod notify;
mod state;
use crate::devices::bus::{Access, BusDevice};
use crate::devices::DeviceAction;
pub use state::{QueueSnapshot, TransportSnapshot};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version: 2, modern.
pub const VERSION: u32 = 2;
/// Lines a transport logs before going quiet.
const LOG_LIMIT: u32 = 32;
/// Offset of the configuration space.
pub const CONFIG_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device asked for a queue size virtio-queue refuses.
    #[error("{device}: queue of {size} entries: {source}")]
    Queue {
        /// Device name.
        device: &'static str,
        /// The size asked for.
        size: u16,
        /// Why.
        #[source]
        source: virtio_queue::Error,
    },
    /// A saved transport state (snapshot restore) this transport cannot take.
    #[error("{device}: saved transport state: {what}")]
    BadState {
        /// Device name.
        device: &'static str,
        /// What does not fit.
        what: String,
    },
    /// The eventfd that wakes the event loop for a device served there.
    #[error("{device}: eventfd: {source}")]
    Kick {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why `size` cannot be a queue's size (at most `max`), in words for the log; `None`
/// when it can.
fn queue_size_problem(size: u32, max: u16) -> Option<String> {
    if size == 0 {
        Some("is zero".into())
    } else if !size.is_power_of_two() {
        Some("is not a power of two".into())
    } else if size > u32::from(max) {
        Some(format!("is larger than the maximum {max}"))
    } else {
        None
    }
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    name: &'static str,
    /// Written on QueueNotify for a device served on the event loop.
    kick: Option<vmm_sys_util::eventfd::EventFd>,
    /// One eventfd per queue that KVM signals on QueueNotify (ioeventfd), when set up.
    notify_fds: OnceLock<Vec<vmm_sys_util::eventfd::EventFd>>,
    state: Mutex<State>,
    mem: Arc<dyn GuestMemoryView>,
    irq: SharedInterrupt,
    logged: AtomicU32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("name", &self.name)
            .field("irq", &self.irq)
            .finish()
    }
}

#[derive(Debug)]
struct State {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    /// Queues notified before DRIVER_OK by a driver the device lets do so (bit per queue).
    early_notify: u32,
}

const STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

impl MmioTransport {
    /// `device` behind a transport that reaches guest RAM through `mem` and signals `irq`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<dyn GuestMemoryView>,
        irq: SharedInterrupt,
    ) -> Result<Self, Error> {
        let name = device.name();
        let kick = match device.notify_on_event_loop() {
            true => Some(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|source| {
                    Error::Kick {
                        device: name,
                        source,
                    }
                })?,
            ),
            false => None,
        };
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| {
                <Queue as QueueT>::new(size).map_err(|source| Error::Queue {
                    device: name,
                    size,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(MmioTransport {
            name,
            kick,
            notify_fds: OnceLock::new(),
            state: Mutex::new(State {
                device,
                queues,
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                interrupt_status: 0,
                early_notify: 0,
            }),
            mem,
            irq,
            logged: AtomicU32::new(0),
        })
    }

    /// The device status register (tests and reports).
    pub fn status(&self) -> u32 {
        self.state.lock().map(|s| s.status).unwrap_or(0)
    }

    /// Whether the device has set DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    /// One line on stderr, at most [`LOG_LIMIT`] per device: a guest cannot flood the log.
    fn log(&self, what: &str) {
        let n = self.logged.fetch_add(1, Ordering::Relaxed);
        if n < LOG_LIMIT {
            let more = if n + 1 == LOG_LIMIT {
                " (further messages from this device not logged)"
            } else {
                ""
            };
            eprintln!("segvmm: {}: {what}{more}", self.name);
        }
    }

    fn signal(&self, st: &mut State, bit: u32) {
        st.interrupt_status |= bit;
        if let Err(e) = self.irq.trigger() {
            self.log(&format!("cannot raise the interrupt: {e}"));
        }
    }

    /// Sets DEVICE_NEEDS_RESET (once per reset cycle, with one log line) and tells a
    /// running driver through a config-change interrupt.
    fn fail(&self, st: &mut State, why: &str) {
        if st.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        st.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.log(&format!("{why}; device needs reset"));
        if st.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.signal(st, VIRTIO_MMIO_INT_CONFIG);
        }
    }

    fn offered_features(st: &State) -> u64 {
        st.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn read_register(st: &State, offset: u32) -> u32 {
        let queue = st.queues.get(st.queue_sel as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => st.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => 0,
            VIRTIO_MMIO_DEVICE_FEATURES => match st.device_features_sel {
                0 => Self::offered_features(st) as u32,
                1 => (Self::offered_features(st) >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => st.interrupt_status,
            VIRTIO_MMIO_STATUS => st.status,
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&self, st: &mut State, offset: u32, v: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => st.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => st.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(st, v),
            VIRTIO_MMIO_QUEUE_SEL => st.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue(st, offset, v),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(st, v),
            VIRTIO_MMIO_INTERRUPT_ACK => st.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => self.write_status(st, v),
            _ => {}
        }
    }

    fn write_driver_features(&self, st: &mut State, v: u32) {
        let s = st.status;
        if s & VIRTIO_CONFIG_S_DRIVER == 0 || s & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            return self.log("driver features written outside negotiation; ignored");
        }
        match st.driver_features_sel {
            0 => st.driver_features = (st.driver_features & !0xffff_ffff) | u64::from(v),
            1 => st.driver_features = (st.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    fn write_status(&self, st: &mut State, v: u32) {
        // A notify the guest wrote before this status is served in the state it was
        // written in.
        self.serve_pending(st);
        if v == 0 {
            return Self::reset(st);
        }
        let old = st.status & STATUS_BITS;
        let mut new = v & STATUS_BITS;
        if new & old != old {
            return self.log(&format!(
                "status {v:#x} clears bits of {old:#x} without a reset; ignored"
            ));
        }
        let has = |bits: u32| new & bits == bits;
        let order_ok = (!has(VIRTIO_CONFIG_S_DRIVER) || has(VIRTIO_CONFIG_S_ACKNOWLEDGE))
            && (!has(VIRTIO_CONFIG_S_FEATURES_OK) || has(VIRTIO_CONFIG_S_DRIVER))
            && (!has(VIRTIO_CONFIG_S_DRIVER_OK) || has(VIRTIO_CONFIG_S_FEATURES_OK));
        if !order_ok {
            return self.log(&format!("status {v:#x} skips a step; ignored"));
        }
        if new & !old & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = Self::offered_features(st);
            let f = st.driver_features;
            if f & !offered != 0 || f & (1 << VIRTIO_F_VERSION_1) == 0 {
                self.log(&format!(
                    "driver features {f:#x} are not a subset of {offered:#x} with VERSION_1; FEATURES_OK refused"
                ));
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            } else {
                // virtio-queue then honours used_event in needs_notification and writes
                // avail_event in enable_notification.
                let event_idx = f & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
                st.queues
                    .iter_mut()
                    .for_each(|q| q.set_event_idx(event_idx));
                st.device.ack_features(f);
            }
        }
        st.status = new | (st.status & VIRTIO_CONFIG_S_NEEDS_RESET);
        if new & !old & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.check_queues(st);
            let early = std::mem::take(&mut st.early_notify);
            for q in 0..32 {
                if early & (1 << q) != 0 {
                    self.notify(st, q);
                }
            }
        }
    }

    /// At DRIVER_OK: every queue the driver made ready lies in guest RAM.
    fn check_queues(&self, st: &mut State) {
        let mem = self.mem.memory();
        let bad = st.queues.iter().position(|q| q.ready() && !q.is_valid(mem));
        if let Some(i) = bad {
            self.fail(st, &format!("queue {i} is not in guest RAM"));
        }
    }

    fn reset(st: &mut State) {
        st.device.reset();
        st.queues.iter_mut().for_each(QueueT::reset);
        st.status = 0;
        st.device_features_sel = 0;
        st.driver_features_sel = 0;
        st.driver_features = 0;
        st.queue_sel = 0;
        st.interrupt_status = 0;
        st.early_notify = 0;
    }

    fn write_queue(&self, st: &mut State, offset: u32, v: u32) {
        let s = st.status;
        if s & VIRTIO_CONFIG_S_FEATURES_OK == 0 || s & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return self.log("queue register written outside queue set-up; ignored");
        }
        let sel = st.queue_sel;
        let Some(q) = st.queues.get_mut(sel as usize) else {
            return self.log(&format!("queue {sel} does not exist; write ignored"));
        };
        if q.ready() && offset != VIRTIO_MMIO_QUEUE_READY {
            return self.log(&format!("queue {sel} changed while ready; ignored"));
        }
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        let r = match offset {
            VIRTIO_MMIO_QUEUE_NUM => match queue_size_problem(v, q.max_size()) {
                Some(why) => return self.fail(st, &format!("queue {sel}: size {v} {why}")),
                None => q.try_set_size(v as u16),
            },
            VIRTIO_MMIO_QUEUE_READY => {
                q.set_ready(v == 1);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                q.try_set_desc_table_address(GuestAddress(low(q.desc_table())))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(GuestAddress(high(q.desc_table())))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                q.try_set_avail_ring_address(GuestAddress(low(q.avail_ring())))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                q.try_set_avail_ring_address(GuestAddress(high(q.avail_ring())))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                q.try_set_used_ring_address(GuestAddress(low(q.used_ring())))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                q.try_set_used_ring_address(GuestAddress(high(q.used_ring())))
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            self.fail(
                st,
                &format!("queue {sel}: register {offset:#x} = {v:#x}: {e}"),
            );
        }
    }

    /// QueueNotify: the device serves queue `v`.
    fn notify(&self, st: &mut State, v: u32) {
        if st.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        if st.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            let ready = st.queues.get(v as usize).is_some_and(|q| q.ready());
            let early_ok = st.device.early_notify_ok()
                && st.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
                && ready
                && v < 32;
            if early_ok {
                st.early_notify |= 1 << v;
                return;
            }
            return self.fail(st, &format!("notify of queue {v} before DRIVER_OK"));
        }
        let mem = self.mem.memory();
        let State { device, queues, .. } = &mut *st;
        let Some(q) = queues.get_mut(v as usize) else {
            return self.fail(st, &format!("notify of queue {v}, which does not exist"));
        };
        if !q.ready() || !q.is_valid(mem) {
            return self.fail(
                st,
                &format!("notify of queue {v}, not ready or not in guest RAM"),
            );
        }
        if let Some(k) = &self.kick {
            if let Err(e) = k.write(1) {
                self.log(&format!("cannot wake the event loop: {e}"));
            }
            return;
        }
        match device.process_queue(v as usize, q, mem) {
            Ok(used) => self.used(st, u32::from(used) << v),
            Err(e) => self.fail(st, &format!("queue {v}: {e}")),
        }
    }

    /// After the device used the queues in bit mask `mask`: one interrupt if any of them
    /// wants it.
    fn used(&self, st: &mut State, mask: u32) {
        let mem = self.mem.memory();
        let mut raise = false;
        for (i, q) in st.queues.iter_mut().enumerate() {
            if i < 32 && mask & (1 << i) != 0 {
                match q.needs_notification(mem) {
                    Ok(n) => raise |= n,
                    Err(e) => return self.fail(st, &format!("queue {i}: used ring: {e}")),
                }
            }
        }
        if raise {
            self.signal(st, VIRTIO_MMIO_INT_VRING);
        }
    }

    /// The event loop saw host descriptor `fd` ready: a queue's notify eventfd is served
    /// as that queue's notify; another the device serves while the driver runs (before
    /// DRIVER_OK or after a failure the event is left for later).
    pub fn host_event(&self, fd: std::os::unix::io::RawFd, events: EventSet) {
        if let Some(q) = self.notified_queue(fd) {
            return self.ioevent(q);
        }
        if let Some(k) = self.kick.as_ref().filter(|k| k.as_raw_fd() == fd) {
            // Readable, so this does not block; the device serves every queue below.
            let _ = k.read();
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let s = st.status;
        if s & VIRTIO_CONFIG_S_DRIVER_OK == 0 || s & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        let mem = self.mem.memory();
        let State { device, queues, .. } = &mut *st;
        if let Some(i) = queues.iter().position(|q| q.ready() && !q.is_valid(mem)) {
            return self.fail(&mut st, &format!("queue {i} is not in guest RAM"));
        }
        match device.host_event(fd, events, queues, mem) {
            Ok(mask) => self.used(&mut st, mask),
            Err(e) => self.fail(&mut st, &e.to_string()),
        }
    }

    /// The host descriptors the device wants watched.
    pub fn host_fds(&self) -> Vec<super::HostFd> {
        let mut fds = self
            .state
            .lock()
            .map(|s| s.device.host_fds())
            .unwrap_or_default();
        if let Some(k) = &self.kick {
            fds.push(super::HostFd {
                fd: k.as_raw_fd(),
                events: EventSet::IN,
            });
        }
        fds.extend(self.notify_watches());
        fds
    }

    /// Lets the device close descriptors the event loop no longer watches.
    pub fn reap(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.device.reap();
        }
    }
}

impl MmioTransport {
    /// The device's configuration changed (host side): a config-change interrupt for a
    /// running driver.
    pub fn config_changed(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let live = VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET;
        if st.status & live == VIRTIO_CONFIG_S_DRIVER_OK {
            self.signal(&mut st, VIRTIO_MMIO_INT_CONFIG);
        }
    }

    /// Serves queue `index` as a notify would, from a host thread (a device with work of
    /// its own to hand back); nothing unless the driver is running and the queue ready.
    pub fn kick(&self, index: u32) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let live = VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET;
        let ready = st.queues.get(index as usize).is_some_and(|q| q.ready());
        if st.status & live == VIRTIO_CONFIG_S_DRIVER_OK && ready {
            self.notify(&mut st, index);
        }
    }
}

impl BusDevice for MmioTransport {
    fn name(&self) -> &'static str {
        self.name
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        let Ok(st) = self.state.lock() else {
            return data.fill(0xff);
        };
        if offset >= CONFIG_OFFSET {
            return st.device.read_config(offset - CONFIG_OFFSET, data);
        }
        data.fill(0);
        if data.len() == 4 && offset % 4 == 0 {
            let v = Self::read_register(&st, offset as u32);
            data.copy_from_slice(&v.to_le_bytes());
        }
    }

    fn write(&self, _: &Access<'_>, offset: u64, data: &[u8]) -> DeviceAction {
        self.write_at(offset, data);
        DeviceAction::Continue
    }
}

impl MmioTransport {
    /// A guest write of `data` at `offset` (what [`BusDevice::write`] does, without the
    /// vCPU, for tests and other callers).
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if offset >= CONFIG_OFFSET {
            st.device.write_config(offset - CONFIG_OFFSET, data);
        } else if let (Ok(b), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(&mut st, offset as u32, u32::from_le_bytes(b));
        } else {
            self.log(&format!(
                "{}-byte register write at {offset:#x} ignored (32-bit aligned only)",
                data.len()
            ));
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::queue_size_problem;

    #[test]
    fn queue_sizes_are_refused_with_the_reason() {
        assert_eq!(queue_size_problem(8, 256), None);
        assert_eq!(queue_size_problem(256, 256), None);
        assert_eq!(queue_size_problem(0, 256).as_deref(), Some("is zero"));
        assert_eq!(
            queue_size_problem(5, 256).as_deref(),
            Some("is not a power of two")
        );
        assert_eq!(
            queue_size_problem(512, 256).as_deref(),
            Some("is larger than the maximum 256")
        );
        assert_eq!(
            queue_size_problem(1 << 17, 256).as_deref(),
            Some("is larger than the maximum 256")
        );
    }
}
