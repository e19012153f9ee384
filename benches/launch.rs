//! Launch cost (issue #17, "Speed"): VMM set-up to the first guest instruction for each
//! guest size, backing and prefault mode, side by side with the prefault throughput, this
//! machine's memory bandwidth (a plain memset in the same run) and the VMM's resident
//! memory beside guest RAM.
//!
//! Every sample is one `segvmm run --guest test-triple` of the release binary (a guest that
//! stops at its first instructions, so nothing but set-up is paid), read back from its
//! `--report`: `boot_ms` (VMM start to the first KVM_RUN), the `memory` step, the prefault
//! figures and `vmm_rss_bytes`/`vmm_anon_bytes`. Figures are medians over the repeats
//! (min-max beside them); sizes, backings and modes are interleaved within each repeat so
//! a slow drift of a shared host does not land on one cell. Hugetlb backings are skipped,
//! with a note, where the pool has too few free pages (the pools are not grown here).
//!
//! ```sh
//! cargo bench -p segvmm --bench launch                              # 256M,1G,4G
//! cargo bench -p segvmm --bench launch -- --sizes 256M --repeat 3
//! ```
//!
//! Prefault-on cells run `--repeat` times (default 5), prefault-off cells at least 10
//! times (the issue's goal is a median of 10). Without /dev/kvm it says so and exits 0.

use std::collections::BTreeMap;
use std::process::Command;

use segvmm::memory::{hugetlb_free, prefault::online_cpus, Backing};

const DEFAULT_SIZES: &str = "256M,1G,4G";
const DEFAULT_REPEAT: usize = 5;
const OFF_REPEAT: usize = 10;

/// One run's figures.
#[derive(Default, Clone)]
struct Sample {
    boot_ms: f64,
    memory_ms: f64,
    kvm_vm_ms: f64,
    prefault_gib_s: Option<f64>,
    memset_gib_s: Option<f64>,
    resident_mib: f64,
    vmm_rss_mib: f64,
    vmm_anon_mib: f64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad size {s:?} (e.g. 256M, 4G)"))
}

fn mib(b: &serde_json::Value) -> f64 {
    b.as_f64().unwrap_or(0.0) / (1u64 << 20) as f64
}

/// One `segvmm run` of the triple-faulting test guest; its report's figures.
fn sample(size: u64, backing: Backing, prefault: &str) -> Result<Sample, String> {
    let dir = std::env::temp_dir().join(format!("segvmm-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let json = dir.join("r.json");
    let _ = std::fs::remove_file(&json);
    let out = Command::new(env!("CARGO_BIN_EXE_segvmm"))
        .args([
            "run",
            "--guest",
            "test-triple",
            "--quiet",
            "--timeout",
            "60",
        ])
        .args(["--memory", &format!("{}M", size >> 20)])
        .args(["--backing", &backing.to_string(), "--prefault", prefault])
        .arg("--report")
        .arg(&json)
        .output()
        .map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&json).map_err(|_| {
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines().last().unwrap_or("no report").to_string()
    })?;
    let r: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let steps = r["setup_ms"].as_array().cloned().unwrap_or_default();
    let step_ms = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .and_then(|s| s["ms"].as_f64())
            .unwrap_or(0.0)
    };
    let p = &r["memory"]["prefault"];
    Ok(Sample {
        boot_ms: r["boot_ms"].as_f64().unwrap_or(0.0),
        memory_ms: step_ms("memory"),
        kvm_vm_ms: step_ms("kvm_vm"),
        prefault_gib_s: p["gib_per_s"].as_f64(),
        memset_gib_s: p["memset_gib_per_s"].as_f64(),
        resident_mib: mib(&p["resident_at_start_bytes"]),
        vmm_rss_mib: mib(&r["vmm_rss_bytes"]),
        vmm_anon_mib: mib(&r["vmm_anon_bytes"]),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn opt_median(v: impl Iterator<Item = Option<f64>>) -> String {
    let v: Vec<f64> = v.flatten().collect();
    if v.is_empty() {
        "-".into()
    } else {
        format!("{:.2}", median(v))
    }
}

/// Why `backing` cannot give `size` here, if it cannot.
fn skip_reason(size: u64, backing: Backing) -> Option<String> {
    let page = backing.page_size();
    if size % page != 0 {
        return Some(format!("{} MiB is not a multiple of the page", size >> 20));
    }
    if matches!(backing, Backing::Huge2m | Backing::Huge1g) {
        let (need, free) = (size / page, hugetlb_free(page));
        if free < need {
            return Some(format!("pool has {free} free pages, needs {need}"));
        }
    }
    None
}

/// (size, index into BACKINGS, prefault mode).
type Cell = (u64, usize, String);

const BACKINGS: [Backing; 4] = [
    Backing::Anon4k,
    Backing::Thp,
    Backing::Huge2m,
    Backing::Huge1g,
];

fn print_table(cells: &BTreeMap<Cell, Vec<Sample>>) {
    println!(
        "{:>6} {:>4} {:>10} {:>3} {:>22} {:>10} {:>9} {:>9} {:>9} {:>13}",
        "size",
        "back",
        "prefault",
        "n",
        "set-up ms med (min-max)",
        "memory ms",
        "pf GiB/s",
        "memset",
        "res. MiB",
        "VMM rss/anon"
    );
    for ((size, b, mode), s) in cells {
        let backing = BACKINGS[*b];
        let boot: Vec<f64> = s.iter().map(|x| x.boot_ms).collect();
        let (lo, hi) = boot
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
        let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
        println!(
            "{:>5}M {:>4} {:>10} {:>3} {:>8.1} ({:>5.1}-{:>6.1}) {:>10.1} {:>9.1} {:>9} {:>9} {:>9.0} {:>6.2}/{:.2}",
            size >> 20,
            backing.to_string(),
            mode,
            s.len(),
            median(boot),
            lo,
            hi,
            m(|x| x.memory_ms),
            m(|x| x.kvm_vm_ms),
            opt_median(s.iter().map(|x| x.prefault_gib_s)),
            opt_median(s.iter().map(|x| x.memset_gib_s)),
            m(|x| x.resident_mib),
            m(|x| x.vmm_rss_mib),
            m(|x| x.vmm_anon_mib),
        );
    }
}

struct Opts {
    sizes: Vec<u64>,
    repeat: usize,
}

fn opts() -> Result<Opts, String> {
    let mut sizes = std::env::var("SEGVMM_LAUNCH_SIZES").unwrap_or(DEFAULT_SIZES.into());
    let mut repeat = std::env::var("SEGVMM_LAUNCH_REPEAT").unwrap_or(DEFAULT_REPEAT.to_string());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => sizes = args.next().ok_or("--sizes needs a value")?,
            "--repeat" => repeat = args.next().ok_or("--repeat needs a value")?,
            _ => {} // cargo bench passes --bench
        }
    }
    Ok(Opts {
        sizes: sizes.split(',').map(parse_size).collect::<Result<_, _>>()?,
        repeat: repeat
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or("bad --repeat")?,
    })
}

fn main() -> Result<(), String> {
    if std::fs::File::open("/dev/kvm").is_err() {
        println!("launch bench: /dev/kvm is not usable here; nothing measured");
        return Ok(());
    }
    let o = opts()?;
    let n = online_cpus();
    let modes = [
        "off".to_string(),
        "threads=1".into(),
        format!("threads={n}"),
    ];
    let mut cells: BTreeMap<Cell, Vec<Sample>> = BTreeMap::new();
    let mut notes = Vec::new();
    for i in 0..o.repeat.max(OFF_REPEAT) {
        for &size in &o.sizes {
            for (b, &backing) in BACKINGS.iter().enumerate() {
                if let Some(why) = skip_reason(size, backing) {
                    if i == 0 {
                        notes.push(format!("skipped {} MiB {backing}: {why}", size >> 20));
                    }
                    continue;
                }
                for mode in modes.iter().filter(|m| i < o.repeat || *m == "off") {
                    match sample(size, backing, mode) {
                        Ok(s) => cells.entry((size, b, mode.clone())).or_default().push(s),
                        Err(e) if i == 0 => {
                            notes.push(format!("{} MiB {backing} {mode}: {e}", size >> 20))
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        eprint!(".");
    }
    eprintln!();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "launch bench: {n} online CPUs, load average {}",
        load.trim()
    );
    println!(
        "set-up = VMM start to the first KVM_RUN (report boot_ms); memory = its guest-RAM step;"
    );
    println!(
        "pf = prefault throughput, memset = plain memset of 256 MiB (or all RAM) in the same run;"
    );
    println!(
        "res. = guest RAM resident at start; VMM rss/anon = resident memory beside guest RAM, MiB"
    );
    print_table(&cells);
    for note in notes {
        println!("note: {note}");
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("segvmm-launch-{}", std::process::id())),
    );
    Ok(())
}
