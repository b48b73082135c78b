//! prof's command line: errors that say what is wrong in one line, and py-spy's spellings.
//!
//! Most checks here are about the command line rather than the interpreter, so they run
//! on one interpreter (the first found; `PROF_TEST_PYTHONS` picks another).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use prof::cli::MAX_RATE;

/// The interpreter for checks that do not depend on the version; None (with a notice)
/// when there is none.
fn a_python(test: &str) -> Option<Python> {
    let py = pythons().into_iter().next();
    if py.is_none() {
        eprintln!("skipped: {test}: no Python interpreter found");
    }
    py
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A pid that does not exist (above any pid_max, below the largest pid prof accepts).
const NO_SUCH_PID: &str = "2147483000";

#[test]
fn another_users_process_is_refused_with_advice() {
    crate::skip_without_live_targets!();
    let test = "another_users_process_is_refused_with_advice";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: {test}: needs root, to run prof as another user");
        return;
    }
    // `nobody` exists on every Debian-like system; a user made for the test would outlive
    // a killed test run.
    let Some((uid, gid)) = user_ids("nobody") else {
        eprintln!("skipped: {test}: no user `nobody`");
        return;
    };
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(prof_path())
            .args(args);
        run_with_deadline(&mut cmd, args)
    };
    let version = as_nobody(&["--version"]);
    if !version.status.success() {
        eprintln!(
            "skipped: {test}: cannot run {} as nobody: {}",
            prof_path(),
            stderr_of(&version).trim()
        );
        return;
    }
    let Some(py) = a_python(test) else { return };
    let target = Target::start(&py, "mixed", &[]);
    // record checks its output file first: give nobody somewhere to write.
    let out_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(out_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let svg = out_dir.path().join("x.svg");
    let pid = target.pid.to_string();
    for args in [
        vec!["dump", "-p", &pid],
        vec!["record", "-p", &pid, "-d", "1", "-o", svg.to_str().unwrap()],
    ] {
        let out = as_nobody(&args);
        let line = assert_one_line_error(&args, &out);
        let ctx = format!("{}: {}", target.what(), describe(&args, &out));
        assert!(line.contains("permission denied"), "{ctx}");
        assert!(
            ["sudo", "CAP_SYS_PTRACE", "ptrace_scope", "SYS_PTRACE"]
                .iter()
                .any(|advice| line.contains(advice)),
            "no advice: {ctx}"
        );
        assert!(!line.contains("exited"), "{ctx}");
    }
    assert!(!svg.exists(), "record left {} behind", svg.display());
    assert_not_stopped(target.pid, &target.what());
}

/// uid and gid of `user`, from the passwd database.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = line.trim().split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

#[test]
fn kernel_thread_is_named() {
    crate::skip_without_live_targets!();
    // PF_KTHREAD in /proc/PID/stat's flags (the 9th field).
    let kthread = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
                after
                    .split_whitespace()
                    .nth(6)
                    .and_then(|f| f.parse::<u64>().ok())
                    .is_some_and(|flags| flags & 0x0020_0000 != 0)
            })
        });
    let Some(kthread) = kthread else {
        eprintln!("skipped: kernel_thread_is_named: no kernel thread visible in /proc");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("x.svg");
    let pid = kthread.to_string();
    for args in [
        vec!["dump", "-p", &pid],
        vec!["dump", "--native", "-p", &pid],
        vec!["record", "-p", &pid, "-o", svg.to_str().unwrap()],
    ] {
        let out = run_prof(&args);
        let line = assert_one_line_error(&args, &out);
        assert!(
            line.contains("kernel thread") && !line.contains("exited"),
            "{}",
            describe(&args, &out)
        );
    }
    assert!(!svg.exists(), "record left {} behind", svg.display());
}

#[test]
fn prof_cannot_stop_itself() {
    crate::skip_without_live_targets!();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("x.svg");
    // The shell's pid becomes prof's through exec.
    for script in [
        "exec \"$0\" dump --native -p $$".to_string(),
        format!(
            "exec \"$0\" record --native -d 1 -o {} -p $$",
            svg.display()
        ),
    ] {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script, prof_path()]);
        let args = ["sh", "-c", &script];
        let out = run_with_deadline(&mut cmd, &args);
        let line = assert_one_line_error(&args, &out);
        assert!(
            line.contains("prof itself") && !line.contains("security module"),
            "{}",
            describe(&args, &out)
        );
    }
}

#[test]
fn process_traced_by_another_tool_is_named() {
    crate::skip_without_live_targets!();
    let test = "process_traced_by_another_tool_is_named";
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: {test}: strace is not installed");
        return;
    }
    let Some(py) = a_python(test) else { return };
    let target = Target::start(&py, "mixed", &[]);
    let mut strace = Group::spawn(
        Command::new("strace")
            .args(["-o", "/dev/null", "-p"])
            .arg(target.pid.to_string())
            .stderr(std::process::Stdio::null()),
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    let tracer = || {
        fs::read_to_string(format!("/proc/{}/status", target.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    while tracer() != strace.pid().to_string() {
        assert!(
            strace.try_wait().is_none(),
            "strace could not attach to {}",
            target.what()
        );
        assert!(Instant::now() < deadline, "strace did not attach in time");
        thread::sleep(Duration::from_millis(20));
    }
    let pid = target.pid.to_string();
    let args = ["dump", "-p", &pid];
    let out = run_prof(&args);
    let line = assert_one_line_error(&args, &out);
    assert!(
        line.contains("already being traced")
            && line.contains(&strace.pid().to_string())
            && line.contains("strace"),
        "{}: {}",
        target.what(),
        describe(&args, &out)
    );
}

#[test]
fn negative_numbers_are_one_line_errors() {
    crate::skip_without_live_targets!();
    let me = std::process::id().to_string();
    for (args, flag) in [
        (vec!["record", "-r", "-1", "-p", &me], "--rate"),
        (vec!["record", "-d", "-1", "-p", &me], "--duration"),
        (vec!["record", "--rate=-5", "-p", &me], "--rate"),
        (vec!["top", "-r", "-1", "-p", &me], "--rate"),
        (vec!["top", "--delay", "-1", "-p", &me], "--delay"),
        (vec!["dump", "-p", "-1"], "--pid"),
    ] {
        let out = run_prof(&args);
        let line = assert_one_line_error(&args, &out);
        assert!(line.contains(flag), "{}", describe(&args, &out));
    }
}

#[test]
fn rate_above_the_maximum_is_refused() {
    crate::skip_without_live_targets!();
    let me = std::process::id().to_string();
    let max = format!("{MAX_RATE}");
    let over = format!("{}", MAX_RATE + 1.0);
    for args in [
        vec!["record", "-r", "1e9", "-p", &me],
        vec!["record", "-r", &over, "-p", &me],
        vec!["top", "-r", "1e9", "-p", &me],
    ] {
        let out = run_prof(&args);
        let line = assert_one_line_error(&args, &out);
        assert!(
            line.contains("--rate") && line.contains(&max),
            "the maximum is not named\n{}",
            describe(&args, &out)
        );
    }
    // The maximum itself is accepted: the error is about the pid.
    let args = ["record", "-r", &max, "-p", NO_SUCH_PID];
    let out = run_prof(&args);
    let line = assert_one_line_error(&args, &out);
    assert!(line.contains("no process"), "{}", describe(&args, &out));
    // And --help says what it is.
    let help = run_prof(&["record", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains(&max),
        "record --help does not name {max}:\n{help}"
    );
}

#[test]
fn usage_errors_are_one_line() {
    crate::skip_without_live_targets!();
    for (args, says) in [
        (vec!["record", "--fromat", "raw", "-p", "1"], "--format"),
        (vec!["dump"], "--pid"),
        (vec!["dump", "-p", "12", "13"], "13"),
        (vec!["dump", "-p", "12", "--sysroot", "/"], "--sysroot"),
        (
            vec!["dump", "-p", "12", "--executable", "/bin/ls"],
            "--executable",
        ),
        (vec!["dump", "--core", "x", "-s"], "--subprocesses"),
        (vec!["record", "-r", "fast", "-p", "1"], "fast"),
        (
            vec!["record", "-f", "bogus", "-p", "1"],
            "'bogus' for '--format <FORMAT>' [possible values: flamegraph, raw, speedscope, chrometrace, pprof]",
        ),
        (vec!["nosuchcommand"], "nosuchcommand"),
        (vec!["record", "-p", "1", "python3", "app.py"], "--pid"),
    ] {
        let out = run_prof(&args);
        let line = assert_one_line_error(&args, &out);
        assert!(
            line.starts_with("prof: ") && line.contains(says) && line.contains("--help"),
            "{}",
            describe(&args, &out)
        );
    }
    // Help is not an error.
    let out = run_prof(&["dump", "--help"]);
    assert!(
        out.status.success(),
        "{}",
        describe(&["dump", "--help"], &out)
    );
}

#[test]
fn hex_pid() {
    crate::skip_without_live_targets!();
    let Some(py) = a_python("hex_pid") else {
        return;
    };
    let target = Target::start(&py, "mixed", &[]);
    let hex = format!("{:#x}", target.pid);
    target.settle();
    let args = ["dump", "-p", &hex, "--json"];
    let out = run_prof(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let dump: Vec<Thread> = serde_json::from_slice(&out.stdout).unwrap();
    target.assert_stacks(&dump);
    assert!(
        dump.iter().all(|t| t.pid == target.pid as i64),
        "{}: pids {:?}",
        target.what(),
        dump.iter().map(|t| t.pid).collect::<Vec<_>>()
    );
    let upper = format!("0X{:X}", target.pid);
    let args = ["dump", "-p", &upper];
    let out = run_prof(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
}

/// `prof record` of `cli_argv.py` with `before` between prof's options and the command,
/// and `after` as the command's own arguments: the arguments the script saw, prof's
/// output, and the profile.
fn record_argv(py: &Python, before: &[&str], after: &[&str]) -> (Vec<String>, Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("p.txt");
    let script = testdata().join("cli_argv.py");
    let mut args = vec!["record", "-o", out_file.to_str().unwrap(), "-f", "raw"];
    args.extend_from_slice(before);
    args.push(py.path.to_str().unwrap());
    args.push(script.to_str().unwrap());
    args.push(dir.path().to_str().unwrap());
    args.extend_from_slice(after);
    let out = run_prof(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let argv: Vec<String> = fs::read_to_string(dir.path().join("argv.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("the script wrote no argv.json\n{}", describe(&args, &out)));
    let profile = fs::read_to_string(&out_file).unwrap_or_default();
    (argv[1..].to_vec(), out, profile)
}

#[test]
fn command_without_double_dash() {
    crate::skip_without_live_targets!();
    let Some(py) = a_python("command_without_double_dash") else {
        return;
    };
    // What looks like prof's own flags after the command is the command's.
    let theirs = ["--port", "1", "-d", "0.1", "-r", "7", "--", "x"];
    for before in [&[][..], &["--"][..]] {
        let (argv, out, profile) = record_argv(&py, before, &theirs);
        let what = format!("before the command: {before:?}\n{}", stderr_of(&out));
        assert_eq!(argv, theirs, "{what}");
        // -r 7 and -d 0.1 were not prof's: the default rate over the script's second.
        assert!(
            stderr_of(&out).contains("of 100 Hz requested"),
            "not the default rate: {what}"
        );
        assert!(
            profile.contains("cli_argv_work"),
            "the profile misses the script's work: {what}\n{profile}"
        );
    }
}

#[test]
fn hideprogress_hides_the_status_line() {
    crate::skip_without_live_targets!();
    let test = "hideprogress_hides_the_status_line";
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: {test}: `script` (util-linux) is not installed, no pty");
        return;
    }
    let Some(py) = a_python(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let script = testdata().join("cli_argv.py");
    // Under `script`, prof's stderr is a terminal, where it shows its status line.
    let run = |extra: &str| {
        let line = format!(
            "{} record {extra} -o {} -f raw {} {} {}",
            quote(prof_path()),
            quote(dir.path().join("p.txt").to_str().unwrap()),
            quote(py.path.to_str().unwrap()),
            quote(script.to_str().unwrap()),
            quote(dir.path().to_str().unwrap()),
        );
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &line, "/dev/null"]);
        let out = run_with_deadline(&mut cmd, &["script", "-c", &line]);
        assert!(
            out.status.success(),
            "{}",
            describe(&["script", "-c", &line], &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = run("");
    assert!(
        shown.contains("prof: recording"),
        "no status line on a terminal without --hideprogress:\n{shown}"
    );
    let hidden = run("--hideprogress");
    assert!(
        !hidden.contains("prof: recording") && hidden.contains("Hz achieved"),
        "--hideprogress:\n{hidden}"
    );
}

#[test]
fn capture_is_refused_with_the_reason() {
    crate::skip_without_live_targets!();
    let args = ["record", "--capture", "-o", "x.svg", "python3", "app.py"];
    let out = run_prof(&args);
    let line = assert_one_line_error(&args, &out);
    assert!(
        line.contains("--capture") && line.contains("redirect"),
        "{}",
        describe(&args, &out)
    );
}

#[test]
fn repeated_locals_flag() {
    crate::skip_without_live_targets!();
    let Some(py) = a_python("repeated_locals_flag") else {
        return;
    };
    let target = Target::start(&py, "mixed", &[]);
    // Which locals each frame has; their values may move on (a busy thread counts).
    let names = |dump: &[Thread]| -> BTreeSet<(u64, String, String)> {
        dump.iter()
            .flat_map(|t| {
                t.frames.iter().flat_map(move |f| {
                    f.locals
                        .iter()
                        .flatten()
                        .map(move |l| (t.thread_id, f.name.clone(), l.name.clone()))
                })
            })
            .collect()
    };
    let once = target.dump_json(&["--locals"]);
    assert!(
        !names(&once).is_empty(),
        "{}: no locals with --locals",
        target.what()
    );
    let twice = target.dump_json(&["-ll"]);
    target.assert_stacks(&twice);
    assert_eq!(
        names(&twice),
        names(&once),
        "{}: -ll shows other locals than --locals",
        target.what()
    );
    // The parked thread's values are known: -ll shows them as they are.
    let (ident, truth) = target
        .truth
        .threads
        .iter()
        .find(|(_, t)| t.locals.is_some())
        .expect("mixed.py has a thread with known locals");
    let ident: u64 = ident.parse().unwrap();
    let shown: BTreeSet<(String, Option<String>)> = twice
        .iter()
        .filter(|t| t.thread_id == ident)
        .flat_map(|t| &t.frames)
        .flat_map(|f| f.locals.iter().flatten())
        .map(|l| (l.name.clone(), l.repr.clone()))
        .collect();
    for (name, repr) in truth.locals.as_ref().unwrap() {
        let found = shown
            .iter()
            .any(|(n, r)| n == name && (repr.is_none() || r == repr));
        assert!(
            found,
            "{}: -ll: local {name} = {repr:?} missing in {shown:?}",
            target.what()
        );
    }
}

#[test]
fn dump_subprocesses() {
    crate::skip_without_live_targets!();
    let Some(py) = a_python("dump_subprocesses") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Under a shell that stays (no exec): a root without Python, whose children have it.
    let mut shell = Group::spawn(
        Command::new("sh")
            .args(["-c", "\"$@\"; exit $?", "sh"])
            .arg(&py.path)
            .arg(testdata().join("rec_parent.py"))
            .arg(dir.path())
            .arg("60")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(std::process::Stdio::null()),
    );
    let shell_s = shell.pid().to_string();
    let pids_file = dir.path().join("pids.json");
    let deadline = Instant::now() + READY_TIMEOUT;
    while !pids_file.exists() {
        assert!(shell.try_wait().is_none(), "rec_parent.py exited early");
        assert!(Instant::now() < deadline, "rec_parent.py not ready in time");
        thread::sleep(Duration::from_millis(20));
    }
    let pids: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&pids_file).unwrap()).unwrap();
    let pid_of = |k: &str| pids[k].as_i64().unwrap();
    let (root, popen, mp, sleep) = (
        pid_of("parent"),
        pid_of("popen"),
        pid_of("mp"),
        pid_of("sleep"),
    );
    let root_s = root.to_string();
    // Each Python child must be seen in its work function; the Popen child may still be
    // starting its interpreter at first.
    let wanted = [
        (root, "parent_wait"),
        (popen, "popen_child_work"),
        (mp, "mp_child_work"),
    ];
    // What is wrong with `dump -s` from the Python parent and from the shell above it
    // (None once it was right).
    let mut problems: [Option<Vec<String>>; 2] = [Some(Vec::new()), Some(Vec::new())];
    for round in 0..40 {
        let which = round % 2;
        if problems[which].is_none() {
            continue;
        }
        let from = [&root_s, &shell_s][which];
        let args = ["dump", "-s", "-p", from, "--json"];
        let out = run_prof(&args);
        assert!(out.status.success(), "{}", describe(&args, &out));
        let dump: Vec<Thread> = serde_json::from_slice(&out.stdout).unwrap();
        let mut wrong = Vec::new();
        for (pid, function) in wanted {
            let seen = dump
                .iter()
                .filter(|t| t.pid == pid)
                .any(|t| t.frames.iter().any(|f| f.name.ends_with(function)));
            if !seen {
                wrong.push(format!("pid {pid}: no thread in {function}"));
            }
        }
        for (pid, what) in [(sleep.to_string(), "sleep"), (shell_s.clone(), "the shell")] {
            if dump.iter().any(|t| t.pid.to_string() == pid) {
                wrong.push(format!("{what} (pid {pid}) is not Python but was dumped"));
            }
        }
        problems[which] = (!wrong.is_empty()).then_some(wrong);
        if problems.iter().all(Option::is_none) {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(
        problems.iter().all(Option::is_none),
        "dump -s from the parent, from the shell: {problems:?}"
    );
    // Text: one header per process.
    let args = ["dump", "--subprocesses", "-p", &root_s];
    let out = run_prof(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    for (pid, _) in wanted {
        assert!(
            text.contains(&format!("Process {pid}: ")),
            "no header for {pid}\n{}",
            describe(&args, &out)
        );
    }
    for pid in [root, popen, mp] {
        assert_not_stopped(pid as u32, "dump -s");
    }
}
