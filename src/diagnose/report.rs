//! Aggregation of thread states over a run, and the verdict: which kind of bottleneck the
//! program has, in plain words, with the figures that show it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use super::state::{FdKind, IoOp, State, ThreadState};
use crate::sample::{Frame, FrameCode, FrameKind, Sample};

/// Share of its samples above which a thread that waits on a lock no other thread waits
/// on is parked (joining, an idle worker on its queue): it is listed, but what it waits
/// for is the other threads, so it does not decide the verdict.
const PARKED: f64 = 0.9;
/// Share of the deciding threads' time a group of states needs to be the verdict.
const DOMINANT: f64 = 0.5;
/// Share of GIL waits (of the deciding time) that makes CPU-bound Python a contention.
const CONTENDED: f64 = 0.2;
/// Share of an asyncio event loop thread's time blocked inside its callbacks that makes
/// the blocked loop the verdict: every other task waits while one blocks.
const LOOP_BLOCKED: f64 = 0.2;
/// States in which a callback of an event loop blocks the loop.
const BLOCKING: [State; 4] = [State::Io, State::Lock, State::Sleep, State::Child];

/// One thread's counts over a run.
#[derive(Debug, Clone)]
struct Tally {
    pid: u32,
    thread_id: u64,
    tid: Option<u32>,
    name: Option<Arc<str>>,
    counts: [u64; 8],
    /// Per state: samples by innermost Python function.
    top: [HashMap<FnKey, u64>; 8],
    /// `io` samples by what they waited on.
    io: HashMap<IoKey, u64>,
    /// `lock` samples by futex address.
    locks: HashMap<u64, u64>,
    /// Samples taken while the thread ran an asyncio event loop (see [`loop_place`]).
    loop_samples: u64,
    /// Of those, per state, the samples inside one of the loop's callbacks (a task's step).
    in_callback: [u64; 8],
    /// Samples blocked inside a callback, by innermost Python function.
    blocking_top: HashMap<FnKey, u64>,
    /// The same samples by the callback's own function (a task's outermost coroutine).
    blocking_task: HashMap<FnKey, u64>,
}

/// Where a sample of a thread stands with respect to an asyncio event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopPlace {
    /// No pure-Python asyncio event loop on the stack (uvloop's is C, so not seen).
    None,
    /// In the loop itself: waiting in its selector, or scheduling.
    Loop,
    /// Inside a callback the loop runs (`Handle._run`: a task's step); the index of the
    /// callback's own Python frame (a task's outermost coroutine), when it has one.
    Callback(Option<usize>),
}

/// Does `f` run `func` (by bare or qualified name) of the module file ending in `file`?
fn runs(f: &Frame, func: &str, file: &str) -> bool {
    f.kind == FrameKind::Python
        && f.code.filename.ends_with(file)
        && f.code
            .name
            .strip_suffix(func)
            .is_some_and(|head| head.is_empty() || head.ends_with('.'))
}

/// The place of a stack (innermost frame first) in an asyncio event loop:
/// `BaseEventLoop._run_once` on it means the thread runs a loop, and `Handle._run` inside
/// that, one of the loop's callbacks.
fn loop_place(frames: &[Frame]) -> LoopPlace {
    let mut callback = None;
    for (i, f) in frames.iter().enumerate() {
        if runs(f, "_run", "asyncio/events.py") {
            let inner = frames[..i]
                .iter()
                .rposition(|f| f.kind == FrameKind::Python);
            callback = Some(inner);
        } else if runs(f, "_run_once", "asyncio/base_events.py") {
            return match callback {
                Some(inner) => LoopPlace::Callback(inner),
                None => LoopPlace::Loop,
            };
        }
    }
    LoopPlace::None
}

/// A function as reports name it: its code, and the line when the code has no first line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FnKey(Arc<FrameCode>, i32);

impl FnKey {
    /// The function `f` runs in.
    fn of(f: &Frame) -> FnKey {
        // By function: the line only stands in where the code has no first line.
        let line = if f.code.first_line > 0 { 0 } else { f.line };
        FnKey(Arc::clone(&f.code), line)
    }

    fn label(&self) -> String {
        let line = if self.0.first_line > 0 {
            self.0.first_line
        } else {
            self.1
        };
        format!("{} ({}:{line})", self.0.name, self.0.short_filename)
    }
}

type IoKey = (IoOp, Option<FdKind>, Option<Arc<str>>);

impl Tally {
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn share(&self, s: State) -> f64 {
        ratio(self.counts[s.index()], self.total())
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// Thread states of a run, by thread, ready to report.
#[derive(Debug, Default)]
pub struct Diagnosis {
    threads: Vec<Tally>,
    index: HashMap<(u32, u64, Option<u32>), usize>,
}

impl Diagnosis {
    /// An empty diagnosis.
    pub fn new() -> Diagnosis {
        Diagnosis::default()
    }

    /// Count one sample (one without a state, from a process that could not be probed, is
    /// left out).
    pub fn add(&mut self, s: &Sample) {
        let Some(state) = &s.stack.state else {
            return;
        };
        self.add_state(s, state);
    }

    fn add_state(&mut self, s: &Sample, state: &ThreadState) {
        let key = (s.pid, s.stack.thread_id, s.stack.os_thread_id);
        let i = *self.index.entry(key).or_insert_with(|| {
            self.threads.push(Tally {
                pid: s.pid,
                thread_id: s.stack.thread_id,
                tid: s.stack.os_thread_id,
                name: None,
                counts: [0; 8],
                top: Default::default(),
                io: HashMap::new(),
                locks: HashMap::new(),
                loop_samples: 0,
                in_callback: [0; 8],
                blocking_top: HashMap::new(),
                blocking_task: HashMap::new(),
            });
            self.threads.len() - 1
        });
        let t = &mut self.threads[i];
        if s.stack.thread_name.is_some() {
            t.name = s.stack.thread_name.clone();
        }
        let at = state.state.index();
        t.counts[at] += 1;
        let place = loop_place(&s.stack.frames);
        if place != LoopPlace::None {
            t.loop_samples += 1;
        }
        let callback = matches!(place, LoopPlace::Callback(_));
        if callback {
            t.in_callback[at] += 1;
        }
        let blocking = callback && BLOCKING.contains(&state.state);
        if let Some(f) = s.stack.frames.iter().find(|f| f.kind == FrameKind::Python) {
            let key = FnKey::of(f);
            if blocking {
                *t.blocking_top.entry(key.clone()).or_insert(0) += 1;
            }
            *t.top[at].entry(key).or_insert(0) += 1;
        }
        if blocking && let LoopPlace::Callback(Some(i)) = place {
            *t.blocking_task
                .entry(FnKey::of(&s.stack.frames[i]))
                .or_insert(0) += 1;
        }
        if let Some(io) = &state.io {
            *t.io.entry((io.op, io.kind, io.peer.clone())).or_insert(0) += 1;
        }
        if let Some(addr) = state.futex {
            *t.locks.entry(addr).or_insert(0) += 1;
        }
    }

    /// Give threads their latest names (a thread may be named after its last sample).
    pub fn rename(&mut self, names: &crate::sampler::ThreadNames) {
        for t in &mut self.threads {
            if let Some(n) = names.get(&(t.pid, t.thread_id, t.tid)) {
                t.name = Some(Arc::clone(n));
            }
        }
    }

    /// Samples counted.
    pub fn samples(&self) -> u64 {
        self.threads.iter().map(Tally::total).sum()
    }

    /// Processes with samples, in the order first seen.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for t in &self.threads {
            if !pids.contains(&t.pid) {
                pids.push(t.pid);
            }
        }
        pids
    }

    /// The report of one process (`Some(pid)`) or of every process together.
    pub fn report(&self, pid: Option<u32>) -> Report {
        let threads: Vec<&Tally> = self
            .threads
            .iter()
            .filter(|t| pid.is_none_or(|p| t.pid == p) && t.total() > 0)
            .collect();
        let mut counts = [0u64; 8];
        for t in &threads {
            for (c, n) in counts.iter_mut().zip(t.counts) {
                *c += n;
            }
        }
        let samples: u64 = counts.iter().sum();
        Report {
            verdict: verdict(&threads),
            process: Totals {
                samples,
                states: Shares::of(&counts),
            },
            threads: threads
                .iter()
                .map(|t| ThreadReport {
                    pid: t.pid,
                    tid: t.tid,
                    name: t.name.as_deref().unwrap_or("").to_string(),
                    samples: t.total(),
                    states: Shares::of(&t.counts),
                    top: State::ALL
                        .iter()
                        .filter_map(|s| {
                            hottest(&t.top[s.index()]).map(|(k, _)| (s.name(), k.label()))
                        })
                        .collect(),
                })
                .collect(),
            processes: Vec::new(),
        }
    }

    /// The report of every process together, with each process's own verdict and shares
    /// when there are several.
    pub fn report_all(&self) -> Report {
        let mut all = self.report(None);
        let pids = self.pids();
        if pids.len() > 1 {
            all.processes = pids
                .into_iter()
                .map(|pid| {
                    let r = self.report(Some(pid));
                    ProcessReport {
                        pid,
                        verdict: r.verdict,
                        process: r.process,
                    }
                })
                .collect();
        }
        all
    }
}

/// The key with the most samples (ties: the smallest label, so reports are stable).
fn hottest<K: Clone + Eq + std::hash::Hash + Ord>(m: &HashMap<K, u64>) -> Option<(K, u64)>
where
{
    m.iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, n)| (k.clone(), *n))
}

impl PartialOrd for FnKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FnKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.0.name, &self.0.short_filename, self.1).cmp(&(
            &other.0.name,
            &other.0.short_filename,
            other.1,
        ))
    }
}

/// Each state's share of a set of samples, as fractions summing to 1 (all 0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Shares {
    /// On CPU with the GIL.
    pub python: f64,
    /// On CPU without the GIL.
    pub native: f64,
    /// Waiting for the GIL.
    pub gil: f64,
    /// Blocked on I/O.
    pub io: f64,
    /// Blocked on a lock.
    pub lock: f64,
    /// Sleeping.
    pub sleep: f64,
    /// Waiting for a child process.
    pub child: f64,
    /// Anything else.
    pub other: f64,
}

impl Shares {
    fn of(counts: &[u64; 8]) -> Shares {
        let total: u64 = counts.iter().sum();
        let s = |st: State| ratio(counts[st.index()], total);
        Shares {
            python: s(State::Python),
            native: s(State::Native),
            gil: s(State::Gil),
            io: s(State::Io),
            lock: s(State::Lock),
            sleep: s(State::Sleep),
            child: s(State::Child),
            other: s(State::Other),
        }
    }

    /// The share of state `s`.
    pub fn get(&self, s: State) -> f64 {
        match s {
            State::Python => self.python,
            State::Native => self.native,
            State::Gil => self.gil,
            State::Io => self.io,
            State::Lock => self.lock,
            State::Sleep => self.sleep,
            State::Child => self.child,
            State::Other => self.other,
        }
    }

    /// `python 20% · gil 60% · lock 20%`: the states with samples, in [`State::ALL`]'s order.
    pub fn line(&self) -> String {
        let parts: Vec<String> = State::ALL
            .iter()
            .filter(|s| self.get(**s) > 0.0)
            .map(|s| format!("{} {}", s.name(), pct(self.get(*s))))
            .collect();
        if parts.is_empty() {
            "no samples".to_string()
        } else {
            parts.join(" · ")
        }
    }
}

/// A share as a whole percentage.
fn pct(x: f64) -> String {
    if x > 0.0 && x < 0.005 {
        "<1%".to_string()
    } else {
        format!("{:.0}%", x * 100.0)
    }
}

/// The verdict: a kind from a fixed list (scripts read it) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// One of `cpu-python`, `gil-contention`, `native-parallel`, `io`, `lock`, `sleep`,
    /// `child`, `loop-blocked`, `mixed`.
    pub kind: &'static str,
    /// The verdict in plain words, with its evidence.
    pub text: String,
}

/// A process's (or all processes') samples and state shares.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Thread-samples.
    pub samples: u64,
    /// Each state's share of them.
    pub states: Shares,
}

/// One thread in a report.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadReport {
    /// Its process.
    pub pid: u32,
    /// Kernel thread id, when known.
    pub tid: Option<u32>,
    /// Its name (empty when it has none).
    pub name: String,
    /// Its samples.
    pub samples: u64,
    /// Each state's share of them.
    pub states: Shares,
    /// Per state with samples: its hottest Python function, `function (file:line)`.
    pub top: BTreeMap<&'static str, String>,
}

/// One process of a multi-process report.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// Its pid.
    pub pid: u32,
    /// Its own verdict.
    pub verdict: Verdict,
    /// Its own shares.
    pub process: Totals,
}

/// What `prof diagnose` prints (and, as is, its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Shares over every thread.
    pub process: Totals,
    /// Each thread.
    pub threads: Vec<ThreadReport>,
    /// With several processes (`-s`): each one's verdict and shares.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessReport>,
}

impl Report {
    /// The report for people: the verdict, the process's shares, then one line per thread
    /// with its shares and the hottest function of each of its main states.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for p in &self.processes {
            let _ = writeln!(
                out,
                "Process {}: {} samples: {}\n  {} ({})\n",
                p.pid,
                p.process.samples,
                p.process.states.line(),
                p.verdict.text,
                p.verdict.kind
            );
        }
        let whole = if self.processes.is_empty() {
            "Process"
        } else {
            "All processes"
        };
        let _ = writeln!(
            out,
            "{whole}: {} samples: {}",
            self.process.samples,
            self.process.states.line()
        );
        let _ = writeln!(
            out,
            "Verdict ({}): {}",
            self.verdict.kind, self.verdict.text
        );
        let _ = writeln!(out);
        let _ = write!(out, "{:<20} {:>8} {:>7}", "THREAD", "TID", "SAMPLES");
        for s in State::ALL {
            let _ = write!(out, " {:>6}", s.name());
        }
        let _ = writeln!(out);
        for t in &self.threads {
            let name: String = t.name.chars().take(20).collect();
            let tid = t.tid.map_or("?".to_string(), |t| t.to_string());
            let _ = write!(out, "{name:<20} {tid:>8} {:>7}", t.samples);
            for s in State::ALL {
                let v = t.states.get(s);
                let cell = if v > 0.0 { pct(v) } else { "-".to_string() };
                let _ = write!(out, " {cell:>6}");
            }
            let _ = writeln!(out);
            // The hottest function of each state that holds at least a tenth of the thread.
            let mut main: Vec<State> = State::ALL
                .into_iter()
                .filter(|s| t.states.get(*s) >= 0.1 && t.top.contains_key(s.name()))
                .collect();
            main.sort_by(|a, b| t.states.get(*b).total_cmp(&t.states.get(*a)));
            for s in main {
                let _ = writeln!(out, "    {:<6} {}", s.name(), t.top[s.name()]);
            }
        }
        out
    }
}

/// The groups of states a verdict can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Cpu,
    Native,
    Io,
    Lock,
    Sleep,
    Child,
    Other,
}

fn verdict(all: &[&Tally]) -> Verdict {
    let total: u64 = all.iter().map(|t| t.total()).sum();
    if total == 0 {
        return Verdict {
            kind: "mixed",
            text: "no samples: no Python thread was seen".to_string(),
        };
    }
    // A lock waited on by one thread alone is that thread's own (a join, an idle worker's
    // queue); a lock two threads wait on is contended.
    let mut waiters: HashMap<u64, usize> = HashMap::new();
    for t in all {
        for a in t.locks.keys() {
            *waiters.entry(*a).or_insert(0) += 1;
        }
    }
    let parked = |t: &Tally| {
        let own: u64 = t
            .locks
            .iter()
            .filter(|(a, _)| waiters[*a] == 1)
            .map(|(_, n)| *n)
            .sum();
        ratio(own, t.total()) >= PARKED
    };
    let mut deciding: Vec<&Tally> = all.iter().copied().filter(|t| !parked(t)).collect();
    if deciding.is_empty() {
        deciding = all.to_vec();
    }
    let parked_n = all.len() - deciding.len();
    let mut counts = [0u64; 8];
    for t in &deciding {
        for (c, n) in counts.iter_mut().zip(t.counts) {
            *c += n;
        }
    }
    let total: u64 = counts.iter().sum();
    let share = |s: State| ratio(counts[s.index()], total);
    let groups = [
        (Group::Cpu, share(State::Python) + share(State::Gil)),
        (Group::Native, share(State::Native)),
        (Group::Io, share(State::Io)),
        (Group::Lock, share(State::Lock)),
        (Group::Sleep, share(State::Sleep)),
        (Group::Child, share(State::Child)),
        (Group::Other, share(State::Other)),
    ];
    let (group, top_share) = groups
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((Group::Other, 0.0));
    // The hottest function over the deciding threads in the given states, and its share
    // of their samples in those states.
    let hottest_in = |states: &[State]| -> Option<(String, f64)> {
        let mut m: HashMap<FnKey, u64> = HashMap::new();
        let mut n = 0;
        for t in &deciding {
            for s in states {
                n += t.counts[s.index()];
                for (k, c) in &t.top[s.index()] {
                    *m.entry(k.clone()).or_insert(0) += c;
                }
            }
        }
        hottest(&m).map(|(k, c)| (k.label(), ratio(c, n)))
    };
    let threads_in = |s: &[State], min: f64| {
        deciding
            .iter()
            .filter(|t| s.iter().map(|s| t.share(*s)).sum::<f64>() >= min)
            .count()
    };
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let note = if parked_n > 0 {
        format!(
            " ({} waiting on {} own lock the whole time, e.g. in join(), not counted)",
            plural(parked_n, "thread", "threads"),
            if parked_n == 1 { "its" } else { "their" }
        )
    } else {
        String::new()
    };
    // Threads that run an asyncio event loop most of the time, and how their time splits.
    let loops: Vec<&&Tally> = deciding
        .iter()
        .filter(|t| ratio(t.loop_samples, t.total()) >= 0.5)
        .collect();
    // The loops' time is the samples with the loop running (not start-up, not shutdown).
    let loop_total: u64 = loops.iter().map(|t| t.loop_samples).sum();
    let in_callbacks = |states: &[State]| -> u64 {
        loops
            .iter()
            .map(|t| states.iter().map(|s| t.in_callback[s.index()]).sum::<u64>())
            .sum()
    };
    let blocked = in_callbacks(&BLOCKING);
    if !loops.is_empty() && ratio(blocked, loop_total) >= LOOP_BLOCKED {
        let how = BLOCKING
            .iter()
            .copied()
            .max_by_key(|s| in_callbacks(&[*s]))
            .unwrap_or(State::Sleep);
        let top_of = |of: fn(&Tally) -> &HashMap<FnKey, u64>| {
            let mut m: HashMap<FnKey, u64> = HashMap::new();
            for t in &loops {
                for (k, c) in of(t) {
                    *m.entry(k.clone()).or_insert(0) += c;
                }
            }
            hottest(&m).map(|(k, _)| k)
        };
        // Where it blocks, and the task's own coroutine when that is another function (a
        // blocking library call deep under the task that made it).
        let at = match (top_of(|t| &t.blocking_top), top_of(|t| &t.blocking_task)) {
            (Some(f), Some(task)) if task != f => {
                format!(" in `{}`, in a task running `{}`", f.label(), task.label())
            }
            (Some(f), _) => format!(" in `{}`", f.label()),
            (None, _) => String::new(),
        };
        return Verdict {
            kind: "loop-blocked",
            text: format!(
                "asyncio event loop blocked: {} of the loop's time is spent in blocking calls inside its tasks ({}{at}), and no other task runs meanwhile → await an asyncio form of the call (asyncio.sleep, an async client, asyncio.Lock), or move it to a thread: await asyncio.to_thread(...){note}",
                pct(ratio(blocked, loop_total)),
                how.name(),
            ),
        };
    }
    // The event loops' own share of a state's samples: most of it means asyncio already
    // overlaps that state.
    let on_loops = |s: State| {
        ratio(
            loops.iter().map(|t| t.counts[s.index()]).sum(),
            counts[s.index()],
        )
    };
    if top_share < DOMINANT || group == Group::Other {
        let mut parts: Vec<(State, f64)> = State::ALL
            .iter()
            .map(|s| (*s, share(*s)))
            .filter(|(_, v)| *v >= 0.05)
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let list: Vec<String> = parts
            .iter()
            .map(|(s, v)| format!("{} {}", s.name(), pct(*v)))
            .collect();
        return Verdict {
            kind: "mixed",
            text: format!(
                "no single bottleneck: {} of thread time{note}",
                list.join(", ")
            ),
        };
    }
    let speed_up = |states: &[State]| match hottest_in(states) {
        Some((f, s)) => format!(", or speed up `{f}`, {} of Python time", pct(s)),
        None => String::new(),
    };
    let at = |states: &[State]| match hottest_in(states) {
        Some((f, _)) => format!(" in `{f}`"),
        None => String::new(),
    };
    let cure = if on_loops(State::Python) >= 0.5 {
        "the asyncio event loop runs it between awaits, while every other task waits, and threads will not help; move it to processes (loop.run_in_executor with a ProcessPoolExecutor) or a free-threaded build"
    } else {
        "threads will not help; use processes (ProcessPoolExecutor) or a free-threaded build"
    };
    match group {
        Group::Cpu => {
            let wanting: Vec<&&Tally> = deciding
                .iter()
                .filter(|t| t.share(State::Python) + t.share(State::Gil) >= 0.5)
                .collect();
            let contended = wanting
                .iter()
                .filter(|t| t.share(State::Gil) >= 0.1)
                .count();
            if share(State::Gil) >= CONTENDED && contended >= 2 {
                let n = wanting.len() as f64;
                let held = wanting.iter().map(|t| t.share(State::Python)).sum::<f64>() / n;
                let waits = wanting.iter().map(|t| t.share(State::Gil)).sum::<f64>() / n;
                Verdict {
                    kind: "gil-contention",
                    text: format!(
                        "CPU-bound in Python: {} threads want the GIL, each holds it {} of the time and waits {} → {cure}{}{note}",
                        wanting.len(),
                        pct(held),
                        pct(waits),
                        speed_up(&[State::Python])
                    ),
                }
            } else {
                let n = threads_in(&[State::Python], 0.25).max(1);
                Verdict {
                    kind: "cpu-python",
                    text: format!(
                        "CPU-bound in Python: {} Python {} of the time → {cure}{}{note}",
                        plural(n, "thread runs", "threads run"),
                        pct(share(State::Python)),
                        speed_up(&[State::Python])
                    ),
                }
            }
        }
        Group::Native => {
            let n = threads_in(&[State::Native], 0.25).max(1);
            Verdict {
                kind: "native-parallel",
                text: format!(
                    "native code without the GIL ({}, {} of their time{}): threads already scale; more of them help up to the number of cores{note}",
                    plural(n, "thread", "threads"),
                    pct(share(State::Native)),
                    at(&[State::Native]).replacen(" in", ", called from", 1)
                ),
            }
        }
        Group::Io => {
            let mut m: HashMap<IoKey, u64> = HashMap::new();
            for t in &deciding {
                for (k, c) in &t.io {
                    *m.entry(k.clone()).or_insert(0) += c;
                }
            }
            let top = m.iter().max_by(|a, b| {
                a.1.cmp(b.1)
                    .then_with(|| b.0.2.as_deref().cmp(&a.0.2.as_deref()))
            });
            let (what, detail) = match top {
                Some(((op, kind, peer), _)) => {
                    let what = match kind {
                        Some(FdKind::Socket) => "sockets",
                        Some(FdKind::Pipe) => "pipes",
                        Some(FdKind::Tty) => "terminals",
                        Some(FdKind::File) => "files",
                        Some(FdKind::Event) => "an event loop",
                        None => "I/O",
                    };
                    let detail = match (op, peer) {
                        (IoOp::Recv | IoOp::Read, Some(p)) => format!("{} from {p}", op.name()),
                        (IoOp::Send | IoOp::Write | IoOp::Connect, Some(p)) => {
                            format!("{} to {p}", op.name())
                        }
                        (_, Some(p)) => format!("{} on {p}", op.name()),
                        (_, None) => op.name().to_string(),
                    };
                    (what, detail)
                }
                None => ("I/O", "".to_string()),
            };
            let cure = if on_loops(State::Io) >= 0.5 {
                "the asyncio event loop already overlaps these waits: more tasks in flight (a higher concurrency limit) or a faster peer will help, more threads will not"
            } else {
                "asyncio or more concurrent requests will help"
            };
            Verdict {
                kind: "io",
                text: format!(
                    "I/O-bound: {} of thread time blocked on {what} ({detail}{}) → {cure}{note}",
                    pct(share(State::Io)),
                    at(&[State::Io])
                ),
            }
        }
        Group::Lock => {
            let n = threads_in(&[State::Lock], 0.25).max(1);
            let mut locks: HashMap<u64, u64> = HashMap::new();
            for t in &deciding {
                for (a, c) in &t.locks {
                    *locks.entry(*a).or_insert(0) += c;
                }
            }
            let which = if locks.len() == 1 {
                "one lock".to_string()
            } else {
                format!("{} locks", locks.len())
            };
            Verdict {
                kind: "lock",
                text: format!(
                    "lock-bound: {} on {which} {} of the time (acquired{}) → the code under the lock runs one thread at a time: hold it for less time, or split it{note}",
                    plural(n, "thread waits", "threads wait"),
                    pct(share(State::Lock)),
                    at(&[State::Lock])
                ),
            }
        }
        Group::Sleep => Verdict {
            kind: "sleep",
            text: format!(
                "sleeping: {} of thread time in sleep calls{} → the program waits on purpose; fewer or shorter sleeps will speed it up{note}",
                pct(share(State::Sleep)),
                at(&[State::Sleep])
            ),
        },
        Group::Child => Verdict {
            kind: "child",
            text: format!(
                "waiting for child processes: {} of thread time{} → the work is in the children: diagnose them with -s{note}",
                pct(share(State::Child)),
                at(&[State::Child])
            ),
        },
        Group::Other => unreachable!("handled as mixed above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Frame, ThreadStack};

    fn sample(pid: u32, tid: u32, state: State, func: &str, futex: Option<u64>) -> Sample {
        Sample {
            time: 0.0,
            tick: 0,
            pid,
            stack: ThreadStack {
                thread_id: tid as u64,
                os_thread_id: Some(tid),
                thread_name: Some(format!("T{tid}").into()),
                active: false,
                owns_gil: false,
                gil_requested: false,
                state: Some(ThreadState {
                    state,
                    io: None,
                    futex,
                }),
                frames: vec![Frame::new(
                    func,
                    "/x/demo.py",
                    "demo.py",
                    12,
                    FrameKind::Python,
                )]
                .into(),
            },
        }
    }

    fn add(d: &mut Diagnosis, tid: u32, n: usize, state: State, func: &str, futex: Option<u64>) {
        for _ in 0..n {
            d.add(&sample(1, tid, state, func, futex));
        }
    }

    #[test]
    fn gil_contention_ignores_a_joining_main_thread() {
        let mut d = Diagnosis::new();
        add(&mut d, 1, 100, State::Lock, "join", Some(0x10));
        for tid in 2..6 {
            add(&mut d, tid, 24, State::Python, "is_prime", None);
            add(&mut d, tid, 71, State::Gil, "is_prime", None);
            add(&mut d, tid, 5, State::Native, "is_prime", None);
        }
        let r = d.report(None);
        assert_eq!(r.verdict.kind, "gil-contention", "{}", r.verdict.text);
        assert!(
            r.verdict
                .text
                .contains("4 threads want the GIL, each holds it 24% of the time and waits 71%"),
            "{}",
            r.verdict.text
        );
        assert!(
            r.verdict
                .text
                .contains("`is_prime (demo.py:12)`, 100% of Python time")
        );
        assert_eq!(r.process.samples, 500);
        assert!((r.process.states.lock - 0.2).abs() < 1e-9);
        let sum: f64 = State::ALL.iter().map(|s| r.process.states.get(*s)).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert_eq!(r.threads.len(), 5);
        assert_eq!(r.threads[0].top["lock"], "join (demo.py:12)");
    }

    #[test]
    fn a_shared_lock_is_a_convoy() {
        let mut d = Diagnosis::new();
        add(&mut d, 1, 100, State::Lock, "join", Some(0x10));
        for tid in 2..5 {
            add(&mut d, tid, 75, State::Lock, "Cache.get", Some(0x20));
            add(&mut d, tid, 25, State::Python, "Cache.get", None);
        }
        let r = d.report(None);
        assert_eq!(r.verdict.kind, "lock", "{}", r.verdict.text);
        assert!(
            r.verdict.text.contains(
                "3 threads wait on one lock 75% of the time (acquired in `Cache.get (demo.py:12)`)"
            ),
            "{}",
            r.verdict.text
        );
    }

    #[test]
    fn one_thread_and_simple_kinds() {
        let mut d = Diagnosis::new();
        add(&mut d, 1, 97, State::Python, "f", None);
        add(&mut d, 1, 3, State::Other, "f", None);
        assert_eq!(d.report(None).verdict.kind, "cpu-python");
        for (state, kind) in [
            (State::Native, "native-parallel"),
            (State::Io, "io"),
            (State::Sleep, "sleep"),
            (State::Child, "child"),
        ] {
            let mut d = Diagnosis::new();
            add(&mut d, 1, 100, State::Lock, "join", Some(0x10));
            add(&mut d, 2, 80, state, "g", None);
            add(&mut d, 2, 20, State::Python, "g", None);
            add(&mut d, 3, 80, state, "g", None);
            add(&mut d, 3, 20, State::Python, "g", None);
            assert_eq!(d.report(None).verdict.kind, kind);
        }
        let mut d = Diagnosis::new();
        add(&mut d, 1, 40, State::Io, "a", None);
        add(&mut d, 1, 30, State::Sleep, "a", None);
        add(&mut d, 1, 30, State::Python, "a", None);
        let r = d.report(None);
        assert_eq!(r.verdict.kind, "mixed");
        assert!(
            r.verdict.text.contains("io 40%, python 30%, sleep 30%"),
            "{}",
            r.verdict.text
        );
        // Nothing but waits on locks of their own: a deadlock looks like this, and it is the
        // verdict.
        let mut d = Diagnosis::new();
        add(&mut d, 1, 100, State::Lock, "a", Some(1));
        add(&mut d, 2, 100, State::Lock, "b", Some(2));
        assert_eq!(d.report(None).verdict.kind, "lock");
        assert_eq!(Diagnosis::new().report(None).verdict.kind, "mixed");
    }

    /// A sample of thread `tid` of an asyncio program: `inner` (a function of demo.py) run
    /// by the event loop as 3.12 names its frames, inside a callback or in the loop itself.
    fn loop_sample(tid: u32, state: State, inner: &str, callback: bool) -> Sample {
        let mut s = sample(1, tid, state, inner, None);
        let lib = "/usr/lib/python3.12/asyncio";
        let mut frames = s.stack.frames.to_vec();
        if callback {
            frames.push(Frame::new(
                "Handle._run",
                format!("{lib}/events.py"),
                "asyncio/events.py",
                84,
                FrameKind::Python,
            ));
        }
        for (name, line) in [("BaseEventLoop._run_once", 1922), ("run_forever", 608)] {
            frames.push(Frame::new(
                name,
                format!("{lib}/base_events.py"),
                "asyncio/base_events.py",
                line,
                FrameKind::Python,
            ));
        }
        s.stack.frames = frames.into();
        s
    }

    #[test]
    fn loop_places_by_bare_and_qualified_names() {
        let f = |name: &str, file: &str| Frame::new(name, file, file, 1, FrameKind::Python);
        let base = "/x/lib/python3.10/asyncio/base_events.py";
        let events = "/x/lib/python3.10/asyncio/events.py";
        // ≤3.10 names frames by bare name, 3.11+ by qualified name.
        for (run, run_once) in [
            ("_run", "_run_once"),
            ("Handle._run", "BaseEventLoop._run_once"),
        ] {
            let waiting = [f("select", "/x/selectors.py"), f(run_once, base)];
            assert_eq!(loop_place(&waiting), LoopPlace::Loop);
            let task = [f("work", "/app.py"), f(run, events), f(run_once, base)];
            assert_eq!(loop_place(&task), LoopPlace::Callback(Some(0)));
            let native = Frame::new("recv", "libc.so.6", "libc.so.6", 0, FrameKind::Native);
            let deep = [
                native.clone(),
                f("get", "/http.py"),
                f("fetch", "/app.py"),
                native,
            ];
            let with_loop = [&deep[..], &task[1..]].concat();
            assert_eq!(loop_place(&with_loop), LoopPlace::Callback(Some(2)));
        }
        // Functions of the same name elsewhere, or with it as a mere suffix, are not the loop.
        assert_eq!(
            loop_place(&[f("_run", "/app/events.py"), f("_run_once", "/app/base.py")]),
            LoopPlace::None
        );
        assert_eq!(
            loop_place(&[
                f("my_run_once", base),
                f("_run_once", "/x/asyncio/other.py")
            ]),
            LoopPlace::None
        );
    }

    #[test]
    fn a_task_sleeping_in_the_loop_blocks_it() {
        let mut d = Diagnosis::new();
        for _ in 0..30 {
            d.add(&loop_sample(5, State::Sleep, "blocker", true));
        }
        for _ in 0..60 {
            d.add(&loop_sample(5, State::Io, "EpollSelector.select", false));
        }
        for _ in 0..10 {
            d.add(&loop_sample(5, State::Python, "handler", true));
        }
        let v = d.report_all().verdict;
        assert_eq!(v.kind, "loop-blocked", "{}", v.text);
        assert!(
            v.text
                .starts_with("asyncio event loop blocked: 30% of the loop's time")
                && v.text.contains("(sleep in `blocker (demo.py:12)`)"),
            "{}",
            v.text
        );
        // A blocking call deep in a library names the task's coroutine too.
        let mut d = Diagnosis::new();
        for _ in 0..30 {
            let mut s = loop_sample(5, State::Io, "fetch", true);
            let mut frames = s.stack.frames.to_vec();
            frames.insert(
                0,
                Frame::new(
                    "SocketIO.readinto",
                    "/x/socket.py",
                    "socket.py",
                    9,
                    FrameKind::Python,
                ),
            );
            s.stack.frames = frames.into();
            d.add(&s);
        }
        let v = d.report_all().verdict;
        assert!(
            v.text.contains(
                "(io in `SocketIO.readinto (socket.py:9)`, in a task running `fetch (demo.py:12)`)"
            ),
            "{}",
            v.text
        );
        // Under the threshold the loop's waits decide, and asyncio already overlaps them.
        let mut d = Diagnosis::new();
        for _ in 0..10 {
            d.add(&loop_sample(5, State::Sleep, "blocker", true));
        }
        for _ in 0..90 {
            d.add(&loop_sample(5, State::Io, "EpollSelector.select", false));
        }
        let v = d.report_all().verdict;
        assert_eq!(v.kind, "io", "{}", v.text);
        assert!(
            v.text
                .contains("the asyncio event loop already overlaps these waits"),
            "{}",
            v.text
        );
    }

    #[test]
    fn blocking_outside_a_loop_is_not_a_blocked_loop() {
        // A thread sleeping outside any loop beside an idle loop: the threads' verdicts.
        let mut d = Diagnosis::new();
        add(&mut d, 6, 60, State::Sleep, "nap", None);
        for _ in 0..40 {
            d.add(&loop_sample(5, State::Io, "EpollSelector.select", false));
        }
        let v = d.report_all().verdict;
        assert_eq!(v.kind, "sleep", "{}", v.text);
        // I/O of threads without a loop is still what asyncio would help with.
        let mut d = Diagnosis::new();
        add(&mut d, 6, 60, State::Io, "recv_all", None);
        let v = d.report_all().verdict;
        assert!(
            v.text
                .contains("asyncio or more concurrent requests will help"),
            "{}",
            v.text
        );
    }

    #[test]
    fn cpu_in_a_loops_tasks_says_the_other_tasks_wait() {
        let mut d = Diagnosis::new();
        for _ in 0..90 {
            d.add(&loop_sample(5, State::Python, "crunch", true));
        }
        for _ in 0..10 {
            d.add(&loop_sample(5, State::Io, "EpollSelector.select", false));
        }
        let v = d.report_all().verdict;
        assert_eq!(v.kind, "cpu-python", "{}", v.text);
        assert!(
            v.text
                .contains("the asyncio event loop runs it between awaits"),
            "{}",
            v.text
        );
    }

    #[test]
    fn json_schema() {
        let mut d = Diagnosis::new();
        add(&mut d, 7, 3, State::Sleep, "nap", None);
        add(&mut d, 7, 1, State::Python, "nap", None);
        let v = serde_json::to_value(d.report_all()).unwrap();
        assert_eq!(v["verdict"]["kind"], "sleep");
        assert_eq!(v["process"]["samples"], 4);
        assert_eq!(v["process"]["states"]["sleep"], 0.75);
        assert_eq!(v["process"]["states"].as_object().unwrap().len(), 8);
        let t = &v["threads"][0];
        assert_eq!(
            (t["tid"].as_u64(), t["name"].as_str()),
            (Some(7), Some("T7"))
        );
        assert_eq!(t["top"]["sleep"], "nap (demo.py:12)");
        assert!(v.get("processes").is_none());
    }

    #[test]
    fn several_processes() {
        let mut d = Diagnosis::new();
        add(&mut d, 1, 10, State::Child, "main", None);
        for _ in 0..30 {
            d.add(&sample(2, 9, State::Python, "work", None));
        }
        let r = d.report_all();
        assert_eq!(r.processes.len(), 2);
        assert_eq!(r.processes[0].verdict.kind, "child");
        assert_eq!(r.processes[1].verdict.kind, "cpu-python");
        assert_eq!(r.verdict.kind, "cpu-python");
        assert!(r.text().contains("Process 2: 30 samples: python 100%"));
    }
}
