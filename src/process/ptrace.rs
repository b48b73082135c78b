//! Stopping a live process for a consistent read, and always letting it go again.
//!
//! Threads are attached with PTRACE_SEIZE and stopped with PTRACE_INTERRUPT, which does not
//! send a signal the target could observe. The guard's Drop detaches (which resumes), and a
//! SIGINT/SIGTERM handler detaches every registered thread before prof dies, so the target is
//! never left in tracing stop.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{ProcessError, permission_error};

/// Upper bound on threads stopped at once; more are read without stopping.
const MAX_STOPPED: usize = 8192;

/// Tids currently attached, for the signal handler (0 = free slot).
static ATTACHED: [AtomicI32; MAX_STOPPED] = [const { AtomicI32::new(0) }; MAX_STOPPED];
static HANDLERS: AtomicBool = AtomicBool::new(false);

extern "C" fn detach_all_and_die(sig: libc::c_int) {
    for slot in ATTACHED.iter() {
        let tid = slot.swap(0, Ordering::SeqCst);
        if tid != 0 {
            // Only async-signal-safe calls here: raw syscalls.
            unsafe {
                libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
            }
        }
    }
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Make SIGINT and SIGTERM detach from stopped threads before prof exits.
/// Installed once, the first time a process is paused.
pub fn install_signal_handlers() {
    if HANDLERS.swap(true, Ordering::SeqCst) {
        return;
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        unsafe {
            let prev = libc::signal(sig, detach_all_and_die as *const () as libc::sighandler_t);
            // Leave a handler someone else installed (record's Ctrl-C) in place.
            if prev != libc::SIG_DFL && prev != libc::SIG_ERR {
                libc::signal(sig, prev);
            }
        }
    }
}

fn register(tid: i32) -> Option<usize> {
    for (i, slot) in ATTACHED.iter().enumerate() {
        if slot
            .compare_exchange(0, tid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Some(i);
        }
    }
    None
}

/// While alive, the listed threads are in ptrace-stop; dropping it resumes and detaches them.
pub struct PauseGuard {
    slots: Vec<(usize, Pid, Option<Signal>)>,
}

impl PauseGuard {
    /// Stop every thread in `tids` of process `pid`. Threads that exit meanwhile are skipped.
    ///
    /// The other threads are all asked to stop before any of their stops is waited for, so
    /// they stop side by side instead of one after another. The group leader (`pid`) is
    /// stopped and waited for first, alone: once a process is exiting, the leader's exit
    /// is reported only after every other thread has been reaped, and those traced by prof
    /// are reaped only by prof, so waiting for the leader while they are traced can block
    /// for ever.
    pub fn pause(pid: u32, tids: &[u32]) -> Result<PauseGuard, ProcessError> {
        if pid == std::process::id() {
            // The kernel refuses PTRACE_SEIZE within a thread group with the same EPERM a
            // security module would give: say which it is.
            return Err(ProcessError::Itself(pid));
        }
        install_signal_handlers();
        let mut guard = PauseGuard { slots: Vec::new() };
        let leader = tids.iter().filter(|&&t| t == pid);
        let ordered: Vec<u32> = leader
            .chain(tids.iter().filter(|&&t| t != pid))
            .copied()
            .collect();
        let mut to_wait = Vec::new();
        for tid in ordered {
            let p = Pid::from_raw(tid as i32);
            let Some(slot) = register(tid as i32) else {
                break;
            };
            match ptrace::seize(p, ptrace::Options::empty()) {
                Ok(()) => guard.slots.push((slot, p, None)),
                Err(nix::Error::ESRCH) => {
                    ATTACHED[slot].store(0, Ordering::SeqCst);
                    continue;
                }
                Err(nix::Error::EPERM) => {
                    ATTACHED[slot].store(0, Ordering::SeqCst);
                    if guard.slots.is_empty() && tid == pid {
                        return Err(if super::is_kernel_thread(pid) {
                            ProcessError::KernelThread(pid)
                        } else {
                            permission_error(pid)
                        });
                    }
                    continue;
                }
                Err(e) => {
                    ATTACHED[slot].store(0, Ordering::SeqCst);
                    return Err(ProcessError::Ptrace {
                        pid,
                        msg: format!("cannot attach to thread {tid}: {e}"),
                    });
                }
            }
            if ptrace::interrupt(p).is_err() {
                // Exited meanwhile: nothing to wait for (detaching it is harmless).
                continue;
            }
            let i = guard.slots.len() - 1;
            if tid == pid {
                guard.slots[i].2 = wait_for_stop(p);
            } else {
                to_wait.push(i);
            }
        }
        for i in to_wait {
            let p = guard.slots[i].1;
            guard.slots[i].2 = wait_for_stop(p);
        }
        if guard.slots.is_empty() {
            return Err(ProcessError::Exited(pid));
        }
        Ok(guard)
    }

    /// Number of threads stopped.
    pub fn stopped(&self) -> usize {
        self.slots.len()
    }
}

/// Wait until the interrupted thread reports its stop. A signal that arrives at the same
/// moment shows up as a signal-delivery stop instead; it is returned so detach re-injects it
/// and the target loses nothing.
fn wait_for_stop(p: Pid) -> Option<Signal> {
    for _ in 0..16 {
        match waitpid(p, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(..)) => return None,
            Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => return None,
            Ok(WaitStatus::Stopped(_, sig)) => return Some(sig),
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
    None
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        for (slot, p, pending) in self.slots.drain(..) {
            let _ = ptrace::detach(p, pending);
            ATTACHED[slot].store(0, Ordering::SeqCst);
        }
    }
}
