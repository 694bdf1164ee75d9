//! A connector stage: a source plugin (the `connector` world), its configuration,
//! limits and grants, and its one live instance.
//!
//! ```text
//!   ConnectorStage::new ── instantiate (no call yet)
//!   open(checkpoint)  ── arm ──► open-source(config, checkpoint) ──err──► StageFailure::Open (+ grants)
//!   next_batch(max)   ── arm ──► next-batch(max-rows) ──► some(batch, checkpoint) ─► conform to the
//!                                   │                  └► none: exhausted           declared schema
//!                                   └─ trap ─► drop the Store; StageFailure names fuel/deadline/memory/panic
//! ```
//!
//! Unlike a featurizer, a connector's instance holds the reader's state (an open
//! file, an offset): a fresh instance would not know where the last one was. So a
//! trap is not retried on a new instance here; the failure goes to the source,
//! which stops the run, and the run resumes from the last *committed* checkpoint,
//! the only position known to be durable downstream.
//!
//! Every call is armed as a featurizer's is (`stage.rs`): full fuel, an epoch
//! deadline and the deadline host calls wait until; memory is capped by the
//! limiter for the instance's life. Each batch is held to the declared schema
//! (`outputs::conform`), so what leaves the plugin is what the plan said.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use wasmtime::Store;

use super::bindings::{Connector, ConnectorPre};
use super::error::{LoadError, StageFailure};
use super::limits::{Grants, StageLimits};
use super::lookup::{Lookups, SharedLog};
use super::outputs::{self, DeclaredOutputs};
use super::stage::{StageStats, arm, classify};
use super::state::{GuestMetrics, Shared, StageState};
use super::{LoadedComponent, Sandbox, World};
use crate::batch;

struct Live {
    store: Store<StageState>,
    bindings: Connector,
}

/// A source plugin ready to be opened and read. See the module docs.
pub struct ConnectorStage {
    name: Arc<str>,
    sandbox: Sandbox,
    digest: String,
    config: String,
    limits: StageLimits,
    grants: Grants,
    base: Option<PathBuf>,
    schema: SchemaRef,
    live: Option<Live>,
    stats: StageStats,
    metrics: Arc<Mutex<GuestMetrics>>,
}

impl std::fmt::Debug for ConnectorStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorStage")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ConnectorStage {
    /// Instantiates `component` as the source `name`, to be opened with `config`
    /// (JSON text), its batches held to `columns`. A relative directory in
    /// `grants` is read from under `base` (the pipeline file's directory) and
    /// seen by the plugin under the relative path as granted.
    ///
    /// # Errors
    /// [`StageFailure::Instantiate`] when the component is not a connector or
    /// cannot be instantiated (a grant names a directory that does not exist); a
    /// trap while instantiating.
    #[allow(
        clippy::too_many_arguments,
        reason = "what a plugin is given: its code, name, config, limits, grants and their base, its schema"
    )]
    pub fn new(
        sandbox: &Sandbox,
        component: &LoadedComponent,
        name: &str,
        config: &str,
        limits: StageLimits,
        grants: Grants,
        base: Option<&Path>,
        columns: &DeclaredOutputs,
    ) -> Result<Self, StageFailure> {
        let refused = |message: String| StageFailure::Instantiate {
            stage: name.to_owned(),
            message,
        };
        if component.world() != World::Connector {
            return Err(refused(format!(
                "component sha256:{} is a {}, not a connector (it must export `open-source` and `next-batch`)",
                component.digest(),
                component.world().name()
            )));
        }
        let pre = ConnectorPre::new(component.pre.clone()).map_err(|e| {
            refused(
                LoadError::WrongWorld {
                    digest: component.digest().to_owned(),
                    world: "connector",
                    message: format!("{e:#}"),
                }
                .to_string(),
            )
        })?;
        let mut stage = Self {
            name: Arc::from(name),
            sandbox: sandbox.clone(),
            digest: component.digest().to_owned(),
            config: config.to_owned(),
            limits,
            grants,
            base: base.map(Path::to_path_buf),
            schema: outputs::expected_schema(&Schema::empty(), columns),
            live: None,
            stats: StageStats::default(),
            metrics: Arc::default(),
        };
        stage.live = Some(stage.instantiate(&pre)?);
        Ok(stage)
    }

    /// The source's name in the pipeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Digest of the component it runs.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The schema of every batch it returns: the declared columns, in order.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Counters of its calls.
    pub fn stats(&self) -> &StageStats {
        &self.stats
    }

    /// What the plugin reported through its metrics import.
    pub fn guest_metrics(&self) -> GuestMetrics {
        self.metrics.lock().expect("metrics lock").clone()
    }

    /// Opens the source, from the start or after `checkpoint` (a token the plugin
    /// returned in an earlier run). Calling it again re-opens the same instance.
    ///
    /// # Errors
    /// [`StageFailure::Open`] when the plugin refuses (its message, with what it
    /// was granted); a trap variant when it traps; [`StageFailure::Instantiate`]
    /// when an earlier trap left no instance.
    pub fn open(&mut self, checkpoint: Option<&str>) -> Result<(), StageFailure> {
        let started = Instant::now();
        let live = self.live.as_mut().ok_or_else(|| no_instance(&self.name))?;
        arm(&mut live.store, &self.limits, &self.sandbox, started);
        let result = live
            .bindings
            .call_open_source(&mut live.store, &self.config, checkpoint);
        self.account(started);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StageFailure::Open {
                stage: self.name.to_string(),
                message,
                grants: describe_grants(&self.grants),
            }),
            Err(trap) => Err(self.poison(trap)),
        }
    }

    /// The next batch of at most `max_rows` rows and the checkpoint after it, or
    /// `None` when the source is exhausted.
    ///
    /// # Errors
    /// [`StageFailure::Guest`] for the plugin's own error (the instance stays);
    /// a trap variant when it traps (the instance is dropped);
    /// [`StageFailure::Batch`], [`StageFailure::TooManyRows`] or an `Output*`
    /// variant when the batch is malformed, too long or not of the declared
    /// schema.
    pub fn next_batch(
        &mut self,
        max_rows: u32,
    ) -> Result<Option<(RecordBatch, String)>, StageFailure> {
        let started = Instant::now();
        let live = self.live.as_mut().ok_or_else(|| no_instance(&self.name))?;
        arm(&mut live.store, &self.limits, &self.sandbox, started);
        let result = live.bindings.call_next_batch(&mut live.store, max_rows);
        self.account(started);
        let next = match result {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                return Err(StageFailure::Guest {
                    stage: self.name.to_string(),
                    row: e.row,
                    message: e.message,
                    transient: e.transient,
                });
            }
            Err(trap) => return Err(self.poison(trap)),
        };
        let Some(next) = next else {
            return Ok(None);
        };
        let rows = next.batch.num_rows as usize;
        if rows > max_rows as usize {
            return Err(StageFailure::TooManyRows {
                stage: self.name.to_string(),
                rows,
                max_rows,
            });
        }
        let batch = batch::from_wit(next.batch).map_err(|error| StageFailure::Batch {
            stage: self.name.to_string(),
            direction: "output",
            error,
        })?;
        let batch = outputs::conform(&self.name, &batch, &self.schema)?;
        Ok(Some((batch, next.checkpoint)))
    }

    /// Adds a finished call's fuel and time to the stats.
    fn account(&mut self, started: Instant) {
        if let Some(live) = &self.live {
            let left = live.store.get_fuel().unwrap_or(0);
            self.stats.fuel_used += self.limits.fuel.saturating_sub(left);
        }
        self.stats.calls += 1;
        self.stats.busy += started.elapsed();
    }

    fn instantiate(&mut self, pre: &ConnectorPre<StageState>) -> Result<Live, StageFailure> {
        let state = StageState::new(
            self.name.clone(),
            self.limits.memory.as_usize(),
            self.limits.max_output.as_usize(),
            &self.grants,
            self.base.as_deref(),
            // A plugin is granted no lookup tables.
            Shared {
                metrics: self.metrics.clone(),
                lookups: Lookups::default(),
                lookup_log: SharedLog::default(),
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
        match pre.instantiate(&mut store) {
            Ok(bindings) => Ok(Live { store, bindings }),
            Err(e) => Err(classify(&self.name, &self.limits, &mut store, e)),
        }
    }

    /// Drops the instance after a trap and says why it trapped.
    fn poison(&mut self, error: wasmtime::Error) -> StageFailure {
        self.stats.traps += 1;
        let mut live = self.live.take().expect("a call needs a live instance");
        let failure = classify(&self.name, &self.limits, &mut live.store, error);
        tracing::warn!(source = %self.name, error = %failure, "connector instance poisoned");
        failure
    }
}

/// The failure of a call after a trap dropped the instance.
fn no_instance(name: &str) -> StageFailure {
    StageFailure::Instantiate {
        stage: name.to_owned(),
        message:
            "its instance was dropped after a trap; the run must resume from its last checkpoint"
                .into(),
    }
}

/// What a plugin may read, for its open error: a path outside it reads to the
/// guest as a file that does not exist.
fn describe_grants(grants: &Grants) -> String {
    if grants.read_dirs.is_empty() {
        return "the plugin was granted no directories; grant one with `grants = { read = [\"dir\"] }`".into();
    }
    let dirs: Vec<String> = grants
        .read_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    format!(
        "the plugin may read only under {} (`grants.read`)",
        dirs.join(", ")
    )
}
