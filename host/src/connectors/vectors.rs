//! `[sink.vectors]`: feature vectors for model serving, as a JSON-lines file.
//!
//! ```toml
//! [sink.vectors]
//! path = "out/vectors.jsonl"
//! layout = "vectors"          # or "objects" (default)
//! columns = ["user_bucket", "price_bucket", "age"]   # default: all, in batch order
//! non_finite = "null"         # "null" (default) | "error" | "string"
//! timestamps = "epoch_ms"     # "epoch_ms" (default) | "rfc3339"
//! float_decimals = 6          # default: none
//! ```
//!
//! Two layouts:
//!
//! - `objects`: one line per row, `{"user_bucket": 17, "price_bucket": 2, "age": 0.5}`.
//! - `vectors`: one line per batch, the names once and the rows as fixed-order
//!   arrays, `{"names": ["user_bucket", "price_bucket", "age"], "rows": [[17, 2, 0.5], …]}`:
//!   what a model's input tensor is built from, without repeating keys per row,
//!   and each line still readable on its own.
//!
//! Values follow [`crate::batch::json`]'s rules (nulls are `null`; NaN, infinity
//! and timestamps as configured). As with `[sink.jsonl]`, output goes to a
//! temporary file renamed into place after an `fsync` when the run ends well.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::batch::json::{JsonOptions, NonFinite, Timestamps, rows_as_arrays, rows_as_objects};
use crate::node::atomic;
use crate::node::config::{BuildCx, SinkConfig, SinkNode};
use crate::node::{Lineage, NodeError, Sink};

/// A feature-vector file sink's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorsSinkSpec {
    /// The file, relative to the pipeline file; replaced on each run.
    pub path: PathBuf,
    /// One object per row, or names once and rows as arrays. Default: `objects`.
    #[serde(default)]
    pub layout: Layout,
    /// Columns to write, in order. Default: all, in batch order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Round floats to this many decimal places. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_decimals: Option<u8>,
    /// What NaN and ±infinity become. Default: `null`.
    #[serde(default)]
    pub non_finite: NonFinite,
    /// How timestamps are written. Default: `epoch_ms`.
    #[serde(default)]
    pub timestamps: Timestamps,
}

/// How rows are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One JSON object per row.
    #[default]
    Objects,
    /// Per batch, `{"names": [...], "rows": [[...], ...]}`.
    Vectors,
}

impl VectorsSinkSpec {
    /// The JSON rendering rules this spec asks for.
    pub fn options(&self) -> JsonOptions {
        JsonOptions {
            float_decimals: self.float_decimals,
            non_finite: self.non_finite,
            timestamps: self.timestamps,
        }
    }
}

/// `{"names": [...], "rows": [[...], ...]}`.
#[derive(Serialize)]
pub(crate) struct Table<'a> {
    pub(crate) names: &'a [String],
    pub(crate) rows: &'a [Vec<serde_json::Value>],
}

/// Writes feature vectors as JSON lines.
pub struct VectorsSink {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    spec: VectorsSinkSpec,
}

impl VectorsSink {
    /// Creates the temporary output file (and its directory).
    ///
    /// # Errors
    /// The directory or file cannot be created.
    pub fn create(spec: &VectorsSinkSpec, path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = atomic::in_progress(&path);
        let file = File::create(&tmp)?;
        Ok(Self {
            path,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            spec: spec.clone(),
        })
    }

    fn io(&self, error: std::io::Error) -> NodeError {
        NodeError::io(self.path.display(), error)
    }
}

impl Sink for VectorsSink {
    fn write(&mut self, batch: &RecordBatch, _lineage: &Lineage) -> Result<(), NodeError> {
        let data = |e| NodeError::config(format!("{}: {e}", self.path.display()));
        let options = self.spec.options();
        let columns = self.spec.columns.as_deref();
        let mut text = Vec::new();
        match self.spec.layout {
            Layout::Objects => {
                for row in rows_as_objects(batch, columns, options).map_err(data)? {
                    serde_json::to_writer(&mut text, &row)
                        .map_err(std::io::Error::from)
                        .map_err(|e| self.io(e))?;
                    text.push(b'\n');
                }
            }
            Layout::Vectors => {
                let (names, rows) = rows_as_arrays(batch, columns, options).map_err(data)?;
                serde_json::to_writer(
                    &mut text,
                    &Table {
                        names: &names,
                        rows: &rows,
                    },
                )
                .map_err(std::io::Error::from)
                .map_err(|e| self.io(e))?;
                text.push(b'\n');
            }
        }
        let out = self.out.as_mut().expect("written before close");
        let r = out.write_all(&text);
        r.map_err(|e| self.io(e))
    }

    fn close(&mut self, _complete: bool) -> Result<(), NodeError> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out.into_inner().map_err(|e| self.io(e.into_error()))?;
        atomic::publish(file, &self.tmp, &self.path).map_err(|e| self.io(e))
    }
}

impl Drop for VectorsSink {
    fn drop(&mut self) {
        // Not closed: the run failed. Leave the previous output as it was.
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl SinkConfig for VectorsSinkSpec {
    fn build(&self, cx: &BuildCx) -> Result<SinkNode, NodeError> {
        let path = cx.resolve(&self.path);
        let sink = VectorsSink::create(self, path.clone())
            .map_err(|e| NodeError::io(path.display(), e))?;
        Ok(SinkNode::Sync(Box::new(sink)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as _,
            ),
            (
                "x",
                Arc::new(Float64Array::from(vec![Some(0.5), Some(f64::NAN), None])) as _,
            ),
            (
                "c",
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])) as _,
            ),
        ])
        .unwrap()
    }

    fn write(spec_toml: &str, batches: &[RecordBatch]) -> Result<String, NodeError> {
        let dir = tempfile::tempdir().unwrap();
        let spec: VectorsSinkSpec =
            toml::from_str(&format!("path = \"v.jsonl\"\n{spec_toml}")).unwrap();
        let mut sink = VectorsSink::create(&spec, dir.path().join(&spec.path)).unwrap();
        for b in batches {
            sink.write(b, &crate::node::Lineage::default())?;
        }
        sink.close(true)?;
        Ok(std::fs::read_to_string(dir.path().join("v.jsonl")).unwrap())
    }

    #[test]
    fn objects_one_per_row() {
        // Keys in column order (serde_json's `preserve_order`).
        let text = write("", &[batch()]).unwrap();
        assert_eq!(
            text,
            "{\"id\":1,\"x\":0.5,\"c\":\"a\"}\n{\"id\":null,\"x\":null,\"c\":\"b\"}\n{\"id\":3,\"x\":null,\"c\":null}\n"
        );
    }

    #[test]
    fn vectors_names_once_per_batch_in_the_chosen_order() {
        let text = write(
            "layout = \"vectors\"\ncolumns = [\"x\", \"id\"]\nnon_finite = \"string\"",
            &[batch(), batch().slice(0, 0), batch().slice(0, 1)],
        )
        .unwrap();
        assert_eq!(
            text,
            "{\"names\":[\"x\",\"id\"],\"rows\":[[0.5,1],[\"NaN\",null],[null,3]]}\n\
             {\"names\":[\"x\",\"id\"],\"rows\":[]}\n\
             {\"names\":[\"x\",\"id\"],\"rows\":[[0.5,1]]}\n"
        );
    }

    #[test]
    fn non_finite_error_fails_the_write_and_names_the_value() {
        let e = write("non_finite = \"error\"", &[batch()])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("v.jsonl: column `x` row 1 is NaN, which JSON cannot represent (non_finite = \"error\")"), "{e}");
        let e = write("columns = [\"nope\"]", &[batch()])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("v.jsonl: the batch has no column `nope`"),
            "{e}"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = toml::from_str::<VectorsSinkSpec>("path = \"v\"\nlayout = \"rows\"").unwrap_err();
        assert_eq!(
            e.message(),
            "unknown variant `rows`, expected `objects` or `vectors`"
        );
        let e =
            toml::from_str::<VectorsSinkSpec>("path = \"v\"\nnon_finite = \"zero\"").unwrap_err();
        assert_eq!(
            e.message(),
            "unknown variant `zero`, expected one of `null`, `error`, `string`"
        );
    }
}
