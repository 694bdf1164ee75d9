//! The connector role: a source plugin that produces batches until it is done.
//!
//! ```text
//!   host                                  your type
//!   open-source(config, checkpoint) ────▶ C::open ──ok──▶ replace the stored instance
//!   next-batch(max-rows) ───────────────▶ stored.next_batch(max_rows)
//!                        ◀── some((batch, checkpoint)) | none (exhausted) | StageError
//! ```
//!
//! The host commits a batch's checkpoint only after every sink downstream has durably
//! written it, and hands the last committed one back to `open-source` after a restart, so a
//! connector resumes where the pipeline really stopped (at-least-once delivery).

use crate::bindings;
use crate::bindings::weir::stage::types as wit;
use crate::cell::StageCell;
use crate::{Batch, StageError};

/// A source plugin: opened with its configuration, then asked for batches.
///
/// Export an implementation with [`export_connector!`](crate::export_connector).
///
/// # Examples
///
/// ```no_run
/// use weir_guest::{Batch, Column, Connector, StageError};
///
/// /// Counts from 0 to 99, resuming after the last checkpoint.
/// struct Counter {
///     next: i64,
/// }
///
/// impl Connector for Counter {
///     fn open(_config: &str, checkpoint: Option<String>) -> Result<Self, String> {
///         let next = match checkpoint {
///             Some(c) => c.parse::<i64>().map_err(|e| format!("bad checkpoint {c:?}: {e}"))?,
///             None => 0,
///         };
///         Ok(Counter { next })
///     }
///
///     fn next_batch(&mut self, max_rows: u32) -> Result<Option<(Batch, String)>, StageError> {
///         let end = (self.next + i64::from(max_rows)).min(100);
///         if self.next >= end {
///             return Ok(None);
///         }
///         let batch = Batch::new(vec![Column::i64("n", (self.next..end).collect())])?;
///         self.next = end;
///         Ok(Some((batch, end.to_string())))
///     }
/// }
///
/// weir_guest::export_connector!(Counter);
/// ```
pub trait Connector: Sized + 'static {
    /// Opens the source with its configuration (JSON text), resuming after `checkpoint`
    /// when one is given (a token this connector returned earlier).
    ///
    /// Called through the WIT export `open-source`. A later call replaces the running
    /// instance only when it succeeds.
    ///
    /// # Errors
    ///
    /// A message for the pipeline's operator: a bad configuration or checkpoint.
    fn open(config: &str, checkpoint: Option<String>) -> Result<Self, String>;

    /// Returns the next batch of at most `max_rows` rows with the checkpoint to resume
    /// after it, or `None` when the source is exhausted.
    ///
    /// # Errors
    ///
    /// A [`StageError`]; mark it transient when the source is only temporarily
    /// unavailable, so the host retries instead of failing the run.
    fn next_batch(&mut self, max_rows: u32) -> Result<Option<(Batch, String)>, StageError>;
}

/// Connects a type made by [`export_connector!`](crate::export_connector) to the cell
/// holding the user's connector.
#[doc(hidden)]
pub trait ConnectorExport {
    type Source: Connector;
    fn cell() -> &'static StageCell<Self::Source>;
}

impl<E: ConnectorExport> bindings::Guest for E {
    fn open_source(config: String, checkpoint: Option<String>) -> Result<(), String> {
        let source = E::Source::open(&config, checkpoint)?;
        E::cell().replace(source);
        Ok(())
    }

    fn next_batch(max_rows: u32) -> Result<Option<wit::SourceBatch>, wit::StageError> {
        E::cell()
            .with(|source| source.next_batch(max_rows))
            .unwrap_or_else(|| {
                Err(StageError::new(
                    "next-batch was called before a successful open-source",
                ))
            })
            .map(|next| {
                next.map(|(batch, checkpoint)| wit::SourceBatch {
                    batch: batch.into_wit(),
                    checkpoint,
                })
            })
            .map_err(Into::into)
    }
}

/// Exports a [`Connector`] as the component's `connector` world. Use it once, at the
/// top level of the connector's crate; see [`Connector`] for an example.
#[macro_export]
macro_rules! export_connector {
    ($source:ty) => {
        const _: () = {
            // SAFETY: this cell is reached only through `cell()` below, which only the
            // generated export functions call; see `StageCell::new`.
            static SOURCE: $crate::__private::StageCell<$source> =
                unsafe { $crate::__private::StageCell::new() };

            struct WeirConnectorExports;

            impl $crate::__private::ConnectorExport for WeirConnectorExports {
                type Source = $source;
                fn cell() -> &'static $crate::__private::StageCell<$source> {
                    &SOURCE
                }
            }

            $crate::__private::export_connector_world!(
                WeirConnectorExports with_types_in $crate::__private
            );
        };
    };
}
