//! `--async` against live targets whose event loops record their own truth: every task's
//! name, id, loop thread, await chain and awaiters (testdata/async_tree.py), and a CPU split
//! between two tasks (testdata/async_split.py). Interpreters run in parallel threads.
//!
//! `PROF_TEST_PYTHONS=pyenv-3.12,sid-3.15` narrows a run to some interpreters.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::*;
use serde::Deserialize;

/// Targets spin a CPU each; more at once on a small machine only makes each slower.
const WORKERS: usize = 3;

/// The interpreters `--async` reads: 3.8 and later.
fn async_pythons() -> Vec<Python> {
    pythons()
        .into_iter()
        .filter(|py| {
            let ok = py.at_least(3, 8);
            if !ok {
                eprintln!("skipped: {} (--async reads Python 3.8 and later)", py.name);
            }
            ok
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct TruthTask {
    name: String,
    id: u64,
    thread: u64,
    state: String,
    /// Outermost first.
    frames: Vec<TruthFrame>,
    awaited_by: Vec<u64>,
    stack_top: Vec<TruthFrame>,
}

#[derive(Debug, Deserialize)]
struct TruthTasks {
    tasks: Vec<TruthTask>,
}

#[derive(Debug, Deserialize)]
struct DumpTask {
    name: String,
    id: u64,
    thread_id: Option<u64>,
    state: String,
    awaited_by: Vec<u64>,
    frames: Vec<Frame>,
}

#[derive(Debug, Deserialize)]
struct AsyncDump {
    threads: Vec<Thread>,
    tasks: Vec<DumpTask>,
}

fn prof_ok(what: &str, args: &[&str]) -> String {
    let out = run_prof(args);
    assert!(out.status.success(), "{what}: {}", describe(args, &out));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Frames innermost first as the target records them (outermost first).
fn as_truth(frames: &[Frame]) -> Vec<TruthFrame> {
    frames
        .iter()
        .rev()
        .map(|f| TruthFrame(f.filename.clone(), f.name.clone(), f.line))
        .collect()
}

#[test]
fn tasks_names_links_and_frames_match_the_targets_own() {
    crate::skip_without_live_targets!();
    run_each_parallel("", &async_pythons(), WORKERS, |py| {
        let target = Target::start(py, "async_tree", &["1000"]);
        let what = target.what();
        let text = fs::read_to_string(target.dir.path().join("ready.json")).unwrap();
        let truth: TruthTasks = serde_json::from_str(&text).unwrap();
        assert!(
            truth.tasks.len() > 1000,
            "{what}: the target has too few tasks"
        );
        let pid = target.pid.to_string();

        let args = ["dump", "-p", &pid, "--async", "--json"];
        let dump: AsyncDump = serde_json::from_str(&prof_ok(&what, &args))
            .unwrap_or_else(|e| panic!("{what}: --async --json is not {{threads, tasks}}: {e}"));
        assert_not_stopped(target.pid, &what);
        let by_id: BTreeMap<u64, &DumpTask> = dump.tasks.iter().map(|t| (t.id, t)).collect();
        let mut problems = Vec::new();
        if dump.tasks.len() != truth.tasks.len() {
            problems.push(format!(
                "{} tasks, the target has {}",
                dump.tasks.len(),
                truth.tasks.len()
            ));
        }
        for want in &truth.tasks {
            let Some(got) = by_id.get(&want.id) else {
                problems.push(format!("task {} ({:#x}) missing", want.name, want.id));
                continue;
            };
            let label = format!("task {}", want.name);
            if got.name != want.name {
                problems.push(format!("{label}: named {:?}", got.name));
            }
            if got.state != want.state {
                problems.push(format!("{label}: state {}, not {}", got.state, want.state));
            }
            if got.thread_id != Some(want.thread) {
                problems.push(format!(
                    "{label}: thread {:?}, its loop runs on {}",
                    got.thread_id, want.thread
                ));
            }
            let mut links = got.awaited_by.clone();
            links.sort();
            let mut want_links = want.awaited_by.clone();
            want_links.sort();
            if links != want_links {
                problems.push(format!(
                    "{label}: awaited by {links:?}, the target says {want_links:?}"
                ));
            }
            let frames = as_truth(&got.frames);
            if frames != want.frames {
                problems.push(format!(
                    "{label}: frames (outermost first)\n    prof:   {frames:?}\n    target: {:?}",
                    want.frames
                ));
            }
            if let Some(top) = want.stack_top.first()
                && frames.first() != Some(top)
            {
                problems.push(format!(
                    "{label}: outermost frame {:?}, get_stack() says {top:?}",
                    frames.first()
                ));
            }
        }
        let threads: Vec<u64> = dump.threads.iter().map(|t| t.thread_id).collect();
        for t in &truth.tasks {
            if !threads.contains(&t.thread) {
                problems.push(format!(
                    "thread {} of task {} is not among the threads",
                    t.thread, t.name
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{what}: {} problem(s)\n{}",
            problems.len(),
            problems.join("\n")
        );

        // The text tree: each task under the one awaiting it.
        let text = prof_ok(&what, &["dump", "-p", &pid, "--async"]);
        let depth = |name: &str| {
            let needle = format!("task: {name} (");
            text.lines()
                .find(|l| l.trim_start().starts_with(&needle))
                .map(|l| l.len() - l.trim_start().len())
                .unwrap_or_else(|| panic!("{what}: no line for task {name}:\n{text}"))
        };
        for (child, parent) in [("left", "outer"), ("leaf", "right"), ("side-a", "side-b")] {
            assert!(
                depth(child) > depth(parent),
                "{what}: {child} is not drawn under {parent}:\n{text}"
            );
        }
        // gather's children are read from the gathering future's instance attributes
        // (inline values after the C struct on 3.14+).
        assert!(
            text.contains("task: outer (waiting on tasks left, right)"),
            "{what}: outer waits on gather(left, right):\n{text}"
        );
        assert!(
            text.contains("(running)") && text.contains("sock_recv"),
            "{what}: the spinner runs, sock_reader waits in sock_recv:\n{text}"
        );

        check_record(&target, &truth);
    });
}

/// `record --async`: without --idle only the running task, joined below its thread's
/// frames; with --idle, each leaf task under its awaiters.
fn check_record(target: &Target, truth: &TruthTasks) {
    let what = target.what();
    let pid = target.pid.to_string();
    let path = target.dir.path().join("rec.txt");
    let path = path.to_str().unwrap();
    let names = |line: &str| -> Vec<String> {
        let stack = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        stack
            .split(';')
            .map(|f| f.rsplit_once(" (").map_or(f, |(n, _)| n).to_string())
            .collect()
    };
    let spinner = truth.tasks.iter().find(|t| t.name == "spinner").unwrap();
    let spin_name = &spinner.frames[0].1;
    let args = [
        "record", "-p", &pid, "--async", "-d", "1", "-r", "50", "-f", "raw", "-o", path,
    ];
    prof_ok(&what, &args);
    let folded = fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = folded.lines().collect();
    assert!(!lines.is_empty(), "{what}: no samples");
    for line in &lines {
        let n = names(line);
        // The side loop's thread runs no task: its own stack, when it is seen on a CPU
        // (briefly, as it restarts its wait after a dump's pause).
        if n.iter().any(|f| f.ends_with("side_thread")) {
            assert!(
                !line.contains("task: "),
                "{what}: the side loop runs no task, and waiting tasks are idle: {line}"
            );
            continue;
        }
        let at = n.iter().position(|f| f == "task: spinner");
        let ok = at.is_some_and(|i| {
            i > 0 && n[i - 1].ends_with("_run") && n.get(i + 1) == Some(spin_name)
        });
        assert!(
            ok,
            "{what}: without --idle every sample of the main thread is the running spinner, \
             joined below the loop's Handle._run: {line}"
        );
    }

    // With --native the C frames of the task step stay between the loop and the task.
    let args = [
        "record", "-p", &pid, "--async", "--native", "-d", "1", "-r", "20", "-f", "raw", "-o", path,
    ];
    prof_ok(&what, &args);
    assert_not_stopped(target.pid, &what);
    let folded = fs::read_to_string(path).unwrap();
    let joined: Vec<&str> = folded
        .lines()
        .filter(|l| l.contains(";task: spinner ("))
        .collect();
    assert!(
        !joined.is_empty(),
        "{what}: no --native sample of the spinner\n{folded}"
    );
    for line in joined {
        let frames: Vec<&str> = line.split(';').collect();
        let task = frames
            .iter()
            .position(|f| f.starts_with("task: spinner"))
            .unwrap();
        let run = frames[..task].iter().rposition(|f| f.contains("_run ("));
        let between = run.map(|r| &frames[r + 1..task]);
        assert!(
            between.is_some_and(|b| !b.is_empty() && b.iter().all(|f| !f.contains(".py:"))),
            "{what}: with --native, native frames (the C task step) belong between \
             Handle._run and task: spinner: {line}"
        );
    }

    let args = [
        "record", "-p", &pid, "--async", "--idle", "-d", "1", "-r", "20", "-f", "raw", "-o", path,
    ];
    prof_ok(&what, &args);
    let folded = fs::read_to_string(path).unwrap();
    let by_name: BTreeMap<&str, &TruthTask> =
        truth.tasks.iter().map(|t| (t.name.as_str(), t)).collect();
    let by_id: BTreeMap<u64, &TruthTask> = truth.tasks.iter().map(|t| (t.id, t)).collect();
    for leaf in ["left", "leaf", "side-a", "sock_reader", "sleeper-999"] {
        // Outermost first: each awaiter's task frame and frames, then the leaf's.
        let mut chain = vec![by_name[leaf]];
        while let Some(up) = chain.last().unwrap().awaited_by.first() {
            chain.push(by_id[up]);
        }
        let mut want = Vec::new();
        for t in chain.iter().rev() {
            want.push(format!("task: {}", t.name));
            want.extend(t.frames.iter().map(|f| f.1.clone()));
        }
        assert!(
            folded.lines().any(|l| names(l) == want),
            "{what}: no --idle stack {want:?}\n{folded}"
        );
    }
}

#[derive(Deserialize)]
struct Totals {
    heavy: f64,
    light: f64,
}

#[test]
fn record_measures_the_cpu_split_between_two_tasks() {
    crate::skip_without_live_targets!();
    // Two at a time: each target keeps a core busy, and on an oversubscribed machine the
    // scheduler, not prof, decides when a tick lands.
    run_each_parallel("", &async_pythons(), 2, |py| {
        let target = Target::start(py, "async_split", &[]);
        let what = target.what();
        let pid = target.pid.to_string();
        let path = target.dir.path().join("split.txt");
        let path = path.to_str().unwrap();
        let read_totals = || -> Totals {
            let p = target.dir.path().join("totals.json");
            serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
        };
        let before = read_totals();
        let args = [
            "record", "-p", &pid, "--async", "-r", "300", "-d", "5", "-f", "raw", "-o", path,
        ];
        prof_ok(&what, &args);
        let after = read_totals();
        let (h, l) = (after.heavy - before.heavy, after.light - before.light);
        let own = h / (h + l);
        assert!(
            (own - 0.75).abs() < 0.03,
            "{what}: the target's own split is {own:.3}, not 75/25: the target is broken"
        );
        let folded = fs::read_to_string(path).unwrap();
        let count = |task: &str| -> u64 {
            folded
                .lines()
                .filter(|l| l.contains(&format!(";task: {task} (")))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                .sum()
        };
        let (a, b) = (count("heavy"), count("light"));
        assert!(
            a + b >= 200,
            "{what}: only {} task samples\n{folded}",
            a + b
        );
        let share = a as f64 / (a + b) as f64;
        eprintln!(
            "{what}: heavy {share:.3} by prof ({a}/{}), {own:.3} by the target",
            a + b
        );
        assert!(
            (share - own).abs() <= 0.05,
            "{what}: prof measured heavy at {share:.3} of the tasks' samples, the target {own:.3}"
        );
    });
}

#[test]
fn interpreters_without_readable_tasks_get_one_notice_and_their_threads() {
    crate::skip_without_live_targets!();
    let old: Vec<Python> = pythons()
        .into_iter()
        .filter(|py| !py.at_least(3, 8))
        .collect();
    if old.is_empty() {
        eprintln!("skipped: no interpreter older than 3.8 found");
        return;
    }
    run_each("", &old, |py| {
        let target = Target::start(py, "async_split", &[]);
        let what = target.what();
        let pid = target.pid.to_string();
        let path = target.dir.path().join("threads.txt");
        let path = path.to_str().unwrap();
        let args = [
            "record", "-p", &pid, "--async", "-r", "100", "-d", "1", "-f", "raw", "-o", path,
        ];
        let out = run_prof(&args);
        assert!(out.status.success(), "{what}: {}", describe(&args, &out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let notes: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("--async shows its threads only"))
            .collect();
        assert_eq!(notes.len(), 1, "{what}: one notice expected\n{stderr}");
        assert!(notes[0].contains("3.8 and later"), "{what}: {}", notes[0]);
        // Not counted as a failed read on every tick. A stack can still change during
        // every read of a tick now and then: the loop switches tasks each millisecond.
        let (samples, errors) =
            summary_counts(&stderr).unwrap_or_else(|| panic!("{what}: no summary\n{stderr}"));
        assert!(
            samples > 0 && errors * 20 <= samples,
            "{what}: {samples} samples, {errors} errors\n{stderr}"
        );
        let folded = fs::read_to_string(path).unwrap();
        assert!(
            folded.contains("spin (") && !folded.contains("task: "),
            "{what}: the thread's own stacks, and no task frames, expected\n{folded}"
        );
        let args = ["dump", "-p", &pid, "--async"];
        let out = run_prof(&args);
        assert!(out.status.success(), "{what}: {}", describe(&args, &out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr
                .lines()
                .filter(|l| l.contains("3.8 and later"))
                .count()
                == 1,
            "{what}: {}",
            describe(&args, &out)
        );
    });
}
