//! Devices: the 8250 serial console (vm-superio), the i8042 reset line, and the
//! guest-to-VMM signal device (an I/O port for ring-0 guests and an MMIO window, which
//! also works from guest ring 3 on hosts that drop IOPL).

pub mod console;
pub mod rtc;
pub mod serial;

use std::sync::{Arc, Mutex};

use kvm_ioctls::VcpuFd;

pub use console::{Console, ConsoleEvent};
pub use serial::SerialDevice;

/// I/O port of the signal device: a guest `out` of a value ends the VM with that status.
pub const SIGNAL_PORT: u16 = 0xf4;
/// Guest-physical base of the MMIO window handed to an [`MmioHandler`] (inside the hole).
pub const SIGNAL_MMIO_BASE: u64 = 0xd000_0000;
/// Size of that window.
pub const SIGNAL_MMIO_SIZE: u64 = 0x1000;

/// What a device asks the vCPU loop to do after an access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAction {
    /// Keep running the guest.
    Continue,
    /// End the VM: the guest reported this status.
    Exit(i32),
    /// The guest asked for a reset (i8042 pulse, triple-fault-free reboot).
    Reset,
    /// The guest asks for a page-table capture written to this file (the VMM pauses the
    /// other vCPUs, captures, and resumes the guest).
    Ptsnap(std::path::PathBuf),
}

/// A device behind the signal MMIO window (the measurement guest's channel). It gets the
/// vCPU so that it can read registers (e.g. CR3 for a page-table capture) on a request.
pub trait MmioHandler: Send + Sync {
    /// The guest wrote `data` at `offset` inside the window.
    fn write(&self, vcpu: &VcpuFd, offset: u64, data: &[u8]) -> DeviceAction;
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
}

/// All devices of one VM, shared by its vCPU threads.
pub struct Devices {
    /// The serial console.
    pub serial: Mutex<SerialDevice>,
    /// The CMOS real-time clock.
    pub rtc: Mutex<rtc::Rtc>,
    /// The console's line watcher and log.
    pub console: Arc<Console>,
    /// The MMIO signal window's handler, if any.
    pub mmio: Option<Arc<dyn MmioHandler>>,
    /// Takes page-table captures when the guest asks (set once the vCPUs exist).
    pub ptsnaps: std::sync::OnceLock<Arc<crate::ptsnap::PtsnapService>>,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("mmio", &self.mmio.is_some())
            .finish()
    }
}

impl Devices {
    /// Port I/O write.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> DeviceAction {
        match port {
            serial::COM1..=serial::COM1_END => {
                if let Ok(mut s) = self.serial.lock() {
                    s.write(port - serial::COM1, data.first().copied().unwrap_or(0));
                }
                DeviceAction::Continue
            }
            rtc::INDEX_PORT | rtc::DATA_PORT => {
                if let (Ok(mut r), Some(v)) = (self.rtc.lock(), data.first()) {
                    r.write(port, *v);
                }
                DeviceAction::Continue
            }
            // i8042 command port: 0xfe pulses the CPU reset line.
            0x64 if data.first() == Some(&0xfe) => DeviceAction::Reset,
            SIGNAL_PORT => {
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                DeviceAction::Exit(i32::from_le_bytes(v))
            }
            _ => DeviceAction::Continue,
        }
    }

    /// Port I/O read.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            serial::COM1..=serial::COM1_END => {
                let v = self
                    .serial
                    .lock()
                    .map(|mut s| s.read(port - serial::COM1))
                    .unwrap_or(0xff);
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = v;
                }
            }
            rtc::INDEX_PORT | rtc::DATA_PORT => {
                let v = self.rtc.lock().map(|r| r.read(port)).unwrap_or(0xff);
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = v;
                }
            }
            // i8042: status 0 (no data, input buffer empty) so the guest never waits.
            0x60 | 0x64 => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    /// MMIO write anywhere outside RAM.
    pub fn mmio_write(&self, vcpu: &VcpuFd, addr: u64, data: &[u8]) -> DeviceAction {
        match &self.mmio {
            Some(h) if (SIGNAL_MMIO_BASE..SIGNAL_MMIO_BASE + SIGNAL_MMIO_SIZE).contains(&addr) => {
                h.write(vcpu, addr - SIGNAL_MMIO_BASE, data)
            }
            _ => DeviceAction::Continue,
        }
    }

    /// MMIO read anywhere outside RAM.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match &self.mmio {
            Some(h) if (SIGNAL_MMIO_BASE..SIGNAL_MMIO_BASE + SIGNAL_MMIO_SIZE).contains(&addr) => {
                h.read(addr - SIGNAL_MMIO_BASE, data)
            }
            _ => data.fill(0xff),
        }
    }
}
