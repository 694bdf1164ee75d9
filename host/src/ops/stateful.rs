//! The stateful operators (`sort`, `group`, `session`) are built apart from the
//! stateless ones because they need the run's memory budget and spill directory,
//! which exist only once a run is being prepared.

use crate::exec::Operator;
use crate::exec::memory::RunMemory;
use crate::spec::StageSpec;

/// Whether the stage is `sort`, `group` or `session`.
pub fn is_stateful(stage: &StageSpec) -> bool {
    stage.sort.is_some() || stage.group.is_some() || stage.session.is_some()
}

/// The running operator of a stateful stage, reserving from `memory`.
///
/// # Panics
/// If the stage is not stateful (check [`is_stateful`] first).
pub fn build(stage: &StageSpec, memory: &RunMemory, batch_rows: usize) -> Box<dyn Operator> {
    if let Some(s) = &stage.sort {
        Box::new(super::sort::SortOperator::new(
            &stage.name,
            s.clone(),
            memory.clone(),
            batch_rows,
        ))
    } else if let Some(g) = &stage.group {
        Box::new(super::group::GroupOperator::new(
            &stage.name,
            g.clone(),
            memory.clone(),
            batch_rows,
        ))
    } else if let Some(s) = &stage.session {
        Box::new(super::session::SessionOperator::new(
            &stage.name,
            s.clone(),
            memory,
        ))
    } else {
        unreachable!("is_stateful was checked")
    }
}

#[cfg(test)]
#[path = "stateful_tests.rs"]
mod tests;
