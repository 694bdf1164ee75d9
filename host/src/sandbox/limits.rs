//! Per-stage resource limits and capability grants.
//!
//! Every limit has a default so a pipeline file may omit them; every capability is
//! denied unless granted. The defaults suit a featurizer handling batches of a few
//! thousand rows: a stage that needs more says so in the pipeline file, where the
//! reviewer of the pipeline sees it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Millis};

/// What one stage may consume per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageLimits {
    /// Fuel per call (≈ WebAssembly instructions): the deterministic CPU cap.
    /// Default: 10 billion ([`default_fuel`]).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock deadline per call, enforced by epoch interruption with the host's
    /// tick (10 ms) as granularity. Default: 5 s ([`default_deadline`]).
    #[serde(default = "default_deadline")]
    pub deadline: Millis,
    /// Linear-memory cap of the stage's instance. Default: 256 MiB ([`default_memory`]).
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Bytes that may cross the boundary per call, each direction. Default: 64 MiB
    /// ([`default_max_crossing`]).
    #[serde(default = "default_max_crossing")]
    pub max_crossing: ByteSize,
    /// Bytes a stage may print to stdout, and to stderr, per call; a write
    /// past it traps with the cause `output_cap`. Default: 1 MiB
    /// ([`default_max_output`]).
    #[serde(default = "default_max_output")]
    pub max_output: ByteSize,
}

/// Default fuel per call: 10 billion, seconds of CPU for any sane batch, while a
/// runaway loop still stops in bounded time.
pub fn default_fuel() -> u64 {
    10_000_000_000
}

/// Default deadline per call: 5 seconds.
pub fn default_deadline() -> Millis {
    Millis(Duration::from_secs(5))
}

/// Default linear-memory cap: 256 MiB.
pub fn default_memory() -> ByteSize {
    ByteSize::mib(256)
}

/// Default crossing cap: 64 MiB per call and direction.
pub fn default_max_crossing() -> ByteSize {
    ByteSize::mib(64)
}

/// Default output cap: 1 MiB per call and stream, room for any diagnostics a
/// stage prints while a loop printing without end stops in milliseconds.
pub fn default_max_output() -> ByteSize {
    ByteSize::mib(1)
}

impl Default for StageLimits {
    fn default() -> Self {
        Self {
            fuel: default_fuel(),
            deadline: default_deadline(),
            memory: default_memory(),
            max_crossing: default_max_crossing(),
            max_output: default_max_output(),
        }
    }
}

/// Capabilities a pipeline grants to one stage. Everything is denied by default:
/// no directories, frozen clocks, no network, no environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Real wall and monotonic clocks. Without it both read as the Unix epoch, so a
    /// stage's output cannot depend on when it ran. Default: false.
    #[serde(default)]
    pub clock: bool,
    /// Host directories the stage may read, each visible to the guest under the
    /// same path. Default: none.
    #[serde(default)]
    pub read_dirs: Vec<PathBuf>,
}
