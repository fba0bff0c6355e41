//! Keeps the data plane's modules free of import circles: a module may use its own parent, but
//! otherwise `use crate::…` (and `super::…`) edges between modules must form no cycle. Read from
//! the source files, so it costs a unit test instead of a cargo plugin.
//!
//! A parent depends on the children it declares; a child's use of its ancestors is not counted.
//! Test modules (`tests.rs`, `tests/`) may use anything and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every library module (`a::b`) and the modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect(src, src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = BTreeMap::new();
    for (module, text) in &files {
        let mut uses = BTreeSet::new();
        for path in paths(module, text) {
            // The longest known module the path starts with.
            let mut target = path.as_str();
            while !modules.contains(target) {
                match target.rsplit_once("::") {
                    Some((parent, _)) => target = parent,
                    None => break,
                }
            }
            let is_ancestor = module.starts_with(&format!("{target}::"));
            if modules.contains(target) && target != module && !is_ancestor {
                uses.insert(target.to_owned());
            }
        }
        // A parent depends on the children it declares.
        for child in modules.iter().filter(|m| m.rsplit_once("::").is_some_and(|(p, _)| p == module)) {
            uses.insert(child.clone());
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// `(module, source)` of every library file under `dir`, test modules and the binary left out.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).expect("source dir").flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if path.is_dir() {
            if name != "tests" {
                collect(root, &path, out);
            }
            continue;
        }
        if !name.ends_with(".rs") || name == "tests.rs" {
            continue;
        }
        let relative = path.strip_prefix(root).expect("under root").with_extension("");
        let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] {
            continue;
        }
        out.push((parts.join("::"), std::fs::read_to_string(&path).expect("readable")));
    }
}

/// The module paths `text` (the source of `module`) names through `crate::` and `super::`,
/// comments left out.
fn paths(module: &str, text: &str) -> Vec<String> {
    let code: String =
        text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_owned())] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix) {
            // `crate::` inside another path (`sluice_tls::crate::…` does not occur) or a word.
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            for p in expand(rest) {
                let full = if base.is_empty() { p } else { format!("{base}::{p}") };
                found.push(full);
            }
        }
    }
    found
}

/// The paths a `use` tree at the start of `s` names: `a::b`, or `{a::b, c::{d, e}}`.
fn expand(s: &str) -> Vec<String> {
    let ident_len = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    if ident_len == 0 {
        if !s.starts_with('{') {
            return Vec::new();
        }
        // The group up to its matching brace, split at top-level commas.
        let (mut depth, mut start, mut out) = (0, 1, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' | ',' if depth == 1 => {
                    out.extend(expand(s[start..].trim_start()));
                    start = i + 1;
                    if c == '}' {
                        break;
                    }
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        return out;
    }
    let ident = &s[..ident_len];
    if ident == "self" {
        return Vec::new();
    }
    match s[ident_len..].strip_prefix("::") {
        Some(rest) => {
            let inner = expand(rest);
            if inner.is_empty() {
                vec![ident.to_owned()]
            } else {
                inner.into_iter().map(|p| format!("{ident}::{p}")).collect()
            }
        }
        None => vec![ident.to_owned()],
    }
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, (usize, usize)>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, (n, n));
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.index[w].1.min(self.index[v].1);
                    self.index.get_mut(v).expect("visited").1 = low;
                } else if self.on_stack.contains(w) {
                    let low = self.index[w].0.min(self.index[v].1);
                    self.index.get_mut(v).expect("visited").1 = low;
                }
            }
            if self.index[v].0 == self.index[v].1 {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found
}

#[test]
fn the_data_plane_has_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(graph.contains_key("proxy::exchange"), "the source tree was read: {:?}", graph.keys());
    let found = cycles(&graph);
    assert!(found.is_empty(), "modules that import each other in a circle: {found:#?}");
}

#[test]
fn a_circle_is_found() {
    let text = |uses: &str| format!("use crate::{{{uses}}};\n// use crate::c;\n");
    let files = [("a", text("b::X, d")), ("b", text("c::{self, Y}")), ("c", text("a")), ("d", String::new())];
    let mut graph = BTreeMap::new();
    for (m, t) in &files {
        graph.insert(m.to_string(), paths(m, t).into_iter().map(|p| p[..1].to_owned()).collect());
    }
    assert_eq!(cycles(&graph), vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]);
    assert_eq!(paths("x::y", "use super::z::{W, v::Q};"), ["x::z::W", "x::z::v::Q"]);
}
