//! Configuration: the error every config check returns (always the key, always
//! the reason), the column types pipeline files name, and the traits a node
//! kind's configuration implements to check itself ([`SourceConfig::check`]) and
//! build the running node ([`SourceConfig::build`], given a [`BuildCx`]). Kept at
//! the bottom so operators and connectors check and build themselves without
//! depending on the spec module that aggregates them.
//!
//! ```text
//!   [sink.jsonl] ──serde──► JsonlSinkSpec ──check(key)──► ok for `weir validate`
//!                                         └─build(cx)───► SinkNode::Sync(JsonlSink)
//! ```

use super::NodeError;

/// A pipeline file is malformed or inconsistent. The spec's author is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The text is not a valid pipeline (syntax, unknown key, wrong type).
    #[error("{origin}: {location}: {}{message}", if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
    Parse {
        /// The file or source of the text.
        origin: String,
        /// The key path, e.g. `stage[0].wasm.limits.fuel`.
        key: String,
        /// Line and column.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The pipeline parses but does not make sense (a dangling input, a cycle).
    #[error("`{key}`: {message}")]
    Invalid {
        /// The key path of the offending value.
        key: String,
        /// What is wrong, and how to fix it.
        message: String,
    },
}

impl SpecError {
    /// An invalid value at `key`, with the reason.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A parse error of `text` (named `origin`) at key path `path`, with its line
    /// and column.
    pub fn from_toml(origin: &str, text: &str, path: &str, e: &toml::de::Error) -> Self {
        let location = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line} column {column}")
            }
            None => "at top level".to_owned(),
        };
        // serde_path_to_error reports `.` for the root.
        let key = if path == "." {
            String::new()
        } else {
            path.to_owned()
        };
        Self::Parse {
            origin: origin.to_owned(),
            key,
            location,
            message: e.message().trim().to_owned(),
        }
    }
}

/// The closest of `candidates` to `name`, for "did you mean" hints.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

use serde::{Deserialize, Serialize};

/// One column a source reads, and what makes a record corrupt.
///
/// A record is corrupt when a `required` field is missing or null, when a value has
/// the wrong JSON type (`"123"` or `123.0` for an integer), or when a number is
/// outside `[min, max]`. The first failing field, in schema order, is the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// The JSON key and column name.
    pub name: String,
    /// The column type.
    #[serde(rename = "type")]
    pub data_type: FieldType,
    /// A record without this field (or with null) is corrupt. Default: false.
    #[serde(default)]
    pub required: bool,
    /// Smallest allowed numeric value, inclusive. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed numeric value, inclusive. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Column types a pipeline file can name; each maps to one Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Arrow `Boolean`; JSON `true`/`false`.
    #[serde(alias = "bool")]
    Boolean,
    /// Arrow `Int32`; a JSON integer in range.
    Int32,
    /// Arrow `Int64`; a JSON integer.
    Int64,
    /// Arrow `Float32`; any JSON number.
    Float32,
    /// Arrow `Float64`; any JSON number.
    Float64,
    /// Arrow `Utf8`; a JSON string.
    #[serde(alias = "string")]
    Utf8,
    /// Arrow `Timestamp(Millisecond)`; a JSON integer of epoch milliseconds.
    TimestampMs,
}

impl FieldType {
    /// The Arrow type this maps to.
    pub fn arrow(self) -> arrow::datatypes::DataType {
        use arrow::datatypes::{DataType, TimeUnit};
        match self {
            Self::Boolean => DataType::Boolean,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Utf8 => DataType::Utf8,
            Self::TimestampMs => DataType::Timestamp(TimeUnit::Millisecond, None),
        }
    }
}

/// What building a node from its configuration may use: where it sits in the
/// pipeline file (for errors), the run's settings, its memory budget, its
/// directories, its tenant, the host's services and the clock. Built per node by
/// the plan, the same way for every kind; a config's `build` reads what it needs
/// and ignores the rest.
pub struct BuildCx<'a> {
    /// The kind table's key path (`source[0].jsonl`, `sink[1].redis`): errors name
    /// it, and a key under it is `{key}.ttl`.
    pub key: &'a str,
    /// The node's name, unique in the pipeline.
    pub name: &'a str,
    /// The pipeline's name (a namespace for keys a node writes outside the run).
    pub pipeline: &'a str,
    /// The directory relative paths resolve against: the pipeline file's.
    pub base_dir: &'a std::path::Path,
    /// Rows per batch a source produces unless its own table says otherwise
    /// (`settings.batch_rows`).
    pub batch_rows: std::num::NonZeroUsize,
    /// The run's memory budget, spill directory and memory watch: what stateful
    /// operators reserve from.
    pub memory: &'a super::memory::RunMemory,
    /// The host's data directory (dead letters, artifacts, the store).
    pub data_dir: &'a std::path::Path,
    /// The tenant the run belongs to: a namespace, with the pipeline, for
    /// anything a node keeps outside the run.
    pub tenant: &'a str,
    /// What the host offers its nodes (the sandbox, the component store, node
    /// state, client pools, the dead-letter store): a node takes what it needs
    /// with [`Services::require`](super::services::Services::require).
    pub services: &'a super::services::Services,
    /// The time, as nodes read it (tests fix it).
    pub clock: &'a std::sync::Arc<dyn super::services::Clock>,
}

impl BuildCx<'_> {
    /// `path` resolved against the pipeline file's directory (an absolute path as
    /// it is).
    pub fn resolve(&self, path: &std::path::Path) -> std::path::PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// A source ready to run, in the form it is driven in.
pub enum SourceNode {
    /// Called on the blocking pool.
    Sync(Box<dyn super::Source>),
    /// Polled on the runtime.
    Async(Box<dyn super::AsyncSource>),
}

/// An operator ready to run, in the form it is driven in.
pub enum OperatorNode {
    /// Called on the blocking pool.
    Sync(Box<dyn super::Operator>),
    /// Polled on the runtime.
    Async(Box<dyn super::AsyncOperator>),
}

impl OperatorNode {
    /// As [`Operator::output_schema`](super::Operator::output_schema), whichever
    /// form it is driven in.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming a missing column or wrong type.
    pub fn output_schema(
        &mut self,
        input: &arrow::datatypes::SchemaRef,
    ) -> Result<Option<arrow::datatypes::SchemaRef>, NodeError> {
        match self {
            Self::Sync(op) => op.output_schema(input),
            Self::Async(op) => op.output_schema(input),
        }
    }
}

/// A sink ready to run, in the form it is driven in.
pub enum SinkNode {
    /// Called on the blocking pool.
    Sync(Box<dyn super::Sink>),
    /// Polled on the runtime.
    Async(Box<dyn super::AsyncSink>),
}

/// The configuration of one source kind (a `[source.<kind>]` table): it checks
/// itself and builds the running source. Adding a source kind is a spec type
/// implementing this and one variant of the spec's `SourceKind`.
pub trait SourceConfig {
    /// Checks what serde cannot (an empty list, a rate of zero), without opening
    /// anything: `weir validate` runs it. `key` is the table's key path
    /// (`source[0].jsonl`); errors name the key under it.
    ///
    /// The default accepts everything serde accepted.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key.
    fn check(&self, key: &str) -> Result<(), SpecError> {
        let _ = key;
        Ok(())
    }

    /// The running source. Opens local files; does no network I/O (`weir
    /// validate` builds plans): a network source connects on first use.
    ///
    /// # Errors
    /// A [`NodeError`] saying why, naming the file or key.
    fn build(&self, cx: &BuildCx) -> Result<SourceNode, NodeError>;

    /// The source's own dead-letter file, if its table names one.
    ///
    /// The default is none: corrupt records go to the run's dead-letter file.
    fn rejects(&self) -> Option<&std::path::Path> {
        None
    }

    /// Whether what the source reads must be acknowledged while the run goes
    /// on: a broker bounds what a consumer holds unacknowledged (JetStream's
    /// `max_ack_pending` and `ack_wait`). An operator that holds input for as
    /// long as a key stays active ([`OperatorConfig::holds_input`]) may then
    /// only run with aligned checkpoints. Default: false (a file waits).
    fn acknowledges(&self) -> bool {
        false
    }

    /// The fields of its records, for a source whose records are JSON objects
    /// (a JSON-lines file, a JetStream subject): its dead letters keep the raw
    /// record, and a replay decodes them again with these fields, by the same
    /// parser. Default: none (its letters cannot be replayed).
    fn json_fields(&self) -> Option<&[FieldSpec]> {
        None
    }
}

/// The configuration of one operator kind (a `[stage.<kind>]` table): it checks
/// itself and builds the running operator.
pub trait OperatorConfig {
    /// Checks what serde cannot, without reading data; `key` is the table's key
    /// path (`stage[2].sort`). The default accepts everything serde accepted.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key.
    fn check(&self, key: &str) -> Result<(), SpecError> {
        let _ = key;
        Ok(())
    }

    /// The running operator; a stateful one reserves from [`BuildCx::memory`].
    ///
    /// # Errors
    /// A [`NodeError`] saying why.
    fn build(&self, cx: &BuildCx) -> Result<Box<dyn super::Operator>, NodeError>;

    /// The running operator in the form it is driven in. The default builds a
    /// synchronous one with [`build`](Self::build); an operator that waits on
    /// services returns [`OperatorNode::Async`] here.
    ///
    /// # Errors
    /// A [`NodeError`] saying why.
    fn build_node(&self, cx: &BuildCx) -> Result<OperatorNode, NodeError> {
        self.build(cx).map(OperatorNode::Sync)
    }

    /// Whether the operator processes each batch on its own, keeping nothing
    /// from one call to the next, so a failed call can be made again on part of
    /// its batch: the executor then guards it with the node's error policy
    /// (skip, fallback, bisection, see [`super::policy`]). Default: false (an
    /// operator that keeps rows, which may only fail).
    fn row_local(&self) -> bool {
        false
    }

    /// Why a failure of this operator cannot be skipped, retried or replaced
    /// row by row, for the message that refuses an `on_error` other than
    /// `fail` on a node that is not [`row_local`](Self::row_local). Default:
    /// it keeps rows across batches.
    fn unguarded_because(&self) -> &'static str {
        "keeps rows across batches, so a failed row cannot be taken out of its state"
    }

    /// Whether the operator holds rows, and so the acknowledgements of their
    /// input, for as long as their key stays active (session windows): on an
    /// unbounded input, until the run ends, unless its state is checkpointed.
    /// Default: false.
    fn holds_input(&self) -> bool {
        false
    }
}

/// The configuration of one sink kind (a `[sink.<kind>]` table): it checks itself
/// and builds the running sink.
pub trait SinkConfig {
    /// Checks what serde cannot, without opening anything; `key` is the table's
    /// key path (`sink[0].http`). The default accepts everything serde accepted.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key.
    fn check(&self, key: &str) -> Result<(), SpecError> {
        let _ = key;
        Ok(())
    }

    /// The running sink. Creates local directories; does no network I/O (`weir
    /// validate` builds plans): a network sink connects on first use.
    ///
    /// # Errors
    /// A [`NodeError`] saying why, naming the file or key.
    fn build(&self, cx: &BuildCx) -> Result<SinkNode, NodeError>;

    /// Checks the schema of what the sink will receive, when the plan is built
    /// (`weir validate` runs it): every column its table names (an entity, a
    /// partition, a message key) is in `input` and of a type it can write, so
    /// such a mistake fails before the run rather than at the first write.
    /// `key` is the table's key path (`sink[0].redis`). Called only when the
    /// plan knows the input's schema (not after a stage whose output is learned
    /// from its first batch); the sink checks its first batch as well.
    ///
    /// The default accepts any input (a sink that writes whatever it gets).
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the key and the column.
    fn check_input(&self, key: &str, input: &arrow::datatypes::Schema) -> Result<(), NodeError> {
        let _ = (key, input);
        Ok(())
    }

    /// How records replayed from the dead-letter store are added to what the
    /// sink already holds (`weir dlq replay`): a sink that writes to a service
    /// adds them as any run does; a sink that replaces its file on each run must
    /// continue after what the file holds, or refuse. `base_dir` resolves the
    /// table's paths.
    ///
    /// The default refuses: a sink kind accepts replays only once it says how.
    fn replay_into(&self, base_dir: &std::path::Path) -> ReplayInto {
        let _ = base_dir;
        ReplayInto::Refuses(
            "it writes its output anew on each run, so replayed records cannot be added to it"
                .into(),
        )
    }
}

/// How a sink takes replayed records ([`SinkConfig::replay_into`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayInto {
    /// As in any run: writes go to a service and add to what it holds (keys
    /// are overwritten, messages appended).
    Adds,
    /// Restored from this state first (as a resumed run's sink is), so the
    /// replayed records follow what its output holds now.
    Continues(String),
    /// Not at all, and why.
    Refuses(String),
}

/// The names of `schema`'s columns, `a, b, c`: what a refusal of a column lists.
pub fn column_list(schema: &arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
