//! asyncio tasks read from outside (`--async`): every Task of every event loop, its name,
//! the thread whose loop runs it, whether it runs or waits, what it awaits, and the frames
//! of its coroutine await chain; and the stacks a profile gets from them.
//!
//! Where tasks live and how a Task, a coroutine and its frame are laid out changed in every
//! version from 3.8 to 3.15: [`AsyncLayout`] holds those facts as data (3.14+ from the
//! `_Py_AsyncioModuleDebugOffsets` section the interpreter ships, older versions from the
//! offsets in `notes/asyncio-and-gil-internals.md`), and one walk serves every version.
//! Every list and chain read here is bounded and checked for cycles: a torn or hostile
//! target costs a sample, never a hang.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::code::CodeCache;
use super::frames::{FrameOptions, python_frame, resolve_with_entries};
use super::layout::{Layout, Version};
use super::objects::{read_cstr, read_long, read_str};
use super::threads::{dict_items, find_key, instance_attrs, thread_states};
use super::{PyError, StackReader};
use crate::process::memory::{le_u8, le_u32, le_u64};
use crate::process::{MapRange, Memory, MemoryExt};
use crate::sample::{Frame, FrameCode, ThreadStack};

/// Most tasks read per sample; a longer registry is torn or hostile.
pub const MAX_TASKS: usize = 100_000;
/// Most coroutines followed down one await chain, and most tasks up one chain of awaiters.
pub const MAX_CHAIN: usize = 256;
/// Most children of one `gather` read.
const MAX_CHILDREN: u64 = 1 << 16;
/// Largest hash-table mask of a `set` read (about a million slots).
const MAX_SET_MASK: u64 = (1 << 20) - 1;
/// How often the registries' addresses (module globals) are looked up again, and how soon
/// after a failed look (asyncio not imported yet).
const REGISTRY_REFRESH: Duration = Duration::from_secs(2);
const REGISTRY_RETRY: Duration = Duration::from_millis(500);
/// How long a loop's thread is trusted before `loop._thread_id` is read again.
const LOOP_REFRESH: Duration = Duration::from_secs(1);

/// Where the tasks of one interpreter version are registered.
#[derive(Debug, Clone, PartialEq)]
pub enum Registry {
    /// ≤3.13: globals of the `asyncio.tasks` module: weak sets of tasks (`_all_tasks`, or
    /// `_scheduled_tasks` from 3.12) and a plain set of eagerly running ones (3.12+).
    Module {
        /// Names of `WeakSet`s of tasks.
        weak_sets: &'static [&'static str],
        /// Names of plain `set`s of tasks.
        sets: &'static [&'static str],
    },
    /// 3.14+: a circular list per thread state (and one on the interpreter for tasks whose
    /// thread is gone), linked through the task's `task_node`.
    ThreadLists {
        /// `PyInterpreterState.asyncio_tasks_head`.
        interp_head: u64,
        /// `_PyThreadStateImpl.asyncio_tasks_head`.
        thread_head: u64,
        /// `TaskObj.task_node` (`next` first).
        task_node: u64,
    },
}

/// How the object a suspended coroutine awaits (`_PyGen_yf`) is found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum YieldFrom {
    /// 3.8/3.9: the frame object's `f_stacktop` (non-NULL while suspended) holds it on top
    /// when the next instruction, at `f_lasti + 2` bytes, is `YIELD_FROM`.
    Stacktop {
        /// `f_stacktop`.
        stacktop: u64,
    },
    /// 3.10: `f_valuestack[f_stackdepth - 1]`, when the next instruction, at code unit
    /// `f_lasti + 1`, is `YIELD_FROM` and `f_state` says suspended.
    Stackdepth {
        /// `f_valuestack`.
        valuestack: u64,
        /// `f_stackdepth` (int).
        depth: u64,
        /// `f_state` (i8).
        state: u64,
    },
    /// 3.11/3.12: the embedded frame is suspended and the instruction after `prev_instr`
    /// is `RESUME` with oparg ≥ 2 (after a yield from an await); the awaited object is
    /// `localsplus[stacktop - 1]`.
    Resume {
        /// Opcodes that count as `RESUME` (its quickened or instrumented forms).
        opcodes: [u8; 2],
        /// `stacktop` (int) in the frame.
        stacktop: u64,
    },
    /// 3.13: the frame state says suspended in a yield from; `localsplus[stacktop - 1]`.
    Stacktop313 {
        /// `stacktop` (int) in the frame.
        stacktop: u64,
    },
    /// 3.14+: the state says suspended in a yield from; the awaited object is the tagged
    /// stack reference `slot` words below `stackpointer` (3.15 keeps a NULL above it).
    StackPointer {
        /// `stackpointer` in the frame.
        stackpointer: u64,
        /// Words below it.
        slot: u64,
    },
}

/// Where a coroutine's frame is, and how to tell what it awaits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoroLayout {
    /// ≤3.10: offset of the `gi_frame` pointer; 3.11+: offset of the embedded frame.
    pub frame: u64,
    /// The frame is embedded in the coroutine object (3.11+).
    pub embedded: bool,
    /// Offset of the frame state byte in the coroutine (3.11+).
    pub state: Option<u64>,
    /// The state value of a frame suspended in a yield from (an await).
    pub suspended_yield_from: i8,
    /// How the awaited object is found.
    pub yield_from: YieldFrom,
    /// `co_code` of a code object (≤3.10, where the next opcode is looked up there).
    pub co_code: u64,
    /// The `YIELD_FROM` opcode (≤3.10).
    pub yield_from_op: u8,
}

/// Every offset the task reader needs, for one interpreter build.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncLayout {
    /// Bytes of a Task to copy in one read.
    pub task_size: u64,
    /// `FutureObj.fut_loop`.
    pub fut_loop: u64,
    /// `FutureObj.fut_callback0` (the first done callback).
    pub fut_callback0: u64,
    /// `FutureObj.fut_state` (int: 0 pending, 1 cancelled, 2 finished).
    pub fut_state: u64,
    /// `TaskObj.task_fut_waiter`: the future the task waits on.
    pub task_fut_waiter: u64,
    /// `TaskObj.task_coro`.
    pub task_coro: u64,
    /// `TaskObj.task_name` (a str, or on 3.12+ an int until the name is asked for).
    pub task_name: u64,
    /// 3.14+: `TaskObj.task_awaited_by` and the byte saying it is a set.
    pub task_awaited_by: Option<(u64, u64)>,
    /// Where tasks are registered.
    pub registry: Registry,
    /// Coroutine frames.
    pub coro: CoroLayout,
    /// `FutureIter.future`: what an `await` of a C future or task holds.
    pub future_iter_future: u64,
    /// `PyMethodObject.im_self`.
    pub method_self: u64,
    /// `PyWeakReference.wr_object`.
    pub weakref_object: u64,
    /// `PySetObject.mask` and `.table`.
    pub set_mask: u64,
    /// `PySetObject.table`.
    pub set_table: u64,
    /// `PyListObject.ob_item`.
    pub list_items: u64,
}

/// The offsets of `Task` and `Future` from 3.8 to 3.13, by minor version:
/// (sizeof(TaskObj), fut_state, task_fut_waiter, task_coro, task_name).
fn task_table(minor: u8) -> Option<(u64, u64, u64, u64, u64)> {
    Some(match minor {
        8 => (144, 72, 104, 112, 120),
        9 => (184, 80, 144, 152, 160),
        10 => (192, 88, 152, 160, 168),
        11 | 12 => (176, 88, 128, 136, 144),
        13 => (144, 96, 112, 120, 128),
        _ => return None,
    })
}

/// The coroutine layout of a version (3.8+).
fn coro_layout(l: &Layout) -> Option<CoroLayout> {
    let minor = l.version.minor;
    let object = |yield_from| CoroLayout {
        frame: 16,
        embedded: false,
        state: None,
        suspended_yield_from: -1,
        yield_from,
        co_code: 48,
        yield_from_op: 72,
    };
    let embedded = |frame, state, value, yield_from| CoroLayout {
        frame,
        embedded: true,
        state: Some(state),
        suspended_yield_from: value,
        yield_from,
        co_code: 0,
        yield_from_op: 0,
    };
    Some(match minor {
        8 | 9 => object(YieldFrom::Stacktop { stacktop: 72 }),
        10 => object(YieldFrom::Stackdepth {
            valuestack: 64,
            depth: 80,
            state: 108,
        }),
        11 => embedded(
            80,
            75,
            -1,
            YieldFrom::Resume {
                opcodes: [151, 150],
                stacktop: 64,
            },
        ),
        12 => embedded(
            72,
            67,
            -1,
            YieldFrom::Resume {
                opcodes: [151, 240],
                stacktop: 64,
            },
        ),
        13 => embedded(72, 67, -1, YieldFrom::Stacktop313 { stacktop: 64 }),
        14 => embedded(
            72,
            67,
            -1,
            YieldFrom::StackPointer {
                stackpointer: 64,
                slot: 1,
            },
        ),
        15 => embedded(
            72,
            67,
            2,
            YieldFrom::StackPointer {
                stackpointer: 64,
                slot: 2,
            },
        ),
        _ => return None,
    })
}

/// Fields of `_Py_AsyncioModuleDebugOffsets` (13 u64), in order.
pub const DEBUG_SECTION_WORDS: usize = 13;

impl AsyncLayout {
    /// The built-in layout for 3.8–3.13 (free-threaded builds are not covered).
    pub fn from_table(l: &Layout) -> Option<AsyncLayout> {
        if l.free_threaded || l.version.major != 3 {
            return None;
        }
        let minor = l.version.minor;
        let (task_size, fut_state, task_fut_waiter, task_coro, task_name) = task_table(minor)?;
        Some(AsyncLayout {
            task_size,
            fut_state,
            task_fut_waiter,
            task_coro,
            task_name,
            task_awaited_by: None,
            registry: Registry::Module {
                weak_sets: if minor <= 11 {
                    &["_all_tasks"]
                } else {
                    &["_scheduled_tasks"]
                },
                sets: if minor <= 11 { &[] } else { &["_eager_tasks"] },
            },
            coro: coro_layout(l)?,
            ..AsyncLayout::common()
        })
    }

    /// The layout of 3.14+ from the words of its `.AsyncioDebug` section: task object
    /// {size, name, awaited_by, is_task, awaited_by_is_set, coro, node}, interpreter state
    /// {size, tasks_head}, thread state {size, running_loop, running_task, tasks_head}.
    pub fn from_debug_section(l: &Layout, words: &[u64]) -> Result<AsyncLayout, String> {
        if words.len() < DEBUG_SECTION_WORDS {
            return Err("the .AsyncioDebug section is truncated".into());
        }
        if l.free_threaded {
            return Err("free-threaded builds are not supported".into());
        }
        let [task, name, awaited_by, _is_task, is_set, coro, node] =
            [0, 1, 2, 3, 4, 5, 6].map(|i| words[i]);
        let [interp_size, interp_head] = [words[7], words[8]];
        let [ts_size, _loop, _running, ts_head] = [9, 10, 11, 12].map(|i| words[i]);
        if !(64..=1024).contains(&task) {
            return Err(format!("task size {task}"));
        }
        for (what, v) in [
            ("task_name", name),
            ("task_awaited_by", awaited_by),
            ("task_coro", coro),
        ] {
            if v + 8 > task {
                return Err(format!("{what} = {v} exceeds the task size {task}"));
            }
        }
        if is_set >= task {
            return Err(format!("task_awaited_by_is_set = {is_set}"));
        }
        if node + 16 > task {
            return Err(format!("task_node = {node} exceeds the task size {task}"));
        }
        if interp_head + 8 > interp_size.min(1 << 22) || interp_size > 1 << 22 {
            return Err(format!("interpreter asyncio_tasks_head = {interp_head}"));
        }
        if ts_head + 8 > ts_size || ts_size > 1 << 16 {
            return Err(format!("thread-state asyncio_tasks_head = {ts_head}"));
        }
        let minor = l.version.minor;
        // The Future fields before the task's own are not in the section; they sit where
        // 3.14 put them (checked live on 3.14 and 3.15).
        if minor < 14 {
            return Err(format!("an .AsyncioDebug section on Python {}", l.version));
        }
        Ok(AsyncLayout {
            task_size: task,
            fut_state: 104,
            task_fut_waiter: 120,
            task_coro: coro,
            task_name: name,
            task_awaited_by: Some((awaited_by, is_set)),
            registry: Registry::ThreadLists {
                interp_head,
                thread_head: ts_head,
                task_node: node,
            },
            coro: coro_layout(l).ok_or_else(|| format!("Python {}", l.version))?,
            ..AsyncLayout::common()
        })
    }

    /// The fields every version shares.
    fn common() -> AsyncLayout {
        AsyncLayout {
            task_size: 0,
            fut_loop: 16,
            fut_callback0: 24,
            fut_state: 0,
            task_fut_waiter: 0,
            task_coro: 0,
            task_name: 0,
            task_awaited_by: None,
            registry: Registry::Module {
                weak_sets: &[],
                sets: &[],
            },
            coro: CoroLayout {
                frame: 0,
                embedded: false,
                state: None,
                suspended_yield_from: 0,
                yield_from: YieldFrom::Stacktop { stacktop: 0 },
                co_code: 0,
                yield_from_op: 0,
            },
            future_iter_future: 16,
            method_self: 24,
            weakref_object: 16,
            set_mask: 32,
            set_table: 40,
            list_items: 24,
        }
    }
}

/// Why the asyncio tasks of an interpreter cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TasksUnsupported {
    /// Free-threaded builds are not covered.
    #[error("asyncio tasks of free-threaded builds are not read (Python {0})")]
    FreeThreaded(Version),
    /// 3.7's registry is not among the ones this reader knows.
    #[error("asyncio tasks are read on Python 3.8 and later, not {0}")]
    TooOld(Version),
}

/// Why the tasks of an interpreter with layout `l` cannot be read, if they cannot.
pub fn tasks_unsupported(l: &Layout) -> Option<TasksUnsupported> {
    if l.free_threaded {
        Some(TasksUnsupported::FreeThreaded(l.version))
    } else if l.version.major == 3 && l.version.minor < 8 {
        Some(TasksUnsupported::TooOld(l.version))
    } else {
        None
    }
}

/// Does this version keep its asyncio layout in an `.AsyncioDebug` section?
pub fn needs_debug_section(v: Version) -> bool {
    v.major == 3 && v.minor >= 14
}

/// The words of the `.AsyncioDebug` section of process `pid`: in the main executable or
/// libpython when `_asyncio` is built in (Debian's 3.15), else in the `_asyncio` extension,
/// which is mapped only once asyncio is imported.
pub fn find_debug_section(
    maps: &[MapRange],
    open: impl Fn(&MapRange) -> Option<PathBuf>,
) -> Option<Vec<u64>> {
    use object::{Object, ObjectSection};
    let mut seen: Vec<&str> = Vec::new();
    for m in maps {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        let base = path.rsplit('/').next().unwrap_or(path);
        let wanted = base.starts_with("_asyncio")
            || base.starts_with("python")
            || base.contains("libpython");
        if !wanted || seen.contains(&path) {
            continue;
        }
        seen.push(path);
        let Some(file) = open(m) else {
            continue;
        };
        let Ok(data) = crate::process::maps::map_file(&file) else {
            continue;
        };
        let Ok(elf) = object::File::parse(&*data) else {
            continue;
        };
        let Some(sec) = elf.section_by_name(".AsyncioDebug") else {
            continue;
        };
        let Ok(bytes) = sec.data() else { continue };
        if bytes.len() < DEBUG_SECTION_WORDS * 8 {
            continue;
        }
        return Some(
            (0..DEBUG_SECTION_WORDS)
                .map(|i| le_u64(bytes, i * 8))
                .collect(),
        );
    }
    None
}

/// What a waiting task waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaiting {
    /// Nothing known (running, just created, or the chain could not be followed).
    Unknown,
    /// Other tasks (`await task`, `gather`, a `TaskGroup`): their ids.
    Tasks(Vec<u64>),
    /// A future (`asyncio.sleep`, socket I/O, an `Event`, …) of this type; `in` is the
    /// innermost coroutine awaiting it, which says what the future is for.
    Future {
        /// The future's type name (`_asyncio.Future`).
        kind: String,
    },
    /// A bare `yield` (`asyncio.sleep(0)`): the task gave way and is ready to run.
    Yield,
}

/// One asyncio task.
#[derive(Debug, Clone)]
pub struct AsyncTask {
    /// Its address, which is Python's `id(task)`.
    pub id: u64,
    /// As `Task.get_name()` returns it.
    pub name: Arc<str>,
    /// Python thread id (`threading.get_ident()`) of the thread running its loop.
    pub thread_id: Option<u64>,
    /// Its step runs right now (on that thread).
    pub running: bool,
    /// Ids of the tasks awaiting it.
    pub awaited_by: Vec<u64>,
    /// What it waits on.
    pub awaiting: Awaiting,
    /// Its coroutine's frames, innermost first: the await chain of a waiting task; for the
    /// running task, filled from its thread's stack by [`join_running`].
    pub frames: Vec<Frame>,
    /// The code of its outermost coroutine, to find the running task on its thread's stack.
    pub code: Option<Arc<FrameCode>>,
}

/// What the reader keeps between samples.
#[derive(Default)]
pub struct TaskCache {
    layout: Option<AsyncLayout>,
    /// When the layout (3.14+: its section) was last looked for in vain.
    layout_tried: Option<Instant>,
    /// ≤3.13: addresses of the registries: (weak sets, sets).
    registries: Option<(Vec<u64>, Vec<u64>)>,
    registries_read: Option<Instant>,
    /// Type pointer -> its `tp_name`.
    types: HashMap<u64, Arc<str>>,
    /// Loop -> (thread id, when read).
    loops: HashMap<u64, (Option<u64>, Instant)>,
    /// The tasks of the last sample, read first in the next one.
    prev: Vec<u64>,
    /// Every region the last sample's walk read, copied first in the next one.
    plan: Vec<(u64, usize)>,
}

/// Bound on cached types and loops; cleared wholesale when exceeded.
const MAX_CACHED: usize = 4096;

impl TaskCache {
    /// The `tp_name` of the object at `obj`.
    fn type_name<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        obj: u64,
    ) -> Result<Arc<str>, PyError> {
        let tp = mem.u64(obj + l.ob_type)?;
        self.name_of_type(mem, l, tp)
    }

    fn name_of_type<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        tp: u64,
    ) -> Result<Arc<str>, PyError> {
        if let Some(n) = self.types.get(&tp) {
            return Ok(Arc::clone(n));
        }
        let name: Arc<str> = read_cstr(mem, mem.u64(tp + l.tp_name)?, 64)?.into();
        if self.types.len() >= MAX_CACHED {
            self.types.clear();
        }
        self.types.insert(tp, Arc::clone(&name));
        Ok(name)
    }
}

/// Most regions a plan keeps (about 20 per task for the largest registry).
const MAX_PLAN: usize = 1 << 21;

/// Copies of target memory, by address: what an [`crate::process::Overlay`] serves.
#[derive(Default)]
struct Snapshots {
    copies: Vec<(u64, Vec<u8>)>,
}

/// Regions closer than this are copied as one: they share pages (so the bytes between
/// are readable too), and fewer, larger copies are faster to make and to look up.
const MERGE_GAP: u64 = 512;

impl Snapshots {
    /// Copy `regions` in one batched read (region by region when one of them fails).
    fn fetch<M: Memory + ?Sized>(&mut self, mem: &M, regions: impl Iterator<Item = (u64, usize)>) {
        let mut want: Vec<(u64, u64)> = regions
            .filter(|r| r.1 > 0 && r.1 <= 1 << 20)
            .map(|(a, n)| (a, a.saturating_add(n as u64)))
            .collect();
        want.sort_unstable();
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(want.len());
        for (start, end) in want {
            match spans.last_mut() {
                Some(last) if start <= last.1.saturating_add(MERGE_GAP) => last.1 = last.1.max(end),
                _ => spans.push((start, end)),
            }
        }
        let mut bufs: Vec<(u64, Vec<u8>)> = spans
            .iter()
            .map(|&(a, e)| (a, vec![0u8; (e - a) as usize]))
            .collect();
        let ok = {
            let mut reqs: Vec<(u64, &mut [u8])> = bufs
                .iter_mut()
                .map(|(a, b)| (*a, b.as_mut_slice()))
                .collect();
            mem.read_many(&mut reqs).is_ok()
        };
        if ok {
            self.copies.extend(bufs);
        } else {
            for (a, mut b) in bufs {
                if mem.read(a, &mut b).is_ok() {
                    self.copies.push((a, b));
                }
            }
        }
        self.copies.sort_unstable_by_key(|c| c.0);
    }
}

/// Memory that notes every region read through it: the plan of the next sample.
struct Logged<'a, M: Memory + ?Sized> {
    inner: &'a M,
    log: std::cell::RefCell<Vec<(u64, usize)>>,
}

impl<M: Memory + ?Sized> Logged<'_, M> {
    /// Note a region, unless it lies within the one noted last (a walk reads one object
    /// field by field).
    fn note(&self, addr: u64, len: usize) {
        let mut log = self.log.borrow_mut();
        if let Some(&(a, n)) = log.last()
            && a <= addr
            && addr.saturating_add(len as u64) <= a + n as u64
        {
            return;
        }
        log.push((addr, len));
    }
}

impl<M: Memory + ?Sized> Memory for Logged<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> crate::process::MemResult<()> {
        self.note(addr, buf.len());
        self.inner.read(addr, buf)
    }

    fn peek(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.note(addr, len);
        self.inner.peek(addr, len)
    }
}

/// A task as first read: its fields, before names and chains.
struct RawTask {
    addr: u64,
    name: u64,
    fut_loop: u64,
    waiter: u64,
    coro: u64,
    callback0: u64,
    awaited_by: Option<(u64, bool)>,
}

impl<M: Memory> StackReader<M> {
    /// Every pending asyncio task of the process, with its await chain. `threads` are the
    /// thread stacks of this sample (the running task's frames are taken from its thread's
    /// by [`join_running`]); `section` finds the `.AsyncioDebug` words on 3.14+ (it is
    /// asked at most once a second until it finds them). No asyncio, no tasks.
    pub fn async_tasks(
        &mut self,
        opts: FrameOptions,
        section: impl FnOnce() -> Option<Vec<u64>>,
    ) -> Result<Vec<AsyncTask>, PyError> {
        let layout = Arc::clone(&self.interp.layout);
        let l = &*layout;
        if let Some(why) = tasks_unsupported(l) {
            return Err(PyError::TasksUnsupported(why));
        }
        if self.asyncio.layout.is_none() {
            let retry = self
                .asyncio
                .layout_tried
                .is_none_or(|t| t.elapsed() >= REGISTRY_RETRY * 2);
            if needs_debug_section(l.version) {
                if retry {
                    self.asyncio.layout_tried = Some(Instant::now());
                    self.asyncio.layout =
                        section().and_then(|words| AsyncLayout::from_debug_section(l, &words).ok());
                }
            } else {
                self.asyncio.layout = AsyncLayout::from_table(l);
            }
        }
        let Some(al) = self.asyncio.layout.clone() else {
            return Ok(Vec::new());
        };
        let addrs = self.task_addresses(l, &al)?;
        let mut seen = HashSet::new();
        let addrs: Vec<u64> = addrs.into_iter().filter(|a| seen.insert(*a)).collect();
        if addrs.len() > MAX_TASKS {
            return Err(PyError::Corrupt("too many asyncio tasks"));
        }
        // Everything the last sample read of the tasks is copied first, in one batched
        // read: tasks that sleep on are then read locally, and only what changed costs reads
        // of its own (a plan learnt from the last sample, as the thread reader's).
        let mut snaps = Snapshots::default();
        let plan = std::mem::take(&mut self.asyncio.plan);
        let tasks = addrs.iter().map(|a| (*a, al.task_size as usize));
        snaps.fetch(&self.mem, plan.into_iter().chain(tasks));
        let local = crate::process::Overlay::new(&snaps.copies, &self.mem);
        let logged = Logged {
            inner: &local,
            log: Default::default(),
        };
        let tasks = read_tasks(
            &mut self.asyncio,
            &mut self.codes,
            &self.scratch,
            &logged,
            (l, &al),
            &addrs,
            opts,
        );
        let mut log = logged.log.into_inner();
        log.sort_unstable();
        // Kept as the spans the next fetch copies: a few hundred instead of tens of
        // thousands of reads to sort again.
        let mut plan: Vec<(u64, usize)> = Vec::new();
        for (addr, len) in log {
            let end = addr.saturating_add(len as u64);
            match plan.last_mut() {
                Some((a, n)) if addr <= (*a + *n as u64).saturating_add(MERGE_GAP) => {
                    *n = (end.max(*a + *n as u64) - *a) as usize;
                }
                _ => plan.push((addr, len)),
            }
        }
        plan.truncate(MAX_PLAN);
        self.asyncio.plan = plan;
        self.asyncio.prev = addrs;
        tasks
    }

    /// Addresses of the registered tasks.
    fn task_addresses(&mut self, l: &Layout, al: &AsyncLayout) -> Result<Vec<u64>, PyError> {
        let mut tasks = Vec::new();
        match al.registry {
            Registry::ThreadLists {
                interp_head,
                thread_head,
                task_node,
            } => {
                let threads = thread_states(&self.mem, l, self.interp.runtime)?;
                let mut heads: Vec<u64> = Vec::new();
                for t in &threads {
                    let interp = t.interp + interp_head;
                    if !heads.contains(&interp) {
                        heads.push(interp);
                    }
                    heads.push(t.tstate + thread_head);
                }
                // Last sample's tasks, copied in one read: the walk of an unchanged list
                // is then served locally; a new task costs a read of its own.
                let mut prev = Snapshots::default();
                let node_of = |a: &u64| (a.wrapping_add(task_node), 8usize);
                prev.fetch(&self.mem, self.asyncio.prev.iter().map(node_of));
                let mem = crate::process::Overlay::new(&prev.copies, &self.mem);
                for head in heads {
                    let mut node = mem.u64(head)?;
                    let mut seen = HashSet::new();
                    while node != head && node != 0 {
                        // A list that loops short of its head, or never ends, costs the sample.
                        if !seen.insert(node) || tasks.len() >= MAX_TASKS {
                            return Err(PyError::Corrupt("asyncio task list does not end"));
                        }
                        tasks.push(node.wrapping_sub(task_node));
                        node = mem.u64(node)?;
                    }
                }
            }
            Registry::Module { weak_sets, sets } => {
                let stale = self
                    .asyncio
                    .registries_read
                    .is_none_or(|t| t.elapsed() >= REGISTRY_REFRESH)
                    || (self.asyncio.registries.is_none()
                        && self
                            .asyncio
                            .registries_read
                            .is_some_and(|t| t.elapsed() >= REGISTRY_RETRY));
                if stale {
                    self.asyncio.registries_read = Some(Instant::now());
                    self.asyncio.registries = self.find_registries(l, weak_sets, sets).ok();
                }
                let Some((weak, plain)) = self.asyncio.registries.clone() else {
                    return Ok(tasks);
                };
                let read = (|| -> Result<(), PyError> {
                    for w in weak {
                        let attrs = instance_attrs(&self.mem, l, w)?;
                        let data = find_key(&self.mem, l, &attrs, "data")
                            .ok_or(PyError::Corrupt("WeakSet without data"))?;
                        let refs = TaskCache::set_items(&self.mem, al, data)?;
                        let mut copies = Snapshots::default();
                        copies.fetch(&self.mem, refs.iter().map(|r| (*r, 24usize)));
                        let mem = crate::process::Overlay::new(&copies.copies, &self.mem);
                        for r in refs {
                            tasks.push(mem.u64(r + al.weakref_object)?);
                        }
                    }
                    for s in plain {
                        tasks.extend(TaskCache::set_items(&self.mem, al, s)?);
                    }
                    Ok(())
                })();
                if let Err(e) = read {
                    // Looked up afresh next time: the module may have been reloaded.
                    self.asyncio.registries = None;
                    return Err(e);
                }
            }
        }
        Ok(tasks)
    }

    /// ≤3.13: the registries in `asyncio.tasks`'s globals (none until asyncio is imported).
    #[allow(clippy::type_complexity)]
    fn find_registries(
        &mut self,
        l: &Layout,
        weak_sets: &[&str],
        sets: &[&str],
    ) -> Result<(Vec<u64>, Vec<u64>), PyError> {
        let threads = thread_states(&self.mem, l, self.interp.runtime)?;
        let interp = threads
            .first()
            .map(|t| t.interp)
            .ok_or(PyError::Corrupt("no thread"))?;
        let modules = self.mem.u64(interp + l.is_modules)?;
        let items = dict_items(&self.mem, l, modules)?;
        let module = find_key(&self.mem, l, &items, "asyncio.tasks")
            .ok_or(PyError::Corrupt("asyncio is not imported"))?;
        let md = self.mem.u64(module + l.module_dict)?;
        let globals = dict_items(&self.mem, l, md)?;
        let get = |name: &str| find_key(&self.mem, l, &globals, name);
        Ok((
            weak_sets.iter().filter_map(|n| get(n)).collect(),
            sets.iter().filter_map(|n| get(n)).collect(),
        ))
    }
}

impl TaskCache {
    /// The keys of a `set` (bounded).
    fn set_items<M: Memory + ?Sized>(
        mem: &M,
        al: &AsyncLayout,
        set: u64,
    ) -> Result<Vec<u64>, PyError> {
        let mask = mem.u64(set + al.set_mask)?;
        if mask > MAX_SET_MASK {
            return Err(PyError::Corrupt("set size"));
        }
        let table = mem.u64(set + al.set_table)?;
        let raw = mem.bytes(table, ((mask + 1) * 16) as usize)?;
        Ok(raw
            .chunks_exact(16)
            // Empty slots hold NULL; deleted ones a dummy key with hash -1.
            .filter(|e| le_u64(e, 0) != 0 && le_u64(e, 8) != u64::MAX)
            .map(|e| le_u64(e, 0))
            .collect())
    }

    /// A task's name: its str, or `Task-N` for an auto-named task whose name nobody asked
    /// for yet (3.12+ keep the counter as an int until then).
    fn task_name<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        name: u64,
    ) -> Result<Arc<str>, PyError> {
        let kind = self.type_name(mem, l, name)?;
        match &*kind {
            "str" => Ok(read_str(mem, l, name)?.into()),
            "int" => match read_long(mem, l, name)? {
                Some(n) => Ok(format!("Task-{n}").into()),
                None => Err(PyError::Corrupt("task name")),
            },
            _ => Err(PyError::Corrupt("task name")),
        }
    }

    /// The Python thread id of the thread running `event_loop` (its `_thread_id`, None
    /// while the loop is not running).
    fn loop_thread<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        event_loop: u64,
    ) -> Option<u64> {
        if let Some((tid, at)) = self.loops.get(&event_loop)
            && at.elapsed() < LOOP_REFRESH
        {
            return *tid;
        }
        let tid = (|| {
            let attrs = instance_attrs(mem, l, event_loop).ok()?;
            let v = find_key(mem, l, &attrs, "_thread_id")?;
            read_long(mem, l, v).ok().flatten().map(|t| t as u64)
        })();
        // Only a thread found is kept: a failed read (or a loop not running yet) is tried
        // again next time.
        if let Some(t) = tid {
            if self.loops.len() >= MAX_CACHED {
                self.loops.clear();
            }
            self.loops.insert(event_loop, (Some(t), Instant::now()));
        }
        tid
    }

    /// The frames of the await chain from coroutine `coro`, outermost first, and the object
    /// the innermost one awaits (0: none; a running coroutine awaits nothing yet).
    fn coro_chain<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        al: &AsyncLayout,
        mut coro: u64,
    ) -> Result<(Vec<super::frames::RawFrame>, u64), PyError> {
        let c = &al.coro;
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let size = (l.f_size as usize).clamp(64, 512);
        let mut buf = vec![0u8; c.frame as usize + size];
        loop {
            if out.len() >= MAX_CHAIN || seen.contains(&coro) {
                return Err(PyError::Corrupt("await chain does not end"));
            }
            seen.push(coro);
            let kind = self.type_name(mem, l, coro)?;
            if !matches!(&*kind, "coroutine" | "generator") {
                // Something awaited that is not a coroutine: the caller looks at it.
                return Ok((out, coro));
            }
            let (frame, fbuf): (u64, &[u8]) = if c.embedded {
                mem.read(coro, &mut buf)?;
                (coro + c.frame, &buf[c.frame as usize..])
            } else {
                let f = mem.u64(coro + c.frame)?;
                if f == 0 {
                    return Ok((out, 0));
                }
                mem.read(f, &mut buf[..size])?;
                (f, &buf[..size])
            };
            let rf = python_frame(mem, l, frame, fbuf)?;
            out.push(rf);
            let state = c.state.map(|s| buf[s as usize] as i8);
            let yf = match c.yield_from {
                YieldFrom::Stacktop { stacktop } => {
                    let top = le_u64(fbuf, stacktop as usize);
                    if top == 0 || !Self::next_is_yield_from(mem, l, c, rf.code, rf.offset + 2)? {
                        0
                    } else {
                        mem.u64(top - 8)?
                    }
                }
                YieldFrom::Stackdepth {
                    valuestack,
                    depth,
                    state,
                } => {
                    let depth = le_u32(fbuf, depth as usize) as i32;
                    if fbuf[state as usize] as i8 != c.suspended_yield_from
                        || depth < 1
                        || !Self::next_is_yield_from(mem, l, c, rf.code, rf.offset + 2)?
                    {
                        0
                    } else {
                        let stack = le_u64(fbuf, valuestack as usize);
                        mem.u64(stack + 8 * (depth as u64 - 1))?
                    }
                }
                YieldFrom::Resume { opcodes, stacktop } => {
                    let prev = le_u64(
                        fbuf,
                        match l.f_instr {
                            super::layout::InstrSource::Pointer(off) => off as usize,
                            _ => 0,
                        },
                    );
                    let mut next = [0u8; 2];
                    mem.read(prev + 2, &mut next)?;
                    let top = le_u32(fbuf, stacktop as usize) as i32;
                    if state != Some(c.suspended_yield_from)
                        || !opcodes.contains(&next[0])
                        || next[1] < 2
                        || top < 1
                    {
                        0
                    } else {
                        mem.u64(frame + l.f_localsplus + 8 * (top as u64 - 1))?
                    }
                }
                YieldFrom::Stacktop313 { stacktop } => {
                    let top = le_u32(fbuf, stacktop as usize) as i32;
                    if state != Some(c.suspended_yield_from) || top < 1 {
                        0
                    } else {
                        mem.u64(frame + l.f_localsplus + 8 * (top as u64 - 1))?
                    }
                }
                YieldFrom::StackPointer { stackpointer, slot } => {
                    let sp = le_u64(fbuf, stackpointer as usize);
                    if state != Some(c.suspended_yield_from) || sp < 8 * slot {
                        0
                    } else {
                        mem.u64(sp - 8 * slot)? & !3
                    }
                }
            };
            if yf == 0 {
                return Ok((out, 0));
            }
            coro = yf;
        }
    }

    /// ≤3.10: is the instruction at byte `at` of the code object `YIELD_FROM`?
    fn next_is_yield_from<M: Memory + ?Sized>(
        mem: &M,
        l: &Layout,
        c: &CoroLayout,
        code: u64,
        at: i64,
    ) -> Result<bool, PyError> {
        let _ = l;
        if at < 0 {
            return Ok(false);
        }
        let bytes = mem.u64(code + c.co_code)?;
        let len = mem.u64(bytes + 16)?;
        if at as u64 >= len {
            return Ok(false);
        }
        Ok(mem.u8(bytes + 32 + at as u64)? == c.yield_from_op)
    }

    /// What a waiting task waits on, from the object its innermost coroutine awaits (`yf`)
    /// and its `fut_waiter`.
    fn awaited<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        al: &AsyncLayout,
        yf: u64,
        waiter: u64,
    ) -> Result<Awaiting, PyError> {
        let fut = if yf != 0 {
            let kind = self.type_name(mem, l, yf)?;
            if kind.ends_with("FutureIter") {
                mem.u64(yf + al.future_iter_future)?
            } else {
                // A future that is its own iterator (a pure-Python one) or something else.
                yf
            }
        } else if waiter != 0 {
            waiter
        } else {
            return Ok(Awaiting::Yield);
        };
        let kind = self.type_name(mem, l, fut)?;
        Ok(match &*kind {
            "_asyncio.Task" => Awaiting::Tasks(vec![fut]),
            "_GatheringFuture" => {
                let attrs = instance_attrs(mem, l, fut)?;
                let list = find_key(mem, l, &attrs, "_children")
                    .ok_or(PyError::Corrupt("gather without children"))?;
                let n = mem.u64(list + l.var_size)?;
                if n > MAX_CHILDREN {
                    return Err(PyError::Corrupt("gather children"));
                }
                let items = mem.u64(list + al.list_items)?;
                let raw = mem.bytes(items, 8 * n as usize)?;
                Awaiting::Tasks(raw.chunks_exact(8).map(|c| le_u64(c, 0)).collect())
            }
            _ => Awaiting::Future {
                kind: kind.to_string(),
            },
        })
    }

    /// The parent task of a `TaskGroup` child: its first done callback is the bound method
    /// `TaskGroup._on_task_done`, whose group knows its `_parent_task`.
    fn task_group_parent<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        al: &AsyncLayout,
        callback: u64,
    ) -> Option<u64> {
        if callback == 0 || &*self.type_name(mem, l, callback).ok()? != "method" {
            return None;
        }
        let group = mem.u64(callback + al.method_self).ok()?;
        if &*self.type_name(mem, l, group).ok()? != "TaskGroup" {
            return None;
        }
        let attrs = instance_attrs(mem, l, group).ok()?;
        find_key(mem, l, &attrs, "_parent_task")
    }

    /// 3.14+: the tasks in a task's `task_awaited_by` (one task, or a set of them).
    fn awaited_by_field<M: Memory + ?Sized>(
        mem: &M,
        al: &AsyncLayout,
        field: Option<(u64, bool)>,
    ) -> Vec<u64> {
        match field {
            Some((0, _)) | None => Vec::new(),
            Some((one, false)) => vec![one],
            Some((set, true)) => Self::set_items(mem, al, set).unwrap_or_default(),
        }
    }
}

/// The tasks at `addrs` (pending `_asyncio.Task`s only) with their chains and links,
/// read from `mem`.
#[allow(clippy::too_many_arguments)]
fn read_tasks<R: Memory + ?Sized>(
    cache: &mut TaskCache,
    codes: &mut CodeCache,
    threads: &[super::ThreadScratch],
    mem: &R,
    (l, al): (&Layout, &AsyncLayout),
    addrs: &[u64],
    opts: FrameOptions,
) -> Result<Vec<AsyncTask>, PyError> {
    let mut raws = Vec::new();
    let mut buf = vec![0u8; al.task_size as usize];
    for &addr in addrs {
        if mem.read(addr, &mut buf).is_err() {
            continue;
        }
        let tp = le_u64(&buf, l.ob_type as usize);
        if cache.name_of_type(mem, l, tp).ok().as_deref() != Some("_asyncio.Task") {
            continue;
        }
        // Finished tasks stay in the weak set until they are collected.
        if le_u32(&buf, al.fut_state as usize) != 0 {
            continue;
        }
        raws.push(RawTask {
            addr,
            name: le_u64(&buf, al.task_name as usize),
            fut_loop: le_u64(&buf, al.fut_loop as usize),
            waiter: le_u64(&buf, al.task_fut_waiter as usize),
            coro: le_u64(&buf, al.task_coro as usize),
            callback0: le_u64(&buf, al.fut_callback0 as usize),
            awaited_by: al
                .task_awaited_by
                .map(|(p, set)| (le_u64(&buf, p as usize), le_u8(&buf, set as usize) != 0)),
        });
    }
    let ids: HashSet<u64> = raws.iter().map(|r| r.addr).collect();
    let mut tasks = Vec::with_capacity(raws.len());
    // Edges child -> parents, gathered from both ends.
    let mut parents: HashMap<u64, Vec<u64>> = HashMap::new();
    let link = |child: u64, parent: u64, parents: &mut HashMap<u64, Vec<u64>>| {
        if child != parent && ids.contains(&child) && ids.contains(&parent) {
            let p = parents.entry(child).or_default();
            if !p.contains(&parent) {
                p.push(parent);
            }
        }
    };
    let mut chains: Vec<Vec<super::frames::RawFrame>> = Vec::with_capacity(raws.len());
    for r in &raws {
        let name = cache
            .task_name(mem, l, r.name)
            .unwrap_or_else(|_| "?".into());
        let mut thread_id = cache.loop_thread(mem, l, r.fut_loop);
        let (chain, yf) = cache.coro_chain(mem, l, al, r.coro).unwrap_or_default();
        // A task runs when its outermost coroutine's frame is on a thread's stack, as
        // read in the same sample as those stacks: the interpreter's own record of
        // the current task, read a moment later, may already name the next one.
        let on = chain
            .first()
            .and_then(|f| threads.iter().find(|t| t.frame_addrs.contains(&f.addr)));
        let is_running = on.is_some();
        if let Some(t) = on {
            thread_id = Some(t.thread_id);
        }
        let awaiting = if is_running {
            Awaiting::Unknown
        } else {
            cache
                .awaited(mem, l, al, yf, r.waiter)
                .unwrap_or(Awaiting::Unknown)
        };
        if let Awaiting::Tasks(children) = &awaiting {
            for c in children {
                link(*c, r.addr, &mut parents);
            }
        }
        if let Some(parent) = cache.task_group_parent(mem, l, al, r.callback0) {
            link(r.addr, parent, &mut parents);
        }
        for p in TaskCache::awaited_by_field(mem, al, r.awaited_by) {
            link(r.addr, p, &mut parents);
        }
        chains.push(chain);
        tasks.push(AsyncTask {
            id: r.addr,
            name,
            thread_id,
            running: is_running,
            awaited_by: Vec::new(),
            awaiting,
            frames: Vec::new(),
            code: None,
        });
    }
    for (t, chain) in tasks.iter_mut().zip(&chains) {
        t.awaited_by = parents.remove(&t.id).unwrap_or_default();
        if !t.running {
            // The chain is outermost first; frames are shown innermost first.
            let raw: Vec<_> = chain.iter().rev().copied().collect();
            let mut entries = Vec::new();
            t.frames = resolve_with_entries(mem, l, codes, &raw, false, opts, &mut entries)
                .unwrap_or_default();
            continue;
        }
        t.code = chain.first().and_then(|f| {
            codes
                .get(mem, l, f.code)
                .ok()
                .flatten()
                .map(|e| Arc::clone(&e.info.code))
        });
    }
    Ok(tasks)
}

/// `task: NAME`, the pseudo-frame a task's frames hang from.
pub fn task_frame(name: &str) -> Frame {
    Frame::marker(format!("task: {name}"))
}

/// Fill each running task's frames from its thread's stack: the frames from its
/// coroutine's (the outermost frame of that code, found by the code object) inward.
/// Returns, per running task found, (task index, thread index, join index in the thread's
/// frames).
pub fn join_running(
    tasks: &mut [AsyncTask],
    threads: &[ThreadStack],
) -> Vec<(usize, usize, usize)> {
    let mut joins = Vec::new();
    for (i, t) in tasks.iter_mut().enumerate() {
        if !t.running {
            continue;
        }
        let Some(code) = &t.code else { continue };
        let Some((k, s)) = threads
            .iter()
            .enumerate()
            .find(|(_, s)| Some(s.thread_id) == t.thread_id)
        else {
            continue;
        };
        // Innermost first: the outermost frame running the task's coroutine is the last.
        let Some(j) = s
            .frames
            .iter()
            .rposition(|f| Arc::ptr_eq(&f.code, code) || *f.code == **code)
        else {
            continue;
        };
        t.frames = s.frames[..=j].to_vec();
        joins.push((i, k, j));
    }
    joins
}

/// The stacks a profile gets with `--async`, replacing `threads`: each task that awaits no
/// other task (a leaf of the await tree) or runs becomes a stack: its frames, `task: NAME`,
/// then each awaiting task's frames and `task:` frame up to the outermost. The running
/// task's stack continues with its thread's frames above the join (the loop, the task step,
/// native frames), in place of that thread's own stack; waiting tasks' stacks are idle
/// (not active, no GIL) samples of their loop's thread. Threads without a running task
/// keep their own stack.
pub fn task_stacks(tasks: &mut [AsyncTask], threads: Vec<ThreadStack>) -> Vec<ThreadStack> {
    let joins = join_running(tasks, &threads);
    let index: HashMap<u64, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let mut awaits_tasks = vec![false; tasks.len()];
    for t in tasks.iter() {
        for p in &t.awaited_by {
            if let Some(&i) = index.get(p) {
                awaits_tasks[i] = true;
            }
        }
    }
    let mut out = Vec::with_capacity(threads.len() + tasks.len());
    let mut replaced = vec![None; threads.len()];
    for &(i, k, j) in &joins {
        replaced[k] = Some((i, j));
    }
    for (k, s) in threads.iter().enumerate() {
        match replaced[k] {
            Some((i, j)) => {
                let mut frames = chain_frames(tasks, &index, i);
                frames.extend_from_slice(&s.frames[j + 1..]);
                out.push(ThreadStack {
                    frames: frames.into(),
                    ..s.clone()
                });
            }
            None => out.push(s.clone()),
        }
    }
    for (i, t) in tasks.iter().enumerate() {
        if t.running || awaits_tasks[i] {
            continue;
        }
        let thread = threads.iter().find(|s| Some(s.thread_id) == t.thread_id);
        out.push(ThreadStack {
            thread_id: t.thread_id.unwrap_or(0),
            os_thread_id: thread.and_then(|s| s.os_thread_id),
            thread_name: thread.and_then(|s| s.thread_name.clone()),
            active: false,
            owns_gil: false,
            gil_requested: false,
            // A suspended task is in no thread state of its own.
            state: None,
            frames: chain_frames(tasks, &index, i).into(),
        });
    }
    out
}

/// Task `i`'s frames and `task:` frame, then its first awaiter's, and so on up (bounded,
/// stopping at a task seen before).
fn chain_frames(tasks: &[AsyncTask], index: &HashMap<u64, usize>, mut i: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut seen = Vec::new();
    loop {
        let t = &tasks[i];
        seen.push(i);
        frames.extend_from_slice(&t.frames);
        frames.push(task_frame(&t.name));
        let next = t
            .awaited_by
            .iter()
            .filter_map(|p| index.get(p).copied())
            .find(|p| !seen.contains(p));
        match next {
            Some(p) if seen.len() < MAX_CHAIN => i = p,
            _ => return frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::FrameKind;

    fn frame(name: &str) -> Frame {
        Frame::new(name, "app.py", "app.py", 1, FrameKind::Python)
    }

    fn task(id: u64, name: &str, frames: &[&str], awaited_by: &[u64]) -> AsyncTask {
        AsyncTask {
            id,
            name: name.into(),
            thread_id: Some(7),
            running: false,
            awaited_by: awaited_by.to_vec(),
            awaiting: Awaiting::Unknown,
            frames: frames.iter().map(|n| frame(n)).collect(),
            code: None,
        }
    }

    fn names(s: &ThreadStack) -> Vec<&str> {
        s.frames.iter().map(|f| f.name()).collect()
    }

    #[test]
    fn leaves_become_stacks_through_their_awaiters_and_the_running_task_joins_its_thread() {
        let outer = task(1, "outer", &["outer_body"], &[]);
        let left = task(2, "left", &["sleep", "left_leaf"], &[1]);
        let mut right = task(3, "right", &[], &[1]);
        right.running = true;
        right.code = Some(Arc::clone(&frame("right_body").code));
        let thread = ThreadStack {
            thread_id: 7,
            os_thread_id: Some(70),
            thread_name: Some("MainThread".into()),
            active: true,
            owns_gil: true,
            gil_requested: false,
            state: None,
            frames: ["inner", "right_body", "_run", "run_forever", "<module>"]
                .map(frame)
                .to_vec()
                .into(),
        };
        let mut tasks = vec![outer, left, right];
        let stacks = task_stacks(&mut tasks, vec![thread]);
        assert_eq!(stacks.len(), 2, "{stacks:#?}");
        assert_eq!(
            names(&stacks[0]),
            [
                "inner",
                "right_body",
                "task: right",
                "outer_body",
                "task: outer",
                "_run",
                "run_forever",
                "<module>"
            ]
        );
        assert!(stacks[0].active);
        assert_eq!(
            names(&stacks[1]),
            [
                "sleep",
                "left_leaf",
                "task: left",
                "outer_body",
                "task: outer"
            ]
        );
        assert!(!stacks[1].active && !stacks[1].owns_gil);
        assert_eq!(stacks[1].os_thread_id, Some(70));
        assert_eq!(tasks[2].frames.len(), 2, "the running task's own frames");
    }

    #[test]
    fn awaiters_that_loop_end_the_chain() {
        // a awaited by b, b by a: torn or hostile links cost nothing but the loop.
        let mut tasks = vec![task(1, "a", &["fa"], &[2]), task(2, "b", &["fb"], &[1])];
        let stacks = task_stacks(&mut tasks, Vec::new());
        assert!(stacks.is_empty(), "both await a task: neither is a leaf");
        let mut tasks = vec![
            task(1, "a", &["fa"], &[2]),
            task(2, "b", &["fb"], &[3]),
            task(3, "c", &["fc"], &[2]),
        ];
        let index = tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let frames = chain_frames(&tasks, &index, 0);
        let got: Vec<&str> = frames.iter().map(|f| f.name()).collect();
        assert_eq!(got, ["fa", "task: a", "fb", "task: b", "fc", "task: c"]);
        tasks[0].awaited_by = vec![1];
        assert_eq!(chain_frames(&tasks, &index, 0).len(), 2);
    }

    /// A 3.12 address space with coroutines at `coros`, each suspended in an await of the
    /// object at `awaits[i]`, and an `_asyncio.FutureIter` at 0x9000.
    fn coroutines(coros: &[u64], awaits: &[u64]) -> (crate::process::ImageMemory, Layout) {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let mut m = crate::process::ImageMemory::new();
        let type_named = |m: &mut crate::process::ImageMemory, at: u64, name: &str| {
            let mut tp = vec![0u8; 64];
            tp[l.tp_name as usize..l.tp_name as usize + 8]
                .copy_from_slice(&(at + 0x100).to_le_bytes());
            let mut text = name.as_bytes().to_vec();
            text.resize(64, 0);
            m.add(at, tp).add(at + 0x100, text);
        };
        type_named(&mut m, 0x1000, "coroutine");
        type_named(&mut m, 0x2000, "_asyncio.FutureIter");
        // RESUME with oparg 3: suspended after the yield of an await.
        m.add(0x3000, vec![0, 0, 151, 3]);
        m.add(0x9000, {
            let mut f = vec![0u8; 64];
            f[8..16].copy_from_slice(&0x2000u64.to_le_bytes());
            f
        });
        for (&at, &awaited) in coros.iter().zip(awaits) {
            let mut c = vec![0u8; 256];
            let mut put = |off: u64, v: u64| {
                c[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes())
            };
            put(8, 0x1000);
            put(72 + l.f_code, 0x5000);
            put(72 + 56, 0x3000);
            put(72 + 64, 1);
            put(72 + l.f_localsplus, awaited);
            c[67] = 0xff;
            m.add(at, c);
        }
        (m, l)
    }

    #[test]
    fn await_chains_end_at_what_is_not_a_coroutine_and_a_loop_is_an_error() {
        let (m, l) = coroutines(&[0x10000, 0x20000], &[0x20000, 0x9000]);
        let al = AsyncLayout::from_table(&l).unwrap();
        let mut cache = TaskCache::default();
        let (chain, yf) = cache.coro_chain(&m, &l, &al, 0x10000).unwrap();
        assert_eq!(
            chain.iter().map(|f| f.addr).collect::<Vec<_>>(),
            [0x10000 + 72, 0x20000 + 72]
        );
        assert_eq!(yf, 0x9000);
        // Each awaits the other: the walk stops at the first coroutine seen twice.
        let (m, l) = coroutines(&[0x10000, 0x20000], &[0x20000, 0x10000]);
        assert!(matches!(
            cache.coro_chain(&m, &l, &al, 0x10000),
            Err(PyError::Corrupt(_))
        ));
        // A chain longer than MAX_CHAIN is cut with an error, not followed on.
        let addrs: Vec<u64> = (0..MAX_CHAIN as u64 + 5)
            .map(|i| 0x100000 + 0x200 * i)
            .collect();
        let next: Vec<u64> = addrs[1..].iter().copied().chain([0x9000]).collect();
        let (m, l) = coroutines(&addrs, &next);
        assert!(cache.coro_chain(&m, &l, &al, addrs[0]).is_err());
        let (chain, _) = cache.coro_chain(&m, &l, &al, addrs[10]).unwrap();
        assert_eq!(chain.len(), addrs.len() - 10);
    }

    #[test]
    fn debug_section_is_validated() {
        let l = Layout::from_debug_offsets(&crate::python::layout::tests::encode(
            0x030e_0af0,
            false,
            &[],
            8,
        ))
        .unwrap();
        let good = [
            168, 136, 96, 108, 109, 128, 152, 225864, 10880, 936, 864, 872, 880,
        ];
        let al = AsyncLayout::from_debug_section(&l, &good).unwrap();
        assert_eq!(al.task_coro, 128);
        assert_eq!(
            al.registry,
            Registry::ThreadLists {
                interp_head: 10880,
                thread_head: 880,
                task_node: 152
            }
        );
        let mut bad = good;
        bad[5] = 4000;
        assert!(AsyncLayout::from_debug_section(&l, &bad).is_err());
        let mut bad = good;
        bad[12] = 5000;
        assert!(AsyncLayout::from_debug_section(&l, &bad).is_err());
        assert!(AsyncLayout::from_debug_section(&l, &good[..12]).is_err());
    }
}
