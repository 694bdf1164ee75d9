//! The error a stage returns when it cannot process a batch.
//!
//! It mirrors the WIT `stage-error` record field for field, so what a stage says is
//! exactly what the host's error policy sees: which row failed (so the record can go to
//! the dead-letter store with its reason), why, and whether retrying could help.

use std::fmt;

/// Why a stage could not process a batch.
///
/// The host applies the stage's error policy to it: a `transient` error is retried, any
/// other is the input's or the stage's fault; with a `row`, only that record needs to be
/// set aside.
///
/// # Examples
///
/// ```
/// use weir_guest::StageError;
///
/// let err = StageError::new("price is negative").at_row(3);
/// assert_eq!(err.row, Some(3));
/// assert!(!err.transient);
/// assert_eq!(err.to_string(), "row 3: price is negative");
///
/// let busy = StageError::new("lookup table not ready").transient();
/// assert_eq!(busy.to_string(), "lookup table not ready (transient)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageError {
    /// The row of the input batch that failed, when the failure is tied to one. The
    /// host uses it to dead-letter that record alone.
    pub row: Option<u32>,
    /// What went wrong, in words for the pipeline's operator.
    pub message: String,
    /// True when retrying the same input may succeed; false when the input or the
    /// stage is at fault. Defaults to false.
    pub transient: bool,
}

impl StageError {
    /// An error not tied to a row and not transient: the common case, refined with
    /// [`at_row`](Self::at_row) and [`transient`](Self::transient).
    pub fn new(message: impl Into<String>) -> Self {
        StageError {
            row: None,
            message: message.into(),
            transient: false,
        }
    }

    /// Ties the error to row `row` of the input batch, so the host can set that record
    /// aside and keep the rest.
    ///
    /// A batch never has more than `u32::MAX` rows (the WIT row count is a `u32`), so
    /// the index always fits; a larger one saturates.
    #[must_use]
    pub fn at_row(mut self, row: usize) -> Self {
        self.row = Some(u32::try_from(row).unwrap_or(u32::MAX));
        self
    }

    /// Marks the error as transient: retrying the same input later may succeed.
    #[must_use]
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(row) = self.row {
            write!(f, "row {row}: ")?;
        }
        f.write_str(&self.message)?;
        if self.transient {
            f.write_str(" (transient)")?;
        }
        Ok(())
    }
}

impl std::error::Error for StageError {}
