//! Ptsnap pause time against guest size (issue #6: "under 100 ms for a 16 GiB guest
//! whose tables map all of it").
//!
//! Each run boots the measurement guest with its buffer mapped by 4 KiB guest pages over
//! all of guest RAM (the worst case: 8 bytes of table per 4 KiB, 32 MiB of last-level
//! tables at 16 GiB), guest RAM *not* prefaulted and `touch` asked for one page: the
//! tables map every byte while the host backs only the pages the guest and the VMM really
//! touch (tens of MiB), so a 16 GiB guest runs on a host with less free memory than that.
//! After its timed part the guest asks for a page-table capture; the run records how long
//! the guest was stopped (`paused_ms`: the page-table copy) and the time from the request
//! to the written file (`ms`: adds the host-physical runs, encoding and writing, done
//! after the guest resumed).
//!
//! ```sh
//! cargo bench -p segvmm --bench ptsnap                        # 256M,1G, 3 repeats
//! cargo bench -p segvmm --bench ptsnap -- --sizes 1G,4G,8G,12G,16G --repeat 3
//! ```
//!
//! `SEGVMM_PTSNAP_SIZES` and `SEGVMM_PTSNAP_REPEAT` do the same as the options. Sizes
//! are interleaved within each repeat, so a slow drift of a shared host does not land on
//! one size. Nothing here runs under `cargo test`: the large sizes are only run when asked
//! for. Without /dev/kvm it says so and exits 0.

use std::time::Duration;

use segvmm::memory::Backing;
use segvmm::probe::device::PtsnapHook;
use segvmm::probe::guest::{self, GuestOptions, GuestSpec};
use segvmm::probe::layout::PageSize;
use segvmm::probe::WorkloadSpec;
use workloads::kernels::Workload;

/// Sizes run when none are given: small enough for any machine and for a quick check.
const DEFAULT_SIZES: &str = "256M,1G";
const DEFAULT_REPEAT: u32 = 3;

/// One ptsnap of one run.
struct Sample {
    paused_ms: f64,
    ms: f64,
    table_pages: usize,
    bytes: u64,
    resident_mib: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    segment_mmu::units::parse_size(s)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad size {s:?} (e.g. 512M, 16G)"))
}

/// Sizes and repeats from `--sizes`/`--repeat`, else the environment, else the defaults.
fn options() -> Result<(Vec<u64>, u32), String> {
    let mut sizes = std::env::var("SEGVMM_PTSNAP_SIZES").unwrap_or_else(|_| DEFAULT_SIZES.into());
    let mut repeat = std::env::var("SEGVMM_PTSNAP_REPEAT").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => sizes = args.next().ok_or("--sizes needs a value")?,
            "--repeat" => repeat = args.next().ok_or("--repeat needs a value")?,
            // `cargo bench` passes --bench; filters and other harness options do not apply.
            _ => {}
        }
    }
    let sizes = sizes
        .split(',')
        .map(parse_size)
        .collect::<Result<Vec<_>, _>>()?;
    let repeat = if repeat.is_empty() {
        DEFAULT_REPEAT
    } else {
        repeat
            .parse()
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| format!("bad repeat {repeat:?}"))?
    };
    Ok((sizes, repeat))
}

fn run_one(size: u64, dir: &std::path::Path) -> Result<Sample, String> {
    let spec = GuestSpec {
        work: WorkloadSpec {
            workload: Workload::Touch,
            footprint: size,
            seed: 42,
            count: Some(1),
        },
        guest_pages: PageSize::Size4K,
    };
    let file = dir.join(format!("{}M.ptsnap", size >> 20));
    let f = file.clone();
    let hook: PtsnapHook = std::sync::Arc::new(move |_| Ok(Some(f.clone())));
    let opts = GuestOptions {
        backing: Backing::Anon4k,
        timeout: Duration::from_secs(300),
        ptsnap: Some(hook),
        ..GuestOptions::default()
    };
    let run = guest::run_with_prefault(spec, &opts, false).map_err(|e| e.to_string())?;
    run.measurement.as_ref().map_err(|e| e.to_string())?;
    let s = run
        .report
        .ptsnaps
        .first()
        .ok_or("the guest's ptsnap was not taken")?;
    // The files are large (32 MiB at 16 GiB); only their size matters here.
    let _ = std::fs::remove_file(&file);
    Ok(Sample {
        paused_ms: s.paused_ms,
        ms: s.ms,
        table_pages: s.table_pages,
        bytes: s.bytes,
        resident_mib: run.report.memory.rss_bytes >> 20,
    })
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!(
        "{med:.1} [{:.1}–{:.1}]",
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0)
    )
}

fn main() {
    let (sizes, repeat) = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ptsnap bench: {e}");
            std::process::exit(2);
        }
    };
    if std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("skipping the ptsnap benchmark: no /dev/kvm");
        return;
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ptsnap bench: temporary directory: {e}");
            std::process::exit(1);
        }
    };
    let mut samples: Vec<Vec<Sample>> = sizes.iter().map(|_| Vec::new()).collect();
    for r in 0..repeat {
        for (i, &size) in sizes.iter().enumerate() {
            match run_one(size, dir.path()) {
                Ok(s) => {
                    println!(
                        "{:>6} MiB #{}: paused {:7.2} ms, total {:7.2} ms, {} table pages, file {:.1} MiB, guest RAM resident {} MiB",
                        size >> 20,
                        r + 1,
                        s.paused_ms,
                        s.ms,
                        s.table_pages,
                        s.bytes as f64 / (1u64 << 20) as f64,
                        s.resident_mib
                    );
                    samples[i].push(s);
                }
                Err(e) => eprintln!("{:>6} MiB #{}: failed: {e}", size >> 20, r + 1),
            }
        }
    }
    println!("\n| guest RAM mapped | repeats | paused ms, median [min–max] | request to file ms | table pages |");
    println!("|---|---|---|---|---|");
    for (size, s) in sizes.iter().zip(&samples) {
        if s.is_empty() {
            println!("| {} MiB | 0 | – | – | – |", size >> 20);
            continue;
        }
        println!(
            "| {} MiB | {} | {} | {} | {} |",
            size >> 20,
            s.len(),
            stats(s.iter().map(|x| x.paused_ms).collect()),
            stats(s.iter().map(|x| x.ms).collect()),
            s[0].table_pages
        );
    }
}
