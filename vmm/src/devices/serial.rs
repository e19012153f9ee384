//! COM1, an 8250 UART from vm-superio, wired to the console (output) and, through an irqfd
//! on GSI 4, to the guest's interrupt controller.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::console::Console;

/// First port of COM1.
pub const COM1: u16 = 0x3f8;
/// Last port of COM1.
pub const COM1_END: u16 = 0x3ff;
/// COM1's interrupt line.
pub const COM1_GSI: u32 = 4;

/// Raises the serial interrupt by signalling an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Where serial output goes: the console (which echoes to stdout and watches lines).
#[derive(Debug)]
pub struct ConsoleWriter(pub Arc<Console>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.output(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A saved UART state vm-superio refuses (a FIFO longer than the UART's).
#[derive(Debug, thiserror::Error)]
#[error("saved serial state refused: {0} bytes in its FIFO (the UART holds 64)")]
pub struct BadSerialState(pub usize);

/// The serial device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `console`.
    pub fn new(irq: EventFd, console: Arc<Console>) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), ConsoleWriter(console)),
        }
    }

    /// A UART in the saved state `s` (a snapshot's restore); a FIFO longer than the
    /// UART's is refused.
    pub fn from_state(
        irq: EventFd,
        console: Arc<Console>,
        s: &SerialSnapshot,
    ) -> Result<Self, BadSerialState> {
        let r = s.regs;
        let in_buffer = s.in_buffer.clone();
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer,
        };
        let (trigger, writer) = (IrqTrigger(irq), ConsoleWriter(console));
        Serial::from_state(&state, trigger, vm_superio::serial::NoEvents, writer)
            .map(|uart| SerialDevice { uart })
            .map_err(|_| BadSerialState(s.in_buffer.len()))
    }

    /// The UART's registers and FIFO, for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Register write.
    pub fn write(&mut self, offset: u16, v: u8) {
        // An interrupt that cannot be raised is not fatal for a console.
        let _ = self.uart.write(offset as u8, v);
    }

    /// Register read.
    pub fn read(&mut self, offset: u16) -> u8 {
        self.uart.read(offset as u8)
    }

    /// Input from the host (stdin) to the guest.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        self.uart
            .enqueue_raw_bytes(&bytes[..bytes.len().min(room)])
            .unwrap_or(0)
    }
}

/// The serial port's registers and FIFO (vm-superio's `SerialState`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// DLL, DLH, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 9],
    /// Bytes waiting for the guest.
    pub in_buffer: Vec<u8>,
}
