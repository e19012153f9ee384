//! Integration tests of `segvmm run` with the built-in bare-metal test guest: every host
//! backing, the memory report, the host report, and every bad input of issue #3 (each a
//! one-line error naming the problem and a non-zero exit code, never a panic or a hang).

mod common;

use common::{have_kvm, is_root, run};

fn pool_free(kib: u64) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/kernel/mm/hugepages/hugepages-{kib}kB/free_hugepages"
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// Boots the test guest with `backing` and `memory`; checks the guest's own success
/// report, the exit code and the JSON report.
fn boot_with(backing: &str, memory: &str) -> Option<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let (code, out, err) = run(&[
        "run",
        "--guest",
        "test",
        "--backing",
        backing,
        "--memory",
        memory,
        "--grow-pool",
        "--timeout",
        "60",
        "--report",
        report.to_str().unwrap(),
    ]);
    if backing == "1g" && code != 0 && err.contains("could not grow") {
        eprintln!("SKIP 1g backing: this host could not grow its 1 GiB hugetlb pool: {err}");
        return None;
    }
    assert_eq!(code, 0, "backing {backing}: stdout {out}\nstderr {err}");
    assert!(out.contains("segvmm test guest: memory check ok"), "{out}");
    assert!(err.contains("guest exited with status 0"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["memory"]["requested_backing"], backing);
    assert_eq!(v["exit_reason"]["kind"], "guest_exit");
    let total: u64 = v["memory"]["bytes_by_page_size"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert!(total > 0, "no resident guest memory reported: {v}");
    assert!(v["kvm_stats"]["vcpu_total"]["exits"].as_u64().unwrap() > 0);
    Some(v)
}

#[test]
fn test_guest_boots_with_4k_backing() {
    if !have_kvm() {
        return;
    }
    let v = boot_with("4k", "64M").unwrap();
    assert_eq!(
        v["memory"]["bytes_by_page_size"]["4k"],
        64 << 20,
        "{}",
        v["memory"]
    );
}

#[test]
fn test_guest_boots_with_thp_backing() {
    if !have_kvm() {
        return;
    }
    let v = boot_with("thp", "64M").unwrap();
    // THP is best effort: what we got is reported, and it covers all of RAM.
    let m = v["memory"]["bytes_by_page_size"].as_object().unwrap();
    assert_eq!(
        m.values().map(|x| x.as_u64().unwrap()).sum::<u64>(),
        64 << 20
    );
}

#[test]
fn test_guest_boots_with_2m_hugetlb_and_reports_runs() {
    if !have_kvm() {
        return;
    }
    if !is_root() && pool_free(2048) < 32 {
        eprintln!("SKIP: not root and the 2 MiB pool has fewer than 32 free pages");
        return;
    }
    let v = boot_with("2m", "64M").unwrap();
    assert_eq!(v["memory"]["bytes_by_page_size"]["2m"], 64 << 20);
    if is_root() {
        let runs = v["memory"]["contiguous_runs"]
            .as_u64()
            .expect("contiguous_runs read from pagemap as root");
        // 2 MiB pages: at most one run per page, at least one.
        assert!((1..=32).contains(&runs), "{runs}");
        assert!(v["memory"]["largest_run_bytes"].as_u64().unwrap() >= 2 << 20);
    }
}

#[test]
fn test_guest_boots_with_1g_hugetlb_or_reports_why_not() {
    if !have_kvm() {
        return;
    }
    if !is_root() && pool_free(1048576) < 1 {
        eprintln!("SKIP: not root and the 1 GiB pool is empty");
        return;
    }
    if let Some(v) = boot_with("1g", "1G") {
        assert_eq!(v["memory"]["bytes_by_page_size"]["1g"], 1u64 << 30);
        if is_root() {
            assert_eq!(
                v["memory"]["contiguous_runs"], 1,
                "one 1 GiB page is one run"
            );
        }
    }
}

#[test]
fn host_names_module_and_mode() {
    if !have_kvm() {
        return;
    }
    let (code, out, _) = run(&["host", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let module = v["kvm_module"].as_str().unwrap();
    assert!(
        ["kvm_intel", "kvm_amd", "kvm_pvm"].contains(&module),
        "{module}"
    );
    assert!(["shadow", "tdp"].contains(&v["mmu_mode"].as_str().unwrap()));
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(module, "kvm_pvm");
        assert_eq!(v["mmu_mode"], "shadow");
        assert_eq!(v["guest_1g_pages"], false);
    }
    assert_eq!(v["kvm_api_version"], 12);
}

/// Asserts a one-line error naming `needle` and exit code `want`.
fn assert_error(args: &[&str], want: i32, needle: &str) {
    let (code, _out, err) = run(args);
    assert_eq!(code, want, "{args:?}: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("segvmm: error:") || l.contains(needle))
        .unwrap_or_default();
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!line.is_empty());
}

#[test]
fn bad_kernel_images() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert_error(
        &["run", "--kernel", "/nonexistent/vmlinuz", "--memory", "64M"],
        2,
        "No such file",
    );
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(100)).unwrap();
    assert_error(
        &["run", "--kernel", text.to_str().unwrap(), "--memory", "64M"],
        2,
        "not a Linux kernel",
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_error(
        &[
            "run",
            "--kernel",
            empty.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        2,
        "not a Linux kernel",
    );
    // A truncated bzImage: a valid boot header, then nothing.
    let mut bz = vec![0u8; 0x400];
    bz[0x1f1] = 4; // setup_sects
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bz[0x211] = 1; // loadflags: LOADED_HIGH
    let trunc = dir.path().join("truncated-bzImage");
    std::fs::write(&trunc, &bz).unwrap();
    assert_error(
        &[
            "run",
            "--kernel",
            trunc.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        2,
        "truncated or corrupt",
    );
    // A truncated ELF.
    let elf = dir.path().join("truncated.elf");
    std::fs::write(&elf, b"\x7fELF\x02\x01\x01\x00").unwrap();
    assert_error(
        &["run", "--kernel", elf.to_str().unwrap(), "--memory", "64M"],
        2,
        "truncated or corrupt",
    );
}

#[test]
fn initrd_larger_than_memory() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.cpio");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    // The test guest is a PVH ELF: a fine kernel for this check.
    let tg = dir.path().join("tg.elf");
    std::fs::write(&tg, segvmm::vm::TEST_GUEST).unwrap();
    assert_error(
        &[
            "run",
            "--kernel",
            tg.to_str().unwrap(),
            "--initrd",
            big.to_str().unwrap(),
            "--memory",
            "32M",
        ],
        2,
        "does not fit in guest memory",
    );
}

#[test]
fn bad_memory_sizes() {
    if !have_kvm() {
        return;
    }
    assert_error(
        &["run", "--guest", "test", "--memory", "0"],
        2,
        "memory size is zero",
    );
    assert_error(
        &[
            "run",
            "--guest",
            "test",
            "--memory",
            "3M",
            "--backing",
            "2m",
        ],
        2,
        "not a multiple of the 2m page size",
    );
    assert_error(
        &[
            "run",
            "--guest",
            "test",
            "--memory",
            "1536M",
            "--backing",
            "1g",
        ],
        2,
        "not a multiple of the 1g page size",
    );
    assert_error(
        &["run", "--guest", "test", "--memory", "4T"],
        2,
        "larger than this host can give",
    );
    assert_error(
        &["run", "--guest", "test", "--memory", "12Q"],
        2,
        "unknown unit",
    );
}

#[test]
fn hugetlb_pool_too_small() {
    if !have_kvm() {
        return;
    }
    let avail = segvmm::memory::host_available_bytes().unwrap_or(0);
    // More 2 MiB pages than the pool has free, but not more than the host has RAM.
    let want = (avail / 2) & !((2 << 20) - 1);
    if want / (2 << 20) <= pool_free(2048) || want == 0 {
        eprintln!(
            "SKIP: the 2 MiB pool already holds {} free pages",
            pool_free(2048)
        );
        return;
    }
    let size = format!("{}M", want >> 20);
    assert_error(
        &[
            "run",
            "--guest",
            "test",
            "--backing",
            "2m",
            "--memory",
            &size,
        ],
        2,
        "hugetlb pool too small",
    );
}

#[test]
fn refuses_a_mode_the_host_cannot_give() {
    if !have_kvm() {
        return;
    }
    let (_, out, _) = run(&["host", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let other = if v["mmu_mode"] == "shadow" {
        "tdp"
    } else {
        "shadow"
    };
    assert_error(
        &["run", "--guest", "test", "--memory", "64M", "--mmu", other],
        2,
        &format!("--mmu {other}"),
    );
    let (code, _, err) = run(&[
        "run",
        "--guest",
        "test",
        "--memory",
        "64M",
        "--mmu",
        v["mmu_mode"].as_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn guest_triple_fault_is_reported() {
    if !have_kvm() {
        return;
    }
    let (code, _, err) = run(&[
        "run",
        "--guest",
        "test-triple",
        "--memory",
        "64M",
        "--timeout",
        "60",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("triple-faulted"), "{err}");
}

#[test]
fn guest_hang_is_stopped_by_timeout() {
    if !have_kvm() {
        return;
    }
    let t = std::time::Instant::now();
    let (code, _, err) = run(&[
        "run",
        "--guest",
        "test-hang",
        "--memory",
        "64M",
        "--timeout",
        "2",
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("did not finish within 2.0 s"), "{err}");
    assert!(
        t.elapsed().as_secs() < 30,
        "the VMM must stop a hung guest promptly"
    );
}

#[test]
fn too_many_vcpus_is_refused() {
    if !have_kvm() {
        return;
    }
    assert_error(
        &["run", "--guest", "test", "--memory", "64M", "--vcpus", "0"],
        2,
        "--vcpus 0",
    );
}

/// `segvmm ptsnap --shutdown` ends a run that would otherwise wait for its timeout: the
/// VMM exits promptly with code 0 and reports the exit reason `shutdown`.
#[test]
fn api_shutdown_ends_a_hanging_guest_cleanly() {
    if !have_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (sock, report) = (d.path().join("api.sock"), d.path().join("r.json"));
    let mut child = common::segvmm()
        .args(["run", "--guest", "test-hang", "--memory", "64M", "--quiet"])
        .args(["--timeout", "60", "--api-socket"])
        .arg(&sock)
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn segvmm run");
    let t = std::time::Instant::now();
    while !sock.exists() && t.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, out, err) = run(&[
        "ptsnap",
        "--api-socket",
        sock.to_str().unwrap(),
        "--shutdown",
    ]);
    if code != 0 {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("shut down"), "{out}");
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed().as_secs() < 30,
        "the VMM must end the run promptly"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["exit_reason"]["kind"], "shutdown");
    assert_eq!(v["exit_message"], "shut down over the API socket");
}
