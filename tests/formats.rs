//! Where `prof record` writes and what reads it back.
//!
//! - `-o` to a character device, a FIFO or a symlink leaves the node or link as it was and
//!   writes through it; a killed recording leaves no file behind.
//! - Chrome traces are loaded by Chrome DevTools' own trace engine (npm
//!   `@paulirish/trace_engine`, which `.ci/run` installs into `.ci/node`; elsewhere set
//!   `PROF_TRACE_ENGINE` to the package's directory) through `testdata/trace_engine_check.mjs`.
//! - pprof files are read by `go tool pprof`.
//!
//! The target is `testdata/fmt_bursts.py`, launched by prof: one thread alternating CPU
//! bursts and sleeps, which describes its functions in `ready.json`. A missing tool (node,
//! the trace engine, go) or a missing right (mknod) skips its check with a printed notice;
//! `PROF_REQUIRE_TRACE_ENGINE` and `PROF_REQUIRE_GO` make those two failures instead.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Group, Python, READY_TIMEOUT, describe, prof_path, run_prof, testdata};
use serde::Deserialize;
use serde_json::Value;

/// A notice that shows even for a passing test (libtest captures `eprintln!`).
fn notice(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}

/// One interpreter is enough where the interpreter does not matter: pyenv 3.12 if present.
fn one_python() -> Option<Python> {
    let all = common::pythons();
    let py = all
        .iter()
        .find(|p| p.name.contains("3.12"))
        .or(all.first())
        .cloned();
    if py.is_none() {
        notice("skipped: no Python interpreter found");
    }
    py
}

#[derive(Deserialize)]
struct Func {
    name: String,
    first: i64,
}

#[derive(Deserialize)]
struct Ready {
    pid: u32,
    functions: BTreeMap<String, Func>,
}

impl Ready {
    fn read(dir: &Path) -> Ready {
        let text = fs::read_to_string(dir.join("ready.json")).expect("the target wrote ready.json");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad ready.json: {e}\n{text}"))
    }

    fn func(&self, key: &str) -> &Func {
        &self.functions[key]
    }
}

/// The target's command line after `--`: fmt_bursts.py writing ready.json into `dir`.
fn target_command(py: &Python, dir: &Path, seconds: f64) -> Vec<String> {
    vec![
        py.path.display().to_string(),
        // No __pycache__ in testdata/.
        "-B".into(),
        "-u".into(),
        testdata().join("fmt_bursts.py").display().to_string(),
        dir.display().to_string(),
        seconds.to_string(),
    ]
}

/// `prof record ARGS -- fmt_bursts.py` for `seconds`; returns prof's output and the
/// target's description of itself.
fn record(py: &Python, args: &[&str], seconds: f64) -> (Output, Ready, String) {
    let target_dir = tempfile::tempdir().unwrap();
    let mut all: Vec<String> = ["record"].iter().map(|s| s.to_string()).collect();
    all.extend(args.iter().map(|s| s.to_string()));
    all.push("--".into());
    all.extend(target_command(py, target_dir.path(), seconds));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = run_prof(&all);
    let what = format!("[{}] {}", py.name, describe(&all, &out));
    (out, Ready::read(target_dir.path()), what)
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mknod_char(path: &Path, major: u64, minor: u64) -> nix::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(major, minor),
    )
}

// ---------------------------------------------------------------------------
// Output paths

#[test]
fn character_devices_stay_devices() {
    crate::skip_without_live_targets!();
    let Some(py) = one_python() else { return };
    let out_dir = tempfile::tempdir().unwrap();
    // The same devices as /dev/null and /dev/full, made here so that a failure cannot
    // break the machine's own.
    let null = out_dir.path().join("null");
    let full = out_dir.path().join("full");
    if let Err(e) = mknod_char(&null, 1, 3).and_then(|()| mknod_char(&full, 1, 7)) {
        notice(&format!(
            "skipped: character_devices_stay_devices needs mknod ({e}); run as root"
        ));
        return;
    }
    let is_device = |path: &Path, minor: u64| {
        let m = fs::symlink_metadata(path).unwrap();
        m.file_type().is_char_device() && m.rdev() == nix::sys::stat::makedev(1, minor)
    };

    let (out, _, what) = record(&py, &["-f", "raw", "-o", null.to_str().unwrap()], 0.5);
    assert_eq!(out.status.code(), Some(0), "{what}");
    assert!(is_device(&null, 3), "the device was replaced\n{what}");

    let (out, _, what) = record(&py, &["-f", "raw", "-o", full.to_str().unwrap()], 0.5);
    assert_eq!(out.status.code(), Some(1), "{what}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert_eq!(
        last,
        format!(
            "prof: cannot write {}: No space left on device (os error 28)",
            full.display()
        ),
        "{what}"
    );
    assert!(is_device(&full, 7), "the device was replaced\n{what}");
    assert_eq!(listing(out_dir.path()), ["full", "null"], "{what}");

    // Outputs that fail do not cost the others: each failure is one line, in order, after
    // the summary, which names what was written; the exit code says something failed.
    let full2 = out_dir.path().join("full2");
    mknod_char(&full2, 1, 7).unwrap();
    let good = out_dir.path().join("good.txt");
    let args: Vec<&str> = [&full, &good, &full2]
        .iter()
        .flat_map(|p| ["-o", p.to_str().unwrap()])
        .collect();
    let (out, ready, what) = record(&py, &args, 0.5);
    assert_eq!(out.status.code(), Some(1), "{what}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let enospc = |p: &Path| {
        format!(
            "prof: cannot write {}: No space left on device (os error 28)",
            p.display()
        )
    };
    assert_eq!(
        lines[lines.len().saturating_sub(2)..],
        [enospc(&full), enospc(&full2)],
        "{what}"
    );
    assert!(
        stderr.contains(&format!("; wrote {}\n", good.display())),
        "{what}"
    );
    let burst = &ready.func("burst").name;
    let written = fs::read_to_string(&good).unwrap();
    assert!(
        written.contains(&format!(";{burst} (")),
        "{written:?}\n{what}"
    );
    assert!(is_device(&full, 7) && is_device(&full2, 7), "{what}");
}

#[test]
fn fifos_are_written_in_place() {
    crate::skip_without_live_targets!();
    let Some(py) = one_python() else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let fifo = out_dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A reader that never blocks, so the test cannot hang whatever prof does: it reads
    // what arrives until prof is done and the FIFO has no writer left.
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let read_all = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) if done.load(Ordering::SeqCst) => break,
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    Ok(_) => thread::sleep(Duration::from_millis(5)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("reading the FIFO: {e}"),
                }
            }
            got
        })
    };
    let (out, ready, what) = record(&py, &["-f", "raw", "-o", fifo.to_str().unwrap()], 0.7);
    done.store(true, Ordering::SeqCst);
    let got = String::from_utf8_lossy(&read_all.join().unwrap()).into_owned();
    assert_eq!(out.status.code(), Some(0), "{what}");
    let m = fs::symlink_metadata(&fifo).unwrap();
    assert!(m.file_type().is_fifo(), "the FIFO was replaced\n{what}");
    let burst = &ready.func("burst").name;
    assert!(
        got.lines().any(|l| l.contains(&format!(";{burst} ("))),
        "the reader did not get the profile: {got:?}\n{what}"
    );
    assert_eq!(listing(out_dir.path()), ["fifo"], "{what}");
}

#[test]
fn symlinks_stay_symlinks() {
    crate::skip_without_live_targets!();
    let Some(py) = one_python() else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let d = out_dir.path();
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/real.txt"), "old").unwrap();
    std::os::unix::fs::symlink("sub/real.txt", d.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("sub/new.txt", d.join("dangling.txt")).unwrap();

    for (link, target) in [
        ("link.txt", "sub/real.txt"),
        ("dangling.txt", "sub/new.txt"),
    ] {
        let path = d.join(link);
        let (out, ready, what) = record(&py, &["-f", "raw", "-o", path.to_str().unwrap()], 0.5);
        assert_eq!(out.status.code(), Some(0), "{what}");
        assert!(
            fs::symlink_metadata(&path).unwrap().is_symlink(),
            "{link} is no longer a symlink\n{what}"
        );
        assert_eq!(fs::read_link(&path).unwrap(), Path::new(target), "{what}");
        let written = fs::read_to_string(d.join(target)).unwrap();
        let burst = &ready.func("burst").name;
        assert!(
            written.contains(&format!(";{burst} (")),
            "{target} does not hold the profile: {written:?}\n{what}"
        );
    }
    assert_eq!(listing(d), ["dangling.txt", "link.txt", "sub"]);
    assert_eq!(listing(&d.join("sub")), ["new.txt", "real.txt"]);
}

#[test]
fn killed_record_leaves_no_output() {
    crate::skip_without_live_targets!();
    let Some(py) = one_python() else { return };
    let target_dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("profile.svg");
    let mut cmd = Command::new(prof_path());
    cmd.args(["record", "-o", path.to_str().unwrap(), "--"])
        .args(target_command(&py, target_dir.path(), 60.0))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // prof and the command it launches share the group, and die with it.
    let mut group = Group::spawn(&mut cmd);
    // prof checks the output path before it launches the command, so once the command
    // has written ready.json the check is done.
    let deadline = Instant::now() + READY_TIMEOUT;
    while !target_dir.path().join("ready.json").exists() {
        assert!(group.try_wait().is_none(), "prof exited early");
        assert!(Instant::now() < deadline, "the target never got ready");
        thread::sleep(Duration::from_millis(10));
    }
    drop(group);
    assert_eq!(
        listing(out_dir.path()),
        Vec::<String>::new(),
        "a SIGKILLed record left files behind"
    );
}

// ---------------------------------------------------------------------------
// Chrome trace, through Chrome DevTools' trace engine

/// The trace engine's package directory, or None (with a notice) to skip.
fn trace_engine() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var_os("PROF_REQUIRE_TRACE_ENGINE").is_some();
    let skip = |why: String| {
        assert!(!required, "PROF_REQUIRE_TRACE_ENGINE is set, but {why}");
        notice(&format!(
            "skipped: Chrome trace check in DevTools' trace engine ({why}; .ci/run installs it)"
        ));
        None
    };
    let node = PathBuf::from("node");
    if !Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return skip("`node` cannot be run".into());
    }
    let dir = std::env::var_os("PROF_TRACE_ENGINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".ci/node/node_modules/@paulirish/trace_engine")
        });
    if !dir.join("analyze-trace.mjs").exists() {
        return skip(format!("no @paulirish/trace_engine at {}", dir.display()));
    }
    Some((node, dir))
}

#[derive(Deserialize, Debug)]
struct EngineSlice {
    name: String,
    ts: f64,
    dur: f64,
    depth: usize,
    parent: Option<String>,
}

#[derive(Deserialize)]
struct EngineThread {
    tid: u64,
    slices: Vec<EngineSlice>,
}

#[derive(Deserialize)]
struct EngineView {
    mismatches: u64,
    errors: Vec<String>,
    threads: Vec<EngineThread>,
}

#[test]
fn chrome_trace_loads_in_devtools_trace_engine() {
    crate::skip_without_live_targets!();
    let Some((node, engine)) = trace_engine() else {
        return;
    };
    let Some(py) = one_python() else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("bursts.trace.json");
    let (out, ready, what) = record(&py, &["-o", path.to_str().unwrap()], 3.0);
    assert_eq!(out.status.code(), Some(0), "{what}");

    let run = Command::new(&node)
        .arg(testdata().join("trace_engine_check.mjs"))
        .arg(&path)
        .arg(&engine)
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "trace_engine_check.mjs failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let view: EngineView = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("trace_engine_check.mjs output: {e}\n{stdout}"));
    assert_eq!(
        view.mismatches, 0,
        "events the engine could not pair\n{what}"
    );
    assert!(view.errors.is_empty(), "engine errors: {:?}", view.errors);

    // The engine kept every slice the file has for the thread.
    let trace: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let tid = u64::from(ready.pid);
    let in_file = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tid"] == tid && e["ph"] != "M")
        .count();
    let thread = view
        .threads
        .iter()
        .find(|t| t.tid == tid)
        .unwrap_or_else(|| panic!("the engine has no thread {tid}\n{what}"));
    assert_eq!(thread.slices.len(), in_file, "{what}");

    let named = |key: &str| -> Vec<&EngineSlice> {
        // Slices are named `function (short file name)`.
        let label = format!("{} (fmt_bursts.py)", ready.func(key).name);
        thread.slices.iter().filter(|s| s.name == label).collect()
    };
    let (main, cycle, burst) = (named("main"), named("cycle"), named("burst"));
    // main and cycle never leave the stack: one slice each, however often the thread
    // sleeps. (Two for cycle if a sample ever caught the thread in cycle's own code right
    // before a sleep, between two calls, which is where it then stopped.)
    assert_eq!(main.len(), 1, "{main:?}");
    assert!(
        (1..=2).contains(&cycle.len()),
        "cycle: {} slices",
        cycle.len()
    );
    let cycle_name = cycle[0].name.clone();
    assert_eq!(cycle[0].parent.as_deref(), Some(main[0].name.as_str()));
    assert_eq!(cycle[0].depth, main[0].depth + 1);
    // Each burst is a slice of its own under cycle: the sleeps between them end it.
    assert!(burst.len() >= 10, "{} bursts in 3 s", burst.len());
    for b in &burst {
        assert_eq!(b.parent.as_deref(), Some(cycle_name.as_str()), "{b:?}");
        assert_eq!(b.depth, cycle[0].depth + 1, "{b:?}");
        assert!(b.dur > 0.0, "{b:?}");
        assert!(
            cycle
                .iter()
                .any(|c| c.ts <= b.ts && b.ts + b.dur <= c.ts + c.dur),
            "{b:?} outside cycle"
        );
    }
}

// ---------------------------------------------------------------------------
// pprof, through go tool pprof

fn go_available() -> bool {
    let ok = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("PROF_REQUIRE_GO").is_none(),
            "PROF_REQUIRE_GO is set but `go` cannot be run"
        );
        notice("skipped: pprof check (`go` not found; install golang-go)");
    }
    ok
}

#[test]
fn pprof_has_its_main_binary_and_start_lines() {
    crate::skip_without_live_targets!();
    if !go_available() {
        return;
    }
    let pythons = common::pythons();
    // co_firstlineno sits at a different offset in each version's code object.
    common::run_each("pprof ", &pythons, |py| {
        let out_dir = tempfile::tempdir().unwrap();
        let path = out_dir.path().join("p.pb.gz");
        let (out, ready, what) = record(py, &["-o", path.to_str().unwrap()], 1.0);
        assert_eq!(out.status.code(), Some(0), "{what}");
        let raw = Command::new("go")
            .args(["tool", "pprof", "-raw"])
            .arg(&path)
            .env("HOME", out_dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("go tool pprof");
        let stdout = String::from_utf8_lossy(&raw.stdout);
        let stderr = String::from_utf8_lossy(&raw.stderr);
        assert!(raw.status.success(), "go tool pprof -raw: {stderr}");
        assert!(
            !stderr.contains("binary"),
            "pprof looked for a binary: {stderr}\n{what}"
        );
        // Locations read `ID: 0x0 M=1 NAME FILE:LINE s=START(...)`.
        for key in ["burst", "cycle"] {
            let f = ready.func(key);
            let starts: Vec<&str> = stdout
                .lines()
                .filter(|l| l.contains(&format!(" {} ", f.name)) && l.contains("fmt_bursts.py"))
                .filter_map(|l| l.split(" s=").nth(1))
                .map(|s| s.split('(').next().unwrap_or(""))
                .collect();
            assert!(!starts.is_empty(), "no location of {key}:\n{stdout}");
            for s in starts {
                assert_eq!(s, f.first.to_string(), "start_line of {key}\n{stdout}");
            }
        }
        let mapping = stdout
            .lines()
            .skip_while(|l| *l != "Mappings")
            .nth(1)
            .unwrap_or_else(|| panic!("no mapping:\n{stdout}"));
        assert!(mapping.contains("[FN][FL][LN]"), "{mapping}");
    });
}
