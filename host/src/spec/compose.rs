//! Sub-pipelines: a chain of stages written once, in its own file, and used by
//! several pipelines with parameters.
//!
//! ```toml
//! # ctr.toml                                  # common.toml
//! [[use]]                                     name = "common"
//! name = "features"                           [[stage]]
//! path = "common.toml"                        name = "clean"
//! input = "events"                            input = "${input}"
//! params = { price_max = 500 }                [stage.filter]
//!                                             all = [{ range = { column = "price", max = ${price_max} } }]
//! [[sink]]                                    [[stage]]
//! name = "out"                                name = "encode"
//! input = "features"    # the sub-pipeline's output      input = "clean"
//! ...                                         ...
//! ```
//!
//! A `[[use]]` entry is inlined before validation, so the rest of weir only ever
//! sees a flat pipeline:
//!
//! 1. The file's text has every `${name}` replaced by `params.name` (`${input}` by
//!    the entry's `input`). Strings are inserted bare (write `"${col}"` to get a
//!    TOML string, escaped), other values in their TOML form (`${bounds}` →
//!    `[0, 10, 50]`). A placeholder without a value, or a value no placeholder
//!    uses, is an error naming it: text substitution is simple and general, and
//!    these two checks take away its usual traps.
//! 2. The text is parsed as a pipeline file (its own `name`, stages only, and
//!    possibly `[[use]]` entries of its own, inlined in turn; a cycle is an error).
//! 3. Its stages are renamed `<use-name>.<stage>`; inputs naming its own stages
//!    follow the rename; relative paths in them (`wasm.component`, `wasm.crate`)
//!    are re-based to resolve against the sub-pipeline's directory.
//! 4. Anywhere in the outer pipeline, `input = "<use-name>"` reads the
//!    sub-pipeline's output: the stage named by `output`, by default its last.
//!    Its other stages can be read directly as `<use-name>.<stage>`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PipelineSpec, SpecError};

/// One `[[use]]` entry: a sub-pipeline file inlined with parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseSpec {
    /// Its name: its stages become `<name>.<stage>`, and `input = "<name>"` reads
    /// its output.
    pub name: String,
    /// The sub-pipeline file, relative to this file.
    pub path: PathBuf,
    /// The node its stages read from, substituted for `${input}`.
    pub input: String,
    /// Values for its `${name}` placeholders. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, toml::Value>,
    /// Which of its stages is its output. Default: the last stage in its file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// How deep sub-pipelines may nest.
const MAX_DEPTH: usize = 8;

impl PipelineSpec {
    /// Inlines every `[[use]]` entry (see the module docs); afterwards `uses` is
    /// empty. Doing it twice is harmless.
    ///
    /// # Errors
    /// [`SpecError`] naming the `use[i]` key, or the sub-pipeline file's own parse
    /// errors (which name that file).
    pub fn inline_uses(&mut self) -> Result<(), SpecError> {
        self.inline_at(&mut Vec::new())
    }

    fn inline_at(&mut self, stack: &mut Vec<PathBuf>) -> Result<(), SpecError> {
        if self.uses.is_empty() {
            return Ok(());
        }
        let uses = std::mem::take(&mut self.uses);
        let mut aliases: HashMap<String, String> = HashMap::new();
        let mut inlined = Vec::new();
        for (i, u) in uses.iter().enumerate() {
            let key = format!("use[{i}]");
            if u.name.is_empty() || u.name.contains('.') {
                return Err(SpecError::invalid(
                    format!("{key}.name"),
                    format!("`{}` must be non-empty and without `.`", u.name),
                ));
            }
            if aliases.contains_key(&u.name) {
                return Err(SpecError::invalid(
                    format!("{key}.name"),
                    format!("`{}` is used twice", u.name),
                ));
            }
            let path = self.resolve(&u.path);
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if stack.contains(&canonical) || stack.len() >= MAX_DEPTH {
                return Err(SpecError::invalid(
                    format!("{key}.path"),
                    format!(
                        "`{}` uses itself (directly or through other files)",
                        u.path.display()
                    ),
                ));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                SpecError::invalid(
                    format!("{key}.path"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let text = substitute(&key, &text, u, &path)?;
            let mut sub = PipelineSpec::from_toml(&text, &path.display().to_string())?;
            sub.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            stack.push(canonical);
            sub.inline_at(stack)?;
            stack.pop();
            if !sub.sources.is_empty() || !sub.sinks.is_empty() {
                return Err(SpecError::invalid(
                    format!("{key}.path"),
                    format!(
                        "{} has sources or sinks; a sub-pipeline holds stages only",
                        u.path.display()
                    ),
                ));
            }
            let Some(last) = sub.stages.last() else {
                return Err(SpecError::invalid(
                    format!("{key}.path"),
                    format!("{} has no [[stage]]", u.path.display()),
                ));
            };
            let output = u.output.clone().unwrap_or_else(|| last.name.clone());
            let own: HashSet<String> = sub.stages.iter().map(|s| s.name.clone()).collect();
            if !own.contains(&output) {
                return Err(SpecError::invalid(
                    format!("{key}.output"),
                    format!("{} has no stage `{output}`", u.path.display()),
                ));
            }
            let rel_dir = u.path.parent().map(Path::to_path_buf).unwrap_or_default();
            let prefix = |n: &str| {
                if own.contains(n) {
                    format!("{}.{n}", u.name)
                } else {
                    n.to_owned()
                }
            };
            for mut s in sub.stages {
                s.name = format!("{}.{}", u.name, s.name);
                s.input = s.input.as_deref().map(prefix);
                s.inputs = s.inputs.map(|v| v.iter().map(|n| prefix(n)).collect());
                if let Some(w) = s.wasm_mut() {
                    for p in [&mut w.component, &mut w.krate].into_iter().flatten() {
                        if p.is_relative() {
                            *p = rel_dir.join(&*p);
                        }
                    }
                }
                inlined.push(s);
            }
            aliases.insert(u.name.clone(), format!("{}.{output}", u.name));
        }
        let alias = |n: &mut String| {
            if let Some(to) = aliases.get(n.as_str()) {
                *n = to.clone();
            }
        };
        for s in inlined.iter_mut().chain(self.stages.iter_mut()) {
            s.input
                .iter_mut()
                .chain(s.inputs.iter_mut().flatten())
                .for_each(alias);
        }
        for s in &mut self.sinks {
            s.input
                .iter_mut()
                .chain(s.inputs.iter_mut().flatten())
                .for_each(alias);
        }
        inlined.append(&mut self.stages);
        self.stages = inlined;
        Ok(())
    }
}

/// Replaces `${name}` placeholders in `text`.
fn substitute(key: &str, text: &str, u: &UseSpec, path: &Path) -> Result<String, SpecError> {
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    values.insert("input", escape(&u.input));
    for (k, v) in &u.params {
        if k == "input" {
            return Err(SpecError::invalid(
                format!("{key}.params.input"),
                "is reserved: set the entry's `input` instead",
            ));
        }
        let text = match v {
            toml::Value::String(s) => escape(s),
            other => other.to_string(),
        };
        values.insert(k, text);
    }
    let mut used: HashSet<&str> = HashSet::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(SpecError::invalid(
                format!("{key}.path"),
                format!("{}: an unclosed `${{`", path.display()),
            ));
        };
        let name = &after[..end];
        let Some((k, v)) = values.get_key_value(name) else {
            return Err(SpecError::invalid(
                format!("{key}.params"),
                format!(
                    "{} uses `${{{name}}}`, which has no value; add `{name}` to params",
                    path.display()
                ),
            ));
        };
        used.insert(k);
        out.push_str(v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if let Some(unused) = u.params.keys().find(|k| !used.contains(k.as_str())) {
        return Err(SpecError::invalid(
            format!("{key}.params.{unused}"),
            format!(
                "is not used by {} (no `${{{unused}}}` in it)",
                path.display()
            ),
        ));
    }
    Ok(out)
}

/// A string's contents as they must appear inside a TOML basic string.
fn escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("strings serialize");
    quoted[1..quoted.len() - 1].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const COMMON: &str = r#"
name = "common"
[[stage]]
name = "clean"
input = "${input}"
[stage.filter]
all = [{ range = { column = "${col}", max = ${max} } }]
[[stage]]
name = "encode"
input = "clean"
[stage.wasm]
component = "stages/x.wasm"
"#;

    const OUTER: &str = r#"
name = "outer"
[[use]]
name = "f"
path = "sub/common.toml"
input = "events"
params = { col = "price", max = 500 }
[[source]]
name = "events"
[source.jsonl]
path = "e.jsonl"
schema = [{ name = "price", type = "float64" }]
[[sink]]
name = "out"
input = "f"
[sink.jsonl]
path = "o.jsonl"
"#;

    fn setup(common: &str, outer: &str) -> (tempfile::TempDir, Result<PipelineSpec, SpecError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write(&dir.path().join("sub"), "common.toml", common);
        write(dir.path(), "outer.toml", outer);
        let spec = PipelineSpec::from_file(&dir.path().join("outer.toml"));
        (dir, spec)
    }

    #[test]
    fn stages_are_inlined_prefixed_with_params_and_paths_rebased() {
        let (_dir, spec) = setup(COMMON, OUTER);
        let spec = spec.unwrap();
        assert!(spec.uses.is_empty());
        let names: Vec<(&str, Option<&str>)> = spec
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.input.as_deref()))
            .collect();
        assert_eq!(
            names,
            [("f.clean", Some("events")), ("f.encode", Some("f.clean"))]
        );
        assert_eq!(spec.sinks[0].input.as_deref(), Some("f.encode"));
        let w = spec.stages[1].wasm().unwrap();
        assert_eq!(w.component.as_deref(), Some(Path::new("sub/stages/x.wasm")));
        let crate::spec::StageKind::Filter(f) = &spec.stages[0].kind else {
            panic!("{:?}", spec.stages[0].kind)
        };
        let crate::ops::Predicate::Range(r) = &f.all.as_ref().unwrap()[0] else {
            panic!("{f:?}")
        };
        assert_eq!(
            (r.column.as_str(), r.min, r.max),
            ("price", None, Some(500.0))
        );
        assert_eq!(
            spec.validate().unwrap().render(),
            "source events\n stage f.clean <- events\n stage f.encode <- f.clean\n  sink out <- f.encode\n"
        );
    }

    #[test]
    fn missing_and_unused_params_and_cycles_are_named() {
        let (_d, e) = setup(COMMON, &OUTER.replace("col = \"price\", ", ""));
        assert!(
            e.unwrap_err()
                .to_string()
                .ends_with("common.toml uses `${col}`, which has no value; add `col` to params")
        );
        let (_d, e) = setup(COMMON, &OUTER.replace("max = 500", "max = 500, mx = 3"));
        let e = e.unwrap_err().to_string();
        assert!(e.starts_with("`use[0].params.mx`: is not used by "), "{e}");
        let selfish = "name = \"c\"\n[[use]]\nname = \"again\"\npath = \"common.toml\"\ninput = \"${input}\"\n[[stage]]\nname = \"s\"\ninput = \"again\"\n[stage.batch]\n";
        let (_d, e) = setup(
            selfish,
            OUTER
                .replace("params = { col = \"price\", max = 500 }", "")
                .as_str(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "`use[0].path`: `common.toml` uses itself (directly or through other files)"
        );
        let (_d, e) = setup(
            COMMON,
            &OUTER.replace(
                "path = \"sub/common.toml\"",
                "path = \"sub/common.toml\"\noutput = \"nope\"",
            ),
        );
        assert!(
            e.unwrap_err()
                .to_string()
                .starts_with("`use[0].output`: sub/common.toml has no stage `nope`")
        );
    }
}
