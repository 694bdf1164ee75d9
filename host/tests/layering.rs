//! The host's top-level modules import each other in one direction only.
//!
//! Reads `host/src`: for each top-level module (a folder or a file), every
//! `crate::<module>` path in its non-test code (comments, `#[cfg(test)]` parts and
//! test files left out) is an edge; the graph must have no cycle. The error names
//! the cycle, module by module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The non-test, non-comment text of a source file.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if name != "tests" && !name.ends_with("_tests") && name != "testutil" {
                out.push(path);
            }
        }
    }
}

fn graph(src: &Path) -> Graph {
    let mut modules: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut found = Vec::new();
        if path.is_dir() {
            files(&path, &mut found);
        } else {
            found.push(path);
        }
        modules.entry(name).or_default().extend(found);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(m, paths)| {
            let mut deps = BTreeSet::new();
            for p in paths {
                let text = code(&std::fs::read_to_string(&p).unwrap());
                for (i, _) in text.match_indices("crate::") {
                    let rest = &text[i + "crate::".len()..];
                    let dep: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if dep != m && names.contains(&dep) {
                        deps.insert(dep);
                    }
                }
            }
            (m, deps)
        })
        .collect()
}

/// A cycle in `g`, as the modules along it (first repeated at the end).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
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

#[test]
fn the_top_level_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.contains_key("node") && g.contains_key("exec"), "{g:?}");
    assert!(
        g["node"].iter().all(|d| d == "units"),
        "`node` is the bottom layer; it imports {:?}",
        g["node"]
    );
    if let Some(c) = cycle(&g) {
        panic!("import cycle among host/src modules: {}", c.join(" → "));
    }
}

#[test]
fn the_check_finds_a_cycle_when_there_is_one() {
    let mut g: Graph = BTreeMap::new();
    g.entry("exec".into()).or_default().insert("ops".into());
    g.entry("ops".into()).or_default().insert("node".into());
    g.entry("node".into()).or_default();
    assert_eq!(cycle(&g), None);
    g.get_mut("node").unwrap().insert("exec".into());
    assert_eq!(
        cycle(&g).unwrap(),
        ["exec", "ops", "node", "exec"].map(String::from)
    );
}
