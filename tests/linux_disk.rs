//! Linux on a virtio-blk root disk (issue #16): the small kernel boots from a copy of
//! `guest-kernels/out/rootfs.ext4` (`--disk COPY`, `root=/dev/vda`, no initrd), its /init
//! (guest-kernels/rootfs/init, busybox sh) writes a file, syncs, remounts / read-only and
//! powers off; afterwards the image passes `e2fsck -fn` and `debugfs` reads the file back.
//! With `,ro` the same write fails inside the guest with a clear message and the VMM still
//! exits cleanly with the image untouched. The benchmark mode (`segvmm_test=bench`, as
//! benches/virtio-blk.sh boots it) runs /usr/bin/segvmm-rio on a second disk and prints its
//! result line.
//!
//! The kernel and image come from `guest-kernels/build.sh` (./setup.sh); without them, or
//! without e2fsprogs, these tests skip with the reason, except in CI (CI=true), where that
//! is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{artifact, have_kvm, run};

/// What the guest writes (guest-kernels/rootfs/init, `segvmm_test=write`).
const CONTENT: &str = "segvmm rootfs test: written by the guest";

/// `e2fsck` and `debugfs` on PATH (also /sbin, /usr/sbin), or `None` with a SKIP line;
/// a failure under CI.
fn e2fs_tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    let why = format!("{name} is missing: install e2fsprogs (./setup.sh does)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIP: {why}");
    None
}

struct Tools {
    e2fsck: PathBuf,
    debugfs: PathBuf,
}

/// A private copy of rootfs.ext4 in `dir` plus what the test needs, or `None` (skip).
fn setup(dir: &Path) -> Option<(PathBuf, PathBuf, Tools)> {
    if !have_kvm() {
        return None;
    }
    let kernel = artifact("small-kernel")?;
    let image = artifact("rootfs.ext4")?;
    let tools = Tools {
        e2fsck: e2fs_tool("e2fsck")?,
        debugfs: e2fs_tool("debugfs")?,
    };
    let copy = dir.join("rootfs.ext4");
    std::fs::copy(&image, &copy).unwrap();
    Some((kernel, copy, tools))
}

/// Boots the small kernel from `disks` (`--disk` arguments, the root first) with `extra`
/// on the command line; (exit code, guest console, stderr, report).
fn boot(
    kernel: &Path,
    disks: &[&str],
    extra: &str,
    dir: &Path,
) -> (i32, String, String, serde_json::Value) {
    let report = dir.join("r.json");
    let cmdline =
        format!("console=ttyS0 reboot=k panic=-1 percpu_alloc=page root=/dev/vda {extra}");
    let mut args = vec!["run", "--kernel", kernel.to_str().unwrap()];
    for d in disks {
        args.extend(["--disk", d]);
    }
    args.extend([
        "--memory",
        "128M",
        "--timeout",
        "900",
        "--report",
        report.to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ]);
    let (code, out, err) = run(&args);
    eprintln!("{err}");
    let v = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null);
    (code, out, err, v)
}

fn e2fsck_clean(tools: &Tools, image: &Path) {
    let o = Command::new(&tools.e2fsck)
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck -fn {} is not clean ({}):\n{}{}",
        image.display(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn debugfs_cat(tools: &Tools, image: &Path, file: &str) -> (String, String) {
    let o = Command::new(&tools.debugfs)
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(o.status.success(), "debugfs: {o:?}");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn small_kernel_boots_from_virtio_disk_and_writes_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some((kernel, copy, tools)) = setup(dir.path()) else {
        return;
    };
    let disk = copy.to_str().unwrap().to_owned();
    let (code, out, err, v) = boot(&kernel, &[&disk], "rw segvmm_test=write", dir.path());
    assert!(
        out.contains(&format!("SEGVMM_ROOTFS_WRITE_OK {CONTENT}")),
        "no write marker on the console:\n{out}\n{err}"
    );
    assert!(out.contains("virtio_blk"), "no virtio_blk line:\n{out}");
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(v["exit_reason"]["kind"], "power_off", "{v}");
    // The default: the driver's notifies reach the disk through KVM ioeventfds.
    assert_eq!(v["virtio_notify"], "ioeventfd", "{v}");
    if let Some(t) = v["milestones"].as_array().and_then(|ms| {
        ms.iter()
            .find(|m| m["what"] == "Run /init as init process")
            .and_then(|m| m["at_ms"].as_f64())
    }) {
        eprintln!(
            "small kernel on rootfs.ext4: Run /init after {:.1} s",
            t / 1e3
        );
    }
    e2fsck_clean(&tools, &copy);
    let (cat, cat_err) = debugfs_cat(&tools, &copy, "/segvmm-test");
    assert_eq!(cat, format!("{CONTENT}\n"), "debugfs: {cat_err}");
}

#[test]
fn read_only_disk_refuses_the_write_and_the_vmm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Some((kernel, copy, tools)) = setup(dir.path()) else {
        return;
    };
    let before = std::fs::read(&copy).unwrap();
    let disk = format!("{},ro", copy.to_str().unwrap());
    let (code, out, err, v) = boot(&kernel, &[&disk], "rw segvmm_test=write", dir.path());
    assert!(
        out.contains("SEGVMM_ROOTFS_WRITE_FAILED: cannot write /segvmm-test")
            && out.contains("Read-only file system"),
        "no clear guest-side write failure:\n{out}\n{err}"
    );
    assert!(!out.contains("SEGVMM_ROOTFS_WRITE_OK"), "{out}");
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(v["exit_reason"]["kind"], "power_off", "{v}");
    assert!(
        std::fs::read(&copy).unwrap() == before,
        "a read-only disk's image changed"
    );
    e2fsck_clean(&tools, &copy);
    let (cat, _) = debugfs_cat(&tools, &copy, "/segvmm-test");
    assert!(cat.is_empty(), "{cat}");
}

/// `key=value` fields of a `SEGVMM_RIO test=...` line.
fn rio_fields(line: &str) -> std::collections::HashMap<&str, &str> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

#[test]
fn bench_mode_runs_segvmm_rio_on_a_second_disk() {
    let dir = tempfile::tempdir().unwrap();
    let Some((kernel, copy, _tools)) = setup(dir.path()) else {
        return;
    };
    let scratch = dir.path().join("scratch.img");
    std::fs::write(&scratch, vec![0u8; 4 << 20]).unwrap();
    let root = format!("{},ro,event_idx=off", copy.to_str().unwrap());
    let disks = [root.as_str(), scratch.to_str().unwrap()];
    let extra = "segvmm_test=bench segvmm_rio=randwrite segvmm_ops=64 segvmm_jobs=2";
    let (code, out, err, v) = boot(&kernel, &disks, extra, dir.path());
    let line = out
        .lines()
        .find(|l| l.starts_with("SEGVMM_RIO test="))
        .unwrap_or_else(|| panic!("no SEGVMM_RIO line:\n{out}\n{err}"));
    let f = rio_fields(line);
    assert_eq!(f.get("test"), Some(&"randwrite"), "{line}");
    assert_eq!(f.get("bs"), Some(&"4096"), "{line}");
    assert_eq!(f.get("ops"), Some(&"64"), "{line}");
    assert_eq!(f.get("jobs"), Some(&"2"), "{line}");
    for key in ["seconds", "mb_s", "iops"] {
        let x: f64 = f.get(key).and_then(|s| s.parse().ok()).unwrap_or(-1.0);
        assert!(x > 0.0, "{key} in {line}");
    }
    // The device completed at least the 64 writes (and the flush).
    let reqs: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("SEGVMM_RIO_REQS "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no SEGVMM_RIO_REQS line:\n{out}"));
    assert!(reqs >= 64, "{reqs} requests");
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(v["exit_reason"]["kind"], "power_off", "{v}");
    // The writes reached the image: segvmm-rio writes 0x5a.
    let img = std::fs::read(&scratch).unwrap();
    assert!(img.chunks(4096).any(|c| c.iter().all(|&b| b == 0x5a)));
}
