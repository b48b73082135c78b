//! Native stacks of a live process, taken while its threads are briefly stopped, and
//! merged with their Python stacks: the glue `dump --native`, `record --native` and
//! `top --native` share. (`native/` is the pure library under it: it never stops a thread.)

use std::time::{Duration, Instant};

use crate::native::merge::{EntryRule, NativeFrame, merge, uncertain_frame};
use crate::native::stack::NativeStacks;
use crate::native::{Frame as UnwoundFrame, Modules};
use crate::process::ptrace::PauseGuard;
use crate::process::regs::thread_registers;
use crate::process::{self, LiveMemory, ProcessError};
use crate::python::Version;
use crate::sample::{Frame, ThreadStack};

/// Why `--native` and `--nonblocking` cannot go together.
pub const NATIVE_NONBLOCKING: &str = "--native reads each thread's registers, which needs a brief stop: it cannot be used with --nonblocking";

/// How often the memory map may be re-read when an unwind meets code outside every known
/// module (a library loaded after prof started).
const MAPS_REFRESH: Duration = Duration::from_secs(1);

/// The native side of one live process.
pub struct NativeTarget {
    pid: u32,
    mem: LiveMemory,
    stacks: NativeStacks,
    next_refresh: Instant,
}

/// What the Python reader says about the stacks it returned, for the merge.
pub struct PythonSide<'a> {
    /// The interpreter's version (it decides how eval frames map to Python frames).
    pub version: Version,
    /// Per stack: the `is_entry` flag of each Python frame.
    pub entries: &'a [Vec<bool>],
    /// Per stack: addresses of its interpreter entry frames (3.12+), which sit on the C
    /// stack of the eval-loop call that runs them.
    pub entry_addrs: &'a [Vec<u64>],
}

impl NativeTarget {
    /// The modules of process `pid`, loaded from its memory map.
    pub fn new(pid: u32) -> Result<NativeTarget, ProcessError> {
        let maps = process::read_maps(pid)?;
        let mem = LiveMemory::new(pid);
        let modules = Modules::for_pid(pid, &maps, &mem);
        Ok(NativeTarget {
            pid,
            mem,
            stacks: NativeStacks::new(modules, maps),
            next_refresh: Instant::now() + MAPS_REFRESH,
        })
    }

    /// Stop the threads `tids` together, run `during` while they are stopped (the Python
    /// read, so both halves of each stack are from the same instant), unwind each of them,
    /// and let them go. Returns `during`'s result and each thread's unwound frames, in the
    /// order of `tids` (empty for a thread that exited or could not be read).
    pub fn capture<R>(
        &mut self,
        tids: &[u32],
        during: impl FnOnce() -> R,
    ) -> Result<(R, Vec<Vec<UnwoundFrame>>), ProcessError> {
        let (r, pcs) = {
            let _stopped = PauseGuard::pause(self.pid, tids)?;
            let r = during();
            let pcs: Vec<Vec<UnwoundFrame>> = tids
                .iter()
                .map(|&tid| match thread_registers(tid) {
                    Ok(regs) => self.stacks.unwind(&self.mem, &regs).0,
                    Err(_) => Vec::new(),
                })
                .collect();
            (r, pcs)
        };
        // After the threads run again: re-reading the maps is slow.
        let unknown = pcs.iter().flatten().any(|f| !self.stacks.knows(f.pc));
        if unknown && Instant::now() >= self.next_refresh {
            self.next_refresh = Instant::now() + MAPS_REFRESH;
            if let Ok(maps) = process::read_maps(self.pid) {
                self.stacks.update_maps(self.pid, maps, &self.mem);
            }
        }
        Ok((r, pcs))
    }

    /// The frames to show for a thread with no Python stack, innermost first.
    pub fn native_frames(&mut self, pcs: &[UnwoundFrame]) -> Vec<Frame> {
        self.stacks
            .symbolize(pcs)
            .into_iter()
            .flat_map(|n| n.frames)
            .collect()
    }

    /// Merge the Python stacks read during [`NativeTarget::capture`] of the threads
    /// `stopped` (whose unwound frames are `pcs`, in the same order) with their native
    /// frames, and add the stopped threads the interpreter does not know (every thread of a
    /// native program, threads started from C) with native frames only. `state` gives a
    /// thread's scheduler state. A Python thread that was not stopped (idle, not sampled)
    /// keeps its Python frames; one whose kernel id is unknown is kept and marked uncertain.
    pub fn merge_all(
        &mut self,
        stacks: &mut Vec<ThreadStack>,
        stopped: &[u32],
        pcs: &[Vec<UnwoundFrame>],
        py: Option<&PythonSide>,
        state: impl Fn(u32) -> char,
    ) {
        if let Some(py) = py {
            for (i, s) in stacks.iter_mut().enumerate() {
                match s.os_thread_id {
                    Some(tid) => {
                        if let Some(k) = stopped.iter().position(|&x| x == tid) {
                            self.merge_into(s, i, Some(&pcs[k]), py);
                        }
                    }
                    None => self.merge_into(s, i, None, py),
                }
            }
        }
        for (k, &tid) in stopped.iter().enumerate() {
            if !stacks.iter().any(|s| s.os_thread_id == Some(tid)) {
                let frames = self.native_frames(&pcs[k]);
                stacks.push(native_thread(self.pid, tid, state(tid), frames));
            }
        }
    }

    /// Replace `stack`'s Python frames by their merge with the thread's native frames
    /// `pcs`; `i` is the stack's index in the Python reader's result. `pcs` is None for a
    /// thread whose kernel id is unknown: its stack is kept and marked uncertain.
    fn merge_into(
        &mut self,
        stack: &mut ThreadStack,
        i: usize,
        pcs: Option<&[UnwoundFrame]>,
        py: &PythonSide,
    ) {
        let Some(pcs) = pcs else {
            if !stack.frames.is_empty() {
                stack.frames.push(uncertain_frame());
            }
            return;
        };
        let rule = EntryRule::for_version(py.version.major as u32, py.version.minor as u32);
        let flags = py.entries.get(i).map(Vec::as_slice).unwrap_or(&[]);
        let mut native = self.stacks.symbolize(pcs);
        if let Some(addrs) = py.entry_addrs.get(i) {
            mark_eval_frames(&mut native, pcs, addrs);
        }
        stack.frames = merge(&native, &stack.frames, flags, rule);
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

/// A thread with native frames only (not a Python thread, or not a Python process).
fn native_thread(pid: u32, tid: u32, state: char, frames: Vec<Frame>) -> ThreadStack {
    ThreadStack {
        thread_id: tid as u64,
        os_thread_id: Some(tid),
        thread_name: process::threads::thread_comm(pid, tid).map(Into::into),
        active: state == 'R',
        owns_gil: false,
        gil_requested: false,
        state: None,
        frames,
    }
}
