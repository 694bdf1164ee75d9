//! Controlling a running pipeline: stop it, or swap a stage between batches.
//!
//! ```text
//!   RunControl::swap ──[per-stage queue]──► operator task
//!        ▲                                    │ after receiving batch k+1,
//!        │                                    │ before processing it:
//!        └──── reply (applied / refused / ◄───┘ apply every queued change, in order
//!               rolled back)
//! ```
//!
//! A swap never interrupts a batch: the operator task drains its queue only
//! between batches, so batch `k` finishes on the old code and batch `k + 1` runs on
//! the new. Nothing is lost or processed twice because the batch is the unit of
//! hand-over and the queue is applied on the same thread that processes batches.
//!
//! What may fail is checked as early as possible, off the hot path:
//! - a new component is loaded, linked and `init`ed by the caller (see
//!   [`prepare_stage`]) before the request is queued; a component that fails to
//!   load or to `init` is refused and never reaches the running pipeline;
//! - new parameters are `init`ed on a fresh instance ([`crate::sandbox::FeaturizerStage::reconfigure`]);
//!   if `init` refuses them, the old instance keeps running;
//! - a change that traps on the first batch after it is rolled back: the previous
//!   stage is restored and the same batch is processed again on it.
//!
//! The reply to a swap is sent once its outcome is known: after the first batch
//! the new version processed (or at the end of the stream if none came).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use super::lineage::{Lineage, LineageRecord};
use crate::sandbox::{FeaturizerStage, Grants, LoadError, Sandbox, StageFailure, StageLimits};

/// One change to a running stage.
pub enum StageChange {
    /// New parameters: a new `init` on a fresh instance of the same component.
    Params(String),
    /// A new stage (new component, limits or grants), already instantiated and
    /// `init`ed off the hot path.
    Stage(Box<FeaturizerStage>),
}

impl std::fmt::Debug for StageChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Params(p) => f.debug_tuple("Params").field(p).finish(),
            Self::Stage(s) => f.debug_tuple("Stage").field(&s.digest()).finish(),
        }
    }
}

/// What a successful swap changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwapApplied {
    /// The stage.
    pub stage: String,
    /// The component digest now running.
    pub digest: String,
    /// The parameters now in effect.
    pub params: String,
    /// Index (counted from 0 over the run) of the first batch the new version
    /// processed; `None` when the stream ended before another batch came.
    pub first_batch: Option<u64>,
}

/// Why a swap did not take effect. In every case the previous version keeps
/// running.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No stage of that name runs in this pipeline (or it is not a WebAssembly stage).
    #[error("no swappable stage `{stage}` in the running pipeline (stages: {known})")]
    NoSuchStage {
        /// The name asked for.
        stage: String,
        /// The names that exist.
        known: String,
    },
    /// The new component failed validation (not a component, a wrong world, an
    /// import not granted).
    #[error("swap of `{stage}` refused: {source}")]
    Load {
        /// The stage.
        stage: String,
        /// Why.
        source: LoadError,
    },
    /// The new version failed to start (`init` refused its parameters, or trapped).
    #[error("swap of `{stage}` refused: {source}")]
    Start {
        /// The stage.
        stage: String,
        /// Why.
        source: StageFailure,
    },
    /// The new version failed on its first batch; the previous one was restored and
    /// processed that batch.
    #[error("swap of `{stage}` rolled back: it failed on its first batch: {source}")]
    RolledBack {
        /// The stage.
        stage: String,
        /// The failure.
        source: StageFailure,
    },
    /// The request was malformed (for example, a new pipeline version whose graph
    /// differs from the running one).
    #[error("swap refused: {0}")]
    Refused(String),
    /// The run ended before the request was handled.
    #[error("the run ended before the swap of `{stage}` was applied")]
    RunEnded {
        /// The stage.
        stage: String,
    },
}

/// A change with the channel its outcome goes back on, as an operator receives it
/// (see [`crate::exec::Operator::swap`]).
pub struct SwapRequest {
    /// What to change.
    pub change: StageChange,
    /// Where the outcome goes.
    pub reply: SwapReply,
}

/// The requester's end of a swap: answered exactly once, when the outcome is known.
pub struct SwapReply(oneshot::Sender<Result<SwapApplied, SwapError>>);

impl SwapReply {
    /// Answers the requester; a requester that stopped waiting is not an error.
    pub fn send(self, outcome: Result<SwapApplied, SwapError>) {
        let _ = self.0.send(outcome);
    }
}

pub(crate) type SwapReceiver = mpsc::UnboundedReceiver<SwapRequest>;

/// A handle on a running pipeline: stop it, or swap its stages.
///
/// Cheap to clone. Create one, pass it to [`crate::exec::run_with`], and keep a
/// clone to act on the run from another task (a control socket, a file watcher, a
/// test).
#[derive(Clone)]
pub struct RunControl {
    inner: Arc<Inner>,
}

struct Inner {
    stop: watch::Sender<bool>,
    stages: Mutex<HashMap<String, mpsc::UnboundedSender<SwapRequest>>>,
    started: watch::Sender<bool>,
    version: Mutex<Option<u64>>,
    lineage: Mutex<Vec<LineageRecord>>,
    sink_rows: Mutex<HashMap<String, u64>>,
}

impl Default for RunControl {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                stop: watch::Sender::new(false),
                stages: Mutex::default(),
                started: watch::Sender::new(false),
                version: Mutex::default(),
                lineage: Mutex::default(),
                sink_rows: Mutex::default(),
            }),
        }
    }
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl")
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

impl RunControl {
    /// A fresh handle, not yet attached to a run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop: sources stop reading after their current batch, and
    /// everything already read flows through to the sinks, which close normally.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Whether [`RunControl::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Waits until the run has started its tasks (its stages can be swapped).
    pub async fn started(&self) {
        let mut rx = self.inner.started.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The stages that accept swaps, sorted.
    pub fn stages(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .stages
            .lock()
            .expect("control lock")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Queues `change` for `stage` and waits for its outcome: applied from the
    /// next batch on, refused, or rolled back after failing its first batch.
    ///
    /// # Errors
    /// [`SwapError`]; the previous version keeps running in every case.
    pub async fn swap(&self, stage: &str, change: StageChange) -> Result<SwapApplied, SwapError> {
        let sender = self
            .inner
            .stages
            .lock()
            .expect("control lock")
            .get(stage)
            .cloned();
        let Some(sender) = sender else {
            return Err(SwapError::NoSuchStage {
                stage: stage.to_owned(),
                known: self.stages().join(", "),
            });
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(SwapRequest {
                change,
                reply: SwapReply(reply),
            })
            .map_err(|_| SwapError::RunEnded {
                stage: stage.to_owned(),
            })?;
        answer.await.unwrap_or_else(|_| {
            Err(SwapError::RunEnded {
                stage: stage.to_owned(),
            })
        })
    }

    /// Sets the pipeline version stamped on batches read from now on.
    pub fn set_version(&self, version: Option<u64>) {
        *self.inner.version.lock().expect("control lock") = version;
    }

    /// The pipeline version stamped on batches read now.
    pub fn version(&self) -> Option<u64> {
        *self.inner.version.lock().expect("control lock")
    }

    /// The run's lineage log so far: consecutive output rows per sink sharing one
    /// lineage, contiguous source spans merged.
    pub fn lineage_log(&self) -> Vec<LineageRecord> {
        self.inner.lineage.lock().expect("control lock").clone()
    }

    /// Records that `sink` wrote `rows` rows of `batch`'s lineage.
    pub(crate) fn log_written(&self, sink: &str, batch: &arrow::array::RecordBatch) {
        let rows = batch.num_rows() as u64;
        let first_row = {
            let mut counts = self.inner.sink_rows.lock().expect("control lock");
            let n = counts.entry(sink.to_owned()).or_default();
            let first = *n;
            *n += rows;
            first
        };
        let Some(lineage) = Lineage::of(batch) else {
            return;
        };
        let mut log = self.inner.lineage.lock().expect("control lock");
        if let Some(last) = log.iter_mut().rev().find(|r| r.sink == sink) {
            let l = &mut last.lineage;
            let contiguous = last.first_row + last.rows == first_row
                && l.pipeline == lineage.pipeline
                && l.version == lineage.version
                && l.stages == lineage.stages
                && l.sources.len() == 1
                && lineage.sources.len() == 1
                && l.sources[0].source == lineage.sources[0].source
                && l.sources[0].to == lineage.sources[0].from;
            if contiguous {
                l.sources[0].to = lineage.sources[0].to.clone();
                last.rows += rows;
                return;
            }
        }
        log.push(LineageRecord {
            sink: sink.to_owned(),
            first_row,
            rows,
            lineage,
        });
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    pub(crate) fn register(&self, stage: &str) -> SwapReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .stages
            .lock()
            .expect("control lock")
            .insert(stage.to_owned(), tx);
        rx
    }

    pub(crate) fn mark_started(&self) {
        self.inner.started.send_replace(true);
    }

    pub(crate) fn clear(&self) {
        self.inner.stages.lock().expect("control lock").clear();
    }
}

/// Loads component `bytes` and instantiates it as stage `name` with `params`, off
/// the hot path, so that a swap to it can be queued only if it would start.
///
/// # Errors
/// [`SwapError::Load`] when the component fails validation; [`SwapError::Start`]
/// when instantiating or `init` fails.
pub fn prepare_stage(
    sandbox: &Sandbox,
    bytes: &[u8],
    name: &str,
    params: &str,
    limits: StageLimits,
    grants: Grants,
) -> Result<FeaturizerStage, SwapError> {
    let component = sandbox.load(bytes).map_err(|source| SwapError::Load {
        stage: name.to_owned(),
        source,
    })?;
    FeaturizerStage::new(sandbox, &component, name, params, limits, grants).map_err(|source| {
        SwapError::Start {
            stage: name.to_owned(),
            source,
        }
    })
}
