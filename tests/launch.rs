//! Launch mode leaves nothing behind: whatever way prof ends (the command exits, Ctrl-C,
//! a second Ctrl-C, `q` in `prof top`, even SIGKILL), no process of the command's tree
//! outlives it for more than a few seconds.
//!
//! The target is `testdata/launch_tree.py`, a three-deep chain of Python processes whose
//! third member runs in a session of its own. The tree is told apart from everything
//! else on the machine by a unique value of [`MARK_VAR`] in prof's environment, which
//! every process of the tree inherits, and by prof's process group; a [`Mark`] SIGKILLs
//! whatever still carries it when it is dropped, so a failing test leaves nothing behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::tmux::{Tmux, have_tmux};
use common::{Group, Python, prof_path, pythons, testdata, wait_for_file};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The environment variable that marks a launched tree.
const MARK_VAR: &str = "PROF_LAUNCH_TEST_MARK";
/// Generous: a loaded 2-core machine can be slow to start three interpreters.
const WAIT: Duration = Duration::from_secs(60);
/// How long the tree may take to go once prof is gone without cleaning up itself
/// (SIGKILL, a second Ctrl-C): grace periods of a few seconds, on a noisy machine.
const CLEANUP: Duration = Duration::from_secs(30);
/// Once prof has exited on its own, the tree must already be gone; this only absorbs the
/// time the kernel takes to finish tearing down a killed process.
const SETTLE: Duration = Duration::from_secs(2);

static MARKS: AtomicUsize = AtomicUsize::new(0);

/// One launched tree's identity. Dropping it SIGKILLs every process still marked.
struct Mark {
    value: String,
    /// prof's process group, once known.
    pgid: Option<u32>,
}

impl Mark {
    fn new() -> Mark {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Mark {
            value: format!(
                "{}-{}-{nanos}",
                std::process::id(),
                MARKS.fetch_add(1, Ordering::SeqCst)
            ),
            pgid: None,
        }
    }

    fn assignment(&self) -> String {
        format!("{MARK_VAR}={}", self.value)
    }

    /// Live processes of the tree (marked, or in prof's process group), with their
    /// command lines.
    fn left(&self) -> Vec<(u32, String)> {
        let assignment = self.assignment();
        let mut found = Vec::new();
        let Ok(dir) = fs::read_dir("/proc") else {
            return found;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some((state, pgid)) = state_and_pgid(pid) else {
                continue;
            };
            if matches!(state, 'Z' | 'X') {
                continue;
            }
            let marked = fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|var| var == assignment.as_bytes())
            });
            if marked || self.pgid.is_some_and(|g| g == pgid) {
                let cmd = fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default();
                found.push((pid, cmd.trim_end().to_string()));
            }
        }
        found
    }

    /// Wait up to `timeout` for the tree to be gone; returns what is left after it.
    fn left_after(&self, timeout: Duration) -> Vec<(u32, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.left();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        // Several rounds: a killed parent's children may still be starting.
        for _ in 0..20 {
            let left = self.left();
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The state letter and process group of `pid`, from /proc/PID/stat.
fn state_and_pgid(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let pgid = rest.nth(1)?.parse().ok()?;
    Some((state, pgid))
}

/// pyenv's 3.12 if there is one, else the first interpreter found; None skips the test.
fn python() -> Option<Python> {
    let all = pythons();
    let py = all
        .iter()
        .find(|p| p.version == (3, 12) && p.name.starts_with("pyenv"))
        .or(all.first())
        .cloned();
    if py.is_none() {
        eprintln!("skipped: no Python interpreter found");
    }
    py
}

/// `launch_tree.py OUTDIR 3 IGNORE END` as a command line for prof to launch.
fn tree_command(py: &Python, dir: &Path, ignore: &str, end: &str) -> Vec<String> {
    vec![
        py.path.to_string_lossy().into_owned(),
        "-u".into(),
        testdata()
            .join("launch_tree.py")
            .to_string_lossy()
            .into_owned(),
        dir.to_string_lossy().into_owned(),
        "3".into(),
        ignore.into(),
        end.into(),
    ]
}

/// `prof record` of the tree, in a process group of its own like a shell's job.
struct Record {
    prof: Group,
    // Dropped in this order: prof's group, the rest of the tree, then the directory.
    mark: Mark,
    dir: tempfile::TempDir,
    what: String,
}

impl Record {
    /// Start `prof record -f raw` on `launch_tree.py` and wait until the whole chain is up.
    fn start(py: &Python, ignore: &str, end: &str) -> Record {
        let dir = tempfile::Builder::new()
            .prefix("prof-launch-")
            .tempdir()
            .expect("tempdir");
        let mut mark = Mark::new();
        let mut cmd = Command::new(prof_path());
        cmd.args(["record", "-f", "raw", "-o"])
            .arg(dir.path().join("profile.txt"))
            .arg("--")
            .args(tree_command(py, dir.path(), ignore, end))
            .env(MARK_VAR, &mark.value)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("prof.stdout")).unwrap())
            .stderr(fs::File::create(dir.path().join("prof.stderr")).unwrap());
        let mut prof = Group::spawn(&mut cmd);
        mark.pgid = Some(prof.pid());
        let what = format!(
            "[{}] prof record -- launch_tree.py 3 {ignore} {end}",
            py.name
        );
        wait_for_file(
            &dir.path().join("level-1.pid"),
            || prof.try_wait().map(|s| format!("prof exited ({s})")),
            &what,
        );
        Record {
            prof,
            mark,
            dir,
            what,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.prof.pid() as i32)
    }

    /// prof's exit status, waiting at most `timeout`; the test fails if it is still running.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.prof.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: prof still running after {timeout:?}\n{}",
                self.what,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("prof.stderr")).unwrap_or_default();
        format!("prof's stderr:\n{text}")
    }

    /// The tree must be gone within `timeout`.
    fn assert_gone(&self, timeout: Duration, after: &str) {
        let left = self.mark.left_after(timeout);
        assert!(
            left.is_empty(),
            "{}: {timeout:?} after {after}, processes of the launched tree still run: {left:#?}\n{}",
            self.what,
            self.stderr()
        );
    }

    /// The profile prof wrote must show the command's own function.
    fn assert_profile(&self) {
        let path = self.dir.path().join("profile.txt");
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text.contains("chain_burn"),
            "{}: no chain_burn in {}: {text:?}\n{}",
            self.what,
            path.display(),
            self.stderr()
        );
    }
}

/// Issue item 1: nothing in prof survives SIGKILL, yet the command and all its
/// descendants (here ignoring SIGTERM, one in its own session) must go with it.
#[test]
fn record_killed_leaves_nothing_behind() {
    crate::skip_without_live_targets!();
    let Some(py) = python() else {
        return;
    };
    let mut rec = Record::start(&py, "TERM", "stay");
    thread::sleep(Duration::from_millis(500));
    kill(rec.pid(), Signal::SIGKILL).expect("kill prof");
    rec.wait(WAIT);
    rec.assert_gone(CLEANUP, "SIGKILL to prof");
}

/// Issue item 2: the command exits 0 and leaves a chain of descendants that ignore
/// SIGTERM; prof exits with 0 and none of them is left.
#[test]
fn record_ends_descendants_that_ignore_sigterm() {
    crate::skip_without_live_targets!();
    let Some(py) = python() else {
        return;
    };
    let mut rec = Record::start(&py, "TERM", "exit");
    let status = rec.wait(WAIT);
    assert_eq!(status.code(), Some(0), "{}\n{}", rec.what, rec.stderr());
    rec.assert_gone(SETTLE, "prof's exit");
    rec.assert_profile();
}

/// A command that ignores SIGINT and SIGTERM, and `stop` sent to prof: the profile is
/// written, and prof ends the command after a grace period instead of waiting for it
/// forever. It is ended by SIGKILL, so prof passes on 128+9.
fn stop_a_command_that_ignores_it(stop: impl Fn(Pid)) {
    let Some(py) = python() else {
        return;
    };
    let mut rec = Record::start(&py, "INT,TERM", "stay");
    thread::sleep(Duration::from_millis(1000));
    stop(rec.pid());
    let status = rec.wait(WAIT);
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "{}: exit status\n{}",
        rec.what,
        rec.stderr()
    );
    rec.assert_gone(SETTLE, "prof's exit");
    rec.assert_profile();
}

/// Issue item 3: Ctrl-C, that is SIGINT to prof's process group as a terminal sends it.
#[test]
fn record_ctrl_c_ends_a_command_that_ignores_it() {
    crate::skip_without_live_targets!();
    stop_a_command_that_ignores_it(|prof| {
        killpg(prof, Signal::SIGINT).expect("SIGINT to prof's group");
    });
}

/// Issue item 3 in CI: a cancelled job, that is SIGTERM to prof alone.
#[test]
fn record_sigterm_ends_a_command_that_ignores_it() {
    crate::skip_without_live_targets!();
    stop_a_command_that_ignores_it(|prof| {
        kill(prof, Signal::SIGTERM).expect("SIGTERM to prof");
    });
}

/// Issue item 3: a second Ctrl-C while prof waits for such a command exits 130 at once,
/// and the tree still goes.
#[test]
fn record_second_ctrl_c_leaves_nothing_behind() {
    crate::skip_without_live_targets!();
    let Some(py) = python() else {
        return;
    };
    let mut rec = Record::start(&py, "INT,TERM", "stay");
    thread::sleep(Duration::from_millis(1000));
    killpg(rec.pid(), Signal::SIGINT).expect("SIGINT to prof's group");
    // The second Ctrl-C once the profile is written, while prof waits for the command.
    let deadline = Instant::now() + WAIT;
    while !rec.stderr().contains("wrote ") {
        if let Some(s) = rec.prof.try_wait() {
            panic!(
                "{}: prof exited ({s}) after one Ctrl-C\n{}",
                rec.what,
                rec.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{}: no profile written after Ctrl-C\n{}",
            rec.what,
            rec.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    killpg(rec.pid(), Signal::SIGINT).expect("SIGINT to prof's group");
    let status = rec.wait(WAIT);
    assert_eq!(status.code(), Some(130), "{}\n{}", rec.what, rec.stderr());
    rec.assert_gone(CLEANUP, "the second Ctrl-C");
    rec.assert_profile();
}

/// `prof top` of the tree in a tmux pane, started by the pane's shell through `env` so
/// that prof carries the mark. Returns the pane, prof's pid and the mark.
fn start_top(py: &Python, dir: &Path, ignore: &str) -> Option<(Tmux, u32, Mark)> {
    if !have_tmux() {
        return None;
    }
    let mut mark = Mark::new();
    let tmux = Tmux::start();
    let shell: u32 = tmux.var("pane_pid").parse().expect("pane pid");
    tmux.type_line(&format!(
        "env {} PYTHONDONTWRITEBYTECODE=1 {} top --delay 0.25 -- {}; echo prof-exit=$?",
        mark.assignment(),
        prof_path(),
        tree_command(py, dir, ignore, "stay").join(" ")
    ));
    tmux.wait_for("chain_burn", |s| s.contains("chain_burn"));
    let prof = mark
        .left()
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| parent(*pid) == Some(shell))
        .expect("prof is not the shell's child");
    // An interactive shell gives each job its own process group.
    mark.pgid = state_and_pgid(prof).map(|(_, g)| g);
    Some((tmux, prof, mark))
}

fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Where `prof top` with pid `prof` logs the command's output.
fn top_log(prof: u32) -> PathBuf {
    std::env::temp_dir().join(format!("prof-top-{prof}.log"))
}

/// Issue item 1 for `prof top`.
#[test]
fn top_killed_leaves_nothing_behind() {
    crate::skip_without_live_targets!();
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((tmux, prof, mark)) = start_top(&py, dir.path(), "TERM") else {
        return;
    };
    kill(Pid::from_raw(prof as i32), Signal::SIGKILL).expect("kill prof");
    tmux.wait_for("prof's exit", |s| s.contains("prof-exit=137"));
    let left = mark.left_after(CLEANUP);
    let _ = fs::remove_file(top_log(prof));
    assert!(
        left.is_empty(),
        "{CLEANUP:?} after SIGKILL to prof top, processes of the launched tree still run: {left:#?}"
    );
}

/// Issue items 2 and 3 for `prof top`: Ctrl-C (a key in raw mode) quits, and the whole
/// tree, which ignores SIGINT and SIGTERM, is gone by the time prof has exited.
#[test]
fn top_quit_ends_every_process_of_the_command() {
    crate::skip_without_live_targets!();
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((tmux, prof, mark)) = start_top(&py, dir.path(), "INT,TERM") else {
        return;
    };
    tmux.keys(&["C-c"]);
    let s = tmux.wait_for("prof's exit", |s| {
        s.lines().any(|l| l.starts_with("prof-exit="))
    });
    let left = mark.left_after(SETTLE);
    let _ = fs::remove_file(top_log(prof));
    // SIGTERM is ignored, so the command ends by SIGKILL.
    assert!(s.contains("prof-exit=137"), "{s}");
    assert!(
        left.is_empty(),
        "processes of the launched tree still run after prof top exited: {left:#?}\n{s}"
    );
}

/// The command starts with the signal state it would have without prof: nothing blocked
/// (the keeper blocks SIGCHLD for itself), and a signal ignored by whoever started prof
/// still ignored (SIGQUIT, as for a background job of a script), while the signals prof
/// handles itself are at their defaults.
#[test]
fn command_starts_with_the_signal_state_prof_had() {
    crate::skip_without_live_targets!();
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let status_copy = dir.path().join("status.txt");
    let mut mark = Mark::new();
    let mut cmd = Command::new(prof_path());
    cmd.args(["record", "-o"])
        .arg(dir.path().join("profile.svg"))
        .arg("--")
        .arg(&py.path)
        .arg("-c")
        .arg("import sys; open(sys.argv[1], 'w').write(open('/proc/self/status').read())")
        .arg(&status_copy)
        .env(MARK_VAR, &mark.value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut prof = Group::spawn(&mut cmd);
    mark.pgid = Some(prof.pid());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = prof.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "prof still running after {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "prof's exit status");
    let text = fs::read_to_string(&status_copy).expect("the command's /proc/self/status");
    let mask = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    assert_eq!(mask("SigBlk:"), 0, "signals blocked in the command\n{text}");
    let ignored = mask("SigIgn:");
    assert!(
        ignored & bit(libc::SIGQUIT) != 0,
        "SIGQUIT no longer ignored\n{text}"
    );
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD] {
        assert!(ignored & bit(sig) == 0, "signal {sig} ignored\n{text}");
    }
}

/// A terminal's Ctrl-C reaches the command once: from the terminal itself (prof, the
/// keeper and the command are in one foreground process group), not again from prof or
/// the keeper. A duplicate sent while the first is still pending merges with it in the
/// kernel, so this catches one only when the command took the first in between: with
/// prof made to pass the terminal's SIGINT on, it failed in 1 run out of 3 here.
#[test]
fn terminal_ctrl_c_reaches_the_command_once() {
    crate::skip_without_live_targets!();
    let Some(py) = python() else {
        return;
    };
    if !have_tmux() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = Mark::new();
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "env {} PYTHONDONTWRITEBYTECODE=1 {} record -o {} -- {} {} {}; echo prof-exit=$?",
        mark.assignment(),
        prof_path(),
        dir.path().join("profile.svg").display(),
        py.path.display(),
        testdata().join("launch_sigints.py").display(),
        dir.path().display()
    ));
    wait_for_file(&dir.path().join("ready"), || None, "launch_sigints.py");
    thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-c"]);
    let s = tmux.wait_for("prof's exit", |s| {
        s.lines().any(|l| l.starts_with("prof-exit="))
    });
    assert!(s.contains("prof-exit=0"), "{s}");
    let count = fs::read_to_string(dir.path().join("sigints.txt")).unwrap_or_default();
    assert_eq!(count, "1", "SIGINTs the command got\n{s}");
    let left = mark.left_after(SETTLE);
    assert!(left.is_empty(), "still running: {left:#?}");
}
