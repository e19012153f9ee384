//! Seccomp per thread kind (issue #13 item 2):
//!
//! * a system call outside a thread's list kills the process with SIGSYS (`kill`), in a
//!   child process so the test harness survives;
//! * every thread of a running `segvmm run` (vCPU, event loop, dirty collector) is
//!   filtered under the default `kill`, none under `--seccomp off`.

mod common;

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{have_kvm, segvmm, shutdown_over_api};
use segvmm::seccomp::{self, SeccompLevel, ThreadKind};

const CHILD: &str = "SEGVMM_SECCOMP_TEST_CHILD";

/// In the child: confine a thread as `kind` at `kill` and make a call outside its list.
fn child_body() {
    let kind = match std::env::var(CHILD).as_deref() {
        Ok("vcpu") => ThreadKind::Vcpu,
        Ok("dirty") => ThreadKind::DirtyCollector,
        Ok("writer") => ThreadKind::PtsnapWriter,
        Ok("stdin") => ThreadKind::Stdin,
        _ => return,
    };
    seccomp::set_level(SeccompLevel::Kill);
    std::thread::spawn(move || {
        seccomp::install(kind).unwrap();
        // A call in the list still works ...
        // SAFETY: getpid has no preconditions.
        assert!(unsafe { libc::getpid() } > 0);
        // ... and one outside it ends the process.
        // SAFETY: socket with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        println!("NOT KILLED: socket returned {fd}");
    })
    .join()
    .unwrap();
    std::process::exit(0);
}

#[test]
fn a_call_outside_a_threads_list_kills_the_process() {
    if std::env::var(CHILD).is_ok() {
        child_body();
        return;
    }
    let me = std::env::current_exe().unwrap();
    for kind in ["vcpu", "dirty", "writer", "stdin"] {
        let out = Command::new(&me)
            .args([
                "--exact",
                "a_call_outside_a_threads_list_kills_the_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, kind)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{kind}: {:?}, stdout {stdout}",
            out.status
        );
        assert!(!stdout.contains("NOT KILLED"), "{stdout}");
    }
}

/// `(thread name, Seccomp mode)` of every thread of `pid`.
fn thread_modes(pid: u32) -> Vec<(String, u32)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(s) = std::fs::read_to_string(t.unwrap().path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|x| x.trim().to_string())
                .unwrap_or_default()
        };
        v.push((field("Name:"), field("Seccomp:").parse().unwrap_or(99)));
    }
    v.sort();
    v
}

fn threads_of_a_running_vmm(level: &str) -> Vec<(String, u32)> {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("api.sock");
    let child = segvmm()
        .args([
            "run",
            "--guest",
            "test-hang",
            "--quiet",
            "--memory",
            "32M",
            "--timeout",
            "30",
            "--vcpus",
            "2",
            "--track-dirty",
            "100ms",
            "--hotness-out",
        ])
        .arg(d.path().join("h.hot"))
        .arg("--seccomp")
        .arg(level)
        .arg("--api-socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The event loop confines itself once the vCPUs run: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let modes = thread_modes(child.id());
    let (st, err) = shutdown_over_api(&sock, child);
    assert_eq!(st.code(), Some(0), "{level}: {st:?} {err}");
    assert!(err.contains("dirty tracking"), "{err}");
    assert!(!Path::new(&sock).exists());
    modes
}

#[test]
fn every_thread_is_filtered_by_default_and_none_when_off() {
    if !have_kvm() {
        return;
    }
    let on = threads_of_a_running_vmm("kill");
    let names: Vec<&str> = on.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["segvmm", "vcpu0", "vcpu1", "dirty-log"] {
        assert!(names.contains(&want), "no {want} thread in {on:?}");
    }
    // 2 = SECCOMP_MODE_FILTER.
    assert!(on.iter().all(|(_, m)| *m == 2), "{on:?}");
    let off = threads_of_a_running_vmm("off");
    assert!(off.iter().all(|(_, m)| *m == 0), "{off:?}");
    // Logging mode runs to the end too.
    let log = threads_of_a_running_vmm("log");
    assert!(log.iter().all(|(_, m)| *m == 2), "{log:?}");
}
