//! `segvmm run --profile-guest` (issue #17 §4): System.map parsing and symbolization,
//! bad input refused with exit 2 and one clear line before the guest starts, and a
//! profile of the small kernel's boot whose top symbols are kernel symbols (skipped
//! without /dev/kvm or the kernel).

mod common;

use std::path::{Path, PathBuf};

use common::{artifact, have_kvm, run};
use segvmm::profile::symbols::{Error as MapError, SymbolMap};
use segvmm::profile::Samples;

const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup_64
ffffffff81001000 T do_one_initcall
ffffffff81002000 W weak_fn
ffffffff81003000 D linux_banner
ffffffff81004000 T _sinittext
ffffffff81005000 ? __nosave_begin
";

fn map() -> SymbolMap {
    SymbolMap::parse(MAP, Path::new("test.map")).unwrap()
}

fn name(m: &SymbolMap, addr: u64) -> Option<&str> {
    m.lookup(addr).map(|i| m.symbols()[i].name.as_str())
}

#[test]
fn map_lookup_finds_the_text_symbol_an_address_lies_in() {
    let m = map();
    assert_eq!(m.symbols().len(), 8);
    assert_eq!(m.address_of("linux_banner"), Some(0xffffffff81003000));
    // Aliases: the first listed names the address.
    assert_eq!(name(&m, 0xffffffff81000000), Some("_text"));
    assert_eq!(name(&m, 0xffffffff810000ff), Some("_text"));
    assert_eq!(name(&m, 0xffffffff81000100), Some("secondary_startup_64"));
    assert_eq!(name(&m, 0xffffffff81001fff), Some("do_one_initcall"));
    assert_eq!(name(&m, 0xffffffff81002010), Some("weak_fn"));
    // Data, and below the first symbol: not text.
    assert_eq!(name(&m, 0xffffffff81003008), None);
    assert_eq!(name(&m, 0xffffffff80ffffff), None);
    assert_eq!(name(&m, 0xffffffff81004abc), Some("_sinittext"));
    assert_eq!(name(&m, 0xffffffff81005000), None);
}

#[test]
fn map_is_sorted_whatever_the_input_order() {
    let mut lines: Vec<&str> = MAP.lines().collect();
    lines.reverse();
    let m = SymbolMap::parse(&lines.join("\n"), Path::new("r.map")).unwrap();
    assert!(m.symbols().windows(2).all(|w| w[0].addr <= w[1].addr));
    assert_eq!(name(&m, 0xffffffff81001234), Some("do_one_initcall"));
}

#[test]
fn malformed_maps_are_refused_with_the_line() {
    for (text, line) in [
        ("ffffffff81000000 T _text\nnot a map line\n", 2),
        ("ffffffff81000000 T\n", 1),
        ("xyz T _text\n", 1),
        ("ffffffff81000000 TT _text\n", 1),
        ("1ffffffff81000000 T _text\n", 1),
        ("ffffffff81000000 T _text extra\n", 1),
    ] {
        match SymbolMap::parse(text, Path::new("bad.map")) {
            Err(MapError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // Well formed but not a kernel's: no linux_banner.
    let e = SymbolMap::parse("ffffffff81000000 T _text\n", Path::new("k.map")).unwrap_err();
    assert!(e.to_string().contains("no 'linux_banner'"), "{e}");
    assert!(SymbolMap::parse("", Path::new("e.map")).is_err());
}

#[test]
fn samples_are_counted_by_symbol_and_rendered_most_first() {
    let s = Samples::new(map());
    for _ in 0..3 {
        s.record(0xffffffff81001010);
    }
    s.record(0xffffffff81000105);
    s.record(0x401000); // user space
    s.record(0xffffffff81003010); // data
    s.record_not_running();
    s.record_not_running();
    let rows = s.rows();
    assert_eq!(rows[0], (3, "do_one_initcall".to_string()));
    assert_eq!(rows[1], (2, "[vCPU halted or not started]".to_string()));
    assert_eq!(rows.len(), 5);
    let text = s.render("# test\n");
    assert!(text.contains("# samples: 8"), "{text}");
    assert!(text.contains("       3   37.50% do_one_initcall"), "{text}");
    assert!(
        text.contains("[lower half: user space or early boot]"),
        "{text}"
    );
    assert!(text.contains("[kernel, not in a text symbol]"), "{text}");
}

/// Runs `segvmm run` with a profile and `args`; asserts exit 2, one error line with
/// `needle`, and no guest (no console milestone, fast).
fn assert_refused(args: &[&str], needle: &str) {
    let started = std::time::Instant::now();
    let (code, _out, err) = run(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let errors = err.lines().filter(|l| l.starts_with("segvmm: error:"));
    assert_eq!(errors.count(), 1, "{err}");
    assert!(!err.contains("guest powered off"), "{err}");
    assert!(started.elapsed().as_secs() < 60, "{args:?} took too long");
}

struct Setup {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    map: PathBuf,
}

/// A stand-in kernel with a valid map beside it (`<kernel>.map`): enough for every check
/// made before the VM is built.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let map = dir.path().join("vmlinuz.map");
    std::fs::write(&map, MAP).unwrap();
    Setup { dir, kernel, map }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_rates_are_refused() {
    let t = setup();
    let out = t.dir.path().join("p.txt");
    for hz in ["0", "5001", "1000000"] {
        let args = ["run", "--kernel", s(&t.kernel), "--profile-guest", s(&out)];
        let mut args = args.to_vec();
        args.extend(["--profile-hz", hz]);
        assert_refused(&args, &format!("--profile-hz {hz}: must be 1 to 5000"));
        assert!(!out.exists());
    }
}

#[test]
fn unwritable_profile_paths_are_refused() {
    let t = setup();
    let exists = t.dir.path().join("exists.txt");
    std::fs::write(&exists, b"keep me").unwrap();
    let link = t.dir.path().join("link.txt");
    std::os::unix::fs::symlink(t.dir.path().join("target.txt"), &link).unwrap();
    let no_dir = t.dir.path().join("no/such/dir.txt");
    for out in [&exists, &link, &no_dir] {
        let args = ["run", "--kernel", s(&t.kernel), "--profile-guest", s(out)];
        assert_refused(&args, "cannot create it");
    }
    assert_eq!(std::fs::read(&exists).unwrap(), b"keep me");
    assert!(
        !t.dir.path().join("target.txt").exists(),
        "the link was followed"
    );
}

#[test]
fn missing_and_malformed_maps_are_refused() {
    let t = setup();
    let out = t.dir.path().join("p.txt");
    let k = s(&t.kernel);
    let o = s(&out);
    let missing = t.dir.path().join("missing.map");
    let args = ["run", "--kernel", k, "--profile-guest", o, "--profile-map"];
    assert_refused(&[&args[..], &[s(&missing)]].concat(), "missing.map");
    let bad = t.dir.path().join("bad.map");
    std::fs::write(&bad, "ffffffff81000000 T _text\ngarbage\n").unwrap();
    assert_refused(&[&args[..], &[s(&bad)]].concat(), "line 2 is not");
    // No map given and none next to the kernel.
    std::fs::remove_file(&t.map).unwrap();
    assert_refused(
        &["run", "--kernel", k, "--profile-guest", o],
        "no System.map next to the kernel",
    );
    assert!(!out.exists());
    // Without a kernel there is nothing to symbolize.
    assert_refused(&["run", "--profile-guest", o], "needs --kernel");
}

/// Boots the small kernel with a profile; `map` overrides the default map.
fn profiled_boot(map: Option<&Path>) -> Option<(i32, String, PathBuf, tempfile::TempDir)> {
    if !have_kvm() {
        return None;
    }
    let (k, i) = (artifact("small-kernel")?, artifact("initramfs.cpio")?);
    let default_map = artifact("small-kernel.map")?;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.txt");
    let map = map.unwrap_or(&default_map);
    let args = [
        "run",
        "--kernel",
        s(&k),
        "--initrd",
        s(&i),
        "--memory",
        "128M",
        "--cmdline",
        "console=ttyS0 reboot=k panic=-1 percpu_alloc=page",
        "--timeout",
        "600",
        "--quiet",
        "--profile-guest",
        s(&out),
        "--profile-map",
        s(map),
    ];
    let (code, _o, err) = run(&args);
    eprintln!("{err}");
    Some((code, err, out, dir))
}

#[test]
fn a_map_of_another_kernel_is_refused_before_the_guest_runs() {
    let Some(real) = artifact("small-kernel.map") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("other.map");
    // The same symbols with linux_banner moved: not this kernel's map.
    let text = std::fs::read_to_string(real).unwrap();
    let moved: Vec<String> = text
        .lines()
        .map(|l| match l.strip_suffix(" D linux_banner") {
            Some(_) => "ffffffff81000040 D linux_banner".to_string(),
            None => l.to_string(),
        })
        .collect();
    std::fs::write(&wrong, moved.join("\n")).unwrap();
    let Some((code, err, out, _d)) = profiled_boot(Some(&wrong)) else {
        return;
    };
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not match the kernel"), "{err}");
    assert!(!err.contains("SEGVMM_INIT_OK"), "{err}");
    assert!(!out.exists(), "the profile file was left behind");
}

#[test]
fn small_kernel_boot_profile_has_kernel_symbols_on_top() {
    let Some((code, err, out, _d)) = profiled_boot(None) else {
        return;
    };
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("segvmm: guest profile:"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let total: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("# samples: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // ~8 s of boot at 997 Hz: thousands of samples; ask for a fraction under load.
    assert!(total >= 500, "{total} samples:\n{text}");
    let top: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .take(10)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(top.len(), 10, "{text}");
    let kernel_map = std::fs::read_to_string(artifact("small-kernel.map").unwrap()).unwrap();
    for sym in &top {
        assert!(!sym.starts_with('['), "{sym} among the top 10:\n{text}");
        let line = format!(" {sym}\n");
        assert!(kernel_map.contains(&line), "{sym} is not in the map");
    }
}
