//! The pipeline file's shape, as serde reads it. Every struct refuses unknown keys;
//! every optional key documents its default and unit.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sandbox::{DeclaredOutputs, Grants, OutputColumn, OutputSchemaError, StageLimits};
use crate::units::ByteSize;

pub use crate::connectors::{JsonlSinkSpec, JsonlSourceSpec};
pub use crate::node::config::{FieldSpec, FieldType};

/// A whole pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The pipeline's name: unique per host, used in lineage and the store.
    pub name: String,
    /// Free text for people reading `weir pipeline history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Run-wide settings.
    #[serde(default)]
    pub settings: Settings,
    /// Sub-pipelines inlined into this one (`[[use]]`); empty once read with
    /// [`PipelineSpec::from_file`] or planned (see [`crate::spec::UseSpec`]).
    #[serde(default, rename = "use", skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<super::UseSpec>,
    /// Where data comes from (`[[source]]`).
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceSpec>,
    /// What is done to it (`[[stage]]`).
    #[serde(default, rename = "stage")]
    pub stages: Vec<StageSpec>,
    /// Where it goes (`[[sink]]`).
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkSpec>,
    /// The directory relative paths resolve against: the file's directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl PipelineSpec {
    /// `path` resolved against the pipeline file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Run-wide settings (`[settings]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Batches a channel between two nodes holds before the sender waits.
    /// Default: 8 ([`default_channel_batches`]).
    #[serde(default = "default_channel_batches")]
    pub channel_batches: NonZeroUsize,
    /// Bytes (Arrow memory) a channel holds before the sender waits. A single batch
    /// larger than this still passes, alone. Default: 64 MiB ([`default_channel_bytes`]).
    #[serde(default = "default_channel_bytes")]
    pub channel_bytes: ByteSize,
    /// Rows per batch that sources produce unless they say otherwise.
    /// Default: 4096 ([`default_batch_rows`]).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: NonZeroUsize,
    /// The run's memory budget: what stateful operators (sort, group, session) may
    /// hold at once. Over it, sort and group spill to disk; session windows fail
    /// naming the operator. Default: 256 MiB ([`default_memory`]).
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// When the node's available memory falls under this, sources pause until it
    /// recovers (the run summary counts `memory_paused_ms`). `0` disables the
    /// watch. Default: 64 MiB ([`default_memory_floor`]).
    #[serde(default = "default_memory_floor")]
    pub memory_floor: ByteSize,
    /// How often sinks are flushed to durability and the run's checkpoint is
    /// written (stored pipelines). Shorter replays less after a crash; longer
    /// syncs less. Default: 1 s ([`default_checkpoint_interval`]).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: crate::units::Millis,
}

/// Default checkpoint interval: 1 s.
pub fn default_checkpoint_interval() -> crate::units::Millis {
    crate::units::Millis(std::time::Duration::from_secs(1))
}

/// Default run memory budget: 256 MiB.
pub fn default_memory() -> ByteSize {
    ByteSize::mib(256)
}

/// Default available-memory floor: 64 MiB.
pub fn default_memory_floor() -> ByteSize {
    ByteSize::mib(64)
}

/// Default batches per channel: 8.
pub fn default_channel_batches() -> NonZeroUsize {
    NonZeroUsize::new(8).expect("non-zero")
}

/// Default bytes per channel: 64 MiB.
pub fn default_channel_bytes() -> ByteSize {
    ByteSize::mib(64)
}

/// Default rows per source batch: 4096.
pub fn default_batch_rows() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("non-zero")
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            channel_batches: default_channel_batches(),
            channel_bytes: default_channel_bytes(),
            batch_rows: default_batch_rows(),
            memory: default_memory(),
            memory_floor: default_memory_floor(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

/// One source (`[[source]]`): a name and exactly one kind table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique among all nodes.
    pub name: String,
    /// A JSON-lines file (`[source.jsonl]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<JsonlSourceSpec>,
    /// A generator of numbered records (`[source.sequence]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<crate::connectors::SequenceSourceSpec>,
}

impl SourceSpec {
    /// The source's own dead-letter file, if it names one.
    pub fn rejects(&self) -> Option<&Path> {
        self.jsonl.as_ref()?.rejects.as_deref()
    }
}

/// One stage (`[[stage]]`): a name, its inputs and exactly one kind table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Unique among all nodes.
    pub name: String,
    /// The single upstream node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Several upstream nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// A WebAssembly featurizer (`[stage.wasm]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmStageSpec>,
    /// Per-record feature transforms (`[stage.map]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<crate::ops::MapSpec>,
    /// Keep rows matching predicates (`[stage.filter]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::ops::FilterSpec>,
    /// Regroup into batches of bounded rows and bytes (`[stage.batch]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::ops::BatchSpec>,
    /// Stratified, seeded sampling (`[stage.sample]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<crate::ops::SampleSpec>,
    /// Train/validation/test assignment by key hash (`[stage.split]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::ops::SplitSpec>,
    /// A stable sort, external past the memory budget (`[stage.sort]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<super::SortSpec>,
    /// Hash aggregation by key (`[stage.group]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<super::GroupSpec>,
    /// Session windows per key on event time (`[stage.session]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<super::SessionSpec>,
}

/// A WebAssembly featurizer stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmStageSpec {
    /// A component file (`.wasm`), relative to the pipeline file, or a component
    /// in the store: `name@version`, `name` (its latest version) or
    /// `sha256:<hex>`. A value ending in `.wasm`/`.wat` or containing `/` is a
    /// file. Exactly one of `component` and `crate` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    /// A stage crate to build with `cargo build --target wasm32-wasip2` first.
    #[serde(default, rename = "crate", skip_serializing_if = "Option::is_none")]
    pub krate: Option<PathBuf>,
    /// Parameters handed to the stage's `init` as JSON. Default: `{}`.
    #[serde(default = "empty_params")]
    pub params: serde_json::Value,
    /// Send only these columns into the stage and merge what it returns back into
    /// the full batch (it must then keep every row). Default: send every column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Per-call limits; every key has a default.
    #[serde(default)]
    pub limits: StageLimits,
    /// Capabilities; all denied by default.
    #[serde(default)]
    pub grants: Grants,
    /// A candidate version run beside this one on the same batches, its output
    /// compared and discarded (`[stage.wasm.shadow]`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::ops::wasm::shadow::ShadowSpec>,
    /// The stage drops rows. A filter returns every row plus a boolean column
    /// `_keep`: the host keeps the rows where it is true, drops those where it is
    /// false or null (counted as `filtered` in the run summary) and removes the
    /// column. Default: false, a featurizer, which must return exactly one row per
    /// input row.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub filter: bool,
    /// The columns the stage returns, with their types:
    /// `outputs = [{ name = "price_bucket", type = "int32" }]`. The stage's output
    /// is then its input's columns with each declared one replacing the same-named
    /// column or appended ([`crate::sandbox::output_schema`]), and every batch it
    /// returns is checked against that: a declared column missing or of another
    /// type, or a column outside it, fails the run naming the column. Default:
    /// none, and the output is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputSpec>,
}

/// One column a WebAssembly stage declares it returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The column's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub data_type: FieldType,
}

impl WasmStageSpec {
    /// The declared [`outputs`](Self::outputs), checked, as the sandbox takes them.
    ///
    /// # Errors
    /// [`OutputSchemaError`] for a column declared twice or named `_keep`.
    pub fn declared_outputs(&self) -> Result<DeclaredOutputs, OutputSchemaError> {
        DeclaredOutputs::new(
            self.outputs
                .iter()
                .map(|o| OutputColumn {
                    name: o.name.clone(),
                    data_type: o.data_type.arrow(),
                })
                .collect(),
        )
    }
}

fn empty_params() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// One sink (`[[sink]]`): a name, its inputs and exactly one kind table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Unique among all nodes.
    pub name: String,
    /// The single upstream node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Several upstream nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// A JSON-lines file (`[sink.jsonl]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<JsonlSinkSpec>,
    /// Feature vectors as a JSON-lines file (`[sink.vectors]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<crate::connectors::VectorsSinkSpec>,
    /// Feature vectors POSTed to a model server (`[sink.http]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::connectors::HttpSinkSpec>,
}
