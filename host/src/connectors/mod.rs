//! Sources and sinks, one file each.
//!
//! Built-in connectors implement [`crate::node::Source`] and [`crate::node::Sink`]
//! (network ones the async traits beside them). Each one's spec, in the same
//! file, implements [`crate::node::config::SourceConfig`] or
//! [`crate::node::config::SinkConfig`] (check the table, build the node); the
//! spec's kind table (`[source.jsonl]`, `[sink.jsonl]`) picks one.

pub mod csv;
mod files;
pub mod http;
pub mod jetstream;
pub(crate) mod jsonl_sink;
mod jsonl_source;
pub mod parquet;
pub mod redis;
mod sequence;
pub mod vectors;

pub use self::redis::{RedisSink, RedisSinkSpec};
pub use csv::{CsvSink, CsvSinkSpec, CsvSource, CsvSourceSpec};
pub use http::{HttpSink, HttpSinkSpec};
pub use jsonl_sink::{JsonlSink, JsonlSinkSpec, LineageLine, lineage_of_line, lineage_path};
pub use jsonl_source::{
    JsonlSource, JsonlSourceSpec, parse_lines, parse_pieces, parse_records, schema_of,
};
pub use parquet::{ParquetSink, ParquetSinkSpec, ParquetSource, ParquetSourceSpec};
pub use sequence::{SequenceSource, SequenceSourceSpec, default_sequence_column};
pub use vectors::{VectorsSink, VectorsSinkSpec};
