//! The tree of imports between top-level modules has no cycle (issue #12): in `vmm/src`
//! (crate `segvmm`) and in `segment-mmu/src`. A module's edges are every `crate::name`
//! path in its files (in `use` lines, braces included, and in code), test modules
//! excluded; a cycle fails the test and is printed as `a -> b -> a`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The file's code: comments dropped and everything from a `#[cfg(test)]` followed by a
/// `mod` line on (test modules sit at the end of files in this workspace).
fn code(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(l.split(" // ").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every top-level module named after `crate::` in `code`, braces included
/// (`crate::{a, b::c, d::{e, f}}` names a, b and d).
fn targets(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(is_ident) {
            continue; // `mycrate::`, not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas; each item starts with a module.
            let mut depth = 0;
            let mut items = vec![String::new()];
            for c in group.chars() {
                match c {
                    '}' if depth == 0 => break,
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(String::new());
                        continue;
                    }
                    _ => {}
                }
                if let Some(last) = items.last_mut() {
                    last.push(c);
                }
            }
            for item in items {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out.remove("self");
    out
}

/// Edges between the top-level modules of the crate whose sources are in `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let edges = g.entry(module.clone()).or_default();
        for t in targets(&code(&text)) {
            if t != module {
                edges.insert(t);
            }
        }
    }
    g
}

/// Every elementary cycle found by a depth-first search, each as `a -> b -> a`.
fn cycles(g: &Graph) -> Vec<String> {
    fn dfs(
        g: &Graph,
        n: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut c = stack[at..].to_vec();
            c.push(n.to_string());
            out.push(c.join(" -> "));
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            dfs(g, m, stack, done, out);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for n in g.keys() {
        dfs(g, n, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

fn check(src: &Path) {
    let g = graph(src);
    assert!(g.len() > 3, "{}: found only {:?}", src.display(), g.keys());
    for (m, e) in &g {
        println!(
            "{m} -> {}",
            e.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let c = cycles(&g);
    assert!(c.is_empty(), "{}: import cycles: {c:#?}", src.display());
}

#[test]
fn vmm_has_no_import_cycle() {
    check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn segment_mmu_has_no_import_cycle() {
    check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../segment-mmu/src"));
}

#[test]
fn the_parser_sees_groups_and_paths_and_finds_cycles() {
    let t = targets(
        "use crate::{api, boot::x, dirty::{a, b}};\nlet x = crate::vm::run();\nuse mycrate::no;",
    );
    assert_eq!(
        t.into_iter().collect::<Vec<_>>(),
        ["api", "boot", "dirty", "vm"]
    );
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert_eq!(cycles(&g), ["a -> b -> a"]);
    g.get_mut("b").unwrap().clear();
    assert!(cycles(&g).is_empty());
    let c = code("use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests {\n use crate::c;\n}\n");
    assert_eq!(targets(&c).into_iter().collect::<Vec<_>>(), ["a"]);
}
