//! `[stage.map]`: per-record feature transforms, several in one stage, applied in
//! order (each sees the previous one's output).
//!
//! ```toml
//! [stage.map]
//! transforms = [
//!   { bucketize = { column = "price", boundaries = [0, 10, 50], output = "price_bucket", null_bucket = -1 } },
//!   { log1p = { column = "amount" } },
//!   { clip = { column = "age", min = 0, max = 100 } },
//!   { standardize = { column = "age", mean = 38.5, std = 12.0 } },
//!   { hash_bucket = { column = "user_id", buckets = 1024, output = "user_bucket" } },
//!   { one_hot = { column = "country", vocabulary = ["us", "fr"], unknown_slot = "other" } },
//!   { fill_null = { column = "clicks", value = 0 } },
//!   { cast = { column = "clicks", to = "float64" } },
//!   { rename = { from = "clicks", to = "n_clicks" } },
//!   { drop = ["amount"] },
//!   { select = ["user_bucket", "price_bucket", "age", "n_clicks"] },
//! ]
//! ```
//!
//! Output types and null rules, fixed so that a model sees the same thing from
//! every pipeline:
//!
//! | transform | output | null in | notes |
//! | --- | --- | --- | --- |
//! | `bucketize` | Int32 | `null_bucket`, default null | bucket = number of boundaries ≤ value; NaN goes to the last bucket |
//! | `log1p` | Float64 | null | values below -1 give NaN |
//! | `clip` | Float64 | null | NaN stays NaN |
//! | `standardize` | Float64 | null | `(v - mean) / std` |
//! | `hash_bucket` | Int32 | null | FNV-1a 64 of the UTF-8 bytes `% buckets`, as `weir_guest::hash::bucket`; non-string columns are cast to strings first |
//! | `one_hot` | Int32 per slot | all zeros | columns `<prefix><value>`, prefix default `<column>_`; a value outside the vocabulary sets `unknown_slot` if declared, else nothing |
//! | `fill_null` | the column's type | `value` | `value` is cast to the column's type (strictly) |
//! | `cast` | `to` | null | `strict` (default true) fails the batch on a value that does not convert; false makes it null |
//!
//! `output` defaults to the input column, which is then replaced in place; a new
//! name is appended (or replaces the column of that name). Numeric transforms cast
//! their input to Float64 with Arrow's `cast` kernel and compute with `unary` over
//! the value buffer, so the null bitmap is carried over without a row loop.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int32Array, RecordBatch, Scalar};
use arrow::compute::kernels::{boolean, cmp, zip::zip};
use arrow::compute::{CastOptions, cast, cast_with_options, is_null};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema};
use serde::{Deserialize, Serialize};

use super::{FNV_OFFSET, ScalarValue, column, fnv1a, nulls_false};
use crate::node::config::{BuildCx, FieldType, OperatorConfig, SpecError};
use crate::node::{Emitter, NodeError, Operator};

/// A map stage's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// The transforms, applied in order. At least one.
    pub transforms: Vec<Transform>,
}

/// One per-record transform (a table with exactly one key, the transform's name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// A number to the index of its bucket among sorted boundaries.
    Bucketize(Bucketize),
    /// `ln(1 + v)`, for heavy-tailed counts and amounts.
    Log1p(Numeric),
    /// Clamp into `[min, max]`.
    Clip(Clip),
    /// `(v - mean) / std`, with statistics computed offline.
    Standardize(Standardize),
    /// A string to one of N buckets by a stable hash.
    HashBucket(HashBucket),
    /// A categorical value to 0/1 columns over a vocabulary.
    OneHot(OneHot),
    /// Replace nulls with a constant.
    FillNull(FillNull),
    /// Change a column's type.
    Cast(Cast),
    /// Rename a column.
    Rename(Rename),
    /// Keep only these columns, in this order.
    Select(Vec<String>),
    /// Remove these columns.
    Drop(Vec<String>),
}

/// `bucketize`: bucket `i` holds values `v` with `boundaries[i-1] <= v < boundaries[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucketize {
    /// The numeric input column.
    pub column: String,
    /// Strictly increasing, finite, at least one. `n` boundaries make `n + 1` buckets.
    pub boundaries: Vec<f64>,
    /// The output column. Default: the input column, replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The bucket a null input gets. Default: none (the output is null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_bucket: Option<i32>,
}

/// A transform of one numeric column with no parameters (`log1p`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Numeric {
    /// The numeric input column.
    pub column: String,
    /// The output column. Default: the input column, replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// `clip`: at least one of `min` and `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clip {
    /// The numeric input column.
    pub column: String,
    /// Lower bound. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Upper bound. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The output column. Default: the input column, replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// `standardize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardize {
    /// The numeric input column.
    pub column: String,
    /// The mean to subtract.
    pub mean: f64,
    /// The standard deviation to divide by; finite and greater than 0.
    pub std: f64,
    /// The output column. Default: the input column, replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// `hash_bucket`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashBucket {
    /// The key column (strings; other types are cast to strings first).
    pub column: String,
    /// How many buckets; from 1 to 2^31 - 1 (the output is Int32, as the
    /// `hash-bucket` stage's).
    pub buckets: NonZeroU32,
    /// The output column. Default: the input column, replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// `one_hot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneHot {
    /// The categorical input column (strings; other types are cast to strings).
    pub column: String,
    /// The values that get a slot each; not empty, no duplicates.
    pub vocabulary: Vec<String>,
    /// Output column names are `prefix` + value. Default: `<column>_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A slot (`prefix` + this) set for values outside the vocabulary. Default:
    /// none (unknown values set no slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_slot: Option<String>,
    /// Remove the input column. Default: false.
    #[serde(default)]
    pub drop_input: bool,
}

/// `fill_null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillNull {
    /// The column.
    pub column: String,
    /// The value for null slots, cast to the column's type.
    pub value: ScalarValue,
}

/// `cast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cast {
    /// The input column.
    pub column: String,
    /// The target type.
    pub to: FieldType,
    /// Fail the batch on a value that does not convert (`"abc"` to int64, an
    /// overflow). Default: true ([`default_strict`]); false turns it into null.
    #[serde(default = "default_strict")]
    pub strict: bool,
    /// The output column. Default: the input column, replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Casts are strict by default: a silent null is a data bug found late.
pub fn default_strict() -> bool {
    true
}

/// `rename`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// The current name.
    pub from: String,
    /// The new name.
    pub to: String,
}

impl Transform {
    fn kind(&self) -> &'static str {
        match self {
            Self::Bucketize(_) => "bucketize",
            Self::Log1p(_) => "log1p",
            Self::Clip(_) => "clip",
            Self::Standardize(_) => "standardize",
            Self::HashBucket(_) => "hash_bucket",
            Self::OneHot(_) => "one_hot",
            Self::FillNull(_) => "fill_null",
            Self::Cast(_) => "cast",
            Self::Rename(_) => "rename",
            Self::Select(_) => "select",
            Self::Drop(_) => "drop",
        }
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        let bad = |field: &str, msg: &str| Err(SpecError::invalid(format!("{key}.{field}"), msg));
        match self {
            Self::Bucketize(b) => {
                if b.boundaries.is_empty() {
                    return bad("boundaries", "is empty; give at least one boundary");
                }
                if let Some(i) = b.boundaries.iter().position(|v| !v.is_finite()) {
                    return bad(&format!("boundaries[{i}]"), "must be a finite number");
                }
                if let Some(i) = b.boundaries.windows(2).position(|w| w[0] >= w[1]) {
                    return Err(SpecError::invalid(
                        format!("{key}.boundaries[{}]", i + 1),
                        format!(
                            "{} is not greater than {}; boundaries must be strictly increasing",
                            b.boundaries[i + 1],
                            b.boundaries[i]
                        ),
                    ));
                }
            }
            Self::Clip(c) => match (c.min, c.max) {
                (None, None) => return bad("", "needs `min`, `max` or both"),
                (Some(lo), Some(hi)) if lo > hi => {
                    return Err(SpecError::invalid(
                        format!("{key}.min"),
                        format!("{lo} is greater than max {hi}"),
                    ));
                }
                (Some(v), _) | (_, Some(v)) if v.is_nan() => return bad("min", "is NaN"),
                _ => {}
            },
            Self::Standardize(s) => {
                if !(s.std.is_finite() && s.std > 0.0) {
                    return Err(SpecError::invalid(
                        format!("{key}.std"),
                        format!("is {}; must be finite and greater than 0", s.std),
                    ));
                }
                if !s.mean.is_finite() {
                    return bad("mean", "must be a finite number");
                }
            }
            Self::OneHot(o) => {
                if o.vocabulary.is_empty() {
                    return bad("vocabulary", "is empty; list the values that get a slot");
                }
                let mut seen = HashSet::new();
                for (i, v) in o.vocabulary.iter().enumerate() {
                    if !seen.insert(v) {
                        return Err(SpecError::invalid(
                            format!("{key}.vocabulary[{i}]"),
                            format!("`{v}` is listed twice"),
                        ));
                    }
                }
                if let Some(u) = &o.unknown_slot
                    && seen.contains(u)
                {
                    return Err(SpecError::invalid(
                        format!("{key}.unknown_slot"),
                        format!("`{u}` is also in the vocabulary"),
                    ));
                }
            }
            Self::HashBucket(h) if i32::try_from(h.buckets.get()).is_err() => {
                return Err(SpecError::invalid(
                    format!("{key}.buckets"),
                    format!(
                        "is {}; at most {} (the output is Int32)",
                        h.buckets,
                        i32::MAX
                    ),
                ));
            }
            Self::Rename(r) if r.from == r.to => return bad("to", "is the same as `from`"),
            Self::Select(c) | Self::Drop(c) if c.is_empty() => {
                return bad("", "is empty; list at least one column");
            }
            _ => {}
        }
        Ok(())
    }
}

/// The running map operator.
pub struct MapOp {
    transforms: Vec<Transform>,
}

impl MapOp {
    /// Checks the configuration (`key` is its key path, e.g. `stage[1].map`).
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key, e.g.
    /// `stage[1].map.transforms[0].bucketize.boundaries[2]`.
    pub fn new(key: &str, spec: &MapSpec) -> Result<Self, SpecError> {
        if spec.transforms.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.transforms"),
                "is empty; list at least one transform",
            ));
        }
        for (i, t) in spec.transforms.iter().enumerate() {
            t.check(&format!("{key}.transforms[{i}].{}", t.kind()))?;
        }
        Ok(Self {
            transforms: spec.transforms.clone(),
        })
    }

    /// Applies every transform to `batch`, in order.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the transform (`transforms[1] (clip)`) when a
    /// column is missing or cannot be converted; [`NodeError::Data`] when a
    /// value does not convert (a strict `cast`).
    pub fn apply(&self, mut batch: RecordBatch) -> Result<RecordBatch, NodeError> {
        for (i, t) in self.transforms.iter().enumerate() {
            let what = format!("transforms[{i}] ({})", t.kind());
            batch = apply(t, batch, &what).map_err(|e| match e {
                NodeError::Config(a) if !a.starts_with(&what) => {
                    NodeError::Config(format!("{what}: {a}"))
                }
                NodeError::Data { message, row } if !message.starts_with(&what) => {
                    NodeError::Data {
                        message: format!("{what}: {message}"),
                        row,
                    }
                }
                other => other,
            })?;
        }
        Ok(batch)
    }
}

impl Operator for MapOp {
    /// The transforms applied to an empty batch of the input's schema: the same
    /// kernels decide the output types, so plan and run cannot disagree.
    fn output_schema(
        &mut self,
        input: &arrow::datatypes::SchemaRef,
    ) -> Result<Option<arrow::datatypes::SchemaRef>, NodeError> {
        let empty = RecordBatch::new_empty(input.clone());
        Ok(Some(self.apply(empty)?.schema()))
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        out.push(self.apply(batch)?);
        Ok(())
    }
}

/// `array` under `name`: replaces the column of that name in place, or appends.
fn put(batch: &RecordBatch, name: &str, array: ArrayRef) -> Result<RecordBatch, NodeError> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let field = Field::new(name, array.data_type().clone(), true);
    match schema.index_of(name) {
        Ok(i) => {
            fields[i] = field;
            columns[i] = array;
        }
        Err(_) => {
            fields.push(field);
            columns.push(array);
        }
    }
    let schema = Schema::new(fields).with_metadata(schema.metadata().clone());
    Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
}

fn as_f64(batch: &RecordBatch, name: &str, what: &str) -> Result<ArrayRef, NodeError> {
    let col = column(batch, name, what)?;
    if !col.data_type().is_numeric() {
        return Err(NodeError::Config(format!(
            "{what}: column `{name}` is {}, not numeric",
            col.data_type()
        )));
    }
    Ok(cast(col, &DataType::Float64)?)
}

fn as_utf8(batch: &RecordBatch, name: &str, what: &str) -> Result<ArrayRef, NodeError> {
    let col = column(batch, name, what)?;
    Ok(match col.data_type() {
        DataType::Utf8 => col.clone(),
        _ => cast(col, &DataType::Utf8)?,
    })
}

fn float_unary(
    batch: &RecordBatch,
    name: &str,
    what: &str,
    f: impl Fn(f64) -> f64,
) -> Result<ArrayRef, NodeError> {
    let x = as_f64(batch, name, what)?;
    Ok(Arc::new(
        x.as_primitive::<Float64Type>().unary::<_, Float64Type>(f),
    ))
}

/// Replaces the null slots of `array` with `value` (a one-element array of the same type).
fn fill(array: &ArrayRef, value: ArrayRef) -> Result<ArrayRef, NodeError> {
    if array.null_count() == 0 {
        return Ok(array.clone());
    }
    Ok(zip(&is_null(array)?, &Scalar::new(value), array)?)
}

/// FNV-1a bucket of every string of `keys`, null for null. Hashing has no Arrow
/// kernel; this is one pass over the string values.
pub(crate) fn hash_buckets(keys: &ArrayRef, buckets: u64) -> Int32Array {
    let keys = keys.as_string::<i32>();
    // The remainder is below `buckets`, which `check` keeps within i32.
    keys.iter()
        .map(|k| k.map(|k| (fnv1a(FNV_OFFSET, k.as_bytes()) % buckets) as i32))
        .collect()
}

fn apply(t: &Transform, batch: RecordBatch, what: &str) -> Result<RecordBatch, NodeError> {
    let out_name =
        |column: &str, output: &Option<String>| output.clone().unwrap_or_else(|| column.to_owned());
    match t {
        Transform::Bucketize(b) => {
            let x = as_f64(&batch, &b.column, what)?;
            let bounds = &b.boundaries;
            let idx: Int32Array = x.as_primitive::<Float64Type>().unary::<_, Int32Type>(|v| {
                bounds.partition_point(|bound| bound.total_cmp(&v).is_le()) as i32
            });
            let mut idx: ArrayRef = Arc::new(idx);
            if let Some(n) = b.null_bucket {
                idx = fill(&idx, Arc::new(Int32Array::from(vec![n])))?;
            }
            put(&batch, &out_name(&b.column, &b.output), idx)
        }
        Transform::Log1p(n) => {
            let y = float_unary(&batch, &n.column, what, f64::ln_1p)?;
            put(&batch, &out_name(&n.column, &n.output), y)
        }
        Transform::Clip(c) => {
            let (lo, hi) = (
                c.min.unwrap_or(f64::NEG_INFINITY),
                c.max.unwrap_or(f64::INFINITY),
            );
            let y = float_unary(&batch, &c.column, what, |v| {
                if v < lo {
                    lo
                } else if v > hi {
                    hi
                } else {
                    v
                }
            })?;
            put(&batch, &out_name(&c.column, &c.output), y)
        }
        Transform::Standardize(s) => {
            let (mean, std) = (s.mean, s.std);
            let y = float_unary(&batch, &s.column, what, |v| (v - mean) / std)?;
            put(&batch, &out_name(&s.column, &s.output), y)
        }
        Transform::HashBucket(h) => {
            let keys = as_utf8(&batch, &h.column, what)?;
            let y = hash_buckets(&keys, u64::from(h.buckets.get()));
            put(&batch, &out_name(&h.column, &h.output), Arc::new(y))
        }
        Transform::OneHot(o) => {
            let keys = as_utf8(&batch, &o.column, what)?;
            let prefix = o.prefix.clone().unwrap_or_else(|| format!("{}_", o.column));
            let mut out = batch;
            let mut known = BooleanArray::from(vec![false; keys.len()]);
            for v in &o.vocabulary {
                let hit = nulls_false(&cmp::eq(
                    &keys,
                    &Scalar::new(arrow::array::StringArray::from(vec![v.as_str()])),
                )?);
                known = boolean::or(&known, &hit)?;
                out = put(&out, &format!("{prefix}{v}"), cast(&hit, &DataType::Int32)?)?;
            }
            if let Some(slot) = &o.unknown_slot {
                let present = BooleanArray::new(
                    keys.nulls().map_or_else(
                        || arrow::buffer::BooleanBuffer::new_set(keys.len()),
                        |n| n.inner().clone(),
                    ),
                    None,
                );
                let unknown = boolean::and_not(&present, &known)?;
                out = put(
                    &out,
                    &format!("{prefix}{slot}"),
                    cast(&unknown, &DataType::Int32)?,
                )?;
            }
            if o.drop_input {
                let i = out.schema().index_of(&o.column)?;
                out.remove_column(i);
            }
            Ok(out)
        }
        Transform::FillNull(f) => {
            let col = column(&batch, &f.column, what)?;
            let value = f
                .value
                .to_array(col.data_type())
                .map_err(|e| NodeError::Config(format!("{what}: {e}")))?;
            let filled = fill(col, value)?;
            put(&batch, &f.column, filled)
        }
        Transform::Cast(c) => {
            let col = column(&batch, &c.column, what)?;
            let options = CastOptions {
                safe: !c.strict,
                ..Default::default()
            };
            if !arrow::compute::can_cast_types(col.data_type(), &c.to.arrow()) {
                return Err(NodeError::Config(format!(
                    "{what}: column `{}` is {}, which cannot be cast to {}",
                    c.column,
                    col.data_type(),
                    c.to.arrow()
                )));
            }
            // The types can be cast: a failure is a value that does not convert.
            let y = cast_with_options(col, &c.to.arrow(), &options).map_err(NodeError::kernel)?;
            put(&batch, &out_name(&c.column, &c.output), y)
        }
        Transform::Rename(r) => {
            let schema = batch.schema();
            let i = schema
                .index_of(&r.from)
                .map_err(|_| column(&batch, &r.from, what).unwrap_err())?;
            if schema.index_of(&r.to).is_ok() {
                return Err(NodeError::Config(format!(
                    "{what}: column `{}` already exists",
                    r.to
                )));
            }
            let mut fields: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[i] = fields[i].clone().with_name(&r.to);
            let schema = Schema::new(fields).with_metadata(schema.metadata().clone());
            Ok(RecordBatch::try_new(
                Arc::new(schema),
                batch.columns().to_vec(),
            )?)
        }
        Transform::Select(cols) => {
            let schema = batch.schema();
            let idx = cols
                .iter()
                .map(|c| {
                    schema
                        .index_of(c)
                        .map_err(|_| column(&batch, c, what).unwrap_err())
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(batch.project(&idx)?)
        }
        Transform::Drop(cols) => {
            let schema = batch.schema();
            for c in cols {
                column(&batch, c, what)?;
            }
            let idx: Vec<usize> = (0..schema.fields().len())
                .filter(|&i| !cols.contains(schema.field(i).name()))
                .collect();
            Ok(batch.project(&idx)?)
        }
    }
}

/// Checked by building: [`MapOp::new`] refuses a bad configuration, naming the key.
impl OperatorConfig for MapSpec {
    /// Each batch is processed on its own: a failed call can be made again on
    /// part of it.
    fn row_local(&self) -> bool {
        true
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        MapOp::new(key, self).map(drop)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(MapOp::new(cx.key, self)?))
    }
}

#[cfg(test)]
mod tests;
