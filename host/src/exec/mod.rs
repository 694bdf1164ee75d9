//! The executor: one task per node, bounded channels between them.
//!
//! ```text
//!   source ──[ch]──► stage ──[ch]──► stage ──[ch]──► sink
//!     │ blocking pool   │ blocking pool                 │ blocking pool
//!     └── dead letters ─┴───────────────► run's dead-letter file
//! ```
//!
//! Each node runs as a tokio task; its own work (parsing, a WebAssembly call, a
//! kernel, a write) runs on the blocking pool, so CPU-heavy nodes never stall the
//! scheduler. Channels are bounded in batches and bytes ([`channel`]): a slow node
//! makes its upstream wait, all the way back to the source, which then reads less.
//!
//! A bounded source ends the run cleanly: when it is exhausted its channel closes,
//! each operator `finish`es and closes its own, and sinks close (flush, rename into
//! place). When any node fails, the run stops: the other tasks are aborted, the
//! error names the node, and sinks do not rename their partial output into place.

pub mod channel;
pub mod control;
mod dead_letter;
pub mod lineage;
pub mod live;
pub mod memory;
mod node;
mod plan;
pub mod shadow;
pub mod socket;
mod summary;
mod wasm;
pub mod watch;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tokio::task::JoinSet;

pub use control::{RunControl, StageChange, SwapApplied, SwapError};
pub use dead_letter::DeadLetterFile;
pub use node::{DeadLetter, Emitter, NodeError, Operator, Sink, Source};
pub use plan::{NodeImpl, Plan, PlanError, RunEnv};
pub use summary::{NodeStats, RunSummary};
pub use wasm::WasmOperator;

use crate::spec::NodeKind;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pipeline could not be prepared.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A node failed while running.
    #[error("node `{node}` failed: {source}")]
    Node {
        /// The node.
        node: String,
        /// Why.
        source: NodeError,
    },
    /// A node panicked: a bug in weir, not in the pipeline.
    #[error("node `{node}` panicked: {message} (this is a bug in weir)")]
    Panic {
        /// The node.
        node: String,
        /// The panic message.
        message: String,
    },
    /// Dead letters could not be written, so records would be lost: the run stops.
    #[error("cannot write dead letters to {path}: {source}")]
    DeadLetters {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// How to run a plan.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print a progress line to stderr every half second (only on a terminal).
    pub progress: bool,
}

/// Shared by the tasks of a run.
struct RunShared {
    letters: DeadLetterFile,
    own_letters: HashMap<String, DeadLetterFile>,
    records_read: AtomicU64,
    /// Set by a failing node before it drops its output channels, so a sink that
    /// sees its input end because of the failure does not publish partial output.
    failed: std::sync::atomic::AtomicBool,
}

impl RunShared {
    fn letters_for(&self, node: &str) -> &DeadLetterFile {
        self.own_letters.get(node).unwrap_or(&self.letters)
    }

    fn keep(&self, node: &str, letters: &[crate::exec::DeadLetter]) -> Result<(), RunError> {
        let file = self.letters_for(node);
        file.append(node, letters)
            .map_err(|source| RunError::DeadLetters {
                path: file.path().display().to_string(),
                source,
            })
    }
}

/// Prepares and runs a pipeline to the end (bounded sources) or until it fails.
///
/// # Errors
/// [`RunError`], naming the node at fault.
pub async fn run(plan: Plan, env: &RunEnv, options: &RunOptions) -> Result<RunSummary, RunError> {
    run_with(plan, env, options, RunControl::new()).await
}

/// As [`run`], with a handle to stop the run or swap its stages while it runs
/// (see [`control`]).
///
/// # Errors
/// [`RunError`], naming the node at fault.
pub async fn run_with(
    plan: Plan,
    env: &RunEnv,
    options: &RunOptions,
    control: RunControl,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let Plan {
        spec, dag, nodes, ..
    } = plan;
    let run_id = format!(
        "run-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let letters_path = env
        .data_dir
        .join("dead-letters")
        .join(&spec.name)
        .join(format!("{run_id}.jsonl"));
    let own_letters = spec
        .sources
        .iter()
        .filter_map(|s| {
            let path = s.jsonl.as_ref()?.rejects.as_ref()?;
            Some((
                s.name.clone(),
                DeadLetterFile::new(spec.resolve(path), &spec.name, &run_id),
            ))
        })
        .collect();
    let shared = Arc::new(RunShared {
        letters: DeadLetterFile::new(letters_path, &spec.name, &run_id),
        own_letters,
        records_read: AtomicU64::new(0),
        failed: std::sync::atomic::AtomicBool::new(false),
    });

    // One channel in front of every node that has inputs.
    let mut senders: Vec<Option<channel::Sender>> = Vec::with_capacity(nodes.len());
    let mut receivers: Vec<Option<channel::Receiver>> = Vec::with_capacity(nodes.len());
    for node in &dag.nodes {
        if node.inputs.is_empty() {
            senders.push(None);
            receivers.push(None);
        } else {
            let (tx, rx) =
                channel::bounded(spec.settings.channel_batches, spec.settings.channel_bytes);
            senders.push(Some(tx));
            receivers.push(Some(rx));
        }
    }

    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    for (pos, imp) in nodes.into_iter().enumerate() {
        let node = &dag.nodes[pos];
        let outs: Vec<channel::Sender> = node
            .outputs
            .iter()
            .map(|&o| senders[o].clone().expect("readers have channels"))
            .collect();
        let stats = NodeStats::new(&node.name, node.kind);
        let shared = shared.clone();
        let rx = receivers[pos].take();
        let id = match imp {
            NodeImpl::Source(src) => {
                let stamp = SourceStamp {
                    pipeline: spec.name.clone(),
                    control: control.clone(),
                };
                tasks
                    .spawn(fail_before_closing(shared.clone(), outs, |outs| {
                        run_source(src, outs, stats, shared, stamp)
                    }))
                    .id()
            }
            NodeImpl::Operator(op) => {
                let swaps = control.register(&node.name);
                let rx = rx.expect("stages have inputs");
                tasks
                    .spawn(fail_before_closing(shared.clone(), outs, |outs| {
                        run_operator(op, rx, outs, stats, shared, swaps)
                    }))
                    .id()
            }
            NodeImpl::Sink(sink) => tasks
                .spawn(run_sink(
                    sink,
                    rx.expect("sinks have inputs"),
                    stats,
                    control.clone(),
                    shared,
                ))
                .id(),
        };
        names.insert(id, node.name.clone());
    }
    // Only the tasks hold senders now, so channels close when their writers end.
    drop(senders);
    control.mark_started();

    let progress = (options.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(report_progress(shared.clone(), started)));

    let mut stats: Vec<NodeStats> = Vec::new();
    let mut failure: Option<RunError> = None;
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, Ok(s))) => stats.push(s),
            Ok((_, Err(e))) => {
                if failure.is_none() {
                    failure = Some(e);
                    tasks.abort_all();
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                let node = names.get(&e.id()).cloned().unwrap_or_default();
                let message = panic_message(e.into_panic());
                failure.get_or_insert(RunError::Panic { node, message });
                tasks.abort_all();
            }
        }
    }
    control.clear();
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[2K");
    }
    for file in std::iter::once(&shared.letters).chain(shared.own_letters.values()) {
        file.flush().map_err(|source| RunError::DeadLetters {
            path: file.path().display().to_string(),
            source,
        })?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let order: HashMap<&str, usize> = dag
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    stats.sort_by_key(|s| order[s.name.as_str()]);
    let dead_letter_file = shared
        .letters
        .path()
        .exists()
        .then(|| shared.letters.path().to_path_buf());
    Ok(RunSummary {
        pipeline: spec.name.clone(),
        run_id,
        nodes: stats,
        wall: started.elapsed(),
        dead_letter_file,
    })
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Sends each batch to every output. Returns false when all outputs are gone.
async fn fan_out(
    batches: Vec<RecordBatch>,
    outs: &[channel::Sender],
    stats: &mut NodeStats,
) -> bool {
    let mut alive = !outs.is_empty();
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        stats.batches_out += 1;
        stats.rows_out += batch.num_rows() as u64;
        alive = false;
        for out in outs {
            if let Ok(waited) = out.send(batch.clone()).await {
                stats.blocked += waited;
                alive = true;
            }
        }
        if !alive {
            return false;
        }
    }
    alive
}

fn merge(into: &mut NodeStats, counters: std::collections::BTreeMap<String, u64>) {
    for (k, v) in counters {
        *into.counters.entry(k).or_default() += v;
    }
}

/// Runs a node that writes to `outs`, marking the run failed *before* the output
/// channels close when the node fails: readers then know the end of their input
/// is not the end of the data.
async fn fail_before_closing<F, Fut>(
    shared: Arc<RunShared>,
    outs: Vec<channel::Sender>,
    node: F,
) -> Result<NodeStats, RunError>
where
    F: FnOnce(Vec<channel::Sender>) -> Fut,
    Fut: std::future::Future<Output = (Result<NodeStats, RunError>, Vec<channel::Sender>)>,
{
    let (result, outs) = node(outs).await;
    if result.is_err() {
        shared.failed.store(true, Ordering::SeqCst);
    }
    drop(outs);
    result
}

async fn run_source(
    source: Box<dyn Source>,
    outs: Vec<channel::Sender>,
    stats: NodeStats,
    shared: Arc<RunShared>,
    stamp: SourceStamp,
) -> (Result<NodeStats, RunError>, Vec<channel::Sender>) {
    let result = source_loop(source, &outs, stats, shared, stamp).await;
    (result, outs)
}

async fn source_loop(
    mut source: Box<dyn Source>,
    outs: &Vec<channel::Sender>,
    mut stats: NodeStats,
    shared: Arc<RunShared>,
    stamp: SourceStamp,
) -> Result<NodeStats, RunError> {
    let name = stats.name.clone();
    let stop = stamp.control.stop_signal();
    loop {
        if *stop.borrow() {
            return Ok(stats);
        }
        let started = Instant::now();
        let (back, result, mut emitted, span) = tokio::task::spawn_blocking(move || {
            let mut out = Emitter::default();
            let from = source.position();
            let r = source.next_batch(&mut out);
            let span = (from, source.position());
            (source, r, out, span)
        })
        .await
        .map_err(|e| RunError::Panic {
            node: name.clone(),
            message: panic_message(e.into_panic()),
        })?;
        source = back;
        stats.busy += started.elapsed();
        let more = result.map_err(|source| RunError::Node {
            node: name.clone(),
            source,
        })?;
        emitted.batches = stamp.stamp(&name, span, emitted.batches);
        shared.keep(&name, &emitted.dead_letters)?;
        merge(&mut stats, emitted.counters);
        let rows: usize = emitted.batches.iter().map(RecordBatch::num_rows).sum();
        shared
            .records_read
            .fetch_add(rows as u64, Ordering::Relaxed);
        if !fan_out(emitted.batches, &outs, &mut stats).await || !more {
            return Ok(stats);
        }
    }
}

async fn run_operator(
    op: Box<dyn Operator>,
    rx: channel::Receiver,
    outs: Vec<channel::Sender>,
    stats: NodeStats,
    shared: Arc<RunShared>,
    swaps: control::SwapReceiver,
) -> (Result<NodeStats, RunError>, Vec<channel::Sender>) {
    let result = operator_loop(op, rx, &outs, stats, shared, swaps).await;
    (result, outs)
}

async fn operator_loop(
    mut op: Box<dyn Operator>,
    mut rx: channel::Receiver,
    outs: &Vec<channel::Sender>,
    mut stats: NodeStats,
    shared: Arc<RunShared>,
    mut swaps: control::SwapReceiver,
) -> Result<NodeStats, RunError> {
    let name = stats.name.clone();
    // When a lingering operator's oldest buffered row has waited long enough (see
    // `Operator::linger`): its `flush` is then called instead of waiting on.
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        let (input, flush) = match linger_until {
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(input) => (input, false),
                Err(_) => (None, true),
            },
            None => (rx.recv().await, false),
        };
        // Swaps queued while waiting apply now: between the last batch and this one.
        let pending: Vec<control::SwapRequest> =
            std::iter::from_fn(|| swaps.try_recv().ok()).collect();
        let finishing = input.is_none() && !flush;
        if let Some(b) = &input {
            stats.batches_in += 1;
            stats.rows_in += b.num_rows() as u64;
        }
        let started = Instant::now();
        let (back, result, emitted) = tokio::task::spawn_blocking(move || {
            let mut out = Emitter::default();
            for request in pending {
                op.swap(request);
            }
            let r = match input {
                Some(batch) => op.process(batch, &mut out),
                None if flush => op.flush(&mut out),
                None => op.finish(&mut out),
            };
            (op, r, out)
        })
        .await
        .map_err(|e| RunError::Panic {
            node: name.clone(),
            message: panic_message(e.into_panic()),
        })?;
        op = back;
        linger_until = match op.linger() {
            Some(wait) if op.buffered_rows() > 0 => {
                Some(linger_until.unwrap_or_else(|| tokio::time::Instant::now() + wait))
            }
            _ => None,
        };
        stats.busy += started.elapsed();
        result.map_err(|source| RunError::Node {
            node: name.clone(),
            source,
        })?;
        shared.keep(&name, &emitted.dead_letters)?;
        merge(&mut stats, emitted.counters);
        let alive = fan_out(emitted.batches, &outs, &mut stats).await;
        if finishing && alive {
            drain_operator(&mut op, &outs, &mut stats, &shared).await?;
        }
        if finishing || !alive {
            let (b, bytes) = rx.max_depth();
            stats.max_queue_batches = b;
            stats.max_queue_bytes = bytes;
            return Ok(stats);
        }
    }
}

/// After `finish`: calls [`Operator::drain`] until it has no more, sending each
/// piece downstream (under backpressure) before asking for the next.
async fn drain_operator(
    op: &mut Box<dyn Operator>,
    outs: &[channel::Sender],
    stats: &mut NodeStats,
    shared: &RunShared,
) -> Result<(), RunError> {
    let name = stats.name.clone();
    let mut taken = std::mem::replace(op, Box::new(Drained));
    loop {
        let started = Instant::now();
        let (back, result, emitted) = tokio::task::spawn_blocking(move || {
            let mut out = Emitter::default();
            let r = taken.drain(&mut out);
            (taken, r, out)
        })
        .await
        .map_err(|e| RunError::Panic {
            node: name.clone(),
            message: panic_message(e.into_panic()),
        })?;
        taken = back;
        stats.busy += started.elapsed();
        let more = result.map_err(|source| RunError::Node {
            node: name.clone(),
            source,
        })?;
        shared.keep(&name, &emitted.dead_letters)?;
        merge(stats, emitted.counters);
        if !fan_out(emitted.batches, outs, stats).await || !more {
            *op = taken;
            return Ok(());
        }
    }
}

/// Stands in for an operator while it is drained on the blocking pool.
struct Drained;

impl Operator for Drained {
    fn process(&mut self, _: RecordBatch, _: &mut Emitter) -> Result<(), NodeError> {
        Ok(())
    }
}

async fn run_sink(
    sink: Box<dyn Sink>,
    mut rx: channel::Receiver,
    mut stats: NodeStats,
    control: RunControl,
    shared: Arc<RunShared>,
) -> Result<NodeStats, RunError> {
    let name = stats.name.clone();
    let mut sink = Some(sink);
    loop {
        let input = rx.recv().await;
        if input.is_none() && shared.failed.load(Ordering::SeqCst) {
            // The input ended because a node failed: dropping the sink unpublished
            // leaves the previous output as it was.
            return Ok(stats);
        }
        let mut s = sink.take().expect("sink is back after each call");
        let started = Instant::now();
        let closing = input.is_none();
        if let Some(b) = &input {
            stats.batches_in += 1;
            stats.rows_in += b.num_rows() as u64;
        }
        let (control, name_) = (control.clone(), name.clone());
        let (back, result) = tokio::task::spawn_blocking(move || {
            let r = match &input {
                Some(batch) => s.write(batch).map(|()| {
                    control.log_written(&name_, batch);
                    batch.num_rows()
                }),
                None => s.close().map(|()| 0),
            };
            (s, r)
        })
        .await
        .map_err(|e| RunError::Panic {
            node: name.clone(),
            message: panic_message(e.into_panic()),
        })?;
        sink = Some(back);
        stats.busy += started.elapsed();
        let rows = result.map_err(|source| RunError::Node {
            node: name.clone(),
            source,
        })?;
        if rows > 0 {
            stats.batches_out += 1;
            stats.rows_out += rows as u64;
        }
        if closing {
            let (b, bytes) = rx.max_depth();
            stats.max_queue_batches = b;
            stats.max_queue_bytes = bytes;
            return Ok(stats);
        }
    }
}

/// What a source task stamps on the batches it reads (see [`lineage`]).
struct SourceStamp {
    pipeline: String,
    control: RunControl,
}

impl SourceStamp {
    fn stamp(
        &self,
        source: &str,
        (from, to): (Option<String>, Option<String>),
        batches: Vec<RecordBatch>,
    ) -> Vec<RecordBatch> {
        let lineage = lineage::Lineage {
            pipeline: self.pipeline.clone(),
            version: self.control.version(),
            sources: vec![lineage::SourceSpan {
                source: source.to_owned(),
                from,
                to,
            }],
            stages: Vec::new(),
        };
        batches.into_iter().map(|b| lineage.stamp(b)).collect()
    }
}

async fn report_progress(shared: Arc<RunShared>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let read = shared.records_read.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        eprint!(
            "\r\x1b[2K  {read} records read · {:.0} records/s · {secs:.1}s",
            read as f64 / secs.max(1e-9)
        );
    }
}

/// The default data directory: `$WEIR_DATA_DIR`, else `.weir` in the working
/// directory.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("WEIR_DATA_DIR").map_or_else(|| PathBuf::from(".weir"), PathBuf::from)
}

impl NodeKind {
    /// The kind's name as pipeline files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Stage => "stage",
            Self::Sink => "sink",
        }
    }
}
