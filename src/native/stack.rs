//! One thread's native stack as frames to show: a bounded copy of its stack, the
//! unwinder, the symbolizer.

use crate::process::{MapRange, Memory, Overlay};
use crate::sample::{Frame, FrameKind};

use super::merge::{NativeFrame, is_eval_function};
use super::{Modules, Registers, Symbolized, Symbolizer, UnwindError, Unwinder};

/// Most bytes of a thread's stack copied (in one read) before unwinding it.
pub const STACK_COPY: u64 = 256 << 10;

/// Unwinds and symbolizes the threads of one process.
pub struct NativeStacks {
    modules: Modules,
    maps: Vec<MapRange>,
    unwinder: Unwinder,
    symbolizer: Symbolizer,
}

impl NativeStacks {
    /// For a process with these modules and memory map.
    pub fn new(modules: Modules, maps: Vec<MapRange>) -> NativeStacks {
        NativeStacks {
            modules,
            maps,
            unwinder: Unwinder::new(),
            symbolizer: Symbolizer::new(),
        }
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
        if let Some(sp) = regs.sp()
            && let Some(map) = self.maps.iter().find(|m| m.contains(sp))
        {
            let end = map.end.min(sp.saturating_add(STACK_COPY));
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
        (pcs, err)
    }

    /// Names for unwound pcs (see [`native_frame`]).
    pub fn symbolize(&mut self, pcs: &[super::Frame]) -> Vec<NativeFrame> {
        pcs.iter()
            .map(|f| native_frame(&self.symbolizer.symbolize_frame(&self.modules, f)))
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
                (Some(file), Some(line)) if line > 0 => Frame {
                    name: name.into(),
                    filename: file.as_str().into(),
                    short_filename: file.rsplit('/').next().unwrap_or(file).into(),
                    line: line.min(i32::MAX as u32) as i32,
                    kind: FrameKind::Native,
                    locals: None,
                },
                _ => Frame {
                    name: name.into(),
                    filename: module.into(),
                    short_filename: place.as_str().into(),
                    line: 0,
                    kind: FrameKind::Native,
                    locals: None,
                },
            }
        })
        .collect();
    if frames.is_empty() {
        frames.push(Frame {
            name: format!("{:#x}", s.pc).into(),
            filename: module.into(),
            short_filename: place.into(),
            line: 0,
            kind: FrameKind::Native,
            locals: None,
        });
    }
    let eval = s
        .frames
        .iter()
        .any(|l| l.function.as_deref().is_some_and(is_eval_function));
    NativeFrame { frames, eval }
}
