//! The native unwinder and symbolizer checked against gdb on real binaries.
//!
//! `testdata/native/chain.c` is compiled at test time in several ways (`-O2
//! -fomit-frame-pointer`, `-O0`, CFI only in `.debug_frame`, no CFI at all), run under
//! gdb to a breakpoint, and gdb's view (registers, frames, mappings, the stack bytes, the
//! vdso) is written out by `testdata/native/snapshot.py`. The unwinder then walks that
//! snapshot, an `ImageMemory` with the stack and the vdso plus the real files from the
//! mappings, and must find exactly gdb's frame pcs; the symbolizer must find gdb's
//! function names, inlined frames and lines. Skipped (with a notice) without gcc and gdb.

use std::path::{Path, PathBuf};
use std::process::Command;

use prof::native::modules::DebugSearch;
use prof::native::{Arch, Frame, Modules, Registers, Symbolizer, Unwinder, Via};
use prof::process::{ImageMemory, MapRange};
use serde_json::Value;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn tools() -> bool {
    let ok = have("gcc") && have("gdb") && have("objcopy") && have("addr2line");
    if !ok {
        eprintln!("notice: gcc, gdb or objcopy missing; native gdb tests skipped");
    }
    ok
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/native")
        .join(name)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compile chain.c with `flags` into `dir/name`.
fn build(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(testdata("chain.c")));
    out
}

/// One frame as gdb reported it.
#[derive(Debug, Clone)]
struct GdbFrame {
    pc: u64,
    name: Option<String>,
    kind: String,
    file: Option<String>,
    line: u64,
}

/// gdb's stop, ready for the unwinder.
struct Snapshot {
    regs: Registers,
    mem: ImageMemory,
    maps: Vec<MapRange>,
    frames: Vec<GdbFrame>,
}

/// Run `bin args` under gdb to `breakpoint` and take its snapshot; `pre` runs first.
fn snapshot(gdb: &str, bin: &Path, breakpoint: &str, args: &str, pre: &[String]) -> Snapshot {
    let mut cmds = pre.to_vec();
    cmds.push(format!("break {breakpoint}"));
    cmds.push(format!("run {args}"));
    snapshot_after(gdb, bin, breakpoint, &cmds)
}

/// Run gdb on `bin` with `cmds` (which must stop the program), then take the snapshot.
fn snapshot_after(gdb: &str, bin: &Path, tag: &str, cmds: &[String]) -> Snapshot {
    let out = bin.with_extension(format!(
        "{}.json",
        tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let mut cmd = Command::new(gdb);
    cmd.args(["-batch", "-nx"]);
    for c in [
        "set debuginfod enabled off".to_string(),
        "set confirm off".to_string(),
        format!("python OUT = {:?}", out.to_str().unwrap()),
        "handle SIGUSR1 nostop noprint pass".to_string(),
    ]
    .iter()
    .chain(cmds)
    .chain(&[
        format!("source {}", testdata("snapshot.py").display()),
        "kill".to_string(),
    ]) {
        cmd.arg("-ex").arg(c);
    }
    cmd.arg(bin);
    let o = cmd.output().expect("gdb");
    let text = std::fs::read_to_string(&out).unwrap_or_else(|_| {
        panic!(
            "gdb wrote no snapshot: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    parse_snapshot(&out, &text)
}

fn parse_snapshot(out: &Path, text: &str) -> Snapshot {
    let v: Value = serde_json::from_str(text).unwrap();
    let u = |v: &Value| v.as_u64().unwrap();
    let aarch64 = v["arch"].as_str().unwrap().contains("aarch64");
    let r = &v["regs"];
    let regs = if aarch64 {
        let mut regs: Vec<(u16, u64)> = (0..31).map(|i| (i, u(&r[format!("x{i}")]))).collect();
        regs.push((31, u(&r["sp"])));
        Registers::from_dwarf(&Arch::AARCH64, u(&r["pc"]), &regs)
    } else {
        let names = [
            "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        let regs: Vec<(u16, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u16, u(&r[*n])))
            .collect();
        Registers::from_dwarf(&Arch::X86_64, u(&r["rip"]), &regs)
    };
    let mut mem = ImageMemory::new();
    let stack = std::fs::read(out.with_extension("json.stack")).unwrap();
    mem.add(u(&v["stack_start"]), stack);
    if let Some(vdso) = v["vdso"].as_u64() {
        mem.add(
            vdso,
            std::fs::read(out.with_extension("json.vdso")).unwrap(),
        );
    }
    for c in v["code"].as_array().unwrap() {
        let hex = c["bytes"].as_str().unwrap();
        let bytes = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        mem.add(u(&c["addr"]), bytes);
    }
    let maps = v["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let perms = m["perms"].as_str().unwrap_or("");
            MapRange {
                start: u(&m["start"]),
                end: u(&m["end"]),
                offset: u(&m["offset"]),
                read: perms.starts_with('r'),
                write: perms.get(1..2) == Some("w"),
                exec: perms.get(2..3) == Some("x"),
                path: m["path"].as_str().map(str::to_string),
                deleted: false,
            }
        })
        .collect();
    let frames = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| GdbFrame {
            pc: u(&f["pc"]),
            name: f["name"].as_str().map(str::to_string),
            kind: f["type"].as_str().unwrap().to_string(),
            file: f["file"].as_str().map(str::to_string),
            line: f["line"].as_u64().unwrap_or(0),
        })
        .collect();
    Snapshot {
        regs,
        mem,
        maps,
        frames,
    }
}

impl Snapshot {
    fn modules(&self) -> Modules {
        Modules::from_maps(
            &self.maps,
            |m| m.path.as_ref().map(PathBuf::from),
            &self.mem,
            4096,
        )
    }

    /// gdb's frames grouped per real frame: inlined levels then the real one; gdb's
    /// `tailcall` frames (guessed from call-site DWARF, no pc of their own) dropped.
    fn gdb_groups(&self) -> Vec<Vec<GdbFrame>> {
        let mut groups = Vec::new();
        let mut cur = Vec::new();
        for f in &self.frames {
            match f.kind.as_str() {
                "tailcall" => {}
                "inline" => cur.push(f.clone()),
                _ => {
                    cur.push(f.clone());
                    groups.push(std::mem::take(&mut cur));
                }
            }
        }
        groups
    }
}

fn hexes(v: &[u64]) -> Vec<String> {
    v.iter().map(|p| format!("{p:#x}")).collect()
}

/// Unwind the snapshot and compare pcs, names and lines with gdb; returns the frames.
fn check(snap: &Snapshot, sym: &mut Symbolizer, binary: &Path) -> Vec<Frame> {
    let modules = snap.modules();
    let mut u = Unwinder::new();
    let mut frames = Vec::new();
    let res = u.unwind_frames(&modules, &snap.regs, &snap.mem, &mut frames);
    let groups = snap.gdb_groups();
    let ours: Vec<u64> = frames.iter().map(|f| f.pc).collect();
    let theirs: Vec<u64> = groups.iter().map(|g| g.last().unwrap().pc).collect();
    assert_eq!(
        hexes(&ours),
        hexes(&theirs),
        "pcs differ from gdb's ({res:?})"
    );
    assert_eq!(res, Ok(()), "the walk should end cleanly at _start");
    eprintln!(
        "{}: {} frames ({} levels with inlining) match gdb",
        binary.display(),
        frames.len(),
        snap.frames.iter().filter(|f| f.kind != "tailcall").count()
    );

    let bin = binary.to_str().unwrap();
    for (f, g) in frames.iter().zip(&groups) {
        let s = sym.symbolize_frame(&modules, f);
        let names: Vec<Option<String>> = s.frames.iter().map(|l| l.function.clone()).collect();
        let gdb_names: Vec<Option<String>> = g.iter().map(|l| l.name.clone()).collect();
        let in_binary = s.module.as_deref() == Some(bin);
        let gdb_dwarf = g.iter().all(|l| l.file.is_some());
        if in_binary || gdb_dwarf {
            // Both read the same DWARF (or symbol table): same names, levels and lines;
            // from a symbol table, where several names share an address, any of them.
            if in_binary || s.frames.iter().all(|l| l.file.is_some()) {
                let same = names == gdb_names
                    || (!gdb_dwarf
                        && names.len() == 1
                        && gdb_names.len() == 1
                        && aliases(binary, names[0].as_deref(), gdb_names[0].as_deref()));
                assert!(same, "at {:#x}: {s:?} vs {g:?}", f.pc);
            }
            for (level, (l, gl)) in s.frames.iter().zip(g).enumerate() {
                if let (Some(file), Some(gfile)) = (&l.file, &gl.file) {
                    let base = |p: &str| p.rsplit('/').next().unwrap().to_string();
                    assert_eq!(base(file), base(gfile), "at {:#x}", f.pc);
                    let line = l.line.map(u64::from);
                    if f.exact && level == 0 && in_binary {
                        // Where several line rows share the innermost pc (a function's
                        // first instruction), gdb shows the last and addr2line the first:
                        // check that one against binutils' addr2line.
                        assert_eq!(line, binutils_line(binary, s.module_offset), "{:#x}", f.pc);
                    } else {
                        assert_eq!(line, Some(gl.line), "line at {:#x}", f.pc);
                    }
                }
            }
        } else if g.last().unwrap().name.is_some() {
            assert!(
                s.frames.last().and_then(|l| l.function.as_ref()).is_some(),
                "gdb names {:#x} ({g:?}) but prof has nothing",
                f.pc
            );
        }
    }
    frames
}

/// Are `a` and `b` names of the same address in `bin`'s symbol tables?
fn aliases(bin: &Path, a: Option<&str>, b: Option<&str>) -> bool {
    use object::{Object, ObjectSymbol};
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    let data = std::fs::read(bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let addr = |n: &str| {
        file.symbols()
            .chain(file.dynamic_symbols())
            .find(|s| s.name() == Ok(n))
            .map(|s| s.address())
    };
    addr(a).is_some() && addr(a) == addr(b)
}

/// The line binutils' addr2line gives for link-time address `addr` of `bin`.
fn binutils_line(bin: &Path, addr: u64) -> Option<u64> {
    let out = Command::new("addr2line")
        .arg("-e")
        .arg(bin)
        .arg(format!("{addr:#x}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()?
        .rsplit(':')
        .next()?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The functions of chain.c, innermost first, as a walk from `leaf` must list them.
const CHAIN: [&str; 6] = ["leaf", "inl", "c", "b", "a", "main"];

fn names(snap: &Snapshot) -> Vec<String> {
    snap.frames.iter().filter_map(|f| f.name.clone()).collect()
}

#[test]
fn o2_without_frame_pointers_matches_gdb() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let bin = build(
        dir.path(),
        "chain_o2",
        &["-O2", "-g", "-fomit-frame-pointer"],
    );
    let snap = snapshot("gdb", &bin, "leaf", "", &[]);
    assert_eq!(names(&snap)[..6], CHAIN);
    let frames = check(&snap, &mut Symbolizer::new(), &bin);
    assert!(frames.iter().skip(1).all(|f| f.via == Via::Cfi));
}

#[test]
fn without_system_debug_files_matches_gdb() {
    if !tools() {
        return;
    }
    // As on a machine without libc6-dbg: libc is named from its dynamic symbols only.
    let dir = tempdir();
    let bin = build(
        dir.path(),
        "chain_nodbg",
        &["-O2", "-g", "-fomit-frame-pointer"],
    );
    let none = dir.path().join("no-debug");
    let pre = [format!("set debug-file-directory {}", none.display())];
    for (bp, args) in [("leaf", ""), ("handler_leaf", "3 4 5")] {
        let snap = snapshot("gdb", &bin, bp, args, &pre);
        let mut sym = Symbolizer::with_search(DebugSearch {
            roots: vec![none.clone()],
            ..DebugSearch::default()
        });
        check(&snap, &mut sym, &bin);
    }
}

#[test]
fn compressed_dwarf_matches_gdb() {
    if !tools() {
        return;
    }
    // DWARF stored zlib-compressed (as in Debian's -dbgsym files) is read from a copy
    // inflated once into the cache directory, and gives what gdb gives.
    let dir = tempdir();
    let bin = build(
        dir.path(),
        "chain_gz",
        &["-O2", "-g", "-gz=zlib", "-fomit-frame-pointer"],
    );
    let snap = snapshot("gdb", &bin, "leaf", "", &[]);
    let modules = snap.modules();
    let exe = modules.find(snap.regs.pc).unwrap();
    assert!(
        exe.image.is_compressed(".debug_info"),
        "gcc -gz compressed nothing"
    );
    let cache = dir.path().join("inflated");
    let search = |inflated: Option<PathBuf>| DebugSearch {
        inflated,
        ..DebugSearch::default()
    };
    let mut sym = Symbolizer::with_search(search(Some(cache.clone())));
    check(&snap, &mut sym, &bin);
    let id: String = exe
        .image
        .build_id
        .as_ref()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let info = std::fs::metadata(cache.join(id).join("debug_info")).expect("inflated .debug_info");
    assert!(info.len() > 0);
    // A second symbolizer maps the copy already there, with the same answers.
    check(
        &snap,
        &mut Symbolizer::with_search(search(Some(cache))),
        &bin,
    );
    // Without the directory, that DWARF is not read: the symbol table names the functions.
    let mut plain = Symbolizer::with_search(search(None));
    assert_eq!(plain.sources(exe).dwarf, None);
    let s = plain.symbolize(&modules, snap.regs.pc, true);
    assert_eq!(s.name(), "leaf");
}

#[test]
fn o0_matches_gdb() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let bin = build(dir.path(), "chain_o0", &["-O0", "-g"]);
    let snap = snapshot("gdb", &bin, "leaf", "", &[]);
    // inl is always_inline, so inlined even at -O0.
    assert_eq!(names(&snap)[..6], CHAIN);
    check(&snap, &mut Symbolizer::new(), &bin);
}

#[test]
fn debug_frame_only_matches_gdb() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    // No .eh_frame for chain.c's functions: their CFI is in .debug_frame.
    let bin = build(
        dir.path(),
        "chain_df",
        &[
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
        ],
    );
    let snap = snapshot("gdb", &bin, "leaf", "", &[]);
    let modules = snap.modules();
    let exe = modules.find(snap.regs.pc).unwrap();
    assert!(exe.image.has_section(".debug_frame"));
    check(&snap, &mut Symbolizer::new(), &bin);
}

#[test]
fn frame_pointer_fallback_matches_gdb() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let bin = build(
        dir.path(),
        "chain_fp",
        &[
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-fno-inline-small-functions",
        ],
    );
    // No CFI at all for chain.c's code: the unwinder must follow rbp.
    run(Command::new("objcopy")
        .arg("--remove-section=.debug_frame")
        .arg(&bin));
    // Stop inside leaf's body, after its prologue built the frame record.
    let snap = snapshot("gdb", &bin, "chain.c:23", "", &[]);
    let modules = snap.modules();
    let mut u = Unwinder::new();
    let mut frames = Vec::new();
    u.unwind_frames(&modules, &snap.regs, &snap.mem, &mut frames)
        .unwrap();
    assert!(
        frames.iter().any(|f| f.via == Via::FramePointer),
        "{frames:?}"
    );
    check(&snap, &mut Symbolizer::new(), &bin);
}

#[test]
fn signal_handler_matches_gdb() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let bin = build(
        dir.path(),
        "chain_sig",
        &["-O2", "-g", "-fomit-frame-pointer"],
    );
    // Four arguments: leaf(6) raises SIGUSR1; stop in the handler.
    let snap = snapshot("gdb", &bin, "handler_leaf", "3 4 5", &[]);
    assert!(snap.frames.iter().any(|f| f.kind == "sigtramp"));
    let frames = check(&snap, &mut Symbolizer::new(), &bin);
    let i = frames
        .iter()
        .position(|f| f.via == Via::SignalFrame)
        .expect("a frame recovered from the signal frame");
    // The interrupted frame's pc is exact: symbolized as is, not as a return address.
    assert!(frames[i].exact);
    // So is the trampoline's: the handler returned into its first instruction.
    assert!(frames[i - 1].exact);
    assert!(!frames[i - 2].exact);
}

#[test]
fn plt_stub_matches_gdb() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let bin = build(
        dir.path(),
        "chain_plt",
        &["-O2", "-g", "-fomit-frame-pointer", "-Wl,-z,lazy"],
    );
    // At the stub's first instruction (CFA = rsp+8) and after its push (CFA = rsp+16):
    // both sides of the .plt CFA expression.
    for bp in ["*'puts@plt'", "*'puts@plt'+11"] {
        let snap = snapshot("gdb", &bin, bp, "", &[]);
        assert_eq!(snap.frames[0].name.as_deref(), Some("puts@plt"), "{bp}");
        let modules = snap.modules();
        let mut u = Unwinder::new();
        let mut frames = Vec::new();
        let r = u.unwind_frames(&modules, &snap.regs, &snap.mem, &mut frames);
        let theirs: Vec<u64> = snap.gdb_groups().iter().map(|g| g[0].pc).collect();
        let ours: Vec<u64> = frames.iter().map(|f| f.pc).collect();
        assert_eq!(hexes(&ours), hexes(&theirs), "{bp}: {r:?}");
    }
}

/// Symbolize every unwound frame of `snap` with `sym` (innermost level names only).
fn symbolized_names(snap: &Snapshot, sym: &mut Symbolizer) -> Vec<String> {
    let modules = snap.modules();
    let mut u = Unwinder::new();
    let mut frames = Vec::new();
    let _ = u.unwind_frames(&modules, &snap.regs, &snap.mem, &mut frames);
    frames
        .iter()
        .flat_map(|f| {
            let s = sym.symbolize_frame(&modules, f);
            if s.frames.is_empty() {
                vec![s.fallback_name()]
            } else {
                s.frames
                    .iter()
                    .map(|l| match (&l.function, l.line) {
                        (Some(n), Some(line)) => format!("{n}:{line}"),
                        (Some(n), None) => n.clone(),
                        (None, _) => s.fallback_name(),
                    })
                    .collect()
            }
        })
        .collect()
}

#[test]
fn separate_debug_files() {
    if !tools() || !have("xz") {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let full = build(d, "chain_full", &["-O2", "-g", "-fomit-frame-pointer"]);
    let snap_full = snapshot("gdb", &full, "leaf", "", &[]);
    let expected = symbolized_names(&snap_full, &mut Symbolizer::new());
    assert!(expected[0].starts_with("leaf:"), "{expected:?}");
    assert!(expected.iter().any(|n| n.starts_with("inl:")));

    // 1. Debug info split off and found by build-id under a debug root.
    let dbg = d.join("chain.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(&dbg));
    let stripped = d.join("chain_stripped");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&full)
        .arg(&stripped));
    let snap = snapshot("gdb", &stripped, "leaf", "", &[]);
    let image = prof::native::ElfImage::open(&stripped).unwrap();
    let id: String = image
        .build_id
        .as_ref()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = d.join("debugroot");
    let by_id = root.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&by_id).unwrap();
    std::fs::copy(&dbg, by_id.join(format!("{}.debug", &id[2..]))).unwrap();
    let mut sym = Symbolizer::with_search(DebugSearch {
        roots: vec![root.clone(), PathBuf::from("/usr/lib/debug")],
        ..DebugSearch::default()
    });
    assert_eq!(symbolized_names(&snap, &mut sym), expected, "build-id");
    let modules = snap.modules();
    let exe = modules.find(snap.regs.pc).unwrap();
    let sources = sym.sources(exe);
    assert!(sources.debug_file.unwrap().starts_with(&root));

    // 2. Found through .gnu_debuglink in a .debug/ subdirectory (not under any root).
    let linked = d.join("chain_linked");
    run(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", dbg.display()))
        .arg(&stripped)
        .arg(&linked));
    std::fs::create_dir_all(d.join(".debug")).unwrap();
    std::fs::rename(&dbg, d.join(".debug/chain.debug")).unwrap();
    let snap = snapshot("gdb", &linked, "leaf", "", &[]);
    let mut sym = Symbolizer::new();
    assert_eq!(symbolized_names(&snap, &mut sym), expected, "debuglink");
    let modules = snap.modules();
    let sources = sym.sources(modules.find(snap.regs.pc).unwrap());
    assert_eq!(sources.debug_file, Some(d.join(".debug/chain.debug")));

    // 3. Without a matching debug file: the symbol table only, no lines or inlining.
    let mut sym = Symbolizer::with_search(DebugSearch {
        roots: vec![d.join("no-such-root")],
        ..DebugSearch::default()
    });
    let names = symbolized_names(&snapshot("gdb", &stripped, "leaf", "", &[]), &mut sym);
    assert_eq!(names[..5], ["leaf", "c", "b", "a", "main"], "{names:?}");
}

/// Address of symbol `name` in `bin`'s symbol table.
fn symbol_address(bin: &Path, name: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
        .unwrap()
}

#[test]
fn stripped_and_minidebuginfo() {
    if !tools() || !have("xz") {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    // Not PIE, so a breakpoint address taken from the unstripped file holds after strip.
    let full = build(
        d,
        "chain_np",
        &["-O2", "-g", "-fomit-frame-pointer", "-no-pie"],
    );
    let leaf = symbol_address(&full, "leaf");
    let bp = format!("*{leaf:#x}");

    // Fully stripped: chain.c's functions are not exported, so they get fallback names.
    let bare = d.join("chain_bare");
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(&full)
        .arg(&bare));
    let snap = snapshot("gdb", &bare, &bp, "", &[]);
    let names = symbolized_names(&snap, &mut Symbolizer::new());
    assert_eq!(names[0], format!("{leaf:#x} (chain_bare+{leaf:#x})"));
    assert!(
        names[..5].iter().all(|n| n.contains("(chain_bare+0x")),
        "{names:?}"
    );
    assert!(names.last().unwrap().starts_with("0x"), "{names:?}"); // _start, stripped too

    // MiniDebugInfo: the symbol table, xz-compressed into .gnu_debugdata.
    let mini = d.join("mini.elf");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(&mini));
    run(Command::new("objcopy").arg("--strip-debug").arg(&mini));
    run(Command::new("xz").arg("-k").arg(&mini));
    let with_mini = d.join("chain_mini");
    run(Command::new("objcopy")
        .arg(format!(
            "--add-section=.gnu_debugdata={}.xz",
            mini.display()
        ))
        .arg(&bare)
        .arg(&with_mini));
    let snap = snapshot("gdb", &with_mini, &bp, "", &[]);
    let mut sym = Symbolizer::new();
    let names = symbolized_names(&snap, &mut sym);
    assert_eq!(names[..5], ["leaf", "c", "b", "a", "main"], "{names:?}");
    let modules = snap.modules();
    let sources = sym.sources(modules.find(snap.regs.pc).unwrap());
    assert!(
        sources.minidebuginfo && sources.dwarf.is_none(),
        "{sources:?}"
    );
    // gdb reads MiniDebugInfo too (when built with lzma): then it must agree entirely.
    if snap.frames[0].name.as_deref() == Some("leaf") {
        check(&snap, &mut Symbolizer::new(), &with_mini);
    }
}

/// Mappings of a non-relocatable executable as the kernel would make them (gdb cannot
/// list them over qemu's remote protocol).
fn maps_of(bin: &Path) -> Vec<MapRange> {
    let image = prof::native::ElfImage::open(bin).unwrap();
    assert!(image.is_exec);
    image
        .loads
        .iter()
        .map(|l| MapRange {
            start: l.vaddr & !0xfff,
            end: (l.vaddr + l.memsz + 0xfff) & !0xfff,
            offset: l.offset & !0xfff,
            read: true,
            write: false,
            exec: true,
            path: Some(bin.display().to_string()),
            deleted: false,
        })
        .collect()
}

/// Is something listening on TCP `port` (from /proc/net/tcp, without connecting)?
fn listening(port: u16) -> bool {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&format!(":{port:04X}")) && f[3] == "0A"
    })
}

/// Run an aarch64 `bin` under qemu-user with its gdb stub and snapshot it at `bp`.
fn qemu_snapshot(bin: &Path, cpu: &str, bp: &str, args: &[&str]) -> Snapshot {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut qemu = Command::new("qemu-aarch64-static")
        .args(["-cpu", cpu, "-g", &port.to_string()])
        .arg(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !listening(port) && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cmds = [
        format!("target remote 127.0.0.1:{port}"),
        format!("break {bp}"),
        "continue".to_string(),
    ];
    let snap = snapshot_after("gdb-multiarch", bin, bp, &cmds);
    // gdb's `kill` ends qemu; never leave it behind if that failed.
    if qemu.try_wait().unwrap().is_none() {
        let _ = qemu.kill();
    }
    let _ = qemu.wait();
    Snapshot {
        maps: maps_of(bin),
        ..snap
    }
}

#[test]
fn aarch64_under_qemu_matches_gdb() {
    let need = [
        "aarch64-linux-gnu-gcc",
        "qemu-aarch64-static",
        "gdb-multiarch",
    ];
    if !need.iter().all(|t| have(t)) || !have("addr2line") {
        eprintln!("notice: {need:?} not all installed; aarch64 gdb tests skipped");
        return;
    }
    let dir = tempdir();
    for (name, flags) in [
        ("a64_o2", &["-O2", "-g", "-static"][..]),
        ("a64_o0", &["-O0", "-g", "-static"][..]),
    ] {
        let bin = dir.path().join(name);
        run(Command::new("aarch64-linux-gnu-gcc")
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(testdata("chain.c")));
        // cortex-a57: no SVE, whose signal-frame record gdb 13 cannot read under qemu 7.2.
        let snap = qemu_snapshot(&bin, "cortex-a57", "leaf", &[]);
        assert_eq!(snap.regs.arch().e_machine, Arch::AARCH64.e_machine);
        assert_eq!(names(&snap)[..6], CHAIN);
        let frames = check(&snap, &mut Symbolizer::new(), &bin);
        assert!(frames.iter().skip(1).all(|f| f.via == Via::Cfi));

        // Through a signal frame on qemu's sigreturn trampoline (outside every module).
        let snap = qemu_snapshot(&bin, "cortex-a57", "handler_leaf", &["3", "4", "5"]);
        assert!(snap.frames.iter().any(|f| f.kind == "sigtramp"));
        let frames = check(&snap, &mut Symbolizer::new(), &bin);
        assert!(
            frames.iter().any(|f| f.via == Via::SignalFrame),
            "{frames:?}"
        );
    }
}
