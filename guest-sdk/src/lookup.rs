//! Lookups in the tables the pipeline grants the stage.
//!
//! A featurizer looks a whole column of keys up at once with [`lookup`] and gets
//! back one row per key: the table's columns, null where the table has no such
//! key. The host serves it from the cache of the `lookup` stage (a table loaded
//! whole, refreshed in the background), so a call costs a hash probe per key and
//! the crossing, never a query.
//!
//! The pipeline spec grants each table by name:
//!
//! ```toml
//! [stage.wasm.lookups.segments]
//! key = "user_id"                          # the table's key column
//! table.csv = { path = "segments.csv" }
//! ```
//!
//! A component that calls [`lookup`] imports `weir:stage/lookup` (contract
//! `0.1.1`); the host refuses to load it into a stage granted no table. A
//! component that never calls it does not import it and needs no grant.
//!
//! Off wasm (a stage's native unit tests) every lookup fails with
//! [`LookupError::Unavailable`]: there is no host to ask.

use crate::{Batch, Column, StageError};

/// Why a lookup gave no values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The stage was granted no table of that name. Retrying cannot help.
    UnknownTable(String),
    /// The keys cannot be matched against the table's key column (a type that
    /// does not convert). Retrying cannot help.
    BadKeys(String),
    /// The table cannot be read now; the same lookup may succeed later.
    Unavailable(String),
    /// The host's answer broke the contract (a bug in the host).
    Malformed(String),
}

impl LookupError {
    /// The host's message.
    pub fn message(&self) -> &str {
        match self {
            Self::UnknownTable(m)
            | Self::BadKeys(m)
            | Self::Unavailable(m)
            | Self::Malformed(m) => m,
        }
    }

    /// Whether the same lookup may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for LookupError {}

/// A failed lookup fails the batch: transient when the table is unavailable,
/// so the host's error policy may retry it.
impl From<LookupError> for StageError {
    fn from(e: LookupError) -> Self {
        let transient = e.is_transient();
        let error = StageError::new(format!("lookup failed: {e}"));
        if transient { error.transient() } else { error }
    }
}

/// Looks each row of `keys` up in the granted table `table`.
///
/// The result has one row per key, in order, holding the table's looked-up
/// columns (every column but its key, unless the spec names them); a key the
/// table lacks, or a null key, gives nulls. `keys` is copied across once; its
/// name does not matter.
///
/// ```no_run
/// use weir_guest::{Batch, StageError};
///
/// fn add_segments(input: Batch) -> Result<Batch, StageError> {
///     let users = input
///         .column("user_id")
///         .ok_or_else(|| StageError::new("no column `user_id`"))?;
///     let found = weir_guest::lookup::lookup("segments", users)?;
///     let mut out = input;
///     for column in found.into_columns() {
///         out = out.with_column(column)?;
///     }
///     Ok(out)
/// }
/// ```
///
/// # Errors
/// [`LookupError::UnknownTable`] when no table of that name is granted,
/// [`LookupError::BadKeys`] when the keys do not convert to the table's key
/// type, [`LookupError::Unavailable`] when the table cannot be read now.
pub fn lookup(table: &str, keys: &Column) -> Result<Batch, LookupError> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::weir::stage::lookup as wit;
        match wit::lookup(table, &keys.clone().into_wit()) {
            Ok(batch) => Batch::from_wit(batch).map_err(|e| LookupError::Malformed(e.message)),
            Err(wit::LookupError::UnknownTable(m)) => Err(LookupError::UnknownTable(m)),
            Err(wit::LookupError::BadKeys(m)) => Err(LookupError::BadKeys(m)),
            Err(wit::LookupError::Unavailable(m)) => Err(LookupError::Unavailable(m)),
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = keys;
        Err(LookupError::Unavailable(format!(
            "no host to look `{table}` up in: lookups run inside weir"
        )))
    }
}
