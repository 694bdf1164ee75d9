//! The scheduler: one task per node, bounded channels between them, delivery
//! tracked from each source batch to the sinks, checkpoints.
//!
//! ```text
//!   source ──[ch]──► stage ──[ch]──► stage ──[ch]──► sink
//!     │  token per batch      │ lineage + tokens ride along   │ durable (write / flush / close)
//!     │◄── commit(frontier) ──┴───────────── tokens dropped ◄─┘
//!     └── dead letters ──► DeadLetterStore (own thread; tokens held until synced)
//!   checkpointer: every `settings.checkpoint_interval`, frontiers then sink states → the store
//!   (with a stateful operator: barriers instead, see [`barrier`])
//! ```
//!
//! Each node runs as a tokio task; its own work (parsing, a WebAssembly call, a
//! kernel, a write) runs on the blocking pool, so CPU-heavy nodes never stall the
//! scheduler. Channels are bounded in batches and bytes ([`channel`]): a slow node
//! makes its upstream wait, all the way back to the source, which then reads less.
//!
//! Delivery is at-least-once (see [`crate::node::ack`]): a source position is
//! committed, and checkpointed, once everything read up to it is durable in every
//! sink downstream or in the dead-letter store. A resumed run restores each sink's
//! state and seeks each source to its checkpointed position.
//!
//! A run whose operators keep state across checkpoints (a session window) takes
//! aligned checkpoints instead ([`barrier`]): the operator's state is saved with
//! the source positions of a barrier, and sources commit those.
//!
//! A bounded source ends the run cleanly: when it is exhausted its channel closes,
//! each operator `finish`es and closes its own, and sinks close (flush, rename into
//! place). When any node fails, the run stops: the failing node poisons every
//! commit tracker while it still holds its input (so nothing it drops looks
//! delivered), the other tasks are aborted, the error names the node, and sinks
//! do not publish their partial output.

mod barrier;
pub mod channel;
pub mod control;
mod ledger;
mod progress;
mod summary;
mod tasks;

#[cfg(test)]
mod held_tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use tokio::task::JoinSet;

pub use control::{RunControl, StageChange, SwapApplied, SwapError};
pub use ledger::Ledger;
pub use summary::{NodeStats, RunSummary};

pub use crate::node::{DeadLetter, Emitter, NodeError, Operator, Sink, Source};
pub use crate::plan::{NodeImpl, Plan, PlanError, RunEnv};

use crate::node::{
    Checkpoint, CheckpointStore, CommitTracker, DeadLetterStore, FileDeadLetters, LineageRecord,
    NodeKind,
};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pipeline could not be prepared.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A node failed while running.
    #[error("node `{node}` failed: {error}")]
    Node {
        /// The node.
        node: String,
        /// Why (its fault is [`NodeError::fault`]).
        error: NodeError,
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
    #[error(transparent)]
    DeadLetters(#[from] crate::node::DeadLetterError),
    /// The checkpoint could not be read or written.
    #[error("checkpoint of `{pipeline}`: {error}")]
    Checkpoint {
        /// The pipeline.
        pipeline: String,
        /// Why: the store's own error (or the dead-letter store's, whose
        /// records must be durable before a checkpoint is saved).
        #[source]
        error: crate::node::BoxError,
    },
}

impl RunError {
    /// Whose fault the failure is: a node's own ([`NodeError::fault`]), the
    /// spec's for a plan refused, weir's for a panic, a local file's for a
    /// checkpoint or dead letters not kept.
    pub fn fault(&self) -> crate::node::Fault {
        use crate::node::Fault;
        match self {
            Self::Plan(p) => p.fault(),
            Self::Node { error, .. } => error.fault(),
            Self::Panic { .. } => Fault::Bug,
            Self::DeadLetters(_) | Self::Checkpoint { .. } => Fault::Io,
        }
    }
}

/// How to run a plan.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Print a progress line to stderr every half second (only on a terminal).
    pub progress: bool,
    /// Where checkpoints are kept; `None`: the run keeps none and cannot be
    /// resumed (a pipeline run from a file).
    pub checkpoints: Option<Arc<dyn CheckpointStore>>,
    /// Continue from the pipeline's last checkpoint instead of starting over.
    /// Without one the run starts from the beginning.
    pub resume: bool,
    /// Where dead letters go, given by the host (one store may serve every
    /// run). `None`: a JSON-lines file per run under the data directory
    /// ([`FileDeadLetters`]). Either way a source that names its own `rejects`
    /// file gets its letters there too.
    pub dead_letters: Option<Arc<dyn DeadLetterStore>>,
    /// The tenant the run belongs to, stamped on its dead letters. `None`:
    /// [`DEFAULT_TENANT`].
    pub tenant: Option<String>,
    /// Sink states to restore, by sink, for a run that is no resume but must add
    /// to what a sink holds (a replay from the dead-letter store; see
    /// [`crate::node::config::SinkConfig::replay_into`]). A resumed run's
    /// checkpoint wins over these.
    pub sink_states: BTreeMap<String, String>,
}

/// The tenant of a run that names none (the CLI's).
pub const DEFAULT_TENANT: &str = "default";

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("progress", &self.progress)
            .field("checkpoints", &self.checkpoints.is_some())
            .field("resume", &self.resume)
            .field("dead_letters", &self.dead_letters.is_some())
            .field("tenant", &self.tenant)
            .field("sink_states", &self.sink_states)
            .finish()
    }
}

/// Shared by the tasks of a run.
pub(crate) struct RunShared {
    pub(crate) letters: Arc<dyn DeadLetterStore>,
    /// What each dead letter is stamped with.
    pub(crate) stamp: crate::node::LetterStamp,
    pub(crate) records_read: AtomicU64,
    /// Set by a failing node before it drops its input or its output channels,
    /// so a sink that sees its input end because of the failure does not publish
    /// partial output, and no token dropped from then on commits anything.
    failed: AtomicBool,
    pub(crate) trackers: Vec<Arc<CommitTracker>>,
    /// Per sink, the state of its last durable flush.
    pub(crate) sink_states: Mutex<BTreeMap<String, String>>,
    /// Lineage records not yet saved with a checkpoint.
    pub(crate) lineage: Mutex<Vec<LineageRecord>>,
    /// Aligned checkpoints, when an operator keeps state across them.
    pub(crate) barriers: Option<Arc<barrier::Barriers>>,
    /// Sources of a stopped run with aligned checkpoints, with what they
    /// committed last: they commit the last checkpoint's positions once it is
    /// saved.
    pub(crate) parked: Mutex<Vec<ParkedSource>>,
    /// Aligned checkpoints not saved because an operator still held rows
    /// read before their barrier (see [`barrier`]).
    pub(crate) checkpoints_held: AtomicU64,
}

/// A source waiting for the run's last checkpoint (see [`RunShared::parked`]).
pub(crate) type ParkedSource = (
    String,
    Box<dyn crate::node::AsyncSource>,
    Option<crate::node::Position>,
);

impl RunShared {
    /// Marks the run failed and stops every commit frontier. Called by a failing
    /// node while it still holds what it was working on.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        for t in &self.trackers {
            t.poison();
        }
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

/// What one node's task needs besides its channels.
pub(crate) struct NodeCx {
    pub(crate) name: String,
    pub(crate) shared: Arc<RunShared>,
    pub(crate) control: RunControl,
    pub(crate) settings: crate::spec::Settings,
    pub(crate) pipeline: String,
    /// The schema the node's output must have (`None`: learned from its first batch).
    pub(crate) output_schema: Option<SchemaRef>,
    /// The digest of the node's component (WebAssembly stages).
    pub(crate) component: Option<String>,
    pub(crate) memory_watch: crate::node::memory::MemoryWatch,
    /// When the node last published its counters ([`RunControl::live_nodes`]).
    pub(crate) published: Mutex<Instant>,
    /// The node's error policy, as the executor applies it to a sink's writes
    /// (operators carry theirs in their guard, [`crate::ops::guard`]).
    pub(crate) on_error: crate::node::policy::OnError,
}

impl NodeCx {
    /// Publishes the node's counters if [`control::LIVE_INTERVAL`] has passed
    /// since it last did.
    pub(crate) fn publish(&self, stats: &NodeStats) {
        let mut last = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= control::LIVE_INTERVAL {
            *last = Instant::now();
            self.control.publish(stats);
        }
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
        spec,
        dag,
        mut nodes,
        schemas,
        memory,
        digests,
        ..
    } = plan;
    if options.checkpoints.is_none() {
        refuse_held_acknowledgements(&spec)?;
    }
    // Operators whose state outlives a checkpoint make the run take aligned
    // checkpoints ([`barrier`]).
    // Each operator's part at a barrier (see `node::AtBarrier`).
    let mut stateful = vec![false; nodes.len()];
    let mut at_barrier = vec![crate::node::AtBarrier::Hold; nodes.len()];
    if options.checkpoints.is_some() {
        for (i, n) in nodes.iter_mut().enumerate() {
            if let NodeImpl::Operator(crate::plan::OperatorNode::Sync(op)) = n {
                stateful[i] = op.begin_checkpoints();
                at_barrier[i] = if stateful[i] {
                    crate::node::AtBarrier::Snapshot
                } else {
                    op.at_barrier()
                };
            }
        }
    }
    let run_id = format!(
        "run-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let checkpoint_err = |error: crate::node::BoxError| RunError::Checkpoint {
        pipeline: spec.name.clone(),
        error,
    };
    let resumed = match (&options.checkpoints, options.resume) {
        (Some(store), true) => store.load(&spec.name).map_err(checkpoint_err)?,
        (Some(store), false) => {
            store.clear(&spec.name).map_err(checkpoint_err)?;
            None
        }
        (None, _) => None,
    };

    let letters_path = env
        .data_dir
        .join("dead-letters")
        .join(&spec.name)
        .join(format!("{run_id}.jsonl"));
    let own_letters: HashMap<String, PathBuf> = spec
        .sources
        .iter()
        .filter_map(|s| Some((s.name.clone(), spec.resolve(s.rejects()?))))
        .collect();
    let letters: Arc<dyn DeadLetterStore> = match &options.dead_letters {
        None => Arc::new(FileDeadLetters::new(letters_path.clone(), own_letters)),
        Some(store) if own_letters.is_empty() => store.clone(),
        Some(store) => Arc::new(crate::node::WithExports::new(store.clone(), own_letters)),
    };

    let trackers: Vec<(usize, Arc<CommitTracker>)> = dag
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.kind == NodeKind::Source)
        .map(|(i, n)| {
            let from = resumed
                .as_ref()
                .and_then(|c| c.sources.get(&n.name).cloned());
            (i, CommitTracker::new(&n.name, from))
        })
        .collect();
    let shared = Arc::new(RunShared {
        letters: letters.clone(),
        stamp: crate::node::LetterStamp {
            tenant: options
                .tenant
                .clone()
                .unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
            pipeline: spec.name.clone(),
            version: control.version(),
            run: run_id.clone(),
        },
        records_read: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        trackers: trackers.iter().map(|(_, t)| t.clone()).collect(),
        sink_states: Mutex::new(
            resumed
                .as_ref()
                .map(|c| c.sinks.clone())
                .unwrap_or_default(),
        ),
        lineage: Mutex::default(),
        barriers: stateful.iter().any(|s| *s).then(|| {
            let sinks = dag
                .nodes
                .iter()
                .filter(|n| n.kind == NodeKind::Sink)
                .count();
            Arc::new(
                barrier::Barriers::new(
                    sinks,
                    env.data_dir.join("state").join(&spec.name).join(&run_id),
                )
                .with_trackers(
                    trackers
                        .iter()
                        .map(|(i, t)| (dag.nodes[*i].name.clone(), t.clone()))
                        .collect(),
                ),
            )
        }),
        parked: Mutex::default(),
        checkpoints_held: AtomicU64::new(0),
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
        // Each output's sender knows which of that node's inputs it is.
        let outs: Vec<channel::Sender> = node
            .outputs
            .iter()
            .filter_map(|&o| {
                let origin = dag.nodes[o].inputs.iter().position(|&i| i == pos)?;
                Some(senders[o].as_ref()?.for_input(origin))
            })
            .collect();
        let stats = NodeStats::new(&node.name, node.kind);
        let cx = NodeCx {
            name: node.name.clone(),
            shared: shared.clone(),
            control: control.clone(),
            settings: spec.settings.clone(),
            pipeline: spec.name.clone(),
            output_schema: schemas[pos].clone(),
            component: digests
                .iter()
                .find(|(n, _)| *n == node.name)
                .map(|(_, d)| d.clone()),
            memory_watch: memory.watch.clone(),
            published: Mutex::new(Instant::now()),
            on_error: match node.kind {
                NodeKind::Sink => spec.sinks[node.index].policy.effective(true),
                _ => crate::node::policy::OnError::default_for(false),
            },
        };
        let rx = receivers[pos].take();
        let id = match (imp, rx) {
            (NodeImpl::Source(src), _) => {
                let tracker = trackers
                    .iter()
                    .find(|(i, _)| *i == pos)
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| RunError::Panic {
                        node: node.name.clone(),
                        message: "a source without a commit tracker".into(),
                    })?;
                let from = resumed
                    .as_ref()
                    .and_then(|c| c.sources.get(&node.name).cloned());
                tasks
                    .spawn(tasks::run_source(src, outs, stats, cx, tracker, from))
                    .id()
            }
            (NodeImpl::Operator(op), Some(rx)) => {
                let swaps = control.register(&node.name);
                let checkpoints = tasks::OperatorCheckpoints {
                    at_barrier: at_barrier[pos],
                    restore: resumed
                        .as_ref()
                        .and_then(|c| c.operators.get(&node.name).cloned()),
                    inputs: node.inputs.len(),
                };
                tasks
                    .spawn(tasks::run_operator(
                        op,
                        rx,
                        outs,
                        stats,
                        cx,
                        swaps,
                        checkpoints,
                    ))
                    .id()
            }
            (NodeImpl::Sink(sink), Some(rx)) => {
                let state = resumed
                    .as_ref()
                    .and_then(|c| c.sinks.get(&node.name).cloned())
                    .or_else(|| options.sink_states.get(&node.name).cloned());
                tasks
                    .spawn(tasks::run_sink(
                        sink,
                        rx,
                        stats,
                        cx,
                        state,
                        node.inputs.len(),
                    ))
                    .id()
            }
            (_, None) => {
                return Err(RunError::Panic {
                    node: node.name.clone(),
                    message: "a node with inputs has no channel".into(),
                });
            }
        };
        names.insert(id, node.name.clone());
    }
    // Only the tasks hold senders now, so channels close when their writers end.
    drop(senders);
    control.mark_started();

    let progress = (options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(|| tokio::spawn(progress::report(shared.clone(), started)));
    let checkpointer = Checkpointer {
        store: options.checkpoints.clone(),
        shared: shared.clone(),
        pipeline: spec.name.clone(),
        run: run_id.clone(),
        version: control.version(),
        sources: trackers
            .iter()
            .map(|(i, t)| (dag.nodes[*i].name.clone(), t.clone()))
            .collect(),
        last: resumed.clone(),
    };
    let checkpointer = Arc::new(tokio::sync::Mutex::new(checkpointer));
    let ticker = {
        let c = checkpointer.clone();
        let every = spec.settings.checkpoint_interval.0;
        let mut stop = control.stop_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let barriers = c.lock().await.shared.barriers.clone();
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    r = stop.wait_for(|s| *s), if barriers.is_some() => r.is_ok(),
                };
                let mut c = c.lock().await;
                if c.shared.has_failed() {
                    return;
                }
                if let Some(b) = &barriers {
                    // Aligned: ask the sources for the next barrier; the
                    // checkpoint is saved when every sink has passed it. A
                    // stopping run's last barrier is sent before sources end.
                    let mut n = 0;
                    b.request.send_modify(|r| {
                        *r += 1;
                        n = *r;
                    });
                    if stopping {
                        b.last.send_replace(Some(n));
                        return;
                    }
                    continue;
                }
                // A failed periodic save is retried at the next tick and at the end.
                if let Err(e) = c.save(false).await {
                    tracing::warn!(error = %e, "checkpoint not saved");
                }
            }
        })
    };
    // Aligned checkpoints are saved as their last sink reports.
    let assembler = shared.barriers.clone().map(|b| {
        let c = checkpointer.clone();
        tokio::spawn(async move {
            loop {
                b.reported.notified().await;
                let mut c = c.lock().await;
                if c.shared.has_failed() {
                    return;
                }
                if let Err(e) = c.save_assembled().await {
                    tracing::warn!(error = %e, "checkpoint not saved");
                }
            }
        })
    });

    let mut stats: Vec<NodeStats> = Vec::new();
    let mut failure: Option<RunError> = None;
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, Ok(s))) => {
                control.publish(&s);
                stats.push(s);
            }
            Ok((_, Err(e))) => {
                if failure.is_none() {
                    shared.fail();
                    failure = Some(e);
                    tasks.abort_all();
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                shared.fail();
                let node = names.get(&e.id()).cloned().unwrap_or_default();
                let message = panic_message(e.into_panic());
                failure.get_or_insert(RunError::Panic { node, message });
                tasks.abort_all();
            }
        }
    }
    ticker.abort();
    if let Some(a) = assembler {
        a.abort();
    }
    control.clear();
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[2K");
    }
    let flushed = letters.flush();
    if let Some(e) = failure {
        return Err(e);
    }
    flushed?;
    let complete = !control.is_stopped();
    let checkpoint = {
        let mut c = checkpointer.lock().await;
        if c.shared.barriers.is_some() {
            // The stop barrier's checkpoint, if its last sink reported just now.
            c.save_assembled().await?;
        }
        if complete || c.shared.barriers.is_none() {
            c.save(complete).await?;
        }
        c.last.clone().filter(|_| c.store.is_some())
    };
    // Sources of a stopped run with aligned checkpoints commit what the last
    // checkpoint holds.
    let parked = std::mem::take(&mut *shared.parked.lock().unwrap_or_else(|e| e.into_inner()));
    for (name, mut source, committed) in parked {
        let at = checkpoint
            .as_ref()
            .and_then(|c| c.sources.get(&name).cloned());
        if let Some(p) = at.filter(|p| committed.as_ref() != Some(p)) {
            source
                .commit(&p)
                .await
                .map_err(|error| RunError::Node { node: name, error })?;
        }
    }
    let order: HashMap<&str, usize> = dag
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    stats.sort_by_key(|s| order[s.name.as_str()]);
    let dead_letters_at = (options.dead_letters.is_some()
        && stats.iter().any(|n| n.dead_letters() > 0))
    .then(|| letters.location(&spec.name, ""));
    Ok(RunSummary {
        pipeline: spec.name.clone(),
        run_id,
        nodes: stats,
        wall: started.elapsed(),
        dead_letter_file: (options.dead_letters.is_none() && letters_path.exists())
            .then_some(letters_path),
        dead_letters_at,
        resumed_from: resumed,
        checkpoint,
        checkpoints_held: shared.checkpoints_held.load(Ordering::Relaxed),
    })
}

/// A run that keeps no checkpoint (a pipeline run from a file) cannot hold a
/// broker's messages in session windows: nothing would be acknowledged until
/// the run ends, so the broker would stop delivering at its bound and deliver
/// everything again after its ack wait. Refused before anything is opened.
fn refuse_held_acknowledgements(spec: &crate::spec::PipelineSpec) -> Result<(), RunError> {
    let Some(source) = spec.sources.iter().find(|s| s.kind.config().acknowledges()) else {
        return Ok(());
    };
    let Some(stage) = spec.stages.iter().find(|s| s.kind.config().holds_input()) else {
        return Ok(());
    };
    Err(RunError::Node {
        node: stage.name.clone(),
        error: NodeError::config(format!(
            "`{}` holds rows for as long as their key is active, and source `{}` must have its \
             messages acknowledged as the run goes on; a pipeline run from a file keeps no \
             checkpoint, so nothing would be acknowledged until the run ends. Store the pipeline \
             (`weir pipeline apply FILE`) and run it by name (`weir run NAME`): its session state \
             is then checkpointed and the stream acknowledged at each checkpoint",
            stage.name, source.name
        )),
    })
}

/// Writes checkpoints: the frontier of every source, then the state of every sink
/// (in that order; see [`crate::node::checkpoint`]).
struct Checkpointer {
    store: Option<Arc<dyn CheckpointStore>>,
    shared: Arc<RunShared>,
    pipeline: String,
    run: String,
    version: Option<u64>,
    sources: Vec<(String, Arc<CommitTracker>)>,
    last: Option<Checkpoint>,
}

impl Checkpointer {
    /// Saves the newest aligned checkpoint every sink has reported, after the
    /// dead letters written before it are durable; then lets the sources commit
    /// its positions and removes the state files the previous one held.
    async fn save_assembled(&mut self) -> Result<(), RunError> {
        let (Some(store), Some(barriers)) = (self.store.clone(), self.shared.barriers.clone())
        else {
            return Ok(());
        };
        let Some(a) = barriers.take_assembled() else {
            return Ok(());
        };
        remove_states(a.superseded.iter(), None);
        let letters = self.shared.letters.clone();
        let lineage = std::mem::take(
            &mut *self
                .shared
                .lineage
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let checkpoint = Checkpoint {
            pipeline: self.pipeline.clone(),
            run: self.run.clone(),
            version: self.version,
            sources: a.sources.clone(),
            sinks: a.sinks,
            operators: a.operators,
            complete: false,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        };
        let settled = a.settled.clone();
        let issued = a.issued.clone();
        let saved = {
            let (checkpoint, lineage) = (checkpoint.clone(), lineage.clone());
            tokio::task::spawn_blocking(move || -> Result<Option<String>, crate::node::BoxError> {
                letters.flush()?;
                // Counted when the last sink reported: tokens that settle
                // later settle for rows written after the barrier, which the
                // sinks' states do not hold.
                let held = issued
                    .iter()
                    .find(|(name, n)| settled.get(*name).copied().unwrap_or(0) < **n);
                if let Some((name, n)) = held {
                    return Ok(Some(format!(
                        "{} of the batches `{name}` read before it were not settled",
                        n - settled.get(name).copied().unwrap_or(0)
                    )));
                }
                store.save(&checkpoint, &lineage)?;
                Ok(None)
            })
            .await
            .map_err(|e| -> crate::node::BoxError { Box::new(e) })
            .and_then(|r| r)
        };
        match saved {
            Err(error) => return Err(self.unsaved(lineage, error)),
            Ok(Some(why)) => {
                // Held back: its lineage waits for the next checkpoint, and
                // the state written for it is not needed.
                tracing::debug!(checkpoint = a.id, "checkpoint held back: {why}");
                self.shared.checkpoints_held.fetch_add(1, Ordering::Relaxed);
                let mut pending = self
                    .shared
                    .lineage
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let newer = std::mem::replace(&mut *pending, lineage);
                pending.extend(newer);
                drop(pending);
                let keep = self.last.as_ref().map(|c| &c.operators);
                remove_states(checkpoint.operators.values(), keep);
                return Ok(());
            }
            Ok(None) => {}
        }
        barriers.committed.send_replace((a.id, a.sources));
        if let Some(old) = self.last.replace(checkpoint) {
            let keep = self.last.as_ref().map(|c| &c.operators);
            remove_states(old.operators.values(), keep);
        }
        Ok(())
    }

    async fn save(&mut self, complete: bool) -> Result<(), RunError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let mut sources = BTreeMap::new();
        for (name, t) in &self.sources {
            if let Some(p) = t.frontier() {
                sources.insert(name.clone(), p);
            }
        }
        let sinks = self
            .shared
            .sink_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let lineage = std::mem::take(
            &mut *self
                .shared
                .lineage
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let unchanged = self
            .last
            .as_ref()
            .is_some_and(|l| l.sources == sources && l.sinks == sinks && l.complete == complete);
        if unchanged && lineage.is_empty() {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            pipeline: self.pipeline.clone(),
            run: self.run.clone(),
            version: self.version,
            sources,
            sinks,
            operators: BTreeMap::new(),
            complete,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        };
        let saved = {
            let (store, checkpoint, lineage) = (store.clone(), checkpoint.clone(), lineage.clone());
            tokio::task::spawn_blocking(move || store.save(&checkpoint, &lineage))
                .await
                .map_err(|e| -> crate::node::BoxError { Box::new(e) })
                .and_then(|r| r)
        };
        match saved {
            Ok(()) => {
                self.last = Some(checkpoint);
                Ok(())
            }
            Err(error) => Err(self.unsaved(lineage, error)),
        }
    }

    /// A save that failed: its lineage records go back in front of those
    /// gathered since, so the next save (the final one of a run that handles
    /// the error) still writes them.
    fn unsaved(&self, lineage: Vec<LineageRecord>, error: crate::node::BoxError) -> RunError {
        let mut pending = self
            .shared
            .lineage
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let newer = std::mem::replace(&mut *pending, lineage);
        pending.extend(newer);
        RunError::Checkpoint {
            pipeline: self.pipeline.clone(),
            error,
        }
    }
}

/// Removes operator state files not in `keep`, each with the checkpoint
/// directory it is in (which holds the files it references, see
/// [`crate::node::Operator::snapshot`]) unless a kept file is in it too.
fn remove_states<'a>(
    files: impl Iterator<Item = &'a PathBuf>,
    keep: Option<&BTreeMap<String, PathBuf>>,
) {
    let kept = |f: &PathBuf| keep.is_some_and(|k| k.values().any(|k| k == f));
    let kept_dir =
        |d: &std::path::Path| keep.is_some_and(|k| k.values().any(|k| k.parent() == Some(d)));
    for file in files.filter(|f| !kept(f)) {
        let _ = std::fs::remove_file(file);
        if let Some(dir) = file.parent().filter(|d| !kept_dir(d)) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The default data directory: `$WEIR_DATA_DIR`, else `.weir` in the working
/// directory.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("WEIR_DATA_DIR").map_or_else(|| PathBuf::from(".weir"), PathBuf::from)
}
