//! The layering rule of docs/ARCHITECTURE.md, held by reading the sources: every room (a
//! top-level module of the library) imports only rooms that src/lib.rs declares before it, and
//! no two modules at any depth import each other (directly or round a longer cycle). Test
//! modules (`#[cfg(test)]` onwards, `tests.rs`) are left out: tests may reach anywhere.
//!
//! A path counts wherever it is written: `use` trees with their braces, and `crate::`/`super::`
//! paths inside code. A parent's `pub use child::X` and a child's `super::Y` are the ordinary
//! shape of a Rust module and not a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModulePath = Vec<String>;

/// One source file as a module of its crate.
struct Source {
    file: PathBuf,
    module: ModulePath,
    text: String,
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

/// The module a file defines: src/a/b.rs and src/a/b/mod.rs are `a::b`; lib.rs and main.rs
/// their crate's root.
fn module_of(src: &Path, file: &Path) -> ModulePath {
    let mut parts: ModulePath = file
        .strip_prefix(src)
        .unwrap()
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its test module.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .map(|line| line.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path of a `use` tree: `crate::{a::{b, c}, d}` → crate::a::b, crate::a::c, crate::d.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand_into(&[], &tree, &mut out);
    out
}

fn expand_into(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let Some(open) = tree.find('{') else {
        let mut path = prefix.to_vec();
        path.extend(
            tree.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        let last = path.last().cloned().unwrap_or_default();
        if last == "self" || last == "*" {
            path.pop();
        }
        out.push(path);
        return;
    };
    let mut base = prefix.to_vec();
    base.extend(
        tree[..open]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    let body = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand_into(&base, &body[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < body.len() {
        expand_into(&base, &body[start..], out);
    }
}

/// The `crate::`/`super::` paths a file's code names, as written.
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        let tree = after[..end].trim();
        if tree.starts_with("crate") || tree.starts_with("super") || tree.starts_with("self") {
            paths.extend(expand_use(tree));
        }
    }
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                paths.push(
                    tail[..end]
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
            rest = &tail[root.len()..];
        }
    }
    paths
}

/// A path written in `from` as the module it reaches (the longest known module it starts
/// with), or None for other crates and items of the crate root.
fn resolve(
    path: &[String],
    from: &ModulePath,
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    let mut absolute = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super" | "self") => from.clone(),
        _ => return None,
    };
    let mut rest = &path[if path[0] == "crate" { 1 } else { 0 }..];
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                absolute.pop();
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    absolute.extend(rest.iter().cloned());
    (1..=absolute.len())
        .rev()
        .map(|n| absolute[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// Imports between modules of one crate: (importer, imported) → where it is written.
fn imports(sources: &[Source]) -> BTreeMap<(ModulePath, ModulePath), String> {
    let modules: BTreeSet<ModulePath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut edges = BTreeMap::new();
    for source in sources {
        for path in paths_named(&code_of(&source.text)) {
            if let Some(target) = resolve(&path, &source.module, &modules)
                && target != source.module
            {
                edges
                    .entry((source.module.clone(), target))
                    .or_insert_with(|| format!("{}: {}", source.file.display(), path.join("::")));
            }
        }
    }
    edges
}

/// Each import lifted to the two children of the importer's and the imported's nearest common
/// ancestor (siblings), leaving out a module reaching its own ancestor or descendant.
fn sibling_edges(
    edges: &BTreeMap<(ModulePath, ModulePath), String>,
) -> BTreeMap<(ModulePath, ModulePath), String> {
    let mut lifted = BTreeMap::new();
    for ((from, to), at) in edges {
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue;
        }
        lifted
            .entry((from[..=common].to_vec(), to[..=common].to_vec()))
            .or_insert_with(|| at.clone());
    }
    lifted
}

/// The strongly connected groups of more than one module (Tarjan), each with the imports that
/// close it.
fn cycles(edges: &BTreeMap<(ModulePath, ModulePath), String>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&ModulePath, Vec<&ModulePath>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    struct Tarjan<'a> {
        graph: &'a BTreeMap<&'a ModulePath, Vec<&'a ModulePath>>,
        index: BTreeMap<&'a ModulePath, (usize, usize)>,
        stack: Vec<&'a ModulePath>,
        groups: Vec<Vec<&'a ModulePath>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a ModulePath) {
            let n = self.index.len();
            self.index.insert(v, (n, n));
            self.stack.push(v);
            for &w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.index[v].1.min(self.index[w].1);
                    self.index.get_mut(v).unwrap().1 = low;
                } else if self.stack.contains(&w) {
                    let low = self.index[v].1.min(self.index[w].0);
                    self.index.get_mut(v).unwrap().1 = low;
                }
            }
            if self.index[v].0 == self.index[v].1 {
                let at = self.stack.iter().rposition(|m| *m == v).unwrap();
                self.groups.push(self.stack.split_off(at));
            }
        }
    }
    let mut tarjan = Tarjan {
        graph: &graph,
        index: BTreeMap::new(),
        stack: Vec::new(),
        groups: Vec::new(),
    };
    for v in graph.keys() {
        if !tarjan.index.contains_key(v) {
            tarjan.visit(v);
        }
    }
    tarjan
        .groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|group| {
            edges
                .iter()
                .filter(|((a, b), _)| group.contains(&a) && group.contains(&b))
                .map(|((a, b), at)| format!("{} → {} ({at})", a.join("::"), b.join("::")))
                .collect()
        })
        .collect()
}

fn crate_sources(src: &Path, binary: bool) -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| f.file_name().unwrap() != "tests.rs")
        .map(|file| Source {
            module: module_of(src, &file),
            text: std::fs::read_to_string(&file).unwrap(),
            file,
        })
        .filter(|s| {
            let in_binary = s.file.ends_with("src/main.rs")
                || s.module.first().is_some_and(|m| m == "commands");
            in_binary == binary
        })
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The rooms in the order src/lib.rs declares them: the bottom first.
fn rooms() -> Vec<String> {
    std::fs::read_to_string(src().join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')))
        .map(str::to_string)
        .collect()
}

#[test]
fn each_room_imports_only_the_rooms_below_it() {
    let rooms = rooms();
    let rank = |room: &str| rooms.iter().position(|r| r == room);
    let edges = imports(&crate_sources(&src(), false));
    // The checker reads what it should: the training loop's imports of the model are there.
    assert!(
        edges
            .keys()
            .any(|(a, b)| a[0] == "train" && b[0] == "model"),
        "no train → model import found: the scanner is broken"
    );
    let mut upward = Vec::new();
    for ((from, to), at) in &edges {
        let (a, b) = (&from[0], &to[0]);
        let (Some(ra), Some(rb)) = (rank(a), rank(b)) else {
            panic!("{at}: `{a}` or `{b}` is not a room declared in src/lib.rs");
        };
        if rb > ra {
            upward.push(format!(
                "{a} imports {b}, which src/lib.rs lists after it: {at}"
            ));
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_two_modules_import_each_other() {
    for binary in [false, true] {
        let edges = imports(&crate_sources(&src(), binary));
        let found = cycles(&sibling_edges(&edges));
        assert!(
            found.is_empty(),
            "import cycles:\n{}",
            found
                .iter()
                .map(|c| c.join("\n  "))
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
}

/// The checker itself, on made-up sources: it must see a cycle and an upward import where
/// there is one, and nothing where there is none.
#[test]
fn the_checker_finds_what_it_is_shown() {
    assert_eq!(
        expand_use("crate::{a::{b, c::D}, e, f::self}"),
        [
            vec!["crate", "a", "b"],
            vec!["crate", "a", "c", "D"],
            vec!["crate", "e"],
            vec!["crate", "f"]
        ]
    );
    let source = |file: &str, text: &str| Source {
        file: PathBuf::from(file),
        module: module_of(Path::new("src"), Path::new(file)),
        text: text.to_string(),
    };
    let sources = [
        source("src/lib.rs", "pub mod low;\npub mod high;"),
        source(
            "src/low/mod.rs",
            "pub mod x;\npub mod y;\npub use x::X; // crate::high in a comment",
        ),
        source(
            "src/low/x.rs",
            "use super::y::Y;\nfn f() { let _ = super::X; }",
        ),
        source(
            "src/low/y.rs",
            "fn g() -> crate::low::x::X { todo!() }\n#[cfg(test)]\nmod tests { use crate::high; }",
        ),
        source("src/high.rs", "use crate::{low::{x, y}};"),
    ];
    let edges = imports(&sources);
    let pairs: BTreeSet<(String, String)> = edges
        .keys()
        .map(|(a, b)| (a.join("::"), b.join("::")))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("low::x", "low"),
        ("low::x", "low::y"),
        ("low::y", "low::x"),
        ("high", "low::x"),
        ("high", "low::y"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(pairs, expected);
    let found = cycles(&sibling_edges(&edges));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 2, "{found:?}");
}
