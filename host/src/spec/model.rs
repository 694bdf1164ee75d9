//! The pipeline file's shape, as serde reads it. Every struct refuses unknown keys;
//! every optional key documents its default and unit.
//!
//! A node is a name, its inputs and exactly one kind table, keyed by the kind's
//! name (`[source.jsonl]`, `[stage.sort]`, `[sink.http]`). Each list of kinds is
//! an enum ([`SourceKind`], [`StageKind`], [`SinkKind`]) declared with `kinds!`,
//! one variant per table; the nodes' hand-written `Deserialize` picks the variant
//! from the key, refuses a second kind table or none, and reads the table
//! through the same map so an error's path runs through it
//! (`source[0].jsonl.schema[0].type`).
//!
//! ```text
//!   [[sink]]  name, input(s)  ──►  SinkSpec { name, input, inputs, kind }
//!   [sink.http] …             ──►  SinkKind::Http(HttpSinkSpec)
//!                                    └─ config(): &dyn SinkConfig → check(key), build(cx)
//! ```
//!
//! # Adding a kind
//!
//! 1. In the connector's or operator's own file: its spec struct (serde,
//!    `#[serde(deny_unknown_fields)]`, every optional key with its default and
//!    unit) and an impl of [`SourceConfig`], [`OperatorConfig`] or [`SinkConfig`]
//!    for it: `check` refuses what serde cannot, naming the key under the one it
//!    is given; `build` makes the running node from a
//!    [`BuildCx`](crate::node::config::BuildCx).
//! 2. One variant in the enum below, with its table name and a doc line.
//!
//! Validation, planning, the store and the HTTP API then take it as they take
//! every other kind: nothing else names kinds. A kind that needs the host's
//! services (the sandbox, the component store) takes them from
//! [`BuildCx::services`](crate::node::config::BuildCx::services), as the
//! WebAssembly stage does.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::node::config::{OperatorConfig, SinkConfig, SourceConfig, closest};
use crate::node::policy::{BreakerSpec, FallbackSpec, NodePolicy, OnError};

use crate::units::ByteSize;

pub use crate::connectors::{JsonlSinkSpec, JsonlSourceSpec};
pub use crate::node::config::{FieldSpec, FieldType};
pub use crate::ops::wasm::{OutputSpec, WasmStageSpec};

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
    /// What the run does when its tenant's dead-letter store is full:
    /// `backpressure` (sources pause until letters are replayed or purged; the
    /// summary counts `dead_letters_full_ms`) or `stop` (the run fails naming
    /// the store and its limit; the letters that did not fit are not committed,
    /// so a resumed run reads them again). Either way no letter is dropped.
    /// Default: `backpressure`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub dead_letters_when_full: crate::node::WhenFull,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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
            dead_letters_when_full: crate::node::WhenFull::default(),
        }
    }
}

/// Declares one list of node kinds: the enum (a variant per kind, keyed by its
/// TOML table name), [`table`](SourceKind::table), `TABLES`, `config` (the kind's
/// configuration as the trait that checks and builds it) and the two halves of
/// (de)serializing the kind table inside its node's map.
///
/// A kind followed by `if "feature"` exists only when weir-host is built with
/// that Cargo feature; without it its table name stays known, and a pipeline
/// naming it is refused with the kind and the feature to enable.
macro_rules! kinds {
    (
        $(#[$meta:meta])*
        pub enum $kind:ident: $config:ident {
            $( $(#[$vmeta:meta])* $variant:ident($spec:ty) = $table:literal $(if $feature:literal)?, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $kind {
            $( $(#[$vmeta])* $(#[cfg(feature = $feature)])? $variant($spec), )+
        }

        impl $kind {
            /// Every kind's table name, in declaration order.
            pub const TABLES: &'static [&'static str] = &[$($table),+];

            /// The kind's table name (`jsonl` for `[source.jsonl]`).
            pub fn table(&self) -> &'static str {
                match self {
                    $( $(#[cfg(feature = $feature)])? Self::$variant(_) => $table, )+
                }
            }

            /// The kind's configuration, as the trait that checks and builds it.
            pub fn config(&self) -> &dyn $config {
                match self {
                    $( $(#[cfg(feature = $feature)])? Self::$variant(c) => c, )+
                }
            }

            /// Reads the value of the kind table `table` (one of [`Self::TABLES`])
            /// from `map`, whose last key was `table`.
            fn next_value<'de, A: MapAccess<'de>>(
                table: &str,
                map: &mut A,
            ) -> Result<Self, A::Error> {
                match table {
                    $( $(#[cfg(feature = $feature)])? $table => map.next_value().map(Self::$variant), )+
                    $($( #[cfg(not(feature = $feature))] $table => Err(de::Error::custom(
                        disabled_kind($table, $feature),
                    )), )?)+
                    other => Err(de::Error::custom(format!("`{other}` is not a kind table"))),
                }
            }

            /// Writes the kind table as one entry of its node's map.
            fn serialize_entry<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
                match self {
                    $( $(#[cfg(feature = $feature)])? Self::$variant(c) => map.serialize_entry($table, c), )+
                }
            }
        }
    };
}

/// The refusal of a kind table whose connector this build left out.
#[cfg_attr(
    all(
        feature = "nats",
        feature = "redis",
        feature = "parquet",
        feature = "csv",
        feature = "http"
    ),
    expect(dead_code)
)]
fn disabled_kind(table: &str, feature: &str) -> String {
    format!(
        "kind `{table}` is not in this build of weir: rebuild weir-host with the Cargo \
         feature `{feature}` (`cargo build --features {feature}`)"
    )
}

kinds! {
    /// What a source reads: one variant per `[source.<kind>]` table.
    pub enum SourceKind: SourceConfig {
        /// A JSON-lines file (`[source.jsonl]`).
        Jsonl(JsonlSourceSpec) = "jsonl",
        /// A generator of numbered records (`[source.sequence]`).
        Sequence(crate::connectors::SequenceSourceSpec) = "sequence",
        /// A WebAssembly connector plugin with granted capabilities (`[source.plugin]`).
        Plugin(crate::connectors::PluginSourceSpec) = "plugin",
        /// Parquet files: a file, a glob or a directory (`[source.parquet]`).
        Parquet(crate::connectors::ParquetSourceSpec) = "parquet" if "parquet",
        /// CSV files with a typed schema (`[source.csv]`).
        Csv(crate::connectors::CsvSourceSpec) = "csv" if "csv",
        /// A durable pull consumer on a NATS JetStream stream (`[source.jetstream]`).
        Jetstream(crate::connectors::jetstream::JetStreamSourceSpec) = "jetstream" if "nats",
        /// A PostgreSQL query or table, once or incrementally (`[source.postgres]`).
        Postgres(crate::connectors::postgres::PostgresSourceSpec) = "postgres" if "postgres",
    }
}

kinds! {
    /// What a stage does: one variant per `[stage.<kind>]` table; every kind
    /// builds through [`OperatorConfig`].
    pub enum StageKind: OperatorConfig {
        /// A WebAssembly featurizer (`[stage.wasm]`).
        Wasm(WasmStageSpec) = "wasm",
        /// Per-record feature transforms (`[stage.map]`).
        Map(crate::ops::MapSpec) = "map",
        /// Keep rows matching predicates (`[stage.filter]`).
        Filter(crate::ops::FilterSpec) = "filter",
        /// Regroup into batches of bounded rows and bytes (`[stage.batch]`).
        Batch(crate::ops::BatchSpec) = "batch",
        /// Stratified, seeded sampling (`[stage.sample]`).
        Sample(crate::ops::SampleSpec) = "sample",
        /// Train/validation/test assignment by key hash (`[stage.split]`).
        Split(crate::ops::SplitSpec) = "split",
        /// A stable sort, external past the memory budget (`[stage.sort]`).
        Sort(super::SortSpec) = "sort",
        /// Hash aggregation by key (`[stage.group]`).
        Group(super::GroupSpec) = "group",
        /// Session windows per key on event time (`[stage.session]`).
        Session(super::SessionSpec) = "session",
        /// Columns looked up by key in a cached table (`[stage.lookup]`).
        Lookup(crate::connectors::lookup::LookupSpec) = "lookup",
    }
}

kinds! {
    /// Where a sink writes: one variant per `[sink.<kind>]` table.
    pub enum SinkKind: SinkConfig {
        /// A JSON-lines file (`[sink.jsonl]`).
        Jsonl(JsonlSinkSpec) = "jsonl",
        /// Feature vectors as a JSON-lines file (`[sink.vectors]`).
        Vectors(crate::connectors::VectorsSinkSpec) = "vectors",
        /// Feature vectors POSTed to a model server (`[sink.http]`).
        Http(crate::connectors::HttpSinkSpec) = "http" if "http",
        /// A Parquet file, or Hive-style partitions of one (`[sink.parquet]`).
        Parquet(crate::connectors::ParquetSinkSpec) = "parquet" if "parquet",
        /// A CSV file (`[sink.csv]`).
        Csv(crate::connectors::CsvSinkSpec) = "csv" if "csv",
        /// Feature vectors in Redis, the online store model serving reads (`[sink.redis]`).
        Redis(crate::connectors::RedisSinkSpec) = "redis" if "redis",
        /// Rows published to NATS JetStream (`[sink.jetstream]`).
        Jetstream(crate::connectors::jetstream::JetStreamSinkSpec) = "jetstream" if "nats",
    }
}

/// One source (`[[source]]`): a name and exactly one kind table.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// Unique among all nodes.
    pub name: String,
    /// What it reads: its one kind table.
    pub kind: SourceKind,
}

impl SourceSpec {
    /// The source's own dead-letter file, if it names one.
    pub fn rejects(&self) -> Option<&Path> {
        self.kind.config().rejects()
    }

    /// Its `[source.jsonl]` table, if it is a JSON-lines source.
    pub fn jsonl(&self) -> Option<&JsonlSourceSpec> {
        match &self.kind {
            SourceKind::Jsonl(j) => Some(j),
            _ => None,
        }
    }

    /// Its `[source.plugin]` table, to change, if it is a source plugin.
    pub fn plugin_mut(&mut self) -> Option<&mut crate::connectors::PluginSourceSpec> {
        match &mut self.kind {
            SourceKind::Plugin(p) => Some(p),
            _ => None,
        }
    }

    /// Its `[source.jsonl]` table, to change, if it is a JSON-lines source.
    pub fn jsonl_mut(&mut self) -> Option<&mut JsonlSourceSpec> {
        match &mut self.kind {
            SourceKind::Jsonl(j) => Some(j),
            _ => None,
        }
    }
}

/// One stage (`[[stage]]`): a name, its inputs and exactly one kind table.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// Unique among all nodes.
    pub name: String,
    /// The single upstream node.
    pub input: Option<String>,
    /// Several upstream nodes.
    pub inputs: Option<Vec<String>>,
    /// What it does: its one kind table.
    pub kind: StageKind,
    /// Its error handling: `on_error`, `fallback` and `breaker` (see
    /// [`crate::node::policy`]); empty: the kind's defaults.
    pub policy: NodePolicy,
}

impl StageSpec {
    /// Its `[stage.wasm]` table, if it is a WebAssembly stage.
    pub fn wasm(&self) -> Option<&WasmStageSpec> {
        match &self.kind {
            StageKind::Wasm(w) => Some(w),
            _ => None,
        }
    }

    /// Its `[stage.wasm]` table, to change, if it is a WebAssembly stage.
    pub fn wasm_mut(&mut self) -> Option<&mut WasmStageSpec> {
        match &mut self.kind {
            StageKind::Wasm(w) => Some(w),
            _ => None,
        }
    }
}

/// One sink (`[[sink]]`): a name, its inputs and exactly one kind table.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// Unique among all nodes.
    pub name: String,
    /// The single upstream node.
    pub input: Option<String>,
    /// Several upstream nodes.
    pub inputs: Option<Vec<String>>,
    /// Where it writes: its one kind table.
    pub kind: SinkKind,
    /// Its error handling: `on_error` (see [`crate::node::policy`]); empty:
    /// the defaults.
    pub policy: NodePolicy,
}

impl SinkSpec {
    /// Its `[sink.jsonl]` table, to change, if it is a JSON-lines sink.
    pub fn jsonl_mut(&mut self) -> Option<&mut JsonlSinkSpec> {
        match &mut self.kind {
            SinkKind::Jsonl(j) => Some(j),
            _ => None,
        }
    }
}

/// A node's keys besides its kind table.
enum NodeKey {
    Name,
    Input,
    Inputs,
    OnError,
    Fallback,
    Breaker,
    Kind(&'static str),
}

/// Which of the policy keys a node type takes: stages all three, sinks
/// `on_error`, sources none (a source dead-letters corrupt records itself).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PolicyKeys {
    None,
    OnError,
    All,
}

impl PolicyKeys {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Self::None => &[],
            Self::OnError => &["on_error"],
            Self::All => &["on_error", "fallback", "breaker"],
        }
    }
}

/// Reads one key of a node's map: `name`, `input`/`inputs` where the node has
/// inputs, or one of `tables`. An unknown key is refused here, while the key is
/// being read, so the error's path names it (`stage[0].other`).
struct NodeKeySeed {
    tables: &'static [&'static str],
    has_inputs: bool,
    policy: PolicyKeys,
}

impl NodeKeySeed {
    fn fields(&self) -> Vec<&'static str> {
        let own: &[&'static str] = if self.has_inputs {
            &["name", "input", "inputs"]
        } else {
            &["name"]
        };
        own.iter()
            .chain(self.policy.keys())
            .chain(self.tables)
            .copied()
            .collect()
    }
}

impl<'de> de::DeserializeSeed<'de> for NodeKeySeed {
    type Value = NodeKey;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<NodeKey, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> de::Visitor<'de> for NodeKeySeed {
    type Value = NodeKey;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a node's key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeKey, E> {
        match v {
            "name" => return Ok(NodeKey::Name),
            "input" if self.has_inputs => return Ok(NodeKey::Input),
            "inputs" if self.has_inputs => return Ok(NodeKey::Inputs),
            v if matches!(
                (self.policy, v),
                (PolicyKeys::All, "on_error" | "fallback" | "breaker")
                    | (PolicyKeys::OnError, "on_error")
            ) =>
            {
                return Ok(match v {
                    "on_error" => NodeKey::OnError,
                    "fallback" => NodeKey::Fallback,
                    _ => NodeKey::Breaker,
                });
            }
            _ => {}
        }
        if let Some(t) = self.tables.iter().find(|t| **t == v) {
            return Ok(NodeKey::Kind(t));
        }
        let fields = self.fields();
        let hint = closest(v, fields.iter().copied())
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        let all: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
        Err(E::custom(format!(
            "unknown field `{v}`, expected one of {}{hint}",
            all.join(", ")
        )))
    }
}

/// A node's map as read: its name, inputs and kind.
struct NodeParts<K> {
    name: String,
    input: Option<String>,
    inputs: Option<Vec<String>>,
    kind: K,
    policy: NodePolicy,
}

/// Reads a node's map: `name`, `input`/`inputs` if `has_inputs`, and exactly one
/// of `tables`, whose value `read` deserializes (through `map`, so error paths
/// run through the kind table: `source[0].jsonl.schema[0].type`).
fn read_node<'de, A, K>(
    mut map: A,
    tables: &'static [&'static str],
    has_inputs: bool,
    policy_keys: PolicyKeys,
    read: fn(&str, &mut A) -> Result<K, A::Error>,
) -> Result<NodeParts<K>, A::Error>
where
    A: MapAccess<'de>,
{
    let (mut name, mut input, mut inputs) = (None, None, None);
    let mut kind: Option<(&str, K)> = None;
    let mut extra: Vec<&str> = Vec::new();
    let mut policy = NodePolicy::default();
    while let Some(key) = map.next_key_seed(NodeKeySeed {
        tables,
        has_inputs,
        policy: policy_keys,
    })? {
        match key {
            NodeKey::OnError => {
                if policy.on_error.is_some() {
                    return Err(de::Error::duplicate_field("on_error"));
                }
                policy.on_error = Some(map.next_value::<OnError>()?);
            }
            NodeKey::Fallback => {
                if policy.fallback.is_some() {
                    return Err(de::Error::duplicate_field("fallback"));
                }
                policy.fallback = Some(map.next_value::<FallbackSpec>()?);
            }
            NodeKey::Breaker => {
                if policy.breaker.is_some() {
                    return Err(de::Error::duplicate_field("breaker"));
                }
                policy.breaker = Some(map.next_value::<BreakerSpec>()?);
            }
            NodeKey::Name => {
                if name.is_some() {
                    return Err(de::Error::duplicate_field("name"));
                }
                name = Some(map.next_value::<String>()?);
            }
            NodeKey::Input => {
                if input.is_some() {
                    return Err(de::Error::duplicate_field("input"));
                }
                input = Some(map.next_value::<Option<String>>()?);
            }
            NodeKey::Inputs => {
                if inputs.is_some() {
                    return Err(de::Error::duplicate_field("inputs"));
                }
                inputs = Some(map.next_value::<Option<Vec<String>>>()?);
            }
            NodeKey::Kind(table) => {
                if kind.as_ref().is_some_and(|(t, _)| *t == table) || extra.contains(&table) {
                    return Err(de::Error::duplicate_field(table));
                }
                if kind.is_some() {
                    // Read past it, to name every kind table in the error.
                    map.next_value::<de::IgnoredAny>()?;
                    extra.push(table);
                } else {
                    kind = Some((table, read(table, &mut map)?));
                }
            }
        }
    }
    let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
    let Some((first, kind)) = kind else {
        let all: Vec<String> = tables.iter().map(|t| format!("`{t}`")).collect();
        return Err(de::Error::custom(format!(
            "needs one kind table: one of {}",
            all.join(", ")
        )));
    };
    if !extra.is_empty() {
        let set: Vec<String> = std::iter::once(first)
            .chain(extra.iter().copied())
            .map(|t| format!("`{t}`"))
            .collect();
        return Err(de::Error::custom(format!(
            "has {} kind tables ({}); keep exactly one",
            set.len(),
            set.join(", ")
        )));
    }
    Ok(NodeParts {
        name,
        input: input.flatten(),
        inputs: inputs.flatten(),
        kind,
        policy,
    })
}

/// The visitor of one node type's map.
struct NodeVisitor<T>(std::marker::PhantomData<T>);

impl<'de> de::Visitor<'de> for NodeVisitor<SourceSpec> {
    type Value = SourceSpec;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a [[source]] table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SourceSpec, A::Error> {
        let n = read_node(
            map,
            SourceKind::TABLES,
            false,
            PolicyKeys::None,
            SourceKind::next_value,
        )?;
        Ok(SourceSpec {
            name: n.name,
            kind: n.kind,
        })
    }
}

impl<'de> de::Visitor<'de> for NodeVisitor<StageSpec> {
    type Value = StageSpec;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a [[stage]] table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StageSpec, A::Error> {
        let n = read_node(
            map,
            StageKind::TABLES,
            true,
            PolicyKeys::All,
            StageKind::next_value,
        )?;
        Ok(StageSpec {
            name: n.name,
            input: n.input,
            inputs: n.inputs,
            kind: n.kind,
            policy: n.policy,
        })
    }
}

impl<'de> de::Visitor<'de> for NodeVisitor<SinkSpec> {
    type Value = SinkSpec;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a [[sink]] table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SinkSpec, A::Error> {
        let n = read_node(
            map,
            SinkKind::TABLES,
            true,
            PolicyKeys::OnError,
            SinkKind::next_value,
        )?;
        Ok(SinkSpec {
            name: n.name,
            input: n.input,
            inputs: n.inputs,
            kind: n.kind,
            policy: n.policy,
        })
    }
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(NodeVisitor::<Self>(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for StageSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(NodeVisitor::<Self>(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for SinkSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(NodeVisitor::<Self>(std::marker::PhantomData))
    }
}

/// Writes a node as it is read: `name`, `input`/`inputs` when set, then the kind
/// table.
fn write_node<S: Serializer>(
    s: S,
    name: &str,
    input: Option<&String>,
    inputs: Option<&Vec<String>>,
    policy: Option<&NodePolicy>,
    kind: impl FnOnce(&mut S::SerializeMap) -> Result<(), S::Error>,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(None)?;
    map.serialize_entry("name", name)?;
    if let Some(i) = input {
        map.serialize_entry("input", i)?;
    }
    if let Some(i) = inputs {
        map.serialize_entry("inputs", i)?;
    }
    if let Some(p) = policy {
        if let Some(o) = &p.on_error {
            map.serialize_entry("on_error", o)?;
        }
        if let Some(f) = &p.fallback {
            map.serialize_entry("fallback", f)?;
        }
        if let Some(b) = &p.breaker {
            map.serialize_entry("breaker", b)?;
        }
    }
    kind(&mut map)?;
    map.end()
}

impl Serialize for SourceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_node(s, &self.name, None, None, None, |m| {
            self.kind.serialize_entry(m)
        })
    }
}

impl Serialize for StageSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_node(
            s,
            &self.name,
            self.input.as_ref(),
            self.inputs.as_ref(),
            Some(&self.policy),
            |m| self.kind.serialize_entry(m),
        )
    }
}

impl Serialize for SinkSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_node(
            s,
            &self.name,
            self.input.as_ref(),
            self.inputs.as_ref(),
            Some(&self.policy),
            |m| self.kind.serialize_entry(m),
        )
    }
}
