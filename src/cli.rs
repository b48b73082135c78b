//! Command-line definitions, with py-spy's command and flag names.

use clap::{Args, Parser, Subcommand};

/// A sampling profiler for Python programs: attach to a running process and see where
/// the time goes.
#[derive(Debug, Parser)]
#[command(name = "prof", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// prof's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every thread's current Python stack, once.
    Dump(DumpArgs),
}

/// Options of `prof dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// PID of the running Python process.
    #[arg(short, long, value_name = "PID")]
    pub pid: u32,

    /// Print the stacks as JSON (py-spy's schema).
    #[arg(short, long)]
    pub json: bool,

    /// Show local variables of each frame.
    #[arg(short, long)]
    pub locals: bool,

    /// Show full file names instead of package-relative ones.
    #[arg(long)]
    pub full_filenames: bool,

    /// Never stop the target, even briefly: stacks may be slightly inconsistent.
    #[arg(long)]
    pub nonblocking: bool,
}
