//! How a stage's failure reads to the node contract: whose fault it is.

use super::error::StageFailure;
use crate::node::{NodeError, Resource};

impl From<StageFailure> for NodeError {
    fn from(f: StageFailure) -> Self {
        match f {
            StageFailure::Crossing { .. } => NodeError::Resource {
                resource: Resource::Crossing,
                error: Box::new(f),
            },
            _ => NodeError::Stage {
                row: f.row(),
                transient: f.is_transient(),
                trap: f.is_trap(),
                error: Box::new(f),
            },
        }
    }
}
