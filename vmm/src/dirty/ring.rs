//! KVM's dirty ring (`KVM_CAP_DIRTY_LOG_RING`): one ring of dirtied guest frames per vCPU,
//! shared with KVM through an mmap of the vCPU file descriptor.
//!
//! # Protocol (Documentation/virt/kvm/api.rst, "KVM_CAP_DIRTY_LOG_RING")
//!
//! * The VM enables the ring with `KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING, bytes)` before any
//!   vCPU exists (see [`super::prepare`]); `bytes` is a power of two, at least one page and
//!   at least the ring's reserved entries, at most what `KVM_CHECK_EXTENSION` returned.
//! * Each vCPU's ring is an array of `struct kvm_dirty_gfn { u32 flags; u32 slot; u64
//!   offset; }` mapped `MAP_SHARED` from its fd at `KVM_DIRTY_LOG_PAGE_OFFSET` pages.
//! * KVM fills entries in order and sets `KVM_DIRTY_GFN_F_DIRTY`; we read entries from our
//!   own fetch index while that flag is set (load-acquire: the slot and offset are valid
//!   after it), then write `KVM_DIRTY_GFN_F_RESET` (store-release). `KVM_RESET_DIRTY_RINGS`
//!   on the VM fd then write-protects the harvested pages again and frees their entries.
//! * When a ring holds `entries − reserved` unreset entries it is *soft full*: KVM stops the
//!   vCPU before its next guest entry with `KVM_EXIT_DIRTY_RING_FULL` (and keeps doing so
//!   until entries are reset). The reserved entries (64 here) are the slack for writes
//!   already in flight. The vCPU thread then harvests its own ring and resets
//!   ([`Rings::on_full`]) instead of waiting for the collector, so a small ring costs exits,
//!   never lost pages.
//!
//! One lock serializes every harvest + reset with the collector's interval cut, so a page
//! harvested by a vCPU thread is re-armed before the collector closes the interval it was
//! counted in; the window between harvesting and re-protecting is the same as the
//! bitmap's between `KVM_GET_DIRTY_LOG` and `KVM_CLEAR_DIRTY_LOG`.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_dirty_gfn, KVM_DIRTY_LOG_PAGE_OFFSET};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl;

use super::{Error, KVMIO};

vmm_sys_util::ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);

/// `KVM_DIRTY_GFN_F_DIRTY` (`BIT(0)` in linux/kvm.h; kvm-bindings only has the mask): KVM
/// filled the entry.
const KVM_DIRTY_GFN_F_DIRTY: u32 = 1 << 0;
/// `KVM_DIRTY_GFN_F_RESET`: user space harvested it; KVM may re-protect and reuse it.
const KVM_DIRTY_GFN_F_RESET: u32 = 1 << 1;

/// Smallest ring KVM accepts: one host page (and at least the reserved entries).
pub const MIN_RING_BYTES: u32 = 4096;
/// Entries KVM keeps free in every ring for writes in flight when it becomes soft full
/// (`KVM_DIRTY_RING_RSVD_ENTRIES`; hosts with Intel PML reserve a PML buffer more).
pub const RESERVED_ENTRIES: u32 = 64;
/// Bytes per ring entry.
pub const ENTRY_BYTES: u32 = std::mem::size_of::<kvm_dirty_gfn>() as u32;
/// Default ring: 64 Ki entries (1 MiB per vCPU), the largest KVM allows, or the host's
/// maximum when smaller. A large ring makes ring-full exits rare: gups over 256 MiB
/// dirties at most 65 K distinct pages per interval.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// A ring size KVM or this host does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingSize {
    /// Not a power of two.
    #[error("ring of {0} bytes: must be a power of two")]
    NotPowerOfTwo(u32),
    /// Below KVM's minimum.
    #[error("ring of {bytes} bytes: at least {min}")]
    TooSmall {
        /// Asked for.
        bytes: u32,
        /// Smallest allowed.
        min: u32,
    },
    /// Above the host's maximum.
    #[error("ring of {bytes} bytes: this host allows at most {max}")]
    TooLarge {
        /// Asked for.
        bytes: u32,
        /// Largest allowed.
        max: u32,
    },
}

/// Checks a ring size against KVM's rules and the host's maximum `max` (bytes).
pub fn check_bytes(bytes: u32, max: u32) -> Result<(), RingSize> {
    if !bytes.is_power_of_two() {
        return Err(RingSize::NotPowerOfTwo(bytes));
    }
    let min = MIN_RING_BYTES.max(RESERVED_ENTRIES * ENTRY_BYTES);
    if bytes < min {
        return Err(RingSize::TooSmall { bytes, min });
    }
    if bytes > max {
        return Err(RingSize::TooLarge { bytes, max });
    }
    Ok(())
}

/// One vCPU's ring, mapped from its fd.
#[derive(Debug)]
struct Ring {
    base: NonNull<kvm_dirty_gfn>,
    entries: u32,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this struct until Drop; every access
// goes through `Rings`, which serializes harvesting under its lock and reads the flags with
// atomics, so moving or sharing the pointer between threads is sound.
unsafe impl Send for Ring {}
// SAFETY: see `Send`.
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`bytes` are exactly the mapping made in `Rings::map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// What the lock protects: each ring's fetch index and the pages harvested since the last
/// interval cut.
#[derive(Debug, Default)]
struct State {
    fetch: Vec<u32>,
    pending: Vec<u64>,
}

/// Every vCPU's ring of one VM.
#[derive(Debug)]
pub struct Rings {
    vm: Arc<VmFd>,
    rings: Vec<Ring>,
    /// Per memory slot (index = slot id): first page frame number and pages.
    slots: Vec<(u64, u64)>,
    state: Mutex<State>,
    full_exits: AtomicU64,
    harvested: AtomicU64,
    resets: AtomicU64,
}

impl Rings {
    /// Maps the ring of every vCPU in `vcpus` (`bytes` each, as enabled on `vm`); `slots`
    /// gives each memory slot's first guest-physical address and length, by slot id.
    ///
    /// Drop the result before the vCPU fds: the mappings belong to them.
    pub fn map(
        vm: Arc<VmFd>,
        vcpus: &[VcpuFd],
        bytes: u32,
        slots: &[(u64, u64)],
    ) -> Result<Rings, Error> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64;
        let offset = i64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * page;
        let mut rings = Vec::with_capacity(vcpus.len());
        for (i, v) in vcpus.iter().enumerate() {
            // SAFETY: mapping `bytes` of a live vCPU fd at KVM's dirty-ring offset, shared
            // read-write as KVM requires (a private or executable mapping is refused); the
            // result is checked and owned by `Ring`, which unmaps it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    v.as_raw_fd(),
                    offset,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(Error::Ring(format!(
                    "mapping vCPU {i}'s dirty ring ({bytes} bytes): {}",
                    std::io::Error::last_os_error()
                )));
            }
            let base = NonNull::new(p.cast::<kvm_dirty_gfn>())
                .ok_or_else(|| Error::Ring("mmap returned a null dirty ring".into()))?;
            rings.push(Ring {
                base,
                entries: bytes / ENTRY_BYTES,
                bytes: bytes as usize,
            });
        }
        Ok(Rings {
            vm,
            state: Mutex::new(State {
                fetch: vec![0; rings.len()],
                pending: Vec::new(),
            }),
            rings,
            slots: slots
                .iter()
                .map(|&(gpa, len)| (gpa >> 12, len >> 12))
                .collect(),
            full_exits: AtomicU64::new(0),
            harvested: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        })
    }

    /// Entries per ring.
    pub fn entries(&self) -> u32 {
        self.rings.first().map_or(0, |r| r.entries)
    }

    /// `KVM_EXIT_DIRTY_RING_FULL` exits handled so far.
    pub fn full_exits(&self) -> u64 {
        self.full_exits.load(Ordering::Relaxed)
    }

    /// Entries harvested so far.
    pub fn harvested(&self) -> u64 {
        self.harvested.load(Ordering::Relaxed)
    }

    /// Harvests ring `i` into `st.pending`; returns the entries taken.
    fn harvest(&self, i: usize, st: &mut State) -> Result<u64, Error> {
        let ring = &self.rings[i];
        let mask = ring.entries - 1;
        let mut n = 0u64;
        loop {
            let idx = (st.fetch[i] & mask) as usize;
            // SAFETY: `idx < entries`, so the entry lies inside the mapping, which lives as
            // long as `self`; `flags` is a naturally aligned u32 that KVM writes
            // concurrently, so it is only accessed atomically.
            let e = unsafe { ring.base.as_ptr().add(idx) };
            // SAFETY: as above; `AtomicU32` has the layout of `u32`.
            let flags = unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*e).flags)) };
            if flags.load(Ordering::Acquire) & KVM_DIRTY_GFN_F_DIRTY == 0 {
                break;
            }
            // SAFETY: the acquire load above saw DIRTY, after which KVM no longer writes
            // the entry until we hand it back (RESET + KVM_RESET_DIRTY_RINGS).
            let (slot, offset) = unsafe {
                (
                    std::ptr::read_volatile(std::ptr::addr_of!((*e).slot)),
                    std::ptr::read_volatile(std::ptr::addr_of!((*e).offset)),
                )
            };
            // High 16 bits: address space (1 = SMM, which these guests never enter).
            let (as_id, id) = (slot >> 16, (slot & 0xffff) as usize);
            match self.slots.get(id) {
                Some(&(first, pages)) if as_id == 0 && offset < pages => {
                    st.pending.push(first + offset)
                }
                _ => {
                    return Err(Error::Ring(format!(
                        "vCPU {i}'s ring names slot {slot:#x} offset {offset:#x}, outside guest RAM"
                    )))
                }
            }
            flags.store(KVM_DIRTY_GFN_F_RESET, Ordering::Release);
            st.fetch[i] = st.fetch[i].wrapping_add(1);
            n += 1;
        }
        self.harvested.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// `KVM_RESET_DIRTY_RINGS`: re-protects every harvested page and frees its entry.
    fn reset(&self) -> Result<(), Error> {
        loop {
            // SAFETY: a plain ioctl without arguments on the live VM fd.
            let r = unsafe { ioctl(&*self.vm, KVM_RESET_DIRTY_RINGS()) };
            if r >= 0 {
                self.resets.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let e = kvm_ioctls::Error::last();
            // Recent kernels give up a long reset when a signal is pending (our vCPU kick
            // signal, say); the handler has run by now, so try again.
            if e.errno() != libc::EINTR {
                return Err(Error::Kvm {
                    what: "KVM_RESET_DIRTY_RINGS",
                    source: e,
                });
            }
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, Error> {
        self.state.lock().map_err(|_| Error::Poisoned)
    }

    /// The vCPU thread's answer to `KVM_EXIT_DIRTY_RING_FULL`: harvest its own ring into
    /// the current interval and reset, so that KVM lets it run again.
    pub fn on_full(&self, vcpu: usize) -> Result<(), Error> {
        self.full_exits.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock()?;
        if vcpu >= self.rings.len() {
            return Err(Error::Ring(format!("no dirty ring for vCPU {vcpu}")));
        }
        self.harvest(vcpu, &mut st)?;
        self.reset()
    }

    /// The interval cut: harvests every ring, resets, and returns the pages collected
    /// since the last cut (including what vCPU threads harvested on ring-full exits).
    pub fn collect(&self) -> Result<Vec<u64>, Error> {
        let mut st = self.lock()?;
        let mut n = 0;
        for i in 0..self.rings.len() {
            n += self.harvest(i, &mut st)?;
        }
        if n > 0 {
            self.reset()?;
        }
        Ok(std::mem::take(&mut st.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(ENTRY_BYTES, 16);
        assert!(check_bytes(4096, 1 << 20).is_ok());
        assert!(check_bytes(1 << 20, 1 << 20).is_ok());
        assert!(check_bytes(2048, 1 << 20).is_err());
        assert!(check_bytes(6144, 1 << 20).is_err());
        assert!(check_bytes(2 << 20, 1 << 20).is_err());
    }
}
