//! A JSON-lines file sink: one JSON object per row.
//!
//! Output goes to a temporary file beside the target and is renamed into place when
//! the run closes the sink, after an `fsync`: readers see either the previous file
//! or the complete new one, and a failed run leaves the previous file untouched.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use arrow::array::RecordBatch;

use crate::batch::json::{JsonOptions, rows_as_objects};
use crate::exec::{NodeError, Sink};
use crate::spec::{JsonlSinkSpec, PipelineSpec};

/// Writes rows as JSON lines.
pub struct JsonlSink {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    columns: Option<Vec<String>>,
    options: JsonOptions,
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
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp)?;
        Ok(Self {
            path,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            columns: spec.columns.clone(),
            options: JsonOptions { float_decimals: spec.float_decimals, ..JsonOptions::default() },
        })
    }

    fn io(&self, source: std::io::Error) -> NodeError {
        NodeError::Io { path: self.path.display().to_string(), source }
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), NodeError> {
        let rows = rows_as_objects(batch, self.columns.as_deref(), self.options)
            .map_err(|e| NodeError::Data(format!("{}: {e}", self.path.display())))?;
        let out = self.out.as_mut().expect("written before close");
        let mut result = Ok(());
        for row in rows {
            result = serde_json::to_writer(&mut *out, &row)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if result.is_err() {
                break;
            }
        }
        result.map_err(|e| self.io(e))
    }

    fn close(&mut self) -> Result<(), NodeError> {
        let Some(out) = self.out.take() else { return Ok(()) };
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
    }
}
