//! Command-line definitions, with py-spy's command and flag names.

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::output::Format;
use crate::python::frames::DEFAULT_DEPTH;

/// The highest `--rate` prof accepts. On a 2-core x86_64 machine prof delivered 9,700 of
/// 10,000 requested samples per second and no more above that (9,800 of 20,000 on an idle
/// target, 8,900 of 20,000 on a busy one): each tick is a sleep whose overshoot (the
/// kernel's 50 µs timer slack) plus the read fills a 100 µs period, so a higher rate only
/// drops ticks. The `-r` help and the README quote this number.
pub const MAX_RATE: f64 = 10_000.0;

/// A pid in decimal or, as py-spy accepts, in hex with `0x`.
fn parse_pid(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse::<u32>(),
    };
    match parsed {
        Ok(pid) if pid > 0 && pid <= i32::MAX as u32 => Ok(pid),
        _ => Err("expected a process id (decimal, or hex with 0x)".to_string()),
    }
}

/// clap's usage error for the command line `argv` as one line: its message, its tips in
/// parentheses, and where the help is (clap's own rendering spends five lines on that).
pub fn one_line_error(e: &clap::Error, argv: &[String]) -> String {
    // StyledStr's Display is plain text, whatever the terminal.
    let text = e.render().to_string();
    let mut msg = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        match line.strip_prefix("tip: ") {
            // Its `-- VALUE` would make the value the command to launch.
            Some(tip) if tip.starts_with("to pass") => {}
            Some(tip) => msg.push_str(&format!(" ({tip})")),
            None if msg.is_empty() => msg.push_str(line.strip_prefix("error: ").unwrap_or(line)),
            // The rest of a list ("the following required arguments were not provided:").
            None => {
                msg.push(' ');
                msg.push_str(line);
            }
        }
    }
    let cli = <Cli as clap::CommandFactory>::command();
    let sub = argv
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .filter(|a| cli.find_subcommand(a.as_str()).is_some());
    match sub {
        Some(sub) => format!("{msg}; see `prof {sub} --help`"),
        None => format!("{msg}; see `prof --help`"),
    }
}

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
    /// Print the top functions of a profile file (pprof, speedscope or raw).
    Report(ReportArgs),
    /// Compare two profiles: the functions whose share changed, and a differential flame
    /// graph.
    Diff(DiffArgs),
    /// Say what each thread waits for (the GIL, I/O, a lock, a child, sleep) or runs
    /// (Python, native code), and which kind of bottleneck the program has.
    Diagnose(DiagnoseArgs),
}

/// Which process to sample (a running one or a command to launch), how often, and whether
/// its children too: shared by `record`, `top` and `diagnose`.
#[derive(Debug, Clone, Args)]
pub struct ProcessArgs {
    /// PID of a running Python process to attach to (decimal, or hex with 0x).
    #[arg(short, long, value_name = "PID", conflicts_with = "command", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Option<u32>,

    /// Samples per second, at most 10000 (prof cannot deliver more).
    #[arg(
        short,
        long,
        default_value_t = 100.0,
        value_name = "HZ",
        allow_negative_numbers = true
    )]
    pub rate: f64,

    /// Also sample child processes (subprocess, multiprocessing) as they appear.
    #[arg(short, long)]
    pub subprocesses: bool,

    /// Command to launch and profile (e.g. `python app.py --port 1`), after prof's own
    /// options; everything from its first word on is the command's. A `--` before it is
    /// optional.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How stacks are read and named: shared by `record`, `top`, `dump` and (their defaults)
/// `diagnose`.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// Never stop the target, even briefly: `record` and `top` then skip the consistency
    /// re-check of each stack (fastest, may record an occasional torn stack); `dump`
    /// re-checks each stack instead of pausing the process.
    #[arg(long)]
    pub nonblocking: bool,

    /// Show full file names instead of package-relative ones.
    #[arg(long)]
    pub full_filenames: bool,

    /// Also read native (C/C++/Rust) frames, merged with the Python frames; works on
    /// non-Python processes too. Each sampled thread is stopped for the moment its stack
    /// is read.
    #[arg(short, long)]
    pub native: bool,

    /// Most frames kept per stack, innermost first; the outer ones beyond are counted in
    /// a `[N frames not shown]` frame.
    #[arg(long, default_value_t = DEFAULT_DEPTH, value_name = "N")]
    pub depth: usize,
}

impl Default for StackArgs {
    fn default() -> StackArgs {
        StackArgs {
            nonblocking: false,
            full_filenames: false,
            native: false,
            depth: DEFAULT_DEPTH,
        }
    }
}

impl StackArgs {
    /// The checks clap cannot make: `--native` needs to stop threads, which
    /// `--nonblocking` forbids, and `--depth` must be a number of frames prof can follow.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.native && self.nonblocking {
            anyhow::bail!(crate::target::NATIVE_NONBLOCKING);
        }
        let most = crate::python::frames::MAX_DEPTH;
        if !(1..=most).contains(&self.depth) {
            anyhow::bail!(
                "--depth must be between 1 and {most} frames, not {}",
                self.depth
            );
        }
        Ok(())
    }
}

/// What to sample: a running process or a command to launch, how often, and which threads
/// and frames.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The process, the rate and its children.
    #[command(flatten)]
    pub process: ProcessArgs,

    /// Include threads that are idle (not on CPU) in the profile.
    #[arg(short, long)]
    pub idle: bool,

    /// Only include the thread holding the GIL (without a GIL, free-threaded: threads on CPU).
    #[arg(short, long)]
    pub gil: bool,

    /// How stacks are read and named.
    #[command(flatten)]
    pub stacks: StackArgs,

    /// Show asyncio tasks as stacks of their own, rooted at `task: NAME` frames along the
    /// chain of tasks awaiting them; waiting tasks count as idle (shown with --idle).
    #[arg(long = "async")]
    pub async_tasks: bool,
}

/// Options of `prof record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The target and the sampling rate.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output file; may be repeated to write several formats from one run [default:
    /// <program or pid>-<time>.<format's extension>].
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,

    /// Output format (`collapsed` is `raw`) [default: from the output file's extension,
    /// else flamegraph]. With several -o, one -f applies to those whose extension names no
    /// format, or one -f per -o pairs them in order.
    #[arg(short, long, value_name = "FORMAT", ignore_case = true)]
    pub format: Vec<Format>,

    /// Stop after this many seconds of wall-clock time [default: until Ctrl-C or the
    /// target exits].
    #[arg(short, long, value_name = "SECONDS", allow_negative_numbers = true)]
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

    /// At the end, print the top functions to stderr (the table of `prof report`).
    #[arg(long)]
    pub summary: bool,

    /// Add what each thread was doing (`[python]`, `[native]`, `[gil]`, `[io socket]`,
    /// `[lock]`, `[sleep]`, `[child]`, `[other]`, as in `prof diagnose`) as a frame under
    /// its thread or at the root, so every format can be split by state.
    #[arg(long)]
    pub states: bool,

    /// py-spy's switch for its progress bar: hide prof's live status line.
    #[arg(long, hide = true)]
    pub hideprogress: bool,

    /// py-spy's switch to swallow the command's output; refused with the reason.
    #[arg(long, hide = true)]
    pub capture: bool,
}

/// Options of `prof diagnose`.
#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The process, the rate and its children (each process, then all together).
    #[command(flatten)]
    pub process: ProcessArgs,

    /// Seconds of wall-clock time to sample [default: 5 with -p; with a command, until
    /// it exits].
    #[arg(short, long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub duration: Option<f64>,

    /// Print one JSON object: `{"verdict": {"kind", "text"}, "process": {"samples",
    /// "states"}, "threads": [{"pid", "tid", "name", "samples", "states", "top"}]}`.
    #[arg(short, long)]
    pub json: bool,
}

/// Options of `prof dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// PID of the running Python process (decimal, or hex with 0x).
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true,
          required_unless_present = "core",
          // `requires = "core"` on the core-only flags is not checked by clap when the
          // argument they require conflicts with one given: say it here.
          conflicts_with_all = ["core", "executable", "sysroot"])]
    pub pid: Option<u32>,

    /// Read a core file instead of a running process (written by the kernel, by gdb's
    /// `gcore`, or by qemu-user, of x86_64 or aarch64).
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["subprocesses", "nonblocking"])]
    pub core: Option<std::path::PathBuf>,

    /// With --core: the program the core is of, for a core that does not name its files
    /// (or when the file at the named path is not the one that ran).
    #[arg(long, value_name = "PATH", requires = "core")]
    pub executable: Option<std::path::PathBuf>,

    /// With --core: a directory holding the files of the machine the core was written on
    /// (its libraries are looked for under it first).
    #[arg(long, value_name = "DIR", requires = "core")]
    pub sysroot: Option<std::path::PathBuf>,

    /// Print the stacks as JSON (py-spy's schema).
    #[arg(short, long)]
    pub json: bool,

    /// Show local variables of each frame. May be repeated (-ll) as in py-spy; a second
    /// `l` shows the same.
    #[arg(short, long, action = ArgAction::Count)]
    pub locals: u8,

    /// Also dump each Python process descended from the target (subprocess,
    /// multiprocessing); processes without Python are left out, the target too when a
    /// descendant has Python.
    #[arg(short, long)]
    pub subprocesses: bool,

    /// How stacks are read and named.
    #[command(flatten)]
    pub stacks: StackArgs,

    /// Also show every asyncio task: the tree of tasks awaiting each other, what each one
    /// waits on and its coroutine stack (with --json: `{"threads": [...], "tasks": [...]}`).
    #[arg(long = "async")]
    pub async_tasks: bool,
}

/// Options of `prof top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The target and the sampling rate.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Seconds between refreshes of the screen (sampling goes on in between).
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub delay: f64,
}

/// Options of `prof report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The profile: a pprof, speedscope or raw (collapsed) file, told apart by content.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// Print a GitHub Markdown table (for `$GITHUB_STEP_SUMMARY`).
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,

    /// Print JSON: `{"samples", "functions": [{"name", "file", "line", "own", "total",
    /// "own_samples", "total_samples"}]}`, shares as fractions.
    #[arg(long)]
    pub json: bool,

    /// Most functions shown, the most own samples first; 0 shows all.
    #[arg(long, default_value_t = crate::commands::report::DEFAULT_TOP, value_name = "N")]
    pub top: usize,

    /// One row per function, or per line of a function.
    #[arg(long, value_enum, default_value_t = By::Function)]
    pub by: By,

    /// Only the samples of the threads of this name (or label, as `MainThread (tid 12)`).
    #[arg(long, value_name = "NAME")]
    pub thread: Option<String>,
}

/// Options of `prof diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The profile compared against (pprof, speedscope or raw), e.g. the base branch's.
    #[arg(value_name = "BASE")]
    pub base: std::path::PathBuf,

    /// The profile compared (pprof, speedscope or raw), e.g. this change's.
    #[arg(value_name = "HEAD")]
    pub head: std::path::PathBuf,

    /// Also write a differential flame graph (SVG): HEAD's frames, red where their share
    /// grew, blue where it shrank.
    #[arg(short, long, value_name = "SVG")]
    pub output: Option<std::path::PathBuf>,

    /// Print a GitHub Markdown table (for `$GITHUB_STEP_SUMMARY`).
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,

    /// Print JSON: `{"base": {"samples"}, "head": {"samples"}, "functions": [{"name",
    /// "file", "base_own", "head_own", "delta_pp", "p_value", "significant"}]}`.
    #[arg(long)]
    pub json: bool,

    /// Most functions shown, the largest change first; 0 shows all.
    #[arg(long, default_value_t = crate::commands::report::DEFAULT_TOP, value_name = "N")]
    pub top: usize,

    /// Exit 1 when a function's own share grew by more than PP percentage points,
    /// significantly.
    #[arg(long, value_name = "PP", value_parser = parse_points, allow_negative_numbers = true)]
    pub fail_over: Option<f64>,
}

/// A non-negative number of percentage points.
fn parse_points(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of percentage points (0 or more)"
        )),
    }
}

/// How `prof report` groups samples into rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// One row per function.
    Function,
    /// One row per line of a function.
    Line,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(argv(line))
    }

    #[test]
    fn pids_in_decimal_and_hex() {
        assert_eq!(parse_pid("15519"), Ok(15519));
        assert_eq!(parse_pid("0x3c9f"), Ok(0x3c9f));
        assert_eq!(parse_pid("0X3C9F"), Ok(0x3c9f));
        for bad in ["0", "-1", "0x", "12a", "0xg", "4294967296", "2147483648"] {
            assert!(parse_pid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_with_or_without_dashes() {
        for line in [
            "prof record -o x.svg python app.py --port 1 -r 5",
            "prof record -o x.svg -- python app.py --port 1 -r 5",
        ] {
            let Command::Record(r) = parse(line).unwrap().command else {
                panic!("{line}: not record");
            };
            assert_eq!(
                r.target.process.command,
                ["python", "app.py", "--port", "1", "-r", "5"]
            );
            assert_eq!(
                r.target.process.rate, 100.0,
                "{line}: -r after the command is the command's"
            );
            assert_eq!(r.output, [std::path::PathBuf::from("x.svg")]);
        }
    }

    #[test]
    fn top_takes_a_command_too() {
        let Command::Top(t) = parse("prof top --delay 2 python app.py --delay 5")
            .unwrap()
            .command
        else {
            panic!("not top");
        };
        assert_eq!(t.delay, 2.0);
        assert_eq!(
            t.target.process.command,
            ["python", "app.py", "--delay", "5"]
        );
    }

    #[test]
    fn report_options() {
        let Command::Report(r) = parse("prof report --by line --top 5 --thread Main x.pb.gz")
            .unwrap()
            .command
        else {
            panic!("not report");
        };
        assert_eq!(
            (r.by, r.top, r.thread.as_deref()),
            (By::Line, 5, Some("Main"))
        );
        assert_eq!(r.file, std::path::Path::new("x.pb.gz"));
        let Command::Report(r) = parse("prof report x").unwrap().command else {
            panic!("not report");
        };
        assert_eq!(
            (r.by, r.top, r.json, r.markdown),
            (By::Function, 20, false, false)
        );
        assert!(parse("prof report --json --markdown x").is_err());
        assert!(parse("prof report --by file x").is_err());
        assert!(parse("prof report").is_err());
    }

    #[test]
    fn diff_options() {
        let Command::Diff(d) = parse("prof diff -o d.svg --fail-over 2.5 --top 3 --json a b")
            .unwrap()
            .command
        else {
            panic!("not diff");
        };
        assert_eq!((d.base.to_str(), d.head.to_str()), (Some("a"), Some("b")));
        assert_eq!(d.output.as_deref().and_then(|p| p.to_str()), Some("d.svg"));
        assert_eq!((d.fail_over, d.top, d.json), (Some(2.5), 3, true));
        assert!(parse("prof diff a").is_err());
        assert!(parse("prof diff --json --markdown a b").is_err());
        assert!(parse("prof diff --fail-over -1 a b").is_err());
        assert!(parse("prof diff --fail-over nan a b").is_err());
    }

    #[test]
    fn async_for_dump_record_and_top() {
        let Command::Dump(d) = parse("prof dump -p 1 --async --json").unwrap().command else {
            panic!("not dump");
        };
        assert!(d.async_tasks && d.json);
        for line in ["prof record -p 1 --async", "prof top --async -p 1"] {
            let t = match parse(line).unwrap().command {
                Command::Record(r) => r.target,
                Command::Top(t) => t.target,
                _ => panic!("{line}"),
            };
            assert!(t.async_tasks, "{line}");
        }
        let Command::Record(r) = parse("prof record -p 1").unwrap().command else {
            panic!("not record");
        };
        assert!(!r.target.async_tasks);
    }

    #[test]
    fn diagnose_options() {
        let Command::Diagnose(d) = parse("prof diagnose -p 12 -d 2 -r 50 --json -s")
            .unwrap()
            .command
        else {
            panic!("not diagnose");
        };
        assert_eq!(
            (d.process.pid, d.duration, d.process.rate),
            (Some(12), Some(2.0), 50.0)
        );
        assert!(d.json && d.process.subprocesses && d.process.command.is_empty());
        let Command::Diagnose(d) = parse("prof diagnose -- python app.py -d 9")
            .unwrap()
            .command
        else {
            panic!("not diagnose");
        };
        assert_eq!(d.process.command, ["python", "app.py", "-d", "9"]);
        assert_eq!((d.process.pid, d.duration), (None, None));
        assert!(parse("prof diagnose -p 1 python x.py").is_err());
    }

    #[test]
    fn locals_repeat() {
        let Command::Dump(d) = parse("prof dump -p 1 -ll -s").unwrap().command else {
            panic!("not dump");
        };
        assert_eq!(d.locals, 2);
        assert!(d.subprocesses);
    }

    #[test]
    fn usage_errors_are_one_line() {
        for line in [
            "prof record --no-such-flag",
            "prof record -p abc",
            "prof dump",
            "prof nosuchcommand",
            "prof record -p 1 python",
        ] {
            let e = parse(line).map(|_| ()).unwrap_err();
            let one = one_line_error(&e, &argv(line));
            assert!(!one.contains('\n') && !one.is_empty(), "{line}: {one:?}");
            assert!(one.ends_with("--help`"), "{line}: {one:?}");
        }
        let line = "prof record --fromat raw";
        let one = one_line_error(&parse(line).map(|_| ()).unwrap_err(), &argv(line));
        assert!(one.contains("'--format'"), "{one}");
        assert!(one.ends_with("see `prof record --help`"), "{one}");
        // A bad format is named, with every format there is.
        let line = "prof record -f bogus -p 1";
        let one = one_line_error(&parse(line).map(|_| ()).unwrap_err(), &argv(line));
        assert!(!one.contains('\n') && one.contains("'bogus'"), "{one}");
        for f in Format::ALL {
            assert!(one.contains(f.name()), "{f}: {one}");
        }
        let line = "prof dump";
        let one = one_line_error(&parse(line).map(|_| ()).unwrap_err(), &argv(line));
        assert!(one.contains("--pid <PID>"), "{one}");
    }
}
