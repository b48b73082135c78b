//! `prof dump`: every thread's stack, once.

use std::io::Write;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::attach::{LiveTarget, attach, explain, thread_states, unless_exited};
use crate::cli::DumpArgs;
use crate::native::merge::{EntryRule, NativeFrame, merge, uncertain_frame};
use crate::native::stack::NativeStacks;
use crate::native::{Frame as UnwoundFrame, Modules};
use crate::process::ptrace::PauseGuard;
use crate::process::regs::thread_registers;
use crate::process::{self, LiveMemory};
use crate::python::{FrameOptions, PyError, module_name};
use crate::sample::{Frame, FrameKind, LocalVar, ThreadStack};

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
    frames: Vec<JsonFrame<'a>>,
}

/// Run `prof dump`.
pub fn run(args: &DumpArgs) -> Result<()> {
    let pid = args.pid;
    if args.native && args.nonblocking {
        bail!(
            "--native reads each thread's registers, which needs a brief stop: it cannot be used with --nonblocking"
        );
    }
    let mut target = match attach(pid) {
        Ok(t) => t,
        Err(e) if args.native && is_not_python(&e) => return native_only(args),
        Err(e) => return Err(e),
    };
    let states = thread_states(pid)?;
    let tids: Vec<u32> = states.iter().map(|s| s.0).collect();
    // A paused process cannot tear a stack; a running one is re-checked instead.
    let opts = FrameOptions {
        locals: args.locals,
        validate: args.nonblocking,
        function_lines: false,
    };
    let mut natives = if args.native {
        Some(native_stacks(pid)?)
    } else {
        None
    };
    let (mut stacks, pcs) = {
        let _pause = if args.nonblocking {
            None
        } else {
            Some(PauseGuard::pause(pid, &tids).map_err(|e| unless_exited(pid, e.into()))?)
        };
        let stacks = target
            .reader
            .stacks(&tids, opts)
            .map_err(|e| explain(pid, e))?;
        // Only the unwinds need the stop; symbolizing (which may load DWARF) comes after.
        let pcs: Vec<Option<Vec<UnwoundFrame>>> = match &mut natives {
            Some(natives) => stacks
                .iter()
                .map(|s| {
                    s.os_thread_id
                        .map(|tid| thread_pcs(natives, target.reader.memory(), tid))
                })
                .collect(),
            None => Vec::new(),
        };
        (stacks, pcs)
    };
    if let Some(natives) = &mut natives {
        merge_native(&target, natives, &mut stacks, &pcs);
    }
    for s in &mut stacks {
        let state = s
            .os_thread_id
            .and_then(|t| states.iter().find(|x| x.0 == t).map(|x| x.1));
        s.active = state == Some('R');
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        let threads: Vec<JsonThread> = stacks
            .iter()
            .map(|s| json_thread(pid, s, args.native))
            .collect();
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

/// Did attaching fail because the process has no Python interpreter?
fn is_not_python(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<PyError>(), Some(PyError::NotPython(_)))
}

/// Modules and unwinder for process `pid`, built once per dump.
fn native_stacks(pid: u32) -> Result<NativeStacks> {
    let maps = process::read_maps(pid).map_err(|e| unless_exited(pid, anyhow!(e)))?;
    let mem = LiveMemory::new(pid);
    let modules = Modules::for_pid(pid, &maps, &mem);
    Ok(NativeStacks::new(modules, maps))
}

/// The unwound pcs of stopped thread `tid` (empty if its registers cannot be read).
fn thread_pcs(natives: &mut NativeStacks, mem: &LiveMemory, tid: u32) -> Vec<UnwoundFrame> {
    match thread_registers(tid) {
        Ok(regs) => natives.unwind(mem, &regs).0,
        Err(_) => Vec::new(),
    }
}

/// Replace each Python stack by its merge with the thread's native stack (`pcs`, in the
/// same order as `stacks`).
fn merge_native(
    target: &LiveTarget,
    natives: &mut NativeStacks,
    stacks: &mut [ThreadStack],
    pcs: &[Option<Vec<UnwoundFrame>>],
) {
    let v = target.reader.interpreter().version();
    let rule = EntryRule::for_version(v.major as u32, v.minor as u32);
    let entries = target.reader.entry_flags();
    for (i, s) in stacks.iter_mut().enumerate() {
        let flags = entries.get(i).map(Vec::as_slice).unwrap_or(&[]);
        let Some(Some(pcs)) = pcs.get(i) else {
            // No kernel thread id: no registers to start from.
            if !s.frames.is_empty() {
                s.frames.push(uncertain_frame());
            }
            continue;
        };
        let mut native = natives.symbolize(pcs);
        if let Some(addrs) = target.reader.entry_frame_addresses().get(i) {
            mark_eval_frames(&mut native, pcs, addrs);
        }
        s.frames = merge(&native, &s.frames, flags, rule);
    }
}

/// Mark as eval-loop frames the native frames whose stack holds an interpreter entry
/// frame (3.12+ push one on the C stack of each `_PyEval_EvalFrameDefault` call): this
/// finds the eval loop in stripped binaries, where its code has no symbol.
fn mark_eval_frames(native: &mut [NativeFrame], pcs: &[UnwoundFrame], entry_addrs: &[u64]) {
    for (i, nf) in native.iter_mut().enumerate() {
        let lo = pcs[i].sp;
        let hi = pcs.get(i + 1).map(|f| f.sp).unwrap_or(u64::MAX);
        if entry_addrs.iter().any(|a| lo <= *a && *a < hi) {
            nf.eval = true;
        }
    }
}

/// `dump --native` of a process without Python: every thread's native stack.
fn native_only(args: &DumpArgs) -> Result<()> {
    let pid = args.pid;
    let states = thread_states(pid)?;
    let tids: Vec<u32> = states.iter().map(|s| s.0).collect();
    let mut natives = native_stacks(pid)?;
    let mem = LiveMemory::new(pid);
    let pcs: Vec<Vec<UnwoundFrame>> = {
        let _pause = PauseGuard::pause(pid, &tids).map_err(|e| unless_exited(pid, e.into()))?;
        states
            .iter()
            .map(|&(tid, _)| thread_pcs(&mut natives, &mem, tid))
            .collect()
    };
    let mut stacks = Vec::new();
    for (&(tid, state), pcs) in states.iter().zip(&pcs) {
        let frames: Vec<Frame> = natives
            .symbolize(pcs)
            .into_iter()
            .flat_map(|n| n.frames)
            .collect();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .ok()
            .map(|s| s.trim_end().to_string());
        stacks.push(ThreadStack {
            thread_id: tid as u64,
            os_thread_id: Some(tid),
            thread_name: name,
            active: state == 'R',
            owns_gil: false,
            frames,
        });
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        let threads: Vec<JsonThread> = stacks.iter().map(|s| json_thread(pid, s, true)).collect();
        serde_json::to_writer_pretty(&mut out, &threads)?;
        writeln!(out)?;
    } else {
        let cmdline = process::cmdline(pid).unwrap_or_else(|| format!("pid {pid}"));
        writeln!(out, "Process {pid}: {cmdline}")?;
        writeln!(out, "Not a Python process: native stacks only")?;
        for s in &stacks {
            writeln!(out)?;
            write_thread(&mut out, s, args.full_filenames)?;
        }
    }
    Ok(())
}

fn json_thread(pid: u32, s: &ThreadStack, native: bool) -> JsonThread<'_> {
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
            .map(|f| {
                let is_native = f.kind == FrameKind::Native;
                JsonFrame {
                    name: &f.name,
                    filename: &f.filename,
                    module: if is_native {
                        None
                    } else {
                        module_name(&f.short_filename)
                    },
                    short_filename: &f.short_filename,
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
    writeln!(out, "Thread {id} ({status}): \"{name}\"")?;
    for f in &s.frames {
        let file = if full { &f.filename } else { &f.short_filename };
        match f.kind {
            FrameKind::Python => writeln!(out, "    {} ({file}:{})", f.name, f.line)?,
            // Native frames: `name (file:line)` from DWARF, else `name (module+offset)`;
            // the marker frame has neither.
            FrameKind::Native if f.line > 0 => {
                writeln!(out, "    {} ({file}:{}) [native]", f.name, f.line)?
            }
            FrameKind::Native if f.short_filename.is_empty() => writeln!(out, "    {}", f.name)?,
            FrameKind::Native => writeln!(out, "    {} ({}) [native]", f.name, f.short_filename)?,
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
