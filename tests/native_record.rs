//! `prof record --native` (and `dump --native` on threads Python does not know): native
//! frames sampled over time, alone for a C program and merged with Python frames on every
//! interpreter found. The targets are compiled at test time; each check compares the
//! stacks with the call structure the target sets up.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Group, Python, READY_TIMEOUT, assert_not_stopped, assert_one_line_error, build_c, describe,
    for_each_python, python_command, run_prof, spawn_c_program,
};

/// A busy main thread (`spin_inner` called from `spin_outer` from `main`) and a worker
/// parked in `pause()` inside `park_worker`.
const SPIN_C: &str = r#"
#include <stdio.h>
#include <pthread.h>
#include <unistd.h>
volatile long sink;
__attribute__((noinline)) void spin_inner(void) { for (long i = 0; i < 100000; i++) sink += i; }
__attribute__((noinline)) void spin_outer(void) { spin_inner(); sink++; }
__attribute__((noinline)) void park_worker(void) { for (;;) pause(); }
void *worker(void *arg) { park_worker(); return arg; }
int main(int argc, char **argv) {
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    FILE *f = fopen(argv[1], "w");
    fputs("ready", f);
    fclose(f);
    for (;;) spin_outer();
}
"#;

/// A library whose `start()` runs `c_spin` on a thread of its own, unknown to Python.
const LIB_C: &str = r#"
#include <pthread.h>
volatile long lib_sink;
__attribute__((noinline)) void c_spin(void) { for (;;) lib_sink++; }
static void *run(void *arg) { c_spin(); return arg; }
int start(void) { pthread_t t; return pthread_create(&t, 0, run, 0); }
"#;

/// Python -> C (sorted) -> Python (busy key function `f`), forever; plus the C thread.
const MIXED_PY: &str = r#"
import ctypes, sys
lib = ctypes.CDLL(sys.argv[2])
lib.start()
def f(x):
    s = 0
    for i in range(20000):
        s += i
    return x
def g():
    return sorted(range(3), key=f)
def h():
    while True:
        g()
open(sys.argv[1], "w").write("ready")
h()
"#;

fn wait_ready(group: &mut Group, ready: &Path, what: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready.exists() {
        if let Some(status) = group.try_wait() {
            panic!("{what} exited ({status}) before it was ready");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {READY_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// One line of `-f raw`: frame names root first (the `(file:line)` part dropped), count.
struct Stack {
    names: Vec<String>,
    count: u64,
}

fn frame_name(label: &str) -> String {
    match label.rfind(" (") {
        Some(i) if label.ends_with(')') => label[..i].to_string(),
        _ => label.to_string(),
    }
}

/// `prof record -f raw` for `secs` seconds with `extra` flags, parsed.
fn record_raw(pid: u32, secs: &str, extra: &[&str], dir: &Path) -> (Vec<Stack>, String) {
    let out_path = dir.join("out.txt");
    let out_s = out_path.to_string_lossy().into_owned();
    let pid_s = pid.to_string();
    let mut args = vec![
        "record", "--native", "-p", &pid_s, "-d", secs, "-r", "200", "-f", "raw", "-o", &out_s,
    ];
    args.extend_from_slice(extra);
    let out = run_prof(&args);
    assert_not_stopped(pid, &format!("pid {pid}"));
    let ctx = describe(&args, &out);
    assert!(out.status.success(), "prof failed\n{ctx}");
    let text = fs::read_to_string(&out_path).unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let stacks = text
        .lines()
        .map(|l| {
            let (stack, count) = l.rsplit_once(' ').expect("`stack count` lines");
            Stack {
                names: stack.split(';').map(frame_name).collect(),
                count: count.parse().expect("a count"),
            }
        })
        .collect();
    (stacks, ctx)
}

fn total(stacks: &[Stack], pick: impl Fn(&Stack) -> bool) -> u64 {
    stacks.iter().filter(|s| pick(s)).map(|s| s.count).sum()
}

fn has(s: &Stack, name: &str) -> bool {
    s.names.iter().any(|n| n == name)
}

#[test]
fn c_program_is_profiled_natively() {
    crate::skip_without_live_targets!();
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["-O2", "-g", "-fomit-frame-pointer", "-pthread"];
    let (mut group, ready) = spawn_c_program(dir.path(), "spin", SPIN_C, &flags);
    let pid = group.pid();
    wait_ready(&mut group, &ready, "spin");

    let (stacks, ctx) = record_raw(pid, "2", &[], dir.path());
    let all = total(&stacks, |_| true);
    assert!(all >= 50, "too few samples ({all})\n{ctx}");
    // The busy thread's stacks run main -> spin_outer -> spin_inner, and nothing samples
    // the parked worker without --idle.
    let busy = total(&stacks, |s| {
        let n: Vec<&str> = s.names.iter().map(String::as_str).collect();
        n.ends_with(&["main", "spin_outer", "spin_inner"])
    });
    assert!(
        busy * 10 >= all * 9,
        "only {busy} of {all} samples end in main;spin_outer;spin_inner\n{ctx}"
    );
    assert_eq!(total(&stacks, |s| has(s, "park_worker")), 0, "{ctx}");

    // With --idle the parked worker is sampled too, in pause() under park_worker.
    let (stacks, ctx) = record_raw(pid, "1", &["--idle"], dir.path());
    let parked = total(&stacks, |s| {
        let i = s.names.iter().position(|n| n == "park_worker");
        i.is_some_and(|i| s.names[i - 1] == "worker" && i + 1 < s.names.len())
    });
    assert!(parked > 0, "no sample of the parked worker\n{ctx}");
}

/// A library that spins in `lib_spin` for a while.
const LOADED_C: &str = r#"
#include <time.h>
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
volatile unsigned long lib_sink;
__attribute__((noinline)) void lib_step(void) {
    for (int i = 0; i < 20000; i++) lib_sink = lib_sink * 6364136223846793005UL + 1;
}
void lib_spin(double seconds) {
    double end = now() + seconds;
    while (now() < end) lib_step();
}
"#;

/// Every 100 ms a new copy of the library (argv[2]) is made in argv[3], loaded (each at
/// a new place: the earlier ones stay loaded) and run in.
const LOADER_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
static void copy(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    fclose(a);
    fclose(b);
}
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "w");
    fputs("ready", f);
    fclose(f);
    char path[4096];
    for (int k = 0; k < 300; k++) {
        snprintf(path, sizeof path, "%s/copy%d.so", argv[3], k);
        copy(argv[2], path);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) return 1;
        ((void (*)(double))dlsym(h, "lib_spin"))(0.1);
    }
    for (;;) pause();
}
"#;

/// A library loaded while prof samples is named from its first samples on, even when
/// another was loaded just before: before, the memory map was read again at most once a
/// second, and a library loaded within that second showed as bare addresses until then
/// (and one loaded where an unloaded one had been, until the next sweep of the map). Its
/// first sample is whole too: unwound again once the map names its code, not left with
/// the callers a frame-pointer guess made up (a bare address made of stack bytes).
#[test]
fn libraries_loaded_while_sampling_are_named_at_once() {
    crate::skip_without_live_targets!();
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build_c(
        dir.path(),
        "libloaded.so",
        LOADED_C,
        &["-O1", "-g", "-shared", "-fPIC"],
    );
    let bin = build_c(dir.path(), "loader", LOADER_C, &["-O1", "-g"]);
    let copies = dir.path().join("copies");
    fs::create_dir(&copies).unwrap();
    let ready = dir.path().join("loader.ready");
    let mut group = Group::spawn(
        Command::new(&bin)
            .arg(&ready)
            .arg(&lib)
            .arg(&copies)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let pid = group.pid();
    wait_ready(&mut group, &ready, "loader");
    let (stacks, ctx) = record_raw(pid, "2", &[], dir.path());
    let in_lib = total(&stacks, |s| {
        s.names
            .iter()
            .any(|n| n.starts_with("lib_s") || n.starts_with("0x"))
    });
    assert!(
        in_lib >= 50,
        "too few samples in the libraries ({in_lib})\n{ctx}"
    );
    let bare = total(&stacks, |s| s.names.iter().any(|n| n.starts_with("0x")));
    assert!(
        bare * 50 <= in_lib,
        "{bare} of {in_lib} samples in the loaded libraries show bare addresses\n{ctx}"
    );
}

#[test]
fn native_record_refuses_nonblocking() {
    crate::skip_without_live_targets!();
    let pid = std::process::id().to_string();
    let args = [
        "record",
        "-p",
        &pid,
        "--native",
        "--nonblocking",
        "-o",
        "/tmp/x.svg",
    ];
    let out = run_prof(&args);
    let line = assert_one_line_error(&args, &out);
    assert!(line.contains("--nonblocking"), "{line}");
}

/// Interpreters whose build has `ctypes`; the others are skipped with a notice.
fn has_ctypes(py: &Python) -> bool {
    let ok = Command::new(&py.path)
        .args(["-c", "import ctypes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipped {}: no ctypes module to load the C library",
            py.name
        );
    }
    ok
}

#[test]
fn python_and_c_threads_merged_over_time() {
    crate::skip_without_live_targets!();
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build_c(
        dir.path(),
        "libspin.so",
        LIB_C,
        &["-O1", "-g", "-shared", "-fPIC", "-pthread"],
    );
    let script = dir.path().join("mixed.py");
    fs::write(&script, MIXED_PY).unwrap();
    for_each_python(|py| {
        if !has_ctypes(py) {
            return;
        }
        let ready = dir.path().join(format!("ready-{}", py.name));
        let mut group = Group::spawn(
            python_command(py)
                .arg(&script)
                .arg(&ready)
                .arg(&lib)
                .stdout(Stdio::null()),
        );
        let pid = group.pid();
        let what = format!("[{}] pid {pid}", py.name);
        wait_ready(&mut group, &ready, &what);
        let (stacks, ctx) = record_raw(pid, "2", &[], dir.path());
        let ctx = format!("{what}\n{ctx}");

        // The C thread: c_spin on its own, no Python frame in its stacks.
        let c = total(&stacks, |s| s.names.last().is_some_and(|n| n == "c_spin"));
        assert!(c > 0, "no sample of the C thread in c_spin\n{ctx}");
        assert_eq!(
            total(&stacks, |s| has(s, "c_spin") && has(s, "<module>")),
            0,
            "the C thread got Python frames\n{ctx}"
        );

        // The Python thread: in f, the Python frames are <module>, h, g, f in that order
        // with sorted's native frames between g and f.
        let in_f: Vec<&Stack> = stacks.iter().filter(|s| has(s, "f")).collect();
        let in_f_count: u64 = in_f.iter().map(|s| s.count).sum();
        assert!(in_f_count > 0, "no sample in f\n{ctx}");
        let good = |s: &Stack| {
            let pos = |n: &str| s.names.iter().position(|x| x == n);
            match (pos("<module>"), pos("h"), pos("g"), pos("f")) {
                (Some(m), Some(h), Some(g), Some(f)) => m < h && h < g && f > g + 1,
                _ => false,
            }
        };
        let ordered: u64 = in_f.iter().filter(|s| good(s)).map(|s| s.count).sum();
        assert!(
            ordered * 10 >= in_f_count * 9,
            "only {ordered} of {in_f_count} samples in f are <module>;h;g;<native>;f\n{ctx}"
        );
        let all = total(&stacks, |_| true);
        let uncertain = total(&stacks, |s| has(s, "[merge uncertain]"));
        assert!(
            uncertain * 10 <= all,
            "{uncertain} of {all} samples are [merge uncertain]\n{ctx}"
        );

        // dump --native lists the C thread too, with native frames only.
        let pid_s = pid.to_string();
        let args = ["dump", "--native", "-p", &pid_s];
        let out = run_prof(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", describe(&args, &out));
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("c_spin (")),
            "dump --native does not show the C thread\n{}",
            describe(&args, &out)
        );
        assert_not_stopped(pid, &what);
    });
}
