//! Speed of the placement simulator on the shipped Azure 2017 sample (issue #7: the whole
//! 259k-VM sample on an auto-sized cluster of 256 GiB hosts in under 10 s on one core).
//!
//! Run: `cargo bench -p segment-mmu --bench placement`. Each iteration is one full
//! simulation (about 520k events); parsing is measured separately.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use segment_mmu::placement::size::GIB;
use segment_mmu::placement::{azure_flavors, simulate, ClusterSpec, Config, Fit, Workload};

fn data() -> (PathBuf, PathBuf) {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/azure-v1-flavors");
    (d.join("v1.dev.txt"), d.join("v1.dev.c2100000.txt"))
}

fn load() -> Workload {
    let (t, l) = data();
    match azure_flavors::load(&t, &l, None, None, 1) {
        Ok(w) => w,
        Err(e) => panic!("shipped trace: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let w = load();
    let mut spec = ClusterSpec {
        hosts: 0,
        host_memory: 256 * GIB,
        reserved: GIB,
        align: 2 << 20,
        bad_pages_per_host: 0,
        seed: 1,
    };
    spec.hosts = spec.auto_hosts(&w, 0.9).unwrap_or(1);

    let mut g = c.benchmark_group("placement");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("parse_azure_v1_sample", |b| b.iter(load));
    for fit in Fit::ALL {
        for compaction in [false, true] {
            let cfg = Config {
                host: fit.host(),
                extent: fit.extent(),
                compaction,
                balloon: compaction,
                ..Config::default()
            };
            let name = format!(
                "azure_v1_259k_vms_{fit}{}",
                if compaction {
                    "_compaction_balloon"
                } else {
                    ""
                }
            );
            g.bench_function(name, |b| b.iter(|| simulate(&w, &spec, cfg.clone())));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
