//! Connecting a live process to the Python reader: the glue every command shares.

use anyhow::{Result, anyhow};

use crate::process::{self, LiveMemory, MemoryError, ProcessError, threads};
use crate::python::{PyError, StackReader, find_interpreter};

/// A live Python process ready to be read.
pub struct LiveTarget {
    /// Its pid.
    pub pid: u32,
    /// Its command line, for titles and messages.
    pub cmdline: String,
    /// The Python reader over its memory.
    pub reader: StackReader<LiveMemory>,
}

/// Attach to `pid`: check it exists and may be read, find its interpreter.
pub fn attach(pid: u32) -> Result<LiveTarget> {
    attach_inner(pid).map_err(|e| unless_exited(pid, e))
}

fn attach_inner(pid: u32) -> Result<LiveTarget> {
    if process::is_kernel_thread(pid) {
        return Err(anyhow!(ProcessError::KernelThread(pid)));
    }
    let maps = process::read_maps(pid).map_err(|e| anyhow!(e))?;
    if maps.is_empty() {
        // Not a kernel thread, so its address space is being torn down.
        return Err(anyhow!(ProcessError::Exited(pid)));
    }
    let mem = LiveMemory::new(pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let interp = find_interpreter(&mem, pid, &maps, exe.as_deref()).map_err(|e| explain(pid, e))?;
    Ok(LiveTarget {
        pid,
        cmdline: process::cmdline(pid).unwrap_or_else(|| format!("pid {pid}")),
        reader: StackReader::new(mem, interp),
    })
}

/// Did attaching fail because the process has no Python interpreter?
pub fn is_not_python(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<PyError>(), Some(PyError::NotPython(_)))
}

/// Has the process exited, or is it tearing down its address space? Reads of an exiting
/// process fail in misleading ways (permission denied, files gone), so every failure is
/// checked against this before it is reported. A map that cannot be read is no evidence:
/// that is what a refusal looks like too.
pub fn exiting(pid: u32) -> bool {
    process::is_exiting(pid)
        || (process::read_maps(pid).is_ok_and(|m| m.is_empty()) && !process::is_kernel_thread(pid))
}

/// `e`, unless the real cause is that the process exited meanwhile.
pub fn unless_exited(pid: u32, e: anyhow::Error) -> anyhow::Error {
    // These are facts about the pid, not symptoms of an exit.
    let settled = matches!(
        e.downcast_ref(),
        Some(ProcessError::NotFound(_) | ProcessError::KernelThread(_) | ProcessError::Itself(_))
    );
    if !settled && exiting(pid) {
        anyhow!(ProcessError::Exited(pid))
    } else {
        e
    }
}

/// Turn a reader error into the one line a user should see.
pub fn explain(pid: u32, e: PyError) -> anyhow::Error {
    let e = match e {
        PyError::Memory(MemoryError::Permission) => anyhow!(process::permission_error(pid)),
        PyError::Memory(MemoryError::Gone) => anyhow!(ProcessError::Exited(pid)),
        PyError::Memory(_) | PyError::Corrupt(_) if !process::is_alive(pid) => {
            anyhow!(ProcessError::Exited(pid))
        }
        e => anyhow!(e),
    };
    unless_exited(pid, e)
}

/// Kernel thread ids and their scheduler states, read before anything is stopped so that
/// prof's own stop is never mistaken for the thread's state.
pub fn thread_states(pid: u32) -> Result<Vec<(u32, char)>> {
    let tids = threads::list_threads(pid).map_err(|_| {
        if process::is_alive(pid) {
            anyhow!(process::permission_error(pid))
        } else {
            anyhow!(ProcessError::Exited(pid))
        }
    })?;
    Ok(tids
        .into_iter()
        .filter_map(|t| threads::thread_state(pid, t).map(|s| (t, s)))
        .collect())
}
