//! The rows a session operator holds until the release point passes them.
//!
//! ```text
//!   batch ─► Held { batch, ts, keys, rows: all }      (event times cast once, keys encoded once)
//!              │ release(p): rows with ts < p ─► Ready { batch (shared), rows }
//!              └ rows with ts ≥ p stay: Held { same batch, rows: the rest }
//!                                        └ compacted to a batch of its own once under half
//! ```
//!
//! A release hands out the ready rows of each held batch as a row selection over
//! the batch itself, so nothing is copied to release a row: with the reference
//! workload nearly every row of a batch is ready at the next release, and copying
//! them into a batch of ready rows cost a full copy of the input. A held batch of
//! which most rows are gone is *compacted* (its remaining rows taken into a batch
//! of their own) once fewer than half remain, so held memory stays within twice
//! the rows held, and a row that waits many releases is copied only when its
//! batch halves: at most once per row of the input, amortised.
//!
//! Invariants: entries are in arrival order, and so are the rows of each entry,
//! so the ready rows of a release, source after source, are in arrival order; no
//! held row has a null event time (those became dead letters before).

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::buffer::ScalarBuffer;
use arrow::compute::take_record_batch;
use arrow::row::{RowConverter, Rows};

use crate::node::NodeError;

/// One held batch and the rows of it still pending.
struct Held {
    batch: RecordBatch,
    /// Each row's event time, epoch milliseconds.
    ts: ScalarBuffer<i64>,
    /// Each row's session key, `arrow-row` encoded.
    keys: Arc<Rows>,
    /// The rows still pending, ascending; `None`: every row.
    rows: Option<Vec<u32>>,
    /// The smallest event time of the pending rows.
    min: i64,
}

/// The ready rows of one held batch, handed out by [`Pending::release`].
pub(super) struct Ready {
    /// The batch the rows belong to (shared with the held entry, not copied).
    pub(super) batch: RecordBatch,
    /// Each row's event time, epoch milliseconds (all rows of `batch`).
    pub(super) ts: ScalarBuffer<i64>,
    /// Each row's session key (all rows of `batch`).
    pub(super) keys: Arc<Rows>,
    /// The ready rows of `batch`, ascending.
    pub(super) rows: Vec<u32>,
}

impl Ready {
    /// Every row of `batch`, ready at once (a restored state's open sessions).
    pub(super) fn whole(batch: RecordBatch, ts: ScalarBuffer<i64>, keys: Rows) -> Self {
        let rows = (0..batch.num_rows() as u32).collect();
        Self {
            batch,
            ts,
            keys: Arc::new(keys),
            rows,
        }
    }

    /// The ready rows as a batch of their own: the batch itself when every row
    /// is ready.
    ///
    /// # Errors
    /// Arrow fails to gather the rows (a bug).
    pub(super) fn to_batch(&self) -> Result<RecordBatch, NodeError> {
        if self.rows.len() == self.batch.num_rows() {
            return Ok(self.batch.clone());
        }
        Ok(take_record_batch(
            &self.batch,
            &UInt32Array::from(self.rows.clone()),
        )?)
    }
}

/// The pending rows, in arrival order.
#[derive(Default)]
pub(super) struct Pending {
    entries: Vec<Held>,
    /// The smallest event time of any pending row.
    min: Option<i64>,
}

impl Pending {
    /// Holds every row of `batch`, whose event times are `ts` and keys `keys`.
    pub(super) fn push(&mut self, batch: RecordBatch, ts: ScalarBuffer<i64>, keys: Rows) {
        let Some(&min) = ts.iter().min() else {
            return;
        };
        self.min = Some(self.min.map_or(min, |m| m.min(min)));
        self.entries.push(Held {
            batch,
            ts,
            keys: Arc::new(keys),
            rows: None,
            min,
        });
    }

    /// Whether a release at `point` (everything if `None`) would hand out rows.
    pub(super) fn due(&self, point: Option<i64>) -> bool {
        match (point, self.min) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(p), Some(m)) => m < p,
        }
    }

    /// Takes out the rows with event time before `point` (all rows if `None`),
    /// as one [`Ready`] per held batch that has any, in arrival order. `keys` is
    /// the converter that encoded the keys, for compacting.
    ///
    /// # Errors
    /// Arrow fails to compact a batch (a bug).
    pub(super) fn release(
        &mut self,
        point: Option<i64>,
        keys: &RowConverter,
    ) -> Result<Vec<Ready>, NodeError> {
        let mut out = Vec::new();
        if !self.due(point) {
            return Ok(out);
        }
        let mut min: Option<i64> = None;
        let mut kept = Vec::with_capacity(self.entries.len());
        for mut e in self.entries.drain(..) {
            let Some(p) = point else {
                // Everything is released.
                let rows = e
                    .rows
                    .take()
                    .unwrap_or_else(|| (0..e.batch.num_rows() as u32).collect());
                out.push(Ready {
                    batch: e.batch,
                    ts: e.ts,
                    keys: e.keys,
                    rows,
                });
                continue;
            };
            if e.min >= p {
                min = Some(min.map_or(e.min, |m| m.min(e.min)));
                kept.push(e);
                continue;
            }
            let (mut ready, mut stay) = (Vec::new(), Vec::new());
            let mut stay_min = i64::MAX;
            let mut split = |r: u32| {
                let t = e.ts[r as usize];
                if t < p {
                    ready.push(r);
                } else {
                    stay_min = stay_min.min(t);
                    stay.push(r);
                }
            };
            match &e.rows {
                None => (0..e.batch.num_rows() as u32).for_each(&mut split),
                Some(rows) => rows.iter().copied().for_each(&mut split),
            }
            let batch_rows = e.batch.num_rows();
            out.push(Ready {
                batch: e.batch.clone(),
                ts: e.ts.clone(),
                keys: e.keys.clone(),
                rows: ready,
            });
            if stay.is_empty() {
                continue;
            }
            min = Some(min.map_or(stay_min, |m| m.min(stay_min)));
            e.min = stay_min;
            e.rows = Some(stay);
            if e.rows.as_ref().map_or(0, Vec::len) * 2 < batch_rows {
                e = compact(e, keys)?;
            }
            kept.push(e);
        }
        self.entries = kept;
        self.min = min;
        Ok(out)
    }

    /// The pending rows, batch after batch in arrival order (copied only where a
    /// held batch is partly released).
    ///
    /// # Errors
    /// Arrow fails to gather the rows (a bug).
    pub(super) fn batches(&self) -> Result<Vec<RecordBatch>, NodeError> {
        self.entries
            .iter()
            .map(|e| match &e.rows {
                None => Ok(e.batch.clone()),
                Some(rows) => Ok(take_record_batch(
                    &e.batch,
                    &UInt32Array::from(rows.clone()),
                )?),
            })
            .collect()
    }

    /// The bytes held: the batches, their event times, keys and row lists.
    pub(super) fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| {
                e.batch.get_array_memory_size()
                    + e.ts.len() * 8
                    + e.keys.size()
                    + e.rows.as_ref().map_or(0, |r| r.capacity() * 4)
            })
            .sum()
    }
}

/// `e` with its pending rows taken into a batch of their own.
fn compact(e: Held, converter: &RowConverter) -> Result<Held, NodeError> {
    let rows = e.rows.expect("compacting a partly released entry");
    let batch = take_record_batch(&e.batch, &UInt32Array::from(rows.clone()))?;
    let ts: ScalarBuffer<i64> = rows.iter().map(|&r| e.ts[r as usize]).collect();
    let mut keys = converter.empty_rows(rows.len(), 0);
    for &r in &rows {
        keys.push(e.keys.row(r as usize));
    }
    Ok(Held {
        batch,
        ts,
        keys: Arc::new(keys),
        rows: None,
        min: e.min,
    })
}
