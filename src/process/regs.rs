//! A stopped thread's registers, read with ptrace, as the unwinder's [`Registers`].
//!
//! The thread must be in ptrace-stop (see [`PauseGuard`](super::ptrace::PauseGuard));
//! a running or vanished thread gives an error. Only the reads themselves depend on the
//! host architecture.

use crate::native::arch::Registers;

/// Registers of thread `tid`, which must be in ptrace-stop.
#[cfg(target_arch = "x86_64")]
pub fn thread_registers(tid: u32) -> Result<Registers, nix::Error> {
    use crate::native::arch::{Arch, x86_64};
    let r = nix::sys::ptrace::getregs(nix::unistd::Pid::from_raw(tid as i32))?;
    let regs = [
        (x86_64::RAX, r.rax),
        (x86_64::RDX, r.rdx),
        (x86_64::RCX, r.rcx),
        (x86_64::RBX, r.rbx),
        (x86_64::RSI, r.rsi),
        (x86_64::RDI, r.rdi),
        (x86_64::RBP, r.rbp),
        (x86_64::RSP, r.rsp),
        (8, r.r8),
        (9, r.r9),
        (10, r.r10),
        (11, r.r11),
        (12, r.r12),
        (13, r.r13),
        (14, r.r14),
        (15, r.r15),
    ];
    Ok(Registers::from_dwarf(&Arch::X86_64, r.rip, &regs))
}

/// Registers of thread `tid`, which must be in ptrace-stop.
#[cfg(target_arch = "aarch64")]
pub fn thread_registers(tid: u32) -> Result<Registers, nix::Error> {
    use crate::native::arch::Arch;
    // struct user_pt_regs: x0..x30, sp, pc, pstate.
    let mut raw = [0u64; 34];
    let mut iov = libc::iovec {
        iov_base: raw.as_mut_ptr().cast(),
        iov_len: std::mem::size_of_val(&raw),
    };
    // SAFETY: PTRACE_GETREGSET writes at most iov_len bytes into `raw`.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid as libc::pid_t,
            libc::NT_PRSTATUS as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec as *mut libc::c_void,
        )
    };
    if rc == -1 {
        return Err(nix::Error::last());
    }
    let regs: Vec<(u16, u64)> = (0..32u16).map(|i| (i, raw[i as usize])).collect();
    Ok(Registers::from_dwarf(&Arch::AARCH64, raw[32], &regs))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
/// Registers of thread `tid`: unsupported on this architecture.
pub fn thread_registers(_tid: u32) -> Result<Registers, nix::Error> {
    Err(nix::Error::ENOSYS)
}
