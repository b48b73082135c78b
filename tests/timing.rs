//! The sampler's timing against a live target: what prof asks of the kernel for its own
//! sampling thread, and that the target's threads are left as they were.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The timer slack of task `tid` (any thread id resolves under /proc), or why it cannot be
/// read: another process's needs CAP_SYS_NICE.
fn timer_slack_ns(tid: u32) -> Result<u64, String> {
    let path = format!("/proc/{tid}/timerslack_ns");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|e| format!("{path}: {text:?}: {e}"))
}

/// Every thread of `pid` with its name.
fn threads(pid: u32) -> Vec<(u32, String)> {
    tasks(pid)
        .into_iter()
        .filter_map(|(tid, dir)| {
            let comm = fs::read_to_string(dir.join("comm")).ok()?;
            Some((tid, comm.trim().to_string()))
        })
        .collect()
}

/// At 10 kHz a period is 100 µs, and a normal thread's 50 µs of timer slack (the kernel
/// may end each sleep that late) lost ~3% of the ticks on a quiet machine: the sampling
/// thread sleeps with a slack of at most a twentieth of the period. prof's other threads
/// and every thread of the target keep theirs.
#[test]
fn the_sampling_thread_alone_sleeps_with_a_slack_within_its_period() {
    crate::skip_without_live_targets!();
    let Some(py) = newest_python("timing") else {
        return;
    };
    let target = Target::start(&py, "threads", &[]);
    let before: Vec<(u32, Result<u64, String>)> = threads(target.pid)
        .into_iter()
        .map(|(tid, _)| (tid, timer_slack_ns(tid)))
        .collect();
    if let Some((_, Err(why))) = before.iter().find(|(_, s)| s.is_err()) {
        eprintln!(
            "skipped: the_sampling_thread_alone_sleeps_with_a_slack_within_its_period: {why}"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.txt");
    let rate = 10_000u64;
    let mut prof = Group::spawn(
        Command::new(prof_path())
            .args([
                "record",
                "-p",
                &target.pid.to_string(),
                "-r",
                &rate.to_string(),
            ])
            .args(["-d", "60", "--nonblocking", "-f", "raw", "-o"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let own = timer_slack_ns(std::process::id()).expect("own timer slack");
    let period_ns = 1_000_000_000 / rate;
    // The thread exists before it sets its slack: wait (bounded) until it has.
    let deadline = Instant::now() + PROF_TIMEOUT;
    let (sampler, others) = loop {
        if let Some(status) = prof.try_wait() {
            panic!("prof exited ({status}) while sampling {}", target.what());
        }
        let all = threads(prof.pid());
        let sampler = all
            .iter()
            .find(|(_, name)| name == "sampler")
            .and_then(|(tid, _)| timer_slack_ns(*tid).ok());
        if sampler.is_some_and(|s| s * 20 <= period_ns) || Instant::now() >= deadline {
            break (sampler, all);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let sampler = sampler.unwrap_or_else(|| panic!("no sampler thread in prof: {others:?}"));
    assert!(
        sampler * 20 <= period_ns,
        "the sampling thread's timer slack is {sampler} ns at -r {rate}: more than a twentieth of the {period_ns} ns period"
    );
    for (tid, name) in others.iter().filter(|(_, n)| n != "sampler") {
        assert_eq!(
            timer_slack_ns(*tid),
            Ok(own),
            "prof's thread {tid} ({name}) does not keep the slack it was started with"
        );
    }
    for (tid, was) in &before {
        assert_eq!(
            &timer_slack_ns(*tid),
            was,
            "{}: thread {tid}'s timer slack changed under prof",
            target.what()
        );
    }
    assert_not_stopped(target.pid, &target.what());
    drop(prof);
}
