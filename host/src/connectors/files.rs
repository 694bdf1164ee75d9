//! The files a file source reads: one file, a glob, or a directory, resolved to
//! a sorted list once, when the source opens.
//!
//! ```text
//!   data/events.parquet      one file                    → [events.parquet]
//!   data/*.parquet           `*` and `?` in any part      → every match, sorted
//!   data/                    a directory                  → every `*.parquet` under it, sorted
//! ```
//!
//! Each file is named relative to the part of the path without wildcards (the
//! directory, for a directory), with `/` between parts on every platform: that
//! name is what positions and dead letters carry, so a resumed run finds its
//! file again by name, and a file added to the set later sorts into place
//! instead of shifting every index. Names that start with `.` or `_` are skipped
//! when walking (`_SUCCESS`, `.part-0.parquet.crc`, an in-progress file), as
//! Spark and Hive skip them.

use std::path::{Path, PathBuf};

/// One file of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its name relative to the set's root, `/`-separated: what positions carry.
    pub name: String,
}

/// Whether `s` holds a wildcard.
fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters
/// and `?` for one.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// The files `path` names: the file itself, every match of a glob, or every
/// file ending in `.{extension}` under a directory; sorted by name.
///
/// # Errors
/// The path does not exist, a directory cannot be listed, or nothing matches
/// (a source with no input is a configuration mistake, not an empty run). The
/// message does not repeat `path` (the caller names it); it names any other
/// directory that failed.
pub(crate) fn resolve(path: &Path, extension: &str) -> std::io::Result<Vec<InputFile>> {
    let text = path.to_string_lossy();
    let mut files = if has_wildcard(&text) {
        let mut root = PathBuf::new();
        let mut rest = Vec::new();
        for part in path.components() {
            let s = part.as_os_str().to_string_lossy().into_owned();
            if rest.is_empty() && !has_wildcard(&s) {
                root.push(part);
            } else {
                rest.push(s);
            }
        }
        let mut found = Vec::new();
        walk_glob(&root, &rest, "", &mut found)?;
        found
    } else if path.is_dir() {
        let mut found = Vec::new();
        walk_dir(path, "", extension, &mut found)?;
        found
    } else {
        std::fs::metadata(path)?;
        let name = path.file_name().map_or_else(
            || text.clone().into_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        vec![InputFile {
            path: path.to_owned(),
            name,
        }]
    };
    if files.is_empty() {
        let what = if has_wildcard(&text) {
            "matches no files".to_owned()
        } else {
            format!("holds no `*.{extension}` files")
        };
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, what));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

fn entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, bool)>> {
    let listed = std::fs::read_dir(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in listed {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.path().is_dir();
        out.push((name, entry.path(), is_dir));
    }
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    prefix: &str,
    extension: &str,
    found: &mut Vec<InputFile>,
) -> std::io::Result<()> {
    for (name, path, is_dir) in entries(dir)? {
        if hidden(&name) {
            continue;
        }
        if is_dir {
            walk_dir(&path, &join(prefix, &name), extension, found)?;
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(InputFile {
                path,
                name: join(prefix, &name),
            });
        }
    }
    Ok(())
}

fn walk_glob(
    dir: &Path,
    parts: &[String],
    prefix: &str,
    found: &mut Vec<InputFile>,
) -> std::io::Result<()> {
    let Some((first, rest)) = parts.split_first() else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for (name, path, is_dir) in entries(dir)? {
        if hidden(&name) && !first.starts_with(['.', '_']) {
            continue;
        }
        if !wildcard_match(first, &name) {
            continue;
        }
        match (rest.is_empty(), is_dir) {
            (true, false) => found.push(InputFile {
                path,
                name: join(prefix, &name),
            }),
            (false, true) => walk_glob(&path, rest, &join(prefix, &name), found)?,
            _ => {}
        }
    }
    Ok(())
}

/// The index of the file named `name` in `files` (a resumed CSV or Parquet
/// source finds its checkpoint's file).
#[cfg(any(feature = "csv", feature = "parquet"))]
pub(crate) fn find(files: &[InputFile], name: &str) -> Option<usize> {
    files.iter().position(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_shells_do() {
        assert!(wildcard_match("*.parquet", "a.parquet"));
        assert!(wildcard_match("part-?.csv", "part-1.csv"));
        assert!(!wildcard_match("part-?.csv", "part-10.csv"));
        assert!(wildcard_match("*-*.csv", "a-b-c.csv"));
        assert!(!wildcard_match("*.parquet", "a.parquet.crc"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn a_file_a_glob_and_a_directory_resolve_to_sorted_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("date=2024-01-02")).unwrap();
        std::fs::create_dir_all(d.join("date=2024-01-01")).unwrap();
        for f in [
            "date=2024-01-02/part-0.parquet",
            "date=2024-01-01/part-1.parquet",
            "date=2024-01-01/part-0.parquet",
            "date=2024-01-01/_SUCCESS",
            "date=2024-01-01/.part-0.parquet.crc",
            "notes.txt",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let names = |v: Vec<InputFile>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(
            names(resolve(d, "parquet").unwrap()),
            [
                "date=2024-01-01/part-0.parquet",
                "date=2024-01-01/part-1.parquet",
                "date=2024-01-02/part-0.parquet"
            ]
        );
        assert_eq!(
            names(resolve(&d.join("date=*/part-0.parquet"), "parquet").unwrap()),
            [
                "date=2024-01-01/part-0.parquet",
                "date=2024-01-02/part-0.parquet"
            ]
        );
        assert_eq!(
            names(resolve(&d.join("notes.txt"), "parquet").unwrap()),
            ["notes.txt"]
        );
        let e = resolve(&d.join("*.csv"), "csv").unwrap_err();
        assert_eq!(e.to_string(), "matches no files");
        let e = resolve(&d.join("nope.csv"), "csv").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let e = resolve(&d.join("date=2024-01-02"), "csv").unwrap_err();
        assert_eq!(e.to_string(), "holds no `*.csv` files");
    }
}
