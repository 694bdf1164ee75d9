//! The progress line a long run shows on a terminal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::RunShared;

/// Prints records read and the rate every half second, on one line of stderr.
pub(super) async fn report(shared: Arc<RunShared>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let read = shared.records_read.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        eprint!(
            "\r\x1b[2K  {read} records read · {:.0} records/s · {secs:.1}s",
            read as f64 / secs.max(1e-9)
        );
    }
}
