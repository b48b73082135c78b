//! Finding the interpreter in a process: which mapped image holds `_PyRuntime`, where it is
//! loaded, and which CPython version (and so which [`Layout`]) it is.

use std::path::Path;
use std::sync::Arc;

use object::elf::{EM_AARCH64, PT_LOAD};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

use super::PyError;
use super::layout::{DEBUG_OFFSETS_READ, DebugOffsets, Layout, Version};
use crate::process::maps::load_bias;
use crate::process::memory::le_u64;
use crate::process::{MapRange, Memory, MemoryExt};
use crate::target::Target;

/// Where the interpreter lives in the target and how it is laid out.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// Path of the image (libpython or the executable), as the target sees it.
    pub path: String,
    /// Load bias of that image.
    pub bias: u64,
    /// Address of `_PyRuntime`.
    pub runtime: u64,
    /// Address of `PyCode_Type`, for cheap type checks.
    pub code_type: Option<u64>,
    /// Offsets for this build.
    pub layout: Arc<Layout>,
    /// How the runtime and version were found, for `--verbose` style messages.
    pub how: String,
}

impl Interpreter {
    /// The version.
    pub fn version(&self) -> Version {
        self.layout.version
    }
}

/// Symbols and sections of one image that the discovery needs.
struct ImageInfo {
    runtime: Option<u64>,
    runtime_how: &'static str,
    py_version: Option<u64>,
    code_type: Option<u64>,
    loads: Vec<(u64, u64)>,
    aarch64: bool,
    is_exec: bool,
}

fn read_image(file: &Path) -> Result<ImageInfo, String> {
    let data = crate::process::maps::map_file(file).map_err(|e| e.to_string())?;
    let elf = ElfFile64::<Endianness>::parse(&*data).map_err(|e| e.to_string())?;
    let mut info = ImageInfo {
        runtime: None,
        runtime_how: "",
        py_version: None,
        code_type: None,
        loads: Vec::new(),
        aarch64: elf.elf_header().e_machine(elf.endian()) == EM_AARCH64,
        is_exec: elf.elf_header().e_type(elf.endian()) == object::elf::ET_EXEC,
    };
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        let addr = sym.address();
        if addr == 0 {
            continue;
        }
        match sym.name() {
            Ok("_PyRuntime") if info.runtime.is_none() => {
                info.runtime = Some(addr);
                info.runtime_how = "the _PyRuntime symbol";
            }
            Ok("Py_Version") => info.py_version = Some(addr),
            Ok("PyCode_Type") => info.code_type = Some(addr),
            _ => {}
        }
    }
    if info.runtime.is_none()
        && let Some(sec) = elf.section_by_name(".PyRuntime")
    {
        info.runtime = Some(sec.address());
        info.runtime_how = "the .PyRuntime section";
    }
    let endian = elf.endian();
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) == PT_LOAD {
            info.loads.push((ph.p_offset(endian), ph.p_vaddr(endian)));
        }
    }
    info.loads.sort();
    Ok(info)
}

/// Version from a file name such as `libpython3.9.so.1.0` or `python3.10`: `python`, a
/// digit, a dot, digits and letters (`t`, `d`), then `.so` or the end of the name.
fn version_from_path(path: &str) -> Option<Version> {
    let base = path.rsplit('/').next()?;
    base.match_indices("python").find_map(|(at, _)| {
        let rest = &base[at + "python".len()..];
        let (major, rest) = digits(rest, 1, 1)?;
        let (minor, rest) = digits(rest.strip_prefix('.')?, 1, 3)?;
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
        (rest.is_empty() || rest.starts_with(".so")).then(|| Version::new(major, minor, 0))
    })
}

/// The number at the start of `text`, of `min` to `max` ASCII digits (as many as there
/// are), and what follows it.
fn digits(text: &str, min: usize, max: usize) -> Option<(u8, &str)> {
    let n = text
        .bytes()
        .take(max)
        .take_while(u8::is_ascii_digit)
        .count();
    if n < min {
        return None;
    }
    Some((text[..n].parse().ok()?, &text[n..]))
}

/// Is this the path of a shared libpython (`…/libpython3.12.so.1.0`, `…/libpython3.13t.so`)?
fn is_libpython(path: &str) -> bool {
    path.match_indices("/libpython3.").any(|(at, m)| {
        let rest = &path[at + m.len()..];
        digits(rest, 1, 3).is_some_and(|(_, rest)| {
            rest.trim_start_matches(|c: char| c.is_ascii_lowercase())
                .starts_with(".so")
        })
    })
}

/// Is this the path of an interpreter executable (`…/python`, `…/python3`, `…/python3.11`,
/// `…/python3.13t`)? Not `python3.10-config` and the like.
fn is_python_executable(path: &str) -> bool {
    let Some((_, base)) = path.rsplit_once('/') else {
        return false;
    };
    let Some(rest) = base.strip_prefix("python") else {
        return false;
    };
    let rest = rest.strip_prefix('3').unwrap_or(rest);
    let rest = match rest.strip_prefix('.') {
        Some(after) => match digits(after, 1, 3) {
            Some((_, after)) => after,
            None => return false,
        },
        None => rest,
    };
    rest.bytes().all(|b| b.is_ascii_lowercase())
}

/// Find the interpreter of `target` (a live process or a core file) from its memory map
/// `maps`: the image files are opened where the target says they are.
pub fn find_interpreter<T: Target + ?Sized>(
    target: &T,
    maps: &[MapRange],
) -> Result<Interpreter, PyError> {
    let mem = target.memory();
    let exe = target.executable();
    let exe = exe.as_deref();
    let mut candidates: Vec<&str> = Vec::new();
    for m in maps {
        let Some(p) = m.path.as_deref() else { continue };
        if candidates.contains(&p) {
            continue;
        }
        if is_libpython(p) || is_python_executable(p) || Some(p) == exe {
            candidates.push(p);
        }
    }
    // A shared build keeps the runtime in libpython even though the executable also matches.
    candidates.sort_by_key(|p| !is_libpython(p));
    let page = target.page_size();
    let mut seen = Vec::new();
    for path in candidates {
        let ranges: Vec<&MapRange> = maps
            .iter()
            .filter(|m| m.path.as_deref() == Some(path))
            .collect();
        let Some(file) = target.open_image(ranges[0]) else {
            continue;
        };
        let info = match read_image(&file) {
            Ok(i) => i,
            Err(e) => {
                seen.push(format!("{path} ({e})"));
                continue;
            }
        };
        let Some(bias) = load_bias(&info.loads, info.is_exec, &ranges, page) else {
            continue;
        };
        let data = writable_data(maps, path);
        let path_version = version_from_path(path);
        let (runtime, runtime_how) = match info.runtime {
            Some(r) => (r.wrapping_add(bias), info.runtime_how),
            None if path_version.is_some() || is_libpython(path) || is_python_executable(path) => {
                let version = path_version.or_else(|| version_from_memory(mem, &data));
                match scan_for_runtime(mem, maps, &data, version, info.aarch64) {
                    Some(r) => (r, "a scan of the image's data (no symbols)"),
                    None => {
                        seen.push(path.to_string());
                        continue;
                    }
                }
            }
            None => {
                seen.push(path.to_string());
                continue;
            }
        };
        let mut head = vec![0u8; DEBUG_OFFSETS_READ];
        mem.read(runtime, &mut head)?;
        let code_type = info.code_type.map(|a| a.wrapping_add(bias));
        if DebugOffsets::has_cookie(&head) {
            let layout = Arc::new(Layout::from_debug_offsets(&head)?);
            return Ok(Interpreter {
                path: path.to_string(),
                bias,
                runtime,
                code_type,
                how: format!("{runtime_how} and _Py_DebugOffsets"),
                layout,
            });
        }
        let (version, vhow) = if let Some(addr) = info.py_version {
            let hex = mem.u32(addr.wrapping_add(bias))? as u64;
            (Version::from_hex(hex), "Py_Version")
        } else if let Some(v) = version_from_memory(mem, &data) {
            (v, "the sys.version string")
        } else if let Some(v) = path_version {
            (v, "the file name")
        } else {
            return Err(PyError::UnknownVersion(path.to_string()));
        };
        if version.major == 3 && version.minor >= 13 {
            return Err(PyError::Corrupt(
                "Python 3.13+ without _Py_DebugOffsets at _PyRuntime",
            ));
        }
        let layout = Arc::new(Layout::from_table(version, info.aarch64)?);
        return Ok(Interpreter {
            path: path.to_string(),
            bias,
            runtime,
            code_type,
            how: format!("{runtime_how} and {vhow}"),
            layout,
        });
    }
    Err(PyError::NotPython(describe(&target.describe(), exe, &seen)))
}

/// The image's writable mappings and the anonymous mapping right after them (its `.bss`).
pub fn writable_data<'a>(maps: &'a [MapRange], path: &str) -> Vec<&'a MapRange> {
    let mut out = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        if m.path.as_deref() == Some(path) && m.write {
            out.push(m);
            if let Some(next) = maps.get(i + 1)
                && next.path.is_none()
                && next.start == m.end
                && next.write
            {
                out.push(next);
            }
        }
    }
    out
}

/// Largest writable image region scanned for the version string.
const MAX_SCAN: u64 = 16 << 20;

/// The version from the `sys.version` text that `Py_GetVersion` leaves in a static buffer
/// of the image's writable data (3.7–3.10 export nothing better; stripped builds keep it).
fn version_from_memory<M: Memory + ?Sized>(mem: &M, ranges: &[&MapRange]) -> Option<Version> {
    for r in ranges {
        let len = (r.end - r.start).min(MAX_SCAN) as usize;
        let Ok(data) = mem.bytes(r.start, len) else {
            continue;
        };
        if let Some(v) = version_text(&data) {
            return Some(v);
        }
    }
    None
}

/// The first `sys.version` text in `data`, after a NUL: `3.M.m`, letters, digits or `+`
/// (`3.13.0rc1`, `3.12.1+`), then ` (` (the build's date follows).
fn version_text(data: &[u8]) -> Option<Version> {
    memchr::memmem::find_iter(data, b"\x003.").find_map(|at| {
        // A version text is short and ASCII: what follows, up to the first other byte.
        let tail = &data[at + 3..data.len().min(at + 32)];
        let ascii = tail.iter().take_while(|b| b.is_ascii()).count();
        let rest = std::str::from_utf8(&tail[..ascii]).ok()?;
        let (minor, rest) = digits(rest, 1, 2)?;
        let (micro, rest) = digits(rest.strip_prefix('.')?, 1, 2)?;
        let rest = rest
            .trim_start_matches(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '+');
        rest.starts_with(" (")
            .then(|| Version::new(3, minor, micro))
    })
}

/// Find `_PyRuntime` in an image that has neither the symbol nor the `.PyRuntime` section:
/// 3.13+ by the `_Py_DebugOffsets` cookie at its start; older versions by a word that points
/// at the main interpreter, validated through its first thread state pointing back at it.
pub fn scan_for_runtime<M: Memory + ?Sized>(
    mem: &M,
    maps: &[MapRange],
    ranges: &[&MapRange],
    version: Option<Version>,
    aarch64: bool,
) -> Option<u64> {
    let layout = version.and_then(|v| Layout::from_table(v, aarch64).ok());
    let mapped_rw = |a: u64| {
        let i = maps.partition_point(|m| m.end <= a);
        maps.get(i)
            .is_some_and(|m| m.contains(a) && m.read && m.write)
    };
    for r in ranges {
        let len = (r.end - r.start).min(MAX_SCAN) as usize;
        let Ok(data) = mem.bytes(r.start, len) else {
            continue;
        };
        for off in (0..len.saturating_sub(8)).step_by(8) {
            if &data[off..off + 8] == b"xdebugpy"
                && Layout::from_debug_offsets(&data[off..(off + DEBUG_OFFSETS_READ).min(len)])
                    .is_ok()
            {
                return Some(r.start + off as u64);
            }
        }
        let Some(l) = &layout else { continue };
        for off in (0..len.saturating_sub(8)).step_by(8) {
            let p = le_u64(&data, off);
            // `interpreters.main` follows `interpreters.head`: with a single interpreter both
            // point at it, which other globals holding the interpreter pointer do not mimic.
            if (off as u64) < l.rt_interp_head
                || p == 0
                || !p.is_multiple_of(8)
                || le_u64(&data, off + 8) != p
                || !mapped_rw(p)
            {
                continue;
            }
            // An embedded main interpreter sits after the runtime's own fields (x86_64:
            // +58936 in 3.11, +76392 in 3.12).
            let runtime = r.start + off as u64 - l.rt_interp_head;
            if l.main_interp_in_runtime && !(runtime + (16 << 10) < p && p < runtime + (256 << 10))
            {
                continue;
            }
            // The main interpreter has id 0, and its first thread state points back at it.
            let ok = (|| {
                if mem.i64(p + l.is_id).ok()? != 0 {
                    return None;
                }
                let ts = mem.u64(p + l.is_threads_head).ok()?;
                if ts == 0 || !mapped_rw(ts) || mem.u64(ts + l.ts_interp).ok()? != p {
                    return None;
                }
                (mem.u64(ts + l.ts_thread_id).ok()? != 0).then_some(())
            })();
            if ok.is_some() {
                return Some(runtime);
            }
        }
    }
    None
}

fn describe(target: &str, exe: Option<&str>, seen: &[String]) -> String {
    let what = match exe {
        Some(e) => format!("{target} ({e})"),
        None => target.to_string(),
    };
    if seen.is_empty() {
        format!("{what} is not a Python process: no libpython or python executable is mapped")
    } else {
        format!(
            "{what} is not a Python process: no libpython is mapped and {} has no Python runtime (_PyRuntime)",
            seen.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            version_from_path("/x/lib/libpython3.9.so.1.0"),
            Some(Version::new(3, 9, 0))
        );
        assert_eq!(
            version_from_path("/usr/lib/libpython3.13t.so.1.0"),
            Some(Version::new(3, 13, 0))
        );
        assert_eq!(
            version_from_path("/usr/bin/python3.10"),
            Some(Version::new(3, 10, 0))
        );
        assert_eq!(version_from_path("/usr/bin/python3"), None);
        assert_eq!(version_from_path("/usr/bin/python3.10-config"), None);
        assert_eq!(
            version_from_path("/opt/prof-pythons/debian-sid/bin/python3.15"),
            Some(Version::new(3, 15, 0))
        );
        assert_eq!(
            version_from_path("/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0"),
            Some(Version::new(3, 12, 0))
        );
        // An extension module under a versioned directory names no interpreter.
        assert_eq!(
            version_from_path(
                "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so"
            ),
            None
        );
    }

    /// Paths from the memory maps of the interpreters on the test machines, and their
    /// neighbours in those maps.
    #[test]
    fn interpreter_files_are_told_from_other_files() {
        for lib in [
            "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0",
            "/root/.pyenv/versions/3.7.16/lib/libpython3.7m.so.1.0",
            "/usr/lib/x86_64-linux-gnu/libpython3.13t.so.1.0",
            "/usr/lib/libpython3.9.so",
        ] {
            assert!(is_libpython(lib), "{lib}");
            assert!(!is_python_executable(lib), "{lib}");
        }
        for exe in [
            "/usr/bin/python3.11",
            "/root/.pyenv/versions/3.12.1/bin/python3.12",
            "/opt/prof-pythons/debian-sid/bin/python3.15",
            "/usr/bin/python3",
            "/usr/bin/python",
            "/usr/bin/python3.13t",
            "/usr/local/bin/python3.7m",
        ] {
            assert!(is_python_executable(exe), "{exe}");
            assert!(!is_libpython(exe), "{exe}");
        }
        for other in [
            "/usr/bin/python3.10-config",
            "/usr/bin/python33",
            "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
            "/usr/lib/x86_64-linux-gnu/libpython3.so",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "python3.11",
            "/tmp/python3.",
            "/home/a/mypython3.11",
        ] {
            assert!(!is_libpython(other), "{other}");
            assert!(!is_python_executable(other), "{other}");
        }
    }

    /// `sys.version` of interpreters on the test machines, as `Py_GetVersion` leaves them in
    /// writable data: after a NUL, with other data around.
    #[test]
    fn versions_from_the_version_text() {
        let text = |v: &str| {
            let mut data = b"\x013.9 (x\x00\x00\x00".to_vec();
            data.extend_from_slice(v.as_bytes());
            data.extend_from_slice(b"\x00\xff\xfe3.1");
            data
        };
        for (v, want) in [
            (
                "3.7.16 (default, May  9 2026, 07:31:42) \n[GCC 12.2.0]",
                (7, 16),
            ),
            ("3.11.2 (main, Apr 28 2025, 14:11:48) [GCC 12.2.0]", (11, 2)),
            ("3.15.2 (main, Oct 26 2026, 15:10:10) [GCC 16.2.0]", (15, 2)),
            (
                "3.13.0rc1+ (heads/3.13:1b2c3d4, Sep  2 2024) [GCC]",
                (13, 0),
            ),
        ] {
            assert_eq!(
                version_text(&text(v)),
                Some(Version::new(3, want.0, want.1)),
                "{v}"
            );
        }
        for v in [
            "3.123.1 (main)",
            "3.12.1(main)",
            "3.12 (main)",
            "3.12.1-x (main)",
        ] {
            assert_eq!(version_text(&text(v)), None, "{v}");
        }
        // The first complete one wins; a truncated text at the end is no version.
        let mut two = text("3.10.13 (main, Jan  1 2024)");
        two.extend_from_slice(b"\x003.9.18 (main");
        assert_eq!(version_text(&two), Some(Version::new(3, 10, 13)));
        assert_eq!(version_text(b"\x003.12.1"), None);
    }
}
