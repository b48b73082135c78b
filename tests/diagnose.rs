//! `prof diagnose` against targets with known behaviour (testdata/diag_*.py), each of which
//! measures its own truth (time inside recv, acquire, sleep, hashing, waiting for a child or
//! in an asyncio loop's selector; GIL holding reconstructed from its progress) and writes it
//! to a file. The verdict's kind must match, and every state's share must be within 5
//! points of the truth.
//!
//! Every target runs on the oldest and the newest interpreter found; GIL contention and
//! sleep (the two whose /proc shape changes with the version) on every one; the others on
//! a rotating subset of the rest, printed as skipped. `PROF_TEST_PYTHONS` narrows the run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Seconds each target works.
const SECONDS: &str = "2.5";
/// Largest difference between a state's share and the target's truth.
const TOLERANCE: f64 = 0.05;
/// Targets run at once: the CPU-bound ones need a core each, and a woken thread left
/// waiting for a CPU for more than a sample is counted as running.
const PARALLEL: usize = 2;

const STATES: [&str; 8] = [
    "python", "native", "gil", "io", "lock", "sleep", "child", "other",
];

/// A target: script, its thread (or process) count, the verdict expected, its exit code.
#[derive(Clone, Copy, Debug)]
struct Case {
    script: &'static str,
    n: u32,
    kind: &'static str,
    exit: i32,
}

const CASES: [Case; 9] = [
    Case {
        script: "diag_cpu",
        n: 1,
        kind: "cpu-python",
        exit: 0,
    },
    Case {
        script: "diag_cpu",
        n: 4,
        kind: "gil-contention",
        exit: 0,
    },
    Case {
        script: "diag_hash",
        n: 3,
        kind: "native-parallel",
        exit: 0,
    },
    Case {
        script: "diag_recv",
        n: 3,
        kind: "io",
        exit: 0,
    },
    Case {
        script: "diag_lock",
        n: 4,
        kind: "lock",
        exit: 0,
    },
    Case {
        script: "diag_sleep",
        n: 3,
        kind: "sleep",
        exit: 7,
    },
    Case {
        script: "diag_child",
        n: 2,
        kind: "child",
        exit: 0,
    },
    // An asyncio loop waiting on its timers: I/O that asyncio already overlaps.
    Case {
        script: "diag_loop",
        n: 0,
        kind: "io",
        exit: 0,
    },
    // The same loop, blocked by a task that calls time.sleep between its awaits.
    Case {
        script: "diag_loop",
        n: 1,
        kind: "loop-blocked",
        exit: 0,
    },
];

/// Cases run on every interpreter (indices into CASES); the others rotate.
const EVERYWHERE: [usize; 2] = [1, 5];
const ROTATING: [usize; 7] = [0, 2, 3, 4, 6, 7, 8];

impl Case {
    fn label(&self) -> String {
        format!("{} {}", self.script, self.n)
    }
}

/// `prof diagnose --json -- python testdata/SCRIPT.py TRUTH N SECONDS`.
fn diagnose_launched(py: &Python, case: Case, dir: &std::path::Path) -> (Value, Value, String) {
    let truth = dir.join(format!("{}-{}.json", case.script, case.n));
    let script = testdata().join(format!("{}.py", case.script));
    let n = case.n.to_string();
    let args = [
        "diagnose",
        "--json",
        "--",
        py.path.to_str().unwrap(),
        script.to_str().unwrap(),
        truth.to_str().unwrap(),
        &n,
        SECONDS,
    ];
    let (report, what) = diagnose_json(&args, case.exit, |_| {});
    let truth: Value = serde_json::from_str(
        &fs::read_to_string(&truth).unwrap_or_else(|e| panic!("no truth file ({e})\n{what}")),
    )
    .unwrap();
    (report, truth, what)
}

/// Run prof with `args` (prepared by `prepare`), which must exit with `exit` and print one
/// JSON object: the object, and the run described for failure messages.
fn diagnose_json(args: &[&str], exit: i32, prepare: impl FnOnce(&mut Command)) -> (Value, String) {
    let mut cmd = Command::new(prof_path());
    cmd.args(args).env("PYTHONDONTWRITEBYTECODE", "1");
    prepare(&mut cmd);
    let out = run_with_deadline(&mut cmd, args);
    let what = describe(args, &out);
    assert_eq!(out.status.code(), Some(exit), "exit code\n{what}");
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e})\n{what}"));
    (report, what)
}

/// The truth's share of each state over all its threads: seconds in each state over the
/// threads' lives, the unaccounted rest of each life as `python`.
fn truth_shares(truth: &Value) -> BTreeMap<String, f64> {
    let mut secs: BTreeMap<String, f64> = BTreeMap::new();
    let mut life = 0.0;
    for t in truth["threads"].as_object().unwrap().values() {
        let l = t["life"].as_f64().unwrap();
        life += l;
        let mut accounted = 0.0;
        for (state, s) in t["states"].as_object().unwrap() {
            let s = s.as_f64().unwrap();
            *secs.entry(state.clone()).or_default() += s;
            accounted += s;
        }
        *secs.entry("python".into()).or_default() += (l - accounted).max(0.0);
    }
    secs.into_iter().map(|(k, v)| (k, v / life)).collect()
}

/// The report's schema is the issue's: verdict, process shares summing to 1, threads.
fn check_schema(r: &Value, what: &str) {
    let kind = r["verdict"]["kind"].as_str().unwrap_or("");
    assert!(
        [
            "cpu-python",
            "gil-contention",
            "native-parallel",
            "io",
            "lock",
            "sleep",
            "child",
            "loop-blocked",
            "mixed"
        ]
        .contains(&kind),
        "verdict kind {kind:?}\n{what}"
    );
    assert!(!r["verdict"]["text"].as_str().unwrap_or("").is_empty());
    let states = r["process"]["states"].as_object().expect("process.states");
    assert_eq!(states.len(), 8, "{what}");
    let sum: f64 = states.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-6, "shares sum to {sum}\n{what}");
    let samples = r["process"]["samples"].as_u64().unwrap();
    let threads = r["threads"].as_array().expect("threads");
    assert!(!threads.is_empty(), "{what}");
    let mut thread_samples = 0;
    for t in threads {
        for key in ["tid", "name", "samples", "states", "top"] {
            assert!(t.get(key).is_some(), "thread without {key}\n{what}");
        }
        thread_samples += t["samples"].as_u64().unwrap();
        let sum: f64 = t["states"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-6, "{what}");
    }
    assert_eq!(thread_samples, samples, "{what}");
}

fn check_case(py: &Python, case: Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (report, truth, what) = diagnose_launched(py, case, dir.path());
    check_schema(&report, &what);
    let kind = report["verdict"]["kind"].as_str().unwrap();
    let mut problems = Vec::new();
    if kind != case.kind {
        problems.push(format!("verdict {kind}, expected {}", case.kind));
    }
    let truth = truth_shares(&truth);
    let got = &report["process"]["states"];
    for s in STATES {
        let g = got[s].as_f64().unwrap();
        let t = truth.get(s).copied().unwrap_or(0.0);
        if (g - t).abs() > TOLERANCE {
            problems.push(format!("{s} {:.1}% vs truth {:.1}%", g * 100.0, t * 100.0));
        }
    }
    if case.script == "diag_recv" {
        let port = report_port(&dir);
        let text = report["verdict"]["text"].as_str().unwrap();
        if !text.contains(&format!("recv from 127.0.0.1:{port}")) {
            problems.push(format!("no `recv from 127.0.0.1:{port}` in {text:?}"));
        }
    }
    if case.script == "diag_loop" {
        let text = report["verdict"]["text"].as_str().unwrap();
        let says = if case.n == 0 {
            "the asyncio event loop already overlaps these waits"
        } else {
            "(sleep in `blocker (diag_loop.py:"
        };
        if !text.contains(says) {
            problems.push(format!("no `{says}` in {text:?}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\nverdict: {}\nprof: {}\ntruth: {truth:?}",
            case.label(),
            problems.join("; "),
            report["verdict"]["text"],
            report["process"]["states"]
        ))
    }
}

/// The port diag_recv's server listened on, from its truth file.
fn report_port(dir: &tempfile::TempDir) -> u64 {
    let t: Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("diag_recv-3.json")).unwrap())
            .unwrap();
    t["port"].as_u64().unwrap()
}

#[test]
fn verdicts_and_shares_match_each_targets_truth() {
    skip_without_live_targets!();
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no Python interpreter found");
    let oldest = pythons.iter().map(|p| p.version).min().unwrap();
    let newest = pythons.iter().map(|p| p.version).max().unwrap();
    let mut jobs: Vec<(Python, Case)> = Vec::new();
    let mut rotation = 0;
    for py in &pythons {
        let edge = [oldest, newest].contains(&py.version)
            && !jobs.iter().any(|(p, _)| p.version == py.version);
        let chosen: Vec<usize> = if edge {
            (0..CASES.len()).collect()
        } else {
            let a = ROTATING[rotation % ROTATING.len()];
            let b = ROTATING[(rotation + 1) % ROTATING.len()];
            rotation += 2;
            let mut c = EVERYWHERE.to_vec();
            c.extend([a, b]);
            c
        };
        let skipped: Vec<String> = (0..CASES.len())
            .filter(|i| !chosen.contains(i))
            .map(|i| CASES[i].label())
            .collect();
        if !skipped.is_empty() {
            eprintln!(
                "skipped on {} (run on other interpreters): {}",
                py.name,
                skipped.join(", ")
            );
        }
        for i in chosen {
            jobs.push((
                Python {
                    name: py.name.clone(),
                    path: py.path.clone(),
                    version: py.version,
                },
                CASES[i],
            ));
        }
    }
    let start = Instant::now();
    let queue = Mutex::new(jobs);
    let failures = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let Some((py, case)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let t0 = Instant::now();
                    // The machine is small and shared: a share off by noise gets one more
                    // run, and both results are shown.
                    let mut result = run_case(&py, case);
                    if let Err(first) = &result {
                        eprintln!("retry: {} {}: {first}", py.name, case.label());
                        result = run_case(&py, case);
                    }
                    let secs = t0.elapsed().as_secs_f64();
                    match result {
                        Ok(()) => eprintln!("ok: {} {} ({secs:.1}s)", py.name, case.label()),
                        Err(e) => {
                            eprintln!("FAILED: {} ({secs:.1}s): {e}", py.name);
                            failures.lock().unwrap().push(format!(
                                "{}: {}",
                                py.name,
                                e.lines().next().unwrap()
                            ));
                        }
                    }
                }
            });
        }
    });
    eprintln!("all targets in {:.1}s", start.elapsed().as_secs_f64());
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// [`check_case`], a panic (a bad exit code, no JSON) turned into an error.
fn run_case(py: &Python, case: Case) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_case(py, case))).unwrap_or_else(
        |p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default())
        },
    )
}

/// Attached with -p, diagnose never stops the target: no tracer, no task in `t`, at any
/// moment of the run (checked every few milliseconds), and none after.
#[test]
fn diagnose_never_stops_the_target() {
    skip_without_live_targets!();
    let Some(py) = newest_python("diagnose_never_stops_the_target") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.json");
    let mut target = Group::spawn(
        python_command(&py)
            .arg(testdata().join("diag_sleep.py"))
            .arg(&truth)
            .args(["3", "20"]),
    );
    let pid = target.pid();
    let deadline = Instant::now() + READY_TIMEOUT;
    while task_count(pid) < 4 {
        assert!(target.try_wait().is_none(), "{}: target exited", py.name);
        assert!(
            Instant::now() < deadline,
            "{}: threads never started",
            py.name
        );
        thread::sleep(Duration::from_millis(10));
    }
    let p: &'static str = Box::leak(pid.to_string().into_boxed_str());
    let args = ["diagnose", "-p", p, "-d", "1.5"];
    let prof = thread::spawn(move || run_prof(&args));
    let status = format!("/proc/{pid}/status");
    let mut checks = 0;
    while !prof.is_finished() {
        let tracer = fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
            .unwrap_or_default();
        assert_eq!(tracer, "0", "{}: traced during diagnose", py.name);
        let stopped: Vec<_> = task_states(pid)
            .into_iter()
            .filter(|(_, s)| matches!(s, 't' | 'T'))
            .collect();
        assert!(stopped.is_empty(), "{}: stopped tasks {stopped:?}", py.name);
        checks += 1;
        thread::sleep(Duration::from_millis(3));
    }
    let out = prof.join().unwrap();
    let what = describe(&args, &out);
    assert!(out.status.success(), "{what}");
    assert!(checks > 100, "only {checks} checks during the run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verdict (sleep): sleeping:"), "{what}");
    assert!(text.contains("napper-0"), "{what}");
    assert_not_stopped(pid, "diagnose -p");
    assert!(target.try_wait().is_none(), "the target died");
}

#[test]
fn bad_input_is_one_line() {
    skip_without_live_targets!();
    for args in [
        vec!["diagnose"],
        vec!["diagnose", "-p", "999999999"],
        vec!["diagnose", "-p", "1", "-d", "0"],
        vec!["diagnose", "-r", "-5", "-p", "1"],
    ] {
        let out = run_prof(&args);
        assert_one_line_error(&args, &out);
    }
}

/// `prof dump` names each thread's state, in text and JSON; for `io`, the socket and its
/// peer (the server the target's truth file names once it ends).
#[test]
fn dump_shows_each_threads_state() {
    skip_without_live_targets!();
    let Some(py) = newest_python("dump_shows_each_threads_state") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.json");
    let mut target = Group::spawn(
        python_command(&py)
            .arg(testdata().join("diag_recv.py"))
            .arg(&truth)
            .args(["2", "20"]),
    );
    let pid = target.pid();
    let deadline = Instant::now() + READY_TIMEOUT;
    // The main thread, the two clients.
    while task_count(pid) < 3 {
        assert!(target.try_wait().is_none(), "{}: target exited", py.name);
        assert!(
            Instant::now() < deadline,
            "{}: threads never started",
            py.name
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    let p = pid.to_string();
    let args = ["dump", "-p", &p, "--json"];
    // A client wakes every 50 ms; one caught on a CPU (or, on a loaded machine, queued for
    // one) is honestly not in I/O at that moment, and one snapshot cannot tell more: dump
    // again, a few times, for one where both wait.
    let mut tries = 0;
    let (what, threads) = loop {
        let out = run_prof(&args);
        let what = describe(&args, &out);
        assert!(out.status.success(), "{what}");
        let threads: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        tries += 1;
        let caught_awake = threads.iter().any(|t| {
            t["thread_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("client"))
                && t["active"] == true
        });
        if !caught_awake || tries == 10 {
            break (what, threads);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let state = |name: &str| {
        threads
            .iter()
            .find(|t| t["thread_name"] == name)
            .unwrap_or_else(|| panic!("no {name}\n{what}"))
            .clone()
    };
    assert_eq!(state("MainThread")["state"], "lock", "{what}");
    for client in ["client-0", "client-1"] {
        let t = state(client);
        // Blocked in recv, or for a moment in send: either is I/O on the socket.
        assert_eq!(t["state"], "io", "{what}");
        assert_eq!(t["fd_kind"], "socket", "{what}");
        let peer = t["peer"].as_str().unwrap_or("");
        assert!(peer.starts_with("127.0.0.1:"), "peer {peer:?}\n{what}");
    }
    let args = ["dump", "-p", &p];
    let out = run_prof(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"MainThread\" [lock]") && text.contains("[io recv socket 127.0.0.1:"),
        "{}",
        describe(&args, &out)
    );
    assert!(target.try_wait().is_none(), "the target died");
}

/// `record --states` puts the state under each thread's root: the sleepers' samples split
/// into `[sleep]` (nearly all) and the rest, and the main thread's into `[lock]`.
#[test]
fn record_states_adds_a_frame_under_each_thread() {
    skip_without_live_targets!();
    let pythons = pythons();
    let Some(py) = pythons.iter().min_by_key(|p| p.version) else {
        eprintln!("skipped: record_states_adds_a_frame_under_each_thread: no Python found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("out.txt");
    let truth = dir.path().join("truth.json");
    let script = testdata().join("diag_sleep.py");
    let args = [
        "record",
        "--states",
        "-t",
        "--idle",
        "-f",
        "raw",
        "-o",
        raw.to_str().unwrap(),
        "--",
        py.path.to_str().unwrap(),
        script.to_str().unwrap(),
        truth.to_str().unwrap(),
        "2",
        "1.5",
    ];
    let mut cmd = Command::new(prof_path());
    cmd.args(args).env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_with_deadline(&mut cmd, &args);
    let what = describe(&args, &out);
    assert_eq!(out.status.code(), Some(7), "{what}");
    let text = fs::read_to_string(&raw).unwrap();
    let mut by_root: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    for line in text.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        let mut frames = stack.split(';');
        let thread = frames.next().unwrap();
        let state = frames.next().unwrap_or("");
        assert!(
            state.starts_with('[') && state.contains(']'),
            "no state under the thread: {line}\n{what}"
        );
        let name = thread.split(' ').next().unwrap();
        *by_root
            .entry(format!("{name};{}", state.trim_end_matches(" ()")))
            .or_default() += n;
        total += n;
    }
    let share = |k: &str| by_root.get(k).copied().unwrap_or(0) as f64 / total as f64;
    let nappers = share("napper-0;[sleep]") + share("napper-1;[sleep]");
    // Three threads of equal life: two thirds asleep, one third joining, within noise.
    assert!(
        (nappers - 2.0 / 3.0).abs() < 0.08,
        "sleep {nappers:.3} {by_root:?}\n{what}"
    );
    assert!(share("MainThread;[lock]") > 0.25, "{by_root:?}\n{what}");
}

/// With -s, each process gets its own verdict, then all together: the parent waits for
/// its children, which sleep.
#[test]
fn subprocesses_each_then_together() {
    skip_without_live_targets!();
    let Some(py) = newest_python("subprocesses_each_then_together") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.json");
    let script = testdata().join("diag_child.py");
    let args = [
        "diagnose",
        "-s",
        "--json",
        "--",
        py.path.to_str().unwrap(),
        script.to_str().unwrap(),
        truth.to_str().unwrap(),
        "2",
        "2",
    ];
    let (r, what) = diagnose_json(&args, 0, |_| {});
    check_schema(&r, &what);
    let procs = r["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 3, "{what}");
    let kinds: Vec<&str> = procs
        .iter()
        .map(|p| p["verdict"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "child", "{what}");
    assert_eq!(&kinds[1..], ["sleep", "sleep"], "{what}");
    let total: u64 = procs
        .iter()
        .map(|p| p["process"]["samples"].as_u64().unwrap())
        .sum();
    assert_eq!(total, r["process"]["samples"].as_u64().unwrap(), "{what}");
}

/// A target with more threads than prof's soft limit on open files would allow files for:
/// prof raises its own limit (every thread keeps its state, none turns `other`), and the
/// command it launches still runs under the limit prof was given.
#[test]
fn many_threads_under_a_low_open_files_limit() {
    many_threads_under_a_limit("many_threads_under_a_low_open_files_limit", false);
}

/// The same with the hard limit as low: prof cannot raise its own, keeps as many files open
/// as its limit allows, and opens the rest for each read; every thread keeps its state.
#[test]
fn many_threads_under_a_low_hard_open_files_limit() {
    many_threads_under_a_limit("many_threads_under_a_low_hard_open_files_limit", true);
}

/// `diagnose` of 100 threads waiting on an Event, launched by prof under a soft limit of 64
/// open files (and a hard one, with `hard`).
fn many_threads_under_a_limit(test: &str, hard: bool) {
    skip_without_live_targets!();
    let Some(py) = newest_python(test) else {
        return;
    };
    eprintln!(
        "runs on {} only: the limit is prof's, not the interpreter's",
        py.name
    );
    let dir = tempfile::tempdir().unwrap();
    let limit_file = dir.path().join("limit.txt");
    let script = testdata().join("diag_many.py");
    let args = [
        "diagnose",
        "--json",
        "--",
        py.path.to_str().unwrap(),
        script.to_str().unwrap(),
        limit_file.to_str().unwrap(),
        "100",
        "1.5",
    ];
    let (report, what) = diagnose_json(&args, 0, |cmd| {
        // SAFETY: only getrlimit and setrlimit between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                lim.rlim_cur = 64;
                if hard {
                    lim.rlim_max = 64;
                }
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let threads = report["threads"].as_array().unwrap().len();
    assert!(threads >= 101, "{threads} threads seen\n{what}");
    let other = report["process"]["states"]["other"].as_f64().unwrap();
    let lock = report["process"]["states"]["lock"].as_f64().unwrap();
    assert!(
        other < 0.02 && lock > 0.9,
        "other {other:.3}, lock {lock:.3}: the pool's waits were not all seen\n{what}"
    );
    let limit = fs::read_to_string(&limit_file).unwrap();
    assert_eq!(
        limit.trim(),
        "64",
        "the launched command's soft limit on open files"
    );
}
