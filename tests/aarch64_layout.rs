//! Real aarch64 CPython builds read from their files alone (no process, so this runs on
//! x86_64 and under qemu alike): the `_Py_DebugOffsets` table at the start of an arm64
//! Debian python3.13–3.15's `.PyRuntime` section must give exactly the layout the amd64
//! build of the same version gives, as the internals notes say (only `tstate_current` on
//! 3.8–3.11 differs, and that comes from prof's own table). Uses the sysroots that
//! `get-aarch64-toolchain` installs (`PROF_AARCH64`, default /opt/prof-aarch64) and the
//! amd64 builds from `get-debian-pythons`; skipped with a notice without them.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};
use prof::native::Arch;
use prof::python::Layout;
use prof::python::layout::{DEBUG_OFFSETS_READ, DebugOffsets};

fn aarch64_prefix() -> PathBuf {
    std::env::var_os("PROF_AARCH64")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/prof-aarch64".into())
}

/// The ELF machine of `path` and the first bytes of its `.PyRuntime` section.
fn runtime_head(path: &Path) -> (u16, Vec<u8>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let arch = Arch::from_elf_header(&data).expect("a 64-bit little-endian ELF");
    let file = object::File::parse(&*data).unwrap();
    let sec = file
        .section_by_name(".PyRuntime")
        .unwrap_or_else(|| panic!("{}: no .PyRuntime section", path.display()));
    let bytes = sec.data().unwrap();
    (
        arch.e_machine,
        bytes[..DEBUG_OFFSETS_READ.min(bytes.len())].to_vec(),
    )
}

#[test]
fn aarch64_debug_offsets_give_the_x86_64_layout() {
    let sid = aarch64_prefix().join("sysroot-sid/usr/bin");
    let amd64 = Path::new("/opt/prof-pythons/debian-sid/bin");
    let mut compared = 0;
    for minor in 13..=15 {
        let (a, x) = (
            sid.join(format!("python3.{minor}")),
            amd64.join(format!("python3.{minor}")),
        );
        if !a.exists() || !x.exists() {
            eprintln!(
                "notice: {} or {} missing (get-aarch64-toolchain, get-debian-pythons); 3.{minor} skipped",
                a.display(),
                x.display()
            );
            continue;
        }
        let (a_machine, a_head) = runtime_head(&a);
        let (x_machine, x_head) = runtime_head(&x);
        assert_eq!(a_machine, Arch::AARCH64.e_machine, "{}", a.display());
        assert_eq!(x_machine, Arch::X86_64.e_machine, "{}", x.display());
        let a_layout = Layout::from_debug_offsets(&a_head).unwrap();
        let x_layout = Layout::from_debug_offsets(&x_head).unwrap();
        assert_eq!(a_layout.version.minor, minor);
        if a_layout != x_layout {
            let (a_dbg, x_dbg) = (format!("{a_layout:#?}"), format!("{x_layout:#?}"));
            let diff: Vec<String> = a_dbg
                .lines()
                .zip(x_dbg.lines())
                .filter(|(l, r)| l != r)
                .map(|(l, r)| format!("aarch64 {} / x86_64 {}", l.trim(), r.trim()))
                .collect();
            panic!("3.{minor}: layouts differ:\n  {}", diff.join("\n  "));
        }
        eprintln!("3.{minor}: aarch64 and x86_64 layouts are identical");
        compared += 1;
    }
    // 3.11 has no table: prof uses its own, with the aarch64 tstate_current.
    let py311 = aarch64_prefix().join("sysroot-bookworm/usr/bin/python3.11");
    if py311.exists() {
        let (machine, head) = runtime_head(&py311);
        assert_eq!(machine, Arch::AARCH64.e_machine);
        assert!(!DebugOffsets::has_cookie(&head));
    }
    if compared == 0 {
        eprintln!("notice: no aarch64/x86_64 interpreter pair found; nothing compared");
    }
}
