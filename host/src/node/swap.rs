//! The request types of a swap: how a running stage is asked to change between
//! batches (see [`super::Operator::swap`]). The routing of requests to running
//! stages is the scheduler's (`crate::exec::control`); preparing a new WebAssembly
//! stage is the sandbox's.

use tokio::sync::oneshot;

use super::BoxError;

/// One change to a running stage.
pub enum StageChange {
    /// New parameters: a new `init` on a fresh instance of the same component.
    Params(String),
    /// A new stage (new component, limits or grants), already instantiated and
    /// `init`ed off the hot path.
    /// For a WebAssembly stage, a `weir::sandbox::FeaturizerStage`; an operator
    /// that receives a stage of another type refuses the swap.
    Stage(Box<dyn std::any::Any + Send>),
}

impl std::fmt::Debug for StageChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Params(p) => f.debug_tuple("Params").field(p).finish(),
            Self::Stage(_) => f.debug_tuple("Stage").finish_non_exhaustive(),
        }
    }
}

/// What a successful swap changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwapApplied {
    /// The stage.
    pub stage: String,
    /// The component digest now running.
    pub digest: String,
    /// The parameters now in effect.
    pub params: String,
    /// Index (counted from 0 over the run) of the first batch the new version
    /// processed; `None` when the stream ended before another batch came.
    pub first_batch: Option<u64>,
}

/// Why a swap did not take effect. In every case the previous version keeps
/// running.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No stage of that name runs in this pipeline (or it is not a WebAssembly stage).
    #[error("no swappable stage `{stage}` in the running pipeline (stages: {known})")]
    NoSuchStage {
        /// The name asked for.
        stage: String,
        /// The names that exist.
        known: String,
    },
    /// The new component failed validation (not a component, a wrong world, an
    /// import not granted).
    #[error("swap of `{stage}` refused: {error}")]
    Load {
        /// The stage.
        stage: String,
        /// Why (the sandbox's load error).
        error: BoxError,
    },
    /// The new version failed to start (`init` refused its parameters, or trapped).
    #[error("swap of `{stage}` refused: {error}")]
    Start {
        /// The stage.
        stage: String,
        /// Why (the stage's failure).
        error: BoxError,
    },
    /// The new version failed on its first batch; the previous one was restored and
    /// processed that batch.
    #[error("swap of `{stage}` rolled back: it failed on its first batch: {error}")]
    RolledBack {
        /// The stage.
        stage: String,
        /// The failure.
        error: BoxError,
    },
    /// The request was malformed (for example, a new pipeline version whose graph
    /// differs from the running one).
    #[error("swap refused: {0}")]
    Refused(String),
    /// The run ended before the request was handled.
    #[error("the run ended before the swap of `{stage}` was applied")]
    RunEnded {
        /// The stage.
        stage: String,
    },
}

/// A change with the channel its outcome goes back on, as an operator receives it
/// (see [`crate::exec::Operator::swap`]).
pub struct SwapRequest {
    /// What to change.
    pub change: StageChange,
    /// Where the outcome goes.
    pub reply: SwapReply,
}

/// The requester's end of a swap: answered exactly once, when the outcome is known.
pub struct SwapReply(pub(crate) oneshot::Sender<Result<SwapApplied, SwapError>>);

impl SwapReply {
    /// Answers the requester; a requester that stopped waiting is not an error.
    pub fn send(self, outcome: Result<SwapApplied, SwapError>) {
        let _ = self.0.send(outcome);
    }
}

impl SwapReply {
    /// A reply and the receiver its answer arrives on.
    pub fn channel() -> (Self, oneshot::Receiver<Result<SwapApplied, SwapError>>) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }
}
