//! The fuzz-target bodies (`segment_mmu::fuzz_entry`, `segvmm::fuzz_entry`) on stable: each
//! seed of fuzz/seeds/TARGET, thousands of seeded mutations of it, and proptest's random
//! inputs. Where nightly and cargo-fuzz are present, fuzz/run.sh runs the same bodies under
//! libFuzzer; this test keeps them exercised everywhere else.

use std::path::PathBuf;

use proptest::prelude::*;

type Body = fn(&[u8]);

const TARGETS: &[(&str, Body)] = &[
    ("ptsnap", segment_mmu::fuzz_entry::ptsnap),
    ("walker", segment_mmu::fuzz_entry::walker),
    ("hotness", segment_mmu::fuzz_entry::hotness),
    ("traces", segment_mmu::fuzz_entry::traces),
    ("api_request", segvmm::fuzz_entry::api_request),
    ("loader", segvmm::fuzz_entry::loader),
    ("emulate", segvmm::fuzz_entry::emulate),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One libFuzzer-like mutation: flip, set an interesting value, insert, delete, truncate.
fn mutate(r: &mut Rng, v: &mut Vec<u8>) {
    const INTERESTING: [u64; 6] = [0, 1, 0x7f, 0xffff_ffff, 1 << 63, u64::MAX];
    match r.below(5) {
        0 if !v.is_empty() => {
            let i = r.below(v.len());
            v[i] ^= 1 << r.below(8);
        }
        1 if v.len() >= 8 => {
            let i = r.below(v.len() - 7);
            let x = INTERESTING[r.below(INTERESTING.len())];
            v[i..i + 8].copy_from_slice(&x.to_le_bytes());
        }
        2 => {
            let i = r.below(v.len() + 1);
            v.insert(i, r.next() as u8);
        }
        3 if !v.is_empty() => {
            v.remove(r.below(v.len()));
        }
        _ => v.truncate(r.below(v.len() + 1)),
    }
}

#[test]
fn every_target_survives_mutated_seeds() {
    let per_target: usize = std::env::var("FUZZ_ENTRY_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    for (name, body) in TARGETS {
        let seeds = seeds(name);
        let mut r = Rng(0x5eed ^ name.len() as u64);
        for k in 0..per_target {
            let mut v = seeds[k % seeds.len()].clone();
            for _ in 0..=r.below(4) {
                mutate(&mut r, &mut v);
            }
            body(&v);
        }
        eprintln!("{name}: {per_target} mutated inputs");
    }
}

#[test]
fn seeds_reach_past_the_headers() {
    // The corpus is only useful if the seeds are accepted by the real readers.
    let p = &seeds("ptsnap");
    assert!(p
        .iter()
        .any(|b| segment_mmu::ptsnap::Ptsnap::from_bytes(b).is_ok()));
    assert!(seeds("hotness")
        .iter()
        .any(|b| segment_mmu::hotness::HotnessLog::decode(b).is_ok()));
    assert!(seeds("api_request")
        .iter()
        .any(|b| segvmm::api::protocol::parse(b).is_ok()));
}

#[test]
fn fuzz_finding_hotness_run_length_overflow_is_an_error() {
    // Found by `fuzz/run.sh` (hotness, ~6 M executions): a run length near 2^64 wrapped
    // `pages.len() + len` past the count check (overflow panic with checks on, an
    // unbounded `extend` without).
    let b = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/hotness/regress-run-length-overflow"),
    )
    .unwrap();
    let fixed = {
        let mut v = b.clone();
        let n = v.len() - 8;
        let sum = v[..n].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
        });
        v[n..].copy_from_slice(&sum.to_le_bytes());
        v
    };
    let e = segment_mmu::hotness::HotnessLog::decode(&fixed).unwrap_err();
    assert!(e.to_string().contains("runs hold more"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn every_target_survives_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..6000)) {
        for (_, body) in TARGETS {
            body(&data);
        }
    }
}

#[test]
#[ignore = "writes fuzz/seeds/hotness from the library's own encoder"]
fn write_hotness_seeds() {
    use segment_mmu::hotness::HotnessLog;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/hotness");
    let mut l = HotnessLog::new(1_000_000, 4.0, "ring", vec![(0, 16 << 20)]).unwrap();
    l.push_interval(1_000_000, vec![3, 4, 5, 9]).unwrap();
    l.push_interval(2_000_000, (100..200).collect()).unwrap();
    std::fs::write(dir.join("two_intervals"), l.encode()).unwrap();
    let mut l = HotnessLog::new(
        1_000_000,
        2.0,
        "bitmap",
        vec![(0, 1 << 20), (4 << 20, 1 << 20)],
    )
    .unwrap();
    l.push_interval(5, (1024..1100).collect()).unwrap();
    std::fs::write(dir.join("long_run"), l.encode()).unwrap();
}
