//! `prof dump`: every thread's stack, once.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::attach::{attach, explain, thread_states, unless_exited};
use crate::cli::DumpArgs;
use crate::process::ptrace::PauseGuard;
use crate::python::{FrameOptions, module_name};
use crate::sample::{LocalVar, ThreadStack};

/// A frame in py-spy's JSON schema.
#[derive(Serialize)]
struct JsonFrame<'a> {
    name: &'a str,
    filename: &'a str,
    module: Option<String>,
    short_filename: String,
    line: i32,
    locals: Option<&'a [LocalVar]>,
}

/// A thread in py-spy's JSON schema.
#[derive(Serialize)]
struct JsonThread<'a> {
    pid: u32,
    thread_id: u64,
    thread_name: Option<&'a str>,
    os_thread_id: Option<u32>,
    active: bool,
    owns_gil: bool,
    frames: Vec<JsonFrame<'a>>,
}

/// Run `prof dump`.
pub fn run(args: &DumpArgs) -> Result<()> {
    let pid = args.pid;
    let mut target = attach(pid)?;
    let states = thread_states(pid)?;
    let tids: Vec<u32> = states.iter().map(|s| s.0).collect();
    // A paused process cannot tear a stack; a running one is re-checked instead.
    let opts = FrameOptions {
        locals: args.locals,
        validate: args.nonblocking,
        function_lines: false,
    };
    let mut stacks = {
        let _pause = if args.nonblocking {
            None
        } else {
            Some(PauseGuard::pause(pid, &tids).map_err(|e| unless_exited(pid, e.into()))?)
        };
        target
            .reader
            .stacks(&tids, opts)
            .map_err(|e| explain(pid, e))?
    };
    for s in &mut stacks {
        let state = s
            .os_thread_id
            .and_then(|t| states.iter().find(|x| x.0 == t).map(|x| x.1));
        s.active = state == Some('R');
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        let threads: Vec<JsonThread> = stacks.iter().map(|s| json_thread(pid, s)).collect();
        serde_json::to_writer_pretty(&mut out, &threads)?;
        writeln!(out)?;
    } else {
        let v = target.reader.interpreter();
        writeln!(out, "Process {pid}: {}", target.cmdline)?;
        writeln!(out, "Python v{} ({})", v.version(), v.path)?;
        for s in &stacks {
            writeln!(out)?;
            write_thread(&mut out, s, args.full_filenames)?;
        }
    }
    Ok(())
}

fn json_thread(pid: u32, s: &ThreadStack) -> JsonThread<'_> {
    JsonThread {
        pid,
        thread_id: s.thread_id,
        thread_name: s.thread_name.as_deref(),
        os_thread_id: s.os_thread_id,
        active: s.active,
        owns_gil: s.owns_gil,
        frames: s
            .frames
            .iter()
            .map(|f| JsonFrame {
                name: &f.name,
                filename: &f.filename,
                module: module_name(&f.short_filename),
                short_filename: f.short_filename.clone(),
                line: f.line,
                locals: f.locals.as_deref(),
            })
            .collect(),
    }
}

fn write_thread(out: &mut impl Write, s: &ThreadStack, full: bool) -> std::io::Result<()> {
    let status = match (s.active, s.owns_gil) {
        (true, true) => "active+gil",
        (true, false) => "active",
        (false, true) => "idle+gil",
        (false, false) => "idle",
    };
    let id = match s.os_thread_id {
        Some(t) => t.to_string(),
        None => format!("{:#x}", s.thread_id),
    };
    let name = s.thread_name.as_deref().unwrap_or("");
    writeln!(out, "Thread {id} ({status}): \"{name}\"")?;
    for f in &s.frames {
        let file = if full { &f.filename } else { &f.short_filename };
        writeln!(out, "    {} ({file}:{})", f.name, f.line)?;
        if let Some(locals) = &f.locals {
            for v in locals {
                let kind = if v.arg { "arg" } else { "local" };
                let repr = v.repr.as_deref().unwrap_or("?");
                writeln!(out, "        {} = {repr}  [{kind}]", v.name)?;
            }
        }
    }
    Ok(())
}
