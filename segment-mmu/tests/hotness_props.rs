//! Properties of the hotness file and the tier model over random inputs: files round-trip,
//! no corruption of a file makes the reader panic, and the model's slowdown stays between
//! all-fast and all-slow plus what it spent on migration.

use proptest::prelude::*;
use segment_mmu::hotness::tier::{simulate, FastCapacity, Params};
use segment_mmu::hotness::HotnessLog;

fn arb_log() -> impl Strategy<Value = HotnessLog> {
    (
        1.0f64..8.0,
        prop::collection::vec(prop::collection::vec(0u64..2048, 0..64), 0..12),
    )
        .prop_map(|(h, sets)| {
            let mut l = HotnessLog::new(
                10_000_000,
                h,
                "prop",
                vec![(0, 8 << 20), (32 << 20, 8 << 20)],
            )
            .unwrap();
            for (k, s) in sets.into_iter().enumerate() {
                // Half the pages in the second range.
                let pages = s
                    .into_iter()
                    .map(|p| if p % 2 == 0 { p } else { (32 << 8) + p })
                    .collect();
                l.push_interval(k as u64 * 10_000_000, pages).unwrap();
            }
            l
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hotness_round_trip(l in arb_log()) {
        prop_assert_eq!(HotnessLog::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn hotness_corruption_never_panics(l in arb_log(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut b = l.encode();
        let i = at.index(b.len());
        b[i] = byte;
        let _ = HotnessLog::decode(&b);
        let n = cut.index(b.len());
        let _ = HotnessLog::decode(&b[..n]);
    }

    #[test]
    fn hotness_slowdown_bounded(l in arb_log(), frac in 0.0f64..1.0, r in 1.0f64..5.0, c in 0.0f64..2.0) {
        let p = Params { fast: FastCapacity::Fraction(frac), latency_ratio: r, migration_cost: c, ..Params::default() };
        let rep = simulate(&[("g".into(), &l)], &p).unwrap();
        for row in &rep.results {
            let g = &row.guests[0];
            prop_assert!(row.slowdown >= 1.0 - 1e-9);
            if g.accesses > 0 {
                let bound = r + c * g.migrated_pages as f64 / g.accesses as f64 + 1e-9;
                prop_assert!(row.slowdown <= bound, "{:?} {}", row.policy, row.slowdown);
            }
        }
    }
}
