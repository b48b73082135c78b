//! `prof dump --native`: native stacks, alone (a C program, checked against gdb) and
//! merged with Python frames (checked against `prof dump` without `--native` and against
//! the call structure the target script sets up).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Group, Python, READY_TIMEOUT, assert_not_stopped, assert_one_line_error, describe,
    for_each_python, gcc, python_command, run_prof, spawn_c_program, task_states,
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct NThread {
    os_thread_id: Option<u64>,
    frames: Vec<NFrame>,
}

#[derive(Debug, Clone, Deserialize)]
struct NFrame {
    name: String,
    filename: String,
    line: i64,
    native: Option<bool>,
}

impl NFrame {
    fn is_native(&self) -> bool {
        self.native
            .expect("every frame of a --native dump says whether it is native")
    }
}

/// `prof dump -p PID --json [extra]`, parsed.
fn dump(pid: u32, extra: &[&str]) -> Vec<NThread> {
    let pid_s = pid.to_string();
    let mut args = vec!["dump", "-p", &pid_s, "--json"];
    args.extend_from_slice(extra);
    let out = run_prof(&args);
    assert_not_stopped(pid, &format!("pid {pid}"));
    assert!(
        out.status.success(),
        "prof failed\n{}",
        describe(&args, &out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON: {e}\n{}", describe(&args, &out)))
}

/// Wait until `ready` exists and every thread of `pid` is asleep (not running, not
/// stopped), then a little longer so the parked call is really entered.
fn wait_parked(group: &mut Group, ready: &Path, what: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = group.try_wait() {
            panic!("{what} exited ({status}) before it was parked");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not parked after {READY_TIMEOUT:?}"
        );
        if ready.exists() {
            let states = task_states(group.pid());
            if !states.is_empty() && states.iter().all(|(_, s)| *s == 'S') {
                break;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
}

fn names(frames: &[NFrame]) -> Vec<&str> {
    frames.iter().map(|f| f.name.as_str()).collect()
}

// ---------------------------------------------------------------------------
// (a) a C program against gdb

const PARK_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
volatile int sink;
__attribute__((noinline)) void c(void) { for (;;) pause(); sink++; }
__attribute__((noinline)) void b(void) { c(); sink++; }
__attribute__((noinline)) void a(void) { b(); sink++; }
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "w");
    fputs("ready", f);
    fclose(f);
    a();
    return sink;
}
"#;

/// Function names of gdb's `bt` lines (`#1  0x… in c () at park.c:4`).
fn gdb_names(bt: &str) -> Vec<String> {
    bt.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            let rest = l.split_once(char::is_whitespace).map_or("", |x| x.1).trim();
            let rest = match rest.split_once(" in ") {
                Some((addr, r)) if addr.starts_with("0x") => r,
                _ => rest,
            };
            rest.split(" (").next().unwrap_or(rest).trim().to_string()
        })
        .collect()
}

#[test]
fn c_program_matches_gdb() {
    crate::skip_without_live_targets!();
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["-O2", "-g", "-fomit-frame-pointer"];
    let (mut group, ready) = spawn_c_program(dir.path(), "park", PARK_C, &flags);
    let pid = group.pid();
    wait_parked(&mut group, &ready, "park");

    // gdb first, alone; prof attaches only after gdb has detached and exited.
    let gdb = Command::new("gdb")
        .args(["-batch", "-nx", "-p", &pid.to_string(), "-ex", "bt"])
        .stdin(Stdio::null())
        .output()
        .expect("gdb must be installed");
    let bt = String::from_utf8_lossy(&gdb.stdout).into_owned();
    let want = gdb_names(&bt);
    assert!(
        want.ends_with(&["c".into(), "b".into(), "a".into(), "main".into()]),
        "gdb's backtrace is not the expected one:\n{bt}\n{}",
        String::from_utf8_lossy(&gdb.stderr)
    );
    wait_parked(&mut group, &ready, "park");

    let threads = dump(pid, &["--native"]);
    assert_eq!(threads.len(), 1, "{threads:?}");
    let frames = &threads[0].frames;
    assert!(frames.iter().all(NFrame::is_native), "{frames:?}");
    let got: Vec<&str> = names(frames);
    let upto_main = got
        .iter()
        .position(|n| *n == "main")
        .map_or(got.len(), |i| i + 1);
    assert_eq!(
        &got[..upto_main],
        want.iter().map(String::as_str).collect::<Vec<_>>(),
        "prof's native frames differ from gdb's bt:\n{bt}\nprof: {got:?}"
    );
    // DWARF gives file and line for the program's own functions.
    let c = frames.iter().find(|f| f.name == "c").unwrap();
    assert!(c.filename.ends_with("park.c") && c.line == 5, "{c:?}");

    // The text form marks native frames.
    let pid_s = pid.to_string();
    let args = ["dump", "-p", &pid_s, "--native"];
    let out = run_prof(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert!(
        text.lines().any(|l| l.trim() == "b (park.c:6) [native]"),
        "{}",
        describe(&args, &out)
    );
    assert_not_stopped(pid, "park");
}

#[test]
fn native_refuses_nonblocking() {
    crate::skip_without_live_targets!();
    let pid = std::process::id().to_string();
    let args = ["dump", "-p", &pid, "--native", "--nonblocking"];
    let out = run_prof(&args);
    let line = assert_one_line_error(&args, &out);
    assert!(line.contains("--nonblocking"), "{line}");
}

// ---------------------------------------------------------------------------
// (b), (c): Python targets

/// `time.sleep` called from `park`, called from `outer`.
const SLEEP_PY: &str = r#"
import sys, time
def park():
    open(sys.argv[1], "w").write("ready")
    time.sleep(1000)
def outer():
    park()
outer()
"#;

/// Python -> C (sorted) -> Python (key function f) -> C (time.sleep).
const SORTED_PY: &str = r#"
import sys, time
def f(x):
    open(sys.argv[1], "w").write("ready")
    time.sleep(1000)
    return x
def g():
    return sorted([1], key=f)
def h():
    return g()
h()
"#;

/// Interpreters with DWARF for the interpreter itself (pyenv builds).
fn has_dwarf(py: &Python) -> bool {
    py.name.starts_with("pyenv")
}

struct Merged {
    frames: Vec<NFrame>,
    plain: Vec<NFrame>,
}

/// Start `script` on `py`, wait until it is parked, dump it with and without --native.
fn run_script(py: &Python, script: &str) -> Merged {
    run_script_with(py, script, |_| {})
}

/// [`run_script`], with `setup` preparing the script's directory first.
fn run_script_with(py: &Python, script: &str, setup: impl Fn(&Path)) -> Merged {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let path = dir.path().join("target.py");
    fs::write(&path, script).unwrap();
    let ready = dir.path().join("ready");
    let mut group = Group::spawn(
        python_command(py)
            .arg("-u")
            .arg(&path)
            .arg(&ready)
            .stdout(Stdio::null()),
    );
    let pid = group.pid();
    let what = format!("[{}] pid {pid}", py.name);
    wait_parked(&mut group, &ready, &what);
    let plain = dump(pid, &[]);
    wait_parked(&mut group, &ready, &what);
    let merged = dump(pid, &["--native"]);
    assert_eq!(plain.len(), 1, "{what}: {plain:?}");
    assert_eq!(merged.len(), 1, "{what}: {merged:?}");
    assert_eq!(plain[0].os_thread_id, merged[0].os_thread_id);
    Merged {
        frames: merged[0].frames.clone(),
        plain: plain[0].frames.clone(),
    }
}

/// Checks every merge must pass; returns the index of each Python frame.
fn common_checks_parked(py: &Python, m: &Merged, want_python: &[&str]) -> Vec<usize> {
    let ctx = format!("[{}] merged: {:?}", py.name, names(&m.frames));
    let python: Vec<(&str, &str, i64)> = m
        .frames
        .iter()
        .filter(|f| !f.is_native())
        .map(|f| (f.name.as_str(), f.filename.as_str(), f.line))
        .collect();
    let plain: Vec<(&str, &str, i64)> = m
        .plain
        .iter()
        .map(|f| (f.name.as_str(), f.filename.as_str(), f.line))
        .collect();
    assert_eq!(
        python, plain,
        "{ctx}: Python frames differ from dump without --native"
    );
    let pynames: Vec<&str> = python.iter().map(|p| p.0).collect();
    assert_eq!(pynames, want_python, "{ctx}");
    // Every interpreter merges with certainty: where the eval loop has no symbol (Debian's
    // stripped 3.13+), its frames are found by the entry frames on their C stack.
    let uncertain = m.frames.iter().any(|f| f.name == "[merge uncertain]");
    assert!(!uncertain, "{ctx}: merge uncertain");
    let idx: Vec<usize> = (0..m.frames.len())
        .filter(|&i| !m.frames[i].is_native())
        .collect();
    assert!(idx[0] > 0, "{ctx}: no native frame above the Python frames");
    let last = *idx.last().unwrap();
    assert!(
        m.frames[last..].iter().any(|f| f.name == "PyEval_EvalCode"),
        "{ctx}: no PyEval_EvalCode below the outermost Python frame"
    );
    idx
}

/// [`common_checks_parked`], for a target asleep in `time.sleep`: the sleeping system
/// call (and, with DWARF, `time_sleep`) above the first Python frame.
fn common_checks(py: &Python, m: &Merged, want_python: &[&str]) -> Vec<usize> {
    let idx = common_checks_parked(py, m, want_python);
    let ctx = format!("[{}] merged: {:?}", py.name, names(&m.frames));
    // A stripped libc may add an unnamed frame above the sleep's frames.
    assert!(
        m.frames[..idx[0]].iter().any(|f| {
            let n = &f.name;
            n.contains("clock_nanosleep") || n.contains("select") || n.contains("nanosleep")
        }),
        "{ctx}: no sleeping system call above the first Python frame"
    );
    if has_dwarf(py) {
        assert!(
            m.frames[..idx[0]].iter().any(|f| f.name == "time_sleep"),
            "{ctx}: no time_sleep above the first Python frame"
        );
    }
    idx
}

#[test]
fn python_sleep_merged() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let m = run_script(py, SLEEP_PY);
        common_checks(py, &m, &["park", "outer", "<module>"]);
    });
}

#[test]
fn python_c_python_c_merged() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let m = run_script(py, SORTED_PY);
        let idx = common_checks(py, &m, &["f", "g", "h", "<module>"]);
        let ctx = format!("[{}] merged: {:?}", py.name, names(&m.frames));
        // sorted's native frames sit between the key function and its caller.
        let between = &m.frames[idx[0] + 1..idx[1]];
        assert!(
            !between.is_empty(),
            "{ctx}: no native frames between f and g"
        );
        if has_dwarf(py) {
            let pos = |name: &str| between.iter().position(|f| f.name == name);
            let (Some(ls), Some(bs)) = (pos("list_sort"), pos("builtin_sorted")) else {
                panic!("{ctx}: list_sort and builtin_sorted not between f and g");
            };
            assert!(ls < bs, "{ctx}: list_sort must be inside builtin_sorted");
        } else {
            assert!(
                between.iter().any(|f| f.name == "PyObject_CallOneArg"),
                "{ctx}: sorted's call of the key function not between f and g"
            );
        }
    });
}

/// A C extension: `call_back(f)` calls `f()` from C, `park()` sleeps in C with the GIL
/// released.
const CEXT_C: &str = r#"
#include <Python.h>
#include <unistd.h>
__attribute__((noinline)) static PyObject *c_call_back(PyObject *self, PyObject *f) {
    PyObject *r = PyObject_CallObject(f, NULL);
    __asm__ volatile("" ::: "memory");
    return r;
}
__attribute__((noinline)) static PyObject *c_park(PyObject *self, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    for (;;) pause();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {
    {"call_back", c_call_back, METH_O, NULL},
    {"park", c_park, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_cext(void) { return PyModule_Create(&module); }
"#;

/// Python -> C (`c_call_back`) -> Python (`cb`) -> C (`c_park`).
const CEXT_PY: &str = r#"
import sys
import cext
def cb():
    open(sys.argv[1], "w").write("ready")
    cext.park()
def outer():
    cext.call_back(cb)
outer()
"#;

/// The interpreter's `Python.h` directory, if its headers are installed.
fn include_dir(py: &Python) -> Option<String> {
    let out = Command::new(&py.path)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&dir).join("Python.h").exists().then_some(dir)
}

#[test]
fn c_extension_callback_merged() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let Some(include) = include_dir(py) else {
            eprintln!("skipped {}: no Python.h to build the C extension", py.name);
            return;
        };
        let m = run_script_with(py, CEXT_PY, |dir| {
            let src = dir.join("cext.c");
            fs::write(&src, CEXT_C).unwrap();
            let flags = ["-O1", "-g", "-shared", "-fPIC", "-I", &include];
            gcc(&flags, &src, &dir.join("cext.so"));
        });
        let idx = common_checks_parked(py, &m, &["cb", "outer", "<module>"]);
        let ctx = format!("[{}] merged: {:?}", py.name, names(&m.frames));
        let pos = |name: &str| m.frames.iter().position(|f| f.name == name);
        let (Some(park), Some(call)) = (pos("c_park"), pos("c_call_back")) else {
            panic!("{ctx}: c_park or c_call_back missing");
        };
        // c_park above cb, c_call_back between cb and outer.
        assert!(park < idx[0], "{ctx}: c_park must be inside cb");
        assert!(
            idx[0] < call && call < idx[1],
            "{ctx}: c_call_back must be between cb and outer"
        );
    });
}
