//! The crate's planes import downward only. Every `crate::` path of non-test
//! code (use trees, grouped or not, and paths in expressions and types, `super`
//! resolved), read with a real parser (`syn`), is checked against the table of
//! allowed arrows below; root items may not be named from inside (the root
//! only maps and re-exports); and leaf modules form no circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The planes, top first: each may import the planes after it and the leaves.
const PLANES: &[&str] = &[
    "tools", "launch", "admin", "control", "fleet", "proxy", "routing", "edge",
];

/// Modules below every plane; they may import each other (no circle), never a
/// plane.
const LEAVES: &[&str] = &[
    "config",
    "geo",
    "tls",
    "metrics",
    "path",
    "drains",
    "signing",
    "secret",
    "blame",
    "log_limit",
    "logging",
    "memory",
];

/// One `crate::` reference: the module path of the file (and inline module)
/// it is in, and the absolute path it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reference {
    from: Vec<String>,
    to: Vec<String>,
    file: String,
}

/// Collects the absolute `crate::` paths of one file, skipping `#[cfg(test)]`
/// items.
struct Collector<'a> {
    module: Vec<String>,
    file: &'a str,
    found: Vec<Reference>,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl Collector<'_> {
    /// `segments` as an absolute path, when it is `crate::`, `self::` or
    /// `super::` rooted.
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let mut base = self.module.clone();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            _ => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn note(&mut self, segments: Vec<String>) {
        if let Some(to) = self.absolute(&segments) {
            self.found.push(Reference {
                from: self.module.clone(),
                to,
                file: self.file.to_owned(),
            });
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.note(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.note(full);
            }
            syn::UseTree::Glob(_) => self.note(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    // `pub(super)`, `pub(in crate::a)`: who may see, not what is imported.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.note(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside macro calls (format args, tracing fields) are tokens:
        // read the ones that look like `crate::a::b`.
        let text = m.tokens.to_string();
        for (i, _) in text.match_indices("crate :: ") {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let segments: Vec<String> = text[i..]
                .split(" :: ")
                .map_while(|s| {
                    let word = s.split(' ').next().unwrap_or("");
                    (!word.is_empty() && word.chars().all(|c| c.is_alphanumeric() || c == '_'))
                        .then(|| word.to_owned())
                })
                .collect();
            self.note(segments);
        }
        syn::visit::visit_macro(self, m);
    }
}

/// The module path of a source file: `src/proxy/forward.rs` -> `proxy::forward`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.as_slice(), [one] if one == "lib" || one == "main") {
        parts.clear();
    }
    parts
}

/// Every `crate::` reference of the library's non-test code (not the binary:
/// it is its own crate and names the library as `georouter`).
fn references(src: &Path) -> Vec<Reference> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // src/main/: the binary's own modules (it names the library
                // as `georouter`, never `crate::`).
                if path != src.join("main") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main.rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        all.extend(references_in(
            &text,
            module_of(src, &file),
            &file.display().to_string(),
        ));
    }
    all
}

fn references_in(text: &str, module: Vec<String>, file: &str) -> Vec<Reference> {
    let parsed = syn::parse_file(text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut c = Collector {
        module,
        file,
        found: Vec::new(),
    };
    c.visit_file(&parsed);
    c.found
}

/// Where a module path lives: a plane, a leaf, or the root itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Home<'a> {
    Root,
    Plane(usize, &'a str),
    Leaf(&'a str),
}

fn home(path: &[String]) -> Option<Home<'static>> {
    let Some(first) = path.first() else {
        return Some(Home::Root);
    };
    if let Some(i) = PLANES.iter().position(|p| p == first) {
        return Some(Home::Plane(i, PLANES[i]));
    }
    if let Some(l) = LEAVES.iter().find(|l| *l == first) {
        return Some(Home::Leaf(l));
    }
    // A root item (`crate::State`): named from inside, it is an upward arrow.
    first
        .chars()
        .next()
        .is_some_and(|c| c.is_uppercase())
        .then_some(Home::Root)
}

/// Arrows the table does not allow, as "from -> to (file)".
fn violations(refs: &[Reference]) -> Vec<String> {
    let mut bad = BTreeSet::new();
    let mut leaf_graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in refs {
        let (Some(from), Some(to)) = (home(&r.from), home(&r.to)) else {
            continue;
        };
        let allowed = match (from, to) {
            (Home::Root, _) => true,
            (_, Home::Root) => false,
            (Home::Plane(a, _), Home::Plane(b, _)) => a <= b,
            (Home::Plane(..), Home::Leaf(_)) => true,
            (Home::Leaf(_), Home::Plane(..)) => false,
            (Home::Leaf(a), Home::Leaf(b)) => {
                if a != b {
                    leaf_graph.entry(a).or_default().insert(b);
                }
                true
            }
        };
        if !allowed {
            bad.insert(format!(
                "{} -> {} ({})",
                r.from.join("::"),
                r.to.join("::"),
                r.file
            ));
        }
    }
    for (a, bs) in &leaf_graph {
        for b in bs {
            if reaches(&leaf_graph, b, a) {
                bad.insert(format!("leaf circle: {a} -> {b} -> ... -> {a}"));
            }
        }
    }
    bad.into_iter().collect()
}

fn reaches(graph: &BTreeMap<&str, BTreeSet<&str>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(m) = todo.pop() {
        if m == to {
            return true;
        }
        if seen.insert(m) {
            todo.extend(graph.get(m).into_iter().flatten().copied());
        }
    }
    false
}

#[test]
fn planes_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let refs = references(&src);
    assert!(refs.len() > 500, "the scan read the crate: {}", refs.len());
    // Every top-level module is in the table.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
        {
            let name = name.trim_end_matches(';');
            assert!(
                PLANES.contains(&name) || LEAVES.contains(&name),
                "{name} is in neither PLANES nor LEAVES of tests/layering.rs"
            );
        }
    }
    let bad = violations(&refs);
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_forbidden_arrow_is_caught_however_it_is_written() {
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let cases = [
        ("use crate::proxy::Connection;", "routing::policy"),
        (
            "use crate::{config::Config, control::Control};",
            "proxy::forward",
        ),
        ("fn f() { let _ = crate::edge::server::bind; }", "config"),
        (
            "use super::super::super::admin::X;",
            "control::health::check",
        ),
        ("use crate::State;", "proxy"),
        (
            "fn f() { tracing::info!(x = %crate::fleet::now_ms()); }",
            "routing::policy",
        ),
    ];
    for (code, module) in cases {
        let refs = references_in(code, m(module), "self-test");
        assert!(
            !violations(&refs).is_empty(),
            "not caught: `{code}` in {module}: {refs:?}"
        );
    }
    // Test-only code, and downward arrows, are not violations.
    let fine = [
        (
            "#[cfg(test)]\nmod tests { use crate::tools::sim::SimRegion; }",
            "proxy",
        ),
        ("use crate::{routing::State, edge::server::App};", "proxy"),
        ("use super::forward;", "proxy::pool"),
    ];
    for (code, module) in fine {
        let refs = references_in(code, m(module), "self-test");
        assert_eq!(
            violations(&refs),
            Vec::<String>::new(),
            "`{code}` in {module}"
        );
    }
    // Leaves form no circle.
    let mut refs = references_in("use crate::geo::Db;", m("config"), "a");
    refs.extend(references_in("use crate::config::Config;", m("geo"), "b"));
    assert!(!violations(&refs).is_empty(), "a leaf circle");
}
