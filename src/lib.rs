//! prof: a sampling profiler for Python processes.
//!
//! Data flows one way: `process` (the target's memory, threads, stops) → `python`
//! (interpreter discovery, frames, names) and `native` (unwinding, symbols; `mixed` merges
//! the two for live threads) → `sample` (the shared data model) → `sampler` → `profile` →
//! `output` and `tui` → commands.

pub mod attach;
pub mod cli;
pub mod commands;
pub mod diagnose;
pub mod mixed;
pub mod native;
pub mod output;
pub mod process;
pub mod profile;
pub mod python;
pub mod sample;
pub mod sampler;
pub mod tui;
