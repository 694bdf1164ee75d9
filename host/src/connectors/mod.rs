//! Sources and sinks, one file each.
//!
//! Built-in connectors implement [`crate::exec::Source`] and [`crate::exec::Sink`];
//! the spec's kind table (`[source.jsonl]`, `[sink.jsonl]`) picks one.

mod jsonl_sink;
mod jsonl_source;

pub use jsonl_sink::JsonlSink;
pub use jsonl_source::{JsonlSource, parse_lines};
