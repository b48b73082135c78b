//! One thread's native stack as frames to show: a bounded copy of its stack, the
//! unwinder, the symbolizer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashSet};

use crate::cache::Generations;
use crate::process::{ImageMemory, MapRange, Memory, Overlay};
use crate::sample::{Frame, FrameCode, FrameKind};

use super::merge::NativeFrame;
use super::{Modules, Registers, Symbolized, Symbolizer, UnwindError, Unwinder};

/// Most bytes of a thread's stack copied (in one read) before unwinding it.
pub const STACK_COPY: u64 = 256 << 10;

/// Bytes copied for a thread not unwound before; afterwards, what its last unwind used
/// plus [`STACK_MARGIN`]. Anything beyond the copy is read from the target on demand, so a
/// short copy costs reads, never frames.
const FIRST_COPY: u64 = 32 << 10;
/// Room left beyond the last unwind's deepest frame for the stack to grow.
const STACK_MARGIN: u64 = 8 << 10;

/// Bound on cached symbolized pcs, in two generations of half this each (see
/// [`FrameCache`]). A profile's hot pcs number in the hundreds; the bound matters for a
/// target that keeps running new code (every instruction a leaf can stop at is a pc of its
/// own: a target compiling and loading code shows ~10 new pcs a second for many minutes),
/// where prof's memory grows until the bound is reached. A pc costs ~200 bytes here, so
/// 2,048 of them ~0.4 MiB, reached within minutes; a pc hit at least once per 1,024 new
/// ones is never named twice.
const MAX_FRAMES_CACHED: usize = 1 << 11;

/// Bound on stack-copy lengths kept (one per thread stack seen); cleared when exceeded.
const MAX_STACKS_KEPT: usize = 1 << 12;

/// Least time between two returns of freed heap pages to the system (see
/// [`release_free_heap`]).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Unwinds and symbolizes the threads of one process.
pub struct NativeStacks {
    modules: Modules,
    maps: Vec<MapRange>,
    unwinder: Unwinder,
    symbolizer: Symbolizer,
    /// (pc, exact) -> frames to show: a sampled pc is almost always one seen before, and
    /// its frames share their text with every earlier sample.
    frames: FrameCache,
    /// The names and files of the cached frames, one allocation per distinct text: the
    /// many pcs of one function share it, so a cached pc costs its line, not its strings
    /// (and a profile recognises the function by pointer). When the frames' older
    /// generation is dropped, so are the texts no cached frame uses any more.
    codes: HashSet<Arc<FrameCode>>,
    /// Bytes of each thread's stack to copy next time (see [`FIRST_COPY`]).
    copy_len: HashMap<u64, u64>,
    /// The unwinder's plan misses when the modules' pages were last released.
    released_at_miss: u64,
    /// When freed heap pages were last given back.
    trimmed_at: Option<Instant>,
}

impl NativeStacks {
    /// For a process with these modules and memory map.
    pub fn new(modules: Modules, maps: Vec<MapRange>) -> NativeStacks {
        NativeStacks {
            modules,
            maps,
            unwinder: Unwinder::new(),
            symbolizer: Symbolizer::new(),
            frames: FrameCache::new(MAX_FRAMES_CACHED),
            codes: HashSet::default(),
            copy_len: HashMap::default(),
            released_at_miss: 0,
            trimmed_at: None,
        }
    }

    /// Bring the modules in line with a new memory map (after a dlopen or dlclose).
    /// Returns whether any module changed.
    pub fn update_maps<M: Memory + ?Sized>(
        &mut self,
        pid: u32,
        maps: Vec<MapRange>,
        mem: &M,
    ) -> bool {
        let changed = self.modules.update(
            &maps,
            |r| r.open_path(pid),
            mem,
            crate::process::maps::page_size(),
        );
        self.maps = maps;
        if changed {
            // A pc keeps its frames while the same module is mapped there.
            let modules = &self.modules;
            self.frames
                .retain(|&(pc, _), (id, _)| modules.find(pc).map(|m| m.id()) == *id);
            self.symbolizer.retain(&self.modules);
            self.unwinder.retain(&self.modules);
        }
        changed
    }

    /// Is `pc` inside a known module?
    pub fn knows(&self, pc: u64) -> bool {
        self.modules.find(pc).is_some()
    }

    /// Is `pc` in an executable range of the memory map last read? One that is not came
    /// with a mapping made since (a library loaded, or loaded again where an unloaded one
    /// was), which reading the map again will show.
    pub fn mapped(&self, pc: u64) -> bool {
        self.maps.iter().any(|m| m.exec && m.contains(pc))
    }

    /// The native stack of the thread whose registers are `regs`, innermost first. An
    /// unwind that stops early still gives the frames found so far, with its error.
    pub fn stack<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        regs: &Registers,
    ) -> (Vec<NativeFrame>, Option<UnwindError>) {
        let u = self.unwind(mem, regs);
        (self.symbolize(&u.frames), u.err)
    }

    /// Only the unwind (which reads the target: do it while the thread is stopped), with
    /// the pcs left to [`NativeStacks::symbolize`] (which does not read the target, so it
    /// can run after the thread is resumed).
    pub fn unwind<M: Memory + ?Sized>(&mut self, mem: &M, regs: &Registers) -> Unwound {
        let mut snapshot = Vec::new();
        let sp = regs.sp();
        // Threads are told apart by their stack's mapping: tids are not known here.
        let map = sp.and_then(|sp| self.maps.iter().find(|m| m.contains(sp)));
        let key = map.map(|m| m.start);
        if let (Some(sp), Some(map)) = (sp, map) {
            let want = self.copy_len.get(&map.start).copied().unwrap_or(FIRST_COPY);
            let end = map.end.min(sp.saturating_add(want.min(STACK_COPY)));
            let mut buf = vec![0u8; (end - sp) as usize];
            if mem.read(sp, &mut buf).is_ok() {
                snapshot.push((sp, buf));
            }
        }
        let local = Overlay::new(&snapshot, mem);
        let mut pcs = Vec::new();
        let err = self
            .unwinder
            .unwind_frames(&self.modules, regs, &local, &mut pcs)
            .err();
        if let (Some(sp), Some(key)) = (sp, key) {
            let deepest = pcs.iter().map(|f| f.sp).max().unwrap_or(sp);
            let used = deepest.saturating_sub(sp).saturating_add(STACK_MARGIN);
            if self.copy_len.len() >= MAX_STACKS_KEPT {
                self.copy_len.clear();
            }
            self.copy_len.insert(key, used.clamp(4096, STACK_COPY));
        }
        // Rare (code loaded since the map was read): the copy is kept for a second try.
        let retry = pcs.iter().find(|f| !self.knows(f.pc)).map(|f| {
            let mut copy = ImageMemory::new();
            for (addr, bytes) in snapshot {
                copy.add(addr, bytes);
            }
            Retry {
                regs: *regs,
                copy,
                unknown: f.pc,
            }
        });
        Unwound {
            frames: pcs,
            err,
            retry,
        }
    }

    /// Unwind `u` again, from the stack copied for it while its thread was stopped, when
    /// it met code that no module knew then and one knows now (the memory map was read
    /// again since): from there on its frames were guessed through the frame pointer.
    /// Only the copy is read, the thread having run on since.
    pub fn unwind_again(&mut self, u: &mut Unwound) {
        let Some(r) = u.retry.take_if(|r| self.knows(r.unknown)) else {
            return;
        };
        let mut frames = Vec::new();
        u.err = self
            .unwinder
            .unwind_frames(&self.modules, &r.regs, &r.copy, &mut frames)
            .err();
        u.frames = frames;
    }

    /// Names for unwound pcs (see [`native_frame`]). Called after the threads run again,
    /// it also lets go of the file pages that new plans and names read, and (at most once
    /// a second) of the heap pages they freed (a steady state reads none, so this costs
    /// nothing per sample).
    pub fn symbolize(&mut self, pcs: &[super::Frame]) -> Vec<NativeFrame> {
        let new: Vec<(u64, bool)> = pcs
            .iter()
            .map(|f| (f.pc, f.exact))
            .filter(|key| self.frames.get(key).is_none())
            .collect();
        let misses = self.unwinder.stats().misses;
        if !new.is_empty() || misses != self.released_at_miss {
            self.symbolizer.prepare(&self.modules, new.iter().copied());
            for &(pc, exact) in &new {
                let s = self.symbolizer.symbolize(&self.modules, pc, exact);
                let mut nf = native_frame(&s);
                for f in &mut nf.frames {
                    f.code = intern(&mut self.codes, &f.code);
                }
                let module = self.modules.find(pc).map(|m| m.id());
                if self.frames.insert((pc, exact), (module, nf)) {
                    // Texts still in use stay the same allocations: a profile knows a
                    // function by them, and a fresh copy of each hot function's text at
                    // every turn would be a new entry in its tables each time.
                    self.codes.retain(|c| Arc::strong_count(c) > 1);
                }
            }
            // The frames made from them are kept above: the symbolizer's copies would
            // only double what a long run holds.
            self.symbolizer.clear_cache();
            self.released_at_miss = misses;
            self.modules.release_pages();
            if self.trimmed_at.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
                self.trimmed_at = Some(Instant::now());
                release_free_heap();
            }
        }
        pcs.iter()
            .map(|f| match self.frames.get(&(f.pc, f.exact)) {
                Some((_, nf)) => nf.clone(),
                // Not reached (a batch is far smaller than a generation), but never wrong.
                None => native_frame(&self.symbolizer.symbolize(&self.modules, f.pc, f.exact)),
            })
            .collect()
    }
}

/// What [`NativeStacks::unwind`] found for one thread.
pub struct Unwound {
    /// The frames, innermost first.
    pub frames: Vec<super::Frame>,
    /// Why the unwind stopped early, if it did.
    pub err: Option<UnwindError>,
    /// Kept when a frame's pc was in no known module (see [`NativeStacks::unwind_again`]).
    retry: Option<Retry>,
}

impl Unwound {
    /// The first pc of the frames that no module knew when they were unwound.
    pub fn unknown(&self) -> Option<u64> {
        self.retry.as_ref().map(|r| r.unknown)
    }
}

/// A thread's registers and stack copy, kept from an unwind that met unknown code.
struct Retry {
    regs: Registers,
    copy: ImageMemory,
    /// The first pc no module knew.
    unknown: u64,
}

/// Give the whole pages of freed heap memory back to the system. Naming a new pc parses a
/// DWARF unit (~60 KB of abbreviations and line-program header for one of CPython's) and
/// drops it again; the holes that leaves between long-lived allocations (cached frames,
/// the profile) stay resident, and a target that keeps running new code keeps making
/// them. A no-op where the allocator is not glibc's.
fn release_free_heap() {
    // SAFETY: malloc_trim only hands free memory back; it touches no live allocation.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The shared copy of `code` in `codes` (added if new).
fn intern(codes: &mut HashSet<Arc<FrameCode>>, code: &Arc<FrameCode>) -> Arc<FrameCode> {
    if let Some(known) = codes.get(code) {
        return known.clone();
    }
    codes.insert(code.clone());
    code.clone()
}

/// Symbolized pcs (and whether exact), with the module each was found in.
type FrameCache = Generations<(u64, bool), (Option<u32>, NativeFrame)>;

/// The frames to show for one symbolized pc: one per inlined level; name, file and line
/// from DWARF or the symbol table, else the address in its module.
pub fn native_frame(s: &Symbolized) -> NativeFrame {
    let module = s.module.as_deref().unwrap_or("");
    let base = module.rsplit('/').next().unwrap_or(module);
    let place = if module.is_empty() {
        format!("{:#x}", s.pc)
    } else {
        format!("{base}+{:#x}", s.module_offset)
    };
    let mut frames: Vec<Frame> = s
        .frames
        .iter()
        .map(|level| {
            let name = level
                .function
                .clone()
                .unwrap_or_else(|| format!("{:#x}", s.pc));
            match (&level.file, level.line) {
                (Some(file), Some(line)) if line > 0 => Frame::new(
                    name,
                    file.as_str(),
                    file.rsplit('/').next().unwrap_or(file),
                    line.min(i32::MAX as u32) as i32,
                    FrameKind::Native,
                ),
                _ => Frame::new(name, module, place.as_str(), 0, FrameKind::Native),
            }
        })
        .collect();
    if frames.is_empty() {
        frames.push(Frame::new(
            format!("{:#x}", s.pc),
            module,
            place,
            0,
            FrameKind::Native,
        ));
    }
    NativeFrame {
        frames,
        eval: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::modules::resident_kb;
    use crate::native::{Frame as UnwoundFrame, Via};

    fn frame(pc: u64) -> UnwoundFrame {
        UnwoundFrame {
            pc,
            exact: true,
            via: Via::Registers,
            sp: 0,
        }
    }

    /// prof's own process, its modules loaded.
    fn own_stacks(test: &str) -> Option<NativeStacks> {
        if crate::process::memory::skip_without_live_reads(test) {
            return None;
        }
        let pid = std::process::id();
        let maps = crate::process::read_maps(pid).unwrap();
        let mem = crate::process::LiveMemory::new(pid);
        Some(NativeStacks::new(Modules::for_pid(pid, &maps, &mem), maps))
    }

    #[test]
    fn cache_stays_bounded_and_keeps_hot_pcs() {
        let mut stacks = NativeStacks::new(Modules::new(), Vec::new());
        let hot = frame(0x10);
        let first = stacks.symbolize(&[hot]);
        for pc in 0..3 * MAX_FRAMES_CACHED as u64 {
            stacks.symbolize(&[frame(0x1000 + pc), hot]);
        }
        let cached = stacks.frames.len();
        assert!(cached <= MAX_FRAMES_CACHED, "{cached} pcs cached");
        // The pc sampled all along was never dropped: it is the same frame as at first.
        let (_, again) = stacks.frames.get(&(hot.pc, hot.exact)).unwrap();
        assert!(Arc::ptr_eq(&again.frames[0].code, &first[0].frames[0].code));
    }

    #[test]
    fn texts_in_use_outlive_a_turn_of_the_cache() {
        let Some(mut stacks) = own_stacks("texts_in_use_outlive_a_turn_of_the_cache") else {
            return;
        };
        let f = libc::qsort as *const () as u64;
        let hot = frame(f + 1);
        let first = stacks.symbolize(&[hot]);
        if first[0].frames.last().unwrap().line <= 0 {
            eprintln!("skipped: no DWARF line for qsort here (libc's debug file not found)");
            return;
        }
        // Enough new pcs for the generations to turn over twice, the hot one hit
        // throughout.
        for pc in 0..MAX_FRAMES_CACHED as u64 + 1 {
            stacks.symbolize(&[frame(0x1000 + pc), hot]);
        }
        // A pc of the same function, new after the turns, shares the text the hot pc
        // has had all along (a profile knows the function by that allocation).
        let later = stacks.symbolize(&[frame(f + 4)]);
        let (a, b) = (
            first[0].frames.last().unwrap(),
            later[0].frames.last().unwrap(),
        );
        assert_eq!((a.name(), a.filename()), (b.name(), b.filename()));
        assert!(Arc::ptr_eq(&a.code, &b.code), "a second copy of {a:?}");
        // Texts of pcs that left the cache are dropped with them.
        assert!(stacks.codes.len() <= stacks.frames.len() + 1);
    }

    #[test]
    fn pcs_of_one_function_share_its_texts() {
        let Some(mut stacks) = own_stacks("pcs_of_one_function_share_its_texts") else {
            return;
        };
        // Two pcs of one libc function (glibc's qsort is 8 bytes: a move and a jump);
        // with libc's DWARF (libc6-dbg) both are named with a file and line.
        let f = libc::qsort as *const () as u64;
        let got = stacks.symbolize(&[frame(f + 1), frame(f + 4)]);
        let (a, b) = (got[0].frames.last().unwrap(), got[1].frames.last().unwrap());
        if a.line <= 0 || b.line <= 0 {
            eprintln!("skipped: no DWARF line for qsort here (libc's debug file not found)");
            return;
        }
        assert_eq!((a.name(), a.filename()), (b.name(), b.filename()));
        assert!(
            Arc::ptr_eq(&a.code, &b.code),
            "{a:?} and {b:?} copy their texts"
        );
    }

    #[test]
    fn new_plans_leave_no_file_pages_resident() {
        let Some(mut stacks) = own_stacks("new_plans_leave_no_file_pages_resident") else {
            return;
        };
        let f = libc::qsort as *const () as u64;
        let module = stacks.modules.find(f).expect("libc is loaded").clone();
        let Some(rel) = module.fde_range(module.rel(f)).map(|r| r.0) else {
            eprintln!("skipped: no CFI for qsort in this libc");
            return;
        };
        let image = module.image.bytes().as_ptr() as usize;
        // A plan for a pc not seen before reads .eh_frame and the code at the pc, and
        // lets them go at once (a first tick makes dozens).
        stacks
            .unwinder
            .plan(&module, rel.wrapping_add(module.bias) + 1, true);
        assert_eq!(resident_kb(image), 0, "a new plan's pages stay resident");
        stacks.symbolize(&[frame(f + 1)]);
        assert_eq!(
            resident_kb(image),
            0,
            "pages of {} stay resident",
            module.name
        );
    }
}
