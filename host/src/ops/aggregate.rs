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

/// Distinct-value sets use a fast seeded hasher: hashing is per row.
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, Int64Array, Int64Builder,
    ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::compute::kernels::cmp::eq;
use arrow::datatypes::{DataType, Field};

use super::stateful_spec::{AggOp, AggregateSpec};
use crate::node::NodeError;

/// A column normalised to a canonical type.
enum Canon {
    I(Int64Array),
    F(Float64Array),
    S(StringArray),
}

impl Canon {
    fn of(array: &ArrayRef) -> Result<Self, NodeError> {
        Ok(match canonical(array.data_type()) {
            Some(DataType::Int64) => {
                Canon::I(cast(array, &DataType::Int64)?.as_primitive().clone())
            }
            Some(DataType::Float64) => {
                Canon::F(cast(array, &DataType::Float64)?.as_primitive().clone())
            }
            Some(_) => Canon::S(cast(array, &DataType::Utf8)?.as_string::<i32>().clone()),
            None => {
                return Err(NodeError::Config(format!(
                    "cannot aggregate a column of type {}",
                    array.data_type()
                )));
            }
        })
    }

    fn is_valid(&self, i: usize) -> bool {
        match self {
            Canon::I(a) => a.is_valid(i),
            Canon::F(a) => a.is_valid(i),
            Canon::S(a) => a.is_valid(i),
        }
    }
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

/// Values of one canonical type, one per slot.
enum Vals {
    I(Vec<Option<i64>>),
    F(Vec<Option<f64>>),
    S(Vec<Option<String>>),
}

enum Lists {
    I(Vec<Vec<Option<i64>>>),
    F(Vec<Vec<Option<f64>>>),
    S(Vec<Vec<Option<String>>>),
}

enum Sets {
    I(Vec<HashSet<i64>>),
    F(Vec<HashSet<u64>>),
    S(Vec<StrSet>),
}

enum State {
    Count(Vec<i64>),
    SumI(Vec<i64>, Vec<bool>),
    SumF(Vec<f64>, Vec<bool>),
    Mean(Vec<f64>, Vec<u64>),
    Pick(AggOp, Vals, Vec<bool>),
    Distinct(Sets),
    List(Lists),
}

struct Agg {
    spec: AggregateSpec,
    column: Option<usize>,
    input_type: DataType,
    filter: Option<(usize, serde_json::Value)>,
    state: State,
    /// Per slot: heap bytes held beyond the fixed per-slot size (strings, sets, lists).
    extra: Vec<usize>,
}

/// The accumulators of a list of aggregates over slots.
pub(crate) struct Aggregates {
    aggs: Vec<Agg>,
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
                    Ok::<_, NodeError>((col(schema, &f.column, "filter column")?, f.equals.clone()))
                })
                .transpose()?;
            let vals = || match canon {
                DataType::Int64 => Vals::I(Vec::new()),
                DataType::Float64 => Vals::F(Vec::new()),
                _ => Vals::S(Vec::new()),
            };
            let state = match spec.op {
                AggOp::Count => State::Count(Vec::new()),
                AggOp::Sum if canon == DataType::Int64 => State::SumI(Vec::new(), Vec::new()),
                AggOp::Sum if canon == DataType::Float64 => State::SumF(Vec::new(), Vec::new()),
                AggOp::Mean if canon != DataType::Utf8 => State::Mean(Vec::new(), Vec::new()),
                AggOp::Sum | AggOp::Mean => {
                    return Err(NodeError::Config(format!(
                        "aggregate `{}`: {:?} needs a numeric column, `{}` is {input_type}",
                        spec.name,
                        spec.op,
                        spec.column.as_deref().unwrap_or_default()
                    )));
                }
                AggOp::Min | AggOp::Max | AggOp::First | AggOp::Last => {
                    State::Pick(spec.op, vals(), Vec::new())
                }
                AggOp::CountDistinct => State::Distinct(match canon {
                    DataType::Int64 => Sets::I(Vec::new()),
                    DataType::Float64 => Sets::F(Vec::new()),
                    _ => Sets::S(Vec::new()),
                }),
                AggOp::List => State::List(match canon {
                    DataType::Int64 => Lists::I(Vec::new()),
                    DataType::Float64 => Lists::F(Vec::new()),
                    _ => Lists::S(Vec::new()),
                }),
            };
            aggs.push(Agg {
                spec: spec.clone(),
                column,
                input_type,
                filter,
                state,
                extra: Vec::new(),
            });
        }
        Ok(Self {
            aggs,
            slots: 0,
            extra_total: 0,
        })
    }

    /// The output fields, in aggregate order.
    pub(crate) fn fields(&self) -> Vec<Field> {
        self.aggs
            .iter()
            .map(|a| {
                let t = match &a.state {
                    State::Count(_) | State::Distinct(_) | State::SumI(..) => DataType::Int64,
                    State::SumF(..) | State::Mean(..) => DataType::Float64,
                    State::Pick(..) => a.input_type.clone(),
                    State::List(_) => {
                        DataType::List(Arc::new(Field::new("item", a.input_type.clone(), true)))
                    }
                };
                Field::new(&a.spec.name, t, true)
            })
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
            match &mut a.state {
                State::Count(v) => v.resize(n, 0),
                State::SumI(v, s) => {
                    v.resize(n, 0);
                    s.resize(n, false);
                }
                State::SumF(v, s) => {
                    v.resize(n, 0.0);
                    s.resize(n, false);
                }
                State::Mean(v, c) => {
                    v.resize(n, 0.0);
                    c.resize(n, 0);
                }
                State::Pick(_, vals, s) => {
                    s.resize(n, false);
                    match vals {
                        Vals::I(v) => v.resize(n, None),
                        Vals::F(v) => v.resize(n, None),
                        Vals::S(v) => v.resize(n, None),
                    }
                }
                State::Distinct(sets) => match sets {
                    Sets::I(v) => v.resize_with(n, HashSet::default),
                    Sets::F(v) => v.resize_with(n, HashSet::default),
                    Sets::S(v) => v.resize_with(n, StrSet::default),
                },
                State::List(lists) => match lists {
                    Lists::I(v) => v.resize_with(n, Vec::new),
                    Lists::F(v) => v.resize_with(n, Vec::new),
                    Lists::S(v) => v.resize_with(n, Vec::new),
                },
            }
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
        for a in &mut self.aggs {
            let mask = a
                .filter
                .as_ref()
                .map(|(i, v)| filter_mask(batch.column(*i), v))
                .transpose()?;
            let pass = |r: usize| mask.as_ref().is_none_or(|m| m.is_valid(r) && m.value(r));
            let input = a.column.map(|i| Canon::of(batch.column(i))).transpose()?;
            let extra = &mut a.extra;
            let mut delta: isize = 0;
            let pairs = rows
                .iter()
                .copied()
                .zip(slots.iter().copied())
                .filter(|&(r, _)| pass(r));
            match (&mut a.state, &input) {
                (State::Count(n), None) => pairs.for_each(|(_, s)| n[s] += 1),
                (State::Count(n), Some(c)) => pairs
                    .filter(|&(r, _)| c.is_valid(r))
                    .for_each(|(_, s)| n[s] += 1),
                (State::SumI(v, seen), Some(Canon::I(c))) => {
                    for (r, s) in pairs.filter(|&(r, _)| c.is_valid(r)) {
                        v[s] = v[s].wrapping_add(c.value(r));
                        seen[s] = true;
                    }
                }
                (State::SumF(v, seen), Some(Canon::F(c))) => {
                    for (r, s) in pairs.filter(|&(r, _)| c.is_valid(r)) {
                        v[s] += c.value(r);
                        seen[s] = true;
                    }
                }
                (State::Mean(v, n), Some(c)) => {
                    for (r, s) in pairs.filter(|&(r, _)| c.is_valid(r)) {
                        v[s] += match c {
                            Canon::I(c) => c.value(r) as f64,
                            Canon::F(c) => c.value(r),
                            Canon::S(_) => unreachable!("checked at construction"),
                        };
                        n[s] += 1;
                    }
                }
                (State::Pick(op, vals, seen), Some(c)) => {
                    let op = *op;
                    match (vals, c) {
                        (Vals::I(v), Canon::I(c)) => pick(
                            op,
                            v,
                            seen,
                            pairs,
                            |r| c.is_valid(r).then(|| c.value(r)),
                            |_| 0,
                            extra,
                            &mut delta,
                        ),
                        (Vals::F(v), Canon::F(c)) => pick(
                            op,
                            v,
                            seen,
                            pairs,
                            |r| c.is_valid(r).then(|| c.value(r)),
                            |_| 0,
                            extra,
                            &mut delta,
                        ),
                        (Vals::S(v), Canon::S(c)) => pick(
                            op,
                            v,
                            seen,
                            pairs,
                            |r| c.is_valid(r).then(|| c.value(r).to_owned()),
                            |s: &String| s.len() + 24,
                            extra,
                            &mut delta,
                        ),
                        _ => unreachable!("state and input share the canonical type"),
                    }
                }
                (State::Distinct(sets), Some(c)) => match (sets, c) {
                    (Sets::I(v), Canon::I(c)) => {
                        for (r, s) in pairs.filter(|&(r, _)| c.is_valid(r)) {
                            if v[s].insert(c.value(r)) {
                                extra[s] += 16;
                                delta += 16;
                            }
                        }
                    }
                    (Sets::F(v), Canon::F(c)) => {
                        for (r, s) in pairs.filter(|&(r, _)| c.is_valid(r)) {
                            let x = c.value(r);
                            let bits = if x == 0.0 { 0 } else { x.to_bits() };
                            if v[s].insert(bits) {
                                extra[s] += 16;
                                delta += 16;
                            }
                        }
                    }
                    (Sets::S(v), Canon::S(c)) => {
                        for (r, s) in pairs.filter(|&(r, _)| c.is_valid(r)) {
                            let x = c.value(r);
                            if v[s].insert(x) {
                                extra[s] += x.len() + 16;
                                delta += (x.len() + 16) as isize;
                            }
                        }
                    }
                    _ => unreachable!("state and input share the canonical type"),
                },
                (State::List(lists), Some(c)) => match (lists, c) {
                    (Lists::I(v), Canon::I(c)) => {
                        for (r, s) in pairs {
                            v[s].push(c.is_valid(r).then(|| c.value(r)));
                            extra[s] += 16;
                            delta += 16;
                        }
                    }
                    (Lists::F(v), Canon::F(c)) => {
                        for (r, s) in pairs {
                            v[s].push(c.is_valid(r).then(|| c.value(r)));
                            extra[s] += 16;
                            delta += 16;
                        }
                    }
                    (Lists::S(v), Canon::S(c)) => {
                        for (r, s) in pairs {
                            let x = c.is_valid(r).then(|| c.value(r).to_owned());
                            let n = 24 + x.as_ref().map_or(0, String::len);
                            extra[s] += n;
                            delta += n as isize;
                            v[s].push(x);
                        }
                    }
                    _ => unreachable!("state and input share the canonical type"),
                },
                _ => unreachable!("validated: every op but count has a column"),
            }
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
            let d = a.spec.default;
            let array: ArrayRef = match &a.state {
                State::Count(n) => {
                    Arc::new(Int64Array::from_iter_values(slots.iter().map(|&s| n[s])))
                }
                State::SumI(v, seen) => Arc::new(Int64Array::from_iter(slots.iter().map(|&s| {
                    if seen[s] {
                        Some(v[s])
                    } else {
                        d.map(|d| d as i64)
                    }
                }))),
                State::SumF(v, seen) => Arc::new(Float64Array::from_iter(
                    slots.iter().map(|&s| if seen[s] { Some(v[s]) } else { d }),
                )),
                State::Mean(v, n) => Arc::new(Float64Array::from_iter(slots.iter().map(|&s| {
                    if n[s] > 0 {
                        Some(v[s] / n[s] as f64)
                    } else {
                        d
                    }
                }))),
                State::Pick(op, vals, seen) => {
                    let dflt = if matches!(op, AggOp::Min | AggOp::Max) {
                        d
                    } else {
                        None
                    };
                    let canon: ArrayRef = match vals {
                        Vals::I(v) => Arc::new(Int64Array::from_iter(slots.iter().map(|&s| {
                            if seen[s] {
                                v[s]
                            } else {
                                dflt.map(|d| d as i64)
                            }
                        }))),
                        Vals::F(v) => Arc::new(Float64Array::from_iter(
                            slots.iter().map(|&s| if seen[s] { v[s] } else { dflt }),
                        )),
                        Vals::S(v) => Arc::new(StringArray::from_iter(
                            slots.iter().map(|&s| v[s].as_deref()),
                        )),
                    };
                    cast(&canon, &a.input_type)?
                }
                State::Distinct(sets) => Arc::new(Int64Array::from_iter_values(slots.iter().map(
                    |&s| match sets {
                        Sets::I(v) => v[s].len() as i64,
                        Sets::F(v) => v[s].len() as i64,
                        Sets::S(v) => v[s].len() as i64,
                    },
                ))),
                State::List(lists) => {
                    let canon: ArrayRef = match lists {
                        Lists::I(v) => {
                            let mut b = ListBuilder::new(Int64Builder::new());
                            for &s in slots {
                                b.append_value(v[s].iter().copied());
                            }
                            Arc::new(b.finish())
                        }
                        Lists::F(v) => {
                            let mut b = ListBuilder::new(Float64Builder::new());
                            for &s in slots {
                                b.append_value(v[s].iter().copied());
                            }
                            Arc::new(b.finish())
                        }
                        Lists::S(v) => {
                            let mut b = ListBuilder::new(StringBuilder::new());
                            for &s in slots {
                                b.append_value(v[s].iter().map(|x| x.as_deref()));
                            }
                            Arc::new(b.finish())
                        }
                    };
                    cast(
                        &canon,
                        &DataType::List(Arc::new(Field::new("item", a.input_type.clone(), true))),
                    )?
                }
            };
            out.push(array);
        }
        Ok(out)
    }

    /// Clears `slot` for reuse.
    pub(crate) fn reset(&mut self, slot: usize) {
        for a in &mut self.aggs {
            self.extra_total -= a.extra[slot];
            a.extra[slot] = 0;
            match &mut a.state {
                State::Count(n) => n[slot] = 0,
                State::SumI(v, s) => (v[slot], s[slot]) = (0, false),
                State::SumF(v, s) => (v[slot], s[slot]) = (0.0, false),
                State::Mean(v, n) => (v[slot], n[slot]) = (0.0, 0),
                State::Pick(_, vals, s) => {
                    s[slot] = false;
                    match vals {
                        Vals::I(v) => v[slot] = None,
                        Vals::F(v) => v[slot] = None,
                        Vals::S(v) => v[slot] = None,
                    }
                }
                State::Distinct(sets) => match sets {
                    Sets::I(v) => v[slot] = HashSet::default(),
                    Sets::F(v) => v[slot] = HashSet::default(),
                    Sets::S(v) => v[slot] = StrSet::default(),
                },
                State::List(lists) => match lists {
                    Lists::I(v) => v[slot] = Vec::new(),
                    Lists::F(v) => v[slot] = Vec::new(),
                    Lists::S(v) => v[slot] = Vec::new(),
                },
            }
        }
    }
}

/// `min`, `max`, `first`, `last` over one canonical type.
fn pick<T: PartialOrd>(
    op: AggOp,
    v: &mut [Option<T>],
    seen: &mut [bool],
    pairs: impl Iterator<Item = (usize, usize)>,
    get: impl Fn(usize) -> Option<T>,
    size: impl Fn(&T) -> usize,
    extra: &mut [usize],
    delta: &mut isize,
) {
    for (r, s) in pairs {
        let x = get(r);
        let replace = match op {
            AggOp::First => !seen[s],
            AggOp::Last => true,
            AggOp::Min => x.is_some() && (!seen[s] || x < v[s]),
            AggOp::Max => x.is_some() && (!seen[s] || x > v[s]),
            _ => unreachable!("pick is min, max, first or last"),
        };
        if replace {
            let n = x.as_ref().map_or(0, &size);
            *delta += n as isize - extra[s] as isize;
            extra[s] = n;
            v[s] = x;
            seen[s] = true;
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

/// A set of distinct strings for `count_distinct`, without an allocation per value.
///
/// Most groups and sessions hold a handful of distinct values, so a set starts as
/// one byte buffer plus `(hash, start, len)` entries searched linearly by hash;
/// past [`StrSet::SMALL`] values it moves to a hash set. Exact: equal hashes are
/// confirmed by comparing the bytes.
#[derive(Debug, Default)]
pub(crate) enum StrSet {
    /// No value yet, and nothing allocated.
    #[default]
    Empty,
    /// Up to `SMALL` values.
    Small {
        /// The values' bytes, back to back.
        bytes: Vec<u8>,
        /// Per value: its hash, start and length in `bytes`.
        entries: Vec<(u64, u32, u32)>,
    },
    /// More values.
    Large(HashSet<Box<str>>),
}

impl StrSet {
    /// Values a set holds before it moves to a hash set.
    const SMALL: usize = 32;

    /// Adds `x`; true when it was not there yet.
    pub(crate) fn insert(&mut self, x: &str) -> bool {
        use std::hash::BuildHasher;
        // A fixed seed: sets are compared by bytes, the hash only narrows the scan.
        let h = foldhash::fast::FixedState::with_seed(0).hash_one(x);
        match self {
            StrSet::Empty => {
                *self = StrSet::Small {
                    bytes: x.as_bytes().to_vec(),
                    entries: vec![(h, 0, x.len() as u32)],
                };
                true
            }
            StrSet::Small { bytes, entries } => {
                let found = entries.iter().any(|&(eh, start, len)| {
                    eh == h && &bytes[start as usize..(start + len) as usize] == x.as_bytes()
                });
                if found {
                    return false;
                }
                let fits = u32::try_from(bytes.len() + x.len()).is_ok();
                if entries.len() < Self::SMALL && fits {
                    entries.push((h, bytes.len() as u32, x.len() as u32));
                    bytes.extend_from_slice(x.as_bytes());
                    return true;
                }
                let mut set: HashSet<Box<str>> = entries
                    .iter()
                    .map(|&(_, start, len)| {
                        let v = &bytes[start as usize..(start + len) as usize];
                        Box::from(std::str::from_utf8(v).expect("stored from a str"))
                    })
                    .collect();
                set.insert(Box::from(x));
                *self = StrSet::Large(set);
                true
            }
            StrSet::Large(set) => {
                if set.contains(x) {
                    false
                } else {
                    set.insert(Box::from(x))
                }
            }
        }
    }

    /// The number of distinct values.
    pub(crate) fn len(&self) -> usize {
        match self {
            StrSet::Empty => 0,
            StrSet::Small { entries, .. } => entries.len(),
            StrSet::Large(set) => set.len(),
        }
    }
}

#[cfg(test)]
mod str_set_tests {
    use super::StrSet;
    use proptest::prelude::*;

    proptest! {
        /// The set counts exactly what a `HashSet` counts, across the move from
        /// small to large.
        #[test]
        fn counts_like_a_hash_set(values in proptest::collection::vec("[a-c]{0,3}", 0..200)) {
            let mut set = StrSet::default();
            let mut want = std::collections::HashSet::new();
            for v in &values {
                prop_assert_eq!(set.insert(v), want.insert(v.clone()));
            }
            prop_assert_eq!(set.len(), want.len());
        }
    }
}
