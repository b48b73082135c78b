//! Threads of a live process and their scheduler state, read from /proc without stopping them.

use foldhash::{HashMap, HashSet};
use std::io::Read;
use std::time::{Duration, Instant};

/// Kernel thread ids of `pid` (the main thread first when present).
pub fn list_threads(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    if let Some(i) = tids.iter().position(|t| *t == pid) {
        tids.swap(0, i);
    }
    Ok(tids)
}

/// The state letter in a `stat` line: the field after the last `)`, since the command
/// name in parentheses may itself contain spaces and parentheses.
pub fn parse_stat_state(stat: &[u8]) -> Option<char> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    stat[close + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .map(|b| *b as char)
}

/// The parent pid in a `stat` line (the field after the state).
pub fn parse_stat_ppid(stat: &[u8]) -> Option<u32> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's `PF_*` flags in a `stat` line (the seventh field after the state).
pub fn parse_stat_flags(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_whitespace().nth(6)?.parse().ok()
}

fn read_small(path: &str, buf: &mut [u8]) -> Option<usize> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    Some(n)
}

/// Scheduler state of one thread (`R`, `S`, `D`, `t`, `Z`…), or None if it is gone.
pub fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let mut buf = [0u8; 512];
    let n = read_small(&format!("/proc/{pid}/task/{tid}/stat"), &mut buf)?;
    parse_stat_state(&buf[..n])
}

/// CPU time of one thread in ns (its `schedstat`), or None if it is gone.
pub fn thread_runtime(pid: u32, tid: u32) -> Option<u64> {
    let mut buf = [0u8; 96];
    let n = read_small(&format!("/proc/{pid}/task/{tid}/schedstat"), &mut buf)?;
    parse_schedstat_runtime(&buf[..n])
}

/// Scheduler state of the process as a whole.
pub fn process_state(pid: u32) -> Option<char> {
    let mut buf = [0u8; 512];
    let n = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat_state(&buf[..n])
}

/// The kernel's `PF_*` flags of the process (its main thread), or None if it is gone.
pub fn process_flags(pid: u32) -> Option<u64> {
    let mut buf = [0u8; 512];
    let n = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat_flags(&buf[..n])
}

/// A thread's CPU time in ns: the first field of its `schedstat` (all zeros when the
/// kernel keeps no scheduler statistics, which then never explains the process's time).
pub fn parse_schedstat_runtime(schedstat: &[u8]) -> Option<u64> {
    std::str::from_utf8(schedstat)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of the whole process `pid` in ns (its threads', living and exited), from its
/// CPU clock: one system call, whatever its number of threads.
pub fn process_cpu_time(pid: u32) -> Option<u64> {
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) of the kernel's posix-timers.h.
    const CPUCLOCK_SCHED: libc::clockid_t = 2;
    let clock = (!(pid as libc::clockid_t) << 3) | CPUCLOCK_SCHED;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write; a bad clock id is an error, not UB.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU time the calling thread has used: what work it did costs the machine, without the
/// time it waited for a CPU (which on a loaded machine can be many times more).
pub fn own_cpu_time() -> Option<std::time::Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        ts.tv_sec as u64,
        ts.tv_nsec as u32,
    ))
}

/// The kernel's name for a thread (`comm`, at most 15 bytes).
pub fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    let s = std::fs::read(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(String::from_utf8_lossy(&s).trim_end().to_string())
}

/// How often each thread's state is read even when the process's CPU time says no idle
/// thread ran: it bounds how long the two moments the CPU time cannot show last (a thread
/// woken but still queued for a CPU, and one that has run less than a scheduler tick).
/// Each thread has its own phase in this period, so that a tick reads a share of the
/// threads and not all of them at once (on a thousand threads a tick that read them all
/// took 10-25 ms, more than a period at 100 Hz).
pub const STATE_SWEEP: Duration = Duration::from_millis(500);

/// When thread `tid`, read at `now`, is first due for its sweep: a fraction of
/// [`STATE_SWEEP`] that a multiplicative hash spreads evenly over consecutive tids, so that
/// threads first read on the same tick do not all come due on the same later one.
fn first_sweep(now: Instant, tid: u32) -> Instant {
    let phase = (u64::from(tid).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64;
    now + STATE_SWEEP.mul_f64((phase + 1.0) / (1u64 << 24) as f64)
}

/// What [`StateWatch`] asks the kernel: `/proc` and the process's CPU clock for a live
/// process, vectors in tests.
pub trait StateSource {
    /// CPU time of the whole process in ns: its threads', living and exited, summed.
    fn cpu_time(&mut self) -> Option<u64>;
    /// The state letter of thread `tid` (`R`, `S`, ...), or None when it is gone.
    fn state(&mut self, tid: u32) -> Option<char>;
    /// CPU time of thread `tid` in ns, or None when it cannot be read.
    fn runtime(&mut self, tid: u32) -> Option<u64>;
}

/// How long a thread stays watched (read every tick) after it was last seen running or
/// using CPU: threads that take turns on the GIL, or wake often, stay watched; threads
/// idle for longer are read only when the process's CPU time says one of them ran.
pub const WATCH_WINDOW: Duration = Duration::from_secs(1);

/// The last read of one thread.
#[derive(Debug, Clone, Copy)]
struct Seen {
    state: char,
    /// Its CPU time at its last read (None: unreadable).
    runtime: Option<u64>,
    /// The tick whose reads last read `runtime`.
    read_at: Instant,
    /// When it was last seen running, or its CPU time last grew (None: not since prof
    /// first saw it).
    active: Option<Instant>,
    /// A tick since whose reads it has certainly not run (None: not known).
    still: Option<Instant>,
    /// When it is read next whatever the CPU time says (see [`STATE_SWEEP`]).
    sweep: Instant,
}

impl Seen {
    /// Is it read on every tick at `now` (it ran within [`WATCH_WINDOW`])?
    fn watched(&self, now: Instant) -> bool {
        self.active
            .is_some_and(|t| now.duration_since(t) < WATCH_WINDOW)
    }

    /// It was read at `now`: its next sweep keeps its phase (a full read does not gather
    /// every thread's sweep on one tick), and comes within a period of now.
    fn swept(&mut self, now: Instant) {
        if now >= self.sweep {
            let periods = now.duration_since(self.sweep).as_nanos() / STATE_SWEEP.as_nanos() + 1;
            self.sweep += STATE_SWEEP * periods as u32;
        }
    }
}

/// What [`StateWatch::states`] says of one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Kernel thread id.
    pub tid: u32,
    /// Its state letter.
    pub state: char,
    /// The `now` of a tick since whose reads the thread has certainly not run (so whatever
    /// was read of it after that tick's reads still holds), or None when that is not known.
    /// A thread that has run since an accounting of its time (a scheduler tick or a
    /// switch) is always caught; one woken since, and on a CPU for less than a scheduler
    /// tick, is caught at the next tick after its time is accounted (as its state is).
    pub still_since: Option<Instant>,
    /// Its CPU time in ns now, when known (read this tick, or unchanged since it was).
    pub runtime: Option<u64>,
}

/// Thread states at a cost that follows the threads that run, not all of them.
///
/// A thread that does not run does not change state (entering a wait, leaving it and being
/// stopped all take CPU time of its own), and running moves the process's CPU time, which
/// the kernel sums over its threads. So each tick reads the process's CPU time, and the
/// state and CPU time of the threads that ran lately (see [`WATCH_WINDOW`]); when the
/// process's time grew by exactly what theirs did, no other thread ran, and their states
/// stand. Otherwise (or with a new thread or a failed read) every thread's state and CPU
/// time are read, as when this did not exist; and each thread is read once every
/// [`STATE_SWEEP`] anyway, a share of them on each tick. Reads a few µs apart that see a
/// scheduler tick between them cost a full read, never a wrong state.
///
/// The same facts say which threads have not run since an earlier tick
/// ([`Reading::still_since`]): a Python thread that has not run has the stack it had then.
#[derive(Debug, Default)]
pub struct StateWatch {
    seen: HashMap<u32, Seen>,
    /// The process's CPU time at the last tick.
    clock: Option<u64>,
    /// The last tick's `now`.
    last_tick: Option<Instant>,
    /// Per-tick scratch: the threads left unread so far.
    quiet: Vec<u32>,
    /// Per-tick scratch: the quiet threads due for their sweep.
    due: Vec<u32>,
    /// Per-tick scratch: the watched threads' CPU times at the last tick.
    watched: Vec<(u32, u64)>,
}

impl StateWatch {
    /// The state of each thread of `tids` (in that order; threads gone meanwhile are left
    /// out), reading only what the process's CPU time says may have changed.
    pub fn states(
        &mut self,
        now: Instant,
        tids: &[u32],
        src: &mut impl StateSource,
    ) -> Vec<Reading> {
        let mut clock = src.cpu_time();
        let prev_clock = self.clock;
        let prev_tick = self.last_tick.replace(now);
        if self.seen.len() != tids.len() || tids.iter().any(|t| !self.seen.contains_key(t)) {
            let keep: HashSet<u32> = tids.iter().copied().collect();
            self.seen.retain(|tid, _| keep.contains(tid));
        }
        let mut sure = true;
        let mut explained = 0u64;
        self.quiet.clear();
        self.due.clear();
        self.watched.clear();
        for &tid in tids {
            let before = self.seen.get(&tid).copied();
            match before {
                Some(s) if !s.watched(now) => {
                    if now >= s.sweep {
                        self.due.push(tid);
                    } else {
                        self.quiet.push(tid);
                    }
                    continue;
                }
                // Watched: its CPU time is read whatever its state, so the time it ran
                // before it went to wait is accounted for too.
                Some(s) => match (src.state(tid), s.runtime) {
                    (Some(state), Some(was)) => match src.runtime(tid) {
                        Some(rt) if rt >= was => {
                            explained += rt - was;
                            self.watched.push((tid, was));
                            let active = if state == 'R' || rt > was {
                                Some(now)
                            } else {
                                s.active
                            };
                            let mut seen = Seen {
                                state,
                                runtime: Some(rt),
                                read_at: now,
                                active,
                                // Settled below, once its time is final.
                                still: s.still,
                                sweep: s.sweep,
                            };
                            seen.swept(now);
                            self.seen.insert(tid, seen);
                        }
                        rt => {
                            sure = false;
                            let mut seen = Seen {
                                state,
                                runtime: rt,
                                read_at: now,
                                active: Some(now),
                                still: None,
                                sweep: s.sweep,
                            };
                            seen.swept(now);
                            self.seen.insert(tid, seen);
                        }
                    },
                    (state, _) => {
                        sure = false;
                        self.fresh(now, tid, state, src);
                    }
                },
                // New: what it ran before now is not known.
                None => {
                    sure = false;
                    let state = src.state(tid);
                    self.fresh(now, tid, state, src);
                }
            }
        }
        // The times are one snapshot only if the process's time did not move while they
        // were read; if it did, they are read again (the states stand: each is a fact).
        if sure && clock.is_some() && src.cpu_time() != clock {
            clock = src.cpu_time();
            explained = 0;
            for &(tid, was) in &self.watched {
                match src.runtime(tid) {
                    Some(rt) if rt >= was => {
                        explained += rt - was;
                        if let Some(s) = self.seen.get_mut(&tid) {
                            s.runtime = Some(rt);
                        }
                    }
                    _ => sure = false,
                }
            }
            sure &= src.cpu_time() == clock;
        }
        // A watched thread that is not on a CPU and whose time did not grow since its last
        // read has not run since then.
        for &(tid, was) in &self.watched {
            if let Some(s) = self.seen.get_mut(&tid) {
                s.still = if s.state != 'R' && s.runtime == Some(was) {
                    s.still.or(prev_tick)
                } else {
                    None
                };
            }
        }
        self.clock = clock;
        sure &= match (prev_clock, clock) {
            (Some(a), Some(b)) => b.checked_sub(a) == Some(explained),
            _ => false,
        };
        if sure {
            // No other thread ran since the last tick's reads.
            for &tid in &self.quiet {
                if let Some(s) = self.seen.get_mut(&tid) {
                    s.still = s.still.or(prev_tick);
                }
            }
        } else {
            for i in 0..self.quiet.len() {
                self.reread(now, self.quiet[i], src);
            }
        }
        for i in 0..self.due.len() {
            self.reread(now, self.due[i], src);
        }
        if !sure {
            self.rebase(now, src);
        }
        tids.iter()
            .filter_map(|&tid| {
                let s = self.seen.get(&tid)?;
                Some(Reading {
                    tid,
                    state: s.state,
                    still_since: s.still,
                    runtime: s.runtime.filter(|_| s.read_at == now || s.still.is_some()),
                })
            })
            .collect()
    }

    /// Read quiet thread `tid` again: its state, and by its time whether it ran since its
    /// last read.
    fn reread(&mut self, now: Instant, tid: u32, src: &mut impl StateSource) {
        match src.state(tid) {
            // It runs again: watched from now on.
            Some('R') => self.fresh(now, tid, Some('R'), src),
            Some(state) => {
                let rt = src.runtime(tid);
                if let Some(s) = self.seen.get_mut(&tid) {
                    s.state = state;
                    // Its time tells whether it ran since it was last read; one that did
                    // is watched for a while, as it may run again.
                    if rt.is_some() && rt == s.runtime {
                        s.still = s.still.or(Some(s.read_at));
                    } else {
                        s.still = None;
                        if rt > s.runtime {
                            s.active = Some(now);
                        }
                    }
                    s.runtime = rt;
                    s.read_at = now;
                    s.swept(now);
                }
            }
            None => {
                self.seen.remove(&tid);
            }
        }
    }

    /// After a full read: the process's time read before it and the watched threads' times
    /// read during it (a long while on many threads, with the busy ones running meanwhile)
    /// are no snapshot, and the next tick would find the process's time unexplained and
    /// read every thread again. So both are read again, until the process's time stands
    /// still across the reads (twice at most; failing, the next tick reads everything, as
    /// it would have).
    fn rebase(&mut self, now: Instant, src: &mut impl StateSource) {
        for _ in 0..2 {
            let Some(clock) = src.cpu_time() else {
                return;
            };
            let mut whole = true;
            for (&tid, s) in self.seen.iter_mut() {
                if !s.watched(now) {
                    continue;
                }
                match src.runtime(tid) {
                    Some(rt) if s.runtime.is_some_and(|was| rt >= was) => {
                        if s.runtime != Some(rt) {
                            // It ran after its read: not still, and its state may be old
                            // (the next tick reads it, as it is watched).
                            s.still = None;
                        }
                        s.runtime = Some(rt);
                    }
                    _ => whole = false,
                }
            }
            if whole && src.cpu_time() == Some(clock) {
                self.clock = Some(clock);
                return;
            }
        }
    }

    /// Thread `tid`, just read as `state` (None: gone): watched from `now` if it runs.
    fn fresh(&mut self, now: Instant, tid: u32, state: Option<char>, src: &mut impl StateSource) {
        match state {
            Some(state) => {
                let running = state == 'R';
                self.seen.insert(
                    tid,
                    Seen {
                        state,
                        // Read whatever its state: the next full read tells by it whether
                        // the thread ran meanwhile.
                        runtime: src.runtime(tid),
                        read_at: now,
                        active: running.then_some(now),
                        still: None,
                        sweep: first_sweep(now, tid),
                    },
                );
            }
            None => {
                self.seen.remove(&tid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_skips_tricky_comm() {
        assert_eq!(parse_stat_state(b"123 (python3) S 1 2 3"), Some('S'));
        assert_eq!(parse_stat_state(b"123 (a) R) (b) R 1"), Some('R'));
        assert_eq!(parse_stat_state(b"123 (x y) t 1"), Some('t'));
        assert_eq!(parse_stat_state(b"garbage"), None);
        assert_eq!(parse_stat_ppid(b"123 (a) b) S 77 2 3"), Some(77));
        assert_eq!(
            parse_stat_flags(b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0"),
            Some(2129984)
        );
        assert_eq!(
            parse_stat_flags(b"9 (a) b) R 1 9 9 0 -1 4194560 7"),
            Some(4194560)
        );
    }

    #[test]
    fn own_threads_listed() {
        let me = std::process::id();
        let tids = list_threads(me).unwrap();
        assert_eq!(tids[0], me);
        // The test itself runs on a worker thread, which is on CPU while it asks.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(tids.contains(&tid));
        assert_eq!(thread_state(me, tid), Some('R'));
    }
    /// A process in vectors: each thread's state and CPU time, and which state files were
    /// read.
    struct Fake {
        threads: Vec<(u32, char, u64)>,
        exited: u64,
        clock_works: bool,
        reads: Vec<u32>,
        /// CPU time the first thread gets right after the next state read (a scheduler
        /// tick landing between the watch's reads).
        tick_between: Option<u64>,
    }

    impl Fake {
        fn new(threads: &[(u32, char)]) -> Fake {
            Fake {
                threads: threads.iter().map(|&(t, c)| (t, c, 1_000)).collect(),
                exited: 0,
                clock_works: true,
                reads: Vec::new(),
                tick_between: None,
            }
        }

        /// Thread `tid` runs for `ns` and is left in `state`.
        fn run(&mut self, tid: u32, ns: u64, state: char) {
            let t = self.threads.iter_mut().find(|t| t.0 == tid).unwrap();
            t.1 = state;
            t.2 += ns;
        }

        fn tids(&self) -> Vec<u32> {
            self.threads.iter().map(|t| t.0).collect()
        }

        /// One tick: the states the watch gives, and the threads whose state it read.
        fn tick(&mut self, w: &mut StateWatch, now: Instant) -> (Vec<(u32, char)>, Vec<u32>) {
            self.reads.clear();
            let tids = self.tids();
            let states = pairs(&w.states(now, &tids, self));
            let mut reads = std::mem::take(&mut self.reads);
            reads.sort_unstable();
            (states, reads)
        }

        fn truth(&self) -> Vec<(u32, char)> {
            self.threads.iter().map(|t| (t.0, t.1)).collect()
        }
    }

    impl StateSource for Fake {
        fn cpu_time(&mut self) -> Option<u64> {
            self.clock_works
                .then(|| self.exited + self.threads.iter().map(|t| t.2).sum::<u64>())
        }

        fn state(&mut self, tid: u32) -> Option<char> {
            self.reads.push(tid);
            if let Some(ns) = self.tick_between.take() {
                self.threads[0].2 += ns;
            }
            self.threads.iter().find(|t| t.0 == tid).map(|t| t.1)
        }

        fn runtime(&mut self, tid: u32) -> Option<u64> {
            self.threads.iter().find(|t| t.0 == tid).map(|t| t.2)
        }
    }

    const TICK: Duration = Duration::from_millis(10);

    fn pairs(readings: &[Reading]) -> Vec<(u32, char)> {
        readings.iter().map(|r| (r.tid, r.state)).collect()
    }

    #[test]
    fn idle_threads_are_read_only_when_the_process_time_says_one_ran() {
        let mut p = Fake::new(&[(1, 'S'), (2, 'R'), (3, 'S'), (4, 'S')]);
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        let (states, reads) = p.tick(&mut w, t0);
        assert_eq!((states, reads), (p.truth(), vec![1, 2, 3, 4]));
        // Only the running thread ran: only it is read, and the others' states stand.
        for k in 1..10 {
            p.run(2, 3_000_000, 'R');
            let (states, reads) = p.tick(&mut w, t0 + TICK * k);
            assert_eq!((states, reads), (p.truth(), vec![2]), "tick {k}");
        }
        // Thread 3 wakes after a long sleep, alongside the busy one: its first tick on CPU
        // already shows it running.
        p.run(2, 3_000_000, 'R');
        p.run(3, 1, 'R');
        let (states, reads) = p.tick(&mut w, t0 + TICK * 10);
        assert_eq!((states, reads), (p.truth(), vec![1, 2, 3, 4]));
        // It is watched from then on: when it goes back to sleep that is seen at once.
        p.run(3, 2_000_000, 'S');
        p.run(2, 1_000_000, 'R');
        let (states, reads) = p.tick(&mut w, t0 + TICK * 11);
        assert_eq!((states, reads), (p.truth(), vec![2, 3]));
        // A thread that ran and went back to waiting between two ticks is seen too (its
        // state may be the same, but what it did is no longer known).
        p.run(4, 500, 'D');
        let (states, reads) = p.tick(&mut w, t0 + TICK * 12);
        assert_eq!((states, reads), (p.truth(), vec![1, 2, 3, 4]));
    }

    #[test]
    fn a_thread_is_still_since_a_tick_only_while_it_has_not_run() {
        let mut p = Fake::new(&[(1, 'R'), (2, 'S'), (3, 'S')]);
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        let still = |w: &mut StateWatch, p: &mut Fake, now: Instant| -> Vec<Option<Instant>> {
            let tids = p.tids();
            w.states(now, &tids, p)
                .iter()
                .map(|r| r.still_since)
                .collect()
        };
        // New threads: nothing known yet.
        assert_eq!(still(&mut w, &mut p, t0), [None, None, None]);
        // The process's time is explained by the running thread: the others have not run
        // since the first tick's reads.
        p.run(1, 3_000_000, 'R');
        let t1 = t0 + TICK;
        assert_eq!(still(&mut w, &mut p, t1), [None, Some(t0), Some(t0)]);
        p.run(1, 3_000_000, 'R');
        assert_eq!(still(&mut w, &mut p, t1 + TICK), [None, Some(t0), Some(t0)]);
        // Thread 3 runs for a moment and waits again, in the same state: its time says so.
        p.run(1, 3_000_000, 'R');
        p.run(3, 50_000, 'S');
        let t3 = t1 + TICK * 2;
        assert_eq!(still(&mut w, &mut p, t3), [None, Some(t0), None]);
        // Watched from then on, it is still again from the next tick on, by its own time.
        p.run(1, 3_000_000, 'R');
        let t4 = t3 + TICK;
        assert_eq!(still(&mut w, &mut p, t4), [None, Some(t0), Some(t3)]);
        p.run(3, 1, 'S');
        assert_eq!(still(&mut w, &mut p, t4 + TICK), [None, Some(t0), None]);
        // A sweep reads every thread's time: still threads stay still.
        p.run(1, 3_000_000, 'R');
        let t6 = t0 + STATE_SWEEP * 2;
        assert_eq!(still(&mut w, &mut p, t6), [None, Some(t0), Some(t4 + TICK)]);
        // A watched thread seen on a CPU is not still, even when its time has not grown
        // yet. (An unwatched one that woke since its time was last counted is caught at
        // the first tick after the kernel counts it, as its state is.)
        p.run(3, 0, 'R');
        assert_eq!(still(&mut w, &mut p, t6 + TICK)[2], None);
    }

    #[test]
    fn time_accounted_while_the_watch_reads_is_read_again_not_taken_for_an_idle_thread() {
        let mut p = Fake::new(&[(1, 'R'), (2, 'S'), (3, 'S')]);
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        p.tick(&mut w, t0);
        p.run(1, 4_000_000, 'R');
        p.tick_between = Some(4_000_000);
        let (states, reads) = p.tick(&mut w, t0 + TICK);
        assert_eq!((states, reads), (p.truth(), vec![1]));
        // And the next tick starts from the times read again.
        p.run(1, 1_000, 'R');
        let (_, reads) = p.tick(&mut w, t0 + TICK * 2);
        assert_eq!(reads, vec![1]);
    }

    #[test]
    fn a_watched_thread_is_let_go_after_a_window_without_cpu() {
        let mut p = Fake::new(&[(1, 'R'), (2, 'S')]);
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        p.tick(&mut w, t0);
        p.run(1, 10, 'S');
        let (states, reads) = p.tick(&mut w, t0 + TICK);
        assert_eq!((states, reads), (p.truth(), vec![1]));
        // Still watched within the window, though it does not run (this tick is also a
        // sweep, which reads every thread).
        let (_, reads) = p.tick(&mut w, t0 + WATCH_WINDOW);
        assert!(reads.contains(&1), "{reads:?}");
        let (states, reads) = p.tick(&mut w, t0 + WATCH_WINDOW + TICK * 2);
        assert_eq!((states, reads), (p.truth(), vec![]));
    }

    #[test]
    fn every_thread_is_read_on_each_sweep_and_whenever_the_clock_fails() {
        let mut p = Fake::new(&[(1, 'R'), (2, 'S'), (3, 'S')]);
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        p.tick(&mut w, t0);
        let (_, reads) = p.tick(&mut w, t0 + TICK);
        assert_eq!(reads, vec![1]);
        let (_, reads) = p.tick(&mut w, t0 + STATE_SWEEP);
        assert_eq!(reads, vec![1, 2, 3]);
        let (_, reads) = p.tick(&mut w, t0 + STATE_SWEEP + TICK);
        assert_eq!(reads, vec![1]);
        p.clock_works = false;
        let (states, reads) = p.tick(&mut w, t0 + STATE_SWEEP + TICK * 2);
        assert_eq!((states, reads), (p.truth(), vec![1, 2, 3]));
    }

    #[test]
    fn each_tick_sweeps_a_share_of_the_idle_threads_and_each_one_within_the_period() {
        let mut p = Fake::new(&[(1, 'R')]);
        p.threads.extend((2..1002).map(|t| (t, 'S', 1_000)));
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        p.tick(&mut w, t0);
        let ticks = (STATE_SWEEP.as_millis() / TICK.as_millis()) as u32;
        let mut last_read: HashMap<u32, u32> = HashMap::default();
        let mut most = 0;
        for k in 1..=ticks * 3 {
            p.run(1, 3_000_000, 'R');
            let (states, reads) = p.tick(&mut w, t0 + TICK * k);
            assert_eq!(states, p.truth(), "tick {k}");
            most = most.max(reads.len());
            for tid in reads {
                last_read.insert(tid, k);
            }
            if k > ticks {
                for tid in 2..1002 {
                    let at = last_read.get(&tid).copied().unwrap_or(0);
                    assert!(
                        k - at <= ticks,
                        "thread {tid} unread since tick {at} at tick {k}"
                    );
                }
            }
        }
        // A thousand idle threads over 50 ticks: about 20 a tick, never all at once.
        assert!(
            most <= 1 + 3 * 1000 / ticks as usize,
            "{most} threads read on one tick"
        );
    }

    #[test]
    fn a_full_read_leaves_times_the_next_tick_can_explain() {
        let mut p = Fake::new(&[(1, 'R'), (2, 'S'), (3, 'S')]);
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        p.tick(&mut w, t0);
        p.tick(&mut w, t0 + TICK);
        // A new thread makes this tick a full read, during which the busy thread's time
        // is accounted after the process's was read.
        p.threads.push((4, 'S', 7_000));
        p.run(1, 3_000_000, 'R');
        p.tick_between = Some(4_000_000);
        let (states, reads) = p.tick(&mut w, t0 + TICK * 2);
        assert_eq!((states, reads), (p.truth(), vec![1, 2, 3, 4]));
        // Only the busy thread ran since: only it is read.
        p.run(1, 3_000_000, 'R');
        let (states, reads) = p.tick(&mut w, t0 + TICK * 3);
        assert_eq!((states, reads), (p.truth(), vec![1]));
    }

    #[test]
    fn new_and_exited_threads_force_a_full_read() {
        let mut p = Fake::new(&[(1, 'R'), (2, 'S'), (3, 'S')]);
        let mut w = StateWatch::default();
        let t0 = Instant::now();
        p.tick(&mut w, t0);
        p.tick(&mut w, t0 + TICK);
        // A new thread: what it ran before it was listed is in the process's time.
        p.threads.push((4, 'S', 7_000));
        let (states, reads) = p.tick(&mut w, t0 + TICK * 2);
        assert_eq!((states, reads), (p.truth(), vec![1, 2, 3, 4]));
        // A thread exits: it ran to exit, and its time stays in the process's. Listed
        // still, its read fails and it is left out.
        let gone = p.threads.remove(2);
        p.exited += gone.2 + 100;
        let tids = [1, 2, 3, 4];
        p.reads.clear();
        let states = pairs(&w.states(t0 + TICK * 3, &tids, &mut p));
        p.reads.sort_unstable();
        assert_eq!((states, p.reads.clone()), (p.truth(), vec![1, 2, 3, 4]));
    }
}
