//! NATS JetStream in and out: a durable pull consumer as a source, pipelined
//! publishes with message ids as a sink.
//!
//! ```text
//!   stream ──pull (batch, max_wait)──► JetStreamSource ──batch, position = stream seq──► …
//!      ▲                                    │ commit(position): one +ACK (AckPolicy::All)
//!      └────────────────────────────────────┘ acks every message up to it
//!
//!   … ──batch──► JetStreamSink ──publish × rows (Nats-Msg-Id), await the acks──► stream
//! ```
//!
//! Both are built for the NATS 2.9 servers the machines run: async-nats is
//! compiled without its `server_2_10`+ features, so no field a 2.9 server would
//! silently ignore (`filter_subjects`, subject transforms) can be set.
//!
//! The source ([`JetStreamSource`]) decodes payloads with the JSON-lines
//! source's parser ([`crate::connectors::parse_records`]), so a message is
//! judged by exactly the rules, schema and dead-letter reasons of a line. The
//! sink ([`JetStreamSink`]) gives each message a `Nats-Msg-Id` that a replay
//! reproduces, so the server drops what a crashed run had already published.
//!
//! Neither connects when it is built (`weir validate` builds plans): the first
//! read or write does.

mod publish;
mod sink;
mod source;
#[cfg(test)]
mod tests;

pub use publish::{Published, publish_lines};
pub use sink::{JetStreamSink, JetStreamSinkSpec, MsgId, Per};
pub use source::{Deliver, JetStreamSource, JetStreamSourceSpec, Payload};

use std::time::Duration;

use crate::node::NodeError;

/// The address of a NATS server on the local machine, the default `url`.
pub fn default_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}

/// How long connecting may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A service failure of the NATS server at `url`.
fn service(url: &str, transient: bool, message: impl std::fmt::Display) -> NodeError {
    NodeError::Service {
        service: url.to_owned(),
        transient,
        message: format!("nats {url}: {message}"),
    }
}

/// Connects to `url`, failing after [`CONNECT_TIMEOUT`] rather than retrying
/// forever (a wrong address is a failed run, not a hang). Reconnects after a
/// lost connection are the client's (it retries with backoff).
async fn connect(url: &str) -> Result<async_nats::Client, NodeError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .name("weir")
        .connect(url)
        .await
        .map_err(|e| service(url, true, format!("cannot connect: {e}")))
}

/// Whether `name` may name a stream or a consumer: no whitespace, `.`, `*`,
/// `>`, path separators, nor empty.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// A consumer name from the pipeline and node names: what may not appear in a
/// name becomes `_`.
pub fn default_durable(pipeline: &str, node: &str) -> String {
    format!("weir_{pipeline}_{node}")
        .chars()
        .map(|c| {
            if c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\') {
                '_'
            } else {
                c
            }
        })
        .collect()
}
