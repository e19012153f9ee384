//! The models' qualitative claims (issue #18): each assertion compares numbers the models
//! compute; none is typed in.

use segment_mmu::designs::{DesignKind, ModelConfig, NptMode};
use segment_mmu::replay::repro::{config, run, run_with, tiering};
use segment_mmu::replay::Warmup;

#[test]
fn shadow_steady_state_is_near_native_on_static_tables() {
    let r = run(
        "heap=256M,pages=4k",
        "gups:footprint=256M,count=600k",
        &[DesignKind::Native, DesignKind::Shadow],
    )
    .unwrap();
    let (n, s) = (r.steady("native").unwrap(), r.steady("shadow").unwrap());
    assert!(r.warmup.settled);
    assert!((s / n - 1.0).abs() <= 0.05, "shadow {s} native {n}");
    // ... while from a cold start it pays a fill exit per page.
    assert!(r.cold("shadow").unwrap() > 2.0 * r.cold("native").unwrap());
}

#[test]
fn enlarged_tdp_with_caches_walks_no_more_than_nested() {
    let r = run(
        "heap=1G,pages=4k",
        "gups:footprint=1G,count=300k",
        &[DesignKind::Nested, DesignKind::EnlargedTdp],
    )
    .unwrap();
    let (ne, en) = (&r.designs[0].after_warmup, &r.designs[1].after_warmup);
    assert!(
        en.refs <= ne.refs,
        "enlarged {} nested {}",
        en.refs,
        ne.refs
    );
    assert!(r.steady("enlarged-tdp").unwrap() <= r.steady("nested").unwrap());
}

#[test]
fn zipf_makes_temperature_tiering_beat_none() {
    let [none, temp, _] = tiering("gups:footprint=64M,count=600k,zipf=0.99", 5_000).unwrap();
    assert!(temp < none, "temperature {temp} none {none}");
    let [none_u, temp_u, _] = tiering("gups:footprint=64M,count=600k", 5_000).unwrap();
    assert!(
        temp_u >= none_u,
        "uniform: nothing to sort by ({temp_u} vs {none_u})"
    );
}

#[test]
fn warmup_split_sums_to_the_total() {
    for w in [Warmup::None, Warmup::Accesses(50_000), Warmup::Auto] {
        let cfg = ModelConfig {
            npt: NptMode::Lazy,
            ..config()
        };
        let r = run_with(
            "heap=64M,pages=4k",
            "ptchurn:footprint=64M,count=200k,rate=0.01",
            &DesignKind::ALL,
            cfg,
            w,
        )
        .unwrap();
        if let Warmup::Accesses(n) = w {
            assert_eq!(r.warmup.accesses, n);
        }
        for d in &r.designs {
            let sum = d.cold_start_cycles + d.steady_cycles;
            assert!(
                (sum - d.total.cycles).abs() <= 1e-6 * d.total.cycles.max(1.0),
                "{}",
                d.name
            );
            assert_eq!(
                d.warmup.accesses + d.after_warmup.accesses,
                d.total.accesses
            );
            assert!(d.fill_exits <= d.total.vm_exits);
        }
    }
}
