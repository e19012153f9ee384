//! The vmlinux cache (issue #17 §2): a bzImage decompressed on the host is stored by
//! content hash, a second load reads it back, and a corrupt, truncated or linked entry is
//! ignored (and replaced). Uses the small kernel's bzImage (skipped without it).

mod common;

use common::{artifact, have_kvm, run};
use segvmm::boot::bzimage::extract_vmlinux;
use segvmm::boot::cache::{extract, key, Outcome};

const CAP: u64 = 256 << 20;

fn image() -> Option<Vec<u8>> {
    Some(std::fs::read(artifact("small-kernel")?).unwrap())
}

#[test]
fn second_load_hits_and_bad_entries_are_ignored() {
    let Some(img) = image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Some(dir.path());
    let want = extract_vmlinux(&img, CAP).unwrap();
    let (v, o) = extract(d, &img, CAP).unwrap();
    assert_eq!((o, v == want), (Outcome::Miss, true));
    let (v, o) = extract(d, &img, CAP).unwrap();
    assert_eq!((o, v == want), (Outcome::Hit, true));
    let entry = dir.path().join(key(&img));
    let good = std::fs::read(&entry).unwrap();
    // One flipped byte in the body: the checksum catches it.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&entry, &bad).unwrap();
    let (v, o) = extract(d, &img, CAP).unwrap();
    assert_eq!((o, v == want), (Outcome::Miss, true));
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        good,
        "the bad entry was not replaced"
    );
    // Truncated, and a wrong header.
    std::fs::write(&entry, &good[..good.len() - 1]).unwrap();
    assert_eq!(extract(d, &img, CAP).unwrap().1, Outcome::Miss);
    let mut foreign = good.clone();
    foreign[0] = b'X';
    std::fs::write(&entry, &foreign).unwrap();
    assert_eq!(extract(d, &img, CAP).unwrap().1, Outcome::Miss);
    // A link in the entry's place is not followed; the rename replaces the link itself.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, &good).unwrap();
    std::fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    assert_eq!(extract(d, &img, CAP).unwrap().1, Outcome::Miss);
    assert!(!std::fs::symlink_metadata(&entry).unwrap().is_symlink());
    assert_eq!(std::fs::read(&elsewhere).unwrap(), good);
    assert_eq!(extract(d, &img, CAP).unwrap().1, Outcome::Hit);
    // A different image is a different entry.
    let mut other = img.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    assert_ne!(key(&other), key(&img));
    // No cache: plain decompression.
    assert_eq!(extract(None, &img, CAP).unwrap().1, Outcome::Off);
}

/// Two runs of the small kernel with one cache directory: the report says miss, then hit.
#[test]
fn second_boot_reports_a_cache_hit() {
    if !have_kvm() {
        return;
    }
    let Some(k) = artifact("small-kernel") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut loads = Vec::new();
    for (i, want) in ["miss", "hit"].iter().enumerate() {
        let report = dir.path().join(format!("r{i}.json"));
        let (_code, _o, err) = run(&[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "128M",
            "--timeout",
            "1",
            "--quiet",
            "--bzimage",
            "host-decompress",
            "--kernel-cache",
            cache.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(v["kernel_cache"], *want, "{err}");
        let load = v["setup_ms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "load")
            .unwrap()["ms"]
            .as_f64()
            .unwrap();
        loads.push(load);
    }
    eprintln!("load step: miss {:.1} ms, hit {:.1} ms", loads[0], loads[1]);
}
