//! A featurizer stage: one component, its parameters and limits, and at most one
//! live instance.
//!
//! The instance lives across batches (a featurizer may keep state built in `init`)
//! and is dropped after any trap; the next call instantiates a fresh one from the
//! `InstancePre` and calls `init` again with the same parameters. Limits are reset
//! before every call: fuel to the full budget, the epoch deadline (and the deadline
//! host calls wait until) to now + deadline.
//!
//! A batch is measured from its Arrow buffers before it is copied across, so one
//! over the crossing cap costs no copy. What the stage returns is held to its
//! output contract (see `outputs.rs`): one row per input row unless it is a
//! filter, and its declared columns when it declares them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use wasmtime::component::{Func, TypedFunc};
use wasmtime::{Store, Trap};

use super::bindings::{BatchRef, Featurizer, FeaturizerPre, WitBatch, WitStageError};
use super::error::{LoadError, StageFailure};
use super::limits::{Grants, StageLimits};
use super::lookup::{LookupLog, Lookups, SharedLog};
use super::outputs::{self, DeclaredOutputs};
use super::state::{GuestMetrics, Shared, StageState};
use super::{LoadedComponent, Sandbox};
use crate::batch;
use crate::units::ByteSize;

/// Counters of one stage's calls, for the run summary and metrics.
#[derive(Debug, Default, Clone)]
pub struct StageStats {
    /// `process` calls made.
    pub calls: u64,
    /// Calls that trapped (each cost an instance).
    pub traps: u64,
    /// Instances created (the first, plus one after each trap or swap).
    pub instantiations: u64,
    /// Fuel consumed over all calls.
    pub fuel_used: u64,
    /// Time spent inside `process`, including crossing.
    pub busy: Duration,
    /// Rows a filter stage dropped (its `_keep` was false or null).
    pub rows_filtered: u64,
}

struct Live {
    store: Store<StageState>,
    /// The `process` export, its signature checked against [`Process`] when the
    /// instance was made: called with a batch that borrows the Arrow buffers.
    process: Func,
}

/// `process` as the host calls it: the batch borrowed ([`BatchRef`]), the result
/// owned, so the input is lowered from the Arrow buffers without a host copy.
type Process<'a> = TypedFunc<(BatchRef<'a>,), (Result<WitBatch, WitStageError>,)>;

/// A featurizer ready to process batches. See the module docs for its lifecycle.
pub struct FeaturizerStage {
    name: Arc<str>,
    sandbox: Sandbox,
    digest: String,
    pre: FeaturizerPre<StageState>,
    params: String,
    limits: StageLimits,
    grants: Grants,
    live: Option<Live>,
    stats: StageStats,
    metrics: Arc<Mutex<GuestMetrics>>,
    lookups: Lookups,
    lookup_log: SharedLog,
    projection: Option<Vec<String>>,
    filter: bool,
    outputs: DeclaredOutputs,
    /// The last input schema seen and the output schema it gives, when `outputs`
    /// are declared: batches of one stream share a schema.
    expected: Option<(SchemaRef, SchemaRef)>,
}

impl std::fmt::Debug for FeaturizerStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeaturizerStage")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl FeaturizerStage {
    /// Instantiates `component` as stage `name` and calls `init(params)`.
    ///
    /// Instantiating eagerly means a bad component, a bad grant or refused
    /// parameters fail here, before any data flows.
    ///
    /// # Errors
    /// [`StageFailure::Init`] when `init` refuses the parameters; any trap during
    /// `init`; [`StageFailure::Instantiate`] when the instance cannot be created.
    pub fn new(
        sandbox: &Sandbox,
        component: &LoadedComponent,
        name: &str,
        params: &str,
        limits: StageLimits,
        grants: Grants,
    ) -> Result<Self, StageFailure> {
        Self::with_lookups(
            sandbox,
            component,
            name,
            params,
            limits,
            grants,
            Lookups::default(),
        )
    }

    /// [`FeaturizerStage::new`] for a stage granted `lookups`: the tables its
    /// `weir:stage/lookup` import may read.
    ///
    /// # Errors
    /// As [`FeaturizerStage::new`]; [`StageFailure::Instantiate`] naming the
    /// import when the component imports `weir:stage/lookup` and `lookups` is
    /// empty (see [`LoadedComponent::check_grants`]).
    pub fn with_lookups(
        sandbox: &Sandbox,
        component: &LoadedComponent,
        name: &str,
        params: &str,
        limits: StageLimits,
        grants: Grants,
        lookups: Lookups,
    ) -> Result<Self, StageFailure> {
        component
            .check_grants(&lookups)
            .map_err(|e| StageFailure::Instantiate {
                stage: name.to_owned(),
                message: e.to_string(),
            })?;
        let pre = component
            .featurizer_pre()
            .map_err(|e: LoadError| StageFailure::Instantiate {
                stage: name.to_owned(),
                message: e.to_string(),
            })?;
        let mut stage = Self {
            name: Arc::from(name),
            sandbox: sandbox.clone(),
            digest: component.digest().to_owned(),
            pre,
            params: params.to_owned(),
            limits,
            grants,
            live: None,
            stats: StageStats::default(),
            metrics: Arc::default(),
            lookups,
            lookup_log: SharedLog::default(),
            projection: None,
            filter: false,
            outputs: DeclaredOutputs::default(),
            expected: None,
        };
        stage.ensure_live()?;
        Ok(stage)
    }

    /// The stage's name in the pipeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Digest of the component this stage runs.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The parameters last accepted by `init`.
    pub fn params(&self) -> &str {
        &self.params
    }

    /// The stage's limits.
    pub fn limits(&self) -> &StageLimits {
        &self.limits
    }

    /// Counters of this stage's calls.
    pub fn stats(&self) -> &StageStats {
        &self.stats
    }

    /// What the stage reported through its metrics import.
    pub fn guest_metrics(&self) -> GuestMetrics {
        self.metrics.lock().expect("metrics lock").clone()
    }

    /// What the stage's lookups did since the last call of this method: their
    /// counters and the table generations that answered.
    pub fn take_lookup_log(&self) -> LookupLog {
        std::mem::take(&mut *self.lookup_log.lock().expect("lookup log lock"))
    }

    /// The tables granted to the stage.
    pub fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    /// Sends only `columns` into the stage (`None`: every column) and merges what
    /// it returns back into the full batch: returned columns replace same-named
    /// ones or are appended, and the stage must keep the row count.
    ///
    /// Crossing costs per byte, and strings cost the most: a featurizer reading one
    /// numeric column of a wide batch should not pay for the rest.
    pub fn set_projection(&mut self, columns: Option<Vec<String>>) {
        self.projection = columns;
    }

    /// The columns sent into the stage, if restricted.
    pub fn projection(&self) -> Option<&[String]> {
        self.projection.as_deref()
    }

    /// Makes the stage a filter (`true`) or a featurizer (`false`, the default).
    ///
    /// A featurizer must return exactly one row per input row. A filter returns
    /// every row plus a boolean column `_keep`: the host keeps the rows where it is
    /// true, drops those where it is false or null (counted in
    /// [`StageStats::rows_filtered`]) and removes the column.
    pub fn set_filter(&mut self, filter: bool) {
        self.filter = filter;
    }

    /// Whether the stage is a filter.
    pub fn is_filter(&self) -> bool {
        self.filter
    }

    /// Declares the columns the stage returns; every batch it returns is then held
    /// to [`output_schema`](super::output_schema) of its input. Empty: unchecked.
    pub fn set_outputs(&mut self, outputs: DeclaredOutputs) {
        self.outputs = outputs;
        self.expected = None;
    }

    /// The declared output columns.
    pub fn outputs(&self) -> &DeclaredOutputs {
        &self.outputs
    }

    /// Processes one batch.
    ///
    /// # Errors
    /// [`StageFailure::Guest`] when the stage returns an error (the instance stays);
    /// a trap variant when it traps (the instance is dropped); [`StageFailure::Batch`]
    /// or [`StageFailure::Crossing`] when a batch cannot cross;
    /// [`StageFailure::RowCount`], [`StageFailure::FilterColumn`] or an `Output*`
    /// variant when what it returns breaks its output contract (the instance stays).
    pub fn process(&mut self, input: &RecordBatch) -> Result<RecordBatch, StageFailure> {
        let started = Instant::now();
        let size = super::crossing::size(input, self.projection.as_deref());
        if size > self.limits.max_crossing.as_usize() {
            return Err(StageFailure::Crossing {
                stage: self.name.to_string(),
                direction: "input",
                cap: self.limits.max_crossing,
                size: Some(ByteSize(size as u64)),
            });
        }
        // Before the conversion, which borrows the projection for the call.
        self.ensure_live()?;
        let input_error = |error| StageFailure::Batch {
            stage: self.name.to_string(),
            direction: "input",
            error,
        };
        let wit = match &self.projection {
            Some(columns) => batch::to_wit_projected(input, columns),
            None => batch::to_wit(input),
        }
        .map_err(input_error)?;
        let live = self.live.as_mut().expect("ensured above");
        arm(&mut live.store, &self.limits, &self.sandbox, started);
        // SAFETY: `instantiate` checked the signature with `Func::typed` for this
        // very type; only the borrow's lifetime differs, which is no part of it.
        let process: Process<'_> = unsafe { TypedFunc::new_unchecked(live.process) };
        let result = wit.with_param(|batch| {
            process
                .call(&mut live.store, (batch,))
                .map(|(result,)| result)
        });
        let fuel_left = live.store.get_fuel().unwrap_or(0);
        self.stats.fuel_used += self.limits.fuel.saturating_sub(fuel_left);
        self.stats.calls += 1;
        let outcome = match result {
            Ok(Ok(out)) => self.check_output(input, out),
            Ok(Err(e)) => Err(StageFailure::Guest {
                stage: self.name.to_string(),
                row: e.row,
                message: e.message,
                transient: e.transient,
            }),
            Err(trap) => Err(self.poison(trap)),
        };
        self.stats.busy += started.elapsed();
        outcome
    }

    /// Holds what the stage returned to its output contract (see `outputs.rs`) and
    /// turns it into the batch that moves on.
    fn check_output(
        &mut self,
        input: &RecordBatch,
        out: WitBatch,
    ) -> Result<RecordBatch, StageFailure> {
        let output_error = |error| StageFailure::Batch {
            stage: self.name.to_string(),
            direction: "output",
            error,
        };
        let out = batch::from_wit(out).map_err(output_error)?;
        if out.num_rows() != input.num_rows() {
            return Err(StageFailure::RowCount {
                stage: self.name.to_string(),
                rows_in: input.num_rows(),
                rows_out: out.num_rows(),
            });
        }
        let (out, verdict) = if self.filter {
            let (out, keep) = outputs::take_verdict(&self.name, out)?;
            (out, Some(keep))
        } else {
            (out, None)
        };
        let mut out = match self.projection {
            Some(_) => batch::merge_columns(input, out).map_err(output_error)?,
            None => out,
        };
        if !self.outputs.is_empty() {
            let expected = self.expected_schema(input.schema_ref());
            out = outputs::conform(&self.name, &out, &expected)?;
        }
        match verdict {
            Some(keep) => {
                let (kept, dropped) = outputs::apply_verdict(&self.name, &out, &keep)?;
                self.stats.rows_filtered += dropped;
                Ok(kept)
            }
            None => Ok(out),
        }
    }

    /// The output schema for `input`, from the cache when the input schema repeats.
    fn expected_schema(&mut self, input: &SchemaRef) -> SchemaRef {
        match &self.expected {
            Some((seen, expected)) if Arc::ptr_eq(seen, input) || seen == input => expected.clone(),
            _ => {
                let expected = outputs::expected_schema(input, &self.outputs);
                self.expected = Some((input.clone(), expected.clone()));
                expected
            }
        }
    }

    /// Calls `init` with new parameters on a fresh instance; on success the stage
    /// uses them from the next batch on, on failure it keeps the old ones.
    ///
    /// # Errors
    /// As [`FeaturizerStage::new`]; the stage is unchanged.
    pub fn reconfigure(&mut self, params: &str) -> Result<(), StageFailure> {
        let live = self.instantiate(params)?;
        self.live = Some(live);
        self.params = params.to_owned();
        Ok(())
    }

    fn ensure_live(&mut self) -> Result<(), StageFailure> {
        if self.live.is_none() {
            let params = self.params.clone();
            self.live = Some(self.instantiate(&params)?);
        }
        Ok(())
    }

    fn instantiate(&mut self, params: &str) -> Result<Live, StageFailure> {
        let state = StageState::new(
            self.name.clone(),
            self.limits.memory.as_usize(),
            self.limits.max_output.as_usize(),
            &self.grants,
            None,
            Shared {
                metrics: self.metrics.clone(),
                lookups: self.lookups.clone(),
                lookup_log: self.lookup_log.clone(),
            },
        )
        .map_err(|message| StageFailure::Instantiate {
            stage: self.name.to_string(),
            message,
        })?;
        let mut store = Store::new(self.sandbox.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.limits.max_crossing.as_usize());
        arm(&mut store, &self.limits, &self.sandbox, Instant::now());
        self.stats.instantiations += 1;
        let instance = match self.pre.instance_pre().instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(classify(&self.name, &self.limits, &mut store, e)),
        };
        let instantiate_error = |e: wasmtime::Error| StageFailure::Instantiate {
            stage: self.name.to_string(),
            message: format!("{e:#}"),
        };
        let bindings = Featurizer::new(&mut store, &instance).map_err(instantiate_error)?;
        let process = instance
            .get_func(&mut store, "process")
            .ok_or_else(|| wasmtime::format_err!("the component exports no `process`"))
            .and_then(|f| f.typed::<(BatchRef<'_>,), (Result<WitBatch, WitStageError>,)>(&store))
            .map(|typed| *typed.func())
            .map_err(instantiate_error)?;
        match bindings.call_init(&mut store, params) {
            Ok(Ok(())) => Ok(Live { store, process }),
            Ok(Err(message)) => Err(StageFailure::Init {
                stage: self.name.to_string(),
                message,
            }),
            Err(e) => Err(classify(&self.name, &self.limits, &mut store, e)),
        }
    }

    fn poison(&mut self, error: wasmtime::Error) -> StageFailure {
        self.stats.traps += 1;
        let mut live = self.live.take().expect("a call needs a live instance");
        let failure = classify(&self.name, &self.limits, &mut live.store, error);
        tracing::warn!(stage = %self.name, error = %failure, "instance poisoned; the next batch gets a fresh one");
        failure
    }
}

/// Refuels the store and sets its deadlines, before every call: the epoch deadline
/// for guest code, and the instant host calls wait until, counted from `started`
/// (the caller's clock reading, so a call reads the clock no more than it did).
pub(super) fn arm(
    store: &mut Store<StageState>,
    limits: &StageLimits,
    sandbox: &Sandbox,
    started: Instant,
) {
    store
        .set_fuel(limits.fuel)
        .expect("fuel is enabled on the engine");
    // A deadline too far to represent is as good as none: a century.
    let deadline = started
        .checked_add(limits.deadline.0)
        .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 86_400));
    store.data_mut().set_deadline(deadline);
    let tick = sandbox.epoch_tick();
    let ticks = limits
        .deadline
        .0
        .as_nanos()
        .div_ceil(tick.as_nanos().max(1)) as u64;
    store.set_epoch_deadline(ticks.max(1) + 1);
}

/// Turns a wasmtime error from a call into the failure it stands for, in this
/// order: a memory growth the limiter refused; the trap codes of fuel, the
/// epoch deadline and the stack; output over its cap; a return over the
/// crossing cap; a guest panic (its message read from the call's stderr); an
/// error raised by a host function (no trap code: a refused host call); any
/// other trap, by its code's description. Each reads as one line.
pub(super) fn classify(
    stage: &str,
    limits: &StageLimits,
    store: &mut Store<StageState>,
    error: wasmtime::Error,
) -> StageFailure {
    let stage = stage.to_owned();
    let state = store.data();
    if let Some(requested) = state.limiter.refused {
        return StageFailure::Memory {
            stage,
            cap: limits.memory,
            requested: ByteSize(requested as u64),
        };
    }
    let trap = error.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => {
            return StageFailure::OutOfFuel {
                stage,
                budget: limits.fuel,
            };
        }
        Some(Trap::Interrupt) => {
            return StageFailure::Deadline {
                stage,
                deadline: limits.deadline,
            };
        }
        Some(Trap::StackOverflow) => return StageFailure::StackOverflow { stage },
        _ => {}
    }
    for console in [&state.stdout, &state.stderr] {
        if console.exceeded() {
            return StageFailure::OutputCap {
                stage,
                stream: console.name(),
                cap: ByteSize(console.cap() as u64),
            };
        }
    }
    let root = error.root_cause().to_string();
    if format!("{error:#}").contains("hostcall") {
        return StageFailure::Crossing {
            stage,
            direction: "output",
            cap: limits.max_crossing,
            size: None,
        };
    }
    if let Some((location, message)) = panic_message(&state.stderr.tail()) {
        return StageFailure::Panic {
            stage,
            location,
            message,
        };
    }
    match trap {
        None => StageFailure::HostCallRefused {
            stage,
            message: one_line(&root),
        },
        Some(t) => StageFailure::Trap {
            stage,
            message: t.to_string(),
        },
    }
}

/// The last panic a Rust guest printed in `stderr`: its location and its
/// message on one line. A Rust panic prints
/// `thread '…' panicked at src/lib.rs:7:9:`, then the message's lines, then
/// maybe a `note: run with RUST_BACKTRACE=1 …` line.
fn panic_message(stderr: &str) -> Option<(Option<String>, String)> {
    let at = stderr.rfind(" panicked at ")?;
    let rest = &stderr[at + " panicked at ".len()..];
    let (head, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let head = head.trim();
    // Older toolchains printed `panicked at 'message', src/lib.rs:7:9`.
    if let Some(quoted) = head.strip_prefix('\'') {
        let (message, location) = quoted.rsplit_once("', ").unwrap_or((quoted, ""));
        let location = (!location.is_empty()).then(|| location.to_owned());
        return Some((location, one_line(message)));
    }
    let location = head.strip_suffix(':').unwrap_or(head).to_owned();
    let message: Vec<&str> = body
        .lines()
        .take_while(|l| !l.starts_with("note: "))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = if message.is_empty() {
        "(no message)".to_owned()
    } else {
        message.join(" ")
    };
    Some((
        (!location.is_empty()).then_some(location),
        one_line(&message),
    ))
}

/// `text` on one line: its lines joined by spaces.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_read_from_stderr_as_one_line() {
        let stderr = "some log\nthread '<unnamed>' panicked at src/lib.rs:110:26:\nhostile stage\npanicked on purpose\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr),
            Some((
                Some("src/lib.rs:110:26".to_owned()),
                "hostile stage panicked on purpose".to_owned()
            ))
        );
        assert_eq!(
            panic_message("thread 'main' panicked at 'boom', src/main.rs:2:5\n"),
            Some((Some("src/main.rs:2:5".to_owned()), "boom".to_owned()))
        );
        assert_eq!(panic_message("no panic here\n"), None);
    }
}
