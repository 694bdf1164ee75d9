//! The typed Arrow builders a chunk's judged cells are appended to, one per schema
//! field. Kept apart because it is the only part that knows Arrow's builder types;
//! a new field type adds a variant here and a rule in `rules`.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};

use super::record::Cell;
use crate::node::config::FieldType;

/// A builder for one column of a declared type.
pub(crate) enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    TimestampMs(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    pub(crate) fn new(t: FieldType, rows: usize) -> Self {
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
    pub(crate) fn append(&mut self, cell: &Cell<'_>) {
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

    pub(crate) fn finish(&mut self) -> ArrayRef {
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

    pub(crate) fn len(&self) -> usize {
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
