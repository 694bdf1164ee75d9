//! PostgreSQL's binary wire format to Arrow, column by column.
//!
//! The schema comes from the statement's description before the first row (so an
//! empty result still has one), and a type with no mapping is refused then,
//! naming the column and its type. Each column appends the raw bytes of its
//! values straight into an Arrow builder; nothing goes through a per-row
//! `Value` enum.
//!
//! | PostgreSQL | Arrow | notes |
//! | --- | --- | --- |
//! | `bool` | `Boolean` | |
//! | `int2`, `int4`, `int8` | `Int16`, `Int32`, `Int64` | |
//! | `float4`, `float8` | `Float32`, `Float64` | |
//! | `numeric` | `Float64` | correctly rounded from its decimal digits; `NaN` and ±infinity as such. Features are floats; cast to `text` in the query to keep every digit |
//! | `text`, `varchar`, `bpchar`, `name` | `Utf8` | `bpchar` keeps its padding |
//! | `json`, `jsonb` | `Utf8` | the document's text |
//! | `uuid` | `Utf8` | hyphenated, lower case |
//! | `bytea` | `Binary` | |
//! | `date` | `Date32` | ±infinity is null (counted as `infinities`) |
//! | `timestamp` | `Timestamp(µs)` | ±infinity is null (counted) |
//! | `timestamptz` | `Timestamp(µs, "UTC")` | ±infinity is null (counted) |
//!
//! Arrays, `time`, `interval`, enums, composites and the rest are refused.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio_postgres::types::{FromSql, Type};

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How one column's values are decoded: the Arrow side of a PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Json,
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
}

impl Kind {
    /// The kind for PostgreSQL type `ty`, or `None` when weir has no mapping.
    pub(crate) fn of(ty: &Type) -> Option<Self> {
        Some(match *ty {
            Type::BOOL => Self::Bool,
            Type::INT2 => Self::Int2,
            Type::INT4 => Self::Int4,
            Type::INT8 => Self::Int8,
            Type::FLOAT4 => Self::Float4,
            Type::FLOAT8 => Self::Float8,
            Type::NUMERIC => Self::Numeric,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Self::Text,
            Type::JSON => Self::Json,
            Type::JSONB => Self::Jsonb,
            Type::UUID => Self::Uuid,
            Type::BYTEA => Self::Bytea,
            Type::DATE => Self::Date,
            Type::TIMESTAMP => Self::Timestamp,
            Type::TIMESTAMPTZ => Self::TimestampTz,
            _ => return None,
        })
    }

    /// The Arrow type of the column.
    pub(crate) fn arrow(self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int2 => DataType::Int16,
            Self::Int4 => DataType::Int32,
            Self::Int8 => DataType::Int64,
            Self::Float4 => DataType::Float32,
            Self::Float8 | Self::Numeric => DataType::Float64,
            Self::Text | Self::Json | Self::Jsonb | Self::Uuid => DataType::Utf8,
            Self::Bytea => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

/// A statement's columns, mapped: names, kinds and the Arrow schema.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub(crate) kinds: Vec<Kind>,
    pub(crate) schema: SchemaRef,
}

impl Mapping {
    /// Maps `columns` (name and PostgreSQL type). Every column is nullable:
    /// a query's result says nothing about nulls.
    ///
    /// # Errors
    /// The first column whose type has no mapping, with its name and type.
    pub(crate) fn new<'a>(
        columns: impl IntoIterator<Item = (&'a str, &'a Type)>,
    ) -> Result<Self, String> {
        let mut kinds = Vec::new();
        let mut fields = Vec::new();
        for (name, ty) in columns {
            let kind = Kind::of(ty).ok_or_else(|| {
                format!(
                    "column `{name}` has type `{}`, which weir cannot read: cast it in the query \
                     (`{name}::text`, `{name}::float8`) or leave it out",
                    ty.name()
                )
            })?;
            kinds.push(kind);
            fields.push(Field::new(name, kind.arrow(), true));
        }
        Ok(Self {
            kinds,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// Builders for a batch of up to `rows` rows.
    pub(crate) fn builders(&self, rows: usize) -> Builders {
        Builders {
            columns: self.kinds.iter().map(|k| Column::new(*k, rows)).collect(),
            schema: self.schema.clone(),
            infinities: 0,
        }
    }
}

/// A column's raw value: the bytes of the binary format, or `None` for NULL.
/// Accepts every type, so a row is read without converting anything twice.
pub(crate) struct Raw<'a>(pub(crate) Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// One column's builder.
enum Column {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder, Kind),
    Utf8(StringBuilder, Kind),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, Kind),
}

impl Column {
    fn new(kind: Kind, rows: usize) -> Self {
        match kind {
            Kind::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            Kind::Int2 => Self::I16(Int16Builder::with_capacity(rows)),
            Kind::Int4 => Self::I32(Int32Builder::with_capacity(rows)),
            Kind::Int8 => Self::I64(Int64Builder::with_capacity(rows)),
            Kind::Float4 => Self::F32(Float32Builder::with_capacity(rows)),
            Kind::Float8 | Kind::Numeric => Self::F64(Float64Builder::with_capacity(rows), kind),
            Kind::Text | Kind::Json | Kind::Jsonb | Kind::Uuid => {
                Self::Utf8(StringBuilder::with_capacity(rows, rows * 16), kind)
            }
            Kind::Bytea => Self::Bytes(BinaryBuilder::with_capacity(rows, rows * 16)),
            Kind::Date => Self::Date(Date32Builder::with_capacity(rows)),
            Kind::Timestamp => Self::Ts(TimestampMicrosecondBuilder::with_capacity(rows), kind),
            Kind::TimestampTz => Self::Ts(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
                kind,
            ),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::I16(b) => b.append_null(),
            Self::I32(b) => b.append_null(),
            Self::I64(b) => b.append_null(),
            Self::F32(b) => b.append_null(),
            Self::F64(b, _) => b.append_null(),
            Self::Utf8(b, _) => b.append_null(),
            Self::Bytes(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Ts(b, _) => b.append_null(),
        }
    }

    /// Appends the value whose binary form is `raw`; returns whether it was an
    /// infinity stored as null.
    fn append(&mut self, raw: &[u8]) -> Result<bool, String> {
        match self {
            Self::Bool(b) => b.append_value(fixed::<1>(raw)?[0] != 0),
            Self::I16(b) => b.append_value(i16::from_be_bytes(fixed(raw)?)),
            Self::I32(b) => b.append_value(i32::from_be_bytes(fixed(raw)?)),
            Self::I64(b) => b.append_value(i64::from_be_bytes(fixed(raw)?)),
            Self::F32(b) => b.append_value(f32::from_be_bytes(fixed(raw)?)),
            Self::F64(b, Kind::Numeric) => b.append_value(numeric(raw)?),
            Self::F64(b, _) => b.append_value(f64::from_be_bytes(fixed(raw)?)),
            Self::Utf8(b, Kind::Uuid) => b.append_value(uuid(fixed(raw)?)),
            Self::Utf8(b, Kind::Jsonb) => match raw.split_first() {
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err("a jsonb value of an unknown format version".into()),
            },
            Self::Utf8(b, _) => b.append_value(utf8(raw)?),
            Self::Bytes(b) => b.append_value(raw),
            Self::Date(b) => match i32::from_be_bytes(fixed(raw)?) {
                i32::MAX | i32::MIN => {
                    b.append_null();
                    return Ok(true);
                }
                d => b.append_value(d.checked_add(PG_EPOCH_DAYS).ok_or("a date out of range")?),
            },
            Self::Ts(b, _) => match i64::from_be_bytes(fixed(raw)?) {
                i64::MAX | i64::MIN => {
                    b.append_null();
                    return Ok(true);
                }
                t => b.append_value(
                    t.checked_add(PG_EPOCH_MICROS)
                        .ok_or("a timestamp out of range")?,
                ),
            },
        }
        Ok(false)
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b, _) => Arc::new(b.finish()),
            Self::Utf8(b, _) => Arc::new(b.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Ts(b, _) => Arc::new(b.finish()),
        }
    }
}

/// Builders for one batch.
pub(crate) struct Builders {
    columns: Vec<Column>,
    schema: SchemaRef,
    /// Values of ±infinity stored as null so far.
    pub(crate) infinities: u64,
}

impl Builders {
    /// Checks every value of a row before appending any of it, so a row that
    /// cannot be decoded leaves the builders as they were.
    ///
    /// # Errors
    /// The column and what is wrong with its value.
    pub(crate) fn append_row(&mut self, row: &tokio_postgres::Row) -> Result<(), String> {
        let mut raws = Vec::with_capacity(self.columns.len());
        for i in 0..self.columns.len() {
            let Raw(raw) = row
                .try_get::<_, Raw>(i)
                .map_err(|e| format!("column {i}: {e}"))?;
            raws.push(raw);
        }
        for (i, raw) in raws.iter().enumerate() {
            if let Some(raw) = raw {
                check(self.columns[i].kind(), raw)
                    .map_err(|e| format!("column `{}`: {e}", self.schema.field(i).name()))?;
            }
        }
        for (c, raw) in self.columns.iter_mut().zip(raws) {
            match raw {
                None => c.append_null(),
                Some(raw) => {
                    if c.append(raw)? {
                        self.infinities += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The batch of the rows appended, the builders left empty.
    pub(crate) fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let columns = self.columns.iter_mut().map(Column::finish).collect();
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

impl Column {
    fn kind(&self) -> Kind {
        match self {
            Self::Bool(_) => Kind::Bool,
            Self::I16(_) => Kind::Int2,
            Self::I32(_) => Kind::Int4,
            Self::I64(_) => Kind::Int8,
            Self::F32(_) => Kind::Float4,
            Self::F64(_, k) | Self::Utf8(_, k) => *k,
            Self::Bytes(_) => Kind::Bytea,
            Self::Date(_) => Kind::Date,
            Self::Ts(_, k) => *k,
        }
    }
}

/// Whether `raw` decodes as a value of `kind` (without appending it).
fn check(kind: Kind, raw: &[u8]) -> Result<(), String> {
    let width = match kind {
        Kind::Bool => Some(1),
        Kind::Int2 => Some(2),
        Kind::Int4 | Kind::Float4 | Kind::Date => Some(4),
        Kind::Int8 | Kind::Float8 | Kind::Timestamp | Kind::TimestampTz => Some(8),
        Kind::Uuid => Some(16),
        Kind::Numeric => return numeric(raw).map(drop),
        Kind::Text | Kind::Json => return utf8(raw).map(drop),
        Kind::Jsonb => {
            return match raw.split_first() {
                Some((1, text)) => utf8(text).map(drop),
                _ => Err("a jsonb value of an unknown format version".into()),
            };
        }
        Kind::Bytea => None,
    };
    match width {
        Some(w) if raw.len() != w => Err(format!("{} bytes where {w} were expected", raw.len())),
        _ => Ok(()),
    }
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("{} bytes where {N} were expected", raw.len()))
}

fn utf8(raw: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(raw).map_err(|e| format!("text that is not UTF-8: {e}"))
}

/// A `uuid` as its hyphenated text.
fn uuid(b: [u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A `numeric` in binary form (digit count, weight, sign, display scale, then
/// base-10000 digits) as the nearest `f64`: its decimal digits are written out
/// and parsed, which rounds correctly.
pub(crate) fn numeric(raw: &[u8]) -> Result<f64, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated numeric".to_owned())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    match sign {
        0xC000 => return Ok(f64::NAN),
        0xD000 => return Ok(f64::INFINITY),
        0xF000 => return Ok(f64::NEG_INFINITY),
        0x0000 | 0x4000 => {}
        other => return Err(format!("a numeric with an unknown sign {other:#x}")),
    }
    if raw.len() != 8 + 2 * ndigits {
        return Err("a numeric whose length does not match its digit count".into());
    }
    if ndigits == 0 {
        return Ok(0.0);
    }
    let mut text = String::with_capacity(ndigits * 4 + 8);
    if sign == 0x4000 {
        text.push('-');
    }
    for i in 0..ndigits {
        let d = word(8 + 2 * i)?;
        if d > 9999 {
            return Err(format!("a numeric digit {d} above 9999"));
        }
        text.push_str(&format!("{d:04}"));
    }
    // The digits are an integer; the first group's place is 10000^weight.
    let exponent = (weight - ndigits as i64 + 1) * 4;
    text.push_str(&format!("e{exponent}"));
    text.parse::<f64>()
        .map_err(|e| format!("a numeric that does not parse ({text}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(weight: i16, sign: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((digits.len() as u16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(0u16.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_decode_to_the_nearest_double() {
        // 12345.678 = 1|2345|6780 with weight 1.
        assert_eq!(
            numeric(&numeric_bytes(1, 0, &[1, 2345, 6780])).unwrap(),
            12345.678
        );
        assert_eq!(numeric(&numeric_bytes(-1, 0x4000, &[5000])).unwrap(), -0.5);
        assert_eq!(numeric(&numeric_bytes(0, 0, &[])).unwrap(), 0.0);
        assert_eq!(numeric(&numeric_bytes(2, 0, &[7])).unwrap(), 7e8);
        assert!(numeric(&numeric_bytes(0, 0xC000, &[])).unwrap().is_nan());
        assert!(numeric(&numeric_bytes(0, 0x1234, &[])).is_err());
        assert!(numeric(&[0, 1]).is_err());
    }

    #[test]
    fn unsupported_types_are_refused_naming_the_column() {
        let err = Mapping::new([("id", &Type::INT8), ("tags", &Type::TEXT_ARRAY)]).unwrap_err();
        assert!(err.starts_with("column `tags` has type `_text`"), "{err}");
        let m = Mapping::new([("id", &Type::INT8), ("at", &Type::TIMESTAMPTZ)]).unwrap();
        assert_eq!(
            m.schema.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }

    #[test]
    fn uuids_print_hyphenated() {
        let b: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(uuid(b), "00112233-4455-6677-8899-aabbccddeeff");
    }
}
