//! Issue #13, "Inputs that allocate without bound or crash": each row is a hostile input
//! given to the release binary, which must exit 2 with one line naming the problem, and
//! where the row was about memory, with a small peak RSS (measured by `/usr/bin/time -v`).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{have_kvm, segvmm};

/// Runs segvmm with `args` under `/usr/bin/time -v` when present; returns (exit code,
/// stderr, peak RSS in MiB if measured).
fn run_rss(args: &[&str]) -> (i32, String, Option<u64>) {
    let timed = Path::new("/usr/bin/time").exists();
    let out = if timed {
        Command::new("/usr/bin/time")
            .arg("-v")
            .arg(env!("CARGO_BIN_EXE_segvmm"))
            .args(args)
            .output()
    } else {
        segvmm().args(args).output()
    }
    .expect("spawn segvmm");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb / 1024);
    if !timed {
        eprintln!("NOTE: /usr/bin/time missing; peak RSS not checked");
    }
    (out.status.code().unwrap_or(-1), err, rss)
}

/// Asserts exit 2, an error containing every one of `words`, and (when measured) a peak
/// RSS below `max_mib`.
fn assert_refused(args: &[&str], words: &[&str], max_mib: u64) {
    let (code, err, rss) = run_rss(args);
    assert_eq!(code, 2, "segvmm {args:?}: exit {code}, stderr:\n{err}");
    for w in words {
        assert!(err.contains(w), "segvmm {args:?}: no {w:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    if let Some(rss) = rss {
        eprintln!("segvmm {args:?}: peak RSS {rss} MiB");
        assert!(
            rss < max_mib,
            "segvmm {args:?}: peak RSS {rss} MiB >= {max_mib}"
        );
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A bzImage (boot header only) around a gzip payload of `zeros` zero bytes whose size
/// trailer says `trailer`.
fn gzip_bzimage(zeros: usize, trailer: u32) -> Vec<u8> {
    let deflate = miniz_oxide::deflate::compress_to_vec(&vec![0u8; zeros], 6);
    let mut payload = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    payload.extend(&deflate);
    payload.extend(0u32.to_le_bytes()); // CRC, unchecked
    payload.extend(trailer.to_le_bytes());
    let mut img = vec![0u8; 5 * 512];
    img[0x1f1] = 4;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img.extend(payload);
    img
}

/// A minimal x86-64 ELF executable: one PT_LOAD of `hlt` at 16 MiB, entry `entry`.
fn tiny_elf(entry: u64) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend(2u16.to_le_bytes()); // ET_EXEC
    e.extend(62u16.to_le_bytes()); // x86-64
    e.extend(1u32.to_le_bytes());
    e.extend(entry.to_le_bytes());
    e.extend(64u64.to_le_bytes()); // phoff
    e.extend(0u64.to_le_bytes()); // shoff
    e.extend(0u32.to_le_bytes());
    e.extend(64u16.to_le_bytes());
    e.extend(56u16.to_le_bytes());
    e.extend(1u16.to_le_bytes());
    e.extend(64u16.to_le_bytes());
    e.extend(0u16.to_le_bytes());
    e.extend(0u16.to_le_bytes());
    // PT_LOAD, flags RX, offset 120, vaddr = paddr = 16 MiB, 1 byte.
    e.extend(1u32.to_le_bytes());
    e.extend(5u32.to_le_bytes());
    e.extend(120u64.to_le_bytes());
    e.extend((16u64 << 20).to_le_bytes());
    e.extend((16u64 << 20).to_le_bytes());
    e.extend(1u64.to_le_bytes());
    e.extend(1u64.to_le_bytes());
    e.extend(4096u64.to_le_bytes());
    e.push(0xf4);
    e
}

const SMALL: &[&str] = &[
    "run",
    "--memory",
    "64M",
    "--backing",
    "4k",
    "--timeout",
    "5",
];

#[test]
fn bzimage_bomb_is_capped_by_its_trailer_and_guest_ram() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Trailer claims 2 GiB: refused before decompressing (guest RAM is 64 MiB).
    let big = write(dir.path(), "big.bz", &gzip_bzimage(4096, 2 << 30));
    let mut a = SMALL.to_vec();
    a.extend(["--bzimage", "host-decompress", "--kernel", &big]);
    assert_refused(&a, &["2147483648 bytes", "cap"], 200);
    // Trailer says 1 MiB, payload inflates to 256 MiB: stopped at the trailer.
    let bomb = write(dir.path(), "bomb.bz", &gzip_bzimage(256 << 20, 1 << 20));
    let mut a = SMALL.to_vec();
    a.extend(["--bzimage", "host-decompress", "--kernel", &bomb]);
    assert_refused(&a, &["inflates past", "1048576"], 200);
}

#[test]
fn initrd_size_is_checked_before_reading() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "k.elf", &tiny_elf(16 << 20));
    let initrd = dir.path().join("initrd");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(300 << 20)
        .unwrap(); // sparse: costs nothing to make
    let initrd = initrd.display().to_string();
    let mut a = SMALL.to_vec();
    a.extend(["--kernel", &kernel, "--initrd", &initrd]);
    assert_refused(
        &a,
        &["initrd", "314572800 bytes", "does not fit in guest memory"],
        200,
    );
}

#[test]
fn elf_entry_near_2_64_is_refused() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "k.elf", &tiny_elf(u64::MAX - 0xf));
    let mut a = SMALL.to_vec();
    a.extend(["--kernel", &kernel]);
    assert_refused(
        &a,
        &["entry point", "0xfffffffffffffff0", "outside guest memory"],
        200,
    );
}

#[test]
fn kernel_larger_than_guest_memory_is_refused_from_metadata() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("huge");
    let mut f = std::fs::File::create(&k).unwrap();
    f.write_all(b"\x7fELF").unwrap();
    f.set_len(1 << 30).unwrap();
    let k = k.display().to_string();
    let mut a = SMALL.to_vec();
    a.extend(["--kernel", &k]);
    assert_refused(&a, &["kernel", "1073741824 bytes", "cap"], 200);
}

/// A 16 KiB `.ptsnap` whose four tables each point all 512 entries at the next one:
/// 2^36 leaves, none contiguous with its neighbour.
fn fanout_ptsnap() -> Vec<u8> {
    let mut b = b"PTSNAP\r\n".to_vec();
    b.extend(1u32.to_le_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // cr4
    b.extend(0u64.to_le_bytes()); // efer
    b.extend(1u32.to_le_bytes());
    b.extend(0x1000u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(1u32.to_le_bytes()); // one RAM range, 16 MiB
    b.extend(0u64.to_le_bytes());
    b.extend((16u64 << 20).to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(4096u64.to_le_bytes());
    b.extend(u32::MAX.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    for t in 1..=4u64 {
        b.extend((t << 12).to_le_bytes());
        for i in 0..512u64 {
            let e = if t < 4 {
                ((t + 1) << 12) | 0x3
            } else {
                ((2 * i) << 12) | 0x3 // every other page: no two leaves coalesce
            };
            b.extend(e.to_le_bytes());
        }
    }
    let sum = fnv1a(&b);
    b.extend(sum.to_le_bytes());
    b
}

#[test]
fn ptsnap_with_shared_tables_hits_the_enumeration_cap() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "fan.ptsnap", &fanout_ptsnap());
    assert_refused(&["layout", "--ptsnap", &f], &["MAX_RANGES"], 400);
}

/// A hotness file with one interval holding one run of `pages` pages over 1 TiB of RAM.
fn long_run_hotness(pages: u32) -> Vec<u8> {
    let mut b = b"SEGVHOT\0".to_vec();
    b.extend(1u16.to_le_bytes());
    b.extend([12, 0]);
    b.extend(1_000_000u64.to_le_bytes());
    b.extend(4.0f64.to_bits().to_le_bytes());
    b.push(1);
    b.push(b'x');
    b.extend(1u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    b.extend(1u32.to_le_bytes()); // one interval
    b.extend(1u64.to_le_bytes());
    b.extend(pages.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    b.push(0); // gap 0
    let mut v = pages - 1; // len - 1, LEB128
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            b.push(byte);
            break;
        }
        b.push(byte | 0x80);
    }
    b.extend(0u32.to_le_bytes()); // no temperatures
    let sum = fnv1a(&b);
    b.extend(sum.to_le_bytes());
    b
}

#[test]
fn hotness_run_of_2_28_pages_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "run.hot", &long_run_hotness(1 << 28));
    assert!(std::fs::metadata(&f).unwrap().len() < 100);
    assert_refused(&["tier", "--hotness", &f], &["MAX_PAGE_INTERVALS"], 300);
}

#[test]
fn placement_caps_lifetimes_hosts_and_bad_pages() {
    let syn = "vms=10,rate=1,sizes=2G,lifetime=fixed:18446744073709551615";
    assert_refused(&["place", "--synthetic", syn], &["MAX_SECONDS"], 200);
    let syn = "vms=10,rate=1,sizes=2G,lifetime=fixed:100";
    assert_refused(
        &["place", "--synthetic", syn, "--hosts", "1000000000"],
        &["1000000000 hosts", "MAX_HOSTS"],
        200,
    );
    assert_refused(
        &["place", "--synthetic", syn, "--bad-pages", "1000000000"],
        &["1000000000 bad pages", "MAX_BAD_PAGES"],
        200,
    );
    assert_refused(
        &["place", "--synthetic", "vms=1000000000000"],
        &["MAX_VMS"],
        200,
    );
}

#[test]
fn huge_float_timeouts_and_intervals_are_errors() {
    for (args, word) in [
        (vec!["run", "--timeout", "1e300"], "--timeout"),
        (vec!["run", "--timeout", "inf"], "--timeout"),
        (vec!["run", "--timeout", "-5"], "--timeout"),
        (vec!["run", "--track-dirty", "1e300s"], "--track-dirty"),
        (
            vec!["bench", "--timeout", "1e20", "--out", "/nonexistent"],
            "--timeout",
        ),
    ] {
        assert_refused(&args, &[word], 100);
    }
}

#[test]
fn guest_exit_status_minus_one_is_a_failure() {
    // The mapping lives in the library; the CLI passes it through unchanged.
    use segvmm::vm::ExitReason;
    assert_eq!(ExitReason::GuestExit { status: -1 }.exit_code(), 125);
    assert_eq!(ExitReason::GuestExit { status: 1000 }.exit_code(), 125);
    assert_eq!(ExitReason::GuestExit { status: 7 }.exit_code(), 7);
    assert_eq!(ExitReason::GuestExit { status: 0 }.exit_code(), 0);
}
