//! prof: a sampling profiler for Python processes.
//!
//! Data flows one way: `arch` (architectures as data) → `process` (memory, /proc, ptrace,
//! core files) → `target` (a live process or a core behind one trait) → `python` (frames,
//! names) and `native` (unwinding, symbols) → `target::Snapshot` (one capture of every
//! thread, merged) → `sample` → `sampler` → `profile` → `output` and `tui` → commands.

pub mod arch;
pub mod attach;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod diagnose;
pub mod native;
pub mod output;
pub mod process;
pub mod profile;
pub mod python;
pub mod sample;
pub mod sampler;
pub mod target;
pub mod tui;
