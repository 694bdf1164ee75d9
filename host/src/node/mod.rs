//! The contract every node implements, at the bottom of the crate.
//!
//! ```text
//!   Source ──Envelope──► Operator ──Envelope──► … ──Envelope──► Sink
//!     │ emits (batch, position)   │ process / finish / drain     │ write · flush (durable) · close
//!     │ seek · commit             │ output_schema (plan time)    │ restore (resume) · report
//!     └─ dead letters ────────────┴──────────────────────────────┴──► DeadLetterStore
//! ```
//!
//! Everything above (`ops`, `connectors`, `store`, the scheduler in `exec`)
//! depends on this module and on nothing beside it, so a connector can be written
//! against these traits without the scheduler, the sandbox or the store.
//!
//! - [`Source`], [`Operator`] and [`Sink`] are synchronous: the executor calls
//!   them on tokio's blocking pool, so CPU-heavy work never stalls the scheduler.
//!   Network connectors implement [`AsyncSource`] and [`AsyncSink`] instead,
//!   polled on the runtime with no thread held per connection; [`Blocking`]
//!   adapts a synchronous one.
//! - What moves is an [`Envelope`]: batch, lineage and delivery tokens
//!   ([`ack`]). A source gives each batch its own position; a sink says when what
//!   it wrote is durable; the executor commits positions in order.
//! - An operator holding rows across a checkpoint barrier snapshots them,
//!   emits them, or holds the checkpoint back ([`AtBarrier`], the rule in
//!   [`Operator`]'s docs).
//! - [`NodeError`] says whose fault a failure is ([`Fault`]).
//! - Hooks most implementations do not need have default bodies, each saying
//!   what the default does.

pub mod ack;
pub mod atomic;
pub mod cgroup;
pub mod checkpoint;
pub mod config;
mod dead_letter;
mod envelope;
mod error;
pub mod lineage;
pub mod memory;
pub mod policy;
pub mod retry;
pub mod schema;
pub mod services;
pub mod swap;
pub mod unix_socket;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use ack::{AckToken, CommitTracker, Position};
pub use checkpoint::{Checkpoint, CheckpointStore};
pub use dead_letter::{
    DeadLetter, DeadLetterError, DeadLetterRecord, DeadLetterStore, FileDeadLetters, LetterStamp,
    Payload, WhenFull, WithExports,
};
pub use envelope::{Envelope, Meta, MetaSet};
pub use error::{BoxError, Fault, NodeError, Resource};
pub use lineage::{Lineage, LineageRecord, SourceSpan, StageLineage};

/// A boxed future, as the async traits return (they must be object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a node's call produced besides its output batches.
///
/// During [`Operator::process`] the emitter knows the input's [`Meta`]:
/// [`Emitter::push`] gives it to each output batch, which is right for any
/// operator whose output rows come from that input alone. An operator that holds
/// rows across calls keeps their metas ([`Emitter::input_meta`], [`MetaSet`]) and
/// emits with [`Emitter::push_with`]. A source emits with [`Emitter::push_at`],
/// giving each batch the position after its last record.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) metas: Vec<Option<Meta>>,
    pub(crate) positions: Vec<Option<Position>>,
    pub(crate) dead_letters: Vec<DeadLetter>,
    pub(crate) counters: BTreeMap<String, u64>,
    pub(crate) states: BTreeMap<String, String>,
    input: Option<Meta>,
}

impl Emitter {
    /// An emitter for a call on an input with `meta`.
    pub fn for_input(meta: Meta) -> Self {
        Self {
            input: Some(meta),
            ..Self::default()
        }
    }

    /// Sends a batch downstream with the current input's meta (empty batches are
    /// dropped by the executor).
    pub fn push(&mut self, batch: RecordBatch) {
        self.batches.push(batch);
        self.metas.push(None);
        self.positions.push(None);
    }

    /// Sends a batch downstream with `meta`: the union of the rows it holds.
    pub fn push_with(&mut self, batch: RecordBatch, meta: Meta) {
        self.batches.push(batch);
        self.metas.push(Some(meta));
        self.positions.push(None);
    }

    /// A source's batch, ending at `position` (what to resume after). A batch
    /// with no rows may still carry a position: the records it covered were all
    /// dead letters or blank.
    pub fn push_at(&mut self, batch: RecordBatch, position: Option<Position>) {
        self.batches.push(batch);
        self.metas.push(None);
        self.positions.push(position);
    }

    /// The meta of the input being processed (`None` in `finish`, `flush` and
    /// `drain`, and in sources).
    pub fn input_meta(&self) -> Option<&Meta> {
        self.input.as_ref()
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

    /// Sets a named state reported in the run summary and the live counters,
    /// the last value set winning (a stage's trap breaker: `closed`, `open`,
    /// `half_open`).
    pub fn set_state(&mut self, name: &str, value: &str) {
        self.states.insert(name.to_owned(), value.to_owned());
    }

    /// The batches pushed so far (for tests and wrappers).
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// The counters so far.
    pub fn counters(&self) -> &BTreeMap<String, u64> {
        &self.counters
    }

    /// Takes the batches pushed, each with its meta (the input's where none was
    /// given) and position.
    pub fn take_output(&mut self) -> Vec<(RecordBatch, Option<Meta>, Option<Position>)> {
        let input = self.input.clone();
        let batches = std::mem::take(&mut self.batches);
        let metas = std::mem::take(&mut self.metas);
        let positions = std::mem::take(&mut self.positions);
        batches
            .into_iter()
            .zip(metas)
            .zip(positions)
            .map(|((b, m), p)| (b, m.or_else(|| input.clone()), p))
            .collect()
    }
}

/// A source: produces batches until it is exhausted (bounded) or stopped.
pub trait Source: Send + 'static {
    /// The schema of every batch it produces, known before the first read.
    fn schema(&self) -> SchemaRef;

    /// Reads more records, pushing each batch with [`Emitter::push_at`]; returns
    /// `false` once the source is exhausted. Corrupt records go to
    /// `out.dead_letter`, never silently away.
    ///
    /// # Errors
    /// Only for failures that must stop the run (the file vanished); a bad record is
    /// a dead letter, not an error.
    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError>;

    /// Continues after `position` (a position this source emitted in an earlier
    /// run), called once before the first read of a resumed run. Default: the
    /// source cannot resume, and says so.
    ///
    /// # Errors
    /// [`NodeError::Config`] when the source cannot resume or the position is
    /// not one of its own.
    fn seek(&mut self, position: &str) -> Result<(), NodeError> {
        Err(NodeError::config(format!(
            "this source cannot resume (asked to continue after {position})"
        )))
    }

    /// Everything up to and including `position` is durable downstream: a
    /// source that holds input for redelivery (a broker's unacknowledged
    /// messages) may let it go. Called in order, on the blocking pool. Default:
    /// nothing to release (files are re-read from the checkpoint).
    ///
    /// # Errors
    /// A failure to release, which stops the run.
    fn commit(&mut self, _position: &str) -> Result<(), NodeError> {
        Ok(())
    }
}

/// A source polled on the runtime: a network client holds no thread while it
/// waits. The executor races [`AsyncSource::next_batch`] against the run's stop
/// signal, so the future must be cancel-safe: dropped while waiting, it loses
/// nothing that was not yet emitted.
pub trait AsyncSource: Send + 'static {
    /// As [`Source::schema`].
    fn schema(&self) -> SchemaRef;

    /// As [`Source::next_batch`].
    fn next_batch<'a>(&'a mut self, out: &'a mut Emitter)
    -> BoxFuture<'a, Result<bool, NodeError>>;

    /// As [`Source::seek`]. Default: cannot resume.
    fn seek<'a>(&'a mut self, position: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            Err(NodeError::config(format!(
                "this source cannot resume (asked to continue after {position})"
            )))
        })
    }

    /// As [`Source::commit`]. Default: nothing to release.
    fn commit<'a>(&'a mut self, _position: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether a stop may drop a pending [`AsyncSource::next_batch`]. Default:
    /// true (the contract above); [`Blocking`] says false, since its call runs on
    /// a thread that cannot be interrupted.
    fn interruptible(&self) -> bool {
        true
    }
}

/// Runs a synchronous [`Source`] or [`Sink`] on tokio's blocking pool behind the
/// async traits.
pub struct Blocking<T: ?Sized>(Option<Box<T>>, SchemaRef);

/// Runs `f` on the blocking pool with the node `inner`, then puts it back.
async fn on_blocking<T: ?Sized + Send + 'static, R: Send + 'static>(
    slot: &mut Option<Box<T>>,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<R, NodeError> {
    let mut inner = slot
        .take()
        .ok_or_else(|| NodeError::Bug("a blocking node was used after a panic".into()))?;
    let (inner, r) = tokio::task::spawn_blocking(move || {
        let r = f(&mut inner);
        (inner, r)
    })
    .await
    .map_err(|e| match e.try_into_panic() {
        Ok(p) => std::panic::resume_unwind(p),
        Err(e) => NodeError::Bug(format!("a blocking call was cancelled: {e}")),
    })?;
    *slot = Some(inner);
    Ok(r)
}

impl Blocking<dyn Source> {
    /// Adapts `source`.
    pub fn source(source: Box<dyn Source>) -> Self {
        let schema = source.schema();
        Self(Some(source), schema)
    }
}

impl AsyncSource for Blocking<dyn Source> {
    fn schema(&self) -> SchemaRef {
        self.1.clone()
    }

    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<bool, NodeError>> {
        Box::pin(async move {
            let (r, emitted) = on_blocking(&mut self.0, |s| {
                let mut e = Emitter::default();
                let r = s.next_batch(&mut e);
                (r, e)
            })
            .await?;
            *out = emitted;
            r
        })
    }

    fn seek<'a>(&'a mut self, position: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        let position = position.to_owned();
        Box::pin(async move { on_blocking(&mut self.0, move |s| s.seek(&position)).await? })
    }

    fn commit<'a>(&'a mut self, position: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        let position = position.to_owned();
        Box::pin(async move { on_blocking(&mut self.0, move |s| s.commit(&position)).await? })
    }

    fn interruptible(&self) -> bool {
        false
    }
}

/// What an operator does, at a checkpoint barrier, with the rows it holds
/// (see [`Operator::at_barrier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtBarrier {
    /// Nothing: the barrier passes on. Right for an operator that holds no
    /// rows across calls. An operator that does hold rows keeps their metas
    /// (as [`Emitter`] asks), so their delivery tokens stay unsettled, and a
    /// checkpoint is committed only once every token issued before its
    /// barrier has settled: the checkpoint is held back while the rows are
    /// held. Safe, and the default; but a checkpoint may then never be taken
    /// before the input ends.
    #[default]
    Hold,
    /// [`Operator::flush`] is called before the barrier passes on, so what
    /// it emits reaches the sinks ahead of the barrier (a `batch` stage
    /// sends a short batch).
    Flush,
    /// [`Operator::snapshot`] writes the held rows into the checkpoint, and
    /// the operator lets their tokens go; a resumed run hands the file to
    /// [`Operator::restore`].
    Snapshot,
}

/// An operator: turns batches into batches.
///
/// # Rows held across a checkpoint
///
/// A checkpoint commits source positions: what the sources read before them
/// must then be durable in the sinks, in the dead-letter store, or in the
/// checkpoint itself. An operator that keeps rows past the call that received
/// them (a sort, a group, a `count` sample, a `batch` waiting on `linger`, a
/// session window) must therefore, at each checkpoint barrier, do one of:
///
/// - **snapshot** them ([`AtBarrier::Snapshot`]): write them with the
///   checkpoint (Arrow IPC under the directory [`Operator::snapshot`] is
///   given; files it references must live there too, never in the spill
///   directory, which a run removes) and drop their tokens;
/// - **flush** them ([`AtBarrier::Flush`]): emit them before the barrier;
/// - **hold** them with their metas ([`AtBarrier::Hold`], the default): the
///   checkpoint is then held back until they are emitted.
///
/// The default needs nothing from the operator beyond what [`Emitter`]
/// already asks (rows held keep their input's [`Meta`]), so an operator that
/// forgets this rule delays checkpoints, and loses nothing.
pub trait Operator: Send + 'static {
    /// The schema of what it emits for input of schema `input`, at plan time, as
    /// DataFusion's `ExecutionPlan::schema`. `None` means the schema is learned
    /// from the first output batch (a WebAssembly stage that declares no
    /// `outputs`); the executor then holds every later batch to it. Default: the
    /// input's schema (operators that only select rows).
    ///
    /// The plan calls it once, before the first batch, whenever the input's
    /// schema is known then, and every batch that reaches the operator has that
    /// schema: an operator binds its columns here (names to positions, output
    /// types fixed), so a missing column fails `weir validate` rather than the
    /// first batch. When the plan cannot know the input (it follows a stage whose
    /// output is learned), it is not called and the operator binds to its first
    /// batch instead.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the column the operator needs and the input
    /// lacks, or its wrong type.
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        Ok(Some(input.clone()))
    }

    /// Processes one batch, pushing any output to `out` (whose
    /// [`Emitter::input_meta`] is this batch's).
    ///
    /// # Errors
    /// A failure that stops the run, saying whose fault it is.
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

    /// Rows received and kept in the operator's state, not yet emitted, dropped
    /// or dead-lettered: what the conservation ledger counts as held at a
    /// checkpoint barrier (see [`Conservation`]). Default:
    /// [`Operator::buffered_rows`], right for an operator that holds only
    /// what waits for its linger.
    fn held_rows(&self) -> usize {
        self.buffered_rows()
    }

    /// How the conservation ledger balances this operator. Default:
    /// [`Conservation::Rows`] (every row received is emitted, filtered by
    /// design, dead-lettered or held).
    fn conservation(&self) -> Conservation {
        Conservation::Rows
    }

    /// Emits what is buffered because it has waited [`Operator::linger`], or
    /// at a checkpoint barrier ([`AtBarrier::Flush`]). Default: nothing to
    /// emit.
    ///
    /// # Errors
    /// As [`Operator::process`].
    fn flush(&mut self, _out: &mut Emitter) -> Result<(), NodeError> {
        Ok(())
    }

    /// What the operator does with the rows it holds when a checkpoint barrier
    /// reaches it (see the trait's docs). Only runs with aligned checkpoints
    /// have barriers. Default: [`AtBarrier::Hold`].
    fn at_barrier(&self) -> AtBarrier {
        AtBarrier::Hold
    }

    /// Called once, before the first batch, in a run that keeps checkpoints.
    /// An operator whose state outlives a checkpoint interval (a session window
    /// on a stream) returns true and from then on keeps what
    /// [`Operator::snapshot`] needs; the run then takes aligned checkpoints (see
    /// `exec::barrier`): its state is saved with the source positions instead of
    /// holding their acknowledgements. Default: false (the operator holds
    /// nothing a checkpoint needs, or holds its input's tokens until it emits).
    fn begin_checkpoints(&mut self) -> bool {
        false
    }

    /// Writes the operator's state, as of the checkpoint barrier it was called
    /// at, to a file under `dir`, and returns the file; other files the state
    /// needs go under `dir` too (the directory is removed with the checkpoint).
    /// Called only if [`Operator::begin_checkpoints`] returned true or
    /// [`Operator::at_barrier`] says [`AtBarrier::Snapshot`], between batches.
    /// Afterwards the operator drops the delivery tokens of what the state
    /// holds (keeping their lineage): the checkpoint holds those rows now.
    ///
    /// # Errors
    /// The state cannot be written (the checkpoint is then not taken).
    fn snapshot(&mut self, _dir: &std::path::Path) -> Result<std::path::PathBuf, NodeError> {
        Err(NodeError::Bug(
            "snapshot of an operator that keeps no checkpoint state".into(),
        ))
    }

    /// Continues from a state [`Operator::snapshot`] wrote, before the first
    /// batch of a resumed run.
    ///
    /// # Errors
    /// The file is gone or not this operator's state.
    fn restore(&mut self, file: &std::path::Path) -> Result<(), NodeError> {
        Err(NodeError::config(format!(
            "this operator cannot restore state ({})",
            file.display()
        )))
    }

    /// Applies a change requested while the pipeline runs (see [`swap`]); called
    /// between batches, never during one. The operator answers `request.reply`
    /// once the outcome is known. Default: the operator cannot be swapped, and
    /// says so.
    fn swap(&mut self, request: swap::SwapRequest) {
        request.reply.send(Err(swap::SwapError::Refused(
            "this stage cannot be swapped".to_owned(),
        )));
    }

    /// The digest (hex sha256) of the component the operator runs, for the plan's
    /// record of what code a run used. Default: none (native code).
    fn component_digest(&self) -> Option<&str> {
        None
    }
}

/// How a node's rows balance in the conservation ledger, checked at each
/// checkpoint barrier and at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conservation {
    /// Rows in = rows out + filtered (counter `filtered`) + dead-lettered +
    /// held ([`Operator::held_rows`]). Rows out include fallen-back rows.
    Rows,
    /// An aggregate: the rows it receives are folded into state ("absorbed")
    /// and what it emits are new records. Rows in = absorbed (counter
    /// `absorbed`) + filtered + dead-lettered; its output is not balanced
    /// against its input.
    Absorbs,
}

/// An operator that waits on services (a lookup against a store or a model
/// server): polled on the runtime, so a call in flight holds no thread.
///
/// It holds no rows across calls: each `process` emits what its batch gives
/// before it returns, so a checkpoint barrier passes it with nothing held. An
/// operator that must keep rows across batches is an [`Operator`].
pub trait AsyncOperator: Send + 'static {
    /// As [`Operator::output_schema`]. Default: the input's schema.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming a missing column or wrong type.
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        Ok(Some(input.clone()))
    }

    /// Processes one batch, emitting into `out` (see [`Operator::process`]).
    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        out: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<(), NodeError>>;

    /// Called once when the input ends (see [`Operator::finish`]). Default: nothing.
    fn finish<'a>(&'a mut self, _out: &'a mut Emitter) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async { Ok(()) })
    }
}

/// When what a sink wrote is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// When [`Sink::write`] returns (a server acknowledged it).
    OnWrite,
    /// When [`Sink::flush`] returns: the executor calls it at checkpoint
    /// intervals.
    OnFlush,
    /// Only when [`Sink::close`] returns: nothing is committed before the run
    /// ends, and a resumed run reads its input again from the start.
    OnClose,
}

/// A sink: writes batches somewhere durable.
pub trait Sink: Send + 'static {
    /// Writes one batch; `lineage` is where its rows came from (for sinks that
    /// keep it beside the data).
    ///
    /// # Errors
    /// A write failure, which stops the run.
    fn write(&mut self, batch: &RecordBatch, lineage: &Lineage) -> Result<(), NodeError>;

    /// When writes become durable. Default: [`Durability::OnClose`].
    fn durability(&self) -> Durability {
        Durability::OnClose
    }

    /// Makes everything written so far durable and returns the state a resumed
    /// run restores ([`Sink::restore`]), if the sink can resume. Default:
    /// nothing to do, no state.
    ///
    /// # Errors
    /// A flush failure, which stops the run.
    fn flush(&mut self) -> Result<Option<String>, NodeError> {
        Ok(None)
    }

    /// Continues from `state` (what [`Sink::flush`] returned in the run being
    /// resumed), before the first write. Default: the sink starts afresh, which
    /// is right for sinks idempotent by key.
    ///
    /// # Errors
    /// The state cannot be restored (the file it names is gone).
    fn restore(&mut self, _state: &str) -> Result<(), NodeError> {
        Ok(())
    }

    /// Called once after the last batch: flush and make the output durable.
    /// `complete` is false when the run was stopped before its input ended: a
    /// sink that publishes atomically may then keep its output resumable.
    /// Default: nothing to do.
    ///
    /// # Errors
    /// A flush failure, which fails the run.
    fn close(&mut self, _complete: bool) -> Result<(), NodeError> {
        Ok(())
    }

    /// Hands over what the last [`Sink::write`] left besides the write: the
    /// records it refused because of the records themselves, as dead letters
    /// ([`Emitter::dead_letter`]), and its counters ([`Emitter::count`], e.g.
    /// `retries`). The executor calls it after every write, successful or
    /// not, and keeps the letters with the batch's delivery tokens, so a
    /// refused record is durable in the dead-letter store before its source
    /// position is committed. A write that refuses some records returns `Ok`
    /// for the rest: one bad record never fails the run. Only dead letters
    /// and counters are read from `out`; batches pushed there are ignored.
    /// Default: nothing to report.
    fn report(&mut self, _out: &mut Emitter) {}
}

/// A sink polled on the runtime (a networked store acknowledging writes).
pub trait AsyncSink: Send + 'static {
    /// As [`Sink::write`]; durable when the future completes if
    /// [`AsyncSink::durability`] is [`Durability::OnWrite`].
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        lineage: &'a std::sync::Arc<Lineage>,
    ) -> BoxFuture<'a, Result<(), NodeError>>;

    /// As [`Sink::durability`].
    fn durability(&self) -> Durability {
        Durability::OnClose
    }

    /// As [`Sink::flush`].
    fn flush(&mut self) -> BoxFuture<'_, Result<Option<String>, NodeError>> {
        Box::pin(async { Ok(None) })
    }

    /// As [`Sink::restore`].
    fn restore<'a>(&'a mut self, _state: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async { Ok(()) })
    }

    /// As [`Sink::close`].
    fn close(&mut self, _complete: bool) -> BoxFuture<'_, Result<(), NodeError>> {
        Box::pin(async { Ok(()) })
    }

    /// As [`Sink::report`]: called after every write, between awaits. Default:
    /// nothing to report.
    fn report(&mut self, _out: &mut Emitter) {}
}

impl Blocking<dyn Sink> {
    /// Adapts `sink`.
    pub fn sink(sink: Box<dyn Sink>) -> Self {
        Self(
            Some(sink),
            std::sync::Arc::new(arrow::datatypes::Schema::empty()),
        )
    }
}

impl AsyncSink for Blocking<dyn Sink> {
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        lineage: &'a std::sync::Arc<Lineage>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        let batch = batch.clone();
        let lineage = lineage.clone();
        Box::pin(async move { on_blocking(&mut self.0, move |s| s.write(&batch, &lineage)).await? })
    }

    fn durability(&self) -> Durability {
        self.0
            .as_ref()
            .map_or(Durability::OnClose, |s| s.durability())
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<Option<String>, NodeError>> {
        Box::pin(async move { on_blocking(&mut self.0, Sink::flush).await? })
    }

    fn restore<'a>(&'a mut self, state: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        let state = state.to_owned();
        Box::pin(async move { on_blocking(&mut self.0, move |s| s.restore(&state)).await? })
    }

    fn close(&mut self, complete: bool) -> BoxFuture<'_, Result<(), NodeError>> {
        Box::pin(async move { on_blocking(&mut self.0, move |s| s.close(complete)).await? })
    }

    /// Asks the sink on this thread: it only hands over what it collected.
    fn report(&mut self, out: &mut Emitter) {
        if let Some(s) = self.0.as_mut() {
            s.report(out);
        }
    }
}

/// What kind of node a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A `[[source]]`.
    Source,
    /// A `[[stage]]`.
    Stage,
    /// A `[[sink]]`.
    Sink,
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
