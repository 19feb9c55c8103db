//! The node crate's modules form layers: no module imports (through
//! `crate::...` or `super::...` paths in code) one that imports it back,
//! directly or through others. Comments and test modules do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The module path of a source file (`pump/run.rs` -> `pump::run`).
fn module_of(rel: &str) -> String {
    rel.trim_end_matches(".rs")
        .trim_end_matches("/mod")
        .replace('/', "::")
}

fn files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// Identifiers (`[a-z_]+`) following `prefix` in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<(&'a str, Option<&'a str>)> {
    let ident = |s: &'a str| -> &'a str {
        let end = s
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(s.len());
        &s[..end]
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        let first = ident(after);
        let second = after[first.len()..].strip_prefix("::").map(ident);
        if !first.is_empty() {
            out.push((first, second.filter(|s| !s.is_empty())));
        }
        rest = after;
    }
    out
}

#[test]
fn modules_import_no_circle() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("src");
    let mut sources = Vec::new();
    files(&root, &root, &mut sources);
    let modules: BTreeSet<String> = sources
        .iter()
        .filter(|(rel, _)| rel != "lib.rs" && rel != "main.rs")
        .map(|(rel, _)| module_of(rel))
        .collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &sources {
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let me = module_of(rel);
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut d = BTreeSet::new();
        for (a, b) in paths_after(&code, "crate::") {
            let sub = b.map(|b| format!("{a}::{b}"));
            match sub {
                Some(s) if modules.contains(&s) => d.insert(s),
                _ => d.insert(a.to_string()),
            };
        }
        let parent = me.rsplit_once("::").map(|(p, _)| p.to_string());
        for (a, _) in paths_after(&code, "super::") {
            if let Some(p) = &parent {
                d.insert(format!("{p}::{a}"));
            }
        }
        // A parent module reaches its children by their bare names.
        for child in modules
            .iter()
            .filter_map(|m| m.strip_prefix(&format!("{me}::")))
        {
            if code.contains(&format!("{child}::")) {
                d.insert(format!("{me}::{child}"));
            }
        }
        d.remove(&me);
        d.retain(|m| modules.contains(m));
        deps.insert(me, d);
    }
    assert!(deps.len() > 15, "{deps:?}");
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) {
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for d in &deps[m] {
            match state.get(d) {
                Some(1) => panic!("import circle: {} -> {d}", path.join(" -> ")),
                Some(_) => {}
                None => visit(d, deps, state, path),
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for m in deps.keys() {
        if !state.contains_key(m) {
            visit(m, &deps, &mut state, &mut Vec::new());
        }
    }
    // The layering the crate documents.
    assert!(!deps["pump"].contains("state") && !deps["pump"].contains("supervisor"));
    assert!(!deps["api"].contains("node"));
}
