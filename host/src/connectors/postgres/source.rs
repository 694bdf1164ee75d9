//! The PostgreSQL source (`[source.postgres]`): a query, or a table, read in
//! batches through a portal, once or incrementally.
//!
//! ```toml
//! [[source]]
//! name = "orders"
//! [source.postgres]
//! url = "postgres://reader@db:5432/shop"   # or PG* variables; see `conn`
//! password_env = "SHOP_PG_PASSWORD"
//! query = "SELECT id, user_id, amount, created_at FROM orders"   # or table = "orders"
//! incremental = { column = "id", poll = "1s" }
//! ```
//!
//! **Reading.** A dedicated connection runs the statement in a `REPEATABLE
//! READ READ ONLY` transaction and fetches `batch_rows` rows at a time from a
//! portal: the result is never held whole, and a slow pipeline leaves the
//! rows in the server (the next fetch waits for the channel to the
//! executor). The schema is the statement's description, taken when the plan
//! is built, so `weir validate` refuses a column weir cannot map (see
//! [`super::types`]).
//!
//! **Once** (no `incremental`): the result, then the source ends. Its
//! position is the number of rows delivered; a resumed run (or a retry after
//! a lost connection) skips that many with `OFFSET`, which is exact only for a
//! query with an `ORDER BY` over a table that did not change meanwhile.
//!
//! **Incremental** (`incremental = { column, poll, follow }`): each poll reads
//! the rows whose `column` (an integer fed by a sequence or identity, or a
//! timestamp set on insert) is above the committed position `P`, in the
//! column's order, and `follow = true` (the default) polls every `poll`;
//! `follow = false` reads once and ends (a scheduled catch-up job).
//!
//! **Never skipping a late commit.** Values are taken when a row is inserted
//! but become visible when its transaction commits, so a transaction that
//! took id 7 and commits after id 8 was read would be skipped by a plain
//! `id > last`. The source therefore keeps two things:
//!
//! - `P`, below which (inclusive) every row that will ever exist was
//!   delivered; polls read `column > P`;
//! - `D`, the values above `P` it already delivered, so a row read again by
//!   the next poll is not delivered twice.
//!
//! A poll at snapshot `S_k` reads rows; the largest value it saw, `H_k`,
//! becomes `P` at a later poll `S_j` once no transaction that was open at
//! `S_k` can still commit a value ≤ `H_k`. Any value taken after `S_k`
//! comes from the sequence (or the clock) later than `H_k`'s, so it is
//! larger; only transactions already open at `S_k` matter, and `S_j` shows
//! they have all ended when both hold:
//!
//! 1. `xmin(S_j) ≥ xmax(S_k)`: every transaction that had a transaction id
//!    at `S_k` (everything that had written) has committed or aborted
//!    (`pg_current_snapshot()`);
//! 2. no other session's transaction began before `S_k` and is still open
//!    (`min(xact_start)` of `pg_stat_activity`): this covers a transaction
//!    that took its value before writing anything (`now()` as a timestamp,
//!    `SELECT nextval()` first), which has no id yet.
//!
//! Rule 2 sees other roles' sessions only with `pg_read_all_stats` (or as a
//! superuser); without it the source warns when it starts, and rule 1 alone
//! still covers every value assigned by the inserting statement itself
//! (`serial`, identity, `DEFAULT nextval(…)`). While a transaction stays
//! open, `P` waits and `D` grows by the rows read past it; nothing is lost
//! and nothing repeats. The position (`P` and `D` as ranges) is checkpointed,
//! so a resumed run repeats nothing either. Rows whose column is null are not
//! read. The mode is for tables that are appended to: an update that does not
//! raise the column is not seen again.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::time::Duration;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{
    DataType, Int16Type, Int32Type, Int64Type, SchemaRef, TimestampMicrosecondType,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::conn::{Conn, ConnSpec, block_on};
use super::types::{Builders, Mapping, Raw};
use crate::node::config::{BuildCx, SourceConfig, SourceNode, SpecError};
use crate::node::retry::{RetryPolicy, node_transience};
use crate::node::{AsyncSource, BoxFuture, DeadLetter, Emitter, Fault, NodeError, Payload};
use crate::units::Millis;

/// A query or table read from PostgreSQL (`[source.postgres]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceSpec {
    /// The server; see [`ConnSpec::url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The variable holding the password; see [`ConnSpec::password_env`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Time allowed to connect. Default: 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Millis>,
    /// The rows, as a `SELECT` (no trailing `;`). Exactly one of `query` and
    /// `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A table (or view) read whole: `schema.table` or `table`, quoted as an
    /// identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Rows per batch (and per fetch). Default: the pipeline's `batch_rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_rows: Option<NonZeroUsize>,
    /// Read only what is new since the last poll (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalSpec>,
    /// How connecting and reading are retried (the host's retry policy).
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// `incremental = { column = "id", poll = "1s", follow = true }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalSpec {
    /// An integer (`int2`, `int4`, `int8`) or timestamp (`timestamp`,
    /// `timestamptz`) column whose values grow as rows are inserted.
    pub column: String,
    /// Time between polls. Default: 1 s.
    #[serde(default = "default_poll")]
    pub poll: Millis,
    /// Keep polling until the run is stopped (true, the default), or read what
    /// is new once and end (false).
    #[serde(default = "default_follow")]
    pub follow: bool,
}

fn default_poll() -> Millis {
    Millis(Duration::from_secs(1))
}

fn default_follow() -> bool {
    true
}

/// A statement as the server describes it.
struct Described {
    conn: Conn,
    query: String,
    columns: Vec<(String, Type)>,
    mapping: Mapping,
    sees_all_sessions: bool,
}

impl PostgresSourceSpec {
    /// Connects (through `retry`) and describes the statement: its columns,
    /// mapped, and whether the role sees every session (rule 2 of the module
    /// docs). `key` names the table in errors.
    fn describe(&self, key: &str) -> Result<Described, NodeError> {
        let conn = self.conn_spec().resolve(key, &|k| std::env::var(k).ok())?;
        let query = self.base_query();
        let retry = self.retry.clone();
        let (columns, sees_all_sessions) = {
            let conn = conn.clone();
            let query = query.clone();
            block_on(async move {
                let mut retries = 0;
                let client = conn.connect_retrying(&retry, &mut retries).await?;
                let stmt = client
                    .prepare(&query)
                    .await
                    .map_err(|e| conn.error("cannot prepare the query", &e))?;
                let columns: Vec<(String, Type)> = stmt
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_owned(), c.type_().clone()))
                    .collect();
                let stats = client
                    .query_one(
                        "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'member') \
                         OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                        &[],
                    )
                    .await
                    .ok()
                    .and_then(|r| r.get::<_, Option<bool>>(0))
                    .unwrap_or(false);
                Ok::<_, NodeError>((columns, stats))
            })?
        };
        let mapping = Mapping::new(columns.iter().map(|(n, t)| (n.as_str(), t)))
            .map_err(|e| NodeError::config(format!("`{key}`: {e}")))?;
        Ok(Described {
            conn,
            query,
            columns,
            mapping,
            sees_all_sessions,
        })
    }

    /// The statement as a lookup table (see [`PgTable`]); `key` names it in
    /// errors.
    ///
    /// # Errors
    /// What connecting and describing return.
    pub fn lookup_table(&self, key: &str, batch_rows: usize) -> Result<PgTable, NodeError> {
        let d = self.describe(key)?;
        Ok(PgTable {
            conn: d.conn,
            query: d.query,
            columns: d.columns,
            mapping: d.mapping,
            batch_rows,
            client: tokio::sync::Mutex::new(None),
        })
    }

    fn conn_spec(&self) -> ConnSpec {
        ConnSpec {
            url: self.url.clone(),
            password_env: self.password_env.clone(),
            connect_timeout: self.connect_timeout,
        }
    }

    /// The statement the rows come from.
    fn base_query(&self) -> String {
        match (&self.query, &self.table) {
            (Some(q), _) => q.trim().trim_end_matches(';').to_owned(),
            (None, Some(t)) => format!("SELECT * FROM {}", quote_path(t)),
            (None, None) => String::new(),
        }
    }
}

/// `schema.table` quoted as identifiers: `"schema"."table"`.
fn quote_path(path: &str) -> String {
    path.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SourceConfig for PostgresSourceSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        self.conn_spec().check(key)?;
        match (&self.query, &self.table) {
            (Some(_), Some(_)) => {
                return Err(SpecError::invalid(
                    format!("{key}.table"),
                    "give `query` or `table`, not both",
                ));
            }
            (None, None) => {
                return Err(SpecError::invalid(
                    key.to_owned(),
                    "needs `query` (a SELECT) or `table`",
                ));
            }
            (Some(q), None) if q.trim().is_empty() => {
                return Err(SpecError::invalid(format!("{key}.query"), "is empty"));
            }
            _ => {}
        }
        if let Some(inc) = &self.incremental {
            if inc.column.is_empty() {
                return Err(SpecError::invalid(
                    format!("{key}.incremental.column"),
                    "names no column",
                ));
            }
            if inc.poll.0.is_zero() {
                return Err(SpecError::invalid(
                    format!("{key}.incremental.poll"),
                    "must be longer than zero",
                ));
            }
        }
        self.retry
            .check()
            .map_err(|e| SpecError::invalid(format!("{key}.retry"), e))
    }

    /// Describes the statement on the server (so the schema is known and a
    /// column weir cannot map is refused before anything runs); the source
    /// reads on its own connection once the run starts.
    fn build(&self, cx: &BuildCx) -> Result<SourceNode, NodeError> {
        let Described {
            conn,
            query,
            columns,
            mapping,
            sees_all_sessions,
        } = self.describe(cx.key)?;
        let incremental = match &self.incremental {
            None => None,
            Some(inc) => {
                let Some(index) = mapping.schema.index_of(&inc.column).ok() else {
                    return Err(NodeError::config(format!(
                        "`{}.incremental.column`: the query has no column `{}` (it has {})",
                        cx.key,
                        inc.column,
                        columns
                            .iter()
                            .map(|(n, _)| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                let ty = &columns[index].1;
                let bound = match *ty {
                    Type::INT2 | Type::INT4 | Type::INT8 => "$1::int8",
                    Type::TIMESTAMP => "TIMESTAMP 'epoch' + $1::int8 * INTERVAL '1 microsecond'",
                    Type::TIMESTAMPTZ => {
                        "TIMESTAMPTZ 'epoch' + $1::int8 * INTERVAL '1 microsecond'"
                    }
                    _ => {
                        return Err(NodeError::config(format!(
                            "`{}.incremental.column`: `{}` has type `{}`; it must be an integer or \
                             a timestamp that grows as rows are inserted",
                            cx.key,
                            inc.column,
                            ty.name()
                        )));
                    }
                };
                if !sees_all_sessions {
                    tracing::warn!(
                        source = cx.name,
                        "{}: the role cannot see other roles' transactions (it lacks \
                         pg_read_all_stats), so a value taken before its transaction wrote \
                         anything (now(), a nextval() called early) can be missed if that \
                         transaction commits late; values set by the INSERT itself are safe",
                        conn.describe()
                    );
                }
                let col = quote_ident(&inc.column);
                Some(Incremental {
                    index,
                    first: format!(
                        "SELECT * FROM ({query}) AS weir_q WHERE weir_q.{col} IS NOT NULL \
                         ORDER BY weir_q.{col}"
                    ),
                    after: format!(
                        "SELECT * FROM ({query}) AS weir_q WHERE weir_q.{col} > ({bound}) \
                         ORDER BY weir_q.{col}"
                    ),
                    poll: inc.poll.0,
                    follow: inc.follow,
                })
            }
        };
        Ok(SourceNode::Async(Box::new(PostgresSource {
            reader: Some(Reader {
                conn,
                retry: self.retry.clone(),
                once: format!("SELECT * FROM ({query}) AS weir_q OFFSET $1::int8"),
                incremental,
                mapping: mapping.clone(),
                batch_rows: self.batch_rows.unwrap_or(cx.batch_rows).get(),
                state: State::default(),
                retries: 0,
                infinities: 0,
                tx: None,
            }),
            schema: mapping.schema,
            rx: None,
        })))
    }
}

/// The incremental mode's statements and settings.
#[derive(Debug, Clone)]
struct Incremental {
    /// The column's index in the result.
    index: usize,
    /// The first poll: every row (with a value), in the column's order.
    first: String,
    /// Later polls: rows above `$1` (the position, as an `int8`: the integer,
    /// or microseconds since 1970 for a timestamp).
    after: String,
    poll: Duration,
    follow: bool,
}

/// Where the source stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    /// Once: rows delivered. Incremental: unused.
    rows: u64,
    /// Incremental: every value ≤ `p` was delivered (none yet: `None`).
    p: Option<i64>,
    /// Incremental: values above `p` already delivered.
    delivered: BTreeSet<i64>,
    /// Incremental: largest values seen by earlier polls, each with what
    /// must hold for it to become `p` (see the module docs).
    pending: Vec<Candidate>,
}

/// A poll's largest value and the snapshot it was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    high: i64,
    /// `xmax` of that poll's snapshot.
    xmax: i64,
    /// The server's clock when that poll's snapshot was taken (µs since 1970).
    at: i64,
}

impl State {
    /// The position text: `rows=N` once; `p=P;d=a-b,c` incremental.
    fn position(&self, incremental: bool) -> String {
        if !incremental {
            return format!("rows={}", self.rows);
        }
        let p = self.p.map_or("-".to_owned(), |p| p.to_string());
        let mut ranges: Vec<String> = Vec::new();
        let mut it = self.delivered.iter().copied().peekable();
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end += 1;
                it.next();
            }
            ranges.push(if start == end {
                start.to_string()
            } else {
                format!("{start}..{end}")
            });
        }
        format!("p={p};d={}", ranges.join(","))
    }

    fn parse(text: &str, incremental: bool) -> Result<Self, String> {
        let mut s = State::default();
        if !incremental {
            s.rows = text
                .strip_prefix("rows=")
                .and_then(|n| n.parse().ok())
                .ok_or("not `rows=N`")?;
            return Ok(s);
        }
        let (p, d) = text
            .strip_prefix("p=")
            .and_then(|t| t.split_once(";d="))
            .ok_or("not `p=…;d=…`")?;
        s.p = match p {
            "-" => None,
            p => Some(p.parse().map_err(|_| format!("`{p}` is not a value"))?),
        };
        for part in d.split(',').filter(|x| !x.is_empty()) {
            let (a, b) = part.split_once("..").unwrap_or((part, part));
            let (a, b): (i64, i64) = (
                a.parse().map_err(|_| format!("`{part}` is not a range"))?,
                b.parse().map_err(|_| format!("`{part}` is not a range"))?,
            );
            if b < a || b - a > 100_000_000 {
                return Err(format!("`{part}` is not a range"));
            }
            s.delivered.extend(a..=b);
        }
        Ok(s)
    }

    /// Takes out of `pending` the candidates a snapshot proves final (every
    /// transaction open at theirs has ended by it: `xmin` past their `xmax`, and
    /// no session open since before their time) and returns the largest value
    /// among them. Apply it with [`State::advance`] only after reading in that
    /// snapshot: rows of those transactions became visible in it, and must be
    /// delivered before `p` passes them.
    fn settled(&mut self, xmin: i64, oldest_open: Option<i64>) -> Option<i64> {
        let mut settled = None;
        self.pending.retain(|c| {
            let done = xmin >= c.xmax && oldest_open.is_none_or(|o| o > c.at);
            if done {
                settled = settled.max(Some(c.high));
            }
            !done
        });
        settled
    }

    /// Moves `p` up to `high` and forgets the delivered values at or below it.
    fn advance(&mut self, high: Option<i64>) {
        if let Some(high) = high
            && self.p.is_none_or(|p| high > p)
        {
            self.p = Some(high);
            self.delivered = self.delivered.split_off(&(high + 1));
        }
    }
}

/// What the reading task sends the source.
enum Msg {
    /// Rows (possibly none) and the position after them.
    Batch {
        batch: RecordBatch,
        position: String,
        letters: Vec<DeadLetter>,
        retries: u64,
        infinities: u64,
    },
    /// The result (once) or the catch-up (`follow = false`) is read.
    Done,
    /// Reading failed for good.
    Failed(NodeError),
}

/// Reads on a task of its own, so a fetch in flight holds no thread of the
/// executor and a transaction can live across batches.
struct Reader {
    conn: Conn,
    retry: RetryPolicy,
    once: String,
    incremental: Option<Incremental>,
    mapping: Mapping,
    batch_rows: usize,
    state: State,
    retries: u64,
    infinities: u64,
    tx: Option<mpsc::Sender<Msg>>,
}

/// The reading task's source end.
pub struct PostgresSource {
    /// Until the first read: the reader, started then (after any `seek`).
    reader: Option<Reader>,
    schema: SchemaRef,
    rx: Option<mpsc::Receiver<Msg>>,
}

/// The receiver is gone: the run stopped; the task ends quietly.
fn closed() -> NodeError {
    NodeError::Bug("the PostgreSQL source's receiver is gone".into())
}

impl Reader {
    async fn run(mut self) {
        let mut client: Option<Client> = None;
        loop {
            let policy = self.retry.clone();
            let name = self.conn.describe().to_owned();
            let ((me, c), r) = policy
                .run_with(
                    &name,
                    &node_transience,
                    (self, client),
                    |(mut me, mut c), attempt| async move {
                        if attempt.get() > 1 {
                            me.retries += 1;
                        }
                        let r = me.step(&mut c).await;
                        if r.is_err() {
                            c = None;
                        }
                        ((me, c), r)
                    },
                )
                .await;
            self = me;
            client = c;
            let tx = self.tx.clone();
            let Some(tx) = tx else { return };
            match r {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tx.send(Msg::Done).await;
                    return;
                }
                Err(g) => {
                    let _ = tx.send(Msg::Failed(g.into_node_error())).await;
                    return;
                }
            }
        }
    }

    /// One unit of work: the whole result (once), or one poll and the wait
    /// before the next (incremental). Returns whether there is more to do.
    async fn step(&mut self, client: &mut Option<Client>) -> Result<bool, NodeError> {
        if client.as_ref().is_none_or(Client::is_closed) {
            *client = Some(self.conn.connect().await?);
        }
        let Some(c) = client.as_mut() else {
            return Err(NodeError::Bug("no client after connecting".into()));
        };
        match self.incremental.clone() {
            None => {
                self.read_once(c).await?;
                Ok(false)
            }
            Some(inc) => {
                let started = tokio::time::Instant::now();
                self.poll(c, &inc).await?;
                if !inc.follow {
                    return Ok(false);
                }
                tokio::time::sleep_until(started + inc.poll).await;
                Ok(true)
            }
        }
    }

    async fn send(
        &mut self,
        batch: RecordBatch,
        letters: Vec<DeadLetter>,
    ) -> Result<(), NodeError> {
        let msg = Msg::Batch {
            batch,
            position: self.state.position(self.incremental.is_some()),
            letters,
            retries: std::mem::take(&mut self.retries),
            infinities: std::mem::take(&mut self.infinities),
        };
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send(msg).await.map_err(|_| closed())
    }

    /// Reads the result from row `state.rows` on, in batches.
    async fn read_once(&mut self, client: &mut Client) -> Result<(), NodeError> {
        let conn = self.conn.clone();
        let err = |what: &str, e: tokio_postgres::Error| conn.error(what, &e);
        let tx = conn.begin_read(client).await?;
        let stmt = tx
            .prepare_typed(&self.once, &[Type::INT8])
            .await
            .map_err(|e| err("cannot prepare the query", e))?;
        let offset = i64::try_from(self.state.rows).unwrap_or(i64::MAX);
        let portal = tx
            .bind(&stmt, &[&offset])
            .await
            .map_err(|e| err("cannot run the query", e))?;
        loop {
            let rows = tx
                .query_portal(&portal, self.batch_rows as i32)
                .await
                .map_err(|e| err("cannot fetch rows", e))?;
            let n = rows.len();
            if n == 0 {
                break;
            }
            let (batch, letters) = self.decode(&rows)?;
            self.state.rows += n as u64;
            self.send(batch, letters).await?;
            if n < self.batch_rows {
                break;
            }
        }
        tx.commit()
            .await
            .map_err(|e| err("cannot end the transaction", e))
    }

    /// One incremental poll, then the position it settled; returns the rows
    /// it delivered.
    async fn poll(&mut self, client: &mut Client, inc: &Incremental) -> Result<u64, NodeError> {
        let conn = self.conn.clone();
        let err = |what: &str, e: tokio_postgres::Error| conn.error(what, &e);
        let tx = conn.begin_read(client).await?;
        // The first statement takes the transaction's snapshot: this one reads
        // its bounds and the oldest transaction open elsewhere.
        let snap = tx
            .query_one(
                "SELECT pg_snapshot_xmin(s)::text::int8, pg_snapshot_xmax(s)::text::int8, \
                        clock_timestamp(), \
                        (SELECT min(xact_start) FROM pg_stat_activity \
                          WHERE pid <> pg_backend_pid() AND xact_start IS NOT NULL) \
                   FROM pg_current_snapshot() AS s",
                &[],
            )
            .await
            .map_err(|e| err("cannot read the snapshot", e))?;
        let xmin: i64 = snap.get(0);
        let xmax: i64 = snap.get(1);
        let at = micros(snap.get::<_, Raw>(2)).unwrap_or(i64::MAX);
        let oldest = micros(snap.get::<_, Raw>(3));
        let mut settle_to = self.state.settled(xmin, oldest);
        // Nothing else open at this snapshot: what it shows is final already.
        let final_now = xmin == xmax && oldest.is_none();

        let portal = match self.state.p {
            None => {
                let stmt = tx
                    .prepare(&inc.first)
                    .await
                    .map_err(|e| err("cannot prepare the query", e))?;
                tx.bind(&stmt, &[]).await
            }
            Some(p) => {
                let stmt = tx
                    .prepare_typed(&inc.after, &[Type::INT8])
                    .await
                    .map_err(|e| err("cannot prepare the query", e))?;
                tx.bind(&stmt, &[&p]).await
            }
        }
        .map_err(|e| err("cannot run the query", e))?;
        let mut high = self.state.p;
        let mut delivered = 0u64;
        loop {
            let rows = tx
                .query_portal(&portal, self.batch_rows as i32)
                .await
                .map_err(|e| err("cannot fetch rows", e))?;
            let n = rows.len();
            if n == 0 {
                break;
            }
            let (batch, letters) = self.decode(&rows)?;
            let values = column_values(&batch, inc.index)?;
            high = high.max(values.iter().flatten().copied().max());
            let keep: BooleanArray = values
                .iter()
                .map(|v| Some(v.is_some_and(|v| !self.state.delivered.contains(&v))))
                .collect();
            let batch = arrow::compute::filter_record_batch(&batch, &keep)?;
            self.state.delivered.extend(values.iter().flatten());
            if batch.num_rows() > 0 || !letters.is_empty() {
                delivered += batch.num_rows() as u64;
                self.send(batch, letters).await?;
            }
            if n < self.batch_rows {
                break;
            }
        }
        tx.commit()
            .await
            .map_err(|e| err("cannot end the transaction", e))?;
        match high {
            Some(high) if final_now => settle_to = settle_to.max(Some(high)),
            Some(high) => self.state.pending.push(Candidate { high, xmax, at }),
            None => {}
        }
        self.state.advance(settle_to);
        // The position after the poll, with no rows: the executor commits it
        // (and learns the source is alive) even when nothing was new.
        self.send(
            RecordBatch::new_empty(self.mapping.schema.clone()),
            Vec::new(),
        )
        .await?;
        Ok(delivered)
    }

    /// The rows as a batch; a row that cannot be decoded is a dead letter.
    fn decode(
        &mut self,
        rows: &[tokio_postgres::Row],
    ) -> Result<(RecordBatch, Vec<DeadLetter>), NodeError> {
        let mut b: Builders = self.mapping.builders(rows.len());
        let mut letters = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if let Err(why) = b.append_row(row) {
                letters.push(DeadLetter {
                    fault: Fault::Data,
                    reason: "undecodable".into(),
                    detail: format!("{}: {why}", self.conn.describe()),
                    position: format!(
                        "{} row {i} of its fetch",
                        self.state.position(self.incremental.is_some())
                    ),
                    payload: Payload::text_of(why),
                });
            }
        }
        self.infinities += b.infinities;
        Ok((b.finish()?, letters))
    }
}

/// A `timestamptz` in binary form as microseconds since 1970.
fn micros(raw: Raw<'_>) -> Option<i64> {
    let b: [u8; 8] = raw.0?.try_into().ok()?;
    Some(i64::from_be_bytes(b).saturating_add(super::types::PG_EPOCH_MICROS))
}

/// The incremental column's values as `i64` (integers as they are,
/// timestamps in microseconds since 1970).
fn column_values(batch: &RecordBatch, index: usize) -> Result<Vec<Option<i64>>, NodeError> {
    let c = batch.column(index);
    Ok(match c.data_type() {
        DataType::Int16 => c
            .as_primitive::<Int16Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::Int32 => c
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::Int64 => c.as_primitive::<Int64Type>().iter().collect(),
        DataType::Timestamp(..) => c
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect(),
        other => {
            return Err(NodeError::Bug(format!(
                "the incremental column became {other} after the plan checked it"
            )));
        }
    })
}

/// A query read as a lookup table: whole (a full cache's load) or by keys
/// (a lazy cache's misses), on one connection kept between calls.
pub struct PgTable {
    conn: Conn,
    query: String,
    columns: Vec<(String, Type)>,
    mapping: Mapping,
    batch_rows: usize,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl PgTable {
    /// The table's schema.
    pub fn schema(&self) -> SchemaRef {
        self.mapping.schema.clone()
    }

    /// The connection's name (no password).
    pub fn describe(&self) -> &str {
        self.conn.describe()
    }

    /// Whether `column` can key a lazy lookup (an integer or text column):
    /// its values are sent as one `int8[]` or `text[]` parameter.
    ///
    /// # Errors
    /// Why it cannot.
    pub fn keyable(&self, column: &str) -> Result<(), String> {
        match self.columns.iter().find(|(n, _)| n == column) {
            None => Err(format!("the table has no column `{column}`")),
            Some((_, ty)) if key_param(ty).is_some() => Ok(()),
            Some((_, ty)) => Err(format!(
                "`{column}` has type `{}`; a lazy lookup keys on an integer or text column",
                ty.name()
            )),
        }
    }

    /// The kept connection, made first if there is none.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, NodeError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.conn.connect().await?);
        }
        Ok(slot)
    }

    /// Every row, in batches, from one snapshot.
    ///
    /// # Errors
    /// A failure of the server (the connection is then dropped) or a row that
    /// cannot be decoded.
    pub async fn read_all(&self) -> Result<Vec<RecordBatch>, NodeError> {
        let mut slot = self.client().await?;
        let r = match slot.as_mut() {
            Some(client) => self.read_all_on(client).await,
            None => Err(NodeError::Bug("no client after connecting".into())),
        };
        if r.is_err() {
            *slot = None;
        }
        r
    }

    async fn read_all_on(&self, client: &mut Client) -> Result<Vec<RecordBatch>, NodeError> {
        let err = |what: &str, e: tokio_postgres::Error| self.conn.error(what, &e);
        let tx = self.conn.begin_read(client).await?;
        let stmt = tx
            .prepare(&self.query)
            .await
            .map_err(|e| err("cannot prepare the query", e))?;
        let portal = tx
            .bind(&stmt, &[])
            .await
            .map_err(|e| err("cannot run the query", e))?;
        let mut out = Vec::new();
        loop {
            let rows = tx
                .query_portal(&portal, self.batch_rows as i32)
                .await
                .map_err(|e| err("cannot fetch rows", e))?;
            if rows.is_empty() {
                break;
            }
            out.push(decode_strict(&self.mapping, &rows)?);
        }
        tx.commit()
            .await
            .map_err(|e| err("cannot end the transaction", e))?;
        Ok(out)
    }

    /// The rows whose `column` is one of `keys` (integers or text), in one
    /// query.
    ///
    /// # Errors
    /// A failure of the server (the connection is then dropped).
    pub async fn read_keys(
        &self,
        column: &str,
        keys: &arrow::array::ArrayRef,
    ) -> Result<Vec<RecordBatch>, NodeError> {
        let ty = self
            .columns
            .iter()
            .find(|(n, _)| n == column)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| NodeError::config(format!("the table has no column `{column}`")))?;
        let (param, cast) = key_param(&ty)
            .ok_or_else(|| NodeError::config(format!("`{column}` cannot key a lazy lookup")))?;
        let sql = format!(
            "SELECT * FROM ({}) AS weir_q WHERE weir_q.{} = ANY($1::{cast})",
            self.query,
            quote_ident(column)
        );
        let ints = param == Type::INT8_ARRAY;
        let keys = arrow::compute::cast(
            keys,
            if ints {
                &DataType::Int64
            } else {
                &DataType::Utf8
            },
        )?;
        let int_keys: Vec<i64> = if ints {
            keys.as_primitive::<Int64Type>().iter().flatten().collect()
        } else {
            Vec::new()
        };
        let text_keys: Vec<String> = if ints {
            Vec::new()
        } else {
            keys.as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_owned)
                .collect()
        };
        let value: &(dyn tokio_postgres::types::ToSql + Sync) =
            if ints { &int_keys } else { &text_keys };
        let mut slot = self.client().await?;
        let r = match slot.as_mut() {
            Some(client) => {
                async {
                    let stmt = client
                        .prepare_typed(&sql, std::slice::from_ref(&param))
                        .await
                        .map_err(|e| self.conn.error("cannot prepare the lookup", &e))?;
                    let rows = client
                        .query(&stmt, &[value])
                        .await
                        .map_err(|e| self.conn.error("cannot look keys up", &e))?;
                    if rows.is_empty() {
                        Ok(Vec::new())
                    } else {
                        Ok(vec![decode_strict(&self.mapping, &rows)?])
                    }
                }
                .await
            }
            None => Err(NodeError::Bug("no client after connecting".into())),
        };
        if r.is_err() {
            *slot = None;
        }
        r
    }
}

/// The array parameter type a key column's values are sent as, and its SQL
/// cast: integers as `int8[]` (an `int4` index still serves `= ANY`), text
/// as `text[]`.
fn key_param(ty: &Type) -> Option<(Type, &'static str)> {
    match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => Some((Type::INT8_ARRAY, "int8[]")),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            Some((Type::TEXT_ARRAY, "text[]"))
        }
        _ => None,
    }
}

/// `rows` as a batch; a row that cannot be decoded fails the whole read (a
/// lookup table is loaded whole or not at all).
fn decode_strict(
    mapping: &Mapping,
    rows: &[tokio_postgres::Row],
) -> Result<RecordBatch, NodeError> {
    let mut b = mapping.builders(rows.len());
    for (i, row) in rows.iter().enumerate() {
        b.append_row(row).map_err(|why| {
            NodeError::data(format!("row {i} of the table cannot be read: {why}"))
        })?;
    }
    Ok(b.finish()?)
}

impl PostgresSource {
    /// Starts the reading task on first use.
    fn start(&mut self) -> &mut mpsc::Receiver<Msg> {
        if self.rx.is_none()
            && let Some(mut reader) = self.reader.take()
        {
            let (tx, rx) = mpsc::channel(2);
            reader.tx = Some(tx);
            tokio::spawn(reader.run());
            self.rx = Some(rx);
        }
        self.rx.get_or_insert_with(|| mpsc::channel(1).1)
    }
}

impl AsyncSource for PostgresSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<bool, NodeError>> {
        Box::pin(async move {
            match self.start().recv().await {
                Some(Msg::Batch {
                    batch,
                    position,
                    letters,
                    retries,
                    infinities,
                }) => {
                    if retries > 0 {
                        out.count("retries", retries);
                    }
                    if infinities > 0 {
                        out.count("infinities_as_null", infinities);
                    }
                    for l in letters {
                        out.dead_letter(l);
                    }
                    out.push_at(batch, Some(position));
                    Ok(true)
                }
                Some(Msg::Failed(e)) => Err(e),
                Some(Msg::Done) | None => Ok(false),
            }
        })
    }

    fn seek<'a>(&'a mut self, position: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let reader = self.reader.as_mut().ok_or_else(|| {
                NodeError::Bug("a PostgreSQL source was asked to seek after it started".into())
            })?;
            let incremental = reader.incremental.is_some();
            reader.state = State::parse(position, incremental).map_err(|why| {
                NodeError::config(format!(
                    "`{position}` is not a position of this PostgreSQL source ({} mode): {why}",
                    if incremental { "incremental" } else { "once" }
                ))
            })?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_with_ranges() {
        let mut s = State {
            p: Some(10),
            ..State::default()
        };
        s.delivered.extend([12, 13, 14, 17, 20, 21]);
        let text = s.position(true);
        assert_eq!(text, "p=10;d=12..14,17,20..21");
        assert_eq!(State::parse(&text, true).unwrap(), s);
        assert_eq!(State::parse("p=-;d=", true).unwrap(), State::default());
        assert!(State::parse("rows=3", true).is_err());
        assert_eq!(State::parse("rows=3", false).unwrap().rows, 3);
    }

    #[test]
    fn the_position_waits_for_every_transaction_open_at_the_poll() {
        let mut s = State::default();
        s.delivered.extend([2, 3]);
        s.pending.push(Candidate {
            high: 3,
            xmax: 105,
            at: 1_000,
        });
        // A transaction with an id below 105 is still open.
        assert_eq!(s.settled(101, None), None);
        assert_eq!(s.pending.len(), 1);
        // Every id has ended, but a session opened at 900 (before the poll) is open.
        assert_eq!(s.settled(110, Some(900)), None);
        // Both rules hold: 3 is final; once the poll has read, the position moves
        // and the delivered set forgets what is below it.
        s.delivered.insert(5);
        let high = s.settled(110, Some(1_001));
        assert_eq!(high, Some(3));
        assert!(s.pending.is_empty());
        assert_eq!(s.p, None, "nothing moves before the poll's read");
        s.advance(high);
        assert_eq!(s.p, Some(3));
        assert_eq!(s.delivered.iter().copied().collect::<Vec<_>>(), [5]);
    }
}
