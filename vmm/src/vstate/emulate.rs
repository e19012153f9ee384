//! Completing, in the VMM, guest ring-0 instructions that the host's in-kernel emulator
//! cannot run.
//!
//! On kvm_pvm every guest ring-0 instruction goes through KVM's x86 emulator, which gives
//! up on a few (`int3`, `popcnt`, `clac`/`stac`, `fwait`, `fnclex`, `ldmxcsr`, `emms`,
//! `lock cmpxchg16b`, ...) with `KVM_EXIT_INTERNAL_ERROR` / `KVM_INTERNAL_ERROR_EMULATION`,
//! RIP left at the instruction. QEMU and Cloud Hypervisor stop there. We decode the
//! instruction with iced-x86, perform it on the vCPU's registers, FPU state or guest memory,
//! and resume; `int3` is completed the way the CPU would: RIP past it and #BP injected.

use std::sync::atomic::{AtomicU64, Ordering};

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestRam;

/// Errors while completing an instruction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An instruction we do not complete.
    #[error("guest instruction at rip {rip:#x} cannot be run by this host's KVM and is not completed by segvmm: {text} (bytes {bytes})")]
    Unsupported {
        /// Where.
        rip: u64,
        /// Disassembly.
        text: String,
        /// Raw bytes.
        bytes: String,
    },
    /// The guest address could not be translated or accessed.
    #[error("emulating at rip {rip:#x}: guest address {va:#x}: {why}")]
    Access {
        /// Where.
        rip: u64,
        /// The address.
        va: u64,
        /// Why.
        why: String,
    },
    /// A vCPU ioctl failed.
    #[error("emulating: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// How often each kind was completed, for reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// int3 → #BP injected.
    pub int3: AtomicU64,
    /// Other instructions performed by the VMM.
    pub other: AtomicU64,
}

/// The workarounds applied on kvm_pvm hosts, for reports and the README.
pub fn pvm_workaround_list() -> Vec<String> {
    vec![
        "CPUID: cx16, popcnt, xsave/osxsave, avx, avx2 and smap removed from the vCPU's CPUID".into(),
        "kernel command line: noxsave clearcpuid=... (kvm_pvm shows host CPUID to the guest)".into(),
        "emulation failures completed in the VMM: int3 (#BP injected), popcnt, clac/stac, fwait, fnclex, fninit, emms, ldmxcsr/stmxcsr, lock cmpxchg16b".into(),
        "Linux: console watched for 'reboot: Power down' and panics (no ACPI power-off device)".into(),
    ]
}

/// Translates a guest virtual address to guest-physical with the vCPU's paging state.
/// Handles paging off, 4-level and 5-level paging with 4K/2M/1G leaves.
pub fn translate(ram: &GuestRam, sregs: &kvm_sregs, va: u64) -> std::result::Result<u64, String> {
    const PG: u64 = 1 << 31;
    if sregs.cr0 & PG == 0 {
        return Ok(va & 0xffff_ffff);
    }
    if sregs.efer & (1 << 10) == 0 {
        return Err("32-bit paging is not supported by the VMM's emulation path".into());
    }
    let levels = if sregs.cr4 & (1 << 12) != 0 { 5 } else { 4 };
    let mut table = sregs.cr3 & 0x000f_ffff_ffff_f000;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let idx = (va >> shift) & 0x1ff;
        let e: u64 = ram
            .memory()
            .read_obj(GuestAddress(table + idx * 8))
            .map_err(|e| format!("reading page table at {:#x}: {e}", table + idx * 8))?;
        if e & 1 == 0 {
            return Err(format!("not present (level {level} entry {e:#x})"));
        }
        let addr = e & 0x000f_ffff_ffff_f000;
        if level == 1 || (level <= 3 && e & 0x80 != 0) {
            let mask = (1u64 << shift) - 1;
            return Ok((addr & !mask) | (va & mask));
        }
        table = addr;
    }
    Err("walk did not end".into())
}

fn reg_value(regs: &kvm_regs, sregs: &kvm_sregs, r: Register) -> Option<u64> {
    use Register::*;
    let full = r.full_register();
    let v = match full {
        RAX => regs.rax,
        RBX => regs.rbx,
        RCX => regs.rcx,
        RDX => regs.rdx,
        RSI => regs.rsi,
        RDI => regs.rdi,
        RSP => regs.rsp,
        RBP => regs.rbp,
        R8 => regs.r8,
        R9 => regs.r9,
        R10 => regs.r10,
        R11 => regs.r11,
        R12 => regs.r12,
        R13 => regs.r13,
        R14 => regs.r14,
        R15 => regs.r15,
        RIP => regs.rip,
        None => 0,
        _ => match r {
            ES => sregs.es.base,
            CS => sregs.cs.base,
            SS => sregs.ss.base,
            DS => sregs.ds.base,
            FS => sregs.fs.base,
            GS => sregs.gs.base,
            _ => return Option::None,
        },
    };
    let size = r.size();
    Some(if size >= 8 || r.is_segment_register() {
        v
    } else if r == AH || r == BH || r == CH || r == DH {
        (v >> 8) & 0xff
    } else {
        v & ((1u64 << (size * 8)) - 1)
    })
}

fn set_reg(regs: &mut kvm_regs, r: Register, val: u64) {
    use Register::*;
    let full = r.full_register();
    let slot = match full {
        RAX => &mut regs.rax,
        RBX => &mut regs.rbx,
        RCX => &mut regs.rcx,
        RDX => &mut regs.rdx,
        RSI => &mut regs.rsi,
        RDI => &mut regs.rdi,
        RSP => &mut regs.rsp,
        RBP => &mut regs.rbp,
        R8 => &mut regs.r8,
        R9 => &mut regs.r9,
        R10 => &mut regs.r10,
        R11 => &mut regs.r11,
        R12 => &mut regs.r12,
        R13 => &mut regs.r13,
        R14 => &mut regs.r14,
        R15 => &mut regs.r15,
        _ => return,
    };
    match r.size() {
        8 | 4 => *slot = val & if r.size() == 4 { 0xffff_ffff } else { u64::MAX }, // 32-bit writes zero-extend
        2 => *slot = (*slot & !0xffff) | (val & 0xffff),
        _ => *slot = (*slot & !0xff) | (val & 0xff),
    }
}

/// The instruction at RIP: from the exit's instruction bytes when KVM gave them, else read
/// from guest memory.
fn fetch(vcpu: &mut VcpuFd, ram: &GuestRam, regs: &kvm_regs, sregs: &kvm_sregs) -> Result<Vec<u8>> {
    let run = vcpu.get_kvm_run();
    // SAFETY: reading the emulation_failure member of the kvm_run union after an
    // KVM_EXIT_INTERNAL_ERROR exit, which is the member KVM filled in; all fields are plain
    // integers, so any bit pattern is valid.
    let (flags, size, bytes) = unsafe {
        let ef = run.__bindgen_anon_1.emulation_failure;
        let ib = ef.__bindgen_anon_1.__bindgen_anon_1;
        (ef.flags, ib.insn_size as usize, ib.insn_bytes)
    };
    if flags & 1 != 0 && size > 0 && size <= 15 {
        return Ok(bytes[..size].to_vec());
    }
    let va = sregs.cs.base.wrapping_add(regs.rip);
    let gpa = translate(ram, sregs, va).map_err(|why| Error::Access {
        rip: regs.rip,
        va,
        why,
    })?;
    let mut buf = vec![0u8; 15];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ram
            .memory()
            .read_obj(GuestAddress(gpa + i as u64))
            .unwrap_or(0);
    }
    Ok(buf)
}

fn mem_addr(ins: &Instruction, regs: &kvm_regs, sregs: &kvm_sregs, op: u32) -> Option<u64> {
    ins.virtual_address(op, 0, |r, _, _| reg_value(regs, sregs, r))
}

fn guest_ptr(ram: &GuestRam, sregs: &kvm_sregs, rip: u64, va: u64, len: u64) -> Result<*mut u8> {
    let gpa = translate(ram, sregs, va).map_err(|why| Error::Access { rip, va, why })?;
    if (gpa & 0xfff) + len > 0x1000 {
        return Err(Error::Access {
            rip,
            va,
            why: "operand crosses a page boundary".into(),
        });
    }
    ram.host_ptr(gpa, len).ok_or_else(|| Error::Access {
        rip,
        va,
        why: format!("gpa {gpa:#x} is not RAM"),
    })
}

/// Completes the instruction at RIP after an emulation failure. Returns true for int3
/// (for counting).
pub fn complete(vcpu: &mut VcpuFd, ram: &GuestRam, counters: &Counters) -> Result<()> {
    let mut regs = vcpu.get_regs()?;
    let sregs = vcpu.get_sregs()?;
    let bytes = fetch(vcpu, ram, &regs, &sregs)?;
    let bitness = if sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    };
    let mut dec = Decoder::with_ip(bitness, &bytes, regs.rip, DecoderOptions::NONE);
    let ins = dec.decode();
    let unsupported = |ins: &Instruction| Error::Unsupported {
        rip: regs.rip,
        text: if ins.is_invalid() {
            "(undecodable)".into()
        } else {
            format!("{ins}")
        },
        bytes: bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    if ins.is_invalid() {
        return Err(unsupported(&ins));
    }
    let next = regs.rip.wrapping_add(ins.len() as u64);
    match ins.mnemonic() {
        Mnemonic::Int3 | Mnemonic::Int
            if ins.mnemonic() == Mnemonic::Int3 || ins.immediate8() == 3 =>
        {
            regs.rip = next;
            vcpu.set_regs(&regs)?;
            let mut ev = vcpu.get_vcpu_events()?;
            ev.exception.injected = 1;
            ev.exception.nr = 3;
            ev.exception.has_error_code = 0;
            ev.exception.error_code = 0;
            vcpu.set_vcpu_events(&ev)?;
            counters.int3.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Mnemonic::Popcnt | Mnemonic::Lzcnt | Mnemonic::Tzcnt => {
            let size = ins.op0_register().size() as u64;
            let src = match ins.op1_kind() {
                OpKind::Register => reg_value(&regs, &sregs, ins.op1_register()).unwrap_or(0),
                OpKind::Memory => {
                    let va = mem_addr(&ins, &regs, &sregs, 1).ok_or_else(|| unsupported(&ins))?;
                    let p = guest_ptr(ram, &sregs, regs.rip, va, size)?;
                    let mut b = [0u8; 8];
                    // SAFETY: p points at `size` (<= 8) bytes of mapped guest RAM, checked by guest_ptr.
                    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), size as usize) };
                    u64::from_le_bytes(b)
                }
                _ => return Err(unsupported(&ins)),
            };
            let bits = size as u32 * 8;
            let masked = if bits == 64 {
                src
            } else {
                src & ((1u64 << bits) - 1)
            };
            let (res, cf) = match ins.mnemonic() {
                Mnemonic::Popcnt => (masked.count_ones() as u64, false),
                Mnemonic::Lzcnt => {
                    let lz = if masked == 0 {
                        bits
                    } else {
                        masked.leading_zeros() - (64 - bits)
                    };
                    (lz as u64, masked == 0)
                }
                _ => {
                    let tz = if masked == 0 {
                        bits
                    } else {
                        masked.trailing_zeros()
                    };
                    (tz as u64, masked == 0)
                }
            };
            set_reg(&mut regs, ins.op0_register(), res);
            // OF SF AF PF cleared; ZF per result (popcnt: src==0; lzcnt/tzcnt: res==0); CF.
            let zf = if ins.mnemonic() == Mnemonic::Popcnt {
                masked == 0
            } else {
                res == 0
            };
            regs.rflags &= !(0x8d5u64);
            if zf {
                regs.rflags |= 1 << 6;
            }
            if cf {
                regs.rflags |= 1;
            }
        }
        Mnemonic::Clac => regs.rflags &= !(1 << 18),
        Mnemonic::Stac => regs.rflags |= 1 << 18,
        Mnemonic::Wait
        | Mnemonic::Emms
        | Mnemonic::Lfence
        | Mnemonic::Mfence
        | Mnemonic::Sfence
        | Mnemonic::Pause => {}
        Mnemonic::Fnclex | Mnemonic::Fninit => {
            let mut fpu = vcpu.get_fpu()?;
            if ins.mnemonic() == Mnemonic::Fnclex {
                fpu.fsw &= !0x80ff;
            } else {
                fpu.fcw = 0x37f;
                fpu.fsw = 0;
                fpu.ftwx = 0;
                fpu.last_opcode = 0;
                fpu.last_ip = 0;
                fpu.last_dp = 0;
            }
            vcpu.set_fpu(&fpu)?;
        }
        Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr | Mnemonic::Stmxcsr | Mnemonic::Vstmxcsr => {
            let va = mem_addr(&ins, &regs, &sregs, 0).ok_or_else(|| unsupported(&ins))?;
            let p = guest_ptr(ram, &sregs, regs.rip, va, 4)?;
            let mut fpu = vcpu.get_fpu()?;
            if matches!(ins.mnemonic(), Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr) {
                // SAFETY: p points at 4 bytes of mapped guest RAM (guest_ptr checked it).
                fpu.mxcsr = unsafe { std::ptr::read_unaligned(p as *const u32) };
                vcpu.set_fpu(&fpu)?;
            } else {
                // SAFETY: as above, for writing.
                unsafe { std::ptr::write_unaligned(p as *mut u32, fpu.mxcsr) };
            }
        }
        Mnemonic::Cmpxchg16b if ins.code() == Code::Cmpxchg16b_m128 => {
            let va = mem_addr(&ins, &regs, &sregs, 0).ok_or_else(|| unsupported(&ins))?;
            let p = guest_ptr(ram, &sregs, regs.rip, va, 16)?;
            if p as usize % 16 != 0 {
                return Err(Error::Access {
                    rip: regs.rip,
                    va,
                    why: "cmpxchg16b operand not 16-byte aligned (#GP)".into(),
                });
            }
            let (ok, lo, hi) = cmpxchg16b(p, regs.rax, regs.rdx, regs.rbx, regs.rcx);
            if ok {
                regs.rflags |= 1 << 6;
            } else {
                regs.rflags &= !(1 << 6);
                regs.rax = lo;
                regs.rdx = hi;
            }
        }
        _ => return Err(unsupported(&ins)),
    }
    regs.rip = next;
    vcpu.set_regs(&regs)?;
    counters.other.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// An atomic 16-byte compare-and-exchange on host memory, as the guest asked for.
fn cmpxchg16b(p: *mut u8, rax: u64, rdx: u64, rbx: u64, rcx: u64) -> (bool, u64, u64) {
    let (mut lo, mut hi) = (rax, rdx);
    let ok: u8;
    // SAFETY: `p` is a 16-byte aligned pointer into mapped guest RAM (checked by the
    // caller); cmpxchg16b is available on every x86-64 host KVM runs on. rbx is reserved by
    // LLVM, so it is swapped through a scratch register.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "lock cmpxchg16b [{p}]",
            "sete {ok}",
            "xchg {b}, rbx",
            p = in(reg) p,
            b = inout(reg) rbx => _,
            ok = out(reg_byte) ok,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") rcx,
        );
    }
    (ok != 0, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cmpxchg16b_semantics() {
        #[repr(align(16))]
        struct A([u64; 2]);
        let mut a = A([1, 2]);
        let p = a.0.as_mut_ptr() as *mut u8;
        let (ok, _, _) = cmpxchg16b(p, 1, 2, 3, 4);
        assert!(ok);
        assert_eq!(a.0, [3, 4]);
        let (ok, lo, hi) = cmpxchg16b(p, 1, 2, 5, 6);
        assert!(!ok);
        assert_eq!((lo, hi), (3, 4));
    }

    #[test]
    fn register_widths() {
        let mut r = kvm_regs {
            rax: u64::MAX,
            ..Default::default()
        };
        set_reg(&mut r, Register::EAX, 5);
        assert_eq!(r.rax, 5);
        r.rbx = 0xffff;
        set_reg(&mut r, Register::BX, 0x1234);
        assert_eq!(r.rbx, 0x1234);
        let s = kvm_sregs::default();
        r.rcx = 0xabcd;
        assert_eq!(reg_value(&r, &s, Register::CH), Some(0xab));
    }
}
