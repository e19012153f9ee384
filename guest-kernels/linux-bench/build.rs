//! Links /init as a static, freestanding Linux executable: no C runtime, no libc, no
//! dynamic loader, no PIE (the kernel's ELF loader maps it as is).

fn main() {
    for a in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,norelro",
    ] {
        println!("cargo:rustc-link-arg-bins={a}");
    }
}
