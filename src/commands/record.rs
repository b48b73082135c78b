//! `prof record`: sample at a fixed rate and write a profile.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use crossbeam_channel::{TryRecvError, bounded};

use crate::attach::attach;
use crate::cli::{MAX_RATE, RecordArgs, TargetArgs};
use crate::output::file::OutputPath;
use crate::output::{Format, OutputError};
use crate::process;
use crate::process::spawn::{self, Launched};
use crate::profile::{Profile, ProfileMeta, ProfileOptions, RunStats};
use crate::sample::{Frame, Sample};
use crate::sampler::{self, SamplerOptions, SamplerStats};
use crate::target::Target;
use std::collections::HashMap;

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
    let outputs = choose_outputs(&args.output, &args.format, |f| default_output(t, f))?;
    // An unwritable path is found now, not after a long recording.
    let checked = outputs
        .iter()
        .map(|(path, _)| OutputPath::check(path))
        .collect::<Result<Vec<_>>>()?;

    let stop = spawn::install_stop_handlers();
    let (root, launched, title) = start_target(t)?;
    let launched_mode = launched.is_some();
    let opts = ProfileOptions {
        threads_as_root: args.threads,
        by_function: args.function,
        no_line_numbers: args.nolineno,
        full_filenames: t.stacks.full_filenames,
        keep_timeline: outputs.iter().any(|(_, f)| f.needs_timeline()),
    };
    let mut sampler_opts = sampler_options(t, args.duration.map(Duration::from_secs_f64));
    sampler_opts.function_lines = args.function;
    sampler_opts.states = args.states;
    let mut profile = Profile::new(
        ProfileMeta::new(title, t.process.rate, SystemTime::now()),
        opts,
    );
    let progress = !args.hideprogress && std::io::stderr().is_terminal();
    let stats = collect(
        root,
        &sampler_opts,
        stop,
        &mut profile,
        progress,
        args.states,
    );
    profile.rename_threads(&stats.thread_names);

    profile.finish(RunStats {
        duration: stats.elapsed.as_secs_f64(),
        ticks: stats.ticks,
        dropped_ticks: stats.dropped_ticks,
        errors: stats.errors,
    });
    // One failed output does not cost the others: each is written, then the failures said.
    let mut written = Vec::new();
    let mut empty = Vec::new();
    let mut failed = Vec::new();
    for ((path, format), output) in outputs.iter().zip(&checked) {
        match output.write(*format, &profile) {
            Ok(()) => written.push(path.as_path()),
            Err(e)
                if e.downcast_ref::<OutputError>()
                    .is_some_and(|e| matches!(e, OutputError::NoSamples)) =>
            {
                empty.push(path.as_path())
            }
            Err(e) => failed.push(e),
        }
    }
    summary(&profile, &stats, &written, t.process.subprocesses);
    if args.summary {
        super::report::print_summary(&profile);
    }
    let code = match launched {
        Some(child) => child.wait(),
        None => 0,
    };
    for path in &empty {
        // Nothing to draw is not worth an empty file; the command's own result stands.
        eprintln!(
            "prof: no samples were collected, so {} was not written (was every thread idle? try --idle)",
            path.display()
        );
    }
    if let Some(last) = failed.pop() {
        for e in failed {
            eprintln!("prof: {e:#}");
        }
        return Err(last);
    }
    Ok(if empty.is_empty() || launched_mode {
        code
    } else {
        1
    })
}

/// The outputs of a run in the order given, each path with its format.
///
/// Each `-o` takes its format from its own `-f` when there are as many `-f` as `-o`
/// (paired in order, the `-f` deciding, as py-spy's `-f` does for its one output); else
/// from its extension, else from the one `-f` given for all, else flamegraph. Without
/// `-o`, each `-f` (or flamegraph) is written to a default name from `default`.
fn choose_outputs(
    paths: &[PathBuf],
    formats: &[Format],
    default: impl Fn(Format) -> PathBuf,
) -> Result<Vec<(PathBuf, Format)>> {
    if paths.is_empty() {
        let mut chosen: Vec<Format> = Vec::new();
        for f in formats.iter().copied() {
            if !chosen.contains(&f) {
                chosen.push(f);
            }
        }
        if chosen.is_empty() {
            chosen.push(Format::Flamegraph);
        }
        return Ok(chosen.into_iter().map(|f| (default(f), f)).collect());
    }
    let outputs: Vec<(PathBuf, Format)> = match formats.len() {
        n if n == paths.len() => paths.iter().cloned().zip(formats.iter().copied()).collect(),
        0 | 1 => {
            let shared = formats.first().copied();
            if shared.is_some() && paths.iter().all(|p| Format::from_extension(p).is_some()) {
                bail!(
                    "-f {} applies to no output: every -o's extension names its format (give one -f per -o to pair them in order)",
                    formats[0]
                );
            }
            paths
                .iter()
                .map(|p| {
                    let format = Format::from_extension(p).or(shared);
                    (p.clone(), format.unwrap_or(Format::Flamegraph))
                })
                .collect()
        }
        n => bail!(
            "{n} formats (-f) for {} outputs (-o): give one -f per -o, or one -f for the outputs whose extension names no format",
            paths.len()
        ),
    };
    for (i, (path, _)) in outputs.iter().enumerate() {
        if outputs[..i].iter().any(|(seen, _)| seen == path) {
            bail!("{} is given twice as -o", path.display());
        }
    }
    Ok(outputs)
}

/// Exactly one of `--pid` and a command.
pub fn check_target_args(t: &TargetArgs) -> Result<()> {
    if t.process.pid.is_none() && t.process.command.is_empty() {
        bail!(
            "nothing to profile: give a PID with -p, or a command (e.g. `prof record -o x.svg python app.py`)"
        );
    }
    t.stacks.check()?;
    // The sampler would count every refused stop as an empty tick and end with a
    // misleading summary: say it now.
    if let Some(pid) = t.process.pid
        && t.stacks.native
        && pid == std::process::id()
    {
        return Err(process::ProcessError::Itself(pid).into());
    }
    if !(t.process.rate > 0.0 && t.process.rate.is_finite()) {
        bail!(
            "--rate must be a positive number of samples per second, not {}",
            t.process.rate
        );
    }
    if t.process.rate > MAX_RATE {
        bail!(
            "--rate {} is more than prof can deliver: the maximum is {MAX_RATE} samples per second",
            t.process.rate
        );
    }
    Ok(())
}

/// The sampler's options from the shared target flags.
pub fn sampler_options(t: &TargetArgs, duration: Option<Duration>) -> SamplerOptions {
    SamplerOptions {
        rate: t.process.rate,
        duration,
        nonblocking: t.stacks.nonblocking,
        include_idle: t.idle,
        gil_only: t.gil,
        subprocesses: t.process.subprocesses,
        function_lines: false,
        activity: false,
        native: t.stacks.native,
        depth: t.stacks.depth,
        async_tasks: t.async_tasks,
        states: false,
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
    if let Some(pid) = t.process.pid {
        return match attach(pid) {
            Ok(target) => {
                let title = format!("{} (pid {pid})", target.target().command_line());
                Ok((Ok(target), None, title))
            }
            // With --native a process without Python is profiled as a native program.
            Err(e) if t.stacks.native && e.is_not_python() => {
                let cmdline = process::cmdline(pid).unwrap_or_else(|| format!("pid {pid}"));
                Ok((Err(pid), None, format!("{cmdline} (pid {pid})")))
            }
            Err(e) => Err(e.into()),
        };
    }
    let child = match log {
        Some(log) => spawn::launch_logged(&t.process.command, log)?,
        None => spawn::launch(&t.process.command)?,
    };
    let pid = child.pid;
    Ok((Err(pid), Some(child), t.process.command.join(" ")))
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
    states: bool,
) -> SamplerStats {
    let start = Instant::now();
    let mut last_status = start;
    let profile = std::cell::RefCell::new(profile);
    // One frame per label, shared by every sample that carries it.
    let mut labels: HashMap<String, Frame> = HashMap::new();
    let stats = drain(
        root,
        opts,
        stop,
        |mut s| {
            if states && let Some(st) = &s.stack.state {
                let label = st.frame_label();
                let frame = labels
                    .entry(label)
                    .or_insert_with_key(|l| Frame::marker(l.as_str()));
                s.stack.frames.push(frame.clone());
            }
            if sampler::profiled(opts, &s) {
                profile.borrow_mut().add(&s)
            }
        },
        || {
            if live && last_status.elapsed() >= Duration::from_millis(250) {
                last_status = Instant::now();
                status_line(&profile.borrow(), start.elapsed());
            }
        },
    );
    if live {
        eprint!("\r\x1b[K");
    }
    stats
}

/// Run the sampler on its own thread and hand each of its samples to `add` here, calling
/// `every` after each drain; returns the sampler's figures once it ends. `record` and
/// `diagnose` share it.
pub fn drain(
    root: Result<crate::attach::LiveTarget, u32>,
    opts: &SamplerOptions,
    stop: &'static AtomicBool,
    mut add: impl FnMut(Sample),
    mut every: impl FnMut(),
) -> SamplerStats {
    // A few seconds of ticks: the channel only fills if this thread stalls.
    let (tx, rx) = bounded::<Vec<Sample>>(4096);
    let opts = opts.clone();
    let sampler = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || sampler::run(root, &opts, &tx, stop))
        .expect("cannot start the sampler thread");
    // Drained on a timer rather than woken for every tick: a wake-up per tick cost more
    // CPU than aggregating the samples.
    'run: loop {
        std::thread::sleep(DRAIN_EVERY);
        loop {
            match rx.try_recv() {
                Ok(batch) => batch.into_iter().for_each(&mut add),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break 'run,
            }
        }
        every();
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

fn summary(profile: &Profile, stats: &SamplerStats, written: &[&Path], subprocesses: bool) {
    let mut line = stats.summary_line(
        profile.total_samples(),
        profile.threads().len(),
        profile.meta().requested_rate,
    );
    if !written.is_empty() {
        let paths: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        line.push_str(&format!("; wrote {}", paths.join(", ")));
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
    for note in &stats.notices {
        eprintln!("prof: {note}");
    }
}

/// `<program or pid>-<local time>.<ext>` in the current directory.
fn default_output(t: &TargetArgs, format: Format) -> PathBuf {
    let program = match t.process.pid {
        Some(pid) => format!("pid{pid}"),
        None => program_name(&t.process.command),
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

    /// `choose_outputs` for `-o` paths and `-f` names, as `path:format` words, or the error.
    fn chosen(paths: &str, names: &str) -> String {
        use clap::ValueEnum;
        let paths: Vec<PathBuf> = paths.split_whitespace().map(PathBuf::from).collect();
        let formats: Vec<Format> = cmd(names)
            .iter()
            .map(|n| Format::from_str(n, true).expect("a format"))
            .collect();
        let default = |f: Format| PathBuf::from(format!("app-T.{}", f.default_extension()));
        match choose_outputs(&paths, &formats, default) {
            Ok(outputs) => outputs
                .iter()
                .map(|(p, f)| format!("{}:{f}", p.display()))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn outputs_and_formats() {
        // Without -o: one default name per distinct -f.
        assert_eq!(chosen("", ""), "app-T.svg:flamegraph");
        assert_eq!(
            chosen("", "raw speedscope raw"),
            "app-T.txt:raw app-T.json:speedscope"
        );
        // One -o: the -f decides, else the extension, else flamegraph.
        assert_eq!(chosen("p.txt", "speedscope"), "p.txt:speedscope");
        assert_eq!(chosen("p.pb.gz", ""), "p.pb.gz:pprof");
        assert_eq!(chosen("p", ""), "p:flamegraph");
        // Several -o: extensions, and one -f for those whose extension says nothing.
        assert_eq!(
            chosen("a.svg b.pb.gz c.txt", ""),
            "a.svg:flamegraph b.pb.gz:pprof c.txt:raw"
        );
        assert_eq!(
            chosen("a.svg /dev/null prof.out", "raw"),
            "a.svg:flamegraph /dev/null:raw prof.out:raw"
        );
        // As many -f as -o: paired in order.
        assert_eq!(
            chosen("a.json b", "chrometrace pprof"),
            "a.json:chrometrace b:pprof"
        );
        for (paths, names, error) in [
            ("a.svg b.txt", "raw", "-f raw applies to no output"),
            ("a b c", "raw pprof", "2 formats (-f) for 3 outputs (-o)"),
            ("a.svg b.txt a.svg", "", "a.svg is given twice as -o"),
        ] {
            let got = chosen(paths, names);
            assert!(got.starts_with(&format!("error: {error}")), "{got}");
        }
    }
}
