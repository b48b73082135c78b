//! One thread's native stack as frames to show: a bounded copy of its stack, the
//! unwinder, the symbolizer.

use foldhash::HashMap;

use crate::process::{MapRange, Memory, Overlay};
use crate::sample::{Frame, FrameKind};

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

/// Bound on cached symbolized pcs; dropped wholesale when exceeded.
const MAX_FRAMES_CACHED: usize = 1 << 16;

/// Unwinds and symbolizes the threads of one process.
pub struct NativeStacks {
    modules: Modules,
    maps: Vec<MapRange>,
    unwinder: Unwinder,
    symbolizer: Symbolizer,
    /// (pc, exact) -> frames to show: a sampled pc is almost always one seen before, and
    /// its frames share their text with every earlier sample.
    frames: HashMap<(u64, bool), NativeFrame>,
    /// Bytes of each thread's stack to copy next time (see [`FIRST_COPY`]).
    copy_len: HashMap<u64, u64>,
}

impl NativeStacks {
    /// For a process with these modules and memory map.
    pub fn new(modules: Modules, maps: Vec<MapRange>) -> NativeStacks {
        NativeStacks {
            modules,
            maps,
            unwinder: Unwinder::new(),
            symbolizer: Symbolizer::new(),
            frames: HashMap::default(),
            copy_len: HashMap::default(),
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
            self.frames.clear();
            self.symbolizer.retain(&self.modules);
            self.unwinder.retain(&self.modules);
        }
        changed
    }

    /// Is `pc` inside a known module?
    pub fn knows(&self, pc: u64) -> bool {
        self.modules.find(pc).is_some()
    }

    /// The native stack of the thread whose registers are `regs`, innermost first. An
    /// unwind that stops early still gives the frames found so far, with its error.
    pub fn stack<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        regs: &Registers,
    ) -> (Vec<NativeFrame>, Option<UnwindError>) {
        let (pcs, err) = self.unwind(mem, regs);
        (self.symbolize(&pcs), err)
    }

    /// Only the unwind (which reads the target: do it while the thread is stopped), with
    /// the pcs left to [`NativeStacks::symbolize`] (which does not read the target, so it
    /// can run after the thread is resumed).
    pub fn unwind<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        regs: &Registers,
    ) -> (Vec<super::Frame>, Option<UnwindError>) {
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
            if self.copy_len.len() >= MAX_FRAMES_CACHED {
                self.copy_len.clear();
            }
            self.copy_len.insert(key, used.clamp(4096, STACK_COPY));
        }
        (pcs, err)
    }

    /// Names for unwound pcs (see [`native_frame`]).
    pub fn symbolize(&mut self, pcs: &[super::Frame]) -> Vec<NativeFrame> {
        let new = pcs
            .iter()
            .filter(|f| !self.frames.contains_key(&(f.pc, f.exact)))
            .map(|f| (f.pc, f.exact));
        self.symbolizer.prepare(&self.modules, new);
        pcs.iter()
            .map(|f| {
                if let Some(nf) = self.frames.get(&(f.pc, f.exact)) {
                    return nf.clone();
                }
                let nf = native_frame(&self.symbolizer.symbolize_frame(&self.modules, f));
                if self.frames.len() >= MAX_FRAMES_CACHED {
                    self.frames.clear();
                }
                self.frames.insert((f.pc, f.exact), nf.clone());
                nf
            })
            .collect()
    }
}

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
