//! Parquet files in and out, through the `parquet` crate of the same release as
//! `arrow` (uncompressed, snappy and zstd pages).
//!
//! - [`ParquetSource`] (`source.rs`): a file, a glob or a directory, read a row
//!   group at a time; the position is `{file}:{row_group}`, so a resumed run
//!   starts at the next row group.
//! - [`ParquetSink`] (`sink.rs`): one file or a Hive-partitioned directory,
//!   written under an in-progress name and renamed into place, with a
//!   write-ahead log that makes it resumable.

mod sink;
mod source;
#[cfg(test)]
mod tests;

pub use sink::{
    Codec, HIVE_DEFAULT_PARTITION, ParquetSink, ParquetSinkSpec, default_max_open_files,
    default_row_group_rows, hive_escape,
};
pub use source::{ParquetSource, ParquetSourceSpec, row_group_rows};
