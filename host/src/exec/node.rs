//! The three roles a node plays, one small trait each.
//!
//! All three are synchronous: the executor calls them on tokio's blocking pool, so
//! a CPU-heavy operator or a WebAssembly stage never stalls the async scheduler,
//! and implementations need no async machinery. Hooks most implementations do not
//! need have default bodies.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use crate::sandbox::StageFailure;

/// Why a node failed. The executor adds the node's name.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A WebAssembly stage failed.
    #[error(transparent)]
    Stage(#[from] StageFailure),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An Arrow kernel failed (a type mismatch the configuration did not foresee).
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// The data does not fit the node's configuration (a missing column, a wrong type).
    #[error("{0}")]
    Data(String),
}

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

/// What a node's call produced besides its output batches.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) dead_letters: Vec<DeadLetter>,
    pub(crate) counters: BTreeMap<String, u64>,
}

impl Emitter {
    /// Sends a batch downstream (empty batches are dropped by the executor).
    pub fn push(&mut self, batch: RecordBatch) {
        self.batches.push(batch);
    }

    /// Keeps a record that could not be used in the dead-letter store.
    pub fn dead_letter(&mut self, letter: DeadLetter) {
        *self
            .counters
            .entry(format!("dead_letter:{}", letter.reason))
            .or_default() += 1;
        self.dead_letters.push(letter);
    }

    /// Adds to a named counter reported in the run summary (e.g. rows dropped by a
    /// filter predicate).
    pub fn count(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_owned()).or_default() += n;
    }
}

/// A source: produces batches until it is exhausted (bounded) or stopped.
pub trait Source: Send + 'static {
    /// Reads the next batch into `out.push`; returns `false` once the source is
    /// exhausted. Corrupt records go to `out.dead_letter`, never silently away.
    ///
    /// # Errors
    /// Only for failures that must stop the run (the file vanished); a bad record is
    /// a dead letter, not an error.
    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError>;

    /// The position after the last batch produced, to resume from. Default: `None`
    /// (the source cannot resume and restarts from the beginning).
    fn position(&self) -> Option<String> {
        None
    }
}

/// An operator: turns batches into batches.
pub trait Operator: Send + 'static {
    /// Processes one batch, pushing any output to `out`.
    ///
    /// # Errors
    /// A failure that stops the run (the richer policies live in the executor).
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError>;

    /// Called once when every input is exhausted; operators holding state emit it
    /// here. Default: nothing to flush.
    ///
    /// # Errors
    /// As [`Operator::process`].
    fn finish(&mut self, _out: &mut Emitter) -> Result<(), NodeError> {
        Ok(())
    }

    /// Called after [`Operator::finish`], again and again until it returns `false`:
    /// an operator whose final output is larger than memory (an external sort's
    /// merge) emits it a piece per call, so it flows downstream under backpressure
    /// instead of piling up. Default: `false` (`finish` emitted everything).
    ///
    /// # Errors
    /// As [`Operator::process`].
    fn drain(&mut self, _out: &mut Emitter) -> Result<bool, NodeError> {
        Ok(false)
    }

    /// How long buffered rows may wait for more input before [`Operator::flush`]
    /// is called. The executor starts the clock when a call leaves
    /// [`Operator::buffered_rows`] above zero and stops it when it is back at zero,
    /// so the operator itself never reads a clock. Default: `None` (no timer).
    fn linger(&self) -> Option<std::time::Duration> {
        None
    }

    /// Rows held back, waiting for more input. Default: 0 (nothing is held).
    fn buffered_rows(&self) -> usize {
        0
    }

    /// Emits what is buffered because it has waited [`Operator::linger`].
    /// Default: nothing to emit.
    ///
    /// # Errors
    /// As [`Operator::process`].
    fn flush(&mut self, _out: &mut Emitter) -> Result<(), NodeError> {
        Ok(())
    }

    /// Applies a change requested while the pipeline runs (see
    /// [`crate::exec::control`]); called between batches, never during one. The
    /// operator answers `request.reply` once the outcome is known. Default: the
    /// operator cannot be swapped, and says so.
    fn swap(&mut self, request: super::control::SwapRequest) {
        request.reply.send(Err(super::control::SwapError::Refused(
            "this stage cannot be swapped".to_owned(),
        )));
    }
}

/// A sink: writes batches somewhere durable.
pub trait Sink: Send + 'static {
    /// Writes one batch.
    ///
    /// # Errors
    /// A write failure, which stops the run.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), NodeError>;

    /// Called once after the last batch: flush and make the output durable.
    /// Default: nothing to do.
    ///
    /// # Errors
    /// A flush failure, which fails the run.
    fn close(&mut self) -> Result<(), NodeError> {
        Ok(())
    }
}
