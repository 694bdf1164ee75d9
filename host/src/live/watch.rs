//! Watching the pipeline file: edits to a running pipeline's file become swaps.
//!
//! ```text
//!   every interval: mtime changed? ─► text changed? ─► parse + validate ─► LiveRun::apply
//!                                                         │ invalid or structural:
//!                                                         └─► one `warn` line, the run goes on
//! ```
//!
//! Polling the modification time costs one `stat` per interval and needs no
//! platform notification API; an editor's save (write, or write-and-rename) is seen
//! within one interval. A changed time with the same text (a `touch`) does
//! nothing. A file that does not parse, is invalid, or changes more than
//! WebAssembly stages is refused as a whole with a log line naming why; the
//! running version keeps running and the next save is tried again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use super::LiveRun;
use crate::spec::PipelineSpec;

/// How often `weir run --watch` looks at the file: 500 ms.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Watches `file` every `interval` and applies its changes to `live`, until the
/// returned task is aborted. Must be called within a tokio runtime.
pub fn watch(
    file: PathBuf,
    live: Arc<Mutex<LiveRun>>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mtime = |f: &PathBuf| std::fs::metadata(f).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = mtime(&file);
        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let now = mtime(&file);
            if now == seen {
                continue;
            }
            seen = now;
            let Ok(new_text) = std::fs::read_to_string(&file) else {
                continue;
            };
            if new_text == text {
                continue;
            }
            text = new_text;
            let spec = match PipelineSpec::from_file(&file) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "pipeline file change not applied; the running version continues");
                    continue;
                }
            };
            let mut live = live.lock().await;
            match live.apply(spec, None).await {
                Ok(outcomes) => {
                    for o in outcomes.iter().filter(|o| o.applied) {
                        tracing::info!(file = %file.display(), stage = %o.stage, params = %o.params, "pipeline file change applied");
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "pipeline file change not applied; the running version continues");
                }
            }
        }
    })
}
