//! A JSON-lines file sink: one JSON object per row.
//!
//! Output goes to a temporary file beside the target and is renamed into place when
//! the run closes the sink, after an `fsync`: readers see either the previous file
//! or the complete new one, and a failed run leaves the previous file untouched.
//!
//! With `lineage = true` a side file `<path>.lineage.jsonl` gets one line per
//! written batch, `{"first_line": 1, "lines": 50, "lineage": {...}}` (lines counted
//! from 1, as editors do), written and renamed into place the same way, so the
//! output file alone answers "which code and which input made line N"
//! ([`lineage_of_line`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::batch::json::{JsonOptions, write_object_lines};
use crate::exec::lineage::Lineage;
use crate::exec::{NodeError, Sink};
use crate::spec::{JsonlSinkSpec, PipelineSpec};

/// Writes rows as JSON lines.
pub struct JsonlSink {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    columns: Option<Vec<String>>,
    options: JsonOptions,
    lineage: Option<SideFile>,
    lines: u64,
    /// One batch's text, reused from batch to batch.
    text: Vec<u8>,
}

/// The lineage side file being written.
struct SideFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

/// One line of a lineage side file: output lines `first_line ..
/// first_line + lines` share `lineage`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineageLine {
    /// The first output line (from 1).
    pub first_line: u64,
    /// How many lines.
    pub lines: u64,
    /// Where they came from.
    pub lineage: Lineage,
}

/// The side file a JSON-lines output's lineage is written to.
pub fn lineage_path(output: &Path) -> PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(".lineage.jsonl");
    PathBuf::from(p)
}

/// The lineage of line `line` (from 1) of JSON-lines `output`, from its side file;
/// `Ok(None)` when the side file does not cover that line.
///
/// # Errors
/// The side file cannot be read, or a line of it does not parse.
pub fn lineage_of_line(output: &Path, line: u64) -> std::io::Result<Option<LineageLine>> {
    let side = lineage_path(output);
    let text = std::fs::read_to_string(&side)?;
    for (i, l) in text.lines().enumerate() {
        let entry: LineageLine = serde_json::from_str(l).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", side.display(), i + 1),
            )
        })?;
        if (entry.first_line..entry.first_line + entry.lines).contains(&line) {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

fn tmp_beside(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(tmp)
}

impl JsonlSink {
    /// Creates the temporary output file (and its directory).
    ///
    /// # Errors
    /// The directory or file cannot be created.
    pub fn create(pipeline: &PipelineSpec, spec: &JsonlSinkSpec) -> std::io::Result<Self> {
        let path = pipeline.resolve(&spec.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = tmp_beside(&path);
        let file = File::create(&tmp)?;
        let lineage = if spec.lineage {
            let side = lineage_path(&path);
            let side_tmp = tmp_beside(&side);
            let out = Some(BufWriter::new(File::create(&side_tmp)?));
            Some(SideFile {
                path: side,
                tmp: side_tmp,
                out,
            })
        } else {
            None
        };
        Ok(Self {
            path,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            columns: spec.columns.clone(),
            options: JsonOptions {
                float_decimals: spec.float_decimals,
                ..JsonOptions::default()
            },
            lineage,
            lines: 0,
            text: Vec::new(),
        })
    }

    fn io(&self, source: std::io::Error) -> NodeError {
        NodeError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), NodeError> {
        self.text.clear();
        write_object_lines(batch, self.columns.as_deref(), self.options, &mut self.text)
            .map_err(|e| NodeError::Data(format!("{}: {e}", self.path.display())))?;
        let out = self.out.as_mut().expect("written before close");
        let result = out.write_all(&self.text);
        result.map_err(|e| self.io(e))?;
        let first_line = self.lines + 1;
        self.lines += batch.num_rows() as u64;
        if let Some(side) = self.lineage.as_mut() {
            let entry = LineageLine {
                first_line,
                lines: batch.num_rows() as u64,
                lineage: Lineage::of(batch).unwrap_or_default(),
            };
            let out = side.out.as_mut().expect("written before close");
            let written = serde_json::to_writer(&mut *out, &entry)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            written.map_err(|source| NodeError::Io {
                path: side.path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), NodeError> {
        if let Some(side) = self.lineage.as_mut()
            && let Some(out) = side.out.take()
        {
            let io = |source| NodeError::Io {
                path: side.path.display().to_string(),
                source,
            };
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&side.tmp, &side.path).map_err(io)?;
        }
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out.into_inner().map_err(|e| self.io(e.into_error()))?;
        file.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| self.io(e))
    }
}

impl Drop for JsonlSink {
    fn drop(&mut self) {
        // Not closed: the run failed. Leave the previous output as it was.
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        if let Some(side) = self.lineage.as_ref().filter(|s| s.out.is_some()) {
            let _ = std::fs::remove_file(&side.tmp);
        }
    }
}
