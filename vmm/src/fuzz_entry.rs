//! Fuzz-target bodies for the VMM's parsers of untrusted input: the API request parser,
//! the kernel loader (bzImage host decompression, ELF) and the instruction-completion path
//! on a fake vCPU. `fuzz/` (cargo-fuzz) and `tests/fuzz_entry.rs` (stable, generated
//! inputs) both call these. See `segment_mmu::fuzz_entry` for the file readers.

use std::path::Path;
use std::sync::OnceLock;

use crate::boot::{self, BzImageMode};
use crate::memory::{Backing, GuestRam, MemoryConfig, Prefault};
use crate::vstate::emulate::{self, fake::FakeCpu, fake::FakeMem, Counters};

/// Guest memory the loader target loads into (32 MiB, mapped once, not prefaulted).
const LOADER_RAM: u64 = 32 << 20;

/// The API's JSON-lines request parser on one line.
pub fn api_request(data: &[u8]) {
    let _ = crate::api::protocol::parse(data);
}

/// The kernel loader (ELF, bzImage as is and decompressed on the host) on `data` as the
/// image, into a 32 MiB guest.
pub fn loader(data: &[u8]) {
    static RAM: OnceLock<Option<GuestRam>> = OnceLock::new();
    let ram = RAM.get_or_init(|| {
        GuestRam::new(&MemoryConfig {
            size: LOADER_RAM,
            backing: Backing::Anon4k,
            grow_pool: false,
            prefault: Prefault::Off,
        })
        .ok()
    });
    let _ = boot::bzimage::extract_vmlinux(data, LOADER_RAM);
    let Some(ram) = ram else { return };
    let mode = match data.first() {
        Some(b) if b & 1 == 1 => BzImageMode::HostDecompress,
        _ => BzImageMode::AsIs,
    };
    let two = boot::Platform::cpus(2);
    let _ = boot::load_image(
        ram,
        Path::new("fuzz"),
        data,
        None,
        "console=ttyS0",
        &two,
        mode,
    );
}

/// The instruction-completion path on a fake vCPU. `data`: a flags byte (bit 0 CPL 3,
/// 1 CR4.SMAP, 2 RFLAGS.AC, 3 CR4.SMEP, 4 CR0.WP, 5 fetch from memory, 6 LA57, 7 no
/// EFER.NXE), 8 bytes of RIP, 8 of RAX (also RBX..), 15 instruction bytes, then guest
/// memory (page tables rooted at 0x1000; 64 KiB).
pub fn emulate(data: &[u8]) {
    if data.len() < 32 {
        return;
    }
    let f = data[0];
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut cpu = FakeCpu::long_mode(0x1000);
    cpu.sregs.cs.selector = if f & 1 != 0 { 0x33 } else { 0x10 };
    if f & 2 != 0 {
        cpu.sregs.cr4 |= 1 << 21;
    }
    if f & 4 != 0 {
        cpu.regs.rflags |= 1 << 18;
    }
    if f & 8 != 0 {
        cpu.sregs.cr4 |= 1 << 20;
    }
    if f & 16 == 0 {
        cpu.sregs.cr0 &= !(1 << 16);
    }
    if f & 64 != 0 {
        cpu.sregs.cr4 |= 1 << 12;
    }
    if f & 128 != 0 {
        cpu.sregs.efer &= !(1 << 11);
    }
    cpu.regs.rip = word(1);
    let v = word(9);
    (cpu.regs.rax, cpu.regs.rbx, cpu.regs.rcx, cpu.regs.rdx) =
        (v, v.rotate_left(8), v.rotate_left(16), v.rotate_left(24));
    (cpu.regs.rsi, cpu.regs.rdi) = (v & 0xffff, v >> 48);
    cpu.insn = (f & 32 == 0).then(|| data[17..32].to_vec());
    let mem = FakeMem::new(0x10000);
    let image = &data[32..];
    mem.bytes.borrow_mut()[..image.len().min(0x10000)]
        .copy_from_slice(&image[..image.len().min(0x10000)]);
    let _ = emulate::complete_on(&mut cpu, &mem, &Counters::default());
}
