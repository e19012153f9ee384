//! Guest-physical addresses of the boot structures (the same low-memory map as Firecracker
//! and Cloud Hypervisor use, so kernels see nothing unusual).

/// Global descriptor table.
pub const GDT: u64 = 0x500;
/// Interrupt descriptor table (empty at entry).
pub const IDT: u64 = 0x520;
/// PVH start_info, followed by its memory map.
pub const PVH_INFO: u64 = 0x6000;
/// Linux zero page (struct boot_params).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables: PML4, then one PDPT, then four page directories (4 GiB of 2 MiB pages).
pub const PML4: u64 = 0x9000;
/// PDPT.
pub const PDPT: u64 = 0xa000;
/// First page directory.
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Most bytes of command line.
pub const CMDLINE_MAX: usize = 0x10000;
/// MP table (inside the EBDA area, excluded from the e820 RAM).
pub const MPTABLE: u64 = 0x9fc00;
/// ACPI tables, RSDP first (BIOS area: inside the e820 reserved range, where Linux scans
/// for the RSDP when the zero page does not give it).
pub const ACPI_TABLES: u64 = 0xe_0000;
/// End of the first RAM entry of the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel goes (1 MiB, the boot protocol's default).
pub const HIMEM: u64 = 0x10_0000;
/// Lowest RAM size we can boot anything in.
pub const MIN_MEMORY: u64 = 2 << 20;
