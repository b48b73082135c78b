//! One module per command: glue between the CLI and the library.

pub mod diagnose;
pub mod diff;
pub mod dump;
pub mod record;
pub mod report;
pub mod top;
