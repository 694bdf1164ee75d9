//! The JetStream sink: rows published as JSON, with message ids a replay
//! reproduces.
//!
//! ```text
//!   batch ──JSON objects (the JSON-lines sink's encoder)──► one payload per row (or per batch)
//!     │                                                        │ Nats-Msg-Id
//!     └──► publish, publish, … (up to `max_inflight` unacknowledged) ──► await every ack
//!                                                                         └─► durable
//! ```
//!
//! A write returns once the server has acknowledged every message of the
//! batch, which is when JetStream has stored it ([`Durability::OnWrite`]); the
//! executor commits the source positions behind the batch only then.
//!
//! **Replays.** Delivery is at-least-once: after a crash the rows after the last
//! committed position are computed and published again. Each message carries a
//! `Nats-Msg-Id`, and the server drops a message whose id it has stored within
//! the stream's `duplicate_window` (2 minutes unless the stream says
//! otherwise), answering `duplicate: true`. The id must therefore be the same
//! on the replay, whatever the batch boundaries then are. Ids are
//! `{pipeline}/{sink}/{digest}`, the digest by [`MsgId`]:
//!
//! - `content` (the default): sha256 of the row's JSON. Batch boundaries of a
//!   stream source depend on timing (a batch is cut when `max_wait` passes), so
//!   a row's place in a batch is not stable across a replay, but its content
//!   is. The cost: two rows identical in every published column within the
//!   window are one message. A feature row carries its entity and event time,
//!   so identical rows are the same fact; the duplicates are counted and
//!   logged, never dropped unseen.
//! - `{ key = ["col", …] }`: sha256 of those columns' values: the row's identity
//!   when the data has one (an event id; an entity and a window start).
//! - `lineage`: the batch's source spans and the row's index in it, as
//!   `source@from..to/row`: distinct for equal rows, and stable across a replay
//!   only where batch boundaries are (file sources cut at every `batch_rows`
//!   lines, stages that keep rows one to one).
//!
//! With `per = "batch"` a message is the batch's rows as one JSON array, with
//! the id the digest of its whole text (`content`) or of its spans
//! (`lineage`); a replay deduplicates where the replayed batch is the same.

use std::num::NonZeroUsize;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{connect, default_url, service, valid_name};
use crate::batch::json::{JsonOptions, rows_as_arrays, write_object_lines};
use crate::node::config::{BuildCx, SinkConfig, SinkNode, SpecError};
use crate::node::retry::{GaveUp, RetryPolicy, node_transience};
use crate::node::{AsyncSink, BoxFuture, Durability, Emitter, Lineage, NodeError};

/// `[sink.jetstream]`: rows published to a subject a stream captures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSinkSpec {
    /// The server. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The subject every message is published on; a stream must capture it.
    pub subject: String,
    /// The stream that should capture `subject`: checked on the first write, so
    /// a missing stream is a clear error. Default: not checked (a publish no
    /// stream captures fails with "no responders").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// One message per `"row"` (the default) or per `"batch"` (a JSON array).
    #[serde(default)]
    pub per: Per,
    /// How the `Nats-Msg-Id` of a message is made (see the module docs):
    /// `"content"` (the default), `"lineage"` or `{ key = ["col", …] }`.
    #[serde(default)]
    pub id: MsgId,
    /// Columns to publish, in order. Default: all, in batch order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Round floats to this many decimal places. Default: none (shortest exact form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_decimals: Option<u8>,
    /// Messages published and not yet acknowledged by the server, at most.
    /// Default: 4096.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: NonZeroUsize,
    /// How publishes that fail transiently (the connection lost or reset, an
    /// ack timed out, no responders while the server restarts) are retried:
    /// the messages not acknowledged are published again with the same
    /// `Nats-Msg-Id`, so the stream stores each once. Default:
    /// [`RetryPolicy::default`].
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_max_inflight() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("not zero")
}

/// What a message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// One row, as a JSON object.
    #[default]
    Row,
    /// A whole batch, as a JSON array of objects.
    Batch,
}

/// How a message's id is derived (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgId {
    /// sha256 of the message's JSON text.
    #[default]
    Content,
    /// The batch's source spans and the row's index.
    Lineage,
    /// sha256 of these columns' values.
    Key(Vec<String>),
}

impl SinkConfig for JetStreamSinkSpec {
    /// Replayed records are written as any others: the service keeps what it
    /// already holds.
    fn replay_into(&self, _base_dir: &std::path::Path) -> crate::node::config::ReplayInto {
        crate::node::config::ReplayInto::Adds
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.subject.is_empty()
            || self.subject.contains([' ', '*', '>'])
            || self.subject.split('.').any(str::is_empty)
        {
            return Err(SpecError::invalid(
                format!("{key}.subject"),
                format!(
                    "`{}` is not a subject to publish on (dot-separated tokens, no wildcards or spaces)",
                    self.subject
                ),
            ));
        }
        if let Some(s) = &self.stream
            && !valid_name(s)
        {
            return Err(SpecError::invalid(
                format!("{key}.stream"),
                format!("`{s}` is not a stream name (no spaces, `.`, `*`, `>` or slashes)"),
            ));
        }
        self.retry
            .check()
            .map_err(|e| SpecError::invalid(format!("{key}.retry"), e))?;
        if let MsgId::Key(cols) = &self.id {
            if cols.is_empty() {
                return Err(SpecError::invalid(
                    format!("{key}.id.key"),
                    "name at least one column",
                ));
            }
            if self.per == Per::Batch {
                return Err(SpecError::invalid(
                    format!("{key}.id"),
                    "a key names one row; with per = \"batch\" use \"content\" or \"lineage\"",
                ));
            }
        }
        Ok(())
    }

    /// The sink; it connects on its first write.
    fn build(&self, cx: &BuildCx) -> Result<SinkNode, NodeError> {
        Ok(SinkNode::Async(Box::new(JetStreamSink::new(
            self.clone(),
            cx.pipeline,
            cx.name,
        ))))
    }

    /// The columns of `id = { key = […] }` and of `columns` are in the input.
    fn check_input(&self, key: &str, input: &arrow::datatypes::Schema) -> Result<(), NodeError> {
        let named = |what: &str, cols: &[String]| {
            for c in cols {
                if input.field_with_name(c).is_err() {
                    return Err(NodeError::config(format!(
                        "`{key}.{what}`: column `{c}` is not in the input (columns: {})",
                        crate::node::config::column_list(input)
                    )));
                }
            }
            Ok(())
        };
        if let MsgId::Key(cols) = &self.id {
            named("id.key", cols)?;
        }
        if let Some(cols) = &self.columns {
            named("columns", cols)?;
        }
        Ok(())
    }
}

/// The connection, made on the first write.
struct Conn {
    js: async_nats::jetstream::Context,
}

/// The JetStream sink; see the module docs.
pub struct JetStreamSink {
    spec: JetStreamSinkSpec,
    subject: async_nats::Subject,
    /// `{pipeline}/{sink}/`.
    id_prefix: String,
    options: JsonOptions,
    conn: Option<Conn>,
    text: Vec<u8>,
    published: u64,
    duplicates: u64,
    /// Publishes and connections made again, not yet reported.
    unreported_retries: u64,
}

impl JetStreamSink {
    /// A sink for `spec` (checked with [`SinkConfig::check`]) named
    /// `name` in `pipeline` (both go into the message ids). Does not connect.
    pub fn new(spec: JetStreamSinkSpec, pipeline: &str, name: &str) -> Self {
        Self {
            subject: async_nats::Subject::from(spec.subject.as_str()),
            id_prefix: format!("{pipeline}/{name}/"),
            options: JsonOptions {
                float_decimals: spec.float_decimals,
                ..JsonOptions::default()
            },
            spec,
            conn: None,
            text: Vec::new(),
            published: 0,
            duplicates: 0,
            unreported_retries: 0,
        }
    }

    /// Messages the server stored so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Messages the server had already (same id within its duplicate window):
    /// replays.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The connection, made on first use under the `retry` policy: a server
    /// that is down or restarting is waited for; a missing or unfitting
    /// stream is permanent.
    async fn connect(&mut self) -> Result<async_nats::jetstream::Context, NodeError> {
        if let Some(c) = &self.conn {
            return Ok(c.js.clone());
        }
        let policy = self.spec.retry.clone();
        let url = self.spec.url.clone();
        let (this, result) = policy
            .run_with(&url, &node_transience, self, |this, attempt| async move {
                this.unreported_retries += u64::from(attempt.get() > 1);
                let r = this.connect_once().await;
                (this, r)
            })
            .await;
        result.map_err(GaveUp::into_node_error)?;
        Ok(this.conn.as_ref().expect("connected above").js.clone())
    }

    async fn connect_once(&mut self) -> Result<(), NodeError> {
        if self.conn.is_none() {
            let client = connect(&self.spec.url).await?;
            let js = async_nats::jetstream::context::ContextBuilder::new()
                .max_ack_inflight(self.spec.max_inflight.get())
                .build(client);
            if let Some(name) = &self.spec.stream {
                let mut stream = js.get_stream(name).await.map_err(|e| {
                    NodeError::config(format!(
                        "nats {}: stream `{name}` (sink `stream`): {e}",
                        self.spec.url
                    ))
                })?;
                let info = stream
                    .info()
                    .await
                    .map_err(|e| service(&self.spec.url, true, format!("stream `{name}`: {e}")))?;
                let subjects = info.config.subjects.clone();
                if !subjects
                    .iter()
                    .any(|s| subject_matches(s, &self.spec.subject))
                {
                    return Err(NodeError::config(format!(
                        "nats {}: stream `{name}` does not capture `{}` (its subjects: {})",
                        self.spec.url,
                        self.spec.subject,
                        subjects.join(", ")
                    )));
                }
            }
            self.conn = Some(Conn { js });
        }
        Ok(())
    }

    /// The messages of `batch`: each payload with its id.
    fn messages(
        &mut self,
        batch: &RecordBatch,
        lineage: &Lineage,
    ) -> Result<Vec<(Bytes, String)>, NodeError> {
        self.text.clear();
        write_object_lines(
            batch,
            self.spec.columns.as_deref(),
            self.options,
            &mut self.text,
        )
        .map_err(|e| NodeError::config(format!("sink subject `{}`: {e}", self.spec.subject)))?;
        let text = Bytes::from(std::mem::take(&mut self.text));
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &text) {
            rows.push(text.slice(start..end));
            start = end + 1;
        }
        let spans = || {
            lineage
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
                .collect::<Vec<_>>()
                .join(";")
        };
        let prefix = &self.id_prefix;
        Ok(match (&self.spec.per, &self.spec.id) {
            (Per::Row, MsgId::Content) => rows
                .into_iter()
                .map(|r| {
                    let id = format!("{prefix}{}", digest(&r));
                    (r, id)
                })
                .collect(),
            (Per::Row, MsgId::Lineage) => {
                let spans = spans();
                rows.into_iter()
                    .enumerate()
                    .map(|(i, r)| (r, format!("{prefix}{spans}/{i}")))
                    .collect()
            }
            (Per::Row, MsgId::Key(cols)) => {
                let (_, keys) = rows_as_arrays(batch, Some(cols), self.options)
                    .map_err(|e| NodeError::config(format!("sink id key: {e}")))?;
                rows.into_iter()
                    .zip(keys)
                    .map(|(r, k)| {
                        let k = serde_json::to_vec(&k).expect("JSON values serialize");
                        (r, format!("{prefix}{}", digest(&k)))
                    })
                    .collect()
            }
            (Per::Batch, id) => {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let mut array = Vec::with_capacity(text.len() + 2);
                array.push(b'[');
                for (i, r) in rows.iter().enumerate() {
                    if i > 0 {
                        array.push(b',');
                    }
                    array.extend_from_slice(r);
                }
                array.push(b']');
                let id = match id {
                    MsgId::Lineage => format!("{prefix}{}", spans()),
                    _ => format!("{prefix}{}", digest(&array)),
                };
                vec![(Bytes::from(array), id)]
            }
        })
    }
}

/// The first 128 bits of sha256, in hex: ids that do not collide by chance
/// within any duplicate window.
fn digest(bytes: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(bytes)[..16])
}

/// Whether the stream subject `pattern` (with `*` and `>`) captures `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl AsyncSink for JetStreamSink {
    /// Publishes every message of `batch`, at most `max_inflight` awaiting
    /// their acks at once, and returns when the server has acknowledged all.
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        lineage: &'a Arc<Lineage>,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            if batch.num_rows() == 0 {
                return Ok(());
            }
            let messages = self.messages(batch, lineage)?;
            let max_inflight = self.spec.max_inflight.get();
            let url = self.spec.url.clone();
            let subject = self.subject.clone();
            let js = self.connect().await?;
            let sent = publish_all(
                &js,
                &url,
                &subject,
                messages.into_iter().map(|(p, id)| (p, Some(id))).collect(),
                max_inflight,
                &self.spec.retry,
            )
            .await;
            self.unreported_retries += sent.retries;
            let (stored, duplicates) = sent.result?;
            if duplicates > 0 {
                tracing::debug!(%subject, duplicates, "messages already in the stream (a replay)");
            }
            self.published += stored;
            self.duplicates += duplicates;
            Ok(())
        })
    }

    fn durability(&self) -> Durability {
        Durability::OnWrite
    }

    /// The publishes and connections made again since the last report, as
    /// `retries`.
    fn report(&mut self, out: &mut Emitter) {
        if self.unreported_retries > 0 {
            out.count("retries", std::mem::take(&mut self.unreported_retries));
        }
    }

    fn close(&mut self, _complete: bool) -> BoxFuture<'_, Result<(), NodeError>> {
        Box::pin(async move {
            if self.duplicates > 0 {
                tracing::info!(
                    subject = %self.spec.subject, published = self.published, duplicates = self.duplicates,
                    "messages the stream already held (same Nats-Msg-Id within its duplicate window) were not stored again"
                );
            }
            Ok(())
        })
    }
}

/// A message to publish: its payload and its `Nats-Msg-Id`, if any.
pub(super) type Message = (Bytes, Option<String>);

/// What [`publish_all`] did: (stored, duplicates the server already had) or
/// the failure it ended with, and the rounds it published again.
pub(super) struct Sent {
    /// Messages stored and messages the stream already held, or the failure.
    pub(super) result: Result<(u64, u64), NodeError>,
    /// Rounds of publishing again after a transient failure.
    pub(super) retries: u64,
}

/// Publishes `messages` on `subject`, at most `max_inflight` awaiting their
/// acks at once, and returns once every one is acknowledged. Messages whose
/// publish or ack failed transiently (a lost connection, a timeout, no
/// responders while JetStream restarts) are published again, and only they,
/// under `retry`, with the same ids: a message stored before the failure is
/// answered `duplicate` and counted once.
pub(super) async fn publish_all(
    js: &async_nats::jetstream::Context,
    url: &str,
    subject: &async_nats::Subject,
    messages: Vec<Message>,
    max_inflight: usize,
    retry: &RetryPolicy,
) -> Sent {
    let mut retries = 0;
    let (_, result) = retry
        .run_with(
            url,
            &node_transience,
            (messages, 0u64, 0u64),
            |(pending, mut stored, mut duplicates), attempt| {
                retries = u64::from(attempt.get() - 1);
                async move {
                    let round = publish_round(js, url, subject, &pending, max_inflight).await;
                    stored += round.stored;
                    duplicates += round.duplicates;
                    let failed: Vec<Message> =
                        round.failed.iter().map(|&i| pending[i].clone()).collect();
                    let outcome = match round.error {
                        None => Ok((stored, duplicates)),
                        Some(e) if is_no_responders(&e) => {
                            Err(no_responders(js, url, subject).await)
                        }
                        Some(e) => Err(e),
                    };
                    ((failed, stored, duplicates), outcome)
                }
            },
        )
        .await;
    Sent {
        result: result.map_err(GaveUp::into_node_error),
        retries,
    }
}

/// One round of [`publish_all`].
struct Round {
    stored: u64,
    duplicates: u64,
    /// Indices of the messages not acknowledged.
    failed: Vec<usize>,
    /// The first failure, a permanent one before any transient one.
    error: Option<NodeError>,
}

/// Publishes every message of `messages` once and awaits the acks.
async fn publish_round(
    js: &async_nats::jetstream::Context,
    url: &str,
    subject: &async_nats::Subject,
    messages: &[Message],
    max_inflight: usize,
) -> Round {
    use futures_util::FutureExt as _;
    let mut inflight = FuturesUnordered::new();
    let mut round = Round {
        stored: 0,
        duplicates: 0,
        failed: Vec::new(),
        error: None,
    };
    let settle = |round: &mut Round,
                  i: usize,
                  ack: Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    >| match ack {
        Ok(a) if a.duplicate => round.duplicates += 1,
        Ok(_) => round.stored += 1,
        Err(e) => {
            round.failed.push(i);
            let e = publish_error(url, subject, &e);
            let permanent = node_transience(&e) == crate::node::retry::Transience::Permanent;
            let first_transient = round
                .error
                .as_ref()
                .is_some_and(|f| node_transience(f) == crate::node::retry::Transience::Transient);
            if round.error.is_none() || (permanent && first_transient) {
                round.error = Some(e);
            }
        }
    };
    for (i, (payload, id)) in messages.iter().enumerate() {
        if inflight.len() >= max_inflight
            && let Some((j, ack)) = inflight.next().await
        {
            settle(&mut round, j, ack);
        }
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        match js
            .publish_with_headers(subject.clone(), headers, payload.clone())
            .await
        {
            Ok(ack) => inflight.push(ack.into_future().map(move |r| (i, r))),
            Err(e) => settle(&mut round, i, Err(e)),
        }
    }
    while let Some((j, ack)) = inflight.next().await {
        settle(&mut round, j, ack);
    }
    round.failed.sort_unstable();
    round
}

/// The marker [`publish_error`] gives "no responders", which asks the server
/// whether the stream is missing or JetStream is starting ([`no_responders`]).
const NO_RESPONDERS: &str = "no responders";

fn is_no_responders(e: &NodeError) -> bool {
    matches!(e, NodeError::Service { message, .. } if message.ends_with(NO_RESPONDERS))
}

/// "No responders" to a publish means nothing answered for the subject: no
/// stream captures it, or JetStream is not up yet (a server restarting). Asks
/// JetStream which stream captures `subject`: an answer of none is permanent
/// (the spec or the stream must change), anything else transient.
async fn no_responders(
    js: &async_nats::jetstream::Context,
    url: &str,
    subject: &async_nats::Subject,
) -> NodeError {
    use async_nats::jetstream::context::GetStreamByNameErrorKind as K;
    match js.stream_by_subject(subject.as_str()).await {
        Err(e) if matches!(e.kind(), K::NotFound) => {
            service(url, false, format!("no stream captures `{subject}`"))
        }
        Err(e) => service(
            url,
            true,
            format!(
                "publishing to `{subject}`: no responders, and JetStream did not say which stream captures it ({e})"
            ),
        ),
        Ok(stream) => service(
            url,
            true,
            format!(
                "publishing to `{subject}`: no responders, though stream `{stream}` captures it (JetStream restarting)"
            ),
        ),
    }
}

fn publish_error(
    url: &str,
    subject: &str,
    e: &async_nats::jetstream::context::PublishError,
) -> NodeError {
    use async_nats::jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound => service(
            url,
            true,
            format!("publishing to `{subject}`: {NO_RESPONDERS}"),
        ),
        K::MaxPayloadExceeded => NodeError::Data {
            message: format!("a message for `{subject}` is larger than the server allows: {e}"),
            row: None,
        },
        K::WrongLastMessageId | K::WrongLastSequence => {
            service(url, false, format!("publishing to `{subject}`: {e}"))
        }
        // Timeouts, a broken pipe, a full ack window, and what the client
        // reports while its connection is down.
        _ => service(url, true, format!("publishing to `{subject}`: {e}")),
    }
}
