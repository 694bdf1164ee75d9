//! Dead letters, and the store they go to.
//!
//! A record that cannot be used is never dropped silently: it becomes a
//! [`DeadLetter`] with its reason and position and goes to a [`DeadLetterStore`].
//! The store holds the delivery tokens of the batches the letters came from
//! (their [`Meta`]) until the letters are durable, so a source position is only
//! committed once its rejected records are safe too (see [`super::ack`]).
//!
//! [`FileDeadLetters`] is the embedded store: JSON lines, one file per run (or a
//! source's own `rejects` file), written by a thread of its own so no executor
//! thread waits on the disk. Each line is a [`DeadLetter`] plus the pipeline, the
//! run and the node, so a file can be inspected with `jq` and fed back into a
//! source.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::envelope::Meta;

/// A record that could not be used, kept with the reason so it can be inspected
/// and replayed: the guarantee is that nothing is dropped silently.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// A short, stable reason code for counting (`invalid_json`, `user_id:missing`).
    pub reason: String,
    /// The reason in words.
    pub detail: String,
    /// Where it came from: `file:line` for a source, the row index for a stage.
    pub position: String,
    /// The record itself: the raw line for a source, the row as JSON for a stage.
    pub record: String,
}

/// The dead-letter store could not keep letters: records would be lost, so the
/// run stops.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot write dead letters to {location}: {message}")]
pub struct DeadLetterError {
    /// Where they were going.
    pub location: String,
    /// Why.
    pub message: String,
}

/// Where a run's dead letters go.
///
/// Implementations must not block the caller on I/O: `append` queues, a writer
/// of the store's own makes the letters durable and then drops the `hold`.
pub trait DeadLetterStore: Send + Sync {
    /// Queues `letters` from `node`. `hold` is kept until they are durable (the
    /// delivery tokens of the batches they came from).
    ///
    /// # Errors
    /// A previous write failed: nothing more is accepted.
    fn append(
        &self,
        node: &str,
        letters: Vec<DeadLetter>,
        hold: Vec<Meta>,
    ) -> Result<(), DeadLetterError>;

    /// Waits until everything appended so far is durable.
    ///
    /// # Errors
    /// A write or sync failed.
    fn flush(&self) -> Result<(), DeadLetterError>;

    /// Where letters from `node` are kept, for the run summary (a file path).
    fn location(&self, node: &str) -> String;

    /// Letters kept so far.
    fn count(&self) -> u64;
}

/// One line of a dead-letter file.
#[derive(Debug, Serialize)]
struct Line<'a> {
    pipeline: &'a str,
    run: &'a str,
    node: &'a str,
    #[serde(flatten)]
    letter: &'a DeadLetter,
}

enum Msg {
    Append {
        node: String,
        letters: Vec<DeadLetter>,
        hold: Vec<Meta>,
    },
    Flush(mpsc::Sender<Result<(), DeadLetterError>>),
}

/// The embedded dead-letter store: append-only JSON-lines files, written and
/// synced by a thread of its own.
pub struct FileDeadLetters {
    tx: Mutex<mpsc::Sender<Msg>>,
    default_path: PathBuf,
    own: HashMap<String, PathBuf>,
    failed: Arc<Mutex<Option<DeadLetterError>>>,
    count: std::sync::atomic::AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl FileDeadLetters {
    /// A store writing to `default_path` (created with its directory on the
    /// first letter), and to `own[node]` for nodes that name their own file.
    pub fn new(
        default_path: PathBuf,
        own: HashMap<String, PathBuf>,
        pipeline: &str,
        run: &str,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(Mutex::new(None));
        let mut writer = Writer {
            default_path: default_path.clone(),
            own: own.clone(),
            pipeline: pipeline.to_owned(),
            run: run.to_owned(),
            files: HashMap::new(),
            failed: failed.clone(),
            stuck: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("weir-dead-letters".into())
            .spawn(move || writer.run(&rx))
            .expect("spawning the dead-letter writer");
        Self {
            tx: Mutex::new(tx),
            default_path,
            own,
            failed,
            count: std::sync::atomic::AtomicU64::new(0),
            writer: Mutex::new(Some(handle)),
        }
    }

    /// The run's file (letters of nodes without their own file).
    pub fn default_path(&self) -> &Path {
        &self.default_path
    }

    fn send(&self, msg: Msg) -> Result<(), DeadLetterError> {
        if let Some(e) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(e);
        }
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(msg)
            .map_err(|_| DeadLetterError {
                location: self.default_path.display().to_string(),
                message: "the writer stopped".into(),
            })
    }
}

impl Drop for FileDeadLetters {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(
            self.tx.get_mut().unwrap_or_else(|e| e.into_inner()),
            tx,
        ));
        if let Some(h) = self
            .writer
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}

impl DeadLetterStore for FileDeadLetters {
    fn append(
        &self,
        node: &str,
        letters: Vec<DeadLetter>,
        hold: Vec<Meta>,
    ) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.count
            .fetch_add(letters.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.send(Msg::Append {
            node: node.to_owned(),
            letters,
            hold,
        })
    }

    fn flush(&self) -> Result<(), DeadLetterError> {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::Flush(tx))?;
        rx.recv().unwrap_or_else(|_| {
            Err(DeadLetterError {
                location: self.default_path.display().to_string(),
                message: "the writer stopped".into(),
            })
        })
    }

    fn location(&self, node: &str) -> String {
        self.own
            .get(node)
            .unwrap_or(&self.default_path)
            .display()
            .to_string()
    }

    fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Writer {
    default_path: PathBuf,
    own: HashMap<String, PathBuf>,
    pipeline: String,
    run: String,
    files: HashMap<PathBuf, BufWriter<File>>,
    failed: Arc<Mutex<Option<DeadLetterError>>>,
    /// Holds of letters that could not be written: never settled.
    stuck: Vec<Meta>,
}

impl Writer {
    fn run(&mut self, rx: &mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            // Take whatever else is queued, so one sync covers it all.
            let mut holds = Vec::new();
            let mut replies = Vec::new();
            for msg in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                match msg {
                    Msg::Append {
                        node,
                        letters,
                        hold,
                    } => {
                        if let Err(e) = self.write(&node, &letters) {
                            self.fail(e);
                        }
                        holds.extend(hold);
                    }
                    Msg::Flush(reply) => replies.push(reply),
                }
            }
            if let Err(e) = self.sync() {
                self.fail(e);
            }
            let failed = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match &failed {
                // Durable: the batches they came from may settle.
                None => drop(holds),
                Some(_) => self.stuck.extend(holds),
            }
            for reply in replies {
                let _ = reply.send(failed.clone().map_or(Ok(()), Err));
            }
        }
    }

    fn fail(&self, e: DeadLetterError) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
    }

    fn write(&mut self, node: &str, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let path = self.own.get(node).unwrap_or(&self.default_path).clone();
        let err = |e: &dyn std::fmt::Display| DeadLetterError {
            location: path.display().to_string(),
            message: e.to_string(),
        };
        if !self.files.contains_key(&path) {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| err(&e))?;
            self.files.insert(path.clone(), BufWriter::new(file));
        }
        let out = self.files.get_mut(&path).expect("opened above");
        for letter in letters {
            let line = Line {
                pipeline: &self.pipeline,
                run: &self.run,
                node,
                letter,
            };
            serde_json::to_writer(&mut *out, &line).map_err(|e| err(&e))?;
            out.write_all(b"\n").map_err(|e| err(&e))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DeadLetterError> {
        for (path, out) in &mut self.files {
            out.flush()
                .and_then(|()| out.get_ref().sync_data())
                .map_err(|e| DeadLetterError {
                    location: path.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::ack::CommitTracker;

    #[test]
    fn letters_are_durable_before_their_batch_settles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl/run.jsonl");
        let store = FileDeadLetters::new(path.clone(), HashMap::new(), "p", "r1");
        let tracker = CommitTracker::new("src", None);
        let meta = Meta::from_source(
            std::sync::Arc::new(Default::default()),
            tracker.issue(Some("7".into())),
        );
        let letter = DeadLetter {
            reason: "invalid_json".into(),
            detail: "expected value".into(),
            position: "f:3".into(),
            record: "{".into(),
        };
        store
            .append("src", vec![letter.clone()], vec![meta])
            .unwrap();
        store.flush().unwrap();
        assert_eq!(tracker.frontier().as_deref(), Some("7"));
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["node"], "src");
        assert_eq!(line["reason"], "invalid_json");
        assert_eq!(line["run"], "r1");
        assert_eq!(store.count(), 1);
    }
}
