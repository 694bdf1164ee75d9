//! Built-in record operators, one file each: the transforms nearly every feature
//! pipeline needs, run natively on Arrow batches so they cost no sandbox crossing.
//!
//! ```text
//!  [stage.map]     per-record transforms, in order   (bucketize, log1p, clip, …)
//!  [stage.filter]  keep rows matching a predicate     (dropped rows counted or dead-lettered)
//!  [stage.batch]   regroup into ≤ N rows / ≤ M bytes  (linger flush in streaming runs)
//!  [stage.sample]  stratified, seeded sampling        (fraction or exact count per stratum)
//!  [stage.split]   train/validation/test by key hash  (stable across runs and machines)
//! ```
//!
//! Each operator's configuration struct lives beside it and implements
//! [`crate::node::config::OperatorConfig`]: `check` refuses everything the data
//! does not decide (empty lists, boundaries out of order, fractions outside
//! `[0, 1]`) with a [`crate::node::config::SpecError`] naming the key, and
//! `build` makes the running operator. The spec runs the checks while it is
//! validated, so a bad operator fails `weir validate`, not the run.
//!
//! The stateful operators (`[stage.sort]`, `[stage.group]`, `[stage.session]`)
//! keep their configuration beside them too, in their own files; the
//! aggregates `group` and `session` share are configured in [`aggregate`].
//!
//! Operators that hold rows across a checkpoint barrier follow the node
//! contract's rule ([`crate::node::AtBarrier`]): `sort`, `group`, `sample` and
//! `session` write what they hold into the checkpoint (`state_file`, Arrow
//! IPC), `batch` emits what waits before passing the barrier on. None relies
//! on the default (holding the checkpoint back), which stays as the safety
//! net for an operator that forgets.
//!
//! Work is done with Arrow compute kernels (`cmp`, `cast`, `zip`, `filter`,
//! `concat`, `unary` over value buffers). The exceptions are hashing (FNV-1a over
//! string bytes has no kernel) and building the dead letters of a filter; both are
//! explained where they happen.

use arrow::array::{Array, ArrayRef, RecordBatch};

use crate::node::NodeError;

pub mod aggregate;
pub mod batch;
mod external;
pub mod filter;
pub mod group;
/// The error policy of a row-local operator: retries, row isolation and
/// bisection, fallback defaults, the trap breaker.
pub mod guard;
pub mod map;
pub mod sample;
pub mod session;
pub mod sort;
pub mod split;
mod state_file;
pub mod wasm;

pub use aggregate::{AggFilter, AggOp, AggregateSpec};
pub use group::{GroupSpec, default_partitions};
pub use session::{SessionSpec, default_end_column, default_start_column};
pub use sort::{SortKey, SortSpec};

pub use batch::{BatchOp, BatchSpec};
pub use filter::{FilterOp, FilterSpec, Predicate};
pub use map::{MapOp, MapSpec, Transform};
pub use sample::{SampleOp, SampleSpec};
pub use split::{SplitOp, SplitSpec};

/// The column `name` of `batch`, or a data error naming it and `what` wanted it.
pub(crate) fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    what: &str,
) -> Result<&'a ArrayRef, NodeError> {
    batch.column_by_name(name).ok_or_else(|| {
        let have: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect();
        NodeError::Config(format!(
            "{what}: the batch has no column `{name}` (it has {})",
            have.join(", ")
        ))
    })
}

/// Nulls read as `false`: a boolean mask with no null slots, so `filter` and the
/// boolean kernels treat a null comparison as "does not match".
pub(crate) fn nulls_false(mask: &arrow::array::BooleanArray) -> arrow::array::BooleanArray {
    match mask.nulls() {
        None => mask.clone(),
        Some(n) => arrow::array::BooleanArray::new(mask.values() & n.inner(), None),
    }
}

/// A scalar in a pipeline file: a boolean, an integer, a float or a string.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ScalarValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

impl ScalarValue {
    /// A one-element array holding the value, cast to `to` (strictly: a string that
    /// does not parse, or an integer out of range, is an error naming the value).
    pub(crate) fn to_array(&self, to: &arrow::datatypes::DataType) -> Result<ArrayRef, NodeError> {
        use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
        use std::sync::Arc;
        let one: ArrayRef = match self {
            Self::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
            Self::Int(i) => Arc::new(Int64Array::from(vec![*i])),
            Self::Float(f) => Arc::new(Float64Array::from(vec![*f])),
            Self::Str(s) => Arc::new(StringArray::from(vec![s.as_str()])),
        };
        let options = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        arrow::compute::cast_with_options(&one, to, &options)
            .ok()
            .filter(|a| a.null_count() == 0)
            .ok_or_else(|| NodeError::Config(format!("the value {self} cannot be read as {to}")))
    }
}

impl std::fmt::Display for ScalarValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// FNV-1a 64-bit over `bytes`, continuing from `state`: the same function as the
/// guest SDK's `weir_guest::hash::stable_hash` (start from [`FNV_OFFSET`]), so a
/// key hashed here and in a stage agrees bit for bit.
pub(crate) const fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        state ^= bytes[i] as u64;
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    state
}

/// FNV-1a 64-bit offset basis.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A 64-bit finalizer (splitmix64's): FNV's low bits are well mixed but its high
/// bits are not for short inputs, and sampling reads the hash as a fraction.
pub(crate) const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash read as a fraction in `[0, 1)`.
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod stateful_tests;
