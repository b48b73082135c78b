//! Turning native pcs into function names and source lines.
//!
//! For each module, on first use: DWARF (read on demand, with inlined frames: see
//! [`LazyDwarf`]) from the module itself or its separate debug file (by build-id or
//! `.gnu_debuglink`, see [`DebugSearch`]), with a dwz supplementary file
//! (`.gnu_debugaltlink`) when there is one;
//! a sorted symbol table from `.symtab`, `.dynsym`, the debug file's `.symtab` and, when
//! the module has no `.symtab`, MiniDebugInfo (`.gnu_debugdata`, an xz-compressed ELF
//! holding one). Names are demangled (Rust legacy and v0, C++ Itanium). Without any of
//! those an address is shown as `0x… (libfoo.so+0x…)`. Results are cached per module
//! and address.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gimli::{EndianReader, LittleEndian};
use object::read::elf::ElfFile64;
use object::{Object, ObjectSymbol, SymbolKind};

use super::dwarf::{DwarfFrame, LazyDwarf, Reader};
use super::modules::{DebugSearch, ElfBytes, ElfImage, Module, Modules, SharedBytes};
use super::unwind::Frame;

/// One function level at an address (several when calls were inlined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolFrame {
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file (as DWARF names it, joined with the compilation directory).
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// This level was inlined into the next one.
    pub inlined: bool,
}

/// What is known about one pc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbolized {
    /// The address.
    pub pc: u64,
    /// Module name (path as the target sees it), if the pc is in one.
    pub module: Option<Arc<str>>,
    /// Link-time address in the module (pc minus load bias).
    pub module_offset: u64,
    /// Innermost first; the last is the real (not inlined) function. Empty if unknown.
    pub frames: Vec<SymbolFrame>,
}

impl Symbolized {
    /// `0x… (libfoo.so+0x…)`, or `0x…` outside any module.
    pub fn fallback_name(&self) -> String {
        match &self.module {
            Some(m) => {
                let base = m.rsplit('/').next().unwrap_or(m);
                format!("{:#x} ({base}+{:#x})", self.pc, self.module_offset)
            }
            None => format!("{:#x}", self.pc),
        }
    }

    /// Name of the real function containing the pc, or the fallback name.
    pub fn name(&self) -> String {
        self.frames
            .last()
            .and_then(|f| f.function.clone())
            .unwrap_or_else(|| self.fallback_name())
    }
}

/// Where a module's symbols came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolSources {
    /// DWARF read from this file (the module itself or its debug file).
    pub dwarf: Option<PathBuf>,
    /// A separate debug file was found here.
    pub debug_file: Option<PathBuf>,
    /// MiniDebugInfo (`.gnu_debugdata`) was decompressed and used.
    pub minidebuginfo: bool,
    /// Entries in the symbol table.
    pub symbols: usize,
}

/// A function symbol: where its name is in the file, not a copy of it. A large library's
/// symbol table (libpython: ~17,000 functions) held as copied names cost ~1 MiB for as long
/// as the module was loaded; as offsets it costs 24 bytes a symbol, and a name is read
/// from the (mapped) file only when a lookup returns it.
struct Sym {
    addr: u64,
    /// Offset of the NUL-terminated name in `SymbolTable::names[image]`.
    name: u64,
    size: u32,
    image: u8,
    /// Among aliases, lower is preferred (see [`SymbolTable::add`]).
    rank: u8,
}

/// Longest symbol name read (C++ names can be long; a hostile file's need not end).
const MAX_NAME: usize = 4096;

/// Function symbols sorted by address, aliases collapsed.
#[derive(Default)]
struct SymbolTable {
    syms: Vec<Sym>,
    /// The images the names are in, in the order they were added.
    names: Vec<SharedBytes>,
}

impl SymbolTable {
    /// Add the function symbols of `image` (`.symtab` and `.dynsym`).
    fn add(&mut self, image: &ElfImage) {
        let Ok(index) = u8::try_from(self.names.len()) else {
            return;
        };
        let bytes = image.shared();
        let Ok(elf) = ElfFile64::<object::LittleEndian>::parse(&*bytes) else {
            return;
        };
        let base = bytes.as_ptr() as usize;
        let function = |s: &object::read::elf::ElfSymbol64<'_, '_, object::LittleEndian>| {
            s.kind() == SymbolKind::Text && s.address() != 0 && !s.is_undefined()
        };
        // Room for exactly these: grown by doubling, the table of a library with a debug
        // file (libc: ~9,500 symbols before aliases are collapsed) would pass through
        // twice the room, a transient peak left as a hole in the heap.
        let count = elf
            .symbols()
            .chain(elf.dynamic_symbols())
            .filter(function)
            .count();
        self.syms.reserve_exact(count);
        for s in elf.symbols().chain(elf.dynamic_symbols()) {
            if !function(&s) {
                continue;
            }
            let Ok(name) = s.name_bytes() else { continue };
            // The name is a slice of the file's string table: where in the file.
            let Some(offset) = (name.as_ptr() as usize).checked_sub(base) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            // Among aliases prefer a sized, global, least-underscored name: `raise` over
            // `__GI_raise`, as a user would call it.
            let underscores = name.iter().take_while(|&&b| b == b'_').count().min(63) as u8;
            let rank =
                (u8::from(s.size() == 0) << 7) | (u8::from(!s.is_global()) << 6) | underscores;
            self.syms.push(Sym {
                addr: s.address(),
                name: offset as u64,
                size: u32::try_from(s.size()).unwrap_or(u32::MAX),
                image: index,
                rank,
            });
        }
        drop(elf);
        self.names.push(bytes);
    }

    fn finish(&mut self) {
        // Stable: of the aliases at one address the best ranked survives, the earliest
        // added among equals.
        self.syms.sort_by_key(|s| (s.addr, s.rank));
        self.syms.dedup_by_key(|s| s.addr);
        self.syms.shrink_to_fit();
    }

    /// The symbol containing `addr`; a size-0 symbol (assembly) covers up to the next one.
    fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|s| s.addr <= addr);
        let before = &self.syms[..i];
        let sym = before
            .iter()
            .rev()
            .take(8)
            .find(|s| s.size > 0 && addr < s.addr.saturating_add(s.size.into()))
            .or_else(|| before.last().filter(|s| s.size == 0))?;
        let bytes = self.names.get(sym.image as usize)?;
        let tail = bytes.get(usize::try_from(sym.name).ok()?..)?;
        let end = tail.iter().take(MAX_NAME).position(|&b| b == 0)?;
        std::str::from_utf8(&tail[..end]).ok()
    }

    /// Let go of the file pages that reading names made resident.
    fn release(&self) {
        self.names.iter().for_each(SharedBytes::release);
    }
}

struct ModuleSymbols {
    dwarf: Option<LazyDwarf>,
    /// Built on first need: where DWARF names every sampled function, never.
    symbols: Option<SymbolTable>,
    /// The module's image and its separate debug file, the symbol tables' sources.
    main: Arc<ElfImage>,
    debug: Option<Arc<ElfImage>>,
    sources: SymbolSources,
}

impl ModuleSymbols {
    /// The symbol table, built on first use (`.symtab`, `.dynsym`, the debug file's
    /// `.symtab`, else MiniDebugInfo).
    fn table(&mut self) -> &SymbolTable {
        let (main, debug, sources) = (&self.main, &self.debug, &mut self.sources);
        self.symbols.get_or_insert_with(|| {
            let mut symbols = SymbolTable::default();
            symbols.add(main);
            if let Some(img) = debug {
                symbols.add(img);
            }
            if debug.is_none()
                && !main.has_section(".symtab")
                && let Some(mini) = minidebuginfo(main)
            {
                // Held by the table: the names are read from it.
                symbols.add(&mini);
                sources.minidebuginfo = true;
            }
            symbols.finish();
            sources.symbols = symbols.syms.len();
            // Indexed; the pages the walk read need not stay resident.
            symbols.release();
            symbols
        })
    }

    /// Let go of the file pages a lookup read outside the DWARF sections (which
    /// [`LazyDwarf`] releases itself): the symbol names, and the separate debug file's
    /// section table and `.symtab`, which no module's release covers.
    fn release(&self) {
        if let Some(table) = &self.symbols {
            table.release();
        }
        if let Some(debug) = &self.debug {
            debug.release();
        }
    }
}

/// Largest MiniDebugInfo image decompressed (a target's file could be hostile).
const MAX_MINIDEBUGINFO: usize = 256 << 20;

/// Default bound on cached addresses; the cache is dropped when it fills. A profile's hot
/// native pcs number in the hundreds, and a miss costs one pass over one unit's DWARF.
pub const DEFAULT_MAX_CACHED: usize = 1 << 12;

/// Bound on inlined levels reported for one address.
const MAX_LEVELS: usize = 64;

/// Symbolizes pcs of any module, caching per module and per address.
pub struct Symbolizer {
    search: DebugSearch,
    modules: HashMap<u32, ModuleSymbols>,
    cache: HashMap<(u32, u64, bool), Arc<Symbolized>>,
    /// Bound on cached addresses.
    pub max_cached: usize,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    /// Looks for debug files in `/usr/lib/debug`.
    pub fn new() -> Symbolizer {
        Symbolizer::with_search(DebugSearch::default())
    }

    /// Looks for debug files as `search` says.
    pub fn with_search(search: DebugSearch) -> Symbolizer {
        Symbolizer {
            search,
            modules: HashMap::new(),
            cache: HashMap::new(),
            max_cached: DEFAULT_MAX_CACHED,
        }
    }

    /// Symbolize an unwound frame (a return address is looked up at pc - 1).
    pub fn symbolize_frame(&mut self, modules: &Modules, frame: &Frame) -> Arc<Symbolized> {
        self.symbolize(modules, frame.pc, frame.exact)
    }

    /// Symbolize `pc`; `exact` says it is not a return address.
    pub fn symbolize(&mut self, modules: &Modules, pc: u64, exact: bool) -> Arc<Symbolized> {
        let Some(module) = modules.find(pc) else {
            return Arc::new(Symbolized {
                pc,
                module: None,
                module_offset: 0,
                frames: Vec::new(),
            });
        };
        let key = (module.id(), pc, exact);
        if let Some(s) = self.cache.get(&key) {
            return s.clone();
        }
        let rel = module.rel(pc);
        let probe = if exact { rel } else { rel.wrapping_sub(1) };
        let frames = self.lookup(module, &[probe]).pop().unwrap_or_default();
        self.remember(module, pc, exact, frames)
    }

    fn remember(
        &mut self,
        module: &Module,
        pc: u64,
        exact: bool,
        frames: Vec<SymbolFrame>,
    ) -> Arc<Symbolized> {
        let s = Arc::new(Symbolized {
            pc,
            module: Some(module.name.as_str().into()),
            module_offset: module.rel(pc),
            frames,
        });
        if self.cache.len() >= self.max_cached {
            self.cache.clear();
        }
        self.cache.insert((module.id(), pc, exact), s.clone());
        s
    }

    /// Forget the symbols of modules no longer in `modules` (after a dlclose): over a long
    /// run, a target that keeps loading and unloading libraries must not grow prof.
    pub fn retain(&mut self, modules: &Modules) {
        let live = |id: &u32| modules.iter().any(|m| m.id() == *id);
        self.modules.retain(|id, _| live(id));
        self.cache.retain(|(id, _, _), _| live(id));
    }

    /// Forget the symbolized pcs (a caller that keeps what it made of them, such as
    /// [`NativeStacks`](super::stack::NativeStacks), needs no second copy).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Number of modules whose symbols are loaded.
    pub fn loaded_modules(&self) -> usize {
        self.modules.len()
    }

    /// Where `module`'s symbols come from (loading them if needed).
    pub fn sources(&mut self, module: &Module) -> SymbolSources {
        let syms = self.module_symbols(module);
        syms.table();
        syms.sources.clone()
    }

    /// Symbolize the `(pc, exact)` pairs not cached yet, in one pass per module and DWARF
    /// unit (a stack's pcs share units), leaving the answers in the cache for
    /// [`Symbolizer::symbolize`]. Loading a module is cheap (its DWARF is only indexed), so
    /// modules are loaded in turn: threads loading side by side would each leave a malloc
    /// arena of their own behind.
    pub fn prepare(&mut self, modules: &Modules, pcs: impl IntoIterator<Item = (u64, bool)>) {
        // (module, its (pc, exact) pairs), in order of first appearance.
        type PerModule<'m> = Vec<(&'m Arc<Module>, Vec<(u64, bool)>)>;
        let mut per_module: PerModule = Vec::new();
        for (pc, exact) in pcs {
            let Some(m) = modules.find(pc) else { continue };
            if self.cache.contains_key(&(m.id(), pc, exact)) {
                continue;
            }
            match per_module.iter_mut().find(|(x, _)| x.id() == m.id()) {
                Some((_, v)) if !v.contains(&(pc, exact)) => v.push((pc, exact)),
                Some(_) => {}
                None => per_module.push((m, vec![(pc, exact)])),
            }
        }
        for (module, pcs) in per_module {
            let probes: Vec<u64> = pcs
                .iter()
                .map(|&(pc, exact)| {
                    let rel = module.rel(pc);
                    if exact { rel } else { rel.wrapping_sub(1) }
                })
                .collect();
            let found = self.lookup(module, &probes);
            for ((pc, exact), frames) in pcs.into_iter().zip(found) {
                self.remember(module, pc, exact, frames);
            }
        }
    }

    fn module_symbols(&mut self, module: &Module) -> &mut ModuleSymbols {
        let search = &self.search;
        self.modules
            .entry(module.id())
            .or_insert_with(|| load_module(search, module))
    }

    /// What each of `probes` (link-time addresses in `module`) is: DWARF levels, with the
    /// symbol table naming the real function where DWARF does not.
    fn lookup(&mut self, module: &Module, probes: &[u64]) -> Vec<Vec<SymbolFrame>> {
        let syms = self.module_symbols(module);
        let dwarf = match &mut syms.dwarf {
            Some(d) => d.find_frames(probes),
            None => vec![Vec::new(); probes.len()],
        };
        let out = probes
            .iter()
            .zip(dwarf)
            .map(|(&probe, levels)| {
                let mut out: Vec<SymbolFrame> = levels
                    .into_iter()
                    .take(MAX_LEVELS)
                    .map(|f: DwarfFrame| SymbolFrame {
                        function: f.name.map(|n| demangle(&n, f.language)),
                        file: f.file,
                        line: f.line,
                        inlined: true,
                    })
                    .collect();
                if let Some(last) = out.last_mut() {
                    last.inlined = false;
                    if last.function.is_none() {
                        last.function = syms.table().lookup(probe).map(|n| demangle(n, None));
                    }
                } else if let Some(name) = syms.table().lookup(probe) {
                    out.push(SymbolFrame {
                        function: Some(demangle(name, None)),
                        file: None,
                        line: None,
                        inlined: false,
                    });
                }
                out
            })
            .collect();
        syms.release();
        out
    }
}

/// Demangle a Rust or C++ symbol; `language` (from DWARF) picks the scheme, else both are
/// tried. Names that are not mangled come back unchanged.
pub fn demangle(name: &str, language: Option<gimli::DwLang>) -> String {
    let rust = |n: &str| {
        rustc_demangle::try_demangle(n)
            .ok()
            .map(|d| format!("{d:#}"))
    };
    let cpp = |n: &str| {
        cpp_demangle::Symbol::new(n)
            .ok()
            .and_then(|s| s.demangle().ok())
    };
    let is_cpp = |l: gimli::DwLang| {
        matches!(
            l,
            gimli::DW_LANG_C_plus_plus
                | gimli::DW_LANG_C_plus_plus_03
                | gimli::DW_LANG_C_plus_plus_11
                | gimli::DW_LANG_C_plus_plus_14
                | gimli::DW_LANG_C_plus_plus_17
                | gimli::DW_LANG_C_plus_plus_20
        )
    };
    let out = match language {
        Some(gimli::DW_LANG_Rust) => rust(name),
        Some(l) if is_cpp(l) => cpp(name),
        _ if name.starts_with("_R") || name.starts_with("_ZN") => rust(name).or_else(|| cpp(name)),
        _ if name.starts_with("_Z") => cpp(name),
        _ => None,
    };
    out.unwrap_or_else(|| name.to_string())
}

fn load_module(search: &DebugSearch, module: &Module) -> ModuleSymbols {
    let main = &module.image;
    let mut sources = SymbolSources::default();
    let debug = if main.has_section(".debug_info") {
        None
    } else {
        search.find(main, module.file.as_deref(), &module.name)
    };
    let (dwarf_image, dwarf_path) = match &debug {
        Some((img, path)) => {
            sources.debug_file = Some(path.clone());
            (Some(img), Some(path.clone()))
        }
        None if main.has_section(".debug_info") => (
            Some(main.as_ref()),
            Some(
                module
                    .file
                    .clone()
                    .unwrap_or_else(|| module.name.clone().into()),
            ),
        ),
        None => (None, None),
    };
    let mut sections = Vec::new();
    // DWARF stored compressed (Debian's -dbg and -dbgsym files) is read from an inflated
    // copy in `search.inflated`: inflating libc's in memory, at every start, would cost
    // 8.5 MiB and ~35 ms. Without that directory such a file gives its symbol table only.
    let dwarf = dwarf_image
        .filter(|img| search.inflated.is_some() || !img.is_compressed(".debug_info"))
        .and_then(|img| load_dwarf(img, search, dwarf_path.as_deref(), &mut sections))
        .map(|d| LazyDwarf::new(d, sections));
    if dwarf.is_some() {
        sources.dwarf = dwarf_path;
    }
    ModuleSymbols {
        dwarf,
        symbols: None,
        main: main.clone(),
        debug: debug.map(|(img, _)| Arc::new(img)),
        sources,
    }
}

/// The sections a lookup reads; the others (locations, macros, type units) are never
/// touched, so a compressed one is not even decompressed.
const NEEDED_SECTIONS: &[&str] = &[
    ".debug_abbrev",
    ".debug_addr",
    ".debug_aranges",
    ".debug_info",
    ".debug_line",
    ".debug_line_str",
    ".debug_ranges",
    ".debug_rnglists",
    ".debug_str",
    ".debug_str_offsets",
];

/// A reader of section `name` of `image` (empty if absent or not needed), always a view of
/// a file mapping (see [`ElfImage::section_mapped`]); the bytes are also added to `used`,
/// so that their pages can be released after each lookup.
fn section_reader(
    image: &ElfImage,
    name: &str,
    search: &DebugSearch,
    used: &mut Vec<SharedBytes>,
) -> Reader {
    let bytes = NEEDED_SECTIONS
        .contains(&name)
        .then(|| image.section_mapped(name, search.inflated.as_deref()))
        .flatten()
        .unwrap_or_else(|| SharedBytes::whole(Arc::new(ElfBytes::Owned(Vec::new()))));
    if !bytes.is_empty() {
        used.push(bytes.clone());
    }
    EndianReader::new(bytes, LittleEndian)
}

fn load_dwarf(
    image: &ElfImage,
    search: &DebugSearch,
    path: Option<&Path>,
    used: &mut Vec<SharedBytes>,
) -> Option<gimli::Dwarf<Reader>> {
    let mut dwarf = gimli::Dwarf::load(|id| {
        Ok::<_, gimli::Error>(section_reader(image, id.name(), search, used))
    })
    .ok()?;
    // dwz moves shared DIEs into a supplementary file (Debian's -dbgsym packages).
    if let Some((name, id)) = &image.debugaltlink {
        let mut candidates: Vec<PathBuf> = Vec::new();
        let p = Path::new(name);
        if p.is_absolute() {
            candidates.push(p.to_path_buf());
        } else if let Some(dir) = path.and_then(Path::parent) {
            candidates.push(dir.join(p));
        }
        if id.len() >= 2 {
            let hex: String = id[1..].iter().map(|b| format!("{b:02x}")).collect();
            for root in &search.roots {
                candidates.push(
                    root.join(".build-id")
                        .join(format!("{:02x}", id[0]))
                        .join(format!("{hex}.debug")),
                );
            }
        }
        let sup = candidates
            .iter()
            .filter_map(|c| ElfImage::open(c).ok())
            .find(|s| s.build_id.as_deref() == Some(id.as_slice()));
        if let Some(sup) = sup {
            let _ = dwarf.load_sup(|id| {
                Ok::<_, gimli::Error>(section_reader(&sup, id.name(), search, used))
            });
        }
    }
    Some(dwarf)
}

/// A `Write` that refuses to grow past a bound.
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_MINIDEBUGINFO {
            return Err(std::io::Error::other("MiniDebugInfo too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The ELF image inside `.gnu_debugdata` (xz-compressed), if any.
fn minidebuginfo(image: &ElfImage) -> Option<ElfImage> {
    let (data, _) = image.section(".gnu_debugdata")?;
    let mut out = Bounded(Vec::new());
    lzma_rs::xz_decompress(&mut &*data, &mut out).ok()?;
    ElfImage::from_bytes(out.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE", None),
            "core::fmt::write"
        );
        assert_eq!(
            demangle("_RNvCs1234_7mycrate3foo", Some(gimli::DW_LANG_Rust)),
            "mycrate::foo"
        );
        assert_eq!(demangle("_ZN3foo3barEv", None), "foo::bar()");
        assert_eq!(
            demangle("_ZNSt6vectorIiSaIiEE9push_backERKi", None),
            "std::vector<int, std::allocator<int> >::push_back(int const&)"
        );
        assert_eq!(
            demangle("_Z3addii", Some(gimli::DW_LANG_C_plus_plus_14)),
            "add(int, int)"
        );
        assert_eq!(
            demangle("PyEval_EvalFrameDefault", None),
            "PyEval_EvalFrameDefault"
        );
        assert_eq!(demangle("_Zgarbage", None), "_Zgarbage");
    }

    #[test]
    fn modules_gone_are_forgotten() {
        let path = std::path::PathBuf::from("/proc/self/exe");
        let image = Arc::new(ElfImage::open(&path).unwrap());
        let exe = Module::new("exe".into(), Some(path), image, 0, 0, u64::MAX / 2);
        let mut modules = Modules::new();
        modules.insert(exe);
        let mut sym = Symbolizer::new();
        // Any address in the module loads its symbols.
        sym.symbolize(&modules, 0x1000, true);
        assert_eq!(sym.loaded_modules(), 1);
        sym.retain(&modules);
        assert_eq!((sym.loaded_modules(), sym.cache.len()), (1, 1));
        sym.retain(&Modules::new());
        assert_eq!((sym.loaded_modules(), sym.cache.len()), (0, 0));
    }

    #[test]
    fn a_lookup_leaves_the_debug_file_unresident() {
        let test = "a_lookup_leaves_the_debug_file_unresident";
        if crate::process::memory::skip_without_live_reads(test) {
            return;
        }
        let pid = std::process::id();
        let maps = crate::process::read_maps(pid).unwrap();
        let mem = crate::process::LiveMemory::new(pid);
        let modules = Modules::for_pid(pid, &maps, &mem);
        let pc = libc::qsort as *const () as u64;
        let libc = modules.find(pc).expect("libc is loaded").clone();
        let mut sym = Symbolizer::new();
        sym.symbolize(&modules, pc + 1, true);
        let Some(debug) = sym.modules[&libc.id()].debug.clone() else {
            eprintln!("skipped: {test}: no separate debug file for {}", libc.name);
            return;
        };
        // Finding and indexing it read its section table (and a symbol lookup, its
        // .symtab): nothing else lets those pages go.
        let at = debug.bytes().as_ptr() as usize;
        assert_eq!(crate::native::modules::resident_kb(at), 0);
    }

    #[test]
    fn symbol_table_lookup() {
        let mut t = SymbolTable::default();
        let names = b"f\0asm_stub\0g\0_f_alias\0unterminated";
        t.names.push(SharedBytes::whole(Arc::new(ElfBytes::Owned(
            names.to_vec(),
        ))));
        let s = |addr, size, name: &str, rank| Sym {
            addr,
            size,
            name: names
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .unwrap() as u64,
            image: 0,
            rank,
        };
        t.syms = vec![
            s(0x1000, 0x100, "_f_alias", 1),
            s(0x1100, 0, "asm_stub", 0x80),
            s(0x1200, 0x10, "g", 0),
            s(0x1000, 0x100, "f", 0),
            s(0x1300, 0x10, "unterminated", 0),
        ];
        t.finish();
        assert_eq!(t.syms.len(), 4, "one symbol per address");
        assert_eq!(t.lookup(0x1050), Some("f"));
        assert_eq!(t.lookup(0x1180), Some("asm_stub"));
        assert_eq!(t.lookup(0x1205), Some("g"));
        assert_eq!(t.lookup(0x1210), None);
        assert_eq!(t.lookup(0xfff), None);
        // A name that runs off the end of the file is no name.
        assert_eq!(t.lookup(0x1305), None);
    }

    #[test]
    fn symbol_names_are_read_from_the_file() {
        let image = ElfImage::open(Path::new("/proc/self/exe")).unwrap();
        let mut t = SymbolTable::default();
        t.add(&image);
        // One image's symbols take exactly their room, not up to twice as much.
        assert_eq!(t.syms.capacity(), t.syms.len());
        t.finish();
        assert!(t.syms.len() > 100, "{} symbols", t.syms.len());
        let file = image.bytes().as_ptr_range();
        for s in t.syms.iter().step_by(t.syms.len() / 50) {
            let name = t
                .lookup(s.addr)
                .expect("a symbol's own address has its name");
            assert!(!name.is_empty());
            // Not a copy: the table holds where the name is, not the name.
            assert!(file.contains(&name.as_ptr()), "{name} was copied");
        }
    }

    #[test]
    fn fallback_names() {
        let s = Symbolized {
            pc: 0x7f00_1234,
            module: Some("/usr/lib/libfoo.so.1".into()),
            module_offset: 0x1234,
            frames: vec![],
        };
        assert_eq!(s.fallback_name(), "0x7f001234 (libfoo.so.1+0x1234)");
        assert_eq!(s.name(), s.fallback_name());
    }
}
