//! Loaded modules: the ELF images mapped into the target (executable, shared libraries,
//! the vdso), where each is loaded (load bias, address range), its unwind tables
//! (`.eh_frame` and `.debug_frame`, indexed once per module) and where its separate debug
//! file is.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use gimli::{
    BaseAddresses, CieOrFde, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, LittleEndian,
    UnwindSection,
};
use object::elf::{ET_EXEC, PT_LOAD};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Object, ObjectSection};
use thiserror::Error;

use super::arch::Arch;
use crate::process::{MapRange, Memory};

/// Why an ELF image could not be used.
#[derive(Debug, Error)]
pub enum ModuleError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        err: std::io::Error,
    },
    /// Not a 64-bit little-endian ELF file, or a malformed one.
    #[error("not a usable ELF image: {0}")]
    Elf(String),
    /// An ELF image for an architecture prof does not unwind.
    #[error("unsupported ELF machine {0}")]
    Machine(u16),
}

/// The bytes of an ELF image: a read-only file mapping or a buffer copied from the target.
pub enum ElfBytes {
    /// A mapped file.
    Mapped(memmap2::Mmap),
    /// Bytes in memory (the vdso, decompressed sections, MiniDebugInfo).
    Owned(Vec<u8>),
}

impl ElfBytes {
    /// Let the kernel take back the pages of `range` that reading has made resident: a
    /// no-op for bytes in memory. The pages of a file mapping come back from the page
    /// cache on the next read, unchanged (prof never writes them), so one pass over a
    /// large section (an index build, a DWARF lookup) leaves no resident trace; each fault
    /// maps up to 64 KiB around it (the kernel's fault-around), which would otherwise
    /// stay counted as prof's memory.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let ElfBytes::Mapped(m) = self else { return };
        let page = page_size() as usize;
        let base = m.as_ptr() as usize;
        let start = (base + range.start.min(m.len())) & !(page - 1);
        let end = (base + range.end.min(m.len())).next_multiple_of(page);
        if end > start {
            // SAFETY: the range lies within this read-only private file mapping (rounded
            // out to pages of it); dropping pages that were never written only makes the
            // next access read them again from the file.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

impl Deref for ElfBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ElfBytes::Mapped(m) => m,
            ElfBytes::Owned(v) => v,
        }
    }
}

/// A cheap, clonable view of part of an [`ElfBytes`]: a section handed to gimli's
/// `EndianReader` without copying it.
#[derive(Clone)]
pub struct SharedBytes {
    data: Arc<ElfBytes>,
    start: usize,
    len: usize,
}

impl SharedBytes {
    /// All of `data`.
    pub fn whole(data: Arc<ElfBytes>) -> SharedBytes {
        let len = data.len();
        SharedBytes {
            data,
            start: 0,
            len,
        }
    }
}

impl SharedBytes {
    /// Release the resident pages of this view (see [`ElfBytes::release`]).
    pub fn release(&self) {
        self.release_range(0..self.len);
    }

    /// Release the resident pages of `range` within this view.
    pub fn release_range(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.len);
        self.data
            .release(self.start + range.start.min(end)..self.start + end);
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len)
    }
}

// SAFETY: the slice lives in an `Arc`'d buffer (a mapping or a Vec that is never resized),
// so its address does not change when the handle moves or is cloned.
unsafe impl stable_deref_trait::StableDeref for SharedBytes {}
// SAFETY: as above; clones share the same buffer.
unsafe impl stable_deref_trait::CloneStableDeref for SharedBytes {}

/// One `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// File offset.
    pub offset: u64,
    /// Link-time virtual address.
    pub vaddr: u64,
    /// Bytes backed by the file.
    pub filesz: u64,
    /// Bytes in memory.
    pub memsz: u64,
}

pub use crate::process::maps::{load_bias, page_size};

/// A parsed 64-bit little-endian ELF image: its bytes plus what the unwinder and the
/// symbolizer look up repeatedly.
pub struct ElfImage {
    data: Arc<ElfBytes>,
    /// Architecture from `e_machine`.
    pub arch: &'static Arch,
    /// `ET_EXEC`: loaded at its link-time addresses.
    pub is_exec: bool,
    /// `PT_LOAD` segments in file order.
    pub loads: Vec<LoadSegment>,
    /// GNU build-id note.
    pub build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink`: file name and CRC32 of the separate debug file.
    pub debuglink: Option<(String, u32)>,
    /// `.gnu_debugaltlink`: file name and build-id of the dwz supplementary file.
    pub debugaltlink: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ElfImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElfImage")
            .field("arch", &self.arch.name)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl ElfImage {
    /// Map and parse the file at `path`.
    pub fn open(path: &Path) -> Result<ElfImage, ModuleError> {
        let io = |err| ModuleError::Io {
            path: path.to_path_buf(),
            err,
        };
        let map = crate::process::maps::map_file(path).map_err(io)?;
        let image = ElfImage::parse(Arc::new(ElfBytes::Mapped(map)))?;
        // The headers, notes and section table read here are two or three faults, each
        // mapping 64 KiB: for every module and debug file, held until the first batch's
        // release, they were a fifth of the start-up peak on a static interpreter.
        image.release();
        Ok(image)
    }

    /// Parse an image held in memory (the vdso read from the target, MiniDebugInfo).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<ElfImage, ModuleError> {
        ElfImage::parse(Arc::new(ElfBytes::Owned(bytes)))
    }

    fn parse(data: Arc<ElfBytes>) -> Result<ElfImage, ModuleError> {
        let arch = Arch::from_elf_header(&data).ok_or_else(|| {
            if data.len() >= 20 && data.starts_with(b"\x7fELF") && data[4] == 2 && data[5] == 1 {
                ModuleError::Machine(u16::from_le_bytes([data[18], data[19]]))
            } else {
                ModuleError::Elf("not a 64-bit little-endian ELF file".into())
            }
        })?;
        let elf = ElfFile64::<object::LittleEndian>::parse(&**data)
            .map_err(|e| ModuleError::Elf(e.to_string()))?;
        let endian = elf.endian();
        let mut loads: Vec<LoadSegment> = elf
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == PT_LOAD)
            .map(|ph| LoadSegment {
                offset: ph.p_offset(endian),
                vaddr: ph.p_vaddr(endian),
                filesz: ph.p_filesz(endian),
                memsz: ph.p_memsz(endian),
            })
            .collect();
        loads.sort_by_key(|l| l.offset);
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let build_id = elf.build_id().ok().flatten().map(<[u8]>::to_vec);
        let debuglink = elf
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(n, crc)| (lossy(n), crc));
        let debugaltlink = elf
            .gnu_debugaltlink()
            .ok()
            .flatten()
            .map(|(n, id)| (lossy(n), id.to_vec()));
        let is_exec = elf.elf_header().e_type(endian) == ET_EXEC;
        drop(elf);
        Ok(ElfImage {
            data,
            arch,
            is_exec,
            loads,
            build_id,
            debuglink,
            debugaltlink,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The whole file, as a handle that keeps it mapped.
    pub fn shared(&self) -> SharedBytes {
        SharedBytes::whole(self.data.clone())
    }

    /// Release the pages of the file that reading it made resident (see
    /// [`ElfBytes::release`]); a no-op for an image held in memory.
    pub fn release(&self) {
        self.data.release(0..self.data.len());
    }

    fn elf(&self) -> Option<ElfFile64<'_, object::LittleEndian>> {
        ElfFile64::parse(&**self.data).ok()
    }

    /// Contents of section `name` (decompressed if needed) and its link-time address.
    pub fn section(&self, name: &str) -> Option<(SharedBytes, u64)> {
        let elf = self.elf()?;
        let sec = elf.section_by_name(name)?;
        let addr = sec.address();
        let bytes = match sec.uncompressed_data().ok()? {
            std::borrow::Cow::Borrowed(s) => {
                let start = (s.as_ptr() as usize).checked_sub(self.data.as_ptr() as usize)?;
                SharedBytes {
                    data: self.data.clone(),
                    start,
                    len: s.len(),
                }
            }
            std::borrow::Cow::Owned(v) => SharedBytes::whole(Arc::new(ElfBytes::Owned(v))),
        };
        Some((bytes, addr))
    }

    /// Section `name` as a view of a file mapping: the image's own bytes, or for a section
    /// stored zlib-compressed, a copy inflated once into `dir` (named by the image's
    /// build-id) and mapped from there. Inflating streams through a small buffer, so the
    /// whole section is never held in memory. None if absent, or compressed and it cannot
    /// be inflated to `dir`.
    pub fn section_mapped(&self, name: &str, dir: Option<&Path>) -> Option<SharedBytes> {
        let elf = self.elf()?;
        let sec = elf.section_by_name(name)?;
        let c = sec.compressed_data().ok()?;
        if c.format == object::CompressionFormat::None {
            return self.section(name).map(|(b, _)| b);
        }
        if c.format != object::CompressionFormat::Zlib {
            return None;
        }
        let id = self.build_id.as_deref().filter(|id| !id.is_empty())?;
        let path = dir?.join(hex(id)).join(name.trim_start_matches('.'));
        let fits = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() == c.uncompressed_size);
        if !fits(&path) {
            inflate_to(c.data, &path).ok()?;
            if !fits(&path) {
                return None;
            }
        }
        let map = crate::process::maps::map_file(&path).ok()?;
        Some(SharedBytes::whole(Arc::new(ElfBytes::Mapped(map))))
    }

    /// Is section `name` stored compressed (`SHF_COMPRESSED` or `.zdebug`)?
    pub fn is_compressed(&self, name: &str) -> bool {
        self.elf()
            .and_then(|e| {
                let sec = e.section_by_name(name)?;
                let c = sec.compressed_data().ok()?;
                Some(c.format != object::CompressionFormat::None)
            })
            .unwrap_or(false)
    }

    /// Link-time address of section `name`.
    pub fn section_address(&self, name: &str) -> Option<u64> {
        Some(self.elf()?.section_by_name(name)?.address())
    }

    /// Does the image have a non-empty section `name`?
    pub fn has_section(&self, name: &str) -> bool {
        self.elf()
            .and_then(|e| e.section_by_name(name).map(|s| s.size() > 0))
            .unwrap_or(false)
    }

    /// `len` file-backed bytes at link-time address `vaddr` (code, for trampoline checks).
    pub fn read_vaddr(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let seg = self
            .loads
            .iter()
            .find(|l| l.vaddr <= vaddr && vaddr.saturating_add(len as u64) <= l.vaddr + l.filesz)?;
        let off = usize::try_from(seg.offset + (vaddr - seg.vaddr)).ok()?;
        self.data.get(off..off.checked_add(len)?)
    }

    /// `(p_offset, p_vaddr)` of each `PT_LOAD`, the input of [`load_bias`].
    pub fn load_pairs(&self) -> Vec<(u64, u64)> {
        self.loads.iter().map(|l| (l.offset, l.vaddr)).collect()
    }
}

/// Where separate debug files are looked for.
#[derive(Debug, Clone)]
pub struct DebugSearch {
    /// Global debug directories (`/usr/lib/debug`): `.build-id/xx/rest.debug` below them,
    /// and `<dir>/<path of the module's directory>/<debuglink>`.
    pub roots: Vec<PathBuf>,
    /// Where DWARF sections stored compressed are kept inflated, to be mapped (and read
    /// on demand) like uncompressed ones; None: such DWARF is not read.
    pub inflated: Option<PathBuf>,
}

impl Default for DebugSearch {
    fn default() -> Self {
        DebugSearch {
            roots: vec![PathBuf::from("/usr/lib/debug")],
            inflated: default_inflated_dir(),
        }
    }
}

/// `$XDG_CACHE_HOME/prof/inflated`, else `~/.cache/prof/inflated`.
pub fn default_inflated_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|d| !d.is_empty())?).join(".cache"),
    };
    Some(base.join("prof").join("inflated"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl DebugSearch {
    /// Candidate paths for the debug file of a module, best first: by build-id, then by
    /// `.gnu_debuglink` next to the file (`dir/name`, `dir/.debug/name`) and below each
    /// root (`root/dir/name`). `file` is where prof opened the module, `target_path` the
    /// path the target sees (they differ for containers).
    pub fn candidates(
        &self,
        image: &ElfImage,
        file: Option<&Path>,
        target_path: &str,
    ) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Some(id) = image.build_id.as_deref().filter(|id| id.len() >= 2) {
            for root in &self.roots {
                out.push(
                    root.join(".build-id")
                        .join(hex(&id[..1]))
                        .join(format!("{}.debug", hex(&id[1..]))),
                );
            }
        }
        if let Some((name, _)) = &image.debuglink {
            let name = Path::new(name);
            if let Some(dir) = file.and_then(Path::parent) {
                out.push(dir.join(name));
                out.push(dir.join(".debug").join(name));
            }
            if let Some(dir) = Path::new(target_path).parent() {
                let rel = dir.strip_prefix("/").unwrap_or(dir);
                for root in &self.roots {
                    out.push(root.join(rel).join(name));
                }
            }
        }
        out
    }

    /// Open the separate debug file of `image` and say where it was: the first candidate
    /// that belongs to it (see [`debug_file_matches`]).
    pub fn find(
        &self,
        image: &ElfImage,
        file: Option<&Path>,
        target_path: &str,
    ) -> Option<(ElfImage, PathBuf)> {
        for path in self.candidates(image, file, target_path) {
            if file.is_some_and(|f| f == path) {
                continue;
            }
            let Ok(dbg) = ElfImage::open(&path) else {
                continue;
            };
            if debug_file_matches(image, &dbg) {
                return Some((dbg, path));
            }
        }
        None
    }
}

/// Inflate the zlib stream `data` into the file `path` (written beside it, then renamed:
/// a concurrent prof sees a whole file or none).
fn inflate_to(data: &[u8], path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("section"),
        std::process::id()
    ));
    let result = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        std::io::copy(&mut flate2::read::ZlibDecoder::new(data), &mut out)?;
        std::io::Write::flush(&mut out)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Does debug file `dbg` belong to `image`? The same build-id when both have one, else the
/// CRC32 that `.gnu_debuglink` recorded.
pub fn debug_file_matches(image: &ElfImage, dbg: &ElfImage) -> bool {
    match (&image.build_id, &dbg.build_id, &image.debuglink) {
        (Some(a), Some(b), _) => a == b,
        (_, _, Some((_, crc))) => {
            let mut c = flate2::Crc::new();
            c.update(dbg.bytes());
            c.sum() == *crc
        }
        _ => false,
    }
}

static NEXT_MODULE_ID: AtomicU32 = AtomicU32::new(1);

/// Which unwind section an indexed FDE lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CfiSection {
    EhFrame,
    DebugFrame,
}

/// One FDE in a module's sorted index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FdeEntry {
    /// First link-time address covered.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Offset of the FDE in its section.
    pub offset: usize,
    pub section: CfiSection,
}

/// A module's CFI: the sections and a sorted FDE index, built on first use.
pub(crate) struct CfiIndex {
    pub eh_frame: Option<SharedBytes>,
    /// `.eh_frame_hdr` when its sorted table is usable: `.eh_frame`'s index as the linker
    /// wrote it, binary-searched where it is mapped (what the runtime's own unwinder does),
    /// so `.eh_frame` is neither walked nor copied into `fdes`.
    eh_frame_hdr: Option<SharedBytes>,
    pub debug_frame: Option<SharedBytes>,
    pub bases: BaseAddresses,
    /// The FDEs of `.debug_frame`, and of `.eh_frame` when it has no usable table.
    pub fdes: Vec<FdeEntry>,
    arch: &'static Arch,
}

impl CfiIndex {
    fn build(image: &ElfImage) -> CfiIndex {
        let eh = image.section(".eh_frame");
        let hdr = image.section(".eh_frame_hdr");
        let mut bases = BaseAddresses::default();
        if let Some((_, addr)) = &eh {
            bases = bases.set_eh_frame(*addr);
        }
        if let Some((_, addr)) = &hdr {
            bases = bases.set_eh_frame_hdr(*addr);
        }
        if let Some(addr) = image.section_address(".text") {
            bases = bases.set_text(addr);
        }
        if let Some(addr) = image.section_address(".got") {
            bases = bases.set_got(addr);
        }
        let debug = image.section(".debug_frame").map(|(b, _)| b);
        let mut index = CfiIndex {
            eh_frame: eh.map(|(b, _)| b),
            eh_frame_hdr: hdr.map(|(b, _)| b),
            debug_frame: debug,
            bases,
            fdes: Vec::new(),
            arch: image.arch,
        };
        // A table that cannot be searched (no entries, an encoding gimli does not
        // search) is left aside for the walk.
        if index.eh_frame.is_none() || index.hdr_lookup(0).is_none() {
            index.eh_frame_hdr = None;
        }
        index.index_sections();
        index
    }

    /// Fill `fdes` from the sections that have no table to search.
    fn index_sections(&mut self) {
        let (bases, arch, fdes) = (&self.bases, self.arch, &mut self.fdes);
        if let Some(bytes) = self
            .eh_frame
            .as_ref()
            .filter(|_| self.eh_frame_hdr.is_none())
        {
            index_fdes(&eh_frame(bytes, arch), bases, CfiSection::EhFrame, fdes);
        }
        if let Some(bytes) = &self.debug_frame {
            index_fdes(
                &debug_frame(bytes, arch),
                bases,
                CfiSection::DebugFrame,
                fdes,
            );
        }
        // .eh_frame first for equal starts: it is what the runtime itself trusts.
        fdes.sort_by_key(|f| (f.start, f.section == CfiSection::DebugFrame));
    }

    /// The `.eh_frame` FDE that `.eh_frame_hdr`'s table gives for `addr`, whether or not
    /// it covers `addr`; None without a usable table.
    fn hdr_lookup(&self, addr: u64) -> Option<FdeEntry> {
        let (hdr, eh) = (self.eh_frame_hdr.as_ref()?, self.eh_frame.as_ref()?);
        let parsed = EhFrameHdr::new(hdr, LittleEndian)
            .parse(&self.bases, self.arch.pointer_size)
            .ok()?;
        let table = parsed.table()?;
        let offset = table
            .pointer_to_offset(table.lookup(addr, &self.bases).ok()?)
            .ok()?;
        let fde = eh_frame(eh, self.arch)
            .fde_from_offset(&self.bases, offset, EhFrame::cie_from_offset)
            .ok()?;
        Some(FdeEntry {
            start: fde.initial_address(),
            end: fde.end_address(),
            offset: offset.0,
            section: CfiSection::EhFrame,
        })
    }

    /// Number of FDEs indexed or in `.eh_frame_hdr`'s table.
    pub fn len(&self) -> usize {
        let table = self.eh_frame_hdr.as_ref().and_then(|hdr| {
            let parsed = EhFrameHdr::new(hdr, LittleEndian)
                .parse(&self.bases, self.arch.pointer_size)
                .ok()?;
            Some(parsed.table()?.iter(&self.bases).count())
        });
        self.fdes.len() + table.unwrap_or(0)
    }

    /// The FDE covering link-time address `addr`: `.eh_frame`'s first, then the last one
    /// indexed starting at or before it that also ends after it (FDEs do not nest; a
    /// stray overlap picks the later start).
    pub fn find(&self, addr: u64) -> Option<FdeEntry> {
        if let Some(f) = self
            .hdr_lookup(addr)
            .filter(|f| f.start <= addr && addr < f.end)
        {
            return Some(f);
        }
        let i = self.fdes.partition_point(|f| f.start <= addr);
        self.fdes[..i]
            .iter()
            .rev()
            .take(4)
            .find(|f| addr < f.end)
            .copied()
    }
}

/// `.eh_frame` as gimli reads it for `arch`.
pub(crate) fn eh_frame<'a>(bytes: &'a [u8], arch: &Arch) -> EhFrame<EndianSlice<'a, LittleEndian>> {
    let mut s = EhFrame::new(bytes, LittleEndian);
    s.set_address_size(arch.pointer_size);
    if arch.aarch64_cfi {
        s.set_vendor(gimli::Vendor::AArch64);
    }
    s
}

/// `.debug_frame` as gimli reads it for `arch`.
pub(crate) fn debug_frame<'a>(
    bytes: &'a [u8],
    arch: &Arch,
) -> DebugFrame<EndianSlice<'a, LittleEndian>> {
    let mut s = DebugFrame::new(bytes, LittleEndian);
    s.set_address_size(arch.pointer_size);
    if arch.aarch64_cfi {
        s.set_vendor(gimli::Vendor::AArch64);
    }
    s
}

/// Record every FDE of one section; a malformed entry ends the walk (what came before
/// is still used).
fn index_fdes<'a, S>(section: &S, bases: &BaseAddresses, which: CfiSection, out: &mut Vec<FdeEntry>)
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut cies = HashMap::new();
    let mut entries = section.entries(bases);
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let parsed = partial.parse(|s, b, off| {
            let key: usize = gimli::UnwindOffset::into(off);
            if let Some(cie) = cies.get(&key) {
                return Ok(Clone::clone(cie));
            }
            let cie = s.cie_from_offset(b, off)?;
            cies.insert(key, cie.clone());
            Ok(cie)
        });
        let Ok(fde) = parsed else { continue };
        if fde.len() == 0 {
            continue;
        }
        out.push(FdeEntry {
            start: fde.initial_address(),
            end: fde.end_address(),
            offset: fde.offset(),
            section: which,
        });
    }
}

/// One ELF image loaded in the target.
pub struct Module {
    id: u32,
    /// Path as the target sees it, or `[vdso]`.
    pub name: String,
    /// Where prof opened the file (None for images read from memory).
    pub file: Option<PathBuf>,
    /// First mapped address.
    pub start: u64,
    /// One past the last mapped address.
    pub end: u64,
    /// Load bias: target address = link-time address + bias.
    pub bias: u64,
    /// The image.
    pub image: Arc<ElfImage>,
    /// Device and inode of the file opened, to tell a file replaced at the same path and
    /// address (a library rebuilt and loaded again) from the one loaded before.
    file_id: Option<(u64, u64)>,
    cfi: OnceLock<CfiIndex>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Module({} {:#x}-{:#x} bias {:#x})",
            self.name, self.start, self.end, self.bias
        )
    }
}

impl Module {
    /// A module for `image` mapped at `[start, end)` with load bias `bias`.
    pub fn new(
        name: String,
        file: Option<PathBuf>,
        image: Arc<ElfImage>,
        bias: u64,
        start: u64,
        end: u64,
    ) -> Module {
        Module {
            id: NEXT_MODULE_ID.fetch_add(1, Ordering::Relaxed),
            name,
            file,
            start,
            end,
            bias,
            image,
            file_id: None,
            cfi: OnceLock::new(),
        }
    }

    /// Open the file behind `maps` (the mappings of one image) and compute its bias.
    pub fn from_file(
        name: &str,
        file: &Path,
        maps: &[&MapRange],
        page: u64,
    ) -> Result<Module, ModuleError> {
        let image = ElfImage::open(file)?;
        let mut module = Module::from_image(name, Some(file.to_path_buf()), image, maps, page)?;
        module.file_id = file_id(file);
        Ok(module)
    }

    /// A module from an image already parsed (e.g. the vdso read from memory).
    pub fn from_image(
        name: &str,
        file: Option<PathBuf>,
        image: ElfImage,
        maps: &[&MapRange],
        page: u64,
    ) -> Result<Module, ModuleError> {
        let bias = load_bias(&image.load_pairs(), image.is_exec, maps, page)
            .ok_or_else(|| ModuleError::Elf("no mappings".into()))?;
        let start = maps.iter().map(|m| m.start).min().unwrap_or(0);
        let end = maps.iter().map(|m| m.end).max().unwrap_or(0);
        Ok(Module::new(
            name.to_string(),
            file,
            Arc::new(image),
            bias,
            start,
            end,
        ))
    }

    /// Is this module the file at `file` (where prof would open it now)? Unknown
    /// identities (images read from memory, files that cannot be looked at) count as the
    /// same.
    fn is_file(&self, file: Option<&Path>) -> bool {
        match (self.file_id, file.and_then(file_id)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// Unique id of this module (for caches; never reused within the process).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Is `addr` inside the module's mapped range?
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Link-time address of target address `addr`.
    pub fn rel(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.bias)
    }

    /// The file name without directories (`libc.so.6`).
    pub fn basename(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    /// The unwind index, built on first use.
    pub(crate) fn cfi(&self) -> &CfiIndex {
        self.cfi.get_or_init(|| {
            let index = CfiIndex::build(&self.image);
            // The walk over every FDE touched all of .eh_frame; lookups need only the few
            // FDEs of sampled code, and fault them in again.
            self.image.release();
            index
        })
    }

    /// Number of FDEs indexed (`.eh_frame` plus `.debug_frame`).
    pub fn fde_count(&self) -> usize {
        self.cfi().len()
    }

    /// `[start, end)` link-time range of the FDE covering link-time address `rel`.
    pub fn fde_range(&self, rel: u64) -> Option<(u64, u64)> {
        self.cfi().find(rel).map(|f| (f.start, f.end))
    }
}

/// The modules of one process, sorted by address.
#[derive(Default, Clone, Debug)]
pub struct Modules {
    list: Vec<Arc<Module>>,
    vdso: Option<u64>,
}

/// Largest vdso image read from the target.
const MAX_VDSO: u64 = 1 << 20;

impl Modules {
    /// No modules.
    pub fn new() -> Modules {
        Modules::default()
    }

    /// The modules of a live process `pid` from its maps: files opened through
    /// [`MapRange::open_path`], the vdso read from `mem`.
    pub fn for_pid<M: Memory + ?Sized>(pid: u32, maps: &[MapRange], mem: &M) -> Modules {
        let mut m = Modules::new();
        m.set_vdso_address(crate::process::vdso_address(pid));
        m.update(maps, |r| r.open_path(pid), mem, page_size());
        m
    }

    /// Where the vdso is mapped (`AT_SYSINFO_EHDR`), for maps that do not name it.
    pub fn set_vdso_address(&mut self, addr: Option<u64>) {
        self.vdso = addr;
    }

    /// Build from a memory map: `open` says where the file behind a mapping can be read
    /// (None skips it); `[vdso]` is parsed from `mem`. Files that are not ELF images, or
    /// have no executable mapping, are skipped.
    pub fn from_maps<M: Memory + ?Sized>(
        maps: &[MapRange],
        open: impl FnMut(&MapRange) -> Option<PathBuf>,
        mem: &M,
        page: u64,
    ) -> Modules {
        let mut m = Modules::new();
        m.update(maps, open, mem, page);
        m
    }

    /// Bring the set in line with `maps` (after a dlopen or dlclose): modules still mapped
    /// at the same place, from the same file, are kept with their caches; new ones are
    /// loaded, and gone ones dropped with all their data (symbols, unwind and DWARF
    /// indexes, the file mapping).
    /// Returns whether anything changed.
    pub fn update<M: Memory + ?Sized>(
        &mut self,
        maps: &[MapRange],
        mut open: impl FnMut(&MapRange) -> Option<PathBuf>,
        mem: &M,
        page: u64,
    ) -> bool {
        let mut next: Vec<Arc<Module>> = Vec::new();
        let mut changed = false;
        for group in group_maps(maps) {
            if !group.iter().any(|m| m.exec) {
                continue;
            }
            let first = group[0];
            let name = first.path.clone().unwrap_or_default();
            let start = first.start;
            let file = (!name.starts_with('[')).then(|| open(first)).flatten();
            if let Some(old) = self
                .list
                .iter()
                .find(|m| m.name == name && m.start == start && m.is_file(file.as_deref()))
            {
                next.push(old.clone());
                continue;
            }
            let module = if name == "[vdso]" {
                read_vdso(first, mem, page)
            } else {
                file.and_then(|file| Module::from_file(&name, &file, &group, page).ok())
            };
            if let Some(m) = module {
                next.push(Arc::new(m));
                changed = true;
            }
        }
        // An unnamed executable mapping at the vdso's address is the vdso.
        if let Some(addr) = self.vdso
            && !next.iter().any(|m| m.contains(addr))
            && let Some(map) = maps.iter().find(|m| m.contains(addr) && m.path.is_none())
        {
            if let Some(old) = self
                .list
                .iter()
                .find(|m| m.name == "[vdso]" && m.start == map.start)
            {
                next.push(old.clone());
            } else if let Some(m) = read_vdso(map, mem, page) {
                next.push(Arc::new(m));
                changed = true;
            }
        }
        next.sort_by_key(|m| m.start);
        changed |= next.len() != self.list.len();
        self.list = next;
        changed
    }

    /// Add one module (tests, core files).
    pub fn insert(&mut self, module: Module) -> Arc<Module> {
        let m = Arc::new(module);
        let i = self.list.partition_point(|x| x.start <= m.start);
        self.list.insert(i, m.clone());
        m
    }

    /// The module containing target address `addr`.
    pub fn find(&self, addr: u64) -> Option<&Arc<Module>> {
        let i = self.list.partition_point(|m| m.start <= addr);
        self.list[..i]
            .iter()
            .rev()
            .take(2)
            .find(|m| m.contains(addr))
    }

    /// All modules, by address.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Module>> {
        self.list.iter()
    }

    /// Let go of the file pages that reading the modules' images has made resident (see
    /// [`ElfBytes::release`]): unwind-plan lookups read `.eh_frame` and code, and the
    /// symbolizer section headers, in pages nothing needs once the answers are cached.
    pub fn release_pages(&self) {
        self.list.iter().for_each(|m| m.image.release());
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No modules?
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Resident kB of this process's mapping that contains `addr` (from /proc/self/smaps):
/// what the tests of page releases check.
#[cfg(test)]
pub(crate) fn resident_kb(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = head.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = lo <= addr && addr < hi;
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// Device and inode of the file at `path`.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// Split a memory map into the mappings of each loaded file: consecutive mappings of the
/// same path (anonymous `.bss` mappings in between are skipped); a mapping at file offset
/// 0 after others of the same path starts a second copy.
fn group_maps(maps: &[MapRange]) -> Vec<Vec<&MapRange>> {
    let mut groups: Vec<Vec<&MapRange>> = Vec::new();
    for m in maps {
        let Some(path) = &m.path else { continue };
        if let Some(g) = groups.last_mut()
            && g[0].path.as_ref() == Some(path)
            && m.offset != 0
        {
            g.push(m);
            continue;
        }
        groups.push(vec![m]);
    }
    groups
}

fn read_vdso<M: Memory + ?Sized>(map: &MapRange, mem: &M, page: u64) -> Option<Module> {
    let len = map.end.checked_sub(map.start)?;
    if len == 0 || len > MAX_VDSO {
        return None;
    }
    let mut buf = vec![0u8; len as usize];
    mem.read(map.start, &mut buf).ok()?;
    let image = ElfImage::from_bytes(buf).ok()?;
    // The vdso's file offsets are offsets into the mapping itself.
    let as_file = MapRange {
        offset: 0,
        ..map.clone()
    };
    Module::from_image("[vdso]", None, image, &[&as_file], page).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(start: u64, end: u64, offset: u64, exec: bool, path: Option<&str>) -> MapRange {
        MapRange {
            start,
            end,
            offset,
            read: true,
            write: false,
            exec,
            path: path.map(str::to_string),
            deleted: false,
        }
    }

    #[test]
    fn opening_an_image_leaves_no_pages_resident() {
        let image = ElfImage::open(Path::new("/proc/self/exe")).unwrap();
        assert!(image.build_id.is_some() && !image.loads.is_empty());
        // Its headers, notes and section table were read; none of them stays mapped in.
        assert_eq!(resident_kb(image.bytes().as_ptr() as usize), 0);
    }

    #[test]
    fn bias_from_lowest_offset_mapping() {
        // A PIE whose first PT_LOAD is at vaddr 0, mapped at 0x5555_0000_0000.
        let loads = [(0, 0), (0x1000, 0x1000), (0x2db0, 0x3db0)];
        let a = map(0x5555_0000_1000, 0x5555_0000_2000, 0x1000, true, Some("/x"));
        let b = map(0x5555_0000_0000, 0x5555_0000_1000, 0, false, Some("/x"));
        assert_eq!(
            load_bias(&loads, false, &[&a, &b], 4096),
            Some(0x5555_0000_0000)
        );
        assert_eq!(load_bias(&loads, true, &[&a, &b], 4096), Some(0));
        // Only the text mapping visible: still the same bias.
        assert_eq!(
            load_bias(&loads, false, &[&a], 4096),
            Some(0x5555_0000_0000)
        );
        // Prelinked vaddrs (the vdso on some kernels, old prelinked libraries).
        let loads = [(0, 0xffff_f000)];
        let v = map(0x7fff_0000_0000, 0x7fff_0000_2000, 0, true, Some("[vdso]"));
        assert_eq!(
            load_bias(&loads, false, &[&v], 4096),
            Some(0x7fff_0000_0000u64.wrapping_sub(0xffff_f000))
        );
        assert_eq!(load_bias(&loads, false, &[], 4096), None);
    }

    #[test]
    fn a_file_replaced_at_the_same_place_is_loaded_again() {
        // A library loaded, unloaded, and a new copy of it loaded under the same name at
        // the same address (bench/churn.py does this 20 times a second).
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        let copy = |to: &Path| std::fs::copy("/proc/self/exe", to).unwrap();
        copy(&lib);
        let maps = vec![map(0x10_0000, 0x20_0000, 0, true, Some("/opt/libx.so"))];
        let mem = crate::process::ImageMemory::new();
        let mut modules = Modules::new();
        let open = |_: &MapRange| Some(lib.clone());
        assert!(modules.update(&maps, open, &mem, 4096));
        let first = modules.iter().next().expect("loaded").id();
        assert!(!modules.update(&maps, open, &mem, 4096), "same file");
        assert_eq!(modules.iter().next().unwrap().id(), first);
        // A new file put in its place (the old one stays alive: prof still maps it).
        let next = dir.path().join("libx.so.new");
        copy(&next);
        std::fs::rename(&next, &lib).unwrap();
        assert!(
            modules.update(&maps, open, &mem, 4096),
            "replaced file kept"
        );
        assert_eq!(modules.len(), 1);
        assert_ne!(modules.iter().next().unwrap().id(), first);
    }

    #[test]
    fn maps_grouped_per_loaded_copy() {
        let maps = vec![
            map(0x1000, 0x2000, 0, false, Some("/lib/a.so")),
            map(0x2000, 0x3000, 0x1000, true, Some("/lib/a.so")),
            map(0x3000, 0x4000, 0, false, None),
            map(0x4000, 0x5000, 0x2000, false, Some("/lib/a.so")),
            map(0x5000, 0x6000, 0, false, Some("/lib/a.so")),
            map(0x6000, 0x7000, 0x1000, true, Some("/lib/a.so")),
            map(0x7000, 0x8000, 0, true, Some("[vdso]")),
        ];
        let g = group_maps(&maps);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 2, 1]);
    }

    #[test]
    fn own_process_modules_and_fdes() {
        if crate::process::memory::skip_without_live_reads("own_process_modules_and_fdes") {
            return;
        }
        let pid = std::process::id();
        let maps = crate::process::read_maps(pid).unwrap();
        let mem = crate::process::LiveMemory::new(pid);
        let modules = Modules::for_pid(pid, &maps, &mem);
        let f = own_process_modules_and_fdes as *const () as u64;
        let exe = modules.find(f).expect("test binary is a module");
        assert_eq!(exe.image.arch.kind, Arch::host().kind);
        assert!(exe.image.build_id.is_some());
        assert!(exe.fde_count() > 1000, "{} FDEs", exe.fde_count());
        let (lo, hi) = exe.fde_range(exe.rel(f)).expect("an FDE covers this test");
        assert!(lo <= exe.rel(f) && exe.rel(f) < hi);
        assert!(exe.image.read_vaddr(exe.rel(f), 4).is_some());
        let fdes = &exe.cfi().fdes;
        assert!(fdes.windows(2).all(|w| w[0].start <= w[1].start));
        // The vdso is parsed from memory and has its own CFI.
        let vdso = modules.iter().find(|m| m.name == "[vdso]").expect("vdso");
        assert!(vdso.file.is_none() && vdso.fde_count() > 0);
        // libc is there, found through /proc/PID/root, and updating keeps every module.
        assert!(modules.iter().any(|m| m.basename().starts_with("libc.so")));
        let mut again = modules.clone();
        assert!(!again.update(&maps, |r| r.open_path(pid), &mem, page_size()));
        assert!(
            again
                .iter()
                .zip(modules.iter())
                .all(|(a, b)| a.id() == b.id())
        );
    }

    #[test]
    fn eh_frame_hdr_table_finds_what_the_walk_finds() {
        if crate::process::memory::skip_without_live_reads(
            "eh_frame_hdr_table_finds_what_the_walk_finds",
        ) {
            return;
        }
        let pid = std::process::id();
        let maps = crate::process::read_maps(pid).unwrap();
        let mem = crate::process::LiveMemory::new(pid);
        let modules = Modules::for_pid(pid, &maps, &mem);
        let mut compared = 0;
        for m in modules.iter() {
            let with_table = CfiIndex::build(&m.image);
            if with_table.eh_frame_hdr.is_none() {
                continue;
            }
            let mut walked = CfiIndex::build(&m.image);
            walked.eh_frame_hdr = None;
            walked.fdes.clear();
            walked.index_sections();
            assert!(with_table.fdes.len() < walked.fdes.len(), "{}", m.name);
            assert_eq!(with_table.len(), walked.len(), "{}", m.name);
            // Every FDE's first, middle and last address, and the gaps around them.
            for f in &walked.fdes {
                for addr in [
                    f.start.wrapping_sub(1),
                    f.start,
                    (f.start + f.end) / 2,
                    f.end - 1,
                    f.end,
                ] {
                    let (a, b) = (with_table.find(addr), walked.find(addr));
                    assert_eq!(
                        a.map(|f| (f.start, f.end, f.offset)),
                        b.map(|f| (f.start, f.end, f.offset)),
                        "{} at {addr:#x}",
                        m.name
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 1000, "only {compared} addresses compared");
    }
}
