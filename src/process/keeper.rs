//! The keeper: the process between prof and a command prof launches, so that nothing the
//! command starts outlives prof, however prof ends.
//!
//! prof runs its own binary again (`/proc/self/exe`) with [`ARG`] first (see
//! [`super::spawn`]). The keeper starts the command and is a child subreaper, so every
//! process of the command's tree stays its descendant even when its own parent exits.
//! Its control pipe has one writer, prof: a byte n > 0 asks it to pass signal n on to the
//! command; [`FINISH`], or the end of file that prof's exit causes (even by SIGKILL, which
//! nothing inside prof can act on), asks it to end the whole tree and exit. On a second
//! pipe it reports the command's pid (or why it could not start), then its exit code.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::threads;

/// The hidden first argument that makes prof a keeper.
pub const ARG: &str = "--launch-keeper";
/// The control byte that asks the keeper to end the tree and exit.
pub const FINISH: u8 = 0;
/// How long the tree's processes get to exit after SIGTERM before they are killed.
const TREE_GRACE: Duration = Duration::from_secs(2);
/// How long the keeper goes on killing before it gives up (a process stuck in the kernel).
const KILL_LIMIT: Duration = Duration::from_secs(10);

/// What the keeper tells prof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The command runs, with this pid.
    Started(u32),
    /// The command could not be started (an errno).
    Failed(i32),
    /// The command exited with this code (128+n for signal n).
    Exited(i32),
}

impl Report {
    /// The size of one report on the pipe: a tag and an i32. Written in one write, well
    /// under PIPE_BUF, so that reports never interleave or split.
    pub const LEN: usize = 5;

    fn encode(self) -> [u8; Report::LEN] {
        let (tag, n) = match self {
            Report::Started(pid) => (b'S', pid as i32),
            Report::Failed(errno) => (b'F', errno),
            Report::Exited(code) => (b'X', code),
        };
        let [a, b, c, d] = n.to_le_bytes();
        [tag, a, b, c, d]
    }

    /// The report in `bytes`, or None for bytes no keeper writes.
    pub fn decode(bytes: [u8; Report::LEN]) -> Option<Report> {
        let n = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        match bytes[0] {
            b'S' => u32::try_from(n).ok().map(Report::Started),
            b'F' => Some(Report::Failed(n)),
            b'X' => Some(Report::Exited(n)),
            _ => None,
        }
    }
}

/// A command's exit code as a shell gives it: its own code, or 128+n for signal n.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// Run as the keeper if prof was started as one (see [`ARG`]); returns its exit code.
/// Called first thing in `main`, before any argument parsing.
pub fn main_if_keeper() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != ARG {
        return None;
    }
    Some(run(args.collect()))
}

/// A pipe end inherited from prof, given by its number; None unless it is one.
fn inherited_pipe(arg: &OsString) -> Option<File> {
    let fd: i32 = arg.to_str()?.parse().ok()?;
    // SAFETY: fstat on any number is safe; it fails for one that is not open.
    let is_fifo = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    };
    if !is_fifo || fd <= 2 {
        return None;
    }
    // SAFETY: an open pipe end that nothing else in this process owns. Close-on-exec, so
    // that the command does not inherit it: prof must see the end of the report pipe when
    // the keeper exits, whatever the command's tree still runs.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(File::from_raw_fd(fd))
    }
}

/// Does nothing: the keeper survives a terminal's signals (they are for the command, and
/// prof decides when the keeper ends), and SIGCHLD only has to interrupt its wait. A
/// handler rather than SIG_IGN, because the command inherits ignored signals but not
/// handlers.
extern "C" fn ignore(_: libc::c_int) {}

fn run(args: Vec<OsString>) -> i32 {
    let (Some(mut control), Some(report)) = (
        args.first().and_then(inherited_pipe),
        args.get(1).and_then(inherited_pipe),
    ) else {
        eprintln!("prof: {ARG} is for prof's own use");
        return 1;
    };
    let Some((program, rest)) = args.get(2..).and_then(|a| a.split_first()) else {
        eprintln!("prof: {ARG} is for prof's own use");
        return 1;
    };
    // SAFETY: prctl and sigaction change only this process's own flags and handlers, and
    // the handler is async-signal-safe (it does nothing).
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"prof-keeper".as_ptr(), 0, 0, 0);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGCHLD,
        ] {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old);
            // Ignored already (a background job's SIGQUIT): the command inherits that,
            // as it would without prof. The keeper needs SIGCHLD whatever.
            if old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGCHLD {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let mut keeper = Keeper {
        report,
        command: 0,
        exited: false,
    };
    // Started before SIGCHLD is blocked below: the command inherits the signal mask.
    match Command::new(program).args(rest).spawn() {
        Ok(child) => {
            keeper.command = child.id() as i32;
            keeper.send(Report::Started(child.id()));
        }
        Err(e) => {
            keeper.send(Report::Failed(e.raw_os_error().unwrap_or(libc::EIO)));
            return 0;
        }
    }
    // SIGCHLD stays blocked except during the wait in serve(), which unblocks it
    // atomically (`waiting`), so that a child's exit between reaping and waiting still
    // ends the wait. One that came before is found by serve()'s first reaping.
    // SAFETY: sigset operations on local sets, and this thread's own mask.
    let waiting = unsafe {
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        let mut waiting: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &chld, &mut waiting);
        libc::sigdelset(&mut waiting, libc::SIGCHLD);
        waiting
    };
    keeper.serve(&mut control, &waiting);
    keeper.end_tree();
    0
}

struct Keeper {
    report: File,
    /// The command's pid.
    command: i32,
    /// The command has exited (and been reported).
    exited: bool,
}

impl Keeper {
    fn send(&mut self, report: Report) {
        // If prof has gone, nobody needs to know.
        let _ = self.report.write_all(&report.encode());
    }

    /// Reap the children that have exited and report the command's exit. While prof may
    /// still sample, the command is left a zombie, so that its pid cannot be reused; its
    /// orphans are reaped at once. `all`: reap the command too (prof is done).
    fn reap(&mut self, all: bool) {
        if !self.exited {
            // SAFETY: waitid writes only the siginfo we pass; WNOWAIT leaves the zombie.
            let info = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
                let r = libc::waitid(libc::P_PID, self.command as u32, &mut info, flags);
                (r == 0 && info.si_pid() == self.command).then_some(info)
            };
            if let Some(info) = info {
                // SAFETY: si_status of a CLD_* siginfo from waitid.
                let status = unsafe { info.si_status() };
                self.exited(match info.si_code {
                    libc::CLD_EXITED => status,
                    _ => 128 + status,
                });
            }
        }
        if all || !self.exited {
            // Only orphans can be waiting, or the command if it exited just now.
            loop {
                let mut status = 0;
                // SAFETY: waitpid writes only the status we pass.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    return;
                }
                if pid == self.command && !self.exited {
                    self.exited(exit_code(ExitStatus::from_raw(status)));
                }
            }
        }
        for pid in zombie_children(self.command) {
            // SAFETY: reaping a child of ours that has exited.
            unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
    }

    fn exited(&mut self, code: i32) {
        self.exited = true;
        self.send(Report::Exited(code));
    }

    /// Pass signals on to the command until prof says it is done, or is gone.
    fn serve(&mut self, control: &mut File, waiting: &libc::sigset_t) {
        let mut buf = [0u8; 64];
        loop {
            self.reap(false);
            let mut pfd = libc::pollfd {
                fd: control.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the mask is a valid sigset. A SIGCHLD, blocked
            // since the last reap, interrupts it at once.
            if unsafe { libc::ppoll(&mut pfd, 1, std::ptr::null(), waiting) } <= 0 {
                continue;
            }
            let n = match control.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            for &byte in &buf[..n] {
                if byte == FINISH {
                    return;
                }
                if !self.exited {
                    // SAFETY: a signal to the keeper's own child, which has not exited.
                    unsafe {
                        libc::kill(self.command, i32::from(byte));
                    }
                }
            }
        }
    }

    /// End every descendant: SIGTERM (and SIGCONT, for a stopped one), then SIGKILL for
    /// those still there after a grace period. Rescanned until none is left, since the
    /// orphans of each process that exits become the keeper's children only then.
    fn end_tree(&mut self) {
        let me = std::process::id();
        let grace_end = Instant::now() + TREE_GRACE;
        let mut asked: Vec<u32> = Vec::new();
        loop {
            self.reap(true);
            let left = super::events::descendants(me);
            if left.is_empty() {
                return;
            }
            if Instant::now() >= grace_end {
                break;
            }
            for pid in left {
                if !asked.contains(&pid) {
                    asked.push(pid);
                    // SAFETY: signals to the keeper's own descendants.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGTERM);
                        libc::kill(pid as i32, libc::SIGCONT);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let give_up = Instant::now() + KILL_LIMIT;
        loop {
            for pid in super::events::descendants(me) {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
            self.reap(true);
            if super::events::descendants(me).is_empty() || Instant::now() >= give_up {
                return;
            }
        }
    }
}

/// The keeper's children that have exited, except `keep`.
fn zombie_children(keep: i32) -> Vec<i32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != keep)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                threads::parse_stat_ppid(&stat) == Some(me)
                    && threads::parse_stat_state(&stat) == Some('Z')
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Started(4_194_304),
            Report::Failed(libc::ENOENT),
            Report::Exited(0),
            Report::Exited(128 + 9),
        ] {
            assert_eq!(Report::decode(r.encode()), Some(r));
        }
        assert_eq!(Report::decode(*b"Z\0\0\0\0"), None);
        assert_eq!(Report::decode([b'S', 0xff, 0xff, 0xff, 0xff]), None);
    }
}
