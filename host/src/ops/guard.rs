//! The guard: one wrapper that gives every row-local operator (map, filter,
//! split, a WebAssembly stage) the same behaviour on failure, as its node's
//! error policy says ([`crate::node::policy`]).
//!
//! ```text
//!   batch ──► call (fresh Emitter) ──ok──────────────────────────────► output (mark = false)
//!               │ err: decide(fault)
//!               ├─ fail ─────────────────────────────────────────────► the run stops
//!               ├─ retry (transient) ── the host's retry loop ──► call again
//!               └─ rows: the error names row r ─► [0, r) · r · (r, n) ─► call each side again
//!                        it names none (a trap) ─► halves ─► call each again … down to single rows
//!                        each row isolated ─► skip (dead letter) or fallback (defaults, mark = true)
//! ```
//!
//! Every call gets a fresh [`Emitter`]: what a failed call pushed is thrown
//! away, so no partial output of a failed call ever leaves the node (only its
//! `wasm:` cost counters are kept, since those calls did happen). The pieces
//! are emitted in input order, so output order is preserved. A trapped
//! WebAssembly instance is replaced before the next call
//! ([`crate::sandbox::FeaturizerStage::process`] instantiates afresh after a
//! trap), so each half runs on a clean instance.
//!
//! **Bound.** Isolating `k` failing rows among `n` costs about `2·k·log2(n/k)`
//! calls. Per batch the guard makes at most [`Bound::calls`] calls (default
//! 256) and spends at most [`Bound::time`] (default 30 s); segments still
//! unresolved then go whole to the policy (reason `unresolved`). 256 calls
//! isolate about a dozen trapping rows in a batch of 4096, far more than a
//! healthy stage meets; past that the stage is broken, and its breaker
//! should open rather than the batch be searched row by row.
//!
//! **Breaker.** A batch whose first call trapped counts towards the
//! stage's trap breaker ([`crate::node::policy::BreakerSpec`]). Open, the
//! batch follows the policy without entering the stage (reason
//! `breaker_open`); half-open, one batch tries the stage whole (no
//! bisection). Counters `breaker:opened`, `breaker:half_opened`,
//! `breaker:closed` and the state `breaker` go to the run summary.
//!
//! Counters: `bisections` (segments split in two), `rows_skipped`,
//! `rows_fallen_back`, `retries`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::node::policy::{Action, BreakerSpec, Decision, FallbackSpec, OnError};
use crate::node::services::Clock;
use crate::node::swap::SwapRequest;
use crate::node::{AtBarrier, Conservation, DeadLetter, Emitter, Fault, Meta, NodeError, Operator};

/// How much work the guard spends on one batch before giving the rest whole
/// to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Calls of the operator per batch, the first included.
    pub calls: u32,
    /// Wall time per batch, from its first call.
    pub time: Duration,
}

impl Default for Bound {
    fn default() -> Self {
        Self {
            calls: 256,
            time: Duration::from_secs(30),
        }
    }
}

/// A row-local operator with its node's error policy applied.
pub struct GuardedOperator {
    inner: Box<dyn Operator>,
    policy: OnError,
    fallback: Option<Fallback>,
    breaker: Breaker,
    bound: Bound,
}

/// The fallback table, typed to the stage's output once the plan knows it.
struct Fallback {
    spec: FallbackSpec,
    /// The node's key (`stage[2]`), for errors.
    key: String,
    typed: Option<Typed>,
}

/// Where each output column of a fallen-back row comes from.
struct Typed {
    /// The stage's output schema plus the mark column.
    schema: SchemaRef,
    columns: Vec<FromWhere>,
}

enum FromWhere {
    /// The input's column with this name.
    Input(String),
    /// A default: one row of the output column's type.
    Default(ArrayRef),
}

impl GuardedOperator {
    /// Guards `inner` with `policy`; `fallback` is the node's fallback table
    /// (needed when the policy may fall back), `key` the node's key
    /// (`stage[2]`) for errors, `breaker` the trap breaker's settings.
    pub fn new(
        inner: Box<dyn Operator>,
        key: &str,
        policy: OnError,
        fallback: Option<FallbackSpec>,
        breaker: BreakerSpec,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner,
            policy,
            fallback: fallback.map(|spec| Fallback {
                spec,
                key: key.to_owned(),
                typed: None,
            }),
            breaker: Breaker::new(breaker, clock),
            bound: Bound::default(),
        }
    }

    /// The same, with another per-batch bound (tests use tiny ones).
    pub fn with_bound(mut self, bound: Bound) -> Self {
        self.bound = bound;
        self
    }

    /// One call of the inner operator on `batch` with a fresh emitter; on
    /// failure only its `wasm:` cost counters are kept (in `out`).
    fn call(
        &mut self,
        batch: RecordBatch,
        meta: &Option<Meta>,
        out: &mut Emitter,
    ) -> Result<Emitter, NodeError> {
        let mut e = meta
            .clone()
            .map_or_else(Emitter::default, Emitter::for_input);
        match self.inner.process(batch, &mut e) {
            Ok(()) => Ok(e),
            Err(err) => {
                for (k, v) in e.counters {
                    if k.starts_with("wasm:") {
                        out.count(&k, v);
                    }
                }
                Err(err)
            }
        }
    }

    /// [`GuardedOperator::call`], retried through the host's retry loop while
    /// the policy says a failure is worth another try.
    fn call_retrying(
        &mut self,
        batch: &RecordBatch,
        meta: &Option<Meta>,
        out: &mut Emitter,
        budget: &mut Budget,
    ) -> Result<Emitter, NodeError> {
        let Some(retry) = self.policy.retry.clone() else {
            budget.calls += 1;
            return self.call(batch.clone(), meta, out);
        };
        let policy = self.policy.clone();
        let classify = move |e: &NodeError| match policy.decide(e.fault(), true) {
            Decision::Retry => crate::node::retry::Transience::Transient,
            _ => crate::node::retry::Transience::Permanent,
        };
        let mut retries = 0u64;
        let r = retry.run_blocking("stage", &classify, |attempt| {
            budget.calls += 1;
            if attempt.get() > 1 {
                retries += 1;
            }
            self.call(batch.clone(), meta, out)
        });
        if retries > 0 {
            out.count("retries", retries);
        }
        r.map_err(|g| g.error)
    }

    /// Splits what failed into the pieces that succeed and the rows that do
    /// not, in input order (see the module docs).
    fn resolve(
        &mut self,
        batch: &RecordBatch,
        meta: &Option<Meta>,
        error: NodeError,
        out: &mut Emitter,
        budget: &mut Budget,
    ) -> Result<Vec<Piece>, NodeError> {
        let mut pieces = Vec::new();
        let mut stack = vec![Task::Failed(0, batch.num_rows(), Arc::new(error))];
        while let Some(task) = stack.pop() {
            match task {
                Task::Call(start, len) => {
                    if budget.spent(&self.bound) {
                        pieces.push(Piece::Rows(start, len, budget.unresolved(), "unresolved"));
                        continue;
                    }
                    match self.call_retrying(&batch.slice(start, len), meta, out, budget) {
                        Ok(e) => pieces.push(Piece::Out(e)),
                        Err(e) => match self.policy.decide(e.fault(), false) {
                            Decision::Rows(_) => {
                                budget.last = Some(Arc::new(e));
                                let last = budget.last.clone().expect("just set");
                                stack.push(Task::Failed(start, len, last));
                            }
                            Decision::Fail | Decision::Retry => return Err(e),
                        },
                    }
                }
                Task::Isolated(start, len, error) => {
                    let reason = reason_of(&error);
                    pieces.push(Piece::Rows(start, len, error, reason));
                }
                Task::Failed(start, len, error) => {
                    if let Some(r) = named_row(&error).filter(|&r| r < len) {
                        if r + 1 < len {
                            stack.push(Task::Call(start + r + 1, len - r - 1));
                        }
                        stack.push(Task::Isolated(start + r, 1, error));
                        if r > 0 {
                            stack.push(Task::Call(start, r));
                        }
                    } else if len == 1 {
                        stack.push(Task::Isolated(start, 1, error));
                    } else if budget.spent(&self.bound) {
                        pieces.push(Piece::Rows(start, len, error, "unresolved"));
                    } else {
                        out.count("bisections", 1);
                        let half = len / 2;
                        stack.push(Task::Call(start + half, len - half));
                        stack.push(Task::Call(start, half));
                    }
                }
            }
        }
        Ok(pieces)
    }

    /// Sends the pieces on, in order: output with the mark false, failed rows
    /// to the dead-letter store or as fallback rows.
    fn emit(
        &mut self,
        batch: &RecordBatch,
        pieces: Vec<Piece>,
        out: &mut Emitter,
    ) -> Result<(), NodeError> {
        for piece in pieces {
            match piece {
                Piece::Out(e) => self.pass(e, out)?,
                Piece::Rows(start, len, error, reason) => {
                    let rows = batch.slice(start, len);
                    let action = match self.policy.decide(error.fault(), false) {
                        Decision::Rows(a) => a,
                        // The breaker's own refusal is a trap, which the policy
                        // turns into rows; anything else was failed already.
                        Decision::Fail | Decision::Retry => self.policy.then,
                    };
                    match action {
                        Action::Skip => {
                            out.count("rows_skipped", len as u64);
                            skip_rows(&rows, start, &error, reason, out)?;
                        }
                        Action::Fallback => {
                            out.count("rows_fallen_back", len as u64);
                            let b = self.fallback_rows(&rows)?;
                            out.push(b);
                        }
                        Action::Fail => {
                            return Err(NodeError::Bug(format!(
                                "rows of a failed call reached a `fail` policy: {error}"
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves what a successful call emitted into `out`, each batch with the
    /// mark column false when the stage falls back.
    fn pass(&self, mut e: Emitter, out: &mut Emitter) -> Result<(), NodeError> {
        for l in std::mem::take(&mut e.dead_letters) {
            out.dead_letters.push(l);
        }
        for (k, v) in std::mem::take(&mut e.counters) {
            *out.counters.entry(k).or_default() += v;
        }
        out.states.extend(std::mem::take(&mut e.states));
        let batches = std::mem::take(&mut e.batches);
        let metas = std::mem::take(&mut e.metas);
        for (b, m) in batches.into_iter().zip(metas) {
            let b = self.marked(b, false)?;
            out.batches.push(b);
            out.metas.push(m);
            out.positions.push(None);
        }
        Ok(())
    }

    /// `b` with the mark column set to `value`, if the stage falls back.
    fn marked(&self, b: RecordBatch, value: bool) -> Result<RecordBatch, NodeError> {
        let Some(f) = &self.fallback else {
            return Ok(b);
        };
        let mut fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(&f.spec.mark, DataType::Boolean, false));
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(vec![value; b.num_rows()])));
        let schema = Schema::new(fields).with_metadata(b.schema().metadata().clone());
        Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
    }

    /// Fallback rows for `rows` of the input: the input's columns, the
    /// defaults, the mark set.
    fn fallback_rows(&self, rows: &RecordBatch) -> Result<RecordBatch, NodeError> {
        let Some(f) = &self.fallback else {
            return Err(NodeError::Bug("fallback without a fallback table".into()));
        };
        let Some(t) = &f.typed else {
            return Err(NodeError::config(format!(
                "`{}.fallback`: the stage's output schema is learned from its first batch, so \
                 its defaults cannot be typed; declare the stage's `outputs`",
                f.key
            )));
        };
        let n = rows.num_rows();
        let zeros = UInt32Array::from(vec![0u32; n]);
        let mut columns = Vec::with_capacity(t.columns.len() + 1);
        for (c, field) in t.columns.iter().zip(t.schema.fields()) {
            columns.push(match c {
                FromWhere::Input(name) => rows.column_by_name(name).cloned().ok_or_else(|| {
                    NodeError::config(format!(
                        "`{}.fallback`: the input has no column `{name}`",
                        f.key
                    ))
                })?,
                FromWhere::Default(one) => arrow::compute::take(one.as_ref(), &zeros, None)?,
            });
            debug_assert_eq!(
                columns.last().map(|c| c.data_type()),
                Some(field.data_type())
            );
        }
        columns.push(Arc::new(BooleanArray::from(vec![true; n])));
        Ok(RecordBatch::try_new(t.schema.clone(), columns)?)
    }

    /// The whole batch to the policy, without entering the stage: the
    /// breaker is open.
    fn refused(&mut self, batch: &RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        let error = Arc::new(self.breaker.refusal());
        match self.policy.decide(error.fault(), false) {
            Decision::Rows(_) => {
                let pieces = vec![Piece::Rows(0, batch.num_rows(), error, "breaker_open")];
                self.emit(batch, pieces, out)
            }
            Decision::Fail | Decision::Retry => {
                Err(Arc::try_unwrap(error).unwrap_or_else(|e| NodeError::Bug(e.to_string())))
            }
        }
    }
}

/// What a batch's calls came to, in input order.
enum Piece {
    /// A successful call's emitter.
    Out(Emitter),
    /// Rows `[start, start + len)` the stage could not produce, why, and the
    /// reason code.
    Rows(usize, usize, Arc<NodeError>, &'static str),
}

/// Work left on a batch.
enum Task {
    /// Call the operator on `[start, start + len)`.
    Call(usize, usize),
    /// `[start, start + len)` failed with this error: isolate its rows.
    Failed(usize, usize, Arc<NodeError>),
    /// `[start, start + len)` is isolated: it goes to the policy.
    Isolated(usize, usize, Arc<NodeError>),
}

/// What one batch has cost so far.
struct Budget {
    calls: u32,
    started: Instant,
    /// The last failure seen, for segments left unresolved.
    last: Option<Arc<NodeError>>,
}

impl Budget {
    fn spent(&self, bound: &Bound) -> bool {
        self.calls >= bound.calls || self.started.elapsed() >= bound.time
    }

    fn unresolved(&self) -> Arc<NodeError> {
        self.last.clone().unwrap_or_else(|| {
            Arc::new(NodeError::Bug(
                "a segment unresolved before any failure".into(),
            ))
        })
    }
}

/// The row a failure names within the batch it was given, if any.
/// Joins the adjacent batches `out` holds from index `first` on that share
/// a schema and a lineage (the pieces of one input batch that a search
/// processed apart), so what leaves is one batch per input batch again, not
/// one per piece: a holder downstream (a session window, a sort) then keeps
/// one meta per batch, as without failures.
fn coalesce(out: &mut Emitter, first: usize) -> Result<(), NodeError> {
    if out.batches.len().saturating_sub(first) < 2 {
        return Ok(());
    }
    let batches = out.batches.split_off(first);
    let metas = out.metas.split_off(first);
    let positions = out.positions.split_off(first);
    let same = |a: &Option<Meta>, b: &Option<Meta>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            (Arc::ptr_eq(&a.lineage, &b.lineage) || a.lineage == b.lineage)
                && a.acks.len() == b.acks.len()
                && a.acks.iter().zip(&b.acks).all(|(x, y)| Arc::ptr_eq(x, y))
        }
        _ => false,
    };
    let mut group: Vec<RecordBatch> = Vec::new();
    let mut group_meta: Option<Meta> = None;
    let flush = |group: &mut Vec<RecordBatch>, meta: Option<Meta>, out: &mut Emitter| {
        if group.is_empty() {
            return Ok::<(), NodeError>(());
        }
        let b = if group.len() == 1 {
            group.remove(0)
        } else {
            let b = arrow::compute::concat_batches(&group[0].schema(), group.iter())?;
            group.clear();
            b
        };
        out.batches.push(b);
        out.metas.push(meta);
        out.positions.push(None);
        Ok(())
    };
    for ((b, m), p) in batches.into_iter().zip(metas).zip(positions) {
        let joins = p.is_none()
            && group
                .first()
                .is_some_and(|g| g.schema() == b.schema() && same(&group_meta, &m));
        if !joins {
            flush(&mut group, group_meta.take(), out)?;
            if p.is_some() {
                out.batches.push(b);
                out.metas.push(m);
                out.positions.push(p);
                continue;
            }
            group_meta = m;
        }
        group.push(b);
    }
    flush(&mut group, group_meta, out)
}

fn named_row(e: &NodeError) -> Option<usize> {
    match e {
        NodeError::Stage { row, .. } => row.map(|r| r as usize),
        NodeError::Data { row, .. } => *row,
        _ => None,
    }
}

/// A short reason code for a failure, for dead letters and counters.
fn reason_of(e: &NodeError) -> &'static str {
    match e.fault() {
        Fault::Data => "data",
        Fault::Stage { trap: true, .. } => "trap",
        Fault::Stage {
            transient: true, ..
        } => "stage_transient",
        Fault::Stage { .. } => "stage_error",
        Fault::Service { .. } => "service",
        _ => "error",
    }
}

/// Each row of `rows` (starting at `start` in its batch) as a dead letter.
pub(crate) fn skip_rows(
    rows: &RecordBatch,
    start: usize,
    error: &NodeError,
    reason: &str,
    out: &mut Emitter,
) -> Result<(), NodeError> {
    let objects =
        crate::batch::json::rows_as_objects(rows, None, crate::batch::json::JsonOptions::default())
            .map_err(|e| NodeError::Config(format!("dead letters: {e}")))?;
    for (i, object) in objects.into_iter().enumerate() {
        out.dead_letter(DeadLetter {
            fault: error.fault(),
            reason: reason.to_owned(),
            detail: error.to_string(),
            position: format!("row {}", start + i),
            payload: crate::node::Payload::text_of(serde_json::Value::Object(object).to_string()),
        });
    }
    Ok(())
}

/// A default value typed to `field`: one row of its type.
fn typed_default(value: &serde_json::Value, field: &Field) -> Result<ArrayRef, String> {
    use serde_json::Value as V;
    let dt = field.data_type();
    let one: ArrayRef = match value {
        V::Null if field.is_nullable() => return Ok(arrow::array::new_null_array(dt, 1)),
        V::Null => {
            return Err(format!(
                "is null, but column `{}` is not nullable",
                field.name()
            ));
        }
        V::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
        V::Number(n) => match n.as_i64() {
            Some(i) => Arc::new(arrow::array::Int64Array::from(vec![i])),
            None if dt.is_integer() => {
                return Err(format!(
                    "{n} is not an integer, and `{}` is {dt}",
                    field.name()
                ));
            }
            None => Arc::new(arrow::array::Float64Array::from(vec![
                n.as_f64().unwrap_or(f64::NAN),
            ])),
        },
        V::String(s) => Arc::new(arrow::array::StringArray::from(vec![s.as_str()])),
        other => {
            return Err(format!(
                "{other} is not a number, a string, a boolean or null"
            ));
        }
    };
    let strict = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow::compute::cast_with_options(&one, dt, &strict)
        .map_err(|e| format!("{value} cannot be `{}` ({dt}): {e}", field.name()))
}

impl Fallback {
    /// Types the defaults to `output` (the stage's output schema) given
    /// `input`; returns the output schema with the mark column.
    fn bind(&mut self, input: &Schema, output: &SchemaRef) -> Result<SchemaRef, NodeError> {
        let key = format!("{}.fallback", self.key);
        let refuse = |m: String| NodeError::config(format!("`{key}`: {m}"));
        for name in self.spec.defaults.keys() {
            if output.field_with_name(name).is_err() {
                return Err(refuse(format!(
                    "`defaults.{name}` is not an output column of the stage (it has {})",
                    crate::node::config::column_list(output)
                )));
            }
        }
        if output.field_with_name(&self.spec.mark).is_ok() {
            return Err(refuse(format!(
                "`mark` names `{}`, which the stage already outputs; choose another name",
                self.spec.mark
            )));
        }
        let mut columns = Vec::with_capacity(output.fields().len());
        for field in output.fields() {
            let name = field.name();
            columns.push(match self.spec.defaults.get(name) {
                Some(v) => FromWhere::Default(
                    typed_default(v, field)
                        .map_err(|m| refuse(format!("`defaults.{name}`: {m}")))?,
                ),
                None => match input.field_with_name(name) {
                    Ok(f) if f.data_type() == field.data_type() => FromWhere::Input(name.clone()),
                    Ok(f) => {
                        return Err(refuse(format!(
                            "no default for output column `{name}` ({}), and the input's `{name}` \
                             is {}: add `defaults.{name}`",
                            field.data_type(),
                            f.data_type()
                        )));
                    }
                    Err(_) => {
                        return Err(refuse(format!(
                            "no default for output column `{name}` ({}), which the input does not \
                             have: add `defaults.{name}`",
                            field.data_type()
                        )));
                    }
                },
            });
        }
        let mut fields: Vec<Field> = output.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(&self.spec.mark, DataType::Boolean, false));
        let schema = Arc::new(Schema::new(fields).with_metadata(output.metadata().clone()));
        self.typed = Some(Typed {
            schema: schema.clone(),
            columns,
        });
        Ok(schema)
    }
}

impl Operator for GuardedOperator {
    /// The inner operator's, plus the mark column when the stage falls back
    /// (whose defaults are typed here: a missing or mistyped default fails
    /// the plan, naming the column).
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        let inner = self.inner.output_schema(input)?;
        match (&mut self.fallback, inner) {
            (None, s) => Ok(s),
            (Some(f), Some(s)) => f.bind(input, &s).map(Some),
            (Some(f), None) => Err(NodeError::config(format!(
                "`{}.fallback`: the stage's output schema is learned from its first batch, so \
                 its defaults cannot be typed; declare the stage's `outputs`",
                f.key
            ))),
        }
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        let meta = out.input_meta().cloned();
        let admitted = self.breaker.admit(out);
        if !admitted {
            return self.refused(&batch, out);
        }
        let mut budget = Budget {
            calls: 0,
            started: Instant::now(),
            last: None,
        };
        let error = match self.call_retrying(&batch, &meta, out, &mut budget) {
            Ok(e) => {
                self.breaker.succeeded(out);
                return self.pass(e, out);
            }
            Err(e) => e,
        };
        let trapped = matches!(error.fault(), Fault::Stage { trap: true, .. });
        let whole = if trapped {
            self.breaker.trapped(out)
        } else {
            self.breaker.succeeded(out);
            false
        };
        match self.policy.decide(error.fault(), false) {
            Decision::Fail | Decision::Retry => Err(error),
            Decision::Rows(_) if whole => {
                // Just opened, or a half-open trial that trapped: the batch goes
                // whole to the policy rather than be searched.
                let reason = reason_of(&error);
                let pieces = vec![Piece::Rows(0, batch.num_rows(), Arc::new(error), reason)];
                self.emit(&batch, pieces, out)
            }
            Decision::Rows(_) => {
                let pieces = self.resolve(&batch, &meta, error, out, &mut budget)?;
                let first = out.batches.len();
                self.emit(&batch, pieces, out)?;
                coalesce(out, first)
            }
        }
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let mut e = Emitter::default();
        self.inner.finish(&mut e)?;
        self.pass(e, out)
    }

    fn drain(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        let mut e = Emitter::default();
        let more = self.inner.drain(&mut e)?;
        self.pass(e, out)?;
        Ok(more)
    }

    fn linger(&self) -> Option<Duration> {
        self.inner.linger()
    }

    fn buffered_rows(&self) -> usize {
        self.inner.buffered_rows()
    }

    fn held_rows(&self) -> usize {
        self.inner.held_rows()
    }

    fn conservation(&self) -> Conservation {
        self.inner.conservation()
    }

    fn flush(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let mut e = Emitter::default();
        self.inner.flush(&mut e)?;
        self.pass(e, out)
    }

    fn at_barrier(&self) -> AtBarrier {
        self.inner.at_barrier()
    }

    fn begin_checkpoints(&mut self) -> bool {
        self.inner.begin_checkpoints()
    }

    fn snapshot(&mut self, dir: &std::path::Path) -> Result<std::path::PathBuf, NodeError> {
        self.inner.snapshot(dir)
    }

    fn restore(&mut self, file: &std::path::Path) -> Result<(), NodeError> {
        self.inner.restore(file)
    }

    /// Passes the swap on; a new version closes the trap breaker.
    fn swap(&mut self, request: SwapRequest) {
        self.inner.swap(request);
        self.breaker.reset();
    }

    fn component_digest(&self) -> Option<&str> {
        self.inner.component_digest()
    }
}

/// A stage's trap breaker (see [`BreakerSpec`]).
struct Breaker {
    spec: BreakerSpec,
    clock: Arc<dyn Clock>,
    state: BreakerState,
    /// When recent trapping batches happened, in ms, oldest first.
    traps: std::collections::VecDeque<u64>,
    /// How long the next opening lasts.
    next_open: Duration,
    /// A transition not yet reported (the counters are the emitter's).
    pending: BTreeMap<&'static str, u64>,
    /// Whether the state changed since it was last reported.
    changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed,
    /// Open until this time (ms).
    Open(u64),
    /// One trial batch is being tried.
    HalfOpen,
}

impl BreakerState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open(_) => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl Breaker {
    fn new(spec: BreakerSpec, clock: Arc<dyn Clock>) -> Self {
        Self {
            next_open: spec.open.0,
            spec,
            clock,
            state: BreakerState::Closed,
            traps: std::collections::VecDeque::new(),
            pending: BTreeMap::new(),
            changed: false,
        }
    }

    fn go(&mut self, to: BreakerState, counter: &'static str) {
        tracing::warn!(from = self.state.as_str(), to = to.as_str(), "trap breaker");
        self.state = to;
        *self.pending.entry(counter).or_default() += 1;
        self.changed = true;
    }

    fn report(&mut self, out: &mut Emitter) {
        for (k, v) in std::mem::take(&mut self.pending) {
            out.count(k, v);
        }
        if self.changed {
            out.set_state("breaker", self.state.as_str());
            self.changed = false;
        }
    }

    /// Whether the next batch may enter the stage; an open breaker whose time
    /// is up half-opens here.
    fn admit(&mut self, out: &mut Emitter) -> bool {
        let admitted = match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open(until) if self.clock.now_ms() >= until => {
                self.go(BreakerState::HalfOpen, "breaker:half_opened");
                true
            }
            BreakerState::Open(_) => false,
        };
        self.report(out);
        admitted
    }

    /// The batch's first call did not trap.
    fn succeeded(&mut self, out: &mut Emitter) {
        if self.state == BreakerState::HalfOpen {
            self.go(BreakerState::Closed, "breaker:closed");
            self.traps.clear();
            self.next_open = self.spec.open.0;
        }
        self.report(out);
    }

    /// The batch's first call trapped. Returns whether the batch goes whole
    /// to the policy (the breaker opened, or reopened from half-open).
    fn trapped(&mut self, out: &mut Emitter) -> bool {
        let now = self.clock.now_ms();
        out.count("trapped_batches", 1);
        let whole = match self.state {
            BreakerState::HalfOpen => {
                self.next_open = (self.next_open * 2).min(self.spec.max_open.0);
                self.open(now);
                true
            }
            _ => {
                let window = self.spec.window.0.as_millis() as u64;
                self.traps.push_back(now);
                while self.traps.front().is_some_and(|&t| t + window <= now) {
                    self.traps.pop_front();
                }
                if self.traps.len() as u64 >= u64::from(self.spec.traps.get()) {
                    self.open(now);
                    true
                } else {
                    false
                }
            }
        };
        self.report(out);
        whole
    }

    fn open(&mut self, now: u64) {
        let until = now + self.next_open.as_millis() as u64;
        self.go(BreakerState::Open(until), "breaker:opened");
        self.traps.clear();
    }

    /// A new version: closed, with a clean slate.
    fn reset(&mut self) {
        if self.state != BreakerState::Closed {
            self.go(BreakerState::Closed, "breaker:closed");
        }
        self.traps.clear();
        self.next_open = self.spec.open.0;
    }

    /// The failure a batch refused by an open breaker is kept with.
    fn refusal(&self) -> NodeError {
        let until = match self.state {
            BreakerState::Open(u) => u,
            _ => 0,
        };
        NodeError::Stage {
            row: None,
            transient: false,
            trap: true,
            error: format!(
                "the stage's trap breaker is open ({} trapping batches within {}); it is tried \
                 again in {} ms",
                self.spec.traps,
                self.spec.window,
                until.saturating_sub(self.clock.now_ms())
            )
            .into(),
        }
    }
}

#[cfg(test)]
mod tests;
