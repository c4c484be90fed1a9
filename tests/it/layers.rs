//! The layer check (ARCHITECTURE.md, "Layers"): reads every `src/**/*.rs`, finds what each file
//! uses of the crate (`crate::…`, `super::…`, `self::…` and child-module paths, in `use` lines
//! and inline), and fails on an import against the declared layer order or a cycle between
//! files, naming the offending line. Test code (`#[cfg(test)]` onwards) is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, bottom to top. A file belongs to the layer of the longest module prefix listed
/// here; a file may import its own layer or a lower one, never a higher one.
const LAYERS: &[(&str, &[&str])] = &[
    ("basics", &["error", "http", "io", "telemetry::record"]),
    (
        "domain",
        &[
            "access",
            "upstream",
            "cache",
            "mitm::ca",
            "mitm::issuer",
            "metrics",
            "telemetry",
            "mirror",
            "warm",
        ],
    ),
    ("config", &["config"]),
    ("state", &["state"]),
    ("handlers", &["forward", "tunnel", "mitm", "mirror::route"]),
    ("server", &["server", "admin"]),
    ("app", &["app"]),
    ("root", &["", "fuzzing"]),
];

/// One file: its module path (`cache::disk`), its text with comments blanked, and the line
/// where test code starts.
struct File {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Blanks comments and string literals (keeping line breaks, so line numbers stay right) and
/// cuts the text at the first `#[cfg(test)]`.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // A string literal (raw strings with quotes inside are rare in src and would
            // only hide text, never invent an import).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Expands the path that starts at `at` (just after `crate::` or `super::`): a plain path
/// `a::b::c`, or a group `{a::b, c::{d, e}}`. Returns every full path named.
fn expand(text: &[u8], mut at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while at < text.len() && text[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < text.len() && text[at] == b'{' {
            at += 1;
            loop {
                while at < text.len() && (text[at].is_ascii_whitespace() || text[at] == b',') {
                    at += 1;
                }
                if at >= text.len() || text[at] == b'}' {
                    return at + 1;
                }
                at = expand(text, at, path.clone(), out);
            }
        }
        let start = at;
        while at < text.len() && is_ident(text[at]) {
            at += 1;
        }
        if start == at {
            out.push(path);
            return at;
        }
        let ident = String::from_utf8_lossy(&text[start..at]).into_owned();
        if ident != "self" {
            path.push(ident);
        }
        if text[at..].starts_with(b"::") {
            at += 2;
        } else {
            // Skip a rename (`as x`) up to the next separator.
            while at < text.len() && !matches!(text[at], b',' | b'}' | b';') {
                at += 1;
            }
            out.push(path);
            return at;
        }
    }
}

/// The module files a file refers to, with the line of each reference.
fn references(file: &File, modules: &BTreeSet<Vec<String>>) -> Vec<(Vec<String>, usize)> {
    let text = file.text.as_bytes();
    let children: BTreeSet<String> = {
        let mut c = BTreeSet::new();
        for line in file.text.lines() {
            let l = line
                .trim_start()
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            if let Some(rest) = l.strip_prefix("mod ")
                && let Some(name) = rest.strip_suffix(';')
            {
                c.insert(name.trim().to_string());
            }
        }
        c
    };
    // The module `self` paths resolve against: a `mod.rs` is its own directory's module.
    let here = file.module.clone();
    let parent = {
        let mut p = here.clone();
        p.pop();
        p
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let boundary = i == 0 || !(is_ident(text[i - 1]) || text[i - 1] == b':');
        let mut paths = Vec::new();
        let mut next = i + 1;
        if boundary && text[i..].starts_with(b"crate::") {
            next = expand(text, i + 7, Vec::new(), &mut paths);
        } else if boundary && text[i..].starts_with(b"super::") {
            let mut base = parent.clone();
            let mut j = i + 7;
            while text[j..].starts_with(b"super::") {
                base.pop();
                j += 7;
            }
            let depth = base.len();
            next = expand(text, j, base, &mut paths);
            // `super::*` names no file of its own (it is how an inline module sees its file).
            paths.retain(|p| p.len() > depth);
        } else if boundary && text[i..].starts_with(b"self::") {
            next = expand(text, i + 6, here.clone(), &mut paths);
            paths.retain(|p| p.len() > here.len());
        } else if boundary && is_ident(text[i]) {
            let start = i;
            let mut j = i;
            while j < text.len() && is_ident(text[j]) {
                j += 1;
            }
            let ident = String::from_utf8_lossy(&text[start..j]).into_owned();
            if children.contains(&ident) && text[j..].starts_with(b"::") {
                let mut base = here.clone();
                base.push(ident);
                next = expand(text, j + 2, base, &mut paths);
            } else {
                next = j;
            }
        }
        if !paths.is_empty() {
            let line = 1 + text[..i].iter().filter(|&&c| c == b'\n').count();
            for p in paths {
                // The longest prefix that is a module file.
                let target = (1..=p.len())
                    .rev()
                    .map(|n| p[..n].to_vec())
                    .find(|m| modules.contains(m));
                if let Some(t) = target
                    && t != file.module
                {
                    found.push((t, line));
                }
            }
        }
        i = next.max(i + 1);
    }
    found
}

fn layer_of(module: &[String]) -> (usize, &'static str) {
    let name = module.join("::");
    let mut best: Option<(usize, usize, &'static str)> = None;
    for (idx, (layer, prefixes)) in LAYERS.iter().enumerate() {
        for p in *prefixes {
            let matches = p.is_empty() || name == *p || name.starts_with(&format!("{p}::"));
            if matches && best.is_none_or(|(len, _, _)| p.len() > len) {
                best = Some((p.len(), idx, layer));
            }
        }
    }
    let (_, idx, layer) = best.unwrap();
    (idx, layer)
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct T<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit(t: &mut T, v: &Vec<String>) {
        let n = t.index.len();
        t.index.insert(v.clone(), n);
        t.low.insert(v.clone(), n);
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn imports_follow_the_layers_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.retain(|p| p.file_name().is_some_and(|n| n != "main.rs"));
    let files: Vec<File> = paths
        .iter()
        .map(|p| File {
            path: p.strip_prefix(&src).unwrap().to_path_buf(),
            module: module_of(&src, p),
            text: code_only(&std::fs::read_to_string(p).unwrap()),
        })
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let (mine, my_layer) = layer_of(&f.module);
        let e = edges.entry(f.module.clone()).or_default();
        for (target, line) in references(f, &modules) {
            let (theirs, their_layer) = layer_of(&target);
            if theirs > mine {
                problems.push(format!(
                    "src/{}:{line}: `{}` ({my_layer}) imports `{}` ({their_layer}), a higher layer",
                    f.path.display(),
                    f.module.join("::"),
                    target.join("::"),
                ));
            }
            e.insert(target);
        }
    }
    for comp in cycles(&edges) {
        let names: Vec<String> = comp.iter().map(|m| m.join("::")).collect();
        problems.push(format!("import cycle between files: {}", names.join(", ")));
    }
    assert!(problems.is_empty(), "layer check:\n{}", problems.join("\n"));
}
