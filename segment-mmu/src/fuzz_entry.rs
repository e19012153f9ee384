//! Fuzz-target bodies: every parser of untrusted input in this crate, run on arbitrary
//! bytes. `fuzz/` (cargo-fuzz, nightly) calls them from libFuzzer; `tests/fuzz_entry.rs`
//! calls them on stable with generated inputs. Each must return (never panic, never
//! allocate without bound) whatever the bytes; a checksum in the input is recomputed
//! first so that the fuzzer reaches the parser behind it.

use crate::enumerate::{enumerate_capped, linear_regions};
use crate::hotness::HotnessLog;
use crate::mem::PageStore;
use crate::paging::PagingMode;
use crate::ptsnap::Ptsnap;
use crate::walker::{walk, Access, WalkConfig};

/// Leaf entries one fuzz execution may enumerate (keeps an execution short).
pub const FUZZ_MAX_LEAVES: u64 = 1 << 16;

/// Overwrites the trailing 8 bytes with the FNV-1a of the rest (the files' checksum).
fn fix_checksum(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.len() >= 8 {
        let n = v.len() - 8;
        let sum = crate::bytes::fnv1a(&v[..n]);
        v[n..].copy_from_slice(&sum.to_le_bytes());
    }
    v
}

/// The `.ptsnap` reader, then the enumerator and a few walks over what it accepted.
pub fn ptsnap(data: &[u8]) {
    let Ok(p) = Ptsnap::from_bytes(&fix_checksum(data)) else {
        return;
    };
    let cfg = p.walk_config();
    for s in p.spaces.iter().take(4) {
        if let Ok(r) = enumerate_capped(&p, &cfg, s.cr3, FUZZ_MAX_LEAVES) {
            let _ = linear_regions(&r);
            for m in r.iter().take(8) {
                let _ = walk(&p, &cfg, s.cr3, m.va, Access::default());
            }
        }
    }
    let _ = p.summary();
    // Round trip: what the reader accepts, the writer writes back the same.
    let again = Ptsnap::from_bytes(&p.to_bytes());
    debug_assert!(again.is_ok());
}

/// The walker and enumerator on raw tables: `data` is a CR3 word, a mode byte, then
/// 4 KiB table pages at guest-physical 0, 4096, ...
pub fn walker(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let cr3 = u64::from_le_bytes([
        data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7],
    ]);
    let mode = if data[8] & 1 == 0 {
        PagingMode::Level4
    } else {
        PagingMode::Level5
    };
    let mut store = PageStore::new();
    for (i, chunk) in data[9..].chunks(4096).take(64).enumerate() {
        let mut page = [0u64; 512];
        for (w, b) in page.iter_mut().zip(chunk.chunks(8)) {
            let mut x = [0u8; 8];
            x[..b.len()].copy_from_slice(b);
            *w = u64::from_le_bytes(x);
        }
        store.insert(i as u64 * 4096, page);
    }
    let mut cfg = WalkConfig::new(mode);
    cfg.nxe = data[8] & 2 != 0;
    let _ = enumerate_capped(&store, &cfg, cr3, FUZZ_MAX_LEAVES);
    for va in data.chunks(8).take(16) {
        let mut x = [0u8; 8];
        x[..va.len()].copy_from_slice(va);
        let access = Access {
            write: x[0] & 1 != 0,
            user: x[0] & 2 != 0,
            exec: x[0] & 4 != 0,
        };
        let _ = walk(&store, &cfg, cr3, u64::from_le_bytes(x), access);
    }
}

/// The hotness-file reader, then the summary and the tier model's inputs.
pub fn hotness(data: &[u8]) {
    if let Ok(l) = HotnessLog::decode(&fix_checksum(data)) {
        let _ = l.summary();
        let _ = l.huge_sets();
        let _ = HotnessLog::decode(&l.encode());
    }
}

/// The trace readers: the binary `SEGTRACE` stream (first byte even) or an Azure
/// `vmtable.csv` (first byte odd).
pub fn traces(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        use crate::stream::AddressStream;
        if let Ok(mut r) = crate::stream::trace::TraceReader::new(rest, Some(rest.len() as u64)) {
            while let Ok(Some(_)) = r.next_event() {}
        }
    } else if let Ok(text) = std::str::from_utf8(rest) {
        let _ = crate::placement::vmtable::parse("fuzz", text);
    }
}
