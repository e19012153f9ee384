//! The C memory routines a freestanding image needs (the compiler lowers copies, fills and
//! comparisons to calls of these), shared by the two guests that have no libc: the
//! measurement guest (`guest-kernels/probe`) and the Linux-guest workload `/init`
//! (`guest-kernels/linux-bench`). Only built with the `rt` feature: in a hosted binary
//! these symbols come from libc and must not be defined twice.
//!
//! `rep movsb` / `rep stosb` are used so that the implementations cannot be lowered back
//! into calls of themselves.

use core::arch::asm;
use core::ptr::read_volatile;

/// `memcpy`.
#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees [src, src+n) and [dst, dst+n) are valid and disjoint.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags))
    };
    dst
}

/// `memmove`: forward when the destination is below the source, else backward.
#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: as memcpy; a forward copy is correct when dst is below src.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: the caller guarantees both ranges are valid; copying backward from the
        // last byte is correct for an overlapping destination above the source.
        unsafe {
            asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, options(nostack));
        }
        dst
    }
}

/// `memset`.
#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees [dst, dst+n) is valid.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags))
    };
    dst
}

/// `memcmp`.
#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges hold n bytes.
        let (x, y) = unsafe { (read_volatile(a.add(i)), read_volatile(b.add(i))) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp`.
#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
