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

pub mod fake;

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

/// What a guest access does, for the permission checks of [`translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// A guest exception to inject instead of completing the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// #PF with its error code; CR2 = `va`.
    Page {
        /// Faulting linear address.
        va: u64,
        /// Error code (P, W/R, U/S, RSVD, I/D bits).
        code: u32,
    },
    /// #GP(0).
    General,
}

/// Why a translation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranslateError {
    /// The architecture raises this fault.
    Fault(Fault),
    /// The VMM cannot tell (32-bit paging, a table outside RAM).
    Vmm(String),
}

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Translates a guest virtual address to guest-physical with the vCPU's paging state
/// (paging off, 4- and 5-level paging with 4K/2M/1G leaves), checking what the MMU checks
/// for `access` at the current privilege level: present, R/W (with CR0.WP for supervisor
/// writes), U/S, SMAP (CR4.SMAP unless RFLAGS.AC), SMEP and NX for fetches. A violation is
/// the #PF the CPU would raise, with its error code.
pub fn translate(
    mem: &dyn GuestMem,
    sregs: &kvm_sregs,
    rflags: u64,
    va: u64,
    access: Access,
) -> std::result::Result<u64, TranslateError> {
    if sregs.cr0 & CR0_PG == 0 {
        return Ok(va & 0xffff_ffff);
    }
    if sregs.efer & EFER_LMA == 0 {
        return Err(TranslateError::Vmm(
            "32-bit paging is not supported by the VMM's emulation path".into(),
        ));
    }
    let user = sregs.cs.selector & 3 == 3;
    let nxe = sregs.efer & EFER_NXE != 0;
    let fetch_bit = access == Access::Fetch && (nxe || sregs.cr4 & CR4_SMEP != 0);
    let code = |present: bool| {
        u32::from(present)
            | u32::from(access == Access::Write) << 1
            | u32::from(user) << 2
            | u32::from(fetch_bit) << 4
    };
    let fault = |present: bool| {
        TranslateError::Fault(Fault::Page {
            va,
            code: code(present),
        })
    };
    let levels = if sregs.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    let (mut rw, mut us, mut nx) = (true, true, false);
    let mut table = sregs.cr3 & PTE_ADDR;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let at = table | (((va >> shift) & 0x1ff) * 8);
        let mut b = [0u8; 8];
        if !mem.read(at, &mut b) {
            return Err(TranslateError::Vmm(format!(
                "page table entry at {at:#x} is not RAM"
            )));
        }
        let e = u64::from_le_bytes(b);
        if e & 1 == 0 {
            return Err(fault(false));
        }
        rw &= e & 2 != 0;
        us &= e & 4 != 0;
        nx |= nxe && e & (1 << 63) != 0;
        let addr = e & PTE_ADDR;
        if level == 1 || (level <= 3 && e & 0x80 != 0) {
            let mask = (1u64 << shift) - 1;
            let denied = match access {
                _ if user && !us => true,
                Access::Write if !rw && (user || sregs.cr0 & CR0_WP != 0) => true,
                Access::Fetch => nx || (!user && us && sregs.cr4 & CR4_SMEP != 0),
                Access::Read | Access::Write => {
                    !user && us && sregs.cr4 & CR4_SMAP != 0 && rflags & RFLAGS_AC == 0
                }
            };
            if denied {
                return Err(fault(true));
            }
            return Ok((addr & !mask) | (va & mask));
        }
        table = addr;
    }
    Err(TranslateError::Vmm("walk did not end".into()))
}

/// Guest-physical memory as the emulation path sees it. [`GuestRam`] implements it
/// through vm-memory (writes recorded for the dirty log); tests and fuzzers use
/// [`fake::FakeMem`].
pub trait GuestMem {
    /// Reads `buf.len()` bytes at `gpa`; false if they are not all RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at `gpa` (and marks it dirty); false if not all RAM.
    fn write(&self, gpa: u64, data: &[u8]) -> bool;
    /// Atomic 16-byte compare-and-exchange at 16-byte aligned `gpa`: (swapped, value found).
    fn cmpxchg16b(&self, gpa: u64, old: [u64; 2], new: [u64; 2]) -> Option<(bool, [u64; 2])>;
}

impl GuestMem for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.contains(gpa, buf.len() as u64)
            && self.memory().read_slice(buf, GuestAddress(gpa)).is_ok()
    }
    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        self.write_for_guest(gpa, data)
    }
    fn cmpxchg16b(&self, gpa: u64, old: [u64; 2], new: [u64; 2]) -> Option<(bool, [u64; 2])> {
        GuestRam::cmpxchg16b(self, gpa, old, new)
    }
}

/// The vCPU state the emulation path reads and changes. [`KvmCpu`] implements it on a
/// KVM vCPU; tests and fuzzers use [`fake::FakeCpu`].
pub trait CpuState {
    /// General registers.
    fn regs(&mut self) -> Result<kvm_regs>;
    /// Writes the general registers.
    fn set_regs(&mut self, regs: &kvm_regs) -> Result<()>;
    /// Segment and control registers.
    fn sregs(&mut self) -> Result<kvm_sregs>;
    /// The instruction bytes the exit reported, if any.
    fn exit_insn(&mut self) -> Option<Vec<u8>>;
    /// MXCSR and MXCSR_MASK.
    fn mxcsr(&mut self) -> Result<(u32, u32)>;
    /// Writes MXCSR.
    fn set_mxcsr(&mut self, v: u32) -> Result<()>;
    /// `fnclex` (false) or `fninit` (true) on the x87 state.
    fn x87_reset(&mut self, init: bool) -> Result<()>;
    /// Injects #BP (vector 3) or a fault.
    fn inject(&mut self, vector: u8, error_code: Option<u32>, cr2: Option<u64>) -> Result<()>;
}

/// A KVM vCPU after an emulation-failure exit.
#[derive(Debug)]
pub struct KvmCpu<'a>(pub &'a mut VcpuFd);

/// Default MXCSR_MASK when the FXSAVE image reports 0 (SDM vol. 1, 11.6.6).
const MXCSR_MASK_DEFAULT: u32 = 0xffbf;

impl CpuState for KvmCpu<'_> {
    fn regs(&mut self) -> Result<kvm_regs> {
        Ok(self.0.get_regs()?)
    }
    fn set_regs(&mut self, regs: &kvm_regs) -> Result<()> {
        Ok(self.0.set_regs(regs)?)
    }
    fn sregs(&mut self) -> Result<kvm_sregs> {
        Ok(self.0.get_sregs()?)
    }
    fn exit_insn(&mut self) -> Option<Vec<u8>> {
        let run = self.0.get_kvm_run();
        // SAFETY: reading the emulation_failure member of the kvm_run union after an
        // KVM_EXIT_INTERNAL_ERROR exit, which is the member KVM filled in; all fields are
        // plain integers, so any bit pattern is valid.
        let (flags, size, bytes) = unsafe {
            let ef = run.__bindgen_anon_1.emulation_failure;
            let ib = ef.__bindgen_anon_1.__bindgen_anon_1;
            (ef.flags, ib.insn_size as usize, ib.insn_bytes)
        };
        (flags & 1 != 0 && size > 0 && size <= 15).then(|| bytes[..size].to_vec())
    }
    /// KVM_GET_FPU, or where it reports MXCSR 0 (kvm_pvm), the FXSAVE image in KVM_GET_XSAVE
    /// (MXCSR at byte 24, MXCSR_MASK at 28).
    fn mxcsr(&mut self) -> Result<(u32, u32)> {
        let xs = self.0.get_xsave()?;
        let (m, mask) = (xs.region[6], xs.region[7]);
        let mask = if mask == 0 { MXCSR_MASK_DEFAULT } else { mask };
        let fpu = self.0.get_fpu()?;
        Ok((if fpu.mxcsr != 0 { fpu.mxcsr } else { m }, mask))
    }
    fn set_mxcsr(&mut self, v: u32) -> Result<()> {
        let mut fpu = self.0.get_fpu()?;
        fpu.mxcsr = v;
        self.0.set_fpu(&fpu)?;
        let mut xs = self.0.get_xsave()?;
        if xs.region[6] != v {
            xs.region[6] = v;
            // SAFETY: `xs` is the kvm_xsave KVM_GET_XSAVE just returned for this vCPU
            // (legacy 4 KiB size, no extra FAM entries), changed only in the MXCSR word.
            unsafe { self.0.set_xsave(&xs)? };
        }
        Ok(())
    }
    fn x87_reset(&mut self, init: bool) -> Result<()> {
        let mut fpu = self.0.get_fpu()?;
        if init {
            fpu.fcw = 0x37f;
            fpu.fsw = 0;
            fpu.ftwx = 0;
            fpu.last_opcode = 0;
            fpu.last_ip = 0;
            fpu.last_dp = 0;
        } else {
            fpu.fsw &= !0x80ff;
        }
        Ok(self.0.set_fpu(&fpu)?)
    }
    fn inject(&mut self, vector: u8, error_code: Option<u32>, cr2: Option<u64>) -> Result<()> {
        if let Some(cr2) = cr2 {
            let mut s = self.0.get_sregs()?;
            s.cr2 = cr2;
            self.0.set_sregs(&s)?;
        }
        let mut ev = self.0.get_vcpu_events()?;
        ev.exception.injected = 1;
        ev.exception.nr = vector;
        ev.exception.has_error_code = u8::from(error_code.is_some());
        ev.exception.error_code = error_code.unwrap_or(0);
        Ok(self.0.set_vcpu_events(&ev)?)
    }
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

/// What went wrong while performing an access: a guest fault to inject, or a VMM error.
enum Stop {
    Fault(Fault),
    Err(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Err(e)
    }
}

impl From<kvm_ioctls::Error> for Stop {
    fn from(e: kvm_ioctls::Error) -> Self {
        Stop::Err(Error::Kvm(e))
    }
}

/// The state one completion works on.
struct Ctx<'a> {
    mem: &'a dyn GuestMem,
    sregs: kvm_sregs,
    rip: u64,
    rflags: u64,
}

impl Ctx<'_> {
    fn gpa(&self, va: u64, access: Access) -> std::result::Result<u64, Stop> {
        translate(self.mem, &self.sregs, self.rflags, va, access).map_err(|e| match e {
            TranslateError::Fault(f) => Stop::Fault(f),
            TranslateError::Vmm(why) => Stop::Err(Error::Access {
                rip: self.rip,
                va,
                why,
            }),
        })
    }

    /// Reads or writes guest-virtual `[va, va + buf.len())`, page by page; every page is
    /// translated (and permission-checked) before any byte moves.
    fn access(&self, va: u64, buf: &mut [u8], access: Access) -> std::result::Result<(), Stop> {
        let mut parts = Vec::with_capacity(2);
        let mut off = 0usize;
        while off < buf.len() {
            let v = va.wrapping_add(off as u64);
            let n = (0x1000 - (v & 0xfff) as usize).min(buf.len() - off);
            parts.push((self.gpa(v, access)?, off, n));
            off += n;
        }
        for (gpa, off, n) in parts {
            let chunk = &mut buf[off..off + n];
            let ok = match access {
                Access::Write => self.mem.write(gpa, chunk),
                _ => self.mem.read(gpa, chunk),
            };
            if !ok {
                return Err(Stop::Err(Error::Access {
                    rip: self.rip,
                    va,
                    why: format!("gpa {gpa:#x} is not RAM"),
                }));
            }
        }
        Ok(())
    }
}

/// The instruction at RIP: from the exit's instruction bytes when KVM gave them, else
/// fetched from guest memory (up to 15 bytes, stopping at an unfetchable page).
fn fetch(cpu: &mut dyn CpuState, ctx: &Ctx) -> std::result::Result<Vec<u8>, Stop> {
    if let Some(b) = cpu.exit_insn() {
        return Ok(b);
    }
    let va = ctx.sregs.cs.base.wrapping_add(ctx.rip);
    let mut buf = vec![0u8; 15];
    let first = (0x1000 - (va & 0xfff)).min(15) as usize;
    ctx.access(va, &mut buf[..first], Access::Fetch)?;
    if first < 15
        && ctx
            .access(
                va.wrapping_add(first as u64),
                &mut buf[first..],
                Access::Fetch,
            )
            .is_err()
    {
        buf.truncate(first);
    }
    Ok(buf)
}

fn mem_addr(ins: &Instruction, regs: &kvm_regs, sregs: &kvm_sregs, op: u32) -> Option<u64> {
    ins.virtual_address(op, 0, |r, _, _| reg_value(regs, sregs, r))
}

/// Completes the instruction at RIP after an emulation failure on a KVM vCPU.
pub fn complete(vcpu: &mut VcpuFd, ram: &GuestRam, counters: &Counters) -> Result<()> {
    complete_on(&mut KvmCpu(vcpu), ram, counters)
}

/// Completes the instruction at RIP on `cpu` with guest memory `mem`: performs it and
/// moves RIP past it, or injects the fault the CPU would raise (#PF, #GP) with RIP left at
/// it; `int3` injects #BP with RIP past it.
pub fn complete_on(cpu: &mut dyn CpuState, mem: &dyn GuestMem, counters: &Counters) -> Result<()> {
    let mut regs = cpu.regs()?;
    let ctx = Ctx {
        mem,
        sregs: cpu.sregs()?,
        rip: regs.rip,
        rflags: regs.rflags,
    };
    match perform(cpu, &ctx, &mut regs, counters) {
        Ok(()) => Ok(()),
        Err(Stop::Fault(Fault::Page { va, code })) => cpu.inject(14, Some(code), Some(va)),
        Err(Stop::Fault(Fault::General)) => cpu.inject(13, Some(0), None),
        Err(Stop::Err(e)) => Err(e),
    }
}

fn perform(
    cpu: &mut dyn CpuState,
    ctx: &Ctx,
    regs: &mut kvm_regs,
    counters: &Counters,
) -> std::result::Result<(), Stop> {
    let sregs = ctx.sregs;
    let bytes = fetch(cpu, ctx)?;
    let bitness = if sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    };
    let mut dec = Decoder::with_ip(bitness, &bytes, regs.rip, DecoderOptions::NONE);
    let ins = dec.decode();
    let unsupported = |ins: &Instruction| {
        Stop::Err(Error::Unsupported {
            rip: ctx.rip,
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
        })
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
            cpu.set_regs(regs)?;
            cpu.inject(3, None, None)?;
            counters.int3.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Mnemonic::Popcnt | Mnemonic::Lzcnt | Mnemonic::Tzcnt => {
            perform_bit_count(ctx, regs, &ins, &unsupported)?
        }
        Mnemonic::Clac => regs.rflags &= !RFLAGS_AC,
        Mnemonic::Stac => regs.rflags |= RFLAGS_AC,
        Mnemonic::Wait
        | Mnemonic::Emms
        | Mnemonic::Lfence
        | Mnemonic::Mfence
        | Mnemonic::Sfence
        | Mnemonic::Pause => {}
        Mnemonic::Fnclex | Mnemonic::Fninit => cpu.x87_reset(ins.mnemonic() == Mnemonic::Fninit)?,
        Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr => {
            let va = mem_addr(&ins, regs, &sregs, 0).ok_or_else(|| unsupported(&ins))?;
            perform_ldmxcsr(cpu, ctx, va)?;
        }
        Mnemonic::Stmxcsr | Mnemonic::Vstmxcsr => {
            let va = mem_addr(&ins, regs, &sregs, 0).ok_or_else(|| unsupported(&ins))?;
            let (v, _) = cpu.mxcsr()?;
            ctx.access(va, &mut v.to_le_bytes(), Access::Write)?;
        }
        Mnemonic::Cmpxchg16b if ins.code() == Code::Cmpxchg16b_m128 => {
            let va = mem_addr(&ins, regs, &sregs, 0).ok_or_else(|| unsupported(&ins))?;
            perform_cmpxchg16b(ctx, regs, va)?;
        }
        _ => return Err(unsupported(&ins)),
    }
    regs.rip = next;
    cpu.set_regs(regs)?;
    counters.other.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// popcnt/lzcnt/tzcnt with a register or memory source.
fn perform_bit_count(
    ctx: &Ctx,
    regs: &mut kvm_regs,
    ins: &Instruction,
    unsupported: &dyn Fn(&Instruction) -> Stop,
) -> std::result::Result<(), Stop> {
    let sregs = ctx.sregs;
    let size = ins.op0_register().size();
    let src = match ins.op1_kind() {
        OpKind::Register => reg_value(regs, &sregs, ins.op1_register()).unwrap_or(0),
        OpKind::Memory => {
            let va = mem_addr(ins, regs, &sregs, 1).ok_or_else(|| unsupported(ins))?;
            let mut b = [0u8; 8];
            ctx.access(va, &mut b[..size.min(8)], Access::Read)?;
            u64::from_le_bytes(b)
        }
        _ => return Err(unsupported(ins)),
    };
    bit_count(
        regs,
        ins.mnemonic(),
        ins.op0_register(),
        src,
        size as u32 * 8,
    );
    Ok(())
}

/// ldmxcsr from `va`: reserved bits set raise #GP(0).
fn perform_ldmxcsr(cpu: &mut dyn CpuState, ctx: &Ctx, va: u64) -> std::result::Result<(), Stop> {
    let mut b = [0u8; 4];
    ctx.access(va, &mut b, Access::Read)?;
    let v = u32::from_le_bytes(b);
    let (_, mask) = cpu.mxcsr()?;
    if v & !mask != 0 {
        return Err(Stop::Fault(Fault::General)); // reserved bits set: #GP(0)
    }
    cpu.set_mxcsr(v)?;
    Ok(())
}

/// cmpxchg16b on the 16 bytes at `va` (a write access even when the compare fails).
fn perform_cmpxchg16b(ctx: &Ctx, regs: &mut kvm_regs, va: u64) -> std::result::Result<(), Stop> {
    if va % 16 != 0 {
        return Err(Stop::Fault(Fault::General)); // misaligned m128: #GP(0)
    }
    // Always a write access (the CPU writes back the old value on failure).
    let gpa = ctx.gpa(va, Access::Write)?;
    let (ok, found) = ctx
        .mem
        .cmpxchg16b(gpa, [regs.rax, regs.rdx], [regs.rbx, regs.rcx])
        .ok_or_else(|| {
            Stop::Err(Error::Access {
                rip: ctx.rip,
                va,
                why: format!("gpa {gpa:#x} is not RAM"),
            })
        })?;
    if ok {
        regs.rflags |= 1 << 6;
    } else {
        regs.rflags &= !(1 << 6);
        regs.rax = found[0];
        regs.rdx = found[1];
    }
    Ok(())
}

/// popcnt/lzcnt/tzcnt of the low `bits` of `src` into `dst`, with their flags.
fn bit_count(regs: &mut kvm_regs, m: Mnemonic, dst: Register, src: u64, bits: u32) {
    let masked = if bits >= 64 {
        src
    } else {
        src & ((1u64 << bits) - 1)
    };
    let (res, cf) = match m {
        Mnemonic::Popcnt => (u64::from(masked.count_ones()), false),
        Mnemonic::Lzcnt if masked == 0 => (u64::from(bits), true),
        Mnemonic::Lzcnt => (
            u64::from(masked.leading_zeros() - (64 - bits.min(64))),
            false,
        ),
        _ if masked == 0 => (u64::from(bits), true),
        _ => (u64::from(masked.trailing_zeros()), false),
    };
    set_reg(regs, dst, res);
    // OF SF AF PF cleared; ZF per result (popcnt: src==0; lzcnt/tzcnt: res==0); CF.
    let zf = if m == Mnemonic::Popcnt {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    mod fidelity {
        use super::super::fake::{FakeCpu, FakeMem, Injected};
        use super::super::*;

        const P: u64 = 1;
        const W: u64 = 2;
        const U: u64 = 4;
        const NX: u64 = 1 << 63;
        const STMXCSR_RAX: &[u8] = &[0x0f, 0xae, 0x18];
        const LDMXCSR_RAX: &[u8] = &[0x0f, 0xae, 0x10];

        /// Tables at 0x1000..0x4000; 0x5000 RW supervisor, 0x6000 read-only supervisor,
        /// 0x7000 RW user NX, 0x8000 not present, 0x9000 RW user.
        fn setup() -> FakeMem {
            let m = FakeMem::new(0x10000);
            m.put_u64(0x1000, 0x2000 | P | W | U);
            m.put_u64(0x2000, 0x3000 | P | W | U);
            m.put_u64(0x3000, 0x4000 | P | W | U);
            m.put_u64(0x4000 + 5 * 8, 0x5000 | P | W);
            m.put_u64(0x4000 + 6 * 8, 0x6000 | P);
            m.put_u64(0x4000 + 7 * 8, 0x7000 | P | W | U | NX);
            m.put_u64(0x4000 + 9 * 8, 0x9000 | P | W | U);
            m
        }

        fn run(cpu: &mut FakeCpu, m: &FakeMem, insn: &[u8], rax: u64) {
            cpu.insn = Some(insn.to_vec());
            cpu.regs.rip = 0x5000;
            cpu.regs.rax = rax;
            complete_on(cpu, m, &Counters::default()).unwrap();
        }

        fn pf(va: u64, code: u32) -> Vec<Injected> {
            vec![Injected {
                vector: 14,
                error_code: Some(code),
                cr2: Some(va),
            }]
        }

        #[test]
        fn stmxcsr_to_a_read_only_page_faults_and_writes_nothing() {
            let m = setup();
            let mut cpu = FakeCpu::long_mode(0x1000);
            run(&mut cpu, &m, STMXCSR_RAX, 0x6010);
            assert_eq!(cpu.injected, pf(0x6010, 0b11));
            assert_eq!(
                cpu.regs.rip, 0x5000,
                "a fault leaves RIP at the instruction"
            );
            assert_eq!(m.get_u64(0x6010), 0);
            assert!(m.dirty.borrow().is_empty());
            // CR0.WP clear: a supervisor write to a read-only page succeeds.
            cpu.sregs.cr0 &= !CR0_WP;
            cpu.injected.clear();
            run(&mut cpu, &m, STMXCSR_RAX, 0x6010);
            assert!(cpu.injected.is_empty());
            assert_eq!(m.get_u64(0x6010), 0x1f80);
        }

        #[test]
        fn emulated_writes_are_dirty_and_advance_rip() {
            let m = setup();
            let mut cpu = FakeCpu::long_mode(0x1000);
            run(&mut cpu, &m, STMXCSR_RAX, 0x5ffe); // crosses into 0x6000: read-only
            assert_eq!(cpu.injected, pf(0x6000, 0b11));
            assert_eq!(m.get_u64(0x5ff8), 0, "no byte written before the fault");
            cpu.injected.clear();
            run(&mut cpu, &m, STMXCSR_RAX, 0x5008);
            assert!(cpu.injected.is_empty());
            assert_eq!(m.get_u64(0x5008) as u32, 0x1f80);
            assert_eq!(*m.dirty.borrow(), vec![5]);
            assert_eq!(cpu.regs.rip, 0x5003);
        }

        #[test]
        fn smap_blocks_supervisor_data_access_to_user_pages_unless_ac() {
            let m = setup();
            let mut cpu = FakeCpu::long_mode(0x1000);
            cpu.sregs.cr4 |= CR4_SMAP;
            run(&mut cpu, &m, STMXCSR_RAX, 0x9000);
            assert_eq!(cpu.injected, pf(0x9000, 0b11));
            cpu.injected.clear();
            cpu.regs.rflags |= RFLAGS_AC;
            run(&mut cpu, &m, STMXCSR_RAX, 0x9000);
            assert!(cpu.injected.is_empty());
            assert_eq!(m.get_u64(0x9000) as u32, 0x1f80);
        }

        #[test]
        fn user_mode_cannot_touch_supervisor_pages() {
            let m = setup();
            let mut cpu = FakeCpu::long_mode(0x1000);
            cpu.sregs.cs.selector = 0x33;
            // popcnt rax, [rbx]
            cpu.regs.rbx = 0x5000;
            run(&mut cpu, &m, &[0xf3, 0x48, 0x0f, 0xb8, 0x03], 0);
            assert_eq!(cpu.injected, pf(0x5000, 0b101));
            cpu.injected.clear();
            cpu.regs.rbx = 0x8000; // not present
            run(&mut cpu, &m, &[0xf3, 0x48, 0x0f, 0xb8, 0x03], 0);
            assert_eq!(cpu.injected, pf(0x8000, 0b100));
        }

        #[test]
        fn fetch_from_an_nx_page_faults_with_the_id_bit() {
            let m = setup();
            let mut cpu = FakeCpu::long_mode(0x1000);
            cpu.insn = None;
            cpu.regs.rip = 0x7000;
            complete_on(&mut cpu, &m, &Counters::default()).unwrap();
            assert_eq!(cpu.injected, pf(0x7000, 0b1_0001));
        }

        #[test]
        fn ldmxcsr_reserved_bits_raise_gp() {
            let m = setup();
            m.put_u64(0x5100, 0x1_0000 | 0x1f80);
            let mut cpu = FakeCpu::long_mode(0x1000);
            run(&mut cpu, &m, LDMXCSR_RAX, 0x5100);
            assert_eq!(cpu.injected[0].vector, 13);
            assert_eq!(cpu.mxcsr, 0x1f80);
            cpu.injected.clear();
            m.put_u64(0x5100, 0x1fc0); // DAZ (bit 6) is outside the default mask 0xffbf
            run(&mut cpu, &m, LDMXCSR_RAX, 0x5100);
            assert_eq!(cpu.injected[0].vector, 13);
            cpu.injected.clear();
            m.put_u64(0x5100, 0x1f00);
            run(&mut cpu, &m, LDMXCSR_RAX, 0x5100);
            assert!(cpu.injected.is_empty());
            assert_eq!(cpu.mxcsr, 0x1f00);
        }

        #[test]
        fn cmpxchg16b_checks_alignment_and_write_permission() {
            let m = setup();
            let mut cpu = FakeCpu::long_mode(0x1000);
            let lock_cmpxchg16b_rax = &[0xf0, 0x48, 0x0f, 0xc7, 0x08];
            run(&mut cpu, &m, lock_cmpxchg16b_rax, 0x5008);
            assert_eq!(cpu.injected[0].vector, 13);
            cpu.injected.clear();
            run(&mut cpu, &m, lock_cmpxchg16b_rax, 0x6000);
            assert_eq!(cpu.injected, pf(0x6000, 0b11));
            cpu.injected.clear();
            (cpu.regs.rbx, cpu.regs.rcx) = (7, 8);
            m.put_u64(0x5010, 0x5010); // rdx:rax = 0:0x5010 (rax is also the address)
            run(&mut cpu, &m, lock_cmpxchg16b_rax, 0x5010);
            assert!(cpu.injected.is_empty());
            assert_eq!((m.get_u64(0x5010), m.get_u64(0x5018)), (7, 8));
            assert_eq!(*m.dirty.borrow(), vec![5]);
        }
    }
}
