//! prof's own limit on open files. prof keeps a few files open per thread of a target
//! (`stat`, `schedstat`, `syscall`), so a process with a thousand threads goes past the
//! usual soft limit of 1024; past it every further open fails, and the threads whose files
//! could not be opened lose their states. The soft limit is raised to the hard one at
//! start, and commands prof launches get the limit prof started with.

use std::sync::atomic::{AtomicU64, Ordering};

/// The soft limit prof started with, when it raised it (`u64::MAX`: not raised).
static STARTED_WITH: AtomicU64 = AtomicU64::new(u64::MAX);

/// Raise the soft limit on open files to the hard limit (nothing when they are equal or
/// the call fails: prof then works within the limit it has).
pub fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let started = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            STARTED_WITH.store(started, Ordering::SeqCst);
        }
    }
}

/// Put back the soft limit prof started with, in a child between fork and exec (only
/// async-signal-safe calls), so that a launched command runs under the user's limit.
pub fn restore_open_files() -> std::io::Result<()> {
    let started = STARTED_WITH.load(Ordering::SeqCst);
    if started == u64::MAX {
        return Ok(());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct; both are system calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = started.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
