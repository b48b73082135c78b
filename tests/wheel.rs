//! `pip install`: the wheel that pyproject.toml describes, built by maturin and installed
//! into a fresh virtual environment, puts a working `prof` on that environment's PATH.
//!
//! maturin comes from PyPI, into a virtual environment kept under the target directory
//! (`target/wheel-test/maturin`) so that later runs need no network. maturin builds into
//! the same target directory as the tests, so the binary they built is reused. Without a
//! Python that has `venv` and `pip`, or when maturin cannot be installed, the test is
//! skipped with a notice; `PROF_REQUIRE_WHEEL` makes that a failure.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::{Python, describe, prof_path, run_with_deadline, testdata};
use object::Endianness;
use object::read::elf::ElfFile64;

/// The distribution name in pyproject.toml, as it appears in a wheel's file name.
const WHEEL_NAME: &str = "prof_profiler";

/// A notice that shows even for a passing test (libtest captures `eprintln!`).
fn notice(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}

/// Skip with a notice, or fail when `PROF_REQUIRE_WHEEL` is set.
fn skip(why: &str) {
    assert!(
        std::env::var_os("PROF_REQUIRE_WHEEL").is_none(),
        "PROF_REQUIRE_WHEEL is set, but: {why}"
    );
    notice(&format!(
        "skipped: pip_install_puts_prof_on_the_path: {why}"
    ));
}

/// Runs `cmd` to its end (pip and cargo bound their own waits); `what` is for messages.
fn output(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Python that makes virtual environments with pip: pyenv 3.12 if present.
fn venv_python() -> Option<Python> {
    let all = common::pythons();
    let usable = |p: &&Python| {
        p.at_least(3, 8)
            && Command::new(&p.path)
                .args(["-c", "import venv, ensurepip"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
    };
    all.iter()
        .filter(|p| p.name.contains("3.12"))
        .find(usable)
        .or_else(|| all.iter().find(usable))
        .cloned()
}

/// A new virtual environment at `dir`, made by `py`.
fn make_venv(py: &Python, dir: &Path) -> Result<(), String> {
    let out = output(
        Command::new(&py.path).args(["-m", "venv"]).arg(dir),
        "python -m venv",
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("python -m venv failed: {}", text(&out)))
    }
}

/// maturin, installed from PyPI into `cache` unless an earlier run did; the error says why
/// it could not be.
fn maturin(py: &Python, cache: &Path) -> Result<PathBuf, String> {
    let bin = cache.join("bin/maturin");
    let works = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&bin) {
        return Ok(bin);
    }
    // A half-made environment from an interrupted run is made again.
    let _ = fs::remove_dir_all(cache);
    make_venv(py, cache)?;
    // The same range as pyproject.toml's build-system.
    let out = output(
        Command::new(cache.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "30",
            "maturin>=1.5,<2",
        ]),
        "pip install maturin",
    );
    if !out.status.success() || !works(&bin) {
        let _ = fs::remove_dir_all(cache);
        // pip's last word says why (no network, no such version) in one line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!(
            "maturin cannot be installed from PyPI ({}: {why})",
            out.status
        ));
    }
    Ok(bin)
}

/// The newest glibc version (`2.N` as N) that the ELF binary's symbols ask for.
fn glibc_minor_needed(binary: &Path) -> u32 {
    let data = fs::read(binary).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*data).expect("a 64-bit ELF file");
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let (mut needs, link) = sections
        .gnu_verneed(endian, &*data)
        .expect("version needs")
        .expect("a dynamically linked binary has version needs");
    let strings = sections.strings(endian, &*data, link).expect("strings");
    let mut newest = 0;
    while let Some((_, mut versions)) = needs.next().expect("version need") {
        while let Some(v) = versions.next().expect("version") {
            let name = String::from_utf8_lossy(v.name(endian, strings).expect("name"));
            if let Some(minor) = name.strip_prefix("GLIBC_2.") {
                let minor: u32 = minor.split('.').next().unwrap().parse().unwrap();
                newest = newest.max(minor);
            }
        }
    }
    newest
}

#[test]
fn pip_install_puts_prof_on_the_path() {
    crate::skip_without_live_targets!();
    let start = Instant::now();
    let Some(py) = venv_python() else {
        return skip("no Python with venv and ensurepip found");
    };
    // target/release/prof: maturin builds into the same target directory, and finds the
    // binary the tests were built with up to date.
    let target_dir = Path::new(prof_path())
        .parent()
        .and_then(Path::parent)
        .expect("prof is in <target>/<profile>/");
    let maturin = match maturin(&py, &target_dir.join("wheel-test/maturin")) {
        Ok(m) => m,
        Err(why) => return skip(&why),
    };
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");

    // The wheel, with maturin's own audit: a failed check fails the build. The release
    // profile, not pyproject.toml's `dist`: the tests' binary is reused, where `dist` (LTO)
    // would compile everything again for minutes; the two differ only in optimisation.
    let build = output(
        Command::new(&maturin)
            .args([
                "build",
                "--profile",
                "release",
                "--locked",
                "--auditwheel",
                "check",
            ])
            .arg("--out")
            .arg(&wheels)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target_dir),
        "maturin build",
    );
    assert!(build.status.success(), "maturin build: {}", text(&build));
    let built: Vec<PathBuf> = fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(built.len(), 1, "one wheel: {built:?}");
    let wheel = &built[0];
    let file_name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    // name-version-python-abi-platform.whl: any Python 3 runs a binary.
    let prefix = format!("{WHEEL_NAME}-{}-py3-none-", env!("CARGO_PKG_VERSION"));
    let platform = file_name
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(".whl"))
        .unwrap_or_else(|| panic!("{file_name}: not {prefix}<platform>.whl"));
    let glibc_tag: u32 = platform
        .strip_prefix("manylinux_2_")
        .and_then(|rest| rest.strip_suffix(&format!("_{}", std::env::consts::ARCH)))
        .and_then(|minor| minor.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{file_name}: not a manylinux_2_N_{} tag",
                std::env::consts::ARCH
            )
        });

    // A fresh environment, installing the one file: no index needed.
    let venv = dir.path().join("venv");
    make_venv(&py, &venv).unwrap();
    let install = output(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-index",
                "--disable-pip-version-check",
            ])
            .arg(wheel),
        "pip install",
    );
    assert!(install.status.success(), "pip install: {}", text(&install));
    let installed = venv.join("bin/prof");
    // The tag promises no glibc older than the binary needs.
    let needed = glibc_minor_needed(&installed);
    assert!(
        glibc_tag >= needed,
        "{file_name}: the binary needs glibc 2.{needed}, the tag promises 2.{glibc_tag}"
    );

    // `prof` by name, found on the venv's PATH as an activated environment would.
    let path = match std::env::var_os("PATH") {
        Some(rest) => std::env::join_paths(
            std::iter::once(venv.join("bin")).chain(std::env::split_paths(&rest)),
        )
        .unwrap(),
        None => venv.join("bin").into_os_string(),
    };
    let prof = |args: &[&str]| {
        let mut cmd = Command::new("prof");
        cmd.args(args).env("PATH", &path);
        run_with_deadline(&mut cmd, args)
    };
    let found = output(
        Command::new("sh")
            .args(["-c", "command -v prof"])
            .env("PATH", &path),
        "sh",
    );
    assert_eq!(
        Path::new(String::from_utf8_lossy(&found.stdout).trim()),
        installed,
        "`prof` on the PATH is not the venv's"
    );
    let version = prof(&["--version"]);
    assert!(
        version.status.success(),
        "{}",
        describe(&["--version"], &version)
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("prof {}", env!("CARGO_PKG_VERSION"))
    );

    // A short recording of the venv's own Python.
    let target_dir = dir.path().join("target");
    fs::create_dir(&target_dir).unwrap();
    let out_file = dir.path().join("p.txt");
    let script = testdata().join("fmt_bursts.py");
    let venv_python = venv.join("bin/python");
    let args = [
        "record",
        "-f",
        "raw",
        "-o",
        out_file.to_str().unwrap(),
        "--",
        venv_python.to_str().unwrap(),
        "-B",
        script.to_str().unwrap(),
        target_dir.to_str().unwrap(),
        "0.7",
    ];
    let record = prof(&args);
    let what = describe(&args, &record);
    assert_eq!(record.status.code(), Some(0), "{what}");
    let ready = fs::read_to_string(target_dir.join("ready.json")).expect("the target's ready.json");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let burst = ready["functions"]["burst"]["name"].as_str().unwrap();
    let stacks = fs::read_to_string(&out_file).unwrap_or_default();
    assert!(
        stacks.lines().any(|l| l.contains(&format!(";{burst} ("))),
        "no stack in {burst}: {stacks:?}\n{what}"
    );
    notice(&format!(
        "pip_install_puts_prof_on_the_path: {file_name} (binary needs glibc 2.{needed}) in {:.0}s",
        start.elapsed().as_secs_f64()
    ));
}
