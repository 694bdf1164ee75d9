//! How a line becomes one [`Cell`] per schema field through `serde_json`: the
//! serde seeds that fill the cells without an intermediate `serde_json::Value`,
//! and the key lookup the fast path shares. The cell type itself, the rules and
//! the builders are every source's ([`crate::batch::records`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::batch::records::Cell;
use crate::node::config::FieldSpec;

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
    /// The field each key position named on the previous line (see [`KeySeed`]).
    hints: &'s mut Vec<Option<usize>>,
}

/// Reads an object key as the index of the schema field it names (`None` for a
/// key the schema does not list), without allocating: serde's `Cow<str>` would
/// copy every key into a `String`.
///
/// Lines of one file almost always list their keys in the same order, so the field
/// the same position named on the previous line is tried first: one comparison per
/// key instead of a scan of the schema.
pub(super) struct KeySeed<'s> {
    fields: &'s [FieldSpec],
    hint: Option<usize>,
}

impl<'s> KeySeed<'s> {
    /// The seed for the key at `position` of a line, hinted by the previous line.
    pub(super) fn at(fields: &'s [FieldSpec], hints: &[Option<usize>], position: usize) -> Self {
        KeySeed {
            fields,
            hint: hints.get(position).copied().flatten(),
        }
    }

    pub(super) fn find(&self, key: &str) -> Option<usize> {
        if let Some(i) = self.hint.filter(|&i| same_key(&self.fields[i].name, key)) {
            return Some(i);
        }
        self.fields.iter().position(|f| same_key(&f.name, key))
    }
}

/// Records that the key at `position` named `field`, for the next line's hint.
pub(super) fn remember_key(hints: &mut Vec<Option<usize>>, position: usize, field: Option<usize>) {
    match hints.get_mut(position) {
        Some(h) => *h = field,
        None => hints.push(field),
    }
}

/// `a == b` for the short strings JSON keys are, inline: `==` on strings calls
/// `memcmp`, whose call costs more than comparing a few bytes, and this runs for
/// every key of every line.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.find(v))
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

/// Marks a top-level value that parsed but was not an object.
pub(super) const NOT_AN_OBJECT: &str = "\u{0}not an object";

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(field) = map.next_key_seed(KeySeed::at(self.fields, self.hints, position))? {
            remember_key(self.hints, position, field);
            position += 1;
            match field {
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

/// Fills `cells` from one line through `serde_json`: the path for every line the
/// fast path declines, and the judge of what is valid.
pub(super) fn record_by_serde<'a>(
    line: &'a [u8],
    fields: &[FieldSpec],
    cells: &mut Vec<Cell<'a>>,
    hints: &mut Vec<Option<usize>>,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    RecordSeed {
        fields,
        cells,
        hints,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
}
