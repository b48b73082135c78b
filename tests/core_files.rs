//! `prof dump --core` (the binary) on real cores of CPython processes, compared with what
//! the processes recorded about themselves.
//!
//! - gdb's `gcore` of a running target (testdata/mixed.py), on every interpreter found:
//!   stacks, thread names and ids, locals, and with `--native` the same Python frames
//!   merged into native ones. gcore writes no segment for the file mappings it leaves
//!   out; the core's `NT_FILE` names the files, so no `--executable` is needed.
//! - kernel cores of processes that abort three Python calls deep, on every interpreter
//!   found, when `kernel.core_pattern` writes plain files into the working directory;
//!   one of them cut short must be answered in one line.
//! - aarch64: qemu-user cannot ptrace, so cores are the only way to run prof's aarch64
//!   reading (registers, native unwind, Python stacks) on real aarch64 processes. Every
//!   aarch64 CPython in the sysroots of `get-aarch64-toolchain` (`PROF_AARCH64`, default
//!   /opt/prof-aarch64) is run under `qemu-aarch64-static -L <sysroot>`; qemu writes
//!   `qemu_<prog>_<date>_<pid>.core` (without `NT_FILE`, so the mappings come from the
//!   dynamic linker's list), read with `--sysroot`.
//! - a core of a program without Python, and files that are no core.
//!
//! Skipped with a notice when the tools, interpreters or core pattern are missing.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Generous: qemu on a small, shared machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Enough for a CPython core (about 15 MB), far below qemu's own (about 160 MB).
const CORE_LIMIT: u64 = 64 << 20;

const SCRIPT: &str = "\
import os

def inner():
    os.abort()

def middle():
    inner()

def outer():
    middle()

outer()
";

/// (function, line) innermost first, as SCRIPT runs them when it aborts.
const EXPECTED: [(&str, i64); 4] = [("inner", 4), ("middle", 7), ("outer", 10), ("<module>", 12)];

const SCRIPT_NAME: &str = "abort_nested.py";

/// The marker frame of a merge that did not line up.
const UNCERTAIN: &str = "[merge uncertain]";

fn notice(msg: &str) {
    // Straight to stderr, past libtest's capture: a skip must show in every run.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{msg}\n").as_bytes());
}

fn aarch64_prefix() -> PathBuf {
    std::env::var_os("PROF_AARCH64")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/prof-aarch64".into())
}

/// Run `cmd` in `dir` until it dies (it must abort), killing its process group after
/// [`RUN_TIMEOUT`]; then the core it left there, found by `is_core` on the file name.
fn run_to_core(mut cmd: Command, dir: &Path, is_core: impl Fn(&str) -> bool) -> Option<PathBuf> {
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    // SAFETY: async-signal-safe calls only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_CORE, &mut lim);
            lim.rlim_cur = if lim.rlim_max == libc::RLIM_INFINITY {
                CORE_LIMIT
            } else {
                CORE_LIMIT.min(lim.rlim_max)
            };
            libc::setrlimit(libc::RLIMIT_CORE, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    let pgid = child.id() as i32;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > RUN_TIMEOUT {
            // SAFETY: signals the group this test created.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The child is gone; anything it left in its group goes too.
    // SAFETY: as above (ESRCH when the group is empty).
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let status = status.unwrap_or_else(|| panic!("{cmd:?} still running after {RUN_TIMEOUT:?}"));
    assert!(!status.success(), "{cmd:?} did not abort: {err}");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&is_core))
}

/// `prof dump --core CORE [extra]`.
fn dump_core(core: &Path, extra: &[&str]) -> (Vec<String>, Output) {
    let mut args = vec![
        "dump".to_string(),
        "--core".into(),
        core.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_prof(&refs);
    (args, out)
}

/// `prof dump --core CORE --json [extra]`: must succeed and parse.
fn dump_core_json(core: &Path, extra: &[&str]) -> Vec<Thread> {
    let mut extra = extra.to_vec();
    extra.push("--json");
    let (args, out) = dump_core(core, &extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(
        out.status.success(),
        "prof failed\n{}",
        describe(&args, &out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON: {e}\n{}", describe(&args, &out)))
}

/// `prof dump --core CORE [extra]` must fail with one line; returns it.
fn dump_core_error(core: &Path, extra: &[&str]) -> String {
    let (args, out) = dump_core(core, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_one_line_error(&args, &out)
}

/// gdb's `gcore` of `pid` into `dir`; None (with a notice) when gdb cannot attach here.
fn gcore(pid: u32, dir: &Path) -> Option<PathBuf> {
    let prefix = dir.join("gcore");
    let mut cmd = Command::new("gcore");
    cmd.arg("-o").arg(&prefix).arg(pid.to_string());
    let out = run_with_deadline(&mut cmd, &["gcore", &pid.to_string()]);
    let core = PathBuf::from(format!("{}.{pid}", prefix.display()));
    if !out.status.success() || !core.exists() {
        notice(&format!(
            "gcore of {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    Some(core)
}

fn have_gcore() -> bool {
    let ok = Command::new("gcore")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        notice("skipped: gcore (gdb) not found; gcore cores not tested");
    }
    ok
}

/// Run `check` on every interpreter, in two threads (each check is mostly waiting for
/// processes), failing at the end with every interpreter that failed.
fn on_every_python(check: impl Fn(&Python) + Sync) {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no Python interpreter found");
    let (a, b) = pythons.split_at(pythons.len().div_ceil(2));
    std::thread::scope(|s| {
        let first = s.spawn(|| run_each("[1] ", a, &check));
        run_each("[2] ", b, &check);
        if let Err(e) = first.join() {
            std::panic::resume_unwind(e);
        }
    });
}

/// The non-native frames of a `--native` dump's thread, as (name, line).
fn python_frames(t: &Thread) -> Vec<(&str, i64)> {
    t.frames
        .iter()
        .filter(|f| f.native == Some(false))
        .map(|f| (f.name.as_str(), f.line))
        .collect()
}

/// `prof dump --core` of a process that ran SCRIPT: its Python stack, and with `--native`
/// that stack merged into the native one, below the abort.
fn check_abort_core(core: &Path, extra: &[&str], minor: u32) {
    let what = core.display().to_string();
    let dump = dump_core_json(core, extra);
    assert_eq!(dump.len(), 1, "{what}: {dump:#?}");
    let got: Vec<(&str, i64)> = dump[0]
        .frames
        .iter()
        .map(|f| (f.name.as_str(), f.line))
        .collect();
    assert_eq!(got, EXPECTED, "{what}: Python stack");
    for f in &dump[0].frames {
        assert!(f.filename.ends_with(SCRIPT_NAME), "{what}: {f:?}");
    }
    let (args, out) = dump_core(core, extra);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("Python v3.{minor}.")),
        "{what}: text dump\n{}",
        describe(&args.iter().map(String::as_str).collect::<Vec<_>>(), &out)
    );

    let mut extra = extra.to_vec();
    extra.push("--native");
    let native = dump_core_json(core, &extra);
    assert_eq!(native.len(), 1, "{what}: {native:#?}");
    let names: Vec<&str> = native[0].frames.iter().map(|f| f.name.as_str()).collect();
    notice(&format!("{what}: merged {names:?}"));
    assert!(!names.contains(&UNCERTAIN), "{what}: {names:?}");
    assert_eq!(python_frames(&native[0]), EXPECTED, "{what}: {names:?}");
    let inner = names.iter().position(|n| *n == "inner").expect("inner");
    // From 3.11 one eval-loop call runs all four; before, each is a call of its own, with
    // the interpreter's C frames between them.
    if minor >= 11 {
        assert_eq!(
            names[inner..inner + 4],
            ["inner", "middle", "outer", "<module>"],
            "{what}: the Python frames are not one run: {names:?}"
        );
    }
    let abort = names
        .iter()
        .position(|n| {
            [
                "abort",
                "raise",
                "__pthread_kill_implementation",
                "pthread_kill",
            ]
            .contains(n)
        })
        .unwrap_or_else(|| panic!("{what}: no abort in {names:?}"));
    assert!(
        abort < inner,
        "{what}: abort outside the interpreter: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("__libc_start")),
        "{what}: the unwind stopped before main: {names:?}"
    );
}

#[test]
fn gcore_of_running_targets() {
    crate::skip_without_live_targets!();
    if !have_gcore() {
        return;
    }
    on_every_python(|py| {
        if py.name.starts_with("debian-sid") {
            // Seen with gdb 13.1: these builds run on their own sysroot's glibc, whose
            // libthread_db gdb declines to load, and the gcore it writes holds zeros where
            // a non-main thread's C stack holds its interpreter entry frame (gdb reading
            // its own core shows the zeros too; the live process has the frame). Their
            // kernel cores are read in x86_64_kernel_cores.
            notice(&format!(
                "skipped: gcore of {}: gdb writes part of its threads' stacks as zeros",
                py.name
            ));
            return;
        }
        let target = Target::start(py, "mixed", &[]);
        target.settle();
        let Some(core) = gcore(target.pid, target.dir.path()) else {
            return;
        };
        assert_not_stopped(target.pid, &target.what());
        let dump = dump_core_json(&core, &["--locals"]);
        target.assert_stacks(&dump);
        target.assert_identities(&dump);
        target.assert_locals(&dump);

        // The same Python frames, merged into the native stacks.
        let native = dump_core_json(&core, &["--native"]);
        let mut merged = 0;
        for t in &native {
            let Some(plain) = dump.iter().find(|p| p.thread_id == t.thread_id) else {
                continue;
            };
            let want: Vec<(&str, i64)> = plain
                .frames
                .iter()
                .map(|f| (f.name.as_str(), f.line))
                .collect();
            assert_eq!(
                python_frames(t),
                want,
                "{}: thread {}",
                target.what(),
                t.thread_id
            );
            if t.frames.iter().any(|f| f.native == Some(true)) {
                merged += 1;
            }
        }
        assert!(
            merged > 0,
            "{}: no native frames: {native:#?}",
            target.what()
        );
        // The core outlives the process.
        drop(target);
    });
}

#[test]
fn core_of_a_program_without_python() {
    crate::skip_without_live_targets!();
    if !have_gcore() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut group = Group::spawn(Command::new("sleep").arg("100").stdin(Stdio::null()));
    // Until sleep has exec'd (its maps no longer prof's test binary's).
    let deadline = Instant::now() + READY_TIMEOUT;
    while !std::fs::read_link(format!("/proc/{}/exe", group.pid()))
        .is_ok_and(|p| p.ends_with("sleep"))
    {
        assert!(Instant::now() < deadline, "sleep never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(core) = gcore(group.pid(), dir.path()) else {
        return;
    };
    let _ = group.try_wait();
    let line = dump_core_error(&core, &[]);
    assert!(line.contains("is not a Python process"), "{line}");
    assert!(line.contains("core file"), "{line}");
    // With --native, its native stack.
    let dump = dump_core_json(&core, &["--native"]);
    assert_eq!(dump.len(), 1, "{dump:#?}");
    let names: Vec<&str> = dump[0].frames.iter().map(|f| f.name.as_str()).collect();
    // sleep itself is stripped: its own frames have no names, libc's do.
    assert!(
        names.iter().any(|n| n.contains("nanosleep"))
            && names.iter().any(|n| n.starts_with("__libc_start")),
        "{names:?}"
    );
}

#[test]
fn files_that_are_no_core() {
    crate::skip_without_live_targets!();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a core\n").unwrap();
    let line = dump_core_error(&text, &[]);
    assert!(
        line.contains("not a 64-bit little-endian ELF core file"),
        "{line}"
    );
    let missing = dir.path().join("nothing-here");
    let line = dump_core_error(&missing, &[]);
    assert!(line.contains("cannot read core file"), "{line}");
    // An ELF file that is no core: prof's own binary.
    let line = dump_core_error(Path::new(prof_path()), &[]);
    assert!(line.contains("is not ET_CORE"), "{line}");
}

#[test]
fn aarch64_qemu_cores() {
    crate::skip_without_live_targets!();
    let qemu = "qemu-aarch64-static";
    if Command::new(qemu).arg("--version").output().is_err() {
        notice(&format!(
            "skipped: {qemu} not found; aarch64 cores not tested"
        ));
        return;
    }
    let prefix = aarch64_prefix();
    let mut ran = Vec::new();
    for (sysroot, minor) in [
        ("sysroot-bookworm", 11),
        ("sysroot-sid", 13),
        ("sysroot-sid", 14),
        ("sysroot-sid", 15),
    ] {
        let sysroot = prefix.join(sysroot);
        let exe = sysroot.join(format!("usr/bin/python3.{minor}"));
        if !exe.exists() {
            notice(&format!(
                "skipped: {} missing (get-aarch64-toolchain)",
                exe.display()
            ));
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SCRIPT_NAME), SCRIPT).unwrap();
        // Where the kernel would write qemu's own core (`core_pattern` "core"): a
        // directory there makes that dump fail instead of writing 160 MB.
        std::fs::create_dir(dir.path().join("core")).unwrap();
        let mut cmd = Command::new(qemu);
        cmd.arg("-L").arg(&sysroot).arg(&exe).arg(SCRIPT_NAME);
        let core = run_to_core(cmd, dir.path(), |n| {
            n.starts_with("qemu_") && n.ends_with(".core")
        })
        .unwrap_or_else(|| panic!("python3.{minor} under qemu left no core"));
        let root = sysroot.display().to_string();
        check_abort_core(&core, &["--sysroot", &root], minor);
        ran.push(format!("aarch64 python3.{minor}"));
    }
    if ran.is_empty() {
        notice("skipped: no aarch64 CPython found; aarch64 cores not tested");
    } else {
        notice(&format!("checked cores of: {}", ran.join(", ")));
    }
}

/// The prefix of the files `kernel.core_pattern` writes into the working directory, or
/// None (with a notice) when it writes elsewhere.
fn core_prefix() -> Option<String> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim();
    // Only a plain name lands in the working directory; pipes and absolute paths go to
    // places this test has no business looking in.
    if pattern.is_empty() || pattern.starts_with('|') || pattern.contains('/') {
        notice(&format!(
            "skipped: kernel.core_pattern is {pattern:?}, not a file in the working directory"
        ));
        return None;
    }
    Some(pattern.split('%').next().unwrap_or("").to_string())
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_64_kernel_cores() {
    crate::skip_without_live_targets!();
    let Some(prefix) = core_prefix() else {
        return;
    };
    on_every_python(|py| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SCRIPT_NAME), SCRIPT).unwrap();
        let mut cmd = Command::new(&py.path);
        cmd.arg(SCRIPT_NAME);
        let core = run_to_core(cmd, dir.path(), |n| {
            n.starts_with(&prefix) && n != SCRIPT_NAME
        });
        let Some(core) = core else {
            notice(&format!(
                "skipped: {} left no core (RLIMIT_CORE hard limit?)",
                py.name
            ));
            return;
        };
        check_abort_core(&core, &[], py.version.1);

        // Cut short after its notes and first page of memory: whatever prof needs is
        // gone, and the answer says the core is truncated.
        let bytes = std::fs::read(&core).unwrap();
        let cut = first_load_offset(&bytes) + 4096;
        let short = dir.path().join("short.core");
        std::fs::write(&short, &bytes[..cut as usize]).unwrap();
        let line = dump_core_error(&short, &[]);
        assert!(line.contains("is truncated"), "{}: {line}", py.name);
        // Cut inside its notes.
        let notes = dir.path().join("notes.core");
        std::fs::write(&notes, &bytes[..first_load_offset(&bytes) as usize / 2]).unwrap();
        let line = dump_core_error(&notes, &[]);
        assert!(line.contains("truncated"), "{}: {line}", py.name);
    });
}

/// The file offset of the first `PT_LOAD` with bytes in the file (the kernel writes the
/// headers and notes before them).
fn first_load_offset(elf: &[u8]) -> u64 {
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let (phoff, phnum) = (u64_at(32) as usize, u16_at(56) as usize);
    (0..phnum)
        .map(|i| phoff + 56 * i)
        .filter(|&ph| u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1)
        .filter(|&ph| u64_at(ph + 32) > 0)
        .map(|ph| u64_at(ph + 8))
        .min()
        .expect("a PT_LOAD with bytes")
}

/// A core that names no files (qemu-user's), of a program no longer where it ran: prof
/// says to give it with --executable, and reads the core once it is.
#[test]
fn aarch64_core_of_a_moved_program() {
    crate::skip_without_live_targets!();
    let qemu = "qemu-aarch64-static";
    let sysroot = aarch64_prefix().join("sysroot-bookworm");
    let exe = sysroot.join("usr/bin/python3.11");
    if Command::new(qemu).arg("--version").output().is_err() || !exe.exists() {
        notice(&format!(
            "skipped: {qemu} or {} missing; --executable not tested",
            exe.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SCRIPT_NAME), SCRIPT).unwrap();
    std::fs::create_dir(dir.path().join("core")).unwrap();
    let moved = dir.path().join("python-moved");
    std::fs::copy(&exe, &moved).unwrap();
    let mut cmd = Command::new(qemu);
    cmd.arg("-L").arg(&sysroot).arg(&moved).arg(SCRIPT_NAME);
    let core = run_to_core(cmd, dir.path(), |n| {
        n.starts_with("qemu_") && n.ends_with(".core")
    })
    .expect("python3.11 under qemu left no core");
    std::fs::remove_file(&moved).unwrap();
    let root = sysroot.display().to_string();
    let line = dump_core_error(&core, &["--sysroot", &root]);
    assert!(
        line.contains("python-moved") && line.contains("--executable"),
        "{line}"
    );
    let exe = exe.display().to_string();
    check_abort_core(&core, &["--sysroot", &root, "--executable", &exe], 11);
}
