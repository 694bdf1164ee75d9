//! Pipeline files: what they say, how they are read, and how they are checked.
//!
//! A pipeline is a TOML file (JSON through the API) describing a DAG:
//!
//! ```toml
//! name = "quickstart"
//!
//! [[source]]
//! name = "events"
//! [source.jsonl]
//! path = "events.jsonl"
//! schema = [{ name = "user_id", type = "utf8", required = true }, { name = "price", type = "float64" }]
//!
//! [[stage]]
//! name = "price_bucket"
//! input = "events"
//! [stage.wasm]
//! crate = "../../stages/bucketize"
//! params = { input = "price", boundaries = [0, 10, 50], output = "price_bucket" }
//!
//! [[sink]]
//! name = "features"
//! input = "price_bucket"
//! [sink.jsonl]
//! path = "out/features.jsonl"
//! ```
//!
//! Reading is strict: unknown keys are refused everywhere, and every error names the
//! offending key by its path (`stage[0].wasm.limits.fule`) with line and column,
//! and a node with no kind table or several is refused there too.
//! [`PipelineSpec::validate`] then checks what serde cannot: unique names, inputs
//! that exist, no cycles, each kind table's own check, and returns the DAG in
//! topological order. Nothing runs until both pass. How a node kind is declared,
//! and how to add one, is in the `model` module's docs ([`SourceKind`]).

mod compose;
mod dag;
mod error;
mod model;

pub use crate::ops::{
    AggFilter, AggOp, AggregateSpec, GroupSpec, SessionSpec, SortKey, SortSpec, default_end_column,
    default_partitions, default_start_column,
};
pub use compose::UseSpec;
pub use dag::{Dag, NodeKind, NodeRef};
pub use error::SpecError;
pub use model::*;

use std::path::Path;

impl PipelineSpec {
    /// Parses a pipeline from TOML text. `origin` names the file in errors.
    ///
    /// # Errors
    /// [`SpecError`] naming the key path, line and column of the first problem.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, SpecError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| SpecError::from_toml(origin, text, "", &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            SpecError::from_toml(origin, text, &path, e.inner())
        })
    }

    /// Parses a pipeline from JSON text (the HTTP API's form).
    ///
    /// # Errors
    /// [`SpecError`] naming the key path of the first problem.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, SpecError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| SpecError::Parse {
            origin: origin.to_owned(),
            key: e.path().to_string(),
            location: format!("line {} column {}", e.inner().line(), e.inner().column()),
            message: e.inner().to_string(),
        })
    }

    /// Reads and parses a pipeline file; relative paths in it resolve against its
    /// directory.
    ///
    /// # Errors
    /// [`SpecError::Io`] or a parse error.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut spec = Self::from_toml(&text, &path.display().to_string())?;
        spec.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        spec.inline_uses()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests;
