//! Where dead letters go: an append-only JSON-lines file per run.
//!
//! Each line is a [`DeadLetter`] plus the run, the node and the pipeline, so a file
//! can be inspected with `jq` and its records fed back into a source. A source may
//! name its own `rejects` file; otherwise letters go to the run's file under the
//! data directory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::node::DeadLetter;

/// One line of a dead-letter file.
#[derive(Debug, Serialize)]
struct Line<'a> {
    pipeline: &'a str,
    run: &'a str,
    node: &'a str,
    #[serde(flatten)]
    letter: &'a DeadLetter,
}

/// An append-only dead-letter file, shared by the nodes of a run.
pub struct DeadLetterFile {
    path: PathBuf,
    pipeline: String,
    run: String,
    out: Mutex<Option<BufWriter<File>>>,
}

impl DeadLetterFile {
    /// A file at `path`, created (with its directory) on the first letter.
    pub fn new(path: PathBuf, pipeline: &str, run: &str) -> Self {
        Self {
            path,
            pipeline: pipeline.to_owned(),
            run: run.to_owned(),
            out: Mutex::new(None),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends letters from `node`.
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub fn append(&self, node: &str, letters: &[DeadLetter]) -> std::io::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut guard = self.out.lock().expect("dead-letter lock");
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            *guard = Some(BufWriter::new(file));
        }
        let out = guard.as_mut().expect("opened above");
        for letter in letters {
            let line = Line {
                pipeline: &self.pipeline,
                run: &self.run,
                node,
                letter,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Flushes buffered letters to disk.
    ///
    /// # Errors
    /// The flush fails.
    pub fn flush(&self) -> std::io::Result<()> {
        match self.out.lock().expect("dead-letter lock").as_mut() {
            Some(out) => out.flush().and_then(|()| out.get_ref().sync_data()),
            None => Ok(()),
        }
    }
}
