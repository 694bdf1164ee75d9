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

use tokio::sync::{mpsc, watch};

use super::NodeStats;
use crate::node::LineageRecord;
pub use crate::node::swap::{StageChange, SwapApplied, SwapError, SwapReply, SwapRequest};

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
    live: Mutex<std::collections::BTreeMap<String, NodeStats>>,
    published: watch::Sender<u64>,
}

/// How often a node publishes its counters while it runs, at most: often enough
/// for a live view, rare enough to cost nothing on the hot path.
pub const LIVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Default for RunControl {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                stop: watch::Sender::new(false),
                stages: Mutex::default(),
                started: watch::Sender::new(false),
                version: Mutex::default(),
                lineage: Mutex::default(),
                live: Mutex::default(),
                published: watch::Sender::new(0),
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
        let (reply, answer) = SwapReply::channel();
        sender
            .send(SwapRequest { change, reply })
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

    /// Adds a sink's lineage record (consecutive rows sharing one lineage) to
    /// the run's log, or replaces that sink's last record when it is the same
    /// one grown (same first row).
    /// Every node's counters as last published while the run goes (records in
    /// and out, time busy and blocked, queue depth, dead letters by reason,
    /// traps): what a registry or a live view reads. Each node publishes at
    /// most every [`LIVE_INTERVAL`] and once when it ends.
    pub fn live_nodes(&self) -> Vec<NodeStats> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Wakes on every publication of [`RunControl::live_nodes`]: the value counts
    /// publications, so a subscriber that fell behind sees the latest at once.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.published.subscribe()
    }

    pub(crate) fn publish(&self, stats: &NodeStats) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stats.name.clone(), stats.clone());
        self.inner.published.send_modify(|n| *n += 1);
    }

    pub(crate) fn log_written(&self, record: &LineageRecord) {
        let mut log = self.inner.lineage.lock().expect("control lock");
        if let Some(last) = log.iter_mut().rev().find(|r| r.sink == record.sink)
            && last.first_row == record.first_row
        {
            *last = record.clone();
            return;
        }
        log.push(record.clone());
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
