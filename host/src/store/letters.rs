//! The dead-letter store: every record a run could not deliver, per tenant, in
//! sled, so it can be listed, exported, replayed through a fixed version and
//! purged, by any `weir` command while runs keep writing.
//!
//! ```text
//!   <tenant>/dead_letters        pipeline \0 run \0 seq (u64 BE) → StoredLetter (StoredLetter::encode)
//!   <tenant>/dead_letters.usage  "bytes" | "entries"            → u64 BE
//! ```
//!
//! Keys are chosen by the writer (the run and a sequence number within it), so
//! appending the same letters twice, as a client does when the owner went away
//! before answering, stores them once. Within a pipeline, entries sort by run
//! and then in the order the run kept them. The usage counters are updated with
//! each write, so the size limit of a tenant is checked without a scan.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
pub use crate::node::WhenFull;
use crate::node::{DeadLetterError, DeadLetterRecord, DeadLetterStore, Meta};

/// The tree the letters live in.
pub(crate) const TREE: &str = "dead_letters";
/// The tree of the usage counters.
pub(crate) const USAGE_TREE: &str = "dead_letters.usage";

/// A dead letter as the store keeps it: the record, its id, and what replays
/// made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLetter {
    /// `<run>/<seq>`: stable, and what `weir dlq show` takes.
    pub id: String,
    /// The letter, stamped with where and when it happened.
    pub record: DeadLetterRecord,
    /// How many replays it failed; past the replay limit it is not replayed
    /// again unless forced, so a poison record cannot loop.
    #[serde(default)]
    pub replays: u32,
    /// Why the last replay failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replay: Option<ReplayFailure>,
}

/// Why a replay of a letter failed, kept on the letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayFailure {
    /// When, in epoch milliseconds.
    pub at_ms: u64,
    /// The version it was replayed through.
    pub version: Option<u64>,
    /// The node that refused it this time.
    pub node: String,
    /// Its short reason code.
    pub reason: String,
    /// The reason in words.
    pub message: String,
}

impl StoredLetter {
    /// `record` as the `seq`-th letter of its run.
    pub fn new(record: DeadLetterRecord, seq: u64) -> Self {
        Self {
            id: format!("{}/{seq}", record.run),
            record,
            replays: 0,
            last_replay: None,
        }
    }

    /// Its key: pipeline, run and sequence number.
    pub(crate) fn key(&self) -> Vec<u8> {
        let seq = self
            .id
            .rsplit_once('/')
            .and_then(|(_, s)| s.parse::<u64>().ok())
            .unwrap_or(0);
        let mut key = Vec::with_capacity(self.record.pipeline.len() + self.record.run.len() + 10);
        key.extend_from_slice(self.record.pipeline.as_bytes());
        key.push(0);
        key.extend_from_slice(self.record.run.as_bytes());
        key.push(0);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }
}

/// The first byte of a letter in the store's binary layout. A letter written
/// by an earlier weir is a JSON object, so it begins with `{` and is read as
/// JSON; both layouts read back the same [`StoredLetter`].
const BINARY_LAYOUT: u8 = 1;

/// A letter's fields but its payload's bytes, as the binary layout writes them.
#[derive(Serialize)]
struct HeadOut<'a> {
    id: &'a str,
    replays: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_replay: Option<&'a ReplayFailure>,
    tenant: &'a str,
    pipeline: &'a str,
    version: Option<u64>,
    run: &'a str,
    node: &'a str,
    component: Option<&'a str>,
    fault: crate::node::Fault,
    reason: &'a str,
    message: &'a str,
    at_ms: u64,
    position: &'a str,
    /// `raw` or `arrow_ipc`.
    payload: &'static str,
}

/// [`HeadOut`] read back.
#[derive(Deserialize)]
struct HeadIn {
    id: String,
    replays: u32,
    #[serde(default)]
    last_replay: Option<ReplayFailure>,
    tenant: String,
    pipeline: String,
    version: Option<u64>,
    run: String,
    node: String,
    component: Option<String>,
    fault: crate::node::Fault,
    reason: String,
    message: String,
    at_ms: u64,
    position: String,
    payload: String,
}

impl StoredLetter {
    /// The letter as the store keeps it: a layout byte, the length of a JSON
    /// head (every field but the payload's bytes, little-endian `u32`), the
    /// head, then the payload's bytes as they are. The bytes are not
    /// hex-encoded inside JSON, which halves what a letter weighs and what it
    /// costs to write: a run that dead-letters a corrupt record in fifty pays
    /// for it on the writer thread.
    pub(crate) fn encode(&self) -> Vec<u8> {
        use crate::node::Payload;
        let r = &self.record;
        let (payload, bytes) = match &r.payload {
            Payload::Raw(b) => ("raw", b),
            Payload::ArrowIpc(b) => ("arrow_ipc", b),
        };
        let head = HeadOut {
            id: &self.id,
            replays: self.replays,
            last_replay: self.last_replay.as_ref(),
            tenant: &r.tenant,
            pipeline: &r.pipeline,
            version: r.version,
            run: &r.run,
            node: &r.node,
            component: r.component.as_deref(),
            fault: r.fault,
            reason: &r.reason,
            message: &r.message,
            at_ms: r.at_ms,
            position: &r.position,
            payload,
        };
        let mut out = Vec::with_capacity(160 + r.message.len() + r.position.len() + bytes.len());
        out.push(BINARY_LAYOUT);
        out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut out, &head).expect("a letter's head serializes");
        let len = u32::try_from(out.len() - 5).expect("a letter's head is under 4 GiB");
        out[1..5].copy_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
        out
    }

    /// A letter from what [`StoredLetter::encode`] wrote, or from the JSON an
    /// earlier weir wrote.
    ///
    /// # Errors
    /// The bytes are neither layout, in words.
    pub(crate) fn decode(value: &[u8]) -> Result<Self, String> {
        use crate::node::Payload;
        match value.first() {
            Some(&BINARY_LAYOUT) => {}
            Some(b'{') => return serde_json::from_slice(value).map_err(|e| e.to_string()),
            _ => return Err("neither a binary letter nor a JSON one".into()),
        }
        let len = value
            .get(1..5)
            .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")) as usize)
            .ok_or("a binary letter shorter than its header")?;
        let head = value
            .get(5..5 + len)
            .ok_or("a binary letter shorter than its head")?;
        let head: HeadIn = serde_json::from_slice(head).map_err(|e| e.to_string())?;
        let bytes = value[5 + len..].to_vec();
        let payload = match head.payload.as_str() {
            "raw" => Payload::Raw(bytes),
            "arrow_ipc" => Payload::ArrowIpc(bytes),
            other => return Err(format!("unknown payload encoding `{other}`")),
        };
        Ok(Self {
            id: head.id,
            record: DeadLetterRecord {
                tenant: head.tenant,
                pipeline: head.pipeline,
                version: head.version,
                run: head.run,
                node: head.node,
                component: head.component,
                fault: head.fault,
                reason: head.reason,
                message: head.message,
                at_ms: head.at_ms,
                position: head.position,
                payload,
            },
            replays: head.replays,
            last_replay: head.last_replay,
        })
    }
}

/// Which letters a listing, an export, a replay or a purge takes; every field
/// that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetterFilter {
    /// Of this pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// From this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// With this reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Of this fault ([`crate::node::Fault::as_str`]: `data`, `stage_trap`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Of this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Kept at or after this time, epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Kept before this time, epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Only these ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

impl LetterFilter {
    /// Whether `letter` is taken.
    pub fn matches(&self, letter: &StoredLetter) -> bool {
        let r = &letter.record;
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.pipeline, &r.pipeline)
            && is(&self.node, &r.node)
            && is(&self.reason, &r.reason)
            && is(&self.fault, r.fault.as_str())
            && is(&self.run, &r.run)
            && self.since_ms.is_none_or(|t| r.at_ms >= t)
            && self.until_ms.is_none_or(|t| r.at_ms < t)
            && (self.ids.is_empty() || self.ids.contains(&letter.id))
    }

    /// The key prefix a scan can start from.
    pub(crate) fn prefix(&self) -> Vec<u8> {
        match &self.pipeline {
            Some(p) => {
                let mut k = p.as_bytes().to_vec();
                k.push(0);
                if let Some(run) = &self.run {
                    k.extend_from_slice(run.as_bytes());
                    k.push(0);
                }
                k
            }
            None => Vec::new(),
        }
    }
}

/// How much of its dead-letter capacity a tenant uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetterUsage {
    /// Entries kept.
    pub entries: u64,
    /// Bytes kept (keys and values).
    pub bytes: u64,
}

/// The run's dead letters go to the tenant's store ([`StoreLetters`]) through
/// a writer thread of its own, so no executor thread waits on sled: it takes
/// whatever is queued, appends it in chunks (one sled batch and one flush
/// each), and only then drops the delivery tokens the letters hold back.
pub struct StoreLetters {
    tx: Mutex<mpsc::Sender<Msg>>,
    failed: Arc<Mutex<Option<DeadLetterError>>>,
    full: Arc<AtomicBool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    tenant: String,
}

/// Letters per append: a chunk small enough to fit in a nearly full store and
/// for one exchange with the owner, large enough that a flush covers many.
const CHUNK_LETTERS: usize = 512;
/// How often a writer stopped by a full store tries again.
const FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

enum Msg {
    Append(Vec<DeadLetterRecord>, Vec<Meta>),
    Flush(mpsc::Sender<Result<(), DeadLetterError>>),
}

impl StoreLetters {
    /// Letters of runs written to `store` (its tenant's), within `limit` bytes
    /// for the whole tenant, doing `when_full` when they do not fit.
    pub fn new(store: Store, limit: Option<u64>, when_full: WhenFull) -> Self {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(Mutex::new(None));
        let full = Arc::new(AtomicBool::new(false));
        let tenant = store.tenant().to_owned();
        let mut writer = Writer {
            store,
            limit,
            when_full,
            failed: failed.clone(),
            full: full.clone(),
            seq: HashMap::new(),
            pending: VecDeque::new(),
            waiting: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("weir-dead-letter-store".into())
            .spawn(move || writer.run(&rx))
            .expect("spawning the dead-letter writer");
        Self {
            tx: Mutex::new(tx),
            failed,
            full,
            writer: Mutex::new(Some(handle)),
            tenant,
        }
    }

    fn location(&self) -> String {
        format!("the dead-letter store of tenant `{}`", self.tenant)
    }

    fn send(&self, msg: Msg) -> Result<(), DeadLetterError> {
        if let Some(e) = lock(&self.failed).clone() {
            return Err(e);
        }
        lock(&self.tx).send(msg).map_err(|_| DeadLetterError {
            location: self.location(),
            message: "the writer stopped".into(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for StoreLetters {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(
            self.tx.get_mut().unwrap_or_else(|e| e.into_inner()),
            tx,
        ));
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
    }
}

impl DeadLetterStore for StoreLetters {
    fn append(
        &self,
        records: Vec<DeadLetterRecord>,
        hold: Vec<Meta>,
    ) -> Result<(), DeadLetterError> {
        if records.is_empty() {
            return Ok(());
        }
        self.send(Msg::Append(records, hold))
    }

    fn flush(&self) -> Result<(), DeadLetterError> {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::Flush(tx))?;
        rx.recv().unwrap_or_else(|_| {
            Err(DeadLetterError {
                location: self.location(),
                message: "the writer stopped".into(),
            })
        })
    }

    fn location(&self, pipeline: &str, node: &str) -> String {
        let node = if node.is_empty() {
            String::new()
        } else {
            format!(" --node {node}")
        };
        format!(
            "the dead-letter store (`weir dlq list --pipeline {pipeline}{node}`{})",
            if self.tenant == crate::store::layout::DEFAULT_TENANT {
                String::new()
            } else {
                format!(" --tenant {}", self.tenant)
            }
        )
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }
}

struct Writer {
    store: Store,
    limit: Option<u64>,
    when_full: WhenFull,
    failed: Arc<Mutex<Option<DeadLetterError>>>,
    full: Arc<AtomicBool>,
    /// The next sequence number per run.
    seq: HashMap<String, u64>,
    /// Letters not yet written, each with the tokens it holds back (on its last
    /// letter of a batch).
    pending: VecDeque<(StoredLetter, Vec<Meta>)>,
    /// Flushes waiting for `pending` to be written.
    waiting: Vec<mpsc::Sender<Result<(), DeadLetterError>>>,
}

impl Writer {
    fn run(&mut self, rx: &mpsc::Receiver<Msg>) {
        loop {
            let first = if self.pending.is_empty() {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(FULL_RETRY) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    // The run is gone: what is pending cannot be written, and
                    // its tokens were never released, so nothing is committed.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.write();
                        return;
                    }
                }
            };
            for msg in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match msg {
                    Msg::Append(records, hold) => self.queue(records, hold),
                    Msg::Flush(reply) => self.waiting.push(reply),
                }
            }
            self.write();
            let failed = lock(&self.failed).clone();
            if self.pending.is_empty() || failed.is_some() {
                for reply in self.waiting.drain(..) {
                    let _ = reply.send(failed.clone().map_or(Ok(()), Err));
                }
            }
        }
    }

    fn queue(&mut self, records: Vec<DeadLetterRecord>, hold: Vec<Meta>) {
        let n = records.len();
        let mut hold = Some(hold);
        for (i, record) in records.into_iter().enumerate() {
            let seq = self.seq.entry(record.run.clone()).or_default();
            let letter = StoredLetter::new(record, *seq);
            *seq += 1;
            // The batch's tokens ride with its last letter: dropped once all of
            // its letters are written.
            let h = if i + 1 == n {
                hold.take().unwrap_or_default()
            } else {
                Vec::new()
            };
            self.pending.push_back((letter, h));
        }
    }

    /// Writes what is pending, chunk by chunk, until it is done, the store is
    /// full, or a write fails. A chunk the store refuses as too large is
    /// halved, so a nearly full store is filled before the writer waits.
    fn write(&mut self) {
        if lock(&self.failed).is_some() {
            return;
        }
        let mut n = self.pending.len().min(CHUNK_LETTERS);
        while !self.pending.is_empty() {
            n = n.min(self.pending.len()).max(1);
            let chunk: Vec<StoredLetter> = self
                .pending
                .iter()
                .take(n)
                .map(|(l, _)| l.clone())
                .collect();
            match self.store.append_letters(chunk, self.limit) {
                Ok(()) => {
                    self.full.store(false, Ordering::Relaxed);
                    // Durable: the batches they came from may settle.
                    drop(self.pending.drain(..n));
                    n = CHUNK_LETTERS;
                }
                Err(StoreError::DeadLettersFull { .. }) if n > 1 => n /= 2,
                Err(StoreError::DeadLettersFull { .. })
                    if self.when_full == WhenFull::Backpressure =>
                {
                    if !self.full.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            tenant = %self.store.tenant(),
                            "the dead-letter store is full: sources pause until letters are replayed or purged"
                        );
                    }
                    return;
                }
                Err(e) => {
                    lock(&self.failed).get_or_insert(DeadLetterError {
                        location: format!(
                            "the dead-letter store of tenant `{}`",
                            self.store.tenant()
                        ),
                        message: e.to_string(),
                    });
                    return;
                }
            }
        }
    }
}

/// Writes `letters` to `path` as JSON lines: each letter's exported record
/// ([`DeadLetterRecord::to_json`]) with its `id` and `replays`, the file
/// replaced whole (temp file, sync, rename).
///
/// # Errors
/// Writing the file.
pub fn export_jsonl(letters: &[StoredLetter], path: &std::path::Path) -> std::io::Result<()> {
    let mut text = Vec::new();
    for l in letters {
        let mut line = l.record.to_json();
        if let Some(o) = line.as_object_mut() {
            o.insert("id".into(), l.id.clone().into());
            o.insert("replays".into(), l.replays.into());
        }
        serde_json::to_writer(&mut text, &line)?;
        text.push(b'\n');
    }
    crate::node::atomic::write(path, &text)
}

/// The rows of an Arrow IPC payload, one JSON object per row: how a listing
/// shows an operator's letter readably.
///
/// # Errors
/// The bytes are not an Arrow IPC stream.
pub fn rows_as_json(bytes: &[u8]) -> Result<Vec<String>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    for batch in arrow::ipc::reader::StreamReader::try_new(bytes, None)? {
        let mut buf = Vec::new();
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&batch?)?;
        w.finish()?;
        out.extend(String::from_utf8_lossy(&buf).lines().map(str::to_owned));
    }
    Ok(out)
}

/// Writes `letters` to `path` as Parquet, one row per letter; the record's
/// bytes in the binary column `payload`, their form in `payload_encoding`
/// (`raw` or `arrow_ipc`), the time as a UTC timestamp.
///
/// # Errors
/// Writing the file.
#[cfg(feature = "parquet")]
pub fn export_parquet(letters: &[StoredLetter], path: &std::path::Path) -> std::io::Result<()> {
    use arrow::array::{
        ArrayRef, BinaryArray, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let strs = |f: &dyn Fn(&StoredLetter) -> Option<&str>| -> ArrayRef {
        Arc::new(letters.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", strs(&|l| Some(l.id.as_str()))),
        ("tenant", strs(&|l| Some(l.record.tenant.as_str()))),
        ("pipeline", strs(&|l| Some(l.record.pipeline.as_str()))),
        (
            "version",
            Arc::new(
                letters
                    .iter()
                    .map(|l| l.record.version)
                    .collect::<UInt64Array>(),
            ),
        ),
        ("run", strs(&|l| Some(l.record.run.as_str()))),
        ("node", strs(&|l| Some(l.record.node.as_str()))),
        ("component", strs(&|l| l.record.component.as_deref())),
        ("fault", strs(&|l| Some(l.record.fault.as_str()))),
        ("reason", strs(&|l| Some(l.record.reason.as_str()))),
        ("message", strs(&|l| Some(l.record.message.as_str()))),
        (
            "at",
            Arc::new(
                letters
                    .iter()
                    .map(|l| Some(l.record.at_ms as i64))
                    .collect::<TimestampMillisecondArray>()
                    .with_timezone("UTC"),
            ),
        ),
        ("position", strs(&|l| Some(l.record.position.as_str()))),
        (
            "payload_encoding",
            strs(&|l| {
                Some(match l.record.payload {
                    crate::node::Payload::Raw(_) => "raw",
                    crate::node::Payload::ArrowIpc(_) => "arrow_ipc",
                })
            }),
        ),
        (
            "payload",
            Arc::new(
                letters
                    .iter()
                    .map(|l| Some(l.record.payload.bytes()))
                    .collect::<BinaryArray>(),
            ),
        ),
        (
            "replays",
            Arc::new(
                letters
                    .iter()
                    .map(|l| Some(l.replays))
                    .collect::<UInt32Array>(),
            ),
        ),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, c)| {
            let nullable = matches!(*name, "version" | "component");
            let t = match c.data_type() {
                DataType::Timestamp(_, tz) => {
                    DataType::Timestamp(TimeUnit::Millisecond, tz.clone())
                }
                t => t.clone(),
            };
            Field::new(*name, t, nullable)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, c)| c).collect(),
    )
    .map_err(std::io::Error::other)?;
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None)
        .map_err(std::io::Error::other)?;
    w.write(&batch).map_err(std::io::Error::other)?;
    w.close().map_err(std::io::Error::other)?;
    crate::node::atomic::write(path, &buf)
}

/// Parquet is not in this build.
///
/// # Errors
/// Always: the build has no Parquet writer.
#[cfg(not(feature = "parquet"))]
pub fn export_parquet(_letters: &[StoredLetter], _path: &std::path::Path) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "this weir was built without the `parquet` feature: export JSON lines",
    ))
}
