//! Property tests (issue #4, point 7).

use std::collections::HashMap;

use proptest::prelude::*;
use segment_mmu::designs::{DesignKind, Env, ModelConfig};
use segment_mmu::mem::PageStore;
use segment_mmu::paging::PagingMode;
use segment_mmu::ptsnap::{Ptsnap, SyntheticSpec};
use segment_mmu::replay::replay;
use segment_mmu::stream::StreamSpec;
use segment_mmu::tlb::TlbConfig;
use segment_mmu::walker::{walk, Access, WalkConfig};

const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// A deliberately simple reference walker: recursion-free, no caching, written from
/// the SDM's description rather than from the real walker.
fn reference_walk(
    pages: &HashMap<u64, Vec<u64>>,
    levels: u32,
    cr3: u64,
    va: u64,
) -> Option<(u64, u64)> {
    let width = 12 + 9 * levels;
    let canonical = ((va << (64 - width)) as i64 >> (64 - width)) as u64;
    if canonical != va {
        return None;
    }
    let mut table = cr3 & ADDR;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let e = pages.get(&table)?[((va >> shift) & 511) as usize];
        if e & 1 == 0 {
            return None;
        }
        let size = 1u64 << shift;
        if level == 1 {
            return Some(((e & ADDR) | (va & 0xfff), 4096));
        }
        if e & 0x80 != 0 {
            if level >= 4 {
                return None;
            }
            let frame = e & ADDR;
            if frame & (size - 1) & !0x1000 != 0 {
                return None;
            }
            return Some(((frame & !(size - 1)) | (va & (size - 1)), size));
        }
        table = e & ADDR;
    }
    None
}

/// Random tables: `n` pages at 0x1000.., entries that are empty, point at another
/// page (the most likely, so walks go deep), are large leaves (sometimes misaligned),
/// or are garbage.
fn tables(n: u64) -> impl Strategy<Value = Vec<Vec<(u8, u64)>>> {
    prop::collection::vec(prop::collection::vec((0u8..8, any::<u64>()), 8), n as usize)
}

fn entry(kind: u8, r: u64, n: u64) -> u64 {
    match kind {
        0 => 0,
        1 | 5 | 6 | 7 => (0x1000 * (1 + r % n)) | 0x7,
        2 => ((r % 64) << 21) | 0x87, // 2 MiB-aligned frame, PS
        3 => (r & ADDR & !0x1f_f000) | 0x1000 | 0x87, // misaligned large frame (PAT bit ok) or fine
        _ => r,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn walker_agrees_with_reference(
        raw in tables(6),
        slots in prop::collection::vec(0usize..8, 6),
        vas in prop::collection::vec((any::<u64>(), any::<bool>()), 32),
        five in any::<bool>(),
    ) {
        let n = raw.len() as u64;
        let mut store = PageStore::new();
        let mut pages = HashMap::new();
        // Entries are placed at indices 0..8 of each table and at a few other slots so
        // random VAs can reach them.
        for (i, ents) in raw.iter().enumerate() {
            let mut p = [0u64; 512];
            for (j, &(k, r)) in ents.iter().enumerate() {
                let e = entry(k, r, n);
                p[j] = e;
                p[(slots[i] * 61 + j) % 512] = e;
            }
            let gpa = 0x1000 * (i as u64 + 1);
            store.insert(gpa, p);
            pages.insert(gpa, p.to_vec());
        }
        let mode = if five { PagingMode::Level5 } else { PagingMode::Level4 };
        let cfg = WalkConfig::new(mode);
        for (v, canon) in vas {
            // Bias towards small indices so walks go deep.
            let va = v & 0x0000_0000_0307_ffff | (v & 0x0000_0f00_0000_0000) >> 12;
            let va = if canon { va } else { v };
            let got = walk(&store, &cfg, 0x1000, va, Access::default()).ok().map(|w| (w.pa, w.size.bytes()));
            prop_assert_eq!(got, reference_walk(&pages, mode.levels() as u32, 0x1000, va), "va {:#x}", va);
        }
    }

    #[test]
    fn tlb_hit_costs_zero_references(offsets in prop::collection::vec(0u64..(64 << 20), 1..20)) {
        let snap = "heap=64M,pages=2m:0.5".parse::<SyntheticSpec>().unwrap().build().unwrap();
        let env = Env::new(&snap, 0, ModelConfig { tlb: TlbConfig::intel(), ..Default::default() }).unwrap();
        let base = env.guest_segment.unwrap().base;
        for kind in DesignKind::ALL {
            let mut d = kind.build(&env).unwrap();
            for &o in &offsets {
                let va = base + (o & !7);
                let t = env.translate(va, false);
                d.access(&env, va, false, &t);
                let before = d.report(&env);
                d.access(&env, va, false, &t);
                let after = d.report(&env);
                prop_assert_eq!(after.refs, before.refs, "{}", kind.name());
                prop_assert_eq!(after.vm_exits, before.vm_exits, "{}", kind.name());
                if kind != DesignKind::DualDirect {
                    // Dual direct never fills the TLB for segment hits: its repeat is
                    // another 0-reference segment translation.
                    prop_assert_eq!(after.walks, before.walks, "{}", kind.name());
                    prop_assert_eq!(after.l1_hits, before.l1_hits + 1, "{}", kind.name());
                }
            }
        }
    }

    #[test]
    fn replay_is_deterministic_for_a_seed(seed in any::<u64>(), zipf in any::<bool>()) {
        let snap = "heap=32M,pages=2m:0.3".parse::<SyntheticSpec>().unwrap().build().unwrap();
        let spec = if zipf { format!("zipf:footprint=32M,count=5k,seed={seed}") } else { format!("gups:footprint=32M,count=5k,seed={seed}") };
        let run = || {
            let env = Env::new(&snap, 0, ModelConfig { tlb: TlbConfig::amd(), escape_pages: 4, ..Default::default() }).unwrap();
            let mut s = spec.parse::<StreamSpec>().unwrap().build(env.guest_segment.unwrap().base);
            replay(&env, &mut s, &DesignKind::ALL, None).unwrap()
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn malformed_ptsnap_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Ptsnap::from_bytes(&bytes);
        let mut with_magic = b"PTSNAP\r\n\x01\0\0\0".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = Ptsnap::from_bytes(&with_magic);
    }

    #[test]
    fn mutated_ptsnap_is_rejected_or_valid(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let snap = "heap=8M,procs=2".parse::<SyntheticSpec>().unwrap().build().unwrap();
        let good = snap.to_bytes();
        // Truncation is always an error.
        let at = cut.index(good.len());
        prop_assert!(Ptsnap::from_bytes(&good[..at]).is_err());
        // Byte edits with the checksum fixed up reach the structural checks.
        let mut b = good.clone();
        let body = b.len() - 8;
        for (i, v) in &edits {
            let i = i.index(body);
            b[i] = *v;
        }
        let sum = fnv1a(&b[..body]);
        b[body..].copy_from_slice(&sum.to_le_bytes());
        if let Ok(s) = Ptsnap::from_bytes(&b) {
            // Whatever is accepted walks without panicking.
            let cfg = s.walk_config();
            for sp in &s.spaces {
                let _ = walk(&s, &cfg, sp.cr3, 0x1000_0000_0000, Access::default());
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[test]
fn every_malformation_has_its_typed_error() {
    use segment_mmu::ptsnap::Error;
    let snap = "heap=8M".parse::<SyntheticSpec>().unwrap().build().unwrap();
    let good = snap.to_bytes();
    assert!(matches!(
        Ptsnap::from_bytes(&good[..good.len() - 1]),
        Err(Error::Truncated { .. })
    ));
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(Ptsnap::from_bytes(&b), Err(Error::BadMagic));
    let mut b = good.clone();
    b[8] = 9;
    assert_eq!(Ptsnap::from_bytes(&b), Err(Error::BadVersion(9)));
    let mut b = good.clone();
    let n = b.len();
    b[n - 20] ^= 1;
    assert!(matches!(
        Ptsnap::from_bytes(&b),
        Err(Error::BadChecksum { .. })
    ));
    // A table page moved outside RAM.
    let mut s = snap.clone();
    let mut pages = PageStore::new();
    for (gpa, p) in snap.pages.iter() {
        pages.insert(gpa, *p);
    }
    pages.insert(snap.ram_bytes() + 0x1000, [0; 512]);
    s.pages = pages;
    assert_eq!(
        Ptsnap::from_bytes(&s.to_bytes()),
        Err(Error::TableOutsideRam(snap.ram_bytes() + 0x1000))
    );
    // A cycle: the PDPT's first entry points back at the PML4.
    let mut s = snap.clone();
    let cr3 = s.spaces[0].cr3;
    let pml4e = s
        .pages
        .page(cr3)
        .unwrap()
        .iter()
        .copied()
        .find(|e| e & 1 != 0)
        .unwrap();
    let pdpt = pml4e & ADDR;
    s.pages.page_mut(pdpt).unwrap()[511] = cr3 | 0x7;
    assert_eq!(Ptsnap::from_bytes(&s.to_bytes()), Err(Error::Cycle(cr3)));
}

/// Guards the property above against vacuity: on seeded random tables a good share of
/// walks succeed (and agree), at every leaf size.
#[test]
fn reference_comparison_reaches_leaves() {
    let mut rng = workloads::XorShift64::new(42);
    let (mut ok, mut total) = (0, 0);
    let mut sizes = std::collections::HashSet::new();
    for _ in 0..200 {
        let n = 6u64;
        let mut store = PageStore::new();
        let mut pages = HashMap::new();
        for i in 0..n {
            let mut p = [0u64; 512];
            for e in p.iter_mut().take(8) {
                *e = entry((rng.next_u64() % 8) as u8, rng.next_u64(), n);
            }
            store.insert(0x1000 * (i + 1), p);
            pages.insert(0x1000 * (i + 1), p.to_vec());
        }
        let cfg = WalkConfig::new(PagingMode::Level4);
        for _ in 0..32 {
            let v = rng.next_u64();
            let va =
                v & 0x0000_0000_0000_7fff | (v & 0x7) << 21 | (v & 0x38) << 27 | (v & 0x1c0) << 33;
            let got = walk(&store, &cfg, 0x1000, va, Access::default())
                .ok()
                .map(|w| (w.pa, w.size.bytes()));
            assert_eq!(got, reference_walk(&pages, 4, 0x1000, va));
            total += 1;
            if let Some((_, s)) = got {
                ok += 1;
                sizes.insert(s);
            }
        }
    }
    assert!(ok * 20 > total, "only {ok} of {total} walks reached a leaf");
    assert_eq!(sizes.len(), 3, "{sizes:?}");
}
