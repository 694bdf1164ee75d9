//! Aggregate state shared by `group` and `session`: one accumulator per aggregate,
//! stored column-wise over *slots* (a slot is one group or one open session).
//!
//! Inputs are normalised once per batch to three canonical types (integers and
//! timestamps and booleans → Int64, floats → Float64, strings → Utf8), so the
//! per-row work is a typed loop over `(row, slot)` pairs with no downcasts; outputs
//! of `min`, `max`, `first`, `last` are cast back to the input's type. Slots are
//! reset and reused, so a session operator's state stays proportional to the open
//! sessions. [`Aggregates::bytes`] estimates what the state holds, for the
//! memory budget.
//!
//! This file resolves columns and filters and keeps the byte count; `state` holds
//! the accumulators, one type per (op, canonical type), and `str_set` the string
//! set `count_distinct` uses.

mod state;
mod str_set;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::compute::kernels::cmp::eq;
use arrow::datatypes::{DataType, Field};

use serde::{Deserialize, Serialize};

use crate::node::NodeError;
use crate::node::config::SpecError;
use state::{Accumulator, Feed, accumulator};

/// Distinct-value sets use a fast seeded hasher: hashing is per row.
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

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

/// Refuses aggregates the data does not decide: a missing column, a default
/// where the op takes none, a filter value that is not a scalar, a name used
/// twice. Shared by `group` and `session`.
pub(crate) fn validate_aggregates(key: &str, aggs: &[AggregateSpec]) -> Result<(), SpecError> {
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

/// The canonical type a column is aggregated in, or `None` if unsupported.
fn canonical(t: &DataType) -> Option<DataType> {
    use DataType::*;
    match t {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        | Timestamp(..) | Date32 | Date64 => Some(Int64),
        Float16 | Float32 | Float64 => Some(Float64),
        Utf8 | LargeUtf8 | Utf8View => Some(Utf8),
        _ => None,
    }
}

struct Agg {
    name: String,
    /// The index of its filter in [`Aggregates::filters`].
    filter: Option<usize>,
    acc: Box<dyn Accumulator>,
    /// Per slot: heap bytes held beyond the fixed per-slot size (strings, sets, lists).
    extra: Vec<usize>,
}

/// The accumulators of a list of aggregates over slots.
pub(crate) struct Aggregates {
    aggs: Vec<Agg>,
    /// The distinct filters (column, value): aggregates often share one (`count`
    /// and `sum` of the purchases), and each costs a pass over every batch.
    filters: Vec<(usize, serde_json::Value)>,
    slots: usize,
    extra_total: usize,
}

fn col(
    batch_schema: &arrow::datatypes::Schema,
    name: &str,
    what: &str,
) -> Result<usize, NodeError> {
    batch_schema.index_of(name).map_err(|_| {
        let have: Vec<&str> = batch_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        NodeError::Config(format!(
            "{what} `{name}` is not a column of the input (it has: {})",
            have.join(", ")
        ))
    })
}

impl Aggregates {
    /// Resolves `specs` against the input schema.
    ///
    /// # Errors
    /// A column is missing or of a type the aggregate cannot take.
    pub(crate) fn new(
        specs: &[AggregateSpec],
        schema: &arrow::datatypes::Schema,
    ) -> Result<Self, NodeError> {
        let mut aggs = Vec::with_capacity(specs.len());
        let mut filters: Vec<(usize, serde_json::Value)> = Vec::new();
        for spec in specs {
            let column = spec
                .column
                .as_deref()
                .map(|c| col(schema, c, "aggregate column"))
                .transpose()?;
            let input_type =
                column.map_or(DataType::Int64, |i| schema.field(i).data_type().clone());
            let canon = canonical(&input_type).ok_or_else(|| {
                NodeError::Config(format!(
                    "aggregate `{}`: cannot aggregate a column of type {input_type}",
                    spec.name
                ))
            })?;
            let filter = spec
                .filter
                .as_ref()
                .map(|f| {
                    let filter = (col(schema, &f.column, "filter column")?, f.equals.clone());
                    Ok::<_, NodeError>(match filters.iter().position(|g| *g == filter) {
                        Some(k) => k,
                        None => {
                            filters.push(filter);
                            filters.len() - 1
                        }
                    })
                })
                .transpose()?;
            let acc = accumulator(spec, column, &input_type, &canon)?;
            aggs.push(Agg {
                name: spec.name.clone(),
                filter,
                acc,
                extra: Vec::new(),
            });
        }
        Ok(Self {
            aggs,
            filters,
            slots: 0,
            extra_total: 0,
        })
    }

    /// The output fields, in aggregate order.
    pub(crate) fn fields(&self) -> Vec<Field> {
        self.aggs
            .iter()
            .map(|a| Field::new(&a.name, a.acc.data_type(), true))
            .collect()
    }

    /// Slots allocated.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// An estimate of the bytes the state holds.
    pub(crate) fn bytes(&self) -> usize {
        self.slots * self.aggs.len() * 24 + self.extra_total
    }

    /// Makes room for `n` slots.
    pub(crate) fn ensure_slots(&mut self, n: usize) {
        if n <= self.slots {
            return;
        }
        for a in &mut self.aggs {
            a.extra.resize(n, 0);
            a.acc.resize(n);
        }
        self.slots = n;
    }

    /// Feeds rows `rows[k]` of `batch` into slots `slots[k]`, in that order.
    ///
    /// # Errors
    /// An Arrow cast or comparison fails (a type the configuration did not foresee).
    pub(crate) fn update(
        &mut self,
        batch: &RecordBatch,
        rows: &[usize],
        slots: &[usize],
    ) -> Result<(), NodeError> {
        debug_assert_eq!(rows.len(), slots.len());
        if let Some(max) = slots.iter().max() {
            self.ensure_slots(max + 1);
        }
        let masks = self
            .filters
            .iter()
            .map(|(i, v)| filter_mask(batch.column(*i), v))
            .collect::<Result<Vec<_>, _>>()?;
        for a in &mut self.aggs {
            let feed = Feed {
                rows,
                slots,
                mask: a.filter.map(|k| &masks[k]),
            };
            let delta = a.acc.update(batch, &feed, &mut a.extra)?;
            self.extra_total = self.extra_total.saturating_add_signed(delta);
        }
        Ok(())
    }

    /// The output columns for `slots`, in that order.
    ///
    /// # Errors
    /// Casting back to the input's type fails (a bug).
    pub(crate) fn emit(&self, slots: &[usize]) -> Result<Vec<ArrayRef>, NodeError> {
        let mut out = Vec::with_capacity(self.aggs.len());
        for a in &self.aggs {
            out.push(a.acc.emit(slots)?);
        }
        Ok(out)
    }

    /// Clears `slot` for reuse.
    pub(crate) fn reset(&mut self, slot: usize) {
        for a in &mut self.aggs {
            self.extra_total -= a.extra[slot];
            a.extra[slot] = 0;
            a.acc.reset(slot);
        }
    }
}

/// Rows where `array == value` (null where `array` is null).
fn filter_mask(array: &ArrayRef, value: &serde_json::Value) -> Result<BooleanArray, NodeError> {
    Ok(match value {
        serde_json::Value::String(s) => {
            let a = cast(array, &DataType::Utf8)?;
            eq(&a, &StringArray::new_scalar(s.as_str()))?
        }
        serde_json::Value::Bool(b) => {
            let a = cast(array, &DataType::Boolean)?;
            eq(&a, &BooleanArray::new_scalar(*b))?
        }
        serde_json::Value::Number(n) => {
            let a = cast(array, &DataType::Float64)?;
            eq(
                &a,
                &Float64Array::new_scalar(n.as_f64().unwrap_or(f64::NAN)),
            )?
        }
        other => {
            return Err(NodeError::Config(format!(
                "a filter cannot compare with {other}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::AggregateSpec;
    use super::Aggregates;
    use crate::ops::testutil::{arc, batch};

    /// A later batch whose column no longer maps to the canonical type the
    /// accumulator was built for is refused with an error, not read as another type.
    #[test]
    fn a_column_that_changes_canonical_type_is_an_error() {
        let specs: Vec<AggregateSpec> =
            serde_json::from_value(serde_json::json!([{"name": "m", "op": "max", "column": "v"}]))
                .unwrap();
        let ints = batch(vec![("v", arc(Int64Array::from(vec![3, 5])))]);
        let mut aggs = Aggregates::new(&specs, &ints.schema()).unwrap();
        aggs.update(&ints, &[0, 1], &[0, 0]).unwrap();
        let strings = batch(vec![("v", arc(StringArray::from(vec!["7"])))]);
        let err = aggs.update(&strings, &[0], &[0]).unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot aggregate a column of type Utf8 as Int64: its type changed since the first batch"
        );
        let out = aggs.emit(&[0]).unwrap();
        assert_eq!(&out[0], &arc(Int64Array::from(vec![5])));
    }
}
