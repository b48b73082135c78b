//! The target: a live process or a core file behind one seam, and the one capture of its
//! stacks that every command shares.
//!
//! [`Target`] answers the questions the readers ask (memory, maps, threads with their
//! kernel state, a thread's registers, where an image file is, pausing threads); [`LivePid`]
//! and [`CoreFile`] answer them for a running process and for an ELF core.
//! [`Snapshot`] puts the Python reader and the native unwinder on a target and captures
//! every thread's stack (`dump`, the sampler and `top` all call it). Failures are
//! [`TargetError`]s, classified where they happen.

pub mod core;
pub mod error;
pub mod live;
pub mod snapshot;

use std::path::PathBuf;

pub use self::core::{CoreFile, CoreOptions};
pub use error::TargetError;
pub use live::LivePid;
pub use snapshot::{Capture, CaptureOptions, NATIVE_NONBLOCKING, Pause, Snapshot};

use crate::arch::{Arch, Registers};
use crate::process::ptrace::PauseGuard;
use crate::process::{MapRange, Memory};
use crate::python::PyError;

/// A thread's scheduler state, as the kernel reports it (`/proc/PID/task/TID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadState {
    /// On a CPU or ready to run (`R`).
    Running,
    /// Waiting, interruptibly (`S`).
    Sleeping,
    /// Waiting, uninterruptibly: usually disk I/O (`D`).
    DiskSleep,
    /// Stopped by a signal (`T`).
    Stopped,
    /// Stopped by a tracer (`t`).
    TracingStop,
    /// Exited, not yet reaped (`Z`).
    Zombie,
    /// Being torn down (`X`).
    Dead,
    /// An idle kernel thread (`I`).
    Idle,
    /// Parked (`P`).
    Parked,
    /// Not known: not read (to save a read), not a letter prof knows, or a core file,
    /// which does not record it.
    Unknown,
}

impl ThreadState {
    /// From the state letter of a `stat` line.
    pub fn from_letter(c: char) -> ThreadState {
        match c {
            'R' => ThreadState::Running,
            'S' => ThreadState::Sleeping,
            'D' => ThreadState::DiskSleep,
            'T' => ThreadState::Stopped,
            't' => ThreadState::TracingStop,
            'Z' => ThreadState::Zombie,
            'X' | 'x' => ThreadState::Dead,
            'I' => ThreadState::Idle,
            'P' => ThreadState::Parked,
            _ => ThreadState::Unknown,
        }
    }

    /// On a CPU (or about to be): what `active` means in every output.
    pub fn is_running(self) -> bool {
        self == ThreadState::Running
    }
}

/// One kernel thread of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Kernel thread id.
    pub tid: u32,
    /// Its scheduler state when listed (before prof stopped anything).
    pub state: ThreadState,
    /// A moment since which it has certainly not run (see
    /// [`crate::process::threads::Reading::still_since`]): what was read of it after that
    /// moment holds now. None when not known.
    pub still_since: Option<std::time::Instant>,
    /// Its CPU time in ns, when the listing knows it.
    pub runtime: Option<u64>,
}

impl ThreadInfo {
    /// Thread `tid` in `state`, with nothing known of what it ran.
    pub fn new(tid: u32, state: ThreadState) -> ThreadInfo {
        ThreadInfo {
            tid,
            state,
            still_since: None,
            runtime: None,
        }
    }
}

/// A listing's threads by kernel id, kept from tick to tick: the capture and the state
/// reader look each thread up, a thousand of them on some targets, and a map built anew
/// every tick cost an allocation and a hash per thread. Sorted again only when the
/// listing's tids change.
#[derive(Debug, Default)]
pub struct ThreadIndex {
    /// The tids of the listing last indexed, in the listing's order.
    tids: Vec<u32>,
    /// Positions in that listing, ordered by tid.
    by_tid: Vec<u32>,
}

impl ThreadIndex {
    /// Index `threads`, the listing that [`ThreadIndex::get`] is then asked about.
    pub fn update(&mut self, threads: &[ThreadInfo]) {
        let same = self.tids.len() == threads.len()
            && self.tids.iter().zip(threads).all(|(&a, t)| a == t.tid);
        if same {
            return;
        }
        self.tids.clear();
        self.tids.extend(threads.iter().map(|t| t.tid));
        self.by_tid.clear();
        self.by_tid.extend(0..threads.len() as u32);
        let tids = &self.tids;
        self.by_tid.sort_unstable_by_key(|&i| tids[i as usize]);
    }

    /// The tids of the listing indexed, in its order.
    pub fn tids(&self) -> &[u32] {
        &self.tids
    }

    /// Thread `tid` of `threads`, the listing last given to [`ThreadIndex::update`].
    pub fn get<'a>(&self, threads: &'a [ThreadInfo], tid: u32) -> Option<&'a ThreadInfo> {
        let k = self
            .by_tid
            .binary_search_by_key(&tid, |&i| self.tids[i as usize])
            .ok()?;
        threads
            .get(self.by_tid[k] as usize)
            .filter(|t| t.tid == tid)
    }
}

/// Threads kept paused while this lives; dropping it lets them go.
pub enum Paused {
    /// Live threads in ptrace-stop.
    Live(PauseGuard),
    /// Nothing to pause (a core file, or no stop asked for).
    Nothing,
}

/// What the readers need to know about a target, live or not.
pub trait Target {
    /// Its memory, as the Python reader and the unwinder read it.
    type Mem: Memory;

    /// The memory.
    fn memory(&self) -> &Self::Mem;

    /// A handle on the memory for a reader that keeps its own (cheap: a pid or a shared
    /// core).
    fn reader_memory(&self) -> Self::Mem;

    /// The process id (a core's, from its notes).
    fn pid(&self) -> u32;

    /// What to call the target in messages: `pid 1234`, `core file core.1234`.
    fn describe(&self) -> String;

    /// The command line, for titles.
    fn command_line(&self) -> String;

    /// The program's path as the target sees it, if known.
    fn executable(&self) -> Option<String>;

    /// The architecture of the process.
    fn arch(&self) -> &'static Arch;

    /// The page size of the process's machine.
    fn page_size(&self) -> u64;

    /// The memory map, by address.
    fn maps(&self) -> Result<Vec<MapRange>, TargetError>;

    /// The memory map again if it may have changed (a live process's dlopen); None when it
    /// cannot change or cannot be read now.
    fn maps_changed(&self) -> Option<Vec<MapRange>> {
        None
    }

    /// Where the vdso is mapped, for maps that do not name it.
    fn vdso_address(&self) -> Option<u64>;

    /// Where the file behind `map` can be opened here (through the process's root, a
    /// sysroot, or `--executable`); None when it cannot.
    fn open_image(&self, map: &MapRange) -> Option<PathBuf>;

    /// The kernel threads with their states; with `states` false the states may be left
    /// [`ThreadState::Unknown`] when reading them costs something.
    fn threads(&mut self, states: bool) -> Result<Vec<ThreadInfo>, TargetError>;

    /// The state now of thread `tid`, which the last listing does not have (threads are
    /// listed on a timer, and it started since); Unknown when it cannot be read.
    fn unlisted_state(&mut self, _tid: u32) -> ThreadState {
        ThreadState::Unknown
    }

    /// Threads that started since the last listing were seen: list them again at the next
    /// [`Target::threads`].
    fn list_again(&mut self) {}

    /// List the threads now, not when the timer says (a new Python thread before 3.11 has
    /// its kernel id only in a listing); the next [`Target::threads`] goes from this one.
    /// None when the target cannot list again (a core file's threads never change).
    fn list_now(&mut self) -> Option<Vec<u32>> {
        None
    }

    /// The kernel's name of a thread (`comm`), if known.
    fn thread_name(&self, tid: u32) -> Option<String>;

    /// CPU time of thread `tid` in ns now, when it can be read (a live process).
    fn thread_runtime(&mut self, _tid: u32) -> Option<u64> {
        None
    }

    /// The registers of thread `tid`, which must be paused (see [`Target::pause`]).
    fn registers(&self, tid: u32) -> Result<Registers, TargetError>;

    /// Pause the threads `tids` until the result is dropped (a no-op for a core).
    fn pause(&self, tids: &[u32]) -> Result<Paused, TargetError>;

    /// A failure of the Python reader as the user should see it (a live process may have
    /// exited meanwhile; a core may be truncated).
    fn classify(&self, e: PyError) -> TargetError;

    /// A failure while stopping or unwinding, as the user should see it.
    fn settle(&self, e: TargetError) -> TargetError {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(tids: &[u32], state: ThreadState) -> Vec<ThreadInfo> {
        tids.iter().map(|&t| ThreadInfo::new(t, state)).collect()
    }

    #[test]
    fn thread_index_follows_the_listing_it_was_given() {
        let mut index = ThreadIndex::default();
        // The main thread first, as a live listing puts it, then the others by tid.
        let first = listing(&[500, 20, 31, 999], ThreadState::Running);
        index.update(&first);
        assert_eq!(index.tids(), &[500, 20, 31, 999]);
        for t in &first {
            assert_eq!(index.get(&first, t.tid), Some(t));
        }
        assert_eq!(index.get(&first, 21), None);
        // Same tids, new states: the index holds, the states are the new listing's.
        let again = listing(&[500, 20, 31, 999], ThreadState::Sleeping);
        index.update(&again);
        assert_eq!(
            index.get(&again, 31).map(|t| t.state),
            Some(ThreadState::Sleeping)
        );
        // A thread replaced by another between two listings (same count): the new one is
        // found, the exited one is not.
        let replaced = listing(&[500, 20, 1000, 999], ThreadState::Running);
        index.update(&replaced);
        assert_eq!(index.tids(), &[500, 20, 1000, 999]);
        assert_eq!(index.get(&replaced, 1000).map(|t| t.tid), Some(1000));
        assert_eq!(index.get(&replaced, 31), None);
        let fewer = listing(&[500, 999], ThreadState::Running);
        index.update(&fewer);
        assert_eq!(index.get(&fewer, 20), None);
        assert_eq!(index.get(&fewer, 999).map(|t| t.tid), Some(999));
    }
}
