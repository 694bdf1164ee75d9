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

use super::stateful_spec::AggregateSpec;
use crate::node::NodeError;
use state::{Accumulator, Feed, accumulator};

/// Distinct-value sets use a fast seeded hasher: hashing is per row.
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

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

    use super::Aggregates;
    use crate::ops::stateful_spec::AggregateSpec;
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
