//! Operator state in a checkpoint, for the operators that hold rows across a
//! barrier and snapshot them (`sort`, `group`, `sample`; see
//! [`crate::node::AtBarrier`]).
//!
//! ```text
//!   <checkpoint dir>/<operator>.arrow          Arrow IPC file: the held rows, in the
//!                                              input's schema; the operator's own
//!                                              fields (JSON) in its schema metadata
//!   <checkpoint dir>/<operator>.run-<i>.arrow  a sort's spilled runs, hard-linked
//! ```
//!
//! Everything a state needs lives in the checkpoint's directory, never in the
//! spill directory (which a run removes, and whose files a merge deletes as it
//! reads them): a sort's spilled runs are hard-linked there (copied when the
//! two are on different file systems), which costs no copy of their rows. A
//! resumed run links them back into its own spill directory. Files are written
//! under a temporary name, synced, then renamed, so a crash mid-snapshot
//! leaves no state file that reads as whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use crate::node::{Meta, MetaSet, NodeError};

/// The file name stem for the operator `consumer` (`sort \`x\`` → `sort__x_`).
pub(crate) fn stem(consumer: &str) -> String {
    consumer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `batches` to `file` as an Arrow IPC file whose schema is `fields`
/// with `state` (JSON) under the metadata key `key`; synced, through a
/// temporary name.
pub(crate) fn write(
    file: &Path,
    fields: &Schema,
    key: &str,
    state: &serde_json::Value,
    batches: impl Iterator<Item = Result<RecordBatch, NodeError>>,
) -> Result<(), NodeError> {
    let mut meta = std::collections::HashMap::new();
    meta.insert(key.to_owned(), state.to_string());
    let schema = Arc::new(Schema::new_with_metadata(fields.fields().clone(), meta));
    let tmp = crate::node::atomic::in_progress(file);
    let io = |e: std::io::Error| NodeError::io(tmp.display(), e);
    let f = std::fs::File::create(&tmp).map_err(io)?;
    let mut w = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(f), &schema)?;
    for b in batches {
        w.write(&RecordBatch::try_new(
            schema.clone(),
            b?.columns().to_vec(),
        )?)?;
    }
    let f = w
        .into_inner()?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    crate::node::atomic::publish(f, &tmp, file).map_err(|e| NodeError::io(file.display(), e))
}

/// What [`read`] gives back: the rows' schema (no metadata), the state's JSON
/// and the rows, read a batch at a time (a spilled group's state is larger
/// than its memory budget).
pub(crate) struct State {
    pub(crate) schema: SchemaRef,
    pub(crate) state: serde_json::Value,
    pub(crate) batches: Box<dyn Iterator<Item = Result<RecordBatch, NodeError>>>,
}

/// Reads a file [`write`] wrote with `key`; `what` names the operator in errors.
pub(crate) fn read(file: &Path, key: &str, what: &str) -> Result<State, NodeError> {
    let io = |e: std::io::Error| NodeError::io(file.display(), e);
    let not_state = || {
        NodeError::config(format!(
            "{what}: {} is not this operator's state",
            file.display()
        ))
    };
    let reader = arrow::ipc::reader::FileReader::try_new(
        std::io::BufReader::new(std::fs::File::open(file).map_err(io)?),
        None,
    )
    .map_err(|_| not_state())?;
    let with_meta = reader.schema();
    let state = with_meta
        .metadata()
        .get(key)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(not_state)?;
    let schema = Arc::new(Schema::new(with_meta.fields().clone()));
    let plain = schema.clone();
    // Each batch copied into its own buffers: read back, a batch's columns
    // share one buffer, which the memory pool would count once per column.
    let batches = Box::new(reader.map(move |b| {
        let b = RecordBatch::try_new(plain.clone(), b?.columns().to_vec())?;
        let all = arrow::array::UInt32Array::from_iter_values(0..b.num_rows() as u32);
        Ok(arrow::compute::take_record_batch(&b, &all)?)
    }));
    Ok(State {
        schema,
        state,
        batches,
    })
}

/// Makes `to` the same file as `from`: a hard link, or a copy across file
/// systems.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<(), NodeError> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| NodeError::io(to.display(), e))
}

/// The lineage of everything in `consumed`, as JSON for a state file.
pub(crate) fn lineage_json(consumed: &MetaSet) -> serde_json::Value {
    serde_json::to_value(&*consumed.union().lineage).unwrap_or_default()
}

/// After a snapshot: `consumed` keeps its lineage and lets its delivery
/// tokens go (the state holds those rows now).
pub(crate) fn release_tokens(consumed: &mut MetaSet) {
    let lineage = consumed.union().lineage;
    *consumed = MetaSet::new();
    consumed.push(&Meta {
        lineage,
        acks: Vec::new(),
    });
}

/// On restore: `consumed` starts with the lineage a state file kept.
pub(crate) fn restore_lineage(consumed: &mut MetaSet, lineage: &serde_json::Value) {
    if let Ok(lineage) = serde_json::from_value::<crate::node::Lineage>(lineage.clone()) {
        consumed.push(&Meta {
            lineage: Arc::new(lineage),
            acks: Vec::new(),
        });
    }
}

/// A path in the directory of `file` (a state file) named `name`.
pub(crate) fn beside(file: &Path, name: &str) -> PathBuf {
    file.parent().unwrap_or(Path::new(".")).join(name)
}
