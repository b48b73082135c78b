//! The aggregation every sink shares: the writers of `prof record` and the live
//! `prof top` screen.
//!
//! Samples are interned as they arrive, so memory grows with the number of
//! *distinct* things seen, not with the length of the run:
//!
//! - a **function table**: one entry per (name, file, kind);
//! - a **frame table**: one entry per (function, line), where the line is 0 when
//!   the options aggregate by function;
//! - a **stack table**: a prefix tree, each node being (parent node, frame), so a
//!   stack is the id of its innermost node and shared prefixes are stored once;
//! - **counts** per (stack, thread);
//! - a **thread table** with per-thread counters.
//!
//! Only when [`ProfileOptions::keep_timeline`] is set (speedscope and Chrome trace
//! need the order of samples) does the profile also keep one small fixed-size
//! entry per sample.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::SystemTime;

use foldhash::HashMap as FastMap;
use foldhash::fast::RandomState;

use crate::sample::{Frame, FrameCode, FrameKind, Frames, Sample};

pub mod diff;

/// How samples are aggregated and frames are shown; py-spy's `record` flags.
///
/// `-F/--function` and `--nolineno` both aggregate the samples of a function
/// regardless of the line it was executing; they differ in what is shown:
///
/// - `no_line_numbers` (`--nolineno`) shows no line at all: `name (file)`.
/// - `by_function` (`-F`) shows the function's first line: `name (file:line)`.
///   Samples carry the line being executed, not `co_firstlineno`, so the line
///   shown is the *lowest line sampled in that function*. It is the `def`
///   line exactly when the reader reports `co_firstlineno` as the frame's line
///   under `-F` (as py-spy's reader does), and otherwise the first line of the
///   function body that was seen running: an approximation, never a line outside
///   the function.
///
/// With both set, `no_line_numbers` wins (no line is shown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileOptions {
    /// `-t/--threads`: put a frame naming the thread at the root of every stack.
    pub threads_as_root: bool,
    /// `-F/--function`: aggregate by function, show its (lowest sampled) first line.
    pub by_function: bool,
    /// `--nolineno`: aggregate by function and show no line numbers.
    pub no_line_numbers: bool,
    /// `--full-filenames`: show full file names instead of module-relative ones.
    pub full_filenames: bool,
    /// Keep the order and time of every sample (speedscope, Chrome trace).
    pub keep_timeline: bool,
}

/// What was profiled and how the run went, for titles and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileMeta {
    /// The profiled command line, or `pid N`.
    pub title: String,
    /// The sampling rate asked for, in samples per second.
    pub requested_rate: f64,
    /// Wall-clock time the recording started.
    pub start: SystemTime,
    /// Length of the recording in seconds (0 until [`Profile::finish`]).
    pub duration: f64,
    /// Ticks actually taken per second (0 until [`Profile::finish`]).
    pub achieved_rate: f64,
    /// Ticks skipped because the sampler fell behind.
    pub dropped_ticks: u64,
    /// Ticks whose stacks could not be read.
    pub errors: u64,
}

impl ProfileMeta {
    /// Metadata known when a recording starts; the end-of-run fields are zero.
    pub fn new(title: impl Into<String>, requested_rate: f64, start: SystemTime) -> Self {
        ProfileMeta {
            title: title.into(),
            requested_rate,
            start,
            duration: 0.0,
            achieved_rate: 0.0,
            dropped_ticks: 0,
            errors: 0,
        }
    }
}

/// End-of-run figures the sampler hands to [`Profile::finish`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunStats {
    /// Wall-clock seconds the recording lasted.
    pub duration: f64,
    /// Ticks taken (each samples every thread once).
    pub ticks: u64,
    /// Ticks skipped because the sampler fell behind.
    pub dropped_ticks: u64,
    /// Ticks whose stacks could not be read.
    pub errors: u64,
}

/// One entry of the function table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Function name.
    pub name: String,
    /// File name as the interpreter knows it.
    pub filename: String,
    /// Module-relative file name (the full one when the sample had none).
    pub short_filename: String,
    /// Python or native.
    pub kind: FrameKind,
    /// Lowest positive line sampled in this function, 0 if none was.
    pub lowest_line: i32,
    /// The line the function starts at (`co_firstlineno`), 0 if unknown; the lowest one
    /// when several code objects share the name and file (lambdas, redefinitions).
    pub first_line: i32,
    /// Next function whose key hashes the same (collision chain of the index).
    next_same_hash: Option<u32>,
}

/// One entry of the frame table: a function at a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Index into [`Profile::function_table`].
    pub function: usize,
    /// Line in the aggregation key: 0 when unknown or aggregated away.
    pub line: i32,
}

/// One node of the stack prefix tree.
#[derive(Debug, Clone, Copy)]
struct StackNode {
    parent: u32,
    frame: u32,
}

/// Marks "no stack" (a thread sampled with no frames) and "no parent" (a root).
const NONE: u32 = u32::MAX;

/// A thread seen in the samples, with its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadInfo {
    /// Process the thread belongs to.
    pub pid: u32,
    /// Python's thread identifier.
    pub thread_id: u64,
    /// Kernel thread id, when known.
    pub os_thread_id: Option<u32>,
    /// Latest name the thread was seen with.
    pub name: Option<String>,
    /// Samples with at least one frame.
    pub samples: u64,
    /// Samples with no frame at all.
    pub empty_samples: u64,
    /// Samples taken while the thread was on CPU.
    pub active_samples: u64,
    /// Samples taken while the thread held the GIL.
    pub gil_samples: u64,
    /// Time of the first sample, seconds since start.
    pub first_time: f64,
    /// Time of the last sample, seconds since start.
    pub last_time: f64,
}

impl ThreadInfo {
    /// How the thread is named in outputs: `MainThread (tid 1234)`, or its Python ident.
    pub fn label(&self) -> String {
        match (&self.name, self.os_thread_id) {
            (Some(n), Some(tid)) => format!("{n} (tid {tid})"),
            (Some(n), None) => format!("{n} ({:#x})", self.thread_id),
            (None, Some(tid)) => format!("thread {:#x} (tid {tid})", self.thread_id),
            (None, None) => format!("thread {:#x}", self.thread_id),
        }
    }
}

/// One sample in arrival order (kept only with [`ProfileOptions::keep_timeline`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelineEntry {
    time: f64,
    tick: u64,
    thread: u32,
    stack: u32,
}

impl TimelineEntry {
    /// Seconds since the start of the recording.
    pub fn time(&self) -> f64 {
        self.time
    }
    /// Index into [`Profile::threads`].
    pub fn thread(&self) -> usize {
        self.thread as usize
    }
    /// Stack id, or None when the thread had no frame.
    pub fn stack(&self) -> Option<usize> {
        (self.stack != NONE).then_some(self.stack as usize)
    }
}

/// The sampler's ticks, rebuilt from the timeline: the samples of one tick carry its
/// number (its period on the sampler's grid) and its time.
///
/// A tick lasts until the next one when that is the next period's (ticks fall anywhere in
/// their periods, so that is anywhere from a moment to two intervals later); otherwise
/// periods were dropped or nothing was sampled in them (every thread idle), nobody
/// looked, and the tick is given one nominal interval (1/requested rate), leaving a gap
/// rather than stretching the last stack seen over it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    starts: Vec<f64>,
    /// Each tick's period.
    numbers: Vec<u64>,
    interval: f64,
}

impl Ticks {
    /// Number of ticks.
    pub fn len(&self) -> usize {
        self.starts.len()
    }
    /// True when no sample was kept.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
    /// The tick a sample taken at `time` belongs to.
    pub fn tick_of(&self, time: f64) -> usize {
        self.starts
            .partition_point(|&s| s <= time)
            .saturating_sub(1)
    }
    /// When tick `tick` started.
    pub fn start(&self, tick: usize) -> f64 {
        self.starts[tick]
    }
    /// When tick `tick` ended: the next tick's start if it follows without a gap,
    /// else one nominal interval after its start, but never after the next tick's start
    /// (a tick woken late, past its own period, may have the next one close behind).
    pub fn end(&self, tick: usize) -> f64 {
        match self.starts.get(tick + 1) {
            Some(&next) if self.contiguous(tick, tick + 1) => next,
            Some(&next) => next.min(self.starts[tick] + self.interval),
            None => self.starts[tick] + self.interval,
        }
    }
    /// True when tick `b` directly follows tick `a`, with no gap in time.
    pub fn contiguous(&self, a: usize, b: usize) -> bool {
        b == a + 1 && b < self.starts.len() && self.numbers[b] == self.numbers[a] + 1
    }
}

/// Per-function figures for a function table (the TUI's main view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStats {
    /// The entry's id: its index in [`Profile::function_table`], or when aggregated by
    /// line in [`Profile::frame_table`]; stable for the life of the profile.
    pub id: usize,
    /// Function name.
    pub name: String,
    /// File name as displayed (short unless `full_filenames`).
    pub filename: String,
    /// Line, when aggregated by line and line numbers are shown.
    pub line: Option<i32>,
    /// Python or native.
    pub kind: FrameKind,
    /// Samples where this was the innermost frame.
    pub own: u64,
    /// Samples where this appears anywhere on the stack, once per sample.
    pub total: u64,
}

/// A caller or a callee of an entry of [`Profile::functions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// Its id, as in [`FunctionStats::id`].
    pub id: usize,
    /// Function name.
    pub name: String,
    /// File name as displayed.
    pub filename: String,
    /// Line, when aggregated by line and line numbers are shown.
    pub line: Option<i32>,
    /// Python or native.
    pub kind: FrameKind,
    /// Samples in which it was directly next to the entry on the stack, once per sample.
    pub samples: u64,
}

/// Who called an entry of [`Profile::functions`], and what it called.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Neighbors {
    /// Entries directly outside it on a stack, most samples first.
    pub callers: Vec<Neighbor>,
    /// Entries directly inside it on a stack, most samples first.
    pub callees: Vec<Neighbor>,
    /// Samples where it was the outermost frame (nothing called it).
    pub root: u64,
    /// Samples where it was the innermost frame.
    pub own: u64,
    /// Samples where it appears anywhere on the stack, once per sample.
    pub total: u64,
}

/// Samples aggregated into interned frames and stacks, counted per thread.
#[derive(Debug, Clone)]
pub struct Profile {
    meta: ProfileMeta,
    opts: ProfileOptions,
    hasher: RandomState,
    functions: Vec<FunctionInfo>,
    function_index: FastMap<u64, u32>,
    /// (name, file name) allocations -> function, keeping those allocations alive.
    #[allow(clippy::type_complexity)]
    function_by_ptr: FastMap<(usize, usize, FrameKind), (u32, Arc<str>, Arc<str>)>,
    frames: Vec<FrameInfo>,
    frame_index: FastMap<(u32, i32), u32>,
    stacks: Vec<StackNode>,
    stack_index: FastMap<(u32, u32), u32>,
    threads: Vec<ThreadInfo>,
    thread_index: FastMap<(u32, u64, Option<u32>), u32>,
    counts: FastMap<(u32, u32), u64>,
    total: u64,
    timeline: Option<Vec<TimelineEntry>>,
    last_time: f64,
    /// Per thread: its last stack, outermost first, with the node each frame ended at.
    last_stacks: Vec<Vec<Step>>,
    /// Per thread: its latest stacks as the reader shares them, most recent first, with
    /// their nodes. Holding them keeps their addresses from being reused.
    recent_stacks: Vec<Vec<(Frames, u32)>>,
}

/// Stacks per thread whose nodes [`Profile`] recognises by pointer.
const RECENT_STACKS: usize = 4;

/// A frame of a thread's last stack and the stack node it led to. Successive samples of a
/// thread mostly share their outer frames, and a frame identical to the one at the same
/// depth last time (same code allocation, kind and line) under the same parent interns to
/// the same node: the tables only grow, so the node found then is still right. The
/// allocation is held, so its address cannot be reused for other code.
#[derive(Debug, Clone)]
struct Step {
    code: Arc<FrameCode>,
    kind: FrameKind,
    line: i32,
    node: u32,
}

impl Step {
    fn is(&self, frame: &Frame) -> bool {
        Arc::ptr_eq(&self.code, &frame.code) && self.kind == frame.kind && self.line == frame.line
    }
}

impl Profile {
    /// An empty profile.
    pub fn new(meta: ProfileMeta, opts: ProfileOptions) -> Self {
        Profile {
            meta,
            opts,
            hasher: RandomState::default(),
            functions: Vec::new(),
            function_index: HashMap::default(),
            function_by_ptr: HashMap::default(),
            frames: Vec::new(),
            frame_index: HashMap::default(),
            stacks: Vec::new(),
            stack_index: HashMap::default(),
            threads: Vec::new(),
            thread_index: HashMap::default(),
            counts: HashMap::default(),
            total: 0,
            timeline: opts.keep_timeline.then(Vec::new),
            last_time: 0.0,
            last_stacks: Vec::new(),
            recent_stacks: Vec::new(),
        }
    }

    /// The options the profile was built with.
    pub fn options(&self) -> &ProfileOptions {
        &self.opts
    }

    /// What was profiled and how the run went.
    pub fn meta(&self) -> &ProfileMeta {
        &self.meta
    }

    /// Replace what is known of the run: a profile read back from a file learns its
    /// rates once every sample is in.
    pub fn set_meta(&mut self, meta: ProfileMeta) {
        self.meta = meta;
    }

    /// Record the end-of-run figures (duration, achieved rate, drops, errors).
    pub fn finish(&mut self, stats: RunStats) {
        self.meta.duration = stats.duration;
        self.meta.achieved_rate = if stats.duration > 0.0 {
            stats.ticks as f64 / stats.duration
        } else {
            0.0
        };
        self.meta.dropped_ticks = stats.dropped_ticks;
        self.meta.errors = stats.errors;
    }

    /// Give threads the latest names prof learned for them, keyed by (pid, Python thread
    /// id, kernel tid): a thread can get its name after its last sample.
    pub fn rename_threads<'a>(
        &mut self,
        names: impl IntoIterator<Item = (&'a (u32, u64, Option<u32>), &'a Arc<str>)>,
    ) {
        for (key, name) in names {
            if let Some(&i) = self.thread_index.get(key) {
                self.threads[i as usize].name = Some(name.to_string());
            }
        }
    }

    /// Add one thread's stack at one tick.
    pub fn add(&mut self, sample: &Sample) {
        self.add_repeated(sample, 1);
    }

    /// Add `count` samples of one thread's stack at once: a profile read back from a file
    /// holds counts, not ticks. The timeline, if kept, gets `count` entries.
    pub fn add_repeated(&mut self, sample: &Sample, count: u64) {
        if count == 0 {
            return;
        }
        // A non-finite time would poison every time computation downstream.
        let time = if sample.time.is_finite() {
            sample.time
        } else {
            self.last_time
        };
        let thread = self.intern_thread(sample, time);
        let st = &sample.stack;
        {
            let t = &mut self.threads[thread as usize];
            if st.thread_name.is_some() && t.name.as_deref() != st.thread_name.as_deref() {
                t.name = st.thread_name.as_deref().map(str::to_owned);
            }
            if st.frames.is_empty() {
                t.empty_samples += count;
            } else {
                t.samples += count;
            }
            t.active_samples += count * u64::from(st.active);
            t.gil_samples += count * u64::from(st.owns_gil);
            t.first_time = t.first_time.min(time);
            t.last_time = t.last_time.max(time);
        }
        self.last_time = self.last_time.max(time);

        let node = self.stack_node(thread, &st.frames);
        if node != NONE {
            *self.counts.entry((node, thread)).or_insert(0) += count;
            self.total += count;
        }
        if let Some(tl) = &mut self.timeline {
            let entry = TimelineEntry {
                time,
                tick: sample.tick,
                thread,
                stack: node,
            };
            tl.extend(std::iter::repeat_n(entry, count as usize));
        }
    }

    /// The stack node of `frames`, a stack of `thread`'s.
    fn stack_node(&mut self, thread: u32, frames: &Frames) -> u32 {
        let t = thread as usize;
        if self.last_stacks.len() <= t {
            self.last_stacks.resize_with(t + 1, Vec::new);
            self.recent_stacks.resize_with(t + 1, Vec::new);
        }
        // A stack the reader handed out again (it does while a thread stays where it was):
        // its node is known.
        let recent = &mut self.recent_stacks[t];
        if let Some(k) = recent.iter().position(|(f, _)| f.same(frames)) {
            recent[..=k].rotate_right(1);
            return recent[0].1;
        }
        // Outermost first, so each frame extends the prefix built so far.
        let mut node = NONE;
        let mut last = std::mem::take(&mut self.last_stacks[t]);
        let same = last
            .iter()
            .zip(frames.iter().rev())
            .take_while(|(step, frame)| step.is(frame))
            .count();
        last.truncate(same);
        if let Some(step) = last.last() {
            node = step.node;
        }
        for frame in frames.iter().rev().skip(same) {
            let f = self.intern_frame(frame);
            node = match self.stack_index.entry((node, f)) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    let id = self.stacks.len() as u32;
                    self.stacks.push(StackNode {
                        parent: node,
                        frame: f,
                    });
                    *e.insert(id)
                }
            };
            last.push(Step {
                code: Arc::clone(&frame.code),
                kind: frame.kind,
                line: frame.line,
                node,
            });
        }
        self.last_stacks[t] = last;
        let recent = &mut self.recent_stacks[t];
        recent.truncate(RECENT_STACKS - 1);
        recent.insert(0, (frames.clone(), node));
        node
    }

    fn intern_thread(&mut self, sample: &Sample, time: f64) -> u32 {
        let st = &sample.stack;
        // A Python ident is a pthread address and gets reused once a thread exits;
        // the kernel tid tells such threads apart.
        let key = (sample.pid, st.thread_id, st.os_thread_id);
        match self.thread_index.entry(key) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let id = self.threads.len() as u32;
                self.threads.push(ThreadInfo {
                    pid: sample.pid,
                    thread_id: st.thread_id,
                    os_thread_id: st.os_thread_id,
                    name: st.thread_name.as_deref().map(str::to_owned),
                    samples: 0,
                    empty_samples: 0,
                    active_samples: 0,
                    gil_samples: 0,
                    first_time: time,
                    last_time: time,
                });
                *e.insert(id)
            }
        }
    }

    fn intern_frame(&mut self, frame: &Frame) -> u32 {
        let func = self.intern_function(frame);
        let line = frame.line.max(0);
        let entry = &mut self.functions[func as usize];
        if line > 0 && (entry.lowest_line == 0 || line < entry.lowest_line) {
            entry.lowest_line = line;
        }
        let first = frame.code.first_line;
        if first > 0 && (entry.first_line == 0 || first < entry.first_line) {
            entry.first_line = first;
        }
        let key_line = if self.opts.by_function || self.opts.no_line_numbers {
            0
        } else {
            line
        };
        match self.frame_index.entry((func, key_line)) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let id = self.frames.len() as u32;
                self.frames.push(FrameInfo {
                    function: func as usize,
                    line: key_line,
                });
                *e.insert(id)
            }
        }
    }

    fn intern_function(&mut self, frame: &Frame) -> u32 {
        // Frames of the same function usually share their name and file name allocations
        // (the Python reader interns them), so the pointers identify the function without
        // hashing any text: this runs for every frame of every sample.
        let key = (
            Arc::as_ptr(&frame.code.name) as *const u8 as usize,
            Arc::as_ptr(&frame.code.filename) as *const u8 as usize,
            frame.kind,
        );
        if let Some(known) = self.function_by_ptr.get(&key) {
            return known.0;
        }
        let hash = self
            .hasher
            .hash_one((frame.name(), frame.filename(), frame.kind));
        let head = self.function_index.get(&hash).copied();
        let mut cur = head;
        while let Some(i) = cur {
            let f = &self.functions[i as usize];
            if *f.name == *frame.name() && *f.filename == *frame.filename() && f.kind == frame.kind
            {
                return i;
            }
            cur = f.next_same_hash;
        }
        let id = self.functions.len() as u32;
        let short = if frame.short_filename().is_empty() {
            frame.filename().to_string()
        } else {
            frame.short_filename().to_string()
        };
        self.functions.push(FunctionInfo {
            name: frame.name().to_string(),
            filename: frame.filename().to_string(),
            short_filename: short,
            kind: frame.kind,
            lowest_line: 0,
            first_line: 0,
            next_same_hash: head,
        });
        self.function_index.insert(hash, id);
        // Only a function's first pair of pointers is remembered (and kept alive, so the
        // addresses cannot be reused): one entry per function, however the frames that
        // name it were allocated.
        self.function_by_ptr.insert(
            key,
            (
                id,
                Arc::clone(&frame.code.name),
                Arc::clone(&frame.code.filename),
            ),
        );
        id
    }

    /// Samples that had at least one frame (the sum of all stack counts).
    pub fn total_samples(&self) -> u64 {
        self.total
    }

    /// Seconds of the recording: the sampler's figure, or the last sample's time before `finish`.
    pub fn duration(&self) -> f64 {
        if self.meta.duration > 0.0 {
            self.meta.duration
        } else {
            self.last_time
        }
    }

    /// Seconds one sample stands for: 1/achieved rate, else 1/requested rate, else 10 ms.
    pub fn sample_interval(&self) -> f64 {
        if self.meta.achieved_rate > 0.0 {
            1.0 / self.meta.achieved_rate
        } else {
            self.nominal_interval()
        }
    }

    /// 1/requested rate (10 ms, py-spy's default, if the rate is not a positive number).
    fn nominal_interval(&self) -> f64 {
        let r = self.meta.requested_rate;
        if r.is_finite() && r > 0.0 {
            1.0 / r
        } else {
            0.01
        }
    }

    /// Threads in the order they were first seen.
    pub fn threads(&self) -> &[ThreadInfo] {
        &self.threads
    }

    /// True when samples came from more than one process (`--subprocesses`).
    pub fn multi_process(&self) -> bool {
        self.threads.iter().any(|t| t.pid != self.threads[0].pid)
    }

    /// The function table.
    pub fn function_table(&self) -> &[FunctionInfo] {
        &self.functions
    }

    /// The frame table.
    pub fn frame_table(&self) -> &[FrameInfo] {
        &self.frames
    }

    /// Number of distinct stacks (nodes of the prefix tree; each is a stack).
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    /// Frame ids of a stack, innermost first, without allocating.
    pub fn stack_frames(&self, stack: usize) -> impl Iterator<Item = usize> + '_ {
        let mut node = stack as u32;
        std::iter::from_fn(move || {
            let n = self.stacks.get(node as usize)?;
            node = n.parent;
            Some(n.frame as usize)
        })
    }

    /// Frame ids of a stack, innermost first, without the native ones unless `with_native`.
    fn shown_frames(&self, stack: usize, with_native: bool) -> impl Iterator<Item = usize> + '_ {
        self.stack_frames(stack).filter(move |&f| {
            with_native || self.functions[self.frames[f].function].kind != FrameKind::Native
        })
    }

    /// Frame ids of a stack, outermost first.
    pub fn stack_frames_root_first(&self, stack: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self.stack_frames(stack).collect();
        v.reverse();
        v
    }

    /// Every (stack id, thread index, sample count), sorted by thread then stack.
    pub fn stack_counts(&self) -> Vec<(usize, usize, u64)> {
        let mut v: Vec<(usize, usize, u64)> = self
            .counts
            .iter()
            .map(|(&(s, t), &c)| (s as usize, t as usize, c))
            .collect();
        v.sort_unstable_by_key(|&(s, t, _)| (t, s));
        v
    }

    /// The samples in arrival order, when the options kept them.
    pub fn timeline(&self) -> Option<&[TimelineEntry]> {
        self.timeline.as_deref()
    }

    /// The sampler's ticks, rebuilt from the timeline (empty without one).
    pub fn ticks(&self) -> Ticks {
        let interval = self.nominal_interval();
        let mut entries: Vec<(u64, f64)> = self
            .timeline()
            .unwrap_or(&[])
            .iter()
            .map(|e| (e.tick, e.time))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let (mut starts, mut numbers) = (Vec::new(), Vec::new());
        for (tick, time) in entries {
            if numbers.last() != Some(&tick) {
                numbers.push(tick);
                starts.push(time);
            }
        }
        Ticks {
            starts,
            numbers,
            interval,
        }
    }

    /// The file name shown for a function, per `full_filenames`.
    pub fn display_filename(&self, function: usize) -> &str {
        let f = &self.functions[function];
        if self.opts.full_filenames {
            &f.filename
        } else {
            &f.short_filename
        }
    }

    /// The line shown for a frame, per the options; None when there is none to show.
    pub fn frame_line(&self, frame: usize) -> Option<i32> {
        let fr = &self.frames[frame];
        if self.opts.no_line_numbers {
            None
        } else if self.opts.by_function {
            let l = self.functions[fr.function].lowest_line;
            (l > 0).then_some(l)
        } else {
            (fr.line > 0).then_some(fr.line)
        }
    }

    /// A frame as py-spy shows it: `name (file:line)`, or `name (file)` without a line.
    pub fn frame_label(&self, frame: usize) -> String {
        let function = self.frames[frame].function;
        let name = &self.functions[function].name;
        let file = self.display_filename(function);
        match self.frame_line(frame) {
            Some(l) => format!("{name} ({file}:{l})"),
            None => format!("{name} ({file})"),
        }
    }

    /// A function without a line: `name (file)`.
    pub fn function_label(&self, function: usize) -> String {
        let f = &self.functions[function];
        format!("{} ({})", f.name, self.display_filename(function))
    }

    /// A thread's title: its label, prefixed by its process when there are several.
    pub fn thread_title(&self, thread: usize) -> String {
        let t = &self.threads[thread];
        if self.multi_process() {
            format!("process {}: {}", t.pid, t.label())
        } else {
            t.label()
        }
    }

    /// Synthetic frames put above a thread's stacks, outermost first: `process N`
    /// when samples come from several processes, the thread's label with `-t`.
    pub fn root_frames(&self, thread: usize) -> Vec<String> {
        let t = &self.threads[thread];
        let mut v = Vec::new();
        if self.multi_process() {
            v.push(format!("process {}", t.pid));
        }
        if self.opts.threads_as_root {
            v.push(t.label());
        }
        v
    }

    /// Folded stacks (`root;...;leaf`, root frames included) with their counts,
    /// merged and sorted; `;` and line breaks inside labels are replaced so that
    /// every line parses back.
    pub fn folded(&self) -> Vec<(String, u64)> {
        let labels: Vec<String> = (0..self.frames.len())
            .map(|f| sanitize_folded(&self.frame_label(f)))
            .collect();
        let roots: Vec<Vec<String>> = (0..self.threads.len())
            .map(|t| {
                self.root_frames(t)
                    .iter()
                    .map(|s| sanitize_folded(s))
                    .collect()
            })
            .collect();
        let mut merged: HashMap<String, u64> = HashMap::new();
        let mut line = String::new();
        for (&(stack, thread), &count) in &self.counts {
            line.clear();
            for r in &roots[thread as usize] {
                line.push_str(r);
                line.push(';');
            }
            for f in self.stack_frames_root_first(stack as usize) {
                line.push_str(&labels[f]);
                line.push(';');
            }
            line.pop();
            match merged.get_mut(line.as_str()) {
                Some(c) => *c += count,
                None => {
                    merged.insert(line.clone(), count);
                }
            }
        }
        let mut v: Vec<(String, u64)> = merged.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// The function table the TUI shows, over the threads `filter` accepts.
    ///
    /// `by_line` keeps each line of a function apart (when the options keep lines).
    /// Without `with_native`, native frames are left out, as if each stack held its Python
    /// frames only (their time goes to the Python frame that called them).
    /// `own` counts samples where the entry is the innermost frame, `total` those
    /// where it appears anywhere, once per sample even under recursion. Sorted by
    /// own, then total (both descending), then name and file.
    pub fn functions(
        &self,
        by_line: bool,
        with_native: bool,
        filter: impl Fn(&ThreadInfo) -> bool,
    ) -> Vec<FunctionStats> {
        let key_of = |frame: usize| -> usize {
            if by_line {
                frame
            } else {
                self.frames[frame].function
            }
        };
        let nkeys = if by_line {
            self.frames.len()
        } else {
            self.functions.len()
        };
        let mut own = vec![0u64; nkeys];
        let mut total = vec![0u64; nkeys];
        // The stamp of the last (stack, thread) pair that counted a key, so a
        // recursive function is counted once per sample without a set per stack.
        let mut stamp = vec![usize::MAX; nkeys];
        let accepted: Vec<bool> = self.threads.iter().map(&filter).collect();
        for (pair, (&(stack, thread), &count)) in self.counts.iter().enumerate() {
            if !accepted[thread as usize] {
                continue;
            }
            let mut frames = self.shown_frames(stack as usize, with_native);
            if let Some(leaf) = frames.next() {
                let k = key_of(leaf);
                own[k] += count;
                total[k] += count;
                stamp[k] = pair;
            }
            for f in frames {
                let k = key_of(f);
                if stamp[k] != pair {
                    stamp[k] = pair;
                    total[k] += count;
                }
            }
        }
        let mut v: Vec<FunctionStats> = (0..nkeys)
            .filter(|&k| total[k] > 0)
            .map(|k| {
                let (function, line) = self.entry(by_line, k);
                let f = &self.functions[function];
                FunctionStats {
                    id: k,
                    name: f.name.clone(),
                    filename: self.display_filename(function).to_owned(),
                    line,
                    kind: f.kind,
                    own: own[k],
                    total: total[k],
                }
            })
            .collect();
        v.sort_by(|a, b| {
            b.own
                .cmp(&a.own)
                .then(b.total.cmp(&a.total))
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.filename.cmp(&b.filename))
                .then(a.line.cmp(&b.line))
        });
        v
    }
}

impl Profile {
    /// The function and the displayed line of an entry id of [`Profile::functions`].
    fn entry(&self, by_line: bool, id: usize) -> (usize, Option<i32>) {
        if by_line {
            (self.frames[id].function, self.frame_line(id))
        } else {
            (id, None)
        }
    }

    /// Callers and callees of the entry `id` of [`Profile::functions`] (with the same
    /// `by_line` and `with_native`), over the threads `filter` accepts.
    ///
    /// A caller is the frame directly outside an occurrence of the entry, a callee the
    /// frame directly inside one; each is counted once per sample even when recursion
    /// puts the entry on a stack several times. An unknown id has no neighbors.
    pub fn neighbors(
        &self,
        by_line: bool,
        with_native: bool,
        id: usize,
        filter: impl Fn(&ThreadInfo) -> bool,
    ) -> Neighbors {
        let nkeys = if by_line {
            self.frames.len()
        } else {
            self.functions.len()
        };
        let mut out = Neighbors::default();
        if id >= nkeys {
            return out;
        }
        let key_of = |frame: usize| -> usize {
            if by_line {
                frame
            } else {
                self.frames[frame].function
            }
        };
        let mut callers = vec![0u64; nkeys];
        let mut callees = vec![0u64; nkeys];
        // Stamps of the last (stack, thread) pair that counted a key, as in `functions`.
        let mut caller_stamp = vec![usize::MAX; nkeys];
        let mut callee_stamp = vec![usize::MAX; nkeys];
        let accepted: Vec<bool> = self.threads.iter().map(&filter).collect();
        for (pair, (&(stack, thread), &count)) in self.counts.iter().enumerate() {
            if !accepted[thread as usize] {
                continue;
            }
            let mut found = false;
            let mut inner: Option<usize> = None;
            for k in self.shown_frames(stack as usize, with_native).map(key_of) {
                if inner == Some(id) && caller_stamp[k] != pair {
                    caller_stamp[k] = pair;
                    callers[k] += count;
                }
                if k == id {
                    found = true;
                    match inner {
                        None => out.own += count,
                        Some(c) if callee_stamp[c] != pair => {
                            callee_stamp[c] = pair;
                            callees[c] += count;
                        }
                        Some(_) => {}
                    }
                }
                inner = Some(k);
            }
            if inner == Some(id) {
                out.root += count;
            }
            if found {
                out.total += count;
            }
        }
        let list = |counts: Vec<u64>| -> Vec<Neighbor> {
            let mut v: Vec<Neighbor> = (0..nkeys)
                .filter(|&k| counts[k] > 0)
                .map(|k| {
                    let (function, line) = self.entry(by_line, k);
                    let f = &self.functions[function];
                    Neighbor {
                        id: k,
                        name: f.name.clone(),
                        filename: self.display_filename(function).to_owned(),
                        line,
                        kind: f.kind,
                        samples: counts[k],
                    }
                })
                .collect();
            v.sort_by(|a, b| {
                b.samples
                    .cmp(&a.samples)
                    .then_with(|| a.name.cmp(&b.name))
                    .then_with(|| a.filename.cmp(&b.filename))
                    .then(a.line.cmp(&b.line))
            });
            v
        };
        out.callers = list(callers);
        out.callees = list(callees);
        out
    }
}

/// Keep a label inside one field of a folded line.
fn sanitize_folded(label: &str) -> String {
    label.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Hand-made samples for the tests of the profile and of every writer.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::sample::ThreadStack;

    /// A Python frame in `file`, with a short name `file` minus its directory.
    pub fn frame(name: &str, file: &str, line: i32) -> Frame {
        Frame::new(
            name,
            file,
            file.rsplit('/').next().unwrap_or(file),
            line,
            FrameKind::Python,
        )
    }

    /// A sample; `frames` are given outermost first, as people read stacks.
    pub fn sample(time: f64, tid: u64, name: &str, frames: &[(&str, i32)]) -> Sample {
        Sample {
            time,
            // The period of 100 Hz (as [`meta`]) it falls nearest to.
            tick: if time.is_finite() {
                (time * 100.0).round() as u64
            } else {
                0
            },
            pid: 42,
            stack: ThreadStack {
                thread_id: tid,
                os_thread_id: Some(tid as u32 + 1000),
                thread_name: Some(name.into()),
                active: true,
                owns_gil: tid == 1,
                gil_requested: false,
                state: None,
                frames: frames
                    .iter()
                    .rev()
                    .map(|&(n, l)| frame(n, "/app/src/main.py", l))
                    .collect(),
            },
        }
    }

    /// A meta for tests: 100 Hz requested.
    pub fn meta() -> ProfileMeta {
        ProfileMeta::new("python app.py <&>", 100.0, SystemTime::UNIX_EPOCH)
    }

    /// Two threads over six ticks at 100 Hz, with recursion and an idle tick:
    ///
    /// ```text
    /// t      MainThread (1)                 worker (2)
    /// 0.00   main;work:10;compute:20        run;wait:5
    /// 0.01   main;work:10;compute:21        run;wait:5
    /// 0.02   main;work:11;fib;fib;fib       run;wait:5
    /// 0.03   main;work:10;compute:20        (no frames)
    /// 0.04   main;work:12                   run;wait:5
    /// 0.05   main;work:10;compute:20        (not sampled)
    /// ```
    pub fn two_threads(opts: ProfileOptions) -> Profile {
        let mut p = Profile::new(meta(), opts);
        let m = "MainThread";
        let w = "worker";
        let samples = [
            sample(0.00, 1, m, &[("main", 1), ("work", 10), ("compute", 20)]),
            sample(0.0001, 2, w, &[("run", 3), ("wait", 5)]),
            sample(0.01, 1, m, &[("main", 1), ("work", 10), ("compute", 21)]),
            sample(0.0101, 2, w, &[("run", 3), ("wait", 5)]),
            sample(
                0.02,
                1,
                m,
                &[
                    ("main", 1),
                    ("work", 11),
                    ("fib", 30),
                    ("fib", 31),
                    ("fib", 31),
                ],
            ),
            sample(0.0201, 2, w, &[("run", 3), ("wait", 5)]),
            sample(0.03, 1, m, &[("main", 1), ("work", 10), ("compute", 20)]),
            sample(0.0301, 2, w, &[]),
            sample(0.04, 1, m, &[("main", 1), ("work", 12)]),
            sample(0.0401, 2, w, &[("run", 3), ("wait", 5)]),
            sample(0.05, 1, m, &[("main", 1), ("work", 10), ("compute", 20)]),
        ];
        for s in &samples {
            p.add(s);
        }
        p.finish(RunStats {
            duration: 0.06,
            ticks: 6,
            dropped_ticks: 0,
            errors: 0,
        });
        p
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn stats<'a>(v: &'a [FunctionStats], name: &str) -> &'a FunctionStats {
        v.iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {v:?}"))
    }

    #[test]
    fn a_shared_stack_counts_where_an_equal_one_does() {
        let mut p = Profile::new(meta(), ProfileOptions::default());
        let a = sample(0.0, 1, "t", &[("main", 1), ("work", 10)]);
        let b = sample(0.01, 1, "t", &[("main", 1), ("work", 11)]);
        // The same stacks handed out again, taking turns, and one equal to the first made
        // anew: each counts where its frames say.
        for s in [&a, &b, &a, &a, &b] {
            p.add(s);
        }
        p.add(&sample(0.02, 1, "t", &[("main", 1), ("work", 10)]));
        // A shared stack changed afterwards is another stack (the change copies it first),
        // and the stack it was copied from stays as it was.
        let mut c = a.clone();
        c.stack
            .frames
            .insert(0, frame("leaf", "/app/src/main.py", 3));
        p.add(&c);
        assert_eq!(a.stack.frames.len(), 2);
        p.add(&a);
        let labels = |stack: usize| -> Vec<String> {
            p.stack_frames_root_first(stack)
                .into_iter()
                .map(|f| p.frame_label(f))
                .collect()
        };
        let mut got: Vec<(Vec<String>, u64)> = p
            .stack_counts()
            .iter()
            .map(|&(stack, _, n)| (labels(stack), n))
            .collect();
        got.sort_by_key(|g| std::cmp::Reverse(g.1));
        assert_eq!(
            got,
            [
                (
                    vec!["main (main.py:1)".into(), "work (main.py:10)".into()],
                    5
                ),
                (
                    vec!["main (main.py:1)".into(), "work (main.py:11)".into()],
                    2
                ),
                (
                    vec![
                        "main (main.py:1)".into(),
                        "work (main.py:10)".into(),
                        "leaf (main.py:3)".into()
                    ],
                    1
                ),
            ]
        );
    }

    #[test]
    fn interning_counts_and_threads() {
        let p = two_threads(ProfileOptions::default());
        assert_eq!(p.total_samples(), 10);
        assert_eq!(p.threads().len(), 2);
        let main = &p.threads()[0];
        assert_eq!(main.label(), "MainThread (tid 1001)");
        assert_eq!(
            (main.samples, main.empty_samples, main.gil_samples),
            (6, 0, 6)
        );
        let worker = &p.threads()[1];
        assert_eq!((worker.samples, worker.empty_samples), (4, 1));
        // main, run, wait, work@10/11/12, compute@20/21, fib@30/31.
        assert_eq!(p.function_table().len(), 6);
        assert_eq!(p.frame_table().len(), 10);
        let counts = p.stack_counts();
        let sum: u64 = counts.iter().map(|c| c.2).sum();
        assert_eq!(sum, 10);
        // The main thread's hottest stack: main;work:10;compute:20 three times.
        let (stack, _, n) = *counts
            .iter()
            .filter(|c| c.1 == 0)
            .max_by_key(|c| c.2)
            .unwrap();
        assert_eq!(n, 3);
        let labels: Vec<String> = p
            .stack_frames_root_first(stack)
            .into_iter()
            .map(|f| p.frame_label(f))
            .collect();
        assert_eq!(
            labels,
            [
                "main (main.py:1)",
                "work (main.py:10)",
                "compute (main.py:20)"
            ]
        );
        assert!(p.timeline().is_none());
        assert!((p.meta().achieved_rate - 100.0).abs() < 1e-9);
    }

    #[test]
    fn stacks_of_shared_frames_intern_as_fresh_ones_do() {
        // The reader hands out frames sharing their name allocations, so successive stacks
        // of a thread match the last one frame by frame; the result must not depend on it.
        let m = "MainThread";
        let samples = [
            sample(
                0.00,
                1,
                m,
                &[("main", 1), ("work", 10), ("fib", 30), ("fib", 31)],
            ),
            sample(
                0.01,
                1,
                m,
                &[("main", 1), ("work", 10), ("fib", 30), ("fib", 31)],
            ),
            sample(0.01, 2, "w", &[("main", 1), ("work", 10), ("fib", 30)]),
            sample(0.02, 1, m, &[("main", 1), ("work", 10), ("fib", 30)]),
            sample(
                0.03,
                1,
                m,
                &[("main", 1), ("work", 9), ("fib", 30), ("fib", 31)],
            ),
            sample(0.04, 1, m, &[]),
            sample(
                0.05,
                1,
                m,
                &[("main", 1), ("work", 10), ("fib", 30), ("fib", 29)],
            ),
            sample(
                0.06,
                1,
                m,
                &[("main", 1), ("work", 10), ("fib", 30), ("fib", 31)],
            ),
        ];
        let mut codes: HashMap<String, Arc<FrameCode>> = HashMap::new();
        let shared: Vec<Sample> = samples
            .iter()
            .map(|s| {
                let mut s = s.clone();
                for f in &mut s.stack.frames {
                    let code = codes
                        .entry(f.name().to_string())
                        .or_insert_with(|| Arc::clone(&f.code));
                    f.code = Arc::clone(code);
                }
                s
            })
            .collect();
        for opts in [
            ProfileOptions::default(),
            ProfileOptions {
                by_function: true,
                ..Default::default()
            },
        ] {
            let mut fresh = Profile::new(meta(), opts);
            let mut reused = Profile::new(meta(), opts);
            for (a, b) in samples.iter().zip(&shared) {
                fresh.add(a);
                reused.add(b);
            }
            assert_eq!(fresh.folded(), reused.folded());
            assert_eq!(fresh.stack_counts(), reused.stack_counts());
            assert_eq!(fresh.stack_count(), reused.stack_count());
            assert_eq!(fresh.function_table(), reused.function_table());
            assert_eq!(fresh.function_table()[2].lowest_line, 29);
        }
    }

    #[test]
    fn stacks_share_prefixes() {
        let p = two_threads(ProfileOptions::default());
        // main, work:10, compute:20, compute:21, work:11, fib:30, fib:31, fib:31
        // (under fib:31), work:12, run, wait: 11 nodes for 6 distinct stacks.
        assert_eq!(p.stack_count(), 11);
    }

    #[test]
    fn native_frames_can_be_left_out() {
        let mut p = Profile::new(meta(), ProfileOptions::default());
        let native = |name: &str| Frame {
            kind: FrameKind::Native,
            ..frame(name, "/usr/lib/libc.so.6", 0)
        };
        // main -> work -> memcpy (native) twice, main -> work once, a native-only thread.
        for t in 0..3 {
            let mut s = sample(
                t as f64 * 0.01,
                1,
                "MainThread",
                &[("main", 1), ("work", 2)],
            );
            if t < 2 {
                s.stack.frames.insert(0, native("memcpy"));
            }
            p.add(&s);
        }
        let mut c = sample(0.0, 2, "c-thread", &[]);
        c.stack.frames = vec![native("spin"), native("start_thread")].into();
        p.add(&c);

        let with = p.functions(false, true, |_| true);
        assert_eq!(stats(&with, "memcpy").own, 2);
        assert_eq!(stats(&with, "work").own, 1);
        assert_eq!(stats(&with, "spin").own, 1);
        let without = p.functions(false, false, |_| true);
        assert!(
            without.iter().all(|f| f.kind == FrameKind::Python),
            "{without:?}"
        );
        // memcpy's time is work's own time now.
        assert_eq!(
            (stats(&without, "work").own, stats(&without, "work").total),
            (3, 3)
        );

        let id = |v: &[FunctionStats], n: &str| stats(v, n).id;
        let n = p.neighbors(false, true, id(&with, "work"), |_| true);
        assert_eq!((n.own, n.callees.len()), (1, 1));
        let n = p.neighbors(false, false, id(&with, "work"), |_| true);
        assert_eq!((n.own, n.callees.len()), (3, 0));
    }

    #[test]
    fn functions_own_and_total() {
        let p = two_threads(ProfileOptions::default());
        let all = p.functions(false, true, |_| true);
        let f = |n| stats(&all, n).clone();
        assert_eq!((f("main").own, f("main").total), (0, 6));
        assert_eq!((f("work").own, f("work").total), (1, 6));
        assert_eq!((f("compute").own, f("compute").total), (4, 4));
        // Three fib frames in one sample count once in total.
        assert_eq!((f("fib").own, f("fib").total), (1, 1));
        assert_eq!((f("wait").own, f("wait").total), (4, 4));
        assert_eq!(f("main").filename, "main.py");
        assert_eq!(f("main").line, None);
        // Sorted by own descending.
        assert!(all.windows(2).all(|w| w[0].own >= w[1].own));

        let main_only = p.functions(false, true, |t| t.name.as_deref() == Some("MainThread"));
        assert!(main_only.iter().all(|s| s.name != "wait"));
        assert_eq!(stats(&main_only, "main").total, 6);
    }

    #[test]
    fn functions_by_line() {
        let p = two_threads(ProfileOptions::default());
        let v = p.functions(true, true, |_| true);
        let at = |name: &str, line: i32| {
            v.iter()
                .find(|s| s.name == name && s.line == Some(line))
                .unwrap_or_else(|| panic!("{name}:{line} missing"))
                .clone()
        };
        assert_eq!((at("compute", 20).own, at("compute", 20).total), (3, 3));
        assert_eq!(at("compute", 21).own, 1);
        assert_eq!((at("work", 10).own, at("work", 10).total), (0, 4));
        assert_eq!((at("work", 12).own, at("work", 12).total), (1, 1));
        // fib:31 twice in one stack: total once; fib:30 is not innermost.
        assert_eq!((at("fib", 31).own, at("fib", 31).total), (1, 1));
        assert_eq!((at("fib", 30).own, at("fib", 30).total), (0, 1));
    }

    #[test]
    fn function_ids_are_table_indices() {
        let p = two_threads(ProfileOptions::default());
        for f in p.functions(false, true, |_| true) {
            assert_eq!(p.function_table()[f.id].name, f.name);
        }
        for f in p.functions(true, true, |_| true) {
            let fr = p.frame_table()[f.id];
            assert_eq!(p.function_table()[fr.function].name, f.name);
            assert_eq!(Some(fr.line), f.line);
        }
    }

    #[test]
    fn neighbors_by_function() {
        let p = two_threads(ProfileOptions::default());
        let all = p.functions(false, true, |_| true);
        let id = |n| stats(&all, n).id;
        let names = |v: &[Neighbor]| -> Vec<(String, u64)> {
            v.iter().map(|n| (n.name.clone(), n.samples)).collect()
        };
        let work = p.neighbors(false, true, id("work"), |_| true);
        assert_eq!(names(&work.callers), [("main".to_owned(), 6)]);
        assert_eq!(
            names(&work.callees),
            [("compute".to_owned(), 4), ("fib".to_owned(), 1)]
        );
        assert_eq!((work.own, work.total, work.root), (1, 6, 0));

        let main = p.neighbors(false, true, id("main"), |_| true);
        assert!(main.callers.is_empty());
        assert_eq!((main.own, main.total, main.root), (0, 6, 6));

        // fib;fib;fib in one sample: work calls it once, it calls itself once.
        let fib = p.neighbors(false, true, id("fib"), |_| true);
        assert_eq!(
            names(&fib.callers),
            [("fib".to_owned(), 1), ("work".to_owned(), 1)]
        );
        assert_eq!(names(&fib.callees), [("fib".to_owned(), 1)]);
        assert_eq!((fib.own, fib.total), (1, 1));

        // Thread filter: the worker never calls work.
        let w = p.neighbors(false, true, id("work"), |t| {
            t.name.as_deref() == Some("worker")
        });
        assert_eq!(w, Neighbors::default());
        let wait = p.neighbors(false, true, id("wait"), |_| true);
        assert_eq!(names(&wait.callers), [("run".to_owned(), 4)]);
        assert_eq!(wait.own, 4);
        // Unknown ids have no neighbors rather than panicking.
        assert_eq!(
            p.neighbors(false, true, 999, |_| true),
            Neighbors::default()
        );
    }

    #[test]
    fn neighbors_by_line() {
        let p = two_threads(ProfileOptions::default());
        let v = p.functions(true, true, |_| true);
        let id = |name: &str, line: i32| {
            v.iter()
                .find(|s| s.name == name && s.line == Some(line))
                .unwrap()
                .id
        };
        let c = p.neighbors(true, true, id("compute", 20), |_| true);
        assert_eq!(c.callers.len(), 1);
        assert_eq!(
            (c.callers[0].name.as_str(), c.callers[0].line),
            ("work", Some(10))
        );
        assert_eq!(c.callers[0].samples, 3);
        let w = p.neighbors(true, true, id("work", 10), |_| true);
        let callees: Vec<(Option<i32>, u64)> =
            w.callees.iter().map(|n| (n.line, n.samples)).collect();
        assert_eq!(callees, [(Some(20), 3), (Some(21), 1)]);
    }

    #[test]
    fn nolineno_and_function_options() {
        let opts = ProfileOptions {
            no_line_numbers: true,
            ..Default::default()
        };
        let p = two_threads(opts);
        assert_eq!(p.frame_table().len(), 6, "one frame per function");
        let folded = p.folded();
        assert!(folded.contains(&(
            "main (main.py);work (main.py);compute (main.py)".to_owned(),
            4
        )));

        let opts = ProfileOptions {
            by_function: true,
            ..Default::default()
        };
        let p = two_threads(opts);
        assert_eq!(p.frame_table().len(), 6);
        let folded = p.folded();
        // work was sampled at lines 10, 11, 12: the lowest is shown.
        assert!(
            folded.contains(&(
                "main (main.py:1);work (main.py:10);compute (main.py:20)".to_owned(),
                4
            )),
            "{folded:?}"
        );
        // By-line function stats collapse to functions too.
        let v = p.functions(true, true, |_| true);
        assert_eq!(stats(&v, "work").line, Some(10));
        assert_eq!(stats(&v, "work").total, 6);
    }

    #[test]
    fn folded_with_thread_roots() {
        let opts = ProfileOptions {
            threads_as_root: true,
            ..Default::default()
        };
        let p = two_threads(opts);
        let folded = p.folded();
        assert!(folded.contains(&(
            "worker (tid 1002);run (main.py:3);wait (main.py:5)".to_owned(),
            4
        )));
        assert!(folded.contains(&(
            "MainThread (tid 1001);main (main.py:1);work (main.py:12)".to_owned(),
            1
        )));
        assert_eq!(folded.iter().map(|f| f.1).sum::<u64>(), 10);
    }

    #[test]
    fn threads_take_names_learned_after_their_samples() {
        let opts = ProfileOptions {
            threads_as_root: true,
            ..Default::default()
        };
        let mut p = Profile::new(meta(), opts);
        let mut s = sample(0.0, 1, "", &[("main", 1)]);
        s.stack.thread_name = None;
        p.add(&s);
        let named = |p: &Profile| p.folded().iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(named(&p), ["thread 0x1 (tid 1001);main (main.py:1)"]);
        // Another process's thread, or the same ident on another kernel thread: not this one.
        let other: Arc<str> = "other".into();
        p.rename_threads([(&(43, 1, Some(1001)), &other), (&(42, 1, Some(7)), &other)]);
        assert_eq!(named(&p), ["thread 0x1 (tid 1001);main (main.py:1)"]);
        let main: Arc<str> = "MainThread".into();
        p.rename_threads([(&(42, 1, Some(1001)), &main)]);
        assert_eq!(named(&p), ["MainThread (tid 1001);main (main.py:1)"]);
    }

    #[test]
    fn full_filenames_and_missing_short_names() {
        let opts = ProfileOptions {
            full_filenames: true,
            ..Default::default()
        };
        let p = two_threads(opts);
        assert!(p.folded()[0].0.contains("(/app/src/main.py:"));

        let mut p = Profile::new(meta(), ProfileOptions::default());
        let mut s = sample(0.0, 1, "t", &[("f", 1)]);
        let f = &mut s.stack.frames[0];
        *f = Frame::new("a;b", f.filename(), "", f.line, f.kind);
        p.add(&s);
        assert_eq!(p.folded(), [("a:b (/app/src/main.py:1)".to_owned(), 1)]);
    }

    #[test]
    fn reused_python_ident_is_a_new_thread() {
        let mut p = Profile::new(meta(), ProfileOptions::default());
        let a = sample(0.0, 1, "a", &[("f", 1)]);
        let mut b = sample(1.0, 1, "b", &[("f", 1)]);
        b.stack.os_thread_id = Some(7);
        p.add(&a);
        p.add(&b);
        p.add(&a);
        assert_eq!(p.threads().len(), 2);
        assert_eq!(p.threads()[0].samples, 2);
        assert_eq!(p.threads()[0].last_time, 0.0);
    }

    #[test]
    fn multi_process_roots() {
        let mut p = Profile::new(meta(), ProfileOptions::default());
        let a = sample(0.0, 1, "a", &[("f", 1)]);
        let mut b = a.clone();
        b.pid = 43;
        p.add(&a);
        p.add(&b);
        assert!(p.multi_process());
        assert_eq!(
            p.folded(),
            [
                ("process 42;f (main.py:1)".to_owned(), 1),
                ("process 43;f (main.py:1)".to_owned(), 1)
            ]
        );
        assert_eq!(p.thread_title(1), "process 43: a (tid 1001)");
    }

    #[test]
    fn timeline_and_ticks() {
        let opts = ProfileOptions {
            keep_timeline: true,
            ..Default::default()
        };
        let p = two_threads(opts);
        let tl = p.timeline().unwrap();
        assert_eq!(tl.len(), 11);
        assert_eq!(tl[7].stack(), None, "the worker's empty sample is kept");
        assert_eq!(tl[1].thread(), 1);
        let ticks = p.ticks();
        assert_eq!(ticks.len(), 6, "threads read within one tick share it");
        assert_eq!(ticks.tick_of(0.0101), 1);
        assert_eq!(ticks.tick_of(0.05), 5);
        assert!((ticks.end(1) - 0.02).abs() < 1e-12);
        assert!(
            (ticks.end(5) - 0.06).abs() < 1e-12,
            "last tick: one interval"
        );
        assert!(ticks.contiguous(4, 5) && !ticks.contiguous(3, 5) && !ticks.contiguous(5, 6));
    }

    #[test]
    fn ticks_with_gaps_in_time() {
        let mut p = Profile::new(
            meta(),
            ProfileOptions {
                keep_timeline: true,
                ..Default::default()
            },
        );
        // 100 Hz: a late tick (13 ms), then nothing for 50 ms.
        for t in [0.0, 0.013, 0.023, 0.073] {
            p.add(&sample(t, 1, "m", &[("f", 1)]));
        }
        let ticks = p.ticks();
        assert_eq!(ticks.len(), 4);
        assert!(ticks.contiguous(0, 1) && ticks.contiguous(1, 2));
        assert!(!ticks.contiguous(2, 3));
        assert!((ticks.end(0) - 0.013).abs() < 1e-12);
        assert!(
            (ticks.end(2) - 0.033).abs() < 1e-12,
            "one interval, not 50 ms"
        );
    }

    #[test]
    fn a_tick_woken_past_its_period_ends_where_the_next_begins() {
        let mut p = Profile::new(
            meta(),
            ProfileOptions {
                keep_timeline: true,
                ..Default::default()
            },
        );
        // 100 Hz: period 0's tick woke 9.5 ms late, at 19.5 ms; period 1 was dropped;
        // period 2's tick came early in it. Period 0's tick may not overlap period 2's.
        for (t, tick) in [(0.0195, 0), (0.0201, 2), (0.0305, 3)] {
            let mut s = sample(t, 1, "m", &[("f", 1)]);
            s.tick = tick;
            p.add(&s);
        }
        let ticks = p.ticks();
        assert_eq!(ticks.len(), 3);
        assert!(!ticks.contiguous(0, 1) && ticks.contiguous(1, 2));
        assert!((ticks.end(0) - 0.0201).abs() < 1e-12, "{}", ticks.end(0));
        assert!((ticks.end(1) - 0.0305).abs() < 1e-12);
    }

    #[test]
    fn non_finite_times_are_clamped() {
        let mut p = Profile::new(
            meta(),
            ProfileOptions {
                keep_timeline: true,
                ..Default::default()
            },
        );
        p.add(&sample(f64::NAN, 1, "m", &[("f", 1)]));
        p.add(&sample(0.5, 1, "m", &[("f", 1)]));
        p.add(&sample(f64::INFINITY, 1, "m", &[("f", 1)]));
        let times: Vec<f64> = p.timeline().unwrap().iter().map(|e| e.time()).collect();
        assert_eq!(times, [0.0, 0.5, 0.5]);
        assert_eq!(p.ticks().len(), 2);
        assert_eq!(p.threads()[0].last_time, 0.5);
    }

    #[test]
    fn repeated_samples_count_as_many() {
        let opts = ProfileOptions {
            keep_timeline: true,
            ..Default::default()
        };
        let (mut once, mut many) = (Profile::new(meta(), opts), Profile::new(meta(), opts));
        let s = sample(0.0, 1, "m", &[("main", 1), ("f", 2)]);
        for _ in 0..3 {
            once.add(&s);
        }
        many.add_repeated(&s, 3);
        many.add_repeated(&s, 0);
        assert_eq!(many.stack_counts(), once.stack_counts());
        assert_eq!(many.threads(), once.threads());
        assert_eq!(many.timeline().unwrap().len(), 3);
        assert_eq!(many.total_samples(), 3);
    }

    #[test]
    fn long_runs_grow_only_with_distinct_stacks() {
        let mut p = Profile::new(meta(), ProfileOptions::default());
        let stacks: [&[(&str, i32)]; 3] = [
            &[("main", 1), ("a", 2)],
            &[("main", 1), ("b", 3)],
            &[("main", 1), ("a", 2), ("c", 4)],
        ];
        for i in 0..30_000 {
            p.add(&sample(
                i as f64 * 0.01,
                1 + (i % 2) as u64,
                "t",
                stacks[i % 3],
            ));
        }
        assert_eq!(p.total_samples(), 30_000);
        assert_eq!(p.stack_count(), 4);
        assert_eq!(p.frame_table().len(), 4);
        assert_eq!(p.stack_counts().len(), 6, "3 stacks x 2 threads");
        assert!(p.timeline().is_none());
    }

    #[test]
    fn empty_profile() {
        let p = Profile::new(meta(), ProfileOptions::default());
        assert_eq!(p.total_samples(), 0);
        assert!(p.folded().is_empty());
        assert!(p.functions(true, true, |_| true).is_empty());
        assert!(p.ticks().is_empty());
        assert!(!p.multi_process());
        assert!((p.sample_interval() - 0.01).abs() < 1e-12);
    }
}
