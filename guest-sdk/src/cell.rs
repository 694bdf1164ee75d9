//! Where an exported stage keeps its state between calls.
//!
//! The WIT exports are free functions, so the instance `init` (or `open`) built must
//! live in a `static` that `process` (or `next-batch`) can reach. A `static` must be
//! `Sync`; the stage itself need not be (it may hold an `Rc`, a `RefCell`, a cache), so
//! the cell asserts `Sync` on the stage's behalf. See [`StageCell::new`] for why that
//! holds.

use std::cell::RefCell;

/// The slot holding an exported stage's instance: empty until the first successful
/// `init`, replaced by each later successful one.
#[doc(hidden)]
pub struct StageCell<T> {
    slot: RefCell<Option<T>>,
}

// SAFETY: every `StageCell` was made through `StageCell::new`, whose caller promised
// that the cell is touched only from the component's exported functions. On
// wasm32-wasip2 a component instance has exactly one thread, and the component model
// forbids re-entering an instance while one of its exports runs, so two accesses never
// overlap and no value ever moves to another thread. (Off wasm the exports are never
// called at all.) The `RefCell` would turn a broken promise on one thread into a panic
// rather than aliasing.
unsafe impl<T> Sync for StageCell<T> {}

impl<T> StageCell<T> {
    /// An empty cell.
    ///
    /// # Safety
    ///
    /// The cell must be used only from the component's exported functions (as the
    /// `export_*!` macros do), never from another thread, so that the `Sync` the cell
    /// asserts for any `T` is never exercised.
    pub const unsafe fn new() -> Self {
        StageCell {
            slot: RefCell::new(None),
        }
    }

    /// Stores a new instance, dropping the previous one.
    pub(crate) fn replace(&self, stage: T) {
        *self.slot.borrow_mut() = Some(stage);
    }

    /// Runs `f` on the stored instance, or returns `None` when there is none yet.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.slot.borrow_mut().as_mut().map(f)
    }
}
