//! Walking one thread's chain of interpreter frames.

use std::sync::Arc;

use super::PyError;
use super::code::{CODE_HEAD, CodeCache, CodeEntry, Fingerprint, fingerprint_is};
use super::layout::{FrameRoot, InstrSource, Layout};
use super::locals::read_locals;
use crate::process::memory::{le_u8, le_u32, le_u64};
use crate::process::{Memory, MemoryExt};
use crate::sample::{Frame, FrameKind, Frames};

/// Frames shown per stack unless `--depth` says otherwise; the outer ones beyond are
/// counted in a marker frame (see [`hidden_frames`]).
pub const DEFAULT_DEPTH: usize = 4096;

/// Most frames prof follows in one chain, shown or counted: the hard ceiling on the work a
/// hostile or torn chain can cause. Also the largest `--depth`.
pub const MAX_DEPTH: usize = 1 << 16;

/// One Python frame before it is turned into a [`Frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// Address of the frame.
    pub addr: u64,
    /// Address of its code object.
    pub code: u64,
    /// Byte offset of the current instruction (negative: not started).
    pub offset: i64,
    /// First Python frame of a C-level call into the interpreter (for native merging).
    pub is_entry: bool,
    /// An interpreter-owned entry frame (3.12+), not Python code: kept only so its
    /// address is known to the next sample's batched read.
    pub shim: bool,
}

/// Most bytes of data-stack chunks copied per thread; deeper stacks read the rest frame by frame.
const MAX_CHUNK_BYTES: u64 = 4 << 20;
/// Most chunks followed per thread.
const MAX_CHUNKS: usize = 64;
/// `_PyStackChunk` header: previous, size, top (words used), then data.
const CHUNK_HEADER: u64 = 24;

/// Copy the thread's data-stack chunks (3.11+), where every frame of a plain function call
/// lives, so the frame walk reads them locally: one read per chunk instead of one per frame.
/// Buffers in `out` are reused between calls.
pub fn snapshot_datastack<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    tstate: &[u8],
    out: &mut Vec<(u64, Vec<u8>)>,
) {
    let mut used = 0;
    let Some(off) = l.ts_datastack_chunk else {
        out.clear();
        return;
    };
    let mut chunk = le_u64(tstate, off as usize);
    // The live top of the current chunk is in the thread state; older chunks saved theirs.
    let top = le_u64(tstate, off as usize + 8);
    let mut len = top.wrapping_sub(chunk);
    let mut total = 0u64;
    while chunk != 0 && used < MAX_CHUNKS {
        if !(CHUNK_HEADER..=MAX_CHUNK_BYTES).contains(&len) || total + len > MAX_CHUNK_BYTES {
            break;
        }
        if out.len() <= used {
            out.push((0, Vec::new()));
        }
        let slot = &mut out[used];
        slot.0 = chunk;
        slot.1.resize(len as usize, 0);
        if mem.read(chunk, &mut slot.1).is_err() {
            break;
        }
        total += len;
        used += 1;
        let previous = le_u64(&out[used - 1].1, 0);
        if previous == 0 {
            break;
        }
        let mut head = [0u8; CHUNK_HEADER as usize];
        if mem.read(previous, &mut head).is_err() {
            break;
        }
        chunk = previous;
        len = CHUNK_HEADER + le_u64(&head, 16).saturating_mul(8);
    }
    out.truncate(used);
    out.sort_unstable_by_key(|c| c.0);
}

/// The innermost frame pointer of a thread, from a copy of its thread state.
pub fn first_frame<M: Memory + ?Sized>(mem: &M, l: &Layout, tstate: &[u8]) -> Result<u64, PyError> {
    Ok(match l.frame_root {
        FrameRoot::Direct(off) => le_u64(tstate, off as usize),
        FrameRoot::CFrame { cframe, current } => {
            let cf = le_u64(tstate, cframe as usize);
            if cf == 0 { 0 } else { mem.u64(cf + current)? }
        }
    })
}

/// The parts of `copied` that are this thread's data-stack chunks (as opposed to other
/// prefetched regions), into `out`: the current chunk from the thread state and the chain
/// behind it.
pub fn datastack_spans(
    l: &Layout,
    tstate: &[u8],
    copied: &[(u64, Vec<u8>)],
    out: &mut Vec<(u64, u64)>,
) {
    out.clear();
    out.extend(copied_chunks(l, tstate, copied).map(|(chunk, data)| (chunk, data.len() as u64)));
}

/// The thread's data-stack chunks that `copied` holds, newest first: the current chunk
/// from the thread state, then the chain behind it (each chunk's header starts with the
/// previous one), as far as the copy goes.
fn copied_chunks<'c>(
    l: &Layout,
    tstate: &[u8],
    copied: &'c [(u64, Vec<u8>)],
) -> impl Iterator<Item = (u64, &'c [u8])> {
    let mut chunk = l
        .ts_datastack_chunk
        .map_or(0, |off| le_u64(tstate, off as usize));
    std::iter::from_fn(move || {
        let (at, data) = copied.iter().find(|(a, _)| chunk != 0 && *a == chunk)?;
        chunk = le_u64(data, 0);
        Some((*at, data.as_slice()))
    })
    .take(MAX_CHUNKS)
}

/// Bytes read of one frame: its layout's size, bounded so that a wrong size read from the
/// layout can neither miss the fields the walk needs nor make each read large.
fn frame_read_len(l: &Layout) -> usize {
    (l.f_size as usize).clamp(64, 512)
}

/// Regions the walk of `raw` read outside the thread's data-stack chunks (and the
/// 3.11/3.12 C frame, and the heads of the code objects), into `out`, for the next
/// sample's batched read.
pub fn regions_outside(
    l: &Layout,
    tstate: &[u8],
    raw: &[RawFrame],
    chunks: &[(u64, u64)],
    out: &mut Vec<(u64, u64)>,
) {
    let size = frame_read_len(l) as u64;
    let inside = |a: u64| chunks.iter().any(|(s, len)| *s <= a && a + size <= s + len);
    out.clear();
    out.extend(
        raw.iter()
            .filter(|f| !inside(f.addr))
            .map(|f| (f.addr, size)),
    );
    // The code objects' first bytes, so the code cache's check of every entry is free.
    let start = out.len();
    // Recursion repeats a code object frame after frame: those are skipped before sorting.
    let mut previous = None;
    for f in raw.iter().filter(|f| !f.shim) {
        if previous != Some(f.code) {
            out.push((f.code, CODE_HEAD as u64));
            previous = Some(f.code);
        }
    }
    out[start..].sort_unstable();
    let mut kept = start;
    for i in start..out.len() {
        if kept == start || out[kept - 1] != out[i] {
            out[kept] = out[i];
            kept += 1;
        }
    }
    out.truncate(kept);
    if let FrameRoot::CFrame { cframe, current } = l.frame_root {
        let cf = le_u64(tstate, cframe as usize);
        if cf != 0 {
            out.push((cf + current, 8));
        }
    }
}

/// The innermost frame pointer of the thread state at `tstate`, read afresh.
pub fn current_frame<M: Memory + ?Sized>(mem: &M, l: &Layout, tstate: u64) -> Result<u64, PyError> {
    Ok(match l.frame_root {
        FrameRoot::Direct(off) => mem.u64(tstate + off)?,
        FrameRoot::CFrame { cframe, current } => {
            let cf = mem.u64(tstate + cframe)?;
            if cf == 0 { 0 } else { mem.u64(cf + current)? }
        }
    })
}

/// One thread's part in [`second_look`]: the frames its first walk found, and the buffers
/// its second copy is read into.
pub trait Look {
    /// The walked frames, and the second copy's buffers.
    fn parts(&mut self) -> (&[RawFrame], &mut Vec<(u64, Vec<u8>)>);

    /// Whether [`frames_fit`] is known to hold for the walked frames: it held for the same
    /// frames, code objects' sizes and data-stack chunks in an earlier sample (see
    /// [`Steady`]).
    fn fit_known(&self) -> bool {
        false
    }

    /// Where the thread keeps what its last look worked out, if it does (see
    /// [`LookLayout`]).
    fn layout(&mut self) -> Option<&mut LookLayout> {
        None
    }
}

/// What [`second_look`] worked out of one thread's walk and first copy (which regions to
/// copy again, which bytes to compare), kept for the next look at the same walked frames
/// over a first copy of regions at the same places and of the same sizes: it then works
/// out the same.
#[derive(Debug, Default)]
pub struct LookLayout {
    /// Worked out for the thread's walked frames as they are; its owner forgets it when
    /// they change.
    valid: bool,
    /// The first copy's regions it was worked out from: address and length.
    regions: Vec<(u64, usize)>,
    /// The ranges of the first copy compared with the second (None: by a walk).
    same: Option<Vec<(u64, u64)>>,
}

impl LookLayout {
    /// The walked frames changed: work it out again.
    pub fn forget(&mut self) {
        self.valid = false;
    }

    fn holds_for(&self, regions: &[(u64, Vec<u8>)]) -> bool {
        self.valid
            && self.regions.len() == regions.len()
            && self
                .regions
                .iter()
                .zip(regions)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1.len())
    }
}

impl Look for (&[RawFrame], &mut Vec<(u64, Vec<u8>)>) {
    fn parts(&mut self) -> (&[RawFrame], &mut Vec<(u64, Vec<u8>)>) {
        (self.0, self.1)
    }
}

/// What [`second_look`] keeps between samples, so that a warmed-up look does not allocate.
#[derive(Debug, Default)]
pub struct LookScratch {
    /// The frames of the walk of the second copy.
    raw: Vec<RawFrame>,
    /// Per thread: it is looked at.
    wants: Vec<bool>,
    /// Per region of the thread at hand's first copy: it holds a walked frame.
    holds: Vec<bool>,
    /// Walked frames of the thread at hand outside its first copy.
    outside: Vec<u64>,
    /// Per thread: its re-read frame root (two words for a C frame).
    roots: Vec<[[u8; 8]; 2]>,
    /// Per thread: its stack stands (the result).
    stands: Vec<bool>,
    /// Per thread: the byte ranges of its first copy that hold its walked frames other
    /// than the innermost one (a range of `same`), or None when some of those frames lie
    /// outside the first copy; see [`second_look`].
    same_at: Vec<Option<std::ops::Range<usize>>>,
    /// Those ranges of every thread, as (start, end) addresses.
    same: Vec<(u64, u64)>,
    /// Per region of the thread at hand's first copy: the span of its walked frames.
    spans: Vec<(u64, u64)>,
    /// Stacks that stood by the comparison of their bytes, without a second walk.
    by_bytes: u64,
}

/// A second look at the stacks of the `wanted` threads, whose innermost frame pointer was
/// the same after their copy as before it: the regions of the first copy that hold their
/// frames are copied again, then each thread's frame root is read again after them, and a
/// stack is kept only if the root still points at its innermost frame and a walk of the new
/// copy from there finds the same frames (the innermost one may have moved on to another
/// instruction). The pointer check alone passes a thread that returned and called back
/// down to the same depth while it was copied: it leaves the same innermost pointer behind,
/// over frames the copy saw half rewritten.
///
/// In the steady state the walk of the new copy is known without walking it: when the
/// bytes that hold the walked frames other than the innermost one are the same in both
/// copies (one comparison per copied region, from the outermost frame to the end of the
/// innermost caller's), and the innermost frame still decodes to the same code object and
/// caller, a walk of the new copy reads the same words and finds the same frames. A
/// difference anywhere in those bytes, even in words the walk does not read (a caller's
/// locals), falls back to the walk.
///
/// `regions[i]` is thread i's first copy (address-sorted), `looks[i]` its walk of it and
/// the buffers of its second copy (one per thread, reused between samples); `scratch` is
/// reused between samples. Returns, per thread, whether its stack stands.
pub fn second_look<'s, M: Memory + ?Sized, S: Look>(
    mem: &M,
    l: &Layout,
    threads: &[super::threads::PyThread],
    wanted: &[bool],
    regions: &[Vec<(u64, Vec<u8>)>],
    looks: &mut [S],
    scratch: &'s mut LookScratch,
) -> &'s [bool] {
    let n = threads.len();
    debug_assert_eq!(looks.len(), n, "one look per thread");
    let LookScratch {
        raw,
        wants,
        holds,
        outside,
        roots,
        stands,
        same_at,
        same,
        spans,
        by_bytes,
    } = scratch;
    wants.clear();
    wants.extend(
        looks
            .iter_mut()
            .enumerate()
            .map(|(i, s)| wanted.get(i).copied().unwrap_or(false) && !s.parts().0.is_empty()),
    );
    let want = |i: usize| wants.get(i).copied().unwrap_or(false);
    let frame_len = frame_read_len(l);
    same_at.clear();
    same.clear();
    let mut retained = 0usize;
    for (i, look) in looks.iter_mut().enumerate() {
        // A thread not looked at keeps its second copy's buffers and what its last look
        // worked out, for its next look: busy threads take turns with the GIL, and freeing
        // them cost an allocation, a zeroed 4 KiB and a new layout at every turn (~1.5k
        // instructions a tick on threads8). Bounded, for processes of many threads.
        if !want(i) {
            let (_, copy) = look.parts();
            let bytes: usize = copy.iter().map(|c| c.1.capacity()).sum();
            if retained + bytes <= MAX_LOOK_RETAINED {
                retained += bytes;
            } else {
                copy.clear();
                if let Some(kept) = look.layout() {
                    kept.forget();
                }
            }
            same_at.push(None);
            continue;
        }
        // The second copy's buffers still have the places and sizes this layout gave them.
        if let Some(kept) = look.layout()
            && kept.holds_for(&regions[i])
        {
            same_at.push(kept.same.as_ref().map(|v| {
                let start = same.len();
                same.extend_from_slice(v);
                start..same.len()
            }));
            continue;
        }
        let (walked, copy) = look.parts();
        // Which regions hold a walked frame: each frame's region is found by a binary
        // search (the regions are sorted), as deep stacks make a scan of every region for
        // every frame cost millions of steps; consecutive frames mostly share a region, so
        // the last one found is tried first.
        let region = &regions[i];
        holds.clear();
        holds.resize(region.len(), false);
        spans.clear();
        spans.resize(region.len(), (u64::MAX, 0));
        outside.clear();
        // The byte comparison needs every caller's bytes in the first copy, and a walk
        // whose only reads from outside the copies are of the innermost frame's code object
        // (thread-local bytecode is read from live memory).
        let mut by_copy = l.f_tlbc_index.is_none();
        let mut last = 0;
        for (n, f) in walked.iter().enumerate() {
            let within = |k: usize| f.addr.wrapping_sub(region[k].0) < region[k].1.len() as u64;
            let k = if last < region.len() && within(last) {
                Some(last)
            } else {
                region
                    .partition_point(|(addr, _)| *addr <= f.addr)
                    .checked_sub(1)
                    .filter(|&k| within(k))
            };
            match k {
                Some(k) => {
                    holds[k] = true;
                    last = k;
                    // Every caller's bytes, as the walk read them, lie in the copy.
                    let end = f.addr.saturating_add(frame_len as u64);
                    let fits = end - region[k].0 <= region[k].1.len() as u64;
                    if n > 0 && fits {
                        spans[k] = (spans[k].0.min(f.addr), spans[k].1.max(end));
                    }
                    by_copy &= n == 0 || fits;
                }
                None => {
                    outside.push(f.addr);
                    by_copy &= n == 0;
                }
            }
        }
        same_at.push(by_copy.then(|| {
            let start = same.len();
            same.extend(spans.iter().filter(|(lo, hi)| lo < hi));
            start..same.len()
        }));
        // Buffers stay with their slot between samples: no allocation once warmed up.
        let mut k = 0;
        let slot = |copy: &mut Vec<(u64, Vec<u8>)>, k: &mut usize, addr: u64, len: usize| {
            if *k == copy.len() {
                copy.push((0, Vec::new()));
            }
            copy[*k].0 = addr;
            copy[*k].1.resize(len, 0);
            *k += 1;
        };
        for ((addr, data), _) in regions[i].iter().zip(holds.iter()).filter(|(_, h)| **h) {
            slot(copy, &mut k, *addr, data.len());
        }
        // Frames the first copy did not hold (every frame before 3.11, where the full walk
        // read them one by one; generator and entry frames after) are copied in the same
        // batch, instead of one read each during the walk; one that would overlap a copied
        // region is left to the walk.
        let held = k;
        outside.sort_unstable();
        let mut end = 0;
        for &addr in outside.iter() {
            let overlaps = addr < end || {
                let j = copy[..held].partition_point(|(a, _)| *a < addr + frame_len as u64);
                j.checked_sub(1)
                    .is_some_and(|j| copy[j].0 + copy[j].1.len() as u64 > addr)
            };
            if !overlaps {
                slot(copy, &mut k, addr, frame_len);
                end = addr + frame_len as u64;
            }
        }
        copy.truncate(k);
        if k > held {
            copy.sort_unstable_by_key(|c| c.0);
        }
        if let Some(kept) = look.layout() {
            kept.valid = true;
            kept.regions.clear();
            kept.regions
                .extend(regions[i].iter().map(|(a, d)| (*a, d.len())));
            let at = same_at.last().cloned().flatten();
            match (&mut kept.same, at) {
                (Some(v), Some(r)) => {
                    v.clear();
                    v.extend_from_slice(&same[r]);
                }
                (v, r) => *v = r.map(|r| same[r].to_vec()),
            }
        }
    }
    roots.clear();
    roots.resize(n, [[0u8; 8]; 2]);
    stands.clear();
    {
        let mut reqs: Vec<(u64, &mut [u8])> = Vec::new();
        for (i, look) in looks.iter_mut().enumerate() {
            if !want(i) {
                continue;
            }
            for (addr, buf) in look.parts().1.iter_mut() {
                reqs.push((*addr, buf));
            }
        }
        let cut = reqs.len();
        for (i, (t, [a, b])) in threads.iter().zip(roots.iter_mut()).enumerate() {
            if !want(i) {
                continue;
            }
            match l.frame_root {
                FrameRoot::Direct(off) => reqs.push((t.tstate + off, a)),
                FrameRoot::CFrame { cframe, current } => {
                    let cf = le_u64(&t.raw, cframe as usize);
                    reqs.push((t.tstate + cframe, a));
                    if cf != 0 {
                        reqs.push((cf + current, b));
                    }
                }
            }
        }
        if mem.read_many_then(&mut reqs, &[cut]).is_err() {
            stands.resize(n, false);
            return stands;
        }
    }
    stands.extend(looks.iter_mut().enumerate().map(|(i, look)| {
        if !want(i) {
            return false;
        }
        let fit_known = look.fit_known();
        let (walked, copy) = look.parts();
        let first = walked[0].addr;
        let [a, b] = roots[i];
        let root = match l.frame_root {
            FrameRoot::Direct(_) => u64::from_le_bytes(a),
            FrameRoot::CFrame { cframe, .. } => {
                let cf = u64::from_le_bytes(a);
                if cf != le_u64(&threads[i].raw, cframe as usize) || cf == 0 {
                    return false;
                }
                u64::from_le_bytes(b)
            }
        };
        if root != first {
            return false;
        }
        let again = crate::process::Overlay::new(copy, mem);
        let before = crate::process::Overlay::new(&regions[i], mem);
        let unchanged = same_at[i].clone().is_some_and(|r| {
            same[r].iter().all(|&(lo, hi)| {
                let len = (hi - lo) as usize;
                matches!((before.peek(lo, len), again.peek(lo, len)), (Some(a), Some(b)) if a == b)
            }) && same_innermost(&again, l, walked).is_some()
        });
        if unchanged {
            *by_bytes += 1;
        } else if walk(&again, l, first, raw).is_err()
            || raw.len() != walked.len()
            || !raw.iter().zip(walked).enumerate().all(|(k, (x, y))| {
                x.addr == y.addr
                    && x.code == y.code
                    && x.shim == y.shim
                    && (k == 0 || x.offset == y.offset)
            })
        {
            return false;
        }
        fit_known || frames_fit(&before, l, &threads[i].raw, &regions[i], walked)
    }));
    stands
}

/// Most bytes of second-copy buffers kept by the threads a [`second_look`] does not look at.
const MAX_LOOK_RETAINED: usize = 256 << 10;

/// Most bytes of a thread's callers kept by [`Steady`]: a deeper stack is walked every sample.
const MAX_STEADY_BYTES: usize = 256 << 10;

/// What a thread's last stack was read from, kept between samples to recognise it in the
/// next sample's copy without walking it. A thread busy in one place keeps its callers
/// still: when the copy's bytes that hold them (every walked frame but the innermost, each
/// as many bytes as the walk reads of it), the thread state's words the walk starts from,
/// its data-stack chunks (where, how much copied, their headers) and the identity and frame
/// size of every code object on the stack are what they were, then a walk of this copy,
/// [`frames_fit`], [`regions_outside`] and the resolution of the callers would find what
/// they found last time, from the same bytes. Only the innermost frame is decoded again,
/// and it must still be a Python frame of the same code object with the same caller.
///
/// Nothing is trusted from the last sample that this one's copy does not show again: a
/// caller that returned and was called again (the same address, other contents), a
/// freed code object whose address was reused, or another thread state at the same
/// address all differ somewhere in those bytes and take the full walk.
#[derive(Debug, Default)]
pub struct Steady {
    /// The kept stack is the thread's walked frames (with the memo of their resolution).
    armed: bool,
    tstate: u64,
    thread_id: u64,
    depth: usize,
    function_lines: bool,
    /// The C frame pointer of the thread state (3.11 and 3.12), else 0.
    cframe: u64,
    /// The data-stack chunks as the copy held them: address, bytes copied, the header's
    /// size and previous chunk.
    chunks: Vec<[u64; 4]>,
    /// This sample's chunks, compared with `chunks`.
    chunks_now: Vec<[u64; 4]>,
    /// The ranges of the copy that hold the callers (address, length), and their bytes.
    spans: Vec<(u64, u64)>,
    bytes: Vec<u8>,
    /// Each code object on the stack: its fingerprint and its frames' size.
    codes: Vec<(u64, Fingerprint, Option<u64>)>,
    /// [`frames_fit`] held for the kept stack.
    fit: bool,
}

impl Steady {
    /// Forget the kept stack.
    pub fn disarm(&mut self) {
        self.armed = false;
        self.fit = false;
    }

    /// Whether [`frames_fit`] held for the kept stack.
    pub fn fit(&self) -> bool {
        self.armed && self.fit
    }

    /// Note that [`frames_fit`] held for the kept stack.
    pub fn fitted(&mut self) {
        self.fit = self.armed;
    }

    /// Keep `walked`, the consistent stack of thread `t` read from `copied` (its first
    /// copy, address-sorted; `mem` serves it) with `opts`, for the next sample. Nothing is
    /// kept for a stack the next sample could not recognise from its copy alone.
    pub fn arm<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        t: &super::threads::PyThread,
        opts: FrameOptions,
        copied: &[(u64, Vec<u8>)],
        walked: &[RawFrame],
    ) {
        self.armed = false;
        self.fit = false;
        // Thread-local bytecode is read from live memory, not from the copy.
        if opts.locals || l.f_tlbc_index.is_some() || walked.first().is_none_or(|f| f.shim) {
            return;
        }
        let frame_len = frame_read_len(l) as u64;
        self.spans.clear();
        self.bytes.clear();
        // Consecutive callers mostly share a region: one range per run of them.
        let mut run: Option<(usize, u64, u64)> = None;
        for f in &walked[1..] {
            // Wholly inside the region, which also keeps the sums below from overflowing.
            let within = |k: usize| {
                let (start, data) = &copied[k];
                let off = f.addr.wrapping_sub(*start);
                off < data.len() as u64 && off.saturating_add(frame_len) <= data.len() as u64
            };
            let k = match run {
                Some((k, ..)) if within(k) => k,
                _ => match copied
                    .partition_point(|(a, _)| *a <= f.addr)
                    .checked_sub(1)
                    .filter(|&k| within(k))
                {
                    Some(k) => k,
                    None => return,
                },
            };
            run = match run {
                Some((j, lo, hi)) if j == k => {
                    Some((k, lo.min(f.addr), hi.max(f.addr + frame_len)))
                }
                other => {
                    if let Some((_, lo, hi)) = other {
                        self.spans.push((lo, hi - lo));
                    }
                    Some((k, f.addr, f.addr + frame_len))
                }
            };
        }
        if let Some((_, lo, hi)) = run {
            self.spans.push((lo, hi - lo));
        }
        if self.spans.iter().map(|s| s.1).sum::<u64>() > MAX_STEADY_BYTES as u64 {
            return;
        }
        for &(lo, len) in &self.spans {
            match mem.peek(lo, len as usize) {
                Some(b) => self.bytes.extend_from_slice(b),
                None => return,
            }
        }
        self.codes.clear();
        for f in walked.iter().filter(|f| !f.shim) {
            if self.codes.iter().any(|c| c.0 == f.code) {
                continue;
            }
            let Some(head) = mem.peek(f.code, CODE_HEAD) else {
                return;
            };
            self.codes.push((
                f.code,
                super::code::fingerprint(l, head),
                l.frame_bytes(head),
            ));
        }
        chunk_chain(l, &t.raw, copied, &mut self.chunks);
        self.cframe = cframe_of(l, &t.raw);
        self.tstate = t.tstate;
        self.thread_id = t.thread_id;
        self.depth = opts.depth;
        self.function_lines = opts.function_lines;
        self.armed = true;
    }

    /// Does this sample's copy of thread `t` (`copied`, served by `mem`) show the kept
    /// stack, `walked`, with the same callers? Then `walked[0]` becomes the innermost frame
    /// as it is now, and the rest stays: what a walk of the copy would find.
    pub fn holds<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        t: &super::threads::PyThread,
        opts: FrameOptions,
        copied: &[(u64, Vec<u8>)],
        walked: &mut [RawFrame],
    ) -> bool {
        let Some(leaf) = walked.first() else {
            return false;
        };
        if !self.armed
            || opts.locals
            || t.tstate != self.tstate
            || t.thread_id != self.thread_id
            || opts.depth != self.depth
            || opts.function_lines != self.function_lines
            || cframe_of(l, &t.raw) != self.cframe
            || first_frame(mem, l, &t.raw).ok() != Some(leaf.addr)
        {
            return false;
        }
        chunk_chain(l, &t.raw, copied, &mut self.chunks_now);
        if self.chunks_now != self.chunks {
            return false;
        }
        let mut at = 0;
        for &(lo, len) in &self.spans {
            let len = len as usize;
            match mem.peek(lo, len) {
                Some(b) if b == &self.bytes[at..at + len] => at += len,
                _ => return false,
            }
        }
        let codes_same = self.codes.iter().all(|(code, print, size)| {
            mem.peek(*code, CODE_HEAD)
                .is_some_and(|h| fingerprint_is(l, h, print) && l.frame_bytes(h) == *size)
        });
        if !codes_same {
            return false;
        }
        let Some(mut now) = same_innermost(mem, l, walked) else {
            return false;
        };
        // A walk marks the frame inside an entry shim as the first of its C call.
        now.is_entry |= walked.get(1).is_some_and(|f| f.shim);
        walked[0] = now;
        true
    }
}

/// The C frame pointer of a thread state (3.11 and 3.12), else 0.
fn cframe_of(l: &Layout, tstate: &[u8]) -> u64 {
    match l.frame_root {
        FrameRoot::CFrame { cframe, .. } => le_u64(tstate, cframe as usize),
        FrameRoot::Direct(_) => 0,
    }
}

/// The thread's data-stack chunks as `copied` holds them, newest first, into `out`: each
/// one's address, bytes copied, and its header's size and previous chunk.
fn chunk_chain(l: &Layout, tstate: &[u8], copied: &[(u64, Vec<u8>)], out: &mut Vec<[u64; 4]>) {
    out.clear();
    out.extend(
        copied_chunks(l, tstate, copied)
            .map(|(chunk, data)| [chunk, data.len() as u64, le_u64(data, 8), le_u64(data, 0)]),
    );
}

/// Would the walk's first step over `mem` find the innermost of the `walked` frames again,
/// at any instruction: a Python frame of the same code object with the same caller?
/// That frame as the walk would find it now, if so.
fn same_innermost<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    walked: &[RawFrame],
) -> Option<RawFrame> {
    let leaf = walked[0];
    let buf = mem.peek(leaf.addr, frame_read_len(l))?;
    let python = match (l.f_owner, l.owner_not_python) {
        (Some(o), Some(limit)) => le_u8(buf, o as usize) < limit,
        _ => true,
    };
    if leaf.shim || !python || le_u64(buf, l.f_back as usize) != walked.get(1).map_or(0, |f| f.addr)
    {
        return None;
    }
    python_frame(mem, l, leaf.addr, buf)
        .ok()
        .filter(|f| f.code == leaf.code)
}

/// Are the walked frames that sit on the thread's data stack (3.11+) where the interpreter
/// put them? It pushes each frame right after its caller's, as long as the caller's code
/// object says, so within one data-stack chunk a caller's frame ends where its callee's
/// starts. Two copies that agree can still both be torn (a thread that returned and called
/// again between them to frames of other sizes); such a chain breaks this rule. Only
/// consecutive frames in the same chunk are checked: generator frames live in their
/// generator, entry frames (3.12+) on the C stack, and a callee that did not fit starts a
/// new chunk. `copied` holds the thread's chunks (their headers give their sizes) and
/// `mem` the code objects' heads.
pub fn frames_fit<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    tstate: &[u8],
    copied: &[(u64, Vec<u8>)],
    raw: &[RawFrame],
) -> bool {
    let (Some(off), Some(_)) = (l.ts_datastack_chunk, l.co_framesize) else {
        return true;
    };
    // The thread's chunks, newest first, as (start, end).
    let mut spans = [(0u64, 0u64); MAX_CHUNKS];
    let mut n = 0;
    let mut chunk = le_u64(tstate, off as usize);
    while chunk != 0 && n < MAX_CHUNKS {
        let Some((_, data)) = copied.iter().find(|(a, _)| *a == chunk) else {
            break;
        };
        let size = le_u64(data, 8).clamp(CHUNK_HEADER, MAX_CHUNK_BYTES);
        spans[n] = (chunk, chunk.saturating_add(size));
        n += 1;
        chunk = le_u64(data, 0);
    }
    let chunk_of = |a: u64| spans[..n].iter().position(|(s, e)| *s <= a && a < *e);
    // Recursion repeats a code object frame after frame: its size is read once.
    let mut last: Option<(u64, Option<u64>)> = None;
    let mut head = [0u8; CODE_HEAD];
    // Each frame's chunk is found once: a caller's is its own callee's in the next pair.
    let mut callee_chunk = raw.first().and_then(|f| chunk_of(f.addr));
    for pair in raw.windows(2) {
        let (callee, caller) = (&pair[0], &pair[1]);
        let caller_chunk = chunk_of(caller.addr);
        let same_chunk = callee_chunk.is_some() && callee_chunk == caller_chunk;
        callee_chunk = caller_chunk;
        if callee.shim || caller.shim || !same_chunk {
            continue;
        }
        let bytes = match last {
            Some((code, bytes)) if code == caller.code => bytes,
            _ => {
                let bytes = match mem.peek(caller.code, CODE_HEAD) {
                    Some(h) => l.frame_bytes(h),
                    None => mem
                        .read(caller.code, &mut head)
                        .ok()
                        .and_then(|_| l.frame_bytes(&head)),
                };
                last = Some((caller.code, bytes));
                bytes
            }
        };
        if bytes.and_then(|b| caller.addr.checked_add(b)) != Some(callee.addr) {
            return false;
        }
    }
    true
}

/// Walk the frame chain from `frame`, innermost first, for at most [`MAX_DEPTH`] frames.
/// Returns true when the chain goes on beyond them (it is then cut there); a chain that
/// loops back on itself is an error.
pub fn walk<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    mut frame: u64,
    out: &mut Vec<RawFrame>,
) -> Result<bool, PyError> {
    out.clear();
    let mut local = [0u8; 512];
    let size = (l.f_size as usize).clamp(64, local.len());
    // Brent's cycle check: compare each frame with one saved at doubling distances, so a
    // loop is found within a few times its length plus its lead-in, without remembering
    // the frames seen. A loop too long for that under the ceiling is cut there instead.
    let (mut saved, mut stride, mut steps) = (0u64, 1usize, 0usize);
    while frame != 0 {
        if frame == saved {
            return Err(PyError::Corrupt("frame chain loops back on itself"));
        }
        steps += 1;
        if steps == stride {
            (saved, stride, steps) = (frame, stride * 2, 0);
        }
        if out.len() >= MAX_DEPTH {
            return Ok(true);
        }
        // Frames in the batch's copies are used in place: no copy per frame.
        let buf: &[u8] = match mem.peek(frame, size) {
            Some(b) => b,
            None => {
                mem.read(frame, &mut local[..size])?;
                &local[..size]
            }
        };
        let back = le_u64(buf, l.f_back as usize);
        let owner = l.f_owner.map(|o| le_u8(buf, o as usize));
        // Frames owned by the C stack / interpreter are entry shims, not Python code.
        if let (Some(owner), Some(limit)) = (owner, l.owner_not_python)
            && owner >= limit
        {
            if let Some(last) = out.iter_mut().rev().find(|f| !f.shim) {
                last.is_entry = true;
            }
            out.push(RawFrame {
                addr: frame,
                code: 0,
                offset: 0,
                is_entry: false,
                shim: true,
            });
            frame = back;
            continue;
        }
        out.push(python_frame(mem, l, frame, buf)?);
        frame = back;
    }
    Ok(false)
}

/// The Python frame at `addr` whose first bytes (at least [`Layout::f_size`]) are `buf`:
/// a frame of a thread's chain, or the frame of a suspended coroutine.
pub fn python_frame<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    addr: u64,
    buf: &[u8],
) -> Result<RawFrame, PyError> {
    let code = le_u64(buf, l.f_code as usize) & !l.f_code_tag_mask;
    let offset = match l.f_instr {
        InstrSource::LastiBytes(off) => le_u32(buf, off as usize) as i32 as i64,
        InstrSource::LastiUnits(off) => {
            let u = le_u32(buf, off as usize) as i32 as i64;
            if u < 0 { -1 } else { u * 2 }
        }
        InstrSource::Pointer(off) => {
            let ip = le_u64(buf, off as usize);
            let base = bytecode_base(mem, l, buf, code)?;
            ip.wrapping_sub(base) as i64
        }
    };
    let is_entry = l
        .f_is_entry
        .is_some_and(|off| le_u8(buf, off as usize) != 0);
    Ok(RawFrame {
        addr,
        code,
        offset,
        is_entry,
        shim: false,
    })
}

/// Where the instruction pointer's bytecode starts: inline in the code object, or in the
/// thread's own copy on free-threaded 3.14+ (thread-local bytecode).
fn bytecode_base<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    frame: &[u8],
    code: u64,
) -> Result<u64, PyError> {
    let inline = code + l.co_code_adaptive.unwrap_or(0);
    if let (Some(idx_off), Some(tlbc)) = (l.f_tlbc_index, l.co_tlbc) {
        let idx = le_u32(frame, idx_off as usize) as i32;
        if idx > 0 {
            let arr = mem.u64(code + tlbc)?;
            let size = mem.i64(arr)?;
            if (idx as i64) < size && size < 1 << 16 {
                return Ok(mem.u64(arr + 8 + 8 * idx as u64)?);
            }
        }
    }
    Ok(inline)
}

/// Options for turning raw frames into [`Frame`]s.
#[derive(Debug, Clone, Copy)]
pub struct FrameOptions {
    /// Read local variables.
    pub locals: bool,
    /// Re-check each stack after reading it and retry when the thread moved meanwhile
    /// (the consistency check used instead of stopping the target).
    pub validate: bool,
    /// Report each function's first line instead of the line being run (`-F`).
    pub function_lines: bool,
    /// Most frames shown per stack, innermost first (`--depth`); the rest are counted in a
    /// marker frame at the outer end.
    pub depth: usize,
}

impl Default for FrameOptions {
    fn default() -> FrameOptions {
        FrameOptions {
            locals: false,
            validate: false,
            function_lines: false,
            depth: DEFAULT_DEPTH,
        }
    }
}

/// The marker frame that stands for the outer frames of a stack cut at `--depth`:
/// `[N frames not shown]`, or `[at least N frames not shown]` when the chain went on past
/// [`MAX_DEPTH`] and was not followed to its end.
pub fn hidden_frames(count: usize, more: bool) -> Frame {
    let at_least = if more { "at least " } else { "" };
    Frame::marker(format!("[{at_least}{count} frames not shown]"))
}

/// Resolve raw frames to named frames through the code cache, also giving each returned
/// frame's `is_entry` in `entries` (for merging with native stacks). An entry frame that is not shown (not a code object) passes its
/// flag to the frame shown before it, the outermost frame of the same C call.
/// Only the innermost `opts.depth` frames are resolved; the others, and with `more` those
/// beyond the walk's end (see [`walk`]), are counted in a [`hidden_frames`] marker.
pub fn resolve_with_entries<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &[RawFrame],
    more: bool,
    opts: FrameOptions,
    entries: &mut Vec<bool>,
) -> Result<Vec<Frame>, PyError> {
    let mut memo = Memo::default();
    resolve_slots(mem, l, codes, raw, opts, entries, &mut memo)?;
    let mut frames: Vec<Frame> = memo.order.iter().map(|&i| memo.frame(i).clone()).collect();
    frames.append(&mut memo.unremembered);
    if let Some((count, more)) = marker(raw, more, opts) {
        entries.push(false);
        frames.push(hidden_frames(count, more));
    }
    Ok(frames)
}

/// A frame of a thread's previous sample, by depth from the outermost frame: most of a
/// stack is the same from one sample to the next, and such a frame is copied instead of
/// looked up again.
#[derive(Debug, Clone)]
pub struct Remembered {
    code: u64,
    offset: i64,
    fingerprint: Fingerprint,
    function_lines: bool,
    frame: Frame,
}

impl Remembered {
    /// The slot of frame `rf` read with `opts`, which `code` resolved to `frame`.
    fn new(rf: &RawFrame, code: &CodeEntry, opts: FrameOptions, frame: Frame) -> Remembered {
        Remembered {
            code: rf.code,
            offset: rf.offset,
            fingerprint: code.fingerprint(),
            function_lines: opts.function_lines,
            frame,
        }
    }

    /// Was it resolved for the same code object address and instruction as `rf`, read
    /// with `opts`? (Whether the code object is still the one resolved is the fingerprint's
    /// check, made apart.)
    fn is_for(&self, rf: &RawFrame, opts: FrameOptions) -> bool {
        self.code == rf.code
            && self.offset == rf.offset
            && self.function_lines == opts.function_lines
    }
}

/// The Python frame `rf` shows, from its code object: at its line, or at its function's
/// first line with `function_lines`.
fn shown_frame(
    l: &Layout,
    code: &mut CodeEntry,
    rf: &RawFrame,
    opts: FrameOptions,
    locals: Option<Vec<crate::sample::LocalVar>>,
) -> Frame {
    let line = if opts.function_lines {
        code.info.first_line
    } else {
        code.line(l, rf.offset)
    };
    Frame {
        code: Arc::clone(&code.info.code),
        line,
        kind: FrameKind::Python,
        locals,
    }
}

/// Stacks of a thread's recent samples handed out again when a sample finds the same
/// frames: a thread that goes back and forth between two lines shares both.
const RECENT_STACKS: usize = 4;

/// A stack handed out lately: its frames, its marker and its callers' generation.
type Recent = (Frames, Option<(usize, bool)>, u64);

/// What [`resolve_remembering`] keeps of a thread's previous samples.
#[derive(Debug, Default)]
pub struct Memo {
    /// The frames of the latest sample, by depth from the outermost frame.
    slots: Vec<Option<Remembered>>,
    /// The stacks handed out lately, most recent first, each with its marker (see
    /// [`marker`]) and the [`Memo::callers`] generation whose callers it is known to share.
    recent: Vec<Recent>,
    /// This sample's shown frames, innermost first, as indices into `slots`.
    order: Vec<usize>,
    /// This sample's frames when they are not remembered (with `--locals`), innermost first.
    unremembered: Vec<Frame>,
    /// Which callers (the shown frames but the innermost) the slots hold: it changes with
    /// every sample that changed one of them, so a recent stack of the same generation
    /// differs from this sample's, if at all, in its innermost frame only.
    callers: u64,
    /// The count of frames of the last sample's walk that are not entry shims.
    all: usize,
}

impl Memo {
    fn frame(&self, slot: usize) -> &Frame {
        &self.slots[slot]
            .as_ref()
            .expect("a slot in the order holds a frame")
            .frame
    }
}

/// The count of frames left out of a stack of `raw`, and whether it is a lower bound, when
/// the stack ends in a [`hidden_frames`] marker.
fn marker(raw: &[RawFrame], more: bool, opts: FrameOptions) -> Option<(usize, bool)> {
    marker_of(raw.iter().filter(|f| !f.shim).count(), more, opts)
}

/// [`marker`] of a walk of `all` frames that are not entry shims.
fn marker_of(all: usize, more: bool, opts: FrameOptions) -> Option<(usize, bool)> {
    let depth = all.min(opts.depth);
    (depth < all || more).then_some((all - depth, more))
}

/// Is `a` the frame `b`: the same code (by pointer) at the same line? Cheaper than `==`,
/// which compares the names' texts.
fn same_frame(a: &Frame, b: &Frame) -> bool {
    Arc::ptr_eq(&a.code, &b.code)
        && a.line == b.line
        && a.kind == b.kind
        && a.locals.is_none()
        && b.locals.is_none()
}

/// [`resolve_with_entries`], reusing the frames of the thread's previous sample in `memo`
/// (and updating it). A remembered frame is reused only for the same code address and
/// instruction offset, and only if the code object's fingerprint, read in this sample, is
/// still the one it was resolved with: the same check the code cache makes. A stack of the
/// same frames as one of the thread's recent samples is that sample's stack again.
///
/// With `callers_same`, the caller vouches that every frame of `raw` but the innermost is
/// the frame of the previous call's `raw` at the same place, and that their code objects
/// still have the fingerprints they had then (see [`Steady`]): only the innermost frame is
/// looked at.
#[allow(clippy::too_many_arguments)]
pub fn resolve_remembering<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &[RawFrame],
    more: bool,
    opts: FrameOptions,
    entries: &mut Vec<bool>,
    memo: &mut Memo,
    callers_same: bool,
) -> Result<Frames, PyError> {
    if !(callers_same && resolve_innermost(mem, l, codes, raw, opts, entries, memo)?) {
        resolve_slots(mem, l, codes, raw, opts, entries, memo)?;
    }
    let end = marker_of(memo.all, more, opts);
    if end.is_some() {
        entries.push(false);
    }
    if !opts.locals {
        let shown = memo.order.len() + usize::from(end.is_some());
        let generation = memo.callers;
        let found = memo.recent.iter().position(|(stack, m, callers)| {
            *m == end
                && stack.len() == shown
                && if *callers == generation {
                    memo.order
                        .first()
                        .zip(stack.first())
                        .is_none_or(|(&i, f)| same_frame(memo.frame(i), f))
                } else {
                    memo.order
                        .iter()
                        .zip(stack.iter())
                        .all(|(&i, f)| same_frame(memo.frame(i), f))
                }
        });
        if let Some(k) = found {
            memo.recent[k].2 = generation;
            memo.recent[..=k].rotate_right(1);
            return Ok(memo.recent[0].0.clone());
        }
    }
    let mut frames: Vec<Frame> = Vec::with_capacity(memo.order.len() + 1);
    frames.extend(memo.order.iter().map(|&i| memo.frame(i).clone()));
    frames.append(&mut memo.unremembered);
    if let Some((count, more)) = end {
        frames.push(hidden_frames(count, more));
    }
    let frames = Frames::from(frames);
    if !opts.locals {
        memo.recent.truncate(RECENT_STACKS - 1);
        memo.recent.insert(0, (frames.clone(), end, memo.callers));
    }
    Ok(frames)
}

/// The frames of `raw` into `memo`: the shown ones as slots of `memo.slots` in
/// `memo.order` (or, with locals, in `memo.unremembered`), their `is_entry` flags in
/// `entries`.
fn resolve_slots<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &[RawFrame],
    opts: FrameOptions,
    entries: &mut Vec<bool>,
    memo: &mut Memo,
) -> Result<(), PyError> {
    entries.clear();
    memo.order.clear();
    memo.unremembered.clear();
    let all = raw.iter().filter(|f| !f.shim).count();
    memo.all = all;
    // Cut stacks are remembered from their outermost shown frame: still one slot per depth.
    let depth = all.min(opts.depth);
    // Locals change without the frame changing: never remembered.
    if opts.locals {
        memo.slots.clear();
        memo.recent.clear();
    }
    // The callers stay the last sample's only if every one of them is served by its slot;
    // the generation moves on at the first that is not (even if an error ends this call).
    let mut callers_kept = memo.slots.len() == depth;
    if !callers_kept {
        memo.callers += 1;
    }
    memo.slots.resize(depth, None);
    // The last code object whose head matched a fingerprint in this sample: recursion puts
    // the same code object in frame after frame, and one check serves them all.
    let mut checked: Option<u64> = None;
    let mut checked_print: Fingerprint = [0; 5];
    for (k, rf) in raw.iter().filter(|f| !f.shim).take(depth).enumerate() {
        let at = depth - 1 - k;
        let slot = &mut memo.slots[at];
        if let Some(m) = &*slot
            && m.is_for(rf, opts)
            && ((checked == Some(rf.code) && same_print(&checked_print, &m.fingerprint))
                || mem
                    .peek(rf.code, CODE_HEAD)
                    .is_some_and(|head| fingerprint_is(l, head, &m.fingerprint)))
        {
            checked = Some(rf.code);
            checked_print = m.fingerprint;
            entries.push(rf.is_entry);
            memo.order.push(at);
            continue;
        }
        if k > 0 && callers_kept {
            memo.callers += 1;
            callers_kept = false;
        }
        *slot = None;
        let Some(code) = codes.get(mem, l, rf.code)? else {
            // Not a code object (3.13 entry frames point at None): not a Python frame.
            if rf.is_entry
                && let Some(last) = entries.last_mut()
            {
                *last = true;
            }
            continue;
        };
        entries.push(rf.is_entry);
        let locals = if opts.locals {
            Some(read_locals(mem, l, &code.info, rf.addr).unwrap_or_default())
        } else {
            None
        };
        let frame = shown_frame(l, code, rf, opts, locals);
        if opts.locals {
            memo.unremembered.push(frame);
        } else {
            *slot = Some(Remembered::new(rf, code, opts, frame));
            memo.order.push(at);
        }
    }
    Ok(())
}

/// [`resolve_slots`] when the caller vouches that the callers are the last call's (see
/// [`resolve_remembering`]): only the innermost frame is resolved, into its slot, and the
/// callers' slots, order and entry flags stay. False, with nothing changed, when the memo
/// does not hold the last call's stack whole (a frame that was not a code object, `--locals`)
/// or the innermost frame is not a code object now: the full path then decides.
fn resolve_innermost<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &[RawFrame],
    opts: FrameOptions,
    entries: &mut Vec<bool>,
    memo: &mut Memo,
) -> Result<bool, PyError> {
    let depth = memo.all.min(opts.depth);
    let Some(rf) = raw.first().filter(|f| !f.shim) else {
        return Ok(false);
    };
    if opts.locals
        || depth == 0
        || memo.slots.len() != depth
        || memo.order.len() != depth
        || memo.order[0] != depth - 1
        || entries.len() < depth
    {
        return Ok(false);
    }
    let slot = &mut memo.slots[depth - 1];
    let hit = slot.as_ref().is_some_and(|m| {
        m.is_for(rf, opts)
            && mem
                .peek(rf.code, CODE_HEAD)
                .is_some_and(|head| fingerprint_is(l, head, &m.fingerprint))
    });
    if !hit {
        let Some(code) = codes.get(mem, l, rf.code)? else {
            return Ok(false);
        };
        let frame = shown_frame(l, code, rf, opts, None);
        *slot = Some(Remembered::new(rf, code, opts, frame));
    }
    entries.truncate(depth);
    entries[0] = rf.is_entry;
    memo.unremembered.clear();
    Ok(true)
}

/// `a == b`, compared field by field in line (the array `==` calls `memcmp`, once per
/// frame here).
fn same_print(a: &Fingerprint, b: &Fingerprint) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{ImageMemory, Overlay};
    use crate::python::code::tests::image;
    use crate::python::layout::{FrameSize, Version};

    fn frame(addr: u64, code: u64, offset: i64) -> RawFrame {
        RawFrame {
            addr,
            code,
            offset,
            is_entry: false,
            shim: false,
        }
    }

    fn names(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| f.name().to_string()).collect()
    }

    #[test]
    fn remembered_frames_are_reused_only_while_the_code_object_is_the_same() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let opts = FrameOptions::default();
        let mut codes = CodeCache::new(None);
        let (mut entries, mut memo) = (Vec::new(), Memo::default());
        let raw = [frame(0x7f00_0000_1050, 0x10000, 10)];
        let first = image(&l, "first", 0x30000);
        // The batch brings each code object's head along, as the sampler's plan does.
        let head = |m: &ImageMemory| vec![(0x10000u64, m.bytes(0x10000, CODE_HEAD).unwrap())];
        let snap = head(&first);
        let mem = Overlay::new(&snap, &first);
        let got = resolve_remembering(
            &mem,
            &l,
            &mut codes,
            &raw,
            false,
            opts,
            &mut entries,
            &mut memo,
            false,
        );
        assert_eq!(names(&got.unwrap()), ["first"]);
        // Same frame, same fingerprint: served from the memo, nothing else is read (the
        // strings are gone from this address space).
        let bare = ImageMemory::new();
        let mem = Overlay::new(&snap, &bare);
        let got = resolve_remembering(
            &mem,
            &l,
            &mut codes,
            &raw,
            false,
            opts,
            &mut entries,
            &mut memo,
            false,
        );
        assert_eq!(names(&got.unwrap()), ["first"]);
        // Another code object at the same address: never shown under the old name.
        let second = image(&l, "second", 0x60000);
        let snap = head(&second);
        let mem = Overlay::new(&snap, &second);
        let got = resolve_remembering(
            &mem,
            &l,
            &mut codes,
            &raw,
            false,
            opts,
            &mut entries,
            &mut memo,
            false,
        );
        assert_eq!(names(&got.unwrap()), ["second"]);
        // A deeper stack keeps the outer frames' memo (depth counts from the outermost).
        let deeper = [frame(0x7f00_0000_10a0, 0x10000, 20), raw[0]];
        let mem = Overlay::new(&snap, &bare);
        assert!(
            resolve_remembering(
                &mem,
                &l,
                &mut codes,
                &deeper,
                false,
                opts,
                &mut entries,
                &mut memo,
                false
            )
            .is_ok()
        );
        assert_eq!(entries, [false, false]);
    }

    #[test]
    fn a_stack_of_the_same_frames_is_handed_out_again() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let opts = FrameOptions::default();
        let mut codes = CodeCache::new(None);
        let (mut entries, mut memo) = (Vec::new(), Memo::default());
        // Two code objects: "first" at 0x10000, "second" at 0x11000 (a copy of another
        // image's, with its strings).
        let mut mem = image(&l, "first", 0x30000);
        let other = image(&l, "second", 0x60000);
        mem.add(0x11000, other.bytes(0x10000, CODE_HEAD).unwrap())
            .add(0x60000, other.bytes(0x60000, 128).unwrap())
            .add(0x60100, other.bytes(0x60100, 128).unwrap());
        let heads = |m: &ImageMemory| {
            vec![
                (0x10000u64, m.bytes(0x10000, CODE_HEAD).unwrap()),
                (0x11000u64, m.bytes(0x11000, CODE_HEAD).unwrap()),
            ]
        };
        let snap = heads(&mem);
        let outer = frame(0x7f00_0000_1050, 0x10000, 10);
        let a = [frame(0x7f00_0000_10a0, 0x10000, 10), outer];
        let b = [frame(0x7f00_0000_10a0, 0x11000, 10), outer];
        let mut resolve = |mem: &ImageMemory, snap: &[(u64, Vec<u8>)], raw: &[RawFrame], more| {
            let local = Overlay::new(snap, mem);
            resolve_remembering(
                &local,
                &l,
                &mut codes,
                raw,
                more,
                opts,
                &mut entries,
                &mut memo,
                false,
            )
            .unwrap()
        };
        let a1 = resolve(&mem, &snap, &a, false);
        assert_eq!(names(&a1), ["first", "first"]);
        assert!(resolve(&mem, &snap, &a, false).same(&a1));
        // Going back and forth between two stacks shares both.
        let b1 = resolve(&mem, &snap, &b, false);
        assert_eq!(names(&b1), ["second", "first"]);
        assert!(!b1.same(&a1));
        assert!(resolve(&mem, &snap, &a, false).same(&a1));
        assert!(resolve(&mem, &snap, &b, false).same(&b1));
        // The same frames cut short (a marker at the end) are another stack.
        let cut = resolve(&mem, &snap, &a, true);
        assert_eq!(
            names(&cut),
            ["first", "first", "[at least 0 frames not shown]"]
        );
        assert!(resolve(&mem, &snap, &a, true).same(&cut));
        // Another code object at the same address: a new stack under its own name, never
        // the old one's.
        let mut changed = image(&l, "third", 0x70000);
        changed
            .add(0x11000, mem.bytes(0x11000, CODE_HEAD).unwrap())
            .add(0x60000, other.bytes(0x60000, 128).unwrap())
            .add(0x60100, other.bytes(0x60100, 128).unwrap());
        let snap = heads(&changed);
        let a2 = resolve(&changed, &snap, &a, false);
        assert_eq!(names(&a2), ["third", "third"]);
        assert!(!a2.same(&a1));
    }

    #[test]
    fn recursion_checks_its_code_object_in_every_sample() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let opts = FrameOptions::default();
        let mut codes = CodeCache::new(None);
        let (mut entries, mut memo) = (Vec::new(), Memo::default());
        let raw = [
            frame(0x7f00_0000_10f0, 0x10000, 10),
            frame(0x7f00_0000_10a0, 0x10000, 10),
            frame(0x7f00_0000_1050, 0x10000, 10),
        ];
        let head = |m: &ImageMemory| vec![(0x10000u64, m.bytes(0x10000, CODE_HEAD).unwrap())];
        for (name, strs) in [("first", 0x30000), ("first", 0x30000), ("second", 0x60000)] {
            let img = image(&l, name, strs);
            let snap = head(&img);
            let mem = Overlay::new(&snap, &img);
            let got = resolve_remembering(
                &mem,
                &l,
                &mut codes,
                &raw,
                false,
                opts,
                &mut entries,
                &mut memo,
                false,
            );
            assert_eq!(names(&got.unwrap()), [name; 3]);
        }
    }

    #[test]
    fn a_second_look_keeps_only_stacks_that_did_not_change() {
        use crate::process::ImageMemory;
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let (FrameRoot::CFrame { cframe, current }, InstrSource::Pointer(instr)) =
            (l.frame_root, l.f_instr)
        else {
            panic!("3.12 reaches frames through C frames and keeps instruction pointers");
        };
        let (chunk, tstate, cf) = (
            0x7f00_0000_0000u64,
            0x5500_0000_1000u64,
            0x7ffe_0000_0100u64,
        );
        let base = l.co_code_adaptive.unwrap();
        let put = |buf: &mut Vec<u8>, at: u64, v: u64| {
            buf[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        // Three frames at 0x40, 0x100, 0x1c0 of the chunk, outermost first: (code, offset).
        let stack = |frames: [(u64, u64); 3]| {
            let mut data = vec![0u8; 4096];
            let mut back = 0;
            for (k, (code, offset)) in frames.into_iter().enumerate() {
                let at = 0x40 + 0xc0 * k as u64;
                put(&mut data, at + l.f_code, code);
                put(&mut data, at + l.f_back, back);
                put(&mut data, at + instr, code + base + offset);
                back = chunk + at;
            }
            data
        };
        let image = |data: Vec<u8>, innermost: u64| {
            let mut m = ImageMemory::new();
            let mut ts = vec![0u8; 512];
            put(&mut ts, cframe, cf);
            let mut c = vec![0u8; 64];
            put(&mut c, current, innermost);
            m.add(chunk, data).add(tstate, ts).add(cf, c);
            m
        };
        let inner = chunk + 0x1c0;
        let frames = [(0x10000, 20), (0x20000, 40), (0x30000, 8)];
        let first = image(stack(frames), inner);
        let threads = [crate::python::threads::PyThread {
            tstate,
            interp: 0,
            thread_id: 1,
            native_id: None,
            holds_gil: true,
            gil_requested: false,
            raw: first.bytes(tstate, 512).unwrap(),
        }];
        let regions = vec![vec![(chunk, first.bytes(chunk, 4096).unwrap())]];
        let mut walked = Vec::new();
        walk(&Overlay::new(&regions[0], &first), &l, inner, &mut walked).unwrap();
        let (mut scratch, mut raw) = (Vec::new(), LookScratch::default());
        // Whether the stack stands, and whether the comparison of the copies' bytes
        // settled it without a second walk.
        let mut looked = |now: &ImageMemory| {
            let before = raw.by_bytes;
            let stands = second_look(
                now,
                &l,
                &threads,
                &[true],
                &regions,
                &mut [(&walked[..], &mut scratch)],
                &mut raw,
            )[0];
            (stands, raw.by_bytes > before)
        };
        // Unchanged; or only the innermost frame moved on to another instruction: kept,
        // by the bytes alone.
        assert_eq!(looked(&image(stack(frames), inner)), (true, true));
        assert_eq!(
            looked(&image(stack([frames[0], frames[1], (0x30000, 30)]), inner)),
            (true, true)
        );
        // The middle frame is another call now (returned and called again to the same depth,
        // leaving the same innermost pointer): dropped.
        assert!(!looked(&image(stack([frames[0], (0x20000, 52), frames[2]]), inner)).0);
        assert!(!looked(&image(stack([frames[0], (0x50000, 40), frames[2]]), inner)).0);
        // The thread is elsewhere now: dropped.
        assert!(!looked(&image(stack(frames), chunk + 0x100)).0);
        // Each word the walk read of each frame is compared in the new copy: one of them
        // changed (the caller link, the code object, the instruction of a caller, the owner
        // that makes a frame an entry shim) drops the stack, with the frame root unchanged.
        let owner = l.f_owner.unwrap();
        for k in 0..3u64 {
            let at = 0x40 + 0xc0 * k;
            let mut words = vec![(l.f_back, 0x7f00_0000_0f00), (l.f_code, 0x60000)];
            if k < 2 {
                words.push((instr, frames[k as usize].0 + base + 2));
            }
            for (field, value) in words {
                let mut data = stack(frames);
                put(&mut data, at + field, value);
                assert!(!looked(&image(data, inner)).0, "frame {k}, word {field:#x}");
            }
            let mut data = stack(frames);
            data[(at + owner) as usize] = l.owner_not_python.unwrap();
            assert!(!looked(&image(data, inner)).0, "frame {k}, owner");
            // Words the walk does not read (here the function object) may change: a
            // caller's bytes then differ, and the second walk decides.
            let mut data = stack(frames);
            put(&mut data, at + 16, 0x1234);
            assert_eq!(
                looked(&image(data, inner)),
                (true, k == 2),
                "frame {k}, function object"
            );
        }
        // Two threads taking turns (the same one listed twice here): the one not looked at
        // keeps its second copy's buffers for its next look, which still tells.
        let two = [threads[0].clone(), threads[0].clone()];
        let regions = vec![regions[0].clone(), regions[0].clone()];
        let mut looks = [
            crate::python::ThreadScratch::default(),
            crate::python::ThreadScratch::default(),
        ];
        for t in looks.iter_mut() {
            t.walked = walked.clone();
        }
        let mut look = |now: &ImageMemory, wanted: [bool; 2], looks: &mut [_; 2]| {
            second_look(now, &l, &two, &wanted, &regions, looks, &mut raw).to_vec()
        };
        assert_eq!(look(&first, [true, false], &mut looks), [true, false]);
        let at = looks[0].second[0].1.as_ptr();
        assert_eq!(look(&first, [false, true], &mut looks), [false, true]);
        assert_eq!(
            looks[0].second[0].1.as_ptr(),
            at,
            "kept while not looked at"
        );
        assert_eq!(look(&first, [true, false], &mut looks), [true, false]);
        assert_eq!(looks[0].second[0].1.as_ptr(), at, "and used again");
        let moved = image(stack([frames[0], (0x50000, 40), frames[2]]), inner);
        assert_eq!(look(&moved, [true, true], &mut looks), [false, false]);
    }

    /// Memory that counts its reads (a batch is one, as one process_vm_readv is).
    struct Counting<'a>(&'a ImageMemory, std::cell::Cell<u64>);

    impl Memory for Counting<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> crate::process::memory::MemResult<()> {
            self.1.set(self.1.get() + 1);
            self.0.read(addr, buf)
        }
        fn read_many_then(
            &self,
            reqs: &mut [(u64, &mut [u8])],
            _cuts: &[usize],
        ) -> crate::process::memory::MemResult<()> {
            self.1.set(self.1.get() + 1);
            self.0.read_many(reqs)
        }
    }

    #[test]
    fn a_second_look_copies_frames_outside_the_first_copy_in_one_batch() {
        // 3.10: every frame is an object of its own, and the full walk's first copy holds
        // none of them; the second look used to read them one by one.
        let l = Layout::from_table(Version::new(3, 10, 13), false).unwrap();
        let FrameRoot::Direct(root) = l.frame_root else {
            panic!("3.10 keeps the innermost frame in the thread state");
        };
        let (tstate, heap) = (0x5500_0000_1000u64, 0x5500_0001_0000u64);
        let put = |buf: &mut Vec<u8>, at: u64, v: u64| {
            buf[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        let n = 6u64;
        let mut ts = vec![0u8; 512];
        put(&mut ts, root, heap);
        // Frame k runs the code object at `code(k)`.
        let image = |code: &dyn Fn(u64) -> u64| {
            let mut m = ImageMemory::new();
            for k in 0..n {
                let mut f = vec![0u8; l.f_size as usize];
                put(&mut f, l.f_code, code(k));
                put(
                    &mut f,
                    l.f_back,
                    if k + 1 < n { heap + 0x400 * (k + 1) } else { 0 },
                );
                m.add(heap + 0x400 * k, f);
            }
            m.add(tstate, ts.clone());
            m
        };
        let m = image(&|k| 0x10000 + 0x1000 * k);
        let threads = [crate::python::threads::PyThread {
            tstate,
            interp: 0,
            thread_id: 1,
            native_id: None,
            holds_gil: false,
            gil_requested: false,
            raw: ts.clone(),
        }];
        let mut walked = Vec::new();
        walk(&m, &l, heap, &mut walked).unwrap();
        assert_eq!(walked.len(), n as usize);
        let (mut scratch, mut raw) = (Vec::new(), LookScratch::default());
        let counting = Counting(&m, std::cell::Cell::new(0));
        let stands = second_look(
            &counting,
            &l,
            &threads,
            &[true],
            &[Vec::new()],
            &mut [(&walked[..], &mut scratch)],
            &mut raw,
        )
        .to_vec();
        assert_eq!(stands, [true]);
        assert_eq!(counting.1.get(), 1, "frames and root in one batched read");
        // And a frame that changed in between is still caught.
        let changed = image(&|k| {
            if k == 2 {
                0x90000
            } else {
                0x10000 + 0x1000 * k
            }
        });
        let stands = second_look(
            &changed,
            &l,
            &threads,
            &[true],
            &[Vec::new()],
            &mut [(&walked[..], &mut scratch)],
            &mut raw,
        );
        assert_eq!(stands, [false]);
    }

    /// A real 3.11 stack, as a live pyenv 3.11.7 process reported it about itself through
    /// ctypes (its `sys._getframe()` chain: each frame object's `f_frame`, `id(f_code)`,
    /// `co_stacksize` and its count of locals, cells and free variables; the thread state's
    /// `datastack_chunk` and that chunk's size), at `report`, called as <module> -> tiny -> mid -> wide -> tiny -> mid -> wide ->
    /// next(gen()) -> gen -> tiny -> mid -> report. Innermost first: (frame, code,
    /// co_nlocalsplus, co_stacksize). The generator's frame lives in the generator object.
    const STACK_311: [(u64, u64, i32, i32); 11] = [
        (0x7fd8_dedb_b4e8, 0x5561_3edb_1dd0, 8, 8),
        (0x7fd8_dedb_b460, 0x7fd8_de10_4580, 4, 4),
        (0x7fd8_dedb_b3f0, 0x7fd8_de0d_0f30, 1, 4),
        (0x7fd8_de4f_c990, 0x7fd8_de33_32d0, 0, 3),
        (0x7fd8_dedb_b330, 0x7fd8_de0f_4310, 11, 4),
        (0x7fd8_dedb_b2a8, 0x7fd8_de10_4580, 4, 4),
        (0x7fd8_dedb_b238, 0x7fd8_de0d_0f30, 1, 4),
        (0x7fd8_dedb_b178, 0x7fd8_de0f_4310, 11, 4),
        (0x7fd8_dedb_b0f0, 0x7fd8_de10_4580, 4, 4),
        (0x7fd8_dedb_b080, 0x7fd8_de0d_0f30, 1, 4),
        (0x7fd8_dedb_b020, 0x7fd8_de10_4690, 0, 3),
    ];
    /// Its one data-stack chunk: address and size.
    const CHUNK_311: (u64, u64) = (0x7fd8_dedb_b000, 16384);

    /// The thread state, the chunk headers (`chunks`: address, size, previous) and the code
    /// heads of `stack` on 3.11, as the batch copies them.
    fn copy_311(
        l: &Layout,
        stack: &[(u64, u64, i32, i32)],
        chunks: &[(u64, u64, u64)],
    ) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
        let Some(FrameSize::Sum {
            nlocalsplus,
            stacksize,
            ..
        }) = l.co_framesize
        else {
            panic!("3.11 sizes frames from two counts");
        };
        let mut tstate = vec![0u8; l.ts_size as usize];
        let at = l.ts_datastack_chunk.unwrap() as usize;
        tstate[at..at + 8].copy_from_slice(&chunks[0].0.to_le_bytes());
        let mut copied: Vec<(u64, Vec<u8>)> = Vec::new();
        for &(addr, size, previous) in chunks {
            let mut head = vec![0u8; 64];
            head[..8].copy_from_slice(&previous.to_le_bytes());
            head[8..16].copy_from_slice(&size.to_le_bytes());
            copied.push((addr, head));
        }
        for &(_, code, nl, ss) in stack {
            if copied.iter().any(|c| c.0 == code) {
                continue;
            }
            let mut head = vec![0u8; CODE_HEAD];
            head[nlocalsplus as usize..][..4].copy_from_slice(&nl.to_le_bytes());
            head[stacksize as usize..][..4].copy_from_slice(&ss.to_le_bytes());
            copied.push((code, head));
        }
        copied.sort_unstable_by_key(|c| c.0);
        (tstate, copied)
    }

    fn raw_of(stack: &[(u64, u64, i32, i32)]) -> Vec<RawFrame> {
        stack.iter().map(|&(a, c, _, _)| frame(a, c, 10)).collect()
    }

    #[test]
    fn frames_on_the_data_stack_must_abut_their_callers() {
        let l = Layout::from_table(Version::new(3, 11, 7), false).unwrap();
        let empty = ImageMemory::new();
        let fits = |stack: &[(u64, u64, i32, i32)], chunks: &[(u64, u64, u64)]| {
            let (tstate, copied) = copy_311(&l, stack, chunks);
            frames_fit(
                &Overlay::new(&copied, &empty),
                &l,
                &tstate,
                &copied,
                &raw_of(stack),
            )
        };
        let one = [(CHUNK_311.0, CHUNK_311.1, 0)];
        // The real stack fits, the generator's frame (outside the chunk) left out of it.
        assert!(fits(&STACK_311, &one));
        // A copy that saw `wide` where the caller of the innermost `mid` is (an older call
        // at that address): `wide`'s frame is longer, so it would end past `mid`'s start.
        let mut torn = STACK_311;
        torn[2].1 = STACK_311[4].1;
        torn[2].2 = STACK_311[4].2;
        assert!(!fits(&torn, &one));
        // A frame whose code object cannot be read: not known to fit.
        let (tstate, mut copied) = copy_311(&l, &STACK_311, &one);
        copied.retain(|c| c.0 != STACK_311[5].1);
        let raw = raw_of(&STACK_311);
        assert!(!frames_fit(
            &Overlay::new(&copied, &empty),
            &l,
            &tstate,
            &copied,
            &raw
        ));
        // A callee that starts a new chunk is not held to its caller's end.
        let newer = 0x7fd8_d000_0000u64;
        let mut split = STACK_311.to_vec();
        split[0].0 = newer + CHUNK_HEADER;
        let two = [(newer, 16384, CHUNK_311.0), one[0]];
        assert!(fits(&split, &two));
        // ... but within that chunk the rule holds again.
        split.insert(0, (newer + CHUNK_HEADER + 0x48, STACK_311[1].1, 4, 4));
        assert!(!fits(&split, &two));
        split[0].0 = newer + CHUNK_HEADER + 8 * (8 + 8 + 9);
        assert!(fits(&split, &two));
        // Before 3.11 frames are objects of their own: nothing to check.
        let old = Layout::from_table(Version::new(3, 10, 13), false).unwrap();
        assert!(frames_fit(&empty, &old, &[0u8; 512], &[], &raw_of(&torn)));
    }

    /// A 3.12 image holding a chain of `n` frames, `stride` bytes apart from `base`, all
    /// running the code object at 0x10000; frame k's `f_back` is `back(k)` (0: the end).
    fn chain(l: &Layout, n: usize, back: impl Fn(usize) -> u64) -> (ImageMemory, u64) {
        let base = 0x7f00_0000_0000u64;
        let stride = frame_read_len(l);
        let mut data = vec![0u8; n * stride];
        let InstrSource::Pointer(instr) = l.f_instr else {
            panic!("3.12 keeps instruction pointers");
        };
        for k in 0..n {
            let mut put = |off: u64, v: u64| {
                let at = k * stride + off as usize;
                data[at..at + 8].copy_from_slice(&v.to_le_bytes())
            };
            put(l.f_code, 0x10000);
            put(l.f_back, back(k));
            put(instr, 0x10000 + l.co_code_adaptive.unwrap() + 10);
        }
        let mut m = image(l, "deep", 0x30000);
        m.add(base, data);
        (m, base)
    }

    #[test]
    fn a_chain_past_the_ceiling_is_cut_and_a_loop_is_an_error() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let stride = frame_read_len(&l) as u64;
        let mut raw = Vec::new();
        // Each frame's caller is the next one up: a straight chain longer than the ceiling.
        let n = MAX_DEPTH + 10;
        let (m, base) = chain(&l, n, |k| {
            if k + 1 < n {
                0x7f00_0000_0000 + (k as u64 + 1) * stride
            } else {
                0
            }
        });
        assert!(
            walk(&m, &l, base, &mut raw).unwrap(),
            "the walk says it was cut"
        );
        assert_eq!(raw.len(), MAX_DEPTH);
        // The whole chain when it fits.
        assert!(!walk(&m, &l, base + 20 * stride, &mut raw).unwrap());
        assert_eq!(raw.len(), MAX_DEPTH - 10);
        // A loop after a lead-in is found within a few times its length plus the lead-in; one
        // too long for that to fit under the ceiling is cut there like a deep stack.
        let looped = |lead: usize, len: usize| {
            chain(&l, lead + len, |k| {
                let next = if k + 1 < lead + len { k + 1 } else { lead };
                0x7f00_0000_0000 + next as u64 * stride
            })
        };
        for (lead, len) in [(0usize, 1usize), (5, 3), (1000, 777), (3, 30_000)] {
            let (m, base) = looped(lead, len);
            let got = walk(&m, &l, base, &mut raw);
            assert!(
                matches!(got, Err(PyError::Corrupt(_))),
                "loop of {len} after {lead}: {got:?}"
            );
            assert!(raw.len() < 4 * (lead + len));
        }
        let (m, base) = looped(3, 40_000);
        assert!(walk(&m, &l, base, &mut raw).unwrap());
        assert_eq!(raw.len(), MAX_DEPTH);
    }

    #[test]
    fn frames_past_the_depth_are_counted_in_a_marker() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let mem = image(&l, "deep", 0x30000);
        let mut codes = CodeCache::new(None);
        let (mut entries, mut memo) = (Vec::new(), Memo::default());
        let raw: Vec<RawFrame> = (0..10u64)
            .map(|k| frame(0x7f00_0000_1000 + 0x50 * k, 0x10000, 10))
            .collect();
        let mut resolve = |raw: &[RawFrame], more: bool, depth: usize| {
            let opts = FrameOptions {
                depth,
                ..FrameOptions::default()
            };
            let frames = resolve_remembering(
                &mem,
                &l,
                &mut codes,
                raw,
                more,
                opts,
                &mut entries,
                &mut memo,
                false,
            )
            .unwrap();
            assert_eq!(entries.len(), frames.len());
            let marker = frames.last().is_some_and(|f| f.is_marker());
            (names(&frames), marker)
        };
        let (got, marker) = resolve(&raw, false, 4);
        assert_eq!(
            got,
            ["deep", "deep", "deep", "deep", "[6 frames not shown]"]
        );
        assert!(marker);
        // Entry shims are not frames: not shown, not counted.
        let mut shimmed = raw.clone();
        shimmed[7].shim = true;
        assert_eq!(resolve(&shimmed, false, 4).0[4], "[5 frames not shown]");
        // Within the depth: no marker; cut by the ceiling: a lower bound.
        assert_eq!(
            resolve(&raw, false, 10),
            (vec!["deep".to_string(); 10], false)
        );
        assert_eq!(
            resolve(&raw, true, 10).0[10],
            "[at least 0 frames not shown]"
        );
        assert_eq!(resolve(&raw, true, 8).0[8], "[at least 2 frames not shown]");
    }

    #[test]
    fn regions_outside_lists_each_code_head_once() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let chunk = (0x7f1e_300d_b000u64, 6144u64);
        let raw = [
            frame(0x7f1e_300d_b1a0, 0x7f1e_3125_ceb0, 40),
            frame(0x7f1e_300d_b150, 0x7f1e_3125_ceb0, 40),
            // A generator's frame, outside the data stack.
            frame(0x7f1e_3128_0800, 0x7f1e_3128_0710, 8),
            frame(0x7f1e_300d_b100, 0x7f1e_3125_ceb0, 12),
        ];
        let FrameRoot::CFrame { cframe, current } = l.frame_root else {
            panic!("3.12 reaches frames through the C frame");
        };
        let mut tstate = vec![0u8; 288];
        let at = cframe as usize;
        tstate[at..at + 8].copy_from_slice(&0x7f1e_297f_9d00u64.to_le_bytes());
        let mut out = vec![(1, 1)];
        regions_outside(&l, &tstate, &raw, &[chunk], &mut out);
        assert_eq!(
            out,
            [
                (0x7f1e_3128_0800, 80),
                (0x7f1e_3125_ceb0, CODE_HEAD as u64),
                (0x7f1e_3128_0710, CODE_HEAD as u64),
                (0x7f1e_297f_9d00 + current, 8),
            ]
        );
    }
}
