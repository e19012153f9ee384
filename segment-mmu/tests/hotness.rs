//! The hotness file and the tier model on hand-built inputs whose answers are computed by
//! hand (in the comments), and malformed files.

use segment_mmu::hotness::tier::{simulate, FastCapacity, Grain, Params, Policy, Report, Shares};
use segment_mmu::hotness::{Error, HotnessLog};

fn log(half_life: f64, sets: &[&[u64]]) -> HotnessLog {
    let mut l = HotnessLog::new(100_000_000, half_life, "hand", vec![(0, 16 << 20)]).unwrap();
    for (k, s) in sets.iter().enumerate() {
        l.push_interval((k as u64 + 1) * 100_000_000, s.to_vec())
            .unwrap();
    }
    l
}

fn slowdown(r: &Report, p: Policy, g: Grain) -> f64 {
    r.results
        .iter()
        .find(|x| x.policy == p && x.grain == g)
        .unwrap()
        .slowdown
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// One fast page, pages A = 0 then B = 1: [A] [A] [B] [B] [B]; λ = 1/2, r = 3, c = 1/2.
#[test]
fn hotness_temperature_sort_and_oracle_by_hand() {
    let l = log(1.0, &[&[0], &[0], &[1], &[1], &[1]]);
    let p = Params {
        fast: FastCapacity::Bytes(4096),
        latency_ratio: 3.0,
        migration_cost: 0.5,
        ..Params::default()
    };
    let r = simulate(&[("g".into(), &l)], &p).unwrap();
    // none: A fast at first touch, B slow forever: 1 + 1 + 3 + 3 + 3 = 11 over 5.
    assert!(close(slowdown(&r, Policy::None, Grain::Small), 11.0 / 5.0));
    // temperature: B first touched slow (share full); before interval 3, T(A) = 0.75 <
    // T(B) = 1 → swap (2 pages × 0.5); 1 + 1 + 3 + 1 + 1 + 1 = 8 over 5.
    assert!(close(
        slowdown(&r, Policy::Temperature, Grain::Small),
        8.0 / 5.0
    ));
    // oracle: before interval 2 it knows A is done and B comes: demotes A (0.5; B is not
    // allocated yet, so it is born fast); 5 × 1 + 0.5 = 5.5 over 5.
    assert!(close(slowdown(&r, Policy::Oracle, Grain::Small), 5.5 / 5.0));
    // A 2 MiB frame does not fit a 4 KiB fast tier: everything slow at 2 MiB grain.
    for pol in Policy::ALL {
        assert!(close(slowdown(&r, pol, Grain::Huge), 3.0), "{pol:?}");
    }
}

/// One fast page, expensive migration (c = 10, r = 2, λ = 1/2): [A] [A,B] [B] [B].
#[test]
fn hotness_oracle_refuses_migrations_that_do_not_pay() {
    let l = log(1.0, &[&[0], &[0, 1], &[1], &[1]]);
    let p = Params {
        fast: FastCapacity::Bytes(4096),
        latency_ratio: 2.0,
        migration_cost: 10.0,
        ..Params::default()
    };
    let r = simulate(&[("g".into(), &l)], &p).unwrap();
    // none: A fast, B slow: 1 + (1 + 2) + 2 + 2 = 8 over 5.
    assert!(close(slowdown(&r, Policy::None, Grain::Small), 8.0 / 5.0));
    // temperature: T(A) = 1.5 ≥ T(B) = 1 before interval 2; before interval 3
    // T(A) = 0.75 < T(B) = 1.5: swap (2 × 10); 1 + 3 + 2 + (20 + 1) = 27 over 5.
    assert!(close(
        slowdown(&r, Policy::Temperature, Grain::Small),
        27.0 / 5.0
    ));
    // oracle: B's future saving (1.5, then 1) never beats keeping A (+10) and moving B
    // (−10): it stays with first touch, 8 over 5.
    assert!(close(slowdown(&r, Policy::Oracle, Grain::Small), 8.0 / 5.0));
}

/// A fast tier of one 2 MiB frame; one hot page in each of frames 0 and 1, every interval,
/// three intervals; λ = 1/2, r = 3, c = 1/2.
#[test]
fn hotness_hybrid_splits_partly_hot_frames() {
    let l = log(1.0, &[&[0, 512], &[0, 512], &[0, 512]]);
    let p = Params {
        fast: FastCapacity::Bytes(2 << 20),
        latency_ratio: 3.0,
        migration_cost: 0.5,
        ..Params::default()
    };
    let r = simulate(&[("g".into(), &l)], &p).unwrap();
    // 4 KiB: both pages fit: 1.0 for every policy.
    for pol in Policy::ALL {
        assert!(close(slowdown(&r, pol, Grain::Small), 1.0), "{pol:?}");
    }
    // 2 MiB: frame 0 is fast, frame 1 slow, ties keep it: (1 + 3) per interval.
    for pol in Policy::ALL {
        assert!(close(slowdown(&r, pol, Grain::Huge), 2.0), "{pol:?}");
    }
    assert!(close(slowdown(&r, Policy::None, Grain::Hybrid), 2.0));
    // hybrid temperature: interval 0 as 2 MiB (4); then frame 0 is split (1 of 512 pages
    // hot), page 512 promoted and page 511 demoted to make room (2 × 0.5); 2 + 2.
    assert!(close(
        slowdown(&r, Policy::Temperature, Grain::Hybrid),
        9.0 / 6.0
    ));
    // hybrid oracle: places pages 0 and 512 before they exist: 1.0.
    assert!(close(slowdown(&r, Policy::Oracle, Grain::Hybrid), 1.0));
}

/// Two guests share a 2-page pool; X writes pages 0 and 1 in each of 4 intervals, Y writes
/// page 0 once. λ = 1/2, r = 3, c = 0, temperature sort at 4 KiB.
#[test]
fn hotness_demand_shares_follow_hot_pages() {
    let x = log(1.0, &[&[0, 1], &[0, 1], &[0, 1], &[0, 1]]);
    let y = log(1.0, &[&[0], &[], &[], &[]]);
    let guests = vec![("x".to_string(), &x), ("y".to_string(), &y)];
    let base = Params {
        fast: FastCapacity::Bytes(2 * 4096),
        latency_ratio: 3.0,
        migration_cost: 0.0,
        ..Params::default()
    };
    let eq = simulate(
        &guests,
        &Params {
            shares: Shares::Equal,
            ..base.clone()
        },
    )
    .unwrap();
    // Equal: X has one fast page: 4 per interval (16); Y 1. 17 over 9.
    assert!(close(
        slowdown(&eq, Policy::Temperature, Grain::Small),
        17.0 / 9.0
    ));
    let de = simulate(
        &guests,
        &Params {
            shares: Shares::Demand,
            ..base
        },
    )
    .unwrap();
    // Demand: Y's page cools below 0.5 before interval 3, X gets both pages: 4+4+4+2 + 1.
    assert!(close(
        slowdown(&de, Policy::Temperature, Grain::Small),
        15.0 / 9.0
    ));
    let row = de
        .results
        .iter()
        .find(|r| r.policy == Policy::Temperature && r.grain == Grain::Small)
        .unwrap();
    assert!(close(row.guests[0].mean_share_pages, 5.0 / 4.0));
}

#[test]
fn hotness_fraction_of_footprint() {
    let l = log(4.0, &[&[0, 1, 2, 3], &[0, 1, 2, 3]]);
    let r = simulate(
        &[("g".into(), &l)],
        &Params {
            fast: FastCapacity::Fraction(0.5),
            ..Params::default()
        },
    )
    .unwrap();
    assert_eq!(r.footprint_pages, 4);
    assert_eq!(r.fast_pages, 2);
    assert!(r.table().contains("temperature"));
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 8;
    let s = fnv1a(&b[..n]);
    b[n..].copy_from_slice(&s.to_le_bytes());
    b
}

#[test]
fn hotness_malformed_files_name_the_problem() {
    let l = log(4.0, &[&[1, 2, 3, 9], &[], &[4]]);
    let good = l.encode();
    assert_eq!(HotnessLog::decode(&good).unwrap(), l);
    let msg = |b: &[u8]| HotnessLog::decode(b).unwrap_err().to_string();

    assert!(msg(b"PK\x03\x04 not at all").contains("not a hotness file"));
    assert!(msg(&good[..30]).contains("truncated"));
    let mut v = good.clone();
    v[8] = 2;
    assert!(msg(&v).contains("version 2 is not supported"));
    let mut v = good.clone();
    let n = v.len();
    v[n - 20] ^= 0x40;
    assert!(matches!(
        HotnessLog::decode(&v),
        Err(Error::Checksum { .. }) | Err(Error::Malformed(_))
    ));
    // Header: 8 magic + 2 version + 1 shift + 1 reserved + 8 interval + 8 half-life +
    // 1 method length + 4 "hand" + 4 range count + 16 range + 4 interval count = 57; then
    // interval 0: end (8), count (4) at 65.
    let mut v = good.clone();
    v[65] = 5; // states 5 dirty pages, runs hold 4
    assert!(msg(&reseal(v)).contains("states 5 dirty pages, runs hold 4"));
    let mut v = good.clone();
    v[10] = 21; // 2 MiB tracking grain
    assert!(msg(&reseal(v)).contains("page shift 21"));
    let mut v = good.clone();
    v.insert(v.len() - 8, 0);
    assert!(msg(&reseal(v)).contains("unexpected bytes"));
    // A page outside guest RAM: grow the first run's gap.
    let mut v = good.clone();
    v[73] = 0xff; // gap varint of run 0 → continues into the next byte
    assert!(HotnessLog::decode(&reseal(v)).is_err());
    // Half-life NaN.
    let mut v = good.clone();
    v[20..28].copy_from_slice(&f64::NAN.to_le_bytes());
    assert!(msg(&reseal(v)).contains("half-life"));
    // Temperatures that disagree with the intervals.
    let mut v = good;
    let n = v.len();
    v[n - 12..n - 8].copy_from_slice(&9.0f32.to_le_bytes());
    assert!(msg(&reseal(v)).contains("temperature of page"));
}
