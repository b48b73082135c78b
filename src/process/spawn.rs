//! Launch mode: starting the profiled command, forwarding signals, and leaving nothing behind.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// The launched child's pid, for the signal handler (0 = none).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Set by SIGINT/SIGTERM/SIGHUP: stop sampling and write what was collected.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if STOP.swap(true, Ordering::SeqCst) && sig == libc::SIGINT {
        // A second Ctrl-C: the user wants out now.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    let child = CHILD.load(Ordering::SeqCst);
    // SAFETY: reading si_code of the siginfo the kernel passed us.
    let from_terminal = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    // A terminal's Ctrl-C already reaches the child (same foreground process group);
    // anything sent to prof alone is passed on so the command sees it too.
    if child > 0 && !(sig == libc::SIGINT && from_terminal) {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(child, sig);
        }
    }
}

/// Make SIGINT, SIGTERM and SIGHUP stop the recording instead of killing prof, and return
/// the flag they set.
pub fn install_stop_handlers() -> &'static AtomicBool {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO is well formed.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    &STOP
}

/// Has a stop signal arrived?
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// A command prof started and will wait for.
pub struct Launched {
    child: Child,
    /// Its pid.
    pub pid: u32,
}

/// Start `argv` as prof's child. Orphaned grandchildren are re-parented to prof (a child
/// subreaper), so they can be found and ended when the command finishes.
pub fn launch(argv: &[String]) -> Result<Launched> {
    launch_with(argv, None)
}

/// [`launch`], with the command's stdin from /dev/null and its stdout and stderr written
/// to `log` (created or truncated), so that it can neither draw over nor read from a
/// full-screen display that owns the terminal (`prof top`).
pub fn launch_logged(argv: &[String], log: &Path) -> Result<Launched> {
    let out = File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("cannot write {}", log.display()))?;
    let launched = launch_with(argv, Some((out, err)));
    if launched.is_err() {
        // Nothing will ever be written there.
        let _ = std::fs::remove_file(log);
    }
    launched
}

fn launch_with(argv: &[String], log: Option<(File, File)>) -> Result<Launched> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("no command given after --"))?;
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only changes a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let mut command = Command::new(prog);
    command.args(args);
    if let Some((out, err)) = log {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {prog}"))?;
    let pid = child.id();
    CHILD.store(pid as i32, Ordering::SeqCst);
    Ok(Launched { child, pid })
}

impl Launched {
    /// Has the command exited? Returns its exit code (128+n for a signal) once it has.
    pub fn try_wait(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(exit_code(status)),
            _ => None,
        }
    }

    /// Wait for the command, then end and reap anything it left behind.
    pub fn wait(mut self) -> i32 {
        let code = match self.child.wait() {
            Ok(status) => exit_code(status),
            Err(_) => 1,
        };
        CHILD.store(0, Ordering::SeqCst);
        reap_orphans();
        code
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// Children of prof: once the command has been reaped, orphans re-parented to it.
fn own_children() -> Vec<i32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| super::threads::parse_stat_ppid(&s))
                == Some(me)
        })
        .collect()
}

/// End the processes the command left behind (TERM, then KILL after a grace period).
fn reap_orphans() {
    let reap = || {
        // SAFETY: non-blocking waitpid on any child.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    };
    let left = own_children();
    if left.is_empty() {
        return;
    }
    for pid in &left {
        // SAFETY: signalling our own children.
        unsafe {
            libc::kill(*pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        reap();
        if own_children().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in own_children() {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    reap();
}
