//! The measurement guest: a freestanding image that starts directly in 64-bit ring 3 on
//! page tables the VMM built, runs one workload from `workloads::kernels` over the buffer
//! the VMM mapped, times it with the TSC, and hands the result back through the results
//! page and the signal MMIO page (`workloads::protocol`).
//!
//! Why ring 3: on kvm_pvm hosts guest ring-0 code is emulated (~1 µs per instruction),
//! while ring-3 code runs natively and its TLB misses are walked in hardware over KVM's
//! shadow tables. So everything measured runs in ring 3; the ring-0 stub below only
//! reports exceptions and serves ptchurn's page-table edits, in as few instructions as
//! possible (each one is emulated).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::ptr::{read_volatile, write_volatile};

use workloads::kernels::{self, PageChurn, Workload};
use workloads::protocol::*;

// Exception vector stubs, VECTOR_STUB_BYTES apart from IMAGE_BASE (link.ld puts this
// section first). Vectors without a CPU-pushed error code push a zero so that the common
// handler sees one frame layout. #UD (6) goes to the ptchurn request handler.
global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 16
    .global probe_vectors
probe_vectors:
    .balign 16
    push 0
    push 0
    jmp probe_fault
    .balign 16
    push 0
    push 1
    jmp probe_fault
    .balign 16
    push 0
    push 2
    jmp probe_fault
    .balign 16
    push 0
    push 3
    jmp probe_fault
    .balign 16
    push 0
    push 4
    jmp probe_fault
    .balign 16
    push 0
    push 5
    jmp probe_fault
    .balign 16
    jmp probe_ud
    .balign 16
    push 0
    push 7
    jmp probe_fault
    .balign 16
    push 8
    jmp probe_fault
    .balign 16
    push 0
    push 9
    jmp probe_fault
    .balign 16
    push 10
    jmp probe_fault
    .balign 16
    push 11
    jmp probe_fault
    .balign 16
    push 12
    jmp probe_fault
    .balign 16
    push 13
    jmp probe_fault
    .balign 16
    push 14
    jmp probe_fault
    .balign 16
    push 0
    push 15
    jmp probe_fault
    .balign 16
    push 0
    push 16
    jmp probe_fault
    .balign 16
    push 17
    jmp probe_fault
    .balign 16
    push 0
    push 18
    jmp probe_fault
    .balign 16
    push 0
    push 19
    jmp probe_fault
    .balign 16
    push 0
    push 20
    jmp probe_fault
    .balign 16
    push 21
    jmp probe_fault
    .balign 16
    push 0
    push 22
    jmp probe_fault
    .balign 16
    push 0
    push 23
    jmp probe_fault
    .balign 16
    push 0
    push 24
    jmp probe_fault
    .balign 16
    push 0
    push 25
    jmp probe_fault
    .balign 16
    push 0
    push 26
    jmp probe_fault
    .balign 16
    push 0
    push 27
    jmp probe_fault
    .balign 16
    push 0
    push 28
    jmp probe_fault
    .balign 16
    push 29
    jmp probe_fault
    .balign 16
    push 30
    jmp probe_fault
    .balign 16
    push 0
    push 31
    jmp probe_fault

    // #UD: a ptchurn request from ring 3 (`ud2` with rax = PTCHURN_MAGIC, rdi = the
    // supervisor address of the leaf entry, rsi = 1 map / 0 unmap, rdx = the page's
    // virtual address), else a real fault. Map sets the entry's present bit; unmap clears
    // it and flushes the page's TLB entry. Then RIP moves past the 2-byte ud2.
    .balign 16
probe_ud:
    cmp rax, {magic}
    jne 3f
    test rsi, rsi
    jz 2f
    or qword ptr [rdi], 1
    add qword ptr [rsp], 2
    iretq
2:
    and qword ptr [rdi], -2
    invlpg [rdx]
    add qword ptr [rsp], 2
    iretq
3:
    push 0
    push 6
    jmp probe_fault

    // Every other exception: record vector, error code, RIP, CR2, CS and RSP in the
    // results page, tell the VMM, and stop (the VMM ends the VM on MMIO_FAULT).
probe_fault:
    mov rax, [rsp]
    mov [{fvec}], rax
    mov rax, [rsp + 8]
    mov [{ferr}], rax
    mov rax, [rsp + 16]
    mov [{frip}], rax
    mov rax, cr2
    mov [{fcr2}], rax
    mov rax, [rsp + 24]
    mov [{fcs}], rax
    mov rax, [rsp + 40]
    mov [{frsp}], rax
    movabs rax, {mmio_fault}
    mov qword ptr [rax], 1
4:
    hlt
    jmp 4b

    // Ring-3 entry: the VMM starts here with RSP at the top of the user stack.
    .section .text.start, "ax"
    .global _start
_start:
    and rsp, -16
    call probe_main
    ud2
"#,
    magic = const PTCHURN_MAGIC,
    fvec = const RESULTS_VA + 8 * RES_FAULT_VECTOR as u64,
    ferr = const RESULTS_VA + 8 * RES_FAULT_ERROR as u64,
    frip = const RESULTS_VA + 8 * RES_FAULT_RIP as u64,
    fcr2 = const RESULTS_VA + 8 * RES_FAULT_CR2 as u64,
    fcs = const RESULTS_VA + 8 * RES_FAULT_CS as u64,
    frsp = const RESULTS_VA + 8 * RES_FAULT_RSP as u64,
    mmio_fault = const MMIO_VA + MMIO_FAULT,
);

/// Word `i` of the params page.
fn param(i: usize) -> u64 {
    // SAFETY: the VMM maps the params page user-readable at PARAMS_VA; `i` is one of the
    // PARAM_* indices, all inside the page.
    unsafe { read_volatile((PARAMS_VA as *const u64).add(i)) }
}

/// Sets word `i` of the results page.
fn result(i: usize, v: u64) {
    // SAFETY: the VMM maps the results page user-writable at RESULTS_VA; `i` is one of the
    // RES_* indices, all inside the page.
    unsafe { write_volatile((RESULTS_VA as *mut u64).add(i), v) }
}

/// Writes `v` at `offset` of the signal MMIO page: one exit to the VMM.
fn signal(offset: u64, v: u64) {
    // SAFETY: the VMM maps the signal MMIO page user-writable at MMIO_VA; writes there
    // exit to the VMM and touch no memory.
    unsafe { write_volatile((MMIO_VA + offset) as *mut u64, v) }
}

/// The TSC, ordered after earlier instructions.
fn tsc() -> u64 {
    // SAFETY: lfence and rdtsc have no memory effects; rdtsc is allowed in ring 3 (CR4.TSD
    // is clear).
    unsafe {
        core::arch::x86_64::_mm_lfence();
        core::arch::x86_64::_rdtsc()
    }
}

/// Reports `status` (and whatever results are set) and waits for the VMM to end the VM.
fn finish(status: u64) -> ! {
    result(RES_STATUS, status);
    result(RES_MAGIC, RESULTS_MAGIC);
    signal(MMIO_RESULT, status);
    loop {
        core::hint::spin_loop();
    }
}

/// ptchurn in the guest: each map and unmap is a request to the ring-0 stub, which edits
/// the buffer's leaf page-table entry (prepared by the VMM with the present bit clear).
struct GuestChurn {
    entries_va: u64,
    data_va: u64,
    page_bytes: u64,
    slots: usize,
}

impl GuestChurn {
    fn request(&self, slot: usize, map: u64) {
        let entry = self.entries_va + 8 * slot as u64;
        let va = self.data_va + self.page_bytes * slot as u64;
        // SAFETY: `ud2` traps to the stub's #UD handler, which recognizes the magic in rax,
        // sets or clears the present bit of the entry at rdi, flushes rdx on unmap, and
        // resumes after the ud2 without touching any other register. Memory changes
        // (the mapping), so no `nomem`.
        unsafe {
            asm!("ud2", in("rax") PTCHURN_MAGIC, in("rdi") entry, in("rsi") map, in("rdx") va, options(nostack));
        }
    }
}

impl PageChurn for GuestChurn {
    fn slots(&self) -> usize {
        self.slots
    }
    fn map(&mut self, slot: usize) -> bool {
        self.request(slot, 1);
        true
    }
    fn touch(&mut self, slot: usize, value: u64) -> u64 {
        let p = (self.data_va + self.page_bytes * slot as u64) as *mut u64;
        // SAFETY: the slot was just mapped user-writable by `map`.
        unsafe {
            write_volatile(p, value);
            read_volatile(p)
        }
    }
    fn unmap(&mut self, slot: usize) {
        self.request(slot, 0);
    }
}

/// The workload, between the START and STOP signals.
#[no_mangle]
extern "C" fn probe_main() -> ! {
    let t_begin = tsc();
    if param(PARAM_MAGIC) != PARAMS_MAGIC {
        finish(STATUS_BAD_PARAMS);
    }
    let Some(w) = Workload::from_code(param(PARAM_WORKLOAD)) else {
        finish(STATUS_BAD_WORKLOAD);
    };
    result(RES_WORKLOAD, w.code());
    let (data_va, bytes, seed, count) = (param(PARAM_DATA_VA), param(PARAM_DATA_BYTES), param(PARAM_SEED), param(PARAM_COUNT));
    let words = (bytes / 8) as usize;
    let buffer = || {
        // SAFETY: the VMM mapped [data_va, data_va + bytes) user-writable (for every
        // workload but ptchurn, which never calls this) and nothing else aliases it.
        unsafe { core::slice::from_raw_parts_mut(data_va as *mut u64, words) }
    };
    let (t0, t1, ops, checksum);
    match w {
        Workload::Chase => {
            let buf = buffer();
            if kernels::chase_elems(words) == 0 {
                finish(STATUS_TOO_SMALL);
            }
            kernels::chase_init(buf, seed);
            signal(MMIO_PTSNAP, w.code());
            signal(MMIO_START, w.code());
            t0 = tsc();
            checksum = kernels::chase_run(buf, count);
            t1 = tsc();
            ops = count;
        }
        Workload::Gups => {
            let buf = buffer();
            if words == 0 {
                finish(STATUS_TOO_SMALL);
            }
            kernels::gups_init(buf);
            signal(MMIO_PTSNAP, w.code());
            signal(MMIO_START, w.code());
            t0 = tsc();
            checksum = kernels::gups_run(buf, seed, count);
            t1 = tsc();
            ops = count;
        }
        Workload::Stream => {
            let buf = buffer();
            let n = kernels::stream_elems(words) as u64;
            if n == 0 {
                finish(STATUS_TOO_SMALL);
            }
            kernels::stream_init(buf);
            let passes = count.div_ceil(n).max(1);
            signal(MMIO_PTSNAP, w.code());
            signal(MMIO_START, w.code());
            t0 = tsc();
            ops = kernels::stream_run(buf, passes);
            t1 = tsc();
            checksum = kernels::stream_checksum(buf);
        }
        Workload::Touch => {
            // The first `count` pages (the VMM's default count is every page); untouched
            // pages stay mapped but cost the host nothing.
            let buf = kernels::touch_prefix(buffer(), count);
            signal(MMIO_START, w.code());
            t0 = tsc();
            ops = kernels::touch_run(buf);
            t1 = tsc();
            signal(MMIO_STOP, w.code());
            signal(MMIO_PTSNAP, w.code());
            checksum = kernels::touch_checksum(buf);
            result(RES_INIT_TSC, 0);
            result(RES_OPS, ops);
            result(RES_TSC_START, t0);
            result(RES_TSC_END, t1);
            result(RES_CHECKSUM, checksum);
            finish(STATUS_OK);
        }
        Workload::PtChurn => {
            let page_bytes = param(PARAM_PAGE_BYTES).max(1);
            let mut churn = GuestChurn { entries_va: param(PARAM_ENTRIES_VA), data_va, page_bytes, slots: (bytes / page_bytes) as usize };
            signal(MMIO_START, w.code());
            t0 = tsc();
            let (done, sum) = kernels::ptchurn_run(&mut churn, count);
            t1 = tsc();
            ops = done;
            checksum = sum;
        }
    }
    signal(MMIO_STOP, w.code());
    result(RES_INIT_TSC, t0.wrapping_sub(t_begin));
    result(RES_OPS, ops);
    result(RES_TSC_START, t0);
    result(RES_TSC_END, t1);
    result(RES_CHECKSUM, checksum);
    finish(STATUS_OK)
}

/// A panic (a bounds check the workload should never fail) is reported as vector 255.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    result(RES_FAULT_VECTOR, 255);
    signal(MMIO_FAULT, 255);
    loop {
        core::hint::spin_loop();
    }
}

// memcpy, memmove, memset, memcmp and bcmp come from `workloads` (feature `rt`).
