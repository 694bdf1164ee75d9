//! The record rules every source of declared-schema records shares: a value as
//! it was read ([`Cell`]), the schema's rules for it ([`judge`]), and the typed
//! Arrow column it is appended to ([`ColumnBuilder`]).
//!
//! ```text
//!   JSON line / CSV row / JetStream message ─► Cell per field ─► judge ─┬─► ColumnBuilder ─► batch
//!                                                                       └─► dead letter (reason, detail)
//! ```
//!
//! Kept in one place so a record breaks the same rule with the same reason code
//! whichever source read it, and an operator that checks records against a
//! schema (validation) judges them as the sources do. A new field type adds a
//! rule to [`judge`] and a variant to [`ColumnBuilder`].

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::node::config::{FieldSpec, FieldType};

/// A value as it appeared in the JSON, before the schema judges it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// The record has no such key (or the CSV row no such column).
    Missing,
    /// An explicit `null` (an empty CSV field).
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    BigInt(u64),
    /// A number with a fraction or an exponent.
    Float(f64),
    /// A string, borrowed from the input when it needed no unescaping.
    Str(Cow<'a, str>),
    /// An array or an object: no declared type takes one.
    Nested,
}

impl Cell<'_> {
    /// What the value was, for a dead letter's detail ("a string").
    pub fn json_type(&self) -> &'static str {
        match self {
            Cell::Missing => "nothing",
            Cell::Null => "null",
            Cell::Bool(_) => "a boolean",
            Cell::Int(_) | Cell::BigInt(_) => "an integer",
            Cell::Float(_) => "a float",
            Cell::Str(_) => "a string",
            Cell::Nested => "an array or object",
        }
    }

    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::BigInt(u) => Some(*u as f64),
            Cell::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// Why a cell breaks its field's rules: (reason code, detail), the reason code
/// `{field}:missing`, `{field}:type` or `{field}:range`; `None` when it keeps them.
pub fn judge(field: &FieldSpec, cell: &Cell<'_>) -> Option<(String, String)> {
    let name = &field.name;
    match cell {
        Cell::Missing | Cell::Null => {
            return field.required.then(|| {
                let what = if *cell == Cell::Missing {
                    "missing"
                } else {
                    "null"
                };
                (
                    format!("{name}:missing"),
                    format!("required field `{name}` is {what}"),
                )
            });
        }
        _ => {}
    }
    let type_ok = match field.data_type {
        FieldType::Boolean => matches!(cell, Cell::Bool(_)),
        FieldType::Int32 => matches!(cell, Cell::Int(v) if i32::try_from(*v).is_ok()),
        FieldType::Int64 | FieldType::TimestampMs => matches!(cell, Cell::Int(_)),
        FieldType::Float32 | FieldType::Float64 => cell.as_f64().is_some(),
        FieldType::Utf8 => matches!(cell, Cell::Str(_)),
    };
    if !type_ok {
        let wanted = match field.data_type {
            FieldType::Boolean => "a boolean",
            FieldType::Int32 => "a 32-bit integer",
            FieldType::Int64 | FieldType::TimestampMs => "an integer",
            FieldType::Float32 | FieldType::Float64 => "a number",
            FieldType::Utf8 => "a string",
        };
        let found = match cell {
            Cell::Int(_) if field.data_type == FieldType::Int32 => "an integer out of range",
            Cell::BigInt(_) => "an integer out of range",
            other => other.json_type(),
        };
        return Some((
            format!("{name}:type"),
            format!("`{name}` must be {wanted}, found {found}"),
        ));
    }
    if let Some(v) = cell.as_f64() {
        if let Some(min) = field.min.filter(|m| v < *m) {
            return Some((
                format!("{name}:range"),
                format!("`{name}` = {v} is below the minimum {min}"),
            ));
        }
        if let Some(max) = field.max.filter(|m| v > *m) {
            return Some((
                format!("{name}:range"),
                format!("`{name}` = {v} is above the maximum {max}"),
            ));
        }
    }
    None
}

/// A builder for one column of a declared type.
pub enum ColumnBuilder {
    /// A `boolean` column.
    Boolean(BooleanBuilder),
    /// A `int32` column.
    Int32(Int32Builder),
    /// A `int64` column.
    Int64(Int64Builder),
    /// A `float32` column.
    Float32(Float32Builder),
    /// A `float64` column.
    Float64(Float64Builder),
    /// A `utf8` column.
    Utf8(StringBuilder),
    /// A `timestamp_ms` column.
    TimestampMs(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    /// An empty builder for a column of type `t`, with room for `rows` values.
    pub fn new(t: FieldType, rows: usize) -> Self {
        match t {
            FieldType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(rows)),
            FieldType::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            FieldType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            FieldType::Float32 => Self::Float32(Float32Builder::with_capacity(rows)),
            FieldType::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            FieldType::Utf8 => Self::Utf8(StringBuilder::with_capacity(rows, rows * 8)),
            FieldType::TimestampMs => {
                Self::TimestampMs(TimestampMillisecondBuilder::with_capacity(rows))
            }
        }
    }

    /// Appends a cell already judged valid for this column.
    pub fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Self::Boolean(b), Cell::Bool(v)) => b.append_value(*v),
            (Self::Int32(b), Cell::Int(v)) => b.append_value(*v as i32),
            (Self::Int64(b), Cell::Int(v)) => b.append_value(*v),
            (Self::TimestampMs(b), Cell::Int(v)) => b.append_value(*v),
            (Self::Float32(b), c) if c.as_f64().is_some() => {
                b.append_value(c.as_f64().unwrap_or_default() as f32)
            }
            (Self::Float64(b), c) if c.as_f64().is_some() => {
                b.append_value(c.as_f64().unwrap_or_default())
            }
            (Self::Utf8(b), Cell::Str(s)) => b.append_value(s),
            (this, _) => this.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::TimestampMs(b) => b.append_null(),
        }
    }

    /// The column built so far; the builder starts again empty.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::TimestampMs(b) => Arc::new(b.finish()),
        }
    }

    /// Whether nothing was appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        match self {
            Self::Boolean(b) => b.len(),
            Self::Int32(b) => b.len(),
            Self::Int64(b) => b.len(),
            Self::Float32(b) => b.len(),
            Self::Float64(b) => b.len(),
            Self::Utf8(b) => b.len(),
            Self::TimestampMs(b) => b.len(),
        }
    }
}

/// The Arrow schema of a list of declared fields (nullable unless `required`).
pub fn schema_of(fields: &[FieldSpec]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| Field::new(&f.name, f.data_type.arrow(), !f.required))
            .collect::<Vec<_>>(),
    ))
}
