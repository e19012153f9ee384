//! Builds the guests that are embedded in the `segvmm` binary:
//! - the bare-metal test guest (`guest-kernels/testguest`), assembled with the system C
//!   compiler into a tiny PVH ELF;
//! - the measurement guest (`guest-kernels/probe`), when present (see its own build step).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("..");
    let tg = root.join("guest-kernels/testguest");
    println!("cargo:rerun-if-changed={}", tg.join("testguest.S").display());
    println!("cargo:rerun-if-changed={}", tg.join("testguest.ld").display());
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments"])
        .arg(format!("-Wl,-T,{}", tg.join("testguest.ld").display()))
        .arg("-o")
        .arg(out.join("testguest.elf"))
        .arg(tg.join("testguest.S"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("assembling the test guest with {cc} failed: {s}"),
        Err(e) => panic!("cannot run the C compiler `{cc}` to assemble the test guest: {e} (install gcc)"),
    }
}
