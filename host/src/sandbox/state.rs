//! What a stage's `Store` holds: its WASI context (granting nothing by default), the
//! memory limiter, its stdout and stderr (bounded per call, see `console.rs`),
//! the sinks for its logs and metrics, the tables it may look keys up in (see
//! `lookup.rs`), and the current call's deadline, which bounds the host calls
//! that can wait (see `deadline.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::featurizer::weir::stage::{host, lookup, types};
use super::bindings::{WitBatch, WitColumn, WitLookupError};
use super::console::Console;
use super::limits::Grants;
use super::lookup::{LookupFailure, Lookups, SharedLog};

/// Counters and gauges a stage reported through `weir:stage/host`, kept across
/// instances so a trap does not lose them.
#[derive(Debug, Default, Clone)]
pub struct GuestMetrics {
    /// Counter name → total.
    pub counters: BTreeMap<String, u64>,
    /// Gauge name → last value.
    pub gauges: BTreeMap<String, f64>,
}

pub(crate) struct StageState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) stdout: Console,
    pub(super) stderr: Console,
    stage: Arc<str>,
    metrics: Arc<Mutex<GuestMetrics>>,
    /// The tables granted to the stage, and where their counters go.
    lookups: Lookups,
    lookup_log: SharedLog,
    /// When the current call must end; set before every call.
    deadline: Instant,
}

/// The stage's sinks shared by its instances: guest metrics and the lookups'
/// log.
pub(super) struct Shared {
    pub(super) metrics: Arc<Mutex<GuestMetrics>>,
    pub(super) lookups: Lookups,
    pub(super) lookup_log: SharedLog,
}

impl StageState {
    pub(super) fn new(
        stage: Arc<str>,
        memory_cap: usize,
        output_cap: usize,
        grants: &Grants,
        base: Option<&std::path::Path>,
        shared: Shared,
    ) -> Result<Self, String> {
        let stdout = Console::new("stdout", output_cap);
        let stderr = Console::new("stderr", output_cap);
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
        if !grants.clock {
            builder.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        // The guest sees each directory under the path as granted; with a
        // `base`, a relative one is read from under it on the host (a plugin's
        // `grants.read = ["."]` is the pipeline file's directory, and the
        // plugin's relative paths resolve in it, as `wasmtime run --dir .`).
        for dir in &grants.read_dirs {
            let guest = dir.to_string_lossy().into_owned();
            let host = match base {
                Some(base) if dir.is_relative() => base.join(dir),
                _ => dir.clone(),
            };
            builder
                .preopened_dir(&host, &guest, FsPerms::ReadOnly)
                .map_err(|e| format!("cannot grant directory {}: {e:#}", host.display()))?;
        }
        Ok(Self {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: memory_cap,
                refused: None,
            },
            stdout,
            stderr,
            stage,
            metrics: shared.metrics,
            lookups: shared.lookups,
            lookup_log: shared.lookup_log,
            deadline: Instant::now(),
        })
    }

    /// Sets when the next call must end, and starts its output afresh.
    pub(super) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.stdout.begin_call();
        self.stderr.begin_call();
    }

    /// When the current call must end.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The current call's deadline and the resource table, borrowed together.
    pub(super) fn deadline_and_table(&mut self) -> (Instant, &mut ResourceTable) {
        (self.deadline, &mut self.table)
    }
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StageState {}

impl host::Host for StageState {
    fn log(&mut self, level: host::Level, message: String) {
        let stage = &*self.stage;
        match level {
            host::Level::Trace => tracing::trace!(stage, "{message}"),
            host::Level::Debug => tracing::debug!(stage, "{message}"),
            host::Level::Info => tracing::info!(stage, "{message}"),
            host::Level::Warn => tracing::warn!(stage, "{message}"),
            host::Level::Error => tracing::error!(stage, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        let mut m = self.metrics.lock().expect("metrics lock");
        *m.counters.entry(name).or_default() += delta;
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        self.metrics
            .lock()
            .expect("metrics lock")
            .gauges
            .insert(name, value);
    }
}

impl lookup::Host for StageState {
    fn lookup(
        &mut self,
        table: String,
        keys: WitColumn,
    ) -> wasmtime::Result<Result<WitBatch, WitLookupError>> {
        let Some(handle) = self.lookups.get(&table).cloned() else {
            let granted: Vec<String> = self.lookups.names().map(|n| format!("`{n}`")).collect();
            return Ok(Err(WitLookupError::UnknownTable(format!(
                "no table `{table}` is granted to stage `{}` (granted: {})",
                self.stage,
                if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(", ")
                }
            ))));
        };
        let keys = match key_array(keys) {
            Ok(k) => k,
            Err(message) => {
                return Ok(Err(WitLookupError::BadKeys(format!(
                    "table `{table}`: {message}"
                ))));
            }
        };
        let looked = super::deadline::within(self.deadline, handle.lookup(keys))?;
        let looked = match looked {
            Ok(l) => l,
            Err(LookupFailure::BadKeys(m)) => return Ok(Err(WitLookupError::BadKeys(m))),
            Err(LookupFailure::Unavailable(m)) => {
                return Ok(Err(WitLookupError::Unavailable(m)));
            }
            Err(LookupFailure::Failed(m)) => {
                return Err(wasmtime::format_err!(
                    "lookup in table `{table}` failed: {m}"
                ));
            }
        };
        self.lookup_log
            .lock()
            .expect("lookup log lock")
            .note(&table, &looked);
        let out = crate::batch::to_wit(&looked.values)
            .map_err(|e| wasmtime::format_err!("table `{table}`'s values cannot cross: {e}"))?
            .to_owned_batch();
        tracing::trace!(stage = %self.stage, table, rows = out.num_rows, "lookup served");
        Ok(Ok(out))
    }
}

/// The keys a guest sent, as one Arrow array, checked as any batch from a
/// guest is. A boolean column is refused: its bitmap does not say how many
/// rows it holds, and no table is keyed on booleans.
fn key_array(keys: WitColumn) -> Result<arrow::array::ArrayRef, String> {
    use super::bindings::ColumnValues as V;
    let rows = match &keys.values {
        V::Boolean(_) => return Err("a boolean column cannot be a key".to_owned()),
        V::Int32(v) => v.len(),
        V::Int64(v) | V::TimestampMs(v) => v.len(),
        V::Float32(v) => v.len(),
        V::Float64(v) => v.len(),
        V::Utf8(u) => u.offsets.len().saturating_sub(1),
    };
    let batch = WitBatch {
        num_rows: u32::try_from(rows).map_err(|_| "too many keys".to_owned())?,
        columns: vec![keys],
    };
    crate::batch::from_wit(batch)
        .map(|b| b.column(0).clone())
        .map_err(|e| format!("malformed keys: {e}"))
}

/// Caps a stage's linear memory, remembering a refusal so the resulting trap can be
/// reported as a memory failure rather than a generic one.
pub(super) struct MemoryLimiter {
    cap: usize,
    pub(super) refused: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            wasmtime::bail!(
                "linear memory of {desired} bytes exceeds the stage's cap of {} bytes",
                self.cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}

/// The clock of a stage that was not granted one: always the Unix epoch.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}
