//! `prof diagnose`: sample every thread's state for a while and say what the program waits
//! for.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::cli::{DiagnoseArgs, StackArgs, TargetArgs};
use crate::commands::record::{check_target_args, drain, sampler_options, start_target};
use crate::diagnose::Diagnosis;
use crate::process::spawn;

/// Seconds sampled with `-p` when `-d` is not given.
const DEFAULT_SECONDS: f64 = 5.0;

/// Run `prof diagnose`; returns the exit code (the launched command's, in launch mode).
pub fn run(args: &DiagnoseArgs) -> Result<i32> {
    let t = TargetArgs {
        process: args.process.clone(),
        // Waiting threads are what this command is about.
        idle: true,
        gil: false,
        stacks: StackArgs::default(),
        async_tasks: false,
    };
    check_target_args(&t)?;
    if let Some(d) = args.duration
        && !(d > 0.0 && d.is_finite())
    {
        bail!("--duration must be a positive number of seconds, not {d}");
    }
    let seconds = match (args.duration, args.process.pid) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => Some(DEFAULT_SECONDS),
        (None, None) => None,
    };
    let stop = spawn::install_stop_handlers();
    let (root, launched, title) = start_target(&t)?;
    let mut opts = sampler_options(&t, seconds.map(Duration::from_secs_f64));
    opts.states = true;
    let mut diagnosis = Diagnosis::new();
    let stats = drain(root, &opts, stop, |s| diagnosis.add(&s), || {});
    diagnosis.rename(&stats.thread_names);
    let report = diagnosis.report_all();
    let threads = report.threads.len();
    eprintln!(
        "{}",
        stats.summary_line(diagnosis.samples(), threads, args.process.rate)
    );
    if stats.target_exited && launched.is_none() {
        eprintln!("prof: the target exited; the diagnosis covers it up to its exit");
    }
    let launched_mode = launched.is_some();
    let code = match launched {
        Some(child) => child.wait(),
        None => 0,
    };
    if diagnosis.samples() == 0 {
        let why = "prof: no Python thread was sampled, so there is nothing to diagnose";
        if launched_mode {
            eprintln!("{why}");
            return Ok(code);
        }
        bail!("no Python thread was sampled, so there is nothing to diagnose");
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(out, "prof diagnose: {title}")?;
        write!(out, "{}", report.text())?;
    }
    Ok(code)
}
