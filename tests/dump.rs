//! `prof dump` against live targets, on every interpreter found.
//!
//! Expected values come from the targets themselves (testdata/truth.py), so a
//! test fails whenever prof's view differs from the interpreter's own.
//!
//! `PROF_TEST_PYTHONS=pyenv-3.12,sid-3.15` narrows a run to some interpreters;
//! `PROF_TEST_REQUIRE_ALL=1` turns a missing interpreter into a failure.
//! Run with `--nocapture` to see per-interpreter results and skip notices.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn deep_recursion() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "recursion", &[]);
        let deepest = target
            .truth
            .threads
            .values()
            .map(|t| t.frames.len())
            .max()
            .unwrap_or(0);
        assert!(
            deepest >= 1000,
            "{}: target only reached depth {deepest}",
            target.what()
        );
        let dump = target.dump_json(&[]);
        target.assert_stacks(&dump);
    });
}

#[test]
fn fifty_threads() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "threads", &[]);
        assert_eq!(target.truth.threads.len(), 50, "{}", target.what());
        let dump = target.dump_json(&[]);
        target.assert_stacks(&dump);
    });
}

#[test]
fn unicode_names_and_paths() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "unicode", &[]);
        let dump = target.dump_json(&[]);
        target.assert_stacks(&dump);
        // Also checked here, not only in thread_names_and_native_ids: these
        // names mix 1-, 2- and 4-byte code points.
        target.assert_identities(&dump);
    });
}

#[test]
fn generators_coroutines_exec_lambdas_and_callbacks() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "mixed", &[]);
        let dump = target.dump_json(&[]);
        target.assert_stacks(&dump);
    });
}

#[test]
fn thread_names_and_native_ids() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "threads", &[]);
        let dump = target.dump_json(&[]);
        target.assert_identities(&dump);
    });
}

#[test]
fn thread_activity_and_gil() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "threads", &[]);
        let kinds: BTreeMap<&str, usize> =
            target
                .truth
                .threads
                .values()
                .fold(BTreeMap::new(), |mut m, t| {
                    *m.entry(t.park.as_str()).or_default() += 1;
                    m
                });
        // The checks below mean little unless every kind is present.
        for kind in ["sleep", "lock", "socket", "select", "busy", "busy_c"] {
            assert!(
                kinds.contains_key(kind),
                "{}: no thread parked in {kind}",
                target.what()
            );
        }
        let dump = target.dump_json(&[]);
        target.assert_activity(&dump);
    });
}

#[test]
fn nonblocking_dump() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "recursion", &["300", "200"]);
        let dump = target.dump_json(&["--nonblocking"]);
        target.assert_stacks(&dump);
    });
}

#[test]
fn locals() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "mixed", &[]);
        let plain = target.dump_json(&[]);
        for t in &plain {
            for f in &t.frames {
                assert!(
                    f.locals.is_none(),
                    "{}: locals given without --locals: {} {:?}",
                    target.what(),
                    f.name,
                    f.locals
                );
            }
        }

        let dump = target.dump_json(&["--locals"]);
        target.assert_stacks(&dump);
        target.assert_locals(&dump);
    });
}

/// Accepts any of the usual spellings of a thread's id in the header: the
/// native id, or the pthread id in decimal or hex.
fn header_matches(id: &str, ident: u64, native: u64) -> bool {
    id == native.to_string()
        || id == ident.to_string()
        || id.eq_ignore_ascii_case(&format!("{ident:#x}"))
}

#[test]
fn text_output_format() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "unicode", &[]);
        let truth = &target.truth;
        for full in [true, false] {
            let extra: &[&str] = if full { &["--full-filenames"] } else { &[] };
            let text = target.dump_text(extra);
            let fail = |msg: String| -> ! {
                panic!(
                    "{} (prof dump {extra:?}): {msg}\noutput:\n{text}",
                    target.what()
                )
            };
            let parsed = parse_text_dump(&text).unwrap_or_else(|e| fail(e));
            if !parsed
                .process_line
                .starts_with(&format!("Process {}", target.pid))
            {
                fail(format!(
                    "first line should name the process: {:?}",
                    parsed.process_line
                ));
            }
            let version = truth.version_string();
            if !parsed.version_line.starts_with("Python") || !parsed.version_line.contains(&version)
            {
                fail(format!(
                    "second line should give Python {version}: {:?}",
                    parsed.version_line
                ));
            }
            if parsed.threads.len() != truth.threads.len() {
                fail(format!(
                    "{} threads, target has {}",
                    parsed.threads.len(),
                    truth.threads.len()
                ));
            }
            for (ident, t) in &truth.threads {
                let ident: u64 = ident.parse().unwrap();
                let matching: Vec<&TextThread> = parsed
                    .threads
                    .iter()
                    .filter(|h| header_matches(&h.id, ident, t.native_id))
                    .collect();
                let [shown] = matching[..] else {
                    fail(format!(
                        "{} headers for thread {ident} (native {}) \"{}\"",
                        matching.len(),
                        t.native_id,
                        t.name
                    ))
                };
                if shown.name.as_deref() != Some(t.name.as_str()) {
                    fail(format!(
                        "thread {}: name {:?}, expected {:?}",
                        shown.id, shown.name, t.name
                    ));
                }
                let status_ok = if t.is_idle() {
                    shown.status == "idle"
                } else {
                    shown.status == "active" || shown.status == "active+gil"
                };
                if !status_ok {
                    fail(format!(
                        "thread {} parked in {}: status {:?}",
                        shown.id, t.park, shown.status
                    ));
                }
                let want: Vec<TruthFrame> = t.expected().into_iter().rev().collect();
                let names_lines = |fs: &[(String, String, i64)]| -> Vec<(String, i64)> {
                    fs.iter().map(|(n, _, l)| (n.clone(), *l)).collect()
                };
                let want_nl: Vec<(String, i64)> = want.iter().map(|f| (f.1.clone(), f.2)).collect();
                if names_lines(&shown.frames) != want_nl {
                    fail(format!(
                        "thread {} \"{}\": frames (innermost first) differ; expected:\n{}",
                        shown.id,
                        t.name,
                        want.iter()
                            .map(|f| format!("    {} ({}:{})\n", f.1, f.0, f.2))
                            .collect::<String>()
                    ));
                }
                for ((_, file, _), w) in shown.frames.iter().zip(&want) {
                    let ok = if full {
                        *file == w.0
                    } else {
                        // Shortened names are a trailing part of the full path.
                        !file.is_empty() && (w.0 == *file || w.0.ends_with(&format!("/{file}")))
                    };
                    if !ok {
                        fail(format!("thread {}: file {file:?} for {:?}", shown.id, w.0));
                    }
                }
            }
        }
    });
}

#[test]
fn short_filenames_in_json() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "mixed", &[]);
        let dump = target.dump_json(&[]);
        target.assert_stacks(&dump);
        for t in &dump {
            for f in &t.frames {
                let s = &f.short_filename;
                assert!(
                    !s.is_empty() && (f.filename == *s || f.filename.ends_with(&format!("/{s}"))),
                    "{}: short_filename {s:?} is not a trailing part of {:?}",
                    target.what(),
                    f.filename
                );
            }
        }
    });
}

/// The target calls os._exit at a random moment while prof keeps dumping it:
/// prof must neither hang nor crash, must answer 0 (with valid JSON) or 1
/// (with one line), and must never leave the target stopped.
#[test]
fn target_exits_while_dumped() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        for (lo, hi) in [("0", "150"), ("150", "1000")] {
            let mut target = Target::start(py, "exiting", &[lo, hi]);
            let pid = target.pid.to_string();
            let args = ["dump", "-p", pid.as_str(), "--json"];
            let start = Instant::now();
            let mut after_exit = 0;
            let mut outcomes = BTreeMap::<String, usize>::new();
            // Keep going a few rounds past the exit: a zombie, then nothing.
            while after_exit < 3 {
                let exited = task_states(target.pid).iter().all(|(_, s)| *s == 'Z');
                if exited {
                    after_exit += 1;
                    if after_exit == 2 {
                        // Reap, so the last round sees no process at all.
                        target.group().try_wait();
                    }
                }
                let out = run_prof(&args);
                match out.status.code() {
                    Some(0) => {
                        serde_json::from_slice::<Vec<Thread>>(&out.stdout).unwrap_or_else(|e| {
                            panic!(
                                "{}: exit 0 but bad JSON: {e}\n{}",
                                target.what(),
                                describe(&args, &out)
                            )
                        });
                        *outcomes.entry("ok".into()).or_default() += 1;
                    }
                    Some(1) => {
                        let line = assert_one_line_error(&args, &out);
                        *outcomes.entry(line).or_default() += 1;
                    }
                    _ => panic!(
                        "{}: prof died or exited oddly\n{}",
                        target.what(),
                        describe(&args, &out)
                    ),
                }
                assert_not_stopped(target.pid, &target.what());
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "{}: target did not exit; outcomes so far {outcomes:?}",
                    target.what()
                );
            }
            eprintln!("{} exit after {lo}..{hi} ms: {outcomes:?}", target.what());
        }
    });
}

#[test]
fn nonexistent_pid() {
    crate::skip_without_live_targets!();
    // A pid that just belonged to a reaped child is as sure a miss as any.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().unwrap();
    assert!(
        !fs::exists(format!("/proc/{pid}")).unwrap_or(true),
        "pid {pid} was reused"
    );
    for json in [false, true] {
        let pid = pid.to_string();
        let mut args = vec!["dump", "-p", pid.as_str()];
        if json {
            args.push("--json");
        }
        let out = run_prof(&args);
        assert_one_line_error(&args, &out);
        assert!(
            out.stdout.is_empty(),
            "stdout should be empty\n{}",
            describe(&args, &out)
        );
    }
}

#[test]
fn non_python_process() {
    crate::skip_without_live_targets!();
    let sleeper = Group::spawn(
        Command::new("sleep")
            .arg("60")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = sleeper.pid();
    // exec of sleep must have happened, or prof might see the test binary.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| !p.to_string_lossy().contains("sleep"))
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "sleep did not start");
        thread::sleep(Duration::from_millis(5));
    }
    for json in [false, true] {
        let pid = pid.to_string();
        let mut args = vec!["dump", "-p", pid.as_str()];
        if json {
            args.push("--json");
        }
        let out = run_prof(&args);
        let line = assert_one_line_error(&args, &out);
        assert!(
            line.to_lowercase().contains("python"),
            "the error should say the process is not Python: {line:?}"
        );
        assert_not_stopped(sleeper.pid(), "sleep 60");
    }
}

/// A stack deeper than `--depth` (4096 by default) shows its innermost frames and one
/// `[N frames not shown]` frame counting the others, N from the target's own depth; a
/// larger `--depth` shows it whole. Before, it showed no frame at all.
#[test]
fn stacks_deeper_than_the_depth_end_in_a_count_of_the_rest() {
    crate::skip_without_live_targets!();
    for_each_python(|py| {
        let target = Target::start(py, "recursion", &["5000", "300"]);
        let what = target.what();
        let (main, deepest) = target
            .truth
            .threads
            .iter()
            .max_by_key(|(_, t)| t.frames.len())
            .expect("threads");
        let total = deepest.expected().len();
        assert!(
            total > 5000,
            "{what}: the target only reached {total} frames"
        );
        target.assert_stacks(&target.dump_json(&["--depth", "6000"]));
        for depth in [4096, 100] {
            let d = depth.to_string();
            let dump = target.dump_json(&["--depth", &d]);
            assert_eq!(dump.len(), target.truth.threads.len(), "{what}");
            for t in &dump {
                let truth = target.truth.thread(t.thread_id).expect("known thread");
                let want = truth.expected();
                if want.len() <= depth {
                    assert_eq!(stack_problem(truth, t), None, "{what}: --depth {depth}");
                    continue;
                }
                let ctx = format!("{what}: --depth {depth}, thread \"{}\"", truth.name);
                assert_eq!(t.frames.len(), depth + 1, "{ctx}: frames shown");
                let shown: Vec<TruthFrame> = t.frames[..depth]
                    .iter()
                    .map(|f| TruthFrame(f.filename.clone(), f.name.clone(), f.line))
                    .collect();
                let innermost: Vec<TruthFrame> = want.iter().rev().take(depth).cloned().collect();
                assert!(shown == innermost, "{ctx}: not the innermost frames");
                let marker = &t.frames[depth];
                let hidden = want.len() - depth;
                assert_eq!(
                    (marker.name.as_str(), marker.filename.as_str(), marker.line),
                    (format!("[{hidden} frames not shown]").as_str(), "", 0),
                    "{ctx}"
                );
            }
        }
        let text = target.dump_text(&[]);
        let line = format!("    [{} frames not shown]", total - 4096);
        let block = text
            .split("\n\n")
            .find(|b| b.contains(&format!("\"{}\"", deepest.name)))
            .unwrap_or_else(|| panic!("{what}: no thread {main} in\n{text}"));
        assert_eq!(block.lines().last(), Some(line.as_str()), "{what}");
        assert_eq!(block.lines().count(), 1 + 4096 + 1, "{what}");
    });
}

#[test]
fn depth_out_of_range_is_one_line() {
    crate::skip_without_live_targets!();
    let me = std::process::id().to_string();
    for depth in ["0", "65537"] {
        let args = ["dump", "-p", me.as_str(), "--depth", depth];
        let line = assert_one_line_error(&args, &run_prof(&args));
        assert!(line.contains("--depth"), "{line}");
    }
}
