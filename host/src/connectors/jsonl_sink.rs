//! A JSON-lines file sink: one JSON object per row.
//!
//! Output goes to an in-progress file beside the target
//! (`<path>.weir-inprogress`) and is renamed into place when the run closes the
//! sink, after an `fsync`: readers see either the previous file or the complete
//! new one, and a failed run leaves the previous file untouched.
//!
//! The sink is durable at its flush points ([`Durability::OnFlush`]): the
//! executor flushes it at checkpoint intervals; a flush syncs the in-progress
//! file and returns its length and line count as the state a resumed run
//! restores. Restoring truncates the in-progress file (or a copy of the published
//! output, when the run being resumed had closed) to that length, dropping what
//! was written after the last checkpoint, and appends from there: a resumed run
//! re-reads its input from the checkpointed positions, so every record ends up in
//! the output at least once, and records between the checkpoint's position and
//! the sink's state appear twice.
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

use serde::{Deserialize, Serialize};

use crate::batch::json::{JsonOptions, write_object_lines};
use crate::node::atomic;
use crate::node::config::{BuildCx, SinkConfig, SinkNode};
use crate::node::{Durability, Lineage, NodeError, Sink};

/// A JSON-lines file sink: one JSON object per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkSpec {
    /// The file, relative to the pipeline file; replaced on each run.
    pub path: PathBuf,
    /// Round floats to this many decimal places. Default: none (shortest exact form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_decimals: Option<u8>,
    /// Columns to write, in order. Default: all, in batch order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Also write `<path>.lineage.jsonl`: per written batch, its lines in the
    /// output and its lineage (pipeline version, stage digests and parameter
    /// hashes, source positions), so `weir lineage <path>:<line>` answers from the
    /// output alone. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lineage: bool,
}

/// What a flush made durable: the state a resumed run restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FlushState {
    bytes: u64,
    lines: u64,
    #[serde(default)]
    side_bytes: u64,
}

/// Writes rows as JSON lines.
pub struct JsonlSink {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    /// Bytes written to the in-progress file.
    bytes: u64,
    closed: bool,
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
    bytes: u64,
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

impl JsonlSink {
    /// A sink writing to `path` (resolved), creating its directory. The
    /// in-progress file is opened at the first write, or by [`Sink::restore`].
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn create(spec: &JsonlSinkSpec, path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = atomic::in_progress(&path);
        let lineage = spec.lineage.then(|| {
            let side = lineage_path(&path);
            SideFile {
                tmp: atomic::in_progress(&side),
                path: side,
                out: None,
                bytes: 0,
            }
        });
        Ok(Self {
            path,
            tmp,
            bytes: 0,
            closed: false,
            out: None,
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

    fn io(&self, error: std::io::Error) -> NodeError {
        NodeError::io(self.path.display(), error)
    }

    /// Opens fresh in-progress files unless a restore opened them.
    fn ensure_open(&mut self) -> Result<(), NodeError> {
        if self.out.is_none() {
            let file = File::create(&self.tmp).map_err(|e| self.io(e))?;
            self.out = Some(BufWriter::with_capacity(1 << 20, file));
        }
        if let Some(side) = self.lineage.as_mut()
            && side.out.is_none()
        {
            let file =
                File::create(&side.tmp).map_err(|e| NodeError::io(side.path.display(), e))?;
            side.out = Some(BufWriter::new(file));
        }
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, batch: &RecordBatch, lineage: &Lineage) -> Result<(), NodeError> {
        self.ensure_open()?;
        self.text.clear();
        write_object_lines(batch, self.columns.as_deref(), self.options, &mut self.text)
            .map_err(|e| NodeError::config(format!("{}: {e}", self.path.display())))?;
        let Some(out) = self.out.as_mut() else {
            return Err(NodeError::Bug("write after close".into()));
        };
        let result = out.write_all(&self.text);
        result.map_err(|e| self.io(e))?;
        self.bytes += self.text.len() as u64;
        let first_line = self.lines + 1;
        self.lines += batch.num_rows() as u64;
        if let Some(side) = self.lineage.as_mut()
            && let Some(out) = side.out.as_mut()
        {
            let entry = LineageLine {
                first_line,
                lines: batch.num_rows() as u64,
                lineage: lineage.clone(),
            };
            let mut line = serde_json::to_vec(&entry).map_err(|e| NodeError::Bug(e.to_string()))?;
            line.push(b'\n');
            out.write_all(&line)
                .map_err(|e| NodeError::io(side.path.display(), e))?;
            side.bytes += line.len() as u64;
        }
        Ok(())
    }

    fn durability(&self) -> Durability {
        Durability::OnFlush
    }

    fn flush(&mut self) -> Result<Option<String>, NodeError> {
        self.ensure_open()?;
        if let Some(out) = self.out.as_mut() {
            let synced = out.flush().and_then(|()| out.get_ref().sync_data());
            synced.map_err(|e| self.io(e))?;
        }
        if let Some(side) = self.lineage.as_mut()
            && let Some(out) = side.out.as_mut()
        {
            out.flush()
                .and_then(|()| out.get_ref().sync_data())
                .map_err(|e| NodeError::io(side.path.display(), e))?;
        }
        let state = FlushState {
            bytes: self.bytes,
            lines: self.lines,
            side_bytes: self.lineage.as_ref().map_or(0, |s| s.bytes),
        };
        serde_json::to_string(&state)
            .map(Some)
            .map_err(|e| NodeError::Bug(e.to_string()))
    }

    fn restore(&mut self, state: &str) -> Result<(), NodeError> {
        let state: FlushState = serde_json::from_str(state).map_err(|e| {
            NodeError::config(format!(
                "{}: the checkpoint's sink state `{state}` does not parse: {e}",
                self.path.display()
            ))
        })?;
        let out = atomic::reopen_at(&self.tmp, &self.path, state.bytes).map_err(|e| self.io(e))?;
        self.out = Some(out);
        self.bytes = state.bytes;
        self.lines = state.lines;
        if let Some(side) = self.lineage.as_mut() {
            let out = atomic::reopen_at(&side.tmp, &side.path, state.side_bytes)
                .map_err(|e| NodeError::io(side.path.display(), e))?;
            side.out = Some(out);
            side.bytes = state.side_bytes;
        }
        Ok(())
    }

    fn close(&mut self, _complete: bool) -> Result<(), NodeError> {
        self.ensure_open()?;
        if let Some(side) = self.lineage.as_mut()
            && let Some(out) = side.out.take()
        {
            let io = |e| NodeError::io(side.path.display(), e);
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            atomic::publish(file, &side.tmp, &side.path).map_err(io)?;
        }
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out.into_inner().map_err(|e| self.io(e.into_error()))?;
        atomic::publish(file, &self.tmp, &self.path).map_err(|e| self.io(e))?;
        self.closed = true;
        Ok(())
    }
}

impl SinkConfig for JsonlSinkSpec {
    /// Replayed records follow the lines the file holds now (and its lineage
    /// file's), as a resumed run's would; with no file yet, a replay writes one.
    fn replay_into(&self, base_dir: &std::path::Path) -> crate::node::config::ReplayInto {
        use crate::node::config::ReplayInto;
        let path = base_dir.join(&self.path);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ReplayInto::Adds,
            Err(e) => return ReplayInto::Refuses(format!("{}: {e}", path.display())),
        };
        let side_bytes = if self.lineage {
            std::fs::metadata(lineage_path(&path)).map_or(0, |m| m.len())
        } else {
            0
        };
        let state = FlushState {
            bytes: text.len() as u64,
            lines: memchr::memchr_iter(b'\n', &text).count() as u64,
            side_bytes,
        };
        match serde_json::to_string(&state) {
            Ok(s) => ReplayInto::Continues(s),
            Err(e) => ReplayInto::Refuses(e.to_string()),
        }
    }

    fn build(&self, cx: &BuildCx) -> Result<SinkNode, NodeError> {
        let path = cx.resolve(&self.path);
        let sink =
            JsonlSink::create(self, path.clone()).map_err(|e| NodeError::io(path.display(), e))?;
        Ok(SinkNode::Sync(Box::new(sink)))
    }
}
