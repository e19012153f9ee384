//! A fake vCPU and guest memory for the emulation path: unit tests and fuzzers drive
//! [`super::complete_on`] with these instead of a KVM vCPU.

use std::cell::RefCell;

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::{CpuState, GuestMem, Result};

/// A guest exception the fake vCPU was asked to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// Vector (3 #BP, 13 #GP, 14 #PF).
    pub vector: u8,
    /// Error code, if the exception has one.
    pub error_code: Option<u32>,
    /// CR2 written with it (#PF).
    pub cr2: Option<u64>,
}

/// Registers, MXCSR and injected exceptions, in memory.
#[derive(Debug, Clone, Default)]
pub struct FakeCpu {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Instruction bytes the "exit" reports (None: fetched from memory).
    pub insn: Option<Vec<u8>>,
    /// MXCSR.
    pub mxcsr: u32,
    /// MXCSR_MASK.
    pub mxcsr_mask: u32,
    /// x87 resets (`fninit` = true, `fnclex` = false).
    pub x87: Vec<bool>,
    /// Exceptions injected.
    pub injected: Vec<Injected>,
}

impl FakeCpu {
    /// A 64-bit ring-0 vCPU with paging on (CR3 = `cr3`), EFER.LMA|NXE, CR0.WP.
    pub fn long_mode(cr3: u64) -> Self {
        let mut c = FakeCpu {
            mxcsr: 0x1f80,
            mxcsr_mask: 0xffbf,
            ..Default::default()
        };
        c.sregs.cr0 = (1 << 31) | (1 << 16) | 1;
        c.sregs.cr3 = cr3;
        c.sregs.cr4 = 1 << 5;
        c.sregs.efer = (1 << 8) | (1 << 10) | (1 << 11);
        c.sregs.cs.l = 1;
        c.regs.rflags = 2;
        c
    }
}

impl CpuState for FakeCpu {
    fn regs(&mut self) -> Result<kvm_regs> {
        Ok(self.regs)
    }
    fn set_regs(&mut self, regs: &kvm_regs) -> Result<()> {
        self.regs = *regs;
        Ok(())
    }
    fn sregs(&mut self) -> Result<kvm_sregs> {
        Ok(self.sregs)
    }
    fn exit_insn(&mut self) -> Option<Vec<u8>> {
        self.insn.clone()
    }
    fn mxcsr(&mut self) -> Result<(u32, u32)> {
        Ok((self.mxcsr, self.mxcsr_mask))
    }
    fn set_mxcsr(&mut self, v: u32) -> Result<()> {
        self.mxcsr = v;
        Ok(())
    }
    fn x87_reset(&mut self, init: bool) -> Result<()> {
        self.x87.push(init);
        Ok(())
    }
    fn inject(&mut self, vector: u8, error_code: Option<u32>, cr2: Option<u64>) -> Result<()> {
        self.injected.push(Injected {
            vector,
            error_code,
            cr2,
        });
        Ok(())
    }
}

/// Guest RAM `[0, len)` in a vector, with the pages written recorded.
#[derive(Debug, Default)]
pub struct FakeMem {
    /// The bytes.
    pub bytes: RefCell<Vec<u8>>,
    /// Frame numbers written, in order.
    pub dirty: RefCell<Vec<u64>>,
}

impl FakeMem {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        FakeMem {
            bytes: RefCell::new(vec![0; len]),
            dirty: RefCell::default(),
        }
    }

    /// Stores a little-endian u64 (test set-up; not recorded as dirty).
    pub fn put_u64(&self, gpa: u64, v: u64) {
        let g = gpa as usize;
        self.bytes.borrow_mut()[g..g + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Loads a little-endian u64.
    pub fn get_u64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    fn range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.borrow().len()).then_some(start..end)
    }
}

impl GuestMem for FakeMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.range(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.bytes.borrow()[r]);
                true
            }
            None => false,
        }
    }
    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        match self.range(gpa, data.len()) {
            Some(r) => {
                self.bytes.borrow_mut()[r].copy_from_slice(data);
                self.dirty.borrow_mut().push(gpa >> 12);
                true
            }
            None => false,
        }
    }
    fn cmpxchg16b(&self, gpa: u64, old: [u64; 2], new: [u64; 2]) -> Option<(bool, [u64; 2])> {
        if gpa % 16 != 0 {
            return None;
        }
        self.range(gpa, 16)?;
        let found = [self.get_u64(gpa), self.get_u64(gpa + 8)];
        let ok = found == old;
        let v = if ok { new } else { found };
        self.put_u64(gpa, v[0]);
        self.put_u64(gpa + 8, v[1]);
        self.dirty.borrow_mut().push(gpa >> 12);
        Some((ok, found))
    }
}
