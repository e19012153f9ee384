//! Loading a kernel and preparing the state it expects at its first instruction:
//! bzImage and ELF vmlinux through linux-loader, the zero page with the e820 map, the PVH
//! start_info when the ELF has a PVH note, the MP table and the ACPI tables, and for
//! 64-bit entry a GDT and identity page tables. The x86 structures themselves (GDT, page
//! tables, MP and ACPI tables, registers) are built in [`crate::arch::x86_64`].

pub mod bzimage;
pub mod cache;

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use crate::arch::x86_64::acpi::VirtioMmio;
pub use crate::arch::x86_64::layout;
pub use crate::arch::x86_64::regs::Entry;
use crate::arch::x86_64::{acpi, gdt, mptable, paging};
use crate::memory::GuestRam;
use layout::*;

/// Errors while loading a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel file could not be read.
    #[error("kernel {path}: {source}")]
    KernelFile {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither ELF nor bzImage.
    #[error("kernel {0}: not a Linux kernel (neither an ELF image nor a bzImage with the 'HdrS' boot header)")]
    NotAKernel(PathBuf),
    /// linux-loader refused it (truncated, bad header).
    #[error("kernel {path}: {what} (truncated or corrupt image?)")]
    Load {
        /// Path.
        path: PathBuf,
        /// linux-loader's words.
        what: String,
    },
    /// The initrd could not be read.
    #[error("initrd {path}: {source}")]
    InitrdFile {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel (ends at {kernel_end:#x}); give the guest more --memory")]
    InitrdTooLarge {
        /// Path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Highest address it could end at.
        limit: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// A file is larger than it may be (checked from its metadata, before reading it).
    #[error("{what} {path} is {size} bytes, more than the {cap}-byte cap ({why})")]
    FileTooLarge {
        /// "kernel" or "initrd".
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
        /// Where the cap comes from.
        why: &'static str,
    },
    /// The image's entry point or extent lies outside guest memory (or wraps).
    #[error("kernel {path}: {what} {addr:#x} is outside guest memory ({ram} bytes)")]
    OutsideRam {
        /// Path.
        path: PathBuf,
        /// "entry point" or "end".
        what: &'static str,
        /// The address from the file.
        addr: u64,
        /// Guest memory size.
        ram: u64,
    },
    /// Command line too long.
    #[error("kernel command line is {0} bytes; at most {max} fit", max = CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    /// Guest memory too small for the boot structures.
    #[error("guest memory of {0} bytes is too small to boot (need at least {MIN_MEMORY})")]
    TooSmall(u64),
    /// The ACPI tables could not describe this machine.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// The MP table could not describe this machine.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// Writing guest memory failed.
    #[error("writing boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

type Result<T> = std::result::Result<T, Error>;

/// What kind of image was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// A bzImage.
    BzImage,
    /// An ELF vmlinux (or other ELF guest).
    Elf,
}

/// The result of loading.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where to start.
    pub entry: Entry,
    /// Image format.
    pub kind: ImageKind,
    /// End of the kernel in guest memory.
    pub kernel_end: u64,
    /// Whether a host-decompressed vmlinux came from the cache ([`cache`]).
    pub vmlinux_cache: cache::Outcome,
}

/// Writes the boot GDT ([`gdt::BOOT_GDT`]) and identity page tables mapping the first
/// 4 GiB with 2 MiB pages, as the 64-bit boot protocol requires (Linux maps itself before
/// touching anything else).
pub fn write_long_mode_tables(mem: &GuestMemoryMmap) -> Result<()> {
    gdt::write_boot_gdt(mem)?;
    paging::write_identity_tables(mem)?;
    Ok(())
}

/// The e820 map: low RAM up to the EBDA, RAM from 1 MiB to the end of the first RAM range,
/// and RAM above 4 GiB.
pub fn e820_map(ram: &GuestRam) -> Vec<(u64, u64, u32)> {
    const RAM: u32 = 1;
    const RESERVED: u32 = 2;
    let mut v = vec![
        (0, EBDA_START, RAM),
        (EBDA_START, 0x10_0000 - EBDA_START, RESERVED),
    ];
    for r in ram.ranges() {
        if r.gpa == 0 {
            v.push((HIMEM, r.len - HIMEM, RAM));
        } else {
            v.push((r.gpa, r.len, RAM));
        }
    }
    v
}

/// Most bytes a kernel image may have: a bzImage or vmlinux larger than guest memory
/// cannot be loaded, and 512 MiB is far above any real kernel.
pub const MAX_KERNEL_FILE: u64 = 512 << 20;

/// Checks that `path` is a readable, non-empty file of at most `cap` bytes (from its
/// metadata, before anything is read).
fn open_kernel(path: &Path, cap: u64) -> Result<()> {
    let f = File::open(path).map_err(|source| Error::KernelFile {
        path: path.into(),
        source,
    })?;
    match f.metadata() {
        Ok(m) if m.len() > cap => Err(Error::FileTooLarge {
            what: "kernel",
            path: path.into(),
            size: m.len(),
            cap,
            why: "the smaller of guest memory and 512 MiB",
        }),
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(Error::NotAKernel(path.into())),
    }
}

/// Reads the initrd at `path` if its size (from metadata, before reading) fits between
/// `kernel_end` and `limit`.
fn read_initrd(path: &Path, limit: u64, kernel_end: u64) -> Result<Vec<u8>> {
    let io = |source| Error::InitrdFile {
        path: path.into(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let cap = limit.saturating_sub(kernel_end);
    if size > cap {
        return Err(Error::InitrdTooLarge {
            path: path.into(),
            size,
            limit,
            kernel_end,
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, cap), &mut data).map_err(io)?;
    Ok(data)
}

/// How to treat a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BzImageMode {
    /// Decompress on the host where guest ring-0 code is emulated (kvm_pvm), else as is.
    Auto,
    /// Load it as it is: the kernel's own decompressor runs in the guest.
    #[default]
    AsIs,
    /// Decompress its payload on the host and boot the vmlinux inside (see [`bzimage`]).
    HostDecompress,
}

impl segment_mmu::named::Named for BzImageMode {
    const ALL: &'static [Self] = &[Self::Auto, Self::AsIs, Self::HostDecompress];
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::AsIs => "as-is",
            Self::HostDecompress => "host-decompress",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Auto => "decompress on the host where guest ring 0 is emulated (kvm_pvm)",
            Self::AsIs => "the kernel's own decompressor runs in the guest",
            Self::HostDecompress => "decompress on the host and boot the vmlinux inside",
        }
    }
}

impl BzImageMode {
    /// Resolves `Auto` for a host.
    pub fn resolve(self, kvm_module: &str) -> Self {
        match self {
            BzImageMode::Auto if kvm_module == "kvm_pvm" => BzImageMode::HostDecompress,
            BzImageMode::Auto => BzImageMode::AsIs,
            m => m,
        }
    }
}

/// What the boot tables (MP table, ACPI) describe besides memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Platform {
    /// vCPUs.
    pub cpus: u8,
    /// The virtio-mmio windows, in slot order (listed in the DSDT).
    pub virtio: Vec<VirtioMmio>,
}

impl Platform {
    /// `cpus` vCPUs and no virtio devices.
    pub fn cpus(cpus: u8) -> Self {
        Platform {
            cpus,
            virtio: Vec::new(),
        }
    }
}

/// Loads a kernel image (bzImage or ELF; ELF with a PVH note boots through PVH), an
/// optional initrd and the command line, and writes the boot structures.
pub fn load_kernel(
    ram: &GuestRam,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    platform: &Platform,
    mode: BzImageMode,
) -> Result<Loaded> {
    open_kernel(kernel, ram.size().min(MAX_KERNEL_FILE))?;
    let image = std::fs::read(kernel).map_err(|source| Error::KernelFile {
        path: kernel.into(),
        source,
    })?;
    load_image(ram, kernel, &image, initrd, cmdline, platform, mode)
}

/// A kernel image placed in guest memory by linux-loader.
struct Placed {
    /// linux-loader's result (load address, end, setup header, PVH note).
    res: KernelLoaderResult,
    /// Image format.
    kind: ImageKind,
    /// The ELF entry of a vmlinux taken out of a bzImage.
    vmlinux_entry: Option<u64>,
    /// What the vmlinux cache did.
    cache: cache::Outcome,
}

impl Placed {
    /// End of the kernel in guest memory.
    fn end(&self) -> u64 {
        // linux-loader's kernel_end is absolute (the highest segment end, p_paddr + p_memsz).
        self.res.kernel_end
    }
}

/// As [`load_kernel`], from the image's bytes; `kernel` names it in errors.
pub fn load_image(
    ram: &GuestRam,
    kernel: &Path,
    image: &[u8],
    initrd: Option<&Path>,
    cmdline: &str,
    platform: &Platform,
    mode: BzImageMode,
) -> Result<Loaded> {
    let mem = ram.memory();
    let low_end = check_fits(ram, cmdline)?;
    let placed = place_image(mem, kernel, image, mode, ram.size())?;
    let kernel_end = placed.end();
    let outside = |what: &'static str, addr: u64| Error::OutsideRam {
        path: kernel.into(),
        what,
        addr,
        ram: ram.size(),
    };
    if kernel_end > low_end {
        return Err(outside("end", kernel_end));
    }
    let rsdp = write_boot_tables(mem, cmdline, platform)?;
    let initrd_at = match initrd {
        Some(p) => Some(load_initrd(
            mem,
            p,
            placed.res.setup_header,
            low_end,
            kernel_end,
        )?),
        None => None,
    };
    let e820 = e820_map(ram);
    let kind = placed.kind;
    if let (ImageKind::Elf, PvhBootCapability::PvhEntryPresent(entry)) =
        (kind, placed.res.pvh_boot_cap)
    {
        if entry.0 >= low_end {
            return Err(outside("PVH entry point", entry.0));
        }
        write_pvh_info(mem, &e820, initrd_at, cmdline.is_empty(), rsdp)?;
        let entry = Entry::Pvh { rip: entry.0 };
        return Ok(Loaded {
            entry,
            kind,
            kernel_end,
            vmlinux_cache: placed.cache,
        });
    }
    let params = zero_page(placed.res.setup_header, cmdline, initrd_at, rsdp, &e820);
    mem.write_obj(params, GuestAddress(ZERO_PAGE))?;
    let rip = match (kind, placed.vmlinux_entry) {
        // A vmlinux taken out of the bzImage: its ELF entry is startup_64's physical address.
        (_, Some(entry)) => entry,
        // startup_64 sits 0x200 bytes into the protected-mode kernel.
        (ImageKind::BzImage, None) => placed.res.kernel_load.0.saturating_add(0x200),
        (ImageKind::Elf, None) => elf_entry(image).unwrap_or(placed.res.kernel_load.0),
    };
    if rip >= low_end {
        return Err(outside("entry point", rip));
    }
    Ok(Loaded {
        entry: Entry::Linux64 { rip },
        kind,
        kernel_end,
        vmlinux_cache: placed.cache,
    })
}

/// Checks that guest memory and the command line are big enough / small enough; returns
/// the end of the first RAM range.
fn check_fits(ram: &GuestRam, cmdline: &str) -> Result<u64> {
    let low_end = ram.ranges().first().map(|r| r.len).unwrap_or(0);
    if low_end < MIN_MEMORY.max(HIMEM * 2) {
        return Err(Error::TooSmall(ram.size()));
    }
    if cmdline.len() >= CMDLINE_MAX {
        return Err(Error::CmdlineTooLong(cmdline.len()));
    }
    Ok(low_end)
}

/// Places an ELF, a bzImage, or the vmlinux inside a bzImage at [`HIMEM`]; a vmlinux
/// may not decompress to more than `ram_size` bytes.
fn place_image(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    image: &[u8],
    mode: BzImageMode,
    ram_size: u64,
) -> Result<Placed> {
    let load_err = |e: linux_loader::loader::Error| Error::Load {
        path: kernel.into(),
        what: e.to_string(),
    };
    let is_elf = image.len() >= 4 && image[..4] == *b"\x7fELF";
    let is_bz = image.len() >= 0x208 && &image[0x202..0x206] == b"HdrS";
    let at = Some(GuestAddress(HIMEM));
    if is_elf {
        let res = Elf::load(mem, None, &mut Cursor::new(image), at).map_err(load_err)?;
        Ok(Placed {
            res,
            kind: ImageKind::Elf,
            vmlinux_entry: None,
            cache: cache::Outcome::Off,
        })
    } else if is_bz && mode == BzImageMode::HostDecompress {
        place_bzimage_payload(mem, kernel, image, ram_size)
    } else if is_bz {
        let res = BzImage::load(mem, None, &mut Cursor::new(image), at).map_err(load_err)?;
        Ok(Placed {
            res,
            kind: ImageKind::BzImage,
            vmlinux_entry: None,
            cache: cache::Outcome::Off,
        })
    } else {
        Err(Error::NotAKernel(kernel.into()))
    }
}

/// Decompresses a bzImage's payload on the host and places the vmlinux inside, keeping
/// the bzImage's own setup header (boot protocol version, initrd limit...).
fn place_bzimage_payload(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    image: &[u8],
    ram_size: u64,
) -> Result<Placed> {
    let load_err = |what: String| Error::Load {
        path: kernel.into(),
        what,
    };
    let (vmlinux, outcome) = cache::extract(cache::dir().as_deref(), image, ram_size)
        .map_err(|e| load_err(e.to_string()))?;
    let mut res = Elf::load(
        mem,
        None,
        &mut Cursor::new(&vmlinux[..]),
        Some(GuestAddress(HIMEM)),
    )
    .map_err(|e| load_err(e.to_string()))?;
    let mut hdr = setup_header::default();
    let n = std::mem::size_of_val(&hdr).min(image.len() - 0x1f1);
    vm_memory::ByteValued::as_mut_slice(&mut hdr)[..n].copy_from_slice(&image[0x1f1..0x1f1 + n]);
    res.setup_header = Some(hdr);
    let entry = elf_entry(&vmlinux)
        .ok_or_else(|| load_err("vmlinux inside the bzImage is not a 64-bit ELF".into()))?;
    res.pvh_boot_cap = PvhBootCapability::PvhEntryNotPresent;
    Ok(Placed {
        res,
        kind: ImageKind::BzImage,
        vmlinux_entry: Some(entry),
        cache: outcome,
    })
}

/// Writes the command line, the MP table, the ACPI tables, the boot GDT and the identity
/// page tables; returns the RSDP's address.
fn write_boot_tables(mem: &GuestMemoryMmap, cmdline: &str, platform: &Platform) -> Result<u64> {
    let cpus = platform.cpus;
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE + cmdline.len() as u64))?;
    mem.write_slice(&mptable::build(usize::from(cpus))?, GuestAddress(MPTABLE))?;
    // Both: kernels without an MP-table parser (the stock Debian one) find their CPUs only
    // in the ACPI MADT; kernels without ACPI (the small one) only in the MP table.
    let acpi = acpi::build(usize::from(cpus), &platform.virtio)?;
    mem.write_slice(&acpi.bytes, GuestAddress(acpi.base))?;
    write_long_mode_tables(mem)?;
    Ok(acpi.rsdp_addr())
}

/// Reads the initrd at `path` and places it as high as it may go, below the kernel's
/// limit (`initrd_addr_max`) and the end of low RAM, above the kernel; returns (address,
/// size).
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    hdr: Option<setup_header>,
    low_end: u64,
    kernel_end: u64,
) -> Result<(u64, u64)> {
    let max = hdr
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(0x37ff_ffff);
    let limit = low_end.min(max + 1);
    let data = read_initrd(path, limit, kernel_end)?;
    let size = data.len() as u64;
    match limit.checked_sub(size).map(|a| a & !0xfff) {
        Some(a) if a >= kernel_end => {
            mem.write_slice(&data, GuestAddress(a))?;
            Ok((a, size))
        }
        _ => Err(Error::InitrdTooLarge {
            path: path.into(),
            size,
            limit,
            kernel_end,
        }),
    }
}

/// The zero page (`struct boot_params`): the kernel's setup header (or a minimal one for
/// an ELF without), the command line, the initrd, the RSDP and the e820 map.
fn zero_page(
    hdr: Option<setup_header>,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
    e820: &[(u64, u64, u32)],
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(h) = hdr {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448; // "HdrS"
        params.hdr.kernel_alignment = 0x100_0000;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    if let Some((a, s)) = initrd {
        params.hdr.ramdisk_image = a as u32;
        params.hdr.ramdisk_size = s as u32;
    }
    // Boot protocol 2.14+: no RSDP scan needed (older kernels scan 0xE0000-0xFFFFF and
    // find it there).
    params.acpi_rsdp_addr = rsdp;
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params
}

/// e_entry of a 64-bit ELF header.
fn elf_entry(head: &[u8]) -> Option<u64> {
    let e = head.get(24..32)?;
    (head.get(4) == Some(&2)).then(|| u64::from_le_bytes(e.try_into().unwrap_or_default()))
}

/// Writes the PVH `hvm_start_info` (version 1), its memory map and module list.
fn write_pvh_info(
    mem: &GuestMemoryMmap,
    e820: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
    no_cmdline: bool,
    rsdp: u64,
) -> Result<()> {
    const MAGIC: u32 = 0x336e_c578;
    let memmap = PVH_INFO + 0x40;
    let modlist = memmap + 24 * e820.len() as u64;
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&(initrd.is_some() as u32).to_le_bytes());
    info.extend_from_slice(&(if initrd.is_some() { modlist } else { 0 }).to_le_bytes());
    info.extend_from_slice(&(if no_cmdline { 0 } else { CMDLINE }).to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&memmap.to_le_bytes());
    info.extend_from_slice(&(e820.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    mem.write_slice(&info, GuestAddress(PVH_INFO))?;
    let mut mm = Vec::new();
    for (addr, size, t) in e820 {
        mm.extend_from_slice(&addr.to_le_bytes());
        mm.extend_from_slice(&size.to_le_bytes());
        mm.extend_from_slice(&t.to_le_bytes());
        mm.extend_from_slice(&0u32.to_le_bytes());
    }
    mem.write_slice(&mm, GuestAddress(memmap))?;
    if let Some((a, s)) = initrd {
        let mut m = Vec::new();
        m.extend_from_slice(&a.to_le_bytes());
        m.extend_from_slice(&s.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        mem.write_slice(&m, GuestAddress(modlist))?;
    }
    Ok(())
}

/// Loads a flat binary at `at` and returns a 64-bit entry at its first byte (for tiny
/// freestanding guests that expect the 64-bit boot state).
pub fn load_flat(ram: &GuestRam, image: &[u8], at: u64) -> Result<Loaded> {
    let mem = ram.memory();
    if !ram.contains(at, image.len() as u64) {
        return Err(Error::TooSmall(ram.size()));
    }
    mem.write_slice(image, GuestAddress(at))?;
    write_long_mode_tables(mem)?;
    Ok(Loaded {
        entry: Entry::Linux64 { rip: at },
        kind: ImageKind::Elf,
        kernel_end: at + image.len() as u64,
        vmlinux_cache: cache::Outcome::Off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, MemoryConfig};

    fn ram(size: u64) -> GuestRam {
        GuestRam::new(&MemoryConfig {
            size,
            backing: Backing::Anon4k,
            grow_pool: false,
            prefault: crate::memory::Prefault::On,
        })
        .unwrap()
    }

    #[test]
    fn pvh_start_info_layout() {
        let r = ram(16 << 20);
        let e820 = e820_map(&r);
        write_pvh_info(
            r.memory(),
            &e820,
            Some((0x80_0000, 0x1000)),
            false,
            ACPI_TABLES,
        )
        .unwrap();
        let m = r.memory();
        let rd = |off: u64| -> u64 { m.read_obj(GuestAddress(PVH_INFO + off)).unwrap() };
        assert_eq!(rd(0) as u32, 0x336e_c578);
        assert_eq!(rd(12) as u32, 1, "nr_modules");
        assert_eq!(rd(24), CMDLINE, "cmdline_paddr at offset 24");
        assert_eq!(rd(32), ACPI_TABLES, "rsdp_paddr at offset 32");
        let memmap = rd(40);
        assert_eq!(
            rd(48) as u32,
            e820.len() as u32,
            "memmap_entries at offset 48"
        );
        let last: u64 = m
            .read_obj(GuestAddress(memmap + 24 * (e820.len() as u64 - 1) + 8))
            .unwrap();
        assert_eq!(last, (16 << 20) - HIMEM, "last RAM entry's size");
        let modlist = rd(16);
        assert_eq!(m.read_obj::<u64>(GuestAddress(modlist)).unwrap(), 0x80_0000);
    }

    #[test]
    fn e820_excludes_ebda_and_hole() {
        let r = ram(8 << 20);
        let e = e820_map(&r);
        assert_eq!(e[0], (0, EBDA_START, 1));
        assert_eq!(e[1].2, 2);
        assert_eq!(e[2], (HIMEM, (8 << 20) - HIMEM, 1));
    }

    #[test]
    fn long_mode_tables_identity_map_4g() {
        let r = ram(8 << 20);
        write_long_mode_tables(r.memory()).unwrap();
        let m = r.memory();
        let pde = |i: u64| -> u64 { m.read_obj(GuestAddress(PD + i * 8)).unwrap() };
        assert_eq!(pde(0), 0x83);
        assert_eq!(pde(2047), (2047 << 21) | 0x83);
        assert_eq!(m.read_obj::<u64>(GuestAddress(PML4)).unwrap(), PDPT | 3);
    }

    #[test]
    fn non_kernels_are_refused() {
        let r = ram(8 << 20);
        let p = Path::new("x");
        let one = Platform::cpus(1);
        assert!(matches!(
            load_image(&r, p, b"hello world", None, "", &one, BzImageMode::AsIs),
            Err(Error::NotAKernel(_))
        ));
        assert!(matches!(
            load_image(&r, p, b"\x7fELF\x02\x01", None, "", &one, BzImageMode::AsIs),
            Err(Error::Load { .. })
        ));
        assert!(matches!(
            load_image(
                &r,
                p,
                &[0u8; 10],
                None,
                &"x".repeat(CMDLINE_MAX),
                &one,
                BzImageMode::AsIs
            ),
            Err(Error::CmdlineTooLong(_))
        ));
    }
}
