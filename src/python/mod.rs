//! The Python reader: from a process's memory to its Python threads and stacks.

pub mod asyncio;
pub mod batch;
pub mod code;
pub mod discover;
pub mod frames;
pub mod layout;
pub mod linetable;
pub mod locals;
pub mod objects;
pub mod threads;

use foldhash::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::process::{Memory, MemoryError, Overlay};
use crate::sample::{Frame, Frames, ThreadStack};
pub use discover::{Interpreter, find_interpreter};
pub use frames::FrameOptions;
pub use layout::{Layout, LayoutError, Version};

/// Why a Python stack could not be read.
#[derive(Debug, Error)]
pub enum PyError {
    /// A read of the target failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// What was read makes no sense (the target changed under us, or is not what we think).
    #[error("inconsistent interpreter data: {0}")]
    Corrupt(&'static str),
    /// The process has no Python interpreter.
    #[error("{0}")]
    NotPython(String),
    /// An interpreter was found but its version could not be determined.
    #[error("found a Python interpreter in {0} but could not tell its version")]
    UnknownVersion(String),
    /// The version is not one prof can read.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// `--async` on an interpreter whose asyncio tasks prof cannot read.
    #[error(transparent)]
    TasksUnsupported(#[from] asyncio::TasksUnsupported),
}

/// How often thread names are read again from `threading._active`.
const NAMES_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// How often names are looked for again while a thread has none: a thread gets its name
/// only once it registers with `threading` (the main thread when `threading` is imported),
/// which may be after prof first sees it.
const NAMES_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Bound on cached per-thread facts; cleared wholesale when exceeded.
const MAX_THREADS_CACHED: usize = 65536;

/// What one sample wants of a thread's stack (see [`StackReader::stacks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Read it.
    Read,
    /// Leave it out: it comes with no frames.
    Skip,
    /// Hand out again the stack read after this moment, since which the thread has not run
    /// (it cannot have changed its stack); read it (and keep it for the next sample) when
    /// there is none, or when the moment is not known.
    Reuse(Option<std::time::Instant>),
}

/// A thread's stack kept for [`Want::Reuse`], with what it belongs to.
struct Kept {
    /// The thread: its thread state's address, Python thread id and kernel id.
    tstate: u64,
    thread_id: u64,
    tid: Option<u32>,
    /// When the sample that read it started (before its read).
    at: std::time::Instant,
    /// The GIL's hands at the start of the batch that copied it (or of a later one that
    /// found it still), when the thread was not their last holder then and the stack is
    /// consistent: while a later batch starts with hands the thread is still since (see
    /// [`batch::Epoch::still_since`]), the thread has not run Python code, and the stack
    /// stands.
    epoch: Option<batch::Epoch>,
    frames: Frames,
}

/// What the reader keeps of one thread between samples: what the last sample found, and
/// buffers reused so that a warmed-up reader does not allocate.
#[derive(Default)]
pub struct ThreadScratch {
    /// Its last stack, for [`Want::Reuse`]; dropped when a sample reads the thread without
    /// keeping, or leaves it out (the flags and addresses beside it then change too).
    kept: Option<Kept>,
    /// The frames walked this sample.
    walked: Vec<frames::RawFrame>,
    /// The second copy of [`frames::second_look`].
    second: Vec<(u64, Vec<u8>)>,
    /// The innermost frame pointer the walk started from (None: walk failed).
    first: Option<u64>,
    /// The walk stopped at [`frames::MAX_DEPTH`] with more frames beyond.
    beyond: bool,
    /// The previous sample's frames (see [`frames::resolve_remembering`]).
    memo: frames::Memo,
    /// The `is_entry` flag of each frame of the last result.
    entries: Vec<bool>,
    /// Addresses of its interpreter entry frames (3.12+).
    entry_addrs: Vec<u64>,
    /// Its Python thread id and the addresses of its Python frames, which tell which
    /// asyncio task runs on it (see `asyncio`).
    thread_id: u64,
    frame_addrs: Vec<u64>,
    /// What its last consistent stack was read from (see [`frames::Steady`]).
    steady: frames::Steady,
    /// This sample's copy showed that stack's callers unchanged: only the innermost frame
    /// was decoded again.
    settled: bool,
    /// The regions its walk read outside its data-stack chunks (see
    /// [`frames::regions_outside`]).
    regions: Vec<(u64, u64)>,
    /// What its last second look worked out, for the same walked frames.
    layout: frames::LookLayout,
}

impl Kept {
    /// Does the batch that found thread `t` at the GIL's hands `now` show this stack still?
    fn stands(&self, t: &threads::PyThread, now: Option<batch::Epoch>) -> bool {
        self.tstate == t.tstate
            && self.thread_id == t.thread_id
            && self
                .epoch
                .zip(now)
                .is_some_and(|(kept, now)| now.still_since(&kept, self.tstate))
    }

    /// Would this stack stand if the next batch found the GIL's hands as they were at
    /// `last` (exactly)? A guess, which the batch then checks.
    fn would_stand(&self, last: batch::Epoch) -> bool {
        self.epoch
            .is_some_and(|kept| last.assumed_exact().still_since(&kept, self.tstate))
    }
}

impl ThreadScratch {
    /// The `is_entry` flag of each frame of the thread's last stack (see
    /// [`frames::RawFrame::is_entry`]).
    pub fn entry_flags(&self) -> &[bool] {
        &self.entries
    }

    /// The addresses of the thread's interpreter-owned entry frames (3.12+). They live on
    /// the C stack of the eval loop's native frame, which identifies that frame even in
    /// binaries without its symbol.
    pub fn entry_frame_addresses(&self) -> &[u64] {
        &self.entry_addrs
    }
}

impl frames::Look for ThreadScratch {
    fn parts(&mut self) -> (&[frames::RawFrame], &mut Vec<(u64, Vec<u8>)>) {
        (&self.walked, &mut self.second)
    }

    fn fit_known(&self) -> bool {
        self.settled && self.steady.fit()
    }

    fn layout(&mut self) -> Option<&mut frames::LookLayout> {
        Some(&mut self.layout)
    }
}

/// What [`StackReader::stacks`] decides per thread, in its order: what the caller wants of
/// the thread's stack, whether its kept stack is handed out again, whether it is read,
/// whether the batch vouches for it, whether it gets a second look, and whether it stood
/// that look.
#[derive(Default)]
struct Verdicts {
    /// By position in the last sample's list: left out of the batch because not wanted or
    /// likely handed out again; likely still since its kept stack (the GIL's hands have not
    /// changed since); either, as the batch left them out.
    skip: Vec<bool>,
    still: Vec<bool>,
    left_out: Vec<bool>,
    wants: Vec<Want>,
    reused: Vec<bool>,
    read: Vec<bool>,
    vouched: Vec<bool>,
    wanted: Vec<bool>,
    looked: Vec<bool>,
}

/// Reads Python threads and stacks from any [`Memory`]: a live process or a core file.
pub struct StackReader<M: Memory> {
    mem: M,
    interp: Interpreter,
    codes: code::CodeCache,
    names: HashMap<u64, Arc<str>>,
    /// Thread ids that had no name at the last lookup, so unnamed threads (started through
    /// `_thread`, or not registered with `threading` yet) cost a full `threading._active`
    /// walk every [`NAMES_RETRY`], not on every sample.
    unnamed: Vec<u64>,
    /// The last lookup of names, and the last one that started afresh.
    names_read: std::time::Instant,
    names_renewed: std::time::Instant,
    tid_offset: Option<u64>,
    pthread_tids: HashMap<u64, u32>,
    raw: Vec<frames::RawFrame>,
    chunks: Vec<(u64, Vec<u8>)>,
    plan: Option<batch::Plan>,
    errors: u64,
    /// Threads whose stack could not be read in the last sample (thread state, thread id):
    /// counted as errors only if the next sample still finds them, since a thread that
    /// exited while it was read was not misread; it is gone.
    failed: Vec<(u64, u64)>,
    /// Per thread of the last sample, in its order: what the reader keeps of it, reused
    /// between samples.
    scratch: Vec<ThreadScratch>,
    /// The slow path's second copy (see [`frames::second_look`]), reused between samples.
    second: Vec<(u64, Vec<u8>)>,
    /// What [`frames::second_look`] keeps between samples.
    look: frames::LookScratch,
    /// Each thread's kernel id at the last sample, in its order (see `keep` in
    /// [`StackReader::stacks`]), and the list before it, reused.
    last_tids: Vec<Option<u32>>,
    spare_tids: Vec<Option<u32>>,
    /// Per-thread lists of [`StackReader::stacks`], reused between samples.
    verdicts: Verdicts,
    /// Scratch list for the plan's regions, reused between samples.
    spans: Vec<(u64, u64)>,
    /// What the asyncio task reader keeps between samples (`--async`).
    asyncio: asyncio::TaskCache,
    /// The GIL's hands at the start of the last batch (see [`Kept::epoch`]), and whether
    /// they had changed at most once since the batch before: only then are stacks left out
    /// on the guess that the GIL has not changed hands since, or once (at `-r 100` it
    /// changes hands more often than that, most ticks, and every wrong guess reads the
    /// batch twice).
    epoch: Option<batch::Epoch>,
    epoch_held: bool,
}

impl<M: Memory> StackReader<M> {
    /// A reader for the interpreter found in `mem`.
    pub fn new(mem: M, interp: Interpreter) -> StackReader<M> {
        let codes = code::CodeCache::new(interp.code_type);
        StackReader {
            mem,
            interp,
            codes,
            names: HashMap::default(),
            unnamed: Vec::new(),
            names_read: std::time::Instant::now(),
            names_renewed: std::time::Instant::now(),
            tid_offset: None,
            pthread_tids: HashMap::default(),
            raw: Vec::new(),
            chunks: Vec::new(),
            plan: None,
            errors: 0,
            failed: Vec::new(),
            scratch: Vec::new(),
            second: Vec::new(),
            look: frames::LookScratch::default(),
            last_tids: Vec::new(),
            spare_tids: Vec::new(),
            verdicts: Verdicts::default(),
            spans: Vec::new(),
            asyncio: asyncio::TaskCache::default(),
            epoch: None,
            epoch_held: false,
        }
    }

    /// The interpreter being read.
    pub fn interpreter(&self) -> &Interpreter {
        &self.interp
    }

    /// The memory being read.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Every Python thread with its stack, innermost frame first. `tids` are the process's
    /// kernel thread ids (for versions whose thread states do not record them). With
    /// `want`, what to do with each thread's stack, by kernel id (a thread whose kernel id
    /// is not known is read): the stacks of idle threads cost nothing when nobody wants
    /// them, and little when their threads have not run since they were last read.
    pub fn stacks(
        &mut self,
        tids: &[u32],
        opts: FrameOptions,
        want: Option<&dyn Fn(u32) -> Want>,
    ) -> Result<Vec<ThreadStack>, PyError> {
        let started = std::time::Instant::now();
        let mut v = std::mem::take(&mut self.verdicts);
        // Which stacks the batch leaves out, by each thread's kernel id at the last sample:
        // those not wanted, and those likely handed out again (a stack read outside the
        // batch costs reads of its own, and the batch's vouching for every other).
        v.skip.clear();
        if let Some(w) = want {
            v.skip
                .extend(self.last_tids.iter().zip(&self.scratch).map(|(t, s)| {
                    t.is_some_and(|t| match w(t) {
                        Want::Read => false,
                        Want::Skip => true,
                        Want::Reuse(since) => s.kept.as_ref().is_some_and(|k| {
                            k.tid == Some(t) && since.is_some_and(|since| k.at > since)
                        }),
                    })
                }));
        }
        // And those whose kept stack the last batch found still, when the GIL stayed with
        // one holder over the last two batches: it has likely not changed hands since, and
        // the batch tells (see batch::Epoch).
        let last_epoch = self.epoch.filter(|_| self.epoch_held);
        v.still.clear();
        v.still.extend(self.scratch.iter().map(|s| {
            last_epoch.is_some_and(|last| s.kept.as_ref().is_some_and(|k| k.would_stand(last)))
        }));
        v.left_out.clear();
        v.left_out
            .extend((0..self.scratch.len()).map(|i| v.still[i] || v.skip.get(i) == Some(&true)));
        let (mut threads, mut chunks, mut still, mut epoch) =
            self.read_threads(opts.validate, &mut v.left_out)?;
        let mut retries = 0;
        loop {
            // Left out on that guess, and it was wrong: read again.
            let wrong = |i: usize| {
                v.left_out.get(i) == Some(&true)
                    && v.skip.get(i) != Some(&true)
                    && !self.scratch[i]
                        .kept
                        .as_ref()
                        .is_some_and(|k| k.stands(&threads[i], epoch))
            };
            if !(0..threads.len()).any(wrong) {
                break;
            }
            if let Some(plan) = &mut self.plan {
                plan.recycle(threads, chunks);
            }
            // First with the threads the hands this batch saw would show still: when the
            // GIL went to one thread left out, only that one (and those read anyway) is
            // read again, not every stack. Then, if the GIL moved on meanwhile, all.
            retries += 1;
            for i in 0..v.left_out.len() {
                let keep = retries == 1
                    && v.left_out[i]
                    && epoch.is_some_and(|e| {
                        self.scratch[i]
                            .kept
                            .as_ref()
                            .is_some_and(|k| k.would_stand(e))
                    });
                v.left_out[i] = keep || v.skip.get(i) == Some(&true);
            }
            (threads, chunks, still, epoch) = self.read_threads(opts.validate, &mut v.left_out)?;
        }
        self.epoch_held = epoch
            .zip(self.epoch)
            .is_some_and(|(now, last)| now.follows(&last));
        self.epoch = epoch;
        let still_there = self
            .failed
            .iter()
            .filter(|&&(ts, id)| threads.iter().any(|t| t.tstate == ts && t.thread_id == id))
            .count();
        self.errors += still_there as u64;
        self.failed.clear();
        let mut os_tids = std::mem::take(&mut self.spare_tids);
        os_tids.clear();
        for t in &threads {
            let tid = t
                .native_id
                .or_else(|| self.tid_from_pthread(t.thread_id, tids));
            os_tids.push(tid);
        }
        v.wants.clear();
        v.wants.extend(os_tids.iter().map(|t| match (want, t) {
            (Some(w), Some(t)) => w(*t),
            _ => Want::Read,
        }));
        self.scratch.resize_with(threads.len(), Default::default);
        // Handed out again: a thread that has not run since its kept stack was read, and
        // does not hold the GIL now (a thread woken moments ago may not have had its time
        // counted yet, but it runs Python only with the GIL); or one the batch left out
        // whose kept stack the GIL's hands show still.
        v.reused.clear();
        v.reused.extend((0..threads.len()).map(|i| {
            let (t, s) = (&threads[i], &self.scratch[i]);
            let same = |k: &Kept| {
                k.tstate == t.tstate && k.thread_id == t.thread_id && k.tid == os_tids[i]
            };
            let by_state = matches!(v.wants[i], Want::Reuse(Some(since))
            if !t.holds_gil && s.kept.as_ref().is_some_and(|k| k.at > since && same(k)));
            let by_gil = v.wants[i] != Want::Skip
                && v.left_out.get(i) == Some(&true)
                && s.kept
                    .as_ref()
                    .is_some_and(|k| k.stands(t, epoch) && same(k));
            by_state || by_gil
        }));
        v.read.clear();
        v.read
            .extend((0..threads.len()).map(|i| v.wants[i] != Want::Skip && !v.reused[i]));
        let (read, reused) = (&v.read, &v.reused);
        // A shared handle, so the caches below can be borrowed mutably while it is in use.
        let layout = Arc::clone(&self.interp.layout);
        let l = &*layout;
        let n = threads.len();
        let reads_before = self.mem.reads();
        for (i, (t, chunks)) in threads.iter().zip(&chunks).enumerate() {
            let local = Overlay::new(chunks, &self.mem);
            let s = &mut self.scratch[i];
            s.settled = false;
            if reused[i] {
                continue;
            }
            let raw = &mut s.walked;
            if !read[i] {
                raw.clear();
                s.first = None;
                s.steady.disarm();
                s.layout.forget();
                continue;
            }
            // The callers as they were: the walk, and the regions it read, are last time's.
            if s.steady.holds(&local, l, t, opts, chunks, raw) {
                s.settled = true;
                s.first = Some(raw[0].addr);
                if let Some(plan) = &mut self.plan {
                    plan.remember(i, &s.regions);
                }
                continue;
            }
            s.steady.disarm();
            s.layout.forget();
            let ok = frames::first_frame(&local, l, &t.raw)
                .and_then(|first| frames::walk(&local, l, first, raw).map(|more| (first, more)));
            if let Some(plan) = &mut self.plan {
                frames::datastack_spans(l, &t.raw, chunks, &mut self.spans);
                frames::regions_outside(l, &t.raw, raw, &self.spans, &mut s.regions);
                plan.remember(i, &s.regions);
            }
            s.first = ok.as_ref().ok().map(|w| w.0);
            s.beyond = ok.is_ok_and(|w| w.1);
        }
        // Without stopping the target, a stack is trusted when the batch vouches for it (see
        // batch::Still), else after a second look (see frames::second_look). A walk that read
        // anything beyond the batch read it later, which voids what the batch says.
        let beyond = self.mem.reads() != reads_before;
        if beyond || still.is_none() {
            self.fetch_code_heads(&mut chunks, &v.read);
        }
        v.vouched.clear();
        v.vouched.extend((0..n).map(|i| match &still {
            Some(s) => !beyond && s[i] == batch::Still::Quiet,
            None => !opts.validate,
        }));
        v.wanted.clear();
        v.wanted.extend(
            (0..n).map(|i| !v.reused[i] && !v.vouched[i] && self.scratch[i].first.is_some()),
        );
        v.looked.clear();
        if v.wanted.contains(&true) {
            v.looked.extend_from_slice(frames::second_look(
                &self.mem,
                l,
                &threads,
                &v.wanted,
                &chunks,
                &mut self.scratch,
                &mut self.look,
            ));
        } else {
            v.looked.resize(n, false);
        }
        let (read, reused, vouched, looked) = (&v.read, &v.reused, &v.vouched, &v.looked);
        let mut out = Vec::with_capacity(n);
        for (i, t) in threads.iter().enumerate() {
            let stack = |frames| ThreadStack {
                thread_id: t.thread_id,
                os_thread_id: os_tids[i],
                thread_name: None,
                active: false,
                owns_gil: t.holds_gil,
                gil_requested: t.gil_requested,
                state: None,
                frames,
            };
            if reused[i] {
                // Still at an exact reading: kept as of it, so that one more change of
                // hands to another thread leaves it standing too.
                if let (Some(k), Some(now)) = (&mut self.scratch[i].kept, epoch)
                    && now.exact()
                    && k.stands(t, epoch)
                {
                    k.epoch = epoch;
                }
                // Its flags and frame addresses are still those of the kept stack.
                let kept = self.scratch[i].kept.as_ref().map(|k| k.frames.clone());
                out.push(stack(kept.unwrap_or_default()));
                continue;
            }
            let mut entries = std::mem::take(&mut self.scratch[i].entries);
            let consistent = self.scratch[i].first.is_some() && (vouched[i] || looked[i]);
            let frames = if !read[i] {
                Ok(Frames::default())
            } else if consistent {
                let local = Overlay::new(&chunks[i], &self.mem);
                let s = &mut self.scratch[i];
                frames::resolve_remembering(
                    &local,
                    l,
                    &mut self.codes,
                    &s.walked,
                    s.beyond,
                    opts,
                    &mut entries,
                    &mut s.memo,
                    s.settled,
                )
            } else {
                // Moved under us (or unreadable): the slow path retries this thread alone.
                self.thread_frames(t, opts, &mut entries).map(Frames::from)
            };
            let ok = frames.is_ok();
            let frames = frames.unwrap_or_else(|_| {
                // One unreadable thread costs its stack, not the whole sample; whether it
                // was an error, the next sample tells.
                self.failed.push((t.tstate, t.thread_id));
                Frames::default()
            });
            entries.resize(frames.len(), false);
            let s = &mut self.scratch[i];
            let still_from = epoch.filter(|e| ok && consistent && e.holder != t.tstate);
            s.kept =
                (ok && (matches!(v.wants[i], Want::Reuse(_)) || still_from.is_some())).then(|| {
                    Kept {
                        tstate: t.tstate,
                        thread_id: t.thread_id,
                        tid: os_tids[i],
                        at: started,
                        epoch: still_from,
                        frames: frames.clone(),
                    }
                });
            s.entries = entries;
            s.thread_id = t.thread_id;
            // Kept for the next sample only once it is known to be consistent and resolved.
            if !(ok && consistent) {
                s.steady.disarm();
            } else if !s.settled {
                s.steady.arm(
                    &Overlay::new(&chunks[i], &self.mem),
                    l,
                    t,
                    opts,
                    &chunks[i],
                    &s.walked,
                );
            }
            if looked[i] {
                s.steady.fitted();
            }
            // A settled stack's frames are where they were.
            if !(consistent && s.settled) {
                let raw: &[frames::RawFrame] = if consistent { &s.walked } else { &self.raw };
                s.entry_addrs.clear();
                s.entry_addrs
                    .extend(raw.iter().filter(|f| f.shim).map(|f| f.addr));
                s.frame_addrs.clear();
                s.frame_addrs
                    .extend(raw.iter().filter(|f| !f.shim).map(|f| f.addr));
            }
            out.push(stack(frames));
        }
        self.fill_names(&threads, &mut out);
        self.spare_tids = std::mem::replace(&mut self.last_tids, os_tids);
        self.verdicts = v;
        if let Some(plan) = &mut self.plan {
            plan.recycle(threads, chunks);
        }
        Ok(out)
    }

    /// Add to each thread's copy the heads of the code objects its walked frames run that
    /// the copy lacks, in one read for all threads. A thread the plan did not know (new
    /// since the thread list last changed) has none of them, and resolving its stack read
    /// them one per frame; the batch brings them to every later sample.
    fn fetch_code_heads(&mut self, chunks: &mut [Vec<(u64, Vec<u8>)>], read: &[bool]) {
        let mut wanted: Vec<(usize, u64)> = Vec::new();
        for (i, (s, copy)) in self.scratch.iter().zip(chunks.iter()).enumerate() {
            if !read[i] || s.first.is_none() {
                continue;
            }
            let local = Overlay::new(copy, &self.mem);
            wanted.extend(
                s.walked
                    .iter()
                    .filter(|f| !f.shim && local.peek(f.code, code::CODE_HEAD).is_none())
                    .map(|f| (i, f.code)),
            );
        }
        // Recursion runs one code object in frame after frame.
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return;
        }
        let mut heads = vec![0u8; wanted.len() * code::CODE_HEAD];
        let mut reqs: Vec<(u64, &mut [u8])> = wanted
            .iter()
            .zip(heads.chunks_exact_mut(code::CODE_HEAD))
            .map(|(&(_, code), buf)| (code, buf))
            .collect();
        if self.mem.read_many(&mut reqs).is_err() {
            // One of them is gone (freed and unmapped): each is read when needed.
            return;
        }
        for ((i, code), head) in wanted.into_iter().zip(heads.chunks_exact(code::CODE_HEAD)) {
            chunks[i].push((code, head.to_vec()));
        }
        for copy in chunks.iter_mut() {
            copy.sort_unstable_by_key(|c| c.0);
        }
    }

    /// Thread states and copies of their data-stack chunks: from the plan's single batched
    /// read when nothing moved, else from a full walk (which makes a new plan, reads every
    /// stack, and so clears `skip`). With `validate`, also each thread's innermost frame
    /// pointer re-read after the rest, where the batched read could do that.
    #[allow(clippy::type_complexity)]
    fn read_threads(
        &mut self,
        validate: bool,
        skip: &mut Vec<bool>,
    ) -> Result<
        (
            Vec<threads::PyThread>,
            Vec<Vec<(u64, Vec<u8>)>>,
            Option<Vec<batch::Still>>,
            Option<batch::Epoch>,
        ),
        PyError,
    > {
        let l = &self.interp.layout;
        let mut old = None;
        if let Some(plan) = &mut self.plan {
            if let Some(snap) = plan.read(&self.mem, l, self.interp.runtime, validate, skip) {
                return Ok((snap.threads, snap.chunks, snap.still, snap.epoch));
            }
            old = self.plan.take();
        }
        skip.clear();
        let threads = threads::thread_states(&self.mem, l, self.interp.runtime)?;
        self.plan = batch::Plan::learn(&self.mem, l, &threads);
        let mut chunks: Vec<Vec<(u64, Vec<u8>)>> = threads
            .iter()
            .map(|t| {
                let mut c = Vec::new();
                frames::snapshot_datastack(&self.mem, l, &t.raw, &mut c);
                c
            })
            .collect();
        // Threads come and go while the others keep their stacks: what the old plan knew
        // of those others is fetched in one read.
        if let Some(old) = old {
            old.prefetch(&self.mem, &threads, &mut chunks);
        }
        Ok((threads, chunks, None, None))
    }

    /// One thread's stack on its own, read until two copies agree (at most three tries).
    fn thread_frames(
        &mut self,
        t: &threads::PyThread,
        opts: FrameOptions,
        entries: &mut Vec<bool>,
    ) -> Result<Vec<Frame>, PyError> {
        let l = &self.interp.layout;
        // After a try that failed, the thread state is copied again: a thread that moved
        // may be in another eval loop (3.11 and 3.12 reach the frames through the loop's C
        // frame) or on another data-stack chunk, which `t`, copied with the thread list,
        // does not know. Checked against that old copy, every try failed while the thread
        // stayed there.
        let mut again: Option<threads::PyThread> = None;
        let mut first = frames::first_frame(&self.mem, l, &t.raw)?;
        let mut attempts = 0;
        let more;
        loop {
            let now = again.as_ref().unwrap_or(t);
            frames::snapshot_datastack(&self.mem, l, &now.raw, &mut self.chunks);
            let local = Overlay::new(&self.chunks, &self.mem);
            let walked = frames::walk(&local, l, first, &mut self.raw);
            if !opts.validate {
                more = walked?;
                break;
            }
            // Without stopping the thread, a stack is trusted only after a second look (which
            // re-reads the frame root itself); an empty one if the root is still empty.
            let stands = walked.is_ok()
                && if self.raw.is_empty() {
                    frames::current_frame(&self.mem, l, t.tstate)? == first
                } else {
                    frames::second_look(
                        &self.mem,
                        l,
                        std::slice::from_ref(now),
                        &[true],
                        std::slice::from_ref(&self.chunks),
                        &mut [(&self.raw[..], &mut self.second)],
                        &mut self.look,
                    )[0]
                };
            if stands {
                more = walked.is_ok_and(|m| m);
                break;
            }
            attempts += 1;
            if attempts >= 3 {
                return Err(walked
                    .err()
                    .unwrap_or(PyError::Corrupt("stack changed during every read")));
            }
            // It moved under us: start again from where it is now.
            let fresh = again.get_or_insert_with(|| t.clone());
            self.mem.read(t.tstate, &mut fresh.raw)?;
            first = frames::first_frame(&self.mem, l, &fresh.raw)?;
        }
        // A stack read from where the thread state points now, not from its copy, is this
        // thread's only if the state still holds its ids: one made for a new thread holds
        // its creator's (or none) until the thread starts, then the new thread's frames.
        let from_copy = attempts == 0 && matches!(l.frame_root, layout::FrameRoot::Direct(_));
        if !from_copy && !t.ids_unchanged(&self.mem, l)? {
            return Err(PyError::Corrupt("thread state changed threads while read"));
        }
        let local = Overlay::new(&self.chunks, &self.mem);
        frames::resolve_with_entries(&local, l, &mut self.codes, &self.raw, more, opts, entries)
    }

    /// What was kept of each thread of the last [`StackReader::stacks`] result, in the
    /// same order.
    pub fn last_threads(&self) -> &[ThreadScratch] {
        &self.scratch
    }

    /// Threads whose stack could not be read consistently, since the reader was made, up
    /// to the sample before the last: a thread whose read failed is counted when the next
    /// sample finds it still there (one that exited meanwhile is not counted).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Look up again, in `tids` (a listing taken since), the kernel ids of the threads of
    /// `stacks` (the last [`StackReader::stacks`] result, in its order) that had none:
    /// before 3.11 a kernel id is found in the listing, which a thread started since lacks.
    pub fn resolve_tids(&mut self, stacks: &mut [ThreadStack], tids: &[u32]) {
        for (i, s) in stacks.iter_mut().enumerate() {
            if s.os_thread_id.is_none() {
                s.os_thread_id = self.tid_from_pthread(s.thread_id, tids);
                if let Some(t) = self.last_tids.get_mut(i) {
                    *t = s.os_thread_id;
                }
            }
        }
    }

    /// The last [`StackReader::stacks`] result is to be read again (its threads now
    /// paused): the threads it could not read are not counted against the next.
    pub fn forget_failures(&mut self) {
        self.failed.clear();
    }

    fn tid_from_pthread(&mut self, pthread: u64, tids: &[u32]) -> Option<u32> {
        if pthread == 0 || tids.is_empty() {
            return None;
        }
        // A pthread keeps its tid for life; a cached tid that is no longer a thread of the
        // process means the pthread_t was reused, so it is looked up again.
        if let Some(tid) = self.pthread_tids.get(&pthread)
            && tids.contains(tid)
        {
            return Some(*tid);
        }
        if self.tid_offset.is_none() {
            self.tid_offset = threads::pthread_tid_offset(&self.mem, pthread, tids);
        }
        let off = self.tid_offset?;
        let mut b = [0u8; 4];
        self.mem.read(pthread + off, &mut b).ok()?;
        let tid = u32::from_le_bytes(b);
        if !tids.contains(&tid) {
            return None;
        }
        if self.pthread_tids.len() > MAX_THREADS_CACHED {
            self.pthread_tids.clear();
        }
        self.pthread_tids.insert(pthread, tid);
        Some(tid)
    }

    fn fill_names(&mut self, threads: &[threads::PyThread], out: &mut [ThreadStack]) {
        // Names can change (`t.name = ...`), so they are read again now and then; a thread
        // not seen before triggers a read at once, one still without a name a read soon.
        let since = self.names_read.elapsed();
        let stale = self.names_renewed.elapsed() >= NAMES_REFRESH;
        let missing = stale
            || out.iter().any(|t| {
                !self.names.contains_key(&t.thread_id)
                    && (!self.unnamed.contains(&t.thread_id) || since >= NAMES_RETRY)
            });
        if missing {
            // One walk per interpreter: each has its own `threading` module.
            let mut interps: Vec<u64> = threads.iter().map(|t| t.interp).collect();
            interps.dedup();
            self.names_read = std::time::Instant::now();
            // Rebuilt below from the threads still without a name.
            self.unnamed.clear();
            if stale {
                self.names.clear();
                self.names_renewed = self.names_read;
            }
            for interp in interps {
                if let Ok(names) = threads::thread_names(&self.mem, &self.interp.layout, interp) {
                    self.names
                        .extend(names.into_iter().map(|(id, name)| (id, name.into())));
                }
            }
            for t in out.iter() {
                if !self.names.contains_key(&t.thread_id) {
                    self.unnamed.push(t.thread_id);
                }
            }
        }
        for t in out.iter_mut() {
            t.thread_name = self.names.get(&t.thread_id).cloned();
        }
    }

    /// Forget cached thread names (they can change with `t.name = …`).
    pub fn refresh_names(&mut self) {
        self.names.clear();
        self.unnamed.clear();
    }
}

/// Short, package-relative form of a file name, as py-spy shows it: the part after the last
/// `site-packages/`, `dist-packages/` or `pythonX.Y/` directory, else the base name.
pub fn short_filename(filename: &str) -> String {
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some(i) = filename.rfind(marker) {
            return filename[i + marker.len()..].to_string();
        }
    }
    if let Some(i) = filename.find("/lib/python") {
        let rest = &filename[i + "/lib/python".len()..];
        if let Some(j) = rest.find('/') {
            return rest[j + 1..].to_string();
        }
    }
    match filename.rsplit_once('/') {
        Some((_, base)) if !base.is_empty() => base.to_string(),
        _ => filename.to_string(),
    }
}

/// Module name of a file name, as py-spy's JSON `module` field (`json.decoder`).
pub fn module_name(short: &str) -> Option<String> {
    let stem = short.strip_suffix(".py")?;
    let stem = stem.strip_suffix("/__init__").unwrap_or(stem);
    if stem.starts_with('<') {
        return None;
    }
    Some(stem.replace('/', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory whose contents the test replaces between samples.
    struct Changing(std::cell::RefCell<crate::process::ImageMemory>);

    impl Memory for Changing {
        fn read(&self, addr: u64, buf: &mut [u8]) -> crate::process::memory::MemResult<()> {
            self.0.borrow().read(addr, buf)
        }
    }

    #[test]
    fn a_thread_that_exits_while_read_is_not_an_error() {
        use crate::process::{ImageMemory, MemoryExt};
        use batch::tests::{CFRAMES, GIL, INTERP, RUNTIME, TSTATES, image_312};
        let l = Arc::new(Layout::from_table(Version::new(3, 12, 1), false).unwrap());
        // Thread 0 has no Python frames; thread 1's innermost frame is not mapped (freed
        // as it exited), so its read fails.
        let both = || image_312(&l, 0, 5, [0, 0x7100]);
        // The same process after thread 1 left the thread list.
        let one = || {
            let m = both();
            let ts = l.ts_size as usize;
            let mut first = m.bytes(TSTATES[0], ts).unwrap();
            first[l.ts_next as usize..][..8].copy_from_slice(&0u64.to_le_bytes());
            let mut out = ImageMemory::new();
            for (addr, len) in [(RUNTIME, 4096), (INTERP, 4096), (GIL, 64), (CFRAMES[0], 64)] {
                out.add(addr, m.bytes(addr, len).unwrap());
            }
            out.add(TSTATES[0], first);
            out
        };
        let interp = |()| Interpreter {
            path: String::new(),
            bias: 0,
            runtime: RUNTIME,
            code_type: None,
            layout: Arc::clone(&l),
            how: String::new(),
        };
        let opts = FrameOptions::default();
        for (next, errors) in [(one(), 0), (both(), 1)] {
            let mem = Changing(std::cell::RefCell::new(both()));
            let mut reader = StackReader::new(&mem, interp(()));
            let first = reader.stacks(&[], opts, None).unwrap();
            assert!(first.iter().all(|t| t.frames.is_empty()));
            *mem.0.borrow_mut() = next;
            let second = reader.stacks(&[], opts, None).unwrap();
            assert_eq!(second.len(), 2 - (1 - errors as usize));
            assert_eq!(
                reader.errors(),
                errors,
                "thread 1 still there: {}",
                errors == 1
            );
        }
    }

    /// The threads of the 3.10 process of the pairing tests: each one's `pthread_t` (its
    /// Python thread id), kernel id and the function it runs.
    const THREADS: [(u64, u32, &str); 3] = [
        (0x7f00_0010_0000, 1000, "main_fn"),
        (0x7f00_0020_0000, 1001, "worker_b"),
        (0x7f00_0030_0000, 1002, "worker_c"),
    ];

    /// Thread k's thread state.
    fn tstate_310(k: usize) -> u64 {
        0x10_0000 + 0x1000 * k as u64
    }

    /// A 3.10 process (thread states prepended as they come, like ≤ 3.10's) whose thread
    /// list is `list`, head first: per entry, whose thread state it is (an index into
    /// [`THREADS`]), whose thread id it holds, and whether the thread runs its function
    /// yet (its own function innermost). A thread state that CPython made for a new thread holds its creator's id until
    /// the thread starts, and no frames.
    fn process_310(l: &Layout, list: &[(usize, usize, bool)]) -> crate::process::ImageMemory {
        use batch::tests::{INTERP, RUNTIME};
        let word = |buf: &mut Vec<u8>, off: u64, v: u64| {
            buf[off as usize..][..8].copy_from_slice(&v.to_le_bytes())
        };
        let layout::FrameRoot::Direct(root) = l.frame_root else {
            panic!("3.10 keeps the innermost frame in the thread state");
        };
        let mut m = code::tests::image(l, THREADS[0].2, 0x60000);
        for (k, (pthread, tid, name)) in THREADS.iter().enumerate() {
            let k = k as u64;
            if k > 0 {
                code::tests::add_code(&mut m, l, name, 0x10000 + 0x1000 * k, 0x60000 + 0x1000 * k);
            }
            // glibc's `struct pthread`, with the kernel id where glibc keeps it.
            let mut pt = vec![0u8; 2048];
            pt[720..724].copy_from_slice(&tid.to_le_bytes());
            m.add(*pthread, pt);
        }
        let mut rt = vec![0u8; 4096];
        word(&mut rt, l.rt_interp_head, INTERP);
        let mut interp = vec![0u8; 4096];
        word(
            &mut interp,
            l.is_threads_head,
            list.first().map_or(0, |e| tstate_310(e.0)),
        );
        m.add(RUNTIME, rt).add(INTERP, interp);
        for (i, &(k, id, runs)) in list.iter().enumerate() {
            let mut ts = vec![0u8; l.ts_size as usize];
            word(&mut ts, l.ts_interp, INTERP);
            word(
                &mut ts,
                l.ts_next,
                list.get(i + 1).map_or(0, |e| tstate_310(e.0)),
            );
            word(&mut ts, l.ts_thread_id, THREADS[id].0);
            if runs {
                // Three frames: the thread's own function, called from the other two.
                let frame = |d: usize| 0x20_0000 + 0x1000 * k as u64 + 0x200 * d as u64;
                for d in 0..THREADS.len() {
                    let mut f = vec![0u8; 512];
                    word(
                        &mut f,
                        l.f_code,
                        0x10000 + 0x1000 * ((k + d) % THREADS.len()) as u64,
                    );
                    let back = if d + 1 < THREADS.len() {
                        frame(d + 1)
                    } else {
                        0
                    };
                    word(&mut f, l.f_back, back);
                    m.add(frame(d), f);
                }
                word(&mut ts, root, frame(0));
            }
            m.add(tstate_310(k), ts);
        }
        m
    }

    /// As `prof record` reads: without stopping the target, so every stack is checked.
    fn checked() -> FrameOptions {
        FrameOptions {
            validate: true,
            ..FrameOptions::default()
        }
    }

    fn interp_at(l: &Arc<Layout>) -> Interpreter {
        Interpreter {
            path: String::new(),
            bias: 0,
            runtime: batch::tests::RUNTIME,
            code_type: None,
            layout: Arc::clone(l),
            how: String::new(),
        }
    }

    /// Every stack of `stacks` belongs to one thread of [`THREADS`]: its thread id, its
    /// kernel id and its frames (when read) are that thread's.
    fn assert_paired(stacks: &[ThreadStack], what: &str) {
        for s in stacks {
            let Some((_, tid, name)) = THREADS.iter().find(|t| t.0 == s.thread_id) else {
                panic!(
                    "{what}: a stack with an unknown thread id {:#x}",
                    s.thread_id
                );
            };
            assert_eq!(
                s.os_thread_id,
                Some(*tid),
                "{what}: thread {name}'s kernel id"
            );
            let names: Vec<&str> = s.frames.iter().map(|f| f.name()).collect();
            assert!(
                names.first().is_none_or(|f| f == name),
                "{what}: thread {name} (tid {tid}) shown with the stack {names:?}"
            );
        }
    }

    type WantOf<'a> = dyn Fn(u32) -> Want + 'a;

    #[test]
    fn stacks_stay_with_their_threads_when_the_thread_list_changes() {
        let l = Arc::new(Layout::from_table(Version::new(3, 10, 13), false).unwrap());
        let tids: Vec<u32> = THREADS.iter().map(|t| t.1).collect();
        // The main thread and a worker; a thread comes at the head of the list; the main
        // thread leaves it; it comes back behind the others (a new thread state).
        let moments: [&[(usize, usize, bool)]; 5] = [
            &[(1, 1, true), (0, 0, true)],
            &[(2, 2, true), (1, 1, true), (0, 0, true)],
            &[(2, 2, true), (1, 1, true)],
            &[(2, 2, true), (1, 1, true)],
            &[(0, 0, true), (2, 2, true), (1, 1, true)],
        ];
        // Each thread's stack read every time, or handed out again while its thread has
        // not run (kept per thread between samples), or left out for one thread.
        let since = std::time::Instant::now();
        let reuse = move |_: u32| Want::Reuse(Some(since));
        let skip_b = |t: u32| if t == 1001 { Want::Skip } else { Want::Read };
        let wants: [(&str, Option<&WantOf<'_>>); 3] = [
            ("read", None),
            ("reuse", Some(&reuse)),
            ("skip", Some(&skip_b)),
        ];
        for (how, want) in wants {
            let mem = Changing(std::cell::RefCell::new(process_310(&l, moments[0])));
            let mut reader = StackReader::new(&mem, interp_at(&l));
            for (k, list) in moments.iter().enumerate() {
                *mem.0.borrow_mut() = process_310(&l, list);
                // Twice: once after the list changed, once with the batch's plan.
                for again in [false, true] {
                    let what = format!("{how}, moment {k}, again {again}");
                    let stacks = reader.stacks(&tids, checked(), want).unwrap();
                    assert_eq!(stacks.len(), list.len(), "{what}");
                    assert_paired(&stacks, &what);
                    let shown = stacks.iter().filter(|s| !s.frames.is_empty()).count();
                    let skipped = list.iter().filter(|e| how == "skip" && e.0 == 1).count();
                    assert_eq!(shown, list.len() - skipped, "{what}: stacks read");
                }
            }
            assert_eq!(reader.errors(), 0, "{how}");
        }
    }

    /// A memory that turns from `before` into `after` as soon as the thread state at
    /// `tstate` has been copied whole: a thread that starts running right after prof read
    /// its new thread state.
    #[derive(Default)]
    struct Starting {
        before: std::cell::RefCell<crate::process::ImageMemory>,
        after: std::cell::RefCell<crate::process::ImageMemory>,
        tstate: std::cell::Cell<u64>,
        started: std::cell::Cell<bool>,
    }

    impl Memory for Starting {
        fn read(&self, addr: u64, buf: &mut [u8]) -> crate::process::memory::MemResult<()> {
            let now = if self.started.get() {
                &self.after
            } else {
                &self.before
            };
            let r = now.borrow().read(addr, buf);
            if addr == self.tstate.get() && buf.len() > 8 {
                self.started.set(true);
            }
            r
        }
    }

    #[test]
    fn a_thread_that_starts_while_read_is_not_shown_as_its_creator() {
        let l = Arc::new(Layout::from_table(Version::new(3, 10, 13), false).unwrap());
        let tids: Vec<u32> = THREADS.iter().map(|t| t.1).collect();
        let (main, new) = (0, 2);
        let mem = Starting::default();
        *mem.before.borrow_mut() = process_310(&l, &[(main, main, true)]);
        let mut reader = StackReader::new(&mem, interp_at(&l));
        let stacks = reader.stacks(&tids, checked(), None).unwrap();
        assert_paired(&stacks, "before");
        // The main thread made a thread state for the new thread, which holds the main
        // thread's id and no frames, and the thread starts (takes its own id, runs its
        // function) right after prof copied it.
        *mem.before.borrow_mut() = process_310(&l, &[(new, main, false), (main, main, true)]);
        *mem.after.borrow_mut() = process_310(&l, &[(new, new, true), (main, main, true)]);
        mem.tstate.set(tstate_310(new));
        let stacks = reader.stacks(&tids, checked(), None).unwrap();
        assert!(mem.started.get(), "the new thread started during the read");
        assert_paired(&stacks, "while it starts");
        let stacks = reader.stacks(&tids, checked(), None).unwrap();
        assert_paired(&stacks, "after it started");
        assert_eq!(stacks.len(), 2);
        assert!(stacks.iter().all(|s| !s.frames.is_empty()), "both read");
        assert_eq!(reader.errors(), 0, "a thread that started is not an error");
    }

    /// A memory that notes the addresses of its single reads.
    #[derive(Default)]
    struct Noting {
        image: std::cell::RefCell<crate::process::ImageMemory>,
        single: std::cell::RefCell<Vec<u64>>,
    }

    impl Memory for Noting {
        fn read(&self, addr: u64, buf: &mut [u8]) -> crate::process::memory::MemResult<()> {
            self.single.borrow_mut().push(addr);
            self.image.borrow().read(addr, buf)
        }
        fn read_many(
            &self,
            reqs: &mut [(u64, &mut [u8])],
        ) -> crate::process::memory::MemResult<()> {
            self.image.borrow().read_many(reqs)
        }
    }

    #[test]
    fn a_new_threads_code_heads_come_in_one_read() {
        let l = Arc::new(Layout::from_table(Version::new(3, 10, 13), false).unwrap());
        let tids: Vec<u32> = THREADS.iter().map(|t| t.1).collect();
        let mem = Noting::default();
        *mem.image.borrow_mut() = process_310(&l, &[(0, 0, true)]);
        let mut reader = StackReader::new(&mem, interp_at(&l));
        reader.stacks(&tids, checked(), None).unwrap();
        // A new thread, running code objects the reader knows: their heads (which vouch
        // that the cached ones are still the same) come in one batch, not one read each.
        *mem.image.borrow_mut() = process_310(&l, &[(2, 2, true), (0, 0, true)]);
        mem.single.borrow_mut().clear();
        let stacks = reader.stacks(&tids, checked(), None).unwrap();
        assert_paired(&stacks, "a new thread");
        assert!(stacks.iter().all(|s| s.frames.len() == THREADS.len()));
        let codes = 0x10000..0x10000 + 0x1000 * THREADS.len() as u64;
        let one_by_one: Vec<u64> = mem
            .single
            .borrow()
            .iter()
            .copied()
            .filter(|a| codes.contains(a))
            .collect();
        assert!(
            one_by_one.is_empty(),
            "code heads read one by one: {one_by_one:x?}"
        );
    }

    #[test]
    fn a_thread_that_entered_another_eval_loop_is_read_from_where_it_is_now() {
        use crate::process::{ImageMemory, MemoryExt};
        use batch::tests::{CFRAMES, TSTATES, image_312};
        let l = Arc::new(Layout::from_table(Version::new(3, 12, 1), false).unwrap());
        let layout::FrameRoot::CFrame { cframe, current } = l.frame_root else {
            panic!("3.12 reaches frames through C frames");
        };
        let put = |buf: &mut Vec<u8>, off: u64, v: u64| {
            buf[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        // Thread 0 ran `outer` (frame 0x7000) in the eval loop whose C frame the thread list
        // was copied with; since then it called, through C (an `exec` of an import, say),
        // into `inner` (0x7200), run by a nested loop with a C frame of its own (0x5800).
        let (outer, inner, nested) = (0x7000u64, 0x7200u64, 0x5800u64);
        let before = image_312(&l, 0, 5, [outer, 0]);
        let code = code::tests::image(&l, "work", 0x30000);
        let mut now = ImageMemory::new();
        for (addr, len) in [
            (0x1000, 4096),
            (0x2000, 4096),
            (0x8000, 64),
            (CFRAMES[0], 64),
        ] {
            now.add(addr, before.bytes(addr, len).unwrap());
        }
        for (addr, len) in [
            (0x10000, 256),
            (0x20000, 64),
            (0x30000, 128),
            (0x30100, 128),
            (0x40000, 40),
        ] {
            now.add(addr, code.bytes(addr, len).unwrap());
        }
        now.add(0x50000, code.bytes(0x50000, 64).unwrap());
        let frame = |back: u64| {
            let mut f = vec![0u8; l.f_size as usize];
            put(&mut f, l.f_code, 0x10000);
            put(&mut f, l.f_back, back);
            if let layout::InstrSource::Pointer(off) = l.f_instr {
                put(&mut f, off, 0x10000 + l.co_code_adaptive.unwrap());
            }
            f
        };
        now.add(outer, frame(0)).add(inner, frame(outer));
        let mut ts = before.bytes(TSTATES[0], l.ts_size as usize).unwrap();
        put(&mut ts, l.ts_next, 0);
        put(&mut ts, cframe, nested);
        now.add(TSTATES[0], ts);
        let mut cf = vec![0u8; 64];
        put(&mut cf, current, inner);
        now.add(nested, cf);
        // The thread as the thread list copied it: in the outer loop.
        let listed = threads::thread_states(&before, &l, batch::tests::RUNTIME).unwrap();
        let interp = Interpreter {
            path: String::new(),
            bias: 0,
            runtime: batch::tests::RUNTIME,
            code_type: None,
            layout: Arc::clone(&l),
            how: String::new(),
        };
        let mut reader = StackReader::new(&now, interp);
        // Checked reads, as without --nonblocking.
        let opts = FrameOptions {
            validate: true,
            ..FrameOptions::default()
        };
        let mut entries = Vec::new();
        let frames = reader
            .thread_frames(&listed[0], opts, &mut entries)
            .expect("read from the thread's new eval loop");
        let names: Vec<&str> = frames.iter().map(|f| &*f.code.name).collect();
        assert_eq!(names, ["work", "work"], "inner, then outer");
    }

    /// A 3.12 process of one thread, `thread_id`, its thread state at
    /// [`batch::tests::TSTATES`]`[0]`, the GIL's last holder and count of changes of hands
    /// `gil` (the thread itself: each of its stacks gets a second look), its stack
    /// in one data-stack chunk: `stack`, outermost first, each frame's code object (address
    /// and name) and instruction offset, each frame right after its caller's. The code
    /// objects of `also` are there too, unless the stack has one at their address.
    fn process_312_stack(
        l: &Layout,
        thread_id: u64,
        stack: &[(u64, &str, u64)],
        also: &[(u64, &str)],
        gil: (u64, u64),
    ) -> crate::process::ImageMemory {
        use crate::process::MemoryExt;
        use batch::tests::{Thread312, process_312};
        let (layout::InstrSource::Pointer(instr), Some(layout::FrameSize::Words(framesize))) =
            (l.f_instr, l.co_framesize)
        else {
            panic!("the 3.12 layout");
        };
        let word = |buf: &mut Vec<u8>, off: u64, v: u64| {
            buf[off as usize..][..8].copy_from_slice(&v.to_le_bytes())
        };
        const STRIDE: u64 = 0x100;
        let chunk = 0x7f00_0000_0000u64;
        let frame = |k: usize| chunk + 24 + STRIDE * k as u64;
        // The code objects (with the type, line table and strings they point at), each
        // name's strings at a place of their own: another code object at an address is
        // another fingerprint.
        let mut codes = code::tests::image(l, "unused", 0x30000);
        let (holder, switches) = gil;
        let mut m = process_312(
            l,
            holder,
            switches,
            &[Thread312 {
                thread_id,
                frame: frame(stack.len() - 1),
                datastack: Some((chunk, frame(stack.len()))),
            }],
        );
        for (addr, len) in [(0x20000, 64), (0x40000, 40), (0x50000, 64)] {
            m.add(addr, codes.bytes(addr, len).unwrap());
        }
        let mut seen: Vec<u64> = Vec::new();
        let stacked = stack.iter().map(|&(at, name, _)| (at, name));
        for (at, name) in stacked.chain(also.iter().copied()) {
            if seen.contains(&at) {
                continue;
            }
            seen.push(at);
            let strs = 0x100_0000 + 0x1000 * name.bytes().map(u64::from).sum::<u64>();
            code::tests::add_code(&mut codes, l, name, 0x90_0000 + at, strs);
            let mut head = codes.bytes(0x90_0000 + at, code::CODE_HEAD).unwrap();
            head[framesize as usize..][..4].copy_from_slice(&((STRIDE / 8) as u32).to_le_bytes());
            m.add(at, head);
            for s in [strs, strs + 0x100] {
                if !seen.contains(&s) {
                    seen.push(s);
                    m.add(s, codes.bytes(s, 128).unwrap());
                }
            }
        }
        let mut data = vec![0u8; 16384];
        word(&mut data, 8, 16384);
        for (k, &(code, _, offset)) in stack.iter().enumerate() {
            let at = frame(k) - chunk;
            word(&mut data, at + l.f_code, code);
            word(
                &mut data,
                at + l.f_back,
                if k == 0 { 0 } else { frame(k - 1) },
            );
            word(
                &mut data,
                at + instr,
                code + l.co_code_adaptive.unwrap() + offset,
            );
        }
        m.add(chunk, data);
        m
    }

    /// The first stack's frames as users see them: name and line.
    fn shown(s: &[ThreadStack]) -> Vec<(String, i32)> {
        s[0].frames
            .iter()
            .map(|f| (f.name().to_string(), f.line))
            .collect()
    }

    /// The code objects (address, name) of the kept-stack tests' stacks.
    const KEPT_CODES: [(u64, &str); 5] = [
        (0x10000, "main"),
        (0x11000, "work"),
        (0x12000, "step"),
        (0x13000, "leaf"),
        (0x14000, "other"),
    ];

    #[test]
    fn a_kept_stack_is_never_shown_stale() {
        let l = Arc::new(Layout::from_table(Version::new(3, 12, 1), false).unwrap());
        let [main, work, step, leaf, other] = KEPT_CODES;
        let of = |frames: [(u64, &'static str); 4], inner: u64| {
            let mut v: Vec<(u64, &str, u64)> = frames.iter().map(|&(a, n)| (a, n, 8)).collect();
            v[3].2 = inner;
            v
        };
        let base = of([main, work, step, leaf], 20);
        // Moments of the target, one sample each, and whether the reader may recognise the
        // last sample's callers in it (and decode only the innermost frame).
        // What happened, the thread id, the stack, and whether it settles.
        type Moment<'a> = (&'a str, u64, Vec<(u64, &'a str, u64)>, bool);
        let moments: Vec<Moment> = vec![
            ("first", 7, base.clone(), false),
            // The batch's copy of the data stack is not the full walk's (it has room to
            // grow): its first sample is read afresh.
            ("the batch's first", 7, base.clone(), false),
            ("unchanged", 7, base.clone(), true),
            (
                "innermost moved on",
                7,
                of([main, work, step, leaf], 44),
                true,
            ),
            // `step`'s code object freed and another one made at its address: the
            // callers' bytes are the same, the code object is not.
            (
                "a caller's code object replaced",
                7,
                of([main, work, (step.0, "stepped"), leaf], 44),
                false,
            ),
            ("back", 7, base.clone(), false),
            ("again", 7, base.clone(), true),
            // `work` returned and `other` was called in its place, down to the same depth.
            (
                "a caller called again",
                7,
                of([main, other, step, leaf], 20),
                false,
            ),
            ("back once more", 7, base.clone(), false),
            // `work`'s code head was not in this sample's copy (the batch brought the
            // last stack's): not kept until a copy holds it.
            ("and again", 7, base.clone(), false),
            ("still", 7, base.clone(), true),
            // Another code object innermost, in the same frame.
            (
                "the innermost replaced",
                7,
                of([main, work, step, other], 20),
                false,
            ),
            ("back a third time", 7, base.clone(), false),
            ("and once more", 7, base.clone(), false),
            ("still again", 7, base.clone(), true),
            // The thread exited and its thread state went to a new thread with the same
            // stack.
            ("the thread state reused", 8, base.clone(), false),
        ];
        // Every code object stays where it is: freed ones are not unmapped.
        let all = [main, work, step, leaf, other];
        let held = (batch::tests::TSTATES[0], 0);
        let mem = Changing(std::cell::RefCell::new(process_312_stack(
            &l, 7, &base, &all, held,
        )));
        let mut reader = StackReader::new(&mem, interp_at(&l));
        for (what, thread_id, stack, settles) in moments {
            *mem.0.borrow_mut() = process_312_stack(&l, thread_id, &stack, &all, held);
            let got = reader.stacks(&[], checked(), None).unwrap();
            // What a reader that never saw the process reads: the full walk.
            let fresh = StackReader::new(&mem, interp_at(&l))
                .stacks(&[], checked(), None)
                .unwrap();
            let want: Vec<&str> = stack.iter().rev().map(|f| f.1).collect();
            assert_eq!(got.len(), 1, "{what}");
            assert_eq!(got[0].thread_id, thread_id, "{what}");
            let names: Vec<String> = shown(&got).into_iter().map(|f| f.0).collect();
            assert_eq!(names, want, "{what}");
            assert_eq!(
                shown(&got),
                shown(&fresh),
                "{what}: as a full walk reads it"
            );
            assert_eq!(reader.scratch[0].settled, settles, "{what}: settled");
        }
        assert_eq!(reader.errors(), 0);
    }

    #[test]
    fn a_stack_the_gil_shows_still_is_handed_out_again_never_stale() {
        let l = Arc::new(Layout::from_table(Version::new(3, 12, 1), false).unwrap());
        let [main, work, step, leaf, other] = KEPT_CODES;
        let of = |frames: [(u64, &'static str); 4]| -> Vec<(u64, &'static str, u64)> {
            frames.iter().map(|&(a, n)| (a, n, 8)).collect()
        };
        let base = of([main, work, step, leaf]);
        let ran = of([main, other, step, leaf]);
        let this = batch::tests::TSTATES[0];
        // Thread states not in the list: other threads (or none living) hold the GIL.
        let elsewhere = 0x9000;
        let (second, third) = (0x9100, 0x9200);
        // Moments of the target, one sample each: what happened, the thread id, the stack,
        // the GIL's last holder and count of changes of hands, and whether the reader may
        // hand out its last stack again without reading it.
        type Moment<'a> = (&'a str, u64, Vec<(u64, &'a str, u64)>, (u64, u64), bool);
        // Thread 7 throughout, but for the last moment.
        let at = |what, stack: &Vec<(u64, &'static str, u64)>, gil, again| -> Moment {
            (what, 7, stack.clone(), gil, again)
        };
        let moments: Vec<Moment> = vec![
            at("first", &base, (elsewhere, 5), false),
            at("the batch's first", &base, (elsewhere, 5), false),
            // Left out only once two batches in a row showed hands at most one change apart.
            at("the GIL stayed", &base, (elsewhere, 5), false),
            at("the GIL stayed still", &base, (elsewhere, 5), true),
            at("and still", &base, (elsewhere, 5), true),
            // The thread took the GIL, ran, and gave it back to the other holder: two
            // changes of hands, and the last holder as before.
            at("it ran in between", &ran, (elsewhere, 7), false),
            at("the GIL stayed again", &ran, (elsewhere, 7), false),
            at("the GIL stayed still again", &ran, (elsewhere, 7), true),
            at("it holds the GIL", &base, (this, 8), false),
            // Its own stack changes under it while it holds the GIL: read every time.
            at("it kept the GIL", &ran, (this, 8), false),
            at("it kept the GIL still", &base, (this, 8), false),
            at("it gave the GIL away", &ran, (elsewhere, 9), false),
            // One change of hands since the last batch: its stack was read then.
            at("the GIL stayed once more", &ran, (elsewhere, 9), true),
            at("the GIL stayed still once more", &ran, (elsewhere, 9), true),
            // One change of hands, to another thread: only that one ran.
            at("the GIL went to another thread", &ran, (second, 10), true),
            // Once more: the stack was known still at the last change, and stands again.
            at("and on to a third", &ran, (third, 11), true),
            // One change of hands, to this thread: it ran.
            at("it took the GIL", &base, (this, 12), false),
            at("it gave the GIL away again", &base, (elsewhere, 13), false),
            at("the GIL went on once", &base, (second, 14), true),
            // Two changes: the thread between them is not known (here it was this one).
            at("two changes of hands", &ran, (third, 16), false),
            at("the GIL stayed after two changes", &ran, (third, 16), false),
            at("and stayed still", &ran, (third, 16), true),
            // The thread state went to another thread: not the kept stack's thread.
            (
                "the thread state reused",
                8,
                base.clone(),
                (third, 16),
                false,
            ),
        ];
        let all = [main, work, step, leaf, other];
        let mem = Changing(std::cell::RefCell::new(process_312_stack(
            &l,
            7,
            &base,
            &all,
            (elsewhere, 5),
        )));
        for validate in [true, false] {
            let opts = FrameOptions {
                validate,
                ..checked()
            };
            let mut reader = StackReader::new(&mem, interp_at(&l));
            let mut last: Option<Frames> = None;
            for (what, thread_id, stack, gil, again) in moments.clone() {
                let what = format!("{what} (validate {validate})");
                *mem.0.borrow_mut() = process_312_stack(&l, thread_id, &stack, &all, gil);
                let got = reader.stacks(&[], opts, None).unwrap();
                let fresh = StackReader::new(&mem, interp_at(&l))
                    .stacks(&[], opts, None)
                    .unwrap();
                assert_eq!(got.len(), 1, "{what}");
                assert_eq!(got[0].thread_id, thread_id, "{what}");
                assert_eq!(reader.verdicts.reused[0], again, "{what}: handed out again");
                if again {
                    assert!(
                        last.as_ref().is_some_and(|f| got[0].frames.same(f)),
                        "{what}"
                    );
                }
                // What a reader that never saw the process reads: the stack as it is.
                let want: Vec<&str> = stack.iter().rev().map(|f| f.1).collect();
                let names: Vec<String> = shown(&got).into_iter().map(|f| f.0).collect();
                assert_eq!(names, want, "{what}");
                assert_eq!(
                    shown(&got),
                    shown(&fresh),
                    "{what}: as a full walk reads it"
                );
                last = Some(got[0].frames.clone());
            }
            assert_eq!(reader.errors(), 0);
        }
    }

    /// A process whose batched reads see `start`, but for their last group (the GIL's
    /// second reading, the second look's roots), which sees `end`: a GIL that changed hands
    /// while the batch was copied.
    #[derive(Default)]
    struct Torn {
        start: std::cell::RefCell<crate::process::ImageMemory>,
        end: std::cell::RefCell<crate::process::ImageMemory>,
    }

    impl Memory for Torn {
        fn read(&self, addr: u64, buf: &mut [u8]) -> crate::process::memory::MemResult<()> {
            self.start.borrow().read(addr, buf)
        }
        fn read_many_then(
            &self,
            reqs: &mut [(u64, &mut [u8])],
            cuts: &[usize],
        ) -> crate::process::memory::MemResult<()> {
            let last = cuts.last().copied().unwrap_or(reqs.len());
            let (a, b) = reqs.split_at_mut(last);
            self.start.borrow().read_many(a)?;
            self.end.borrow().read_many(b)
        }
    }

    #[test]
    fn a_torn_reading_of_the_gil_never_hands_out_a_stale_stack() {
        let l = Arc::new(Layout::from_table(Version::new(3, 12, 1), false).unwrap());
        let [main, work, step, leaf, other] = KEPT_CODES;
        let of = |frames: [(u64, &'static str); 4]| -> Vec<(u64, &'static str, u64)> {
            frames.iter().map(|&(a, n)| (a, n, 8)).collect()
        };
        let (base, ran) = (of([main, work, step, leaf]), of([main, other, step, leaf]));
        let (elsewhere, second) = (0x9000, 0x9100);
        let this = batch::tests::TSTATES[0];
        // One sample each: what happened, the stack, the GIL's hands as the batch's start
        // and its end see them, and whether the kept stack is handed out again.
        type Moment<'a> = (
            &'a str,
            Vec<(u64, &'a str, u64)>,
            (u64, u64),
            (u64, u64),
            bool,
        );
        let moments: Vec<Moment> = vec![
            ("first", base.clone(), (elsewhere, 5), (elsewhere, 5), false),
            (
                "the batch's first",
                base.clone(),
                (elsewhere, 5),
                (elsewhere, 5),
                false,
            ),
            (
                "the GIL stayed",
                base.clone(),
                (elsewhere, 5),
                (elsewhere, 5),
                false,
            ),
            (
                "stayed still",
                base.clone(),
                (elsewhere, 5),
                (elsewhere, 5),
                true,
            ),
            // The thread took the GIL (the 6th change), ran, and gave it to another (the
            // 7th); the read's start saw that one's thread state with the count from before
            // its change was counted: one change from the kept hands, to another thread, as
            // it seems. The end's reading, another, shows it torn.
            ("torn", ran.clone(), (second, 6), (second, 7), false),
            ("after", ran.clone(), (second, 7), (second, 7), false),
            ("still after", ran.clone(), (second, 7), (second, 7), true),
            // The thread took the GIL (the 8th change) as the read began: its start saw the
            // count of that change beside the holder before it. The stack was read, and
            // kept at that reading, which does not show that the thread holds the GIL.
            (
                "torn at its start",
                ran.clone(),
                (elsewhere, 8),
                (this, 8),
                false,
            ),
            // It ran, and gave the GIL to another: one change from the torn reading.
            ("it ran", base.clone(), (second, 9), (second, 9), false),
            ("and stayed", base.clone(), (second, 9), (second, 9), true),
        ];
        let all = [main, work, step, leaf, other];
        let mem = Torn::default();
        for validate in [true, false] {
            let opts = FrameOptions {
                validate,
                ..checked()
            };
            let mut reader = StackReader::new(&mem, interp_at(&l));
            for (what, stack, start, end, again) in moments.clone() {
                let what = format!("{what} (validate {validate})");
                *mem.start.borrow_mut() = process_312_stack(&l, 7, &stack, &all, start);
                *mem.end.borrow_mut() = process_312_stack(&l, 7, &stack, &all, end);
                let got = reader.stacks(&[], opts, None).unwrap();
                assert_eq!(reader.verdicts.reused[0], again, "{what}: handed out again");
                let want: Vec<&str> = stack.iter().rev().map(|f| f.1).collect();
                let names: Vec<String> = shown(&got).into_iter().map(|f| f.0).collect();
                assert_eq!(names, want, "{what}");
            }
            assert_eq!(reader.errors(), 0);
        }
    }

    #[test]
    fn short_names() {
        assert_eq!(
            short_filename("/usr/lib/python3.11/json/decoder.py"),
            "json/decoder.py"
        );
        assert_eq!(
            short_filename("/v/lib/python3.12/site-packages/numpy/core/x.py"),
            "numpy/core/x.py"
        );
        assert_eq!(short_filename("/home/a/app.py"), "app.py");
        assert_eq!(short_filename("<string>"), "<string>");
        assert_eq!(
            module_name("json/decoder.py").as_deref(),
            Some("json.decoder")
        );
        assert_eq!(module_name("pkg/__init__.py").as_deref(), Some("pkg"));
        assert_eq!(module_name("<string>"), None);
    }
}
