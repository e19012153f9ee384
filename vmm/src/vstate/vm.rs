//! The KVM VM: memory slots over the one guest mapping, the in-kernel interrupt
//! controllers and the PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use crate::memory::GuestRam;

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which step.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Creates the VM, registers one memory slot per RAM range (all pointing into the one
/// mapping; with dirty logging when `log_dirty`) and the in-kernel irqchip and PIT.
pub fn create(kvm: &Kvm, ram: &GuestRam, log_dirty: bool) -> Result<VmFd, Error> {
    let vm = create_empty(kvm)?;
    add_ram_and_devices(&vm, ram, log_dirty)?;
    Ok(vm)
}

/// The VM alone, before any memory: VM-wide capabilities that must precede memory slots
/// (the dirty ring: KVM would otherwise also allocate per-slot dirty bitmaps that nobody
/// reads) are enabled between this and [`add_ram_and_devices`].
pub fn create_empty(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    // The TSS and identity-map pages live in the MMIO hole, away from RAM (as Firecracker).
    let _ = vm.set_tss_address(0xfffb_d000);
    Ok(vm)
}

/// Registers one memory slot per RAM range (all pointing into the one mapping; with dirty
/// logging when `log_dirty`), then the in-kernel irqchip and PIT.
pub fn add_ram_and_devices(vm: &VmFd, ram: &GuestRam, log_dirty: bool) -> Result<(), Error> {
    for (slot, r) in ram.ranges().iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: if log_dirty {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: r.gpa,
            memory_size: r.len,
            userspace_addr: ram.hva(r.gpa),
        };
        // SAFETY: the host range [hva(gpa), hva(gpa)+len) is mapped read-write by GuestRam,
        // which outlives the VM (the caller keeps both in the same Machine and drops the VM
        // first).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}
