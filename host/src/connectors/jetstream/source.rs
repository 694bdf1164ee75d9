//! The JetStream source: a durable pull consumer, acknowledged in bulk.
//!
//! ```text
//!   pull stream ──messages──► gathered (kept in self: a dropped call loses nothing)
//!                                 │ up to `batch`, or `max_wait`
//!                                 ▼
//!   delivered ≥ max_deliver ──► dead letter `max_deliver`
//!   empty payload ────────────► dead letter `empty`
//!   the rest ──parse_records (the JSON-lines parser)──► batch + dead letters `stream:seq`
//!                                 │
//!   push_at(batch, highest stream sequence so far) ── unacked: (position, reply) ──┐
//!                                                                                  │
//!   commit(position) ──► one +ACK on the newest message at or before it ◄──────────┘
//! ```
//!
//! **Acknowledgement.** The consumer uses `AckPolicy::All`: acknowledging a
//! message acknowledges every message before it, so a committed position costs
//! one ack, not one per message. An ack is sent without waiting for the
//! server's reply: a lost ack means the messages are delivered again
//! (at-least-once), never that one is lost.
//!
//! **Positions.** A batch's position is the highest stream sequence the source
//! has read (dead letters included), so positions never go back. A batch made
//! only of redelivered messages (their ack wait ran out while the pipeline was
//! slow, or they are an earlier run's) is `seq.n`: the `n`-th such batch since
//! `seq`. Committing any position acknowledges the message at its `seq`, which
//! covers every message emitted up to it; resuming after `seq.n` resumes after
//! `seq`.
//!
//! **Restart.** A durable consumer keeps, on the server, what the previous run
//! had read and not acknowledged, and would redeliver it only once its
//! `ack_wait` has passed, after newer messages; acknowledging a newer message
//! first (AckPolicy::All) would acknowledge the old ones unprocessed. So a
//! consumer found with messages pending (the previous run was killed) is
//! deleted and created again to start right after the resume point: the
//! checkpoint, or the consumer's ack floor when the run does not resume. The
//! restarted run reads on at once, with no wait and no gap. Delivery counts
//! start again with the new consumer, so `max_deliver` counts the deliveries
//! within a run (a pipeline slower than `ack_wait`); a consumer left clean (a
//! stopped run) is kept as it is.
//!
//! **Dead letters after `max_deliver`.** The server is told not to limit
//! deliveries: the source itself turns a message on its `max_deliver`-th
//! delivery into a dead letter (reason `max_deliver`) instead of decoding it,
//! so the message reaches the dead-letter store, and is acknowledged with the
//! next commit, rather than being dropped by the server without a trace.
//!
//! **Seek.** The executor's checkpoint (a stream sequence) and the durable
//! consumer's ack floor normally agree. If the consumer does not exist, or
//! holds unacknowledged messages, or is behind the checkpoint, it is created
//! to start after the checkpoint; messages at or before the checkpoint that
//! come again all the same are skipped (they are already durable downstream)
//! and acknowledged.
//!
//! **Retries.** Connecting, reading and acknowledging go through the `retry`
//! policy ([`crate::node::retry`]): a lost or reset connection, no responders
//! while JetStream restarts, or a pull that failed is tried again (a fresh pull
//! on the same durable consumer; the client reconnects by itself), and each is
//! counted in the node's `retries`. A missing stream is permanent and ends the
//! run with one line saying it was not retried. Deliveries lost in transit
//! (the connection dropped with messages on the wire) show as a gap in the
//! consumer's delivery sequence: since acknowledging a later message would
//! acknowledge them unread, the consumer is then created again to start right
//! after the last message received, so they come next and nothing received
//! comes twice. (A run killed in the moment between that and its next commit
//! resumes after the consumer's new floor; this is the one place where the
//! consumer's floor runs ahead of what was committed.) One durable consumer
//! must have one reader: a second process pulling from the same durable makes
//! gaps of its own.
//!
//! **Backpressure.** `max_ack_pending` bounds the messages delivered and not
//! yet acknowledged. A slow pipeline commits late, so the server stops
//! delivering, and the stream waits rather than piling up in memory.

use std::collections::{HashSet, VecDeque};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream as js_stream;
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{connect, default_durable, default_url, service, valid_name};
use crate::batch::records::schema_of;
use crate::connectors::parse_records;
use crate::node::config::{BuildCx, FieldSpec, SourceConfig, SourceNode, SpecError};
use crate::node::retry::{GaveUp, RetryPolicy, node_transience};
use crate::node::{AsyncSource, BoxFuture, DeadLetter, Emitter, NodeError};
use crate::units::Millis;

/// `[source.jetstream]`: a durable pull consumer on a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSourceSpec {
    /// The server. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The stream to read.
    pub stream: String,
    /// Only messages on this subject (wildcards allowed). Default: every
    /// subject of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The durable consumer's name: the server remembers, under it, what was
    /// acknowledged. Default: `weir_{pipeline}_{source}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    /// Where a new consumer starts: `"all"` (the default: everything the stream
    /// holds), `"new"` (only messages published from now on), `{ sequence = N }`
    /// (from stream sequence N) or `{ time = "2024-05-01T00:00:00Z" }` (from the
    /// first message published at or after that time). An existing consumer
    /// continues where it stopped.
    #[serde(default)]
    pub deliver: Deliver,
    /// Messages per batch, and per pull request. Default: the pipeline's
    /// `settings.batch_rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<NonZeroUsize>,
    /// The longest a batch waits to fill before what has arrived is emitted.
    /// Default: 100 ms.
    #[serde(default = "default_max_wait")]
    pub max_wait: Millis,
    /// Messages delivered and not yet acknowledged, at most: the server stops
    /// delivering at this many, so a slow pipeline slows the stream. Default:
    /// 4 × `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ack_pending: Option<NonZeroUsize>,
    /// The delivery of a message that becomes a dead letter (reason
    /// `max_deliver`) instead of being decoded: a message whose position was not
    /// committed `max_deliver - 1` times (the pipeline crashed on it, or was
    /// slower than `ack_wait`). Default: 5.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: NonZeroU32,
    /// How long the server waits for an acknowledgement before delivering a
    /// message again. Default: 30 s.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Millis,
    /// What a message holds: `"object"` (the default: one JSON object) or
    /// `"lines"` (JSON lines: one object per line, as a JSON-lines file holds
    /// them, which `weir nats publish --lines-per-message N` sends). A
    /// producer that batches its events pays the server's per-message cost
    /// once per batch; the records of one message share its position.
    #[serde(default, skip_serializing_if = "Payload::is_object")]
    pub payload: Payload,
    /// The columns to read, in order: the JSON-lines source's schema, with the
    /// same rules for what makes a record corrupt.
    pub schema: Vec<FieldSpec>,
    /// Where corrupt messages go (JSON lines: position `stream:sequence`,
    /// reason, payload). Default: the run's dead-letter file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejects: Option<PathBuf>,
    /// Create the stream (file storage, capturing `subject`, or `{stream}.>`
    /// without one) when it does not exist. Default: false: a missing stream
    /// fails the run, since a typo would otherwise create an empty stream and
    /// wait on it forever.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_stream: bool,
    /// End the run once the consumer has delivered everything the stream
    /// holds (a backfill). Default: false: run until stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_when_drained: bool,
    /// How reads, acknowledgements and connecting are retried when they fail
    /// transiently (the connection lost or reset, no responders while the
    /// server restarts); a missing stream is not retried. Default:
    /// [`RetryPolicy::default`].
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_max_wait() -> Millis {
    Millis(Duration::from_millis(100))
}

fn default_max_deliver() -> NonZeroU32 {
    NonZeroU32::new(5).expect("5 is not zero")
}

fn default_ack_wait() -> Millis {
    Millis(Duration::from_secs(30))
}

/// How the records of a message are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// One JSON object per message.
    #[default]
    Object,
    /// JSON lines: one object per line; blank lines are skipped, and a corrupt
    /// line is a dead letter of its own (position `stream:sequence:line`)
    /// while the message's other lines are read.
    Lines,
}

impl Payload {
    fn is_object(&self) -> bool {
        *self == Self::Object
    }
}

/// Where a new consumer starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Deliver {
    /// Everything the stream holds.
    #[default]
    All,
    /// Only messages published after the consumer was created.
    New,
    /// From this stream sequence on.
    Sequence(u64),
    /// From the first message published at or after this RFC 3339 time.
    Time(String),
}

impl Deliver {
    /// The server's deliver policy.
    ///
    /// # Errors
    /// The time is not RFC 3339 (`2024-05-01T00:00:00Z`).
    pub fn policy(&self) -> Result<DeliverPolicy, String> {
        Ok(match self {
            Self::All => DeliverPolicy::All,
            Self::New => DeliverPolicy::New,
            Self::Sequence(n) => DeliverPolicy::ByStartSequence { start_sequence: *n },
            // The client's own RFC 3339 reader, through its serde form.
            Self::Time(t) => serde_json::from_value(serde_json::json!({
                "deliver_policy": "by_start_time",
                "opt_start_time": t,
            }))
            .map_err(|_| format!("`{t}` is not an RFC 3339 time (e.g. 2024-05-01T00:00:00Z)"))?,
        })
    }
}

impl Serialize for Deliver {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::All => s.serialize_str("all"),
            Self::New => s.serialize_str("new"),
            Self::Sequence(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("sequence", n)?;
                m.end()
            }
            Self::Time(t) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("time", t)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Deliver {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str =
            r#""all", "new", { sequence = N } or { time = "2024-05-01T00:00:00Z" }"#;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Deliver;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Deliver, E> {
                match v {
                    "all" => Ok(Deliver::All),
                    "new" => Ok(Deliver::New),
                    other => Err(E::custom(format!(
                        "unknown deliver policy `{other}`, expected {EXPECTED}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Deliver, A::Error> {
                use serde::de::Error;
                let Some(key) = m.next_key::<String>()? else {
                    return Err(A::Error::custom(format!(
                        "an empty table, expected {EXPECTED}"
                    )));
                };
                let out = match key.as_str() {
                    "sequence" => Deliver::Sequence(m.next_value()?),
                    "time" => Deliver::Time(m.next_value()?),
                    other => {
                        return Err(A::Error::custom(format!(
                            "unknown key `{other}`, expected {EXPECTED}"
                        )));
                    }
                };
                if m.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(format!(
                        "one key only, expected {EXPECTED}"
                    )));
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

impl SourceConfig for JetStreamSourceSpec {
    fn json_fields(&self) -> Option<&[crate::node::config::FieldSpec]> {
        Some(&self.schema)
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        if !valid_name(&self.stream) {
            return Err(SpecError::invalid(
                format!("{key}.stream"),
                format!(
                    "`{}` is not a stream name (no spaces, `.`, `*`, `>` or slashes)",
                    self.stream
                ),
            ));
        }
        if let Some(d) = &self.durable
            && !valid_name(d)
        {
            return Err(SpecError::invalid(
                format!("{key}.durable"),
                format!("`{d}` is not a consumer name (no spaces, `.`, `*`, `>` or slashes)"),
            ));
        }
        if self
            .subject
            .as_deref()
            .is_some_and(|s| s.trim().is_empty() || s.contains(' '))
        {
            return Err(SpecError::invalid(
                format!("{key}.subject"),
                "a subject is dot-separated tokens without spaces",
            ));
        }
        if self.schema.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.schema"),
                "is empty; list the columns to read",
            ));
        }
        let mut seen = HashSet::new();
        for (f, field) in self.schema.iter().enumerate() {
            if !seen.insert(field.name.as_str()) {
                return Err(SpecError::invalid(
                    format!("{key}.schema[{f}].name"),
                    format!("column `{}` is listed twice", field.name),
                ));
            }
        }
        self.deliver
            .policy()
            .map_err(|m| SpecError::invalid(format!("{key}.deliver"), m))?;
        if self.max_wait.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.max_wait"),
                "must be more than 0 ms",
            ));
        }
        if self.ack_wait.0 < Duration::from_secs(1) {
            return Err(SpecError::invalid(
                format!("{key}.ack_wait"),
                "must be at least 1s (the server redelivers what is not acknowledged in time)",
            ));
        }
        Ok(())
    }

    /// The source, named `weir_{pipeline}_{source}` on the server unless
    /// `durable` says otherwise; it connects on its first read.
    fn build(&self, cx: &BuildCx) -> Result<SourceNode, NodeError> {
        Ok(SourceNode::Async(Box::new(JetStreamSource::new(
            self.clone(),
            default_durable(cx.pipeline, cx.name),
            cx.batch_rows,
        ))))
    }

    fn rejects(&self) -> Option<&std::path::Path> {
        self.rejects.as_deref()
    }

    fn acknowledges(&self) -> bool {
        true
    }
}

/// A message read and not yet emitted.
struct Got {
    seq: u64,
    delivered: i64,
    /// Messages the consumer had left to deliver after this one.
    pending: u64,
    payload: Bytes,
    reply: async_nats::Subject,
}

/// An emitted position and the message whose ack commits it.
struct Unacked {
    position: String,
    reply: async_nats::Subject,
}

/// The connection, made on first use.
struct Conn {
    client: async_nats::Client,
    consumer: consumer::Consumer<pull::Config>,
    messages: pull::Stream,
}

/// The JetStream source; see the module docs.
pub struct JetStreamSource {
    spec: JetStreamSourceSpec,
    durable: String,
    batch: usize,
    max_ack_pending: usize,
    fields: Arc<[FieldSpec]>,
    schema: SchemaRef,
    conn: Option<Conn>,
    /// Read and not yet emitted: here, not in the call, so a dropped call
    /// loses nothing.
    gathered: Vec<Got>,
    unacked: VecDeque<Unacked>,
    /// The highest stream sequence read (the last position emitted).
    high: u64,
    /// The reply subject of the message at `high`: acknowledging it
    /// acknowledges everything emitted.
    high_reply: Option<async_nats::Subject>,
    /// Batches of only redelivered messages emitted since `high` last rose.
    redelivered_batches: u64,
    /// The checkpoint a resumed run continues after: messages at or before it
    /// are durable downstream already.
    resumed_after: u64,
    /// The stream (with its filter) had nothing left when last asked.
    drained: bool,
    /// When the batch being gathered is emitted however full it is. Kept
    /// across calls: the executor drops a waiting call at every checkpoint
    /// barrier, and a deadline that started again with each call would never
    /// come while barriers are more frequent than `max_wait`.
    deadline: Option<Instant>,
    /// When an idle source last asked whether it is held at `max_ack_pending`.
    stall_checked: Option<Instant>,
    /// The ack floor when the source was first found held there, and when.
    stalled: Option<(u64, Instant)>,
    /// The consumer sequence of the last message received from the current
    /// consumer: the next must follow it, or deliveries were lost in transit.
    last_delivery: Option<u64>,
    /// Deliveries were lost in transit: the consumer is created again after
    /// what was received before the next read ([`JetStreamSource::reseat`]).
    lost: bool,
    /// Calls made again after a transient failure, not yet counted.
    retries: u64,
}

/// How long an idle source must find the server holding back messages at
/// `max_ack_pending`, with no acknowledgement meanwhile, before it says so.
const STALL_CHECK: Duration = Duration::from_secs(10);

/// How long a pull request waits on the server before it expires and is
/// renewed; the idle heartbeat is a tenth of it.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

impl JetStreamSource {
    /// A source for `spec` (checked with [`SourceConfig::check`]), named
    /// `durable` on the server unless the spec names it, emitting `batch_rows`
    /// messages per batch unless the spec says otherwise. Does not connect.
    pub fn new(spec: JetStreamSourceSpec, durable: String, batch_rows: NonZeroUsize) -> Self {
        let batch = spec.batch.unwrap_or(batch_rows).get();
        let max_ack_pending = spec.max_ack_pending.map_or(batch * 4, NonZeroUsize::get);
        let fields: Arc<[FieldSpec]> = spec.schema.clone().into();
        Self {
            durable: spec.durable.clone().unwrap_or(durable),
            schema: schema_of(&fields),
            fields,
            batch,
            max_ack_pending,
            spec,
            conn: None,
            gathered: Vec::new(),
            unacked: VecDeque::new(),
            high: 0,
            high_reply: None,
            redelivered_batches: 0,
            resumed_after: 0,
            drained: false,
            deadline: None,
            stall_checked: None,
            stalled: None,
            last_delivery: None,
            lost: false,
            retries: 0,
        }
    }

    /// The consumer's name on the server.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    fn fail(&self, transient: bool, message: impl std::fmt::Display) -> NodeError {
        service(&self.spec.url, transient, message)
    }

    /// The consumer configuration this source wants.
    fn consumer_config(&self, deliver: DeliverPolicy) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some("weir source".into()),
            deliver_policy: deliver,
            ack_policy: AckPolicy::All,
            ack_wait: self.spec.ack_wait.0,
            // Unlimited on the server: the source dead-letters at max_deliver.
            max_deliver: -1,
            filter_subject: self.spec.subject.clone().unwrap_or_default(),
            max_ack_pending: i64::try_from(self.max_ack_pending).unwrap_or(i64::MAX),
            ..pull::Config::default()
        }
    }

    /// Connects, finds (or creates) the stream and the consumer, and starts
    /// pulling.
    async fn connect(&mut self) -> Result<(), NodeError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let url = self.spec.url.clone();
        let client = connect(&url).await?;
        let js = async_nats::jetstream::new(client.clone());
        let stream = match js.get_stream(&self.spec.stream).await {
            Ok(s) => s,
            Err(e) if is_stream_not_found(&e) && self.spec.create_stream => js
                .create_stream(js_stream::Config {
                    name: self.spec.stream.clone(),
                    subjects: vec![
                        self.spec
                            .subject
                            .clone()
                            .unwrap_or_else(|| format!("{}.>", self.spec.stream)),
                    ],
                    ..js_stream::Config::default()
                })
                .await
                .map_err(|e| {
                    self.fail(
                        false,
                        format!("cannot create stream `{}`: {e}", self.spec.stream),
                    )
                })?,
            Err(e) if is_stream_not_found(&e) => {
                return Err(NodeError::config(format!(
                    "nats {url}: there is no stream `{}` (create it, or set `create_stream = true`)",
                    self.spec.stream
                )));
            }
            Err(e) => {
                return Err(self.fail(true, format!("stream `{}`: {e}", self.spec.stream)));
            }
        };
        let existing = match stream.consumer_info(&self.durable).await {
            Ok(info) => Some(info),
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                None
            }
            Err(e) => return Err(self.fail(true, format!("consumer `{}`: {e}", self.durable))),
        };
        let consumer = match existing {
            Some(info)
                if info.num_ack_pending == 0
                    && self.resumed_after <= info.ack_floor.stream_sequence =>
            {
                self.check_existing(&info)?;
                self.high = self.high.max(info.ack_floor.stream_sequence);
                let config = self.consumer_config(info.config.deliver_policy);
                consumer::Consumer::new(config, info, js.clone())
            }
            existing => {
                let deliver = match existing {
                    Some(info) => {
                        self.check_existing(&info)?;
                        // Pending messages of a killed run, or a consumer behind the
                        // checkpoint: start again right after the resume point.
                        let after = self.resumed_after.max(info.ack_floor.stream_sequence);
                        tracing::info!(
                            consumer = %self.durable, pending = info.num_ack_pending,
                            floor = info.ack_floor.stream_sequence, after,
                            "the consumer holds unacknowledged messages of an earlier run: recreating it to start after the resume point"
                        );
                        stream.delete_consumer(&self.durable).await.map_err(|e| {
                            self.fail(
                                true,
                                format!("cannot recreate consumer `{}`: {e}", self.durable),
                            )
                        })?;
                        self.high = self.high.max(after);
                        DeliverPolicy::ByStartSequence {
                            start_sequence: after + 1,
                        }
                    }
                    None if self.resumed_after > 0 => DeliverPolicy::ByStartSequence {
                        start_sequence: self.resumed_after + 1,
                    },
                    None => self.spec.deliver.policy().map_err(NodeError::config)?,
                };
                stream
                    .create_consumer(self.consumer_config(deliver))
                    .await
                    .map_err(|e| {
                        self.fail(
                            false,
                            format!("cannot create consumer `{}`: {e}", self.durable),
                        )
                    })?
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 10)
            .messages()
            .await
            .map_err(|e| self.fail(true, format!("cannot pull from `{}`: {e}", self.durable)))?;
        self.conn = Some(Conn {
            client,
            consumer,
            messages,
        });
        Ok(())
    }

    /// An existing consumer must be a pull consumer acknowledged in bulk on the
    /// same filter; other settings (`ack_wait`, `max_ack_pending`) are the
    /// server's, and a difference is logged.
    fn check_existing(&self, info: &consumer::Info) -> Result<(), NodeError> {
        let c = &info.config;
        let filter = self.spec.subject.clone().unwrap_or_default();
        let wrong = if c.deliver_subject.is_some() {
            Some("it is a push consumer".to_owned())
        } else if c.ack_policy != AckPolicy::All {
            Some(format!("its ack policy is {:?}, not All", c.ack_policy))
        } else if c.filter_subject != filter {
            Some(format!(
                "its filter is `{}`, not `{filter}`",
                c.filter_subject
            ))
        } else {
            None
        };
        if let Some(why) = wrong {
            return Err(NodeError::config(format!(
                "nats {}: consumer `{}` on stream `{}` exists and does not fit: {why} (delete it or choose another `durable`)",
                self.spec.url, self.durable, self.spec.stream
            )));
        }
        if c.ack_wait != self.spec.ack_wait.0 || c.max_ack_pending != self.max_ack_pending as i64 {
            tracing::warn!(
                consumer = %self.durable, ack_wait = ?c.ack_wait, max_ack_pending = c.max_ack_pending,
                "the existing consumer keeps its own ack_wait and max_ack_pending"
            );
        }
        Ok(())
    }

    /// Reads until `batch` messages are gathered or `max_wait` has passed
    /// since the first call for this batch. Cancel-safe: what is read goes to
    /// `self.gathered` at once, and the deadline stays.
    async fn gather(&mut self) -> Result<(), NodeError> {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + self.spec.max_wait.0);
        let url = self.spec.url.clone();
        let conn = self.conn.as_mut().expect("connected");
        while self.gathered.len() < self.batch {
            // Take what is ready without touching a timer.
            let next = match conn.messages.next().now_or_never() {
                Some(n) => n,
                None => match tokio::time::timeout_at(deadline, conn.messages.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                    tracing::warn!(%url, "missed an idle heartbeat from the server; pulling again");
                    continue;
                }
                Some(Err(e)) => {
                    let transient = !matches!(
                        e.kind(),
                        pull::MessagesErrorKind::ConsumerDeleted
                            | pull::MessagesErrorKind::PushBasedConsumer
                            | pull::MessagesErrorKind::RequestLimitExceeded
                    );
                    return Err(service(&url, transient, format!("pulling messages: {e}")));
                }
                None => return Err(service(&url, true, "the pull subscription ended")),
            };
            let (seq, delivered, pending, delivery) = match message.info() {
                Ok(i) => (
                    i.stream_sequence,
                    i.delivered,
                    i.pending,
                    i.consumer_sequence,
                ),
                Err(e) => {
                    return Err(service(
                        &url,
                        false,
                        format!("a message without JetStream metadata: {e}"),
                    ));
                }
            };
            if let Some(last) = self.last_delivery
                && delivery > last + 1
            {
                // The server sent deliveries that never arrived (the
                // connection dropped with them in flight). Acknowledging a
                // later message would acknowledge them unread (AckPolicy::All),
                // so this message is left too, and the consumer starts again
                // after what did arrive.
                self.lost = true;
                return Err(service(
                    &url,
                    true,
                    format!(
                        "deliveries {}..{} of consumer `{}` were lost in transit; resuming after stream sequence {}",
                        last + 1,
                        delivery - 1,
                        self.durable,
                        self.gathered
                            .iter()
                            .map(|g| g.seq)
                            .max()
                            .unwrap_or(0)
                            .max(self.high)
                    ),
                ));
            }
            self.last_delivery = Some(delivery);
            let message = message.message;
            let Some(reply) = message.reply else {
                return Err(service(&url, false, "a message without a reply subject"));
            };
            self.gathered.push(Got {
                seq,
                delivered,
                pending,
                payload: message.payload,
                reply,
            });
            // A backfill at its end need not wait for more.
            if pending == 0 && self.spec.stop_when_drained {
                break;
            }
        }
        Ok(())
    }

    /// Decodes what was gathered into one batch and its dead letters, and
    /// records the position and the ack that commits it.
    fn emit(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let gathered = std::mem::take(&mut self.gathered);
        let stream = &self.spec.stream;
        let max_deliver = i64::from(self.spec.max_deliver.get());
        let mut kept: Vec<&Got> = Vec::with_capacity(gathered.len());
        let mut top: Option<&Got> = None;
        let mut skipped = 0u64;
        for g in &gathered {
            if top.is_none_or(|t| g.seq > t.seq) {
                top = Some(g);
            }
            if g.seq <= self.resumed_after {
                skipped += 1;
            } else if g.delivered >= max_deliver {
                out.dead_letter(DeadLetter {
                    fault: crate::node::Fault::Data,
                    reason: "max_deliver".into(),
                    detail: format!(
                        "delivered {} times (max_deliver = {max_deliver}) without its position being committed",
                        g.delivered
                    ),
                    position: format!("{stream}:{}", g.seq),
                    payload: crate::node::Payload::Raw(g.payload.to_vec()),
                });
            } else if g.payload.iter().all(u8::is_ascii_whitespace) {
                out.dead_letter(DeadLetter {
                    fault: crate::node::Fault::Data,
                    reason: "empty".into(),
                    detail: "the message has no payload".into(),
                    position: format!("{stream}:{}", g.seq),
                    payload: crate::node::Payload::Raw(g.payload.to_vec()),
                });
            } else {
                kept.push(g);
            }
        }
        if skipped > 0 {
            out.count("skipped_committed", skipped);
        }
        let (batch, letters) = match self.spec.payload {
            Payload::Object => parse_records(
                kept.iter().map(|g| &g.payload[..]),
                kept.len(),
                &self.fields,
                &self.schema,
                |i| format!("{stream}:{}", kept[i].seq),
            )?,
            Payload::Lines => {
                // Where each message's lines start among the records: a dead
                // letter's message and line are found from it, so nothing is
                // kept per record.
                let mut starts: Vec<usize> = Vec::with_capacity(kept.len());
                let mut lines: Vec<&[u8]> = Vec::with_capacity(kept.len());
                for g in &kept {
                    starts.push(lines.len());
                    let payload = g.payload.strip_suffix(b"\n").unwrap_or(&g.payload);
                    lines.extend(payload.split(|&b| b == b'\n'));
                }
                parse_records(
                    lines.iter().copied(),
                    lines.len(),
                    &self.fields,
                    &self.schema,
                    |i| {
                        let k = starts.partition_point(|&s| s <= i) - 1;
                        format!("{stream}:{}:{}", kept[k].seq, i - starts[k] + 1)
                    },
                )?
            }
        };
        for letter in letters {
            out.dead_letter(letter);
        }
        let Some(top) = top else {
            return Ok(());
        };
        let position = if top.seq > self.high {
            self.high = top.seq;
            self.high_reply = Some(top.reply.clone());
            self.redelivered_batches = 0;
            top.seq.to_string()
        } else {
            // Only redeliveries: a position of its own after the last one, so
            // committing it acknowledges them too.
            self.redelivered_batches += 1;
            format!("{}.{}", self.high, self.redelivered_batches)
        };
        self.unacked.push_back(Unacked {
            position: position.clone(),
            // The message at `high` (every one before it was emitted by now);
            // before any, this batch's newest, at or below the resume point.
            reply: self.high_reply.clone().unwrap_or_else(|| top.reply.clone()),
        });
        out.push_at(batch, Some(position));
        self.drained = gathered.last().is_some_and(|g| g.pending == 0);
        Ok(())
    }

    /// One read: connects (the first time), gathers a batch, and for a call
    /// that gathered nothing looks at the consumer. `again` after a transient
    /// failure: the pull is started afresh first ([`JetStreamSource::repull`]).
    /// `Some(drained)` when nothing was gathered.
    async fn step(&mut self, again: bool) -> Result<Option<bool>, NodeError> {
        if again {
            self.repull().await?;
        }
        self.connect().await?;
        self.gather().await?;
        self.deadline = None;
        if self.gathered.is_empty() {
            return Ok(Some(self.idle().await?));
        }
        Ok(None)
    }

    /// After a transient failure: a new pull on the same durable consumer
    /// (the client reconnects by itself), or, when deliveries were lost in
    /// transit, the consumer created again after what arrived
    /// ([`JetStreamSource::reseat`]).
    async fn repull(&mut self) -> Result<(), NodeError> {
        if self.lost {
            return self.reseat().await;
        }
        let batch = self.batch;
        let url = self.spec.url.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.messages = conn
            .consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 10)
            .messages()
            .await
            .map_err(|e| service(&url, true, format!("pulling again: {e}")))?;
        self.last_delivery = None;
        Ok(())
    }

    /// Deletes the consumer and creates it again to start right after the
    /// highest stream sequence received (gathered or emitted): the messages
    /// lost in transit come next, and nothing received comes twice. The
    /// acknowledgements of what was emitted before become no-ops (the new
    /// consumer starts above them).
    async fn reseat(&mut self) -> Result<(), NodeError> {
        let after = self
            .gathered
            .iter()
            .map(|g| g.seq)
            .max()
            .unwrap_or(0)
            .max(self.high);
        let url = self.spec.url.clone();
        let Some(conn) = self.conn.as_ref() else {
            self.lost = false;
            return Ok(());
        };
        let js = async_nats::jetstream::new(conn.client.clone());
        let stream = js
            .get_stream(&self.spec.stream)
            .await
            .map_err(|e| service(&url, true, format!("stream `{}`: {e}", self.spec.stream)))?;
        match stream.delete_consumer(&self.durable).await {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::ConsumerErrorKind::JetStream(j)
                        if j.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) => {}
            Err(e) => {
                return Err(service(
                    &url,
                    true,
                    format!("cannot recreate consumer `{}`: {e}", self.durable),
                ));
            }
        }
        let consumer = stream
            .create_consumer(self.consumer_config(DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            }))
            .await
            .map_err(|e| {
                service(
                    &url,
                    true,
                    format!("cannot recreate consumer `{}`: {e}", self.durable),
                )
            })?;
        tracing::warn!(consumer = %self.durable, after, "deliveries were lost in transit: the consumer starts again after what arrived");
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 10)
            .messages()
            .await
            .map_err(|e| {
                service(
                    &url,
                    true,
                    format!("cannot pull from `{}`: {e}", self.durable),
                )
            })?;
        let conn = self.conn.as_mut().expect("checked above");
        conn.consumer = consumer;
        conn.messages = messages;
        self.last_delivery = None;
        self.lost = false;
        Ok(())
    }

    /// The consumer's info from the server.
    async fn info(&mut self) -> Result<consumer::Info, NodeError> {
        let conn = self.conn.as_mut().expect("connected");
        conn.consumer
            .get_info()
            .await
            .map_err(|e| service(&self.spec.url, true, format!("consumer info: {e}")))
    }

    /// A call that gathered nothing: whether the stream is drained (a
    /// backfill then ends), from one look at the consumer, every second at most
    /// unless draining matters. The same look watches for a stall: if the
    /// server has held back messages for [`STALL_CHECK`] because
    /// `max_ack_pending` are unacknowledged, and nothing was acknowledged
    /// meanwhile, the pipeline commits nothing (a sort or group holds its input
    /// until the stream ends) and the run would wait for ever: say so, and what
    /// to change.
    async fn idle(&mut self) -> Result<bool, NodeError> {
        let due = self
            .stall_checked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !due && !self.spec.stop_when_drained {
            return Ok(false);
        }
        let info = self.info().await?;
        if self.spec.stop_when_drained && info.num_pending == 0 {
            return Ok(true);
        }
        self.stall_checked = Some(Instant::now());
        let bound = usize::try_from(info.config.max_ack_pending).unwrap_or(usize::MAX);
        let floor = info.ack_floor.stream_sequence;
        if info.num_pending == 0 || info.num_ack_pending < bound {
            self.stalled = None;
            return Ok(false);
        }
        let since = match self.stalled {
            Some((f, since)) if f == floor => since,
            _ => self.stalled.insert((floor, Instant::now())).1,
        };
        if since.elapsed() >= STALL_CHECK {
            self.stalled = Some((floor, Instant::now()));
            tracing::warn!(
                consumer = %self.durable, unacknowledged = info.num_ack_pending,
                waiting = info.num_pending,
                "the server holds back messages: max_ack_pending are unacknowledged and the pipeline \
                 has committed none for {}s. An operator holding its input until the stream ends \
                 (sort, group) needs max_ack_pending above the stream's size",
                STALL_CHECK.as_secs()
            );
        }
        Ok(false)
    }
}

fn is_stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

impl AsyncSource for JetStreamSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Emits one batch of up to `batch` messages (or what `max_wait` gathered;
    /// nothing when the stream is idle, so the executor still gets to commit).
    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<bool, NodeError>> {
        Box::pin(async move {
            let policy = self.spec.retry.clone();
            let url = self.spec.url.clone();
            let (this, step) = policy
                .run_with(&url, &node_transience, self, |this, attempt| async move {
                    let again = attempt.get() > 1;
                    this.retries += u64::from(again);
                    let r = this.step(again).await;
                    (this, r)
                })
                .await;
            let retries = std::mem::take(&mut this.retries);
            if retries > 0 {
                out.count("retries", retries);
            }
            if let Some(drained) = step.map_err(GaveUp::into_node_error)? {
                return Ok(!drained);
            }
            let full = this.gathered.len() >= this.batch;
            this.emit(out)?;
            // A short batch whose last message left nothing pending: the
            // stream is drained for now.
            Ok(!(this.spec.stop_when_drained && !full && this.drained))
        })
    }

    /// Continues after stream sequence `position` (see the module docs).
    fn seek<'a>(&'a mut self, position: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            let seq_part = position.split_once('.').map_or(position, |(s, _)| s);
            let seq: u64 = seq_part.parse().map_err(|_| {
                NodeError::config(format!(
                    "cannot resume stream `{}` after `{position}`: not a stream sequence",
                    self.spec.stream
                ))
            })?;
            if self.conn.is_some() {
                return Err(NodeError::Bug("seek after the first read".into()));
            }
            self.resumed_after = seq;
            self.high = self.high.max(seq);
            Ok(())
        })
    }

    /// Acknowledges the newest message at or before `position` (AckPolicy::All
    /// acknowledges everything before it too).
    fn commit<'a>(&'a mut self, position: &'a str) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move {
            if !self.unacked.iter().any(|u| u.position == position) {
                // A position from before this run (the resume point): nothing held.
                return Ok(());
            }
            let mut last = None;
            while let Some(u) = self.unacked.pop_front() {
                let done = u.position == position;
                last = Some(u);
                if done {
                    break;
                }
            }
            let Some(u) = last else {
                return Ok(());
            };
            let client = self
                .conn
                .as_ref()
                .expect("a position was emitted, so connected")
                .client
                .clone();
            let url = self.spec.url.clone();
            let mut retries = 0;
            let acked = self
                .spec
                .retry
                .run(&url, &node_transience, |attempt| {
                    retries = u64::from(attempt.get() - 1);
                    let (client, reply, url) = (client.clone(), u.reply.clone(), url.clone());
                    async move {
                        let fail = |e: &dyn std::fmt::Display| {
                            service(&url, true, format!("acknowledging up to {position}: {e}"))
                        };
                        client
                            .publish(reply, Bytes::from_static(b"+ACK"))
                            .await
                            .map_err(|e| fail(&e))?;
                        // Onto the socket now: the last commit of a run is
                        // followed by the connection's close, which would drop
                        // a buffered ack.
                        client.flush().await.map_err(|e| fail(&e))
                    }
                })
                .await;
            self.retries += retries;
            acked.map_err(GaveUp::into_node_error)
        })
    }
}
