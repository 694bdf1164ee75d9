//! `session`: session windows per key on event time.
//!
//! ```text
//!   batch ─► late check ─► pending (ts ≥ release point) ─► released in (key, ts) order
//!              │                                               │
//!              └─► dead letter `late`        open session per key ─► closed ─► one row
//! ```
//!
//! The watermark trails the largest event time seen by `out_of_orderness`; an
//! event may arrive up to `allowed_lateness` behind the watermark. The *release
//! point* is `max_ts − out_of_orderness − allowed_lateness`: no event that still
//! counts can be earlier, so rows before it are final. They are released in
//! (key, event time, arrival) order into each key's open session, which makes the
//! result independent of arrival order within the bound and of batch boundaries. A
//! row that arrives behind the release point is *late*: it becomes a dead letter
//! with reason `late` (its row as JSON), never silently dropped; the run summary
//! counts it under `dead_letter:late`. A row with a null event time is a dead
//! letter `time:null`.
//!
//! A session grows while the next event of its key is at most `gap` after its last
//! one (a gap exactly equal to `gap` stays in the session) and, with `max_length`,
//! while `last − first ≤ max_length`; otherwise the session closes and a new one
//! starts. A session also closes when the release point passes `last + gap`: no
//! event that still counts can join it. Each session is emitted exactly once, when
//! closed, as one row: the key columns, `session_start`, `session_end` and the
//! aggregates ([`super::aggregate`], `first`/`last` in event-time order). Rows
//! closed by one batch are ordered by key and start. When the input ends, every
//! pending row is released and every open session closed.
//!
//! Pending rows are held as the batches they arrived in and released as row
//! selections over those batches ([`pending`]): releasing a row copies nothing,
//! and a session's rows are fed to the aggregates straight from their batches.
//!
//! State (pending rows, open sessions' accumulators and keys) reserves from the
//! run's memory pool. Window state cannot spill: when the pool refuses, the run
//! fails with the refusal, which names this operator; raise `settings.memory`, or
//! lower `out_of_orderness`/`allowed_lateness` (which bound the pending rows).

mod pending;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Hash maps keyed by session keys use a fast seeded hasher: hashing is per row.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::buffer::ScalarBuffer;
use arrow::compute::{
    cast, filter, filter_record_batch, interleave_record_batch, take_record_batch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use pending::{Pending, Ready};

use super::aggregate::{AggregateSpec, Aggregates};
use crate::batch::json::{JsonOptions, rows_as_objects};
use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::memory::{Reservation, RunMemory};
use crate::node::{AtBarrier, DeadLetter, Emitter, NodeError, Operator};
use crate::units::Millis;

/// `[stage.session]`: session windows per key on event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// The key columns. At least one.
    pub key: Vec<String>,
    /// The event-time column: integer epoch milliseconds or a millisecond timestamp.
    pub time: String,
    /// A new session starts when the time since the key's previous event is
    /// strictly greater than this.
    pub gap: Millis,
    /// A session longer than this (last − first event) is split. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<Millis>,
    /// How far behind the largest event time seen an event may arrive and still
    /// count: the watermark trails the largest event time by this. Default: 0.
    #[serde(default = "zero_millis")]
    pub out_of_orderness: Millis,
    /// Extra time, past the watermark, that an event may still arrive. Sessions
    /// are emitted once, after it. Default: 0.
    #[serde(default = "zero_millis")]
    pub allowed_lateness: Millis,
    /// The aggregates, one output column each.
    #[serde(default)]
    pub aggregates: Vec<AggregateSpec>,
    /// The output column holding the first event time. Default: `session_start`.
    #[serde(default = "default_start_column")]
    pub start_column: String,
    /// The output column holding the last event time. Default: `session_end`.
    #[serde(default = "default_end_column")]
    pub end_column: String,
}

fn zero_millis() -> Millis {
    Millis(std::time::Duration::ZERO)
}

/// Default session start column: `session_start`.
pub fn default_start_column() -> String {
    "session_start".to_owned()
}

/// Default session end column: `session_end`.
pub fn default_end_column() -> String {
    "session_end".to_owned()
}

/// Session windows, reserving from the run's memory budget (over it, the run
/// fails naming the operator).
impl OperatorConfig for SessionSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.key.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.key"),
                "needs at least one key column",
            ));
        }
        if self.gap.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.gap"),
                "must be greater than 0",
            ));
        }
        if self.max_length.is_some_and(|m| m.0.is_zero()) {
            return Err(SpecError::invalid(
                format!("{key}.max_length"),
                "must be greater than 0",
            ));
        }
        super::aggregate::validate_aggregates(key, &self.aggregates)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(SessionOperator::new(
            cx.name,
            self.clone(),
            cx.memory,
        )))
    }

    fn holds_input(&self) -> bool {
        true
    }
}

/// A session key: the key columns in `arrow-row` encoding, shared between the key
/// index, the key states and the closed list without copying.
type Key = Arc<[u8]>;

struct Open {
    slot: usize,
    start: i64,
    end: i64,
    seq: u64,
}

/// A key and its open session.
struct KeyState {
    key: Key,
    open: Option<Open>,
}

struct Closed {
    key: Key,
    slot: usize,
    start: i64,
    end: i64,
}

/// The running session-window operator.
pub struct SessionOperator {
    /// The lineage and tokens of every input consumed: what held rows carry.
    consumed: crate::node::MetaSet,
    name: String,
    spec: SessionSpec,
    gap: i64,
    max_length: Option<i64>,
    behind: i64,
    reservation: Reservation,
    init: Option<Init>,
    /// The largest event time seen.
    max_ts: Option<i64>,
    /// Rows not yet released, in the batches they arrived in.
    pending: Pending,
    /// Each key with an open session, to its index in `states`: one hash lookup
    /// per row finds a row's session state, and everything after is indexing.
    index: HashMap<Key, u32>,
    /// Per index: the key and its open session (`None` while the index is free).
    states: Vec<KeyState>,
    /// Indices of `states` to reuse.
    free_states: Vec<u32>,
    /// The bytes of the keys in `index`, for the memory reservation.
    key_bytes: usize,
    /// The key a freed state holds: shared, so freeing allocates nothing.
    no_key: Key,
    /// (last event time, session seq, state index), smallest first. An entry may
    /// hold an older last event time than its session (it is re-queued when
    /// reached), so there is one entry per open session, not one per event; an
    /// entry whose seq is not its state's open session is stale and skipped.
    expiry: BinaryHeap<Reverse<(i64, u64, u32)>>,
    next_seq: u64,
    free_slots: Vec<usize>,
    closed: Vec<Closed>,
    rows_seen: u64,
    /// With checkpoints: the released rows, each with the seq of the session it
    /// joined, in release order. A snapshot keeps the rows whose session is
    /// still open, which rebuild it exactly ([`Operator::snapshot`]).
    log: Option<Vec<(RecordBatch, Vec<u64>)>>,
}

/// What the operator binds to its input (by the plan when it knows the
/// input's schema, else at the first batch or a restored state), with the
/// aggregates' state.
struct Init {
    input: SchemaRef,
    output: SchemaRef,
    time_col: usize,
    time_type: DataType,
    key_cols: Vec<usize>,
    keys: RowConverter,
    aggs: Aggregates,
}

impl Init {
    /// The session operator of `spec` bound to `schema`: its time and key
    /// columns found and checked, its aggregates typed, its output fixed.
    fn new(spec: &SessionSpec, schema: &SchemaRef) -> Result<Self, NodeError> {
        let find = |c: &str, what: &str| {
            schema.index_of(c).map_err(|_| {
                NodeError::Config(format!(
                    "{what} `{c}` is not a column of the input (it has: {})",
                    crate::node::config::column_list(schema)
                ))
            })
        };
        let time_col = find(&spec.time, "time column")?;
        let time_type = schema.field(time_col).data_type().clone();
        if !matches!(
            time_type,
            DataType::Int64 | DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, _)
        ) {
            return Err(NodeError::Config(format!(
                "time column `{}` must be int64 epoch milliseconds or timestamp_ms, not {time_type}",
                spec.time
            )));
        }
        let key_cols = spec
            .key
            .iter()
            .map(|k| find(k, "key column"))
            .collect::<Result<Vec<_>, _>>()?;
        let key_fields: Vec<SortField> = key_cols
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let aggs = Aggregates::new(&spec.aggregates, schema)?;
        let mut fields: Vec<Field> = key_cols
            .iter()
            .map(|&i| schema.field(i).clone().with_nullable(true))
            .collect();
        fields.push(Field::new(&spec.start_column, time_type.clone(), false));
        fields.push(Field::new(&spec.end_column, time_type.clone(), false));
        fields.extend(aggs.fields());
        Ok(Self {
            input: schema.clone(),
            output: Arc::new(Schema::new(fields)),
            time_col,
            time_type,
            key_cols,
            keys: RowConverter::new(key_fields)?,
            aggs,
        })
    }
}

fn ms(d: crate::units::Millis) -> i64 {
    i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX)
}

impl SessionOperator {
    /// A session operator named `name`.
    pub fn new(name: &str, spec: SessionSpec, memory: &RunMemory) -> Self {
        let consumer = format!("session `{name}`");
        Self {
            consumed: crate::node::MetaSet::new(),
            reservation: memory.pool.reservation(&consumer),
            name: consumer,
            gap: ms(spec.gap),
            max_length: spec.max_length.map(ms),
            behind: ms(spec.out_of_orderness).saturating_add(ms(spec.allowed_lateness)),
            spec,
            init: None,
            max_ts: None,
            pending: Pending::default(),
            index: HashMap::default(),
            states: Vec::new(),
            free_states: Vec::new(),
            key_bytes: 0,
            no_key: Key::from(&[][..]),
            expiry: BinaryHeap::new(),
            next_seq: 0,
            free_slots: Vec::new(),
            closed: Vec::new(),
            rows_seen: 0,
            log: None,
        }
    }

    fn release_point(&self) -> Option<i64> {
        self.max_ts.map(|m| m.saturating_sub(self.behind))
    }

    /// Moves rows with event time before `point` (all rows if `None`) from pending
    /// into sessions, then closes the sessions `point` has passed.
    fn release(
        &mut self,
        init: &mut Init,
        point: Option<i64>,
        out: &mut Emitter,
    ) -> Result<(), NodeError> {
        if self.pending.due(point) {
            let ready = self.pending.release(point, &init.keys)?;
            self.assign(init, &ready)?;
        }
        self.close_passed(init, point, out)
    }

    /// Holds the rows of `batch` (event times `ts`) until they are released.
    fn hold(
        &mut self,
        init: &Init,
        batch: RecordBatch,
        ts: ScalarBuffer<i64>,
    ) -> Result<(), NodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = init
            .keys
            .convert_columns(&key_columns(&batch, &init.key_cols))?;
        self.pending.push(batch, ts, keys);
        Ok(())
    }

    /// Feeds final rows into their keys' sessions, each key's in (time, arrival)
    /// order. `ready` is in arrival order, source after source.
    fn assign(&mut self, init: &mut Init, ready: &[Ready]) -> Result<(), NodeError> {
        let n: usize = ready.iter().map(|r| r.rows.len()).sum();
        if n == 0 {
            return Ok(());
        }
        // Each row as (its key's state index, event time, arrival), arrival being
        // its position over the sources in order; `at[arrival]` is (source, row).
        // Ordering then compares integers in place, and each key's open session is
        // found with one lookup per row. Within a key, rows are in (time, arrival)
        // order, which is all the sessions depend on (closed rows are ordered by
        // key when emitted).
        let mut order: Vec<(u32, i64, u32)> = Vec::with_capacity(n);
        let mut at: Vec<(u32, u32)> = Vec::with_capacity(n);
        for (s, source) in ready.iter().enumerate() {
            for &r in &source.rows {
                let key = source.keys.row(r as usize).data();
                let i = match self.index.get(key) {
                    Some(&i) => i,
                    None => {
                        let key = Key::from(key);
                        let state = KeyState {
                            key: key.clone(),
                            open: None,
                        };
                        let i = match self.free_states.pop() {
                            Some(i) => {
                                self.states[i as usize] = state;
                                i
                            }
                            None => {
                                self.states.push(state);
                                u32::try_from(self.states.len() - 1)
                                    .expect("fewer than 2^32 open sessions")
                            }
                        };
                        self.key_bytes += key.len();
                        self.index.insert(key, i);
                        i
                    }
                };
                let arrival = u32::try_from(at.len()).expect("fewer than 2^32 rows released");
                order.push((i, source.ts[r as usize], arrival));
                at.push((s as u32, r));
            }
        }
        order.sort_unstable();
        let mut seqs: Option<Vec<u64>> = self.log.as_ref().map(|_| vec![0; n]);
        let mut slots = Vec::with_capacity(n);
        let mut closed = Vec::new();
        // Whether each key's rows come from the sources in source order, so that
        // feeding the aggregates source by source keeps every session's order.
        let mut in_source_order = true;
        for run in order.chunk_by(|a, b| a.0 == b.0) {
            let i = run[0].0;
            in_source_order &= run
                .windows(2)
                .all(|w| at[w[0].2 as usize].0 <= at[w[1].2 as usize].0);
            let state = &mut self.states[i as usize];
            let mut cur = state.open.take();
            for &(_, t, arrival) in run {
                if let Some(o) = cur.as_mut().filter(|o| {
                    t - o.end <= self.gap && self.max_length.is_none_or(|m| t - o.start <= m)
                }) {
                    // The expiry entry keeps the older end; `close_passed` re-queues it.
                    o.end = o.end.max(t);
                    slots.push(o.slot);
                    if let Some(s) = seqs.as_mut() {
                        s[arrival as usize] = o.seq;
                    }
                    continue;
                }
                if let Some(o) = cur.take() {
                    closed.push(Closed {
                        key: state.key.clone(),
                        slot: o.slot,
                        start: o.start,
                        end: o.end,
                    });
                }
                let slot = match self.free_slots.pop() {
                    Some(s) => s,
                    None => {
                        let s = init.aggs.slots();
                        init.aggs.ensure_slots(s + 1);
                        s
                    }
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                self.expiry.push(Reverse((t, seq, i)));
                cur = Some(Open {
                    slot,
                    start: t,
                    end: t,
                    seq,
                });
                slots.push(slot);
                if let Some(s) = seqs.as_mut() {
                    s[arrival as usize] = seq;
                }
            }
            state.open = cur;
        }
        // A session closed by a new one of its key has all its rows here (they
        // come first in the order); its slot is freed only after the update.
        if let [source] = ready {
            let rows: Vec<usize> = order.iter().map(|o| at[o.2 as usize].1 as usize).collect();
            init.aggs.update(&source.batch, &rows, &slots)?;
        } else if in_source_order {
            // Source by source, straight from the batches: every session still
            // sees its rows in (time, arrival) order.
            for (s, source) in ready.iter().enumerate() {
                let (rows, slots): (Vec<usize>, Vec<usize>) = order
                    .iter()
                    .zip(&slots)
                    .filter(|(o, _)| at[o.2 as usize].0 as usize == s)
                    .map(|(o, &slot)| (at[o.2 as usize].1 as usize, slot))
                    .unzip();
                if !rows.is_empty() {
                    init.aggs.update(&source.batch, &rows, &slots)?;
                }
            }
        } else {
            // A key's rows interleave across sources (an event that arrived after
            // a later one of its key, across a batch boundary): gather the rows
            // into one batch, in arrival order, and feed that.
            let refs: Vec<&RecordBatch> = ready.iter().map(|r| &r.batch).collect();
            let pairs: Vec<(usize, usize)> =
                at.iter().map(|&(s, r)| (s as usize, r as usize)).collect();
            let gathered = interleave_record_batch(&refs, &pairs)?;
            let rows: Vec<usize> = order.iter().map(|o| o.2 as usize).collect();
            init.aggs.update(&gathered, &rows, &slots)?;
        }
        self.closed.extend(closed);
        if let (Some(log), Some(seqs)) = (self.log.as_mut(), seqs) {
            let mut from = 0;
            for source in ready {
                let to = from + source.rows.len();
                if to > from {
                    log.push((source.to_batch()?, seqs[from..to].to_vec()));
                }
                from = to;
            }
        }
        Ok(())
    }

    /// Keeps only the logged rows whose session is still open.
    fn prune_log(&mut self) -> Result<(), NodeError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let open: std::collections::HashSet<u64> = self
            .states
            .iter()
            .filter_map(|s| s.open.as_ref().map(|o| o.seq))
            .collect();
        let mut kept = Vec::with_capacity(log.len());
        for (batch, seqs) in log.drain(..) {
            let live: Vec<bool> = seqs.iter().map(|s| open.contains(s)).collect();
            match live.iter().filter(|l| **l).count() {
                0 => {}
                n if n == seqs.len() => kept.push((batch, seqs)),
                _ => {
                    let seqs = seqs
                        .iter()
                        .zip(&live)
                        .filter(|(_, l)| **l)
                        .map(|(s, _)| *s)
                        .collect();
                    kept.push((
                        filter_record_batch(&batch, &BooleanArray::from(live))?,
                        seqs,
                    ));
                }
            }
        }
        *log = kept;
        Ok(())
    }

    /// Closes the sessions `point` has passed (all, if `None`) and emits every
    /// closed session as one batch ordered by key and start.
    fn close_passed(
        &mut self,
        init: &mut Init,
        point: Option<i64>,
        out: &mut Emitter,
    ) -> Result<(), NodeError> {
        match point {
            Some(p) => {
                while let Some(Reverse((end, _, _))) = self.expiry.peek() {
                    if p.saturating_sub(*end) <= self.gap {
                        break;
                    }
                    let Reverse((end, seq, i)) = self.expiry.pop().expect("peeked");
                    let state = &mut self.states[i as usize];
                    match &state.open {
                        // Extended since queued: wait for its new end.
                        Some(o) if o.seq == seq && o.end != end => {
                            self.expiry.push(Reverse((o.end, seq, i)));
                            continue;
                        }
                        Some(o) if o.seq == seq => {}
                        // Stale: that session closed already (another may be open).
                        _ => continue,
                    }
                    let o = state.open.take().expect("matched above");
                    let key = std::mem::replace(&mut state.key, self.no_key.clone());
                    self.index.remove(&key);
                    self.key_bytes -= key.len();
                    self.free_states.push(i);
                    self.closed.push(Closed {
                        key,
                        slot: o.slot,
                        start: o.start,
                        end: o.end,
                    });
                }
            }
            None => {
                self.expiry.clear();
                for state in self.states.drain(..) {
                    if let Some(o) = state.open {
                        self.closed.push(Closed {
                            key: state.key,
                            slot: o.slot,
                            start: o.start,
                            end: o.end,
                        });
                    }
                }
                self.index.clear();
                self.free_states.clear();
                self.key_bytes = 0;
            }
        }
        if self.closed.is_empty() {
            return Ok(());
        }
        let mut closed = std::mem::take(&mut self.closed);
        closed.sort_by(|a, b| a.key.cmp(&b.key).then(a.start.cmp(&b.start)));
        let parser = init.keys.parser();
        let mut columns = init
            .keys
            .convert_rows(closed.iter().map(|c| parser.parse(&c.key)))?;
        let start: ArrayRef =
            Arc::new(Int64Array::from_iter_values(closed.iter().map(|c| c.start)));
        let end: ArrayRef = Arc::new(Int64Array::from_iter_values(closed.iter().map(|c| c.end)));
        columns.push(cast(&start, &init.time_type)?);
        columns.push(cast(&end, &init.time_type)?);
        let slots: Vec<usize> = closed.iter().map(|c| c.slot).collect();
        columns.extend(init.aggs.emit(&slots)?);
        for &s in &slots {
            init.aggs.reset(s);
        }
        self.free_slots.extend(slots);
        out.count("sessions", closed.len() as u64);
        let meta = self.consumed.union();
        out.push_with(RecordBatch::try_new(init.output.clone(), columns)?, meta);
        Ok(())
    }

    fn reserve(&mut self, init: &Init) -> Result<(), NodeError> {
        let pending = self.pending.bytes();
        let keys = 2 * self.key_bytes + 96 * self.index.len();
        let log: usize = self
            .log
            .iter()
            .flatten()
            .map(|(b, s)| b.get_array_memory_size() + 8 * s.len())
            .sum();
        let want = pending + init.aggs.bytes() + keys + self.expiry.len() * 16 + log;
        self.reservation.try_resize(want).map_err(NodeError::from)
    }
}

/// The event-time column as epoch milliseconds.
fn time_of(batch: &RecordBatch, col: usize) -> Result<Int64Array, NodeError> {
    Ok(cast(batch.column(col), &DataType::Int64)?
        .as_primitive()
        .clone())
}

/// The key columns of `batch`.
fn key_columns(batch: &RecordBatch, cols: &[usize]) -> Vec<ArrayRef> {
    cols.iter().map(|&i| batch.column(i).clone()).collect()
}

impl SessionOperator {
    /// The binding to `schema`: the one the plan (or an earlier batch) made,
    /// taken out of `self.init` while a call uses it, or a new one.
    fn bound(&mut self, schema: &SchemaRef) -> Result<Init, NodeError> {
        match self.init.take() {
            Some(init) => Ok(init),
            None => Init::new(&self.spec, schema),
        }
    }

    /// [`Operator::process`] of a non-empty batch with the binding taken out.
    fn process_bound(
        &mut self,
        init: &mut Init,
        batch: RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), NodeError> {
        let ts = time_of(&batch, init.time_col)?;
        let mut keep = Vec::with_capacity(ts.len());
        let mut late = Vec::new();
        let mut nulls = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            match t {
                None => {
                    nulls.push(i);
                    keep.push(false);
                }
                Some(t) => {
                    let is_late = self
                        .max_ts
                        .is_some_and(|m| t < m.saturating_sub(self.behind));
                    if is_late {
                        late.push((i, t, self.max_ts.unwrap_or_default()));
                    } else {
                        self.max_ts = Some(self.max_ts.map_or(t, |m| m.max(t)));
                    }
                    keep.push(!is_late);
                }
            }
        }
        if !late.is_empty() || !nulls.is_empty() {
            // Only the failing rows become JSON: late (in row order), then nulls.
            let failing: Vec<u32> = late
                .iter()
                .map(|&(i, _, _)| i as u32)
                .chain(nulls.iter().map(|&i| i as u32))
                .collect();
            let failing = take_record_batch(&batch, &UInt32Array::from(failing))?;
            let mut rows = rows_as_objects(&failing, None, JsonOptions::default())
                .map_err(|e| NodeError::Config(format!("{}: {e}", self.name)))?
                .into_iter();
            let mut record = || {
                serde_json::Value::Object(rows.next().expect("one object per failing row"))
                    .to_string()
            };
            let ooo = ms(self.spec.out_of_orderness);
            for (i, t, max) in late {
                out.dead_letter(DeadLetter {
                    fault: crate::node::Fault::Data,
                    reason: "late".into(),
                    detail: format!(
                        "event time {t} is more than the allowed lateness {} ms behind the watermark {}",
                        ms(self.spec.allowed_lateness),
                        max - ooo
                    ),
                    position: format!("row {}", self.rows_seen + i as u64),
                    payload: crate::node::Payload::text_of(record()),
                });
            }
            for i in nulls {
                out.dead_letter(DeadLetter {
                    fault: crate::node::Fault::Data,
                    reason: "time:null".into(),
                    detail: format!("event time `{}` is null", self.spec.time),
                    position: format!("row {}", self.rows_seen + i as u64),
                    payload: crate::node::Payload::text_of(record()),
                });
            }
        }
        self.rows_seen += batch.num_rows() as u64;
        let (kept, ts) = if keep.iter().all(|&k| k) {
            (batch, ts)
        } else {
            let keep = BooleanArray::from(keep);
            let ts = filter(&ts, &keep)?
                .as_primitive::<arrow::datatypes::Int64Type>()
                .clone();
            (filter_record_batch(&batch, &keep)?, ts)
        };
        self.hold(init, kept, ts.values().clone())?;
        self.release(init, self.release_point(), out)?;
        self.reserve(init)
    }
}

impl Operator for SessionOperator {
    /// An aggregate: rows are folded into state, and what it emits are new
    /// records.
    fn conservation(&self) -> crate::node::Conservation {
        crate::node::Conservation::Absorbs
    }

    /// The key columns (nullable), `session_start` and `session_end` (of the
    /// time column's type), then one column per aggregate: bound here, so a
    /// key, time or aggregate column the input lacks fails the plan.
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        let init = self.bound(input)?;
        let output = init.output.clone();
        self.init = Some(init);
        Ok(Some(output))
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        self.consumed.push_input(out);
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut init = self.bound(batch.schema_ref())?;
        let done = self.process_bound(&mut init, batch, out);
        self.init = Some(init);
        done
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let Some(mut init) = self.init.take() else {
            // Neither the plan nor a batch bound it: nothing was held.
            return Ok(());
        };
        let done = self.release(&mut init, None, out);
        self.init = Some(init);
        done?;
        self.reservation.free();
        Ok(())
    }

    /// Open sessions and pending rows go with the checkpoint.
    fn at_barrier(&self) -> AtBarrier {
        AtBarrier::Snapshot
    }

    /// Sessions on a stream stay open for as long as their users are active:
    /// their state is checkpointed rather than their input held.
    fn begin_checkpoints(&mut self) -> bool {
        self.log.get_or_insert_with(Vec::new);
        true
    }

    /// Writes `<dir>/<operator>.arrow` (Arrow IPC): the rows of every open
    /// session, then the pending rows, in the input's schema; the watermark,
    /// the row count and the lineage so far in its metadata. Restoring
    /// re-assigns the first and re-queues the second, which rebuilds every
    /// session and aggregate exactly. Afterwards the held input tokens are let
    /// go (the state is what holds those rows now); the lineage is kept.
    fn snapshot(&mut self, dir: &std::path::Path) -> Result<std::path::PathBuf, NodeError> {
        self.prune_log()?;
        let file = dir.join(format!("{}.arrow", snapshot_name(&self.name)));
        let union = self.consumed.union();
        let mut meta = std::collections::HashMap::new();
        meta.insert(
            STATE_KEY.to_owned(),
            serde_json::json!({
                "max_ts": self.max_ts,
                "rows_seen": self.rows_seen,
                "open_rows": self.log.iter().flatten().map(|(b, _)| b.num_rows()).sum::<usize>(),
                "lineage": &*union.lineage,
            })
            .to_string(),
        );
        let pending = self.pending.batches()?;
        let held = self.log.iter().flatten().map(|(b, _)| b).chain(&pending);
        // The input's columns (none when nothing is held).
        let fields = held
            .clone()
            .next()
            .map(|b| b.schema().fields().clone())
            .unwrap_or_default();
        let schema = Arc::new(Schema::new_with_metadata(fields, meta));
        write_state(&file, &schema, held)?;
        self.release_tokens(union);
        Ok(file)
    }

    fn restore(&mut self, file: &std::path::Path) -> Result<(), NodeError> {
        let io = |e: std::io::Error| NodeError::io(file.display(), e);
        let reader = arrow::ipc::reader::FileReader::try_new(
            std::io::BufReader::new(std::fs::File::open(file).map_err(io)?),
            None,
        )
        .map_err(|e| {
            NodeError::config(format!(
                "{}: {}: not a session state: {e}",
                self.name,
                file.display()
            ))
        })?;
        let schema = reader.schema();
        let state: serde_json::Value = schema
            .metadata()
            .get(STATE_KEY)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| {
                NodeError::config(format!(
                    "{}: {} is not a session state",
                    self.name,
                    file.display()
                ))
            })?;
        self.max_ts = state["max_ts"].as_i64();
        self.rows_seen = state["rows_seen"].as_u64().unwrap_or(0);
        if let Ok(lineage) =
            serde_json::from_value::<crate::node::Lineage>(state["lineage"].clone())
        {
            self.consumed.push(&crate::node::Meta {
                lineage: Arc::new(lineage),
                acks: Vec::new(),
            });
        }
        let mut open_rows = state["open_rows"].as_u64().unwrap_or(0) as usize;
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        let plain = Arc::new(Schema::new(schema.fields().clone()));
        let (mut open, mut pending) = (Vec::new(), Vec::new());
        for b in batches {
            let b = RecordBatch::try_new(plain.clone(), b.columns().to_vec())?;
            let take = open_rows.min(b.num_rows());
            open_rows -= take;
            if take > 0 {
                open.push(b.slice(0, take));
            }
            if take < b.num_rows() {
                pending.push(b.slice(take, b.num_rows() - take));
            }
        }
        if open.is_empty() && pending.is_empty() {
            return Ok(());
        }
        let mut init = self.bound(&plain)?;
        if let Err(e) = crate::node::schema::check(&init.input, &plain) {
            self.init = Some(init);
            return Err(NodeError::config(format!(
                "{}: the state's columns differ from the input's: {e}",
                file.display()
            )));
        }
        let done = self.restore_bound(&mut init, &plain, open, pending);
        self.init = Some(init);
        done
    }
}

impl SessionOperator {
    /// Re-assigns the rows of the open sessions and re-queues the pending ones
    /// of a restored state.
    fn restore_bound(
        &mut self,
        init: &mut Init,
        plain: &SchemaRef,
        open: Vec<RecordBatch>,
        pending: Vec<RecordBatch>,
    ) -> Result<(), NodeError> {
        let col = init.time_col;
        if !open.is_empty() {
            let all = arrow::compute::concat_batches(plain, &open)?;
            let ts = time_of(&all, col)?.values().clone();
            let keys = init
                .keys
                .convert_columns(&key_columns(&all, &init.key_cols))?;
            self.assign(init, &[Ready::whole(all, ts, keys)])?;
        }
        for b in pending {
            let ts = time_of(&b, col)?.values().clone();
            self.hold(init, b, ts)?;
        }
        self.reserve(init)
    }
}

/// The schema-metadata key of a session state file.
const STATE_KEY: &str = "weir.session.state";

/// A file name for the operator `session \`name\``.
fn snapshot_name(consumer: &str) -> String {
    consumer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `batches` to `file` as Arrow IPC, synced, through a temporary name.
fn write_state<'a>(
    file: &std::path::Path,
    schema: &SchemaRef,
    batches: impl Iterator<Item = &'a RecordBatch>,
) -> Result<(), NodeError> {
    let tmp = crate::node::atomic::in_progress(file);
    let io = |e: std::io::Error| NodeError::io(tmp.display(), e);
    let f = std::fs::File::create(&tmp).map_err(io)?;
    let mut w = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(f), schema)?;
    for b in batches {
        w.write(&RecordBatch::try_new(schema.clone(), b.columns().to_vec())?)?;
    }
    let f = w
        .into_inner()?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    crate::node::atomic::publish(f, &tmp, file).map_err(|e| NodeError::io(file.display(), e))
}

impl SessionOperator {
    /// Replaces the held metas by their lineage alone.
    fn release_tokens(&mut self, union: crate::node::Meta) {
        self.consumed = crate::node::MetaSet::new();
        self.consumed.push(&crate::node::Meta {
            lineage: union.lineage,
            acks: Vec::new(),
        });
    }
}
