//! One module per command: glue between the CLI and the library.

pub mod dump;
pub mod record;
pub mod top;
