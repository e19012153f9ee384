//! The measurement guest's fixed address map and its protocol with the VMM, shared by the
//! guest (which hard-codes these addresses) and the VMM (which builds the page tables that
//! make them true and reads the results back). One definition, so they cannot drift.
//!
//! Low guest-physical memory is identity-mapped (virtual = physical); the workload buffer
//! and the signal MMIO page live at high virtual addresses chosen so that 2 MiB and 1 GiB
//! mappings line up.

/// GDT (8 entries) and, right after it, the 64-bit TSS.
pub const GDT_VA: u64 = 0x1000;
/// The 64-bit TSS (holds RSP0, the ring-0 stack for exceptions from ring 3).
pub const TSS_VA: u64 = 0x1080;
/// IDT: 256 16-byte gates.
pub const IDT_VA: u64 = 0x2000;
/// Parameters written by the VMM, read-only for the guest (`PARAM_*` word indices).
pub const PARAMS_VA: u64 = 0x3000;
/// Results written by the guest and by its ring-0 stub (`RES_*` word indices).
pub const RESULTS_VA: u64 = 0x4000;
/// Ring-0 stack: [KSTACK_BOTTOM, KSTACK_TOP), supervisor-only.
pub const KSTACK_BOTTOM: u64 = 0x5000;
/// Top of the ring-0 stack (TSS.RSP0).
pub const KSTACK_TOP: u64 = 0x8000;
/// User stack: [USTACK_BOTTOM, USTACK_TOP).
pub const USTACK_BOTTOM: u64 = 0x1_0000;
/// Top of the user stack (initial RSP).
pub const USTACK_TOP: u64 = 0x5_0000;
/// Where the guest image is linked (code, data, bss), and its first bytes: the exception
/// vector stubs, [`VECTOR_STUB_BYTES`] each, for vectors 0..[`VECTORS`].
pub const IMAGE_BASE: u64 = 0x40_0000;
/// The image must end below this address.
pub const IMAGE_LIMIT: u64 = 0x60_0000;
/// First guest-physical byte of the page tables the VMM builds.
pub const PAGE_TABLES_GPA: u64 = 0x60_0000;
/// Bytes per exception vector stub at [`IMAGE_BASE`].
pub const VECTOR_STUB_BYTES: u64 = 16;
/// Exception vectors with stubs (the architectural ones).
pub const VECTORS: u64 = 32;
/// The signal MMIO page, user-writable, uncached.
pub const MMIO_VA: u64 = 0x30_0000_0000;
/// The workload buffer (1 GiB aligned so 2 MiB and 1 GiB guest pages fit).
pub const DATA_VA: u64 = 0x40_0000_0000;

/// MMIO offset: the timed part starts now (value: workload code).
pub const MMIO_START: u64 = 0x00;
/// MMIO offset: the timed part ended.
pub const MMIO_STOP: u64 = 0x08;
/// MMIO offset: results are in the results page; the VM may end.
pub const MMIO_RESULT: u64 = 0x10;
/// MMIO offset: the workload's data is allocated and touched; a ptsnap of the page
/// tables and memory may be taken now (the VM goes on afterwards).
pub const MMIO_PTSNAP: u64 = 0x18;
/// MMIO offset: the ring-0 stub caught an exception (details in `RES_FAULT_*`).
pub const MMIO_FAULT: u64 = 0x20;

/// Value of `PARAM_MAGIC` ("SEGPROBE").
pub const PARAMS_MAGIC: u64 = u64::from_le_bytes(*b"SEGPROBE");
/// Value of `RES_MAGIC` ("PROBERES").
pub const RESULTS_MAGIC: u64 = u64::from_le_bytes(*b"PROBERES");
/// `rax` of a ptchurn request (`ud2` from ring 3); any other `rax` makes #UD a fault.
/// (small enough to be an `imm32` for the stub's `cmp rax, imm32`: the stub runs emulated, so
/// every instruction saved counts).
pub const PTCHURN_MAGIC: u64 = 0x5054_4348;

/// Params word: [`PARAMS_MAGIC`].
pub const PARAM_MAGIC: usize = 0;
/// Params word: workload code.
pub const PARAM_WORKLOAD: usize = 1;
/// Params word: virtual address of the workload buffer.
pub const PARAM_DATA_VA: usize = 2;
/// Params word: bytes in the buffer.
pub const PARAM_DATA_BYTES: usize = 3;
/// Params word: seed.
pub const PARAM_SEED: usize = 4;
/// Params word: operations asked for (meaning per workload).
pub const PARAM_COUNT: usize = 5;
/// Params word: guest page size of the buffer's mappings.
pub const PARAM_PAGE_BYTES: usize = 6;
/// Params word: virtual address (supervisor-only) of the leaf page-table entry of the
/// buffer's first page; the entries of its pages follow at 8-byte steps (ptchurn).
pub const PARAM_ENTRIES_VA: usize = 7;

/// Results word: [`RESULTS_MAGIC`].
pub const RES_MAGIC: usize = 0;
/// Results word: workload code.
pub const RES_WORKLOAD: usize = 1;
/// Results word: status (`STATUS_*`).
pub const RES_STATUS: usize = 2;
/// Results word: operations performed in the timed part.
pub const RES_OPS: usize = 3;
/// Results word: TSC at the start of the timed part.
pub const RES_TSC_START: usize = 4;
/// Results word: TSC at its end.
pub const RES_TSC_END: usize = 5;
/// Results word: the workload's checksum.
pub const RES_CHECKSUM: usize = 6;
/// Results word: TSC ticks spent in set-up (init, first touch) before the timed part.
pub const RES_INIT_TSC: usize = 7;
/// Results word: exception vector caught by the ring-0 stub.
pub const RES_FAULT_VECTOR: usize = 16;
/// Results word: its error code (0 when it has none).
pub const RES_FAULT_ERROR: usize = 17;
/// Results word: faulting RIP.
pub const RES_FAULT_RIP: usize = 18;
/// Results word: CR2.
pub const RES_FAULT_CR2: usize = 19;
/// Results word: CS at the fault.
pub const RES_FAULT_CS: usize = 20;
/// Results word: RSP at the fault.
pub const RES_FAULT_RSP: usize = 21;

/// Status: the run completed.
pub const STATUS_OK: u64 = 0;
/// Status: the params page did not carry [`PARAMS_MAGIC`].
pub const STATUS_BAD_PARAMS: u64 = 1;
/// Status: unknown workload code.
pub const STATUS_BAD_WORKLOAD: u64 = 2;
/// Status: ptchurn could not map a page.
pub const STATUS_MAP_FAILED: u64 = 3;
/// Status: the buffer is too small for the workload.
pub const STATUS_TOO_SMALL: u64 = 4;

/// A human-readable name for a status word.
pub const fn status_text(status: u64) -> &'static str {
    match status {
        STATUS_OK => "ok",
        STATUS_BAD_PARAMS => "bad params page",
        STATUS_BAD_WORKLOAD => "unknown workload code",
        STATUS_MAP_FAILED => "ptchurn: map request failed",
        STATUS_TOO_SMALL => "buffer too small for the workload",
        _ => "unknown status",
    }
}
