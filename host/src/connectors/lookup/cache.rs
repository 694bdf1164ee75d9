//! The lookup cache: keys and values in Arrow's row format, so a whole batch
//! is probed and its output columns built with two conversions, whatever the
//! key's and the values' types.
//!
//! A key is the row-format encoding of the key columns (one or several, of
//! the table's key types); a value is the encoding of the looked-up columns.
//! A miss takes the defaults' row (the declared defaults, nulls elsewhere).

use std::collections::HashMap;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};

use crate::node::NodeError;

/// A cached entry: the value's row, or `None` for a key the table lacks.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) value: Option<Box<[u8]>>,
    /// When it was fetched (ms since 1970).
    pub(super) fetched_ms: u64,
}

/// What a probe found for one input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// A value (or a known absence) fetched at this time.
    Hit { fetched_ms: u64, present: bool },
    /// Nothing cached, or the entry expired: the table must be asked.
    Unknown,
    /// The key is null: no table row can match.
    NullKey,
}

/// Keys to values, with their sizes.
pub(super) struct Cache {
    keys: RowConverter,
    values: RowConverter,
    map: HashMap<Box<[u8]>, Slot, foldhash::fast::RandomState>,
    default_row: Box<[u8]>,
    /// Bytes held by keys and values (what the memory pool is charged).
    bytes: usize,
}

/// Per-entry overhead charged beyond the bytes of key and value.
const ENTRY_OVERHEAD: usize = 64;

impl Cache {
    /// An empty cache for keys of `key_fields`' types and values of
    /// `value_schema`, a miss getting `defaults` (one row of `value_schema`).
    pub(super) fn new(
        key_fields: &[Field],
        value_schema: SchemaRef,
        defaults: &RecordBatch,
    ) -> Result<Self, NodeError> {
        let keys = RowConverter::new(
            key_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let values = RowConverter::new(
            value_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let default_rows = values.convert_columns(defaults.columns())?;
        let default_row = default_rows.row(0).as_ref().into();
        Ok(Self {
            keys,
            values,
            map: HashMap::default(),
            default_row,
            bytes: 0,
        })
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The row-format keys of `columns` (already of the key types).
    pub(super) fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Rows, NodeError> {
        Ok(self.keys.convert_columns(columns)?)
    }

    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "used by the lazy PostgreSQL cache")
    )]
    /// The key columns of the encoded `keys` (for asking the table).
    pub(super) fn decode_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>, NodeError> {
        let parser = self.keys.parser();
        Ok(self
            .keys
            .convert_rows(keys.into_iter().map(|k| parser.parse(k)))?)
    }

    /// Adds every row of `keys` and `values` (columns of the same length),
    /// fetched at `now_ms`; a key seen twice keeps its last row.
    pub(super) fn insert_rows(
        &mut self,
        keys: &[ArrayRef],
        values: &[ArrayRef],
        now_ms: u64,
    ) -> Result<(), NodeError> {
        let k = self.keys.convert_columns(keys)?;
        let v = self.values.convert_columns(values)?;
        for i in 0..k.num_rows() {
            if keys.iter().any(|c| c.is_null(i)) {
                continue;
            }
            self.put(k.row(i).data().into(), Some(v.row(i).data().into()), now_ms);
        }
        Ok(())
    }

    /// Sets `key` to `value` (`None`: the table lacks it).
    pub(super) fn put(&mut self, key: Box<[u8]>, value: Option<Box<[u8]>>, now_ms: u64) {
        let key_len = key.len();
        let add = key_len + value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD;
        let slot = Slot {
            value,
            fetched_ms: now_ms,
        };
        if let Some(old) = self.map.insert(key, slot) {
            self.bytes -= key_len + old.value.map_or(0, |v| v.len()) + ENTRY_OVERHEAD;
        }
        self.bytes += add;
    }

    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "used by the lazy PostgreSQL cache")
    )]
    /// Drops the entries fetched longest ago until at most `entries` and
    /// `bytes` remain; returns how many were dropped.
    pub(super) fn evict_to(&mut self, entries: usize, bytes: usize) -> usize {
        if self.map.len() <= entries && self.bytes <= bytes {
            return 0;
        }
        let mut by_age: Vec<(u64, Box<[u8]>)> = self
            .map
            .iter()
            .map(|(k, s)| (s.fetched_ms, k.clone()))
            .collect();
        by_age.sort_unstable_by_key(|(t, _)| *t);
        let mut dropped = 0;
        for (_, k) in by_age {
            if self.map.len() <= entries && self.bytes <= bytes {
                break;
            }
            if let Some(s) = self.map.remove(&k) {
                self.bytes -= k.len() + s.value.map_or(0, |v| v.len()) + ENTRY_OVERHEAD;
                dropped += 1;
            }
        }
        dropped
    }

    /// What the cache holds for each row of `keys`; an entry older than
    /// `max_age_ms` (a lazy cache's TTL) counts as unknown.
    pub(super) fn probe(&self, keys: &Rows, nulls: &[bool], now_ms: u64, ttl: Ttl) -> Vec<Probe> {
        (0..keys.num_rows())
            .map(|i| {
                if nulls[i] {
                    return Probe::NullKey;
                }
                match self.map.get(keys.row(i).data()) {
                    Some(s) => {
                        let max = if s.value.is_some() {
                            ttl.present
                        } else {
                            ttl.absent
                        };
                        if now_ms.saturating_sub(s.fetched_ms) > max {
                            Probe::Unknown
                        } else {
                            Probe::Hit {
                                fetched_ms: s.fetched_ms,
                                present: s.value.is_some(),
                            }
                        }
                    }
                    None => Probe::Unknown,
                }
            })
            .collect()
    }

    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "used by the lazy PostgreSQL cache")
    )]
    /// The entry of `key`, expired or not.
    pub(super) fn get(&self, key: &[u8]) -> Option<&Slot> {
        self.map.get(key)
    }

    /// The looked-up columns for `keys`: each row's cached value, else the
    /// defaults.
    pub(super) fn output(&self, keys: &Rows, nulls: &[bool]) -> Result<Vec<ArrayRef>, NodeError> {
        let parser = self.values.parser();
        let rows = (0..keys.num_rows()).map(|i| {
            let bytes = if nulls[i] {
                &self.default_row
            } else {
                match self.map.get(keys.row(i).data()) {
                    Some(Slot { value: Some(v), .. }) => v,
                    _ => &self.default_row,
                }
            };
            parser.parse(bytes)
        });
        Ok(self.values.convert_rows(rows)?)
    }

    /// Every entry as columns, for keeping in the store.
    pub(super) fn export(&self) -> Result<Exported, NodeError> {
        let key_parser = self.keys.parser();
        let value_parser = self.values.parser();
        let entries: Vec<(&Box<[u8]>, &Slot)> = self.map.iter().collect();
        let keys = self
            .keys
            .convert_rows(entries.iter().map(|(k, _)| key_parser.parse(k)))?;
        let values =
            self.values.convert_rows(entries.iter().map(|(_, s)| {
                value_parser.parse(s.value.as_deref().unwrap_or(&self.default_row))
            }))?;
        let times = entries.iter().map(|(_, s)| s.fetched_ms).collect();
        let present = entries.iter().map(|(_, s)| s.value.is_some()).collect();
        Ok(Exported {
            keys,
            values,
            times,
            present,
        })
    }
}

/// A cache's entries as columns: the keys, the values (the defaults' row for
/// a known absence), when each was fetched, and whether the table had it.
pub(super) struct Exported {
    pub(super) keys: Vec<ArrayRef>,
    pub(super) values: Vec<ArrayRef>,
    pub(super) times: Vec<u64>,
    pub(super) present: Vec<bool>,
}

/// How long entries count as fresh (ms): present values and known absences.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ttl {
    pub(super) present: u64,
    pub(super) absent: u64,
}

impl Ttl {
    /// Entries that never expire (a full table).
    pub(super) const FOREVER: Ttl = Ttl {
        present: u64::MAX,
        absent: u64::MAX,
    };
}

/// Which rows of `columns` have a null in any of them.
pub(super) fn null_keys(columns: &[ArrayRef], rows: usize) -> Vec<bool> {
    let mut nulls = vec![false; rows];
    for c in columns {
        if c.null_count() > 0 {
            for (i, n) in nulls.iter_mut().enumerate() {
                *n |= c.is_null(i);
            }
        }
    }
    nulls
}
