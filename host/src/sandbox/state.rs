//! What a stage's `Store` holds: its WASI context (granting nothing by default), the
//! memory limiter, its stdout and stderr (bounded per call, see `console.rs`),
//! the sinks for its logs and metrics, and the current call's deadline, which
//! bounds the host calls that can wait (see `deadline.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::featurizer::weir::stage::{host, types};
use super::console::Console;
use super::limits::Grants;

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
    /// When the current call must end; set before every call.
    deadline: Instant,
}

impl StageState {
    pub(super) fn new(
        stage: Arc<str>,
        memory_cap: usize,
        output_cap: usize,
        grants: &Grants,
        base: Option<&std::path::Path>,
        metrics: Arc<Mutex<GuestMetrics>>,
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
            metrics,
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
