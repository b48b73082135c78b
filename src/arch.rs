//! Target architectures as data (the bottom floor: everything above may use it, it uses
//! nothing of prof's), so one build unwinds x86_64 and aarch64 stacks alike
//! (an x86_64 host can analyse an aarch64 core file): DWARF register numbers, the
//! return-address column, frame-record and signal-frame layouts, return-address masking.
//!
//! Conventions shared by both architectures (System V x86_64 psABI, AAPCS64):
//! - the CFA is the caller's stack pointer at the call site, so after unwinding a frame
//!   the caller's sp is the CFA unless CFI gives the sp column its own rule;
//! - a frame record is two pointers `[saved fp, return address]` at the frame pointer,
//!   and the CFA of a function that built one is `fp + 16`.

use object::elf::{EM_AARCH64, EM_X86_64};

/// Which architecture an [`Arch`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchKind {
    /// x86-64 (AMD64).
    X86_64,
    /// AArch64 (ARM64), little-endian.
    Aarch64,
}

/// Where a signal handler's interrupted registers are saved, relative to the stack
/// pointer at the moment the handler returns into the sigreturn trampoline.
#[derive(Debug)]
pub struct SigFrameLayout {
    /// The trampoline's instructions (`rt_sigreturn` system call), recognised by content.
    pub trampoline: &'static [u8],
    /// `(DWARF register, offset from sp)` of every saved general register.
    pub regs: &'static [(u16, u64)],
    /// Offset from sp of the interrupted pc.
    pub pc: u64,
}

/// Everything about an architecture the unwinder needs, as plain data.
#[derive(Debug)]
pub struct Arch {
    /// Which architecture.
    pub kind: ArchKind,
    /// Short name for messages.
    pub name: &'static str,
    /// ELF `e_machine` value.
    pub e_machine: u16,
    /// Size of a pointer (and of a saved register) in bytes.
    pub pointer_size: u8,
    /// DWARF number of the stack pointer.
    pub sp: u16,
    /// DWARF number of the frame pointer (rbp / x29).
    pub fp: u16,
    /// DWARF column holding the return address in CFI (x86_64: 16, the rip column;
    /// aarch64: 30, the link register x30).
    pub ra: u16,
    /// DWARF number of a link register that holds the return address in leaf code.
    pub lr: Option<u16>,
    /// DWARF number that names the pc itself in expressions (x86_64: 16, which doubles as
    /// the return-address column; aarch64: 32).
    pub pc: u16,
    /// Registers whose value survives a call (plus sp): the only ones an unwound frame can
    /// know; every other register is dropped when stepping to the caller.
    pub callee_saved: &'static [u16],
    /// Mask applied to every recovered return address (see [`Arch::strip_ra`]).
    pub ra_mask: u64,
    /// Frame record: offset from fp of the saved fp.
    pub fp_record_fp: u64,
    /// Frame record: offset from fp of the return address.
    pub fp_record_ra: u64,
    /// Frame record: the caller's sp (the CFA) relative to fp.
    pub fp_record_cfa: u64,
    /// Signal frame layout of Linux's `rt_sigreturn` trampoline.
    pub sigframe: SigFrameLayout,
    /// Default page size when the target's own cannot be asked (load-bias rounding).
    pub page_size: u64,
    /// CFI uses the AArch64 vendor extension (`DW_CFA_AARCH64_negate_ra_state`).
    pub aarch64_cfi: bool,
    /// The kernel's general-register struct (`user_regs_struct`, `user_pt_regs`), as both
    /// `PTRACE_GETREGSET(NT_PRSTATUS)` and a core's `NT_PRSTATUS` give it: the DWARF number
    /// of each 64-bit word (None for words that are no DWARF general register).
    pub user_regs: &'static [Option<u16>],
    /// Index of the pc in [`Arch::user_regs`].
    pub user_regs_pc: usize,
}

/// DWARF register numbers are at most this (exclusive) in [`Registers`]: x86_64 uses
/// 0–16, aarch64 0–31. Vector registers (aarch64 v8–v15 = 72–79) are never needed to find
/// a caller and are ignored.
pub const MAX_REGS: usize = 32;

/// x86_64 DWARF register numbers (System V psABI, figure 3.36).
pub mod x86_64 {
    /// rax.
    pub const RAX: u16 = 0;
    /// rdx.
    pub const RDX: u16 = 1;
    /// rcx.
    pub const RCX: u16 = 2;
    /// rbx.
    pub const RBX: u16 = 3;
    /// rsi.
    pub const RSI: u16 = 4;
    /// rdi.
    pub const RDI: u16 = 5;
    /// rbp, the frame pointer.
    pub const RBP: u16 = 6;
    /// rsp, the stack pointer.
    pub const RSP: u16 = 7;
    /// r8 (r9–r15 follow as 9–15).
    pub const R8: u16 = 8;
    /// The return-address column (rip).
    pub const RA: u16 = 16;
}

/// aarch64 DWARF register numbers (DWARF for the Arm 64-bit architecture).
pub mod aarch64 {
    /// x29, the frame pointer.
    pub const FP: u16 = 29;
    /// x30, the link register: also the CFI return-address column.
    pub const LR: u16 = 30;
    /// sp.
    pub const SP: u16 = 31;
    /// pc (only meaningful in DWARF expressions).
    pub const PC: u16 = 32;
}

/// x86_64 `user_regs_struct`: r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx,
/// rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs.
const X86_64_USER_REGS: &[Option<u16>] = &[
    Some(15),
    Some(14),
    Some(13),
    Some(12),
    Some(x86_64::RBP),
    Some(x86_64::RBX),
    Some(11),
    Some(10),
    Some(9),
    Some(x86_64::R8),
    Some(x86_64::RAX),
    Some(x86_64::RCX),
    Some(x86_64::RDX),
    Some(x86_64::RSI),
    Some(x86_64::RDI),
    None, // orig_rax
    None, // rip: the pc, index 16
    None, // cs
    None, // eflags
    Some(x86_64::RSP),
    None, // ss
    None, // fs_base
    None, // gs_base
    None, // ds
    None, // es
    None, // fs
    None, // gs
];

/// aarch64 `user_pt_regs`: x0..x30 (DWARF 0..30), sp (31), pc, pstate.
const AARCH64_USER_REGS: &[Option<u16>] = &{
    let mut regs = [None; 34];
    let mut i = 0;
    while i < 32 {
        regs[i] = Some(i as u16);
        i += 1;
    }
    regs
};

/// `mov $15, %rax; syscall`: glibc's `__restore_rt` (rt_sigreturn is syscall 15).
const X86_64_SIGRETURN: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// x86_64 `rt_sigframe` after the handler's `ret` popped `pretcode`: sp points at the
/// `ucontext`; its `uc_mcontext` (struct sigcontext) starts 40 bytes in, after uc_flags,
/// uc_link and uc_stack, with r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
const X86_64_SIGREGS: &[(u16, u64)] = &[
    (8, 40),
    (9, 48),
    (10, 56),
    (11, 64),
    (12, 72),
    (13, 80),
    (14, 88),
    (15, 96),
    (x86_64::RDI, 104),
    (x86_64::RSI, 112),
    (x86_64::RBP, 120),
    (x86_64::RBX, 128),
    (x86_64::RDX, 136),
    (x86_64::RAX, 144),
    (x86_64::RCX, 152),
    (x86_64::RSP, 160),
];

/// `mov x8, #139; svc #0`: the vdso's `__kernel_rt_sigreturn` (and qemu-user's copy).
const AARCH64_SIGRETURN: &[u8] = &[0x68, 0x11, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4];

/// aarch64 `rt_sigframe`: sp points at it; 128 bytes of siginfo, then the ucontext whose
/// `uc_mcontext` sits at +176 (uc_flags, uc_link, uc_stack, a 128-byte sigmask area,
/// 16-byte alignment), and in it fault_address, x0..x30, sp, pc.
const AARCH64_SIGCONTEXT: u64 = 128 + 176;

/// `(reg, offset)` for x0..x30 and sp in the aarch64 signal frame.
const AARCH64_SIGREGS: &[(u16, u64)] = &{
    let mut regs = [(0u16, 0u64); 32];
    let mut i = 0;
    while i < 32 {
        // x_i at sigcontext + 8 (fault_address) + 8 i; sp (reg 31) right after x30.
        regs[i] = (i as u16, AARCH64_SIGCONTEXT + 8 + 8 * i as u64);
        i += 1;
    }
    regs
};

impl Arch {
    /// x86-64.
    pub const X86_64: Arch = Arch {
        kind: ArchKind::X86_64,
        name: "x86_64",
        e_machine: EM_X86_64.0,
        pointer_size: 8,
        sp: x86_64::RSP,
        fp: x86_64::RBP,
        ra: x86_64::RA,
        lr: None,
        pc: x86_64::RA,
        callee_saved: &[3, 6, 7, 12, 13, 14, 15],
        // Canonical user addresses need no masking.
        ra_mask: u64::MAX,
        fp_record_fp: 0,
        fp_record_ra: 8,
        fp_record_cfa: 16,
        sigframe: SigFrameLayout {
            trampoline: X86_64_SIGRETURN,
            regs: X86_64_SIGREGS,
            pc: 168,
        },
        page_size: 4096,
        aarch64_cfi: false,
        user_regs: X86_64_USER_REGS,
        user_regs_pc: 16,
    };

    /// AArch64, little-endian.
    pub const AARCH64: Arch = Arch {
        kind: ArchKind::Aarch64,
        name: "aarch64",
        e_machine: EM_AARCH64.0,
        pointer_size: 8,
        sp: aarch64::SP,
        fp: aarch64::FP,
        ra: aarch64::LR,
        lr: Some(aarch64::LR),
        pc: aarch64::PC,
        // x19..x29, x30 (its CFI rule gives the caller's value) and sp.
        callee_saved: &[19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31],
        // Pointer authentication (PAC) signs return addresses by putting a code in the
        // otherwise unused top bits; with top-byte-ignore they can reach bit 63. Linux user
        // space uses 48-bit virtual addresses (52-bit only for processes that ask for high
        // mappings, which prof does not support), so keeping the low 48 bits strips any
        // signature whether or not the frame's CFI says the address was signed.
        ra_mask: (1 << 48) - 1,
        fp_record_fp: 0,
        fp_record_ra: 8,
        fp_record_cfa: 16,
        sigframe: SigFrameLayout {
            trampoline: AARCH64_SIGRETURN,
            regs: AARCH64_SIGREGS,
            pc: AARCH64_SIGCONTEXT + 8 + 8 * 32,
        },
        // Kernels may use 4K, 16K or 64K pages; load biases use the live system's value.
        page_size: 4096,
        aarch64_cfi: true,
        user_regs: AARCH64_USER_REGS,
        user_regs_pc: 32,
    };

    /// The architecture with ELF machine number `e_machine`, if supported.
    pub fn from_e_machine(e_machine: u16) -> Option<&'static Arch> {
        [&Arch::X86_64, &Arch::AARCH64]
            .into_iter()
            .find(|a| a.e_machine == e_machine)
    }

    /// The architecture of a 64-bit little-endian ELF image, from its header bytes.
    pub fn from_elf_header(data: &[u8]) -> Option<&'static Arch> {
        // e_ident: magic, EI_CLASS = 2 (64-bit), EI_DATA = 1 (little-endian).
        if data.len() < 20 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
            return None;
        }
        Arch::from_e_machine(u16::from_le_bytes([data[18], data[19]]))
    }

    /// The architecture prof itself runs on.
    pub fn host() -> &'static Arch {
        if cfg!(target_arch = "aarch64") {
            &Arch::AARCH64
        } else {
            &Arch::X86_64
        }
    }

    /// A return address as a plain code address: on aarch64, without its PAC signature.
    pub fn strip_ra(&self, addr: u64) -> u64 {
        addr & self.ra_mask
    }

    /// Is `reg` preserved across calls (so still valid in the caller without a CFI rule)?
    pub fn is_callee_saved(&self, reg: u16) -> bool {
        self.callee_saved.contains(&reg)
    }
}

/// A thread's registers at one frame: pc, plus general registers by DWARF number.
#[derive(Clone, Copy)]
pub struct Registers {
    arch: &'static Arch,
    /// Program counter.
    pub pc: u64,
    vals: [u64; MAX_REGS],
    valid: u32,
}

impl std::fmt::Debug for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Registers");
        d.field("arch", &self.arch.name)
            .field("pc", &format_args!("{:#x}", self.pc));
        let regs: Vec<String> = (0..MAX_REGS as u16)
            .filter_map(|r| self.get(r).map(|v| format!("r{r}={v:#x}")))
            .collect();
        d.field("regs", &regs).finish()
    }
}

impl Registers {
    /// pc, sp and fp; every other register unknown.
    pub fn new(arch: &'static Arch, pc: u64, sp: u64, fp: u64) -> Registers {
        let mut r = Registers::empty(arch, pc);
        r.set(arch.sp, sp);
        r.set(arch.fp, fp);
        r
    }

    /// Only the pc known.
    pub fn empty(arch: &'static Arch, pc: u64) -> Registers {
        Registers {
            arch,
            pc,
            vals: [0; MAX_REGS],
            valid: 0,
        }
    }

    /// From `(DWARF register, value)` pairs, e.g. what ptrace or a core file's
    /// NT_PRSTATUS gave; registers past [`MAX_REGS`] are ignored.
    pub fn from_dwarf(arch: &'static Arch, pc: u64, regs: &[(u16, u64)]) -> Registers {
        let mut r = Registers::empty(arch, pc);
        for &(reg, v) in regs {
            r.set(reg, v);
        }
        r
    }

    /// From the kernel's register struct of `arch` ([`Arch::user_regs`]), as ptrace and a
    /// core's `NT_PRSTATUS` give it; None when `words` is too short to hold it.
    pub fn from_user_regs(arch: &'static Arch, words: &[u64]) -> Option<Registers> {
        let words = words.get(..arch.user_regs.len())?;
        let mut r = Registers::empty(arch, words[arch.user_regs_pc]);
        for (reg, &v) in arch.user_regs.iter().zip(words) {
            if let Some(reg) = reg {
                r.set(*reg, v);
            }
        }
        Some(r)
    }

    /// The architecture these registers belong to.
    pub fn arch(&self) -> &'static Arch {
        self.arch
    }

    /// Value of DWARF register `reg`, if known; the architecture's pc number gives the pc
    /// (CFI expressions such as the x86_64 PLT rule read rip through it).
    pub fn get(&self, reg: u16) -> Option<u64> {
        if reg == self.arch.pc {
            return Some(self.pc);
        }
        self.stored(reg)
    }

    /// Value held in slot `reg`, without the pc alias (the x86_64 return-address column
    /// shares number 16 with rip while a CFI row is applied).
    pub(crate) fn stored(&self, reg: u16) -> Option<u64> {
        ((reg as usize) < MAX_REGS && self.valid & (1 << reg) != 0).then(|| self.vals[reg as usize])
    }

    /// Set DWARF register `reg` (ignored past [`MAX_REGS`]).
    pub fn set(&mut self, reg: u16, value: u64) {
        if (reg as usize) < MAX_REGS {
            self.vals[reg as usize] = value;
            self.valid |= 1 << reg;
        }
    }

    /// Forget DWARF register `reg`.
    pub fn unset(&mut self, reg: u16) {
        if (reg as usize) < MAX_REGS {
            self.valid &= !(1 << reg);
        }
    }

    /// Stack pointer, if known.
    pub fn sp(&self) -> Option<u64> {
        self.get(self.arch.sp)
    }

    /// Frame pointer (rbp / x29), if known.
    pub fn fp(&self) -> Option<u64> {
        self.get(self.arch.fp)
    }

    /// Link register (aarch64 x30), if the architecture has one and it is known.
    pub fn lr(&self) -> Option<u64> {
        self.get(self.arch.lr?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_from_elf_header() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18..20].copy_from_slice(&EM_AARCH64.0.to_le_bytes());
        assert_eq!(Arch::from_elf_header(&h).unwrap().kind, ArchKind::Aarch64);
        h[18..20].copy_from_slice(&EM_X86_64.0.to_le_bytes());
        assert_eq!(Arch::from_elf_header(&h).unwrap().kind, ArchKind::X86_64);
        h[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
        assert!(Arch::from_elf_header(&h).is_none());
        h[4] = 1; // 32-bit
        assert!(Arch::from_elf_header(&h).is_none());
    }

    #[test]
    fn kernel_register_structs_decode_by_dwarf_number() {
        // Word i holds 1000 + i.
        let words: Vec<u64> = (0..34).map(|i| 1000 + i).collect();
        let x = Registers::from_user_regs(&Arch::X86_64, &words[..27]).unwrap();
        assert_eq!((x.pc, x.sp(), x.fp()), (1016, Some(1019), Some(1004)));
        assert_eq!(x.get(x86_64::RBX), Some(1005));
        assert_eq!(x.get(x86_64::RAX), Some(1010));
        assert_eq!((x.get(15), x.get(8)), (Some(1000), Some(1009)));
        assert!(Registers::from_user_regs(&Arch::X86_64, &words[..26]).is_none());
        let a = Registers::from_user_regs(&Arch::AARCH64, &words).unwrap();
        assert_eq!(
            (a.pc, a.sp(), a.fp(), a.lr()),
            (1032, Some(1031), Some(1029), Some(1030))
        );
        assert_eq!(a.get(0), Some(1000));
        assert!(Registers::from_user_regs(&Arch::AARCH64, &words[..33]).is_none());
    }

    #[test]
    fn pac_bits_are_stripped_on_aarch64_only() {
        let signed = 0x002d_0000_0040_1234u64 | (0x5a << 56);
        assert_eq!(Arch::AARCH64.strip_ra(signed), 0x0000_0000_0040_1234);
        assert_eq!(Arch::X86_64.strip_ra(0x7fff_1234_5678), 0x7fff_1234_5678);
    }

    #[test]
    fn register_numbering_and_layouts() {
        let x = &Arch::X86_64;
        assert_eq!((x.ra, x.sp, x.fp, x.lr), (16, 7, 6, None));
        let a = &Arch::AARCH64;
        assert_eq!((a.ra, a.sp, a.fp, a.lr), (30, 31, 29, Some(30)));
        // sigcontext: x29 then x30 then sp then pc, 8 bytes apart.
        assert_eq!(a.sigframe.regs[29].1 + 8, a.sigframe.regs[30].1);
        assert_eq!(a.sigframe.regs[31], (31, a.sigframe.regs[30].1 + 8));
        assert_eq!(a.sigframe.pc, a.sigframe.regs[31].1 + 8);
        assert_eq!(a.sigframe.regs[0].1, 312);
        // x86_64: rsp is gregs[15] and rip gregs[16] of uc_mcontext (at +40).
        assert!(x.sigframe.regs.contains(&(x86_64::RSP, 40 + 15 * 8)));
        assert_eq!(x.sigframe.pc, 40 + 16 * 8);

        let mut r = Registers::new(a, 0x1000, 0x7000, 0x7100);
        assert_eq!((r.sp(), r.fp(), r.lr()), (Some(0x7000), Some(0x7100), None));
        r.set(30, 0x2000);
        r.set(72, 1); // a vector register: ignored
        assert_eq!(r.lr(), Some(0x2000));
        assert_eq!(r.get(72), None);
        r.unset(31);
        assert_eq!(r.sp(), None);
    }
}
