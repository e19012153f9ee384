//! The VMM's own costs (issue #3 §9a/b): guest RAM set-up plus prefault per GiB for each
//! backing, and the time from starting a run to the guest's first instruction with the
//! built-in test guest. On a host with hardware virtualization these dominate a boot.
//!
//! `cargo bench -p segvmm --bench vmm`. Backings the host cannot give (empty hugetlb pool
//! and not root) are skipped with a message.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use segvmm::host::MmuRequest;
use segvmm::memory::{Backing, GuestRam, MemoryConfig};
use segvmm::vm::{self, Payload, VmConfig};

const GIB: u64 = 1 << 30;

fn memory_setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("guest_ram_setup_1GiB");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for backing in [
        Backing::Anon4k,
        Backing::Thp,
        Backing::Huge2m,
        Backing::Huge1g,
    ] {
        let cfg = MemoryConfig {
            size: GIB,
            backing,
            grow_pool: true,
            prefault: segvmm::memory::Prefault::On,
        };
        match GuestRam::new(&cfg) {
            Ok(r) => drop(r),
            Err(e) => {
                eprintln!("skipping {backing}: {e}");
                continue;
            }
        }
        g.bench_with_input(BenchmarkId::from_parameter(backing), &cfg, |b, cfg| {
            b.iter(|| GuestRam::new(cfg).expect("guest RAM"));
        });
    }
    g.finish();
}

fn boot_to_first_instruction(c: &mut Criterion) {
    if std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("skipping boot benchmarks: no /dev/kvm");
        return;
    }
    let mut g = c.benchmark_group("test_guest");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for backing in [Backing::Anon4k, Backing::Thp] {
        // time to the first KVM_RUN, as the run report measures it.
        g.bench_function(
            BenchmarkId::new("vmm_setup_to_first_instruction_64MiB", backing),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        let r = vm::run(VmConfig {
                            memory: MemoryConfig {
                                size: 64 << 20,
                                backing,
                                grow_pool: false,
                                prefault: segvmm::memory::Prefault::On,
                            },
                            vcpus: 1,
                            mmu: MmuRequest::Auto,
                            timeout: Some(Duration::from_secs(30)),
                            echo_console: false,
                            stdin: false,
                            payload: Payload::TestGuest {
                                mode: String::new(),
                            },
                            mmio: None,
                            started: Some(started),
                            api_socket: None,
                            track_dirty: None,
                            disks: Vec::new(),
                            nets: Vec::new(),
                            vsock: None,
                        })
                        .expect("test guest run");
                        total += Duration::from_secs_f64(r.boot_ms / 1e3);
                    }
                    total
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, memory_setup, boot_to_first_instruction);
criterion_main!(benches);
