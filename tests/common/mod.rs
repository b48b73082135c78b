//! Harness for prof's integration tests.
//!
//! Every check compares prof's output with what the target process recorded
//! about itself (`testdata/truth.py`), never with a stored answer, and runs on
//! every interpreter that can be found. Processes are started in their own
//! process group and killed with it on drop, so a failing test leaves nothing
//! running.

// Each test binary uses its own subset of the harness.
#![allow(dead_code)]

pub mod tmux;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;

/// Generous: the machine is small and the suite runs targets in parallel.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const PROF_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits up to [`READY_TIMEOUT`] for `path` to appear; fails early with `gone()`'s reason
/// (the process the file depends on exited) if it gives one.
pub fn wait_for_file(path: &Path, mut gone: impl FnMut() -> Option<String>, what: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !path.exists() {
        if let Some(why) = gone() {
            panic!("{what}: {} never appeared: {why}", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} not there after {READY_TIMEOUT:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Emulation

/// Why live targets cannot be profiled here, if they cannot: the tests run under an
/// emulator (qemu-user for a cross build), which has no ptrace, cannot run the target
/// interpreters (built for the host machine) as prof's own architecture, and cannot run
/// prof's binary as a child. Detected by comparing the architecture the tests were built
/// for with `uname -m` run as a child: an emulator fakes `uname(2)` for its guest, but
/// the `uname` program is a host binary the kernel runs natively.
pub fn live_targets_unavailable() -> Option<String> {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WHY.get_or_init(|| {
        let out = Command::new("uname").arg("-m").output().ok()?;
        let machine = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let arch = std::env::consts::ARCH;
        (out.status.success() && !machine.is_empty() && machine != arch)
            .then(|| format!("built for {arch}, running emulated on {machine}"))
    })
    .clone()
}

/// First line of every test that needs a live target or runs prof's binary: returns from
/// the test with a notice (shown even for passing tests) when [`live_targets_unavailable`]
/// says so.
#[macro_export]
macro_rules! skip_without_live_targets {
    () => {
        if let Some(why) = $crate::common::live_targets_unavailable() {
            fn f() {}
            let name = std::any::type_name_of_val(&f).trim_end_matches("::f");
            // Straight to stderr, past libtest's capture: a skip must show in every run.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("skipped: {name} needs ptrace, not available under qemu ({why})\n")
                    .as_bytes(),
            );
            return;
        }
    };
}

// ---------------------------------------------------------------------------
// Interpreters

#[derive(Clone, Debug)]
pub struct Python {
    /// e.g. `pyenv-3.12.1`, `debian-3.11`, `debian-sid-3.15`.
    pub name: String,
    pub path: PathBuf,
    pub version: (u32, u32),
}

impl Python {
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version >= (major, minor)
    }
}

/// Minor versions that must be present under pyenv; anything else found
/// there (in 3.7..=3.15) is tested too.
const PYENV_EXPECTED: std::ops::RangeInclusive<u32> = 7..=13;

fn pyenv_root() -> PathBuf {
    if let Some(root) = std::env::var_os("PYENV_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    if let Ok(out) = Command::new("pyenv")
        .arg("root")
        .stderr(Stdio::null())
        .output()
    {
        let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !root.is_empty() {
            return PathBuf::from(root);
        }
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".pyenv")
}

/// `3.12.1` -> 12, `3.13.0t` -> 13; None for 2.x, other majors, or junk.
fn pyenv_minor(dir_name: &str) -> Option<u32> {
    let rest = dir_name.strip_prefix("3.")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The newest interpreter found, for a test that needs one; `None` (after a printed
/// notice naming `test`) when there is none.
pub fn newest_python(test: &str) -> Option<Python> {
    let py = pythons().into_iter().max_by_key(|p| p.version);
    if py.is_none() {
        eprintln!("skipped: {test}: no Python interpreter found");
    }
    py
}

/// Every interpreter to test, in a stable order. Missing ones are reported
/// by name on stderr (a failure instead with `PROF_TEST_REQUIRE_ALL=1`).
/// `PROF_TEST_PYTHONS=pyenv-3.12,sid-3.15` narrows the run to interpreters
/// whose name contains one of the comma-separated words.
pub fn pythons() -> Vec<Python> {
    let mut found = Vec::new();
    let mut missing = Vec::new();

    let versions = pyenv_root().join("versions");
    let mut pyenv: Vec<(u32, String, PathBuf)> = Vec::new();
    if let Ok(entries) = fs::read_dir(&versions) {
        for entry in entries.flatten() {
            let dir = entry.file_name().to_string_lossy().into_owned();
            let Some(minor) = pyenv_minor(&dir) else {
                continue;
            };
            if !(7..=15).contains(&minor) {
                continue;
            }
            let bin = ["python3", "python"]
                .iter()
                .map(|b| entry.path().join("bin").join(b))
                .find(|p| p.exists());
            match bin {
                Some(bin) => pyenv.push((minor, dir, bin)),
                None => missing.push(format!(
                    "pyenv-{dir} has no bin/python3 in {}",
                    entry.path().display()
                )),
            }
        }
    }
    pyenv.sort();
    for minor in PYENV_EXPECTED {
        if !pyenv.iter().any(|(m, _, _)| *m == minor) {
            missing.push(format!(
                "pyenv-3.{minor} not found at {}/3.{minor}*",
                versions.display()
            ));
        }
    }
    for (minor, dir, bin) in pyenv {
        found.push(Python {
            name: format!("pyenv-{dir}"),
            path: bin,
            version: (3, minor),
        });
    }

    let fixed = [
        ("debian-3.11", "/usr/bin/python3.11", 11),
        (
            "debian-sid-3.13",
            "/opt/prof-pythons/debian-sid/bin/python3.13",
            13,
        ),
        (
            "debian-sid-3.14",
            "/opt/prof-pythons/debian-sid/bin/python3.14",
            14,
        ),
        (
            "debian-sid-3.15",
            "/opt/prof-pythons/debian-sid/bin/python3.15",
            15,
        ),
    ];
    for (name, path, minor) in fixed {
        if Path::new(path).exists() {
            found.push(Python {
                name: name.into(),
                path: path.into(),
                version: (3, minor),
            });
        } else {
            missing.push(format!("{name} not found at {path}"));
        }
    }

    for m in &missing {
        eprintln!("skipped: {m}");
    }
    if std::env::var_os("PROF_TEST_REQUIRE_ALL").is_some_and(|v| v == "1") {
        assert!(
            missing.is_empty(),
            "PROF_TEST_REQUIRE_ALL=1 but missing: {missing:?}"
        );
    }

    if let Ok(filter) = std::env::var("PROF_TEST_PYTHONS") {
        let words: Vec<&str> = filter
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect();
        found.retain(|py| {
            let keep = words.iter().any(|w| py.name.contains(w));
            if !keep {
                eprintln!(
                    "skipped: {} (not selected by PROF_TEST_PYTHONS={filter})",
                    py.name
                );
            }
            keep
        });
    }
    found
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(non-string panic)".into()
    }
}

/// Runs `check` once per interpreter. A failure on one interpreter does not
/// hide the others: all run, then the test fails listing every interpreter
/// that failed (the full messages were already printed as they happened).
pub fn for_each_python(check: impl Fn(&Python)) {
    let pythons = pythons();
    assert!(
        !pythons.is_empty(),
        "no Python interpreter found: nothing was tested"
    );
    run_each("", &pythons, check);
}

/// Run `check` on each of `pythons`, all of them even when some fail, printing
/// `<label>ok:`/`<label>FAILED:` per interpreter; then fail listing every failure.
pub fn run_each(label: &str, pythons: &[Python], check: impl Fn(&Python)) {
    let mut failed = Vec::new();
    for py in pythons {
        let start = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| check(py)));
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => eprintln!("{label}ok: {} ({secs:.1}s)", py.name),
            Err(payload) => {
                let msg = panic_text(payload.as_ref());
                let first = msg.lines().next().unwrap_or("").to_string();
                eprintln!("{label}FAILED: {} ({secs:.1}s): {first}", py.name);
                failed.push(format!("{}: {first}", py.name));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{label}{} of {} interpreters failed:\n  {}",
        failed.len(),
        pythons.len(),
        failed.join("\n  ")
    );
}

/// [`run_each`] with up to `workers` interpreters at a time, each on its own thread: for
/// checks that mostly wait on targets and prof. Results are reported as they finish.
pub fn run_each_parallel(
    label: &str,
    pythons: &[Python],
    workers: usize,
    check: impl Fn(&Python) + Sync,
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(py) = pythons.get(i) else { return };
                    let start = Instant::now();
                    let result = panic::catch_unwind(AssertUnwindSafe(|| check(py)));
                    let secs = start.elapsed().as_secs_f64();
                    match result {
                        Ok(()) => eprintln!("{label}ok: {} ({secs:.1}s)", py.name),
                        Err(payload) => {
                            let msg = panic_text(payload.as_ref());
                            let first = msg.lines().next().unwrap_or("").to_string();
                            eprintln!("{label}FAILED: {} ({secs:.1}s): {msg}", py.name);
                            failed.lock().unwrap().push(format!("{}: {first}", py.name));
                        }
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "{label}{} of {} interpreters failed:\n  {}",
        failed.len(),
        pythons.len(),
        failed.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Process groups

/// A child in its own process group; dropping it SIGKILLs the whole group and
/// reaps the child, even while a test is unwinding.
pub struct Group {
    child: Child,
}

impl Group {
    pub fn spawn(cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Group { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if the child has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Ground truth written by testdata/truth.py

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TruthFrame(pub String, pub String, pub i64);

#[derive(Debug, Clone, Deserialize)]
pub struct TruthThread {
    pub name: String,
    pub native_id: u64,
    /// Outermost first, up to and including the frame that called park.
    pub frames: Vec<TruthFrame>,
    /// The frames inside park (outermost first) that prof must show below.
    pub park_frames: Vec<TruthFrame>,
    /// sleep | lock | socket | select | busy | busy_c
    pub park: String,
    /// For frames with known locals: name -> repr, where the repr is stable.
    #[serde(default)]
    pub locals: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub args: Vec<String>,
}

impl TruthThread {
    /// The whole stack prof should report, outermost first.
    pub fn expected(&self) -> Vec<TruthFrame> {
        self.frames
            .iter()
            .chain(&self.park_frames)
            .cloned()
            .collect()
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.park.as_str(), "sleep" | "lock" | "socket" | "select")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Truth {
    pub pid: u32,
    pub version: Vec<u32>,
    pub executable: String,
    pub gil: bool,
    pub writer_stays: bool,
    /// Keyed by threading.get_ident(), as a decimal string.
    pub threads: BTreeMap<String, TruthThread>,
}

impl Truth {
    pub fn thread(&self, ident: u64) -> Option<&TruthThread> {
        self.threads.get(&ident.to_string())
    }

    pub fn idents(&self) -> BTreeSet<u64> {
        self.threads
            .keys()
            .map(|k| k.parse().expect("thread ident"))
            .collect()
    }

    pub fn version_string(&self) -> String {
        self.version
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

// ---------------------------------------------------------------------------
// prof's JSON output (py-spy's schema)

#[derive(Debug, Clone, Deserialize)]
pub struct Thread {
    pub pid: i64,
    pub thread_id: u64,
    pub thread_name: Option<String>,
    pub os_thread_id: Option<u64>,
    pub active: bool,
    pub owns_gil: bool,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Frame {
    pub name: String,
    pub filename: String,
    pub module: Option<String>,
    pub short_filename: String,
    pub line: i64,
    pub locals: Option<Vec<Local>>,
    /// Only with `--native`.
    #[serde(default)]
    pub native: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Local {
    pub name: String,
    #[serde(default)]
    pub arg: Option<bool>,
    #[serde(default)]
    pub repr: Option<String>,
}

// ---------------------------------------------------------------------------
// Running prof

/// `py` in a clean environment: no bytecode files written, nothing inherited from
/// PYTHONPATH/PYTHONHOME, stdin from /dev/null.
pub fn python_command(py: &Python) -> Command {
    let mut cmd = Command::new(&py.path);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .stdin(Stdio::null());
    cmd
}

/// Compile `src` into `out` with gcc and `args`; a failed build fails the test with gcc's
/// message.
pub fn gcc(args: &[&str], src: &Path, out: &Path) {
    let cc = Command::new("gcc")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .expect("gcc must be installed");
    assert!(
        cc.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
}

/// Build the C `source` with gcc and `flags` into `dir/name` (a program, or a library with
/// `-shared`), its source written beside it as `name.c`; returns the built file's path.
pub fn build_c(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    fs::write(&src, source).unwrap();
    gcc(flags, &src, &out);
    out
}

/// Build the C program `source` in `dir` with gcc and `flags`, and start it with the path
/// of a file it must write when ready as its argument. Returns the program (in its own
/// process group) and that path.
pub fn spawn_c_program(dir: &Path, name: &str, source: &str, flags: &[&str]) -> (Group, PathBuf) {
    let bin = build_c(dir, name, source, flags);
    let ready = dir.join(format!("{name}.ready"));
    let group = Group::spawn(
        Command::new(&bin)
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    (group, ready)
}

pub fn prof_path() -> &'static str {
    env!("CARGO_BIN_EXE_prof")
}

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Runs prof with a deadline; a prof that outlives it is killed and the test
/// fails, since hanging is never an acceptable answer.
pub fn run_prof(args: &[&str]) -> Output {
    let mut cmd = Command::new(prof_path());
    cmd.args(args);
    run_with_deadline(&mut cmd, args)
}

/// [`run_prof`] for a command that runs prof in some other way (as another user, under a
/// pty, through `exec` in a shell); `args` are for messages.
pub fn run_with_deadline(cmd: &mut Command, args: &[&str]) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut group = Group::spawn(cmd);
    let mut out = group.child.stdout.take().expect("stdout");
    let mut err = group.child.stderr.take().expect("stderr");
    // Drained concurrently so a chatty prof cannot block on a full pipe.
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + PROF_TIMEOUT;
    let status = loop {
        if let Some(status) = group.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    drop(group);
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "prof {args:?} still running after {PROF_TIMEOUT:?}; killed it\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

pub fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "prof {}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `(samples, errors)` of record's summary line in `stderr`, if it has one.
pub fn summary_counts(stderr: &str) -> Option<(u64, u64)> {
    let re = regex::Regex::new(r"prof: (\d+) samples from .*?, (\d+) errors").unwrap();
    let c = re.captures(stderr)?;
    Some((c[1].parse().unwrap(), c[2].parse().unwrap()))
}

/// `prof dump -p PID --json`, which must succeed and parse.
pub fn dump_json(pid: u32) -> Vec<Thread> {
    dump_json_with(pid, &[])
}

pub fn dump_json_with(pid: u32, extra: &[&str]) -> Vec<Thread> {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-p", &pid, "--json"];
    args.extend_from_slice(extra);
    let out = run_prof(&args);
    assert!(
        out.status.success(),
        "prof failed\n{}",
        describe(&args, &out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "prof's JSON does not match the schema: {e}\n{}",
            describe(&args, &out)
        )
    })
}

/// Asserts that an error run printed exactly one non-empty line on stderr.
pub fn assert_one_line_error(args: &[&str], out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1\n{}",
        describe(args, out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.trim_end_matches('\n').split('\n').collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "expected one line on stderr, got {}\n{}",
        lines.len(),
        describe(args, out)
    );
    assert!(
        !stderr.contains("panicked"),
        "prof panicked\n{}",
        describe(args, out)
    );
    lines[0].to_string()
}

// ---------------------------------------------------------------------------
// /proc checks

/// Every task of `pid` with its /proc directory (empty once the process is gone).
pub fn tasks(pid: u32) -> Vec<(u32, std::path::PathBuf)> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect()
}

/// State letter of every task of `pid` (empty once the process is gone).
pub fn task_states(pid: u32) -> Vec<(u32, char)> {
    let mut states = Vec::new();
    for (tid, dir) in tasks(pid) {
        let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // The command name may contain spaces and parentheses: skip past the
        // last ')'.
        if let Some(state) = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
        {
            states.push((tid, state));
        }
    }
    states
}

pub fn task_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// After prof has exited, no task of `pid` may stay stopped ('t' traced or
/// 'T' stopped). A short grace period absorbs the wake-up after detach.
pub fn assert_not_stopped(pid: u32, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let stopped: Vec<(u32, char)> = task_states(pid)
            .into_iter()
            .filter(|(_, s)| matches!(s, 't' | 'T'))
            .collect();
        if stopped.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let state = status
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("?");
            panic!(
                "{context}: process {pid} left stopped after prof exited ({state}); stopped tasks: {stopped:?}"
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Targets

/// A Python target from testdata/, parked and described by its ready.json.
pub struct Target {
    pub python: Python,
    pub script: String,
    pub pid: u32,
    pub truth: Truth,
    group: Group,
    // Declared last: dropped after the group is killed.
    pub dir: tempfile::TempDir,
}

impl Target {
    /// Starts `python -u testdata/<script>.py <outdir> [args]` and waits until
    /// it has written `<outdir>/ready.json` (and, unless the writer stays, until
    /// only the threads the file describes are left).
    pub fn start(python: &Python, script: &str, args: &[&str]) -> Target {
        let dir = tempfile::Builder::new()
            .prefix("prof-test-")
            .tempdir()
            .expect("tempdir");
        let path = testdata().join(format!("{script}.py"));
        let stdout = File::create(dir.path().join("target.stdout")).expect("stdout file");
        let stderr = File::create(dir.path().join("target.stderr")).expect("stderr file");
        let mut cmd = Command::new(&python.path);
        cmd.arg("-u")
            .arg(&path)
            .arg(dir.path())
            .args(args)
            // Keep testdata/ free of __pycache__ and other interpreters' paths out.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .env_remove("PYTHONSTARTUP")
            // Non-ASCII file names need a UTF-8 file system encoding on 3.7.
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut group = Group::spawn(&mut cmd);
        let pid = group.pid();
        let what = format!("[{}] {script}.py (pid {pid})", python.name);
        let ready = dir.path().join("ready.json");
        let output = |dir: &Path| {
            format!(
                "stdout:\n{}\nstderr:\n{}",
                fs::read_to_string(dir.join("target.stdout")).unwrap_or_default(),
                fs::read_to_string(dir.join("target.stderr")).unwrap_or_default()
            )
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready.exists() {
            if let Some(status) = group.try_wait() {
                panic!(
                    "{what} exited ({status}) before it was ready\n{}",
                    output(dir.path())
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what} not ready after {READY_TIMEOUT:?}\n{}",
                output(dir.path())
            );
            thread::sleep(Duration::from_millis(10));
        }
        let text = fs::read_to_string(&ready).expect("read ready.json");
        let truth: Truth = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: bad ready.json: {e}\n{text}"));
        assert_eq!(truth.pid, pid, "{what}: ready.json from another process");

        if !truth.writer_stays {
            // The writer thread exits right after writing; dumping before it is
            // gone would show a thread the file does not describe.
            let want = truth.threads.len();
            while task_count(pid) != want {
                if let Some(status) = group.try_wait() {
                    panic!(
                        "{what} exited ({status}) after it was ready\n{}",
                        output(dir.path())
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: {} tasks, expected {want}",
                    task_count(pid)
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        Target {
            python: python.clone(),
            script: script.into(),
            pid,
            truth,
            group,
            dir,
        }
    }

    pub fn what(&self) -> String {
        format!(
            "[{}] {}.py (pid {})",
            self.python.name, self.script, self.pid
        )
    }

    pub fn group(&mut self) -> &mut Group {
        &mut self.group
    }

    /// Wait (bounded) until every thread parked in a blocking call is off the CPU again.
    /// A previous dump stopped and resumed them; a resumed thread restarts its syscall and is
    /// briefly runnable, which on a loaded machine can last long enough to be seen.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let idle: Vec<u32> = self
            .truth
            .threads
            .values()
            .filter(|t| t.is_idle())
            .map(|t| t.native_id as u32)
            .collect();
        while Instant::now() < deadline {
            let states = task_states(self.pid);
            if idle
                .iter()
                .all(|tid| states.iter().any(|(t, s)| t == tid && *s != 'R'))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `prof dump -p PID --json [extra]`: must succeed, parse, and leave the
    /// target running.
    pub fn dump_json(&self, extra: &[&str]) -> Vec<Thread> {
        self.settle();
        let pid = self.pid.to_string();
        let mut args = vec!["dump", "-p", &pid, "--json"];
        args.extend_from_slice(extra);
        let out = run_prof(&args);
        assert_not_stopped(self.pid, &self.what());
        assert!(
            out.status.success(),
            "{}: prof failed\n{}",
            self.what(),
            describe(&args, &out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: prof's JSON does not match the schema: {e}\n{}",
                self.what(),
                describe(&args, &out)
            )
        })
    }

    /// `prof dump -p PID [extra]` as text.
    pub fn dump_text(&self, extra: &[&str]) -> String {
        self.settle();
        let pid = self.pid.to_string();
        let mut args = vec!["dump", "-p", &pid];
        args.extend_from_slice(extra);
        let out = run_prof(&args);
        assert_not_stopped(self.pid, &self.what());
        assert!(
            out.status.success(),
            "{}: prof failed\n{}",
            self.what(),
            describe(&args, &out)
        );
        String::from_utf8(out.stdout.clone()).unwrap_or_else(|e| {
            panic!(
                "{}: output is not UTF-8: {e}\n{}",
                self.what(),
                describe(&args, &out)
            )
        })
    }

    /// Threads are exactly the target's own, every stack matches frame for
    /// frame, and every thread reports the target's pid.
    pub fn assert_stacks(&self, dump: &[Thread]) {
        let mut problems = thread_set_problems(&self.truth, self.pid, dump);
        for t in dump {
            if let Some(truth) = self.truth.thread(t.thread_id)
                && let Some(p) = stack_problem(truth, t)
            {
                problems.push(p);
            }
        }
        self.fail_on(problems);
    }

    /// Names equal threading's names; os_thread_id equals the native id
    /// (required from 3.8, where threading exposes it; checked if given on 3.7).
    pub fn assert_identities(&self, dump: &[Thread]) {
        let mut problems = thread_set_problems(&self.truth, self.pid, dump);
        for t in dump {
            let Some(truth) = self.truth.thread(t.thread_id) else {
                continue;
            };
            if t.thread_name.as_deref() != Some(truth.name.as_str()) {
                problems.push(format!(
                    "thread {} \"{}\": prof's thread_name is {:?}",
                    t.thread_id, truth.name, t.thread_name
                ));
            }
            let required = self.python.at_least(3, 8);
            match t.os_thread_id {
                Some(tid) if tid == truth.native_id => {}
                None if !required => {}
                other => problems.push(format!(
                    "thread {} \"{}\": os_thread_id {:?}, native id is {}",
                    t.thread_id, truth.name, other, truth.native_id
                )),
            }
        }
        self.fail_on(problems);
    }

    /// Parked threads are idle and without the GIL; spinning threads are
    /// active; at most one thread owns the GIL, and when exactly one thread
    /// spins in Python (everything else blocked or spinning with the GIL
    /// released) that thread must be the owner.
    pub fn assert_activity(&self, dump: &[Thread]) {
        let mut problems = thread_set_problems(&self.truth, self.pid, dump);
        for t in dump {
            let Some(truth) = self.truth.thread(t.thread_id) else {
                continue;
            };
            let label = format!(
                "thread {} \"{}\" (parked in {})",
                t.thread_id, truth.name, truth.park
            );
            if truth.is_idle() && (t.active || t.owns_gil) {
                problems.push(format!(
                    "{label}: blocked, but active={} owns_gil={}",
                    t.active, t.owns_gil
                ));
            }
            if !truth.is_idle() && !t.active {
                problems.push(format!("{label}: spinning on a CPU, but active=false"));
            }
            if truth.park == "busy_c" && t.owns_gil {
                problems.push(format!(
                    "{label}: spins with the GIL released, but owns_gil=true"
                ));
            }
        }
        let owners: Vec<u64> = dump
            .iter()
            .filter(|t| t.owns_gil)
            .map(|t| t.thread_id)
            .collect();
        if self.truth.gil {
            if owners.len() > 1 {
                problems.push(format!("{} threads own the GIL: {owners:?}", owners.len()));
            }
            let spinners: Vec<u64> = self
                .truth
                .threads
                .iter()
                .filter(|(_, t)| t.park == "busy")
                .map(|(k, _)| k.parse().expect("ident"))
                .collect();
            if spinners.len() == 1 && owners != spinners {
                problems.push(format!(
                    "only thread {} runs Python, so it holds the GIL; prof says the owners are {owners:?}",
                    spinners[0]
                ));
            }
        }
        self.fail_on(problems);
    }

    /// The thread with known locals (mixed.py) shows them, with the reprs the target
    /// recorded and the right argument flags, in the frame that called park.
    pub fn assert_locals(&self, dump: &[Thread]) {
        let (ident, truth) = self
            .truth
            .threads
            .iter()
            .find(|(_, t)| t.locals.is_some())
            .expect("the target has a thread with known locals");
        let ident: u64 = ident.parse().expect("ident");
        let want = truth.locals.as_ref().expect("locals");
        let caller = truth.frames.last().expect("frames").clone();
        let thread = dump
            .iter()
            .find(|t| t.thread_id == ident)
            .unwrap_or_else(|| panic!("{}: thread {ident} not dumped", self.what()));
        let frame = thread
            .frames
            .iter()
            .find(|f| f.name == caller.1 && f.line == caller.2)
            .unwrap_or_else(|| panic!("{}: no frame {caller:?}", self.what()));
        let locals = frame.locals.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: no locals for {} with --locals",
                self.what(),
                frame.name
            )
        });
        let by_name: BTreeMap<&str, &Local> = locals.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut problems = Vec::new();
        for (name, repr) in want {
            match by_name.get(name.as_str()) {
                None => problems.push(format!("local {name:?} missing")),
                Some(local) => {
                    if let (Some(want), Some(have)) = (repr, &local.repr)
                        && want != have
                    {
                        problems.push(format!("local {name}: repr {have:?}, expected {want:?}"));
                    }
                    let is_arg = truth.args.contains(name);
                    if local.arg.is_some_and(|a| a != is_arg) {
                        problems.push(format!(
                            "local {name}: arg={:?}, expected {is_arg}",
                            local.arg
                        ));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{}: frame {}:\n  {}\nprof's locals: {locals:#?}",
            self.what(),
            frame.name,
            problems.join("\n  ")
        );
    }

    fn fail_on(&self, problems: Vec<String>) {
        if !problems.is_empty() {
            panic!(
                "{}: {} problem(s)\n{}",
                self.what(),
                problems.len(),
                problems.join("\n")
            );
        }
    }
}

/// The thread set must be exactly the target's, each thread once, all with
/// the target's pid.
fn thread_set_problems(truth: &Truth, pid: u32, dump: &[Thread]) -> Vec<String> {
    let mut problems = Vec::new();
    let want = truth.idents();
    let mut seen = BTreeSet::new();
    for t in dump {
        if t.pid != i64::from(pid) {
            problems.push(format!(
                "thread {}: pid {} (target is {pid})",
                t.thread_id, t.pid
            ));
        }
        if !seen.insert(t.thread_id) {
            problems.push(format!("thread {} listed more than once", t.thread_id));
        }
        if !want.contains(&t.thread_id) {
            problems.push(format!(
                "thread {} ({:?}) is not one of the target's threads; its stack:\n{}",
                t.thread_id,
                t.thread_name,
                format_prof_stack(&t.frames, None)
            ));
        }
    }
    for ident in want.difference(&seen) {
        let t = truth.thread(*ident).expect("known ident");
        problems.push(format!(
            "thread {ident} \"{}\" (native {}) is missing from prof's output",
            t.name, t.native_id
        ));
    }
    problems
}

fn format_truth_stack(frames: &[TruthFrame], mark: Option<usize>) -> String {
    let mut s = String::new();
    for (i, TruthFrame(file, name, line)) in frames.iter().enumerate() {
        let arrow = if Some(i) == mark { ">>" } else { "  " };
        let _ = writeln!(s, "    {arrow}{i:5}  {name} ({file}:{line})");
    }
    s
}

/// prof's frames, shown outermost first like the target's.
fn format_prof_stack(innermost_first: &[Frame], mark: Option<usize>) -> String {
    let mut s = String::new();
    for (i, f) in innermost_first.iter().rev().enumerate() {
        let arrow = if Some(i) == mark { ">>" } else { "  " };
        let _ = writeln!(
            s,
            "    {arrow}{i:5}  {} ({}:{})",
            f.name, f.filename, f.line
        );
    }
    s
}

/// None if prof's stack (reversed to outermost first) is exactly the frames
/// the target recorded, followed by the frames inside park.
pub fn stack_problem(truth: &TruthThread, got: &Thread) -> Option<String> {
    let want = truth.expected();
    let have: Vec<TruthFrame> = got
        .frames
        .iter()
        .rev()
        .map(|f| TruthFrame(f.filename.clone(), f.name.clone(), f.line))
        .collect();
    if want == have {
        return None;
    }
    let first = want
        .iter()
        .zip(&have)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(have.len()));
    let parked_from = truth.frames.len();
    Some(format!(
        "thread {} \"{}\" (parked in {}): stack differs at outermost-first index {first}; \
         target has {} frames (index {parked_from}.. are inside park), prof has {}\n  \
         target (outermost first):\n{}  prof (outermost first):\n{}",
        got.thread_id,
        truth.name,
        truth.park,
        want.len(),
        have.len(),
        format_truth_stack(&want, Some(first)),
        format_prof_stack(&got.frames, Some(first)),
    ))
}

// ---------------------------------------------------------------------------
// Text output

#[derive(Debug, Clone)]
pub struct TextThread {
    pub id: String,
    pub status: String,
    pub name: Option<String>,
    /// Innermost first: (function, file, line).
    pub frames: Vec<(String, String, i64)>,
}

#[derive(Debug, Clone)]
pub struct TextDump {
    pub process_line: String,
    pub version_line: String,
    pub threads: Vec<TextThread>,
}

/// Parses `prof dump` text: a process line, a Python version line, then per
/// thread `Thread <id> (<status>): "<name>" [<state>]` followed by `    function (file:line)`
/// lines. Blank lines may separate blocks; anything else is an error.
pub fn parse_text_dump(text: &str) -> Result<TextDump, String> {
    // The thread's state (`[io recv socket 127.0.0.1:80]`) may follow the name.
    let header =
        regex::Regex::new(r#"^Thread (\S+) \(([^)]*)\)(?:: "(.*?)")?(?: \[[^\]]*\])?$"#).unwrap();
    // The name ends at the first " (" (qualnames have no parentheses); the
    // file may contain anything, so the line number is taken from the end.
    let frame = regex::Regex::new(r"^    (\S.*?) \((.*):(\d+)\)$").unwrap();
    let mut lines = text.lines();
    let process_line = lines.next().ok_or("empty output")?.to_string();
    let version_line = lines.next().ok_or("no Python version line")?.to_string();
    let mut threads: Vec<TextThread> = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = header.captures(line) {
            threads.push(TextThread {
                id: c[1].to_string(),
                status: c[2].to_string(),
                name: c.get(3).map(|m| m.as_str().to_string()),
                frames: Vec::new(),
            });
        } else if let Some(c) = frame.captures(line) {
            let t = threads
                .last_mut()
                .ok_or_else(|| format!("frame before any thread: {line:?}"))?;
            t.frames
                .push((c[1].to_string(), c[2].to_string(), c[3].parse().unwrap()));
        } else {
            return Err(format!("line {}: unexpected {line:?}", i + 3));
        }
    }
    Ok(TextDump {
        process_line,
        version_line,
        threads,
    })
}
