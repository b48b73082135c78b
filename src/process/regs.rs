//! A stopped thread's registers, read with ptrace, as the unwinder's [`Registers`].
//!
//! The thread must be in ptrace-stop (see [`PauseGuard`](super::ptrace::PauseGuard));
//! a running or vanished thread gives an error. `PTRACE_GETREGSET(NT_PRSTATUS)` gives the
//! kernel's register struct, the very bytes a core's `NT_PRSTATUS` note holds, so one
//! decoder ([`Registers::from_user_regs`]) serves both; only the call is host-specific.

use crate::arch::{Arch, Registers};

/// Registers of thread `tid`, which must be in ptrace-stop.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn thread_registers(tid: u32) -> Result<Registers, nix::Error> {
    // Room for the larger of the two structs (aarch64's 34 words).
    let mut raw = [0u64; 34];
    let mut iov = libc::iovec {
        iov_base: raw.as_mut_ptr().cast(),
        iov_len: std::mem::size_of_val(&raw),
    };
    // SAFETY: PTRACE_GETREGSET writes at most iov_len bytes into `raw` and sets iov_len
    // to the number written.
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
    let words = (iov.iov_len / 8).min(raw.len());
    Registers::from_user_regs(Arch::host(), &raw[..words]).ok_or(nix::Error::EIO)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
/// Registers of thread `tid`: unsupported on this architecture.
pub fn thread_registers(_tid: u32) -> Result<Registers, nix::Error> {
    Err(nix::Error::ENOSYS)
}
