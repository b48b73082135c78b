//! Launch mode: starting the profiled command, forwarding signals, and leaving nothing behind.
//!
//! The command is started by a keeper process between prof and it ([`keeper`]), which
//! ends the command's whole tree when prof is done with it, or when prof dies, however.

use std::fs::File;
use std::io::{PipeReader, Read};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::keeper::{self, Report};

/// prof's end of the keeper's control pipe, for the signal handler (-1 = none).
static CONTROL: AtomicI32 = AtomicI32::new(-1);
/// Set by SIGINT/SIGTERM/SIGHUP: stop sampling and write what was collected.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if STOP.swap(true, Ordering::SeqCst) && sig == libc::SIGINT {
        // A second Ctrl-C: the user wants out now. The keeper sees prof go and ends the
        // command's tree.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    // SAFETY: reading si_code of the siginfo the kernel passed us.
    let from_terminal = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    // A terminal's Ctrl-C already reaches the command (same foreground process group);
    // anything sent to prof alone is passed on so the command sees it too.
    if !(sig == libc::SIGINT && from_terminal) {
        control(sig as u8);
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

/// How long a command gets to exit once prof has been asked to stop (or, in `prof top`,
/// once it has been sent SIGTERM) before prof ends it and everything it started.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// A command prof started (through its keeper, see [`keeper`]) and will wait for.
pub struct Launched {
    keeper: Child,
    /// The keeper's reports; ends when the keeper exits.
    reports: PipeReader,
    /// Bytes of a report not yet complete.
    partial: Vec<u8>,
    /// The keeper has exited (its report pipe is closed).
    keeper_gone: bool,
    /// The command's exit code, once it has exited.
    code: Option<i32>,
    /// Its pid.
    pub pid: u32,
}

/// Start `argv` with prof's stdin, stdout and stderr. Every process it starts, even when
/// orphaned, is ended when prof is done with it or exits.
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
    let prog = argv
        .first()
        .ok_or_else(|| anyhow!("no command given after --"))?;
    let cannot = || format!("cannot start {prog}");
    // Both pipes are close-on-exec: only the keeper gets its ends, and only prof holds
    // the control pipe's writing end, so that its closing means prof has gone.
    let (control_rx, control_tx) = std::io::pipe().with_context(cannot)?;
    let (reports, report_tx) = std::io::pipe().with_context(cannot)?;
    // A signal handler writes here: it must never block.
    // SAFETY: fcntl on a pipe end we own.
    unsafe {
        libc::fcntl(control_tx.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
    }
    let inherit = [control_rx.as_raw_fd(), report_tx.as_raw_fd()];
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("prof")
        .arg(keeper::ARG)
        .args(inherit.map(|fd| fd.to_string()))
        .args(argv);
    if let Some((out, err)) = log {
        // The keeper passes its stdio on to the command.
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
    }
    // SAFETY: only fcntl, getrlimit and setrlimit, which are async-signal-safe, between
    // fork and exec.
    unsafe {
        command.pre_exec(move || {
            // The keeper, and so the command, runs under the limit prof started with.
            super::limits::restore_open_files()?;
            for fd in inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let keeper = command.spawn().with_context(cannot)?;
    drop((control_rx, report_tx));
    let mut launched = Launched {
        keeper,
        reports,
        partial: Vec::new(),
        keeper_gone: false,
        code: None,
        pid: 0,
    };
    match launched.receive(None) {
        Some(Report::Started(pid)) => {
            launched.pid = pid;
            // Kept open until prof exits: a signal handler may write to it at any time,
            // and a closed number could be reused by another file.
            CONTROL.store(control_tx.into_raw_fd(), Ordering::SeqCst);
            Ok(launched)
        }
        other => {
            let _ = launched.keeper.wait();
            match other {
                Some(Report::Failed(errno)) => {
                    Err(std::io::Error::from_raw_os_error(errno)).with_context(cannot)
                }
                _ => Err(anyhow!("{}: prof's keeper process failed", cannot())),
            }
        }
    }
}

/// Send one control byte to the keeper.
fn control(byte: u8) {
    let fd = CONTROL.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write is async-signal-safe; the descriptor is never closed (see above).
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

impl Launched {
    /// Read the keeper's next report, waiting until `deadline` (None: for as long as it
    /// takes). None when the time is up or the keeper has exited.
    fn receive(&mut self, deadline: Option<Instant>) -> Option<Report> {
        loop {
            if self.partial.len() >= Report::LEN {
                let bytes: Vec<u8> = self.partial.drain(..Report::LEN).collect();
                let report = Report::decode(bytes.try_into().ok()?);
                if let Some(Report::Exited(code)) = report {
                    self.code = Some(code);
                }
                return report;
            }
            if self.keeper_gone {
                return None;
            }
            let timeout = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Rounded up, so that a sub-millisecond wait does not spin.
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.reports.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if ready == 0 {
                return None;
            }
            if ready < 0 {
                // A signal (EINTR): the caller looks at its deadline and the stop flag.
                if deadline.is_some() {
                    return None;
                }
                continue;
            }
            let mut buf = [0u8; 64];
            match self.reports.read(&mut buf) {
                Ok(n) if n > 0 => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ => self.keeper_gone = true,
            }
        }
    }

    /// Has the command exited? Returns its exit code (128+n for a signal) once it has.
    pub fn try_wait(&mut self) -> Option<i32> {
        while self.code.is_none() && self.receive(Some(Instant::now())).is_some() {}
        self.code
    }

    /// Send `sig` to the command (not to what it started), if it still runs.
    pub fn signal(&self, sig: libc::c_int) {
        control(sig as u8);
    }

    /// Wait for the command to exit, then end whatever it left behind; returns its exit
    /// code. Once prof has been asked to stop (SIGINT, SIGTERM, SIGHUP), the command gets
    /// [`STOP_GRACE`] more to exit, then it is ended with the rest.
    pub fn wait(mut self) -> i32 {
        let mut grace_end: Option<Instant> = None;
        while self.code.is_none() && !self.keeper_gone {
            let now = Instant::now();
            if grace_end.is_none() && stop_requested() {
                grace_end = Some(now + STOP_GRACE);
            }
            if grace_end.is_some_and(|end| now >= end) {
                eprintln!(
                    "prof: the command was still running {} s after the stop request; ending it",
                    STOP_GRACE.as_secs()
                );
                break;
            }
            // Short waits: the stop flag is looked at between them.
            let step = now + Duration::from_millis(100);
            self.receive(Some(grace_end.map_or(step, |end| end.min(step))));
        }
        self.finish()
    }

    /// Ask the command to exit (SIGTERM) if it still runs, give it [`STOP_GRACE`], then end
    /// it and everything it started; returns its exit code.
    pub fn stop(mut self) -> i32 {
        if self.try_wait().is_none() {
            self.signal(libc::SIGTERM);
            let end = Instant::now() + STOP_GRACE;
            while self.code.is_none() && !self.keeper_gone && Instant::now() < end {
                self.receive(Some(end));
            }
        }
        self.finish()
    }

    /// Have the keeper end the command's whole tree and exit, and wait for it.
    fn finish(mut self) -> i32 {
        control(keeper::FINISH);
        while self.receive(None).is_some() {}
        let _ = self.keeper.wait();
        // A keeper killed by someone else cannot say how the command ended.
        self.code.unwrap_or(1)
    }
}
