//! Checkpoints: what a resumed run continues from.
//!
//! A checkpoint holds, per source, the position up to which everything read is
//! durable downstream (the frontier of its [`super::CommitTracker`]), and per
//! sink, the state it returned from its last durable flush. The executor reads
//! the frontiers *before* the sink states: a sink publishes its state before it
//! lets go of the tokens it covered, so every record up to a recorded position is
//! inside the recorded sink state, and a resumed run (sink restored, sources
//! sought) loses nothing; what it reads twice is what lay between the two.
//!
//! An aligned checkpoint (a run with a stateful operator, see
//! `exec::barrier`) holds instead the positions, operator state files and sink
//! states of one barrier, which are consistent by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BoxError, LineageRecord, Position};

/// A run's resumable state, as kept in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The pipeline.
    pub pipeline: String,
    /// The run that wrote it.
    pub run: String,
    /// The pipeline version that run ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Per source, the position after which a resumed run continues.
    pub sources: BTreeMap<String, Position>,
    /// Per sink, the state it restores.
    pub sinks: BTreeMap<String, String>,
    /// Per stateful operator, the file holding its state (aligned checkpoints:
    /// the positions in `sources` are those of the barrier the state was taken
    /// at).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operators: BTreeMap<String, std::path::PathBuf>,
    /// Whether the run had read all its input and closed its sinks.
    pub complete: bool,
    /// When it was written, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Where checkpoints are kept (the store, for stored pipelines).
pub trait CheckpointStore: Send + Sync {
    /// The pipeline's last checkpoint.
    ///
    /// # Errors
    /// The store cannot be read.
    fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, BoxError>;

    /// Replaces the pipeline's checkpoint and appends `lineage` (the run's
    /// lineage records since the last save) in one write.
    ///
    /// # Errors
    /// The store cannot be written.
    fn save(&self, checkpoint: &Checkpoint, lineage: &[LineageRecord]) -> Result<(), BoxError>;

    /// Forgets the pipeline's checkpoint (a fresh run starts from the beginning).
    ///
    /// # Errors
    /// The store cannot be written.
    fn clear(&self, pipeline: &str) -> Result<(), BoxError>;
}
