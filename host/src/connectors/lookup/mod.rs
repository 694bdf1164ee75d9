//! The `lookup` stage (`[stage.lookup]`): joins key columns against a table
//! kept elsewhere (PostgreSQL, or a CSV, JSON-lines or Parquet file), adding
//! the table's columns to each row, behind a cache.
//!
//! ```toml
//! [[stage]]
//! name = "segments"
//! input = "events"
//! [stage.lookup]
//! key = ["user_id"]                        # input columns
//! columns = ["segment", "ltv"]             # default: the table's other columns
//! defaults = { segment = "unknown" }       # a miss: these, else nulls
//! table.postgres = { url = "postgres://reader@db/app", query = "SELECT user_id, segment, ltv FROM segments" }
//! cache = { mode = "full", refresh = "5m", max_shrink = 0.5, staleness = "1h" }
//! ```
//!
//! **Two caches.** `mode = "full"` (the default) loads the whole table when
//! the first batch arrives and, with `refresh`, loads it again in the
//! background every `refresh`: lookups never wait on the table. `mode =
//! "lazy"` (PostgreSQL only, one key column) fetches the keys a batch lacks in
//! one query per batch (`WHERE key = ANY($1)`: never a query per row, each key
//! once however many rows carry it), keeps each entry for `ttl`, and
//! remembers a key the table lacks for `negative_ttl` so it is not asked for
//! again. Entries are charged to the run's memory pool, and `max_entries` /
//! `max_bytes` cap them: a full table past the cap is refused; a lazy cache
//! drops its oldest entries.
//!
//! **Outages.** A reload that fails, or that would change the table's
//! columns, or shrink it by more than `max_shrink` (a truncated table, a
//! half-loaded file), is refused: the previous generation keeps serving. A
//! lazy fetch that fails serves the expired entries it has. Either way values
//! are served stale for at most `staleness` past when they were due; then the
//! stage fails naming the table and how stale it is (transient: a resumed run
//! tries again). The summary counts `lookup_hits`, `lookup_misses`,
//! `lookup_queries`, `reloads`, `reloads_refused`, `stale_served`.
//!
//! **Warm restarts.** With the host's node state store, a full table is kept
//! in the store (as Arrow IPC) each time it loads, and a lazy cache when the
//! input ends; a restarted pipeline starts from it (a full table still
//! reloads in the background if it is older than `refresh`).
//!
//! **Lineage.** Each output batch's lineage names the stage with the table's
//! generation as its digest: `table:<sha256 of the loaded snapshot>` for a
//! full table, `fetched:<ms>` (the oldest entry the batch used) for a lazy
//! cache, so `weir lineage` of a feature says which version of the table made
//! it.

//!
//! **From a WebAssembly stage.** The same table and cache serve the
//! `weir:stage/lookup` import of a featurizer granted the table in its spec
//! (`[stage.wasm.lookups.<name>]`, see `grant.rs`): `table.rs` holds the one
//! [`LookupTable`](table::LookupTable) both build.

mod cache;
mod grant;
mod stage;
mod table;

#[cfg(test)]
mod tests;

pub use grant::LookupGrant;
pub use stage::{CacheMode, CacheSpec, LookupSpec, TableSpec};
