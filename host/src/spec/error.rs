//! Errors in pipeline files (defined with the node contract, see [`crate::node::config`]).

pub use crate::node::config::{SpecError, closest};
