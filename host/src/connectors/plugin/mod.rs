//! A source written by its users: a WebAssembly component of the `connector`
//! world (`[source.plugin]`), sandboxed as a featurizer is, reading only what the
//! pipeline grants it.
//!
//! ```text
//!   [source.plugin] ──resolve (ComponentRef)──► LoadedComponent ──► ConnectorStage
//!       config (TOML → JSON) ───────────────────────────────────────► open-source(config, checkpoint?)
//!       grants.read  ──► read-only preopens, nothing else              │
//!       schema       ──► the declared columns every batch is held to   ▼
//!   executor ◄── push_at(batch, checkpoint) ◄── next-batch(max_rows) on the blocking pool
//!      │ sinks durable up to batch k ⇒ commit checkpoint k (the store)
//!      └ resumed run: seek(checkpoint k) ⇒ open-source(config, some(checkpoint k))
//! ```
//!
//! # The guarantee, and its cost
//!
//! At-least-once. The plugin's checkpoint string is the source's position: the
//! executor commits it only once every sink downstream has durably written
//! everything up to its batch (`node::ack`), and a resumed run hands the last
//! committed one back to `open-source`. What was read after it and before a crash
//! is read again, so a crash costs at most the batches in flight and not yet
//! committed (bounded by the channels and `settings.checkpoint_interval`), and
//! sinks idempotent by key make that effectively exactly-once. The plugin must
//! make its checkpoint mean "everything before this is in this or an earlier
//! batch": the host cannot check what a token means.
//!
//! Each call runs on tokio's blocking pool (a synchronous [`Source`]), with the
//! full fuel budget, a wall-clock deadline and the memory cap of its `limits`.
//! A trap (out of fuel, past its deadline, over its memory, a panic) drops the
//! instance and fails the run with a message naming the plugin and the cause; the
//! instance is not made again in the same run, since only the plugin knew where it
//! was. The plugin's own errors (`stage-error`) fail the run too: a source has no
//! records to skip to.
//!
//! The plugin sees no filesystem but the directories in `grants.read`, read-only,
//! under the path as granted (a relative one is the pipeline file's directory
//! joined with it); no network, no clock (it reads the Unix epoch), no
//! environment. A path outside its grants reads to it as a missing file, so the
//! host adds what was granted to the message of a refused `open-source`.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::node::NodeError;
use crate::node::config::{BuildCx, FieldType, SourceConfig, SourceNode, SpecError};
use crate::node::services::ComponentSource;
use crate::node::{Emitter, Source};
use crate::sandbox::{
    ComponentRef, ConnectorStage, DeclaredOutputs, Grants, OutputColumn, ResolveError, Sandbox,
    StageFailure, StageLimits,
};

#[cfg(test)]
mod tests;

/// A source plugin (`[source.plugin]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSourceSpec {
    /// A connector component file (`.wasm`), relative to the pipeline file, or a
    /// component in the store: `name@version`, `name` (its latest version) or
    /// `sha256:<hex>`, as `[stage.wasm]`'s `component`. Exactly one of
    /// `component` and `crate` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    /// A connector crate to build with `cargo build --target wasm32-wasip2` first.
    #[serde(default, rename = "crate", skip_serializing_if = "Option::is_none")]
    pub krate: Option<PathBuf>,
    /// The plugin's configuration, handed to its `open-source` as JSON text (a
    /// TOML table becomes a JSON object). Default: `{}`.
    #[serde(default = "empty_config")]
    pub config: serde_json::Value,
    /// What the plugin may read; nothing by default.
    #[serde(default)]
    pub grants: PluginGrants,
    /// Per-call limits (fuel, deadline, memory, crossing, output), as a
    /// `[stage.wasm]`'s; every key has a default.
    #[serde(default)]
    pub limits: StageLimits,
    /// Rows the plugin may return per `next-batch` call. Default: the pipeline's
    /// `settings.batch_rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<NonZeroU32>,
    /// The columns of every batch, in order: `schema = [{ name = "ip", type =
    /// "utf8" }, …]`. Known at plan time, so `weir validate` checks what follows;
    /// a batch with a column missing, of another type, or not declared fails the
    /// run naming the column. Required, at least one column.
    pub schema: Vec<PluginColumn>,
}

/// What a plugin may read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginGrants {
    /// Directories the plugin may read (never write), each seen by the plugin
    /// under the path as written here; a relative one is under the pipeline
    /// file's directory, and `"."` lets the plugin open paths relative to it.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<PathBuf>,
}

/// One column a plugin returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginColumn {
    /// The column's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub data_type: FieldType,
}

fn empty_config() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl PluginSourceSpec {
    /// Where the plugin's code comes from; `key` is the table, which errors name.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] when neither or both of `component` and `crate` are set.
    pub fn reference(&self, key: &str) -> Result<ComponentRef, SpecError> {
        ComponentRef::parse(self.component.as_deref(), self.krate.as_deref(), key)
    }

    /// The declared schema as the sandbox holds batches to it.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] at `{key}.schema` when it is empty or names a column twice.
    pub fn columns(&self, key: &str) -> Result<DeclaredOutputs, SpecError> {
        if self.schema.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.schema"),
                "declare at least one column: schema = [{ name = \"…\", type = \"utf8\" }]",
            ));
        }
        DeclaredOutputs::new(
            self.schema
                .iter()
                .map(|c| OutputColumn {
                    name: c.name.clone(),
                    data_type: c.data_type.arrow(),
                })
                .collect(),
        )
        .map_err(|e| SpecError::invalid(format!("{key}.schema"), e.to_string()))
    }

    fn grants(&self) -> Grants {
        Grants {
            clock: false,
            read_dirs: self.grants.read.clone(),
        }
    }
}

impl SourceConfig for PluginSourceSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        self.reference(key)?;
        self.columns(key)?;
        if self.limits.fuel == 0 {
            return Err(SpecError::invalid(
                format!("{key}.limits.fuel"),
                "must be greater than 0",
            ));
        }
        if self.limits.deadline.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.limits.deadline"),
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// Resolves the component (building a crate, reading the store), loads it,
    /// instantiates it with its grants and opens it from the start, so a refused
    /// configuration fails the plan, before any data flows. A resumed run opens it
    /// again at its checkpoint ([`Source::seek`]).
    fn build(&self, cx: &BuildCx) -> Result<SourceNode, NodeError> {
        let reference = self.reference(cx.key)?;
        let plugin = reference.label().unwrap_or_else(|| cx.name.to_owned());
        let failed = |failure: StageFailure| PluginFailure::wrap(&plugin, failure);
        let sandbox: Arc<Sandbox> = cx.services.require(cx.key)?;
        let components = cx.services.get::<dyn ComponentSource>();
        let component = reference
            .resolve(cx.base_dir, components.as_deref())
            .map_err(|e| resolve_error(&plugin, e))?
            .load(&sandbox)
            .map_err(|e| NodeError::Stage {
                row: None,
                transient: false,
                trap: false,
                error: Box::new(PluginFailure {
                    plugin: plugin.clone(),
                    message: e.to_string(),
                    reason: "load",
                }),
            })?;
        let mut stage = ConnectorStage::new(
            &sandbox,
            &component,
            cx.name,
            &self.config.to_string(),
            self.limits,
            self.grants(),
            Some(cx.base_dir),
            &self.columns(cx.key)?,
        )
        .map_err(failed)?;
        stage.open(None).map_err(failed)?;
        let max_rows = self.max_rows.map_or_else(
            || u32::try_from(cx.batch_rows.get()).unwrap_or(u32::MAX),
            NonZeroU32::get,
        );
        Ok(SourceNode::Sync(Box::new(PluginSource {
            plugin,
            schema: stage.schema(),
            stage,
            max_rows,
            counters: Default::default(),
        })))
    }
}

/// Runs a connector plugin as a [`Source`]; see the module docs.
pub struct PluginSource {
    plugin: String,
    stage: ConnectorStage,
    schema: SchemaRef,
    max_rows: u32,
    /// The plugin's counters as last forwarded to the run summary.
    counters: std::collections::BTreeMap<String, u64>,
}

impl PluginSource {
    /// The plugin's counters (`counter-add`) since the last call, into the run
    /// summary, each as `plugin:<name>`.
    fn forward_counters(&mut self, out: &mut Emitter) {
        for (name, total) in self.stage.guest_metrics().counters {
            let seen = self.counters.entry(name.clone()).or_default();
            if total > *seen {
                out.count(&format!("plugin:{name}"), total - *seen);
                *seen = total;
            }
        }
    }
}

impl Source for PluginSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One `next-batch` call: its batch goes out with the plugin's checkpoint
    /// as its position (a batch of no rows too: the plugin read only lines it
    /// rejected).
    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        let next = self.stage.next_batch(self.max_rows);
        self.forward_counters(out);
        match next.map_err(|f| PluginFailure::wrap(&self.plugin, f))? {
            Some((batch, checkpoint)) => {
                out.push_at(batch, Some(checkpoint));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Opens the plugin again, after `position` (its own checkpoint token).
    fn seek(&mut self, position: &str) -> Result<(), NodeError> {
        self.stage
            .open(Some(position))
            .map_err(|f| PluginFailure::wrap(&self.plugin, f))
    }
}

/// A plugin's failure, naming the plugin (its component's name) before the
/// sandbox's account of it.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {message}")]
pub struct PluginFailure {
    /// The component's name: its file stem, crate directory or store name.
    pub plugin: String,
    /// What went wrong.
    pub message: String,
    /// The cause as a stable code ([`StageFailure::reason`], or `load`, `build`).
    pub reason: &'static str,
}

impl PluginFailure {
    /// `failure` as a node's error, its fault kept (a trap, transient or not).
    fn wrap(plugin: &str, failure: StageFailure) -> NodeError {
        let (row, transient, trap) = (failure.row(), failure.is_transient(), failure.is_trap());
        NodeError::Stage {
            row,
            transient,
            trap,
            error: Box::new(Self {
                plugin: plugin.to_owned(),
                message: failure.to_string(),
                reason: failure.reason(),
            }),
        }
    }
}

/// A resolution failure as the node's: a store refusal keeps its own kind; any
/// other names the plugin.
fn resolve_error(plugin: &str, e: ResolveError) -> NodeError {
    match e {
        ResolveError::Store(e) => e,
        ResolveError::Build(e) => NodeError::Stage {
            row: None,
            transient: false,
            trap: false,
            error: Box::new(PluginFailure {
                plugin: plugin.to_owned(),
                message: e.to_string(),
                reason: "build",
            }),
        },
        other => NodeError::config(format!("plugin `{plugin}`: {other}")),
    }
}
