//! Arrow rows as JSON values, for sinks that write JSON (files, model servers).
//!
//! Rules, chosen so a consumer never meets invalid JSON and every choice is
//! explicit in the pipeline file:
//!
//! | value | rendering | option |
//! | --- | --- | --- |
//! | null | `null`, always | — |
//! | NaN, ±infinity | `null` (default), a failed write (`error`), or the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (`string`) | `non_finite` |
//! | timestamp (ms) | integer epoch milliseconds (default, `epoch_ms`) or RFC 3339 UTC text `"2024-05-01T12:00:00.000Z"` (`rfc3339`) | `timestamps` |
//! | float | optionally rounded to a number of decimal places, then its shortest exact form | `float_decimals` |
//!
//! JSON has no spelling for NaN or infinity; `null` keeps a feature vector
//! loadable, `error` refuses to hand a model a value it cannot have been trained
//! on, `string` keeps the information for consumers that parse it back (Python's
//! `float("NaN")`). All JSON is built as `serde_json` values and written by
//! `serde_json`.

use arrow::array::{
    Array, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::BatchError;

/// How values are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonOptions {
    /// Round floats to this many decimal places.
    pub float_decimals: Option<u8>,
    /// What NaN and ±infinity become.
    pub non_finite: NonFinite,
    /// How timestamps are written.
    pub timestamps: Timestamps,
}

/// What NaN and ±infinity become in JSON, which cannot spell them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// `null` (the default).
    #[default]
    Null,
    /// The write fails, naming the column and row.
    Error,
    /// The strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
    String,
}

/// How timestamps are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timestamps {
    /// Integer milliseconds since the Unix epoch (the default).
    #[default]
    EpochMs,
    /// RFC 3339 text in UTC with milliseconds: `"2024-05-01T12:00:00.000Z"`.
    Rfc3339,
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
    /// Narrower or unsigned integers, widened once per batch.
    I64Own(Int64Array),
    /// Timestamps of a finer unit, floored to milliseconds once per batch.
    TsOwn(TimestampMillisecondArray),
    /// Timestamps rendered as text up front by Arrow's formatter, and any
    /// other type (dates, binary as hex, decimals) as Arrow displays it.
    Text(StringArray),
}

fn float(v: f64, options: JsonOptions, column: &str, row: usize) -> Result<Value, BatchError> {
    if !v.is_finite() {
        return match options.non_finite {
            NonFinite::Null => Ok(Value::Null),
            NonFinite::Error => Err(BatchError::NonFinite {
                column: column.to_owned(),
                row,
                value: v,
            }),
            NonFinite::String => Ok(Value::String(
                if v.is_nan() {
                    "NaN"
                } else if v > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                }
                .to_owned(),
            )),
        };
    }
    let v = match options.float_decimals {
        Some(d) => {
            let scale = 10f64.powi(i32::from(d));
            (v * scale).round() / scale
        }
        None => v,
    };
    Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
}

impl Col<'_> {
    fn value(&self, i: usize, options: JsonOptions, column: &str) -> Result<Value, BatchError> {
        let valid = match self {
            Col::Bool(a) => a.is_valid(i),
            Col::I32(a) => a.is_valid(i),
            Col::I64(a) => a.is_valid(i),
            Col::F32(a) => a.is_valid(i),
            Col::F64(a) => a.is_valid(i),
            Col::Str(a) => a.is_valid(i),
            Col::Ts(a) => a.is_valid(i),
            Col::I64Own(a) => a.is_valid(i),
            Col::TsOwn(a) => a.is_valid(i),
            Col::Text(a) => a.is_valid(i),
        };
        if !valid {
            return Ok(Value::Null);
        }
        Ok(match self {
            Col::Bool(a) => Value::Bool(a.value(i)),
            Col::I32(a) => Value::from(a.value(i)),
            Col::I64(a) => Value::from(a.value(i)),
            Col::F32(a) => float(f64::from(a.value(i)), options, column, i)?,
            Col::F64(a) => float(a.value(i), options, column, i)?,
            Col::Str(a) => Value::String(a.value(i).to_owned()),
            Col::Ts(a) => Value::from(a.value(i)),
            Col::I64Own(a) => Value::from(a.value(i)),
            Col::TsOwn(a) => Value::from(a.value(i)),
            Col::Text(a) => Value::String(a.value(i).to_owned()),
        })
    }
}

/// The names asked for (or all the batch's) and a typed view of each.
fn typed_columns<'a>(
    batch: &'a RecordBatch,
    columns: Option<&[String]>,
    options: JsonOptions,
) -> Result<(Vec<String>, Vec<Col<'a>>), BatchError> {
    let schema = batch.schema();
    let names: Vec<String> = match columns {
        Some(c) => c.to_vec(),
        None => schema.fields().iter().map(|f| f.name().clone()).collect(),
    };
    let mut cols = Vec::with_capacity(names.len());
    for name in &names {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| BatchError::MissingColumn(name.clone()))?;
        let col = match array.data_type() {
            DataType::Boolean => Col::Bool(array.as_boolean()),
            DataType::Int32 => Col::I32(array.as_primitive()),
            DataType::Int64 => Col::I64(array.as_primitive()),
            DataType::Float32 => Col::F32(array.as_primitive()),
            DataType::Float64 => Col::F64(array.as_primitive()),
            DataType::Utf8 => Col::Str(array.as_string()),
            DataType::Timestamp(TimeUnit::Millisecond, None)
                if options.timestamps == Timestamps::Rfc3339 =>
            {
                let format =
                    FormatOptions::new().with_timestamp_format(Some("%Y-%m-%dT%H:%M:%S%.3fZ"));
                let f = ArrayFormatter::try_new(array.as_ref(), &format)?;
                Col::Text(
                    (0..array.len())
                        .map(|i| array.is_valid(i).then(|| f.value(i).to_string()))
                        .collect(),
                )
            }
            DataType::Timestamp(TimeUnit::Millisecond, _)
                if options.timestamps == Timestamps::EpochMs =>
            {
                Col::Ts(array.as_primitive())
            }
            DataType::Int8
            | DataType::Int16
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Col::I64Own(
                arrow::compute::cast(array, &DataType::Int64)?
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .clone(),
            ),
            DataType::Timestamp(_, tz) => {
                // Epoch values are UTC whatever the zone's name; formatting
                // a named zone would need chrono-tz, so the name is dropped.
                let zone = if options.timestamps == Timestamps::Rfc3339 {
                    None
                } else {
                    tz.clone()
                };
                let ms =
                    arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Millisecond, zone))?;
                if options.timestamps == Timestamps::Rfc3339 {
                    Col::Text(formatted(&ms, Some("%Y-%m-%dT%H:%M:%S%.3fZ"))?)
                } else {
                    Col::TsOwn(
                        ms.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                            .clone(),
                    )
                }
            }
            DataType::Struct(_) | DataType::List(_) | DataType::Map(..) | DataType::Union(..) => {
                return Err(BatchError::UnsupportedType {
                    column: name.clone(),
                    data_type: array.data_type().clone(),
                });
            }
            _ => Col::Text(formatted(array, None)?),
        };
        cols.push(col);
    }
    Ok((names, cols))
}

/// `array` as text, each value as Arrow's formatter shows it (`timestamp`: a
/// chrono format for timestamps); nulls stay null.
fn formatted(array: &dyn Array, timestamp: Option<&str>) -> Result<StringArray, BatchError> {
    let format = FormatOptions::new().with_timestamp_format(timestamp);
    let f = ArrayFormatter::try_new(array, &format)?;
    Ok((0..array.len())
        .map(|i| array.is_valid(i).then(|| f.value(i).to_string()))
        .collect())
}

/// Each row of `batch` as a JSON object, keys in `columns` order (or the batch's).
///
/// # Errors
/// [`BatchError::UnsupportedType`] for a column JSON rendering does not cover,
/// [`BatchError::MissingColumn`] for a `columns` entry the batch lacks,
/// [`BatchError::NonFinite`] for NaN or infinity under [`NonFinite::Error`].
pub fn rows_as_objects(
    batch: &RecordBatch,
    columns: Option<&[String]>,
    options: JsonOptions,
) -> Result<Vec<Map<String, Value>>, BatchError> {
    let (names, cols) = typed_columns(batch, columns, options)?;
    (0..batch.num_rows())
        .map(|i| {
            names
                .iter()
                .zip(&cols)
                .map(|(n, c)| Ok((n.clone(), c.value(i, options, n)?)))
                .collect()
        })
        .collect()
}

/// Appends each row of `batch` to `out` as one JSON object and a newline, keys in
/// `columns` order (or the batch's): the same text as serialising
/// [`rows_as_objects`] row by row, written straight from the columns so a file
/// sink builds no map, and no `String`, per row.
///
/// # Errors
/// As [`rows_as_objects`]; on error `out` may hold part of the batch.
pub fn write_object_lines(
    batch: &RecordBatch,
    columns: Option<&[String]>,
    options: JsonOptions,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let (names, cols) = typed_columns(batch, columns, options)?;
    let keys: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let quoted = Value::String(n.clone()).to_string();
            format!("{}{quoted}:", if k == 0 { "{" } else { "," })
        })
        .collect();
    for i in 0..batch.num_rows() {
        for ((key, name), col) in keys.iter().zip(&names).zip(&cols) {
            out.extend_from_slice(key.as_bytes());
            let text = match col {
                Col::Str(a) if a.is_valid(i) => Some(a.value(i)),
                Col::Text(a) if a.is_valid(i) => Some(a.value(i)),
                _ => None,
            };
            // Writing into a Vec cannot fail.
            let _ = match text {
                Some(t) => serde_json::to_writer(&mut *out, t),
                None => serde_json::to_writer(&mut *out, &col.value(i, options, name)?),
            };
        }
        if names.is_empty() {
            out.push(b'{');
        }
        out.extend_from_slice(b"}\n");
    }
    Ok(())
}

/// The column names and each row of `batch` as a JSON array in that order: the
/// fixed-order feature vector a model reads.
///
/// # Errors
/// As [`rows_as_objects`].
pub fn rows_as_arrays(
    batch: &RecordBatch,
    columns: Option<&[String]>,
    options: JsonOptions,
) -> Result<(Vec<String>, Vec<Vec<Value>>), BatchError> {
    let (names, cols) = typed_columns(batch, columns, options)?;
    let rows = (0..batch.num_rows())
        .map(|i| {
            names
                .iter()
                .zip(&cols)
                .map(|(n, c)| c.value(i, options, n))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    Ok((names, rows))
}

/// Each column of `batch` (or of `columns`, in that order) as its name, its
/// Arrow type and its values: the column-major form of tensor requests.
///
/// # Errors
/// As [`rows_as_objects`].
pub fn columns_as_values(
    batch: &RecordBatch,
    columns: Option<&[String]>,
    options: JsonOptions,
) -> Result<Vec<(String, DataType, Vec<Value>)>, BatchError> {
    let (names, cols) = typed_columns(batch, columns, options)?;
    names
        .into_iter()
        .zip(cols)
        .map(|(n, c)| {
            let data_type = batch
                .column_by_name(&n)
                .expect("found above")
                .data_type()
                .clone();
            let values = (0..batch.num_rows())
                .map(|i| c.value(i, options, &n))
                .collect::<Result<_, _>>()?;
            Ok((n, data_type, values))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "x",
                Arc::new(Float64Array::from(vec![
                    Some(1.25),
                    Some(f64::NAN),
                    Some(f64::INFINITY),
                    Some(f64::NEG_INFINITY),
                    None,
                ])) as _,
            ),
            (
                "t",
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(0),
                    Some(1_714_564_800_123),
                    None,
                    Some(-1),
                    Some(86_400_000),
                ])) as _,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn defaults_render_non_finite_as_null_and_timestamps_as_epoch_ms() {
        let (names, rows) = rows_as_arrays(&batch(), None, JsonOptions::default()).unwrap();
        assert_eq!(names, ["x", "t"]);
        assert_eq!(
            json!(rows),
            json!([
                [1.25, 0],
                [null, 1_714_564_800_123i64],
                [null, null],
                [null, -1],
                [null, 86_400_000]
            ])
        );
    }

    #[test]
    fn narrow_integers_finer_timestamps_dates_and_bytes_are_written_too() {
        use arrow::array::{BinaryArray, Date32Array, Int16Array, TimestampMicrosecondArray};
        let b = RecordBatch::try_from_iter([
            (
                "i",
                Arc::new(Int16Array::from(vec![Some(-2), None])) as arrow::array::ArrayRef,
            ),
            (
                "at",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_704_067_200_123_456), None])
                        .with_timezone("UTC"),
                ) as _,
            ),
            (
                "d",
                Arc::new(Date32Array::from(vec![Some(19_782), None])) as _,
            ),
            (
                "b",
                Arc::new(BinaryArray::from(vec![Some(&[0u8, 255][..]), None])) as _,
            ),
        ])
        .unwrap();
        let (_, rows) = rows_as_arrays(&b, None, JsonOptions::default()).unwrap();
        assert_eq!(
            json!(rows),
            json!([
                [-2, 1_704_067_200_123i64, "2024-02-29", "00ff"],
                [null, null, null, null]
            ])
        );
        let rfc = JsonOptions {
            timestamps: Timestamps::Rfc3339,
            ..JsonOptions::default()
        };
        let (_, rows) = rows_as_arrays(&b, Some(&["at".to_owned()]), rfc).unwrap();
        assert_eq!(json!(rows), json!([["2024-01-01T00:00:00.123Z"], [null]]));
    }

    #[test]
    fn strings_and_rfc3339_on_request() {
        let options = JsonOptions {
            non_finite: NonFinite::String,
            timestamps: Timestamps::Rfc3339,
            ..Default::default()
        };
        let rows = rows_as_objects(&batch(), None, options).unwrap();
        assert_eq!(
            json!(rows),
            json!([
                {"x": 1.25, "t": "1970-01-01T00:00:00.000Z"},
                {"x": "NaN", "t": "2024-05-01T12:00:00.123Z"},
                {"x": "Infinity", "t": null},
                {"x": "-Infinity", "t": "1969-12-31T23:59:59.999Z"},
                {"x": null, "t": "1970-01-02T00:00:00.000Z"},
            ])
        );
    }

    #[test]
    fn error_on_request_names_column_and_row() {
        let options = JsonOptions {
            non_finite: NonFinite::Error,
            ..Default::default()
        };
        let e = rows_as_objects(&batch(), None, options).unwrap_err();
        assert_eq!(
            e.to_string(),
            "column `x` row 1 is NaN, which JSON cannot represent (non_finite = \"error\")"
        );
        let cols =
            columns_as_values(&batch().slice(0, 1), Some(&["t".to_owned()]), options).unwrap();
        assert_eq!(
            cols,
            [(
                "t".to_owned(),
                batch().schema().field(1).data_type().clone(),
                vec![json!(0)]
            )]
        );
    }
}
