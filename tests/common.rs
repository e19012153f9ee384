//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The segvmm binary cargo built for these tests.
pub fn segvmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segvmm"))
}

/// Whether /dev/kvm can be opened; prints why not.
pub fn have_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm is not usable here ({e}); KVM tests need it");
            false
        }
    }
}

/// Runs segvmm with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = segvmm().args(args).output().expect("spawn segvmm");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether we run as root (hugetlb pools, pagemap frame numbers).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A built guest-kernel artifact (`guest-kernels/out/NAME`), or `None` with a SKIP line
/// when it is missing; under CI (CI=true) a missing artifact is a failure, since CI builds
/// them with `./setup.sh`.
pub fn artifact(name: &str) -> Option<PathBuf> {
    let p = root().join("guest-kernels/out").join(name);
    if p.exists() {
        return Some(p);
    }
    let why = format!(
        "{} is missing: run guest-kernels/build.sh (or ./setup.sh)",
        p.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIP: {why}");
    None
}

/// `segvmm ptsnap --api-socket SOCK --out OUT`, retried for up to 4 s while the guest may
/// still be setting up paging; the last outcome.
pub fn ptsnap_when_ready(sock: &Path, out: &Path) -> (i32, String, String) {
    let mut last = (1, String::new(), String::new());
    for _ in 0..40 {
        last = run(&[
            "ptsnap",
            "--api-socket",
            sock.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        if last.0 == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    last
}

/// Ends a `segvmm run` child over its API socket (`segvmm ptsnap --shutdown`); the child's
/// exit status and stderr.
pub fn shutdown_over_api(
    sock: &Path,
    mut child: std::process::Child,
) -> (std::process::ExitStatus, String) {
    let (code, _, stderr) = run(&[
        "ptsnap",
        "--api-socket",
        sock.to_str().unwrap(),
        "--shutdown",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let st = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st, err)
}
