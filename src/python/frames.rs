//! Walking one thread's chain of interpreter frames.

use std::sync::Arc;

use super::PyError;
use super::code::{CODE_HEAD, CodeCache};
use super::layout::{FrameRoot, InstrSource, Layout};
use super::locals::read_locals;
use crate::process::memory::{le_u8, le_u32, le_u64};
use crate::process::{Memory, MemoryExt};
use crate::sample::{Frame, FrameKind};

/// Deepest stack prof follows; deeper chains are cut (and are almost always torn reads).
pub const MAX_DEPTH: usize = 4096;

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
/// prefetched regions): the current chunk from the thread state and the chain behind it.
pub fn datastack_spans(l: &Layout, tstate: &[u8], copied: &[(u64, Vec<u8>)]) -> Vec<(u64, u64)> {
    let Some(off) = l.ts_datastack_chunk else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chunk = le_u64(tstate, off as usize);
    while chunk != 0 && out.len() < MAX_CHUNKS {
        let Some((_, data)) = copied.iter().find(|(a, _)| *a == chunk) else {
            break;
        };
        out.push((chunk, data.len() as u64));
        chunk = le_u64(data, 0);
    }
    out
}

/// Regions the walk of `raw` read outside the thread's data-stack chunks (and the
/// 3.11/3.12 C frame, and the heads of the code objects), for the next sample's batched read.
pub fn regions_outside(
    l: &Layout,
    tstate: &[u8],
    raw: &[RawFrame],
    chunks: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let size = (l.f_size as usize).clamp(64, 512) as u64;
    let inside = |a: u64| chunks.iter().any(|(s, len)| *s <= a && a + size <= s + len);
    let mut out: Vec<(u64, u64)> = raw
        .iter()
        .filter(|f| !inside(f.addr))
        .map(|f| (f.addr, size))
        .collect();
    // The code objects' first bytes, so the code cache's check of every entry is free.
    let mut codes: Vec<u64> = raw.iter().filter(|f| !f.shim).map(|f| f.code).collect();
    codes.sort_unstable();
    codes.dedup();
    out.extend(codes.into_iter().map(|c| (c, CODE_HEAD as u64)));
    if let FrameRoot::CFrame { cframe, current } = l.frame_root {
        let cf = le_u64(tstate, cframe as usize);
        if cf != 0 {
            out.push((cf + current, 8));
        }
    }
    out
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

/// The innermost frame of every thread, read afresh in one batch (None where unreadable).
/// For 3.11/3.12 the `_PyCFrame` seen in the thread-state copy is re-read; a thread that
/// switched to another C frame since is reported as changed.
pub fn current_frames<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    threads: &[super::threads::PyThread],
) -> Vec<Option<u64>> {
    let n = threads.len();
    let mut a = vec![[0u8; 8]; n];
    let mut b = vec![[0u8; 8]; n];
    let mut reqs: Vec<(u64, &mut [u8])> = Vec::with_capacity(2 * n);
    let mut cframes = Vec::with_capacity(n);
    for ((t, a), b) in threads.iter().zip(a.iter_mut()).zip(b.iter_mut()) {
        match l.frame_root {
            FrameRoot::Direct(off) => reqs.push((t.tstate + off, a)),
            FrameRoot::CFrame { cframe, current } => {
                let cf = le_u64(&t.raw, cframe as usize);
                cframes.push(cf);
                reqs.push((t.tstate + cframe, a));
                if cf != 0 {
                    reqs.push((cf + current, b));
                }
            }
        }
    }
    if mem.read_many(&mut reqs).is_err() {
        return vec![None; n];
    }
    (0..n)
        .map(|i| match l.frame_root {
            FrameRoot::Direct(_) => Some(u64::from_le_bytes(a[i])),
            FrameRoot::CFrame { .. } => {
                let cf = u64::from_le_bytes(a[i]);
                if cf != cframes[i] {
                    None
                } else if cf == 0 {
                    Some(0)
                } else {
                    Some(u64::from_le_bytes(b[i]))
                }
            }
        })
        .collect()
}

/// Walk the frame chain from `frame`, innermost first.
pub fn walk<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    mut frame: u64,
    out: &mut Vec<RawFrame>,
) -> Result<(), PyError> {
    out.clear();
    let mut buf = [0u8; 512];
    let size = (l.f_size as usize).clamp(64, buf.len());
    while frame != 0 {
        if out.len() >= MAX_DEPTH {
            return Err(PyError::Corrupt(
                "frame chain too deep (torn read or cycle)",
            ));
        }
        mem.read(frame, &mut buf[..size])?;
        let code = le_u64(&buf, l.f_code as usize) & !l.f_code_tag_mask;
        let back = le_u64(&buf, l.f_back as usize);
        let owner = l.f_owner.map(|o| le_u8(&buf, o as usize));
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
        let offset = match l.f_instr {
            InstrSource::LastiBytes(off) => le_u32(&buf, off as usize) as i32 as i64,
            InstrSource::LastiUnits(off) => {
                let u = le_u32(&buf, off as usize) as i32 as i64;
                if u < 0 { -1 } else { u * 2 }
            }
            InstrSource::Pointer(off) => {
                let ip = le_u64(&buf, off as usize);
                let base = bytecode_base(mem, l, &buf, code)?;
                ip.wrapping_sub(base) as i64
            }
        };
        let is_entry = l
            .f_is_entry
            .is_some_and(|off| le_u8(&buf, off as usize) != 0);
        out.push(RawFrame {
            addr: frame,
            code,
            offset,
            is_entry,
            shim: false,
        });
        if back == frame {
            return Err(PyError::Corrupt("frame points to itself"));
        }
        frame = back;
    }
    Ok(())
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
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameOptions {
    /// Read local variables.
    pub locals: bool,
    /// Re-check each stack after reading it and retry when the thread moved meanwhile
    /// (the consistency check used instead of stopping the target).
    pub validate: bool,
    /// Report each function's first line instead of the line being run (`-F`).
    pub function_lines: bool,
}

/// Resolve raw frames to named frames through the code cache. A frame whose code object
/// cannot be read is reported as `<unknown>` rather than dropping the whole stack.
pub fn resolve<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &[RawFrame],
    opts: FrameOptions,
) -> Result<Vec<Frame>, PyError> {
    resolve_with_entries(mem, l, codes, raw, opts, &mut Vec::new())
}

/// [`resolve`], also giving each returned frame's `is_entry` in `entries` (for merging
/// with native stacks). An entry frame that is not shown (not a code object) passes its
/// flag to the frame shown before it, the outermost frame of the same C call.
pub fn resolve_with_entries<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &[RawFrame],
    opts: FrameOptions,
    entries: &mut Vec<bool>,
) -> Result<Vec<Frame>, PyError> {
    entries.clear();
    let mut frames = Vec::with_capacity(raw.len());
    for rf in raw.iter().filter(|f| !f.shim) {
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
        let line = if opts.function_lines {
            code.info.first_line
        } else {
            code.line(l, rf.offset)
        };
        let info = &code.info;
        frames.push(Frame {
            name: Arc::clone(&info.name),
            filename: Arc::clone(&info.filename),
            short_filename: Arc::clone(&info.short_filename),
            line,
            kind: FrameKind::Python,
            locals,
        });
    }
    Ok(frames)
}
