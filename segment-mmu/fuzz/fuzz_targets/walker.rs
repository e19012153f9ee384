//! Fuzzes the walker on arbitrary page tables: the input is cut into up to eight 4 KiB
//! table pages at guest-physical 0x1000.., then the remaining bytes are virtual
//! addresses to walk. Walks must return a translation or a typed fault, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segment_mmu::mem::PageStore;
use segment_mmu::paging::PagingMode;
use segment_mmu::walker::{walk, Access, WalkConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mode = if flags & 1 == 0 {
        PagingMode::Level4
    } else {
        PagingMode::Level5
    };
    let cfg = WalkConfig {
        mode,
        max_phys_bits: 36 + (flags >> 1) % 17,
        nxe: flags & 0x80 != 0,
    };
    let pages = (rest.len() / 4096).min(8);
    let mut store = PageStore::new();
    for p in 0..pages {
        let mut words = [0u64; 512];
        for (i, w) in words.iter_mut().enumerate() {
            let o = p * 4096 + i * 8;
            *w = u64::from_le_bytes(rest[o..o + 8].try_into().unwrap_or([0; 8]));
        }
        store.insert(0x1000 * (p as u64 + 1), words);
    }
    let tail = &rest[pages * 4096..];
    let access = Access {
        write: flags & 2 != 0,
        user: flags & 4 != 0,
        exec: flags & 8 != 0,
    };
    for chunk in tail.chunks_exact(8).take(64) {
        let va = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if let Ok(w) = walk(&store, &cfg, 0x1000, va, access) {
            assert!(w.len as usize <= mode.levels() as usize);
            assert_eq!(w.pa & (w.size.bytes() - 1), va & (w.size.bytes() - 1));
        }
    }
});
