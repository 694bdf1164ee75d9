//! Cutting a buffer of JSON lines into chunks and parsing the chunks on scoped
//! threads, plus the newline scans both need. Kept apart from the source, which
//! only reads the file and hands out whole lines, so the threading can be tested
//! (and reasoned about) as pure functions over bytes.

use std::num::NonZeroUsize;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::parse_lines;
use crate::node::config::FieldSpec;
use crate::node::{DeadLetter, NodeError};

/// Where each piece of [`parse_pieces`] ends in `chunk` (byte offset past it)
/// and how many lines it holds, by the same cut: every `piece_lines` newlines,
/// then the rest.
pub(super) fn piece_bounds(chunk: &[u8], piece_lines: usize) -> Vec<(usize, u64)> {
    let piece_lines = piece_lines.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', chunk)
        .skip(piece_lines - 1)
        .step_by(piece_lines)
    {
        out.push((i + 1, piece_lines as u64));
        start = i + 1;
    }
    if start < chunk.len() {
        let rest = &chunk[start..];
        let lines = newlines(rest) + usize::from(rest.last() != Some(&b'\n'));
        out.push((chunk.len(), lines as u64));
    }
    // Lines are cumulative within the call.
    let mut acc = 0;
    for (_, l) in &mut out {
        acc += *l;
        *l = acc;
    }
    out
}

/// The byte offset just past the `n`th newline of `bytes` (`n` ≥ 1 and present),
/// or 0 for `n` = 0.
pub(super) fn nth_line_end(bytes: &[u8], n: usize) -> usize {
    match n.checked_sub(1) {
        None => 0,
        Some(k) => memchr::memchr_iter(b'\n', bytes)
            .nth(k)
            .map_or(bytes.len(), |i| i + 1),
    }
}

/// Cuts `chunk` (whole lines; the last may lack its newline) into pieces of
/// `piece_lines` lines and parses them with [`parse_lines`] on up to `threads`
/// scoped threads, each taking a contiguous run of pieces. `first_line` is the
/// 1-based number of the chunk's first line in `file`.
///
/// The result is what parsing the pieces one after another on one thread gives:
/// one batch per piece, in order, each with the dead letters of its lines (exact
/// line numbers). Concatenated, the batches and dead letters equal those of
/// `parse_lines` over the whole chunk.
///
/// # Errors
/// Only an internal Arrow failure, which is a bug.
pub fn parse_pieces(
    chunk: &[u8],
    first_line: u64,
    piece_lines: usize,
    threads: NonZeroUsize,
    file: &str,
    fields: &[FieldSpec],
    schema: &SchemaRef,
) -> Result<Vec<(RecordBatch, Vec<DeadLetter>)>, NodeError> {
    let piece_lines = piece_lines.max(1);
    let mut pieces: Vec<(&[u8], u64)> = Vec::new();
    let (mut start, mut line) = (0, first_line);
    for i in memchr::memchr_iter(b'\n', chunk)
        .skip(piece_lines - 1)
        .step_by(piece_lines)
    {
        pieces.push((&chunk[start..=i], line));
        start = i + 1;
        line += piece_lines as u64;
    }
    if start < chunk.len() {
        pieces.push((&chunk[start..], line));
    }
    let parse = |run: &[(&[u8], u64)]| -> Result<Vec<_>, NodeError> {
        run.iter()
            .map(|&(text, line)| parse_lines(text, line, file, fields, schema))
            .collect()
    };
    let threads = threads.get().min(pieces.len());
    if threads <= 1 {
        return parse(&pieces);
    }
    let per = pieces.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .chunks(per)
            .map(|run| scope.spawn(move || parse(run)))
            .collect();
        let mut all = Vec::with_capacity(pieces.len());
        for handle in handles {
            match handle.join() {
                Ok(parsed) => all.extend(parsed?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(all)
    })
}

/// The number of newlines in `bytes`.
pub(super) fn newlines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
}

/// The lines of `chunk` as `split` on `\n` gives them (a last, possibly empty,
/// piece after the final newline included), found with SIMD `memchr` rather than
/// a byte-at-a-time scan.
pub(super) fn lines_of(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', chunk)
        .map(Some)
        .chain(std::iter::once(None))
        .map(move |end| {
            let end = end.unwrap_or(chunk.len());
            let line = &chunk[start..end];
            start = end + 1;
            line
        })
}
