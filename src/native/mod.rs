//! Native stacks: modules and their unwind tables, DWARF CFI unwinding, symbolization.
//!
//! A pure library over [`Memory`](crate::process::Memory): it never stops or ptraces the
//! target. The sampler gets a thread's [`Registers`] (ptrace, or a core file's notes),
//! keeps one [`Modules`] per process (refreshed from `/proc/PID/maps` when it changes), one
//! [`Unwinder`] and one [`Symbolizer`], and per sample calls [`Unwinder::unwind`] and
//! then [`Symbolizer::symbolize`] for pcs it has not seen.
//! [`stack::NativeStacks`] bundles that per-thread pipeline (one bounded copy of the
//! stack, unwind, symbolize); [`merge`] lines a native stack up with the Python stack.

/// The architectures, kept at the bottom floor (`crate::arch`); re-exported for the
/// unwinder's paths.
pub use crate::arch;
pub mod dwarf;
pub mod merge;
pub mod modules;
pub mod stack;
pub mod symbolize;
pub mod unwind;

pub use arch::{Arch, ArchKind, Registers};
pub use modules::{DebugSearch, ElfImage, Module, ModuleError, Modules, load_bias};
pub use symbolize::{SymbolFrame, Symbolized, Symbolizer, demangle};
pub use unwind::{Frame, UnwindError, UnwindPlan, UnwindRow, Unwinder, Via};
