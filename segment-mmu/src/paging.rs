//! x86-64 paging vocabulary: modes, page sizes and page-table-entry bits.
//!
//! Bit positions follow the Intel SDM Vol. 3A §4.5 (4-level and 5-level paging) and the
//! AMD APM Vol. 2 §5.3; the two agree on every bit used here.

use serde::{Deserialize, Serialize};

/// Entry bit: present.
pub const PTE_P: u64 = 1 << 0;
/// Entry bit: writable (R/W).
pub const PTE_RW: u64 = 1 << 1;
/// Entry bit: user accessible (U/S).
pub const PTE_US: u64 = 1 << 2;
/// Entry bit: accessed.
pub const PTE_A: u64 = 1 << 5;
/// Entry bit: dirty (leaves only).
pub const PTE_D: u64 = 1 << 6;
/// Entry bit: page size (a leaf at PDPT or PD level).
pub const PTE_PS: u64 = 1 << 7;
/// Entry bit: global (leaves only).
pub const PTE_G: u64 = 1 << 8;
/// Entry bit: execute disable (needs EFER.NXE).
pub const PTE_NX: u64 = 1 << 63;
/// Address field of a page-table entry for MAXPHYADDR = 52.
pub const PTE_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.PAE (required for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.NXE: execute-disable bit enabled.
pub const EFER_NXE: u64 = 1 << 11;

/// Errors when decoding paging vocabulary from numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Paging level count other than 4 or 5.
    #[error("unsupported paging mode: {0} levels (expected 4 or 5)")]
    BadLevels(u64),
    /// Page size other than 4 KiB, 2 MiB or 1 GiB.
    #[error("unsupported page size {0:#x} (expected 4K, 2M or 1G)")]
    BadPageSize(u64),
}

/// 4-level (48-bit) or 5-level (LA57, 57-bit) paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum PagingMode {
    /// 4-level paging, 48-bit virtual addresses.
    #[default]
    Level4,
    /// 5-level paging (CR4.LA57), 57-bit virtual addresses.
    Level5,
}

impl PagingMode {
    /// Number of levels (4 or 5).
    #[inline]
    pub const fn levels(self) -> u8 {
        match self {
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        }
    }

    /// Mode from a level count.
    pub fn from_levels(n: u64) -> Result<Self, Error> {
        match n {
            4 => Ok(PagingMode::Level4),
            5 => Ok(PagingMode::Level5),
            _ => Err(Error::BadLevels(n)),
        }
    }

    /// Virtual-address width in bits (48 or 57).
    #[inline]
    pub const fn va_bits(self) -> u32 {
        12 + 9 * self.levels() as u32
    }

    /// True when `va` is canonical: the bits above the width are copies of the top bit.
    #[inline]
    pub const fn is_canonical(self, va: u64) -> bool {
        let shift = 64 - self.va_bits();
        (((va << shift) as i64) >> shift) as u64 == va
    }
}

/// Shift of the region one entry at `level` maps (level 1 = PT: 12, 2 = PD: 21, ...).
#[inline]
pub const fn level_shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

/// Index of `va` into the table at `level`.
#[inline]
pub const fn level_index(va: u64, level: u8) -> u64 {
    (va >> level_shift(level)) & 511
}

/// A page size x86-64 can map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PageSize {
    /// 4 KiB, a PT leaf.
    Size4K,
    /// 2 MiB, a PD leaf (PS=1).
    Size2M,
    /// 1 GiB, a PDPT leaf (PS=1).
    Size1G,
}

impl PageSize {
    /// All sizes, smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

    /// Size in bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// log2 of the size.
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
            PageSize::Size1G => 30,
        }
    }

    /// Level at which this size is a leaf (1, 2 or 3).
    #[inline]
    pub const fn leaf_level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// 0, 1, 2: a dense index for per-size arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self.leaf_level() as usize - 1
    }

    /// Size from a byte count.
    pub fn from_bytes(b: u64) -> Result<Self, Error> {
        match b {
            0x1000 => Ok(PageSize::Size4K),
            0x20_0000 => Ok(PageSize::Size2M),
            0x4000_0000 => Ok(PageSize::Size1G),
            _ => Err(Error::BadPageSize(b)),
        }
    }

    /// The largest size not above `bytes` (host pages may be any power of two ≥ 4 KiB;
    /// a 16 KiB host page still only lets a TLB hold 4 KiB x86 entries).
    pub fn at_most(bytes: u64) -> Self {
        if bytes >= 0x4000_0000 {
            PageSize::Size1G
        } else if bytes >= 0x20_0000 {
            PageSize::Size2M
        } else {
            PageSize::Size4K
        }
    }

    /// Short name: `4K`, `2M`, `1G`.
    pub const fn name(self) -> &'static str {
        match self {
            PageSize::Size4K => "4K",
            PageSize::Size2M => "2M",
            PageSize::Size1G => "1G",
        }
    }
}

/// Effective permissions and status of a translation, combined over every level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Flags {
    /// Writable at every level.
    pub writable: bool,
    /// User accessible at every level.
    pub user: bool,
    /// Execute disabled at some level.
    pub no_exec: bool,
    /// Leaf accessed bit.
    pub accessed: bool,
    /// Leaf dirty bit.
    pub dirty: bool,
    /// Leaf global bit.
    pub global: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_checks_follow_width() {
        let m4 = PagingMode::Level4;
        assert!(m4.is_canonical(0x0000_7fff_ffff_f000));
        assert!(m4.is_canonical(0xffff_8000_0000_0000));
        assert!(!m4.is_canonical(0x0000_8000_0000_0000));
        let m5 = PagingMode::Level5;
        assert!(m5.is_canonical(0x0000_8000_0000_0000));
        assert!(!m5.is_canonical(0x0100_0000_0000_0000));
    }

    #[test]
    fn sizes_round_trip() {
        for s in PageSize::ALL {
            assert_eq!(PageSize::from_bytes(s.bytes()), Ok(s));
        }
        assert!(PageSize::from_bytes(8192).is_err());
        assert_eq!(PageSize::at_most(16384), PageSize::Size4K);
        assert_eq!(level_index(0x20_0000, 2), 1);
    }
}
