//! The steady-state fast path: re-read everything a sample needs in one batched read.
//!
//! A full discovery walks linked lists (interpreter → thread states → data-stack chunks),
//! one dependent read after another. Between two samples those addresses rarely change, so
//! the reader remembers them in a [`Plan`] and fetches all of them with one `read_many`
//! (one process_vm_readv for a live process). The copy is then checked against itself —
//! every list link must still point where the plan says — and any difference sends the
//! sample down the full walk, which makes a new plan.

use super::layout::{GilSource, Layout};
use super::threads::PyThread;
use crate::process::Memory;
use crate::process::memory::le_u64;

/// Largest chunk copied whole; bigger ones (rare, huge frames) are left to per-frame reads.
const MAX_PLANNED_CHUNK: u64 = 256 << 10;

/// Addresses learned by the last full walk.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    interp: u64,
    /// The interpreter's GIL state (3.12+), read whole.
    gil: u64,
    tstates: Vec<u64>,
    /// Per thread: its data-stack chunks, newest first.
    chunks: Vec<Vec<PlannedChunk>>,
    /// Per thread: other regions its last walk read (frames outside the chunks: all frames
    /// before 3.11, generator and entry frames after; the C frame of 3.11/3.12).
    extra: Vec<Vec<(u64, u64)>>,
    /// Buffers of earlier snapshots, handed back by [`Plan::recycle`]: a sample copies tens
    /// of kilobytes, and allocating and zeroing them anew on every tick was a measurable
    /// share of the sampler's CPU.
    spare: Spare,
}

/// Buffers and lists handed back by [`Plan::recycle`] for the next [`Plan::read`].
#[derive(Debug, Clone, Default)]
struct Spare {
    /// Byte buffers, shortest first.
    bufs: Vec<Vec<u8>>,
    /// Empty per-thread region lists.
    lists: Vec<Vec<(u64, Vec<u8>)>>,
    /// Per thread: the last snapshot's regions, sorted by address, whose buffers go back
    /// to the same addresses in the next read.
    kept: Vec<Vec<(u64, Vec<u8>)>>,
    /// The last snapshot's thread-state copies, in thread order.
    raws: Vec<Vec<u8>>,
    /// Empty outer lists for the next snapshot's chunks (two take turns).
    outer: Vec<Vec<(u64, Vec<u8>)>>,
    outer_next: Vec<Vec<(u64, Vec<u8>)>>,
    /// The empty thread list of the last snapshot.
    threads: Vec<PyThread>,
}

impl Spare {
    /// A buffer of `len` bytes, with stale contents (the caller overwrites every byte).
    /// The shortest spare buffer that is long enough is taken: a sample asks for the same
    /// sizes as the last one, so each gets its own buffer back and nothing is zeroed again.
    fn take(&mut self, len: usize) -> Vec<u8> {
        let i = self.bufs.partition_point(|b| b.len() < len);
        let mut b = if i < self.bufs.len() {
            self.bufs.remove(i)
        } else {
            self.bufs.pop().unwrap_or_default()
        };
        b.resize(len, 0);
        b
    }

    /// A buffer of `len` bytes for the region at `addr`: the one that held it in `old`
    /// (sorted by address) if any, else one from the pool.
    fn reuse(&mut self, old: &mut [(u64, Vec<u8>)], addr: u64, len: usize) -> Vec<u8> {
        match old.binary_search_by_key(&addr, |r| r.0) {
            Ok(j) if old[j].1.capacity() > 0 => {
                let mut b = std::mem::take(&mut old[j].1);
                b.resize(len, 0);
                b
            }
            _ => self.take(len),
        }
    }

    fn give(&mut self, b: Vec<u8>) {
        if b.capacity() == 0 {
            return;
        }
        // Bounded within one read too (see `Spare::trim` for the bound between samples).
        const MAX_SPARE: usize = 4096;
        if self.bufs.len() < MAX_SPARE {
            let at = self.bufs.partition_point(|s| s.len() < b.len());
            self.bufs.insert(at, b);
        }
    }

    /// Keep at most `keep` spare buffers, the longest. Buffers also come from outside the
    /// plan (the code heads the reader fetches for new code, copies of a full walk), and
    /// each would otherwise stay in the pool for good: on a target that keeps making code,
    /// the pool filled towards its 4,096 buffers over ten minutes (~1.1 MiB, the soak's
    /// growth). A sample needs from the pool only buffers for regions at new addresses,
    /// never more than one sample's worth.
    fn trim(&mut self, keep: usize) {
        let extra = self.bufs.len().saturating_sub(keep);
        self.bufs.drain(..extra);
    }
}

/// A data-stack chunk and how much of it to copy: the part in use lately plus some room to
/// grow, not the whole (usually mostly empty) allocation.
#[derive(Debug, Clone, Copy)]
struct PlannedChunk {
    addr: u64,
    size: u64,
    /// Bytes in use lately: the most seen, decaying towards the current use, so a stack
    /// that goes up and down between samples stays inside the copy.
    high: u64,
}

/// Bytes copied beyond a chunk's recent use, so a stack that grew a little since the last
/// sample is still covered by the copy. A frame past the copy costs a read of its own.
const GROWTH_ROOM: u64 = 256;

/// The kernel's cost of a remote read is mostly per page touched, so a copy always runs to
/// the end of its last page: the bytes up to there are almost free.
const PAGE: u64 = 4096;

impl PlannedChunk {
    fn new(addr: u64, size: u64, used: u64) -> PlannedChunk {
        let mut c = PlannedChunk {
            addr,
            size,
            high: 0,
        };
        c.saw(used);
        c
    }

    /// Plan the next copy after seeing `used` bytes in use.
    fn saw(&mut self, used: u64) {
        let used = used.min(self.size);
        self.high = used.max(self.high - (self.high.saturating_sub(used)) / 8);
    }

    /// Bytes to copy: the recent use plus room to grow, to the end of that page.
    fn copy(&self) -> u64 {
        let end = self
            .addr
            .saturating_add(self.high)
            .saturating_add(GROWTH_ROOM)
            .div_ceil(PAGE)
            .saturating_mul(PAGE);
        end.saturating_sub(self.addr)
            .clamp(self.high.min(self.size), self.size)
    }
}

/// One sample's copy of the thread states and their data-stack chunks.
pub struct Snapshot {
    /// The thread states, in list order.
    pub threads: Vec<PyThread>,
    /// Per thread: copies of its chunks, for [`crate::process::Overlay`].
    pub chunks: Vec<Vec<(u64, Vec<u8>)>>,
    /// Per thread, when validation was asked for: whether the read itself vouches for it.
    pub still: Option<Vec<Still>>,
    /// The GIL's hands as the read's first group saw them, where the layout knows its
    /// switch count (see [`Epoch`]).
    pub epoch: Option<Epoch>,
}

/// The GIL's last holder and the count of its changes of hands at one moment. The count
/// only grows, by one each time another thread takes the GIL, so two readings that agree
/// mean no thread but that holder took the GIL in between: no other thread ran Python
/// code, and every other thread's stack stayed as it was. Two exact readings one change
/// apart mean that only the later one's holder took it in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// The thread state that last took the GIL.
    pub holder: u64,
    switches: u64,
    /// The read's end saw the same hands as its start. A single reading can be torn (the
    /// holder from before a change of hands, the count from after it); two that agree
    /// around a read of microseconds are not.
    exact: bool,
}

impl Epoch {
    /// Was the thread state `tstate`, still at `earlier` and not the GIL's last holder then,
    /// still from then to this reading? Yes when the hands are the same; and when they
    /// changed once, between exact readings, to another thread than `tstate`: the one
    /// change is that thread taking the GIL. (At 1000 Hz on busy threads that swap the GIL
    /// every 5 ms, a tick sees one change in five; two or more mean some thread in between
    /// is not known, and every stack is read again.)
    pub fn still_since(&self, earlier: &Epoch, tstate: u64) -> bool {
        let same = self.holder == earlier.holder && self.switches == earlier.switches;
        let one_change =
            self.exact && earlier.exact && self.switches == earlier.switches.wrapping_add(1);
        earlier.holder != tstate && self.holder != tstate && (same || one_change)
    }

    /// Did the read's end see the same hands as its start?
    pub fn exact(&self) -> bool {
        self.exact
    }

    /// Did the GIL change hands at most once from `earlier` to this reading?
    pub fn follows(&self, earlier: &Epoch) -> bool {
        self.switches.wrapping_sub(earlier.switches) <= 1
    }

    /// This reading as an exact one: what a guess assumes of the next.
    pub fn assumed_exact(self) -> Epoch {
        Epoch {
            exact: true,
            ..self
        }
    }
}

/// What a batched read says about one thread's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Still {
    /// The thread could not have run Python code while it was copied: it did not hold the
    /// GIL, and the GIL did not change hands from the start of the read to its end. Its copy
    /// is consistent as it is.
    Quiet,
    /// The batch cannot tell: the caller takes a second look (see
    /// [`super::frames::second_look`]).
    Unknown,
}

/// Bytes covering `locked` and `last_holder` of a GIL state, and `switch_number` where
/// [`gil_switches`] knows it.
fn gil_span(l: &Layout) -> Option<(u64, u64)> {
    match l.gil {
        GilSource::InterpGil {
            locked,
            last_holder,
            ..
        } => {
            let lo = locked.min(last_holder);
            let hi = locked.max(last_holder).max(gil_switches(l).unwrap_or(0)) + 8;
            Some((lo, hi - lo))
        }
        GilSource::RuntimeTstateCurrent(_) => None,
    }
}

/// Offset of `switch_number` in the GIL state: the count of changes of `last_holder`, right
/// after `locked` in every version that has the GIL in the interpreter (3.12+). Only for
/// builds with a GIL, and only when `last_holder` and `locked` sit as in those versions.
fn gil_switches(l: &Layout) -> Option<u64> {
    match l.gil {
        GilSource::InterpGil {
            locked,
            last_holder,
            ..
        } if !l.free_threaded && last_holder + 8 == locked => Some(locked + 8),
        _ => None,
    }
}

impl Plan {
    /// Learn the addresses from a full walk's result (single-interpreter processes only:
    /// subinterpreters take the full walk every time).
    pub fn learn<M: Memory + ?Sized>(mem: &M, l: &Layout, threads: &[PyThread]) -> Option<Plan> {
        let interp = threads.first()?.interp;
        if threads.iter().any(|t| t.interp != interp) {
            return None;
        }
        let gil = match l.gil {
            GilSource::InterpGil { ceval_gil, .. } if !l.free_threaded => {
                let mut b = [0u8; 8];
                mem.read(interp + ceval_gil, &mut b).ok()?;
                u64::from_le_bytes(b)
            }
            _ => 0,
        };
        let mut chunks = Vec::with_capacity(threads.len());
        for t in threads {
            chunks.push(chunk_plan(mem, l, &t.raw));
        }
        Some(Plan {
            interp,
            gil,
            tstates: threads.iter().map(|t| t.tstate).collect(),
            extra: vec![Vec::new(); chunks.len()],
            chunks,
            spare: Spare::default(),
        })
    }

    /// Remember the regions thread `i`'s walk read outside its chunks, to fetch them with
    /// the next batch. Harmless when the stack changes: they are re-read fresh, and a frame
    /// at a new address is simply read on its own.
    pub fn remember(&mut self, i: usize, regions: &[(u64, u64)]) {
        if let Some(slot) = self.extra.get_mut(i) {
            slot.clear();
            slot.extend_from_slice(regions);
        }
    }

    /// For each of `threads` that this plan also knew (the same thread state), read the
    /// regions its last walk read outside its chunks (frames, code objects' heads) in one
    /// batch, into its entry of `out` (kept sorted): a full walk after the thread list
    /// changed then finds most frames in the copy instead of reading them one by one. The
    /// copy is fresh, only its addresses are old: a frame that moved is read on its own.
    pub fn prefetch<M: Memory + ?Sized>(
        &self,
        mem: &M,
        threads: &[PyThread],
        out: &mut [Vec<(u64, Vec<u8>)>],
    ) {
        let mut bufs: Vec<(usize, u64, Vec<u8>)> = Vec::new();
        for (i, t) in threads.iter().enumerate().take(out.len()) {
            if let Some(k) = self.tstates.iter().position(|a| *a == t.tstate) {
                for &(addr, len) in &self.extra[k] {
                    bufs.push((i, addr, vec![0u8; len.min(4096) as usize]));
                }
            }
        }
        if bufs.is_empty() {
            return;
        }
        let mut reqs: Vec<(u64, &mut [u8])> =
            bufs.iter_mut().map(|(_, a, b)| (*a, &mut b[..])).collect();
        if mem.read_many(&mut reqs).is_err() {
            // Something there was freed and unmapped: the walk reads what it needs.
            return;
        }
        for (i, addr, buf) in bufs {
            out[i].push((addr, buf));
        }
        for list in out.iter_mut() {
            list.sort_unstable_by_key(|c| c.0);
        }
    }

    /// Read everything in one batch and check it; None when anything moved. With
    /// `validate`, the snapshot says which stacks the read itself vouches for (see
    /// [`Still`]).
    /// The threads `skip` marks (by list position) get their thread state read but not
    /// their stack: no chunk copies, and their plan is kept for when they are read again.
    pub fn read<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        runtime: u64,
        validate: bool,
        skip: &[bool],
    ) -> Option<Snapshot> {
        let ts_size = l.ts_size.clamp(64, 4096) as usize;
        let n = self.tstates.len();
        let mut head = [0u8; 8];
        let mut threads_head = [0u8; 8];
        let mut next_interp = [0u8; 8];
        let mut gil_ptr = [0u8; 8];
        let gil_span = gil_span(l).filter(|_| self.gil != 0);
        let gil_len = gil_span.map(|s| s.1 as usize).unwrap_or(8).min(64);
        let mut gil_state = [0u8; 64];
        let gil_state = &mut gil_state[..gil_len];
        let mut gil_again = [0u8; 64];
        let gil_again = &mut gil_again[..gil_len];
        // With a GIL, only its holder can change Python frames. When the GIL's holder and
        // switch count are the same at the end of the read as at its start, every other
        // thread was still, and only the holder's stack needs a second look.
        // The GIL is read again at the end in both modes: an exact reading (see Epoch) lets
        // a later sample hand out stacks over one change of hands.
        let switches = gil_switches(l).filter(|_| gil_span.is_some());
        let spare = &mut self.spare;
        let mut tstates: Vec<PyThread> = std::mem::take(&mut spare.threads);
        // Each thread state and region gets back the buffer it had last time.
        let mut raws = std::mem::take(&mut spare.raws);
        for b in raws.drain(n.min(raws.len())..) {
            spare.give(b);
        }
        raws.resize_with(n, Vec::new);
        for b in raws.iter_mut() {
            if b.len() != ts_size {
                *b = spare.take(ts_size);
            }
        }
        let mut kept = std::mem::take(&mut spare.kept);
        // Chunks first (newest first, as planned), then the extra regions.
        let mut chunks: Vec<Vec<(u64, Vec<u8>)>> = std::mem::take(&mut spare.outer);
        for (i, (cs, ex)) in self.chunks.iter().zip(&self.extra).enumerate() {
            let mut old = kept.get_mut(i).map(std::mem::take).unwrap_or_default();
            let mut list = spare.lists.pop().unwrap_or_default();
            let (cs, ex) = if skip.get(i) == Some(&true) {
                (&[][..], &[][..])
            } else {
                (&cs[..], &ex[..])
            };
            for (addr, len) in cs
                .iter()
                .map(|c| (c.addr, c.copy()))
                .chain(ex.iter().copied())
            {
                list.push((addr, spare.reuse(&mut old, addr, len as usize)));
            }
            for (_, b) in old.drain(..) {
                spare.give(b);
            }
            spare.lists.push(old);
            chunks.push(list);
        }
        for mut old in kept.drain(..) {
            for (_, b) in old.drain(..) {
                spare.give(b);
            }
        }
        spare.outer_next = kept;
        {
            // Sized for every request at once: growing it cost a reallocation or two a tick.
            let regions: usize = chunks.iter().map(Vec::len).sum();
            let mut reqs: Vec<(u64, &mut [u8])> = Vec::with_capacity(7 + n + regions);
            // The GIL's state comes first, in a group of its own: the kernel copies a group
            // in address order, and the GIL must be seen before any frame is copied, and
            // again after the last (the final group), to vouch for the threads that did not
            // hold it.
            if let Some((lo, _)) = gil_span {
                reqs.push((self.gil + lo, &mut *gil_state));
            }
            let gil_first = reqs.len();
            reqs.push((runtime + l.rt_interp_head, &mut head));
            reqs.push((self.interp + l.is_threads_head, &mut threads_head));
            reqs.push((self.interp + l.is_next, &mut next_interp));
            match l.gil {
                GilSource::RuntimeTstateCurrent(off) => reqs.push((runtime + off, &mut gil_ptr)),
                GilSource::InterpGil { ceval_gil, .. } => {
                    reqs.push((self.interp + ceval_gil, &mut gil_ptr));
                }
            }
            for (addr, buf) in self.tstates.iter().zip(raws.iter_mut()) {
                reqs.push((*addr, buf));
            }
            for cs in chunks.iter_mut() {
                for (addr, buf) in cs.iter_mut() {
                    reqs.push((*addr, buf));
                }
            }
            let first = reqs.len();
            if let (Some(_), Some((lo, _))) = (switches, gil_span) {
                reqs.push((self.gil + lo, &mut *gil_again));
            }
            mem.read_many_then(&mut reqs, &[gil_first, first]).ok()?;
        }
        // Every link must still be where the plan says.
        let first = self.tstates.first().copied().unwrap_or(0);
        let mut moved = u64::from_le_bytes(head) != self.interp
            || u64::from_le_bytes(threads_head) != first
            || u64::from_le_bytes(next_interp) != 0;
        for (i, raw) in raws.iter().enumerate() {
            let next = self.tstates.get(i + 1).copied().unwrap_or(0);
            moved |= le_u64(raw, l.ts_next as usize) != next
                || le_u64(raw, l.ts_interp as usize) != self.interp;
        }
        let holder = match l.gil {
            _ if l.free_threaded => 0,
            GilSource::RuntimeTstateCurrent(_) => u64::from_le_bytes(gil_ptr),
            GilSource::InterpGil {
                locked,
                last_holder,
                ..
            } => {
                moved |= u64::from_le_bytes(gil_ptr) != self.gil;
                match gil_span {
                    Some((lo, _)) => {
                        let is_locked = le_u64(gil_state, (locked - lo) as usize) as u32 != 0;
                        let last = le_u64(gil_state, (last_holder - lo) as usize);
                        if is_locked { last } else { 0 }
                    }
                    None => 0,
                }
            }
        };
        if moved {
            self.recycle_parts(raws, chunks);
            return None;
        }
        // Did the GIL stay with one thread (or free) from the start of the read to its end?
        // Then every thread but that one was still while it was copied.
        let mut still = validate.then(|| vec![Still::Unknown; n]);
        let mut exact = false;
        if let (Some(switch), Some((lo, _)), GilSource::InterpGil { last_holder, .. }) =
            (switches, gil_span, l.gil)
        {
            let at = |b: &[u8], off: u64| le_u64(b, (off - lo) as usize);
            let last = at(gil_state, last_holder);
            exact = last == at(gil_again, last_holder)
                && at(gil_state, switch) == at(gil_again, switch);
            if let (Some(v), true) = (&mut still, exact) {
                for (s, ts) in v.iter_mut().zip(&self.tstates) {
                    if *ts != last {
                        *s = Still::Quiet;
                    }
                }
            }
        }
        // A chunk that was replaced is dropped from the copy (its frames are then read one
        // by one); a chunk that only grew past the copied length is handled the same way.
        for (i, raw) in raws.iter().enumerate() {
            if skip.get(i) == Some(&true) {
                continue;
            }
            let current = l
                .ts_datastack_chunk
                .map(|off| le_u64(raw, off as usize))
                .unwrap_or(0);
            let planned = self.chunks[i].len();
            if planned > 0 && chunks[i].first().map(|c| c.0) != Some(current) {
                for (_, b) in chunks[i].drain(..planned) {
                    self.spare.give(b);
                }
                self.chunks[i].clear();
            }
            // Copy next time what is in use now, plus room to grow.
            for (j, planned) in self.chunks[i].iter_mut().enumerate() {
                let used = if j == 0 {
                    let top = l
                        .ts_datastack_chunk
                        .map(|off| le_u64(raw, off as usize + 8))
                        .unwrap_or(0);
                    top.wrapping_sub(planned.addr)
                } else {
                    24 + le_u64(&chunks[i][j].1, 16).saturating_mul(8)
                };
                planned.saw(used);
            }
        }
        tstates.extend(
            self.tstates
                .iter()
                .zip(raws)
                .map(|(addr, raw)| PyThread::from_raw(l, *addr, self.interp, raw, holder)),
        );
        for cs in chunks.iter_mut() {
            cs.sort_unstable_by_key(|c| c.0);
        }
        let epoch = match (gil_switches(l), gil_span, l.gil) {
            (Some(switch), Some((lo, _)), GilSource::InterpGil { last_holder, .. }) => {
                Some(Epoch {
                    holder: le_u64(gil_state, (last_holder - lo) as usize),
                    switches: le_u64(gil_state, (switch - lo) as usize),
                    exact,
                })
            }
            _ => None,
        };
        Some(Snapshot {
            threads: tstates,
            chunks,
            still,
            epoch,
        })
    }

    /// Hand back a snapshot's buffers once its sample is done, for the next [`Plan::read`].
    pub fn recycle(&mut self, mut threads: Vec<PyThread>, chunks: Vec<Vec<(u64, Vec<u8>)>>) {
        let raws = threads.drain(..).map(|t| t.raw).collect();
        self.spare.threads = threads;
        self.recycle_parts(raws, chunks);
    }

    fn recycle_parts(&mut self, raws: Vec<Vec<u8>>, chunks: Vec<Vec<(u64, Vec<u8>)>>) {
        let held = raws.len() + chunks.iter().map(Vec::len).sum::<usize>();
        let spare = &mut self.spare;
        for b in std::mem::replace(&mut spare.raws, raws) {
            spare.give(b);
        }
        for mut list in std::mem::replace(&mut spare.kept, chunks) {
            for (_, b) in list.drain(..) {
                spare.give(b);
            }
        }
        spare.outer = std::mem::take(&mut spare.outer_next);
        spare.trim(held);
    }
}

/// The chunks of one thread and how much of each to copy.
fn chunk_plan<M: Memory + ?Sized>(mem: &M, l: &Layout, tstate: &[u8]) -> Vec<PlannedChunk> {
    let Some(off) = l.ts_datastack_chunk else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chunk = le_u64(tstate, off as usize);
    let mut used = le_u64(tstate, off as usize + 8).wrapping_sub(chunk);
    while chunk != 0 && out.len() < 64 {
        let mut head = [0u8; 24];
        if mem.read(chunk, &mut head).is_err() {
            break;
        }
        let size = le_u64(&head, 8);
        if !(24..=MAX_PLANNED_CHUNK).contains(&size) {
            break;
        }
        out.push(PlannedChunk::new(chunk, size, used));
        chunk = le_u64(&head, 0);
        // Older chunks record how much of them is in use.
        if chunk != 0 {
            let mut older = [0u8; 24];
            if mem.read(chunk, &mut older).is_err() {
                break;
            }
            used = 24 + le_u64(&older, 16).saturating_mul(8);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A process image read twice: a batched read's groups see `before`, except the last
    /// one (the GIL's second reading), which sees `after`, as when the target runs
    /// while the batch is being copied.
    struct Racing {
        before: crate::process::ImageMemory,
        after: crate::process::ImageMemory,
    }

    impl Memory for Racing {
        fn read(&self, addr: u64, buf: &mut [u8]) -> crate::process::memory::MemResult<()> {
            self.before.read(addr, buf)
        }
        fn read_many_then(
            &self,
            reqs: &mut [(u64, &mut [u8])],
            cuts: &[usize],
        ) -> crate::process::memory::MemResult<()> {
            let last = cuts.last().copied().unwrap_or(0);
            let (a, b) = reqs.split_at_mut(last);
            self.before.read_many(a)?;
            self.after.read_many(b)
        }
    }

    pub(crate) const RUNTIME: u64 = 0x1000;
    pub(crate) const INTERP: u64 = 0x2000;
    pub(crate) const GIL: u64 = 0x8000;
    pub(crate) const TSTATES: [u64; 2] = [0x3000, 0x4000];
    pub(crate) const CFRAMES: [u64; 2] = [0x5000, 0x6000];

    /// One thread of a 3.12 test process: its thread id, the innermost frame its C frame
    /// points at, and its data stack (the chunk's address, and where its use ends) if any.
    pub(crate) struct Thread312 {
        pub thread_id: u64,
        pub frame: u64,
        pub datastack: Option<(u64, u64)>,
    }

    /// A 3.12 process whose thread list is `threads`, thread i's state at `TSTATES[i]` and
    /// its C frame at `CFRAMES[i]`: the thread state at `holder` (one of them, or none)
    /// last held the GIL, after `switches` changes of hands. The frames and data stacks are
    /// the caller's to add.
    pub(crate) fn process_312(
        l: &Layout,
        holder: u64,
        switches: u64,
        threads: &[Thread312],
    ) -> crate::process::ImageMemory {
        assert!(
            threads.len() <= TSTATES.len(),
            "room for {} threads",
            TSTATES.len()
        );
        let (
            GilSource::InterpGil {
                ceval_gil,
                locked,
                last_holder,
            },
            super::super::layout::FrameRoot::CFrame { cframe, current },
        ) = (l.gil, l.frame_root)
        else {
            panic!("3.12 has its GIL in the interpreter and reaches frames through C frames");
        };
        let word = |buf: &mut Vec<u8>, off: u64, v: u64| {
            buf[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        let mut m = crate::process::ImageMemory::new();
        let mut rt = vec![0u8; 4096];
        word(&mut rt, l.rt_interp_head, INTERP);
        let mut interp = vec![0u8; 4096];
        word(&mut interp, l.is_threads_head, TSTATES[0]);
        word(&mut interp, ceval_gil, GIL);
        let mut gil = vec![0u8; 64];
        word(&mut gil, last_holder, holder);
        word(&mut gil, locked, 1);
        word(&mut gil, gil_switches(l).unwrap(), switches);
        m.add(RUNTIME, rt).add(INTERP, interp).add(GIL, gil);
        for (i, t) in threads.iter().enumerate() {
            let mut ts = vec![0u8; l.ts_size as usize];
            word(&mut ts, l.ts_interp, INTERP);
            let next = if i + 1 < threads.len() {
                TSTATES[i + 1]
            } else {
                0
            };
            word(&mut ts, l.ts_next, next);
            word(&mut ts, l.ts_thread_id, t.thread_id);
            word(&mut ts, cframe, CFRAMES[i]);
            if let Some((chunk, top)) = t.datastack {
                let ds = l.ts_datastack_chunk.unwrap();
                word(&mut ts, ds, chunk);
                word(&mut ts, ds + 8, top);
            }
            let mut cf = vec![0u8; 64];
            word(&mut cf, current, t.frame);
            m.add(TSTATES[i], ts).add(CFRAMES[i], cf);
        }
        m
    }

    /// [`process_312`] with two threads (ids 100 and 101) and no data stacks; thread i's
    /// innermost frame is `frames[i]`.
    pub(crate) fn image_312(
        l: &Layout,
        holder: usize,
        switches: u64,
        frames: [u64; 2],
    ) -> crate::process::ImageMemory {
        let thread = |i: usize| Thread312 {
            thread_id: 100 + i as u64,
            frame: frames[i],
            datastack: None,
        };
        process_312(l, TSTATES[holder], switches, &[thread(0), thread(1)])
    }

    /// The GIL's last holder (thread index), its switch count, and each thread's innermost
    /// frame, as one moment of the target.
    type Moment = (usize, u64, [u64; 2]);

    #[test]
    fn with_a_gil_only_its_holder_is_re_read() {
        let l = Layout::from_table(super::super::layout::Version::new(3, 12, 1), false).unwrap();
        let frames = [0x7000, 0x7100];
        let still = image_312(&l, 0, 5, frames);
        let threads = super::super::threads::thread_states(&still, &l, RUNTIME).unwrap();
        let mut plan = Plan::learn(&still, &l, &threads).unwrap();
        // One batched read after another: the target at the start of the read and at its end
        // (the GIL's second reading), and what the batch says of each thread.
        let reads: [(Moment, Moment, [Still; 2]); 5] = [
            // Thread 0 holds the GIL: it needs a second look; thread 1 was still.
            (
                (0, 5, frames),
                (0, 5, frames),
                [Still::Unknown, Still::Quiet],
            ),
            // The holder ran during the read: still only the holder needs a look.
            (
                (0, 5, frames),
                (0, 5, [0x7080, 0x7100]),
                [Still::Unknown, Still::Quiet],
            ),
            // The GIL changed hands during the read: thread 1 may have run.
            (
                (0, 5, frames),
                (1, 6, [0x7000, 0x7180]),
                [Still::Unknown, Still::Unknown],
            ),
            // Gone and back (0 → 1 → 0): the same holder, but the count moved.
            (
                (0, 5, frames),
                (0, 7, frames),
                [Still::Unknown, Still::Unknown],
            ),
            // Thread 1 holds it: thread 0 was still.
            (
                (1, 8, frames),
                (1, 8, frames),
                [Still::Quiet, Still::Unknown],
            ),
        ];
        for (k, ((h0, s0, f0), (h1, s1, f1), want)) in reads.into_iter().enumerate() {
            let memory = Racing {
                before: image_312(&l, h0, s0, f0),
                after: image_312(&l, h1, s1, f1),
            };
            let snap = plan.read(&memory, &l, RUNTIME, true, &[]).unwrap();
            assert_eq!(snap.still.unwrap(), want, "read {k}");
        }
    }

    #[test]
    fn a_full_walk_gets_what_the_old_plan_knew_of_the_threads_still_there() {
        let l = Layout::from_table(super::super::layout::Version::new(3, 12, 1), false).unwrap();
        let frames = [0x7000, 0x7100];
        let m = image_312(&l, 0, 5, frames);
        let threads = super::super::threads::thread_states(&m, &l, RUNTIME).unwrap();
        let mut plan = Plan::learn(&m, &l, &threads).unwrap();
        // The last walk read thread 1's C frame and thread 0's C frame outside the chunks.
        plan.remember(0, &[(CFRAMES[0], 16)]);
        plan.remember(1, &[(CFRAMES[1], 16)]);
        // Thread 0 is gone and a new thread came: only thread 1's regions are fetched,
        // into its new place in the list, next to what its list already holds.
        let mut now = vec![threads[1].clone(), threads[0].clone()];
        now[1].tstate = 0x9000;
        let mut out = vec![vec![(0x100u64, vec![7u8; 8])], Vec::new()];
        plan.prefetch(&m, &now, &mut out);
        assert_eq!(out[0].len(), 2);
        assert_eq!(out[0][0], (0x100, vec![7u8; 8]));
        assert_eq!(
            out[0][1],
            (
                CFRAMES[1],
                crate::process::MemoryExt::bytes(&m, CFRAMES[1], 16).unwrap()
            )
        );
        assert!(out[1].is_empty());
        // A region that is no longer there: nothing is added, the walk reads for itself.
        plan.remember(1, &[(CFRAMES[1], 16), (0xdead_0000, 16)]);
        let mut out = vec![Vec::new(), Vec::new()];
        plan.prefetch(&m, &now, &mut out);
        assert!(out.iter().all(|o| o.is_empty()));
    }

    #[test]
    fn buffers_from_outside_the_plan_do_not_pile_up_in_the_pool() {
        let l = Layout::from_table(super::super::layout::Version::new(3, 12, 1), false).unwrap();
        let m = image_312(&l, 0, 5, [0x7000, 0x7100]);
        let threads = super::super::threads::thread_states(&m, &l, RUNTIME).unwrap();
        let mut plan = Plan::learn(&m, &l, &threads).unwrap();
        // A target that keeps making code: every sample, the reader adds the head of a new
        // code object to a thread's copy (as `fetch_code_heads` does), which the plan did
        // not ask for and the next read hands to the pool.
        for k in 0..200u64 {
            let mut snap = plan.read(&m, &l, RUNTIME, true, &[]).unwrap();
            snap.chunks[0].push((0x10_0000 + k * 0x100, vec![0u8; 256]));
            let held = snap.threads.len() + snap.chunks.iter().map(Vec::len).sum::<usize>();
            plan.recycle(snap.threads, snap.chunks);
            assert!(
                plan.spare.bufs.len() <= held,
                "{} spare buffers after sample {k}, for samples of {held}",
                plan.spare.bufs.len()
            );
        }
    }

    #[test]
    fn chunk_copy_runs_to_the_page_end_and_follows_recent_use() {
        // A 3.12 thread's first chunk: 16 KiB, page-aligned; 3.5 KiB in use.
        let mut c = PlannedChunk::new(0x7f17_8434_d000, 16384, 3584);
        assert_eq!(c.copy(), 4096);
        // Close to a page end, the room to grow takes the next page too.
        c.saw(12200);
        assert_eq!(c.copy(), 16384);
        c.saw(9000);
        assert_eq!(c.copy(), 12288);
        // After the stack shrinks, the copy shrinks back over a few samples, not at once.
        c.saw(1000);
        assert_eq!(c.copy(), 12288);
        for _ in 0..40 {
            c.saw(1000);
        }
        assert_eq!(c.copy(), 4096);
        // Never past the chunk, whatever the thread state claims.
        c.saw(1 << 40);
        assert_eq!(c.copy(), 16384);
        // An unaligned chunk ends its copy on a page boundary as well.
        let c = PlannedChunk::new(0x5555_0000_0e00, 65536, 100);
        assert_eq!(c.addr + c.copy(), 0x5555_0000_1000);
    }

    #[test]
    fn spare_buffers_go_back_to_requests_of_their_size() {
        // One sample's sizes: thread states, data-stack copies, code heads.
        let sizes = [288usize, 6144, 256, 288, 3072, 256, 80];
        let mut spare = Spare::default();
        let bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| spare.take(n)).collect();
        let ptrs: Vec<*const u8> = bufs.iter().map(|b| b.as_ptr()).collect();
        for b in bufs {
            spare.give(b);
        }
        // The next sample asks for the same sizes in the same order: every request gets a
        // buffer of exactly its size, so none is grown (zeroed) or shrunk for good.
        for &n in &sizes {
            let b = spare.take(n);
            assert_eq!(b.len(), n);
            assert!(ptrs.contains(&b.as_ptr()));
        }
        assert!(spare.bufs.is_empty());
        // A region read again at the same address gets its own buffer back.
        let mut old = vec![
            (0x7f1e_300d_b000u64, vec![7u8; 6144]),
            (0x7f1e_3125_ceb0, vec![9; 256]),
        ];
        let at = old[1].1.as_ptr();
        let b = spare.reuse(&mut old, 0x7f1e_3125_ceb0, 256);
        assert_eq!((b.as_ptr(), b.len()), (at, 256));
        assert!(old[1].1.is_empty());
        // Taken already, or never there: from the pool.
        assert!(
            spare
                .reuse(&mut old, 0x7f1e_3125_ceb0, 256)
                .iter()
                .all(|&x| x == 0)
        );
        assert_eq!(spare.reuse(&mut old, 0x1000, 8).len(), 8);
        // More than is spare: the longest one left is grown, then fresh ones.
        spare.give(vec![1; 16]);
        assert_eq!(
            spare.take(32),
            vec![1; 16].into_iter().chain([0; 16]).collect::<Vec<_>>()
        );
        assert_eq!(spare.take(8), vec![0; 8]);
    }
}
