//! Native stack unwinding from DWARF call-frame information.
//!
//! Given one thread's registers and read access to its memory, [`Unwinder::unwind`]
//! recovers the chain of return addresses:
//! - CFI rows (`.eh_frame`, then `.debug_frame`) give the CFA as `register + offset` or a
//!   DWARF expression (the x86_64 PLT rule, glibc's hand-written signal-frame CFI) and the
//!   caller's registers as undefined / same value / saved at CFA+n / CFA+n / another
//!   register / expression; the caller's sp is the CFA unless CFI says otherwise.
//! - Signal trampolines are recognised by their code (`rt_sigreturn`: glibc's
//!   `__restore_rt` on x86_64, the vdso's `__kernel_rt_sigreturn` on aarch64, and
//!   qemu-user's copy) and the interrupted registers read from the kernel's `rt_sigframe`
//!   (layouts in [`Arch::sigframe`](super::arch::Arch)).
//! - Where no CFI covers a pc (hand-written assembly, JIT code, code built without unwind
//!   tables) the frame-pointer chain is followed: x86_64 `[rbp] = caller rbp,
//!   [rbp+8] = return address`, aarch64 frame records `[x29] = caller x29, [x29+8] = x30`.
//!   A function interrupted before it set up its frame pointer loses its caller there.
//!
//! The walk stops cleanly at a zero pc or where CFI marks the return address undefined
//! (`_start`, `clone`), and with an error when a step fails, the stack pointer moves
//! backwards outside a signal frame, or the depth bound is hit; the frames found so far are
//! always kept. Each (module, pc) gets its CFI row parsed once and kept in a bounded cache.
//!
//! Reads: one pointer per saved register per frame. For a live process, hand in an
//! [`Overlay`](crate::process::Overlay) holding a snapshot of the stack so a whole walk
//! costs one `process_vm_readv`.

use gimli::{
    DebugFrameOffset, EhFrameOffset, EndianSlice, LittleEndian, UnwindContext, UnwindSection,
};
use thiserror::Error;

use super::arch::{Arch, MAX_REGS, Registers};
use super::modules::{CfiIndex, CfiSection, FdeEntry, Module, Modules, debug_frame, eh_frame};
use crate::cache::Generations;
use crate::process::{Memory, MemoryError};

/// Why a walk stopped before reaching the outermost frame.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UnwindError {
    /// The initial registers lack a stack pointer.
    #[error("no stack pointer in the thread's registers")]
    NoStackPointer,
    /// A read of the stack failed.
    #[error("reading the stack failed: {0}")]
    Memory(#[from] MemoryError),
    /// No CFI covers the pc and the frame pointer does not lead anywhere plausible.
    #[error("no unwind information for {pc:#x} and no usable frame pointer")]
    NoUnwindInfo {
        /// The frame's pc.
        pc: u64,
    },
    /// A CFI rule needs a register whose value is not known in this frame.
    #[error("unwind rule at {pc:#x} needs register {reg}, which is unknown here")]
    MissingRegister {
        /// The frame's pc.
        pc: u64,
        /// DWARF register number.
        reg: u16,
    },
    /// A CFI expression used an operation prof does not evaluate, or was malformed.
    #[error("cannot evaluate the CFI expression at {pc:#x} (DW_OP {op:#x})")]
    Expression {
        /// The frame's pc.
        pc: u64,
        /// The offending opcode.
        op: u8,
    },
    /// The caller's stack pointer is below the callee's: corrupt CFI or stack.
    #[error("stack pointer went backwards unwinding {pc:#x}")]
    NotIncreasing {
        /// The frame's pc.
        pc: u64,
    },
    /// More frames than the configured bound.
    #[error("stack deeper than {0} frames")]
    TooDeep(usize),
}

/// How the CFA is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CfaRule {
    /// Value of DWARF register `reg` plus `offset`.
    RegOffset {
        /// DWARF register.
        reg: u16,
        /// Added to it.
        offset: i64,
    },
    /// A DWARF expression (its bytes).
    Expression(Box<[u8]>),
}

/// How a register of the caller is recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegRule {
    /// Not recoverable (for the return address: the end of the stack).
    Undefined,
    /// Unchanged from this frame.
    SameValue,
    /// Saved at CFA + n.
    Offset(i64),
    /// Is CFA + n.
    ValOffset(i64),
    /// Is in another register of this frame.
    Register(u16),
    /// Saved at the address an expression computes (CFA pushed first).
    Expression(Box<[u8]>),
    /// Is the value an expression computes (CFA pushed first).
    ValExpression(Box<[u8]>),
    /// A constant.
    Constant(u64),
}

/// One parsed CFI row, in prof's own compact form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnwindRow {
    /// The CFA rule.
    pub cfa: CfaRule,
    /// Rules for registers below [`MAX_REGS`] that have a non-default rule.
    pub rules: Vec<(u16, RegRule)>,
    /// The FDE's CIE marks a signal trampoline ('S'): the caller's pc is exact.
    pub signal_frame: bool,
    /// Link-time range the row covers.
    pub range: (u64, u64),
}

impl UnwindRow {
    /// The rule for DWARF register `reg`, if the row has one.
    pub fn rule(&self, reg: u16) -> Option<&RegRule> {
        self.rules
            .iter()
            .find(|(r, _)| *r == reg)
            .map(|(_, rule)| rule)
    }
}

/// How one frame is unwound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnwindPlan {
    /// By its CFI row.
    Cfi(UnwindRow),
    /// It is a sigreturn trampoline: the interrupted registers are in the signal frame.
    SignalTrampoline,
    /// No CFI: follow the frame pointer.
    FramePointer,
}

/// How a frame's pc was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The thread's registers (innermost frame).
    Registers,
    /// The callee's CFI.
    Cfi,
    /// The callee's frame record.
    FramePointer,
    /// The registers saved in a signal frame.
    SignalFrame,
}

/// One recovered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The frame's pc: where it executes (innermost and signal-interrupted frames) or the
    /// return address of its call.
    pub pc: u64,
    /// `pc` is where execution is, not a return address.
    pub exact: bool,
    /// How it was found.
    pub via: Via,
    /// The stack pointer while this frame runs: its locals lie between this and the next
    /// (outer) frame's `sp`.
    pub sp: u64,
}

impl Frame {
    /// Address to symbolize and look CFI up for: a return address minus one, so it falls
    /// inside the call instruction (whose line and inlining are what the user wants).
    pub fn lookup_pc(&self) -> u64 {
        if self.exact {
            self.pc
        } else {
            self.pc.saturating_sub(1)
        }
    }
}

/// Cache and walk statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Frame plans served from the cache.
    pub hits: u64,
    /// Frame plans computed (CFI row parsed).
    pub misses: u64,
    /// Frames unwound through the frame pointer.
    pub fp_steps: u64,
}

/// Default bound on cached plans (see [`Generations`]). A plan is ~250 bytes with its
/// rules and its share of the table; a target that keeps running new code fills the cache
/// to this bound, which sampling's few hundred hot pcs never need. Computing a plan again
/// is cheap (a binary search of `.eh_frame_hdr` and one FDE's instructions), so the bound
/// is low: ~0.25 MiB, reached within a minute or two by a target running new code.
pub const DEFAULT_CACHE_SLOTS: usize = 1024;

/// Default bound on the number of frames.
pub const DEFAULT_MAX_DEPTH: usize = 512;

/// Largest frame assumed plausible when following a frame pointer.
const MAX_FP_FRAME: u64 = 64 << 20;

/// Bound on evaluated DWARF operations per expression (they may branch).
const MAX_EXPR_STEPS: usize = 256;

/// A reusable unwinder: parsing context and a bounded cache of unwind plans.
pub struct Unwinder {
    ctx: Box<UnwindContext<usize>>,
    /// Plans by (module, pc, exact).
    plans: Generations<(u32, u64, bool), UnwindPlan>,
    frames: Vec<Frame>,
    stats: UnwindStats,
    /// Bound on frames per walk.
    pub max_depth: usize,
}

impl Default for Unwinder {
    fn default() -> Self {
        Unwinder::new()
    }
}

impl Unwinder {
    /// An unwinder with the default cache size and depth bound.
    pub fn new() -> Unwinder {
        Unwinder::with_cache_slots(DEFAULT_CACHE_SLOTS)
    }

    /// An unwinder caching at most `slots` plans.
    pub fn with_cache_slots(slots: usize) -> Unwinder {
        Unwinder {
            ctx: Box::new(UnwindContext::new()),
            plans: Generations::new(slots),
            frames: Vec::new(),
            stats: UnwindStats::default(),
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> UnwindStats {
        self.stats
    }

    /// Walk the stack: `out` is cleared and receives the pcs, innermost first (the first
    /// is `regs.pc`, later ones return addresses; see [`Frame::lookup_pc`]). On error the
    /// frames found so far stay in `out`.
    pub fn unwind<M: Memory + ?Sized>(
        &mut self,
        modules: &Modules,
        regs: &Registers,
        mem: &M,
        out: &mut Vec<u64>,
    ) -> Result<(), UnwindError> {
        let mut frames = std::mem::take(&mut self.frames);
        let r = self.unwind_frames(modules, regs, mem, &mut frames);
        out.clear();
        out.extend(frames.iter().map(|f| f.pc));
        self.frames = frames;
        r
    }

    /// Like [`Unwinder::unwind`], with how each frame was found.
    pub fn unwind_frames<M: Memory + ?Sized>(
        &mut self,
        modules: &Modules,
        regs: &Registers,
        mem: &M,
        out: &mut Vec<Frame>,
    ) -> Result<(), UnwindError> {
        out.clear();
        let mut cur = *regs;
        let Some(mut sp) = cur.sp() else {
            return Err(UnwindError::NoStackPointer);
        };
        let mut exact = true;
        let mut via = Via::Registers;
        // A leaf without a stack frame has CFA = sp: allowed once in a row, never twice,
        // so a corrupt rule cannot spin until the depth bound.
        let mut same_sp = 0;
        loop {
            if cur.pc == 0 {
                return Ok(());
            }
            out.push(Frame {
                pc: cur.pc,
                exact,
                via,
                sp,
            });
            if out.len() >= self.max_depth {
                return Err(UnwindError::TooDeep(self.max_depth));
            }
            let Some(step) = self.step(modules, &cur, exact, mem)? else {
                return Ok(());
            };
            let (next, next_exact, next_via) = (step.regs, step.exact, step.via);
            if step.trampoline {
                // A sigreturn trampoline was entered by the handler's return, not called:
                // its pc is its first instruction, so symbolize it as is.
                if let Some(last) = out.last_mut() {
                    last.exact = true;
                }
            }
            let next_sp = next.sp().ok_or(UnwindError::NoStackPointer)?;
            if !step.trampoline {
                // A signal may have switched stacks (sigaltstack), so only ordinary steps
                // must move towards the stack's base.
                if next_sp < sp || (next_sp == sp && (same_sp > 0 || next.pc == cur.pc)) {
                    return Err(UnwindError::NotIncreasing { pc: cur.pc });
                }
                same_sp = usize::from(next_sp == sp);
            } else {
                same_sp = 0;
            }
            sp = next_sp;
            cur = next;
            exact = next_exact;
            via = next_via;
        }
    }

    /// The plan for the frame at `pc` in `module` (`exact`: pc is not a return address),
    /// computed once and cached.
    pub fn plan(&mut self, module: &Module, pc: u64, exact: bool) -> &UnwindPlan {
        let key = (module.id(), pc, exact);
        if self.plans.get(&key).is_some() {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
            let plan = compute_plan(&mut self.ctx, module, pc, exact);
            // The code at pc and its FDE are a few bytes, but each fault maps 64 KiB: the
            // first tick's dozens of new plans held them all until its batch ended (most
            // of the start-up peak on a static interpreter). A miss is rare after it.
            module.image.release();
            self.plans.insert(key, plan);
        }
        self.plans.get(&key).expect("just cached")
    }

    /// Drop the plans of modules no longer in `modules` (after a dlclose): a target that
    /// keeps loading libraries at new addresses would otherwise fill the cache with plans
    /// no pc will ask for again.
    pub fn retain(&mut self, modules: &Modules) {
        self.plans
            .retain(|&(module, _, _), _| modules.iter().any(|m| m.id() == module));
    }

    /// One step to the caller; None at the end of the stack.
    fn step<M: Memory + ?Sized>(
        &mut self,
        modules: &Modules,
        cur: &Registers,
        exact: bool,
        mem: &M,
    ) -> Result<Option<Step>, UnwindError> {
        let arch = cur.arch();
        let pc = cur.pc;
        let Some(module) = modules.find(pc) else {
            // Outside every module (JIT code, qemu-user's sigreturn page): its code can only
            // be read from the target, once per such frame.
            let t = arch.sigframe.trampoline;
            let mut code = [0u8; 16];
            if mem.read(pc, &mut code[..t.len()]).is_ok() && &code[..t.len()] == t {
                return signal_step(cur, mem).map(Some);
            }
            return self.fp_step(cur, mem).map(Some);
        };
        match self.plan(module, pc, exact) {
            UnwindPlan::Cfi(row) => Ok(cfi_step(row, cur, mem)?.map(|regs| Step {
                regs,
                exact: row.signal_frame,
                via: Via::Cfi,
                trampoline: row.signal_frame,
            })),
            UnwindPlan::SignalTrampoline => signal_step(cur, mem).map(Some),
            UnwindPlan::FramePointer => self.fp_step(cur, mem).map(Some),
        }
    }

    fn fp_step<M: Memory + ?Sized>(
        &mut self,
        cur: &Registers,
        mem: &M,
    ) -> Result<Step, UnwindError> {
        let arch = cur.arch();
        let pc = cur.pc;
        let none = UnwindError::NoUnwindInfo { pc };
        let (Some(fp), Some(sp)) = (cur.fp(), cur.sp()) else {
            return Err(none);
        };
        let align = u64::from(arch.pointer_size);
        if fp < sp || fp - sp > MAX_FP_FRAME || fp % align != 0 {
            return Err(none);
        }
        let mut rec = [0u8; 16];
        mem.read(fp + arch.fp_record_fp.min(arch.fp_record_ra), &mut rec)?;
        let word = |off: u64| {
            let o = (off - arch.fp_record_fp.min(arch.fp_record_ra)) as usize;
            u64::from_le_bytes(rec[o..o + 8].try_into().unwrap())
        };
        let mut next = keep_callee_saved(cur);
        next.set(arch.fp, word(arch.fp_record_fp));
        next.set(arch.sp, fp + arch.fp_record_cfa);
        next.pc = arch.strip_ra(word(arch.fp_record_ra));
        if let Some(lr) = arch.lr {
            next.unset(lr);
        }
        self.stats.fp_steps += 1;
        Ok(Step {
            regs: next,
            exact: false,
            via: Via::FramePointer,
            trampoline: false,
        })
    }
}

/// The caller found by one step.
struct Step {
    /// Its registers.
    regs: Registers,
    /// Its pc is exact (it was interrupted, not calling).
    exact: bool,
    /// How it was found.
    via: Via,
    /// The frame stepped from was a signal trampoline.
    trampoline: bool,
}

/// The caller's registers that survive a call, before any CFI rule applies.
fn keep_callee_saved(cur: &Registers) -> Registers {
    let arch = cur.arch();
    let mut next = Registers::empty(arch, 0);
    for &r in arch.callee_saved {
        if let Some(v) = cur.get(r) {
            next.set(r, v);
        }
    }
    next
}

fn compute_plan(
    ctx: &mut UnwindContext<usize>,
    module: &Module,
    pc: u64,
    exact: bool,
) -> UnwindPlan {
    let arch = module.image.arch;
    let rel = module.rel(pc);
    let t = arch.sigframe.trampoline;
    if module.image.read_vaddr(rel, t.len()) == Some(t) {
        return UnwindPlan::SignalTrampoline;
    }
    let lookup = if exact { rel } else { rel.wrapping_sub(1) };
    let cfi = module.cfi();
    match cfi.find(lookup) {
        Some(fde) => match parse_row(ctx, cfi, fde, lookup, arch) {
            Some(row) => UnwindPlan::Cfi(row),
            None => UnwindPlan::FramePointer,
        },
        None => UnwindPlan::FramePointer,
    }
}

fn parse_row(
    ctx: &mut UnwindContext<usize>,
    cfi: &CfiIndex,
    fde: FdeEntry,
    addr: u64,
    arch: &Arch,
) -> Option<UnwindRow> {
    match fde.section {
        CfiSection::EhFrame => {
            let s = eh_frame(cfi.eh_frame.as_deref()?, arch);
            row_from_section(ctx, cfi, &s, EhFrameOffset(fde.offset), addr)
        }
        CfiSection::DebugFrame => {
            let s = debug_frame(cfi.debug_frame.as_deref()?, arch);
            row_from_section(ctx, cfi, &s, DebugFrameOffset(fde.offset), addr)
        }
    }
}

fn row_from_section<'a, S>(
    ctx: &mut UnwindContext<usize>,
    cfi: &CfiIndex,
    section: &S,
    offset: S::Offset,
    addr: u64,
) -> Option<UnwindRow>
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
{
    let fde = section
        .fde_from_offset(&cfi.bases, offset, S::cie_from_offset)
        .ok()?;
    let signal_frame = fde.is_signal_trampoline();
    let row = fde
        .unwind_info_for_address(section, &cfi.bases, ctx, addr)
        .ok()?;
    let bytes = |e: &gimli::UnwindExpression<usize>| -> Option<Box<[u8]>> {
        Some(e.get(section).ok()?.0.slice().into())
    };
    let cfa = match row.cfa() {
        gimli::CfaRule::RegisterAndOffset { register, offset } => CfaRule::RegOffset {
            reg: register.0,
            offset: *offset,
        },
        gimli::CfaRule::Expression(e) => CfaRule::Expression(bytes(e)?),
    };
    let mut rules = Vec::new();
    for (reg, rule) in row.registers() {
        if reg.0 as usize >= MAX_REGS {
            continue;
        }
        let r = match rule {
            gimli::RegisterRule::Undefined => RegRule::Undefined,
            gimli::RegisterRule::SameValue => RegRule::SameValue,
            gimli::RegisterRule::Offset(n) => RegRule::Offset(*n),
            gimli::RegisterRule::ValOffset(n) => RegRule::ValOffset(*n),
            gimli::RegisterRule::Register(r) => RegRule::Register(r.0),
            gimli::RegisterRule::Expression(e) => RegRule::Expression(bytes(e)?),
            gimli::RegisterRule::ValExpression(e) => RegRule::ValExpression(bytes(e)?),
            gimli::RegisterRule::Constant(c) => RegRule::Constant(*c),
            // Architecture-defined rules do not occur for the registers prof tracks.
            _ => continue,
        };
        rules.push((reg.0, r));
    }
    Some(UnwindRow {
        cfa,
        rules,
        signal_frame,
        range: (row.start_address(), row.end_address()),
    })
}

fn read_ptr<M: Memory + ?Sized>(mem: &M, addr: u64) -> Result<u64, UnwindError> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Apply a CFI row: the caller's registers, or None where the return address is undefined.
fn cfi_step<M: Memory + ?Sized>(
    row: &UnwindRow,
    cur: &Registers,
    mem: &M,
) -> Result<Option<Registers>, UnwindError> {
    let arch = cur.arch();
    let pc = cur.pc;
    let reg = |r: u16| {
        cur.get(r)
            .ok_or(UnwindError::MissingRegister { pc, reg: r })
    };
    let cfa = match &row.cfa {
        CfaRule::RegOffset { reg: r, offset } => reg(*r)?.wrapping_add(*offset as u64),
        CfaRule::Expression(e) => eval_expr(e, cur, mem, None)?,
    };
    if matches!(row.rule(arch.ra), Some(RegRule::Undefined)) {
        return Ok(None);
    }
    let mut next = keep_callee_saved(cur);
    for (r, rule) in &row.rules {
        let value = match rule {
            RegRule::Undefined => None,
            RegRule::SameValue => cur.get(*r),
            RegRule::Offset(n) => Some(read_ptr(mem, cfa.wrapping_add(*n as u64))?),
            RegRule::ValOffset(n) => Some(cfa.wrapping_add(*n as u64)),
            RegRule::Register(src) => cur.get(*src),
            RegRule::Expression(e) => Some(read_ptr(mem, eval_expr(e, cur, mem, Some(cfa))?)?),
            RegRule::ValExpression(e) => Some(eval_expr(e, cur, mem, Some(cfa))?),
            RegRule::Constant(c) => Some(*c),
        };
        match value {
            Some(v) => next.set(*r, v),
            None => next.unset(*r),
        }
    }
    // Without a rule the return-address column keeps its value: right for an aarch64
    // leaf (x30 still holds it), an error for x86_64 (column 16 is no real register).
    let ra = next
        .stored(arch.ra)
        .ok_or(UnwindError::MissingRegister { pc, reg: arch.ra })?;
    if row.rule(arch.sp).is_none() {
        next.set(arch.sp, cfa);
    }
    if arch.lr.is_none() {
        next.unset(arch.ra);
    }
    next.pc = arch.strip_ra(ra);
    Ok(Some(next))
}

/// Unwind through a sigreturn trampoline: all registers from the kernel's signal frame,
/// read in one piece.
fn signal_step<M: Memory + ?Sized>(cur: &Registers, mem: &M) -> Result<Step, UnwindError> {
    let arch = cur.arch();
    let layout = &arch.sigframe;
    let sp = cur.sp().ok_or(UnwindError::NoStackPointer)?;
    let lo = layout
        .regs
        .iter()
        .map(|r| r.1)
        .min()
        .unwrap_or(0)
        .min(layout.pc);
    let hi = layout
        .regs
        .iter()
        .map(|r| r.1)
        .max()
        .unwrap_or(0)
        .max(layout.pc)
        + 8;
    let mut buf = vec![0u8; (hi - lo) as usize];
    mem.read(sp.wrapping_add(lo), &mut buf)?;
    let word = |off: u64| {
        let o = (off - lo) as usize;
        u64::from_le_bytes(buf[o..o + 8].try_into().unwrap())
    };
    let mut next = Registers::empty(arch, word(layout.pc));
    for &(r, off) in layout.regs {
        next.set(r, word(off));
    }
    Ok(Step {
        regs: next,
        exact: true,
        via: Via::SignalFrame,
        trampoline: true,
    })
}

/// Evaluate a CFI DWARF expression (value semantics; `push` is the CFA for register
/// rules). Supports the stack-machine subset CFI uses: literals and constants, register
/// bases, stack manipulation, arithmetic, logic, comparisons, branches and memory reads.
fn eval_expr<M: Memory + ?Sized>(
    code: &[u8],
    regs: &Registers,
    mem: &M,
    push: Option<u64>,
) -> Result<u64, UnwindError> {
    let pc = regs.pc;
    let bad = |op: u8| UnwindError::Expression { pc, op };
    let mut stack: Vec<u64> = Vec::with_capacity(8);
    stack.extend(push);
    let mut r = ExprReader { code, pos: 0 };
    let mut steps = 0;
    while r.pos < code.len() {
        steps += 1;
        let op = r.u8().ok_or(bad(0))?;
        if steps > MAX_EXPR_STEPS || stack.len() > 64 {
            return Err(bad(op));
        }
        macro_rules! pop {
            () => {
                stack.pop().ok_or(bad(op))?
            };
        }
        match op {
            0x03 => stack.push(r.fixed(8).ok_or(bad(op))?),
            0x06 => {
                let a = pop!();
                stack.push(read_ptr(mem, a)?);
            }
            0x08 => stack.push(r.fixed(1).ok_or(bad(op))?),
            0x09 => stack.push(r.fixed(1).ok_or(bad(op))? as i8 as i64 as u64),
            0x0a => stack.push(r.fixed(2).ok_or(bad(op))?),
            0x0b => stack.push(r.fixed(2).ok_or(bad(op))? as i16 as i64 as u64),
            0x0c => stack.push(r.fixed(4).ok_or(bad(op))?),
            0x0d => stack.push(r.fixed(4).ok_or(bad(op))? as i32 as i64 as u64),
            0x0e | 0x0f => stack.push(r.fixed(8).ok_or(bad(op))?),
            0x10 => stack.push(r.uleb().ok_or(bad(op))?),
            0x11 => stack.push(r.sleb().ok_or(bad(op))? as u64),
            0x12 => {
                let a = *stack.last().ok_or(bad(op))?;
                stack.push(a);
            }
            0x13 => {
                pop!();
            }
            0x14 => {
                let a = *stack.get(stack.len().wrapping_sub(2)).ok_or(bad(op))?;
                stack.push(a);
            }
            0x15 => {
                let i = r.u8().ok_or(bad(op))? as usize;
                let a = *stack.get(stack.len().wrapping_sub(1 + i)).ok_or(bad(op))?;
                stack.push(a);
            }
            0x16 => {
                let n = stack.len();
                if n < 2 {
                    return Err(bad(op));
                }
                stack.swap(n - 1, n - 2);
            }
            0x17 => {
                let n = stack.len();
                if n < 3 {
                    return Err(bad(op));
                }
                // (a b c -- c a b): the top moves to third place.
                stack[n - 3..].rotate_right(1);
            }
            0x19 => {
                let a = pop!() as i64;
                stack.push(a.unsigned_abs());
            }
            0x1f => {
                let a = pop!() as i64;
                stack.push(a.wrapping_neg() as u64);
            }
            0x20 => {
                let a = pop!();
                stack.push(!a);
            }
            0x23 => {
                let a = pop!();
                stack.push(a.wrapping_add(r.uleb().ok_or(bad(op))?));
            }
            0x1a..=0x1e | 0x21 | 0x22 | 0x24..=0x27 | 0x29..=0x2e => {
                let b = pop!();
                let a = pop!();
                let (sa, sb) = (a as i64, b as i64);
                let v = match op {
                    0x1a => a & b,
                    0x1b => sa.checked_div(sb).ok_or(bad(op))? as u64,
                    0x1c => a.wrapping_sub(b),
                    0x1d => a.checked_rem(b).ok_or(bad(op))?,
                    0x1e => a.wrapping_mul(b),
                    0x21 => a | b,
                    0x22 => a.wrapping_add(b),
                    0x24 => a.checked_shl(b as u32).unwrap_or(0),
                    0x25 => a.checked_shr(b as u32).unwrap_or(0),
                    0x26 => sa.checked_shr(b as u32).unwrap_or(sa >> 63) as u64,
                    0x27 => a ^ b,
                    0x29 => u64::from(sa == sb),
                    0x2a => u64::from(sa >= sb),
                    0x2b => u64::from(sa > sb),
                    0x2c => u64::from(sa <= sb),
                    0x2d => u64::from(sa < sb),
                    _ => u64::from(sa != sb),
                };
                stack.push(v);
            }
            0x28 | 0x2f => {
                let off = r.fixed(2).ok_or(bad(op))? as i16;
                let jump = op == 0x2f || pop!() != 0;
                if jump {
                    let to = r.pos as i64 + i64::from(off);
                    if to < 0 || to as usize > code.len() {
                        return Err(bad(op));
                    }
                    r.pos = to as usize;
                }
            }
            0x30..=0x4f => stack.push(u64::from(op - 0x30)),
            0x70..=0x8f | 0x92 => {
                let reg = if op == 0x92 {
                    u16::try_from(r.uleb().ok_or(bad(op))?).map_err(|_| bad(op))?
                } else {
                    u16::from(op - 0x70)
                };
                let off = r.sleb().ok_or(bad(op))?;
                let v = regs
                    .get(reg)
                    .ok_or(UnwindError::MissingRegister { pc, reg })?;
                stack.push(v.wrapping_add(off as u64));
            }
            0x94 => {
                let size = r.u8().ok_or(bad(op))? as usize;
                let a = pop!();
                if size == 0 || size > 8 {
                    return Err(bad(op));
                }
                let mut b = [0u8; 8];
                mem.read(a, &mut b[..size])?;
                stack.push(u64::from_le_bytes(b));
            }
            0x96 => {}
            _ => return Err(bad(op)),
        }
    }
    stack.pop().ok_or(bad(0))
}

struct ExprReader<'a> {
    code: &'a [u8],
    pos: usize,
}

impl ExprReader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.code.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn fixed(&mut self, n: usize) -> Option<u64> {
        let b = self.code.get(self.pos..self.pos + n)?;
        self.pos += n;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    }
    fn uleb(&mut self) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
    }
    fn sleb(&mut self) -> Option<i64> {
        let mut v = 0i64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= i64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ImageMemory;

    fn x86(pc: u64, sp: u64) -> Registers {
        Registers::new(&Arch::X86_64, pc, sp, 0)
    }

    #[test]
    fn plt_cfa_expression() {
        // GCC/binutils' .plt rule: CFA = rsp + 8 + ((rip & 15) >= 11 ? 8 : 0).
        let e = [
            0x77, 8, // breg7 (rsp) +8
            0x80, 0,    // breg16 (rip) +0
            0x3f, // lit15
            0x1a, // and
            0x3b, // lit11
            0x2a, // ge
            0x33, // lit3
            0x24, // shl
            0x22, // plus
        ];
        let mem = ImageMemory::new();
        // DWARF register 16 reads the pc.
        let mut r = x86(0x1040, 0x7000);
        assert_eq!(eval_expr(&e, &r, &mem, None).unwrap(), 0x7008);
        r.pc = 0x104b;
        assert_eq!(eval_expr(&e, &r, &mem, None).unwrap(), 0x7010);
    }

    #[test]
    fn expression_ops() {
        let mut mem = ImageMemory::new();
        mem.add(0x5000, 0x1122_3344_5566_7788u64.to_le_bytes().to_vec());
        let r = x86(0, 0x5000);
        let run = |e: &[u8]| eval_expr(e, &r, &mem, Some(100));
        // deref of breg7.
        assert_eq!(run(&[0x77, 0, 0x06]).unwrap(), 0x1122_3344_5566_7788);
        // deref_size 2.
        assert_eq!(run(&[0x77, 0, 0x94, 2]).unwrap(), 0x7788);
        // Pushed CFA plus uleb 300 (0xac 0x02).
        assert_eq!(run(&[0x23, 0xac, 0x02]).unwrap(), 400);
        // consts -2, plus: 98.
        assert_eq!(run(&[0x11, 0x7e, 0x22]).unwrap(), 98);
        // lit1 lit2 lit3 rot: top is 2 -> (a b c -- c a b) gives 3 1 2.
        assert_eq!(run(&[0x31, 0x32, 0x33, 0x17]).unwrap(), 2);
        // bra over a lit5 when the condition is true.
        assert_eq!(run(&[0x31, 0x28, 1, 0, 0x35, 0x37]).unwrap(), 7);
        assert_eq!(run(&[0x30, 0x28, 1, 0, 0x35]).unwrap(), 5);
        // skip backwards forever hits the step bound.
        assert!(run(&[0x2f, 0xfd, 0xff]).is_err());
        // Division by zero, unknown op, unknown register, empty stack.
        assert!(run(&[0x31, 0x30, 0x1b]).is_err());
        assert!(run(&[0xe0]).is_err());
        assert!(matches!(
            run(&[0x73, 0]),
            Err(UnwindError::MissingRegister { reg: 3, .. })
        ));
        assert!(eval_expr(&[0x13], &r, &mem, None).is_err());
        // Unreadable deref.
        assert!(matches!(run(&[0x30, 0x06]), Err(UnwindError::Memory(_))));
    }

    #[test]
    fn leb128() {
        let mut r = ExprReader {
            code: &[0xe5, 0x8e, 0x26, 0x7f, 0x80, 0x7f],
            pos: 0,
        };
        assert_eq!(r.uleb(), Some(624485));
        assert_eq!(r.sleb(), Some(-1));
        assert_eq!(r.sleb(), Some(-128));
        assert_eq!(r.uleb(), None);
    }

    #[test]
    fn cfi_row_applied() {
        // A frame with CFA = rsp + 16, return address at CFA-8, rbx at CFA-16.
        let row = UnwindRow {
            cfa: CfaRule::RegOffset { reg: 7, offset: 16 },
            rules: vec![(16, RegRule::Offset(-8)), (3, RegRule::Offset(-16))],
            signal_frame: false,
            range: (0, 0),
        };
        let mut mem = ImageMemory::new();
        let mut stack = Vec::new();
        stack.extend(0xaaaau64.to_le_bytes());
        stack.extend(0x4242u64.to_le_bytes());
        mem.add(0x7000, stack);
        let mut r = x86(0x1000, 0x7000);
        r.set(3, 1);
        r.set(0, 5); // rax: caller-saved, dropped
        let next = cfi_step(&row, &r, &mem).unwrap().unwrap();
        assert_eq!(next.pc, 0x4242);
        assert_eq!(next.sp(), Some(0x7010));
        assert_eq!(next.get(3), Some(0xaaaa));
        assert_eq!(next.get(0), None);
        assert_eq!(next.stored(16), None);
        assert_eq!(next.get(16), Some(0x4242));
        // Undefined return address: the end of the stack.
        let end = UnwindRow {
            rules: vec![(16, RegRule::Undefined)],
            ..row.clone()
        };
        assert!(cfi_step(&end, &r, &mem).unwrap().is_none());
    }

    #[test]
    fn aarch64_leaf_and_frame_record() {
        let a = &Arch::AARCH64;
        // Leaf: CFA = sp, no rule for x30: return address is lr, with its PAC bits stripped.
        let row = UnwindRow {
            cfa: CfaRule::RegOffset { reg: 31, offset: 0 },
            rules: vec![],
            signal_frame: false,
            range: (0, 0),
        };
        let mem = ImageMemory::new();
        let mut r = Registers::new(a, 0x40_1000, 0x7f00, 0x7f40);
        r.set(30, 0x0012_0000_0040_2000);
        let next = cfi_step(&row, &r, &mem).unwrap().unwrap();
        assert_eq!(
            (next.pc, next.sp(), next.fp()),
            (0x40_2000, Some(0x7f00), Some(0x7f40))
        );

        // Frame-pointer walk through two records with no modules at all.
        let mut mem = ImageMemory::new();
        let mut stack = vec![0u8; 0x100];
        let put =
            |s: &mut Vec<u8>, off: usize, v: u64| s[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut stack, 0x40, 0x7f80); // record at 0x7f40: caller fp
        put(&mut stack, 0x48, 0x40_3000); // return address
        put(&mut stack, 0x80, 0); // outermost record: fp 0
        put(&mut stack, 0x88, 0); // and pc 0
        mem.add(0x7f00, stack);
        let mut u = Unwinder::new();
        let mut out = Vec::new();
        u.unwind(&Modules::new(), &r, &mem, &mut out).unwrap();
        assert_eq!(out, vec![0x40_1000, 0x40_3000]);
        assert_eq!(u.stats().fp_steps, 2);
    }

    #[test]
    fn walks_stop_on_bad_stacks() {
        let mut u = Unwinder::new();
        let mut out = Vec::new();
        let mem = ImageMemory::new();
        // No stack pointer.
        let r = Registers::empty(&Arch::X86_64, 0x1000);
        assert_eq!(
            u.unwind(&Modules::new(), &r, &mem, &mut out),
            Err(UnwindError::NoStackPointer)
        );
        // A frame pointer below sp is not followed; the first frame is still reported.
        let r = Registers::new(&Arch::X86_64, 0x1000, 0x8000, 0x7000);
        assert_eq!(
            u.unwind(&Modules::new(), &r, &mem, &mut out),
            Err(UnwindError::NoUnwindInfo { pc: 0x1000 })
        );
        assert_eq!(out, vec![0x1000]);
        // A frame record pointing to itself: sp stops growing after one step.
        let mut mem = ImageMemory::new();
        let mut rec = Vec::new();
        rec.extend(0x7000u64.to_le_bytes());
        rec.extend(0x2000u64.to_le_bytes());
        mem.add(0x7000, rec);
        let r = Registers::new(&Arch::X86_64, 0x1000, 0x7000, 0x7000);
        assert!(matches!(
            u.unwind(&Modules::new(), &r, &mem, &mut out),
            Err(UnwindError::NotIncreasing { .. } | UnwindError::NoUnwindInfo { .. })
        ));
        assert_eq!(out, vec![0x1000, 0x2000]);
    }

    #[test]
    fn signal_frame_x86_64() {
        // sp at the trampoline points at the ucontext; mcontext gregs start at +40.
        let a = &Arch::X86_64;
        let mut frame = vec![0u8; 256];
        let put = |s: &mut Vec<u8>, off: u64, v: u64| {
            s[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut frame, 120, 0x6000); // rbp
        put(&mut frame, 160, 0x6100); // rsp
        put(&mut frame, 168, 0x1234); // rip
        let mut mem = ImageMemory::new();
        mem.add(0x5000, frame);
        let r = Registers::new(a, 0x9999, 0x5000, 0);
        let step = signal_step(&r, &mem).unwrap();
        let next = step.regs;
        assert_eq!(
            (next.pc, next.sp(), next.fp()),
            (0x1234, Some(0x6100), Some(0x6000))
        );
        assert!(step.exact && step.trampoline);
        assert_eq!(step.via, Via::SignalFrame);
    }

    /// This thread's registers inside this function, plus a copy of its stack from there
    /// up (copied before returning, since the unwinder's own frames will overwrite it).
    #[inline(never)]
    fn capture() -> (Registers, Vec<u8>) {
        let (pc, sp, fp): (u64, u64, u64);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!("lea {pc}, [rip]", "mov {sp}, rsp", "mov {fp}, rbp",
                pc = out(reg) pc, sp = out(reg) sp, fp = out(reg) fp);
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!("adr {pc}, .", "mov {sp}, sp", "mov {fp}, x29",
                pc = out(reg) pc, sp = out(reg) sp, fp = out(reg) fp);
        }
        let live = crate::process::LiveMemory::new(std::process::id());
        let mut stack = Vec::new();
        let mut page = vec![0u8; 4096];
        // Page by page until the top of the thread's stack (process_vm_readv fails there).
        while stack.len() < (1 << 20) && live.read(sp + stack.len() as u64, &mut page).is_ok() {
            stack.extend_from_slice(&page);
        }
        (Registers::new(Arch::host(), pc, sp, fp), stack)
    }

    #[inline(never)]
    fn self_unwind_middle() -> (Registers, Vec<u8>) {
        let r = capture();
        std::hint::black_box(r)
    }

    #[test]
    fn unwinds_and_symbolizes_own_thread() {
        if crate::process::memory::skip_without_live_reads("unwinds_and_symbolizes_own_thread") {
            return;
        }
        self_unwind_outer();
    }

    // Not the test function itself: the compiler may inline that into the harness's
    // `call_once`, and then the third frame's name depends on code generation.
    #[inline(never)]
    fn self_unwind_outer() {
        let (regs, stack) = self_unwind_middle();
        let pid = std::process::id();
        let maps = crate::process::read_maps(pid).unwrap();
        let live = crate::process::LiveMemory::new(pid);
        let modules = Modules::for_pid(pid, &maps, &live);
        let snaps = vec![(regs.sp().unwrap(), stack)];
        let mem = crate::process::Overlay::new(&snaps, &live);
        let mut u = Unwinder::new();
        let mut frames = Vec::new();
        u.unwind_frames(&modules, &regs, &mem, &mut frames).unwrap();
        let mut sym = crate::native::Symbolizer::new();
        let names: Vec<String> = frames
            .iter()
            .map(|f| sym.symbolize_frame(&modules, f).name())
            .collect();
        assert!(names[0].ends_with("tests::capture"), "{names:?}");
        assert!(names[1].ends_with("tests::self_unwind_middle"), "{names:?}");
        assert!(names[2].ends_with("tests::self_unwind_outer"), "{names:?}");
        // Down through the test harness to the thread's start in libc, where CFI ends it.
        assert!(
            names.iter().any(|n| n.contains("start_thread")),
            "{names:?}"
        );
        assert!(frames.iter().skip(1).all(|f| f.via == Via::Cfi && !f.exact));
        // The same walk again is served from the cache, with the same result.
        let misses = u.stats().misses;
        let mut again = Vec::new();
        u.unwind_frames(&modules, &regs, &mem, &mut again).unwrap();
        assert_eq!(again, frames);
        assert_eq!(u.stats().misses, misses);
    }

    #[test]
    fn plan_cache_keeps_every_plan_below_its_bound_and_drops_dead_modules() {
        if crate::process::memory::skip_without_live_reads("plan_cache") {
            return;
        }
        let pid = std::process::id();
        let maps = crate::process::read_maps(pid).unwrap();
        let live = crate::process::LiveMemory::new(pid);
        let modules = Modules::for_pid(pid, &maps, &live);
        let here =
            plan_cache_keeps_every_plan_below_its_bound_and_drops_dead_modules as *const () as u64;
        let exe = modules.find(here).unwrap();
        let mut u = Unwinder::with_cache_slots(1024);
        // 400 pcs under a bound of 1,024: the direct-mapped table this replaced kept only
        // 300-odd of them (colliding pcs replaced each other), so a walk over them missed
        // again on its second pass.
        let pcs: Vec<u64> = (0..400u64).map(|i| here + i).collect();
        let first: Vec<UnwindPlan> = pcs
            .iter()
            .map(|&pc| u.plan(exe, pc, true).clone())
            .collect();
        let misses = u.stats().misses;
        assert_eq!(misses, 400);
        let again: Vec<UnwindPlan> = pcs
            .iter()
            .map(|&pc| u.plan(exe, pc, true).clone())
            .collect();
        assert_eq!(again, first);
        assert_eq!(u.stats().misses, misses, "every plan served from the cache");
        // Past the bound, the cache stays within it.
        for i in 0..4000u64 {
            u.plan(exe, here + 1000 + i, true);
        }
        assert!(u.plans.len() <= 1024, "{} plans", u.plans.len());
        // Plans of a module that is gone are dropped; those of live ones stay.
        let kept = u.plans.len();
        u.retain(&modules);
        assert_eq!(u.plans.len(), kept);
        u.retain(&Modules::new());
        assert!(u.plans.is_empty());
    }
}
