//! Segment descriptors: one encoder for GDT entries, the `kvm_segment` that KVM_SET_SREGS
//! needs for a selector (read off the same entry, so the two cannot disagree), the boot
//! GDT every kernel entry uses, and 64-bit TSS descriptors.
//!
//! The descriptor layout (Intel SDM vol. 3, 3.4.5) is packed as Firecracker's
//! `gdt_entry` does: `flags` holds the access byte in bits 0-7 and the G/DB/L/AVL nibble
//! in bits 12-15.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::GDT;

/// Access byte + flags of a 64-bit ring-0 code segment (G, L; P, S, type 0xb).
pub const CODE64_KERNEL: u16 = 0xa09b;
/// A 32-bit flat ring-0 data segment (G, DB; P, S, type 0x3).
pub const DATA_KERNEL: u16 = 0xc093;
/// A 32-bit flat ring-0 code segment (G, DB; P, S, type 0xb).
pub const CODE32_KERNEL: u16 = 0xc09b;
/// A 32-bit flat ring-3 code segment.
pub const CODE32_USER: u16 = 0xc0fb;
/// A flat ring-3 data segment.
pub const DATA_USER: u16 = 0xc0f3;
/// A 64-bit ring-3 code segment.
pub const CODE64_USER: u16 = 0xa0fb;
/// A busy 64-bit TSS (P, type 0xb, S clear).
pub const TSS_BUSY: u16 = 0x008b;

/// Boot GDT selectors: 64-bit code, data, 32-bit code (PVH).
pub const BOOT_CS64: u16 = 0x08;
/// Boot data selector.
pub const BOOT_DS: u16 = 0x10;
/// Boot 32-bit code selector (PVH entry).
pub const BOOT_CS32: u16 = 0x18;

/// The boot GDT: null, 64-bit code, data, 32-bit code (limit 4 GiB, base 0).
pub const BOOT_GDT: [u64; 4] = [
    0,
    entry(CODE64_KERNEL, 0, 0xfffff),
    entry(DATA_KERNEL, 0, 0xfffff),
    entry(CODE32_KERNEL, 0, 0xfffff),
];

/// Encodes a code/data (or the low half of a system) descriptor.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// A 16-byte 64-bit TSS descriptor (low, high) with `base` and byte `limit`, busy (TR is
/// loaded with it by KVM_SET_SREGS, which does not go through `ltr`).
pub const fn tss_descriptor(base: u64, limit: u32) -> (u64, u64) {
    (entry(TSS_BUSY, base as u32, limit), base >> 32)
}

/// The `kvm_segment` for selector `selector` whose descriptor is `desc`: base, limit
/// (expanded to bytes when G is set, as the hidden part of a loaded segment register
/// holds it), type and the flag bits.
pub fn segment(desc: u64, selector: u16) -> kvm_segment {
    let raw_limit = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
    let g = ((desc >> 55) & 1) as u8;
    kvm_segment {
        base: ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present: ((desc >> 47) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g,
        avl: ((desc >> 52) & 1) as u8,
        unusable: u8::from((desc >> 47) & 1 == 0),
        padding: 0,
    }
}

/// The `kvm_segment` of selector `selector` in `gdt` (index = selector >> 3); a selector
/// past the table gives an unusable segment. A system descriptor (TSS, LDT) takes 16
/// bytes in long mode: the upper half of its base is the next entry.
pub fn segment_of(gdt: &[u64], selector: u16) -> kvm_segment {
    let index = usize::from(selector >> 3);
    let desc = gdt.get(index).copied().unwrap_or(0);
    let mut s = segment(desc, selector);
    if s.s == 0 && s.present == 1 {
        s.base |= gdt.get(index + 1).copied().unwrap_or(0) << 32;
    }
    s
}

/// Writes [`BOOT_GDT`] at [`GDT`] and an empty IDT after it.
pub fn write_boot_gdt(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(super::layout::IDT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_known_descriptors() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9b00_0000_ffff);
        assert_eq!(entry(CODE64_USER, 0, 0xfffff), 0x00af_fb00_0000_ffff);
        let (lo, hi) = tss_descriptor(0x1234_5678_9abc, 103);
        assert_eq!(lo & 0xffff, 103);
        assert_eq!((lo >> 16) & 0xff_ffff, 0x56_789abc & 0xff_ffff);
        assert_eq!((lo >> 40) & 0xff, 0x8b);
        assert_eq!(hi, 0x1234);
    }

    #[test]
    fn segments_read_off_the_descriptor() {
        let cs = segment_of(&BOOT_GDT, BOOT_CS64);
        assert_eq!(
            (cs.type_, cs.l, cs.db, cs.s, cs.present, cs.g),
            (11, 1, 0, 1, 1, 1)
        );
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        let ds = segment_of(&BOOT_GDT, BOOT_DS);
        assert_eq!((ds.type_, ds.l, ds.db, ds.unusable), (3, 0, 1, 0));
        let cs32 = segment_of(&BOOT_GDT, BOOT_CS32);
        assert_eq!((cs32.l, cs32.db, cs32.type_), (0, 1, 11));
        let user = segment(entry(DATA_USER, 0, 0xfffff), 0x23);
        assert_eq!((user.dpl, user.selector), (3, 0x23));
        assert_eq!(segment_of(&BOOT_GDT, 0x40).unusable, 1, "past the table");
        let (lo, hi) = tss_descriptor(0x7f_0000_1000, 103);
        let tr = segment_of(&[0, lo, hi], 0x8);
        assert_eq!(
            (tr.base, tr.limit, tr.type_, tr.s, tr.g),
            (0x7f_0000_1000, 103, 11, 0, 0)
        );
    }
}
