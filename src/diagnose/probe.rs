//! Reading a live thread's state: `/proc/PID/task/TID/syscall`, the descriptor it waits on
//! and that socket's peer. Nothing here stops the target: the kernel reads the blocked
//! call of a sleeping thread without waking it, and says `running` for the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::procfs::{parse_inet, parse_unix, socket_inode};
use super::state::{
    Fds, IoWait, State, Syscall, ThreadState, Wait, classify_wait, fd_kind, is_pidfd,
    lowest_in_fd_set, on_cpu, parse_syscall,
};
use crate::arch::{Arch, ArchKind};
use crate::process::Memory;
use crate::process::limits::{KeptFile, read_kept};
use crate::sample::ThreadStack;
use crate::target::ThreadState as KernelState;

/// How often the socket tables are read again when a socket is not in them.
const PEERS_REFRESH: Duration = Duration::from_millis(500);
/// How long the GIL state's address is trusted before it is read again.
const GIL_REFRESH: Duration = Duration::from_millis(200);
/// CPU time a thread seen blocked must have used since to be running code of its own
/// rather than still waking up (a woken waiter runs for microseconds before it blocks
/// again or holds the GIL).
const RAN_NS: u64 = 200_000;
/// Most poll entries or select words read to find a descriptor.
const MAX_POLL: u64 = 64;
const MAX_SELECT_WORDS: u64 = 16;
/// Most sockets whose peers are kept.
const MAX_PEERS: usize = 1 << 16;

/// What the interpreter says of a thread at the same tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PyFacts {
    /// It holds the GIL.
    pub holds_gil: bool,
    /// It asked for the GIL (3.15+ record this).
    pub gil_requested: bool,
    /// The build has no GIL.
    pub free_threaded: bool,
    /// Address of the GIL state in use, when known.
    pub gil: Option<u64>,
}

/// What was last read of one thread.
struct Observed {
    /// Taken before its `syscall` file was read.
    at: Instant,
    call: Option<Syscall>,
    /// This tick's call is that one again: the thread has not run since.
    again: bool,
    /// The state decided from it, with the interpreter's facts it was decided with.
    state: Option<(PyFacts, ThreadState)>,
}

/// The state reader of one process; keeps its `syscall` files open between ticks (as many
/// as prof's budget of open files allows, see [`KeptFile`]).
pub struct Prober {
    pid: u32,
    arch: ArchKind,
    files: HashMap<u32, Option<KeptFile>>,
    /// Each thread's last read, for threads that have not run since.
    observed: HashMap<u32, Observed>,
    peers: HashMap<u64, Arc<str>>,
    peers_read: Option<Instant>,
    /// Each thread's state as seen at its last sample (before [`Prober::settle`]).
    last: HashMap<u32, State>,
    /// Threads last seen blocked: that wait, and their CPU time then.
    waited: HashMap<u32, (ThreadState, u64)>,
    /// The GIL state's address, and when it was read.
    gil: Option<(Instant, u64)>,
}

impl Prober {
    /// A reader for `pid` (a live process of the host's architecture).
    pub fn new(pid: u32) -> Prober {
        Prober {
            pid,
            arch: Arch::host().kind,
            files: HashMap::new(),
            observed: HashMap::new(),
            peers: HashMap::new(),
            peers_read: None,
            last: HashMap::new(),
            waited: HashMap::new(),
            gil: None,
        }
    }

    /// The address of the GIL state in use, from `read` at most every [`GIL_REFRESH`]
    /// (3.12+ keep it behind a pointer, which a subinterpreter may change, but not often).
    /// Not found is not kept: a process just launched has no GIL state yet.
    pub fn gil(&mut self, now: Instant, read: impl FnOnce() -> Option<u64>) -> Option<u64> {
        match self.gil {
            Some((at, gil)) if now.duration_since(at) < GIL_REFRESH => Some(gil),
            _ => {
                let gil = read();
                self.gil = gil.map(|g| (now, g));
                gil
            }
        }
    }

    /// Forget the threads `alive` says are not there any more (they exited).
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.files.retain(|t, _| alive(*t));
        self.observed.retain(|t, _| alive(*t));
        self.last.retain(|t, _| alive(*t));
        self.waited.retain(|t, _| alive(*t));
    }

    /// What thread `tid` is doing now, as its `syscall` file says (None: unreadable).
    /// Read every thread's before [`Prober::state`], then the GIL holder again: a thread
    /// that took the GIL between the two reads is running Python, not native code.
    /// `still_since`: a moment since which the thread has certainly not run (see
    /// [`crate::target::ThreadInfo::still_since`]); its call read after that moment is
    /// its call now, and is not read again.
    pub fn call(&mut self, tid: u32, still_since: Option<Instant>) -> Option<Syscall> {
        if let (Some(since), Some(o)) = (still_since, self.observed.get_mut(&tid))
            && o.at > since
        {
            o.again = true;
            return o.call;
        }
        let at = Instant::now();
        let mut buf = [0u8; 256];
        let call = self
            .syscall(tid, &mut buf)
            .and_then(|n| parse_syscall(&buf[..n]));
        self.observed.insert(
            tid,
            Observed {
                at,
                call,
                again: false,
                state: None,
            },
        );
        call
    }

    /// The state of a thread from its `call`; `stat` is its scheduler state letter when
    /// read this tick (the fallback when the call could not be read), `mem` the target's
    /// memory (poll and select arrays).
    pub fn state<M: Memory + ?Sized>(
        &mut self,
        call: Option<Syscall>,
        stat: KernelState,
        py: PyFacts,
        mem: &M,
    ) -> ThreadState {
        self.decide(call, stat, py, mem)
    }

    /// Give each of `stacks` (one snapshot of the process) its state. `calls` are the
    /// threads' blocking calls by tid, from [`Prober::call`]; `holder` the GIL holder's
    /// `thread_id` read after them, when it was (a thread that took the GIL in between runs
    /// Python); `stat` each thread's kernel state (unknown when not read). A thread without a
    /// kernel id, or not among `calls`, is `other`.
    #[allow(clippy::too_many_arguments)]
    pub fn fill<M: Memory + ?Sized>(
        &mut self,
        stacks: &mut [ThreadStack],
        calls: &[(u32, Option<Syscall>)],
        holder: Option<u64>,
        stat: impl Fn(u32) -> KernelState,
        free_threaded: bool,
        gil: Option<u64>,
        mem: &M,
    ) {
        // By tid: a lookup per thread, with a thousand threads.
        let calls: HashMap<u32, Option<Syscall>> = calls.iter().copied().collect();
        for s in stacks.iter_mut() {
            // A thread whose kernel id is not known (yet) cannot be looked up: counted,
            // as `other`.
            let call = s
                .os_thread_id
                .and_then(|tid| calls.get(&tid).map(|c| (tid, *c)));
            let Some((tid, call)) = call else {
                s.state = Some(ThreadState::plain(State::Other));
                continue;
            };
            let facts = PyFacts {
                holds_gil: s.owns_gil || holder == Some(s.thread_id),
                gil_requested: s.gil_requested,
                free_threaded,
                gil,
            };
            // A thread that has not run since its last state was decided, with the same
            // facts, is in that state still (its wait's descriptor and peer included).
            let again = self
                .observed
                .get(&tid)
                .filter(|o| o.again)
                .and_then(|o| o.state.as_ref())
                .filter(|(f, _)| *f == facts)
                .map(|(_, st)| st.clone());
            let st = match again {
                Some(st) => st,
                None => {
                    let st = self.state(call, stat(tid), facts, mem);
                    if let Some(o) = self.observed.get_mut(&tid) {
                        o.state = Some((facts, st.clone()));
                    }
                    st
                }
            };
            s.state = Some(st);
        }
    }

    /// Settle one tick's states (each thread's from [`Prober::state`]) with what one
    /// snapshot cannot see: a thread that is runnable without the GIL may be on its way
    /// out of a wait rather than in native code. Every call that blocks returns through
    /// taking the GIL, and nothing marks a thread woken but not yet holding it (3.15 flag
    /// a GIL request, older versions nothing); on a busy machine it may wait long for a
    /// CPU. So a thread seen blocked and runnable without the GIL now is counted in that
    /// wait at its next sample, and after that as long as it has not used [`RAN_NS`] of
    /// CPU since (`runtime`: each thread's CPU time in ns now, from the thread listing's
    /// reader);
    /// a native call right after a wait costs one sample. While others wait for the GIL,
    /// one that held it at its last sample and runs without it now is in the GIL's
    /// hand-off (it dropped it on request).
    pub fn settle(
        &mut self,
        stacks: &mut [ThreadStack],
        mut runtime: impl FnMut(u32) -> Option<u64>,
    ) {
        let waiting = stacks
            .iter()
            .any(|s| s.state.as_ref().is_some_and(|t| t.state == State::Gil));
        for s in stacks.iter_mut() {
            let (Some(tid), Some(st)) = (s.os_thread_id, s.state.as_mut()) else {
                continue;
            };
            let seen = st.clone();
            if st.state == State::Native {
                if let Some((wait, before)) = self.waited.get(&tid).cloned() {
                    // Right after a wait it is counted once whatever it did (a GIL waiter
                    // may have held the GIL and dropped it again on request meanwhile);
                    // after that, only while it has not run.
                    let first = self.last.get(&tid) == Some(&wait.state);
                    let ran = runtime(tid).is_none_or(|now| now.saturating_sub(before) >= RAN_NS);
                    if first || !ran {
                        *st = wait;
                    }
                } else if waiting && self.last.get(&tid) == Some(&State::Python) {
                    *st = ThreadState::plain(State::Gil);
                }
            }
            let blocked = matches!(
                seen.state,
                State::Gil | State::Lock | State::Io | State::Sleep | State::Child
            );
            if blocked {
                // Its CPU time now, to tell at its next samples whether it has run since.
                match runtime(tid) {
                    Some(ns) => self.waited.insert(tid, (seen.clone(), ns)),
                    None => self.waited.remove(&tid),
                };
            } else if *st == seen {
                self.waited.remove(&tid);
            }
            self.last.insert(tid, seen.state);
        }
    }

    fn decide<M: Memory + ?Sized>(
        &mut self,
        call: Option<Syscall>,
        stat: KernelState,
        py: PyFacts,
        mem: &M,
    ) -> ThreadState {
        let (nr, args) = match call {
            Some(Syscall::Blocked { nr, args }) => (nr, args),
            Some(Syscall::Running) => {
                return ThreadState::plain(on_cpu(
                    py.holds_gil,
                    py.gil_requested,
                    py.free_threaded,
                ));
            }
            None => {
                return ThreadState::plain(match stat {
                    KernelState::Running => {
                        on_cpu(py.holds_gil, py.gil_requested, py.free_threaded)
                    }
                    _ => State::Other,
                });
            }
        };
        match classify_wait(self.arch, nr, args, py.gil) {
            Wait::Gil => ThreadState::plain(State::Gil),
            // 3.15+ say it themselves: a thread that asked for the GIL waits for it, on
            // whichever word of the GIL's state.
            Wait::Lock(_) if py.gil_requested && !py.holds_gil => ThreadState::plain(State::Gil),
            Wait::Lock(addr) => ThreadState {
                state: State::Lock,
                io: None,
                futex: Some(addr),
            },
            Wait::Sleep => ThreadState::plain(State::Sleep),
            Wait::Child => ThreadState::plain(State::Child),
            Wait::Other => ThreadState::plain(State::Other),
            Wait::Io(op, fds) => {
                let fd = self.find_fd(fds, mem);
                let link = fd.and_then(|fd| {
                    std::fs::read_link(format!("/proc/{}/fd/{fd}", self.pid))
                        .ok()
                        .map(|l| l.to_string_lossy().into_owned())
                });
                if link.as_deref().is_some_and(is_pidfd) {
                    return ThreadState::plain(State::Child);
                }
                let kind = link.as_deref().map(fd_kind);
                let peer = link
                    .as_deref()
                    .and_then(socket_inode)
                    .and_then(|inode| self.peer(inode));
                ThreadState {
                    state: State::Io,
                    io: Some(IoWait { op, fd, kind, peer }),
                    futex: None,
                }
            }
        }
    }

    /// Read `/proc/PID/task/TID/syscall` into `buf`, from a file kept open while the
    /// budget allows.
    fn syscall(&mut self, tid: u32, buf: &mut [u8]) -> Option<usize> {
        let pid = self.pid;
        let slot = self.files.entry(tid).or_default();
        match read_kept(slot, || format!("/proc/{pid}/task/{tid}/syscall"), buf) {
            Some(n) if n > 0 => Some(n),
            _ => {
                self.files.remove(&tid);
                None
            }
        }
    }

    /// The descriptor an I/O call waits on: its argument, or the first one of its poll
    /// array or select sets, read from the target.
    fn find_fd<M: Memory + ?Sized>(&self, fds: Fds, mem: &M) -> Option<i32> {
        match fds {
            Fds::Fd(fd) => Some(fd),
            Fds::Poll { addr, n } => {
                let n = n.min(MAX_POLL) as usize;
                let mut b = vec![0u8; n * 8];
                mem.read(addr, &mut b).ok()?;
                // struct pollfd { int fd; short events; short revents; }: negative fds
                // are ignored by poll.
                b.chunks_exact(8)
                    .map(|e| i32::from_le_bytes([e[0], e[1], e[2], e[3]]))
                    .find(|fd| *fd >= 0)
            }
            Fds::Select { nfds, sets } => {
                let words = nfds.div_ceil(64).min(MAX_SELECT_WORDS) as usize;
                let mut b = vec![0u8; words * 8];
                sets.iter()
                    .filter(|s| **s != 0)
                    .filter_map(|s| {
                        mem.read(*s, &mut b).ok()?;
                        let w: Vec<u64> = b
                            .chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                            .collect();
                        lowest_in_fd_set(nfds, &w)
                    })
                    .min()
            }
        }
    }

    /// The peer of socket `inode`, reading the process's socket tables again when it is
    /// not known yet (at most every [`PEERS_REFRESH`]).
    fn peer(&mut self, inode: u64) -> Option<Arc<str>> {
        if let Some(p) = self.peers.get(&inode) {
            return Some(Arc::clone(p));
        }
        let now = Instant::now();
        if self
            .peers_read
            .is_some_and(|t| now.duration_since(t) < PEERS_REFRESH)
        {
            return None;
        }
        self.peers_read = Some(now);
        if self.peers.len() > MAX_PEERS {
            self.peers.clear();
        }
        for (name, v6) in [
            ("tcp", false),
            ("tcp6", true),
            ("udp", false),
            ("udp6", true),
        ] {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{}/net/{name}", self.pid)) {
                for (i, p) in parse_inet(&text, v6) {
                    self.peers.insert(i, p.into());
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{}/net/unix", self.pid)) {
            for (i, p) in parse_unix(&text) {
                self.peers.insert(i, p.into());
            }
        }
        self.peers.get(&inode).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(tid: u32, state: State) -> ThreadStack {
        ThreadStack {
            thread_id: tid as u64,
            os_thread_id: Some(tid),
            thread_name: None,
            active: true,
            owns_gil: false,
            gil_requested: false,
            state: Some(ThreadState::plain(state)),
            frames: Default::default(),
        }
    }

    /// Settle one tick of (tid, state seen); the states counted.
    fn tick(p: &mut Prober, seen: &[(u32, State)]) -> Vec<State> {
        let mut stacks: Vec<ThreadStack> = seen.iter().map(|(t, s)| stack(*t, *s)).collect();
        p.settle(&mut stacks, |t| {
            crate::process::threads::thread_runtime(std::process::id(), t)
        });
        stacks
            .iter()
            .map(|s| s.state.as_ref().unwrap().state)
            .collect()
    }

    /// Two threads of this process: one spinning on a CPU, one parked on a channel (in a
    /// futex wait), in the order they reported their kernel ids; stopped and joined on drop.
    struct SpinAndPark {
        tids: (u32, u32),
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        park: Option<std::sync::mpsc::Sender<()>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    fn spin_and_park() -> SpinAndPark {
        use std::sync::atomic::{AtomicBool, Ordering};
        let gettid = || unsafe { libc::gettid() } as u32;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel::<u32>();
        let (spin_tx, spin_stop) = (tid_tx.clone(), std::sync::Arc::clone(&stop));
        let spinner = std::thread::spawn(move || {
            spin_tx.send(gettid()).unwrap();
            while !spin_stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            let _ = rx.recv();
        });
        SpinAndPark {
            tids: (tid_rx.recv().unwrap(), tid_rx.recv().unwrap()),
            stop,
            park: Some(tx),
            threads: vec![spinner, parked],
        }
    }

    impl Drop for SpinAndPark {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            self.park.take();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn a_wait_carries_over_until_the_thread_runs() {
        use State::*;
        if crate::process::memory::skip_without_live_reads("a_wait_carries_over") {
            return;
        }
        let pair = spin_and_park();
        let (a, b) = pair.tids;
        // Which is which: the spinner uses CPU.
        std::thread::sleep(Duration::from_millis(50));
        let mut p = Prober::new(std::process::id());
        let cpu_time = |t| crate::process::threads::thread_runtime(std::process::id(), t).unwrap();
        let (t1, t2) = (cpu_time(a), cpu_time(b));
        std::thread::sleep(Duration::from_millis(50));
        let (spin, park) = if cpu_time(a) - t1 > cpu_time(b) - t2 {
            (a, b)
        } else {
            (b, a)
        };
        // Both seen waiting for the GIL, then runnable without it: the one that has not
        // run since is still waking up, at every sample; the one that ran is native.
        assert_eq!(tick(&mut p, &[(spin, Gil), (park, Gil)]), [Gil, Gil]);
        std::thread::sleep(Duration::from_millis(20));
        // The sample right after a wait is the wait's, whatever the thread did.
        assert_eq!(tick(&mut p, &[(spin, Native), (park, Native)]), [Gil, Gil]);
        assert_eq!(
            tick(&mut p, &[(spin, Native), (park, Native)]),
            [Native, Gil]
        );
        assert_eq!(
            tick(&mut p, &[(spin, Native), (park, Native)]),
            [Native, Gil]
        );
        for wait in [Lock, Io, Sleep, Child] {
            tick(&mut p, &[(park, wait)]);
            assert_eq!(tick(&mut p, &[(park, Native)]), [wait]);
        }
        // Native after Python is native, unless another thread waits for the GIL.
        tick(&mut p, &[(spin, Python), (park, Sleep)]);
        assert_eq!(
            tick(&mut p, &[(spin, Native), (park, Sleep)]),
            [Native, Sleep]
        );
        tick(&mut p, &[(spin, Python), (park, Gil)]);
        assert_eq!(tick(&mut p, &[(spin, Native), (park, Gil)]), [Gil, Gil]);
        // Other states are left alone.
        tick(&mut p, &[(park, Other)]);
        assert_eq!(tick(&mut p, &[(park, Native)]), [Native]);
        drop(pair);
    }

    #[test]
    fn a_thread_that_has_not_run_keeps_its_call_and_state_unread() {
        if crate::process::memory::skip_without_live_reads("keeps_its_call") {
            return;
        }
        let me = std::process::id();
        let pair = spin_and_park();
        let (a, b) = pair.tids;
        std::thread::sleep(Duration::from_millis(50));
        let mut p = Prober::new(me);
        let mem = crate::process::LiveMemory::new(me);
        let before = Instant::now();
        let calls: Vec<(u32, Option<Syscall>)> =
            [a, b].iter().map(|&t| (t, p.call(t, None))).collect();
        let mut stacks = vec![stack(a, State::Other), stack(b, State::Other)];
        let none = |_| KernelState::Unknown;
        p.fill(&mut stacks, &calls, None, none, false, None, &mem);
        let seen: Vec<_> = stacks.iter().map(|s| s.state.clone()).collect();
        // Both threads end: their files can no longer be read.
        drop(pair);
        // Still since before the reads: what was read stands, file and decision alike.
        let again: Vec<(u32, Option<Syscall>)> = [a, b]
            .iter()
            .map(|&t| (t, p.call(t, Some(before))))
            .collect();
        assert_eq!(again, calls);
        assert!(calls.iter().all(|c| c.1.is_some()), "{calls:?}");
        let mut stacks = vec![stack(a, State::Other), stack(b, State::Other)];
        p.fill(&mut stacks, &again, None, none, false, None, &mem);
        assert_eq!(
            stacks.iter().map(|s| s.state.clone()).collect::<Vec<_>>(),
            seen
        );
        // Still only since after them, or not known to be: read again (and gone now).
        let after = Instant::now();
        assert_eq!(p.call(a, Some(after)), None);
        assert_eq!(p.call(b, None), None);
    }

    #[test]
    fn states_of_this_process() {
        // A spinning thread is running (or runnable: the same to the kernel's file); one
        // parked on a channel waits on a futex, a lock when no GIL is given.
        if crate::process::memory::skip_without_live_reads("states_of_this_process") {
            return;
        }
        let me = std::process::id();
        let pair = spin_and_park();
        let (a, b) = pair.tids;
        std::thread::sleep(Duration::from_millis(100));
        let mut p = Prober::new(me);
        let mem = crate::process::LiveMemory::new(me);
        let facts = PyFacts::default();
        let mut states: Vec<State> = [a, b]
            .iter()
            .map(|t| {
                let call = p.call(*t, None);
                p.state(call, KernelState::Unknown, facts, &mem).state
            })
            .collect();
        drop(pair);
        states.sort();
        assert_eq!(states, [State::Native, State::Lock]);
        // Holding the GIL, the spinner would be running Python.
        let running = PyFacts {
            holds_gil: true,
            ..facts
        };
        assert_eq!(
            p.state(Some(Syscall::Running), KernelState::Unknown, running, &mem)
                .state,
            State::Python
        );
    }
}
