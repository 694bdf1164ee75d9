//! Publishing a JSON-lines file to a subject (`weir nats publish`): how
//! examples and tests fill a stream with the events a pipeline then reads.

use std::io::BufRead;
use std::num::NonZeroUsize;

use bytes::Bytes;

use super::sink::publish_all;
use super::{connect, service, valid_name};
use crate::node::NodeError;
use crate::node::retry::RetryPolicy;

/// What [`publish_lines`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// Messages the stream stored.
    pub stored: u64,
    /// Messages the stream already held (same `Nats-Msg-Id` within its
    /// duplicate window).
    pub duplicates: u64,
    /// Lines published, in the messages stored or already held.
    pub lines: u64,
    /// Blank lines, not published.
    pub blank: u64,
}

/// Messages published per window of unacknowledged publishes.
const WINDOW: usize = 4096;

/// Publishes the non-blank lines of `input` on `subject`, `per_message` lines
/// to a message (joined by newlines: what a source with `payload = "lines"`
/// reads; 1 makes each line a message of its own, for `payload = "object"`),
/// pipelined, and returns once the server acknowledged every message. Lines
/// are published as they are: the reading source judges them (a corrupt line
/// becomes its dead letter there). With `create_stream`, a stream of that name
/// capturing `subject` is created first if there is none. With `id_prefix`, the
/// message whose first line is line `n` of the input (from 1) gets the
/// `Nats-Msg-Id` `{id_prefix}:{n}`, so publishing the same file again the same
/// way within the stream's duplicate window stores nothing twice. Publishes
/// that fail transiently are retried as a sink's are ([`RetryPolicy::default`]).
///
/// # Errors
/// The server is unreachable or refuses a publish (no stream captures the
/// subject), the stream cannot be created, or `input` cannot be read.
pub async fn publish_lines(
    url: &str,
    subject: &str,
    create_stream: Option<&str>,
    id_prefix: Option<&str>,
    per_message: NonZeroUsize,
    mut input: impl BufRead,
) -> Result<Published, NodeError> {
    let client = connect(url).await?;
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .max_ack_inflight(WINDOW)
        .build(client);
    if let Some(name) = create_stream {
        if !valid_name(name) {
            return Err(NodeError::config(format!(
                "`{name}` is not a stream name (no spaces, `.`, `*`, `>` or slashes)"
            )));
        }
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
        .map_err(|e| service(url, false, format!("cannot create stream `{name}`: {e}")))?;
    }
    let subject = async_nats::Subject::from(subject);
    let mut out = Published::default();
    let mut line_no = 0u64;
    let mut window = Vec::with_capacity(WINDOW);
    let mut line = Vec::new();
    // The message being filled: its lines, and the input line it starts at.
    let mut message: Vec<u8> = Vec::new();
    let (mut in_message, mut first_line) = (0usize, 0u64);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| NodeError::io("the input", e))?;
        if n > 0 {
            line_no += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                out.blank += 1;
            } else {
                if in_message == 0 {
                    first_line = line_no;
                } else {
                    message.push(b'\n');
                }
                message.extend_from_slice(text);
                in_message += 1;
            }
        }
        if in_message > 0 && (in_message == per_message.get() || n == 0) {
            let id = id_prefix.map(|p| format!("{p}:{first_line}"));
            window.push((Bytes::copy_from_slice(&message), id));
            out.lines += in_message as u64;
            message.clear();
            in_message = 0;
        }
        if window.len() == WINDOW || (n == 0 && !window.is_empty()) {
            let (stored, duplicates) = publish_all(
                &js,
                url,
                &subject,
                std::mem::take(&mut window),
                WINDOW,
                &RetryPolicy::default(),
            )
            .await
            .result?;
            out.stored += stored;
            out.duplicates += duplicates;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}
