//! CFI rows parsed by prof checked against binutils' `readelf --debug-dump=frames-interp`
//! on real binaries: chain.c compiled at test time for x86_64 (and, when the cross
//! compiler is installed, for aarch64, with and without pointer authentication), and the
//! system's own libc. Every row of every `.eh_frame` FDE is compared: the CFA rule and the
//! rule of each general register and of the return-address column.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use prof::native::unwind::{CfaRule, RegRule, UnwindPlan};
use prof::native::{Arch, ElfImage, Module, Unwinder};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn compile(cc: &str, flags: &[&str], out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/native/chain.c");
    let o = Command::new(cc)
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// DWARF number of a register as readelf names it, or None for ones prof does not track.
fn regno(arch: &Arch, name: &str) -> Option<u16> {
    if name == "ra" {
        return Some(arch.ra);
    }
    if arch.e_machine == Arch::X86_64.e_machine {
        let names = [
            "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        names.iter().position(|n| *n == name).map(|i| i as u16)
    } else if name == "sp" {
        Some(31)
    } else {
        name.strip_prefix('x')?
            .parse()
            .ok()
            .filter(|&n: &u16| n <= 30)
    }
}

/// One row of readelf's table.
struct Row {
    loc: u64,
    cfa: String,
    cells: Vec<(u16, String)>,
}

/// The `.eh_frame` rows of `bin` as binutils interprets them.
fn readelf_rows(readelf: &str, bin: &Path, arch: &Arch) -> Vec<Row> {
    let out = Command::new(readelf)
        .arg("--debug-dump=frames-interp")
        .arg(bin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    let mut cols: Vec<Option<u16>> = Vec::new();
    let mut in_fde = false;
    for line in text.lines() {
        if line.starts_with("Contents of the") && !line.contains(".eh_frame") {
            break;
        }
        // A register rule reads `r9 (r9)`: DWARF number, then name; keep the number.
        let t: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with('('))
            .collect();
        if line.contains(" FDE ") {
            in_fde = true;
            continue;
        }
        if line.contains(" CIE ") || line.contains("ZERO terminator") {
            in_fde = false;
            continue;
        }
        if t.first() == Some(&"LOC") {
            cols = t[2..].iter().map(|n| regno(arch, n)).collect();
            continue;
        }
        if !in_fde || t.len() < 2 || !t[0].chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let cells = cols
            .iter()
            .zip(&t[2..])
            .filter_map(|(c, v)| c.map(|c| (c, v.to_string())))
            .collect();
        rows.push(Row {
            loc: u64::from_str_radix(t[0], 16).unwrap(),
            cfa: t[1].to_string(),
            cells,
        });
    }
    rows
}

fn reg_name(arch: &Arch, reg: u16) -> String {
    if arch.e_machine == Arch::X86_64.e_machine {
        let names = [
            "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        names[reg as usize].to_string()
    } else if reg == 31 {
        "sp".into()
    } else {
        format!("x{reg}")
    }
}

/// readelf's spelling of one of prof's rules.
fn spell(rule: Option<&RegRule>) -> String {
    match rule {
        None | Some(RegRule::Undefined) => "u".into(),
        Some(RegRule::SameValue) => "s".into(),
        Some(RegRule::Offset(n)) => format!("c{n:+}"),
        Some(RegRule::ValOffset(n)) => format!("v{n:+}"),
        Some(RegRule::Register(r)) => format!("r{r}"),
        Some(RegRule::Expression(_)) => "exp".into(),
        Some(RegRule::ValExpression(_)) => "vexp".into(),
        Some(RegRule::Constant(c)) => format!("const{c}"),
    }
}

/// Compare every row; returns how many were compared.
fn compare(readelf: &str, bin: &Path) -> usize {
    let image = ElfImage::open(bin).unwrap();
    let arch = image.arch;
    let module = Module::new(
        bin.display().to_string(),
        Some(bin.to_path_buf()),
        Arc::new(image),
        0,
        0,
        u64::MAX,
    );
    let rows = readelf_rows(readelf, bin, arch);
    let mut u = Unwinder::new();
    let mut compared = 0;
    for row in &rows {
        let plan = u.plan(&module, row.loc, true);
        let ours = match plan {
            UnwindPlan::Cfi(r) => r,
            // glibc's sigreturn trampoline, recognised by its code first.
            UnwindPlan::SignalTrampoline => continue,
            UnwindPlan::FramePointer => panic!("{}: no CFI found at {:#x}", bin.display(), row.loc),
        };
        let cfa = match &ours.cfa {
            CfaRule::RegOffset { reg, offset } => format!("{}{offset:+}", reg_name(arch, *reg)),
            CfaRule::Expression(_) => "exp".into(),
        };
        assert_eq!(cfa, row.cfa, "{}: CFA at {:#x}", bin.display(), row.loc);
        for (reg, cell) in &row.cells {
            assert_eq!(
                &spell(ours.rule(*reg)),
                cell,
                "{}: register {reg} at {:#x}",
                bin.display(),
                row.loc
            );
        }
        compared += 1;
    }
    compared
}

#[test]
fn x86_64_rows_match_readelf() {
    if !have("gcc") || !have("readelf") {
        eprintln!("notice: gcc or readelf missing; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut total = 0;
    for (name, flags) in [
        ("o2", &["-O2", "-g", "-fomit-frame-pointer"][..]),
        ("o0", &["-O0", "-g"][..]),
    ] {
        let bin = dir.path().join(name);
        compile("gcc", flags, &bin);
        total += compare("readelf", &bin);
    }
    assert!(total > 30, "{total} rows");
    // The system's libc: thousands of FDEs, hand-written assembly, CFA expressions.
    for libc in ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6"] {
        if Path::new(libc).exists()
            && ElfImage::open(Path::new(libc))
                .is_ok_and(|i| i.arch.e_machine == Arch::X86_64.e_machine)
        {
            let n = compare("readelf", Path::new(libc));
            eprintln!("{libc}: {n} rows match");
            assert!(n > 5000, "{n} rows");
            break;
        }
    }
}

fn aarch64_tools() -> Option<(&'static str, &'static str)> {
    let cc = "aarch64-linux-gnu-gcc";
    let readelf = if have("aarch64-linux-gnu-readelf") {
        "aarch64-linux-gnu-readelf"
    } else {
        "readelf"
    };
    if have(cc) && have(readelf) {
        Some((cc, readelf))
    } else {
        eprintln!("notice: aarch64-linux-gnu-gcc missing; aarch64 CFI tests skipped");
        None
    }
}

#[test]
fn aarch64_rows_match_readelf() {
    let Some((cc, readelf)) = aarch64_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut total = 0;
    for (name, flags) in [
        ("o2", &["-O2", "-g"][..]),
        ("o0", &["-O0", "-g"][..]),
        // Return addresses signed with PAC: CFI carries DW_CFA_AARCH64_negate_ra_state.
        ("pac", &["-O2", "-g", "-mbranch-protection=standard"][..]),
    ] {
        let bin = dir.path().join(name);
        compile(cc, flags, &bin);
        assert_eq!(
            ElfImage::open(&bin).unwrap().arch.e_machine,
            Arch::AARCH64.e_machine
        );
        total += compare(readelf, &bin);
    }
    assert!(total > 30, "{total} rows");
    let libc = PathBuf::from("/usr/aarch64-linux-gnu/lib/libc.so.6");
    if libc.exists() {
        let n = compare(readelf, &libc);
        eprintln!("{}: {n} rows match", libc.display());
        assert!(n > 3000, "{n} rows");
    }
}

#[test]
fn aarch64_prologue_rules() {
    let Some((cc, _)) = aarch64_tools() else {
        return;
    };
    use object::{Object, ObjectSymbol};
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("chain");
    compile(cc, &["-O2", "-g"], &bin);
    let data = std::fs::read(&bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let addr = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .unwrap()
    };
    let image = ElfImage::open(&bin).unwrap();
    let module = Module::new("chain".into(), None, Arc::new(image), 0, 0, u64::MAX);
    let mut u = Unwinder::new();
    let cfi = |u: &mut Unwinder, pc: u64| match u.plan(&module, pc, true) {
        UnwindPlan::Cfi(r) => r.clone(),
        p => panic!("{p:?} at {pc:#x}"),
    };
    // A leaf (handler_leaf stores to memory only): CFA = sp, x30 untouched, so the return
    // address is still in the link register.
    let leaf = cfi(&mut u, addr("handler_leaf"));
    assert_eq!(leaf.cfa, CfaRule::RegOffset { reg: 31, offset: 0 });
    assert_eq!(leaf.rule(30), None);
    // `a` calls b: at entry the same; after `stp x29, x30, [sp, #-N]!` the frame record
    // is at CFA-N with x30 right above it.
    let a = addr("a");
    assert_eq!(
        cfi(&mut u, a).cfa,
        CfaRule::RegOffset { reg: 31, offset: 0 }
    );
    let after = cfi(&mut u, a + 4);
    let CfaRule::RegOffset { reg: 31, offset: n } = after.cfa else {
        panic!("{after:?}");
    };
    assert!(n >= 16);
    assert_eq!(after.rule(29), Some(&RegRule::Offset(-n)));
    assert_eq!(after.rule(30), Some(&RegRule::Offset(-n + 8)));
    // `b` allocates a variable-size buffer: its CFA moves to x29 once the frame is built.
    let b = addr("b");
    let (lo, hi) = module.fde_range(b).unwrap();
    let x29_based = (lo..hi)
        .step_by(4)
        .any(|pc| matches!(cfi(&mut u, pc).cfa, CfaRule::RegOffset { reg: 29, .. }));
    assert!(x29_based);
}
