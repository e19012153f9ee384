//! Builds the guests that are embedded in the `segvmm` binary:
//! - the bare-metal test guest (`guest-kernels/testguest`), assembled with the system C
//!   compiler into a tiny PVH ELF;
//! - the measurement guest (`guest-kernels/probe`), a no_std Rust image for the host target
//!   built by a nested `cargo build` of its own workspace (its own linker script and
//!   `panic = "abort"` profile), embedded as `probe.elf`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("..");
    let tg = root.join("guest-kernels/testguest");
    println!(
        "cargo:rerun-if-changed={}",
        tg.join("testguest.S").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        tg.join("testguest.ld").display()
    );
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", tg.join("testguest.ld").display()))
        .arg("-o")
        .arg(out.join("testguest.elf"))
        .arg(tg.join("testguest.S"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("assembling the test guest with {cc} failed: {s}"),
        Err(e) => {
            panic!("cannot run the C compiler `{cc}` to assemble the test guest: {e} (install gcc)")
        }
    }
    build_probe(&root, &out);
}

/// Environment variables that cargo sets for this build script but that must not leak into
/// the nested build of the measurement guest (they would retarget it, add this crate's
/// flags, or run clippy on it).
fn leaks_into_nested_cargo(key: &str) -> bool {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO"];
    if KEEP.contains(&key)
        || key.starts_with("CARGO_NET_")
        || key.starts_with("CARGO_HTTP_")
        || key.starts_with("CARGO_REGISTR")
    {
        return false;
    }
    key.starts_with("CARGO_")
        || matches!(
            key,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "TARGET"
                | "HOST"
                | "OUT_DIR"
                | "PROFILE"
                | "OPT_LEVEL"
                | "DEBUG"
                | "NUM_JOBS"
        )
}

/// Builds `guest-kernels/probe` (release, host target, static, its own linker script) into
/// `$OUT_DIR/probe-target` and copies the image to `$OUT_DIR/probe.elf`.
fn build_probe(root: &Path, out: &Path) {
    let probe = root.join("guest-kernels/probe");
    for p in ["src", "Cargo.toml", "Cargo.lock", "build.rs", "link.ld"] {
        println!("cargo:rerun-if-changed={}", probe.join(p).display());
    }
    for p in ["src", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("workloads").join(p).display()
        );
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("probe-target");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&probe)
        .args(["build", "--release", "--offline", "--manifest-path"])
        .arg(probe.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for (k, _) in env::vars_os() {
        if let Some(k) = k.to_str() {
            if leaks_into_nested_cargo(k) {
                cmd.env_remove(k);
            }
        }
    }
    // Static relocation: the image runs at its link address with no loader to relocate it.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Crelocation-model=static");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the measurement guest (cargo build in {}) failed: {s}",
            probe.display()
        ),
        Err(e) => panic!("cannot run `{cargo}` to build the measurement guest: {e}"),
    }
    let elf = target_dir.join("release/probe");
    if let Err(e) = std::fs::copy(&elf, out.join("probe.elf")) {
        panic!("copying the measurement guest {}: {e}", elf.display());
    }
}
