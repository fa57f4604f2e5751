//! The library's modules form layers: no two of them import each other, directly or
//! through others. `cloud::wire` and `config` sit at the bottom, the cloud driver and `app`
//! near the top. A cycle makes a module impossible to understand, test or move on its own,
//! so this reads every `crate::` path in `src/` and fails on one.
//!
//! The nodes are the top-level modules, and the files of `cloud` each on its own (the
//! protocol types at the bottom, the driver at the top). A module's own insides (`super::`,
//! its children) are one node; tests are left out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The node a module path belongs to: `cloud::session::tests` -> `cloud::session`.
fn node(path: &[&str]) -> Option<String> {
    match path {
        [] => None,
        ["cloud", sub, ..] => Some(format!("cloud::{sub}")),
        [top, ..] => Some((*top).to_owned()),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every module path named after `crate::` in `code`, braces expanded one level deep
/// (`crate::cloud::{wire, session::Session}` names `cloud::wire` and `cloud::session`).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let mut prefix = Vec::new();
        let mut chars = rest;
        loop {
            let end = chars
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(chars.len());
            let segment = &chars[..end];
            if segment.is_empty() {
                break;
            }
            prefix.push(segment.to_owned());
            chars = &chars[end..];
            if let Some(next) = chars.strip_prefix("::") {
                if let Some(group) = next.strip_prefix('{') {
                    let close = group.find('}').unwrap_or(group.len());
                    for item in group[..close].split(',') {
                        let first = item.trim().split("::").next().unwrap_or("");
                        if !first.is_empty() {
                            let mut p = prefix.clone();
                            p.push(first.to_owned());
                            out.push(p);
                        }
                    }
                    prefix.clear();
                    break;
                }
                chars = next;
            } else {
                break;
            }
        }
        if !prefix.is_empty() {
            out.push(prefix);
        }
    }
    out
}

/// The code of a file without its unit tests (`#[cfg(test)]` to the end, by house style).
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn the_library_has_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        // Binaries and the library root are not modules of the library.
        if matches!(parts.first(), Some(&"bin" | &"main" | &"lib"))
            || parts.last() == Some(&"tests")
        {
            continue;
        }
        let parts: Vec<&str> = parts.into_iter().filter(|p| *p != "mod").collect();
        let Some(from) = node(&parts) else { continue };
        seen += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(without_tests(&text)) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(to) = node(&path)
                && to != from
                && path[0].bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(seen > 30, "found only {seen} library files under {src:?}");
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_owned());
            cycles.push(cycle.join(" -> "));
            return;
        }
        if !done.insert(n.to_owned()) {
            return;
        }
        stack.push(n.to_owned());
        for next in edges.get(n).into_iter().flatten() {
            visit(next, edges, stack, done, cycles);
        }
        stack.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "import cycles between modules:\n{}\nedges: {edges:#?}",
        cycles.join("\n")
    );
    // The bottom stays the bottom.
    for bottom in ["config", "cloud::wire"] {
        assert!(
            edges
                .get(bottom)
                .is_none_or(|to| to.iter().all(|t| t == "config" || t == "cloud::wire")),
            "{bottom} imports {:?}",
            edges.get(bottom)
        );
    }
}

#[test]
fn crate_paths_are_read_with_their_groups() {
    let code = "use crate::cloud::{wire, session::Session};\nlet x = crate::router::MAX;";
    assert_eq!(
        crate_paths(code),
        [
            vec!["cloud", "wire"],
            vec!["cloud", "session"],
            vec!["router", "MAX"]
        ]
    );
}
