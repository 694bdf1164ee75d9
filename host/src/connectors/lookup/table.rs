//! The lookup table behind its cache: what the `[stage.lookup]` stage and the
//! `weir:stage/lookup` import of a WebAssembly stage (`[stage.wasm.lookups]`)
//! both serve from. One type holds the loading, the background refresh, the
//! refusal of bad reloads, the staleness rule, the lazy fetches, the memory
//! charge and the warm restarts; each user only turns its own input into key
//! columns and its output from the looked-up values.
//!
//! ```text
//!  [stage.lookup]  input batch ─key columns─┐
//!                                           ├─► LookupTable::lookup ─► values + generation
//!  wasm `lookup`   guest's key column ──────┘      (Cache, Generation, reload, staleness)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use sha2::{Digest, Sha256};

use super::cache::{Cache, Probe, Ttl, null_keys};
use super::stage::{CacheMode, CacheSpec, TableSpec};
use crate::node::config::{BuildCx, SourceNode};
use crate::node::memory::{MemorySource, Reservation, RunMemory};
use crate::node::retry::{GaveUp, RetryPolicy, node_transience};
use crate::node::services::{Clock, NodeStateStore, Services};
use crate::node::{Emitter, NodeError};
use crate::units::ByteSize;

/// What a table is asked for, from a spec: which columns key it, which are
/// looked up, and what a miss gives.
pub(crate) struct TableDef<'a> {
    /// The spec's key path of the table's user (`stage[1].lookup`), for messages.
    pub(crate) key: &'a str,
    /// Where the table lives.
    pub(crate) table: &'a TableSpec,
    /// The table's key columns.
    pub(crate) table_key: &'a [String],
    /// The looked-up columns; `None`: every column but the keys.
    pub(crate) columns: Option<&'a [String]>,
    /// Values for a miss, by column; nulls elsewhere.
    pub(crate) defaults: &'a BTreeMap<String, serde_json::Value>,
    /// The cache.
    pub(crate) cache: &'a CacheSpec,
    /// How a failed load or fetch is retried.
    pub(crate) retry: &'a RetryPolicy,
    /// Hashed to tell a kept generation of these same settings from another's.
    pub(crate) params: String,
    /// Where a warm generation is kept in the node state store.
    pub(crate) space: String,
    /// Who holds the table, as the run's memory pool names the consumer.
    pub(crate) consumer: String,
}

pub(super) fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row of `schema` holding `defaults` (nulls elsewhere), parsed as a
/// JSON line by Arrow's reader, so a default of the wrong type is refused
/// the same way a record would be.
fn defaults_row(
    schema: &SchemaRef,
    defaults: &BTreeMap<String, serde_json::Value>,
) -> Result<RecordBatch, String> {
    let line = serde_json::to_string(defaults).map_err(|e| e.to_string())?;
    let mut reader = arrow::json::ReaderBuilder::new(schema.clone())
        .build(std::io::Cursor::new(line.into_bytes()))
        .map_err(|e| e.to_string())?;
    match reader.next() {
        Some(Ok(b)) if b.num_rows() == 1 => Ok(b),
        Some(Err(e)) => Err(e.to_string()),
        _ => Err("cannot be read as one row".into()),
    }
}

/// Where the rows come from.
enum Table {
    #[cfg(feature = "postgres")]
    Postgres(crate::connectors::postgres::source::PgTable),
    /// A file source, built again for each load.
    File {
        spec: TableSpec,
        key: String,
        schema: SchemaRef,
        owned: OwnedCx,
    },
}

/// What building a file source needs, kept past the plan's build.
struct OwnedCx {
    name: String,
    pipeline: String,
    base_dir: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    tenant: String,
    batch_rows: std::num::NonZeroUsize,
    memory: RunMemory,
    clock: Arc<dyn Clock>,
}

impl OwnedCx {
    fn build(&self, spec: &TableSpec, key: &str) -> Result<SourceNode, NodeError> {
        let services = Services::new();
        spec.config().build(&BuildCx {
            key,
            name: &self.name,
            pipeline: &self.pipeline,
            base_dir: &self.base_dir,
            batch_rows: self.batch_rows,
            memory: &self.memory,
            data_dir: &self.data_dir,
            tenant: &self.tenant,
            services: &services,
            clock: &self.clock,
        })
    }
}

impl Table {
    fn open(spec: &TableSpec, cx: &BuildCx, key: &str) -> Result<Self, NodeError> {
        #[cfg(feature = "postgres")]
        if let TableSpec::Postgres(p) = spec {
            return Ok(Self::Postgres(p.lookup_table(key, cx.batch_rows.get())?));
        }
        let scratch = tempfile::tempdir_in(cx.memory.spill.path())
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| NodeError::Io {
                path: "a scratch directory for a lookup table".into(),
                error: e,
            })?;
        let owned = OwnedCx {
            name: cx.name.to_owned(),
            pipeline: cx.pipeline.to_owned(),
            base_dir: cx.base_dir.to_owned(),
            data_dir: cx.data_dir.to_owned(),
            tenant: cx.tenant.to_owned(),
            batch_rows: cx.batch_rows,
            // File sources reserve nothing; the table's bytes are charged to
            // the run's pool by the stage.
            memory: RunMemory::for_run(
                ByteSize(u64::MAX / 2),
                ByteSize(0),
                &scratch.keep(),
                None,
                &MemorySource::System,
            )
            .map_err(|e| NodeError::Io {
                path: "a lookup table's scratch directory".into(),
                error: e,
            })?,
            clock: cx.clock.clone(),
        };
        let schema = match owned.build(spec, key)? {
            SourceNode::Sync(s) => s.schema(),
            SourceNode::Async(s) => s.schema(),
        };
        Ok(Self::File {
            spec: spec.clone(),
            key: key.to_owned(),
            schema,
            owned,
        })
    }

    fn schema(&self) -> SchemaRef {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.schema(),
            Self::File { schema, .. } => schema.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.describe().to_owned(),
            Self::File { key, .. } => format!("the table of `{key}`"),
        }
    }

    /// Every row of the table; a file's corrupt records are counted, not kept.
    async fn read_all(self: &Arc<Self>) -> Result<(Vec<RecordBatch>, u64), NodeError> {
        match &**self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => Ok((t.read_all().await?, 0)),
            Self::File { .. } => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.read_file())
                    .await
                    .map_err(|e| NodeError::Bug(format!("a table load panicked: {e}")))?
            }
        }
    }

    fn read_file(&self) -> Result<(Vec<RecordBatch>, u64), NodeError> {
        let (spec, key, owned) = match self {
            Self::File {
                spec, key, owned, ..
            } => (spec, key, owned),
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                return Err(NodeError::Bug(
                    "read_file on a table that is no file".into(),
                ));
            }
        };
        let SourceNode::Sync(mut source) = owned.build(spec, key)? else {
            return Err(NodeError::Bug("a file table built an async source".into()));
        };
        let mut batches = Vec::new();
        let mut rejected = 0u64;
        loop {
            let mut out = Emitter::default();
            let more = source.next_batch(&mut out)?;
            rejected += out.dead_letters.len() as u64;
            batches.extend(out.take_output().into_iter().map(|(b, ..)| b));
            if !more {
                return Ok((batches, rejected));
            }
        }
    }
}

/// A loaded table: the cache and what identifies it.
struct Generation {
    cache: Cache,
    /// `table:<sha256>` (full) or empty (lazy: per batch).
    digest: String,
    rows: usize,
    loaded_ms: u64,
}

/// A reload in flight.
type Reload = tokio::task::JoinHandle<Result<(Vec<RecordBatch>, u64), NodeError>>;

/// A table and its cache, as one stage uses it. See the module docs.
#[cfg_attr(
    not(feature = "postgres"),
    allow(
        dead_code,
        reason = "the table's key names serve the lazy PostgreSQL cache"
    )
)]
pub(crate) struct LookupTable {
    key: String,
    table_key: Vec<String>,
    table: Arc<Table>,
    table_key_cols: Vec<usize>,
    value_cols: Vec<usize>,
    key_fields: Vec<Field>,
    value_schema: SchemaRef,
    defaults: RecordBatch,
    spec: CacheSpec,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn NodeStateStore>>,
    space: String,
    params_hash: String,
    stage_name: String,
    reservation: Reservation,
    generation: Option<Generation>,
    reload: Option<Reload>,
    /// Since when the table could not be read (a failed or refused reload, a
    /// failed fetch), in ms since 1970.
    failing_since: Option<u64>,
    /// When a reload was last started.
    last_attempt_ms: u64,
    /// When a lazy cache was last kept in the store.
    saved_ms: u64,
}

/// What one lookup found.
pub(crate) struct Found {
    /// The looked-up columns, one row per key.
    pub(crate) values: Vec<ArrayRef>,
    /// The generation that answered: `table:<sha256>` (full) or
    /// `fetched:<ms>` (lazy, the oldest entry used).
    pub(crate) digest: String,
}

impl Drop for LookupTable {
    /// A reload in flight is not awaited by anyone any more.
    fn drop(&mut self) {
        if let Some(h) = self.reload.take() {
            h.abort();
        }
    }
}

const STORE_KEY: &[u8] = b"cache";

impl LookupTable {
    /// Describes the table of `def` (its schema, so the plan knows the
    /// output); the data is read at the first lookup.
    ///
    /// # Errors
    /// [`NodeError`] (config) naming the key path when the table cannot be
    /// described, lacks a key or looked-up column, or a default does not fit.
    pub(crate) fn open(def: &TableDef<'_>, cx: &BuildCx) -> Result<Self, NodeError> {
        let key = def.key;
        let table_key = format!("{key}.table.{}", def.table.name());
        let table = Table::open(def.table, cx, &table_key)?;
        let schema = table.schema();
        let table_key_cols: Vec<usize> = def
            .table_key
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    NodeError::config(format!(
                        "`{key}.table_key`: the table has no column `{k}` (it has {})",
                        names(&schema)
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let columns: Vec<String> = match def.columns {
            Some(c) => c.to_vec(),
            None => schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| !table_key_cols.contains(i))
                .map(|(_, f)| f.name().clone())
                .collect(),
        };
        let value_cols: Vec<usize> = columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    NodeError::config(format!(
                        "`{key}.columns`: the table has no column `{c}` (it has {})",
                        names(&schema)
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let value_schema = Arc::new(Schema::new(
            value_cols
                .iter()
                .map(|&i| schema.field(i).clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        for name in def.defaults.keys() {
            if !columns.contains(name) {
                return Err(NodeError::config(format!(
                    "`{key}.defaults.{name}`: `{name}` is not a looked-up column (they are {})",
                    columns
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let defaults = defaults_row(&value_schema, def.defaults)
            .map_err(|e| NodeError::config(format!("`{key}.defaults`: {e}")))?;
        let key_fields: Vec<Field> = table_key_cols
            .iter()
            .map(|&i| schema.field(i).clone())
            .collect();
        #[cfg(feature = "postgres")]
        if def.cache.mode == CacheMode::Lazy
            && let Table::Postgres(t) = &table
        {
            t.keyable(&def.table_key[0])
                .map_err(|e| NodeError::config(format!("`{key}.table_key`: {e}")))?;
        }
        Ok(Self {
            key: key.to_owned(),
            table_key: def.table_key.to_vec(),
            table: Arc::new(table),
            table_key_cols,
            value_cols,
            key_fields,
            value_schema,
            defaults,
            spec: def.cache.clone(),
            retry: def.retry.clone(),
            clock: cx.clock.clone(),
            store: cx.services.get::<dyn NodeStateStore>(),
            space: def.space.clone(),
            params_hash: hex::encode(Sha256::digest(def.params.as_bytes())),
            stage_name: cx.name.to_owned(),
            reservation: cx.memory.pool.reservation(def.consumer.clone()),
            generation: None,
            reload: None,
            failing_since: None,
            last_attempt_ms: 0,
            saved_ms: 0,
        })
    }

    /// The table's key columns (their types are what keys are cast to).
    pub(crate) fn key_fields(&self) -> &[Field] {
        &self.key_fields
    }

    /// The looked-up columns, each nullable.
    pub(crate) fn value_schema(&self) -> &SchemaRef {
        &self.value_schema
    }

    /// How the table is named in messages.
    pub(crate) fn describe(&self) -> String {
        self.table.describe()
    }

    /// The looked-up values for `keys` (columns of the key types, `rows`
    /// rows): loads the table on the first call, tends the refresh, fetches
    /// what a lazy cache lacks, and counts `lookup_hits`, `lookup_misses`,
    /// `stale_served` and the loads into `out`.
    ///
    /// Dropping the future leaves the cache as it was for a full table (a
    /// first load not finished is started again by the next call); a lazy
    /// cache's fetch in flight takes the cache with it, so the wasm import,
    /// which runs under a deadline, refuses lazy tables.
    ///
    /// # Errors
    /// The table could not be loaded or fetched (after retries), or values
    /// have been stale past `staleness` (transient); the cache's cap.
    pub(crate) async fn lookup(
        &mut self,
        keys: &[ArrayRef],
        rows: usize,
        out: &mut Emitter,
    ) -> Result<Found, NodeError> {
        if self.generation.is_none() {
            self.start(out).await?;
        }
        let now = self.clock.now_ms();
        if self.spec.mode == CacheMode::Full {
            self.tend_reload(out)?;
        }
        let mut stale = self.check_staleness(now)?;
        let nulls = null_keys(keys, rows);
        let ttl = match self.spec.mode {
            CacheMode::Full => Ttl::FOREVER,
            CacheMode::Lazy => Ttl {
                present: self.spec.ttl.0.as_millis() as u64,
                absent: self.spec.negative_ttl.0.as_millis() as u64,
            },
        };
        let g = self
            .generation
            .as_ref()
            .ok_or_else(|| NodeError::Bug("no generation".into()))?;
        let encoded = g.cache.encode_keys(keys)?;
        let mut probes = g.cache.probe(&encoded, &nulls, now, ttl);
        if self.spec.mode == CacheMode::Lazy {
            let hits_before = probes
                .iter()
                .filter(|p| matches!(p, Probe::Hit { .. }))
                .count();
            out.count("lookup_hits", hits_before as u64);
            stale |= self.fetch_missing(&encoded, &probes, out).await?;
            let g = self
                .generation
                .as_ref()
                .ok_or_else(|| NodeError::Bug("no generation".into()))?;
            probes = g.cache.probe(&encoded, &nulls, now, Ttl::FOREVER);
            let fetched = probes.len() - hits_before - nulls.iter().filter(|n| **n).count();
            out.count("lookup_misses", fetched as u64);
        } else {
            let hits = probes
                .iter()
                .filter(|p| matches!(p, Probe::Hit { present: true, .. }))
                .count();
            out.count("lookup_hits", hits as u64);
            out.count("lookup_misses", (probes.len() - hits) as u64);
        }
        if stale {
            out.count("stale_served", rows as u64);
        }
        let g = self
            .generation
            .as_ref()
            .ok_or_else(|| NodeError::Bug("no generation".into()))?;
        let values = g.cache.output(&encoded, &nulls)?;
        let digest = match self.spec.mode {
            CacheMode::Full => g.digest.clone(),
            CacheMode::Lazy => {
                let oldest = probes
                    .iter()
                    .filter_map(|p| match p {
                        Probe::Hit { fetched_ms, .. } => Some(*fetched_ms),
                        _ => None,
                    })
                    .min();
                oldest.map_or_else(|| "fetched:none".to_owned(), |t| format!("fetched:{t}"))
            }
        };
        if self.spec.mode == CacheMode::Lazy && now.saturating_sub(self.saved_ms) > 60_000 {
            self.save_lazy()?;
        }
        Ok(Found { values, digest })
    }

    /// At the end of the input: reports the entries held, keeps a lazy cache
    /// in the store and stops a reload in flight.
    ///
    /// # Errors
    /// The store refused the lazy cache.
    pub(crate) fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        if let Some(g) = &self.generation {
            out.set_state("entries", &g.cache.len().to_string());
        }
        if self.spec.mode == CacheMode::Lazy {
            self.save_lazy()?;
        }
        if let Some(h) = self.reload.take() {
            h.abort();
        }
        Ok(())
    }

    /// The table's rows as a new generation (keys, values, digest), checked
    /// against the cap.
    fn generation_of(&self, batches: &[RecordBatch], now: u64) -> Result<Generation, NodeError> {
        let schema = self.table.schema();
        let all = arrow::compute::concat_batches(&schema, batches)?;
        let keys: Vec<ArrayRef> = self
            .table_key_cols
            .iter()
            .map(|&i| all.column(i).clone())
            .collect();
        let values: Vec<ArrayRef> = self
            .value_cols
            .iter()
            .map(|&i| all.column(i).clone())
            .collect();
        let mut cache = Cache::new(&self.key_fields, self.value_schema.clone(), &self.defaults)?;
        cache.insert_rows(&keys, &values, now)?;
        if cache.len() > self.spec.max_entries
            || self
                .spec
                .max_bytes
                .is_some_and(|m| cache.bytes() as u64 > m.0)
        {
            return Err(NodeError::config(format!(
                "`{}`: the table holds {} entries ({} bytes), past the cache's cap \
                 (max_entries {}, max_bytes {})",
                self.key,
                cache.len(),
                cache.bytes(),
                self.spec.max_entries,
                self.spec
                    .max_bytes
                    .map_or("none".into(), |b| b.0.to_string())
            )));
        }
        let mut h = Sha256::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut h, &schema)?;
        w.write(&all)?;
        w.finish()?;
        drop(w);
        Ok(Generation {
            cache,
            digest: format!("table:{}", hex::encode(h.finalize())),
            rows: all.num_rows(),
            loaded_ms: now,
        })
    }

    /// Charges the generation's bytes to the run's pool (replacing the
    /// previous charge).
    fn charge(&mut self, bytes: usize) -> Result<(), NodeError> {
        let held = self.reservation.size();
        if bytes > held {
            self.reservation
                .try_grow(bytes - held)
                .map_err(|e| NodeError::Resource {
                    resource: crate::node::Resource::Memory,
                    error: Box::new(e),
                })?;
        } else {
            self.reservation.shrink(held - bytes);
        }
        Ok(())
    }

    /// The first batch: the table from the store (warm) or loaded now.
    async fn start(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        if let Some(g) = self.restore(now)? {
            out.count("warm_starts", 1);
            self.charge(g.cache.bytes())?;
            self.last_attempt_ms = g.loaded_ms;
            self.generation = Some(g);
            return Ok(());
        }
        if self.spec.mode == CacheMode::Lazy {
            let cache = Cache::new(&self.key_fields, self.value_schema.clone(), &self.defaults)?;
            self.generation = Some(Generation {
                cache,
                digest: String::new(),
                rows: 0,
                loaded_ms: now,
            });
            return Ok(());
        }
        let table = self.table.clone();
        let mut retries = 0u64;
        let r = self
            .retry
            .run(&self.table.describe(), &node_transience, |attempt| {
                if attempt.get() > 1 {
                    retries += 1;
                }
                let t = table.clone();
                async move { t.read_all().await }
            })
            .await;
        if retries > 0 {
            out.count("retries", retries);
        }
        let (batches, rejected) = r.map_err(GaveUp::into_node_error)?;
        if rejected > 0 {
            out.count("table_rows_rejected", rejected);
        }
        let g = self.generation_of(&batches, now)?;
        self.charge(g.cache.bytes())?;
        out.count("reloads", 1);
        self.last_attempt_ms = now;
        self.save(&g, &batches)?;
        self.generation = Some(g);
        Ok(())
    }

    /// Keeps a full generation in the store (as the table's rows).
    fn save(&self, g: &Generation, batches: &[RecordBatch]) -> Result<(), NodeError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let schema = self.table.schema();
        let mut buf = Vec::new();
        let header = serde_json::json!({
            "params": self.params_hash, "digest": g.digest, "loaded_ms": g.loaded_ms, "mode": "full"
        })
        .to_string();
        buf.extend((header.len() as u32).to_be_bytes());
        buf.extend(header.as_bytes());
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
        drop(w);
        store.put(&self.space, STORE_KEY, &buf)
    }

    /// Keeps a lazy cache's entries in the store.
    fn save_lazy(&mut self) -> Result<(), NodeError> {
        let (Some(store), Some(g)) = (&self.store, &self.generation) else {
            return Ok(());
        };
        let super::cache::Exported {
            keys,
            values,
            times,
            present,
        } = g.cache.export()?;
        let mut fields: Vec<Field> = self.key_fields.clone();
        fields.extend(
            self.value_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        fields.push(Field::new(
            "_fetched_ms",
            arrow::datatypes::DataType::UInt64,
            false,
        ));
        fields.push(Field::new(
            "_present",
            arrow::datatypes::DataType::Boolean,
            false,
        ));
        let schema = Arc::new(Schema::new(fields));
        let mut columns = keys;
        columns.extend(values);
        columns.push(Arc::new(arrow::array::UInt64Array::from(times)));
        columns.push(Arc::new(arrow::array::BooleanArray::from(present)));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let header = serde_json::json!({ "params": self.params_hash, "mode": "lazy" }).to_string();
        let mut buf = Vec::new();
        buf.extend((header.len() as u32).to_be_bytes());
        buf.extend(header.as_bytes());
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)?;
        w.write(&batch)?;
        w.finish()?;
        drop(w);
        store.put(&self.space, STORE_KEY, &buf)?;
        self.saved_ms = self.clock.now_ms();
        Ok(())
    }

    /// The generation the store keeps for these same parameters, if any.
    fn restore(&self, now: u64) -> Result<Option<Generation>, NodeError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let Some(bytes) = store.get(&self.space, STORE_KEY)? else {
            return Ok(None);
        };
        let Some((header, body)) = bytes
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| Some((bytes.get(4..4 + n)?, bytes.get(4 + n..)?)))
        else {
            return Ok(None);
        };
        let header: serde_json::Value = serde_json::from_slice(header).unwrap_or_default();
        if header["params"] != self.params_hash.as_str() {
            return Ok(None);
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
        if header["mode"] == "full" {
            let loaded = header["loaded_ms"].as_u64().unwrap_or(0);
            let mut g = self.generation_of(&batches, loaded)?;
            g.loaded_ms = loaded;
            return Ok(Some(g));
        }
        let mut cache = Cache::new(&self.key_fields, self.value_schema.clone(), &self.defaults)?;
        let k = self.key_fields.len();
        let v = self.value_schema.fields().len();
        for b in &batches {
            let keys: Vec<ArrayRef> = b.columns()[..k].to_vec();
            let values: Vec<ArrayRef> = b.columns()[k..k + v].to_vec();
            let times = b
                .column(k + v)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>();
            let present = b
                .column(k + v + 1)
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>();
            let (Some(times), Some(present)) = (times, present) else {
                return Ok(None);
            };
            let key_rows = cache.encode_keys(&keys)?;
            let value_rows = {
                let conv = arrow::row::RowConverter::new(
                    self.value_schema
                        .fields()
                        .iter()
                        .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                        .collect(),
                )?;
                conv.convert_columns(&values)?
            };
            for i in 0..b.num_rows() {
                let value = present.value(i).then(|| value_rows.row(i).as_ref().into());
                cache.put(key_rows.row(i).as_ref().into(), value, times.value(i));
            }
        }
        let _ = now;
        Ok(Some(Generation {
            cache,
            digest: String::new(),
            rows: 0,
            loaded_ms: now,
        }))
    }

    /// Full mode: takes a finished reload in (or refuses it), and starts the
    /// next when it is due.
    fn tend_reload(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let Some(every) = self.spec.refresh else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        if self
            .reload
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            let result = self
                .reload
                .take()
                .and_then(futures_util::FutureExt::now_or_never)
                .map(|joined| {
                    joined.map_err(|e| NodeError::Bug(format!("a reload panicked: {e}")))
                });
            let outcome = match result {
                Some(Ok(Ok((batches, _rejected)))) => self.accept(&batches, now),
                Some(Ok(Err(e)) | Err(e)) => Err(format!("the reload failed: {e}")),
                None => Err("a finished reload was not ready".to_owned()),
            };
            match outcome {
                Ok(()) => {
                    out.count("reloads", 1);
                    self.failing_since = None;
                }
                Err(why) => {
                    out.count("reloads_refused", 1);
                    tracing::warn!(stage = %self.stage_name, "{}: {why}; the previous generation keeps serving", self.table.describe());
                    self.failing_since.get_or_insert(now);
                }
            }
        }
        if self.reload.is_none()
            && now.saturating_sub(self.last_attempt_ms) >= every.0.as_millis() as u64
        {
            self.last_attempt_ms = now;
            let table = self.table.clone();
            self.reload = Some(tokio::spawn(async move { table.read_all().await }));
        }
        Ok(())
    }

    /// A reload's rows become the generation, unless they would change the
    /// columns or shrink the table past `max_shrink`.
    fn accept(&mut self, batches: &[RecordBatch], now: u64) -> Result<(), String> {
        let schema = self.table.schema();
        if let Some(b) = batches
            .iter()
            .find(|b| b.schema().fields() != schema.fields())
        {
            return Err(format!("its columns changed (now {})", names(&b.schema())));
        }
        let g = self
            .generation_of(batches, now)
            .map_err(|e| e.to_string())?;
        let old = self.generation.as_ref().map_or(0, |g| g.rows);
        if (g.rows as f64) < old as f64 * (1.0 - self.spec.max_shrink) {
            return Err(format!(
                "it would shrink the table from {old} to {} rows, more than max_shrink {}",
                g.rows, self.spec.max_shrink
            ));
        }
        self.charge(g.cache.bytes()).map_err(|e| e.to_string())?;
        self.save(&g, batches).map_err(|e| e.to_string())?;
        self.generation = Some(g);
        Ok(())
    }

    /// Fails once values have been stale for longer than `staleness`.
    fn check_staleness(&self, now: u64) -> Result<bool, NodeError> {
        let Some(since) = self.failing_since else {
            return Ok(false);
        };
        let stale_for = now.saturating_sub(since);
        if stale_for > self.spec.staleness.0.as_millis() as u64 {
            return Err(NodeError::Service {
                service: self.table.describe(),
                transient: true,
                message: format!(
                    "`{}`: {} could not be read for {} s, longer than `staleness` ({}): the \
                     values it would serve are too old",
                    self.key,
                    self.table.describe(),
                    stale_for / 1000,
                    self.spec.staleness
                ),
            });
        }
        Ok(true)
    }

    /// Lazy mode: fetches the distinct keys of `probes` the cache cannot
    /// answer, in one query; returns whether expired entries were served
    /// instead because the fetch failed.
    async fn fetch_missing(
        &mut self,
        keys: &arrow::row::Rows,
        probes: &[Probe],
        out: &mut Emitter,
    ) -> Result<bool, NodeError> {
        let Some(mut g) = self.generation.take() else {
            return Ok(false);
        };
        let r = self.fetch_into(&mut g, keys, probes, out).await;
        self.generation = Some(g);
        let bytes = self.generation.as_ref().map_or(0, |g| g.cache.bytes());
        if r.as_ref().is_ok_and(|stale| !stale) {
            self.charge(bytes)?;
        }
        r
    }

    #[cfg(feature = "postgres")]
    async fn fetch_into(
        &mut self,
        g: &mut Generation,
        keys: &arrow::row::Rows,
        probes: &[Probe],
        out: &mut Emitter,
    ) -> Result<bool, NodeError> {
        let mut wanted: Vec<&[u8]> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, p) in probes.iter().enumerate() {
            if *p == Probe::Unknown && seen.insert(keys.row(i).data()) {
                wanted.push(keys.row(i).data());
            }
        }
        if wanted.is_empty() {
            return Ok(false);
        }
        let table = self.table.clone();
        let Table::Postgres(pg) = &*table else {
            return Err(NodeError::Bug("a lazy lookup on a file table".into()));
        };
        let key_array = g.cache.decode_keys(wanted.iter().copied())?.remove(0);
        let column = &self.table_key[0];
        let mut retries = 0u64;
        let counter = &mut retries;
        let key_ref = &key_array;
        let r = self
            .retry
            .run(pg.describe(), &node_transience, move |attempt| {
                if attempt.get() > 1 {
                    *counter += 1;
                }
                pg.read_keys(column, key_ref)
            })
            .await;
        if retries > 0 {
            out.count("retries", retries);
        }
        out.count("lookup_queries", 1 + retries);
        let now = self.clock.now_ms();
        match r {
            Ok(batches) => {
                for b in &batches {
                    let ks: Vec<ArrayRef> = self
                        .table_key_cols
                        .iter()
                        .map(|&i| b.column(i).clone())
                        .collect();
                    let vs: Vec<ArrayRef> = self
                        .value_cols
                        .iter()
                        .map(|&i| b.column(i).clone())
                        .collect();
                    g.cache.insert_rows(&ks, &vs, now)?;
                }
                // Keys the table lacks are remembered as absent.
                for k in wanted {
                    let fresh = g.cache.get(k).is_some_and(|s| s.fetched_ms == now);
                    if !fresh {
                        g.cache.put(k.into(), None, now);
                    }
                }
                let dropped = g.cache.evict_to(
                    self.spec.max_entries,
                    self.spec.max_bytes.map_or(usize::MAX, ByteSize::as_usize),
                );
                if dropped > 0 {
                    out.count("evicted", dropped as u64);
                }
                self.failing_since = None;
                Ok(false)
            }
            Err(gave_up) => {
                let error = gave_up.into_node_error();
                // Serve what the cache holds, expired, within `staleness`.
                let limit = self.spec.staleness.0.as_millis() as u64;
                let ttl = self.spec.ttl.0.as_millis() as u64;
                let servable = wanted.iter().all(|k| {
                    g.cache
                        .get(k)
                        .is_some_and(|s| now.saturating_sub(s.fetched_ms) <= ttl + limit)
                });
                if !servable {
                    return Err(error);
                }
                self.failing_since.get_or_insert(now);
                tracing::warn!(stage = %self.stage_name, "{error}; serving cached values past their TTL");
                Ok(true)
            }
        }
    }

    #[cfg(not(feature = "postgres"))]
    async fn fetch_into(
        &mut self,
        _g: &mut Generation,
        _keys: &arrow::row::Rows,
        _probes: &[Probe],
        _out: &mut Emitter,
    ) -> Result<bool, NodeError> {
        Ok(false)
    }
}
