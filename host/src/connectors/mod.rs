//! Sources and sinks, one file each.
//!
//! Built-in connectors implement [`crate::node::Source`] and [`crate::node::Sink`]
//! (network ones the async traits beside them). Each one's spec, in the same
//! file, implements [`crate::node::config::SourceConfig`] or
//! [`crate::node::config::SinkConfig`] (check the table, build the node); the
//! spec's kind table (`[source.jsonl]`, `[sink.jsonl]`) picks one.
//!
//! Each family that needs a client crate is a Cargo feature of its own (`nats`,
//! `redis`, `parquet`, `csv`, `http`, `postgres`; all on by default), so a program embedding
//! the runtime compiles only the clients it uses. The files of JSON lines
//! (`jsonl`, `vectors`), `sequence` and `plugin` (a WebAssembly source, run in the
//! host's sandbox) are always there.

#[cfg(feature = "csv")]
pub mod csv;
mod files;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "nats")]
pub mod jetstream;
pub(crate) mod jsonl_sink;
mod jsonl_source;
pub mod lookup;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod plugin;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
mod sequence;
#[cfg(test)]
pub(crate) mod testcx;
pub mod vectors;

#[cfg(feature = "redis")]
pub use self::redis::{RedisSink, RedisSinkSpec};
#[cfg(feature = "csv")]
pub use csv::{CsvSink, CsvSinkSpec, CsvSource, CsvSourceSpec};
#[cfg(feature = "http")]
pub use http::{HttpSink, HttpSinkSpec};
pub use jsonl_sink::{JsonlSink, JsonlSinkSpec, LineageLine, lineage_of_line, lineage_path};
pub use jsonl_source::{
    JsonlSource, JsonlSourceSpec, parse_lines, parse_pieces, parse_records, schema_of,
};
#[cfg(feature = "parquet")]
pub use parquet::{ParquetSink, ParquetSinkSpec, ParquetSource, ParquetSourceSpec};
pub use plugin::{PluginSource, PluginSourceSpec};
pub use sequence::{SequenceSource, SequenceSourceSpec, default_sequence_column};
pub use vectors::{VectorsSink, VectorsSinkSpec};
