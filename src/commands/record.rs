//! `prof record`: sample at a fixed rate and write a profile.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow, bail};
use crossbeam_channel::{TryRecvError, bounded};

use crate::attach::{attach, is_not_python};
use crate::cli::{MAX_RATE, RecordArgs, TargetArgs};
use crate::output::file::OutputPath;
use crate::output::{Format, OutputError};
use crate::process;
use crate::process::spawn::{self, Launched};
use crate::profile::{Profile, ProfileMeta, ProfileOptions, RunStats};
use crate::sample::Sample;
use crate::sampler::{self, SamplerOptions, SamplerStats};

/// Run `prof record`; returns the exit code (the launched command's, in launch mode).
pub fn run(args: &RecordArgs) -> Result<i32> {
    let t = &args.target;
    check_target_args(t)?;
    if args.capture {
        bail!(
            "--capture is not supported: prof leaves the command's output where it would go without prof; redirect it instead (`prof record -o x.svg python app.py > app.log`)"
        );
    }
    if let Some(d) = args.duration
        && !(d > 0.0 && d.is_finite())
    {
        bail!("--duration must be a positive number of seconds, not {d}");
    }
    let format = match (&args.format, &args.output) {
        (Some(name), _) => Format::from_name(name).ok_or_else(|| {
            anyhow!("unknown format {name:?} (expected flamegraph, raw, speedscope, chrometrace or pprof)")
        })?,
        (None, Some(path)) => Format::from_extension(path).unwrap_or(Format::Flamegraph),
        (None, None) => Format::Flamegraph,
    };
    let path = match &args.output {
        Some(p) => p.clone(),
        None => default_output(t, format),
    };
    // An unwritable path is found now, not after a long recording.
    let output = OutputPath::check(&path)?;

    let stop = spawn::install_stop_handlers();
    let (root, launched, title) = start_target(t)?;
    let launched_mode = launched.is_some();
    let opts = ProfileOptions {
        threads_as_root: args.threads,
        by_function: args.function,
        no_line_numbers: args.nolineno,
        full_filenames: t.full_filenames,
        keep_timeline: format.needs_timeline(),
    };
    let mut sampler_opts = sampler_options(t, args.duration.map(Duration::from_secs_f64));
    sampler_opts.function_lines = args.function;
    let mut profile = Profile::new(ProfileMeta::new(title, t.rate, SystemTime::now()), opts);
    let progress = !args.hideprogress && std::io::stderr().is_terminal();
    let stats = collect(root, &sampler_opts, stop, &mut profile, progress);
    profile.rename_threads(&stats.thread_names);

    profile.finish(RunStats {
        duration: stats.elapsed.as_secs_f64(),
        ticks: stats.ticks,
        dropped_ticks: stats.dropped_ticks,
        errors: stats.errors,
    });
    let written = output.write(format, &profile);
    summary(&profile, &stats, &path, written.is_ok(), t.subprocesses);
    if args.summary {
        super::report::print_summary(&profile);
    }
    let code = match launched {
        Some(child) => child.wait(),
        None => 0,
    };
    match written {
        Ok(()) => Ok(code),
        Err(e)
            if e.downcast_ref::<OutputError>()
                .is_some_and(|e| matches!(e, OutputError::NoSamples)) =>
        {
            // Nothing to draw is not worth an empty file; the command's own result stands.
            eprintln!(
                "prof: no samples were collected, so {} was not written (was every thread idle? try --idle)",
                path.display()
            );
            Ok(if launched_mode { code } else { 1 })
        }
        Err(e) => Err(e),
    }
}

/// Exactly one of `--pid` and a command.
pub fn check_target_args(t: &TargetArgs) -> Result<()> {
    if t.pid.is_none() && t.command.is_empty() {
        bail!(
            "nothing to profile: give a PID with -p, or a command (e.g. `prof record -o x.svg python app.py`)"
        );
    }
    if t.native && t.nonblocking {
        bail!(crate::mixed::NATIVE_NONBLOCKING);
    }
    // The sampler would count every refused stop as an empty tick and end with a
    // misleading summary: say it now.
    if let Some(pid) = t.pid
        && t.native
        && pid == std::process::id()
    {
        return Err(process::ProcessError::Itself(pid).into());
    }
    super::check_depth(t.depth)?;
    if !(t.rate > 0.0 && t.rate.is_finite()) {
        bail!(
            "--rate must be a positive number of samples per second, not {}",
            t.rate
        );
    }
    if t.rate > MAX_RATE {
        bail!(
            "--rate {} is more than prof can deliver: the maximum is {MAX_RATE} samples per second",
            t.rate
        );
    }
    Ok(())
}

/// The sampler's options from the shared target flags.
pub fn sampler_options(t: &TargetArgs, duration: Option<Duration>) -> SamplerOptions {
    SamplerOptions {
        rate: t.rate,
        duration,
        nonblocking: t.nonblocking,
        include_idle: t.idle,
        gil_only: t.gil,
        subprocesses: t.subprocesses,
        function_lines: false,
        activity: false,
        native: t.native,
        depth: t.depth,
    }
}

/// Attach to the pid or launch the command. The root is an attached target, or the pid of
/// a launched command that the sampler attaches to once its interpreter is up.
pub fn start_target(
    t: &TargetArgs,
) -> Result<(
    Result<crate::attach::LiveTarget, u32>,
    Option<Launched>,
    String,
)> {
    start_target_logged(t, None)
}

/// [`start_target`]; a launched command's output goes to `log` when one is given
/// (see [`spawn::launch_logged`]).
pub fn start_target_logged(
    t: &TargetArgs,
    log: Option<&Path>,
) -> Result<(
    Result<crate::attach::LiveTarget, u32>,
    Option<Launched>,
    String,
)> {
    if let Some(pid) = t.pid {
        return match attach(pid) {
            Ok(target) => {
                let title = format!("{} (pid {pid})", target.cmdline);
                Ok((Ok(target), None, title))
            }
            // With --native a process without Python is profiled as a native program.
            Err(e) if t.native && is_not_python(&e) => {
                let cmdline = process::cmdline(pid).unwrap_or_else(|| format!("pid {pid}"));
                Ok((Err(pid), None, format!("{cmdline} (pid {pid})")))
            }
            Err(e) => Err(e),
        };
    }
    let child = match log {
        Some(log) => spawn::launch_logged(&t.command, log)?,
        None => spawn::launch(&t.command)?,
    };
    let pid = child.pid;
    Ok((Err(pid), Some(child), t.command.join(" ")))
}

/// How often the recording thread takes the sampler's samples.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Run the sampler on its own thread and aggregate its samples here; `live` shows the
/// status line.
fn collect(
    root: Result<crate::attach::LiveTarget, u32>,
    opts: &SamplerOptions,
    stop: &'static AtomicBool,
    profile: &mut Profile,
    live: bool,
) -> SamplerStats {
    // A few seconds of ticks: the channel only fills if this thread stalls.
    let (tx, rx) = bounded::<Vec<Sample>>(4096);
    let opts = opts.clone();
    let sampler = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || sampler::run(root, &opts, &tx, stop))
        .expect("cannot start the sampler thread");
    let start = Instant::now();
    let mut last_status = start;
    // Drained on a timer rather than woken for every tick: a wake-up per tick cost more
    // CPU than aggregating the samples.
    'run: loop {
        std::thread::sleep(DRAIN_EVERY);
        loop {
            match rx.try_recv() {
                Ok(batch) => batch.iter().for_each(|s| profile.add(s)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break 'run,
            }
        }
        if live && last_status.elapsed() >= Duration::from_millis(250) {
            last_status = Instant::now();
            status_line(profile, start.elapsed());
        }
    }
    if live {
        eprint!("\r\x1b[K");
    }
    sampler.join().unwrap_or_default()
}

fn status_line(profile: &Profile, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    eprint!(
        "\r\x1b[Kprof: recording {:.1}s · {} samples · {} threads · Ctrl-C to stop",
        secs,
        profile.total_samples(),
        profile.threads().len()
    );
}

fn summary(
    profile: &Profile,
    stats: &SamplerStats,
    path: &Path,
    written: bool,
    subprocesses: bool,
) {
    let mut line = stats.summary_line(
        profile.total_samples(),
        profile.threads().len(),
        profile.meta().requested_rate,
    );
    if written {
        line.push_str(&format!("; wrote {}", path.display()));
    }
    eprintln!("{line}");
    if !stats.root_attached {
        if !subprocesses {
            eprintln!(
                "prof: the command is not a Python process, so nothing was sampled \
                 (use -s to follow the Python processes it starts)"
            );
        } else if profile.total_samples() == 0 {
            eprintln!("prof: neither the command nor any process it started ran Python");
        }
    }
    if stats.target_exited {
        eprintln!("prof: the target exited; the profile covers it up to its exit");
    }
}

/// `<program or pid>-<local time>.<ext>` in the current directory.
fn default_output(t: &TargetArgs, format: Format) -> PathBuf {
    let program = match t.pid {
        Some(pid) => format!("pid{pid}"),
        None => program_name(&t.command),
    };
    PathBuf::from(format!(
        "{program}-{}.{}",
        local_timestamp(),
        format.default_extension()
    ))
}

/// The interesting name in a command: the script, not the interpreter running it.
fn program_name(command: &[String]) -> String {
    let base = |s: &str| {
        Path::new(s)
            .file_stem()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prof".into())
    };
    let first = command
        .first()
        .map(|s| base(s))
        .unwrap_or_else(|| "prof".into());
    if first.starts_with("python") {
        let mut rest = command.iter().skip(1);
        while let Some(arg) = rest.next() {
            if arg == "-m" {
                return rest.next().map(|m| m.replace('.', "_")).unwrap_or(first);
            }
            if !arg.starts_with('-') {
                return base(arg);
            }
        }
    }
    first
}

fn local_timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into the tm we pass.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn program_names() {
        assert_eq!(program_name(&cmd("python3 app.py --port 1")), "app");
        assert_eq!(
            program_name(&cmd("/usr/bin/python3.11 -u /x/serve.py")),
            "serve"
        );
        assert_eq!(program_name(&cmd("python -m http.server")), "http_server");
        assert_eq!(program_name(&cmd("./bench")), "bench");
    }
}
