//! The featurizer role: a stage that turns one batch into another.
//!
//! ```text
//!   host                      export shim (this module)            your type
//!   init(params) ───────────▶ F::init(&params) ──ok──▶ replace the stored instance
//!                                              ──err─▶ keep the old one, refuse params
//!   process(batch) ─────────▶ check + move into Batch ──▶ stored.process(batch)
//!                  ◀──────── move out of Batch ◀────────── Ok(batch) / Err(StageError)
//! ```

use crate::bindings;
use crate::cell::StageCell;
use crate::{Batch, StageError};

/// A featurizer stage: parameters in, then batches in and batches out.
///
/// Export an implementation with [`export_featurizer!`](crate::export_featurizer); the
/// host then calls [`init`](Self::init) with the stage's parameters and
/// [`process`](Self::process) once per batch.
///
/// The trait is plain Rust with no host calls, so a stage's logic can be unit-tested
/// natively: call `init`, then `process` on a literal [`Batch`].
///
/// See the [crate documentation](crate) for a complete stage.
pub trait Featurizer: Sized + 'static {
    /// Builds the stage from its parameters (JSON text, as written in the pipeline
    /// spec; `{}` when it has none).
    ///
    /// Called before the first batch and again whenever the parameters change at run
    /// time. The new instance replaces the running one only when this succeeds; on an
    /// error the host refuses the new parameters and the old instance keeps running.
    ///
    /// # Errors
    ///
    /// A message for the pipeline's operator saying which parameter is wrong and why.
    fn init(params: &str) -> Result<Self, String>;

    /// Processes one batch. The output may add, drop or reorder columns, and its row
    /// count may differ from the input's.
    ///
    /// # Errors
    ///
    /// A [`StageError`], tied to a row when one record is at fault, marked transient
    /// when a retry may succeed. A panic is not an error: it aborts the instance (a
    /// trap), which the host replaces.
    fn process(&mut self, input: Batch) -> Result<Batch, StageError>;
}

/// Connects a type made by [`export_featurizer!`](crate::export_featurizer) to the cell
/// holding the user's stage.
#[doc(hidden)]
pub trait FeaturizerExport {
    type Stage: Featurizer;
    fn cell() -> &'static StageCell<Self::Stage>;
}

impl<E: FeaturizerExport> bindings::Guest for E {
    fn init(params: String) -> Result<(), String> {
        let stage = E::Stage::init(&params)?;
        E::cell().replace(stage);
        Ok(())
    }

    fn process(input: bindings::Batch) -> Result<bindings::Batch, bindings::StageError> {
        let input = Batch::from_wit(input)?;
        E::cell()
            .with(|stage| stage.process(input))
            .unwrap_or_else(|| {
                Err(StageError::new(
                    "process was called before a successful init: the stage has no parameters yet",
                ))
            })
            .map(Batch::into_wit)
            .map_err(Into::into)
    }
}

/// Exports a [`Featurizer`] as the component's `featurizer` world.
///
/// Use it once, at the top level of the stage's crate (a `cdylib` built for
/// `wasm32-wasip2`). The stage's instance lives in a `static` between calls.
///
/// ```no_run
/// use weir_guest::{Batch, Featurizer, StageError};
///
/// struct Passthrough;
///
/// impl Featurizer for Passthrough {
///     fn init(_params: &str) -> Result<Self, String> {
///         Ok(Passthrough)
///     }
///     fn process(&mut self, input: Batch) -> Result<Batch, StageError> {
///         Ok(input)
///     }
/// }
///
/// weir_guest::export_featurizer!(Passthrough);
/// ```
#[macro_export]
macro_rules! export_featurizer {
    ($stage:ty) => {
        const _: () = {
            // SAFETY: this cell is reached only through `cell()` below, which only the
            // generated export functions call; see `StageCell::new`.
            static STAGE: $crate::__private::StageCell<$stage> =
                unsafe { $crate::__private::StageCell::new() };

            struct WeirFeaturizerExports;

            impl $crate::__private::FeaturizerExport for WeirFeaturizerExports {
                type Stage = $stage;
                fn cell() -> &'static $crate::__private::StageCell<$stage> {
                    &STAGE
                }
            }

            $crate::__private::export_featurizer_world!(
                WeirFeaturizerExports with_types_in $crate::__private
            );
        };
    };
}
