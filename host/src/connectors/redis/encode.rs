//! How an Arrow value becomes a Redis hash field, and back.
//!
//! Every value is written as bytes a model server can parse without weir:
//!
//! | Arrow type | stored as | type name in the `{prefix}` schema hash |
//! | --- | --- | --- |
//! | Boolean | `true` / `false` | `bool` |
//! | Int8 … Int64, UInt8 … UInt64 | decimal (`-42`, `18446744073709551615`) | `int` / `uint` |
//! | Float32, Float64 | shortest text that parses back to the same value (`0.1`, `1.0`, `1e-7`); `NaN`, `Infinity`, `-Infinity` | `float` |
//! | Utf8, LargeUtf8, Utf8View | the string as is | `string` |
//! | Binary, LargeBinary, BinaryView, FixedSizeBinary | the bytes as is | `binary` |
//! | Timestamp (any unit, any zone) | RFC 3339 in UTC with the unit's digits: `2024-01-01T00:00:00Z` (s), `.123Z` (ms), `.123456Z` (µs), `.123456789Z` (ns) | `timestamp` |
//! | Date32, Date64 | `YYYY-MM-DD` | `date` |
//! | Decimal32 … Decimal256 | decimal text with the column's scale (`12.30`) | `decimal` |
//! | List, LargeList, FixedSizeList, Struct, Map | JSON text (nested floats as JSON numbers, non-finite ones `null`) | `json` |
//! | Dictionary | as its value type | as its value type |
//!
//! A null is not stored: the field is removed from the hash (`HDEL`), so a
//! value of an older vector never survives next to a newer one.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Date64Array, Float32Array, Float64Array,
    PrimitiveArray,
};
use arrow::datatypes::{
    DataType, FieldRef, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::json::writer::{EncoderOptions, NullableEncoder, make_encoder};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use std::fmt::Write as _;

use crate::node::NodeError;

/// The type name a column's values are stored under, or `None` for a type the
/// sink cannot store.
pub fn type_name(t: &DataType) -> Option<&'static str> {
    Some(match t {
        DataType::Boolean => "bool",
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "int",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "uint",
        DataType::Float32 | DataType::Float64 => "float",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "binary",
        DataType::Timestamp(..) => "timestamp",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => "decimal",
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..) => "json",
        DataType::Dictionary(_, v) => return type_name(v),
        _ => return None,
    })
}

/// One column, ready to write its values as field bytes.
pub(crate) struct Column<'a> {
    array: &'a dyn Array,
    kind: Kind<'a>,
}

enum Kind<'a> {
    Bool(&'a BooleanArray),
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Str(&'a arrow::array::StringArray),
    LargeStr(&'a arrow::array::LargeStringArray),
    StrView(&'a arrow::array::StringViewArray),
    Bin(&'a arrow::array::BinaryArray),
    LargeBin(&'a arrow::array::LargeBinaryArray),
    BinView(&'a arrow::array::BinaryViewArray),
    FixedBin(&'a arrow::array::FixedSizeBinaryArray),
    /// Epoch values and the number of fraction digits of the unit.
    Ts(TsValues<'a>, u8),
    Date32(&'a Date32Array),
    Date64(&'a Date64Array),
    Display(ArrayFormatter<'a>),
    Json(std::cell::RefCell<NullableEncoder<'a>>),
}

enum TsValues<'a> {
    S(&'a PrimitiveArray<TimestampSecondType>),
    Ms(&'a PrimitiveArray<TimestampMillisecondType>),
    Us(&'a PrimitiveArray<TimestampMicrosecondType>),
    Ns(&'a PrimitiveArray<TimestampNanosecondType>),
}

/// Casts what [`Column::new`] cannot read directly (dictionaries) to a type it
/// can; other arrays are returned as they are.
pub(crate) fn normalize(array: &ArrayRef) -> Result<ArrayRef, NodeError> {
    match array.data_type() {
        DataType::Dictionary(_, v) => Ok(arrow::compute::cast(array, v)?),
        _ => Ok(array.clone()),
    }
}

/// The JSON encoder options of nested values: nulls inside a list or struct are
/// kept (`[1, null]`), since their position matters.
pub(crate) fn json_options() -> EncoderOptions {
    EncoderOptions::default().with_explicit_nulls(true)
}

impl<'a> Column<'a> {
    /// Prepares `array` (already [`normalize`]d), named `field`.
    ///
    /// # Errors
    /// [`NodeError::Config`] for a type the sink cannot store.
    pub(crate) fn new(
        field: &'a FieldRef,
        array: &'a dyn Array,
        json: &'a EncoderOptions,
        display: &'a FormatOptions<'a>,
    ) -> Result<Self, NodeError> {
        let unsupported = || {
            NodeError::config(format!(
                "column `{}` is {}, which the Redis sink cannot store (see the encoding table in docs/redis.md)",
                field.name(),
                array.data_type()
            ))
        };
        let kind = match array.data_type() {
            DataType::Boolean => Kind::Bool(array.as_boolean()),
            DataType::Int8 => Kind::I8(array.as_primitive()),
            DataType::Int16 => Kind::I16(array.as_primitive()),
            DataType::Int32 => Kind::I32(array.as_primitive()),
            DataType::Int64 => Kind::I64(array.as_primitive()),
            DataType::UInt8 => Kind::U8(array.as_primitive()),
            DataType::UInt16 => Kind::U16(array.as_primitive()),
            DataType::UInt32 => Kind::U32(array.as_primitive()),
            DataType::UInt64 => Kind::U64(array.as_primitive()),
            DataType::Float32 => Kind::F32(array.as_primitive()),
            DataType::Float64 => Kind::F64(array.as_primitive()),
            DataType::Utf8 => Kind::Str(array.as_string()),
            DataType::LargeUtf8 => Kind::LargeStr(array.as_string()),
            DataType::Utf8View => Kind::StrView(array.as_string_view()),
            DataType::Binary => Kind::Bin(array.as_binary()),
            DataType::LargeBinary => Kind::LargeBin(array.as_binary()),
            DataType::BinaryView => Kind::BinView(array.as_binary_view()),
            DataType::FixedSizeBinary(_) => Kind::FixedBin(array.as_fixed_size_binary()),
            DataType::Timestamp(unit, _) => match unit {
                TimeUnit::Second => Kind::Ts(TsValues::S(array.as_primitive()), 0),
                TimeUnit::Millisecond => Kind::Ts(TsValues::Ms(array.as_primitive()), 3),
                TimeUnit::Microsecond => Kind::Ts(TsValues::Us(array.as_primitive()), 6),
                TimeUnit::Nanosecond => Kind::Ts(TsValues::Ns(array.as_primitive()), 9),
            },
            DataType::Date32 => Kind::Date32(array.as_primitive()),
            DataType::Date64 => Kind::Date64(array.as_primitive()),
            DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => {
                Kind::Display(ArrayFormatter::try_new(array, display).map_err(|_| unsupported())?)
            }
            t if type_name(t) == Some("json") => Kind::Json(std::cell::RefCell::new(
                make_encoder(field, array, json).map_err(|_| unsupported())?,
            )),
            _ => return Err(unsupported()),
        };
        Ok(Self { array, kind })
    }

    /// Whether row `i` is null (then nothing is written for it).
    #[inline]
    pub(crate) fn is_null(&self, i: usize) -> bool {
        self.array.is_null(i)
    }

    /// Appends the bytes of row `i` (not null) to `out`.
    pub(crate) fn write(&self, i: usize, out: &mut Vec<u8>) {
        match &self.kind {
            Kind::Bool(a) => out.extend_from_slice(if a.value(i) { b"true" } else { b"false" }),
            Kind::I8(a) => int(out, a.value(i)),
            Kind::I16(a) => int(out, a.value(i)),
            Kind::I32(a) => int(out, a.value(i)),
            Kind::I64(a) => int(out, a.value(i)),
            Kind::U8(a) => int(out, a.value(i)),
            Kind::U16(a) => int(out, a.value(i)),
            Kind::U32(a) => int(out, a.value(i)),
            Kind::U64(a) => int(out, a.value(i)),
            Kind::F32(a) => float(out, a.value(i)),
            Kind::F64(a) => float(out, a.value(i)),
            Kind::Str(a) => out.extend_from_slice(a.value(i).as_bytes()),
            Kind::LargeStr(a) => out.extend_from_slice(a.value(i).as_bytes()),
            Kind::StrView(a) => out.extend_from_slice(a.value(i).as_bytes()),
            Kind::Bin(a) => out.extend_from_slice(a.value(i)),
            Kind::LargeBin(a) => out.extend_from_slice(a.value(i)),
            Kind::BinView(a) => out.extend_from_slice(a.value(i)),
            Kind::FixedBin(a) => out.extend_from_slice(a.value(i)),
            Kind::Ts(v, digits) => {
                let (secs, nanos) = match v {
                    TsValues::S(a) => (a.value(i), 0),
                    TsValues::Ms(a) => split(a.value(i), 1_000),
                    TsValues::Us(a) => split(a.value(i), 1_000_000),
                    TsValues::Ns(a) => split(a.value(i), 1_000_000_000),
                };
                rfc3339(out, secs, nanos, *digits);
            }
            Kind::Date32(a) => date(out, i64::from(a.value(i))),
            Kind::Date64(a) => date(out, a.value(i).div_euclid(86_400_000)),
            Kind::Display(f) => {
                let mut s = String::new();
                // Writing to a String cannot fail; a formatter error leaves it empty.
                let _ = write!(s, "{}", f.value(i));
                out.extend_from_slice(s.as_bytes());
            }
            Kind::Json(e) => e.borrow_mut().encode(i, out),
        }
    }
}

fn int(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    // `io::Write` on a Vec cannot fail.
    let _ = std::io::Write::write_fmt(out, format_args!("{v}"));
}

/// Shortest round-trip text: Rust's `{:?}` of a float is the shortest string that
/// parses back to the same value, in exponent form when very large or small.
fn float<F: Into<f64> + std::fmt::Debug + Copy>(out: &mut Vec<u8>, v: F) {
    let f: f64 = v.into();
    if f.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        let _ = std::io::Write::write_fmt(out, format_args!("{v:?}"));
    }
}

/// Seconds and nanoseconds of an epoch value in `per_sec` units per second.
fn split(v: i64, per_sec: i64) -> (i64, u32) {
    let nanos = v.rem_euclid(per_sec) * (1_000_000_000 / per_sec);
    (v.div_euclid(per_sec), nanos as u32)
}

fn date(out: &mut Vec<u8>, days: i64) {
    let (y, m, d) = crate::units::civil(days);
    let _ = std::io::Write::write_fmt(out, format_args!("{y:04}-{m:02}-{d:02}"));
}

fn rfc3339(out: &mut Vec<u8>, secs: i64, nanos: u32, digits: u8) {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    date(out, days);
    let _ = std::io::Write::write_fmt(
        out,
        format_args!("T{:02}:{:02}:{:02}", sod / 3600, sod / 60 % 60, sod % 60),
    );
    if digits > 0 {
        let frac = nanos / 10u32.pow(9 - u32::from(digits));
        let _ = std::io::Write::write_fmt(
            out,
            format_args!(".{frac:0width$}", width = usize::from(digits)),
        );
    }
    out.push(b'Z');
}

/// The event time of row `i` in epoch milliseconds, from a timestamp (any unit;
/// finer units are floored to the millisecond) or an Int64 of milliseconds.
pub(crate) struct EventTime<'a>(EventKind<'a>);

enum EventKind<'a> {
    Ms(&'a PrimitiveArray<Int64Type>),
    Ts(TsValues<'a>),
}

impl<'a> EventTime<'a> {
    /// # Errors
    /// [`NodeError::Config`] for a column that is neither a timestamp nor Int64.
    pub(crate) fn new(name: &str, array: &'a dyn Array) -> Result<Self, NodeError> {
        Ok(Self(match array.data_type() {
            DataType::Int64 => EventKind::Ms(array.as_primitive()),
            DataType::Timestamp(TimeUnit::Second, _) => {
                EventKind::Ts(TsValues::S(array.as_primitive()))
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                EventKind::Ts(TsValues::Ms(array.as_primitive()))
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                EventKind::Ts(TsValues::Us(array.as_primitive()))
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                EventKind::Ts(TsValues::Ns(array.as_primitive()))
            }
            t => {
                return Err(NodeError::config(format!(
                    "event-time column `{name}` is {t}; it must be a timestamp or an Int64 of epoch milliseconds"
                )));
            }
        }))
    }

    /// Milliseconds of row `i`, `None` when null.
    pub(crate) fn millis(&self, i: usize) -> Option<i64> {
        let arr: &dyn Array = match &self.0 {
            EventKind::Ms(a) => *a,
            EventKind::Ts(TsValues::S(a)) => *a,
            EventKind::Ts(TsValues::Ms(a)) => *a,
            EventKind::Ts(TsValues::Us(a)) => *a,
            EventKind::Ts(TsValues::Ns(a)) => *a,
        };
        if arr.is_null(i) {
            return None;
        }
        Some(match &self.0 {
            EventKind::Ms(a) => a.value(i),
            EventKind::Ts(TsValues::S(a)) => a.value(i).saturating_mul(1000),
            EventKind::Ts(TsValues::Ms(a)) => a.value(i),
            EventKind::Ts(TsValues::Us(a)) => a.value(i).div_euclid(1000),
            EventKind::Ts(TsValues::Ns(a)) => a.value(i).div_euclid(1_000_000),
        })
    }
}

/// The entity of row `i` as the key's suffix: a string as is, an integer in
/// decimal.
pub(crate) struct Entity<'a>(Column<'a>);

impl<'a> Entity<'a> {
    /// # Errors
    /// [`NodeError::Config`] for a column that is neither a string nor an integer.
    pub(crate) fn new(
        field: &'a FieldRef,
        array: &'a dyn Array,
        json: &'a EncoderOptions,
        display: &'a FormatOptions<'a>,
    ) -> Result<Self, NodeError> {
        match type_name(array.data_type()) {
            Some("string" | "int" | "uint") => Ok(Self(Column::new(field, array, json, display)?)),
            _ => Err(NodeError::config(format!(
                "entity column `{}` is {}; it must be a string or an integer column",
                field.name(),
                array.data_type()
            ))),
        }
    }

    /// Whether row `i` has no entity.
    pub(crate) fn is_null(&self, i: usize) -> bool {
        self.0.is_null(i)
    }

    /// Appends the entity of row `i` to `out`.
    pub(crate) fn write(&self, i: usize, out: &mut Vec<u8>) {
        self.0.write(i, out);
    }
}

/// A stored field's bytes as the JSON value model serving reads, by the type
/// name the schema hash gives it (`None`: a string).
pub fn decode(type_name: Option<&str>, bytes: &[u8]) -> serde_json::Value {
    use serde_json::Value;
    let text = String::from_utf8_lossy(bytes);
    let parsed = match type_name {
        Some("bool") => match &*text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        Some("int") => text.parse::<i64>().ok().map(Value::from),
        Some("uint") => text.parse::<u64>().ok().map(Value::from),
        // Non-finite floats have no JSON number: they stay strings.
        Some("float") => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        Some("json") => serde_json::from_str(&text).ok(),
        Some("binary") => Some(Value::String(hex::encode(bytes))),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_are_shortest_round_trip_text() {
        for (v, s) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-2.5e-8, "-2.5e-8"),
            (1e300, "1e300"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            let t = text(|o| float(o, v));
            assert_eq!(t, s);
            if v.is_finite() {
                assert_eq!(t.parse::<f64>().unwrap(), v);
            }
        }
        assert_eq!(text(|o| float(o, 0.1f32)), "0.1");
        assert_eq!(text(|o| float(o, 16_777_217f32)), "16777216.0");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_the_units_digits() {
        assert_eq!(text(|o| rfc3339(o, 0, 0, 0)), "1970-01-01T00:00:00Z");
        let (s, n) = split(1_704_067_200_123, 1000);
        assert_eq!(text(|o| rfc3339(o, s, n, 3)), "2024-01-01T00:00:00.123Z");
        let (s, n) = split(-1, 1_000_000);
        assert_eq!(text(|o| rfc3339(o, s, n, 6)), "1969-12-31T23:59:59.999999Z");
        let (s, n) = split(951_782_400_000_000_007, 1_000_000_000);
        assert_eq!(
            text(|o| rfc3339(o, s, n, 9)),
            "2000-02-29T00:00:00.000000007Z"
        );
        assert_eq!(text(|o| date(o, 19_723)), "2024-01-01");
    }

    #[test]
    fn decode_types_values_back() {
        use serde_json::json;
        assert_eq!(decode(Some("int"), b"-42"), json!(-42));
        assert_eq!(
            decode(Some("uint"), b"18446744073709551615"),
            json!(u64::MAX)
        );
        assert_eq!(decode(Some("float"), b"0.1"), json!(0.1));
        assert_eq!(decode(Some("float"), b"NaN"), json!("NaN"));
        assert_eq!(decode(Some("bool"), b"true"), json!(true));
        assert_eq!(decode(Some("json"), b"[1,null]"), json!([1, null]));
        assert_eq!(decode(Some("binary"), b"\x00\xff"), json!("00ff"));
        assert_eq!(decode(None, b"x"), json!("x"));
    }
}
