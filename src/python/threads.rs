//! Interpreters and their thread states; GIL holder; thread names from `threading._active`.

use std::collections::HashMap;

use super::PyError;
use super::layout::{DictKeysFormat, GilSource, Layout, ManagedDict};
use super::objects::{read_long, read_str};
use crate::process::memory::le_u64;
use crate::process::{Memory, MemoryExt};

/// Most interpreters and threads followed; longer lists are torn or hostile.
const MAX_INTERPRETERS: usize = 256;
const MAX_THREADS: usize = 4096;

/// One Python thread state.
#[derive(Debug, Clone)]
pub struct PyThread {
    /// Address of the `PyThreadState`.
    pub tstate: u64,
    /// Its interpreter.
    pub interp: u64,
    /// `thread_id` (pthread_self, `threading.get_ident()`).
    pub thread_id: u64,
    /// Kernel tid where the thread state records it (3.11+).
    pub native_id: Option<u32>,
    /// This thread holds the GIL.
    pub holds_gil: bool,
    /// This thread asked for the GIL and does not have it yet (3.15+ record this).
    pub gil_requested: bool,
    /// Copy of the thread state, for the frame walk.
    pub raw: Vec<u8>,
}

impl PyThread {
    /// Decode a copied thread state; `holder` is the thread state holding the GIL (0: none).
    pub fn from_raw(l: &Layout, tstate: u64, interp: u64, raw: Vec<u8>, holder: u64) -> PyThread {
        let native_id = l
            .ts_native_thread_id
            .map(|off| le_u64(&raw, off as usize) as u32)
            .filter(|t| *t != 0);
        PyThread {
            tstate,
            interp,
            thread_id: le_u64(&raw, l.ts_thread_id as usize),
            native_id,
            holds_gil: holder != 0 && holder == tstate,
            gil_requested: l
                .ts_gil_requested
                .and_then(|off| raw.get(off as usize..off as usize + 4))
                .is_some_and(|b| b != [0; 4]),
            raw,
        }
    }
}

impl PyThread {
    /// Does its thread state still hold its ids (read now)? A thread state CPython made
    /// for a new thread holds its creator's id (≤ 3.11) or none until the thread starts,
    /// and a freed one may be reused for another thread: a stack read after the copy of
    /// the thread state, from where it points now, belongs to these ids only if they held.
    pub fn ids_unchanged<M: Memory + ?Sized>(&self, mem: &M, l: &Layout) -> Result<bool, PyError> {
        let id = l.ts_thread_id;
        let native = l.ts_native_thread_id.unwrap_or(id);
        let (lo, hi) = (id.min(native), id.max(native) + 8);
        // Both in one read: they sit side by side in every version.
        let mut buf = [0u8; 64];
        let ids = if hi - lo <= buf.len() as u64 {
            mem.read(self.tstate + lo, &mut buf[..(hi - lo) as usize])?;
            (
                le_u64(&buf, (id - lo) as usize),
                le_u64(&buf, (native - lo) as usize) as u32,
            )
        } else {
            (mem.u64(self.tstate + id)?, mem.u32(self.tstate + native)?)
        };
        let native = l.ts_native_thread_id.map(|_| ids.1).filter(|t| *t != 0);
        Ok(ids.0 == self.thread_id && native == self.native_id)
    }
}

/// Every thread state of every interpreter, main interpreter first.
pub fn thread_states<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    runtime: u64,
) -> Result<Vec<PyThread>, PyError> {
    let mut out = Vec::new();
    let mut interp = mem.u64(runtime + l.rt_interp_head)?;
    let mut interps = 0;
    let size = l.ts_size.clamp(64, 4096) as usize;
    while interp != 0 {
        interps += 1;
        if interps > MAX_INTERPRETERS {
            return Err(PyError::Corrupt("interpreter list too long"));
        }
        let holder = gil_holder(mem, l, runtime, interp)?;
        let mut ts = mem.u64(interp + l.is_threads_head)?;
        while ts != 0 {
            if out.len() >= MAX_THREADS {
                return Err(PyError::Corrupt("thread list too long"));
            }
            let mut raw = vec![0u8; size];
            mem.read(ts, &mut raw)?;
            if le_u64(&raw, l.ts_interp as usize) != interp {
                return Err(PyError::Corrupt(
                    "thread state does not point back to its interpreter",
                ));
            }
            let next = le_u64(&raw, l.ts_next as usize);
            out.push(PyThread::from_raw(l, ts, interp, raw, holder.unwrap_or(0)));
            if next == ts {
                return Err(PyError::Corrupt("thread list cycle"));
            }
            ts = next;
        }
        interp = mem.u64(interp + l.is_next)?;
    }
    Ok(out)
}

/// Address of the GIL state the main interpreter uses, if the layout says where it is.
pub fn gil_address<M: Memory + ?Sized>(mem: &M, l: &Layout, runtime: u64) -> Option<u64> {
    if l.free_threaded {
        return None;
    }
    if let Some(off) = l.rt_gil {
        return Some(runtime + off);
    }
    match l.gil {
        GilSource::InterpGil { ceval_gil, .. } => {
            let interp = mem.u64(runtime + l.rt_interp_head).ok()?;
            let gil = mem.u64(interp.checked_add(ceval_gil)?).ok()?;
            (gil != 0).then_some(gil)
        }
        GilSource::RuntimeTstateCurrent(_) => None,
    }
}

/// `thread_id` of the thread holding the main interpreter's GIL, read now.
pub fn gil_holder_id<M: Memory + ?Sized>(mem: &M, l: &Layout, runtime: u64) -> Option<u64> {
    let interp = mem.u64(runtime + l.rt_interp_head).ok()?;
    let holder = gil_holder(mem, l, runtime, interp).ok()??;
    mem.u64(holder.checked_add(l.ts_thread_id)?).ok()
}

/// The thread state holding the GIL of `interp`, if any.
fn gil_holder<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    runtime: u64,
    interp: u64,
) -> Result<Option<u64>, PyError> {
    if l.free_threaded {
        return Ok(None);
    }
    match l.gil {
        GilSource::RuntimeTstateCurrent(off) => {
            let cur = mem.u64(runtime + off)?;
            Ok((cur != 0).then_some(cur))
        }
        GilSource::InterpGil {
            ceval_gil,
            locked,
            last_holder,
        } => {
            let gil = mem.u64(interp + ceval_gil)?;
            if gil == 0 {
                return Ok(None);
            }
            let is_locked = mem.i32(gil + locked)? != 0;
            let last = mem.u64(gil + last_holder)?;
            Ok((is_locked && last != 0).then_some(last))
        }
    }
}

/// Offset of the kernel tid inside glibc's `struct pthread` (3.7–3.10 do not record the tid in
/// the thread state). Known glibc offsets first, then a scan for a word that is a live tid.
pub fn pthread_tid_offset<M: Memory + ?Sized>(mem: &M, pthread: u64, tids: &[u32]) -> Option<u64> {
    let mut buf = vec![0u8; 2048];
    mem.read(pthread, &mut buf).ok()?;
    let hit = |off: usize| -> bool {
        let v = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap());
        tids.contains(&v)
    };
    for known in [720usize, 208] {
        if hit(known) {
            return Some(known as u64);
        }
    }
    (16..2044).step_by(4).find(|o| hit(*o)).map(|o| o as u64)
}

/// Iterate a dict's (key, value) pointer pairs (bounded).
pub(crate) fn dict_items<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    dict: u64,
) -> Result<Vec<(u64, u64)>, PyError> {
    let keys = mem.u64(dict + l.dict_keys)?;
    let values = mem.u64(dict + l.dict_values)?;
    keys_items(mem, l, keys, values)
}

const MAX_ENTRIES: u64 = 1 << 16;

fn keys_items<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    keys: u64,
    values: u64,
) -> Result<Vec<(u64, u64)>, PyError> {
    let (entries_at, n, entry_size) = match l.dict_keys_format {
        DictKeysFormat::Sized {
            size,
            nentries,
            indices,
        } => {
            let dk_size = mem.u64(keys + size)?;
            let n = mem.u64(keys + nentries)?;
            if dk_size > MAX_ENTRIES * 2 || n > dk_size {
                return Err(PyError::Corrupt("dict size"));
            }
            let width = match dk_size {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xffff_ffff => 4,
                _ => 8,
            };
            (keys + indices + dk_size * width, n, 24)
        }
        DictKeysFormat::Log2 {
            log2_index_bytes,
            kind,
            nentries,
            indices,
        } => {
            let mut head = [0u8; 64];
            let head = &mut head[..indices.min(64) as usize];
            mem.read(keys, head)?;
            let at = |o: u64| head.get(o as usize).copied().unwrap_or(0);
            let log2_index_bytes = at(log2_index_bytes) as u64;
            let n = le_u64(head, nentries as usize);
            if log2_index_bytes > 40 || n > MAX_ENTRIES {
                return Err(PyError::Corrupt("dict keys"));
            }
            let esize = if at(kind) == 0 { 24 } else { 16 };
            (keys + indices + (1u64 << log2_index_bytes), n, esize)
        }
    };
    let raw = mem.bytes(entries_at, (n * entry_size) as usize)?;
    let mut vals = Vec::new();
    if values != 0 && n > 0 {
        vals = mem.bytes(values + l.dict_values_header, (n * 8) as usize)?;
    }
    let mut out = Vec::new();
    for i in 0..n as usize {
        let e = &raw[i * entry_size as usize..];
        let (k, v) = if entry_size == 24 {
            (le_u64(e, 8), le_u64(e, 16))
        } else {
            (le_u64(e, 0), le_u64(e, 8))
        };
        let v = if values != 0 { le_u64(&vals, i * 8) } else { v };
        if k != 0 && v != 0 {
            out.push((k, v));
        }
    }
    Ok(out)
}

pub(crate) fn find_key<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    items: &[(u64, u64)],
    key: &str,
) -> Option<u64> {
    items
        .iter()
        .find(|(k, _)| read_str(mem, l, *k).is_ok_and(|s| s == key))
        .map(|(_, v)| *v)
}

/// Type flags that say where instance attributes live.
const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;

/// (key, value) pairs of an object's instance attributes.
pub(crate) fn instance_attrs<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    obj: u64,
) -> Result<Vec<(u64, u64)>, PyError> {
    let tp = mem.u64(obj + l.ob_type)?;
    let flags = mem.u64(tp + l.tp_flags)?;
    let before = |off: i64| mem.u64(obj.wrapping_add_signed(off));
    let cached_keys = || mem.u64(tp + l.ht_cached_keys);
    if let Some(valid) = l.inline_values_valid
        && flags & TPFLAGS_INLINE_VALUES != 0
    {
        // Inline values follow the instance's own fields: right after the header for a
        // class deriving from object, after the C struct for one deriving from a C type
        // (asyncio's `_GatheringFuture` from `Future`).
        let basicsize = mem.u64(tp + l.tp_basicsize)?;
        if !(l.object_size..=4096).contains(&basicsize) {
            return Err(PyError::Corrupt("tp_basicsize"));
        }
        let values = obj + basicsize;
        if mem.u8(values + valid)? != 0 {
            return keys_items(mem, l, cached_keys()?, values);
        }
    }
    if flags & TPFLAGS_MANAGED_DICT != 0 {
        match l.managed_dict {
            ManagedDict::None => {}
            ManagedDict::ValuesOrDict { values, dict } => {
                let values = before(values)?;
                if values != 0 {
                    return keys_items(mem, l, cached_keys()?, values);
                }
                return dict_items(mem, l, before(dict)?);
            }
            ManagedDict::Tagged(at) => {
                let word = before(at)?;
                if word & 1 != 0 {
                    return keys_items(mem, l, cached_keys()?, word + 1);
                }
                return dict_items(mem, l, word);
            }
            ManagedDict::Dict(at) => return dict_items(mem, l, before(at)?),
        }
    }
    let off = mem.i64(tp + l.tp_dictoffset)?;
    if off <= 0 || off > 4096 {
        return Err(PyError::Corrupt("tp_dictoffset"));
    }
    let d = mem.u64(obj + off as u64)?;
    if d == 0 {
        return Ok(Vec::new());
    }
    dict_items(mem, l, d)
}

/// Names of the threads in `threading._active`, by Python thread id.
pub fn thread_names<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    interp: u64,
) -> Result<HashMap<u64, String>, PyError> {
    let mut names = HashMap::new();
    let modules = mem.u64(interp + l.is_modules)?;
    if modules == 0 {
        return Ok(names);
    }
    let items = dict_items(mem, l, modules)?;
    let Some(threading) = find_key(mem, l, &items, "threading") else {
        return Ok(names);
    };
    let md = mem.u64(threading + l.module_dict)?;
    let Some(active) = find_key(mem, l, &dict_items(mem, l, md)?, "_active") else {
        return Ok(names);
    };
    for (k, thread) in dict_items(mem, l, active)? {
        let Ok(Some(ident)) = read_long(mem, l, k) else {
            continue;
        };
        let Ok(attrs) = instance_attrs(mem, l, thread) else {
            continue;
        };
        if let Some(name) = find_key(mem, l, &attrs, "_name")
            && let Ok(s) = read_str(mem, l, name)
        {
            names.insert(ident as u64, s);
        }
    }
    Ok(names)
}
