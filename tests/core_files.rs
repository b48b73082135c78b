//! Core files as the target: real cores of CPython processes that abort three Python
//! calls deep, read back with `CoreMemory`.
//!
//! aarch64: qemu-user cannot ptrace, so cores are the only way to run prof's aarch64
//! reading (registers, native unwind, Python stacks) on real aarch64 processes. Every
//! aarch64 CPython in the sysroots of `get-aarch64-toolchain` (`PROF_AARCH64`, default
//! /opt/prof-aarch64) is run under `qemu-aarch64-static -L <sysroot>`; qemu writes
//! `qemu_<prog>_<date>_<pid>.core` (without `NT_FILE`, so the mappings come from the
//! dynamic linker's list). x86_64: one host CPython dumps a kernel core, when
//! `kernel.core_pattern` writes plain files into the working directory.
//! Skipped with a notice when the tools, interpreters or core pattern are missing.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prof::native::merge::{EntryRule, UNCERTAIN, merge};
use prof::native::stack::NativeStacks;
use prof::native::{ArchKind, Modules};
use prof::process::{CoreMemory, MapRange};
use prof::python::{FrameOptions, StackReader, find_interpreter};

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
const EXPECTED: [(&str, i32); 4] = [("inner", 4), ("middle", 7), ("outer", 10), ("<module>", 12)];

const SCRIPT_NAME: &str = "abort_nested.py";

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

/// Where a path of the target is found here: under `sysroot` if it is there, else as is.
fn host_path(sysroot: &Path, path: &str) -> Option<PathBuf> {
    let inside = sysroot.join(path.trim_start_matches('/'));
    if inside.exists() {
        Some(inside)
    } else {
        Path::new(path).exists().then(|| PathBuf::from(path))
    }
}

/// Read `core_file` of a process that ran SCRIPT, and check its Python and native stacks.
fn check_core(core_file: &Path, sysroot: &Path, arch: ArchKind, minor: u32) {
    let what = core_file.display();
    let mut core = CoreMemory::open(core_file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(core.arch().kind, arch, "{what}");
    let open = |p: &str| host_path(sysroot, p);
    let maps = if core.has_file_notes() {
        core.maps()
    } else {
        core.linker_maps(open)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    // Cores leave out what the files hold (Py_Version is read-only data).
    assert!(core.add_files(&maps, open) > 0, "{what}: no file found");
    // Host paths, so that prof opens the sysroot's files (through `/proc/<self>/root`).
    let host_maps: Vec<MapRange> = maps
        .iter()
        .map(|m| MapRange {
            path: m
                .path
                .as_deref()
                .map(|p| open(p).map_or(p.to_string(), |h| h.display().to_string())),
            ..m.clone()
        })
        .collect();
    let named: Vec<&str> = host_maps.iter().filter_map(|m| m.path.as_deref()).collect();
    assert!(
        named.iter().any(|p| p.contains("libc.so")),
        "{what}: libc not among the mapped files {named:?}"
    );

    let exe = core.exec_path().and_then(|e| open(&e));
    let exe = exe.as_ref().map(|e| e.display().to_string());
    let interp = find_interpreter(&core, std::process::id(), &host_maps, exe.as_deref())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        interp.version().minor as u32,
        minor,
        "{what}: {}",
        interp.how
    );
    let mut reader = StackReader::new(&core, interp);
    let opts = FrameOptions::default();
    let stacks = reader
        .stacks(&core.tids(), opts)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(stacks.len(), 1, "{what}: {stacks:#?}");
    let py = &stacks[0].frames;
    let got: Vec<(&str, i32)> = py.iter().map(|f| (f.name(), f.line)).collect();
    assert_eq!(got, EXPECTED, "{what}: Python stack");
    for f in py {
        assert!(
            f.filename().ends_with(SCRIPT_NAME),
            "{what}: {} is in {}",
            f.name(),
            f.filename()
        );
    }

    let thread = core.crashed_thread().expect("a thread");
    assert_eq!(thread.signal, libc::SIGABRT as u16, "{what}");
    assert_eq!(stacks[0].os_thread_id.unwrap_or(thread.tid), thread.tid);
    let mut modules = Modules::new();
    modules.set_vdso_address(core.vdso_address());
    modules.update(
        &host_maps,
        |m| m.path.as_deref().map(PathBuf::from),
        &core,
        core.arch().page_size,
    );
    let mut native = NativeStacks::new(modules, host_maps.clone());
    let (frames, err) = native.stack(&core, &thread.regs);
    let names: Vec<String> = frames
        .iter()
        .flat_map(|nf| nf.frames.iter().map(|f| f.name().to_string()))
        .collect();
    notice(&format!(
        "{what}: native stack {names:?} (stopped by {err:?})"
    ));
    let abort = names
        .iter()
        .position(|n| {
            [
                "abort",
                "raise",
                "__pthread_kill_implementation",
                "pthread_kill",
            ]
            .contains(&n.as_str())
        })
        .unwrap_or_else(|| panic!("{what}: no abort in {names:?}"));
    let eval = frames
        .iter()
        .position(|nf| nf.eval)
        .unwrap_or_else(|| panic!("{what}: no eval frame in {names:?}"));
    let abort_frame = frames
        .iter()
        .position(|nf| nf.frames.iter().any(|f| *f.name() == *names[abort]))
        .unwrap();
    assert!(abort_frame < eval, "{what}: abort outside the interpreter");
    assert!(
        names.iter().any(|n| n == "main" || n == "Py_BytesMain"),
        "{what}: the unwind stopped before main: {names:?}"
    );

    let entries = reader.entry_flags()[0].clone();
    let merged = merge(&frames, py, &entries, EntryRule::for_version(3, minor));
    let merged_names: Vec<&str> = merged.iter().map(|f| f.name()).collect();
    notice(&format!("{what}: merged {merged_names:?}"));
    assert!(
        !merged_names.contains(&UNCERTAIN),
        "{what}: {merged_names:?}"
    );
    let first_py = merged_names
        .iter()
        .position(|n| *n == "inner")
        .expect("inner merged");
    let merged_py: Vec<&str> = merged_names[first_py..first_py + 4].to_vec();
    assert_eq!(
        merged_py,
        ["inner", "middle", "outer", "<module>"],
        "{what}"
    );
    let merged_abort = merged_names
        .iter()
        .position(|n| *n == names[abort])
        .unwrap();
    assert!(merged_abort < first_py, "{what}: {merged_names:?}");
}

#[test]
fn aarch64_qemu_cores() {
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
        check_core(&core, &sysroot, ArchKind::Aarch64, minor);
        ran.push(format!("aarch64 python3.{minor}"));
    }
    if ran.is_empty() {
        notice("skipped: no aarch64 CPython found; aarch64 cores not tested");
    } else {
        notice(&format!("checked cores of: {}", ran.join(", ")));
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_64_kernel_core() {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim();
    // Only a plain name lands in the working directory; pipes and absolute paths go to
    // places this test has no business looking in.
    if pattern.is_empty() || pattern.starts_with('|') || pattern.contains('/') {
        notice(&format!(
            "skipped: kernel.core_pattern is {pattern:?}, not a file in the working directory"
        ));
        return;
    }
    let prefix = pattern.split('%').next().unwrap_or("").to_string();
    let pythons = common::pythons();
    let Some(python) = pythons
        .iter()
        .find(|p| p.name.starts_with("pyenv-3.12"))
        .or_else(|| pythons.iter().find(|p| p.at_least(3, 11)))
    else {
        notice("skipped: no x86_64 CPython 3.11+ found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SCRIPT_NAME), SCRIPT).unwrap();
    let mut cmd = Command::new(&python.path);
    cmd.arg(SCRIPT_NAME);
    let core = run_to_core(cmd, dir.path(), |n| {
        n.starts_with(&prefix) && n != SCRIPT_NAME
    });
    let Some(core) = core else {
        notice(&format!(
            "skipped: {} left no core (core_pattern {pattern:?}, RLIMIT_CORE hard limit?)",
            python.name
        ));
        return;
    };
    check_core(&core, Path::new("/"), ArchKind::X86_64, python.version.1);
    notice(&format!("checked the kernel core of {}", python.name));
}
