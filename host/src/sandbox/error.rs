//! What can go wrong in the sandbox, kept in two enums by *when* it happens.
//!
//! [`LoadError`] is raised while a component is admitted (compiled, checked against
//! the contract, linked): the component or its grant is at fault and nothing ran.
//! [`StageFailure`] is raised by a call into a running stage and says whose fault it
//! is: the guest's own `stage-error` result (the instance stays usable) is kept
//! apart from traps (fuel, deadline, memory, stack, panic, a host call, output),
//! after which the instance is thrown away. Every trap reads as one line naming
//! its cause, never a bare backtrace, and [`StageFailure::reason`] gives the
//! cause as a stable code for dead letters and breakers. A stage that runs but breaks its output contract (a featurizer
//! dropping rows, a declared column missing or mistyped) fails without a trap: its
//! instance stays.
//!
//! Each message is complete on its own and no variant also returns its cause as
//! [`std::error::Error::source`]: a caller printing the chain (`{e:#}` with anyhow)
//! shows every cause once.

use arrow::datatypes::DataType;

use crate::batch::BatchError;
use crate::units::{ByteSize, Millis};

/// A component could not be admitted into the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the component file failed.
    #[error("cannot read component {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The bytes are not WebAssembly: they lack the `\0asm` magic. Only a file
    /// named `*.wat` is read as WebAssembly text.
    #[error(
        "{name} is not a WebAssembly component: it does not begin with the bytes `\\0asm` (only a file named *.wat is read as text)"
    )]
    NotWasm {
        /// The file, or `sha256:<digest>` for bytes from the store.
        name: String,
    },
    /// The bytes begin as WebAssembly but end inside a section.
    #[error("{name} is a truncated WebAssembly component: it ends after {size} bytes")]
    Truncated {
        /// The file, or `sha256:<digest>` for bytes from the store.
        name: String,
        /// Its length in bytes.
        size: usize,
    },
    /// The bytes are not a valid WebAssembly component, or failed to compile.
    #[error("invalid component {digest}: {message}")]
    Invalid {
        /// sha256 of the component bytes.
        digest: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component imports an interface the host does not grant to stages.
    #[error(
        "component {digest} imports `{import}`, which is not granted to stages (granted: {granted})"
    )]
    ImportNotGranted {
        /// sha256 of the component bytes.
        digest: String,
        /// The import's name as the component spells it.
        import: String,
        /// The interfaces the host grants.
        granted: String,
    },
    /// The component does not implement the expected world.
    #[error("component {digest} is not a weir `{world}`: {message}")]
    WrongWorld {
        /// sha256 of the component bytes.
        digest: String,
        /// The world that was expected.
        world: &'static str,
        /// What is missing or mistyped.
        message: String,
    },
    /// The sandbox itself could not be set up (engine, cache directory).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}

/// A call into a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageFailure {
    /// The stage returned its own error (`stage-error`): the instance stays usable.
    #[error("stage `{stage}` failed{}: {message}{}", row.map(|r| format!(" at row {r}")).unwrap_or_default(), if *transient { " (transient)" } else { "" })]
    Guest {
        /// The stage's name in the pipeline.
        stage: String,
        /// The input row at fault, if the stage named one.
        row: Option<u32>,
        /// The stage's message.
        message: String,
        /// Whether retrying may succeed.
        transient: bool,
    },
    /// `init` refused the parameters.
    #[error("stage `{stage}` refused its parameters: {message}")]
    Init {
        /// The stage's name.
        stage: String,
        /// The stage's message.
        message: String,
    },
    /// A connector's `open-source` refused its configuration or checkpoint
    /// (the file it names cannot be opened, a key is wrong). The message adds
    /// what the plugin was granted, since a path outside its grants reads to
    /// the guest as a missing file.
    #[error("connector `{stage}` could not open its source: {message} ({grants})")]
    Open {
        /// The source's name.
        stage: String,
        /// The plugin's message.
        message: String,
        /// What it may read: `granted read-only: /data/logs` or `granted no directories`.
        grants: String,
    },
    /// A connector returned more rows than the `max-rows` it was asked for.
    #[error("connector `{stage}` returned {rows} rows when asked for at most {max_rows}")]
    TooManyRows {
        /// The source's name.
        stage: String,
        /// Rows it returned.
        rows: usize,
        /// The `max-rows` of the call.
        max_rows: u32,
    },
    /// The call used up its fuel budget (a deterministic CPU cap).
    #[error("stage `{stage}` ran out of fuel (budget {budget} per call)")]
    OutOfFuel {
        /// The stage's name.
        stage: String,
        /// The fuel budget per call.
        budget: u64,
    },
    /// The call ran past its wall-clock deadline.
    #[error("stage `{stage}` exceeded its deadline of {deadline}")]
    Deadline {
        /// The stage's name.
        stage: String,
        /// The deadline per call.
        deadline: Millis,
    },
    /// The stage tried to grow its linear memory past its cap.
    #[error("stage `{stage}` exceeded its memory cap of {cap} (asked for {requested})")]
    Memory {
        /// The stage's name.
        stage: String,
        /// The cap.
        cap: ByteSize,
        /// The size it tried to grow to.
        requested: ByteSize,
    },
    /// More bytes tried to cross the boundary in one call than the stage may move.
    #[error("stage `{stage}`: {direction} batch exceeds the crossing cap of {cap}{}", size.map(|s| format!(" ({s})")).unwrap_or_default())]
    Crossing {
        /// The stage's name.
        stage: String,
        /// `input` or `output`.
        direction: &'static str,
        /// The cap per call.
        cap: ByteSize,
        /// The size, when known.
        size: Option<ByteSize>,
    },
    /// The call nested deeper than the WebAssembly stack allows (runaway
    /// recursion).
    #[error("stage `{stage}` overflowed its call stack (recursion too deep)")]
    StackOverflow {
        /// The stage's name.
        stage: String,
    },
    /// The guest panicked: it printed its panic message on stderr, then
    /// trapped (`unreachable`).
    #[error("stage `{stage}` panicked{}: {message}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panic {
        /// The stage's name.
        stage: String,
        /// Where in the guest's source, as the panic said (`src/lib.rs:7:9`).
        location: Option<String>,
        /// The guest's panic message, on one line.
        message: String,
    },
    /// A call the guest made to the host failed in a way that ends the call
    /// (a resource it does not own, a refused operation).
    #[error("stage `{stage}` trapped in a host call: {message}")]
    HostCallRefused {
        /// The stage's name.
        stage: String,
        /// The host's refusal.
        message: String,
    },
    /// The guest printed more to stdout or stderr in one call than its cap.
    #[error("stage `{stage}` printed more than {cap} to {stream} in one call (limits.max_output)")]
    OutputCap {
        /// The stage's name.
        stage: String,
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The cap per call and stream.
        cap: ByteSize,
    },
    /// Any other trap: an out-of-bounds access, a division by zero, an
    /// `unreachable` without a panic message.
    #[error("stage `{stage}` trapped: {message}")]
    Trap {
        /// The stage's name.
        stage: String,
        /// The trap's cause, on one line.
        message: String,
    },
    /// The batch could not be converted for the stage (the pipeline's fault) or the
    /// stage returned a malformed batch (the stage's fault).
    #[error("stage `{stage}`: {direction} batch: {error}")]
    Batch {
        /// The stage's name.
        stage: String,
        /// `input` or `output`.
        direction: &'static str,
        /// What is wrong with it.
        error: BatchError,
    },
    /// A featurizer returned a different number of rows than it was given: it must
    /// map rows one to one, unless it is declared a filter.
    #[error(
        "stage `{stage}` returned {rows_out} rows for {rows_in}: a featurizer returns one row per input row (a stage that drops rows sets `filter = true` and returns a boolean `_keep` column)"
    )]
    RowCount {
        /// The stage's name.
        stage: String,
        /// Rows sent into the stage.
        rows_in: usize,
        /// Rows it returned.
        rows_out: usize,
    },
    /// A filter stage returned no boolean `_keep` column.
    #[error("filter stage `{stage}` returned {}", match found {
        None => format!("no column `{column}`; a filter returns every row plus a boolean `{column}`"),
        Some(t) => format!("column `{column}` as {t}; a filter's `{column}` is Boolean"),
    })]
    FilterColumn {
        /// The stage's name.
        stage: String,
        /// The column: `_keep`.
        column: &'static str,
        /// Its type, when the column is there.
        found: Option<DataType>,
    },
    /// A column of the stage's declared output schema is missing from what it
    /// returned.
    #[error(
        "stage `{stage}` did not return column `{column}` ({expected}) of its declared outputs"
    )]
    OutputMissing {
        /// The stage's name.
        stage: String,
        /// The column.
        column: String,
        /// Its declared type.
        expected: DataType,
    },
    /// A column the stage returned has another type than declared.
    #[error("stage `{stage}` returned column `{column}` as {found}, but it is declared {expected}")]
    OutputType {
        /// The stage's name.
        stage: String,
        /// The column.
        column: String,
        /// Its declared type.
        expected: DataType,
        /// The type returned.
        found: DataType,
    },
    /// A stage with declared outputs returned a column outside them.
    #[error(
        "stage `{stage}` returned column `{column}`, which is neither an input column nor among its declared outputs"
    )]
    OutputUndeclared {
        /// The stage's name.
        stage: String,
        /// The column.
        column: String,
    },
    /// A fresh instance could not be created.
    #[error("stage `{stage}` could not be instantiated: {message}")]
    Instantiate {
        /// The stage's name.
        stage: String,
        /// wasmtime's explanation.
        message: String,
    },
}

impl StageFailure {
    /// True when the instance was poisoned by this failure and has been dropped.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            Self::OutOfFuel { .. }
                | Self::Deadline { .. }
                | Self::Memory { .. }
                | Self::StackOverflow { .. }
                | Self::Panic { .. }
                | Self::HostCallRefused { .. }
                | Self::OutputCap { .. }
                | Self::Trap { .. }
                | Self::Crossing {
                    direction: "output",
                    ..
                }
        )
    }

    /// A short stable code for the failure's cause, for dead letters, counters
    /// and a breaker to keep: for traps `out_of_fuel`, `deadline`,
    /// `memory_cap`, `stack_overflow`, `panic`, `host_call_refused`,
    /// `output_cap`, `crossing_cap` (an output over the crossing cap) and
    /// `trap` (any other); otherwise `stage_error` (the guest's own error),
    /// `init`, `open` (a connector refused its configuration or checkpoint),
    /// `crossing_cap`, `batch`, `output_contract` (rows or columns not as
    /// declared) and `instantiate`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Guest { .. } => "stage_error",
            Self::Init { .. } => "init",
            Self::Open { .. } => "open",
            Self::OutOfFuel { .. } => "out_of_fuel",
            Self::Deadline { .. } => "deadline",
            Self::Memory { .. } => "memory_cap",
            Self::Crossing { .. } => "crossing_cap",
            Self::StackOverflow { .. } => "stack_overflow",
            Self::Panic { .. } => "panic",
            Self::HostCallRefused { .. } => "host_call_refused",
            Self::OutputCap { .. } => "output_cap",
            Self::Trap { .. } => "trap",
            Self::Batch { .. } => "batch",
            Self::RowCount { .. }
            | Self::TooManyRows { .. }
            | Self::FilterColumn { .. }
            | Self::OutputMissing { .. }
            | Self::OutputType { .. }
            | Self::OutputUndeclared { .. } => "output_contract",
            Self::Instantiate { .. } => "instantiate",
        }
    }

    /// True when retrying the same input may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Guest {
                transient: true,
                ..
            }
        )
    }

    /// The input row at fault, when the stage named one.
    pub fn row(&self) -> Option<u32> {
        match self {
            Self::Guest { row, .. } => *row,
            _ => None,
        }
    }
}
