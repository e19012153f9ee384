//! Property tests of the placement simulator: whatever the workload and policy, extents
//! never overlap, bytes are conserved, and every VM is placed or counted as rejected. Parsers
//! never panic on arbitrary input.

use proptest::prelude::*;
use segment_mmu::placement::azure_flavors::{self, Source};
use segment_mmu::placement::size::GIB;
use segment_mmu::placement::{
    vmtable, ClusterSpec, Config, Fit, Mode, Simulator, VmRequest, Workload,
};

fn fit() -> impl Strategy<Value = Fit> {
    prop_oneof![Just(Fit::First), Just(Fit::Best), Just(Fit::Worst)]
}

fn workload() -> impl Strategy<Value = Workload> {
    prop::collection::vec(
        (0u64..200, prop::option::weighted(0.9, 1u64..200), 1u64..=6),
        1..60,
    )
    .prop_map(|v| {
        let mut vms: Vec<VmRequest> = v
            .into_iter()
            .map(|(a, l, g)| VmRequest {
                arrival: a,
                lifetime: l,
                memory: g * GIB - (a % 3) * 4096,
            })
            .collect();
        vms.sort_by_key(|v| v.arrival);
        Workload {
            source: "prop".into(),
            vms,
            start: 0,
            end: 400,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn placement_invariants_hold_for_any_run(
        w in workload(),
        hosts in 1usize..=3,
        host_gib in 8u64..=16,
        reserved_gib in 0u64..=1,
        bad in 0usize..=3,
        hf in fit(),
        ef in fit(),
        k in 1usize..=4,
        compaction in any::<bool>(),
        budget_gib in 0u64..=16,
        balloon in any::<bool>(),
        filter in 0u32..=2,
        paging in prop::bool::weighted(0.15),
        seed in any::<u64>(),
    ) {
        let spec = ClusterSpec { hosts, host_memory: host_gib * GIB, reserved: reserved_gib * GIB, align: GIB, bad_pages_per_host: bad, seed };
        let cfg = Config {
            host: hf.host(), extent: ef.extent(), mode: if paging { Mode::Paging } else { Mode::Segments },
            max_segments: k, compaction, compaction_budget: budget_gib * GIB, balloon, escape_filter: filter, samples: 10,
        };
        // run_checked verifies after every event: free extents and segments tile each host
        // exactly (no overlap, bytes conserved), indexes agree, owners agree.
        let (r, c) = Simulator::new(&w, &spec, cfg).unwrap().run_checked().unwrap();
        prop_assert_eq!(r.placed + r.rejected, w.vms.len() as u64);
        let used: u64 = (0..c.len()).map(|h| c.host(h).usable() - c.free(h)).sum();
        prop_assert_eq!(used, r.final_live_memory);
        if !paging {
            prop_assert_eq!(r.segments_histogram.values().sum::<u64>(), r.placed);
            prop_assert!(r.segments_histogram.keys().all(|&n| (1..=k).contains(&n)));
            prop_assert!(r.single_segment <= r.placed);
            prop_assert!(r.faults_absorbed <= u64::from(filter) * (r.placed + r.ballooned_vms));
        }
        if !compaction || paging { prop_assert_eq!(r.bytes_compacted, 0); }
        prop_assert!(r.bytes_compacted <= r.compactions * budget_gib * GIB);
        if !balloon || paging { prop_assert_eq!(r.ballooned_vms, 0); }
    }

    #[test]
    fn placement_compact_parser_never_panics(t in "[0-9 a-z|,UC\n]{0,80}", l in "[0-9 a-z|,UC\n]{0,80}") {
        let f = Source { name: "f", text: "1,1 a\n2,2 b\n" };
        let i = Source { name: "i", text: "0 0\n300 1\n" };
        match azure_flavors::parse(Source { name: "t", text: &t }, Source { name: "l", text: &l }, f, i, 1) {
            Ok(w) => prop_assert!(w.vms.iter().all(|v| v.departure(w.end).is_none_or(|d| d > v.arrival))),
            Err(e) => { let m = e.to_string(); prop_assert!(m.starts_with("t") || m.starts_with("l"), "{}", m); }
        }
    }

    #[test]
    fn placement_vmtable_parser_never_panics(text in "[0-9a-z,>.\n-]{0,120}") {
        if let Err(e) = vmtable::parse("v.csv", &text) {
            prop_assert!(e.to_string().starts_with("v.csv"));
        }
    }
}
