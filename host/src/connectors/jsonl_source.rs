//! A JSON-lines file source with a declared schema.
//!
//! Each line is parsed straight into typed column builders through a serde
//! visitor: no intermediate `serde_json::Value`, strings borrowed from the line
//! when they have no escapes. A line that is not strict JSON, is not an object, or
//! breaks its schema (a `required` field missing, a value of the wrong JSON type,
//! a number outside `[min, max]`) becomes a dead letter with the first reason that
//! applies, in the order: invalid JSON, then the schema's fields in order. Blank
//! lines are skipped. Nothing is dropped silently.
//!
//! [`parse_lines`] is a pure function over a chunk of lines, so chunks can be
//! parsed in parallel.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::exec::{DeadLetter, Emitter, NodeError, Source};
use crate::spec::{FieldSpec, FieldType, JsonlSourceSpec, PipelineSpec, SourceSpec};

/// Reads a JSON-lines file in batches of `batch_rows` lines.
pub struct JsonlSource {
    path: PathBuf,
    display: String,
    reader: BufReader<File>,
    fields: Arc<[FieldSpec]>,
    schema: SchemaRef,
    batch_rows: usize,
    line_no: u64,
    chunk: Vec<u8>,
}

impl JsonlSource {
    /// Opens the file named by the spec.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(pipeline: &PipelineSpec, source: &SourceSpec, spec: &JsonlSourceSpec) -> std::io::Result<Self> {
        let _ = source;
        let path = pipeline.resolve(&spec.path);
        let file = File::open(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let fields: Arc<[FieldSpec]> = spec.schema.clone().into();
        Ok(Self {
            display: spec.path.display().to_string(),
            path,
            reader: BufReader::with_capacity(1 << 20, file),
            schema: schema_of(&fields),
            fields,
            batch_rows: spec.batch_rows.unwrap_or(pipeline.settings.batch_rows).get(),
            line_no: 0,
            chunk: Vec::new(),
        })
    }

    /// The Arrow schema of the batches it produces.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// The Arrow schema for a list of fields (all nullable).
pub fn schema_of(fields: &[FieldSpec]) -> SchemaRef {
    Arc::new(Schema::new(
        fields.iter().map(|f| Field::new(&f.name, f.data_type.arrow(), !f.required)).collect::<Vec<_>>(),
    ))
}

impl Source for JsonlSource {
    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        self.chunk.clear();
        let first_line = self.line_no + 1;
        let mut lines = 0;
        let mut eof = false;
        while lines < self.batch_rows {
            let n = self.reader.read_until(b'\n', &mut self.chunk).map_err(|source| NodeError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
            if n == 0 {
                eof = true;
                break;
            }
            lines += 1;
        }
        self.line_no += lines as u64;
        if lines > 0 {
            let (batch, letters) = parse_lines(&self.chunk, first_line, &self.display, &self.fields, &self.schema)?;
            for letter in letters {
                out.dead_letter(letter);
            }
            out.push(batch);
        }
        Ok(!eof)
    }

    fn position(&self) -> Option<String> {
        Some(format!("{}:{}", self.display, self.line_no))
    }
}

/// A value as it appeared in the JSON, before the schema judges it.
#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Missing,
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`.
    BigInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Nested,
}

impl Cell<'_> {
    fn json_type(&self) -> &'static str {
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

    fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::BigInt(u) => Some(*u as f64),
            Cell::Float(f) => Some(*f),
            _ => None,
        }
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Cell<'de>, E> {
        Ok(Cell::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Cell<'de>, E> {
        Ok(Cell::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Cell<'de>, E> {
        Ok(i64::try_from(v).map_or(Cell::BigInt(v), Cell::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Cell<'de>, E> {
        Ok(Cell::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Cell<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Cell::Nested)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cell<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Cell::Nested)
    }
}

impl<'de> DeserializeSeed<'de> for CellVisitor {
    type Value = Cell<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cell<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

/// Fills `cells` (one per schema field) from one JSON object.
struct RecordSeed<'s, 'de> {
    fields: &'s [FieldSpec],
    cells: &'s mut Vec<Cell<'de>>,
}

/// Marks a top-level value that parsed but was not an object.
const NOT_AN_OBJECT: &str = "\u{0}not an object";

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.fields.iter().position(|f| f.name == key) {
                Some(i) => self.cells[i] = map.next_value_seed(CellVisitor)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(de::Error::custom(NOT_AN_OBJECT))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    TimestampMs(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    fn new(t: FieldType, rows: usize) -> Self {
        match t {
            FieldType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(rows)),
            FieldType::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            FieldType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            FieldType::Float32 => Self::Float32(Float32Builder::with_capacity(rows)),
            FieldType::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            FieldType::Utf8 => Self::Utf8(StringBuilder::with_capacity(rows, rows * 8)),
            FieldType::TimestampMs => Self::TimestampMs(TimestampMillisecondBuilder::with_capacity(rows)),
        }
    }

    /// Appends a cell already judged valid for this column.
    fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Self::Boolean(b), Cell::Bool(v)) => b.append_value(*v),
            (Self::Int32(b), Cell::Int(v)) => b.append_value(*v as i32),
            (Self::Int64(b), Cell::Int(v)) => b.append_value(*v),
            (Self::TimestampMs(b), Cell::Int(v)) => b.append_value(*v),
            (Self::Float32(b), c) if c.as_f64().is_some() => b.append_value(c.as_f64().unwrap_or_default() as f32),
            (Self::Float64(b), c) if c.as_f64().is_some() => b.append_value(c.as_f64().unwrap_or_default()),
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

    fn finish(&mut self) -> ArrayRef {
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

    fn len(&self) -> usize {
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

/// Why a cell breaks its field's rules: (reason code, detail).
fn judge(field: &FieldSpec, cell: &Cell<'_>) -> Option<(String, String)> {
    let name = &field.name;
    match cell {
        Cell::Missing | Cell::Null => {
            return field.required.then(|| {
                let what = if *cell == Cell::Missing { "missing" } else { "null" };
                (format!("{name}:missing"), format!("required field `{name}` is {what}"))
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
        return Some((format!("{name}:type"), format!("`{name}` must be {wanted}, found {found}")));
    }
    if let Some(v) = cell.as_f64() {
        if let Some(min) = field.min.filter(|m| v < *m) {
            return Some((format!("{name}:range"), format!("`{name}` = {v} is below the minimum {min}")));
        }
        if let Some(max) = field.max.filter(|m| v > *m) {
            return Some((format!("{name}:range"), format!("`{name}` = {v} is above the maximum {max}")));
        }
    }
    None
}

/// Parses a chunk of JSON lines into one batch plus the dead letters of its corrupt
/// lines. `first_line` is the 1-based number of the chunk's first line in `file`.
///
/// # Errors
/// Only an internal Arrow failure (the builders disagree), which is a bug.
pub fn parse_lines(
    chunk: &[u8],
    first_line: u64,
    file: &str,
    fields: &[FieldSpec],
    schema: &SchemaRef,
) -> Result<(RecordBatch, Vec<DeadLetter>), NodeError> {
    let estimate = memchr_count(chunk) + 1;
    let mut builders: Vec<ColumnBuilder> = fields.iter().map(|f| ColumnBuilder::new(f.data_type, estimate)).collect();
    let mut letters = Vec::new();
    let mut cells: Vec<Cell<'_>> = Vec::with_capacity(fields.len());
    for (i, raw) in chunk.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line_no = first_line + i as u64;
        let letter = |reason: String, detail: String| DeadLetter {
            reason,
            detail,
            position: format!("{file}:{line_no}"),
            record: String::from_utf8_lossy(line).into_owned(),
        };
        cells.clear();
        cells.resize(fields.len(), Cell::Missing);
        let mut de = serde_json::Deserializer::from_slice(line);
        let parsed = RecordSeed { fields, cells: &mut cells }.deserialize(&mut de).and_then(|()| de.end());
        if let Err(e) = parsed {
            let text = e.to_string();
            letters.push(if text.starts_with(NOT_AN_OBJECT) {
                letter("not_an_object".into(), "the line is JSON but not an object".into())
            } else {
                letter("invalid_json".into(), format!("the line is not valid JSON: {text}"))
            });
            continue;
        }
        if let Some((reason, detail)) = fields.iter().zip(&cells).find_map(|(f, c)| judge(f, c)) {
            letters.push(letter(reason, detail));
            continue;
        }
        for (b, c) in builders.iter_mut().zip(&cells) {
            b.append(c);
        }
    }
    let rows = builders.first().map_or(0, ColumnBuilder::len);
    let columns: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
    Ok((batch, letters))
}

fn memchr_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}


#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    use super::*;

    fn fields() -> Vec<FieldSpec> {
        let f = |name: &str, t, required, min| FieldSpec {
            name: name.into(),
            data_type: t,
            required,
            min,
            max: None,
        };
        vec![
            f("user_id", FieldType::Utf8, true, None),
            f("ts", FieldType::Int64, true, None),
            f("price", FieldType::Float64, false, Some(0.0)),
        ]
    }

    fn parse(text: &str) -> (RecordBatch, Vec<DeadLetter>) {
        let fields = fields();
        parse_lines(text.as_bytes(), 1, "e.jsonl", &fields, &schema_of(&fields)).unwrap()
    }

    #[test]
    fn good_lines_become_typed_columns() {
        let (b, letters) = parse(
            "{\"user_id\":\"u1\",\"ts\":5,\"price\":1.5,\"extra\":[1,{\"a\":2}]}\n\
             {\"ts\":6,\"user_id\":\"u\\\"2\",\"price\":null}\n\
             \n\
             {\"user_id\":\"u3\",\"ts\":7,\"price\":3}\n",
        );
        assert!(letters.is_empty(), "{letters:?}");
        assert_eq!(b.num_rows(), 3);
        let users = b.column(0).as_string::<i32>();
        assert_eq!(users.iter().collect::<Vec<_>>(), [Some("u1"), Some("u\"2"), Some("u3")]);
        assert_eq!(b.column(1).as_primitive::<Int64Type>().values().to_vec(), [5, 6, 7]);
        let price = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(price.iter().collect::<Vec<_>>(), [Some(1.5), None, Some(3.0)]);
    }

    #[test]
    fn corrupt_lines_get_the_first_reason_in_schema_order() {
        let text = [
            r#"{"user_id":"u1","ts":1,"pri"#,                  // truncated
            r#"{"ts":"12","price":-1}"#,                      // missing user_id beats bad ts
            r#"{"user_id":7,"ts":1}"#,                        // user_id not a string
            r#"{"user_id":"u","ts":"123"}"#,                  // ts a string
            r#"{"user_id":"u","ts":123.0}"#,                  // ts a float
            r#"{"user_id":"u","ts":1,"price":-0.5}"#,         // negative price
            r#"{"user_id":"u","ts":1,"price":NaN}"#,          // not strict JSON
            r#"[1,2]"#,                                       // not an object
            r#"{"user_id":null,"ts":1}"#,                     // null required
            r#"{"user_id":"ok","ts":9,"price":0}"#,           // fine
        ]
        .join("\n");
        let (b, letters) = parse(&text);
        assert_eq!(b.num_rows(), 1);
        let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "invalid_json",
                "user_id:missing",
                "user_id:type",
                "ts:type",
                "ts:type",
                "price:range",
                "invalid_json",
                "not_an_object",
                "user_id:missing"
            ]
        );
        assert_eq!(letters[1].position, "e.jsonl:2");
        assert_eq!(letters[1].record, r#"{"ts":"12","price":-1}"#);
        assert_eq!(letters[4].detail, "`ts` must be an integer, found a float");
        assert_eq!(letters[5].detail, "`price` = -0.5 is below the minimum 0");
        assert_eq!(letters[8].detail, "required field `user_id` is null");
    }

    #[test]
    fn an_empty_chunk_gives_an_empty_batch() {
        let (b, letters) = parse("");
        assert_eq!(b.num_rows(), 0);
        assert!(letters.is_empty());
        assert_eq!(b.column(0).len(), 0);
    }
}
