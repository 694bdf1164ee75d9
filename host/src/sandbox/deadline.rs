//! The deadline inside host calls.
//!
//! Epoch interruption stops guest code, but a stage waiting in a host call (a
//! `std::thread::sleep`, a `poll` on a clock or a stream) runs no guest code: the
//! epoch check only fires once the call returns, which for a 30 s sleep is 30 s
//! later. So every WASI function that can wait is shadowed in the linker by one that
//! runs wasmtime-wasi's own implementation under a timeout at the call's deadline
//! (kept in the store, set with the epoch deadline before each call) and, when the
//! timeout fires, traps with [`Trap::Interrupt`]: the trap an epoch deadline raises,
//! so the stage reports the same [`StageFailure::Deadline`](super::StageFailure)
//! and its instance is discarded as after any trap.
//!
//! ```text
//!  guest  sleep(30 s) ─► monotonic-clock.subscribe-duration ─► pollable.block
//!                                                                   │
//!  host   in_tokio(timeout_at(call deadline, wasmtime-wasi's block))◄┘
//!           ready first     → returns to the guest
//!           deadline first  → Err(Trap::Interrupt) → StageFailure::Deadline
//! ```
//!
//! What can wait, given the context a stage gets (see `state.rs`):
//!
//! - `wasi:io/poll`: `poll` and `pollable.block`, over clocks and streams;
//! - `wasi:io/streams`: the `blocking-*` methods and the drop of a stream (which
//!   waits for its in-flight read or write);
//! - `wasi:filesystem/types`: `descriptor.open-at`, which waits forever on a FIFO
//!   that has no writer. Other descriptor calls read regular files and directories
//!   positionally (a FIFO refuses `pread` at once), so the disk bounds them.
//!
//! The host's own import that can wait, `weir:stage/lookup` (a table's first load),
//! runs under the same timeout (see `lookup.rs`).
//!
//! Everything else returns at once: stdin is closed, stdout and stderr are memory,
//! clocks and random never wait, sockets are not granted. A call whose wait is cut
//! short may leave a worker thread of the WASI runtime blocked in the kernel (an
//! `open` of a FIFO); the stage's thread is free at its deadline regardless.
//!
//! The timeout is checked only where a call would wait: `timeout_at` polls the
//! operation first, so a non-blocking poll after the deadline still answers, and the
//! epoch check traps on the guest's next step.

use std::future::Future;
use std::time::Instant;

use wasmtime::component::{Linker, LinkerInstance, Resource, ResourceTable, ResourceType};
use wasmtime::{StoreContextMut, Trap};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self as fs, Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::io::poll::{self, HostPollable};
use wasmtime_wasi::p2::bindings::io::streams::{
    self, HostInputStream, HostOutputStream, StreamError as WitStreamError,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError};
use wasmtime_wasi::runtime::in_tokio;

use super::state::StageState;

/// The version of the WASI 0.2 interfaces wasmtime-wasi links (its WIT packages).
/// A component importing any 0.2.x version resolves to these names, so shadowing
/// them replaces the functions every 0.2 component calls.
const WASI_VERSION: &str = "0.2.12";

/// Replaces every WASI function that can wait with one bounded by the call's
/// deadline. Call after `wasmtime_wasi::p2::add_to_linker_sync`.
///
/// # Errors
/// When the linker refuses a definition (a wasmtime-wasi upgrade changed a name or
/// a signature); the sandbox then fails to start rather than run unbounded.
pub(super) fn bound_waiting_calls(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = define(linker);
    linker.allow_shadowing(false);
    defined
}

fn define(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
    define_poll(&mut linker.instance(&format!("wasi:io/poll@{WASI_VERSION}"))?)?;
    define_streams(&mut linker.instance(&format!("wasi:io/streams@{WASI_VERSION}"))?)?;
    define_filesystem(&mut linker.instance(&format!("wasi:filesystem/types@{WASI_VERSION}"))?)
}

type Cx<'a> = StoreContextMut<'a, StageState>;

fn define_poll(i: &mut LinkerInstance<'_, StageState>) -> wasmtime::Result<()> {
    i.func_wrap(
        "poll",
        |mut cx: Cx<'_>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let ready = within(deadline, poll::Host::poll(table, pollables))??;
            Ok((ready,))
        },
    )?;
    i.func_wrap(
        "[method]pollable.block",
        |mut cx: Cx<'_>, (pollable,): (Resource<DynPollable>,)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            within(deadline, HostPollable::block(table, pollable))?
        },
    )
}

fn define_streams(i: &mut LinkerInstance<'_, StageState>) -> wasmtime::Result<()> {
    i.func_wrap(
        "[method]input-stream.blocking-read",
        |mut cx: Cx<'_>, (stream, len): (Resource<DynInputStream>, u64)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let read = within(deadline, HostInputStream::blocking_read(table, stream, len))?;
            Ok((stream_result(table, read)?,))
        },
    )?;
    i.func_wrap(
        "[method]input-stream.blocking-skip",
        |mut cx: Cx<'_>, (stream, len): (Resource<DynInputStream>, u64)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let skipped = within(deadline, HostInputStream::blocking_skip(table, stream, len))?;
            Ok((stream_result(table, skipped)?,))
        },
    )?;
    i.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut cx: Cx<'_>, (stream, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let written = within(
                deadline,
                HostOutputStream::blocking_write_and_flush(table, stream, bytes),
            )?;
            Ok((stream_result(table, written)?,))
        },
    )?;
    i.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |mut cx: Cx<'_>, (stream, len): (Resource<DynOutputStream>, u64)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let written = within(
                deadline,
                HostOutputStream::blocking_write_zeroes_and_flush(table, stream, len),
            )?;
            Ok((stream_result(table, written)?,))
        },
    )?;
    i.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut cx: Cx<'_>, (stream,): (Resource<DynOutputStream>,)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let flushed = within(deadline, HostOutputStream::blocking_flush(table, stream))?;
            Ok((stream_result(table, flushed)?,))
        },
    )?;
    i.func_wrap(
        "[method]output-stream.blocking-splice",
        |mut cx: Cx<'_>,
         (dst, src, len): (Resource<DynOutputStream>, Resource<DynInputStream>, u64)| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let moved = within(
                deadline,
                HostOutputStream::blocking_splice(table, dst, src, len),
            )?;
            Ok((stream_result(table, moved)?,))
        },
    )?;
    i.resource(
        "input-stream",
        ResourceType::host::<DynInputStream>(),
        |mut cx: Cx<'_>, rep| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let stream = Resource::<DynInputStream>::new_own(rep);
            within(deadline, HostInputStream::drop(table, stream))?
        },
    )?;
    i.resource(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        |mut cx: Cx<'_>, rep| {
            let (deadline, table) = cx.data_mut().deadline_and_table();
            let stream = Resource::<DynOutputStream>::new_own(rep);
            within(deadline, HostOutputStream::drop(table, stream))?
        },
    )
}

fn define_filesystem(i: &mut LinkerInstance<'_, StageState>) -> wasmtime::Result<()> {
    i.func_wrap(
        "[method]descriptor.open-at",
        |mut cx: Cx<'_>,
         (dir, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            let state = cx.data_mut();
            let deadline = state.deadline();
            let mut view = state.filesystem();
            let opened = within(
                deadline,
                fs::HostDescriptor::open_at(&mut view, dir, path_flags, path, open_flags, flags),
            )?;
            let opened: Result<Resource<Descriptor>, ErrorCode> = match opened {
                Ok(file) => Ok(file),
                Err(e) => Err(fs::Host::convert_error_code(&mut view, e)?),
            };
            Ok((opened,))
        },
    )
}

/// Runs `operation` on the WASI runtime until it completes or `deadline` passes;
/// past the deadline, the trap an epoch deadline raises.
pub(super) fn within<F: Future>(deadline: Instant, operation: F) -> wasmtime::Result<F::Output> {
    // The timer is made inside the runtime `in_tokio` enters: outside one, tokio has
    // no clock to register it with.
    in_tokio(async move { tokio::time::timeout_at(deadline.into(), operation).await })
        .map_err(|_elapsed| wasmtime::Error::from(Trap::Interrupt))
}

/// A stream operation's outcome as the guest sees it: a `stream-error` in the
/// table, or a trap for an error that is one.
fn stream_result<T>(
    table: &mut ResourceTable,
    outcome: Result<T, StreamError>,
) -> wasmtime::Result<Result<T, WitStreamError>> {
    match outcome {
        Ok(value) => Ok(Ok(value)),
        Err(e) => streams::Host::convert_stream_error(table, e).map(Err),
    }
}
