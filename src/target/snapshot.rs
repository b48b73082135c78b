//! One capture of a target's stacks, shared by `dump`, the sampler and `top`: the Python
//! stacks, and with `--native` the registers, C stacks and their merge, read while the
//! threads are paused; each thread then marked active or idle from its kernel state.

use std::time::{Duration, Instant};

use super::{Target, TargetError, ThreadIndex, ThreadInfo, ThreadState};
use crate::native::merge::{EntryRule, NativeFrame, merge, uncertain_frame};
use crate::native::stack::{NativeStacks, Unwound};
use crate::native::{Frame as UnwoundFrame, Modules};
use crate::python::asyncio::{AsyncTask, find_debug_section};
use crate::python::{
    FrameOptions, Interpreter, Layout, PyError, StackReader, ThreadScratch, Want, find_interpreter,
};
use crate::sample::ThreadStack;

/// Why `--native` and `--nonblocking` cannot go together.
pub const NATIVE_NONBLOCKING: &str = "--native reads each thread's registers, which needs a brief stop: it cannot be used with --nonblocking";

/// How often the memory map may be re-read when an unwind meets code outside every known
/// module that is in an executable mapping prof already read (code made at run time, which
/// reading the map again does not name). Code in a mapping made since is read at once.
const MAPS_REFRESH: Duration = Duration::from_secs(1);
/// How often it is re-read anyway: libraries unloaded since (or replaced by another file at
/// the same place) are then dropped with their symbols and tables, which a target that
/// keeps loading and unloading code would otherwise leave to grow.
const MAPS_SWEEP: Duration = Duration::from_secs(10);

/// Which threads a capture pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// None: stacks are re-checked instead (`--nonblocking`, or the sampler without
    /// `--native`).
    Never,
    /// Every thread, for the moment of the read (`dump`).
    All,
    /// With native stacks, the threads to sample: the running ones, and the idle ones too
    /// with `include_idle`; without native stacks, none (the sampler).
    Sampled {
        /// Idle threads are sampled too (`--idle`).
        include_idle: bool,
    },
}

impl Pause {
    /// Is a thread in `state` paused, when native stacks are taken (`native`) or not?
    fn stops(self, native: bool, state: ThreadState) -> bool {
        match self {
            Pause::Never => false,
            Pause::All => true,
            Pause::Sampled { include_idle } => native && (include_idle || state.is_running()),
        }
    }
}

/// How to capture.
#[derive(Debug, Clone, Copy)]
pub struct CaptureOptions {
    /// How to read Python frames.
    pub frames: FrameOptions,
    /// Which threads to pause.
    pub pause: Pause,
    /// Also read the asyncio tasks (`--async`), in the same pause as the stacks, so the
    /// running task is found on its thread's stack.
    pub async_tasks: bool,
    /// Read the Python stacks of threads not on a CPU too; without it they come with no
    /// frames (the sampler without `--idle`: 990 idle threads of 1000 cost nothing).
    pub idle_stacks: bool,
}

/// What one capture found.
#[derive(Debug, Default)]
pub struct Capture {
    /// Every thread's stack, innermost frame first, with `active` set from its state.
    pub stacks: Vec<ThreadStack>,
    /// Python threads whose stacks could not be read consistently (they are in `stacks`
    /// with no frames).
    pub unread: u64,
    /// With [`CaptureOptions::async_tasks`] on a Python target: its asyncio tasks, or why
    /// they could not be read.
    pub tasks: Option<Result<Vec<AsyncTask>, PyError>>,
}

/// Most pcs remembered as outside every mapping (see [`MapsClock::stray`]).
const STRAY_PCS: usize = 256;

/// The native side: modules, unwinder and symbolizer of one target.
struct NativeSide {
    stacks: NativeStacks,
    clock: MapsClock,
}

/// When the target's memory map is read again.
#[derive(Debug)]
struct MapsClock {
    next_refresh: Instant,
    next_sweep: Instant,
    /// Pcs that no mapping held even in a map read after they were seen: not code but a
    /// wrong return address, which reading the map again will not explain. They wait for
    /// [`MAPS_REFRESH`] like code made at run time. Forgotten at each sweep.
    stray: Vec<u64>,
}

impl MapsClock {
    /// The map was just read, at `now`.
    fn new(now: Instant) -> MapsClock {
        MapsClock {
            next_refresh: now + MAPS_REFRESH,
            next_sweep: now + MAPS_SWEEP,
            stray: Vec::new(),
        }
    }

    /// Is the map to be read again now, given the pcs of this capture that no module
    /// knows and whether a pc is in an executable range of the map last read? At once for
    /// a pc outside every such range (a library loaded since, even where one was unloaded
    /// since the last read): waiting for the refresh would show it as a bare address.
    fn due(&self, now: Instant, unknown: &[u64], mapped: impl Fn(u64) -> bool) -> bool {
        now >= self.next_sweep
            || (!unknown.is_empty() && now >= self.next_refresh)
            || unknown
                .iter()
                .any(|&pc| !mapped(pc) && !self.stray.contains(&pc))
    }

    /// The map was read again at `now` for a capture with these `unknown` pcs; `mapped`
    /// tells by the new map.
    fn read(&mut self, now: Instant, unknown: &[u64], mapped: impl Fn(u64) -> bool) {
        if now >= self.next_sweep {
            self.stray.clear();
            self.next_sweep = now + MAPS_SWEEP;
        }
        if !unknown.is_empty() {
            self.next_refresh = now + MAPS_REFRESH;
        }
        for &pc in unknown {
            if !mapped(pc) && !self.stray.contains(&pc) && self.stray.len() < STRAY_PCS {
                self.stray.push(pc);
            }
        }
    }
}

/// A target with its readers: the Python reader (None for a program without Python) and,
/// once [`Snapshot::enable_native`] is called, the native unwinder.
pub struct Snapshot<T: Target> {
    target: T,
    python: Option<StackReader<T::Mem>>,
    native: Option<NativeSide>,
    /// The threads of the last capture by tid.
    index: ThreadIndex,
    /// Python threads of the last capture whose kernel ids were not found (before 3.11 a
    /// kernel id is looked up in the listing): a new one among them asks for a listing.
    unresolved: Vec<u64>,
}

impl<T: Target> Snapshot<T> {
    /// Find the Python interpreter of `target`.
    pub fn attach(target: T) -> Result<Snapshot<T>, TargetError> {
        Snapshot::try_attach(target).map_err(|(e, _)| e)
    }

    /// Find the Python interpreter of `target`; with `native`, a target without one is
    /// taken as a native program.
    pub fn attach_or_native(target: T, native: bool) -> Result<Snapshot<T>, TargetError> {
        match Snapshot::try_attach(target) {
            Ok(s) => Ok(s),
            Err((e, target)) if native && e.is_not_python() => Ok(Snapshot::native_only(target)),
            Err((e, _)) => Err(e),
        }
    }

    fn try_attach(target: T) -> Result<Snapshot<T>, (TargetError, T)> {
        let found = target
            .maps()
            .and_then(|maps| find_interpreter(&target, &maps).map_err(|e| target.classify(e)));
        match found {
            Ok(interp) => Ok(Snapshot {
                python: Some(StackReader::new(target.reader_memory(), interp)),
                target,
                native: None,
                index: ThreadIndex::default(),
                unresolved: Vec::new(),
            }),
            Err(e) => Err((e, target)),
        }
    }

    /// `target` as a program without Python (native stacks only).
    pub fn native_only(target: T) -> Snapshot<T> {
        Snapshot {
            target,
            python: None,
            native: None,
            index: ThreadIndex::default(),
            unresolved: Vec::new(),
        }
    }

    /// The target.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// The target, to list its threads.
    pub fn target_mut(&mut self) -> &mut T {
        &mut self.target
    }

    /// The threads of the last capture by tid: ask it about the listing given to
    /// [`Snapshot::capture`].
    pub fn thread_index(&self) -> &ThreadIndex {
        &self.index
    }

    /// [`Snapshot::thread_index`], and the target, to read more of the threads.
    pub fn index_and_target(&mut self) -> (&ThreadIndex, &mut T) {
        (&self.index, &mut self.target)
    }

    /// The interpreter, if the target runs Python.
    pub fn interpreter(&self) -> Option<&Interpreter> {
        self.python.as_ref().map(|r| r.interpreter())
    }

    /// Are native stacks taken?
    pub fn has_native(&self) -> bool {
        self.native.is_some()
    }

    /// Load the modules of the target's memory map, to take native stacks from now on.
    pub fn enable_native(&mut self) -> Result<(), TargetError> {
        if self.native.is_some() {
            return Ok(());
        }
        let t = &self.target;
        let maps = t.maps()?;
        let mut modules = Modules::new();
        modules.set_vdso_address(t.vdso_address());
        modules.update(&maps, |m| t.open_image(m), t.memory(), t.page_size());
        self.native = Some(NativeSide {
            stacks: NativeStacks::new(modules, maps),
            clock: MapsClock::new(Instant::now()),
        });
        Ok(())
    }

    /// Unwind and symbolize every thread once, dropping the result: this loads the
    /// modules' unwind tables and the symbols of the code on the stacks, so that a
    /// sampler's first ticks are not late.
    pub fn warm_native(&mut self) {
        let Ok(threads) = self.target.threads(false) else {
            return;
        };
        let opts = CaptureOptions {
            frames: FrameOptions::default(),
            pause: Pause::Sampled { include_idle: true },
            async_tasks: false,
            idle_stacks: true,
        };
        let python = self.python.take();
        let _ = self.capture(&threads, &opts);
        self.python = python;
    }

    /// Every thread's stack: Python stacks read (and with native stacks enabled, the
    /// paused threads unwound) while the threads `opts.pause` selects are paused, then
    /// merged; `active` from `threads`' states (read before anything was paused, so
    /// prof's own stop is never taken for the thread's state).
    pub fn capture(
        &mut self,
        threads: &[ThreadInfo],
        opts: &CaptureOptions,
    ) -> Result<Capture, TargetError> {
        self.index.update(threads);
        let index = &self.index;
        let tids = index.tids();
        let idle = opts.idle_stacks || opts.async_tasks;
        // A thread on a CPU is read; one not on a CPU is left out, or, when wanted, handed
        // out again if it has not run since it was read (kept when that is not known yet).
        // One the listing does not have started since: it is read, its state learned below.
        let want = |tid: u32| match index.get(threads, tid) {
            Some(t) if t.state.is_running() => Want::Read,
            None => Want::Read,
            _ if !idle => Want::Skip,
            Some(t) if t.state != ThreadState::Unknown => Want::Reuse(t.still_since),
            _ => Want::Read,
        };
        // Every stack is read when idle ones are wanted and no state is known: without the
        // per-thread lookups, which were a visible share of a tick on small targets.
        let unknown = idle && threads.iter().all(|t| t.state == ThreadState::Unknown);
        let want: Option<&dyn Fn(u32) -> Want> = if unknown { None } else { Some(&want) };
        let native = self.native.is_some();
        let mut stop: Vec<u32> = threads
            .iter()
            .filter(|t| opts.pause.stops(native, t.state))
            .map(|t| t.tid)
            .collect();
        // Threads are listed on a timer: those started since are sampled from their first
        // tick all the same, paused and unwound like the listed ones when those are, with
        // their states read now (when states are read at all); the next tick lists them.
        let states_known = threads.iter().any(|t| t.state != ThreadState::Unknown);
        let pausing = opts.pause.stops(native, ThreadState::Running);
        let mut unlisted: Vec<(u32, ThreadState)> = Vec::new();
        // `unlisted` has every unlisted thread of the stacks read.
        let mut unlisted_read = false;
        let mut list_again = false;
        // A listing taken during this capture, for threads whose kernel ids only a listing
        // tells (before 3.11).
        let mut listed: Option<Vec<u32>> = None;
        let before = self.python.as_ref().map_or(0, |r| r.errors());
        let (python, mut pcs, tasks) = {
            let _paused = if stop.is_empty() {
                None
            } else {
                Some(self.target.pause(&stop)?)
            };
            let mut python = self
                .python
                .as_mut()
                .map(|r| r.stacks(tids, opts.frames, want));
            let mut more: Vec<u32> = Vec::new();
            if let (Some(r), Some(Ok(stacks))) = (&mut self.python, &mut python) {
                if has_new_unresolved(stacks, &self.unresolved)
                    && let Some(l) = self.target.list_now()
                {
                    r.resolve_tids(stacks, &l);
                    listed = Some(l);
                }
                if pausing {
                    list_again |=
                        read_unlisted(&mut self.target, index, threads, stacks, &mut unlisted);
                    unlisted_read = true;
                    // Only a thread whose state was read is one of the target's: a kernel
                    // id read from its memory is not trusted with a stop.
                    more.extend(
                        unlisted
                            .iter()
                            .filter(|u| {
                                u.1 != ThreadState::Unknown && opts.pause.stops(native, u.1)
                            })
                            .map(|u| u.0),
                    );
                }
            }
            // Those to pause are paused with the others, and every stack read again, so that
            // each is read in the same stop as it is unwound (only when a thread starts).
            let _more = match more.is_empty() {
                true => None,
                false => self.target.pause(&more).ok(),
            };
            if let (Some(_), Some(r)) = (&_more, &mut self.python) {
                stop.extend_from_slice(&more);
                r.forget_failures();
                python = Some(r.stacks(listed.as_deref().unwrap_or(tids), opts.frames, want));
                unlisted_read = false;
            }
            let target = &self.target;
            let tasks = match (&mut self.python, &python) {
                (Some(r), Some(Ok(_))) if opts.async_tasks => {
                    Some(r.async_tasks(opts.frames, || {
                        find_debug_section(&target.maps().ok()?, |m| target.open_image(m))
                    }))
                }
                _ => None,
            };
            // Only the unwinds need the stop; symbolizing (which may load DWARF) comes
            // after.
            let pcs: Vec<Option<Unwound>> = match &mut self.native {
                Some(n) => stop
                    .iter()
                    .map(|&tid| {
                        let regs = self.target.registers(tid).ok()?;
                        Some(n.stacks.unwind(self.target.memory(), &regs))
                    })
                    .collect(),
                None => Vec::new(),
            };
            (python, pcs, tasks)
        };
        if let Some(n) = &mut self.native {
            // After the threads run again: re-reading the maps is slow. A stack's first
            // unknown pc tells whether the map changed; the unwind found it already.
            let unknown: Vec<u64> = pcs.iter().flatten().filter_map(Unwound::unknown).collect();
            let now = Instant::now();
            if n.clock.due(now, &unknown, |pc| n.stacks.mapped(pc))
                && let Some(maps) = self.target.maps_changed()
            {
                n.stacks
                    .update_maps(self.target.pid(), maps, self.target.memory());
                n.clock.read(now, &unknown, |pc| n.stacks.mapped(pc));
                for u in pcs.iter_mut().flatten() {
                    n.stacks.unwind_again(u);
                }
            }
        }
        let pcs: Vec<Vec<UnwoundFrame>> = pcs
            .into_iter()
            .map(|u| u.map(|u| u.frames).unwrap_or_default())
            .collect();
        let mut stacks = match python {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(self.target.classify(e)),
            None => Vec::new(),
        };
        let unread = self.python.as_ref().map_or(0, |r| r.errors()) - before;
        if states_known && !unlisted_read {
            list_again |= read_unlisted(&mut self.target, index, threads, &stacks, &mut unlisted);
        }
        if stacks.iter().any(|s| s.os_thread_id.is_none()) || !self.unresolved.is_empty() {
            let mut was = std::mem::take(&mut self.unresolved);
            was.sort_unstable();
            self.unresolved.extend(
                stacks
                    .iter()
                    .filter(|s| s.os_thread_id.is_none())
                    .map(|s| s.thread_id),
            );
            list_again |= self
                .unresolved
                .iter()
                .any(|id| was.binary_search(id).is_err());
        }
        // Unless a listing was just taken: it has them.
        if list_again && listed.is_none() {
            self.target.list_again();
        }
        // An unlisted thread's state is told only where the listed ones' are.
        let state = |tid: u32| match index.get(threads, tid) {
            Some(t) => t.state,
            None if states_known => unlisted
                .iter()
                .find(|u| u.0 == tid)
                .map_or(ThreadState::Unknown, |u| u.1),
            None => ThreadState::Unknown,
        };
        if let Some(n) = &mut self.native
            && !stop.is_empty()
        {
            let py = self.python.as_ref().map(|r| PythonSide {
                layout: &r.interpreter().layout,
                rule: if r.interpreter().layout.eval_runs_entry_chain() {
                    EntryRule::EntryFlag
                } else {
                    EntryRule::PerFrame
                },
                threads: r.last_threads(),
            });
            let target = &self.target;
            merge_all(
                &mut n.stacks,
                &mut stacks,
                &stop,
                &pcs,
                py.as_ref(),
                |tid| native_thread(tid, state(tid), target.thread_name(tid)),
            );
        }
        for s in &mut stacks {
            s.active = s.os_thread_id.is_some_and(|t| state(t).is_running());
        }
        Ok(Capture {
            stacks,
            unread,
            tasks,
        })
    }
}

/// Does a thread of `stacks` have no kernel id, and was it not already without one in
/// the last capture (`unresolved`)?
fn has_new_unresolved(stacks: &[ThreadStack], unresolved: &[u64]) -> bool {
    stacks
        .iter()
        .any(|s| s.os_thread_id.is_none() && !unresolved.contains(&s.thread_id))
}

/// Add to `unlisted` the threads of `stacks` whose kernel ids the listing `threads` lacks
/// (started since it was taken), each with its state read now, unless there already. True
/// when one of them could be read: it is there, and the next listing has it.
fn read_unlisted<T: Target>(
    target: &mut T,
    index: &ThreadIndex,
    threads: &[ThreadInfo],
    stacks: &[ThreadStack],
    unlisted: &mut Vec<(u32, ThreadState)>,
) -> bool {
    let mut found = false;
    for s in stacks {
        if let Some(tid) = s.os_thread_id
            && index.get(threads, tid).is_none()
            && !unlisted.iter().any(|u| u.0 == tid)
        {
            // Gone if it cannot be read (then no listing is asked for: it would not be
            // in it).
            let st = target.unlisted_state(tid);
            found |= st != ThreadState::Unknown;
            unlisted.push((tid, st));
        }
    }
    found
}

/// What the Python reader says about the stacks it returned, for the merge.
struct PythonSide<'a> {
    /// The interpreter's layout: it names the eval loop.
    layout: &'a Layout,
    /// How eval-loop frames map to Python frames.
    rule: EntryRule,
    /// Per stack: the `is_entry` flag of each Python frame, and the addresses of its
    /// interpreter entry frames (3.12+), which sit on the C stack of the eval-loop call
    /// that runs them.
    threads: &'a [ThreadScratch],
}

/// Merge the Python stacks of the threads `stopped` (whose unwound frames are `pcs`, in
/// the same order) with their native frames, and add the stopped threads the interpreter
/// does not know (every thread of a native program, threads started from C), made by
/// `thread`, with native frames only. A Python thread that was not stopped (idle, not
/// sampled) keeps its Python frames; one whose kernel id is unknown is kept and marked
/// uncertain.
fn merge_all(
    natives: &mut NativeStacks,
    stacks: &mut Vec<ThreadStack>,
    stopped: &[u32],
    pcs: &[Vec<UnwoundFrame>],
    py: Option<&PythonSide>,
    thread: impl Fn(u32) -> ThreadStack,
) {
    if let Some(py) = py {
        for (i, s) in stacks.iter_mut().enumerate() {
            match s.os_thread_id {
                Some(tid) => {
                    if let Some(k) = stopped.iter().position(|&x| x == tid) {
                        merge_into(natives, s, i, Some(&pcs[k]), py);
                    }
                }
                None => merge_into(natives, s, i, None, py),
            }
        }
    }
    for (k, &tid) in stopped.iter().enumerate() {
        if !stacks.iter().any(|s| s.os_thread_id == Some(tid)) {
            let mut t = thread(tid);
            t.frames = natives
                .symbolize(&pcs[k])
                .into_iter()
                .flat_map(|n| n.frames)
                .collect();
            stacks.push(t);
        }
    }
}

/// Replace `stack`'s Python frames by their merge with the thread's native frames `pcs`;
/// `i` is the stack's index in the Python reader's result. `pcs` is None for a thread
/// whose kernel id is unknown: its stack is kept and marked uncertain.
fn merge_into(
    natives: &mut NativeStacks,
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
    let thread = py.threads.get(i);
    let flags = thread.map_or(&[][..], ThreadScratch::entry_flags);
    let mut native = natives.symbolize(pcs);
    for nf in native.iter_mut() {
        nf.eval = nf
            .frames
            .iter()
            .any(|f| py.layout.is_eval_function(f.name()));
    }
    if let Some(t) = thread {
        mark_eval_frames(&mut native, pcs, t.entry_frame_addresses());
    }
    stack.frames = merge(&native, &stack.frames, flags, py.rule).into();
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
fn native_thread(tid: u32, state: ThreadState, name: Option<String>) -> ThreadStack {
    ThreadStack {
        thread_id: tid as u64,
        os_thread_id: Some(tid),
        thread_name: name.map(Into::into),
        active: state.is_running(),
        owns_gil: false,
        gil_requested: false,
        state: None,
        frames: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The executable ranges of a map read: `[0x1000, 0x2000)` is a library, `[0x5000,
    /// 0x6000)` code made at run time (no module knows either pc below; what matters is
    /// whether the map shows them).
    fn in_exec(ranges: &'static [(u64, u64)]) -> impl Fn(u64) -> bool {
        move |pc| ranges.iter().any(|&(a, b)| a <= pc && pc < b)
    }

    #[test]
    fn code_in_a_mapping_made_since_the_last_read_has_the_map_read_at_once() {
        let t0 = Instant::now();
        let mut c = MapsClock::new(t0);
        let before: &[(u64, u64)] = &[(0x5000, 0x6000)];
        let t1 = t0 + Duration::from_millis(10);
        assert!(!c.due(t1, &[], in_exec(before)), "nothing unknown");
        // A library loaded since: its pc is in no range of the last read.
        assert!(c.due(t1, &[0x1800], in_exec(before)));
        c.read(
            t1,
            &[0x1800],
            in_exec(&[(0x1000, 0x2000), (0x5000, 0x6000)]),
        );
        // Another, loaded right after that read: at once again, not after MAPS_REFRESH.
        let t2 = t1 + Duration::from_millis(5);
        assert!(c.due(t2, &[0x9000], in_exec(&[(0x1000, 0x2000)])));
    }

    #[test]
    fn code_the_map_already_shows_waits_for_the_refresh() {
        let t0 = Instant::now();
        let mut c = MapsClock::new(t0);
        let map = in_exec(&[(0x5000, 0x6000)]);
        let soon = t0 + MAPS_REFRESH / 2;
        assert!(
            !c.due(soon, &[0x5800], &map),
            "run-time code, read just now"
        );
        let later = t0 + MAPS_REFRESH;
        assert!(c.due(later, &[0x5800], &map));
        c.read(later, &[0x5800], &map);
        assert!(!c.due(later + MAPS_REFRESH / 2, &[0x5800], &map));
    }

    #[test]
    fn a_pc_no_map_explains_is_not_read_for_again_until_the_refresh() {
        let t0 = Instant::now();
        let mut c = MapsClock::new(t0);
        let map = in_exec(&[(0x1000, 0x2000)]);
        let t1 = t0 + Duration::from_millis(1);
        assert!(
            c.due(t1, &[0xdead_0000], &map),
            "might be a library loaded since"
        );
        c.read(t1, &[0xdead_0000], &map);
        let t2 = t1 + Duration::from_millis(1);
        assert!(
            !c.due(t2, &[0xdead_0000], &map),
            "the new map did not show it"
        );
        assert!(
            c.due(t2, &[0xbeef_0000], &map),
            "another pc is asked about once"
        );
        // The sweep forgets it: by then a library may have come there.
        let swept = t0 + MAPS_SWEEP;
        assert!(c.due(swept, &[], &map));
        c.read(swept, &[], &map);
        assert!(c.due(swept + Duration::from_millis(1), &[0xdead_0000], &map));
    }

    #[test]
    fn the_map_is_swept_on_its_timer_with_nothing_unknown() {
        let t0 = Instant::now();
        let mut c = MapsClock::new(t0);
        let map = in_exec(&[]);
        assert!(!c.due(t0 + MAPS_SWEEP / 2, &[], &map));
        assert!(c.due(t0 + MAPS_SWEEP, &[], &map));
        c.read(t0 + MAPS_SWEEP, &[], &map);
        assert!(!c.due(t0 + MAPS_SWEEP + MAPS_SWEEP / 2, &[], &map));
    }
}
