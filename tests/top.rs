//! `prof top` end to end: the release binary in a real terminal (a private tmux server),
//! driven with keys like a user would, against a real Python target
//! (`testdata/top_busy.py`: `crunch_alpha` and `crunch_beta` in named threads).
//!
//! Each test owns its tmux server (`tmux -L prof-test-<pid>-<n>`) and its processes
//! through Drop guards, so a failing test leaves nothing behind. The tests take a common
//! lock: they measure rates and wait on screens, which a crowded machine would distort.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::tmux::{Tmux, have_tmux};
use common::{Group, assert_not_stopped, prof_path, task_count, task_states, testdata};

/// Generous: a loaded 2-core machine can be slow to start an interpreter.
const WAIT: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

/// pyenv's 3.12, else Debian's 3.11; None skips the test (reported on stderr).
fn python() -> Option<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .filter(|r| !r.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let out = Command::new("pyenv").arg("root").output().ok()?;
            let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (out.status.success() && !s.is_empty()).then(|| PathBuf::from(s))
        })
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".pyenv")
        });
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("3.12.") && !name.ends_with('t')
        })
        .map(|e| e.path().join("bin/python3"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    let py = found
        .pop()
        .or_else(|| Some(PathBuf::from("/usr/bin/python3.11")).filter(|p| p.exists()));
    if py.is_none() {
        eprintln!("skipped: neither pyenv 3.12 nor /usr/bin/python3.11 found");
    }
    py
}

/// Kills a pid on drop (a command prof launched, or prof itself, should either outlive
/// a failing test), if its command line still contains `marker`: the pid may have been
/// reused since.
struct KillOnDrop(u32, &'static str);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let KillOnDrop(pid, marker) = *self;
        if std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The target of the attach tests, running until killed (or for 300 s).
fn start_target(py: &Path) -> Group {
    let mut cmd = Command::new(py);
    cmd.arg(testdata().join("top_busy.py"))
        .arg("300")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let group = Group::spawn(&mut cmd);
    // Main thread and both workers.
    let deadline = Instant::now() + WAIT;
    while task_count(group.pid()) < 3 {
        assert!(
            Instant::now() < deadline,
            "the target never started its threads"
        );
        thread::sleep(Duration::from_millis(20));
    }
    group
}

fn alive(pid: u32) -> bool {
    task_states(pid)
        .first()
        .is_some_and(|&(_, s)| s != 'Z' && s != 'X')
}

/// The number after `label ` on the screen.
fn figure(screen: &str, label: &str) -> f64 {
    let at = screen
        .find(&format!("{label} "))
        .unwrap_or_else(|| panic!("no {label:?} on the screen:\n{screen}"));
    screen[at + label.len() + 1..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?}:\n{screen}"))
}

/// The table's column `col` (0 = %Own, 1 = %Total) for every row on screen.
fn column(screen: &str, col: usize) -> Vec<f64> {
    screen
        .lines()
        .skip_while(|l| !l.contains("Function ("))
        .skip(1)
        .filter_map(|l| {
            l.split_whitespace()
                .nth(col)?
                .strip_suffix('%')?
                .parse()
                .ok()
        })
        .collect()
}

fn assert_descending(v: &[f64], screen: &str) {
    assert!(v.len() >= 3, "too few rows:\n{screen}");
    assert!(
        v.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {v:?}\n{screen}"
    );
}

/// The text after `Showing ` on the header's third line.
fn showing(screen: &str) -> String {
    screen
        .lines()
        .find_map(|l| l.strip_prefix("Showing "))
        .map(|rest| rest.split("   ").next().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// After prof has gone: the normal screen, a visible cursor, a cooked terminal, a prompt.
fn assert_terminal_restored(tmux: &Tmux) {
    assert_eq!(tmux.var("alternate_on"), "0", "alternate screen left on");
    assert_eq!(tmux.var("cursor_flag"), "1", "cursor left hidden");
    tmux.type_line("echo \"STTY:$(stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|isig|echo)' | tr '\\n' ' ')\"");
    let s = tmux.wait_for("the terminal modes and a prompt", |s| {
        let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        s.lines().any(|l| l.starts_with("STTY:") && l.len() > 6) && last.starts_with("prompt$")
    });
    let modes = s.lines().find(|l| l.starts_with("STTY:")).unwrap();
    for mode in ["icanon", "isig", "echo"] {
        assert!(
            modes
                .split_whitespace()
                .any(|m| m.trim_start_matches("STTY:") == mode),
            "{mode} not restored: {modes}"
        );
    }
}

#[test]
fn attach_keys_and_terminal_restored() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    let target = start_target(&py);
    let pid = target.pid();
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "{} top -p {pid} -r 250 --delay 0.25; echo prof-exit=$?",
        prof_path()
    ));
    let s = tmux.wait_for("both busy functions", |s| {
        s.contains("crunch_alpha (top_busy.py)") && s.contains("crunch_beta (top_busy.py)")
    });
    assert_eq!(tmux.var("alternate_on"), "1", "not on the alternate screen");
    assert!(s.contains(&format!("pid {pid}")), "{s}");
    assert!(s.contains("Python 3."), "{s}");
    assert!(s.contains("of 250 Hz"), "{s}");
    assert!(s.contains("Showing all threads"), "{s}");

    // Sorting: the marked column is in descending order.
    tmux.keys(&["2"]);
    let s = tmux.wait_for("sorted by %Total", |s| s.contains("%Total▼"));
    assert_descending(&column(&s, 1), &s);
    tmux.keys(&["s", "s", "s"]);
    let s = tmux.wait_for("sorted by %Own (s wraps)", |s| s.contains("%Own▼"));
    assert_descending(&column(&s, 0), &s);

    // Filter: typed live, kept with Enter, cleared with Escape.
    tmux.keys(&["/"]);
    tmux.run(&["send-keys", "-t", "main", "-l", "ALPHA"]);
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("the filter applied", |s| {
        s.contains("Filter \"ALPHA\"") && s.contains("crunch_alpha") && !s.contains("crunch_beta")
    });
    assert!(s.contains("alpha_loop"), "{s}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the filter cleared", |s| {
        !s.contains("Filter \"") && s.contains("crunch_beta")
    });

    // Threads: one at a time by name, then all again.
    let mut seen = Vec::new();
    for _ in 0..8 {
        let before = showing(&tmux.screen());
        tmux.keys(&["t"]);
        let s = tmux.wait_for("the next thread", |s| showing(s) != before);
        let now = showing(&s);
        if now == "thread beta-thread" {
            assert!(
                s.contains("crunch_beta") && !s.contains("crunch_alpha"),
                "{s}"
            );
            assert!(s.contains("Threads 1"), "{s}");
        }
        if now == "thread alpha-thread" {
            assert!(
                s.contains("crunch_alpha") && !s.contains("crunch_beta"),
                "{s}"
            );
        }
        if now.starts_with("all threads") {
            break;
        }
        seen.push(now);
    }
    for name in ["thread alpha-thread", "thread beta-thread"] {
        assert!(seen.iter().any(|s| s == name), "{name} not in {seen:?}");
    }

    // Pause: the numbers stop while sampling goes on; resuming shows the gap filled.
    tmux.keys(&["Space"]);
    let s = tmux.wait_for("the pause", |s| s.contains("PAUSED"));
    let frozen = figure(&s, "Samples");
    thread::sleep(Duration::from_millis(1200));
    let s = tmux.screen();
    assert_eq!(
        figure(&s, "Samples"),
        frozen,
        "the display moved while paused:\n{s}"
    );
    tmux.keys(&["Space"]);
    let s = tmux.wait_for("the resume", |s| !s.contains("PAUSED"));
    // 1.2 s at 250 Hz with at least one busy thread: far more than 100 new samples.
    assert!(figure(&s, "Samples") > frozen + 100.0, "{s}");

    // Callers and callees of the top row, and back.
    tmux.keys(&["Home", "Enter"]);
    let s = tmux.wait_for("callers and callees", |s| {
        s.contains("Callers and callees of")
    });
    assert!(s.contains("Called by") && s.contains("Calls ("), "{s}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the table again", |s| s.contains("Function (file)"));

    // Lines, then the help.
    tmux.keys(&["l"]);
    tmux.wait_for("one row per line", |s| s.contains("Function (file:line)"));
    tmux.keys(&["?"]);
    tmux.wait_for("the help", |s| s.contains("prof top keys"));
    tmux.keys(&["x"]);
    tmux.wait_for("the help closed", |s| !s.contains("prof top keys"));

    // Reset: the sample count starts over.
    let before = figure(&tmux.screen(), "Samples");
    tmux.keys(&["r"]);
    let s = tmux.wait_for("the reset", |s| figure(s, "Samples") < before);
    assert!(figure(&s, "Elapsed") < 5.0, "{s}");

    tmux.keys(&["q"]);
    tmux.wait_for("prof's exit", |s| s.contains("prof-exit=0"));
    assert_terminal_restored(&tmux);
    assert!(alive(pid), "the target died");
    assert_not_stopped(pid, "prof top -p");
}

#[test]
fn launch_mode_logs_output_keeps_last_data_and_passes_exit_code() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "{} top -r 250 --delay 0.25 -- {} {} 5 7; echo prof-exit=$?",
        prof_path(),
        py.display(),
        testdata().join("top_busy.py").display()
    ));
    let s = tmux.wait_for("both busy functions", |s| {
        s.contains("crunch_alpha") && s.contains("crunch_beta")
    });
    let child = figure(&s, "pid") as u32;
    let _guard = KillOnDrop(child, "top_busy");
    assert!(s.contains("/prof-top-"), "the log file is not named:\n{s}");
    let s = tmux.wait_for("the target's exit", |s| {
        s.contains("target exited (code 7)")
    });
    // The command printed all along, but not on the screen; the last data stays.
    assert!(
        !s.contains("top_busy line") && !s.contains("top_busy stderr"),
        "{s}"
    );
    assert!(
        s.contains("crunch_alpha") && s.contains("crunch_beta"),
        "{s}"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(tmux.var("alternate_on"), "1", "prof left before q");

    tmux.keys(&["q"]);
    let s = tmux.wait_for("prof's exit", |s| s.contains("prof-exit=7"));
    assert_terminal_restored(&tmux);
    let log = s
        .split("the command's output is in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the summary does not name the log:\n{s}"));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    assert!(
        text.contains("top_busy line 0") && text.contains("top_busy stderr 0"),
        "{log}: {text:?}"
    );
}

#[test]
fn quit_ends_a_launched_command() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "{} top --delay 0.25 -- {} {} 300; echo prof-exit=$?",
        prof_path(),
        py.display(),
        testdata().join("top_busy.py").display()
    ));
    let s = tmux.wait_for("the busy functions", |s| s.contains("crunch_alpha"));
    let child = figure(&s, "pid") as u32;
    let _guard = KillOnDrop(child, "top_busy");
    assert!(alive(child));
    tmux.keys(&["C-c"]);
    // Ctrl-C is a key in raw mode: prof ends the command itself (SIGTERM: 128+15).
    let s = tmux.wait_for("prof's exit", |s| {
        s.lines().any(|l| l.starts_with("prof-exit="))
    });
    assert!(s.contains("prof-exit=143"), "{s}");
    assert!(!alive(child), "the launched command is still running");
    assert_terminal_restored(&tmux);
    let log = s
        .split("the command's output is in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    if let Some(log) = log {
        let _ = std::fs::remove_file(log);
    }
}

#[test]
fn sigterm_restores_the_terminal() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    let target = start_target(&py);
    let pid = target.pid();
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "{} top -p {pid} --delay 0.25; echo prof-exit=$?",
        prof_path()
    ));
    tmux.wait_for("the busy functions", |s| s.contains("crunch_alpha"));
    let shell: u32 = tmux.var("pane_pid").parse().expect("pane pid");
    let prof = child_named(shell, "prof").expect("prof is not the shell's child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(prof as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    tmux.wait_for("prof's exit", |s| s.contains("prof-exit=0"));
    assert_terminal_restored(&tmux);
    assert!(alive(pid), "the target died");
    assert_not_stopped(pid, "prof top after SIGTERM");
}

/// A closed terminal window (the pane's terminal hangs up): prof leaves, promptly and
/// without spinning, and the target runs on.
#[test]
fn terminal_hangup_ends_prof() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    let target = start_target(&py);
    let pid = target.pid();
    let tmux = Tmux::start();
    // exec: prof is the pane's only process, so the hang-up reaches it and nothing else.
    tmux.type_line(&format!("exec {} top -p {pid} --delay 0.25", prof_path()));
    tmux.wait_for("the busy functions", |s| s.contains("crunch_alpha"));
    let prof: u32 = tmux.var("pane_pid").parse().expect("pane pid");
    assert!(
        std::fs::read_to_string(format!("/proc/{prof}/comm")).is_ok_and(|c| c.trim() == "prof"),
        "the pane does not run prof"
    );
    let _guard = KillOnDrop(prof, "prof");
    tmux.run(&["kill-pane", "-t", "main"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(prof) {
        assert!(
            Instant::now() < deadline,
            "prof still running 10 s after its terminal hung up: {:?}",
            task_states(prof)
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(alive(pid), "the target died");
    assert_not_stopped(pid, "prof top after a hang-up");
}

/// At 1000 Hz, drawing must not cost the sampler: top achieves what record achieves.
/// Both sample the same target over the same seconds (top is reset as record starts),
/// so that the machine's load, whatever it is, weighs on both alike. For that, record runs
/// in a tmux window of its own, as top does in its pane: the kernel's autogroups share
/// the CPU between sessions first, so a record started from the test's session competed
/// with whatever else ran there, and one session's luck against another's (measured under
/// load: 612-786 Hz from the test's session, 912-968 Hz from a session of its own) decided
/// the comparison, not prof. A shared machine's noise still weighs on one run: a second
/// run is made before failing, and a top whose drawing cost ticks falls behind in both.
#[test]
fn top_samples_as_fast_as_record() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    let target = start_target(&py);
    let pid = target.pid();
    let tmux = Tmux::start();
    // A fast refresh, to make drawing as costly as it gets.
    tmux.type_line(&format!(
        "{} top -p {pid} -r 1000 --delay 0.1; echo prof-exit=$?",
        prof_path()
    ));
    tmux.wait_for("the busy functions", |s| s.contains("crunch_alpha"));
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for attempt in 0..2 {
        tmux.keys(&["r"]);
        let path = |name: &str| dir.path().join(format!("{name}{attempt}"));
        let (out, err, code) = (path("p.txt"), path("stderr"), path("code"));
        let record = format!(
            "{} record -p {pid} -r 1000 -d 5 -f raw -o {} 2> {}; echo $? > {}.tmp; mv {}.tmp {}",
            prof_path(),
            out.display(),
            err.display(),
            code.display(),
            code.display(),
            code.display()
        );
        let started = tmux.run(&["new-window", "-d", "-n", "record", &record]);
        assert!(started.status.success(), "tmux new-window: {started:?}");
        common::wait_for_file(&code, || None, "record in its own tmux window");
        let s = tmux.screen();
        let top_rate = figure(&s, "Rate");
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let status = std::fs::read_to_string(&code).unwrap_or_default();
        assert_eq!(status.trim(), "0", "record failed: {stderr}");
        let record_rate = stderr
            .split(" Hz achieved")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no achieved rate in {stderr:?}"));
        assert!(
            figure(&s, "Elapsed") >= 4.5,
            "top was not reset with record:\n{s}"
        );
        eprintln!("achieved at 1000 Hz: record {record_rate:.1} Hz, top {top_rate:.1} Hz");
        // Equal up to the noise of a shared machine.
        if top_rate >= record_rate * 0.9 {
            break;
        }
        runs.push(format!("top {top_rate} Hz, record {record_rate} Hz:\n{s}"));
    }
    tmux.keys(&["q"]);
    tmux.wait_for("prof's exit", |s| s.contains("prof-exit=0"));
    assert!(
        runs.len() < 2,
        "top fell behind record in both runs:\n{}",
        runs.join("\n")
    );
}

/// The first child of `parent` whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
            if comm == name && ppid == Some(parent) {
                return Some(pid);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `top --native`: C functions (DWARF gives them `.c` files) take their own time next to
/// the Python ones; `n` hides them (their time goes to the Python callers) and shows them
/// again.
#[test]
fn native_frames_shown_and_hidden_with_n() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    let target = start_target(&py);
    let pid = target.pid();
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "{} top --native -p {pid} -r 200 --delay 0.25; echo prof-exit=$?",
        prof_path()
    ));
    let native_row = |s: &str| s.lines().any(|l| l.contains(".c)") || l.contains(".h)"));
    let s = tmux.wait_for("a native function among the Python ones", |s| {
        s.contains("Native shown") && s.contains("crunch_beta") && native_row(s)
    });
    assert!(s.contains(&format!("pid {pid}")), "{s}");
    tmux.keys(&["n"]);
    // A capture of the pane can land in the middle of a redraw (the header new, the lower
    // rows still the last frame's): the rows must go, not be gone at the first capture.
    let s = tmux.wait_for("native frames hidden, and no native row left", |s| {
        s.contains("Native hidden") && !native_row(s)
    });
    assert!(s.contains("crunch_beta"), "{s}");
    tmux.keys(&["n"]);
    tmux.wait_for("native frames shown again", |s| {
        s.contains("Native shown") && native_row(s)
    });
    tmux.keys(&["q"]);
    tmux.wait_for("prof's exit", |s| s.contains("prof-exit=0"));
    assert_not_stopped(pid, "top_busy.py");
}

#[test]
fn top_follows_a_target_that_execs() {
    crate::skip_without_live_targets!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(py), true) = (python(), have_tmux()) else {
        return;
    };
    // rec_exec.py runs phase_a for 1.5 s, then execs the same interpreter on itself (same
    // pid), which runs phase_b for 60 s.
    let dir = tempfile::tempdir().expect("tempdir");
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "{} top --delay 0.25 -- {} {} {} 1.5 60; echo prof-exit=$?",
        prof_path(),
        py.display(),
        testdata().join("rec_exec.py").display(),
        dir.path().display()
    ));
    let s = tmux.wait_for("phase_a", |s| s.contains("phase_a"));
    let child = figure(&s, "pid") as u32;
    let _guard = KillOnDrop(child, "rec_exec");
    // Before execs were followed, phase_b never showed and Errors grew by a tick's worth
    // every tick.
    let s = tmux.wait_for("phase_b, after the exec", |s| s.contains("phase_b"));
    assert!(
        dir.path().join("phase2.json").exists(),
        "phase_b on the screen before the target wrote phase2.json:\n{s}"
    );
    thread::sleep(Duration::from_millis(1000));
    let s = tmux.screen();
    assert!(s.contains("phase_b"), "{s}");
    let (errors, samples) = (figure(&s, "Errors"), figure(&s, "Samples"));
    assert!(
        errors * 20.0 <= samples,
        "{errors} errors for {samples} samples:\n{s}"
    );
    tmux.keys(&["q"]);
    tmux.wait_for("prof's exit", |s| {
        s.lines().any(|l| l.starts_with("prof-exit="))
    });
    assert!(!alive(child), "the launched command is still running");
    assert_terminal_restored(&tmux);
}
