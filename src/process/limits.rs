//! prof's own limit on open files. prof keeps a few files open per thread of a target
//! (`stat`, `schedstat`, `syscall`), so a process with a thousand threads goes past the
//! usual soft limit of 1024; past it every further open fails, and the threads whose files
//! could not be opened lose their states. The soft limit is raised to the hard one at
//! start, and commands prof launches get the limit prof started with. When even the hard
//! limit is too low, prof keeps as many of these files open as its limit allows
//! ([`KeptFile`]) and opens the others for each read.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
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

/// Fewest open files prof leaves for everything but the files it keeps open per thread
/// (its own binaries, `/proc` reads of maps and exes, pipes, the output); an eighth of its
/// limit when that is more.
const RESERVED: u64 = 32;

/// Files kept open per thread now.
static KEPT: AtomicU64 = AtomicU64::new(0);

/// How many per-thread files may be kept open: prof's soft limit (once raised) less what
/// is [`RESERVED`]; past it a file is opened for each read and closed after.
fn budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit with a valid struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return 0;
        }
        lim.rlim_cur.saturating_sub(RESERVED.max(lim.rlim_cur / 8))
    })
}

/// A per-thread `/proc` file kept open between reads, counted against the budget.
#[derive(Debug)]
pub struct KeptFile(File);

impl KeptFile {
    /// `file`, kept if the budget has room (otherwise None, and the file is closed).
    pub fn keep(file: File) -> Option<KeptFile> {
        let budget = budget();
        KEPT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < budget).then_some(n + 1)
        })
        .ok()
        .map(|_| KeptFile(file))
    }

    /// Read from the start of the file into `buf`.
    pub fn read_at(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(buf, 0)
    }
}

impl Drop for KeptFile {
    fn drop(&mut self) {
        KEPT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Read the file at `path` from its start into `buf`, through the file kept in `slot` when
/// there is one; otherwise the file is opened, read, and kept in `slot` if the budget has
/// room. None when it cannot be opened or read (the slot is then emptied).
pub fn read_kept(
    slot: &mut Option<KeptFile>,
    path: impl FnOnce() -> String,
    buf: &mut [u8],
) -> Option<usize> {
    if let Some(f) = slot {
        let n = f.read_at(buf).ok();
        if n.is_none() {
            *slot = None;
        }
        return n;
    }
    let f = File::open(path()).ok()?;
    let n = f.read_at(buf, 0).ok()?;
    *slot = KeptFile::keep(f);
    Some(n)
}
