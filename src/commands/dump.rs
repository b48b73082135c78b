//! `prof dump`: every thread's stack, once.

use std::io::Write;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::attach::{LiveTarget, attach, explain, is_not_python, thread_states, unless_exited};
use crate::cli::DumpArgs;
use crate::diagnose::Prober;
use crate::mixed::{NATIVE_NONBLOCKING, NativeTarget, PythonSide};
use crate::process::ptrace::PauseGuard;
use crate::process::{self, ProcessError};
use crate::python::{FrameOptions, module_name};
use crate::sample::{FrameKind, LocalVar, ThreadStack};

/// A frame in py-spy's JSON schema (plus `native`).
#[derive(Serialize)]
struct JsonFrame<'a> {
    name: &'a str,
    filename: &'a str,
    module: Option<String>,
    short_filename: &'a str,
    line: i32,
    locals: Option<&'a [LocalVar]>,
    /// Only with `--native`: native code (C, C++, Rust…) rather than Python.
    #[serde(skip_serializing_if = "Option::is_none")]
    native: Option<bool>,
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
    /// What the thread was doing (see `prof diagnose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    /// For `io`: the descriptor's kind and, for a socket, its peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    fd_kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    frames: Vec<JsonFrame<'a>>,
}

/// One process's stacks, ready to print.
struct Dumped {
    pid: u32,
    cmdline: String,
    /// `Python v3.12.1 (/usr/lib/libpython3.12.so.1.0)`, or None for native stacks only.
    python: Option<String>,
    stacks: Vec<ThreadStack>,
}

/// Run `prof dump`.
pub fn run(args: &DumpArgs) -> Result<()> {
    if args.native && args.nonblocking {
        bail!(NATIVE_NONBLOCKING);
    }
    super::check_depth(args.depth)?;
    let mut dumps = Vec::new();
    // With -s a root without Python (a shell, a launcher) may still have Python children.
    let root_error = match capture(args.pid, args) {
        Ok(d) => {
            dumps.push(d);
            None
        }
        Err(e) if args.subprocesses && is_not_python(&e) => Some(e),
        Err(e) => return Err(e),
    };
    if args.subprocesses {
        for pid in crate::process::events::descendants(args.pid) {
            match attach(pid) {
                Ok(target) => match capture_python(target, args) {
                    Ok(d) => dumps.push(d),
                    Err(e) => skip_or_warn(pid, e),
                },
                Err(e) => skip_or_warn(pid, e),
            }
        }
    }
    if let (Some(e), true) = (root_error, dumps.is_empty()) {
        bail!("{e:#}, nor is any process it started");
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        // One list, as for a single process: each thread carries its pid.
        let threads: Vec<JsonThread> = dumps
            .iter()
            .flat_map(|d| d.stacks.iter().map(|s| json_thread(d.pid, s, args.native)))
            .collect();
        serde_json::to_writer_pretty(&mut out, &threads)?;
        writeln!(out)?;
        return Ok(());
    }
    for (i, d) in dumps.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "Process {}: {}", d.pid, d.cmdline)?;
        match &d.python {
            Some(python) => writeln!(out, "{python}")?,
            None => writeln!(out, "Not a Python process: native stacks only")?,
        }
        for s in &d.stacks {
            writeln!(out)?;
            write_thread(&mut out, s, args.full_filenames)?;
        }
    }
    Ok(())
}

/// A descendant that is not Python, or that exited, is left out quietly (`-s` dumps the
/// Python ones); any other failure is reported and the others are still dumped.
fn skip_or_warn(pid: u32, e: anyhow::Error) {
    let exited = matches!(
        e.downcast_ref(),
        Some(ProcessError::Exited(_) | ProcessError::NotFound(_))
    );
    if !(exited || is_not_python(&e)) {
        eprintln!("prof: skipped child process {pid}: {e:#}");
    }
}

/// The stacks of `pid`: Python, or with `--native` native only for a non-Python process.
fn capture(pid: u32, args: &DumpArgs) -> Result<Dumped> {
    match attach(pid) {
        Ok(target) => capture_python(target, args),
        Err(e) if args.native && is_not_python(&e) => native_only(pid),
        Err(e) => Err(e),
    }
}

/// Every thread's stack of an attached Python process.
fn capture_python(mut target: LiveTarget, args: &DumpArgs) -> Result<Dumped> {
    let pid = target.pid;
    let states = thread_states(pid)?;
    let tids: Vec<u32> = states.iter().map(|s| s.0).collect();
    // What each thread is blocked in, read before anything is stopped.
    let mut prober = Prober::new(pid);
    let calls: Vec<_> = tids.iter().map(|t| (*t, prober.call(*t))).collect();
    // A paused process cannot tear a stack; a running one is re-checked instead.
    let opts = FrameOptions {
        locals: args.locals > 0,
        validate: args.nonblocking,
        function_lines: false,
        depth: args.depth,
    };
    let mut natives = if args.native {
        Some(NativeTarget::new(pid).map_err(|e| unless_exited(pid, e.into()))?)
    } else {
        None
    };
    let read = |target: &mut LiveTarget| target.reader.stacks(&tids, opts);
    let mut stacks = match &mut natives {
        // Only the unwinds need the stop; symbolizing (which may load DWARF) comes after.
        Some(natives) => {
            let (stacks, pcs) = natives
                .capture(&tids, || read(&mut target))
                .map_err(|e| unless_exited(pid, e.into()))?;
            let mut stacks = stacks.map_err(|e| explain(pid, e))?;
            let py = PythonSide {
                version: target.reader.interpreter().version(),
                entries: target.reader.entry_flags(),
                entry_addrs: target.reader.entry_frame_addresses(),
            };
            let state = |tid| states.iter().find(|x| x.0 == tid).map_or('?', |x| x.1);
            natives.merge_all(&mut stacks, &tids, &pcs, Some(&py), state);
            stacks
        }
        None => {
            // A paused process cannot tear a stack; a running one is re-checked instead.
            let _pause = if args.nonblocking {
                None
            } else {
                Some(PauseGuard::pause(pid, &tids).map_err(|e| unless_exited(pid, e.into()))?)
            };
            read(&mut target).map_err(|e| explain(pid, e))?
        }
    };
    for s in &mut stacks {
        let state = s
            .os_thread_id
            .and_then(|t| states.iter().find(|x| x.0 == t).map(|x| x.1));
        s.active = state == Some('R');
    }
    let v = target.reader.interpreter();
    let mem = target.reader.memory();
    let gil = crate::python::threads::gil_address(mem, &v.layout, v.runtime);
    let stat = |tid| states.iter().find(|x| x.0 == tid).map(|x| x.1);
    prober.fill(
        &mut stacks,
        &calls,
        None,
        stat,
        v.layout.free_threaded,
        gil,
        mem,
    );
    Ok(Dumped {
        pid,
        python: Some(format!("Python v{} ({})", v.version(), v.path)),
        cmdline: target.cmdline,
        stacks,
    })
}

/// `dump --native` of a process without Python: every thread's native stack.
fn native_only(pid: u32) -> Result<Dumped> {
    let states = thread_states(pid)?;
    let tids: Vec<u32> = states.iter().map(|s| s.0).collect();
    let mut natives = NativeTarget::new(pid).map_err(|e| unless_exited(pid, e.into()))?;
    let ((), pcs) = natives
        .capture(&tids, || ())
        .map_err(|e| unless_exited(pid, e.into()))?;
    let mut stacks = Vec::new();
    let state = |tid| states.iter().find(|x| x.0 == tid).map_or('?', |x| x.1);
    natives.merge_all(&mut stacks, &tids, &pcs, None, state);
    Ok(Dumped {
        pid,
        cmdline: process::cmdline(pid).unwrap_or_else(|| format!("pid {pid}")),
        python: None,
        stacks,
    })
}

fn json_thread(pid: u32, s: &ThreadStack, native: bool) -> JsonThread<'_> {
    let io = s.state.as_ref().and_then(|t| t.io.as_ref());
    JsonThread {
        pid,
        thread_id: s.thread_id,
        thread_name: s.thread_name.as_deref(),
        os_thread_id: s.os_thread_id,
        active: s.active,
        owns_gil: s.owns_gil,
        state: s.state.as_ref().map(|t| t.state.name()),
        fd_kind: io.and_then(|io| io.kind).map(|k| k.name()),
        peer: io.and_then(|io| io.peer.as_deref()),
        frames: s
            .frames
            .iter()
            .map(|f| {
                let is_native = f.kind == FrameKind::Native;
                JsonFrame {
                    name: f.name(),
                    filename: f.filename(),
                    module: if is_native {
                        None
                    } else {
                        module_name(f.short_filename())
                    },
                    short_filename: f.short_filename(),
                    line: f.line,
                    locals: f.locals.as_deref(),
                    native: native.then_some(is_native),
                }
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
    match &s.state {
        Some(state) => writeln!(
            out,
            "Thread {id} ({status}): \"{name}\" [{}]",
            state.describe()
        )?,
        None => writeln!(out, "Thread {id} ({status}): \"{name}\"")?,
    }
    for f in &s.frames {
        let file = if full {
            &f.filename()
        } else {
            &f.short_filename()
        };
        match f.kind {
            FrameKind::Python => writeln!(out, "    {} ({file}:{})", f.name(), f.line)?,
            // Native frames: `name (file:line)` from DWARF, else `name (module+offset)`;
            // marker frames have neither.
            _ if f.is_marker() => writeln!(out, "    {}", f.name())?,
            FrameKind::Native if f.line > 0 => {
                writeln!(out, "    {} ({file}:{}) [native]", f.name(), f.line)?
            }
            FrameKind::Native => {
                writeln!(out, "    {} ({}) [native]", f.name(), f.short_filename())?
            }
        }
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
