//! Why a node failed, by whose fault.
//!
//! Error policies (fail, skip, fallback, retry) and the HTTP status of a server
//! answer key on [`Fault`], so a variant says *who* is at fault before it says
//! what happened:
//!
//! | variant | whose fault | what a policy may do |
//! | --- | --- | --- |
//! | [`NodeError::Data`] | the input: a record or a batch the node cannot use | skip it to the dead-letter store |
//! | [`NodeError::Stage`] | a user stage's own code: its error (a row, maybe transient) or a trap | skip the row, fall back, retry if transient |
//! | [`NodeError::Resource`] | a budget refused: memory, the crossing cap | spill, back off, or fail naming the consumer |
//! | [`NodeError::Service`] | an outside service (a model server, a database) | retry if transient |
//! | [`NodeError::Config`] | the pipeline's configuration does not fit the data | fail: a person must fix the spec |
//! | [`NodeError::Io`] | a local file | fail |
//! | [`NodeError::Bug`] | weir itself | always fail |
//!
//! Messages name the value at fault; the executor adds the node's name once.

/// A boxed error kept as a variant's cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a refused resource was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// The run's (or the host's) memory budget.
    Memory,
    /// The cap on bytes crossing into or out of a WebAssembly stage.
    Crossing,
    /// The dead-letter store's capacity.
    DeadLetters,
}

/// Whose fault an error is, without its details: what policies and metrics key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum Fault {
    /// Bad input data.
    Data,
    /// A user stage's own error or trap.
    Stage {
        /// The stage said it may succeed if tried again.
        transient: bool,
        /// The stage trapped (fuel, deadline, memory, panic) rather than returning an error.
        trap: bool,
    },
    /// A budget refused.
    Resource,
    /// An outside service failed.
    Service {
        /// Trying again may succeed.
        transient: bool,
    },
    /// The configuration does not fit.
    Config,
    /// A local file failed.
    Io,
    /// A bug in weir.
    Bug,
}

impl Fault {
    /// A short stable name for counters and listings: `data`, `stage`,
    /// `stage_trap`, `stage_transient`, `resource`, `service`,
    /// `service_transient`, `config`, `io`, `bug`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Stage { trap: true, .. } => "stage_trap",
            Self::Stage {
                transient: true, ..
            } => "stage_transient",
            Self::Stage { .. } => "stage",
            Self::Resource => "resource",
            Self::Service { transient: true } => "service_transient",
            Self::Service { .. } => "service",
            Self::Config => "config",
            Self::Io => "io",
            Self::Bug => "bug",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a node failed. The executor adds the node's name.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A record or a batch this node cannot use: the input's fault.
    #[error("{message}{}", row.map(|r| format!(" (row {r})")).unwrap_or_default())]
    Data {
        /// What is wrong with it, naming the value.
        message: String,
        /// The row within the batch, when one record is at fault.
        row: Option<usize>,
    },
    /// A user stage's own code failed: its error result, or a trap.
    #[error("{error}")]
    Stage {
        /// The row the stage named, if any.
        row: Option<u32>,
        /// The stage said trying again may succeed.
        transient: bool,
        /// It trapped (the instance was discarded) rather than returning an error.
        trap: bool,
        /// The stage's failure, with its own message.
        error: BoxError,
    },
    /// A budget refused a request.
    #[error("{error}")]
    Resource {
        /// Which budget.
        resource: Resource,
        /// The refusal, naming the consumer and the amounts.
        error: BoxError,
    },
    /// An outside service failed.
    #[error("{message}{}", if *transient { " (transient)" } else { "" })]
    Service {
        /// The service (`http://host:port/v1/models/m`, `redis://…`).
        service: String,
        /// Trying again may succeed (a timeout, a 503, a reset connection).
        transient: bool,
        /// What it said, naming the service and the request.
        message: String,
    },
    /// The pipeline's configuration does not fit the data or the environment: a
    /// missing column, a type the node cannot read, a schema that changed.
    #[error("{0}")]
    Config(String),
    /// Reading or writing a local file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// An invariant of weir itself does not hold.
    #[error("{0} (this is a bug in weir)")]
    Bug(String),
}

impl NodeError {
    /// Bad data in the batch as a whole.
    pub fn data(message: impl Into<String>) -> Self {
        Self::Data {
            message: message.into(),
            row: None,
        }
    }

    /// A configuration mismatch.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }

    /// An I/O failure on `path`.
    pub fn io(path: impl std::fmt::Display, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            error,
        }
    }

    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Data { .. } => Fault::Data,
            Self::Stage {
                transient, trap, ..
            } => Fault::Stage {
                transient: *transient,
                trap: *trap,
            },
            Self::Resource { .. } => Fault::Resource,
            Self::Service { transient, .. } => Fault::Service {
                transient: *transient,
            },
            Self::Config(_) => Fault::Config,
            Self::Io { .. } => Fault::Io,
            Self::Bug(_) => Fault::Bug,
        }
    }
}

impl NodeError {
    /// An Arrow kernel's error, by whose fault it is. Called where a kernel runs
    /// on the rows themselves (a cast, a comparison, arithmetic): the plan fixed
    /// the types, so a cast that fails on a value (`"abc"` as an integer), a
    /// parse error, a division by zero, an overflow or a computation refused for
    /// a value is the data's fault ([`NodeError::Data`]), which a skip policy may
    /// skip. Anything else (a type the kernel does not support, a schema that
    /// does not fit, a bad argument) is the configuration's, as [`From`] says.
    pub fn kernel(e: arrow::error::ArrowError) -> Self {
        use arrow::error::ArrowError as A;
        match e {
            A::CastError(_)
            | A::ParseError(_)
            | A::ComputeError(_)
            | A::DivideByZero
            | A::ArithmeticOverflow(_) => Self::data(e.to_string()),
            e => Self::from(e),
        }
    }
}

/// An Arrow error outside a kernel's work on values (building a batch, a
/// schema, IPC) is a configuration mismatch: the plan let a type through that
/// the call cannot take. Kernels running on values map theirs with
/// [`NodeError::kernel`].
impl From<arrow::error::ArrowError> for NodeError {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::Config(e.to_string())
    }
}

/// A configuration refused when the node is built (its check passed, so rarely
/// seen): the spec's fault, reported with its key.
impl From<super::config::SpecError> for NodeError {
    fn from(e: super::config::SpecError) -> Self {
        Self::Config(e.to_string())
    }
}

impl From<super::memory::MemoryError> for NodeError {
    fn from(e: super::memory::MemoryError) -> Self {
        Self::Resource {
            resource: Resource::Memory,
            error: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_names_its_fault_and_prints_its_cause_once() {
        let e = NodeError::Service {
            service: "http://127.0.0.1:1/v1".into(),
            transient: true,
            message: "POST http://127.0.0.1:1/v1: HTTP 503".into(),
        };
        assert_eq!(e.fault(), Fault::Service { transient: true });
        assert_eq!(
            e.to_string(),
            "POST http://127.0.0.1:1/v1: HTTP 503 (transient)"
        );
        assert!(std::error::Error::source(&e).is_none());
        let e = NodeError::Data {
            message: "`ts` is not an integer".into(),
            row: Some(3),
        };
        assert_eq!(e.fault(), Fault::Data);
        assert_eq!(e.to_string(), "`ts` is not an integer (row 3)");
        assert_eq!(NodeError::Bug("x".into()).fault(), Fault::Bug);
    }

    #[test]
    fn a_kernel_refusing_a_value_is_a_data_fault() {
        let strings: arrow::array::ArrayRef =
            std::sync::Arc::new(arrow::array::StringArray::from(vec!["12", "abc"]));
        let strict = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        let e = arrow::compute::cast_with_options(
            &strings,
            &arrow::datatypes::DataType::Int64,
            &strict,
        )
        .unwrap_err();
        let e = NodeError::kernel(e);
        assert_eq!(e.fault(), Fault::Data);
        assert_eq!(
            e.to_string(),
            "Cast error: Cannot cast string 'abc' to value of Int64 type"
        );
        let e = NodeError::kernel(arrow::error::ArrowError::DivideByZero);
        assert_eq!(e.fault(), Fault::Data);
        let e = NodeError::kernel(arrow::error::ArrowError::SchemaError("x".into()));
        assert_eq!(e.fault(), Fault::Config);
        assert_eq!(
            Fault::Stage {
                transient: false,
                trap: true
            }
            .as_str(),
            "stage_trap"
        );
    }
}
