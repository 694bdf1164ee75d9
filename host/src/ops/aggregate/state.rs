//! The state of one aggregate over slots, and the per-batch input it reads.
//!
//! A [`State`] pairs an op with the canonical type of its input (see the parent
//! module), holding one value, set or list per slot; [`Canon`] is one batch's input
//! column cast to a canonical type. Kept apart from [`Aggregates`](super::Aggregates),
//! which resolves columns, applies filters and keeps the byte count, so that this
//! file is only the per-(op, type) loops.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, Int64Builder, ListBuilder,
    StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};

use super::str_set::StrSet;
use super::{HashSet, canonical};
use crate::node::NodeError;
use crate::ops::stateful_spec::{AggOp, AggregateSpec};

/// A column normalised to a canonical type.
pub(super) enum Canon {
    I(Int64Array),
    F(Float64Array),
    S(StringArray),
}

impl Canon {
    pub(super) fn of(array: &ArrayRef) -> Result<Self, NodeError> {
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

    pub(super) fn is_valid(&self, i: usize) -> bool {
        match self {
            Canon::I(a) => a.is_valid(i),
            Canon::F(a) => a.is_valid(i),
            Canon::S(a) => a.is_valid(i),
        }
    }
}

/// Values of one canonical type, one per slot.
pub(super) enum Vals {
    I(Vec<Option<i64>>),
    F(Vec<Option<f64>>),
    S(Vec<Option<String>>),
}

/// Lists of values of one canonical type, one per slot.
pub(super) enum Lists {
    I(Vec<Vec<Option<i64>>>),
    F(Vec<Vec<Option<f64>>>),
    S(Vec<Vec<Option<String>>>),
}

/// Sets of distinct values of one canonical type, one per slot.
pub(super) enum Sets {
    I(Vec<HashSet<i64>>),
    F(Vec<HashSet<u64>>),
    S(Vec<StrSet>),
}

/// The state of one aggregate, per (op, canonical type).
pub(super) enum State {
    Count(Vec<i64>),
    SumI(Vec<i64>, Vec<bool>),
    SumF(Vec<f64>, Vec<bool>),
    Mean(Vec<f64>, Vec<u64>),
    Pick(AggOp, Vals, Vec<bool>),
    Distinct(Sets),
    List(Lists),
}

impl State {
    /// The empty state of `spec` over an input of type `input_type`, whose
    /// canonical type is `canon`.
    ///
    /// # Errors
    /// `sum` or `mean` of a column that is not numeric.
    pub(super) fn new(
        spec: &AggregateSpec,
        canon: &DataType,
        input_type: &DataType,
    ) -> Result<Self, NodeError> {
        let vals = || match *canon {
            DataType::Int64 => Vals::I(Vec::new()),
            DataType::Float64 => Vals::F(Vec::new()),
            _ => Vals::S(Vec::new()),
        };
        Ok(match spec.op {
            AggOp::Count => State::Count(Vec::new()),
            AggOp::Sum if *canon == DataType::Int64 => State::SumI(Vec::new(), Vec::new()),
            AggOp::Sum if *canon == DataType::Float64 => State::SumF(Vec::new(), Vec::new()),
            AggOp::Mean if *canon != DataType::Utf8 => State::Mean(Vec::new(), Vec::new()),
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
            AggOp::CountDistinct => State::Distinct(match *canon {
                DataType::Int64 => Sets::I(Vec::new()),
                DataType::Float64 => Sets::F(Vec::new()),
                _ => Sets::S(Vec::new()),
            }),
            AggOp::List => State::List(match *canon {
                DataType::Int64 => Lists::I(Vec::new()),
                DataType::Float64 => Lists::F(Vec::new()),
                _ => Lists::S(Vec::new()),
            }),
        })
    }

    /// The type of the output column, for an input of type `input_type`.
    pub(super) fn data_type(&self, input_type: &DataType) -> DataType {
        match self {
            State::Count(_) | State::Distinct(_) | State::SumI(..) => DataType::Int64,
            State::SumF(..) | State::Mean(..) => DataType::Float64,
            State::Pick(..) => input_type.clone(),
            State::List(_) => {
                DataType::List(Arc::new(Field::new("item", input_type.clone(), true)))
            }
        }
    }

    /// Makes room for `n` slots.
    pub(super) fn resize(&mut self, n: usize) {
        match self {
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

    /// Feeds the `(row, slot)` pairs of `input` (`None` for a count of rows) and
    /// returns the change in heap bytes, which it also adds to `extra`, per slot.
    pub(super) fn update(
        &mut self,
        input: Option<&Canon>,
        pairs: impl Iterator<Item = (usize, usize)>,
        extra: &mut [usize],
    ) -> isize {
        let mut delta: isize = 0;
        match (self, input) {
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
        delta
    }

    /// The output column for `slots`, in that order; `d` is the aggregate's default
    /// and `input_type` the type `min`, `max`, `first`, `last` and `list` give back.
    ///
    /// # Errors
    /// Casting back to the input's type fails (a bug).
    pub(super) fn emit(
        &self,
        slots: &[usize],
        d: Option<f64>,
        input_type: &DataType,
    ) -> Result<ArrayRef, NodeError> {
        Ok(match self {
            State::Count(n) => Arc::new(Int64Array::from_iter_values(slots.iter().map(|&s| n[s]))),
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
                cast(&canon, input_type)?
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
                    &DataType::List(Arc::new(Field::new("item", input_type.clone(), true))),
                )?
            }
        })
    }

    /// Clears `slot` for reuse.
    pub(super) fn reset(&mut self, slot: usize) {
        match self {
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
