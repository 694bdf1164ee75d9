//! The CSV sink: a header line, then one line per row, written as the
//! JSON-lines sink writes (an in-progress file renamed into place at close;
//! durable at each flush, with its length as the state a resumed run truncates
//! to). Nulls are empty fields; timestamps are written as ISO 8601 times, which
//! the CSV source (and DuckDB, pandas, Spark) read back.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use super::{default_delimiter, delimiter_byte};
use crate::node::atomic;
use crate::node::config::SpecError;
use crate::node::{Durability, Lineage, NodeError, Sink};

/// A CSV sink (`[sink.csv]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkSpec {
    /// The file, relative to the pipeline file; replaced on each run.
    pub path: PathBuf,
    /// Write a first line naming the columns. Default: true.
    #[serde(default = "super::yes")]
    pub header: bool,
    /// The field delimiter, one ASCII character. Default: `","`.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Columns to write, in order. Default: all, in batch order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

impl CsvSinkSpec {
    /// Checks the spec; errors name the key under `key` (e.g. `sink[0].csv`).
    ///
    /// # Errors
    /// A bad delimiter.
    pub fn check(&self, key: &str) -> Result<(), SpecError> {
        delimiter_byte(&format!("{key}.delimiter"), &self.delimiter).map(|_| ())
    }
}

/// What a flush made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FlushState {
    bytes: u64,
    rows: u64,
}

/// Writes rows as CSV lines.
pub struct CsvSink {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    header: bool,
    delimiter: u8,
    columns: Option<Vec<String>>,
    bytes: u64,
    rows: u64,
    text: Vec<u8>,
}

impl CsvSink {
    /// A sink writing to `path` (resolved), creating its directory.
    ///
    /// # Errors
    /// A bad delimiter, or the directory cannot be created.
    pub fn create(spec: &CsvSinkSpec, path: PathBuf) -> Result<Self, NodeError> {
        let delimiter = delimiter_byte("csv.delimiter", &spec.delimiter)
            .map_err(|e| NodeError::config(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir.display(), e))?;
        }
        Ok(Self {
            tmp: atomic::in_progress(&path),
            path,
            out: None,
            header: spec.header,
            delimiter,
            columns: spec.columns.clone(),
            bytes: 0,
            rows: 0,
            text: Vec::new(),
        })
    }

    fn io(&self, e: std::io::Error) -> NodeError {
        NodeError::io(self.path.display(), e)
    }

    fn ensure_open(&mut self) -> Result<(), NodeError> {
        if self.out.is_none() {
            let file = File::create(&self.tmp).map_err(|e| self.io(e))?;
            self.out = Some(BufWriter::with_capacity(1 << 20, file));
        }
        Ok(())
    }
}

impl Sink for CsvSink {
    fn write(&mut self, batch: &RecordBatch, _lineage: &Lineage) -> Result<(), NodeError> {
        self.ensure_open()?;
        let batch = match &self.columns {
            None => batch.clone(),
            Some(cols) => {
                let schema = batch.schema();
                let ix = cols
                    .iter()
                    .map(|c| {
                        schema.index_of(c).map_err(|_| {
                            NodeError::config(format!(
                                "{}: no column `{c}` to write (`columns`)",
                                self.path.display()
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                batch.project(&ix)?
            }
        };
        self.text.clear();
        {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(self.header && self.bytes == 0)
                .with_delimiter(self.delimiter)
                .build(&mut self.text);
            w.write(&batch)
                .map_err(|e| NodeError::config(format!("{}: {e}", self.path.display())))?;
        }
        let Some(out) = self.out.as_mut() else {
            return Err(NodeError::Bug("write after close".into()));
        };
        let written = out.write_all(&self.text);
        written.map_err(|e| self.io(e))?;
        self.bytes += self.text.len() as u64;
        self.rows += batch.num_rows() as u64;
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
        let state = FlushState {
            bytes: self.bytes,
            rows: self.rows,
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
        self.out =
            Some(atomic::reopen_at(&self.tmp, &self.path, state.bytes).map_err(|e| self.io(e))?);
        self.bytes = state.bytes;
        self.rows = state.rows;
        Ok(())
    }

    fn close(&mut self, _complete: bool) -> Result<(), NodeError> {
        self.ensure_open()?;
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out.into_inner().map_err(|e| self.io(e.into_error()))?;
        atomic::publish(file, &self.tmp, &self.path).map_err(|e| self.io(e))?;
        Ok(())
    }
}

impl crate::node::config::SinkConfig for CsvSinkSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        CsvSinkSpec::check(self, key)
    }

    fn build(
        &self,
        cx: &crate::node::config::BuildCx,
    ) -> Result<crate::node::config::SinkNode, NodeError> {
        let sink = CsvSink::create(self, cx.resolve(&self.path))?;
        Ok(crate::node::config::SinkNode::Sync(Box::new(sink)))
    }
}
