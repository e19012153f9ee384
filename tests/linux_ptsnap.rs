//! A live Linux guest's page-table capture against the guest's own /proc/meminfo (issue #6,
//! item 5).
//!
//! The small kernel boots the bench initramfs, whose /init maps and populates a buffer, runs
//! a short chase over it, reads /proc/meminfo, prints `SEGVMM-MEMINFO …` and then spins in
//! ring 3 (`segvmm.meminfo=1 segvmm.hold_ms=…`), so its CR3 is loaded and its tables stay as
//! they were when the kernel reported them. The test then takes a ptsnap over the API
//! socket, ends the run (`shutdown`), and checks it with `segment_mmu::census`:
//!
//! * **Direct map: exact in total and per page size, after one documented correction.**
//!   The kernel-half mappings at `va = pa + PAGE_OFFSET` sum to DirectMap4k, DirectMap2M
//!   and DirectMap1G together, to the kB. Per size, meminfo's 4k figure is higher (and its
//!   2M figure lower) by exactly 2 MiB for every 2 MiB page of the *kernel image's*
//!   mapping (`__START_KERNEL_map`) that CPA split into 4 KiB pages: 6.1's
//!   `__split_large_page` counts a split as a direct-map split whenever
//!   `virt_addr_valid(address)`, which is true for kernel-image addresses too, although
//!   the direct map itself keeps that 2 MiB page. Measured (256 MiB, small 6.1 kernel):
//!   meminfo 6144 / 256000 kB (no DirectMap1G line), ptsnap 4096 / 258048 kB, one
//!   kernel-image page split: the one at `_sdata` (.data, the freed init sections, .bss).
//!   The direct map's own 4 KiB parts are its first 2 MiB (the ISA range) and the alias of
//!   that same image page, split with it.
//! * **PageTables: exact.** 6.1 counts (`pgtable_pte/pmd_page_ctor`) every PTE and PMD
//!   page made for a process, PMD pages made for the kernel after boot with
//!   `pmd_alloc_one(&init_mm)`, and nothing else: no PGD or PUD page, no kernel PTE page,
//!   no table built at boot from memblock or in the image (direct map, vmemmap, fixmap,
//!   cpu_entry_area). So PageTables in pages is the sum of the user half's PT and PD pages
//!   in the ptsnap, the kernel half's PD pages in the vmalloc area, and the two pages of
//!   text_poke's `poking_mm` (one PMD, one PTE page, made at boot, in no process's
//!   tables). Measured: 11 pages = 5 PT + 3 PD + 1 vmalloc PD + 2. The user half's PDPT
//!   pages (2 or 3, depending on ASLR) are not counted and indeed leave the figure
//!   unchanged. /init reads `/proc/sys/vm/stat_refresh` first: without it the figure
//!   lagged by one page (10), because per-CPU vmstat deltas reach the global counter only
//!   past a threshold or at the next periodic fold; a guest that could not refresh
//!   (`refreshed=0`) is allowed that threshold.
//! * The user half maps the whole buffer /init reported (`data_va`, `data_bytes`).
//!
//! A run takes ~15-35 s (boot ~12 s, populating 4 MiB ~3.5 s); the ptsnap itself a few
//! ms (printed with `--nocapture`).
//!
//! Without the kernel artifacts (guest-kernels/build.sh) or /dev/kvm it skips with the
//! reason, except in CI (CI=true), where missing artifacts are a failure.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{artifact, have_kvm, run, segvmm, Reap};
use segment_mmu::census::tables;
use segment_mmu::enumerate::MappingRange;
use segment_mmu::paging::PageSize;
use segment_mmu::ptsnap::Ptsnap;

/// Linux's `PAGE_OFFSET` on x86-64 with 4-level paging and without KASLR (the small
/// kernel has `CONFIG_RANDOMIZE_BASE` off): where the direct map starts.
const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;

/// The kernel image's own mapping (`__START_KERNEL_map` + `KERNEL_IMAGE_SIZE`, 512 MiB
/// without KASLR).
const KERNEL_IMAGE: Range<u64> = 0xffff_ffff_8000_0000..0xffff_ffff_a000_0000;

/// The vmalloc area (`VMALLOC_START`..`VMALLOC_END`, 32 TiB with 4-level paging).
const VMALLOC: Range<u64> = 0xffff_c900_0000_0000..0xffff_e900_0000_0000;

/// Table pages of text_poke's private mm (`poking_mm`, made by `poking_init` at boot:
/// one PMD and one PTE page, counted in PageTables, never in /init's tables). Read from
/// the 6.1 source, not seen: no ptsnap reaches that mm; the measured figure is exactly
/// this much above what /init's tables account for.
const POKING_MM_PAGES: u64 = 2;

/// Most pages PageTables may lag by without `stat_refresh`: the per-CPU vmstat threshold
/// (`2 * fls(cpus) * (1 + fls(zone MiB / 128))`: 4 for one vCPU and 256 MiB; 6 allowed).
const VMSTAT_DRIFT: u64 = 6;

/// The chase buffer /init maps with MAP_POPULATE: 1024 guest page faults, ~3.5 s here.
const FOOTPRINT: u64 = 4 << 20;

/// How long /init holds in ring 3 at most; the test ends the run long before.
const HOLD_MS: u64 = 600_000;

/// Longest wait for the MEMINFO line (boot ~12 s plus populating the buffer, on a shared
/// 2-core host where every guest ring-0 instruction is emulated).
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// The fields of the `SEGVMM-MEMINFO` line (kB as /proc/meminfo gives them).
#[derive(Debug, Default)]
struct Meminfo {
    page_tables_kb: u64,
    direct_4k_kb: u64,
    direct_2m_kb: u64,
    /// The kernel prints DirectMap1G only when the CPU has 1 GiB pages; absent means 0.
    direct_1g_kb: u64,
    /// /proc/sys/vm/stat_refresh was read first: PageTables is exact.
    refreshed: bool,
    data_va: u64,
    data_bytes: u64,
}

fn parse_meminfo(line: &str) -> Meminfo {
    let mut m = Meminfo::default();
    let rest = &line[line.find("SEGVMM-MEMINFO").unwrap()..];
    for kv in rest.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=').unwrap();
        let n = || v.parse::<u64>().unwrap();
        match k {
            "PageTables" => m.page_tables_kb = n(),
            "DirectMap4k" => m.direct_4k_kb = n(),
            "DirectMap2M" => m.direct_2m_kb = n(),
            "DirectMap1G" => m.direct_1g_kb = n(),
            "data_va" => m.data_va = u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap(),
            "data_bytes" => m.data_bytes = n(),
            "refreshed" => m.refreshed = v == "1",
            _ => {}
        }
    }
    m
}

/// Whether `ranges` (sorted, as enumerated) map every byte of `start..end`, user-accessible.
fn user_covers(ranges: &[MappingRange], start: u64, end: u64) -> bool {
    let mut at = start;
    for r in ranges.iter().filter(|r| r.user) {
        if r.va <= at && at < r.va + r.len {
            at = r.va + r.len;
        }
        if at >= end {
            return true;
        }
    }
    false
}

/// KVM's TSC frequency, for /init to time its hold with `rdtsc` alone.
fn tsc_khz() -> Option<u64> {
    let (code, out, _) = run(&["host", "--json"]);
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["tsc_khz"].as_u64()
}

#[test]
fn linux_ptsnap_matches_the_guests_meminfo() {
    if !have_kvm() {
        return;
    }
    let (Some(kernel), Some(initrd)) = (artifact("small-kernel"), artifact("initramfs-bench.cpio"))
    else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    let snap_path = d.path().join("linux.ptsnap");
    let report = d.path().join("report.json");
    let mut cmdline = format!(
        "console=ttyS0 reboot=k panic=-1 segvmm.workload=chase segvmm.footprint={FOOTPRINT} segvmm.seed=1 segvmm.count=100000 segvmm.meminfo=1 segvmm.hold_ms={HOLD_MS}"
    );
    if let Some(khz) = tsc_khz() {
        cmdline.push_str(&format!(" segvmm.tsc_khz={khz}"));
    }
    let started = Instant::now();
    // Without --quiet the guest console goes to stdout, line by line.
    let mut child = segvmm()
        .arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--memory",
            "256M",
            "--timeout",
            "1200",
            "--cmdline",
            &cmdline,
        ])
        .arg("--api-socket")
        .arg(&sock)
        .arg("--snapshot-dir")
        .arg(d.path())
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn segvmm run");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut vmm = Reap::new(child);
    let (tx, rx) = mpsc::channel::<String>();
    let console = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("SEGVMM-MEMINFO")
                || line.contains("SEGVMM-RESULT")
                || line.contains("SEGVMM-ERROR")
            {
                let _ = tx.send(line.clone());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let errs = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let line = rx.recv_timeout(BOOT_LIMIT);
    let line = match line {
        Ok(l) if l.contains("SEGVMM-MEMINFO") => l,
        other => {
            let _ = vmm.child().kill();
            let _ = vmm.child().wait();
            panic!(
                "no SEGVMM-MEMINFO line ({other:?}); an initramfs-bench.cpio built before \
                 segvmm.meminfo existed prints none: rebuild it with \
                 guest-kernels/build.sh --bench-initramfs\nconsole:\n{}\nstderr:\n{}",
                console.join().unwrap_or_default(),
                errs.join().unwrap_or_default()
            );
        }
    };
    let booted = started.elapsed();
    let (code, out, err) = run(&[
        "ptsnap",
        "--api-socket",
        sock.to_str().unwrap(),
        "--out",
        snap_path.to_str().unwrap(),
        "--shutdown",
    ]);
    assert_eq!(code, 0, "segvmm ptsnap: {out} {err}");
    let status = vmm.child().wait().unwrap();
    let log = console.join().unwrap();
    let errs = errs.join().unwrap();
    assert_eq!(status.code(), Some(0), "segvmm run: {errs}\n{log}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["exit_reason"]["kind"], "shutdown", "{errs}");
    let taken = &r["ptsnaps"][0];
    eprintln!(
        "MEMINFO after {:.1} s: {line}\nptsnap: {out}report: {} ms, {} ms paused, {} table pages",
        booted.as_secs_f64(),
        taken["ms"],
        taken["paused_ms"],
        taken["table_pages"]
    );

    let m = parse_meminfo(&line);
    let snap = Ptsnap::from_bytes(&std::fs::read(&snap_path).unwrap()).unwrap();
    assert_eq!(snap.spaces.len(), 1, "one vCPU, one CR3");
    let c = snap.census(0).unwrap();
    let dm = c.direct_map.expect("no kernel-half mappings");
    let ranges = snap.mappings(0).unwrap();
    let list = tables(&snap, &snap.walk_config(), snap.spaces[0].cr3).unwrap();
    let t = c.tables;
    // 2 MiB blocks of the kernel image's mapping that CPA split into 4 KiB pages.
    let image_splits = ranges
        .iter()
        .filter(|r| r.size == PageSize::Size4K && KERNEL_IMAGE.contains(&r.va))
        .flat_map(|r| (r.va >> 21)..=((r.va + r.len - 1) >> 21))
        .collect::<BTreeSet<u64>>()
        .len() as u64;
    let vmalloc_pmds = list
        .iter()
        .filter(|t| t.level == 2 && VMALLOC.contains(&t.va))
        .count() as u64;
    eprintln!(
        "direct map at {:#x}, gpa {:#x}-{:#x}: ptsnap 4K {} kB, 2M {} kB, 1G {} kB; \
         meminfo {} / {} / {} kB; kernel-image 2 MiB pages split: {image_splits}\n\
         tables: user {:?}, kernel {:?}, {} in all; vmalloc PMD pages {vmalloc_pmds}; \
         PageTables {} kB = {} pages (refreshed={})",
        dm.offset,
        dm.pa_start,
        dm.pa_end,
        dm.bytes.bytes_4k >> 10,
        dm.bytes.bytes_2m >> 10,
        dm.bytes.bytes_1g >> 10,
        m.direct_4k_kb,
        m.direct_2m_kb,
        m.direct_1g_kb,
        t.user,
        t.kernel,
        t.total,
        m.page_tables_kb,
        m.page_tables_kb / 4,
        m.refreshed
    );

    // The direct map.
    assert_eq!(dm.offset, PAGE_OFFSET);
    let kb = |b: u64| b >> 10;
    let split_kb = image_splits * 2048;
    assert_eq!(
        m.direct_4k_kb + m.direct_2m_kb + m.direct_1g_kb,
        kb(dm.bytes.total()),
        "direct-map totals differ"
    );
    assert_eq!(
        m.direct_4k_kb,
        kb(dm.bytes.bytes_4k) + split_kb,
        "DirectMap4k"
    );
    assert_eq!(
        m.direct_2m_kb + split_kb,
        kb(dm.bytes.bytes_2m),
        "DirectMap2M"
    );
    assert_eq!(m.direct_1g_kb, kb(dm.bytes.bytes_1g), "DirectMap1G");

    // The buffer /init reported is mapped, user-accessible, every page of it.
    assert_eq!(m.data_bytes, FOOTPRINT);
    assert!(
        user_covers(&ranges, m.data_va, m.data_va + m.data_bytes),
        "the buffer {:#x}+{} is not fully mapped in the ptsnap",
        m.data_va,
        m.data_bytes
    );

    // Page-table pages.
    let counted = t.user[0] + t.user[1] + vmalloc_pmds + POKING_MM_PAGES;
    let reported = m.page_tables_kb / 4;
    if m.refreshed {
        assert_eq!(reported, counted, "PageTables");
    } else {
        assert!(
            reported.abs_diff(counted) <= VMSTAT_DRIFT,
            "PageTables {reported} pages vs {counted} from the ptsnap"
        );
    }
}
