//! Arrow rows as JSON values, for sinks that write JSON.
//!
//! Rules, chosen so a consumer never meets invalid JSON: nulls are `null`; NaN and
//! ±infinity are `null` (JSON has no spelling for them); timestamps are integer
//! epoch milliseconds; floats are optionally rounded to a number of decimal places
//! and then written in their shortest exact form.

use arrow::array::{
    Array, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use serde_json::{Map, Number, Value};

use super::BatchError;

/// How values are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonOptions {
    /// Round floats to this many decimal places.
    pub float_decimals: Option<u8>,
}

/// A typed view of one column, made once per batch so rows need no downcasts.
enum Col<'a> {
    Bool(&'a BooleanArray),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Str(&'a StringArray),
    Ts(&'a TimestampMillisecondArray),
}

fn float(v: f64, options: JsonOptions) -> Value {
    let v = match options.float_decimals {
        Some(d) => {
            let scale = 10f64.powi(i32::from(d));
            (v * scale).round() / scale
        }
        None => v,
    };
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

impl Col<'_> {
    fn value(&self, i: usize, options: JsonOptions) -> Value {
        let valid = match self {
            Col::Bool(a) => a.is_valid(i),
            Col::I32(a) => a.is_valid(i),
            Col::I64(a) => a.is_valid(i),
            Col::F32(a) => a.is_valid(i),
            Col::F64(a) => a.is_valid(i),
            Col::Str(a) => a.is_valid(i),
            Col::Ts(a) => a.is_valid(i),
        };
        if !valid {
            return Value::Null;
        }
        match self {
            Col::Bool(a) => Value::Bool(a.value(i)),
            Col::I32(a) => Value::from(a.value(i)),
            Col::I64(a) => Value::from(a.value(i)),
            Col::F32(a) => float(f64::from(a.value(i)), options),
            Col::F64(a) => float(a.value(i), options),
            Col::Str(a) => Value::String(a.value(i).to_owned()),
            Col::Ts(a) => Value::from(a.value(i)),
        }
    }
}

/// Each row of `batch` as a JSON object, keys in `columns` order (or the batch's).
///
/// # Errors
/// [`BatchError::UnsupportedType`] for a column JSON rendering does not cover, or a
/// `columns` entry the batch lacks (reported as a length error naming it).
pub fn rows_as_objects(
    batch: &RecordBatch,
    columns: Option<&[String]>,
    options: JsonOptions,
) -> Result<Vec<Map<String, Value>>, BatchError> {
    let schema = batch.schema();
    let names: Vec<String> = match columns {
        Some(c) => c.to_vec(),
        None => schema.fields().iter().map(|f| f.name().clone()).collect(),
    };
    let mut cols = Vec::with_capacity(names.len());
    for name in &names {
        let array = batch.column_by_name(name).ok_or_else(|| BatchError::MissingColumn(name.clone()))?;
        let col = match array.data_type() {
            DataType::Boolean => Col::Bool(array.as_boolean()),
            DataType::Int32 => Col::I32(array.as_primitive()),
            DataType::Int64 => Col::I64(array.as_primitive()),
            DataType::Float32 => Col::F32(array.as_primitive()),
            DataType::Float64 => Col::F64(array.as_primitive()),
            DataType::Utf8 => Col::Str(array.as_string()),
            DataType::Timestamp(TimeUnit::Millisecond, _) => Col::Ts(array.as_primitive()),
            other => {
                return Err(BatchError::UnsupportedType { column: name.clone(), data_type: other.clone() });
            }
        };
        cols.push(col);
    }
    Ok((0..batch.num_rows())
        .map(|i| names.iter().zip(&cols).map(|(n, c)| (n.clone(), c.value(i, options))).collect())
        .collect())
}
