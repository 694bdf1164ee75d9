//! The schema's rules for one cell: `required`, the JSON type a field takes, and
//! `[min, max]`, each broken rule named by a reason code and a detail. Kept apart
//! because it judges one JSON cell against a `FieldSpec` and knows nothing of
//! lines, threads or builders.

use super::record::Cell;
use crate::node::config::{FieldSpec, FieldType};

/// Why a cell breaks its field's rules: (reason code, detail).
pub(crate) fn judge(field: &FieldSpec, cell: &Cell<'_>) -> Option<(String, String)> {
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
