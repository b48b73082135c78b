//! Reading another address space: the `Memory` seam everything above `process/` reads through.

use std::cell::Cell;
use std::io::IoSliceMut;

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;
use thiserror::Error;

/// Why a read of the target's memory failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemoryError {
    /// The address range is not (or no longer) mapped in the target.
    #[error("address {addr:#x} (+{len}) is not readable in the target")]
    Unmapped {
        /// Start of the failed read.
        addr: u64,
        /// Its length.
        len: usize,
    },
    /// The process is gone.
    #[error("the process has exited")]
    Gone,
    /// We may not read this process.
    #[error("permission denied reading the process's memory")]
    Permission,
    /// Any other OS error.
    #[error("reading target memory failed: {0}")]
    Os(nix::Error),
}

/// Result of a memory read.
pub type MemResult<T> = Result<T, MemoryError>;

/// A readable address space: a live process, a core file or an in-memory image.
pub trait Memory {
    /// Fill `buf` with the bytes at `addr`; all or nothing.
    fn read(&self, addr: u64, buf: &mut [u8]) -> MemResult<()>;

    /// Fill several buffers; the default reads them one by one, live memory does one syscall.
    fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> MemResult<()> {
        for (addr, buf) in reqs.iter_mut() {
            self.read(*addr, buf)?;
        }
        Ok(())
    }

    /// [`Memory::read_many`] of `reqs` in groups, split at the ascending indices `cuts`:
    /// every byte of a group is read after every byte of the groups before it (within a
    /// group, in any order), so a value read in a first group is known from before a copy,
    /// and a re-read in a last group proves it did not change while the copy was made.
    fn read_many_then(&self, reqs: &mut [(u64, &mut [u8])], cuts: &[usize]) -> MemResult<()> {
        let n = reqs.len();
        let mut start = 0;
        for end in cuts.iter().copied().chain([n]) {
            let end = end.clamp(start, n);
            self.read_many(&mut reqs[start..end])?;
            start = end;
        }
        Ok(())
    }

    /// The bytes at `addr` when they are already held locally (no read, no copy).
    fn peek(&self, _addr: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Number of remote reads issued so far (syscalls for a live process).
    fn reads(&self) -> u64 {
        0
    }
}

/// Typed little-endian reads on top of any `Memory`.
pub trait MemoryExt: Memory {
    /// Read a u64.
    fn u64(&self, addr: u64) -> MemResult<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Read an i64.
    fn i64(&self, addr: u64) -> MemResult<i64> {
        Ok(self.u64(addr)? as i64)
    }
    /// Read a u32.
    fn u32(&self, addr: u64) -> MemResult<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Read an i32.
    fn i32(&self, addr: u64) -> MemResult<i32> {
        Ok(self.u32(addr)? as i32)
    }
    /// Read a byte.
    fn u8(&self, addr: u64) -> MemResult<u8> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }
    /// Read `len` bytes into a new vector (callers bound `len`).
    fn bytes(&self, addr: u64, len: usize) -> MemResult<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }
}

impl<M: Memory + ?Sized> MemoryExt for M {}

/// A handle on a memory (a reference, or an `Arc` when several readers share a core
/// file) reads as the memory itself.
macro_rules! forward_memory {
    ($($handle:ty),*) => {$(
        impl<M: Memory + ?Sized> Memory for $handle {
            fn read(&self, addr: u64, buf: &mut [u8]) -> MemResult<()> {
                (**self).read(addr, buf)
            }
            fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> MemResult<()> {
                (**self).read_many(reqs)
            }
            fn read_many_then(
                &self,
                reqs: &mut [(u64, &mut [u8])],
                cuts: &[usize],
            ) -> MemResult<()> {
                (**self).read_many_then(reqs, cuts)
            }
            fn peek(&self, addr: u64, len: usize) -> Option<&[u8]> {
                (**self).peek(addr, len)
            }
            fn reads(&self) -> u64 {
                (**self).reads()
            }
        }
    )*};
}

forward_memory!(&M, std::sync::Arc<M>);

/// Little-endian field access in a buffer copied from the target; out of range reads give 0,
/// which the callers' validation then rejects like any other garbage.
pub fn le_u64(buf: &[u8], off: usize) -> u64 {
    buf.get(off..off + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// See [`le_u64`].
pub fn le_u32(buf: &[u8], off: usize) -> u32 {
    buf.get(off..off + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// See [`le_u64`].
pub fn le_u8(buf: &[u8], off: usize) -> u8 {
    buf.get(off).copied().unwrap_or(0)
}

/// The memory of a live process, read with process_vm_readv (no stop needed).
pub struct LiveMemory {
    pid: Pid,
    reads: Cell<u64>,
    /// Where batched reads land before being copied out, kept between reads.
    scratch: Cell<Vec<u8>>,
    /// How the latest batches were laid out, most recent first: the sampler asks for the
    /// same ranges tick after tick, and sorting and merging them again each time was a
    /// visible share of its CPU. A tick makes up to three batches (the batch, the re-read
    /// of a new GIL holder, the second look), each with its own layout.
    layouts: Cell<Layouts>,
    /// The iovec lists of a batched read, kept empty between reads so that a read does
    /// not allocate them (three allocations per read were a visible share of a tick).
    iovecs: Cell<Iovecs>,
}

/// See [`LiveMemory::iovecs`]. The local lists borrow the buffers of one read; they are
/// kept as empty lists of `'static` items and given the lifetime of each read by
/// [`recycle`].
#[derive(Default)]
struct Iovecs {
    remote: Vec<RemoteIoVec>,
    local: Vec<IoSliceMut<'static>>,
    bufs: Vec<Option<&'static mut [u8]>>,
}

/// An empty list of `U` in the allocation of `v` (the standard library collects a
/// `filter_map` of a vector's `into_iter` in place when the item sizes agree; otherwise
/// this is a fresh, empty list): a list of borrows reused for borrows of another lifetime.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Batch layouts a [`LiveMemory`] always keeps (the last ones used).
const LAYOUTS_KEPT: usize = 4;
/// Batch layouts it keeps while they hold at most [`LAYOUT_RANGES_KEPT`] requests together:
/// a batch that leaves out the stacks the GIL shows still has one shape per holder of the
/// GIL, and one per pair of holders when the GIL changed hands (the re-read of the new
/// holder): on eight busy threads, ~90 shapes with their second looks. With 16 kept, a
/// change of hands laid out three batches anew (~9k instructions each, mostly sorting).
const LAYOUTS_KEPT_SMALL: usize = 128;
/// See [`LAYOUTS_KEPT_SMALL`]: a thousand threads' batch alone is ~3,000 requests.
const LAYOUT_RANGES_KEPT: usize = 4096;

/// The batch layouts kept (see [`LAYOUTS_KEPT_SMALL`]), found by a hash of their requests,
/// the least recently used given up first.
#[derive(Debug, Default)]
struct Layouts {
    kept: Vec<BatchLayout>,
    /// Counts the reads: each layout notes the last one that used it.
    clock: u64,
}

/// A batched read's requests and how they are issued.
#[derive(Debug)]
struct BatchLayout {
    /// [`batch_key`] of its requests.
    key: u64,
    /// When it was last used (see [`Layouts::clock`]).
    used: u64,
    ranges: Vec<(u64, usize)>,
    cuts: Vec<usize>,
    plan: Coalesced,
    scatter: Scatter,
}

/// A hash of a batch's requests (address and length) and group cuts.
fn batch_key(reqs: &[(u64, &mut [u8])], cuts: &[usize]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, x: u64| (h.rotate_left(26) ^ x).wrapping_mul(K);
    let h = cuts
        .iter()
        .fold(reqs.len() as u64, |h, &c| mix(h, c as u64));
    reqs.iter()
        .fold(h, |h, (a, b)| mix(mix(h, *a), b.len() as u64))
}

impl Layouts {
    /// The position in `kept` of the layout for `reqs`: the one kept for the same
    /// requests, else one laid out anew (in the allocations of the least recently used,
    /// when there are too many).
    fn for_requests(&mut self, reqs: &[(u64, &mut [u8])], cuts: &[usize]) -> usize {
        self.clock += 1;
        let key = batch_key(reqs, cuts);
        let same = |l: &BatchLayout| {
            l.key == key
                && l.cuts == cuts
                && l.ranges.len() == reqs.len()
                && l.ranges
                    .iter()
                    .zip(reqs)
                    .all(|(r, (a, b))| r.0 == *a && r.1 == b.len())
        };
        if let Some(k) = self.kept.iter().position(same) {
            self.kept[k].used = self.clock;
            return k;
        }
        let mut total: usize = self.kept.iter().map(|l| l.ranges.len()).sum();
        let mut oldest = None;
        while self.kept.len() >= LAYOUTS_KEPT
            && (self.kept.len() >= LAYOUTS_KEPT_SMALL || total + reqs.len() > LAYOUT_RANGES_KEPT)
        {
            let lru = (0..self.kept.len())
                .min_by_key(|&k| self.kept[k].used)
                .expect("kept layouts");
            let gone = self.kept.swap_remove(lru);
            total -= gone.ranges.len();
            oldest = Some(gone);
        }
        let mut ranges = oldest.map(|l| l.ranges).unwrap_or_default();
        ranges.clear();
        ranges.extend(reqs.iter().map(|(a, b)| (*a, b.len())));
        let plan = coalesce(&ranges, cuts);
        let scatter = scatter(&plan, &ranges);
        self.kept.push(BatchLayout {
            key,
            used: self.clock,
            ranges,
            cuts: cuts.to_vec(),
            plan,
            scatter,
        });
        self.kept.len() - 1
    }
}

/// process_vm_readv accepts at most IOV_MAX iovecs per call.
const IOV_MAX: usize = 1024;

/// Pages are at least this big on every supported architecture.
const MIN_PAGE: u64 = 4096;

/// How a batch of reads is issued: fewer, larger remote ranges.
#[derive(Debug, PartialEq, Eq)]
struct Coalesced {
    /// Remote ranges (start, end), ascending and disjoint.
    spans: Vec<(u64, u64)>,
    /// Per request, where its bytes start in the concatenation of the spans.
    offsets: Vec<usize>,
    /// Total bytes of the spans.
    bytes: usize,
    /// The non-empty requests in the order their bytes come in the spans.
    order: Vec<usize>,
}

/// Where part of a batched read lands when it is scattered straight into the callers'
/// buffers: `len` bytes at offset `at` of the spans' concatenation.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Piece {
    at: usize,
    len: usize,
    /// The request whose buffer takes the bytes; None: the gap buffer.
    req: Option<usize>,
    /// For gap pieces, where they start in the gap buffer.
    gap_at: usize,
}

/// The local layout of a batched read that lets the kernel write each request's bytes
/// into its own buffer: bytes between requests go to a throw-away gap buffer, and a
/// request overlapping an earlier one (an 8-byte pointer inside a frame also read whole)
/// is filled afterwards from the pieces that hold its bytes.
#[derive(Debug, PartialEq, Eq)]
struct Scatter {
    pieces: Vec<Piece>,
    /// Total bytes of the gap pieces.
    gaps: usize,
    /// How the requests filled afterwards get their bytes, worked out with the layout:
    /// the batch repeats tick after tick, and finding each one's pieces again (a binary
    /// search, a zeroed buffer and two copies per request; 28 of them per tick on
    /// threads8) was half of this layer's CPU.
    fills: Vec<Fill>,
}

/// A copy, after the read, of `len` bytes from a piece into a deferred request.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Fill {
    /// The deferred request, and where in its buffer the bytes go.
    req: usize,
    to: usize,
    /// The request whose buffer holds the bytes (never a deferred one: only the kernel
    /// fills pieces), or None: the gap buffer; and where in it they start.
    from_req: Option<usize>,
    from: usize,
    len: usize,
}

fn scatter(c: &Coalesced, reqs: &[(u64, usize)]) -> Scatter {
    let mut out = Scatter {
        pieces: Vec::with_capacity(c.order.len() * 2),
        gaps: 0,
        fills: Vec::new(),
    };
    let gap = |out: &mut Scatter, at: usize, len: usize| {
        out.pieces.push(Piece {
            at,
            len,
            req: None,
            gap_at: out.gaps,
        });
        out.gaps += len;
    };
    let mut pos = 0usize;
    let mut deferred = Vec::new();
    for &i in &c.order {
        let (off, len) = (c.offsets[i], reqs[i].1);
        if off < pos {
            deferred.push(i);
            if off + len > pos {
                gap(&mut out, pos, off + len - pos);
                pos = off + len;
            }
            continue;
        }
        if off > pos {
            gap(&mut out, pos, off - pos);
        }
        out.pieces.push(Piece {
            at: off,
            len,
            req: Some(i),
            gap_at: 0,
        });
        pos = off + len;
    }
    for i in deferred {
        let (off, len) = (c.offsets[i], reqs[i].1);
        // The pieces lie end to end in ascending order: only those from the one holding
        // `off` on, up to `off + len`, hold bytes of this request.
        let first = out.pieces.partition_point(|p| p.at + p.len <= off);
        for p in out.pieces[first..].iter().take_while(|p| p.at < off + len) {
            let (lo, hi) = (p.at.max(off), (p.at + p.len).min(off + len));
            if lo < hi {
                out.fills.push(Fill {
                    req: i,
                    to: lo - off,
                    from_req: p.req,
                    from: match p.req {
                        Some(_) => lo - p.at,
                        None => p.gap_at + lo - p.at,
                    },
                    len: hi - lo,
                });
            }
        }
    }
    out
}

/// Merge requests that overlap or sit in the same or neighbouring pages. The kernel pins
/// pages and looks up the mapping once per remote iovec, which on the machines measured
/// costs far more than copying the bytes between two requests (76 iovecs: 31 us, the same
/// bytes as one: 6 us). The gap between two merged requests lies in pages that one of them
/// touches, so merging never makes an otherwise successful read fail.
///
/// Requests from `first` on form a second group, merged only among themselves and placed
/// after all spans of the first (the kernel copies remote iovecs in order).
fn coalesce(reqs: &[(u64, usize)], cuts: &[usize]) -> Coalesced {
    let group = |i: usize| cuts.partition_point(|&c| c <= i);
    // An empty request touches no page, so it must not stretch a span.
    // Sorted by keys worked out once: a key per comparison (a binary search of the cuts
    // each) made this sort most of the cost of laying out a batch.
    let mut keyed: Vec<(usize, u64, usize)> = (0..reqs.len())
        .filter(|&i| reqs[i].1 > 0)
        .map(|i| (group(i), reqs[i].0, i))
        .collect();
    keyed.sort_unstable();
    let order: Vec<usize> = keyed.iter().map(|k| k.2).collect();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut span_of = vec![usize::MAX; reqs.len()];
    // The group of the last span: spans never mix groups.
    let mut last_group = usize::MAX;
    for &i in &order {
        let (addr, len) = reqs[i];
        let end = addr.saturating_add(len as u64);
        let g = group(i);
        match spans.last_mut() {
            Some(last)
                if g == last_group
                    && addr / MIN_PAGE <= last.1.saturating_sub(1) / MIN_PAGE + 1 =>
            {
                last.1 = last.1.max(end);
            }
            _ => spans.push((addr, end)),
        }
        last_group = g;
        span_of[i] = spans.len() - 1;
    }
    let mut span_off = Vec::with_capacity(spans.len());
    let mut bytes = 0usize;
    for &(start, end) in &spans {
        span_off.push(bytes);
        bytes += (end - start) as usize;
    }
    let offsets = reqs
        .iter()
        .zip(&span_of)
        .map(|(&(addr, _), &s)| match s {
            usize::MAX => 0,
            s => span_off[s] + (addr - spans[s].0) as usize,
        })
        .collect();
    Coalesced {
        spans,
        offsets,
        bytes,
        order,
    }
}

impl LiveMemory {
    /// One process_vm_readv of `spans` (at most IOV_MAX) into `local`; all or nothing.
    fn transfer(&self, local: &mut [IoSliceMut], spans: &[(u64, u64)]) -> MemResult<()> {
        let mut lists = self.iovecs.take();
        let remote = &mut lists.remote;
        remote.clear();
        remote.extend(spans.iter().map(|&(start, end)| RemoteIoVec {
            base: start as usize,
            len: (end - start) as usize,
        }));
        let total: usize = remote.iter().map(|r| r.len).sum();
        self.reads.set(self.reads.get() + 1);
        let result = process_vm_readv(self.pid, local, remote);
        self.iovecs.set(lists);
        match result {
            Ok(n) if n == total => Ok(()),
            Ok(n) => {
                // A partial transfer stops at the first unreadable span.
                let mut off = 0;
                for &(start, end) in spans {
                    let len = (end - start) as usize;
                    if n < off + len {
                        return Err(MemoryError::Unmapped { addr: start, len });
                    }
                    off += len;
                }
                Err(MemoryError::Unmapped {
                    addr: spans.first().map_or(0, |s| s.0),
                    len: total,
                })
            }
            Err(e) => Err(self.classify(e, spans.first().map_or(0, |s| s.0), total)),
        }
    }

    /// Memory of process `pid`.
    pub fn new(pid: u32) -> LiveMemory {
        LiveMemory {
            pid: Pid::from_raw(pid as i32),
            reads: Cell::new(0),
            scratch: Cell::new(Vec::new()),
            layouts: Cell::new(Layouts::default()),
            iovecs: Cell::new(Iovecs::default()),
        }
    }

    fn classify(&self, e: nix::Error, addr: u64, len: usize) -> MemoryError {
        match e {
            nix::Error::EFAULT | nix::Error::EIO => MemoryError::Unmapped { addr, len },
            nix::Error::ESRCH => MemoryError::Gone,
            nix::Error::EPERM | nix::Error::EACCES => MemoryError::Permission,
            e => MemoryError::Os(e),
        }
    }
}

impl Memory for LiveMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> MemResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        self.reads.set(self.reads.get() + 1);
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        let mut local = [IoSliceMut::new(buf)];
        match process_vm_readv(self.pid, &mut local, &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(MemoryError::Unmapped { addr, len }),
            Err(e) => Err(self.classify(e, addr, len)),
        }
    }

    fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> MemResult<()> {
        self.read_many_then(reqs, &[])
    }

    fn read_many_then(&self, reqs: &mut [(u64, &mut [u8])], cuts: &[usize]) -> MemResult<()> {
        let mut layouts = self.layouts.take();
        let k = layouts.for_requests(reqs, cuts);
        let result = self.read_laid_out(reqs, &layouts.kept[k]);
        self.layouts.set(layouts);
        result
    }

    fn reads(&self) -> u64 {
        self.reads.get()
    }
}

impl LiveMemory {
    fn read_laid_out(&self, reqs: &mut [(u64, &mut [u8])], batch: &BatchLayout) -> MemResult<()> {
        let (plan, layout) = (&batch.plan, &batch.scatter);
        let mut scratch = self.scratch.take();
        // Straight into the callers' buffers when one syscall does: a sample copies tens of
        // kilobytes, and copying them a second time was a visible share of the CPU.
        if plan.spans.len() <= IOV_MAX && layout.pieces.len() <= IOV_MAX {
            // Only grown: the batch and the second look alternate, and zeroing the batch's
            // gaps again after each second look was a waste.
            if scratch.len() < layout.gaps {
                scratch.resize(layout.gaps, 0);
            }
            let result = {
                let mut lists = self.iovecs.take();
                let mut bufs: Vec<Option<&mut [u8]>> = recycle(std::mem::take(&mut lists.bufs));
                bufs.extend(reqs.iter_mut().map(|(_, b)| Some(&mut **b)));
                let mut rest = &mut scratch[..layout.gaps];
                let mut local: Vec<IoSliceMut> = recycle(std::mem::take(&mut lists.local));
                local.reserve(layout.pieces.len());
                for piece in &layout.pieces {
                    let buf = match piece.req {
                        Some(i) => bufs[i].take().unwrap_or_default(),
                        None => {
                            let (gap, tail) = std::mem::take(&mut rest).split_at_mut(piece.len);
                            rest = tail;
                            gap
                        }
                    };
                    local.push(IoSliceMut::new(buf));
                }
                // The lists go back empty, before `transfer` takes the remote one.
                lists.bufs = recycle(bufs);
                self.iovecs.set(lists);
                let result = self.transfer(&mut local, &plan.spans);
                let mut lists = self.iovecs.take();
                lists.local = recycle(local);
                self.iovecs.set(lists);
                result
            };
            if result.is_ok() {
                for f in &layout.fills {
                    let (to, from) = (f.to..f.to + f.len, f.from..f.from + f.len);
                    match f.from_req {
                        Some(j) => {
                            let [dst, src] = reqs
                                .get_disjoint_mut([f.req, j])
                                .expect("a deferred request is filled from another");
                            dst.1[to].copy_from_slice(&src.1[from]);
                        }
                        None => reqs[f.req].1[to].copy_from_slice(&scratch[from]),
                    }
                }
            }
            self.scratch.set(scratch);
            return result;
        }
        // Every byte is overwritten by the read: no need to zero it again.
        if scratch.len() < plan.bytes {
            scratch.resize(plan.bytes, 0);
        }
        let mut done = 0usize;
        let mut result = Ok(());
        for spans in plan.spans.chunks(IOV_MAX) {
            let total: usize = spans.iter().map(|&(s, e)| (e - s) as usize).sum();
            let mut local = [IoSliceMut::new(&mut scratch[done..done + total])];
            result = self.transfer(&mut local, spans);
            if result.is_err() {
                break;
            }
            done += total;
        }
        if result.is_ok() {
            for ((_, buf), &off) in reqs.iter_mut().zip(&plan.offsets) {
                let len = buf.len();
                buf.copy_from_slice(&scratch[off..off + len]);
            }
        }
        self.scratch.set(scratch);
        result
    }
}

/// Copies of target memory taken in one read each, served locally; anything outside them
/// is read from the target. Lets a walk over many small structures cost one syscall.
pub struct Overlay<'a, M: Memory + ?Sized> {
    snapshots: &'a [(u64, Vec<u8>)],
    inner: &'a M,
    /// The snapshot that served the last read: a walk reads one frame after another
    /// from the same chunk.
    last: Cell<usize>,
}

impl<'a, M: Memory + ?Sized> Overlay<'a, M> {
    /// Serve reads from `snapshots` (address, bytes; sorted by address, not overlapping)
    /// before falling back to `inner`.
    pub fn new(snapshots: &'a [(u64, Vec<u8>)], inner: &'a M) -> Self {
        Overlay {
            snapshots,
            inner,
            last: Cell::new(0),
        }
    }

    fn find(&self, addr: u64, len: usize) -> Option<&'a [u8]> {
        let snapshots = self.snapshots;
        let within = |i: usize| {
            let (start, data) = snapshots.get(i)?;
            let off = usize::try_from(addr.checked_sub(*start)?).ok()?;
            data.get(off..off.checked_add(len)?)
        };
        if let Some(b) = within(self.last.get()) {
            return Some(b);
        }
        let i = snapshots
            .partition_point(|(start, _)| *start <= addr)
            .checked_sub(1)?;
        self.last.set(i);
        within(i)
    }
}

impl<M: Memory + ?Sized> Memory for Overlay<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> MemResult<()> {
        match self.find(addr, buf.len()) {
            Some(b) => {
                buf.copy_from_slice(b);
                Ok(())
            }
            None => self.inner.read(addr, buf),
        }
    }

    fn peek(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.find(addr, len)
    }

    fn reads(&self) -> u64 {
        self.inner.reads()
    }
}

/// An address space assembled from byte ranges: unit tests, fuzzing and core files.
#[derive(Default, Clone)]
pub struct ImageMemory {
    regions: Vec<(u64, Vec<u8>)>,
}

impl ImageMemory {
    /// An empty address space.
    pub fn new() -> ImageMemory {
        ImageMemory::default()
    }
    /// Map `data` at `addr`.
    pub fn add(&mut self, addr: u64, data: Vec<u8>) -> &mut Self {
        self.regions.push((addr, data));
        self.regions.sort_by_key(|r| r.0);
        self
    }
}

impl Memory for ImageMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> MemResult<()> {
        let len = buf.len();
        let end = addr
            .checked_add(len as u64)
            .ok_or(MemoryError::Unmapped { addr, len })?;
        for (start, data) in &self.regions {
            let rend = start + data.len() as u64;
            if *start <= addr && end <= rend {
                let off = (addr - start) as usize;
                buf.copy_from_slice(&data[off..off + len]);
                return Ok(());
            }
        }
        Err(MemoryError::Unmapped { addr, len })
    }
}

/// For tests of a live process (their own, or a child): prints a notice and returns true
/// when `process_vm_readv` is not there, as under qemu-user (which runs a cross build's
/// tests and implements neither it, nor ptrace, nor a `clone` that shares memory without
/// being a thread), so that the test can return early.
#[cfg(test)]
pub(crate) fn skip_without_live_reads(test: &str) -> bool {
    // SAFETY: an empty read of this process's memory; nothing is written.
    let r = unsafe {
        libc::process_vm_readv(libc::getpid(), std::ptr::null(), 0, std::ptr::null(), 0, 0)
    };
    let missing = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS);
    if missing {
        // Straight to stderr, past libtest's capture: a skip must show in every run.
        let msg = format!("skipped: {test} needs live-process system calls that qemu-user lacks\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_list_of_borrows_keeps_its_allocation() {
        let mut data = [0u8; 64];
        let mut v: Vec<IoSliceMut> = Vec::with_capacity(16);
        v.push(IoSliceMut::new(&mut data));
        let (at, cap) = (v.as_ptr() as usize, v.capacity());
        let kept: Vec<IoSliceMut<'static>> = recycle(v);
        assert!(kept.is_empty());
        assert_eq!((kept.as_ptr() as usize, kept.capacity()), (at, cap));
        let bufs: Vec<Option<&mut [u8]>> = recycle(kept);
        assert_eq!(bufs.as_ptr() as usize, at);
    }

    #[test]
    fn image_reads_inside_regions_only() {
        let mut m = ImageMemory::new();
        m.add(0x1000, (0u8..16).collect());
        assert_eq!(m.u8(0x1003).unwrap(), 3);
        assert_eq!(m.u32(0x1000).unwrap(), 0x03020100);
        assert!(m.u64(0x100c).is_err());
        assert!(m.u8(0xfff).is_err());
        assert!(m.u8(u64::MAX).is_err());
    }

    #[test]
    fn overlay_serves_snapshots_then_falls_back() {
        let mut inner = ImageMemory::new();
        inner.add(0x1000, vec![1; 32]);
        let snaps = vec![(0x1800u64, vec![5u8; 8]), (0x2000u64, vec![7u8; 16])];
        let o = Overlay::new(&snaps, &inner);
        assert_eq!(o.u8(0x2005).unwrap(), 7);
        assert_eq!(o.u8(0x1807).unwrap(), 5);
        assert_eq!(o.u8(0x1005).unwrap(), 1);
        // Straddling the end of a snapshot goes to the target, which lacks it.
        assert!(o.u64(0x200c).is_err());
        assert_eq!(o.peek(0x2008, 8), Some(&[7u8; 8][..]));
        assert_eq!(o.peek(0x200c, 8), None);
        assert_eq!(o.peek(0x1000, 1), None);
    }

    #[test]
    fn live_memory_reads_own_process() {
        if skip_without_live_reads("live_memory_reads_own_process") {
            return;
        }
        let value: u64 = 0x1122_3344_5566_7788;
        let other: u32 = 7;
        let m = LiveMemory::new(std::process::id());
        assert_eq!(m.u64(&value as *const u64 as u64).unwrap(), value);
        let mut a = [0u8; 8];
        let mut b = [0u8; 4];
        m.read_many(&mut [
            (&value as *const u64 as u64, &mut a[..]),
            (&other as *const u32 as u64, &mut b[..]),
        ])
        .unwrap();
        assert_eq!(u64::from_le_bytes(a), value);
        assert_eq!(u32::from_le_bytes(b), 7);
        assert!(matches!(m.u64(8), Err(MemoryError::Unmapped { .. })));
    }

    #[test]
    fn live_batched_reads_scatter_or_copy_alike() {
        if skip_without_live_reads("live_batched_reads_scatter_or_copy_alike") {
            return;
        }
        let data: Vec<u8> = (0..=255u8).cycle().take(3 * 4096).collect();
        let base = data.as_ptr() as u64;
        let m = LiveMemory::new(std::process::id());
        let cases = [
            // Gaps between requests, and a second group re-reading a byte range.
            (vec![(8usize, 8usize), (100, 16), (40, 8), (5000, 300)], 3),
            // Overlapping requests, filled from the others' bytes afterwards.
            (
                vec![
                    (0, 80),
                    (8, 8),
                    (64, 32),
                    (8000, 8),
                    (4090, 12),
                    (4094, 4),
                    // Spread over three pieces: a request's and two gaps.
                    (70, 40),
                ],
                7,
            ),
            // No gap, no overlap: the batches take turns, each with its own kept layout.
            (vec![(0, 64), (4096, 64)], 2),
        ];
        // Each batch again, with its layout kept, and into buffers holding other bytes: a
        // byte no piece wrote would be left as it was, which cannot equal both fills.
        for (round, (wanted, then)) in cases.iter().chain(&cases).chain(&cases).enumerate() {
            let fill = if round < cases.len() { 0 } else { 0xff };
            let mut bufs: Vec<Vec<u8>> = wanted.iter().map(|&(_, n)| vec![fill; n]).collect();
            let mut reqs: Vec<(u64, &mut [u8])> = wanted
                .iter()
                .zip(bufs.iter_mut())
                .map(|(&(off, _), b)| (base + off as u64, &mut b[..]))
                .collect();
            m.read_many_then(&mut reqs, &[*then]).unwrap();
            for (&(off, n), b) in wanted.iter().zip(&bufs) {
                assert_eq!(&b[..], &data[off..off + n]);
            }
        }
    }

    #[test]
    fn a_batch_layout_is_reused_only_for_the_same_requests() {
        let (mut a, mut b, mut c) = ([0u8; 288], [0u8; 6144], [0u8; 8]);
        let mut reqs: Vec<(u64, &mut [u8])> = vec![
            (0x55b8_8de5_9130, &mut a[..]),
            (0x7f1e_300d_b000, &mut b[..]),
            (0x55b8_8de5_9168, &mut c[..]),
        ];
        let mut layouts = Layouts::default();
        let first = layouts.for_requests(&reqs, &[2]);
        assert_eq!(layouts.kept[first].plan.spans.len(), 3);
        // A layout is known by its allocations.
        let at = layouts.kept[first].ranges.as_ptr();
        let again = layouts.for_requests(&reqs, &[2]);
        assert_eq!(layouts.kept[again].ranges.as_ptr(), at);
        assert_eq!(layouts.kept.len(), 1, "not laid out again");
        // The same addresses split differently into the two groups: laid out anew, and the
        // first layout stays kept.
        let regrouped = layouts.for_requests(&reqs, &[3]);
        assert_eq!(layouts.kept[regrouped].plan.spans.len(), 2);
        assert_eq!(layouts.kept.len(), 2);
        // Batches that take turns (the sampler's batch and its second look) each find their
        // own layout.
        let back = layouts.for_requests(&reqs, &[2]);
        assert_eq!(layouts.kept[back].ranges.as_ptr(), at);
        // A request that moved: laid out anew.
        reqs[1].0 += 4096;
        let moved = layouts.for_requests(&reqs, &[3]);
        assert_eq!(layouts.kept[moved].plan.spans[1].0, 0x7f1e_300d_c000);
        assert_eq!(layouts.kept.len(), 3);
        // Too many: the least recently used ones go, and their allocations serve anew.
        reqs[1].0 -= 4096;
        for k in 0..LAYOUTS_KEPT_SMALL as u64 {
            reqs[0].0 = 0x1000 * (k + 1);
            layouts.for_requests(&reqs, &[2]);
            // The first layout, used every time between the others, stays.
            reqs[0].0 = 0x55b8_8de5_9130;
            let first = layouts.for_requests(&reqs, &[2]);
            assert_eq!(layouts.kept[first].ranges.as_ptr(), at);
        }
        assert_eq!(layouts.kept.len(), LAYOUTS_KEPT_SMALL);
        // A batch of too many requests to keep beside the others: only the latest few stay.
        let mut big: Vec<[u8; 8]> = vec![[0; 8]; LAYOUT_RANGES_KEPT];
        let mut many: Vec<(u64, &mut [u8])> = big
            .iter_mut()
            .enumerate()
            .map(|(k, b)| (0x10_0000 + 0x10 * k as u64, &mut b[..]))
            .collect();
        layouts.for_requests(&many, &[]);
        assert_eq!(layouts.kept.len(), LAYOUTS_KEPT);
        many[0].0 = 8;
        layouts.for_requests(&many, &[]);
        assert_eq!(layouts.kept.len(), LAYOUTS_KEPT);
    }

    #[test]
    fn coalescing_merges_neighbouring_pages_only() {
        // Same page, overlapping, and the next page: one span. Two pages further: a new one.
        let reqs = [
            (0x1000, 8),
            (0x1ff8, 16),
            (0x1004, 8),
            (0x2100, 4),
            (0x4000, 8),
            (0x9000, 0),
        ];
        let c = coalesce(&reqs, &[]);
        assert_eq!(c.spans, vec![(0x1000, 0x2104), (0x4000, 0x4008)]);
        assert_eq!(c.offsets, vec![0, 0xff8, 4, 0x1100, 0x1104, 0]);
        assert_eq!(c.bytes, 0x1104 + 8);
    }

    #[test]
    fn coalescing_keeps_every_group_in_its_place() {
        // The GIL state (a high address, group 0) must be copied before the thread state
        // and chunk of group 1, though both come before it in address order; the re-read of
        // the GIL (group 2) comes last, not merged into its page's first read.
        let reqs = [
            (0x7f1e_3c00_0010, 24),
            (0x55b8_8de5_9130, 288),
            (0x7f1e_300d_b000, 4096),
            (0x7f1e_3c00_0010, 24),
        ];
        let c = coalesce(&reqs, &[1, 3]);
        assert_eq!(
            c.spans,
            vec![
                (0x7f1e_3c00_0010, 0x7f1e_3c00_0028),
                (0x55b8_8de5_9130, 0x55b8_8de5_9250),
                (0x7f1e_300d_b000, 0x7f1e_300d_c000),
                (0x7f1e_3c00_0010, 0x7f1e_3c00_0028),
            ]
        );
        assert_eq!(c.offsets, vec![0, 24, 24 + 288, 24 + 288 + 4096]);
    }

    #[test]
    fn coalescing_keeps_the_second_group_after_the_first() {
        // A batch (thread state, chunk) and its validation re-reads of two pointers: the
        // re-reads are not merged into the batch's spans, even in the same page, and come last.
        let reqs = [
            (0x55b8_8de5_9130, 288),
            (0x7f1e_300d_b000, 6144),
            (0x7f1e_297f_9d10, 8),
            (0x55b8_8de5_9168, 8),
            (0x7f1e_297f_9d18, 8),
        ];
        let c = coalesce(&reqs, &[2]);
        assert_eq!(
            c.spans,
            vec![
                (0x55b8_8de5_9130, 0x55b8_8de5_9250),
                (0x7f1e_300d_b000, 0x7f1e_300d_c800),
                (0x55b8_8de5_9168, 0x55b8_8de5_9170),
                (0x7f1e_297f_9d10, 0x7f1e_297f_9d20),
            ]
        );
        assert_eq!(
            c.offsets,
            vec![0, 288, 288 + 6144 + 8, 288 + 6144, 288 + 6144 + 16]
        );
    }

    #[test]
    fn live_batched_reads_do_not_bridge_unmapped_pages() {
        if skip_without_live_reads("live_batched_reads_do_not_bridge_unmapped_pages") {
            return;
        }
        // Three pages with the middle one unmapped: requests at the end of the first and the
        // start of the third must still succeed, each in its own span.
        let page = 4096usize;
        // SAFETY: a fresh private anonymous mapping, unmapped in the middle and freed below.
        let base = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let p = p as *mut u8;
            *p.add(page - 1) = 0xaa;
            *p.add(2 * page) = 0xbb;
            assert_eq!(libc::munmap(p.add(page) as *mut _, page), 0);
            p
        };
        let m = LiveMemory::new(std::process::id());
        let (mut a, mut b) = ([0u8; 1], [0u8; 1]);
        let got = m.read_many(&mut [
            (base as u64 + page as u64 - 1, &mut a[..]),
            (base as u64 + 2 * page as u64, &mut b[..]),
        ]);
        // SAFETY: the two pages still mapped above.
        unsafe {
            libc::munmap(base as *mut _, page);
            libc::munmap(base.add(2 * page) as *mut _, page);
        }
        got.unwrap();
        assert_eq!((a[0], b[0]), (0xaa, 0xbb));
    }
}
