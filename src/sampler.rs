//! The sampler: ticks at a fixed rate, reads every Python thread of the target (and, with
//! `--subprocesses`, of its descendants) and sends samples to the profile.
//!
//! Timing is honest: each period of a fixed grid from the start gets one tick, at a moment
//! drawn afresh within it (see [`phase`]); when a sample takes longer than a period the
//! periods it overran are dropped and counted, never caught up in a burst, and
//! `--duration` is wall-clock time.

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::attach::{LiveTarget, attach};
use crate::diagnose::Prober;
use crate::process::events::{Event, Image, ImageState, Watch, shares_parent_memory};
use crate::python::asyncio::task_stacks;
use crate::python::{FrameOptions, PyError};
use crate::sample::Sample;
use crate::target::{CaptureOptions, LivePid, Pause, Snapshot, Target, ThreadInfo, ThreadState};

/// What to sample and how.
#[derive(Debug, Clone)]
pub struct SamplerOptions {
    /// Samples per second.
    pub rate: f64,
    /// Stop after this much wall-clock time.
    pub duration: Option<Duration>,
    /// Never re-check stacks for consistency (fastest, may record torn stacks).
    pub nonblocking: bool,
    /// Keep threads that are not on CPU.
    pub include_idle: bool,
    /// Keep only the thread holding the GIL.
    pub gil_only: bool,
    /// Follow child processes.
    pub subprocesses: bool,
    /// Report functions' first lines instead of the running line (`-F`).
    pub function_lines: bool,
    /// Read whether each thread is on CPU even when idle threads are kept anyway (`top`
    /// shows it). Without it, `states` and with `include_idle`, thread states are read
    /// only while they save more than they cost (see `Reuse`).
    pub activity: bool,
    /// Also take native stacks (stopping each sampled thread while its stack is read), and
    /// sample processes without Python as native programs.
    pub native: bool,
    /// Most Python frames kept per stack (`--depth`).
    pub depth: usize,
    /// asyncio tasks as stacks of their own (`--async`).
    pub async_tasks: bool,
    /// Read each Python thread's state (`diagnose`, `record --states`, `top`).
    pub states: bool,
}

/// Does `s` belong in the profile of a run with `opts`? Only idle threads' samples, sent
/// because states are read, may not.
pub fn profiled(opts: &SamplerOptions, s: &Sample) -> bool {
    opts.include_idle || s.stack.active
}

/// Thread names by (pid, Python thread id, kernel tid), as the profile keys threads.
pub type ThreadNames = HashMap<(u32, u64, Option<u32>), Arc<str>>;

/// What happened during a run, for the summary line.
#[derive(Debug, Clone, Default)]
pub struct SamplerStats {
    /// Ticks taken.
    pub ticks: u64,
    /// Ticks skipped because sampling fell behind.
    pub dropped_ticks: u64,
    /// Thread stacks that could not be read.
    pub errors: u64,
    /// Samples sent.
    pub samples: u64,
    /// Samples lost because the consumer was not keeping up.
    pub lost: u64,
    /// Wall-clock time sampled.
    pub elapsed: Duration,
    /// The target (every followed process) exited before the end.
    pub target_exited: bool,
    /// Processes that were sampled.
    pub processes: Vec<u32>,
    /// What the user should know about the run, said once each at its end (`--async` on an
    /// interpreter whose tasks cannot be read).
    pub notices: Vec<String>,
    /// The process prof was pointed at (attached or launched).
    pub root: u32,
    /// The root process was sampled at some point (read as Python, or natively with
    /// `--native`).
    pub root_attached: bool,
    /// The latest name of every thread read, sampled or not, by (pid, Python thread id,
    /// kernel tid) as the profile keys threads: a thread may get its name only after its
    /// last sample (a main thread sampled before `threading` was imported, then idle).
    /// Looked up for every stack of every tick: with the standard library's hasher this
    /// was ~3% of a tick on threads8.
    pub thread_names: ThreadNames,
}

impl SamplerStats {
    /// The end-of-run line `record` and `top` print: samples, threads, time, achieved vs
    /// requested rate, errors, dropped ticks (and samples lost, if any).
    pub fn summary_line(&self, samples: u64, threads: usize, requested_rate: f64) -> String {
        let mut line = format!(
            "prof: {samples} samples from {threads} threads in {:.2}s, {:.1} Hz achieved of {requested_rate} Hz requested, {} errors, {} dropped ticks",
            self.elapsed.as_secs_f64(),
            self.achieved_rate(),
            self.errors,
            self.dropped_ticks,
        );
        if self.lost > 0 {
            line.push_str(&format!(", {} samples lost", self.lost));
        }
        line
    }

    /// Ticks per second actually achieved.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ticks as f64 / secs
        } else {
            0.0
        }
    }
}

/// Figures the sampler publishes after every tick, for live displays (`prof top`): the
/// [`SamplerStats`] that [`run`] returns only exist once sampling has ended.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Ticks taken so far.
    pub ticks: AtomicU64,
    /// Ticks skipped so far because sampling fell behind.
    pub dropped_ticks: AtomicU64,
    /// Thread stacks that could not be read so far.
    pub errors: AtomicU64,
    /// Samples lost so far because the consumer was not keeping up.
    pub lost: AtomicU64,
    /// Python version of the first process read as Python (the root when it is Python).
    pub python: OnceLock<String>,
}

impl LiveStats {
    fn publish(&self, stats: &SamplerStats) {
        // Relaxed: each figure is read on its own, for display.
        self.ticks.store(stats.ticks, Ordering::Relaxed);
        self.dropped_ticks
            .store(stats.dropped_ticks, Ordering::Relaxed);
        self.errors.store(stats.errors, Ordering::Relaxed);
        self.lost.store(stats.lost, Ordering::Relaxed);
    }
}

/// How long a launched or newly found process may take to show a Python interpreter.
const ATTACH_PATIENCE: Duration = Duration::from_secs(10);
/// How long after its last exec a process that still shows no interpreter is given up on:
/// a Python executable or libpython is mapped by the time the process runs its first
/// instruction, so this only has to cover the read itself.
const EXEC_SETTLE: Duration = Duration::from_secs(1);
/// How often a process is checked for having exited (failed reads check at once).
const ALIVE_CHECK: Duration = Duration::from_millis(50);
/// How often process events are taken: each take is a system call (the kernel queues the
/// events meanwhile), once a tick was a visible share of a tick at 1000 Hz and more. A read
/// that fails in between looks at its process at once, as without events.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// Most threads whose names [`SamplerStats::thread_names`] keeps.
const MAX_NAMED_THREADS: usize = 1 << 16;

/// Bound on [`SamplerStats::notices`] (one per process at most, with -s many processes).
const MAX_NOTICES: usize = 8;

/// Fewest threads that must be still (not run since they were read) for [`Reuse`] to stay
/// on, and the least share of all threads they must be.
const REUSE_MIN_STILL: usize = 16;
/// Ticks [`Reuse`] is tried for before it decides (the first one learns every thread).
const REUSE_TRIAL: u32 = 3;
/// How long [`Reuse`] stays off before it is tried again.
const REUSE_RETRY: Duration = Duration::from_secs(1);

/// Whether thread states are read with `--idle` when nothing else asks for them, so that
/// the stacks of threads that have not run since their last read are handed out again
/// instead of copied and walked (see [`crate::python::Want::Reuse`]). Knowing that costs
/// reads of its own each tick (the process's CPU time, and the state and CPU time of each
/// thread that ran lately), which pay only while many threads are still: on, it stays on
/// while at least half the threads, and [`REUSE_MIN_STILL`], are; off, it is tried again
/// every [`REUSE_RETRY`].
#[derive(Debug)]
struct Reuse {
    on: bool,
    /// Ticks left of the current trial.
    trial: u32,
    /// When it is tried next, while off.
    next_try: Instant,
}

impl Reuse {
    fn new(now: Instant) -> Reuse {
        Reuse {
            on: false,
            trial: 0,
            next_try: now,
        }
    }

    /// Read states this tick?
    fn wanted(&mut self, now: Instant) -> bool {
        if !self.on && now >= self.next_try {
            self.on = true;
            self.trial = REUSE_TRIAL;
        }
        self.on
    }

    /// What this tick's states said (when [`Reuse::wanted`] asked for them).
    fn saw(&mut self, now: Instant, threads: &[ThreadInfo]) {
        if self.trial > 0 {
            self.trial -= 1;
            if self.trial > 0 {
                return;
            }
        }
        let still = threads.iter().filter(|t| t.still_since.is_some()).count();
        if still < REUSE_MIN_STILL || still * 2 < threads.len() {
            self.on = false;
            self.next_try = now + REUSE_RETRY;
        }
    }
}

enum ProcState {
    /// Not (yet) readable as Python: retried until `ATTACH_PATIENCE` passes.
    Pending {
        since: Instant,
        next_try: Instant,
        /// The executable last seen, and since when (a fork has prof's or its parent's).
        exe: Option<std::path::PathBuf>,
        exe_since: Instant,
    },
    /// Read as Python, or (with `--native`, when it has no Python) as a native program.
    Ready(Box<LiveTarget>),
    /// Not Python, or given up on.
    Ignored,
}

struct Proc {
    pid: u32,
    state: ProcState,
    /// The program image the process runs, to tell an exec or an exit from a failed read.
    image: Option<Image>,
    /// When liveness is checked again; a failed read checks it at once.
    next_alive_check: Instant,
    /// Seen gone (exited or a zombie).
    gone: bool,
    /// The thread-state reader, with `states` (made at the first sample).
    prober: Option<Prober>,
    /// `--async` was told this program's tasks cannot be read (said once, not every tick).
    tasks_unsupported_told: bool,
    /// Whether states are read to hand out still threads' stacks again (`--idle` alone).
    reuse: Reuse,
}

impl Proc {
    fn new(pid: u32, state: ProcState, now: Instant) -> Proc {
        Proc {
            pid,
            state,
            image: None,
            next_alive_check: now,
            gone: false,
            prober: None,
            tasks_unsupported_told: false,
            reuse: Reuse::new(now),
        }
    }

    fn pending(pid: u32, now: Instant) -> Proc {
        Proc::new(pid, pending_state(now), now)
    }

    /// A read of the process failed: `errors` more samples lost, unless the process just
    /// exited or exec'd (then nothing was there to lose).
    fn read_failed(&mut self, errors: u64, now: Instant, stats: &mut SamplerStats) {
        if self.look(now) == ImageState::Same {
            stats.errors += errors;
        }
    }

    /// Has the process exited or exec'd? Acts on it: an exited process is marked gone, one
    /// that exec'd is attached again from scratch.
    fn look(&mut self, now: Instant) -> ImageState {
        if self.image.is_none() {
            self.image = Image::open(self.pid);
        }
        let state = self.image.as_ref().map_or(ImageState::Gone, Image::check);
        match state {
            ImageState::Gone => self.gone = true,
            ImageState::Replaced => self.replaced(now),
            ImageState::Same => {}
        }
        state
    }

    /// The process exec'd: whatever was known of its program no longer holds.
    fn replaced(&mut self, now: Instant) {
        self.state = pending_state(now);
        self.prober = None;
        self.tasks_unsupported_told = false;
        self.image = Image::open(self.pid);
        self.gone = self.image.is_none();
    }
}

fn pending_state(now: Instant) -> ProcState {
    ProcState::Pending {
        since: now,
        next_try: now,
        exe: None,
        exe_since: now,
    }
}

/// Acts on what happened to processes since the last tick: with `children`, each
/// process born to a followed one is followed too; one that exec'd or exited is looked at
/// at once.
fn follow(procs: &mut Vec<Proc>, events: &[Event], children: bool, now: Instant) {
    if children {
        // A parent may come after its child (pids wrap around): repeat until none is added.
        loop {
            let before = procs.len();
            for e in events {
                if let Event::Fork { parent, child } = *e
                    && procs.iter().any(|p| p.pid == parent)
                    && !procs.iter().any(|p| p.pid == child)
                {
                    procs.push(Proc::pending(child, now));
                }
            }
            if procs.len() == before {
                break;
            }
        }
    }
    for e in events {
        match *e {
            Event::Exec { pid } | Event::Exit { pid } => {
                if let Some(p) = procs.iter_mut().find(|p| p.pid == pid && !p.gone) {
                    p.look(now);
                }
            }
            Event::Fork { .. } => {}
        }
    }
}

/// The sampling loop. `root` is the attached target, or a launched pid still starting up.
/// Each tick's samples go to `tx` as one message: a message per thread-sample would cost a
/// consumer wake-up per thread.
pub fn run(
    root: Result<LiveTarget, u32>,
    opts: &SamplerOptions,
    tx: &Sender<Vec<Sample>>,
    stop: &AtomicBool,
) -> SamplerStats {
    run_live(root, opts, tx, stop, None)
}

/// [`run`], also publishing its figures to `live` after every tick.
pub fn run_live(
    root: Result<LiveTarget, u32>,
    opts: &SamplerOptions,
    tx: &Sender<Vec<Sample>>,
    stop: &AtomicBool,
    live: Option<&LiveStats>,
) -> SamplerStats {
    let mut root = root;
    // An attached target's native side is made ready before the clock starts: on the first
    // tick it took ~0.1 s, and every tick due meanwhile was dropped. (If it cannot be read
    // now, the first tick tries again.)
    if let (Ok(t), true) = (&mut root, opts.native)
        && t.enable_native().is_ok()
    {
        t.warm_native();
    }
    let clock = SystemClock::new();
    // This thread's only: the target's threads, and prof's others, keep theirs. A failure
    // leaves the default, which costs ticks at high rates and nothing else.
    let _ = nix::sys::prctl::set_timerslack(timer_slack(opts.rate).as_nanos() as _);
    let mut stats = SamplerStats::default();
    let root_pid = match &root {
        Ok(t) => t.target().pid(),
        Err(pid) => *pid,
    };
    stats.root = root_pid;
    stats.root_attached = root.is_ok();
    let now = clock.now();
    let mut procs = LiveProcs {
        procs: vec![match root {
            Ok(t) => Proc::new(root_pid, ProcState::Ready(Box::new(t)), now),
            Err(pid) => Proc::pending(pid, now),
        }],
        watch: Watch::new(opts.subprocesses),
        next_watch: now,
        events: Vec::new(),
        frame_opts: FrameOptions {
            locals: false,
            validate: !opts.nonblocking,
            function_lines: opts.function_lines,
            depth: opts.depth,
        },
        opts: opts.clone(),
    };
    timing_loop(&clock, &mut procs, opts, tx, stop, live, &mut stats);
    stats.processes = procs
        .procs
        .iter()
        .filter(|p| matches!(&p.state, ProcState::Ready(t) if t.interpreter().is_some()))
        .map(|p| p.pid)
        .collect();
    stats
}

/// Where the sampler's time comes from: the system's clock, or a fake one in tests.
pub trait Clock {
    /// The time now.
    fn now(&self) -> Instant;
    /// Sleep until `when`, waking early if a stop is requested.
    fn sleep_until(&self, when: Instant, stop: &AtomicBool);
    /// Where in its period tick `tick` falls, in [0, 1) (see [`phase`]).
    fn phase(&self, tick: u64) -> f64;
}

/// Where in its period tick `tick` of a run seeded `seed` falls, in [0, 1): drawn afresh
/// for each period, the same for the same seed and tick (a fake clock's runs repeat).
///
/// On a fixed grid a target whose own rhythm keeps step with the period is always seen at
/// the same point of it: two threads taking turns on the GIL every 5 ms, sampled at
/// 100 Hz, showed one thread on CPU at every tick and the other at none, for as long as
/// the two rhythms kept step (rec_wake.py on 3.7: a burst of 0.1 s of CPU with 0 of its 20
/// ticks, 1 run in 8; 0 to 20 from run to run, 5 to 10 at 73 Hz). A moment drawn anew in
/// each period is uniform in any rhythm's cycle up to the period; each period still gets
/// one tick, so rates and dropped ticks mean what they did.
pub fn phase(seed: u64, tick: u64) -> f64 {
    // splitmix64's output function over the tick's place in the seed's sequence.
    let mut z = seed.wrapping_add(tick.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The kernel's timer slack for a thread that does not set one.
const DEFAULT_TIMER_SLACK: Duration = Duration::from_micros(50);

/// The timer slack of the sampling thread at `rate` Hz: a twentieth of the period, at most
/// the kernel's default. The kernel may end a sleep that late to merge wake-ups, and a
/// normal thread's 50 µs (plus ~17 µs of wake-up on a VM) was two thirds of a 10 kHz
/// period: a tick that then took over ~30 µs, or woke a little later still, lost the next.
pub fn timer_slack(rate: f64) -> Duration {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    (period / 20).clamp(Duration::from_nanos(1), DEFAULT_TIMER_SLACK)
}

/// The system's monotonic clock, with ticks' phases seeded per run.
pub struct SystemClock {
    seed: u64,
}

impl SystemClock {
    /// A clock whose ticks' phases no other run shares (seeded by the time and prof's pid).
    pub fn new() -> SystemClock {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SystemClock {
            seed: nanos ^ u64::from(std::process::id()).rotate_left(32),
        }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn phase(&self, tick: u64) -> f64 {
        phase(self.seed, tick)
    }

    fn sleep_until(&self, when: Instant, stop: &AtomicBool) {
        loop {
            let now = Instant::now();
            if now >= when || stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep((when - now).min(Duration::from_millis(100)));
        }
    }
}

/// How a tick ended, for the timing loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Sampled; go on.
    Sampled,
    /// Nothing is left to sample: every target exited (before this tick was taken).
    Exited,
    /// Nothing will ever be sampled (a launched command that never became Python): the
    /// tick's samples are sent, but it is not counted.
    GaveUp,
}

/// When a tick was taken: what its samples carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stamp {
    /// Seconds since the start of the run.
    pub time: f64,
    /// Its period's number on the grid from the start.
    pub tick: u64,
}

/// What the timing loop samples on each tick: the live processes, or a fake in tests.
pub trait Source {
    /// Take one tick at `now` (`at` into the run): samples into `out`, failures into
    /// `stats`.
    fn tick(
        &mut self,
        now: Instant,
        at: Stamp,
        out: &mut Vec<Sample>,
        stats: &mut SamplerStats,
    ) -> Tick;

    /// Learn the target before the clock starts: what the first tick would otherwise learn
    /// at the cost of the ticks due meanwhile. Its samples are not kept.
    fn warm(&mut self, _now: Instant, _stats: &mut SamplerStats) {}

    /// Publish what only the source knows to a live display.
    fn publish(&self, _live: &LiveStats) {}
}

/// The timing loop: one tick in each period of a fixed grid from the start, at the moment
/// [`Clock::phase`] draws in what is left of that period; each tick's samples sent to `tx`
/// as one message; periods that ended while a tick ran are dropped and counted, never
/// caught up in a burst; `opts.duration` is wall-clock time from the start.
pub fn timing_loop(
    clock: &impl Clock,
    source: &mut impl Source,
    opts: &SamplerOptions,
    tx: &Sender<Vec<Sample>>,
    stop: &AtomicBool,
    live: Option<&LiveStats>,
    stats: &mut SamplerStats,
) {
    source.warm(clock.now(), stats);
    let start = clock.now();
    let rate = opts.rate.max(0.001);
    let window = opts.duration.map(|d| d.as_secs_f64());
    let mut tick: u64 = 0;
    // Whether the run went the whole of -d: its window is then exactly -d long (each tick
    // stands for one period), however soon after the last tick the loop ends.
    let mut full_window = false;
    let mut last_len = 0;
    loop {
        // From the tick's number, not a sum of rounded periods: 3 Hz for 1 s is 3 ticks,
        // not a 4th at 0.999999999 s.
        let begins = tick as f64 / rate;
        if window.is_some_and(|d| begins >= d) {
            full_window = true;
            break;
        }
        // What is left of the period (all of it unless the last tick ran into it), and of
        // the window: a tick drawn past either would stand for time nobody asked for.
        let ends = ((tick + 1) as f64 / rate).min(window.unwrap_or(f64::INFINITY));
        let from = begins.max(clock.now().duration_since(start).as_secs_f64());
        let due = from + (ends - from).max(0.0) * clock.phase(tick);
        clock.sleep_until(start + Duration::from_secs_f64(due), stop);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let now = clock.now();
        let at = Stamp {
            time: now.duration_since(start).as_secs_f64(),
            tick,
        };
        // As long as the last tick's: a tick usually gives as many samples as the one before.
        let mut batch = Vec::with_capacity(last_len);
        let ended = source.tick(now, at, &mut batch, stats);
        last_len = batch.len();
        if ended == Tick::Exited {
            stats.target_exited = true;
            break;
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match tx.try_send(batch) {
                Ok(()) => stats.samples += n,
                Err(_) => stats.lost += n,
            }
        }
        if ended == Tick::GaveUp {
            break;
        }
        stats.ticks += 1;
        tick += 1;
        // Periods that ended while this tick ran are dropped, not caught up in a burst; the
        // one it ended in still gets its tick, in what is left of it. Only the window's own
        // periods count as dropped: a stall past the end of -d (a tick that overran it,
        // prof descheduled) skipped nothing that was asked for, and counting it made ticks
        // plus dropped ticks exceed the window's.
        let behind = clock.now().duration_since(start).as_secs_f64() * rate;
        let next = behind.floor() as u64;
        if next > tick {
            let window_end = window.map_or(u64::MAX, |d| (d * rate).ceil() as u64);
            stats.dropped_ticks += next.min(window_end).saturating_sub(tick);
            tick = next;
        }
        if let Some(live) = live {
            live.publish(stats);
            source.publish(live);
        }
    }
    stats.elapsed = match opts.duration {
        Some(d) if full_window => d,
        Some(d) => clock.now().duration_since(start).min(d),
        None => clock.now().duration_since(start),
    };
}

/// The live processes the sampler follows: the root, and with `-s` its descendants.
struct LiveProcs {
    procs: Vec<Proc>,
    watch: Watch,
    /// When `watch` is polled next (see [`WATCH_EVERY`]).
    next_watch: Instant,
    events: Vec<Event>,
    frame_opts: FrameOptions,
    opts: SamplerOptions,
}

impl Source for LiveProcs {
    fn tick(
        &mut self,
        now: Instant,
        at: Stamp,
        out: &mut Vec<Sample>,
        stats: &mut SamplerStats,
    ) -> Tick {
        self.events.clear();
        if now >= self.next_watch {
            self.next_watch = now + WATCH_EVERY;
            self.watch.poll(now, &mut self.events);
        }
        follow(&mut self.procs, &self.events, self.opts.subprocesses, now);
        // Liveness (and an exec) is a /proc read: done on a timer, and at once when a read
        // fails.
        self.procs.retain_mut(|p| {
            if !p.gone && now >= p.next_alive_check {
                p.next_alive_check = now + ALIVE_CHECK;
                p.look(now);
            }
            !p.gone
        });
        if self.procs.is_empty() {
            return Tick::Exited;
        }
        for p in self.procs.iter_mut() {
            sample_process(p, at, now, &self.frame_opts, &self.opts, out, stats);
        }
        if !self.opts.subprocesses
            && self.procs.len() == 1
            && matches!(self.procs[0].state, ProcState::Ignored)
        {
            // The launched command never became Python and nothing else is followed.
            return Tick::GaveUp;
        }
        Tick::Sampled
    }

    /// Two ticks of an attached target, their samples thrown away: on a thousand threads the
    /// first tick (two thousand `/proc` files opened, every stack copied and walked for the
    /// first time) took ~0.1 s, and the ten ticks due meanwhile at 100 Hz were dropped. The
    /// second is the first that can tell by the threads' CPU times which of them ran since
    /// the one before (those are watched from then on): after one, the first tick of the
    /// window found the process's time unexplained and read every thread's state again
    /// (14-100 ms on 1,000 threads, 1-9 ticks dropped at 100 Hz, in every run). Not with
    /// `--native`, whose own warm-up came before (a tick would stop the threads once more),
    /// nor for a launched command, which is not Python yet.
    fn warm(&mut self, now: Instant, stats: &mut SamplerStats) {
        if self.opts.native || !matches!(self.procs[0].state, ProcState::Ready(_)) {
            return;
        }
        let mut thrown = Vec::new();
        let mut now = now;
        for _ in 0..2 {
            for p in self.procs.iter_mut() {
                sample_process(
                    p,
                    Stamp { time: 0.0, tick: 0 },
                    now,
                    &self.frame_opts,
                    &self.opts,
                    &mut thrown,
                    stats,
                );
            }
            thrown.clear();
            now = Instant::now();
        }
    }

    fn publish(&self, live: &LiveStats) {
        if live.python.get().is_none()
            && let Some(i) = self.procs.iter().find_map(|p| match &p.state {
                ProcState::Ready(t) => t.interpreter(),
                _ => None,
            })
        {
            let _ = live.python.set(i.version().to_string());
        }
    }
}

fn sample_process(
    p: &mut Proc,
    at: Stamp,
    now: Instant,
    frame_opts: &FrameOptions,
    opts: &SamplerOptions,
    out: &mut Vec<Sample>,
    stats: &mut SamplerStats,
) {
    if let ProcState::Pending {
        since,
        next_try,
        exe,
        exe_since,
    } = &mut p.state
    {
        if now < *next_try {
            return;
        }
        // A vfork child runs in its parent's memory until it execs (normally very soon): it
        // has no interpreter of its own yet, and attached now it would be read through its
        // parent's, whose threads are not its own.
        if shares_parent_memory(p.pid) == Some(true) {
            *next_try = now + Duration::from_millis(1);
            return;
        }
        let current = std::fs::read_link(format!("/proc/{}/exe", p.pid)).ok();
        if current != *exe {
            *exe = current;
            *exe_since = now;
        }
        let settled = exe.is_some()
            && exe.as_deref() != std::env::current_exe().ok().as_deref()
            && now.duration_since(*exe_since) >= EXEC_SETTLE;
        match attach(p.pid) {
            Ok(t) => {
                if p.pid == stats.root {
                    stats.root_attached = true;
                }
                p.state = ProcState::Ready(Box::new(t));
            }
            // No Python will appear in a process that has none mapped: with --native it is
            // a native program, sampled from now on.
            Err(e) if opts.native && e.is_not_python() && (settled || !python_mapped(p.pid)) => {
                if exe.as_deref() != std::env::current_exe().ok().as_deref() {
                    if p.pid == stats.root {
                        stats.root_attached = true;
                    }
                    p.state =
                        ProcState::Ready(Box::new(Snapshot::native_only(LivePid::new(p.pid))));
                } else {
                    // Still prof's own fork, before its exec.
                    *next_try = now + Duration::from_millis(10);
                }
            }
            Err(_) if !settled && now.duration_since(*since) < ATTACH_PATIENCE => {
                *next_try = now + Duration::from_millis(10);
            }
            Err(_) => p.state = ProcState::Ignored,
        }
    }
    let ProcState::Ready(snap) = &mut p.state else {
        return;
    };
    if opts.native && !snap.has_native() && snap.enable_native().is_err() {
        return p.read_failed(1, now, stats);
    }
    // Kernel threads and their states, read before the stacks (a failed listing leaves
    // the Python threads, whose kernel ids are then unknown).
    // States (the prober takes each thread's CPU time and stillness from them), or
    // activity, asked for.
    let asked = opts.activity || !opts.include_idle || opts.states;
    // (With --native every sampled thread is stopped and unwound anyway: the Python reads
    // saved would be a small part of a tick.)
    let reuse = !asked && !opts.native && p.reuse.wanted(now);
    let threads = snap
        .target_mut()
        .threads(asked || reuse)
        .unwrap_or_default();
    if reuse {
        p.reuse.saw(now, &threads);
    }
    let capture_opts = CaptureOptions {
        frames: *frame_opts,
        // With --native, the threads to sample are stopped while their stacks are read.
        pause: Pause::Sampled {
            include_idle: opts.include_idle,
        },
        async_tasks: opts.async_tasks,
        // Idle threads' samples are dropped below unless --idle or states want them.
        idle_stacks: opts.include_idle || opts.states,
    };
    // `--gil` on a free-threaded build keeps the threads on CPU (see Layout).
    let layout = opts
        .gil_only
        .then(|| snap.interpreter().map(|i| Arc::clone(&i.layout)))
        .flatten();
    let capture = match snap.capture(&threads, &capture_opts) {
        Ok(c) => c,
        Err(_) => return p.read_failed(1, now, stats),
    };
    // Threads whose stacks could not be read: counted once the process is known to be
    // neither exiting nor exec'ing.
    if capture.unread > 0 {
        p.read_failed(capture.unread, now, stats);
    }
    let mut stacks = capture.stacks;
    if opts.states
        && let ProcState::Ready(snap) = &mut p.state
        && let Some(interp) = snap.interpreter()
    {
        let prober = p.prober.get_or_insert_with(|| Prober::new(p.pid));
        let index = snap.thread_index();
        let info = |tid| index.get(&threads, tid);
        prober.retain(|tid| info(tid).is_some());
        let mem = snap.target().memory();
        let layout = &interp.layout;
        let gil = prober.gil(now, || {
            crate::python::threads::gil_address(mem, layout, interp.runtime)
        });
        let calls: Vec<_> = stacks
            .iter()
            .filter_map(|s| s.os_thread_id)
            .map(|tid| {
                let still = info(tid).and_then(|t| t.still_since);
                (tid, prober.call(tid, still))
            })
            .collect();
        let holder = crate::python::threads::gil_holder_id(mem, layout, interp.runtime);
        let stat = |tid| info(tid).map_or(ThreadState::Unknown, |t| t.state);
        prober.fill(
            &mut stacks,
            &calls,
            holder,
            stat,
            layout.free_threaded,
            gil,
            mem,
        );
        // A still thread's CPU time is the listing's; another's is read now, after its
        // `syscall`: one that ran up to the moment it blocked must not count that run as
        // run since.
        let (index, target) = snap.index_and_target();
        prober.settle(&mut stacks, |tid| match index.get(&threads, tid) {
            Some(t) if t.still_since.is_some() => t.runtime,
            _ => target.thread_runtime(tid),
        });
    }
    // Each task becomes a stack of its own, through the tasks awaiting it; the running one
    // joined to its thread's stack.
    match capture.tasks {
        Some(Ok(mut tasks)) => stacks = task_stacks(&mut tasks, stacks),
        Some(Err(PyError::TasksUnsupported(why))) if !p.tasks_unsupported_told => {
            p.tasks_unsupported_told = true;
            let note = format!("process {}: {why}; --async shows its threads only", p.pid);
            if stats.notices.len() < MAX_NOTICES && !stats.notices.contains(&note) {
                stats.notices.push(note);
            }
        }
        Some(Err(PyError::TasksUnsupported(_))) => {}
        Some(Err(_)) => p.read_failed(1, now, stats),
        None => {}
    }
    for s in &stacks {
        if let Some(name) = &s.thread_name {
            let key = (p.pid, s.thread_id, s.os_thread_id);
            let full = stats.thread_names.len() >= MAX_NAMED_THREADS;
            match stats.thread_names.get_mut(&key) {
                Some(known) if !Arc::ptr_eq(known, name) && known != name => {
                    *known = Arc::clone(name)
                }
                Some(_) => {}
                // Bounded for a target that churns through threads for hours: past the
                // bound, a new thread is labelled from its samples alone.
                None if !full => {
                    stats.thread_names.insert(key, Arc::clone(name));
                }
                None => {}
            }
        }
    }
    // With states, idle threads are sent too (their waits are the point); the
    // consumer keeps them out of its profile with [`profiled`].
    for stack in stacks {
        if stack.frames.is_empty()
            || (!opts.include_idle && !opts.states && !stack.active)
            || (opts.gil_only
                && !layout.as_ref().map_or(stack.owns_gil, |l| {
                    l.passes_gil_filter(stack.owns_gil, stack.active)
                }))
        {
            continue;
        }
        out.push(Sample {
            time: at.time,
            tick: at.tick,
            pid: p.pid,
            stack,
        });
    }
}

/// Is a Python interpreter (an executable or library named like one) mapped in `pid`?
fn python_mapped(pid: u32) -> bool {
    crate::process::read_maps(pid).is_ok_and(|maps| {
        maps.iter().any(|m| {
            m.path
                .as_deref()
                .and_then(|p| p.rsplit('/').next())
                .is_some_and(|name| name.contains("python"))
        })
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use crossbeam_channel::bounded;

    use super::*;
    use crate::sample::{Frame, FrameKind, ThreadStack};

    /// A clock that moves only when slept on, or when a fake tick says it worked; its ticks
    /// fall at the start of their periods unless it is `seeded`.
    struct FakeClock {
        t: Cell<Instant>,
        seed: Option<u64>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock {
                t: Cell::new(Instant::now()),
                seed: None,
            }
        }

        fn seeded(seed: u64) -> FakeClock {
            FakeClock {
                seed: Some(seed),
                ..FakeClock::new()
            }
        }

        fn advance(&self, d: Duration) {
            self.t.set(self.t.get() + d);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.t.get()
        }

        fn sleep_until(&self, when: Instant, _stop: &AtomicBool) {
            if when > self.t.get() {
                self.t.set(when);
            }
        }

        fn phase(&self, tick: u64) -> f64 {
            self.seed.map_or(0.0, |s| phase(s, tick))
        }
    }

    /// A target in memory: each tick costs `cost` of the fake clock, gives one sample per
    /// thread, or fails every `fail_every`-th tick; it exits after `exit_after` ticks, or
    /// asks the sampler to stop after `stop_after`.
    struct FakeTarget<'a> {
        clock: &'a FakeClock,
        cost: Duration,
        threads: usize,
        fail_every: Option<u64>,
        exit_after: Option<u64>,
        stop_after: Option<(u64, &'a AtomicBool)>,
        /// When each tick was taken, seconds into the run.
        times: Vec<f64>,
        /// Each tick's period.
        ticks: Vec<u64>,
        /// What the first tick, or a warm-up, costs on top (learning the target).
        learning: Duration,
    }

    impl<'a> FakeTarget<'a> {
        fn new(clock: &'a FakeClock, cost_ms: u64) -> FakeTarget<'a> {
            FakeTarget {
                clock,
                cost: Duration::from_millis(cost_ms),
                threads: 2,
                fail_every: None,
                exit_after: None,
                stop_after: None,
                times: Vec::new(),
                ticks: Vec::new(),
                learning: Duration::ZERO,
            }
        }
    }

    impl Source for FakeTarget<'_> {
        fn tick(
            &mut self,
            _now: Instant,
            at: Stamp,
            out: &mut Vec<Sample>,
            stats: &mut SamplerStats,
        ) -> Tick {
            let n = self.times.len() as u64;
            if Some(n) == self.exit_after {
                return Tick::Exited;
            }
            if let Some((after, stop)) = self.stop_after
                && n + 1 == after
            {
                stop.store(true, Ordering::SeqCst);
            }
            self.times.push(at.time);
            self.ticks.push(at.tick);
            self.clock
                .advance(self.cost + std::mem::take(&mut self.learning));
            if self.fail_every.is_some_and(|k| (n + 1).is_multiple_of(k)) {
                stats.errors += 1;
                return Tick::Sampled;
            }
            for t in 0..self.threads {
                out.push(Sample {
                    time: at.time,
                    tick: at.tick,
                    pid: 1,
                    stack: ThreadStack {
                        thread_id: t as u64,
                        os_thread_id: Some(t as u32),
                        thread_name: None,
                        active: true,
                        owns_gil: false,
                        gil_requested: false,
                        state: None,
                        frames: vec![Frame::new("f", "f.py", "f.py", 1, FrameKind::Python)].into(),
                    },
                });
            }
            Tick::Sampled
        }

        fn warm(&mut self, _now: Instant, _stats: &mut SamplerStats) {
            self.clock.advance(std::mem::take(&mut self.learning));
        }
    }

    fn opts(rate: f64, duration_ms: Option<u64>) -> SamplerOptions {
        SamplerOptions {
            rate,
            duration: duration_ms.map(Duration::from_millis),
            nonblocking: false,
            include_idle: true,
            gil_only: false,
            subprocesses: false,
            function_lines: false,
            activity: false,
            native: false,
            depth: 4096,
            async_tasks: false,
            states: false,
        }
    }

    fn run_fake(target: &mut FakeTarget, o: &SamplerOptions, cap: usize) -> SamplerStats {
        let (tx, _rx) = bounded(cap);
        let stop = AtomicBool::new(false);
        let mut stats = SamplerStats::default();
        timing_loop(target.clock, target, o, &tx, &stop, None, &mut stats);
        stats
    }

    #[test]
    fn timer_slack_is_a_twentieth_of_the_period_and_never_zero() {
        assert_eq!(timer_slack(10_000.0), Duration::from_micros(5));
        assert_eq!(timer_slack(2000.0), Duration::from_micros(25));
        // 1000 Hz and slower keep the kernel's default: a later wake-up costs them little,
        // and a tighter slack cost deep.py's ticks ~5 µs with target and prof on one core.
        assert_eq!(timer_slack(1000.0), DEFAULT_TIMER_SLACK);
        assert_eq!(timer_slack(100.0), DEFAULT_TIMER_SLACK);
        assert_eq!(timer_slack(0.5), DEFAULT_TIMER_SLACK);
        // prctl takes 0 as "back to the default".
        assert!(timer_slack(1e12) > Duration::ZERO);
    }

    #[test]
    fn ticks_on_a_fixed_grid_when_sampling_keeps_up() {
        let clock = FakeClock::new();
        let mut target = FakeTarget::new(&clock, 1);
        let stats = run_fake(&mut target, &opts(100.0, Some(1000)), 1000);
        assert_eq!((stats.ticks, stats.dropped_ticks), (100, 0));
        assert_eq!(stats.samples, 200);
        assert_eq!(stats.elapsed, Duration::from_secs(1));
        assert!((stats.achieved_rate() - 100.0).abs() < 1e-9);
        for (k, t) in target.times.iter().enumerate() {
            assert!((t - k as f64 * 0.01).abs() < 1e-9, "tick {k} at {t}");
        }
    }

    #[test]
    fn what_the_first_tick_learns_is_learned_before_the_clock_starts() {
        // Learning the target takes ten periods: none of the window's ticks is lost to it.
        let clock = FakeClock::new();
        let mut target = FakeTarget::new(&clock, 1);
        target.learning = Duration::from_millis(100);
        let stats = run_fake(&mut target, &opts(100.0, Some(1000)), 1000);
        assert_eq!((stats.ticks, stats.dropped_ticks), (100, 0), "{stats:?}");
        assert_eq!(stats.elapsed, Duration::from_secs(1));
    }

    #[test]
    fn late_ticks_are_dropped_and_counted_never_caught_up() {
        // 100 Hz, but each tick takes 25 ms: each tick overruns the next period whole and
        // ends half-way through the one after, whose tick then comes at once.
        let clock = FakeClock::new();
        let mut target = FakeTarget::new(&clock, 25);
        let stats = run_fake(&mut target, &opts(100.0, Some(1000)), 1000);
        assert_eq!(stats.ticks, 40, "{stats:?}");
        // The periods each tick overran whole, up to the window's end: the last tick
        // (period 97) overran past it, which skipped nothing asked for. Taken and dropped
        // ticks make up the window's 100.
        assert_eq!(stats.dropped_ticks, 60, "{stats:?}");
        assert_eq!(stats.elapsed, Duration::from_secs(1));
        assert!((stats.achieved_rate() - 40.0).abs() < 1e-9);
        // No burst: one tick a period at most, and never two closer than the tick took.
        assert!(
            target.ticks.windows(2).all(|w| w[1] > w[0]),
            "{:?}",
            target.ticks
        );
        for w in target.times.windows(2) {
            assert!((w[1] - w[0] - 0.025).abs() < 1e-9, "{:?}", target.times);
        }
    }

    #[test]
    fn each_period_gets_one_tick_at_a_moment_drawn_in_it() {
        let clock = FakeClock::seeded(7);
        let mut target = FakeTarget::new(&clock, 1);
        let stats = run_fake(&mut target, &opts(100.0, Some(10_000)), 2000);
        assert_eq!((stats.ticks, stats.dropped_ticks), (1000, 0), "{stats:?}");
        assert_eq!(target.ticks, (0..1000).collect::<Vec<u64>>());
        // Each tick inside its own period, and not always at the same point of it: each
        // quarter of the period holds about a quarter of the ticks (binomial sd ~1.4%).
        let mut quarters = [0u32; 4];
        for (&k, &t) in target.ticks.iter().zip(&target.times) {
            let p = t * 100.0 - k as f64;
            assert!((0.0..1.0).contains(&p), "tick {k} at {t}");
            quarters[(p * 4.0) as usize] += 1;
        }
        assert!(
            quarters.iter().all(|&q| (200..300).contains(&q)),
            "{quarters:?}"
        );
        // A tick that overruns into the next period moves that period's tick past it, and
        // still inside the period.
        let clock = FakeClock::seeded(11);
        let mut target = FakeTarget::new(&clock, 8);
        let stats = run_fake(&mut target, &opts(100.0, Some(10_000)), 2000);
        assert_eq!(stats.ticks + stats.dropped_ticks, 1000, "{stats:?}");
        for (w, k) in target.times.windows(2).zip(target.ticks.windows(2)) {
            assert!(w[1] - w[0] >= 0.008 - 1e-9, "{w:?}");
            assert!(k[1] > k[0] && (0.0..1.0).contains(&(w[1] * 100.0 - k[1] as f64)));
        }
    }

    #[test]
    fn a_rhythm_in_step_with_the_period_is_seen_in_its_share() {
        // A thread on CPU for the first half of every 10 ms, sampled at 100 Hz: on a fixed
        // grid every tick sees it running, and (5 ms later in its cycle) would see it at
        // none; drawn moments see it in half of them, wherever its cycle starts.
        let running = |t: f64, offset: f64| (t * 100.0 + offset).fract() < 0.5;
        for offset in [0.1, 0.35, 0.6] {
            let grid = FakeClock::new();
            let mut target = FakeTarget::new(&grid, 1);
            run_fake(&mut target, &opts(100.0, Some(5000)), 1000);
            let seen = target.times.iter().filter(|&&t| running(t, offset)).count();
            let all = if offset < 0.5 { 500 } else { 0 };
            assert_eq!(seen, all, "offset {offset}: on the grid");

            let drawn = FakeClock::seeded(offset.to_bits());
            let mut target = FakeTarget::new(&drawn, 1);
            run_fake(&mut target, &opts(100.0, Some(5000)), 1000);
            let seen = target.times.iter().filter(|&&t| running(t, offset)).count();
            assert!((200..300).contains(&seen), "offset {offset}: {seen} of 500");
        }
    }

    #[test]
    fn duration_is_wall_clock_time() {
        // 3 Hz for 1 s: ticks at 0, 1/3 and 2/3 s, and the window is the whole second.
        let clock = FakeClock::new();
        let start = clock.now();
        let mut target = FakeTarget::new(&clock, 0);
        let stats = run_fake(&mut target, &opts(3.0, Some(1000)), 1000);
        assert_eq!(stats.ticks, 3);
        assert_eq!(stats.elapsed, Duration::from_secs(1));
        // The loop ends when the next tick would fall past the end, without waiting for it.
        assert!(clock.now() - start < Duration::from_secs(1));
        // Slow ticks do not stretch it: 10 Hz for 1 s with 400 ms ticks ends at 1.2 s of
        // clock time, yet reports the 1 s asked for.
        let clock = FakeClock::new();
        let mut target = FakeTarget::new(&clock, 400);
        let stats = run_fake(&mut target, &opts(10.0, Some(1000)), 1000);
        assert_eq!(stats.ticks, 3, "{:?}", target.times);
        assert_eq!(stats.elapsed, Duration::from_secs(1));
        assert_eq!(stats.ticks + stats.dropped_ticks, 10, "{stats:?}");
    }

    #[test]
    fn a_stop_ends_the_window_where_it_came() {
        let clock = FakeClock::new();
        let stop = AtomicBool::new(false);
        let mut target = FakeTarget::new(&clock, 0);
        target.stop_after = Some((5, &stop));
        let (tx, _rx) = bounded(100);
        let mut stats = SamplerStats::default();
        timing_loop(
            &clock,
            &mut target,
            &opts(10.0, Some(10_000)),
            &tx,
            &stop,
            None,
            &mut stats,
        );
        assert_eq!(stats.ticks, 5);
        assert_eq!(stats.elapsed, Duration::from_millis(500));
        assert!(!stats.target_exited);
    }

    #[test]
    fn errors_lost_samples_and_exit_are_counted() {
        let clock = FakeClock::new();
        let mut target = FakeTarget::new(&clock, 0);
        target.fail_every = Some(4);
        target.exit_after = Some(12);
        // A consumer that takes nothing: after 3 ticks' batches, every batch is lost.
        let stats = run_fake(&mut target, &opts(100.0, None), 3);
        assert_eq!(stats.ticks, 12);
        assert!(stats.target_exited);
        assert_eq!(stats.errors, 3);
        assert_eq!(stats.samples, 6);
        assert_eq!(stats.lost, 12);
        // The window ends at the tick that found the target gone.
        assert_eq!(stats.elapsed, Duration::from_millis(120));
        let published = LiveStats::default();
        published.publish(&stats);
        assert_eq!(published.errors.load(Ordering::Relaxed), 3);
    }
}
