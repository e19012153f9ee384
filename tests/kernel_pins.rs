//! guest-kernels/build.sh keeps working when the Debian archive drops its pinned versions:
//! `--resolve-only` with a fake `apt-cache madison` listing (SEGVMM_FAKE_MADISON) shows the
//! pin used while present, the newest package of the same series once it is gone (with a
//! warning), and a clear error when the series is gone too.

mod common;

use std::process::Command;

fn resolve(madison: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("madison");
    std::fs::write(&fake, madison).unwrap();
    let out = Command::new("bash")
        .arg(common::root().join("guest-kernels/build.sh"))
        .arg("--resolve-only")
        .env("SEGVMM_FAKE_MADISON", &fake)
        .output()
        .expect("run build.sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The pins, read from build.sh itself (so the test follows a bumped pin).
fn pins() -> (String, String) {
    let s = std::fs::read_to_string(common::root().join("guest-kernels/build.sh")).unwrap();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=\"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_else(|| panic!("{k} not in build.sh"))
    };
    (get("STOCK_PKG"), get("STOCK_VERSION"))
}

#[test]
fn a_present_pin_is_used_as_is() {
    let (pkg, ver) = pins();
    let m = format!(
        "{pkg} | {ver} | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
         linux-source-6.1 | 6.1.170-3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
         linux-source-6.1 | 6.1.172-1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n"
    );
    let (code, out, err) = resolve(&m);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("stock {pkg} {ver}")), "{out}");
    assert!(out.contains("source linux-source-6.1 6.1.170-3"), "{out}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn a_gone_pin_falls_back_to_the_newest_of_its_series_with_a_warning() {
    let m = "linux-image-6.1.0-48-cloud-amd64 | 6.1.172-1 | x\n\
             linux-image-6.1.0-100-cloud-amd64 | 6.1.190-1 | x\n\
             linux-image-6.1.0-50-cloud-amd64 | 6.1.180-1 | x\n\
             linux-image-6.12.0-1-cloud-amd64 | 6.12.5-1 | x\n\
             linux-source-6.1 | 6.1.99-1 | x\n\
             linux-source-6.1 | 6.1.172-1 | x\n\
             linux-source-6.12 | 6.12.5-1 | x\n";
    let (code, out, err) = resolve(m);
    assert_eq!(code, 0, "{err}");
    // 6.1.190 > 6.1.180 > 6.1.172 as versions (not as strings), and 6.12 is another series.
    assert!(
        out.contains("stock linux-image-6.1.0-100-cloud-amd64 6.1.190-1"),
        "{out}"
    );
    assert!(out.contains("source linux-source-6.1 6.1.172-1"), "{out}");
    assert_eq!(err.matches("warning: pinned").count(), 2, "{err}");
}

#[test]
fn a_gone_series_is_a_clear_error() {
    let m = "linux-image-6.12.0-1-cloud-amd64 | 6.12.5-1 | x\n";
    let (code, _, err) = resolve(m);
    assert_ne!(code, 0);
    assert!(err.contains("is gone from the Debian archives"), "{err}");
    assert!(err.contains("bump the pin"), "{err}");
}
