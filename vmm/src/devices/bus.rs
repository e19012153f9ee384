//! The device bus: devices register the port-I/O and MMIO address ranges they decode, and a
//! vCPU exit is dispatched by address (Firecracker's and Cloud Hypervisor's `Bus`, in
//! small). A virtio-mmio device, a legacy port or the measurement guest's signal window is
//! added by registration alone; the vCPU loop never matches on addresses.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_ioctls::VcpuFd;

use super::DeviceAction;

/// Errors registering a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The range is empty or wraps around the address space.
    #[error("{bus} range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Which bus.
        bus: &'static str,
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already registered.
    #[error("{bus} range {base:#x}+{len:#x} overlaps {other} at {other_base:#x}")]
    Overlap {
        /// Which bus.
        bus: &'static str,
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
        /// The device already there.
        other: &'static str,
        /// Its base.
        other_base: u64,
    },
}

/// Who is accessing a device: the vCPU (its fd, e.g. to read its statistics) and its id.
#[derive(Debug)]
pub struct Access<'a> {
    /// The vCPU that exited.
    pub vcpu: &'a VcpuFd,
    /// Its index.
    pub id: usize,
}

/// A device on the bus. Offsets are relative to the base it was registered at. Devices
/// keep their own locks: several vCPUs may access one device at a time.
pub trait BusDevice: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`; the answer tells the vCPU loop what to do next.
    fn write(&self, access: &Access<'_>, offset: u64, data: &[u8]) -> DeviceAction;
}

struct Entry {
    len: u64,
    device: Arc<dyn BusDevice>,
}

/// One address space (port I/O or MMIO) of registered ranges.
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (base, e) in &self.ranges {
            m.entry(&format_args!("{base:#x}+{:#x}", e.len), &e.device.name());
        }
        m.finish()
    }
}

impl Bus {
    /// An empty bus called `name` ("pio", "mmio").
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: BTreeMap::new(),
        }
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<dyn BusDevice>) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::BadRange {
                bus: self.name,
                base,
                len,
            })?;
        let before = self.ranges.range(..end).next_back();
        if let Some((&b, e)) = before.filter(|(&b, e)| b + e.len > base) {
            return Err(Error::Overlap {
                bus: self.name,
                base,
                len,
                other: e.device.name(),
                other_base: b,
            });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device whose range holds `addr`, and the offset of `addr` in it. An access is
    /// decoded by its first address, as ISA decodes a wide `out` to a one-byte port; the
    /// device sees the whole access and bounds its own registers.
    fn find(&self, addr: u64) -> Option<(&Arc<dyn BusDevice>, u64)> {
        let (base, e) = self.ranges.range(..=addr).next_back()?;
        let off = addr - base;
        (off < e.len).then_some((&e.device, off))
    }

    /// A read at `addr`; `false` when no device decodes it (the caller fills the bytes).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((d, off)) => {
                d.read(off, data);
                true
            }
            None => false,
        }
    }

    /// A write at `addr`; `None` when no device decodes it.
    pub fn write(&self, access: &Access<'_>, addr: u64, data: &[u8]) -> Option<DeviceAction> {
        self.find(addr).map(|(d, off)| d.write(access, off, data))
    }

    /// Names and ranges registered, for reports and tests.
    pub fn ranges(&self) -> Vec<(u64, u64, &'static str)> {
        self.ranges
            .iter()
            .map(|(b, e)| (*b, e.len, e.device.name()))
            .collect()
    }
}

/// The two buses of a VM. Unclaimed port reads return all ones (an absent ISA device);
/// unclaimed MMIO reads return all ones too; unclaimed writes are dropped.
#[derive(Debug)]
pub struct IoBus {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

impl Default for IoBus {
    fn default() -> Self {
        IoBus {
            pio: Bus::new("pio"),
            mmio: Bus::new("mmio"),
        }
    }
}

impl IoBus {
    /// Port read.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
        }
    }

    /// Port write.
    pub fn pio_write(&self, access: &Access<'_>, port: u16, data: &[u8]) -> DeviceAction {
        self.pio
            .write(access, u64::from(port), data)
            .unwrap_or(DeviceAction::Continue)
    }

    /// MMIO read.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
        }
    }

    /// MMIO write.
    pub fn mmio_write(&self, access: &Access<'_>, addr: u64, data: &[u8]) -> DeviceAction {
        self.mmio
            .write(access, addr, data)
            .unwrap_or(DeviceAction::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);
    impl BusDevice for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, _: &Access<'_>, offset: u64, _: &[u8]) -> DeviceAction {
            DeviceAction::Exit(offset as i32)
        }
    }

    #[test]
    fn ranges_dispatch_by_address_and_refuse_overlaps() {
        let mut bus = Bus::new("pio");
        bus.insert(0x3f8, 8, Arc::new(Named("serial"))).unwrap();
        bus.insert(0x70, 2, Arc::new(Named("rtc"))).unwrap();
        let e = bus.insert(0x3fc, 8, Arc::new(Named("x"))).unwrap_err();
        assert!(matches!(
            e,
            Error::Overlap {
                other: "serial",
                other_base: 0x3f8,
                ..
            }
        ));
        assert!(bus.insert(0x3f0, 9, Arc::new(Named("y"))).is_err());
        bus.insert(0x3f0, 8, Arc::new(Named("z"))).unwrap();
        assert!(bus.insert(u64::MAX, 2, Arc::new(Named("w"))).is_err());
        assert!(bus.insert(5, 0, Arc::new(Named("w"))).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.read(0x71, &mut b));
        assert_eq!(b, [1]);
        assert!(!bus.read(0x72, &mut b));
        // A wide access is decoded by its first address.
        let mut w = [0u8; 4];
        assert!(bus.read(0x3ff, &mut w));
        assert_eq!(w, [7; 4]);
        assert_eq!(
            bus.ranges().iter().map(|r| r.2).collect::<Vec<_>>(),
            ["rtc", "z", "serial"]
        );
    }
}
