//! Sources and sinks, one file each.
//!
//! Built-in connectors implement [`crate::exec::Source`] and [`crate::exec::Sink`];
//! the spec's kind table (`[source.jsonl]`, `[sink.jsonl]`) picks one.

pub mod http;
mod jsonl_sink;
mod jsonl_source;
mod sequence;
pub mod vectors;

pub use http::{HttpSink, HttpSinkSpec};
pub use jsonl_sink::{JsonlSink, LineageLine, lineage_of_line, lineage_path};
pub use jsonl_source::{JsonlSource, parse_lines, parse_pieces};
pub use sequence::{SequenceSource, SequenceSourceSpec, default_sequence_column};
pub use vectors::{VectorsSink, VectorsSinkSpec};
