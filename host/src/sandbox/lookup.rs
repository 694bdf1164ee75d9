//! The `weir:stage/lookup` import (contract `0.1.1`): a featurizer looks a
//! column of keys up in a table the pipeline granted it, and gets the table's
//! columns back, one row per key.
//!
//! ```text
//!  guest  lookup("segments", keys) ──► StageState ── Lookups["segments"]
//!                                          │   (a TableLookup: the lookup stage's
//!                                          │    table and cache, shared)
//!  host   within(call deadline, table.lookup(keys)) ──► values + generation
//!           ready first    → Ok(batch) to the guest; counters and the
//!                            generation noted in the stage's LookupLog
//!           table failing  → Err(unavailable) (transient) to the guest
//!           deadline first → Trap::Interrupt, as guest code past it
//! ```
//!
//! The sandbox knows tables only through [`TableLookup`], so it does not depend
//! on the connectors: the table, its loading, refresh and staleness rules are the
//! `[stage.lookup]` stage's own (`connectors::lookup`), built by the `[stage.wasm]`
//! spec and handed in as [`Lookups`].
//!
//! Granting is two-fold. A component that imports the interface is admitted
//! only into a stage with at least one table ([`LoadedComponent::check_grants`]);
//! a call naming a table the stage was not granted gets `unknown-table`. A
//! component that never calls `lookup` does not import it, and runs anywhere.
//!
//! [`LoadedComponent::check_grants`]: super::LoadedComponent::check_grants

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};

/// The import's interface name, as components built against `0.1.1` spell it.
pub const LOOKUP_IMPORT: &str = "weir:stage/lookup@0.1.1";

/// The prefix of every version of the import the host serves (semver-compatible
/// with `0.1.1`).
pub(super) const LOOKUP_PREFIX: &str = "weir:stage/lookup@0.1.";

/// A future a [`TableLookup`] returns.
pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Looked, LookupFailure>> + Send + 'a>>;

/// A table a stage may look keys up in.
///
/// Implemented by the lookup stage's table (`connectors::lookup`); the sandbox
/// runs the future under the call's deadline, so an implementation may wait (a
/// first load) but must leave its cache consistent if the future is dropped.
pub trait TableLookup: Send + Sync {
    /// The looked-up columns for each row of `keys`: one row per key, nulls for
    /// a key the table lacks.
    fn lookup(&self, keys: ArrayRef) -> LookupFuture<'_>;
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub struct Looked {
    /// One row per key: the table's looked-up columns.
    pub values: RecordBatch,
    /// The table generation that answered (`table:<sha256>` for a table loaded
    /// whole), for the batch's lineage.
    pub generation: String,
    /// Counters for the stage's summary (`lookup_hits`, `lookup_misses`,
    /// `reloads`, …), as the lookup stage counts them.
    pub counters: BTreeMap<String, u64>,
}

/// Why a lookup gave no values; each becomes a case of the WIT `lookup-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupFailure {
    /// The keys do not match the table's key (type, layout): the stage's fault.
    #[error("{0}")]
    BadKeys(String),
    /// The table cannot be read now: transient.
    #[error("{0}")]
    Unavailable(String),
    /// The table cannot serve at all (its file is unreadable, it is past its
    /// cache's cap): the call traps and the stage fails with this message, as
    /// a `lookup` stage's run would.
    #[error("{0}")]
    Failed(String),
}

/// The tables granted to one stage, by the name the guest passes to `lookup`.
/// Cheap to clone; empty by default (nothing granted).
#[derive(Clone, Default)]
pub struct Lookups {
    tables: Arc<BTreeMap<String, Arc<dyn TableLookup>>>,
}

impl Lookups {
    /// The tables named as in `tables`.
    pub fn new(tables: BTreeMap<String, Arc<dyn TableLookup>>) -> Self {
        Self {
            tables: Arc::new(tables),
        }
    }

    /// Whether no table is granted.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The granted tables' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    pub(super) fn get(&self, name: &str) -> Option<&Arc<dyn TableLookup>> {
        self.tables.get(name)
    }
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// What a stage's lookups did since it was last read: counters for the run
/// summary and the table generations that answered, for lineage. Kept across
/// instances, as the guest's metrics are.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LookupLog {
    /// Counter name → total.
    pub counters: BTreeMap<String, u64>,
    /// Table name → the generation that last answered.
    pub generations: BTreeMap<String, String>,
}

impl LookupLog {
    pub(super) fn note(&mut self, table: &str, looked: &Looked) {
        for (name, n) in &looked.counters {
            *self.counters.entry(name.clone()).or_default() += n;
        }
        self.generations
            .insert(table.to_owned(), looked.generation.clone());
    }
}

/// A stage's log, shared by its instances.
pub(super) type SharedLog = Arc<Mutex<LookupLog>>;
