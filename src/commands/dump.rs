//! `prof dump`: every thread's stack, once.

use std::io::Write;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::attach::attach;
use crate::cli::DumpArgs;
use crate::diagnose::Prober;
use crate::python::asyncio::{AsyncTask, Awaiting, join_running};
use crate::python::{FrameOptions, module_name};
use crate::sample::{Frame, FrameKind, LocalVar, ThreadStack};
use crate::target::{
    CaptureOptions, CoreFile, CoreOptions, LivePid, Pause, Snapshot, Target, TargetError,
    ThreadState,
};

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

/// An asyncio task (`--async --json`).
#[derive(Serialize)]
struct JsonTask<'a> {
    pid: u32,
    name: &'a str,
    id: u64,
    thread_id: Option<u64>,
    state: &'static str,
    awaited_by: &'a [u64],
    /// What a waiting task waits on, in words (see [`awaiting_text`]).
    awaiting: Option<String>,
    frames: Vec<JsonFrame<'a>>,
}

/// One process's stacks, ready to print.
struct Dumped {
    pid: u32,
    cmdline: String,
    /// `Python v3.12.1 (/usr/lib/libpython3.12.so.1.0)`, or None for native stacks only.
    python: Option<String>,
    stacks: Vec<ThreadStack>,
    /// With `--async`: its asyncio tasks.
    tasks: Vec<AsyncTask>,
}

/// Run `prof dump`.
pub fn run(args: &DumpArgs) -> Result<()> {
    args.stacks.check()?;
    let dumps = match (&args.core, args.pid) {
        (Some(core), _) => {
            let opts = CoreOptions {
                executable: args.executable.clone(),
                sysroot: args.sysroot.clone(),
            };
            vec![dumped(
                Snapshot::attach_or_native(CoreFile::open(core, opts)?, args.stacks.native)?,
                args,
                None,
            )?]
        }
        (None, Some(pid)) => dump_live(pid, args)?,
        (None, None) => bail!("nothing to dump: give a PID with -p, or a core file with --core"),
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        // One list, as for a single process: each thread carries its pid.
        let threads: Vec<JsonThread> = dumps
            .iter()
            .flat_map(|d| {
                d.stacks
                    .iter()
                    .map(|s| json_thread(d.pid, s, args.stacks.native))
            })
            .collect();
        if args.async_tasks {
            let tasks: Vec<JsonTask> = dumps
                .iter()
                .flat_map(|d| {
                    d.tasks
                        .iter()
                        .map(|t| json_task(d.pid, t, args.stacks.native))
                })
                .collect();
            let both = serde_json::json!({ "threads": threads, "tasks": tasks });
            serde_json::to_writer_pretty(&mut out, &both)?;
            writeln!(out)?;
            return Ok(());
        }
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
            write_thread(&mut out, s, args.stacks.full_filenames)?;
        }
        if args.async_tasks {
            write_tasks(&mut out, &d.stacks, &d.tasks, args.stacks.full_filenames)?;
        }
    }
    Ok(())
}

/// The live process `pid`, and with `-s` its Python descendants.
fn dump_live(pid: u32, args: &DumpArgs) -> Result<Vec<Dumped>> {
    let mut dumps = Vec::new();
    // With -s a root without Python (a shell, a launcher) may still have Python children.
    let root = LivePid::open(pid).and_then(|t| Snapshot::attach_or_native(t, args.stacks.native));
    let root_error = match root.and_then(|s| dumped(s, args, Some(Prober::new(pid)))) {
        Ok(d) => {
            dumps.push(d);
            None
        }
        Err(e) if args.subprocesses && e.is_not_python() => Some(e),
        Err(e) => return Err(e.into()),
    };
    if args.subprocesses {
        for pid in crate::process::events::descendants(pid) {
            match attach(pid).and_then(|s| dumped(s, args, Some(Prober::new(pid)))) {
                Ok(d) => dumps.push(d),
                Err(e) => skip_or_warn(pid, e),
            }
        }
    }
    if let (Some(e), true) = (root_error, dumps.is_empty()) {
        bail!("{e:#}, nor is any process it started");
    }
    Ok(dumps)
}

/// A descendant that is not Python, or that exited, is left out quietly (`-s` dumps the
/// Python ones); any other failure is reported and the others are still dumped.
fn skip_or_warn(pid: u32, e: TargetError) {
    if !(e.is_gone() || e.is_not_python()) {
        eprintln!("prof: skipped child process {pid}: {e:#}");
    }
}

/// Every thread's stack of a target, once: paused for the read unless `--nonblocking`
/// (a paused process cannot tear a stack; a running one is re-checked instead).
fn dumped<T: Target>(
    mut snap: Snapshot<T>,
    args: &DumpArgs,
    mut prober: Option<Prober>,
) -> Result<Dumped, TargetError> {
    if args.stacks.native {
        snap.enable_native()?;
    }
    let threads = snap.target_mut().threads(true)?;
    // What each thread is blocked in, read before anything is paused.
    let calls: Vec<_> = match &mut prober {
        Some(p) => threads
            .iter()
            .map(|t| (t.tid, p.call(t.tid, None)))
            .collect(),
        None => Vec::new(),
    };
    let opts = CaptureOptions {
        frames: FrameOptions {
            locals: args.locals > 0,
            validate: args.stacks.nonblocking,
            function_lines: false,
            depth: args.stacks.depth,
        },
        pause: if args.stacks.nonblocking {
            Pause::Never
        } else {
            Pause::All
        },
        async_tasks: args.async_tasks,
        idle_stacks: true,
    };
    let mut capture = snap.capture(&threads, &opts)?;
    if let (Some(prober), Some(v)) = (&mut prober, snap.interpreter()) {
        let mem = snap.target().memory();
        let gil = crate::python::threads::gil_address(mem, &v.layout, v.runtime);
        let stat = |tid| {
            threads
                .iter()
                .find(|t| t.tid == tid)
                .map_or(ThreadState::Unknown, |t| t.state)
        };
        let free_threaded = v.layout.free_threaded;
        prober.fill(
            &mut capture.stacks,
            &calls,
            None,
            stat,
            free_threaded,
            gil,
            mem,
        );
    }
    let t = snap.target();
    let mut tasks = match capture.tasks {
        Some(Ok(tasks)) => tasks,
        Some(Err(e)) => {
            eprintln!(
                "prof: could not read the asyncio tasks of process {}: {e}",
                t.pid()
            );
            Vec::new()
        }
        None => Vec::new(),
    };
    join_running(&mut tasks, &capture.stacks);
    Ok(Dumped {
        pid: t.pid(),
        cmdline: t.command_line(),
        python: snap
            .interpreter()
            .map(|v| format!("Python v{} ({})", v.version(), v.path)),
        stacks: capture.stacks,
        tasks,
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
        frames: json_frames(&s.frames, native),
    }
}

fn json_frames(frames: &[Frame], native: bool) -> Vec<JsonFrame<'_>> {
    frames
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
        .collect()
}

fn json_task(pid: u32, t: &AsyncTask, native: bool) -> JsonTask<'_> {
    JsonTask {
        pid,
        name: &t.name,
        id: t.id,
        thread_id: t.thread_id,
        state: if t.running { "running" } else { "waiting" },
        awaited_by: &t.awaited_by,
        awaiting: awaiting_text(t, &[]),
        frames: json_frames(&t.frames, native),
    }
}

/// What a waiting task waits on, in words: the tasks by name (from `tasks`, else by id), a
/// future with the coroutine that awaits it (`asyncio.sleep`, `sock_recv`), or a yield.
fn awaiting_text(t: &AsyncTask, tasks: &[AsyncTask]) -> Option<String> {
    if t.running {
        return None;
    }
    Some(match &t.awaiting {
        Awaiting::Unknown => return None,
        Awaiting::Tasks(ids) => {
            let names: Vec<String> = ids
                .iter()
                .map(|id| match tasks.iter().find(|x| x.id == *id) {
                    Some(x) => x.name.to_string(),
                    None => format!("{id:#x}"),
                })
                .collect();
            format!("tasks {}", names.join(", "))
        }
        Awaiting::Future { kind } => match t.frames.first() {
            Some(f) => format!("{kind} in {}", f.name()),
            None => kind.clone(),
        },
        Awaiting::Yield => "a yield (ready to run)".to_string(),
    })
}

/// The await tree of each thread's tasks, as `python -m asyncio pstree` draws it: each
/// task under the task awaiting it, with what it waits on and its frames.
fn write_tasks(
    out: &mut impl Write,
    stacks: &[ThreadStack],
    tasks: &[AsyncTask],
    full: bool,
) -> std::io::Result<()> {
    let mut threads: Vec<Option<u64>> = Vec::new();
    for t in tasks {
        if !threads.contains(&t.thread_id) {
            threads.push(t.thread_id);
        }
    }
    for tid in threads {
        let on: Vec<&AsyncTask> = tasks.iter().filter(|t| t.thread_id == tid).collect();
        writeln!(out)?;
        let thread = stacks.iter().find(|s| Some(s.thread_id) == tid);
        match (tid, thread) {
            (Some(_), Some(s)) => {
                let id = match s.os_thread_id {
                    Some(t) => t.to_string(),
                    None => format!("{:#x}", s.thread_id),
                };
                let name = s.thread_name.as_deref().unwrap_or("");
                writeln!(out, "Tasks of thread {id} \"{name}\" ({}):", on.len())?;
            }
            (Some(t), None) => writeln!(out, "Tasks of thread {t:#x} ({}):", on.len())?,
            (None, _) => writeln!(out, "Tasks of no running loop ({}):", on.len())?,
        }
        let ids: Vec<u64> = on.iter().map(|t| t.id).collect();
        let mut shown = Vec::new();
        // Roots first: tasks nobody (on this thread) awaits; then any left in a cycle.
        let roots = on
            .iter()
            .filter(|t| !t.awaited_by.iter().any(|p| ids.contains(p)))
            .chain(on.iter());
        for root in roots {
            if !shown.contains(&root.id) {
                write_task_tree(out, root, &on, tasks, 1, &mut shown, full)?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_task_tree(
    out: &mut impl Write,
    t: &AsyncTask,
    on: &[&AsyncTask],
    tasks: &[AsyncTask],
    depth: usize,
    shown: &mut Vec<u64>,
    full: bool,
) -> std::io::Result<()> {
    let pad = "  ".repeat(depth);
    let state = match awaiting_text(t, tasks) {
        _ if t.running => "running".to_string(),
        Some(what) => format!("waiting on {what}"),
        None => "waiting".to_string(),
    };
    writeln!(out, "{pad}task: {} ({state}) [id {:#x}]", t.name, t.id)?;
    shown.push(t.id);
    for f in &t.frames {
        let file = if full {
            f.filename()
        } else {
            f.short_filename()
        };
        if f.kind == FrameKind::Python {
            writeln!(out, "{pad}    {} ({file}:{})", f.name(), f.line)?;
        } else {
            writeln!(out, "{pad}    {} [native]", f.name())?;
        }
    }
    for child in on.iter().filter(|c| c.awaited_by.contains(&t.id)) {
        if !shown.contains(&child.id) && depth < crate::python::asyncio::MAX_CHAIN {
            write_task_tree(out, child, on, tasks, depth + 1, shown, full)?;
        }
    }
    Ok(())
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
