//! Configuration of the stateful operators (`[stage.sort]`, `[stage.group]`,
//! `[stage.session]`), beside the operators that run them. The pipeline file's
//! shape (`crate::spec`) re-exports them.
//! Every struct refuses unknown keys; defaults come from named functions.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::{NodeError, Operator};
use crate::units::Millis;

/// `[stage.sort]`: a stable, deterministic sort; an external merge sort over spill
/// files when the data does not fit the run's memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortSpec {
    /// The sort keys, most significant first. At least one.
    pub by: Vec<SortKey>,
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortKey {
    /// The column.
    pub column: String,
    /// Largest first. Default: false (ascending).
    #[serde(default)]
    pub descending: bool,
    /// Nulls before every value. Default: false (nulls last).
    #[serde(default)]
    pub nulls_first: bool,
}

/// `[stage.group]`: hash aggregation by key, one output row per distinct key,
/// emitted when the input ends, sorted by the key columns (ascending, nulls first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The key columns. At least one.
    pub by: Vec<String>,
    /// The aggregates, one output column each.
    pub aggregates: Vec<AggregateSpec>,
    /// Spill partitions when the input does not fit the budget.
    /// Default: 16 ([`default_partitions`]).
    #[serde(default = "default_partitions")]
    pub partitions: NonZeroUsize,
}

/// Default spill partitions of a group: 16.
pub fn default_partitions() -> NonZeroUsize {
    NonZeroUsize::new(16).expect("non-zero")
}

/// One aggregate: `{ name = "n_clicks", op = "count", filter = { column = "event", equals = "click" } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// The output column.
    pub name: String,
    /// What to compute.
    pub op: AggOp,
    /// The input column; required by every op but `count` (which then counts rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Only rows where this holds take part. Default: every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AggFilter>,
    /// The value of `sum`, `mean`, `min` or `max` when no (non-null) value took
    /// part. Default: null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<f64>,
}

/// The aggregate functions. Nulls are skipped by all but `count` without a column,
/// `first`, `last` and `list`, which see rows as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggOp {
    /// Rows (no column) or non-null values (with a column); Int64.
    Count,
    /// Sum; Int64 for integer input, Float64 for floats.
    Sum,
    /// Arithmetic mean; Float64.
    Mean,
    /// Smallest value; the input's type.
    Min,
    /// Largest value; the input's type.
    Max,
    /// Distinct non-null values; Int64.
    CountDistinct,
    /// The first row's value (input order; event-time order in a session).
    First,
    /// The last row's value.
    Last,
    /// Every row's value, in order, as a list.
    List,
}

/// A row filter for an aggregate: `column == equals`. A null never matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggFilter {
    /// The column compared.
    pub column: String,
    /// A string, number or boolean.
    pub equals: serde_json::Value,
}

/// `[stage.session]`: session windows per key on event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// The key columns. At least one.
    pub key: Vec<String>,
    /// The event-time column: integer epoch milliseconds or a millisecond timestamp.
    pub time: String,
    /// A new session starts when the time since the key's previous event is
    /// strictly greater than this.
    pub gap: Millis,
    /// A session longer than this (last − first event) is split. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<Millis>,
    /// How far behind the largest event time seen an event may arrive and still
    /// count: the watermark trails the largest event time by this. Default: 0.
    #[serde(default = "zero_millis")]
    pub out_of_orderness: Millis,
    /// Extra time, past the watermark, that an event may still arrive. Sessions
    /// are emitted once, after it. Default: 0.
    #[serde(default = "zero_millis")]
    pub allowed_lateness: Millis,
    /// The aggregates, one output column each.
    #[serde(default)]
    pub aggregates: Vec<AggregateSpec>,
    /// The output column holding the first event time. Default: `session_start`.
    #[serde(default = "default_start_column")]
    pub start_column: String,
    /// The output column holding the last event time. Default: `session_end`.
    #[serde(default = "default_end_column")]
    pub end_column: String,
}

fn zero_millis() -> Millis {
    Millis(std::time::Duration::ZERO)
}

/// Default session start column: `session_start`.
pub fn default_start_column() -> String {
    "session_start".to_owned()
}

/// Default session end column: `session_end`.
pub fn default_end_column() -> String {
    "session_end".to_owned()
}

/// A stable sort, reserving from the run's memory budget and spilling past it.
impl OperatorConfig for SortSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.by.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.by"),
                "needs at least one key",
            ));
        }
        Ok(())
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(super::sort::SortOperator::new(
            cx.name,
            self.clone(),
            cx.memory.clone(),
            cx.batch_rows.get(),
        )))
    }
}

/// Hash aggregation, reserving from the run's memory budget and spilling past it.
impl OperatorConfig for GroupSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.by.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.by"),
                "needs at least one key column",
            ));
        }
        validate_aggregates(key, &self.aggregates)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(super::group::GroupOperator::new(
            cx.name,
            self.clone(),
            cx.memory.clone(),
            cx.batch_rows.get(),
        )))
    }
}

/// Session windows, reserving from the run's memory budget (over it, the run
/// fails naming the operator).
impl OperatorConfig for SessionSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.key.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.key"),
                "needs at least one key column",
            ));
        }
        if self.gap.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.gap"),
                "must be greater than 0",
            ));
        }
        if self.max_length.is_some_and(|m| m.0.is_zero()) {
            return Err(SpecError::invalid(
                format!("{key}.max_length"),
                "must be greater than 0",
            ));
        }
        validate_aggregates(key, &self.aggregates)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(super::session::SessionOperator::new(
            cx.name,
            self.clone(),
            cx.memory,
        )))
    }

    fn holds_input(&self) -> bool {
        true
    }
}

fn validate_aggregates(key: &str, aggs: &[AggregateSpec]) -> Result<(), SpecError> {
    for (i, a) in aggs.iter().enumerate() {
        if a.op != AggOp::Count && a.column.is_none() {
            return Err(SpecError::invalid(
                format!("{key}.aggregates[{i}].column"),
                format!("`{:?}` needs a column", a.op).to_lowercase(),
            ));
        }
        if a.default.is_some()
            && !matches!(a.op, AggOp::Sum | AggOp::Mean | AggOp::Min | AggOp::Max)
        {
            return Err(SpecError::invalid(
                format!("{key}.aggregates[{i}].default"),
                "only `sum`, `mean`, `min` and `max` take a default",
            ));
        }
        if let Some(f) = &a.filter
            && !(f.equals.is_string() || f.equals.is_number() || f.equals.is_boolean())
        {
            return Err(SpecError::invalid(
                format!("{key}.aggregates[{i}].filter.equals"),
                "must be a string, a number or a boolean",
            ));
        }
        if aggs[..i].iter().any(|b| b.name == a.name) {
            return Err(SpecError::invalid(
                format!("{key}.aggregates[{i}].name"),
                format!("`{}` is used twice", a.name),
            ));
        }
    }
    Ok(())
}
