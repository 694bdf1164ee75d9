//! The accumulators: one type per (op, canonical type), each holding its state
//! column-wise over slots, in the manner of DataFusion's `GroupsAccumulator`.
//!
//! [`accumulator`] picks the type once, from the spec and the input's canonical
//! type, so an accumulator only ever sees its own kind of input and its loops need
//! no match over pairs of state and input. The generic ones ([`Sum`], [`Mean`],
//! [`Pick`], [`Distinct`], [`List`]) are written once over a [`Canonical`] type,
//! which says how a column is read in that type and how its values are kept.
//! Kept apart from [`Aggregates`](super::Aggregates), which resolves columns,
//! applies filters and keeps the byte count, so that this file is only the
//! per-(op, type) state and loops.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, Int64Array, Int64Builder,
    ListBuilder, PrimitiveArray, RecordBatch, StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type};

use super::str_set::StrSet;
use super::{AggOp, AggregateSpec};
use super::{HashSet, canonical};
use crate::node::NodeError;

/// The rows of one batch an aggregate takes: row `rows[k]` goes to slot `slots[k]`
/// if the aggregate's filter lets it through.
pub(super) struct Feed<'a> {
    pub(super) rows: &'a [usize],
    pub(super) slots: &'a [usize],
    /// Rows where the filter holds; `None` lets every row through.
    pub(super) mask: Option<&'a BooleanArray>,
}

impl Feed<'_> {
    /// The `(row, slot)` pairs the filter lets through, in order.
    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mask = self.mask;
        self.rows
            .iter()
            .copied()
            .zip(self.slots.iter().copied())
            .filter(move |&(r, _)| mask.is_none_or(|m| m.is_valid(r) && m.value(r)))
    }
}

/// The state of one aggregate over slots.
pub(super) trait Accumulator: Send {
    /// The type of the output column.
    fn data_type(&self) -> DataType;

    /// Makes room for `n` slots, `n` at least the slots it has.
    fn resize(&mut self, n: usize);

    /// Feeds `feed`'s rows of `batch`. Adds to `extra[s]` the heap bytes slot `s`
    /// gains beyond its fixed size (strings, sets, lists), and returns the sum of
    /// the changes.
    ///
    /// # Errors
    /// The input column is of a type that cannot be aggregated, or that does not
    /// map to the canonical type the accumulator was built for.
    fn update(
        &mut self,
        batch: &RecordBatch,
        feed: &Feed<'_>,
        extra: &mut [usize],
    ) -> Result<isize, NodeError>;

    /// The output column for `slots`, in that order.
    ///
    /// # Errors
    /// Casting back to the input's type fails (a bug).
    fn emit(&self, slots: &[usize]) -> Result<ArrayRef, NodeError>;

    /// Clears `slot` for reuse.
    fn reset(&mut self, slot: usize);
}

/// The accumulator of `spec` over `column` (`None` only for `count`), whose type
/// `input_type` has the canonical type `canon`.
///
/// # Errors
/// `sum` or `mean` of a column that is not numeric, or an op other than `count`
/// without a column (the spec's validation refuses that earlier).
pub(super) fn accumulator(
    spec: &AggregateSpec,
    column: Option<usize>,
    input_type: &DataType,
    canon: &DataType,
) -> Result<Box<dyn Accumulator>, NodeError> {
    use DataType::{Float64, Int64};
    let need = || {
        column.ok_or_else(|| {
            NodeError::Config(format!(
                "aggregate `{}`: {:?} needs a column",
                spec.name, spec.op
            ))
        })
    };
    let t = input_type.clone();
    let d = spec.default;
    Ok(match (spec.op, canon) {
        (AggOp::Count, _) => Box::new(Count {
            column,
            n: Vec::new(),
        }),
        (AggOp::Sum, Int64) => Box::new(Sum::<I64>::new(need()?, d)),
        (AggOp::Sum, Float64) => Box::new(Sum::<F64>::new(need()?, d)),
        (AggOp::Mean, Int64) => Box::new(Mean::<I64>::new(need()?, d)),
        (AggOp::Mean, Float64) => Box::new(Mean::<F64>::new(need()?, d)),
        (AggOp::Sum | AggOp::Mean, _) => {
            return Err(NodeError::Config(format!(
                "aggregate `{}`: {:?} needs a numeric column, `{}` is {input_type}",
                spec.name,
                spec.op,
                spec.column.as_deref().unwrap_or_default()
            )));
        }
        (AggOp::Min, _) => pick(PickOp::Min, canon, need()?, t, d),
        (AggOp::Max, _) => pick(PickOp::Max, canon, need()?, t, d),
        (AggOp::First, _) => pick(PickOp::First, canon, need()?, t, d),
        (AggOp::Last, _) => pick(PickOp::Last, canon, need()?, t, d),
        (AggOp::CountDistinct, Int64) => Box::new(Distinct::<I64>::new(need()?)),
        (AggOp::CountDistinct, Float64) => Box::new(Distinct::<F64>::new(need()?)),
        (AggOp::CountDistinct, _) => Box::new(Distinct::<Str>::new(need()?)),
        (AggOp::List, Int64) => Box::new(List::<I64>::new(need()?, t)),
        (AggOp::List, Float64) => Box::new(List::<F64>::new(need()?, t)),
        (AggOp::List, _) => Box::new(List::<Str>::new(need()?, t)),
    })
}

/// The [`Pick`] of `op` over the canonical type `canon`.
fn pick(
    op: PickOp,
    canon: &DataType,
    column: usize,
    input_type: DataType,
    default: Option<f64>,
) -> Box<dyn Accumulator> {
    match canon {
        DataType::Int64 => Box::new(Pick::<I64>::new(op, column, input_type, default)),
        DataType::Float64 => Box::new(Pick::<F64>::new(op, column, input_type, default)),
        _ => Box::new(Pick::<Str>::new(op, column, input_type, default)),
    }
}

/// `array` cast to its canonical type.
fn normalised(array: &ArrayRef) -> Result<ArrayRef, NodeError> {
    let t = canonical(array.data_type()).ok_or_else(|| {
        NodeError::Config(format!(
            "cannot aggregate a column of type {}",
            array.data_type()
        ))
    })?;
    Ok(cast(array, &t)?)
}

/// `array` cast to `C`, which must be its canonical type.
fn read<C: Canonical>(array: &ArrayRef) -> Result<ArrayRef, NodeError> {
    let a = normalised(array)?;
    if *a.data_type() != C::TYPE {
        return Err(NodeError::Config(format!(
            "cannot aggregate a column of type {} as {}: its type changed since the first batch",
            array.data_type(),
            C::TYPE
        )));
    }
    Ok(a)
}

/// A canonical type: how a column cast to it is read, and how state keeps its
/// values.
trait Canonical: Send + 'static {
    /// The Arrow type.
    const TYPE: DataType;
    /// A column of this type.
    type Array: Array + 'static;
    /// A value as state keeps it.
    type Value: PartialOrd + Send + 'static;
    /// The distinct values of one slot.
    type Set: Default + Send;

    /// `a`, which is of type [`Self::TYPE`], as its concrete array.
    fn array(a: &ArrayRef) -> &Self::Array;
    /// The value at row `r` (valid).
    fn value(a: &Self::Array, r: usize) -> Self::Value;
    /// Heap bytes a kept value holds beyond a slot's fixed size.
    fn kept_bytes(v: &Self::Value) -> usize;
    /// Heap bytes one list element takes.
    fn element_bytes(v: Option<&Self::Value>) -> usize;
    /// The spec's default as a value, if this type takes one.
    fn default_of(d: f64) -> Option<Self::Value>;
    /// Adds row `r` (valid) to `set`: the heap bytes it took, or `None` if it was
    /// there.
    fn insert(set: &mut Self::Set, a: &Self::Array, r: usize) -> Option<usize>;
    /// The distinct values in `set`.
    fn distinct(set: &Self::Set) -> usize;
    /// Empties `set` for a new slot, keeping a small allocation for reuse.
    fn clear(set: &mut Self::Set);
    /// An array of `values`.
    fn build<'v>(values: impl Iterator<Item = Option<&'v Self::Value>>) -> ArrayRef;
    /// A list array, one list per item of `lists`.
    fn build_lists<'v>(lists: impl Iterator<Item = &'v [Option<Self::Value>]>) -> ArrayRef;
}

/// The numeric canonical types, which `sum` and `mean` take.
trait Numeric: Canonical<Value: Copy + Default> {
    /// `a + b`, wrapping for integers.
    fn add(a: Self::Value, b: Self::Value) -> Self::Value;
    /// `v` as a float, for `mean`.
    fn to_f64(v: Self::Value) -> f64;
}

/// Int64: integers, booleans, timestamps and dates.
struct I64;

/// Float64: floats.
struct F64;

/// Utf8: strings.
struct Str;

impl Canonical for I64 {
    const TYPE: DataType = DataType::Int64;
    type Array = PrimitiveArray<Int64Type>;
    type Value = i64;
    type Set = HashSet<i64>;

    fn array(a: &ArrayRef) -> &Self::Array {
        a.as_primitive()
    }
    fn value(a: &Self::Array, r: usize) -> i64 {
        a.value(r)
    }
    fn kept_bytes(_: &i64) -> usize {
        0
    }
    fn element_bytes(_: Option<&i64>) -> usize {
        16
    }
    fn default_of(d: f64) -> Option<i64> {
        Some(d as i64)
    }
    fn insert(set: &mut HashSet<i64>, a: &Self::Array, r: usize) -> Option<usize> {
        set.insert(a.value(r)).then_some(16)
    }
    fn distinct(set: &HashSet<i64>) -> usize {
        set.len()
    }
    fn clear(set: &mut HashSet<i64>) {
        clear_hash_set(set);
    }
    fn build<'v>(values: impl Iterator<Item = Option<&'v i64>>) -> ArrayRef {
        Arc::new(Int64Array::from_iter(values.map(|v| v.copied())))
    }
    fn build_lists<'v>(lists: impl Iterator<Item = &'v [Option<i64>]>) -> ArrayRef {
        let mut b = ListBuilder::new(Int64Builder::new());
        for v in lists {
            b.append_value(v.iter().copied());
        }
        Arc::new(b.finish())
    }
}

impl Numeric for I64 {
    fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn to_f64(v: i64) -> f64 {
        v as f64
    }
}

impl Canonical for F64 {
    const TYPE: DataType = DataType::Float64;
    type Array = PrimitiveArray<Float64Type>;
    type Value = f64;
    /// The bits of each value, `-0.0` counted as `0.0`.
    type Set = HashSet<u64>;

    fn array(a: &ArrayRef) -> &Self::Array {
        a.as_primitive()
    }
    fn value(a: &Self::Array, r: usize) -> f64 {
        a.value(r)
    }
    fn kept_bytes(_: &f64) -> usize {
        0
    }
    fn element_bytes(_: Option<&f64>) -> usize {
        16
    }
    fn default_of(d: f64) -> Option<f64> {
        Some(d)
    }
    fn insert(set: &mut HashSet<u64>, a: &Self::Array, r: usize) -> Option<usize> {
        let x = a.value(r);
        let bits = if x == 0.0 { 0 } else { x.to_bits() };
        set.insert(bits).then_some(16)
    }
    fn distinct(set: &HashSet<u64>) -> usize {
        set.len()
    }
    fn clear(set: &mut HashSet<u64>) {
        clear_hash_set(set);
    }
    fn build<'v>(values: impl Iterator<Item = Option<&'v f64>>) -> ArrayRef {
        Arc::new(Float64Array::from_iter(values.map(|v| v.copied())))
    }
    fn build_lists<'v>(lists: impl Iterator<Item = &'v [Option<f64>]>) -> ArrayRef {
        let mut b = ListBuilder::new(Float64Builder::new());
        for v in lists {
            b.append_value(v.iter().copied());
        }
        Arc::new(b.finish())
    }
}

impl Numeric for F64 {
    fn add(a: f64, b: f64) -> f64 {
        a + b
    }
    fn to_f64(v: f64) -> f64 {
        v
    }
}

impl Canonical for Str {
    const TYPE: DataType = DataType::Utf8;
    type Array = StringArray;
    type Value = String;
    type Set = StrSet;

    fn array(a: &ArrayRef) -> &StringArray {
        a.as_string()
    }
    fn value(a: &StringArray, r: usize) -> String {
        a.value(r).to_owned()
    }
    fn kept_bytes(v: &String) -> usize {
        v.len() + 24
    }
    fn element_bytes(v: Option<&String>) -> usize {
        24 + v.map_or(0, String::len)
    }
    fn default_of(_: f64) -> Option<String> {
        None
    }
    fn insert(set: &mut StrSet, a: &StringArray, r: usize) -> Option<usize> {
        let x = a.value(r);
        set.insert(x).then(|| x.len() + 16)
    }
    fn distinct(set: &StrSet) -> usize {
        set.len()
    }
    fn clear(set: &mut StrSet) {
        set.clear();
    }
    fn build<'v>(values: impl Iterator<Item = Option<&'v String>>) -> ArrayRef {
        Arc::new(StringArray::from_iter(
            values.map(|v| v.map(String::as_str)),
        ))
    }
    fn build_lists<'v>(lists: impl Iterator<Item = &'v [Option<String>]>) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for v in lists {
            b.append_value(v.iter().map(|x| x.as_deref()));
        }
        Arc::new(b.finish())
    }
}

/// `count`: rows, or a column's non-null values.
struct Count {
    column: Option<usize>,
    n: Vec<i64>,
}

impl Accumulator for Count {
    fn data_type(&self) -> DataType {
        DataType::Int64
    }
    fn resize(&mut self, n: usize) {
        self.n.resize(n, 0);
    }
    fn update(
        &mut self,
        batch: &RecordBatch,
        feed: &Feed<'_>,
        _: &mut [usize],
    ) -> Result<isize, NodeError> {
        let n = &mut self.n;
        match self.column {
            None => feed.pairs().for_each(|(_, s)| n[s] += 1),
            Some(i) => {
                // Cast as the other ops cast, so the nulls counted are theirs.
                let c = normalised(batch.column(i))?;
                let nulls = c.nulls();
                feed.pairs()
                    .filter(|&(r, _)| nulls.is_none_or(|m| m.is_valid(r)))
                    .for_each(|(_, s)| n[s] += 1);
            }
        }
        Ok(0)
    }
    fn emit(&self, slots: &[usize]) -> Result<ArrayRef, NodeError> {
        Ok(Arc::new(Int64Array::from_iter_values(
            slots.iter().map(|&s| self.n[s]),
        )))
    }
    fn reset(&mut self, slot: usize) {
        self.n[slot] = 0;
    }
}

/// `sum`: the sum of a numeric column's non-null values, in its canonical type.
struct Sum<N: Numeric> {
    column: usize,
    /// What a slot that saw no value gives.
    default: Option<N::Value>,
    sums: Vec<N::Value>,
    seen: Vec<bool>,
}

impl<N: Numeric> Sum<N> {
    fn new(column: usize, default: Option<f64>) -> Self {
        Self {
            column,
            default: default.and_then(N::default_of),
            sums: Vec::new(),
            seen: Vec::new(),
        }
    }
}

impl<N: Numeric> Accumulator for Sum<N> {
    fn data_type(&self) -> DataType {
        N::TYPE
    }
    fn resize(&mut self, n: usize) {
        self.sums.resize(n, Default::default());
        self.seen.resize(n, false);
    }
    fn update(
        &mut self,
        batch: &RecordBatch,
        feed: &Feed<'_>,
        _: &mut [usize],
    ) -> Result<isize, NodeError> {
        let a = read::<N>(batch.column(self.column))?;
        let c = N::array(&a);
        for (r, s) in feed.pairs().filter(|&(r, _)| c.is_valid(r)) {
            self.sums[s] = N::add(self.sums[s], N::value(c, r));
            self.seen[s] = true;
        }
        Ok(0)
    }
    fn emit(&self, slots: &[usize]) -> Result<ArrayRef, NodeError> {
        Ok(N::build(slots.iter().map(|&s| {
            if self.seen[s] {
                Some(&self.sums[s])
            } else {
                self.default.as_ref()
            }
        })))
    }
    fn reset(&mut self, slot: usize) {
        (self.sums[slot], self.seen[slot]) = (Default::default(), false);
    }
}

/// `mean`: the mean of a numeric column's non-null values, as a float.
struct Mean<N: Numeric> {
    column: usize,
    /// What a slot that saw no value gives.
    default: Option<f64>,
    sums: Vec<f64>,
    counts: Vec<u64>,
    numeric: std::marker::PhantomData<N>,
}

impl<N: Numeric> Mean<N> {
    fn new(column: usize, default: Option<f64>) -> Self {
        Self {
            column,
            default,
            sums: Vec::new(),
            counts: Vec::new(),
            numeric: std::marker::PhantomData,
        }
    }
}

impl<N: Numeric> Accumulator for Mean<N> {
    fn data_type(&self) -> DataType {
        DataType::Float64
    }
    fn resize(&mut self, n: usize) {
        self.sums.resize(n, 0.0);
        self.counts.resize(n, 0);
    }
    fn update(
        &mut self,
        batch: &RecordBatch,
        feed: &Feed<'_>,
        _: &mut [usize],
    ) -> Result<isize, NodeError> {
        let a = read::<N>(batch.column(self.column))?;
        let c = N::array(&a);
        for (r, s) in feed.pairs().filter(|&(r, _)| c.is_valid(r)) {
            self.sums[s] += N::to_f64(N::value(c, r));
            self.counts[s] += 1;
        }
        Ok(0)
    }
    fn emit(&self, slots: &[usize]) -> Result<ArrayRef, NodeError> {
        Ok(Arc::new(Float64Array::from_iter(slots.iter().map(|&s| {
            if self.counts[s] > 0 {
                Some(self.sums[s] / self.counts[s] as f64)
            } else {
                self.default
            }
        }))))
    }
    fn reset(&mut self, slot: usize) {
        (self.sums[slot], self.counts[slot]) = (0.0, 0);
    }
}

/// Which value [`Pick`] keeps.
#[derive(Clone, Copy)]
enum PickOp {
    Min,
    Max,
    First,
    Last,
}

/// `min`, `max`, `first`, `last`: one kept value per slot, given back in the
/// input's type.
struct Pick<C: Canonical> {
    op: PickOp,
    column: usize,
    input_type: DataType,
    /// What a slot that saw no value gives: the spec's default for `min` and
    /// `max` over numbers, else null.
    default: Option<C::Value>,
    values: Vec<Option<C::Value>>,
    seen: Vec<bool>,
}

impl<C: Canonical> Pick<C> {
    fn new(op: PickOp, column: usize, input_type: DataType, default: Option<f64>) -> Self {
        let default = match op {
            PickOp::Min | PickOp::Max => default.and_then(C::default_of),
            PickOp::First | PickOp::Last => None,
        };
        Self {
            op,
            column,
            input_type,
            default,
            values: Vec::new(),
            seen: Vec::new(),
        }
    }
}

impl<C: Canonical> Accumulator for Pick<C> {
    fn data_type(&self) -> DataType {
        self.input_type.clone()
    }
    fn resize(&mut self, n: usize) {
        self.values.resize_with(n, || None);
        self.seen.resize(n, false);
    }
    fn update(
        &mut self,
        batch: &RecordBatch,
        feed: &Feed<'_>,
        extra: &mut [usize],
    ) -> Result<isize, NodeError> {
        let a = read::<C>(batch.column(self.column))?;
        let c = C::array(&a);
        let (v, seen) = (&mut self.values, &mut self.seen);
        let mut delta = 0;
        for (r, s) in feed.pairs() {
            let x = c.is_valid(r).then(|| C::value(c, r));
            let replace = match self.op {
                PickOp::First => !seen[s],
                PickOp::Last => true,
                PickOp::Min => x.is_some() && (!seen[s] || x < v[s]),
                PickOp::Max => x.is_some() && (!seen[s] || x > v[s]),
            };
            if replace {
                let n = x.as_ref().map_or(0, C::kept_bytes);
                delta += n as isize - extra[s] as isize;
                extra[s] = n;
                v[s] = x;
                seen[s] = true;
            }
        }
        Ok(delta)
    }
    fn emit(&self, slots: &[usize]) -> Result<ArrayRef, NodeError> {
        let canon = C::build(slots.iter().map(|&s| {
            if self.seen[s] {
                self.values[s].as_ref()
            } else {
                self.default.as_ref()
            }
        }));
        Ok(cast(&canon, &self.input_type)?)
    }
    fn reset(&mut self, slot: usize) {
        (self.values[slot], self.seen[slot]) = (None, false);
    }
}

/// `count_distinct`: a set of non-null values per slot.
struct Distinct<C: Canonical> {
    column: usize,
    sets: Vec<C::Set>,
}

impl<C: Canonical> Distinct<C> {
    fn new(column: usize) -> Self {
        Self {
            column,
            sets: Vec::new(),
        }
    }
}

impl<C: Canonical> Accumulator for Distinct<C> {
    fn data_type(&self) -> DataType {
        DataType::Int64
    }
    fn resize(&mut self, n: usize) {
        self.sets.resize_with(n, Default::default);
    }
    fn update(
        &mut self,
        batch: &RecordBatch,
        feed: &Feed<'_>,
        extra: &mut [usize],
    ) -> Result<isize, NodeError> {
        let a = read::<C>(batch.column(self.column))?;
        let c = C::array(&a);
        let mut delta = 0;
        for (r, s) in feed.pairs().filter(|&(r, _)| c.is_valid(r)) {
            if let Some(n) = C::insert(&mut self.sets[s], c, r) {
                extra[s] += n;
                delta += n as isize;
            }
        }
        Ok(delta)
    }
    fn emit(&self, slots: &[usize]) -> Result<ArrayRef, NodeError> {
        Ok(Arc::new(Int64Array::from_iter_values(
            slots.iter().map(|&s| C::distinct(&self.sets[s]) as i64),
        )))
    }
    /// The set keeps a small allocation for the slot's next session: a session
    /// window frees and reuses a slot per session, and allocating the set anew
    /// for each one was most of what `count_distinct` cost.
    fn reset(&mut self, slot: usize) {
        C::clear(&mut self.sets[slot]);
    }
}

/// Values a cleared hash set may keep room for; a larger one is freed, so what a
/// reset slot holds stays small next to the per-slot estimate.
const KEPT_CAPACITY: usize = 32;

/// Empties `set`, keeping its table only when it is small.
fn clear_hash_set<T>(set: &mut HashSet<T>) {
    if set.capacity() <= KEPT_CAPACITY {
        set.clear();
    } else {
        *set = HashSet::default();
    }
}

/// `list`: every row's value (nulls included) per slot, given back as a list of
/// the input's type.
struct List<C: Canonical> {
    column: usize,
    input_type: DataType,
    lists: Vec<Vec<Option<C::Value>>>,
}

impl<C: Canonical> List<C> {
    fn new(column: usize, input_type: DataType) -> Self {
        Self {
            column,
            input_type,
            lists: Vec::new(),
        }
    }
}

impl<C: Canonical> Accumulator for List<C> {
    fn data_type(&self) -> DataType {
        DataType::List(Arc::new(Field::new("item", self.input_type.clone(), true)))
    }
    fn resize(&mut self, n: usize) {
        self.lists.resize_with(n, Vec::new);
    }
    fn update(
        &mut self,
        batch: &RecordBatch,
        feed: &Feed<'_>,
        extra: &mut [usize],
    ) -> Result<isize, NodeError> {
        let a = read::<C>(batch.column(self.column))?;
        let c = C::array(&a);
        let mut delta = 0;
        for (r, s) in feed.pairs() {
            let x = c.is_valid(r).then(|| C::value(c, r));
            let n = C::element_bytes(x.as_ref());
            extra[s] += n;
            delta += n as isize;
            self.lists[s].push(x);
        }
        Ok(delta)
    }
    fn emit(&self, slots: &[usize]) -> Result<ArrayRef, NodeError> {
        let canon = C::build_lists(slots.iter().map(|&s| self.lists[s].as_slice()));
        Ok(cast(&canon, &self.data_type())?)
    }
    fn reset(&mut self, slot: usize) {
        self.lists[slot] = Vec::new();
    }
}
