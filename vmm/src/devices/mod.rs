//! Devices on the bus ([`bus`]): the 8250 serial console (vm-superio), the CMOS RTC, the
//! i8042 reset line, and the guest-to-VMM signal device (an I/O port for ring-0 guests and
//! an MMIO window, which also works from guest ring 3 on hosts that drop IOPL).

pub mod bus;
pub mod console;
pub mod legacy;
pub mod rtc;
pub mod serial;
pub mod virtio;

use kvm_ioctls::VcpuFd;

pub use bus::{Access, Bus, BusDevice, IoBus};
pub use console::{Console, ConsoleEvent};
pub use legacy::{SIGNAL_MMIO_BASE, SIGNAL_MMIO_SIZE, SIGNAL_PORT};
pub use serial::SerialDevice;

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
