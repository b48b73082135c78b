//! Command-line definitions, with py-spy's command and flag names.

use clap::{Args, Parser, Subcommand};

use crate::python::frames::DEFAULT_DEPTH;

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
    /// Sample a process at a fixed rate and write a flame graph or another profile.
    Record(RecordArgs),
    /// Print every thread's current Python stack, once.
    Dump(DumpArgs),
    /// Show a live, top-like view of the functions taking the most time.
    Top(TopArgs),
}

/// What to sample: a running process or a command to launch, and how often.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// PID of a running Python process to attach to.
    #[arg(short, long, value_name = "PID", conflicts_with = "command")]
    pub pid: Option<u32>,

    /// Samples per second.
    #[arg(short, long, default_value_t = 100.0, value_name = "HZ")]
    pub rate: f64,

    /// Also profile child processes (subprocess, multiprocessing) as they appear.
    #[arg(short, long)]
    pub subprocesses: bool,

    /// Include threads that are idle (not on CPU) in the profile.
    #[arg(short, long)]
    pub idle: bool,

    /// Only include the thread holding the GIL.
    #[arg(short, long)]
    pub gil: bool,

    /// Never stop the target and skip the consistency re-check of each stack (fastest,
    /// may record an occasional torn stack).
    #[arg(long)]
    pub nonblocking: bool,

    /// Show full file names instead of package-relative ones.
    #[arg(long)]
    pub full_filenames: bool,

    /// Also sample native (C/C++/Rust) frames, merged with the Python frames; works on
    /// non-Python processes too. Each sampled thread is stopped for the moment its stack
    /// is read.
    #[arg(short, long)]
    pub native: bool,

    /// Most frames kept per stack, innermost first; the outer ones beyond are counted in
    /// a `[N frames not shown]` frame.
    #[arg(long, default_value_t = DEFAULT_DEPTH, value_name = "N")]
    pub depth: usize,

    /// Command to launch and profile, after `--` (e.g. `-- python app.py`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Options of `prof record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The target and the sampling rate.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output file [default: <program or pid>-<time>.<format's extension>].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Output format: flamegraph, raw (collapsed), speedscope, chrometrace, pprof
    /// [default: from the output file's extension, else flamegraph].
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<String>,

    /// Stop after this many seconds of wall-clock time [default: until Ctrl-C or the
    /// target exits].
    #[arg(short, long, value_name = "SECONDS")]
    pub duration: Option<f64>,

    /// Add each thread as the root frame of its stacks.
    #[arg(short, long)]
    pub threads: bool,

    /// Aggregate by function (its first line) instead of by the line being run.
    #[arg(short = 'F', long)]
    pub function: bool,

    /// Leave line numbers out of frame names.
    #[arg(long)]
    pub nolineno: bool,
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

    /// Also show native (C/C++/Rust) frames, merged with the Python frames; works on
    /// non-Python processes too (native frames only).
    #[arg(short, long)]
    pub native: bool,

    /// Most frames shown per stack, innermost first; the outer ones beyond are counted in
    /// a `[N frames not shown]` line.
    #[arg(long, default_value_t = DEFAULT_DEPTH, value_name = "N")]
    pub depth: usize,
}

/// Options of `prof top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The target and the sampling rate.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Seconds between refreshes of the screen (sampling goes on in between).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub delay: f64,
}
