//! A [`BuildCx`] for connector tests: what a plan hands a node, with a
//! scratch directory, an unbounded run pool and the given services.

use std::sync::Arc;

use crate::node::config::BuildCx;
use crate::node::memory::{MemorySource, RunMemory};
use crate::node::services::{Clock, Services, SystemClock};
use crate::units::ByteSize;

/// Calls `f` with a context for the node `name` at key path `key`, its
/// relative paths resolved against `base`.
pub fn with_cx<T>(
    key: &str,
    base: &std::path::Path,
    batch_rows: usize,
    services: &Services,
    f: impl FnOnce(&BuildCx) -> T,
) -> T {
    let scratch = tempfile::tempdir().unwrap();
    let memory = RunMemory::for_run(
        ByteSize(1 << 30),
        ByteSize(0),
        scratch.path(),
        None,
        &MemorySource::System,
    )
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    f(&BuildCx {
        key,
        name: "node",
        pipeline: "p",
        base_dir: base,
        batch_rows: std::num::NonZeroUsize::new(batch_rows).unwrap(),
        memory: &memory,
        data_dir: scratch.path(),
        tenant: "default",
        services,
        clock: &clock,
    })
}
