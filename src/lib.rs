//! prof: a sampling profiler for Python processes.
//!
//! Data flows one way: `process` (the target's memory, threads, stops) → `python`
//! (interpreter discovery, frames, names) → `sample` (the shared data model) → commands.

pub mod attach;
pub mod cli;
pub mod commands;
pub mod native;
pub mod output;
pub mod process;
pub mod profile;
pub mod python;
pub mod sample;
pub mod sampler;
pub mod tui;
