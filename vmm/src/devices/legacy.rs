//! The legacy PC devices as bus devices: COM1 (8250, vm-superio), the CMOS RTC, the i8042
//! reset line, the guest-to-VMM signal port and the signal MMIO window.

use std::sync::{Arc, Mutex};

use super::bus::{Access, BusDevice};
use super::{rtc::Rtc, DeviceAction, MmioHandler, SerialDevice};

/// I/O port of the signal device: a guest `out` of a value ends the VM with that status.
pub const SIGNAL_PORT: u16 = 0xf4;
/// Guest-physical base of the MMIO window handed to an [`MmioHandler`] (inside the hole).
pub const SIGNAL_MMIO_BASE: u64 = 0xd000_0000;
/// Size of that window.
pub const SIGNAL_MMIO_SIZE: u64 = 0x1000;
/// The i8042 controller's data and command ports.
pub const I8042_PORTS: (u16, u16) = (0x60, 0x64);

/// COM1 on the bus.
#[derive(Debug)]
pub struct Com1(pub Mutex<SerialDevice>);

impl BusDevice for Com1 {
    fn name(&self) -> &'static str {
        "com1"
    }
    fn read(&self, offset: u64, data: &mut [u8]) {
        let v = self
            .0
            .lock()
            .map(|mut s| s.read(offset as u16))
            .unwrap_or(0xff);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }
    fn write(&self, _: &Access<'_>, offset: u64, data: &[u8]) -> DeviceAction {
        if let (Ok(mut s), Some(v)) = (self.0.lock(), data.first()) {
            s.write(offset as u16, *v);
        }
        DeviceAction::Continue
    }
}

/// The CMOS RTC on ports 0x70-0x71.
#[derive(Debug, Default)]
pub struct CmosRtc(pub Mutex<Rtc>);

impl BusDevice for CmosRtc {
    fn name(&self) -> &'static str {
        "rtc"
    }
    fn read(&self, offset: u64, data: &mut [u8]) {
        let port = super::rtc::INDEX_PORT + offset as u16;
        let v = self.0.lock().map(|r| r.read(port)).unwrap_or(0xff);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }
    fn write(&self, _: &Access<'_>, offset: u64, data: &[u8]) -> DeviceAction {
        if let (Ok(mut r), Some(v)) = (self.0.lock(), data.first()) {
            r.write(super::rtc::INDEX_PORT + offset as u16, *v);
        }
        DeviceAction::Continue
    }
}

/// The i8042 controller, reduced to what a VMM needs: status 0 (no data, input buffer
/// empty) so the guest never waits, and command 0xfe (pulse the CPU reset line) as a reset.
/// Registered once per port (0x60 and 0x64).
#[derive(Debug, Clone, Copy)]
pub struct I8042 {
    /// Whether this registration is the command port.
    pub command_port: bool,
}

impl BusDevice for I8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }
    fn read(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _: &Access<'_>, _: u64, data: &[u8]) -> DeviceAction {
        if self.command_port && data.first() == Some(&0xfe) {
            DeviceAction::Reset
        } else {
            DeviceAction::Continue
        }
    }
}

/// The signal port: a write ends the VM with the value written as the guest's status.
#[derive(Debug, Clone, Copy)]
pub struct SignalPort;

impl BusDevice for SignalPort {
    fn name(&self) -> &'static str {
        "signal-port"
    }
    fn read(&self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&self, _: &Access<'_>, _: u64, data: &[u8]) -> DeviceAction {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        DeviceAction::Exit(i32::from_le_bytes(v))
    }
}

/// The signal MMIO window, served by an [`MmioHandler`] (the measurement guest's channel).
pub struct SignalWindow(pub Arc<dyn MmioHandler>);

impl std::fmt::Debug for SignalWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalWindow")
    }
}

impl BusDevice for SignalWindow {
    fn name(&self) -> &'static str {
        "signal-mmio"
    }
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn write(&self, access: &Access<'_>, offset: u64, data: &[u8]) -> DeviceAction {
        self.0.write(access.vcpu, offset, data)
    }
}
