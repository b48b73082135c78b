//! The sampler: ticks at a fixed rate, reads every Python thread of the target (and, with
//! `--subprocesses`, of its descendants) and sends samples to the profile.
//!
//! Timing is honest: ticks are scheduled on a fixed grid from the start; when a sample takes
//! longer than a period the missed ticks are dropped and counted, never caught up in a burst,
//! and `--duration` is wall-clock time.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::attach::{LiveTarget, attach, is_not_python};
use crate::diagnose::Prober;
use crate::mixed::{NativeTarget, PythonSide};
use crate::process::events::{Event, Image, ImageState, Watch, shares_parent_memory};
use crate::process::threads;
use crate::python::{FrameOptions, PyError};
use crate::sample::Sample;

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
    /// shows it). Without it and with `include_idle`, no thread's state is read: that read
    /// is a `/proc` file per thread per tick, the largest fixed cost of a sample.
    pub activity: bool,
    /// Also take native stacks (stopping each sampled thread while its stack is read), and
    /// sample processes without Python as native programs.
    pub native: bool,
    /// Most Python frames kept per stack (`--depth`).
    pub depth: usize,
    /// Read each Python thread's state (`diagnose`, `record --states`, `top`).
    pub states: bool,
}

/// Does `s` belong in the profile of a run with `opts`? Only idle threads' samples, sent
/// because states are read, may not.
pub fn profiled(opts: &SamplerOptions, s: &Sample) -> bool {
    opts.include_idle || s.stack.active
}

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
    /// The process prof was pointed at (attached or launched).
    pub root: u32,
    /// The root process was sampled at some point (read as Python, or natively with
    /// `--native`).
    pub root_attached: bool,
    /// The latest name of every thread read, sampled or not, by (pid, Python thread id,
    /// kernel tid) as the profile keys threads: a thread may get its name only after its
    /// last sample (a main thread sampled before `threading` was imported, then idle).
    pub thread_names: HashMap<(u32, u64, Option<u32>), Arc<str>>,
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
    fn publish(&self, stats: &SamplerStats, procs: &[Proc]) {
        // Relaxed: each figure is read on its own, for display.
        self.ticks.store(stats.ticks, Ordering::Relaxed);
        self.dropped_ticks
            .store(stats.dropped_ticks, Ordering::Relaxed);
        self.errors.store(stats.errors, Ordering::Relaxed);
        self.lost.store(stats.lost, Ordering::Relaxed);
        if self.python.get().is_none()
            && let Some(t) = procs.iter().find_map(|p| match &p.state {
                ProcState::Attached(t) => Some(t),
                _ => None,
            })
        {
            let _ = self
                .python
                .set(t.reader.interpreter().version().to_string());
        }
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
/// How often a process's kernel threads are listed again.
const THREAD_LISTING: Duration = Duration::from_millis(100);
/// Most threads whose names [`SamplerStats::thread_names`] keeps.
const MAX_NAMED_THREADS: usize = 1 << 16;

enum ProcState {
    /// Not (yet) readable as Python: retried until `ATTACH_PATIENCE` passes.
    Pending {
        since: Instant,
        next_try: Instant,
        /// The executable last seen, and since when (a fork has prof's or its parent's).
        exe: Option<std::path::PathBuf>,
        exe_since: Instant,
    },
    Attached(Box<LiveTarget>),
    /// Not Python, sampled as a native program (`--native`).
    Native,
    /// Not Python, or given up on.
    Ignored,
}

struct Proc {
    pid: u32,
    state: ProcState,
    /// Open `/proc/PID/task/TID/stat` files, re-read with pread instead of reopened.
    stat_files: HashMap<u32, File>,
    /// Kernel threads at the last listing, and when to list again.
    tids: Vec<u32>,
    next_listing: Instant,
    /// The program image the process runs, to tell an exec or an exit from a failed read.
    image: Option<Image>,
    /// When liveness is checked again; a failed read checks it at once.
    next_alive_check: Instant,
    /// Seen gone (exited or a zombie).
    gone: bool,
    /// The native side, with `--native` (made at the first sample).
    natives: Option<Box<NativeTarget>>,
    /// The thread-state reader, with `states` (made at the first sample).
    prober: Option<Prober>,
}

impl Proc {
    fn new(pid: u32, state: ProcState, now: Instant) -> Proc {
        Proc {
            pid,
            state,
            stat_files: HashMap::new(),
            tids: Vec::new(),
            next_listing: now,
            image: None,
            next_alive_check: now,
            gone: false,
            natives: None,
            prober: None,
        }
    }

    fn pending(pid: u32, now: Instant) -> Proc {
        Proc::new(pid, pending_state(now), now)
    }

    /// Kernel threads and their states, read before the stacks; with `read_state` false,
    /// the threads only, with the state `'?'`.
    fn thread_states(&mut self, now: Instant, read_state: bool) -> Vec<(u32, char)> {
        // Listing /proc/PID/task costs several syscalls; new threads are rare, so the list is
        // refreshed on a timer and each known thread's stat file is re-read in place.
        if now >= self.next_listing || self.tids.is_empty() {
            let Ok(tids) = threads::list_threads(self.pid) else {
                return Vec::new();
            };
            self.stat_files.retain(|tid, _| tids.contains(tid));
            self.tids = tids;
            self.next_listing = now + THREAD_LISTING;
        }
        if !read_state {
            self.stat_files.clear();
            return self.tids.iter().map(|&tid| (tid, '?')).collect();
        }
        let mut out = Vec::with_capacity(self.tids.len());
        let mut buf = [0u8; 512];
        let pid = self.pid;
        self.tids.retain(|&tid| {
            let file = match self.stat_files.entry(tid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match File::open(format!("/proc/{pid}/task/{tid}/stat")) {
                        Ok(f) => v.insert(f),
                        Err(_) => return false,
                    }
                }
            };
            match file.read_at(&mut buf, 0) {
                Ok(n) if n > 0 => {
                    if let Some(state) = threads::parse_stat_state(&buf[..n]) {
                        out.push((tid, state));
                    }
                    true
                }
                // The thread exited.
                _ => false,
            }
        });
        self.stat_files
            .retain(|tid, _| out.iter().any(|o| o.0 == *tid));
        out
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
        self.natives = None;
        self.prober = None;
        self.tids.clear();
        self.stat_files.clear();
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
    // An attached target's native side is made ready before the clock starts: on the first
    // tick it took ~0.1 s, and every tick due meanwhile was dropped.
    let warm = match (&root, opts.native) {
        (Ok(t), true) => warm_native(t.pid),
        _ => None,
    };
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let mut stats = SamplerStats::default();
    let root_pid = match &root {
        Ok(t) => t.pid,
        Err(pid) => *pid,
    };
    stats.root = root_pid;
    stats.root_attached = root.is_ok();
    let mut procs = vec![match root {
        Ok(t) => Proc::new(t.pid, ProcState::Attached(Box::new(t)), start),
        Err(pid) => Proc::pending(pid, start),
    }];
    procs[0].natives = warm.map(Box::new);
    let frame_opts = FrameOptions {
        locals: false,
        validate: !opts.nonblocking,
        function_lines: opts.function_lines,
        depth: opts.depth,
    };
    let mut watch = Watch::new(opts.subprocesses);
    let mut events = Vec::new();
    let mut tick: u64 = 0;
    // Whether the run went the whole of -d: its window is then exactly -d long (each tick
    // stands for one period), however soon after the last tick the loop ends.
    let mut full_window = false;
    loop {
        let due = start + period.mul_f64(tick as f64);
        let end = opts.duration.map(|d| start + d);
        if let Some(end) = end
            && due >= end
        {
            full_window = true;
            break;
        }
        sleep_until(due, stop);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        events.clear();
        watch.poll(now, &mut events);
        follow(&mut procs, &events, opts.subprocesses, now);
        // Liveness (and an exec) is a /proc read: done on a timer, and at once when a read
        // fails.
        procs.retain_mut(|p| {
            if !p.gone && now >= p.next_alive_check {
                p.next_alive_check = now + ALIVE_CHECK;
                p.look(now);
            }
            !p.gone
        });
        if procs.is_empty() {
            stats.target_exited = true;
            break;
        }
        let time = now.duration_since(start).as_secs_f64();
        let mut batch = Vec::new();
        for p in procs.iter_mut() {
            sample_process(p, time, now, &frame_opts, opts, &mut batch, &mut stats);
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match tx.try_send(batch) {
                Ok(()) => stats.samples += n,
                Err(_) => stats.lost += n,
            }
        }
        if !opts.subprocesses && procs.len() == 1 && matches!(procs[0].state, ProcState::Ignored) {
            // The launched command never became Python and nothing else is followed.
            break;
        }
        stats.ticks += 1;
        tick += 1;
        // Ticks whose time has already passed are dropped, not caught up in a burst.
        let behind = Instant::now().duration_since(start).as_secs_f64() / period.as_secs_f64();
        let next = behind.ceil() as u64;
        if next > tick {
            stats.dropped_ticks += next - tick;
            tick = next;
        }
        if let Some(live) = live {
            live.publish(&stats, &procs);
        }
    }
    stats.elapsed = match opts.duration {
        Some(d) if full_window => d,
        Some(d) => start.elapsed().min(d),
        None => start.elapsed(),
    };
    stats.processes = procs
        .iter()
        .filter(|p| matches!(p.state, ProcState::Attached(_)))
        .map(|p| p.pid)
        .collect();
    stats
}

fn sample_process(
    p: &mut Proc,
    time: f64,
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
                p.state = ProcState::Attached(Box::new(t));
            }
            // No Python will appear in a process that has none mapped: with --native it is
            // a native program, sampled from now on.
            Err(e) if opts.native && is_not_python(&e) && (settled || !python_mapped(p.pid)) => {
                if exe.as_deref() != std::env::current_exe().ok().as_deref() {
                    if p.pid == stats.root {
                        stats.root_attached = true;
                    }
                    p.state = ProcState::Native;
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
    if matches!(p.state, ProcState::Pending { .. } | ProcState::Ignored) {
        return;
    }
    let states = p.thread_states(now, opts.activity || !opts.include_idle);
    if opts.native && p.natives.is_none() {
        match NativeTarget::new(p.pid) {
            Ok(n) => p.natives = Some(Box::new(n)),
            Err(_) => return p.read_failed(1, now, stats),
        }
    }
    // With --native, the threads to sample are stopped while their stacks are read.
    let stop: Vec<u32> = match &p.natives {
        Some(_) => states
            .iter()
            .filter(|s| opts.include_idle || s.1 == 'R')
            .map(|s| s.0)
            .collect(),
        None => Vec::new(),
    };
    let tids: Vec<u32> = states.iter().map(|s| s.0).collect();
    let state = |tid| states.iter().find(|x| x.0 == tid).map_or('?', |x| x.1);
    // Threads whose stacks could not be read: counted once the process is known to be
    // neither exiting nor exec'ing.
    let mut unread = 0;
    let mut stacks = match (&mut p.state, p.natives.as_deref_mut()) {
        (ProcState::Attached(target), natives) => {
            let before = target.reader.errors();
            let read = |target: &mut LiveTarget| target.reader.stacks(&tids, *frame_opts);
            let (stacks, pcs) = match natives {
                Some(n) if !stop.is_empty() => match n.capture(&stop, || read(target)) {
                    Ok((stacks, pcs)) => (stacks, pcs),
                    Err(_) => (
                        Err(PyError::Corrupt("threads could not be stopped")),
                        vec![],
                    ),
                },
                _ => (read(target), Vec::new()),
            };
            let mut stacks = match stacks {
                Ok(s) => s,
                Err(_) => return p.read_failed(1, now, stats),
            };
            unread = target.reader.errors() - before;
            if let Some(n) = p.natives.as_deref_mut()
                && !stop.is_empty()
            {
                let py = PythonSide {
                    version: target.reader.interpreter().version(),
                    entries: target.reader.entry_flags(),
                    entry_addrs: target.reader.entry_frame_addresses(),
                };
                n.merge_all(&mut stacks, &stop, &pcs, Some(&py), state);
            }
            stacks
        }
        (ProcState::Native, _) if stop.is_empty() => Vec::new(),
        (ProcState::Native, Some(n)) => match n.capture(&stop, || ()) {
            Ok(((), pcs)) => {
                let mut stacks = Vec::new();
                n.merge_all(&mut stacks, &stop, &pcs, None, state);
                stacks
            }
            Err(_) => return p.read_failed(1, now, stats),
        },
        _ => return,
    };
    if unread > 0 {
        p.read_failed(unread, now, stats);
    }
    if opts.states
        && let ProcState::Attached(target) = &p.state
    {
        let prober = p.prober.get_or_insert_with(|| Prober::new(p.pid));
        prober.retain(&tids);
        let interp = target.reader.interpreter();
        let mem = target.reader.memory();
        let gil = prober.gil(now, || {
            crate::python::threads::gil_address(mem, &interp.layout, interp.runtime)
        });
        let calls: Vec<_> = stacks
            .iter()
            .filter_map(|s| s.os_thread_id)
            .map(|tid| (tid, prober.call(tid)))
            .collect();
        let layout = &interp.layout;
        let holder = crate::python::threads::gil_holder_id(mem, layout, interp.runtime);
        let stat = |tid| Some(state(tid)).filter(|c| *c != '?');
        prober.fill(
            &mut stacks,
            &calls,
            holder,
            stat,
            layout.free_threaded,
            gil,
            mem,
        );
        prober.settle(&mut stacks);
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
    for mut stack in stacks {
        let state = stack
            .os_thread_id
            .and_then(|t| states.iter().find(|x| x.0 == t).map(|x| x.1));
        stack.active = state == Some('R');
        // With states, idle threads are sent too (their waits are the point); the
        // consumer keeps them out of its profile with [`profiled`].
        if stack.frames.is_empty()
            || (!opts.include_idle && !opts.states && !stack.active)
            || (opts.gil_only && !stack.owns_gil)
        {
            continue;
        }
        out.push(Sample {
            time,
            pid: p.pid,
            stack,
        });
    }
}

/// The native side of `pid` after one unwind and symbolization of every thread, whose
/// result is dropped: it loads the modules' unwind tables and the symbols of the code on
/// the stacks. None when the process cannot be read (the first tick then tries again).
fn warm_native(pid: u32) -> Option<NativeTarget> {
    let mut n = NativeTarget::new(pid).ok()?;
    let tids = crate::process::threads::list_threads(pid).ok()?;
    if let Ok(((), pcs)) = n.capture(&tids, || ()) {
        for stack in &pcs {
            n.native_frames(stack);
        }
    }
    Some(n)
}

/// Sleep until `when`, waking early if a stop is requested.
fn sleep_until(when: Instant, stop: &AtomicBool) {
    loop {
        let now = Instant::now();
        if now >= when || stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep((when - now).min(Duration::from_millis(100)));
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
