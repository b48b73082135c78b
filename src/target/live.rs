//! A live process as a [`Target`]: `/proc`, `process_vm_readv` and ptrace.

use foldhash::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::error::{is_read_failure, python_fact};
use super::{Paused, Target, TargetError, ThreadInfo, ThreadState};
use crate::arch::{Arch, Registers};
use crate::process::limits::{KeptFile, read_kept};
use crate::process::ptrace::PauseGuard;
use crate::process::threads::{self, StateSource, StateWatch};
use crate::process::{self, LiveMemory, MapRange, MemoryError, ProcessError};
use crate::python::PyError;

/// How often a process's kernel threads are listed again (new threads are rare; each
/// known thread's state is re-read in place in between).
const THREAD_LISTING: Duration = Duration::from_millis(100);

/// A running process.
pub struct LivePid {
    pid: u32,
    mem: LiveMemory,
    /// `/proc/PID/task/TID/stat` and `schedstat` files, kept open (while the budget
    /// allows) and re-read with pread instead of reopened.
    stat_files: HashMap<u32, TaskFiles>,
    /// Which threads' files a tick reads.
    watch: StateWatch,
    /// Kernel threads at the last listing, and when to list again.
    tids: Vec<u32>,
    next_listing: Instant,
}

impl LivePid {
    /// Process `pid`, checked to be a program (not a kernel thread); whether it still has
    /// an address space is checked by the first [`Target::maps`].
    pub fn open(pid: u32) -> Result<LivePid, TargetError> {
        if process::is_kernel_thread(pid) {
            return Err(ProcessError::KernelThread(pid).into());
        }
        Ok(LivePid::new(pid))
    }

    /// Process `pid`, unchecked.
    pub fn new(pid: u32) -> LivePid {
        LivePid {
            pid,
            mem: LiveMemory::new(pid),
            stat_files: HashMap::default(),
            watch: StateWatch::default(),
            tids: Vec::new(),
            next_listing: Instant::now(),
        }
    }

    /// List the kernel threads (at `now`); the timer starts again.
    fn list(&mut self, now: Instant) -> Result<(), TargetError> {
        let pid = self.pid;
        let tids = threads::list_threads(pid).map_err(|_| {
            if process::is_alive(pid) {
                TargetError::from(process::permission_error(pid))
            } else {
                ProcessError::Exited(pid).into()
            }
        })?;
        if tids != self.tids {
            let keep: HashSet<u32> = tids.iter().copied().collect();
            self.stat_files.retain(|tid, _| keep.contains(tid));
        }
        self.tids = tids;
        self.next_listing = now + THREAD_LISTING;
        Ok(())
    }

    /// Has the process exited, or is it tearing down its address space? Reads of an
    /// exiting process fail in misleading ways (permission denied, files gone), so every
    /// failure is checked against this before it is reported. A map that cannot be read is
    /// no evidence: that is what a refusal looks like too.
    pub fn exiting(&self) -> bool {
        let pid = self.pid;
        process::is_exiting(pid)
            || (process::read_maps(pid).is_ok_and(|m| m.is_empty())
                && !process::is_kernel_thread(pid))
    }
}

impl Target for LivePid {
    type Mem = LiveMemory;

    fn memory(&self) -> &LiveMemory {
        &self.mem
    }

    fn reader_memory(&self) -> LiveMemory {
        LiveMemory::new(self.pid)
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn describe(&self) -> String {
        format!("pid {}", self.pid)
    }

    fn command_line(&self) -> String {
        process::cmdline(self.pid).unwrap_or_else(|| format!("pid {}", self.pid))
    }

    fn executable(&self) -> Option<String> {
        std::fs::read_link(format!("/proc/{}/exe", self.pid))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn arch(&self) -> &'static Arch {
        Arch::host()
    }

    fn page_size(&self) -> u64 {
        process::maps::page_size()
    }

    fn maps(&self) -> Result<Vec<MapRange>, TargetError> {
        let maps = process::read_maps(self.pid).map_err(|e| self.settle(e.into()))?;
        if maps.is_empty() && !process::is_kernel_thread(self.pid) {
            // Not a kernel thread, so its address space is being torn down.
            return Err(ProcessError::Exited(self.pid).into());
        }
        Ok(maps)
    }

    fn maps_changed(&self) -> Option<Vec<MapRange>> {
        process::read_maps(self.pid).ok()
    }

    fn vdso_address(&self) -> Option<u64> {
        crate::process::vdso_address(self.pid)
    }

    fn open_image(&self, map: &MapRange) -> Option<PathBuf> {
        map.open_path(self.pid)
    }

    fn threads(&mut self, states: bool) -> Result<Vec<ThreadInfo>, TargetError> {
        let pid = self.pid;
        let now = Instant::now();
        // Listing /proc/PID/task costs several syscalls: done on a timer.
        if now >= self.next_listing || self.tids.is_empty() {
            self.list(now)?;
        }
        if !states {
            self.stat_files.clear();
            self.watch = StateWatch::default();
            return Ok(self
                .tids
                .iter()
                .map(|&tid| ThreadInfo::new(tid, ThreadState::Unknown))
                .collect());
        }
        let mut files = ProcFiles {
            pid,
            files: &mut self.stat_files,
        };
        let states = self.watch.states(now, &self.tids, &mut files);
        if states.len() != self.tids.len() {
            // Threads that exited (their files were dropped as their reads failed).
            self.tids = states.iter().map(|s| s.tid).collect();
        }
        Ok(states
            .into_iter()
            .map(|r| ThreadInfo {
                tid: r.tid,
                state: ThreadState::from_letter(r.state),
                still_since: r.still_since,
                runtime: r.runtime,
            })
            .collect())
    }

    fn unlisted_state(&mut self, tid: u32) -> ThreadState {
        // Read once, not kept open: the next listing brings it in, or it has exited.
        threads::thread_state(self.pid, tid).map_or(ThreadState::Unknown, ThreadState::from_letter)
    }

    fn list_again(&mut self) {
        self.next_listing = Instant::now();
    }

    fn list_now(&mut self) -> Option<Vec<u32>> {
        self.list(Instant::now()).ok()?;
        Some(self.tids.clone())
    }

    fn thread_name(&self, tid: u32) -> Option<String> {
        threads::thread_comm(self.pid, tid)
    }

    fn thread_runtime(&mut self, tid: u32) -> Option<u64> {
        ProcFiles {
            pid: self.pid,
            files: &mut self.stat_files,
        }
        .runtime(tid)
    }

    fn registers(&self, tid: u32) -> Result<Registers, TargetError> {
        process::regs::thread_registers(tid).map_err(|e| {
            ProcessError::Ptrace {
                pid: self.pid,
                msg: format!("registers of thread {tid}: {e}"),
            }
            .into()
        })
    }

    fn pause(&self, tids: &[u32]) -> Result<Paused, TargetError> {
        PauseGuard::pause(self.pid, tids)
            .map(Paused::Live)
            .map_err(|e| self.settle(e.into()))
    }

    fn classify(&self, e: PyError) -> TargetError {
        let pid = self.pid;
        let e = match python_fact(&e) {
            Some(fact) => fact,
            None => match is_read_failure(&e) {
                Some(MemoryError::Permission) => process::permission_error(pid).into(),
                Some(MemoryError::Gone) => ProcessError::Exited(pid).into(),
                _ if !process::is_alive(pid) => ProcessError::Exited(pid).into(),
                _ => TargetError::Python(e),
            },
        };
        self.settle(e)
    }

    /// `e`, unless the real cause is that the process exited meanwhile.
    fn settle(&self, e: TargetError) -> TargetError {
        if !e.is_settled() && self.exiting() {
            ProcessError::Exited(self.pid).into()
        } else {
            e
        }
    }
}

/// A thread's `/proc` files, kept open while prof's budget allows.
#[derive(Default)]
struct TaskFiles {
    stat: Option<KeptFile>,
    schedstat: Option<KeptFile>,
}

/// The `/proc` files and CPU clock of a live process, for [`StateWatch`].
struct ProcFiles<'a> {
    pid: u32,
    files: &'a mut HashMap<u32, TaskFiles>,
}

impl StateSource for ProcFiles<'_> {
    fn cpu_time(&mut self) -> Option<u64> {
        threads::process_cpu_time(self.pid)
    }

    fn state(&mut self, tid: u32) -> Option<char> {
        let pid = self.pid;
        let mut buf = [0u8; 512];
        let f = self.files.entry(tid).or_default();
        match read_kept(
            &mut f.stat,
            || format!("/proc/{pid}/task/{tid}/stat"),
            &mut buf,
        ) {
            Some(n) if n > 0 => threads::parse_stat_state(&buf[..n]),
            // The thread exited.
            _ => {
                self.files.remove(&tid);
                None
            }
        }
    }

    fn runtime(&mut self, tid: u32) -> Option<u64> {
        let pid = self.pid;
        let mut buf = [0u8; 96];
        let f = self.files.entry(tid).or_default();
        let n = read_kept(
            &mut f.schedstat,
            || format!("/proc/{pid}/task/{tid}/schedstat"),
            &mut buf,
        )?;
        threads::parse_schedstat_runtime(&buf[..n])
    }
}
