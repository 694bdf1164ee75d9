//! The host's top-level modules import each other as DESIGN.md's layering says,
//! and in one direction only.
//!
//! ```text
//!   lib.rs / main.rs ─► `mod` tree (declarations under #[cfg(test)] skipped)
//!        each file ─► comments, strings and #[cfg(test)] items blanked
//!                  ─► every `crate::…`, `crate::{a, b::{c}}`, `super::…`, `weir::…` path
//!                  ─► edge (module → module, file:line) ─► checked against ALLOWED
//! ```
//!
//! The files read are exactly those the compiler reads outside tests: the
//! module tree is followed from `lib.rs` and `main.rs`, so a file of tests is
//! skipped because its `mod` line is `#[cfg(test)]`, not because of its name,
//! and a `#[cfg(test)] mod tests;` at the top of a file hides nothing below it.
//! Paths are found anywhere in the code, not only in `use`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `host/src` and the modules it may import, from
/// DESIGN.md's layering (bottom to top):
///
/// ```text
///   cli · server   clients of a host
///   host           the runtime as a library
///   live           control socket, watch, swaps
///   plan           the composition root
///   exec           the scheduler
///   ops · connectors · store
///   sandbox · spec · batch
///   node · units · wit    (wit: the generated WIT bindings, no imports)
/// ```
///
/// Modules of one floor may import each other where listed (`sandbox` converts
/// batches with `batch`; `spec` declares a stage's grants and outputs with
/// `sandbox`'s types; a WebAssembly stage in `ops` is granted lookup tables,
/// which are `connectors`); a cycle among them still fails.
const ALLOWED: &[(&str, &[&str])] = &[
    ("units", &[]),
    ("wit", &[]),
    ("node", &["units"]),
    ("batch", &["node", "units", "wit"]),
    ("sandbox", &["batch", "node", "units", "wit"]),
    ("spec", &["batch", "node", "sandbox", "units", "wit"]),
    (
        "ops",
        &[
            "batch",
            "connectors",
            "node",
            "sandbox",
            "spec",
            "units",
            "wit",
        ],
    ),
    (
        "connectors",
        &["batch", "node", "sandbox", "spec", "units", "wit"],
    ),
    (
        "store",
        &["batch", "node", "sandbox", "spec", "units", "wit"],
    ),
    (
        "exec",
        &[
            "batch",
            "connectors",
            "node",
            "ops",
            "sandbox",
            "spec",
            "store",
            "units",
            "wit",
        ],
    ),
    (
        "plan",
        &[
            "batch",
            "connectors",
            "exec",
            "node",
            "ops",
            "sandbox",
            "spec",
            "store",
            "units",
            "wit",
        ],
    ),
    (
        "live",
        &[
            "batch",
            "connectors",
            "exec",
            "node",
            "ops",
            "plan",
            "sandbox",
            "spec",
            "store",
            "units",
            "wit",
        ],
    ),
    (
        "host",
        &[
            "batch",
            "connectors",
            "exec",
            "live",
            "node",
            "ops",
            "plan",
            "sandbox",
            "spec",
            "store",
            "units",
            "wit",
        ],
    ),
    (
        "server",
        &[
            "batch",
            "connectors",
            "exec",
            "host",
            "live",
            "node",
            "ops",
            "plan",
            "sandbox",
            "spec",
            "store",
            "units",
            "wit",
        ],
    ),
    (
        "cli",
        &[
            "batch",
            "connectors",
            "exec",
            "host",
            "live",
            "node",
            "ops",
            "plan",
            "sandbox",
            "spec",
            "store",
            "units",
            "wit",
        ],
    ),
];

/// Upward arrows the tree has today, each with why it is there and what
/// removes it. The check fails on any arrow that is neither allowed nor listed
/// here, and on a listed one the code no longer has (so the list only shrinks).
const KNOWN_UPWARD: &[(&str, &str, &str)] = &[
    (
        "spec",
        "connectors",
        "the `kinds!` lists name each kind's config type, which lives with its \
         connector; moves to `plan` (the one place that names every kind)",
    ),
    (
        "spec",
        "ops",
        "the `kinds!` lists and the stateful operators' configs (`stateful_spec`, \
         the shadow spec, `Predicate` in composition); move beside their operators",
    ),
    (
        "exec",
        "plan",
        "the scheduler runs a `Plan` and re-exports its types; goes when the run \
         takes its nodes from the host",
    ),
];

/// One import: the module it is in, the module it names, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

/// A source file and the module path it compiles as (`["connectors", "redis"]`).
struct File {
    path: PathBuf,
    module: Vec<String>,
}

/// The files of the module tree rooted at `root` (`lib.rs` or `main.rs`), with
/// their module paths; `mod` declarations under `#[cfg(test)]` are not followed.
fn module_tree(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Vec<File> {
    let mut out = Vec::new();
    let mut todo = vec![(root.to_path_buf(), Vec::<String>::new())];
    while let Some((path, module)) = todo.pop() {
        let Some(text) = read(&path) else { continue };
        let code = strip(&text);
        // A file `foo.rs` keeps its children in `foo/`; `mod.rs`, `lib.rs` and
        // `main.rs` beside themselves.
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = if module.is_empty() || stem == "mod" {
            path.parent().unwrap().to_path_buf()
        } else {
            path.parent().unwrap().join(&stem)
        };
        for child in mod_declarations(&code) {
            let mut m = module.clone();
            m.push(child.clone());
            let file = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let found = if read(&file).is_some() { file } else { nested };
            todo.push((found, m));
        }
        out.push(File { path, module });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The names of `mod name;` declarations (not inline `mod name { … }`) in code
/// already stripped of test items.
fn mod_declarations(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in code.match_indices("mod ") {
        if i > 0 && is_ident(code.as_bytes()[i - 1]) {
            continue;
        }
        let rest = &code[i + 4..];
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let after = rest.trim_start()[name.len()..].trim_start();
        if !name.is_empty() && after.starts_with(';') {
            names.push(name);
        }
    }
    names
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `text` with comments and the contents of string and char literals blanked,
/// then every item under `#[cfg(test)]` blanked; newlines kept, so line numbers
/// still hold.
fn strip(text: &str) -> String {
    strip_test_items(&strip_comments_and_strings(text))
}

fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (0usize, i);
                while j < b.len() {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            b'r' if (i == 0
                || !is_ident(b[i - 1])
                || (b[i - 1] == b'b' && (i < 2 || !is_ident(b[i - 2]))))
                && matches!(b.get(i + 1), Some(b'"' | b'#')) =>
            {
                // A raw string r"…" or r#"…"#.
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let start = i + 2 + hashes;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let end = b[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |n| start + n);
                blank(&mut out, start, end);
                i = end + close.len();
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j.min(b.len()));
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
                let close = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 3..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|n| i + 3 + n)
                } else {
                    let len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len)
                };
                match close {
                    Some(end) => {
                        blank(&mut out, i + 1, end);
                        i = end + 1;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).unwrap()
}

/// Blanks each `#[cfg(test)]` attribute and the item it is on: up to its `;`
/// (`mod tests;`, `use …;`) or through the `}` matching its first `{`.
fn strip_test_items(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = b.to_vec();
    let mut from = 0;
    while let Some(n) = code[from..].find("#[cfg(test)]") {
        let start = from + n;
        let mut i = start + "#[cfg(test)]".len();
        let mut depth = 0i32;
        while i < b.len() {
            match b[i] {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b';' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        let end = (i + 1).min(b.len());
        for c in &mut out[start..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end;
    }
    String::from_utf8(out).unwrap()
}

/// The first segments of every path that starts with `prefix` (`crate::`,
/// `weir::`) in `code`, with their byte offsets; `prefix::{a, b::c, d::{e}}`
/// gives `a`, `b` and `d`.
fn paths_from(code: &str, prefix: &str) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        if i > 0 && (is_ident(b[i - 1]) || (b[i - 1] == b':' && prefix != "super::")) {
            continue;
        }
        let rest = code[i + prefix.len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut j = 0;
            let g = group.as_bytes();
            while j < g.len() && depth > 0 {
                match g[j] {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    b',' if depth == 1 => item_start = true,
                    c if depth == 1 && item_start && is_ident(c) => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        j += name.len();
                        item_start = false;
                        out.push((i, name));
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((i, name));
            }
        }
    }
    out
}

/// The top-level module a `super::…` path at `module` lands in: `None` while
/// it stays inside `module`'s own top-level module, else the first segment
/// after the `super`s (`super::plan::Plan` in `exec/mod.rs` is `plan`).
fn super_targets(code: &str, module: &[String]) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for (i, _) in code.match_indices("super::") {
        if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':') {
            continue;
        }
        let mut rest = &code[i..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r.trim_start();
        }
        if ups < module.len() {
            continue; // still inside the same top-level module
        }
        let sub = format!("crate::{rest}");
        for (_, name) in paths_from(&sub, "crate::") {
            out.push((i, name));
        }
    }
    out
}

/// Every import between top-level modules of the crate whose sources `read`
/// gives, rooted at `src` (its `lib.rs` and, if any, `main.rs`).
fn edges(src: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Vec<Edge> {
    let lib = module_tree(&src.join("lib.rs"), read);
    let lib_modules: BTreeSet<String> = lib
        .iter()
        .filter_map(|f| f.module.first().cloned())
        .collect();
    let bin = module_tree(&src.join("main.rs"), read);
    let mut out = BTreeSet::new();
    for (file, in_bin) in lib
        .iter()
        .map(|f| (f, false))
        .chain(bin.iter().map(|f| (f, true)))
    {
        let Some(from) = file.module.first() else {
            continue;
        };
        let text = read(&file.path).unwrap();
        let code = strip(&text);
        let mut found = paths_from(&code, "crate::");
        found.extend(super_targets(&code, &file.module));
        if in_bin {
            found.extend(paths_from(&code, "weir::"));
        }
        for (offset, to) in found {
            if to == *from || !lib_modules.contains(&to) {
                continue;
            }
            let line = code[..offset].matches('\n').count() + 1;
            let rel = file.path.strip_prefix(src).unwrap_or(&file.path);
            out.insert(Edge {
                from: from.clone(),
                to,
                at: format!("{}:{line}", rel.display()),
            });
        }
    }
    out.into_iter().collect()
}

/// What is wrong with `edges` against the written table: one line per arrow
/// the table does not allow, per listed exception no longer used, per
/// top-level module missing from the table, and the first cycle.
fn violations(
    edges: &[Edge],
    allowed: &[(&str, &[&str])],
    known: &[(&str, &str, &str)],
) -> Vec<String> {
    let table: BTreeMap<&str, BTreeSet<&str>> = allowed
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut used_known = BTreeSet::new();
    let mut by_arrow: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for e in edges {
        graph
            .entry(e.from.clone())
            .or_default()
            .insert(e.to.clone());
        by_arrow.entry((&e.from, &e.to)).or_default().push(&e.at);
    }
    for ((from, to), places) in &by_arrow {
        let Some(may) = table.get(from) else {
            problems.push(format!(
                "module `{from}` is not in the layering table (it imports `{to}` at {})",
                places[0]
            ));
            continue;
        };
        if may.contains(to) {
            continue;
        }
        if known.iter().any(|(f, t, _)| f == from && t == to) {
            used_known.insert((*from, *to));
            continue;
        }
        let shown: Vec<&str> = places.iter().take(3).copied().collect();
        let more = places.len().saturating_sub(3);
        problems.push(format!(
            "upward import `{from}` → `{to}` at {}{}: `{from}` may import only {:?}",
            shown.join(", "),
            if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            },
            may
        ));
    }
    for (from, to, _) in known {
        if !used_known.contains(&(*from, *to)) {
            problems.push(format!(
                "`{from}` → `{to}` is listed as a known upward import but the code no \
                 longer has it: remove it from KNOWN_UPWARD"
            ));
        }
    }
    if let Some(c) = cycle(&graph) {
        problems.push(format!("import cycle: {}", c.join(" → ")));
    }
    problems
}

/// A cycle in `g`, as the modules along it (first repeated at the end).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_owned());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

fn read_disk(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

#[test]
fn the_top_level_modules_import_only_what_the_layering_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src, &read_disk);
    let modules: BTreeSet<&str> = edges.iter().map(|e| e.from.as_str()).collect();
    // The walk reached the whole tree: the layers at both ends and the binary.
    for m in ["node", "exec", "connectors", "cli"] {
        assert!(
            modules.contains(m),
            "no imports found in `{m}`: {modules:?}"
        );
    }
    // Every top-level module on disk has a row in the table.
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "lib" && name != "main" {
            assert!(
                ALLOWED.iter().any(|(m, _)| *m == name),
                "top-level module `{name}` has no row in ALLOWED"
            );
        }
    }
    let problems = violations(&edges, ALLOWED, KNOWN_UPWARD);
    assert!(
        problems.is_empty(),
        "host/src breaks the layering of DESIGN.md:\n  {}",
        problems.join("\n  ")
    );
}

/// A crate in memory: `lib.rs` and the files below it.
fn synthetic(files: &[(&str, &str)]) -> Vec<Edge> {
    let files: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (Path::new("/src").join(p), (*t).to_owned()))
        .collect();
    edges(Path::new("/src"), &|p| files.get(p).cloned())
}

fn arrows(edges: &[Edge]) -> Vec<(String, String)> {
    let set: BTreeSet<_> = edges
        .iter()
        .map(|e| (e.from.clone(), e.to.clone()))
        .collect();
    set.into_iter().collect()
}

const SMALL: &[(&str, &[&str])] = &[
    ("node", &[]),
    ("batch", &["node"]),
    ("sandbox", &["batch", "node"]),
    ("exec", &["batch", "node", "sandbox"]),
];

#[test]
fn an_import_below_a_test_module_line_is_read() {
    // `batch/mod.rs` declares its tests first, then imports upward and closes a
    // cycle (sandbox → batch → sandbox). The old check stopped at the first
    // `#[cfg(test)]` and saw nothing.
    let edges = synthetic(&[
        (
            "lib.rs",
            "pub mod batch;\npub mod node;\npub mod sandbox;\n",
        ),
        ("node.rs", "pub struct N;\n"),
        (
            "batch/mod.rs",
            "#[cfg(test)]\nmod tests;\n\nuse crate::node::N;\n\npub fn f() {\n    crate::sandbox::run();\n}\n",
        ),
        ("batch/tests.rs", "use crate::exec::Nothing;\n"),
        ("sandbox.rs", "use crate::batch;\npub fn run() {}\n"),
    ]);
    assert_eq!(
        edges,
        [
            Edge {
                from: "batch".into(),
                to: "node".into(),
                at: "batch/mod.rs:4".into()
            },
            Edge {
                from: "batch".into(),
                to: "sandbox".into(),
                at: "batch/mod.rs:7".into()
            },
            Edge {
                from: "sandbox".into(),
                to: "batch".into(),
                at: "sandbox.rs:1".into()
            },
        ]
    );
    let problems = violations(&edges, SMALL, &[]);
    assert_eq!(
        problems,
        [
            "upward import `batch` → `sandbox` at batch/mod.rs:7: `batch` may import only {\"node\"}",
            "import cycle: batch → sandbox → batch",
        ]
    );
}

#[test]
fn groups_super_paths_and_paths_in_code_are_edges_and_test_blocks_are_not() {
    let edges = synthetic(&[
        (
            "lib.rs",
            "pub mod batch;\npub mod exec;\npub mod node;\npub mod sandbox;\n",
        ),
        (
            "exec/mod.rs",
            "mod inner;\nuse crate::{\n    node::{self, N},\n    batch::{B, C},\n};\n\
             // use crate::sandbox; (a comment)\n\
             const S: &str = \"crate::sandbox::X\";\n\
             #[cfg(test)]\nmod tests {\n    use crate::sandbox::S;\n    fn f() { if true { crate::sandbox::g() } }\n}\n\
             fn late() -> char { let _ = '{'; super::sandbox::h(); 'x' }\n",
        ),
        (
            "exec/inner.rs",
            "use super::super::node::N;\nuse super::late;\n",
        ),
        ("batch.rs", ""),
        ("node.rs", ""),
        ("sandbox.rs", ""),
    ]);
    assert_eq!(
        arrows(&edges),
        [
            ("exec".into(), "batch".into()),
            ("exec".into(), "node".into()),
            ("exec".into(), "sandbox".into()),
        ]
    );
    let sandbox: Vec<&str> = edges
        .iter()
        .filter(|e| e.to == "sandbox")
        .map(|e| e.at.as_str())
        .collect();
    assert_eq!(
        sandbox,
        ["exec/mod.rs:13"],
        "only the call after the test block"
    );
    assert!(violations(&edges, SMALL, &[]).is_empty());
}

#[test]
fn an_upward_import_fails_without_closing_a_cycle() {
    let edges = synthetic(&[
        ("lib.rs", "pub mod node;\npub mod exec;\n"),
        ("node.rs", "fn f() { let _ = crate::exec::Run::new(); }\n"),
        ("exec.rs", ""),
    ]);
    let table: &[(&str, &[&str])] = &[("node", &[]), ("exec", &["node"])];
    assert_eq!(
        violations(&edges, table, &[]),
        ["upward import `node` → `exec` at node.rs:1: `node` may import only {}"]
    );
    // Listed as known, it passes; listed but gone, the list must shrink.
    let known = [("node", "exec", "why")];
    assert!(violations(&edges, table, &known).is_empty());
    let known = [("exec", "node", "why")];
    assert_eq!(violations(&edges, table, &known).len(), 2);
}
