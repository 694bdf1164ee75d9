//! PostgreSQL: a source that reads a query in batches, once or incrementally
//! without ever skipping a late commit ([`source`]), over a typed mapping of
//! the binary wire format to Arrow ([`types`]), on connections described by
//! [`conn`].

pub mod conn;
pub mod source;
pub(crate) mod types;

#[cfg(test)]
pub(crate) mod tests;

pub use conn::{Conn, ConnSpec};
pub use source::{IncrementalSpec, PostgresSource, PostgresSourceSpec};
