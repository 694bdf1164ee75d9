//! `[sink.redis]`: the online feature store. Each row is the feature vector of
//! one entity, kept as a Redis hash that model serving reads with `HGETALL`.
//!
//! ```toml
//! [sink.redis]
//! url = "redis://127.0.0.1:6379"   # required; redis://[user:password@]host:port[/db]
//! prefix = "features:user"         # required; keys are `{prefix}:{entity}`
//! entity = "user_id"               # required; a string or integer column
//! event_time = "window_end"        # required; a timestamp or Int64 (epoch ms) column
//! features = ["clicks", "ctr"]     # default: every column but the entity and event time
//! ttl = "7d"                       # default: none (keys never expire)
//! ttl_from = "write"               # or "event_time"; default "write"
//! lineage = true                   # keep `_lineage` beside the features; default true
//! pipeline_rows = 1024             # rows per pipeline; default 1024
//! in_flight = 4                    # pipelines awaiting their reply; default 4
//! timeout = "10s"                  # a pipeline's reply; default 10s
//! retry = { attempts = 4 }         # transient failures retried: crate::node::retry, defaults there
//! ```
//!
//! ```text
//!   batch ─► chunks of 64 rows ─► EVALSHA guard (64 keys) ┐
//!                                 EVALSHA guard (64 keys) ├─ one pipeline of pipeline_rows,
//!                                 …                       ┘  headed by SCRIPT LOAD
//!         up to `in_flight` pipelines on the connection; encoding the next overlaps the replies
//! ```
//!
//! **The guard.** A vector never overwrites a newer one: [`GUARD`] compares the
//! stored `_event_time_ms` with the new vector's, in milliseconds, inside the
//! server, atomically, and writes (`HDEL` of null features, `HSET` of the rest,
//! the TTL) only when the new one is as new or newer. So replays, retries and
//! out-of-order arrivals are harmless, and two writers racing on an entity end
//! with the newer vector, whatever the interleaving. (Reading the stored time
//! from the client and then writing, as Feast's Redis store does, in seconds,
//! races between writers.) An equal event time rewrites: an idempotent replay,
//! or the same vector computed again by newer code.
//!
//! One script call covers 64 entities: an `EVALSHA` per entity costs Redis about
//! three times a plain `HSET`, one per 64 about twice (see docs/redis.md for the
//! figures). Each pipeline starts with `SCRIPT LOAD`, so a server that lost its
//! script cache (Redis keeps nothing on disk: after a restart it is empty) never
//! answers `NOSCRIPT` to the calls behind it; if one does anyway (a `SCRIPT
//! FLUSH` between), the pipeline is retried.
//!
//! **Durability.** A write is durable when Redis answered every pipeline of the
//! batch ([`Durability::OnWrite`]), as far as Redis itself is durable
//! (`appendonly`, replicas). A pipeline that failed transiently (the connection
//! refused, reset or dropped, a timeout, `BUSY`, `LOADING`, `READONLY`,
//! `TRYAGAIN`, `MASTERDOWN`) is sent again by the `retry` policy (exponential
//! backoff with full jitter, [`crate::node::retry`]), and so is connecting; the
//! client's own reconnect makes one attempt each time, so the policy is the only
//! schedule. The guard makes a repeated write harmless, so a retried write never
//! duplicates or rolls back a vector. Retries are counted in the node's
//! `retries` counter of the run summary. Any other failure (`NOAUTH`,
//! `WRONGPASS`, a refused command) is permanent: the run stops at once with one
//! line that ends `(permanent: not retried)`.
//!
//! **Refused rows.** A row no vector can be made of (a null entity, a null
//! event time or one beyond ±2^53 ms) and a row Redis refuses for its own sake
//! (`WRONGTYPE`: its key holds something other than a hash) becomes a dead
//! letter (fault `data`, reasons `entity_null`, `event_time_null`,
//! `event_time_range`, `redis_refused`, with the row as JSON); the rest of the
//! batch is written and the run goes on.
//!
//! Fields are encoded as [`encode`] describes; each hash also holds
//! `_event_time_ms` and, with `lineage = true`, `_lineage`: the batch's
//! [`Lineage`] as compact JSON (pipeline, version, source positions, and each
//! stage's component digest and parameters hash), which `weir lineage --redis`
//! prints. The key `{prefix}` itself is a hash of feature name → type name,
//! which `weir features get` uses to type values back.

pub mod encode;
mod read;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::FormatOptions;
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, RedisError};
use serde::{Deserialize, Serialize};

use crate::batch::json::{JsonOptions, rows_as_objects};
use crate::node::config::{BuildCx, SinkConfig, SinkNode, SpecError};
use crate::node::retry::{GaveUp, RetryPolicy, Transience};
use crate::node::{
    AsyncSink, BoxFuture, DeadLetter, Durability, Emitter, Fault, Lineage, NodeError,
};
use crate::units::Millis;

pub use read::{StoredVector, read_vectors};

/// The guarded write, run inside Redis (see the module docs).
pub const GUARD: &str = include_str!("guard.lua");

/// The field holding a vector's event time in epoch milliseconds.
pub const EVENT_TIME_FIELD: &str = "_event_time_ms";

/// The field holding a vector's lineage (JSON).
pub const LINEAGE_FIELD: &str = "_lineage";

/// Entities per script call: measured fastest (16 and 256 were slower, one
/// call per entity much slower; see docs/redis.md).
const KEYS_PER_CALL: usize = 64;

/// At most this many features per vector: the script hands a vector's fields
/// to `HSET` at once, and Lua's stack holds about 8000 values.
const MAX_FEATURES: usize = 3000;

/// The largest event time the guard compares exactly (Lua numbers are doubles).
const MAX_EVENT_MS: i64 = 1 << 53;

/// A Redis feature store sink's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkSpec {
    /// The server, `redis://[user:password@]host:port[/db]`. Required: a store of
    /// record is never guessed.
    pub url: String,
    /// Key prefix: each vector is the hash `{prefix}:{entity}`, and `{prefix}`
    /// holds the feature types. Required.
    pub prefix: String,
    /// The column whose value names the entity (string or integer). Required.
    pub entity: String,
    /// The column with the vector's event time: a timestamp (any unit; finer
    /// than milliseconds is floored) or an Int64 of epoch milliseconds.
    /// Required: the newer-wins guard compares it.
    pub event_time: String,
    /// The columns stored as features. Default: every column except the entity
    /// and the event time, in batch order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// How long a vector lives. Default: none (keys never expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Millis>,
    /// What the TTL counts from. Default: `write`.
    #[serde(default)]
    pub ttl_from: TtlFrom,
    /// Store the batch's lineage in `_lineage` beside the features. Default: true.
    #[serde(default = "default_lineage")]
    pub lineage: bool,
    /// Rows per pipeline. Default: 1024 ([`default_pipeline_rows`]).
    #[serde(default = "default_pipeline_rows")]
    pub pipeline_rows: NonZeroUsize,
    /// Pipelines sent and awaiting their reply at once. Default: 4
    /// ([`default_in_flight`]).
    #[serde(default = "default_in_flight")]
    pub in_flight: NonZeroUsize,
    /// Time allowed for a pipeline's reply (and for connecting). Default: 10 s
    /// ([`default_timeout`]).
    #[serde(default = "default_timeout")]
    pub timeout: Millis,
    /// How transient failures (connecting, pipelines) are retried. Default:
    /// [`RetryPolicy::default`].
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// What a vector's TTL counts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlFrom {
    /// The write (`PEXPIRE`): a vector lives `ttl` after it was last written.
    #[default]
    Write,
    /// The vector's event time (`PEXPIREAT event_time + ttl`): the expiry is
    /// the same whenever and however often it is written, and a vector older
    /// than `ttl` is removed as it is written.
    EventTime,
}

/// Default `lineage`: true.
pub fn default_lineage() -> bool {
    true
}

/// Default rows per pipeline: 1024.
pub fn default_pipeline_rows() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}

/// Default pipelines in flight: 4.
pub fn default_in_flight() -> NonZeroUsize {
    NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN)
}

/// Default reply timeout: 10 s.
pub fn default_timeout() -> Millis {
    Millis(Duration::from_secs(10))
}

/// What a sink has done so far, for the run's log and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisSinkStats {
    /// Vectors written.
    pub written: u64,
    /// Vectors not written because the store held a newer one.
    pub stale: u64,
    /// Pipelines sent (retries included).
    pub pipelines: u64,
    /// Pipelines sent again after a transient failure.
    pub retries: u64,
}

/// Writes feature vectors to Redis hashes, newer-wins per entity.
pub struct RedisSink {
    spec: RedisSinkSpec,
    /// The spec's key path, for errors (`sink[0].redis`).
    key: String,
    /// The URL without credentials, for errors and logs.
    service: String,
    client: redis::Client,
    conn: Option<ConnectionManager>,
    script: redis::Script,
    bound: Option<Bound>,
    stats: RedisSinkStats,
    /// [`KEYS_PER_CALL`], changed only by the measurement that chose it.
    keys_per_call: usize,
    /// Pipelines of the batch being written that Redis refused for a row's
    /// sake (see [`refuses_record`]), to be written one row at a time.
    refused: Vec<Range<usize>>,
    /// Dead letters not yet handed to the executor ([`AsyncSink::report`]).
    letters: Vec<DeadLetter>,
    /// Retries not yet handed to the executor.
    unreported_retries: u64,
}

/// The columns of one input schema, resolved.
struct Bound {
    schema: SchemaRef,
    entity: usize,
    event_time: usize,
    /// Column index and name of each feature.
    features: Vec<(usize, String)>,
    /// `HSET {prefix} name type …`.
    schema_cmd: redis::Cmd,
}

impl RedisSink {
    /// Checks the configuration (`key` is its key path, e.g. `sink[0].redis`).
    /// Nothing is sent until the first batch.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the key: a URL Redis cannot use, an empty
    /// prefix or column name, a reserved or repeated feature, the entity among
    /// the features, a zero TTL or timeout, `ttl_from` without `ttl`.
    pub fn new(key: &str, spec: &RedisSinkSpec) -> Result<Self, SpecError> {
        let invalid =
            |field: &str, message: String| SpecError::invalid(format!("{key}.{field}"), message);
        let client = redis::Client::open(spec.url.as_str()).map_err(|e| {
            invalid(
                "url",
                format!("`{}` is not a Redis URL: {e}", redact(&spec.url)),
            )
        })?;
        for (field, value) in [
            ("prefix", &spec.prefix),
            ("entity", &spec.entity),
            ("event_time", &spec.event_time),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty".into()));
            }
        }
        if let Some(features) = &spec.features {
            if features.is_empty() {
                return Err(invalid(
                    "features",
                    "must name at least one column (or be left out: every column)".into(),
                ));
            }
            if features.len() > MAX_FEATURES {
                return Err(invalid(
                    "features",
                    format!(
                        "{} features; at most {MAX_FEATURES} fit one vector",
                        features.len()
                    ),
                ));
            }
            for (i, f) in features.iter().enumerate() {
                if f == EVENT_TIME_FIELD || f == LINEAGE_FIELD {
                    return Err(invalid(
                        "features",
                        format!("`{f}` is reserved for the sink's own field"),
                    ));
                }
                if *f == spec.entity {
                    return Err(invalid(
                        "features",
                        format!("`{f}` is the entity column; it is the key, not a feature"),
                    ));
                }
                if features[..i].contains(f) {
                    return Err(invalid("features", format!("`{f}` is listed twice")));
                }
            }
        }
        if spec.ttl.is_some_and(|t| t.0.as_millis() == 0) {
            return Err(invalid(
                "ttl",
                "must be greater than 0 (leave it out for no expiry)".into(),
            ));
        }
        if spec.ttl.is_none() && spec.ttl_from != TtlFrom::default() {
            return Err(invalid("ttl_from", "applies only with `ttl`".into()));
        }
        if spec.timeout.0.is_zero() {
            return Err(invalid("timeout", "must be greater than 0".into()));
        }
        spec.retry.check().map_err(|e| invalid("retry", e))?;
        Ok(Self {
            spec: spec.clone(),
            key: key.to_owned(),
            service: redact(&spec.url),
            client,
            conn: None,
            script: redis::Script::new(GUARD),
            bound: None,
            stats: RedisSinkStats::default(),
            keys_per_call: KEYS_PER_CALL,
            refused: Vec::new(),
            letters: Vec::new(),
            unreported_retries: 0,
        })
    }

    /// What the sink has done so far.
    pub fn stats(&self) -> RedisSinkStats {
        self.stats
    }

    /// The connection, made on first use; connecting is retried like a write.
    async fn connection(&mut self) -> Result<ConnectionManager, NodeError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        // One connection attempt per reconnect: the `retry` policy is the only
        // schedule, so a dropped connection is retried there, with its jitter and
        // its deadline, and counted.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.spec.timeout.0))
            .set_connection_timeout(Some(self.spec.timeout.0))
            .set_number_of_retries(0);
        let client = &self.client;
        let mut retries = 0;
        let c = self
            .spec
            .retry
            .run(&self.service, &classify, |attempt| {
                retries = u64::from(attempt.get() - 1);
                ConnectionManager::new_with_config(client.clone(), config.clone())
            })
            .await;
        self.stats.retries += retries;
        self.unreported_retries += retries;
        let c = c.map_err(|e| NodeError::Service {
            service: self.service.clone(),
            transient: e.transient(),
            message: format!("connecting {}: {e}", self.service),
        })?;
        tracing::info!(service = %self.service, "connected to Redis");
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// A failed pipeline of rows `range`, as the retry loop sees it.
    fn pipeline_failure(&self, range: Range<usize>, error: RedisError) -> WriteFailure {
        WriteFailure::Redis {
            message: format!(
                "writing rows {}..{} to {}: {error}",
                range.start, range.end, self.service
            ),
            error,
        }
    }

    /// Resolves the columns of `schema` (once per schema).
    fn bind(&mut self, schema: &SchemaRef) -> Result<(), NodeError> {
        if self.bound.as_ref().is_some_and(|b| b.schema == *schema) {
            return Ok(());
        }
        let (entity, event_time, features) = resolve_columns(&self.key, &self.spec, schema)?;
        let mut schema_cmd = redis::cmd("HSET");
        schema_cmd.arg(&self.spec.prefix);
        for (i, name) in &features {
            // Checked by `resolve_columns`: every feature's type has a name.
            let type_name = encode::type_name(schema.field(*i).data_type()).unwrap_or_default();
            schema_cmd.arg(name).arg(type_name);
        }
        self.bound = Some(Bound {
            schema: schema.clone(),
            entity,
            event_time,
            features,
            schema_cmd,
        });
        Ok(())
    }

    /// Writes `batch`: every pipeline answered, or an error. Rows the store
    /// cannot take because of the rows themselves become dead letters (see
    /// [`RedisSink::refuse_bad_rows`] and [`RedisSink::write_one_by_one`]); the
    /// rest are written.
    async fn write_batch(
        &mut self,
        batch: &RecordBatch,
        lineage: &Lineage,
    ) -> Result<(), NodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.bind(&batch.schema())?;
        let original = batch;
        let (kept, origin) = self.refuse_bad_rows(batch, lineage)?;
        if kept.num_rows() == 0 {
            return Ok(());
        }
        let batch = &kept;
        let conn = self.connection().await?;
        let lineage_json = if self.spec.lineage {
            Some(serde_json::to_vec(lineage).map_err(|e| NodeError::Bug(e.to_string()))?)
        } else {
            None
        };
        let bound = self
            .bound
            .as_ref()
            .ok_or_else(|| NodeError::Bug("unbound sink".into()))?;
        let entity = encode::normalize(batch.column(bound.entity))?;
        let event_time = batch.column(bound.event_time).clone();
        let features: Vec<ArrayRef> = bound
            .features
            .iter()
            .map(|(i, _)| encode::normalize(batch.column(*i)))
            .collect::<Result<_, _>>()?;
        let arrays = Arrays {
            schema: batch.schema(),
            entity,
            event_time,
            features,
        };

        // The first attempt sends every pipeline of the batch; each next one
        // sends again those that failed transiently.
        let policy = self.spec.retry.clone();
        let service = self.service.clone();
        self.refused.clear();
        let (conn, arrays, lineage_json) = (&conn, &arrays, lineage_json.as_deref());
        let ((this, _), written) = policy
            .run_with(
                &service,
                &WriteFailure::transience,
                (self, Vec::new()),
                |(this, mut failed), attempt| async move {
                    let sent = if attempt.get() == 1 {
                        this.send_all(conn, arrays, lineage_json, &mut failed).await
                    } else {
                        this.send_again(conn, &mut failed).await
                    };
                    ((this, failed), sent)
                },
            )
            .await;
        written.map_err(|e| this.gave_up(e))?;
        for range in std::mem::take(&mut this.refused) {
            this.write_one_by_one(
                conn,
                arrays,
                lineage_json,
                range,
                original,
                &origin,
                lineage,
            )
            .await?;
        }
        Ok(())
    }

    /// Takes out of `batch` the rows no vector can be made of: a null entity
    /// (no key), a null event time or one beyond ±2^53 ms (the newer-wins
    /// guard cannot compare it). Each becomes a dead letter ([`Fault::Data`],
    /// reason `entity_null`, `event_time_null` or `event_time_range`, the row
    /// as JSON) for [`AsyncSink::report`]. Returns the rows left and, when
    /// rows were taken, each left row's index in `batch`.
    fn refuse_bad_rows(
        &mut self,
        batch: &RecordBatch,
        lineage: &Lineage,
    ) -> Result<(RecordBatch, Option<Vec<usize>>), NodeError> {
        let bound = self
            .bound
            .as_ref()
            .ok_or_else(|| NodeError::Bug("unbound sink".into()))?;
        let entity = encode::normalize(batch.column(bound.entity))?;
        let events = encode::EventTime::new(
            &self.spec.event_time,
            batch.column(bound.event_time).as_ref(),
        )?;
        let mut bad: Vec<(usize, &'static str, String)> = Vec::new();
        for row in 0..batch.num_rows() {
            if entity.is_null(row) {
                bad.push((
                    row,
                    "entity_null",
                    format!(
                        "entity column `{}` is null: a vector needs an entity",
                        self.spec.entity
                    ),
                ));
                continue;
            }
            match events.millis(row) {
                None => bad.push((
                    row,
                    "event_time_null",
                    format!(
                        "event-time column `{}` is null: the newer-wins guard needs it",
                        self.spec.event_time
                    ),
                )),
                Some(ms) if !(-MAX_EVENT_MS..=MAX_EVENT_MS).contains(&ms) => bad.push((
                    row,
                    "event_time_range",
                    format!(
                        "event time {ms} ms in `{}` is beyond ±2^53 ms",
                        self.spec.event_time
                    ),
                )),
                Some(_) => {}
            }
        }
        if bad.is_empty() {
            return Ok((batch.clone(), None));
        }
        let mut keep = vec![true; batch.num_rows()];
        for (row, reason, detail) in bad {
            keep[row] = false;
            self.refuse(batch, row, lineage, reason, detail);
        }
        let origin: Vec<usize> = (0..batch.num_rows()).filter(|&r| keep[r]).collect();
        let kept =
            arrow::compute::filter_record_batch(batch, &arrow::array::BooleanArray::from(keep))?;
        Ok((kept, Some(origin)))
    }

    /// Keeps row `row` of `batch` as a dead letter of `reason` for
    /// [`AsyncSink::report`].
    fn refuse(
        &mut self,
        batch: &RecordBatch,
        row: usize,
        lineage: &Lineage,
        reason: &str,
        detail: String,
    ) {
        let record = rows_as_objects(&batch.slice(row, 1), None, JsonOptions::default())
            .ok()
            .and_then(|mut rows| rows.pop())
            .map_or_else(
                || format!("row {row} (not renderable as JSON)"),
                |o| serde_json::Value::Object(o).to_string(),
            );
        tracing::debug!(service = %self.service, row, reason, "a row refused by the Redis sink: {detail}");
        self.letters.push(DeadLetter {
            fault: Fault::Data,
            reason: reason.to_owned(),
            detail,
            position: row_position(lineage, row),
            payload: crate::node::Payload::text_of(record),
        });
    }

    /// Writes the rows of `range` (of the filtered `arrays`; `origin` maps
    /// them to rows of `batch`, the batch as the sink received it) one call each,
    /// after a pipeline of theirs was refused for a row's own sake (`WRONGTYPE`:
    /// the key holds something that is not a vector). A row Redis refuses again
    /// becomes a dead letter (reason `redis_refused`, Redis's words); the
    /// others are written (the guard makes writing again what the refused
    /// pipeline had written harmless). Each call is retried like a pipeline.
    #[allow(
        clippy::too_many_arguments,
        reason = "one batch's views, passed down once"
    )]
    async fn write_one_by_one(
        &mut self,
        conn: &ConnectionManager,
        arrays: &Arrays,
        lineage_json: Option<&[u8]>,
        range: Range<usize>,
        batch: &RecordBatch,
        origin: &Option<Vec<usize>>,
        lineage: &Lineage,
    ) -> Result<(), NodeError> {
        let policy = self.spec.retry.clone();
        for row in range {
            let pipe = self.encode(arrays, lineage_json, row..row + 1, false)?;
            let mut retries = 0;
            let reply = policy
                .run(&self.service.clone(), &classify, |attempt| {
                    retries = u64::from(attempt.get() - 1);
                    let (pipe, mut conn) = (pipe.clone(), conn.clone());
                    async move { pipe.query_async::<Vec<i64>>(&mut conn).await }
                })
                .await;
            self.stats.pipelines += 1 + retries;
            self.stats.retries += retries;
            self.unreported_retries += retries;
            match reply {
                Ok(written) => self.count(&(row..row + 1), &written),
                Err(e) if refuses_record(&e.error) => {
                    let at = origin.as_ref().map_or(row, |o| o[row]);
                    let detail = format!("Redis refused the vector: {}", e.error);
                    self.refuse(batch, at, lineage, "redis_refused", detail);
                }
                Err(GaveUp {
                    error,
                    attempts,
                    stop,
                }) => {
                    let error = self.pipeline_failure(row..row + 1, error);
                    return Err(self.gave_up(GaveUp {
                        error,
                        attempts,
                        stop,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Sends the batch's pipelines, `in_flight` at a time; keeps those that
    /// failed transiently in `failed` and returns the first such failure.
    async fn send_all(
        &mut self,
        conn: &ConnectionManager,
        arrays: &Arrays,
        lineage: Option<&[u8]>,
        failed: &mut Vec<(Pipeline, Range<usize>)>,
    ) -> Result<(), WriteFailure> {
        let rows = arrays.entity.len();
        let step = self.spec.pipeline_rows.get();
        // Pipelines are polled in the order they were made, so they reach the
        // connection in row order: within a batch, of two vectors of an entity
        // with the same event time the later row is the one kept.
        let mut in_flight = FuturesOrdered::new();
        let mut first = None;
        let mut start = 0;
        while start < rows {
            let range = start..(start + step).min(rows);
            start = range.end;
            let pipe = self
                .encode(arrays, lineage, range.clone(), range.start == 0)
                .map_err(WriteFailure::Node)?;
            if in_flight.len() >= self.spec.in_flight.get()
                && let Some(sent) = in_flight.next().await
            {
                self.settle(sent, failed, &mut first)?;
            }
            self.stats.pipelines += 1;
            in_flight.push_back(send(conn.clone(), pipe, range));
            // One poll hands the new pipeline to the connection now, while the
            // next one is encoded.
            if let Some(Some(sent)) = in_flight.next().now_or_never() {
                self.settle(sent, failed, &mut first)?;
            }
        }
        while let Some(sent) = in_flight.next().await {
            self.settle(sent, failed, &mut first)?;
        }
        first.map_or(Ok(()), Err)
    }

    /// Counts a pipeline's reply; keeps a transient failure for the next
    /// attempt (the first one in `first`), returns a permanent one.
    fn settle(
        &mut self,
        (pipe, range, reply): Sent,
        failed: &mut Vec<(Pipeline, Range<usize>)>,
        first: &mut Option<WriteFailure>,
    ) -> Result<(), WriteFailure> {
        match reply {
            Ok(written) => {
                self.count(&range, &written);
                Ok(())
            }
            Err(e) if refuses_record(&e) => {
                // A row's own fault: its rows are written one by one once the
                // batch's other pipelines are through, and the refused row kept.
                self.refused.push(range);
                Ok(())
            }
            Err(e) => {
                let failure = self.pipeline_failure(range.clone(), e);
                if failure.transience() == Transience::Permanent {
                    return Err(failure);
                }
                first.get_or_insert(failure);
                failed.push((pipe, range));
                Ok(())
            }
        }
    }

    fn count(&mut self, range: &Range<usize>, written: &[i64]) {
        let n: i64 = written.iter().sum();
        let n = u64::try_from(n).unwrap_or(0);
        self.stats.written += n;
        self.stats.stale += (range.len() as u64).saturating_sub(n);
    }

    /// Sends the pipelines in `failed` again, one after the other; keeps those
    /// that fail transiently again.
    async fn send_again(
        &mut self,
        conn: &ConnectionManager,
        failed: &mut Vec<(Pipeline, Range<usize>)>,
    ) -> Result<(), WriteFailure> {
        let mut first = None;
        for (pipe, range) in std::mem::take(failed) {
            self.stats.pipelines += 1;
            self.stats.retries += 1;
            self.unreported_retries += 1;
            let reply = pipe.query_async::<Vec<i64>>(&mut conn.clone()).await;
            self.settle((pipe, range, reply), failed, &mut first)?;
        }
        first.map_or(Ok(()), Err)
    }

    /// The node error a batch's write ended with.
    fn gave_up(&self, e: GaveUp<WriteFailure>) -> NodeError {
        let transient = e.transient();
        let text = e.to_string();
        match e.error {
            WriteFailure::Node(n) => n,
            WriteFailure::Redis { .. } => NodeError::Service {
                service: self.service.clone(),
                transient,
                message: text,
            },
        }
    }

    /// The pipeline for rows `range`: `SCRIPT LOAD`, the schema hash on the
    /// batch's first pipeline, then one guard call per 64 rows.
    fn encode(
        &self,
        arrays: &Arrays,
        lineage: Option<&[u8]>,
        range: Range<usize>,
        first: bool,
    ) -> Result<Pipeline, NodeError> {
        let bound = self
            .bound
            .as_ref()
            .ok_or_else(|| NodeError::Bug("unbound sink".into()))?;
        let json = encode::json_options();
        let display = FormatOptions::default();
        let schema = &arrays.schema;
        let entity = encode::Entity::new(
            &schema.fields()[bound.entity],
            arrays.entity.as_ref(),
            &json,
            &display,
        )?;
        let events = encode::EventTime::new(&self.spec.event_time, arrays.event_time.as_ref())?;
        let columns: Vec<encode::Column> = bound
            .features
            .iter()
            .zip(&arrays.features)
            .map(|((i, _), a)| {
                encode::Column::new(&schema.fields()[*i], a.as_ref(), &json, &display)
            })
            .collect::<Result<_, _>>()?;
        let (mode, ttl) = match (self.spec.ttl, self.spec.ttl_from) {
            (None, _) => (0, 0),
            (Some(t), TtlFrom::Write) => (1, t.0.as_millis() as u64),
            (Some(t), TtlFrom::EventTime) => (2, t.0.as_millis() as u64),
        };

        let mut pipe = redis::pipe();
        pipe.add_command(self.script_load()).ignore();
        if first {
            pipe.add_command(bound.schema_cmd.clone()).ignore();
        }
        let mut buf = Vec::with_capacity(64);
        let mut key = Vec::with_capacity(self.spec.prefix.len() + 24);
        let mut events_ms = Vec::with_capacity(self.keys_per_call);
        let mut chunk = range.start;
        while chunk < range.end {
            let end = (chunk + self.keys_per_call).min(range.end);
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.script.get_hash()).arg(end - chunk);
            events_ms.clear();
            for row in chunk..end {
                if entity.is_null(row) {
                    return Err(NodeError::Data {
                        message: format!(
                            "entity column `{}` is null: a vector needs an entity",
                            self.spec.entity
                        ),
                        row: Some(row),
                    });
                }
                let ms = events.millis(row).ok_or_else(|| NodeError::Data {
                    message: format!(
                        "event-time column `{}` is null: the newer-wins guard needs it",
                        self.spec.event_time
                    ),
                    row: Some(row),
                })?;
                if !(-MAX_EVENT_MS..=MAX_EVENT_MS).contains(&ms) {
                    return Err(NodeError::Data {
                        message: format!(
                            "event time {ms} ms in `{}` is beyond ±2^53 ms",
                            self.spec.event_time
                        ),
                        row: Some(row),
                    });
                }
                events_ms.push(ms);
                key.clear();
                key.extend_from_slice(self.spec.prefix.as_bytes());
                key.push(b':');
                entity.write(row, &mut key);
                cmd.arg(&key[..]);
            }
            cmd.arg(mode).arg(ttl).arg(lineage.unwrap_or_default());
            for (row, ms) in (chunk..end).zip(&events_ms) {
                let nulls = columns.iter().filter(|c| c.is_null(row)).count();
                let pairs = 1 + columns.len() - nulls;
                cmd.arg(pairs).arg(nulls);
                cmd.arg(EVENT_TIME_FIELD).arg(*ms);
                for ((_, name), c) in bound.features.iter().zip(&columns) {
                    if !c.is_null(row) {
                        buf.clear();
                        c.write(row, &mut buf);
                        cmd.arg(name).arg(&buf[..]);
                    }
                }
                if nulls > 0 {
                    for ((_, name), c) in bound.features.iter().zip(&columns) {
                        if c.is_null(row) {
                            cmd.arg(name);
                        }
                    }
                }
            }
            pipe.add_command(cmd);
            chunk = end;
        }
        Ok(pipe)
    }

    fn script_load(&self) -> redis::Cmd {
        let mut c = redis::cmd("SCRIPT");
        c.arg("LOAD").arg(GUARD);
        c
    }
}

/// A batch's columns as the sink reads them (shared, `Send`: the encoders
/// borrowing them are made per pipeline, between awaits).
struct Arrays {
    schema: SchemaRef,
    entity: ArrayRef,
    event_time: ArrayRef,
    features: Vec<ArrayRef>,
}

/// A pipeline sent, with its rows and Redis's reply (vectors written per call).
type Sent = (Pipeline, Range<usize>, Result<Vec<i64>, RedisError>);

async fn send(mut conn: ConnectionManager, pipe: Pipeline, range: Range<usize>) -> Sent {
    let reply = pipe.query_async::<Vec<i64>>(&mut conn).await;
    (pipe, range, reply)
}

/// Redis's classifier: trying again may succeed after a connection failure
/// (refused, dropped, timed out) or from a server that is busy, loading, or
/// lost the script; any other error (a wrong type, a refused password) will
/// come back the same.
fn classify(e: &RedisError) -> Transience {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || codes(e).iter().any(|c| {
            matches!(
                c.as_str(),
                "NOSCRIPT"
                    | "BUSY"
                    | "LOADING"
                    | "READONLY"
                    | "TRYAGAIN"
                    | "MASTERDOWN"
                    | "CLUSTERDOWN"
            )
        });
    if transient {
        Transience::Transient
    } else {
        Transience::Permanent
    }
}

/// Whether Redis refused a call for a record's own sake rather than for the
/// server's or the connection's: `WRONGTYPE`, which the guard answers when an
/// entity's key holds something other than a hash. Writing the record again
/// cannot help, and writing the others can.
fn refuses_record(e: &RedisError) -> bool {
    codes(e).iter().any(|c| c == "WRONGTYPE")
}

/// The server's error codes in `e`: its own, and for a pipeline each failed
/// command's (a pipeline's error names only the first kind redis-rs knows).
fn codes(e: &RedisError) -> Vec<String> {
    let mut codes: Vec<String> = e.code().map(str::to_owned).into_iter().collect();
    if let Some(errors) = e.clone().into_server_errors() {
        codes.extend(errors.iter().map(|(_, s)| s.code().to_owned()));
    }
    codes
}

/// Where row `row` of a batch with `lineage` came from, for its dead letter:
/// the batch's source spans and the row's index in it.
fn row_position(lineage: &Lineage, row: usize) -> String {
    let spans: Vec<String> = lineage
        .sources
        .iter()
        .map(|s| {
            format!(
                "{}@{}..{}",
                s.source,
                s.from.as_deref().unwrap_or(""),
                s.to.as_deref().unwrap_or("")
            )
        })
        .collect();
    format!("{} row {row}", spans.join(";"))
}

/// Why an attempt at writing a batch failed.
#[derive(Debug)]
enum WriteFailure {
    /// A pipeline's reply (the message names its rows and the server).
    Redis { error: RedisError, message: String },
    /// Encoding the batch: not a service failure, never retried.
    Node(NodeError),
}

impl WriteFailure {
    fn transience(&self) -> Transience {
        match self {
            Self::Redis { error, .. } => classify(error),
            Self::Node(_) => Transience::Permanent,
        }
    }
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis { message, .. } => f.write_str(message),
            Self::Node(e) => e.fmt(f),
        }
    }
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The entity, event-time and feature columns of `schema` for the sink of
/// `spec` at key path `key`, each found and of a type the sink can store.
///
/// # Errors
/// The entity column's index, the event-time column's, and each feature
/// column's index with its name.
type ResolvedColumns = (usize, usize, Vec<(usize, String)>);

/// [`NodeError::Config`] naming the key and the column: missing, of a type the
/// sink cannot store, or named like one of the sink's own fields.
fn resolve_columns(
    key: &str,
    spec: &RedisSinkSpec,
    schema: &arrow::datatypes::Schema,
) -> Result<ResolvedColumns, NodeError> {
    let names = || crate::node::config::column_list(schema);
    let find = |field: &str, name: &str| {
        schema.index_of(name).map_err(|_| {
            NodeError::config(format!(
                "`{key}.{field}`: column `{name}` is not in the input (columns: {})",
                names()
            ))
        })
    };
    let entity = find("entity", &spec.entity)?;
    let event_time = find("event_time", &spec.event_time)?;
    let features: Vec<(usize, String)> = match &spec.features {
        Some(list) => list
            .iter()
            .map(|n| Ok((find("features", n)?, n.clone())))
            .collect::<Result<_, NodeError>>()?,
        None => schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != entity && *i != event_time)
            .map(|(i, f)| (i, f.name().clone()))
            .collect(),
    };
    if features.len() > MAX_FEATURES {
        return Err(NodeError::config(format!(
            "`{key}`: {} features; at most {MAX_FEATURES} fit one vector",
            features.len()
        )));
    }
    for (i, name) in &features {
        if name == EVENT_TIME_FIELD || name == LINEAGE_FIELD {
            return Err(NodeError::config(format!(
                "`{key}`: column `{name}` has the name of the sink's own field; rename it or list `features`"
            )));
        }
        let t = schema.field(*i).data_type();
        if encode::type_name(t).is_none() {
            return Err(NodeError::config(format!(
                "`{key}`: column `{name}` is {t}, which the Redis sink cannot store (see the encoding table in docs/redis.md)"
            )));
        }
    }
    // The types themselves are checked again as each batch is encoded.
    for col in [entity, event_time] {
        let t = schema.field(col).data_type();
        let ok = if col == entity {
            matches!(encode::type_name(t), Some("string" | "int" | "uint"))
        } else {
            matches!(
                t,
                arrow::datatypes::DataType::Int64 | arrow::datatypes::DataType::Timestamp(..)
            )
        };
        if !ok {
            let (field, want) = if col == entity {
                ("entity", "a string or integer column")
            } else {
                (
                    "event_time",
                    "a timestamp or an Int64 of epoch milliseconds",
                )
            };
            return Err(NodeError::config(format!(
                "`{key}.{field}`: column `{}` is {t}; it must be {want}",
                schema.field(col).name()
            )));
        }
    }
    Ok((entity, event_time, features))
}

impl SinkConfig for RedisSinkSpec {
    /// Replayed records are written as any others: the service keeps what it
    /// already holds.
    fn replay_into(&self, _base_dir: &std::path::Path) -> crate::node::config::ReplayInto {
        crate::node::config::ReplayInto::Adds
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        RedisSink::new(key, self).map(drop)
    }

    /// Connects on the first batch, not here.
    fn build(&self, cx: &BuildCx) -> Result<SinkNode, NodeError> {
        Ok(SinkNode::Async(Box::new(RedisSink::new(cx.key, self)?)))
    }

    /// The entity, event-time and feature columns, as the first write binds them.
    fn check_input(&self, key: &str, input: &arrow::datatypes::Schema) -> Result<(), NodeError> {
        resolve_columns(key, self, input).map(drop)
    }
}

impl AsyncSink for RedisSink {
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        lineage: &'a Arc<Lineage>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(self.write_batch(batch, lineage))
    }

    /// Durable when Redis answered every pipeline of the batch.
    fn durability(&self) -> Durability {
        Durability::OnWrite
    }

    /// Rows refused for their own sake, and the retries made, since the last
    /// report.
    fn report(&mut self, out: &mut Emitter) {
        for letter in self.letters.drain(..) {
            out.dead_letter(letter);
        }
        if self.unreported_retries > 0 {
            out.count("retries", std::mem::take(&mut self.unreported_retries));
        }
    }

    fn close(&mut self, _complete: bool) -> BoxFuture<'_, Result<(), NodeError>> {
        let s = self.stats;
        tracing::info!(
            service = %self.service,
            prefix = %self.spec.prefix,
            written = s.written,
            stale = s.stale,
            pipelines = s.pipelines,
            retries = s.retries,
            "Redis sink closed"
        );
        Box::pin(async { Ok(()) })
    }
}
