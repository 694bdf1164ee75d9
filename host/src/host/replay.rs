//! Replaying dead letters: the letters of a pipeline go through a version of
//! it again (the active one, a named one, or a file), and those that now pass
//! leave the store.
//!
//! ```text
//!   letters of node N ──► a JSON-lines file, one record per line (a source's raw
//!   (grouped by node)      record, or an operator's rows)
//!                          └─► [source: that file] ──► N ──► … ──► sinks (or, dry, files of
//!                                                                   the replay's own)
//!   new letters of the replay run ──► mapped back to the letters they came from
//!                                     (by the record, or by the source lines of their batch)
//! ```
//!
//! A replay runs the part of the pipeline from the node that rejected the
//! letters to the sinks, one record per batch, so each new rejection names the
//! one letter it came from. A source's letters are decoded again by the same
//! parser with the version's fields (JSON-lines and JetStream sources); an
//! operator's or a sink's letters (rows) enter at that node with the columns they
//! had. Letters that pass leave the store once the sinks have flushed; those
//! that fail again keep the new reason and a replay count, and past
//! [`DEFAULT_MAX_REPLAYS`] are left alone unless forced, so a poison record
//! cannot loop. `dry_run` sends the sinks' input to files of its own and
//! changes nothing.
//!
//! Delivery is at least once: a replay cut short after its sinks wrote and
//! before the letters were removed writes them again when run again (Redis and
//! JetStream sinks overwrite or deduplicate; a JSON-lines file gets the lines
//! twice).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, TimeUnit};

use super::{HostError, Tenant};
use crate::connectors::{JsonlSinkSpec, JsonlSourceSpec};
use crate::exec::RunOptions;
use crate::node::config::{FieldSpec, FieldType, ReplayInto};
use crate::node::{DeadLetterError, DeadLetterRecord, DeadLetterStore, Meta, NodeKind, Payload};
use crate::plan::Plan;
use crate::spec::{PipelineSpec, SinkKind, SourceKind, SourceSpec};
use crate::store::letters::{LetterFilter, ReplayFailure, StoredLetter};

/// Replays a letter may fail before it is only replayed when forced.
pub const DEFAULT_MAX_REPLAYS: u32 = 3;

/// The name of the source a replay feeds an operator's letters from.
const REPLAY_SOURCE: &str = "dead_letters";

/// What to replay, and through what.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// The pipeline whose letters to replay.
    pub pipeline: String,
    /// Through this stored version. `None`: the active one, or `file`.
    pub version: Option<u64>,
    /// Through this pipeline file instead of a stored version.
    pub file: Option<PathBuf>,
    /// Which of its letters (its `pipeline` is set from [`Self::pipeline`]).
    pub filter: LetterFilter,
    /// Run them beside nothing: deliver nothing, change nothing, report.
    pub dry_run: bool,
    /// Replay letters past `max_replays` too.
    pub force: bool,
    /// Failed replays after which a letter is left alone unless forced.
    pub max_replays: u32,
}

impl ReplayRequest {
    /// Every letter of `pipeline`, through its active version.
    pub fn new(pipeline: &str) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            version: None,
            file: None,
            filter: LetterFilter::default(),
            dry_run: false,
            force: false,
            max_replays: DEFAULT_MAX_REPLAYS,
        }
    }
}

/// A letter that failed again, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayMiss {
    /// The letter's id.
    pub id: String,
    /// The node that refused it this time.
    pub node: String,
    /// Its reason code.
    pub reason: String,
    /// In words.
    pub message: String,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// The version the letters went through (`None` for a file).
    pub version: Option<u64>,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Letters the filter took.
    pub selected: usize,
    /// Letters that passed (removed from the store unless dry).
    pub passed: Vec<String>,
    /// Letters that failed again.
    pub failed: Vec<ReplayMiss>,
    /// Letters left alone: replayed too often already (`--force` takes them).
    pub over_limit: Vec<String>,
    /// Letters that cannot be replayed through this version, and why.
    pub unreplayable: Vec<(String, String)>,
    /// Letters removed from the store.
    pub removed: u64,
}

impl Tenant {
    /// Replays the letters `request` names (see the module docs).
    ///
    /// # Errors
    /// [`HostError::Store`] reading or updating the store, [`HostError::Request`]
    /// when there is no version to replay through, or what reading the file
    /// returns. A node that fails during the replay fails its letters, not the
    /// replay.
    pub async fn replay(&self, request: &ReplayRequest) -> Result<ReplayReport, HostError> {
        let (spec, version) = self.replay_spec(request)?;
        let mut filter = request.filter.clone();
        filter.pipeline = Some(request.pipeline.clone());
        let letters = self.store().letters(&filter, usize::MAX)?;
        let mut report = ReplayReport {
            version,
            dry_run: request.dry_run,
            selected: letters.len(),
            ..ReplayReport::default()
        };
        let mut by_node: BTreeMap<String, Vec<StoredLetter>> = BTreeMap::new();
        for letter in letters {
            if letter.replays >= request.max_replays && !request.force {
                report.over_limit.push(letter.id);
            } else {
                by_node
                    .entry(letter.record.node.clone())
                    .or_default()
                    .push(letter);
            }
        }
        let scratch = tempfile::Builder::new()
            .prefix("replay-")
            .tempdir_in(self.dir())
            .map_err(|e| HostError::Request(format!("a directory for the replay: {e}")))?;
        let env = self.env()?;
        let mut updated = Vec::new();
        for (node, letters) in by_node {
            let dir = scratch.path().join(&node);
            std::fs::create_dir_all(&dir).map_err(|e| {
                HostError::Request(format!("a directory for the replay of `{node}`: {e}"))
            })?;
            let outcome = match Group::prepare(&spec, &node, &letters, &dir, request.dry_run, &env)
            {
                Ok(group) => self.run_group(group, &letters, &env).await?,
                Err(why) => {
                    for l in &letters {
                        report.unreplayable.push((l.id.clone(), why.clone()));
                    }
                    continue;
                }
            };
            for (letter, failure) in letters.into_iter().zip(outcome) {
                match failure {
                    None => report.passed.push(letter.id),
                    Some(f) => {
                        report.failed.push(ReplayMiss {
                            id: letter.id.clone(),
                            node: f.node.clone(),
                            reason: f.reason.clone(),
                            message: f.message.clone(),
                        });
                        let mut letter = letter;
                        letter.replays += 1;
                        letter.last_replay = Some(ReplayFailure {
                            at_ms: now_ms(),
                            version,
                            ..f
                        });
                        updated.push(letter);
                    }
                }
            }
        }
        if !request.dry_run {
            self.store().update_letters(updated)?;
            if !report.passed.is_empty() {
                report.removed = self.store().remove_letters(&LetterFilter {
                    pipeline: Some(request.pipeline.clone()),
                    ids: report.passed.clone(),
                    ..LetterFilter::default()
                })?;
            }
        }
        Ok(report)
    }

    /// The spec the letters go through, and its stored version.
    fn replay_spec(
        &self,
        request: &ReplayRequest,
    ) -> Result<(PipelineSpec, Option<u64>), HostError> {
        if let Some(file) = &request.file {
            let spec = PipelineSpec::from_file(file)?;
            if spec.name != request.pipeline {
                return Err(HostError::Request(format!(
                    "{} is pipeline `{}`, not `{}`",
                    file.display(),
                    spec.name,
                    request.pipeline
                )));
            }
            return Ok((spec, None));
        }
        let version = match request.version {
            Some(v) => v,
            None => self.store().active(&request.pipeline)?.ok_or_else(|| {
                HostError::Request(format!(
                    "pipeline `{}` has no stored version to replay through: apply one with `weir pipeline apply`, or name a pipeline file with --file",
                    request.pipeline
                ))
            })?,
        };
        let stored = self.store().version(&request.pipeline, version)?;
        Ok((stored.runnable_spec(), Some(version)))
    }

    /// Runs one node's letters; per letter, `None` if it passed.
    async fn run_group(
        &self,
        group: Group,
        letters: &[StoredLetter],
        env: &crate::plan::RunEnv,
    ) -> Result<Vec<Option<ReplayFailure>>, HostError> {
        let collector = Arc::new(Collector::new(&group, letters.len()));
        let fail_all = |node: &str, message: String| {
            vec![
                Some(ReplayFailure {
                    at_ms: 0,
                    version: None,
                    node: node.to_owned(),
                    reason: "replay_failed".into(),
                    message,
                });
                letters.len()
            ]
        };
        let plan = match Plan::build(group.spec, env) {
            Ok(p) => p,
            Err(e) => return Ok(fail_all(&group.node, e.to_string())),
        };
        let options = RunOptions {
            dead_letters: Some(collector.clone()),
            tenant: Some(self.name().to_owned()),
            sink_states: group.sink_states,
            ..RunOptions::default()
        };
        match crate::exec::run(plan, env, &options).await {
            Ok(_) => Ok(collector.outcome()),
            Err(e) => {
                let node = match &e {
                    crate::exec::RunError::Node { node, .. } => node.clone(),
                    _ => group.node.clone(),
                };
                Ok(fail_all(&node, e.to_string()))
            }
        }
    }
}

/// The replay of one node's letters, prepared.
struct Group {
    /// The node that rejected them.
    node: String,
    /// The part of the pipeline that runs, fed by a file of the records.
    spec: PipelineSpec,
    /// Sink states that make sinks add to what they hold.
    sink_states: BTreeMap<String, String>,
    /// The source the records come from in the replay.
    source: String,
    /// Per letter, the first line of its records in the file (ascending), and
    /// the number of lines.
    starts: Vec<usize>,
    lines: usize,
    /// For a source's letters: each record's bytes, to find which letter a new
    /// rejection of the source is.
    raw: Option<Vec<Vec<u8>>>,
}

impl Group {
    /// The replay spec of `letters` of `node` in `spec`, its records written to
    /// a file in `dir`; `Err` says why they cannot be replayed.
    fn prepare(
        spec: &PipelineSpec,
        node: &str,
        letters: &[StoredLetter],
        dir: &Path,
        dry_run: bool,
        env: &crate::plan::RunEnv,
    ) -> Result<Self, String> {
        let mut spec = spec.clone();
        spec.inline_uses().map_err(|e| e.to_string())?;
        let dag = spec.validate().map_err(|e| e.to_string())?;
        let Some((at, start)) = dag.get(node) else {
            return Err(format!(
                "node `{node}` is not in this version of the pipeline"
            ));
        };
        // What runs: the node and everything downstream of it.
        let mut keep = vec![false; dag.nodes.len()];
        let mut todo = vec![at];
        while let Some(i) = todo.pop() {
            if !keep[i] {
                keep[i] = true;
                todo.extend(&dag.nodes[i].outputs);
            }
        }
        let kept: std::collections::HashSet<String> = dag
            .nodes
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(n, _)| n.name.clone())
            .collect();
        let file = dir.join("records.jsonl");
        let mut text = Vec::new();
        let mut starts = Vec::with_capacity(letters.len());
        let (fields, source, raw) = if start.kind == NodeKind::Source {
            let fields = spec.sources[start.index]
                .kind
                .config()
                .json_fields()
                .ok_or_else(|| {
                    format!(
                        "the letters of a `{}` source cannot be replayed yet (export them with `weir dlq export`)",
                        spec.sources[start.index].kind.table()
                    )
                })?
                .to_vec();
            let mut raw = Vec::with_capacity(letters.len());
            for (i, l) in letters.iter().enumerate() {
                let Payload::Raw(bytes) = &l.record.payload else {
                    return Err(format!("letter {} holds rows, not a record", l.id));
                };
                // One record per line: a newline inside a JSON record is only
                // whitespace.
                let line: Vec<u8> = bytes
                    .iter()
                    .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                    .collect();
                starts.push(i);
                text.extend_from_slice(&line);
                text.push(b'\n');
                raw.push(line);
            }
            (fields, node.to_owned(), Some(raw))
        } else {
            let mut schema: Option<arrow::datatypes::SchemaRef> = None;
            let mut line = 0;
            for l in letters {
                starts.push(line);
                match &l.record.payload {
                    Payload::ArrowIpc(bytes) => {
                        let batches =
                            read_ipc(bytes).map_err(|e| format!("letter {}: {e}", l.id))?;
                        for b in batches {
                            if schema.is_none() {
                                schema = Some(b.schema());
                            }
                            line += b.num_rows();
                            write_json_lines(&b, &mut text)
                                .map_err(|e| format!("letter {}: {e}", l.id))?;
                        }
                    }
                    Payload::Raw(bytes) => {
                        line += 1;
                        text.extend(bytes.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
                        text.push(b'\n');
                    }
                }
            }
            let schema = match schema {
                Some(s) => s,
                None => input_schema(&spec, node, dir, env)?,
            };
            (fields_of(&schema)?, REPLAY_SOURCE.to_owned(), None)
        };
        std::fs::write(&file, &text).map_err(|e| format!("{}: {e}", file.display()))?;
        let lines = if raw.is_some() {
            letters.len()
        } else {
            memchr::memchr_iter(b'\n', &text).count()
        };
        let replay_source = SourceSpec {
            name: source.clone(),
            kind: SourceKind::Jsonl(JsonlSourceSpec {
                path: file,
                schema: fields,
                batch_rows: std::num::NonZeroUsize::new(1),
                rejects: None,
                threads: std::num::NonZeroUsize::new(1),
            }),
        };
        spec.sources = vec![replay_source];
        spec.stages.retain(|s| kept.contains(&s.name));
        spec.sinks.retain(|s| kept.contains(&s.name));
        let fits = |input: &mut Option<String>, inputs: &mut Option<Vec<String>>, me: &str| {
            if me == node {
                *input = Some(source.clone());
                *inputs = None;
                return;
            }
            if let Some(list) = inputs {
                list.retain(|i| kept.contains(i));
            }
        };
        for s in &mut spec.stages {
            fits(&mut s.input, &mut s.inputs, &s.name.clone());
        }
        for s in &mut spec.sinks {
            fits(&mut s.input, &mut s.inputs, &s.name.clone());
        }
        spec.settings.batch_rows = std::num::NonZeroUsize::MIN;
        let mut sink_states = BTreeMap::new();
        for sink in &mut spec.sinks {
            if dry_run {
                sink.kind = SinkKind::Jsonl(dry_sink(dir, &sink.name));
                continue;
            }
            match sink.kind.config().replay_into(&spec.base_dir) {
                ReplayInto::Adds => {}
                ReplayInto::Continues(state) => {
                    sink_states.insert(sink.name.clone(), state);
                }
                ReplayInto::Refuses(why) => {
                    return Err(format!(
                        "sink `{}` cannot take replayed records: {why} (`--dry-run` checks them without delivering)",
                        sink.name
                    ));
                }
            }
        }
        if spec.sinks.is_empty() {
            return Err(format!("nothing downstream of `{node}` delivers records"));
        }
        Ok(Self {
            node: node.to_owned(),
            spec,
            sink_states,
            source,
            starts,
            lines,
            raw,
        })
    }
}

/// A JSON-lines sink of the replay's own, for a dry run.
fn dry_sink(dir: &Path, sink: &str) -> JsonlSinkSpec {
    JsonlSinkSpec {
        path: dir.join(format!("dry-{sink}.jsonl")),
        float_decimals: None,
        columns: None,
        lineage: false,
    }
}

/// The schema `node` reads in `spec`, from a plan of it whose sinks write files
/// of the replay's own (nothing of the pipeline's is touched).
fn input_schema(
    spec: &PipelineSpec,
    node: &str,
    dir: &Path,
    env: &crate::plan::RunEnv,
) -> Result<arrow::datatypes::SchemaRef, String> {
    let mut probe = spec.clone();
    for sink in &mut probe.sinks {
        sink.kind = SinkKind::Jsonl(dry_sink(dir, &format!("probe-{}", sink.name)));
    }
    let dag = probe.validate().map_err(|e| e.to_string())?;
    let (_, at) = dag
        .get(node)
        .ok_or_else(|| format!("node `{node}` is not in this version of the pipeline"))?;
    let input = *at
        .inputs
        .first()
        .ok_or_else(|| format!("node `{node}` has no input"))?;
    let plan = Plan::build(probe, env).map_err(|e| e.to_string())?;
    plan.schemas[input].clone().ok_or_else(|| {
        format!("the input of `{node}` is learned from its first batch, so its letters cannot be read back")
    })
}

/// The fields a JSON-lines source reads `schema` with.
fn fields_of(schema: &Schema) -> Result<Vec<FieldSpec>, String> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let data_type = match f.data_type() {
                DataType::Boolean => FieldType::Boolean,
                DataType::Int32 => FieldType::Int32,
                DataType::Int64 => FieldType::Int64,
                DataType::Float32 => FieldType::Float32,
                DataType::Float64 => FieldType::Float64,
                DataType::Utf8 => FieldType::Utf8,
                DataType::Timestamp(TimeUnit::Millisecond, None) => FieldType::TimestampMs,
                other => {
                    return Err(format!(
                        "column `{}` is {other}, which a replay cannot read back yet",
                        f.name()
                    ));
                }
            };
            Ok(FieldSpec {
                name: f.name().clone(),
                data_type,
                required: false,
                min: None,
                max: None,
            })
        })
        .collect()
}

/// The batches of an Arrow IPC stream.
fn read_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    arrow::ipc::reader::StreamReader::try_new(bytes, None)?.collect()
}

/// `batch` as JSON lines, timestamps as epoch milliseconds (what the JSON-lines
/// source reads them as).
fn write_json_lines(
    batch: &RecordBatch,
    out: &mut Vec<u8>,
) -> Result<(), arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Timestamp(_, _) => arrow::compute::cast(c, &DataType::Int64),
            _ => Ok(c.clone()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| arrow::datatypes::Field::new(f.name(), c.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut w = arrow::json::LineDelimitedWriter::new(out);
    w.write(&batch)?;
    w.finish()
}

/// The replay run's dead-letter store: each new rejection is mapped back to the
/// letter it came from, by its record (the source's own rejections) or by the
/// source lines of the batch it was in.
struct Collector {
    source: String,
    starts: Vec<usize>,
    lines: usize,
    raw: Mutex<HashMap<Vec<u8>, VecDeque<usize>>>,
    failed: Mutex<Vec<Option<ReplayFailure>>>,
}

impl Collector {
    fn new(group: &Group, letters: usize) -> Self {
        let mut raw: HashMap<Vec<u8>, VecDeque<usize>> = HashMap::new();
        for (i, r) in group.raw.iter().flatten().enumerate() {
            raw.entry(r.clone()).or_default().push_back(i);
        }
        Self {
            source: group.source.clone(),
            starts: group.starts.clone(),
            lines: group.lines,
            raw: Mutex::new(raw),
            failed: Mutex::new(vec![None; letters]),
        }
    }

    /// The letter whose records include line `line` (0-based).
    fn letter_of(&self, line: usize) -> usize {
        self.starts
            .partition_point(|&s| s <= line)
            .saturating_sub(1)
    }

    /// The letters `record` came from.
    fn letters_of(&self, record: &DeadLetterRecord, hold: &[Meta]) -> Vec<usize> {
        if record.node == self.source
            && let Some(q) = self
                .raw
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(record.payload.bytes())
            && let Some(i) = q.pop_front()
        {
            return vec![i];
        }
        let mut out = Vec::new();
        for meta in hold {
            for span in meta
                .lineage
                .sources
                .iter()
                .filter(|s| s.source == self.source)
            {
                let line = |p: &Option<String>| {
                    p.as_deref()
                        .and_then(|p| p.split(':').next())
                        .and_then(|l| l.parse::<usize>().ok())
                        .unwrap_or(0)
                };
                for l in line(&span.from)..line(&span.to).min(self.lines) {
                    out.push(self.letter_of(l));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn outcome(&self) -> Vec<Option<ReplayFailure>> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl DeadLetterStore for Collector {
    fn append(
        &self,
        records: Vec<DeadLetterRecord>,
        hold: Vec<Meta>,
    ) -> Result<(), DeadLetterError> {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            let mut letters = self.letters_of(&record, &hold);
            if letters.is_empty() {
                // Not traceable to one letter: none of them is taken as passed.
                letters = (0..failed.len()).collect();
            }
            for i in letters {
                failed[i].get_or_insert_with(|| ReplayFailure {
                    at_ms: record.at_ms,
                    version: record.version,
                    node: record.node.clone(),
                    reason: record.reason.clone(),
                    message: record.message.clone(),
                });
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DeadLetterError> {
        Ok(())
    }

    fn location(&self, _pipeline: &str, _node: &str) -> String {
        "the replay".into()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
