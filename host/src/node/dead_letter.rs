//! Dead letters, and the store they go to.
//!
//! A record that cannot be used is never dropped silently: the node that met it
//! emits a [`DeadLetter`] (whose fault, why, where, and the record itself); the
//! scheduler stamps it with where it happened (tenant, pipeline and version,
//! run, node, component digest, time) into a [`DeadLetterRecord`] and appends
//! it to the run's [`DeadLetterStore`]. The store holds the delivery tokens of
//! the batches the letters came from (their [`Meta`]) until the letters are
//! durable, so a source position is only committed once its rejected records
//! are safe too (see [`super::ack`]).
//!
//! ```text
//!   node ── DeadLetter ──► scheduler ── DeadLetterRecord + hold ──► DeadLetterStore
//!                          (stamps where)                            durable ─► hold dropped ─► ack
//! ```
//!
//! The store is given to the scheduler by its host (as checkpoints are), so one
//! store can serve every run of a process. [`FileDeadLetters`] is the export
//! format and the default when the host gives none: JSON lines, one file per run
//! (or a source's own `rejects` file), written by a thread of its own so no
//! executor thread waits on the disk. Each line is a record, so a file can be
//! inspected with `jq` and fed back into a source.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::envelope::Meta;
use super::error::Fault;

/// A record that could not be used, as the node that met it emits it, kept with
/// the reason so it can be inspected and replayed: the guarantee is that
/// nothing is dropped silently.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// Whose fault it is: [`Fault::Data`] for a record the node cannot use, a
    /// stage's fault for a row its code refused.
    pub fault: Fault,
    /// A short, stable reason code for counting (`invalid_json`, `user_id:missing`).
    pub reason: String,
    /// The reason in words.
    pub detail: String,
    /// Where it came from: `file:line` for a source, the row index for a stage.
    pub position: String,
    /// The record itself, byte for byte: the raw line or message of a source
    /// (kept whole even when it is not UTF-8), the row as JSON text or as Arrow
    /// IPC for an operator.
    pub payload: Payload,
}

impl DeadLetter {
    /// The payload as text, when it is raw bytes that are UTF-8 (what tests
    /// and listings print).
    pub fn text(&self) -> Option<&str> {
        self.payload.text()
    }
}

/// What a dead letter holds of the record itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "encoding", content = "hex")]
pub enum Payload {
    /// The record's bytes as the node had them: the raw line or message of a
    /// source, a row as JSON text for an operator.
    Raw(#[serde(with = "as_hex")] Vec<u8>),
    /// Rows as an Arrow IPC stream (schema, then one batch): what a stage gives
    /// when the rows have no text form of their own.
    ArrowIpc(#[serde(with = "as_hex")] Vec<u8>),
}

impl Payload {
    /// `batch` as an Arrow IPC stream.
    ///
    /// # Errors
    /// The IPC writer refused the batch (a type it cannot write).
    pub fn rows(batch: &arrow::array::RecordBatch) -> Result<Self, arrow::error::ArrowError> {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())?;
        w.write(batch)?;
        Ok(Self::ArrowIpc(w.into_inner()?))
    }

    /// Text kept as the record's bytes (a line, a row as JSON).
    pub fn text_of(text: impl Into<String>) -> Self {
        Self::Raw(text.into().into_bytes())
    }

    /// The bytes as text, when they are raw and UTF-8: how a listing shows a
    /// record readably.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Raw(b) => std::str::from_utf8(b).ok(),
            Self::ArrowIpc(_) => None,
        }
    }

    /// The bytes, in their encoding.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Raw(b) | Self::ArrowIpc(b) => b,
        }
    }
}

/// Bytes as lower-case hex in text formats.
mod as_hex {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// A dead letter as it is kept: the node's [`DeadLetter`] stamped with where
/// and when it happened, so a store shared by every run of a host can be
/// listed, counted and replayed by tenant, pipeline, version, node and fault.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterRecord {
    /// The tenant the run belongs to (`default` for the CLI).
    pub tenant: String,
    /// The pipeline.
    pub pipeline: String,
    /// The pipeline's stored version (`None` for a pipeline run from a file).
    pub version: Option<u64>,
    /// The run.
    pub run: String,
    /// The node that emitted it.
    pub node: String,
    /// The digest of the node's component, for a WebAssembly stage.
    pub component: Option<String>,
    /// Whose fault it is.
    pub fault: Fault,
    /// A short, stable reason code for counting (`invalid_json`, `late`).
    pub reason: String,
    /// The reason in words.
    pub message: String,
    /// When it was kept, in epoch milliseconds.
    pub at_ms: u64,
    /// Where the record came from: `file:line` for a source, the row for a stage.
    pub position: String,
    /// The record itself.
    pub payload: Payload,
}

/// Where the records of one run are stamped from ([`LetterStamp::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterStamp {
    /// The tenant.
    pub tenant: String,
    /// The pipeline.
    pub pipeline: String,
    /// Its stored version, if any.
    pub version: Option<u64>,
    /// The run's id.
    pub run: String,
}

impl LetterStamp {
    /// `letter` from `node` (with `component`'s digest, if a WebAssembly
    /// stage), kept at `at_ms`.
    pub fn record(
        &self,
        node: &str,
        component: Option<&str>,
        letter: DeadLetter,
        at_ms: u64,
    ) -> DeadLetterRecord {
        DeadLetterRecord {
            tenant: self.tenant.clone(),
            pipeline: self.pipeline.clone(),
            version: self.version,
            run: self.run.clone(),
            node: node.to_owned(),
            component: component.map(str::to_owned),
            fault: letter.fault,
            reason: letter.reason,
            message: letter.detail,
            at_ms,
            position: letter.position,
            payload: letter.payload,
        }
    }
}

/// What a pipeline does when its tenant's dead-letter store is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Sources pause until letters are replayed or purged; the letters that did
    /// not fit wait in memory and hold their source positions back. The default:
    /// a full store is an operator's call to make, not a reason to lose a run.
    #[default]
    Backpressure,
    /// The run stops with an error naming the store and its limit; the letters
    /// that did not fit are not committed, so a resumed run reads them again.
    Stop,
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

/// Where dead letters go: given to the scheduler by its host, one store may
/// serve every run of a process (records say which run is theirs).
///
/// The scheduler relies on one guarantee: `hold` (the delivery tokens of the
/// batches the records came from) is dropped only once the records are
/// durable, so no source position is committed before its rejected records are
/// safe; and [`DeadLetterStore::flush`] returns only when everything appended
/// before it is durable (a checkpoint is saved after it). Implementations must
/// not block the caller on I/O for long: `append` is called from the
/// scheduler's tasks; a store may write on a thread of its own and drop the
/// hold there.
pub trait DeadLetterStore: Send + Sync {
    /// Appends `records`; keeps `hold` until they are durable.
    ///
    /// # Errors
    /// A previous write failed: nothing more is accepted, and the run stops.
    fn append(
        &self,
        records: Vec<DeadLetterRecord>,
        hold: Vec<Meta>,
    ) -> Result<(), DeadLetterError>;

    /// Waits until everything appended so far is durable.
    ///
    /// # Errors
    /// A write or sync failed.
    fn flush(&self) -> Result<(), DeadLetterError>;

    /// Where letters from `node` of `pipeline` are kept, for the run summary
    /// (a file path, a store and its key).
    fn location(&self, pipeline: &str, node: &str) -> String;

    /// Whether the store asks the run to slow down (it is full and waits for
    /// letters to be replayed or purged): sources pause while it says so, as
    /// they do under the memory floor. Default: never.
    fn is_full(&self) -> bool {
        false
    }
}

/// One line of a dead-letter file: the record, its payload as text when it is
/// text (`record`), else its bytes (`payload`).
#[derive(Debug, Serialize)]
struct Line<'a> {
    tenant: &'a str,
    pipeline: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    run: &'a str,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    #[serde(flatten)]
    fault: Fault,
    reason: &'a str,
    detail: &'a str,
    at_ms: u64,
    position: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a Payload>,
}

impl<'a> Line<'a> {
    fn of(r: &'a DeadLetterRecord) -> Self {
        let text = match &r.payload {
            Payload::Raw(b) => std::str::from_utf8(b).ok(),
            Payload::ArrowIpc(_) => None,
        };
        Self {
            tenant: &r.tenant,
            pipeline: &r.pipeline,
            version: r.version,
            run: &r.run,
            node: &r.node,
            component: r.component.as_deref(),
            fault: r.fault,
            reason: &r.reason,
            detail: &r.message,
            at_ms: r.at_ms,
            position: &r.position,
            record: text,
            payload: text.is_none().then_some(&r.payload),
        }
    }
}

impl DeadLetterRecord {
    /// The record as one line of a dead-letter file (see [`FileDeadLetters`]):
    /// the fields flat, the payload as `record` when it is text, else as
    /// `payload` (its encoding and hex). What `weir dlq export` writes.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Line::of(self)).unwrap_or_default()
    }
}

enum Msg {
    Append {
        records: Vec<DeadLetterRecord>,
        hold: Vec<Meta>,
    },
    Flush(mpsc::Sender<Result<(), DeadLetterError>>),
}

/// The export store, and the default: append-only JSON-lines files (one line
/// per [`DeadLetterRecord`]), written and synced by a thread of its own.
pub struct FileDeadLetters {
    tx: Mutex<mpsc::Sender<Msg>>,
    default_path: PathBuf,
    own: HashMap<String, PathBuf>,
    failed: Arc<Mutex<Option<DeadLetterError>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl FileDeadLetters {
    /// A store writing to `default_path` (created with its directory on the
    /// first letter), and to `own[node]` for nodes that name their own file.
    pub fn new(default_path: PathBuf, own: HashMap<String, PathBuf>) -> Self {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(Mutex::new(None));
        let mut writer = Writer {
            default_path: default_path.clone(),
            own: own.clone(),
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
        records: Vec<DeadLetterRecord>,
        hold: Vec<Meta>,
    ) -> Result<(), DeadLetterError> {
        if records.is_empty() {
            return Ok(());
        }
        self.send(Msg::Append { records, hold })
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

    fn location(&self, _pipeline: &str, node: &str) -> String {
        self.own
            .get(node)
            .unwrap_or(&self.default_path)
            .display()
            .to_string()
    }
}

/// Records of the nodes in `own` go to `main` and to a file of their own
/// ([`FileDeadLetters`]), the rest to `main` alone: how a host's store and a
/// source's `rejects` file are both kept. A batch's hold is dropped once both
/// stores that received its records made them durable.
pub struct WithExports {
    main: Arc<dyn DeadLetterStore>,
    own: HashMap<String, PathBuf>,
    files: FileDeadLetters,
}

impl WithExports {
    /// `main`, with the records of each node in `own` also written to its file.
    pub fn new(main: Arc<dyn DeadLetterStore>, own: HashMap<String, PathBuf>) -> Self {
        // Nothing goes to the default path: only nodes in `own` are exported.
        let files = FileDeadLetters::new(PathBuf::new(), own.clone());
        Self { main, own, files }
    }
}

impl DeadLetterStore for WithExports {
    fn append(
        &self,
        records: Vec<DeadLetterRecord>,
        hold: Vec<Meta>,
    ) -> Result<(), DeadLetterError> {
        let exported: Vec<DeadLetterRecord> = records
            .iter()
            .filter(|r| self.own.contains_key(&r.node))
            .cloned()
            .collect();
        if !exported.is_empty() {
            // Each store holds its own copy of the tokens: they settle when
            // both have dropped theirs.
            self.files.append(exported, hold.clone())?;
        }
        self.main.append(records, hold)
    }

    fn flush(&self) -> Result<(), DeadLetterError> {
        self.files.flush()?;
        self.main.flush()
    }

    fn location(&self, pipeline: &str, node: &str) -> String {
        match self.own.get(node) {
            Some(p) => p.display().to_string(),
            None => self.main.location(pipeline, node),
        }
    }

    fn is_full(&self) -> bool {
        self.main.is_full()
    }
}

struct Writer {
    default_path: PathBuf,
    own: HashMap<String, PathBuf>,
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
                    Msg::Append { records, hold } => {
                        if let Err(e) = self.write(&records) {
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

    fn write(&mut self, records: &[DeadLetterRecord]) -> Result<(), DeadLetterError> {
        for r in records {
            self.write_one(r)?;
        }
        Ok(())
    }

    fn write_one(&mut self, record: &DeadLetterRecord) -> Result<(), DeadLetterError> {
        let path = self
            .own
            .get(&record.node)
            .unwrap_or(&self.default_path)
            .clone();
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
        let Some(out) = self.files.get_mut(&path) else {
            return Err(err(&"the file was not opened"));
        };
        serde_json::to_writer(&mut *out, &Line::of(record)).map_err(|e| err(&e))?;
        out.write_all(b"\n").map_err(|e| err(&e))
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
        let store = FileDeadLetters::new(path.clone(), HashMap::new());
        let tracker = CommitTracker::new("src", None);
        let meta = Meta::from_source(
            std::sync::Arc::new(Default::default()),
            tracker.issue(Some("7".into())),
        );
        let letter = DeadLetter {
            fault: Fault::Data,
            reason: "invalid_json".into(),
            detail: "expected value".into(),
            position: "f:3".into(),
            payload: Payload::text_of("{"),
        };
        let stamp = LetterStamp {
            tenant: "default".into(),
            pipeline: "p".into(),
            version: Some(2),
            run: "r1".into(),
        };
        let record = stamp.record("src", None, letter, 1_700_000_000_000);
        store.append(vec![record.clone()], vec![meta]).unwrap();
        store.flush().unwrap();
        assert_eq!(tracker.frontier().as_deref(), Some("7"));
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "tenant": "default", "pipeline": "p", "version": 2, "run": "r1",
                "node": "src", "fault": "data", "reason": "invalid_json",
                "detail": "expected value", "at_ms": 1_700_000_000_000u64,
                "position": "f:3", "record": "{"
            })
        );
        // The record itself round-trips through its serde form (what a store keeps).
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<DeadLetterRecord>(&json).unwrap(),
            record
        );
    }

    #[test]
    fn rows_are_kept_as_arrow_ipc_and_exported_as_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let store = FileDeadLetters::new(path.clone(), HashMap::new());
        let batch = arrow::array::RecordBatch::try_from_iter([(
            "a",
            Arc::new(arrow::array::Int64Array::from(vec![7])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let payload = Payload::rows(&batch).unwrap();
        let record = DeadLetterRecord {
            tenant: "t".into(),
            pipeline: "p".into(),
            version: None,
            run: "r".into(),
            node: "stage".into(),
            component: Some("sha256:ab".into()),
            fault: Fault::Stage {
                transient: false,
                trap: true,
            },
            reason: "trap".into(),
            message: "fuel exhausted".into(),
            at_ms: 1,
            position: "row 0".into(),
            payload: payload.clone(),
        };
        store.append(vec![record], Vec::new()).unwrap();
        store.flush().unwrap();
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["fault"], "stage");
        assert_eq!(line["trap"], true);
        assert_eq!(line["component"], "sha256:ab");
        assert_eq!(line["payload"]["encoding"], "arrow_ipc");
        let bytes = hex::decode(line["payload"]["hex"].as_str().unwrap()).unwrap();
        let read: Vec<_> = arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read, vec![batch]);
        assert_eq!(payload.bytes(), &bytes[..]);
    }
}
