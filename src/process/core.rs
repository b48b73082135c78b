//! ELF core files as a [`Memory`]: a process that is gone (or that could never be
//! ptraced, such as a guest of qemu-user) read from its last picture.
//!
//! What a core holds, as written by Linux and by qemu-user alike:
//! - `PT_LOAD` segments, one per mapping: `p_filesz` bytes of it are in the file, the rest
//!   of `p_memsz` is not. The kernel (following `coredump_filter`) and qemu leave out
//!   mappings they consider recoverable from files (text) or unreadable, giving them
//!   `p_filesz` 0. Those bytes are *not* zeros in the process, so reads past `p_filesz`
//!   fail as unmapped instead of inventing zeros; a core truncated by `RLIMIT_CORE` loses
//!   the same way whatever lies past the end of the file.
//! - notes: `NT_PRSTATUS` per thread (tid and registers), `NT_AUXV`, and, from the kernel
//!   only, `NT_FILE` naming the file behind each mapping. qemu-user (7.2) writes no
//!   `NT_FILE`: [`CoreMemory::linker_maps`] then asks the dynamic linker's list of loaded
//!   objects (`r_debug`), as debuggers do.
//!
//! Bytes a core left out because a file holds them (text, read-only data such as
//! `Py_Version`) are read from that file once [`CoreMemory::add_files`] says where the
//! files are, as debuggers do too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use libc::{AT_BASE, AT_EXECFN, AT_PHDR, AT_SYSINFO_EHDR};
use object::elf::{
    DT_DEBUG, DT_NULL, ET_CORE, ET_EXEC, NT_AUXV, NT_FILE, NT_PRPSINFO, NT_PRSTATUS, PF_R, PF_W,
    PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_NOTE, PT_PHDR,
};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, elf::FileHeader64};
use thiserror::Error;

use super::maps::MapRange;
use super::memory::{MemResult, Memory, MemoryError, MemoryExt, le_u64};
use crate::arch::{Arch, Registers};

/// Why a core file cannot be used.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The file could not be opened or mapped.
    #[error("cannot read core file {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        err: std::io::Error,
    },
    /// Not a 64-bit little-endian ELF core file.
    #[error("not a 64-bit little-endian ELF core file: {0}")]
    NotCore(String),
    /// A core of a machine prof cannot unwind.
    #[error("core file of ELF machine {0}; prof reads x86_64 and aarch64 cores")]
    Machine(u16),
    /// Headers or notes that contradict themselves.
    #[error("malformed core file: {0}")]
    Malformed(String),
    /// The dynamic linker's list of loaded objects could not be followed.
    #[error("cannot list the core's loaded objects: {0}")]
    Linker(String),
    /// The file ends before what its headers say it holds.
    #[error("the core file is truncated: {0}")]
    Truncated(String),
}

/// One `PT_LOAD` of the core: a mapping of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First address.
    pub start: u64,
    /// One past the last address (`p_vaddr + p_memsz`).
    pub end: u64,
    /// Where its bytes start in the core file.
    pub file_offset: u64,
    /// Bytes of it present in the file (`p_filesz`, cut at the end of a truncated file).
    pub file_len: u64,
    /// Bytes of `p_filesz` past the end of a truncated file: lost, not left out, so the
    /// files behind the mapping (which hold what it held at load time) must not stand in.
    pub lost: u64,
    /// Readable in the process.
    pub read: bool,
    /// Writable in the process.
    pub write: bool,
    /// Executable in the process.
    pub exec: bool,
}

/// One thread of the core (`NT_PRSTATUS`).
#[derive(Debug, Clone)]
pub struct CoreThread {
    /// Kernel thread id (`pr_pid`).
    pub tid: u32,
    /// The signal that stopped it (`pr_cursig`): the fatal one for the thread that died.
    pub signal: u16,
    /// Its registers when the core was written.
    pub regs: Registers,
}

/// A file mapped in the process: `[start, end)` shows the file from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileRange {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
    deleted: bool,
}

/// The core's bytes: mapped from a file, or owned (tests, fuzzing).
enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An ELF core file: its memory, threads, mappings and auxiliary vector.
pub struct CoreMemory {
    data: Bytes,
    arch: &'static Arch,
    /// Sorted by address.
    segments: Vec<Segment>,
    threads: Vec<CoreThread>,
    /// From `NT_FILE`; empty when the writer gave none.
    files: Vec<FileRange>,
    auxv: Vec<(u64, u64)>,
    /// `NT_PRPSINFO`: the process id and its arguments (the first 80 bytes).
    psinfo: Option<(u32, String)>,
    /// Files behind mappings, for the bytes the core left out (see
    /// [`CoreMemory::add_files`]).
    images: Vec<memmap2::Mmap>,
    /// `(start, end, offset, index in images)` of each readable file-backed mapping, sorted.
    backed: Vec<(u64, u64, u64, usize)>,
}

/// Bytes of the `elf_prstatus` fields before `pr_reg` (64-bit Linux, both architectures).
const PRSTATUS_REGS: usize = 112;
/// `pr_pid` in `elf_prstatus`.
const PRSTATUS_PID: usize = 32;
/// `pr_cursig` in `elf_prstatus`.
const PRSTATUS_CURSIG: usize = 12;
/// Longest path or string read from the core's memory.
const MAX_STRING: usize = 4096;
/// Most objects followed in the dynamic linker's list (a cycle guard, not a real limit).
const MAX_LINK_MAPS: usize = 65536;
/// Largest `.dynamic` read from the core.
const MAX_DYNAMIC: u64 = 64 << 10;

impl CoreMemory {
    /// Open and parse the core file at `path` (mapped, not read: cores can be large).
    pub fn open(path: &Path) -> Result<CoreMemory, CoreError> {
        let io = |err| CoreError::Io {
            path: path.to_path_buf(),
            err,
        };
        let map = super::maps::map_file(path).map_err(io)?;
        CoreMemory::parse(Bytes::Map(map))
    }

    /// Parse a core file held in memory.
    pub fn from_bytes(data: Vec<u8>) -> Result<CoreMemory, CoreError> {
        CoreMemory::parse(Bytes::Owned(data))
    }

    fn parse(data: Bytes) -> Result<CoreMemory, CoreError> {
        let bytes: &[u8] = &data;
        if bytes.len() < 6 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
            return Err(CoreError::NotCore("bad ELF identification".into()));
        }
        let header = FileHeader64::<Endianness>::parse(bytes)
            .map_err(|e| CoreError::NotCore(e.to_string()))?;
        let endian = header
            .endian()
            .map_err(|e| CoreError::NotCore(e.to_string()))?;
        if header.e_type(endian) != ET_CORE {
            return Err(CoreError::NotCore(format!(
                "ELF type {} is not ET_CORE",
                header.e_type(endian)
            )));
        }
        let machine = header.e_machine(endian).0;
        let arch = Arch::from_e_machine(machine).ok_or(CoreError::Machine(machine))?;
        let table_end = header.e_phoff(endian).saturating_add(
            u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian)),
        );
        if table_end > bytes.len() as u64 {
            return Err(CoreError::Truncated(format!(
                "its program headers end at byte {table_end}, past its end at {}",
                bytes.len()
            )));
        }
        let phdrs = header
            .program_headers(endian, bytes)
            .map_err(|e| CoreError::Malformed(e.to_string()))?;
        let mut core = CoreMemory {
            arch,
            segments: Vec::new(),
            threads: Vec::new(),
            files: Vec::new(),
            auxv: Vec::new(),
            psinfo: None,
            data: Bytes::Owned(Vec::new()),
            images: Vec::new(),
            backed: Vec::new(),
        };
        let file_len = bytes.len() as u64;
        for ph in phdrs {
            match ph.p_type(endian) {
                PT_LOAD => {
                    let start = ph.p_vaddr(endian);
                    let end = start.checked_add(ph.p_memsz(endian)).ok_or_else(|| {
                        CoreError::Malformed(format!("segment at {start:#x} wraps around"))
                    })?;
                    let file_offset = ph.p_offset(endian);
                    // Whatever a truncated core lost is unreadable, like a dropped mapping.
                    let promised = ph.p_filesz(endian).min(end - start);
                    let file_len = promised.min(file_len.saturating_sub(file_offset));
                    let flags = ph.p_flags(endian).0;
                    core.segments.push(Segment {
                        start,
                        end,
                        file_offset,
                        file_len,
                        lost: promised - file_len,
                        read: flags & PF_R.0 != 0,
                        write: flags & PF_W.0 != 0,
                        exec: flags & PF_X.0 != 0,
                    });
                }
                PT_NOTE => {
                    let end = ph.p_offset(endian).saturating_add(ph.p_filesz(endian));
                    if end > file_len {
                        return Err(CoreError::Truncated(format!(
                            "its notes (threads, registers, mapped files) end at byte {end}, past its end at {file_len}"
                        )));
                    }
                    let notes = ph
                        .notes(endian, bytes)
                        .map_err(|e| CoreError::Malformed(e.to_string()))?;
                    let Some(mut notes) = notes else { continue };
                    while let Some(note) = notes
                        .next()
                        .map_err(|e| CoreError::Malformed(e.to_string()))?
                    {
                        // Other owners ("LINUX": FP and vector registers...) are not needed.
                        if note.name() != b"CORE" {
                            continue;
                        }
                        core.note(note.n_type(endian).0, note.desc())?;
                    }
                }
                _ => {}
            }
        }
        core.segments.sort_by_key(|s| s.start);
        if core.segments.windows(2).any(|w| w[0].end > w[1].start) {
            return Err(CoreError::Malformed("overlapping PT_LOAD segments".into()));
        }
        core.data = data;
        Ok(core)
    }

    fn note(&mut self, n_type: u32, desc: &[u8]) -> Result<(), CoreError> {
        match n_type {
            t if t == NT_PRSTATUS.0 => {
                let thread = prstatus(self.arch, desc).ok_or_else(|| {
                    CoreError::Malformed(format!(
                        "NT_PRSTATUS of {} bytes is too short for {}",
                        desc.len(),
                        self.arch.name
                    ))
                })?;
                self.threads.push(thread);
            }
            t if t == NT_AUXV.0 => {
                self.auxv = super::parse_auxv(desc);
            }
            t if t == NT_FILE.0 => self.files = nt_file(desc)?,
            t if t == NT_PRPSINFO.0 => self.psinfo = prpsinfo(desc),
            _ => {}
        }
        Ok(())
    }

    /// The architecture of the process (from `e_machine`).
    pub fn arch(&self) -> &'static Arch {
        self.arch
    }

    /// Every mapping (`PT_LOAD`), by address.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The threads, in the core's order (the kernel puts the one that died first).
    pub fn threads(&self) -> &[CoreThread] {
        &self.threads
    }

    /// The process id and its arguments (at most 80 bytes, as the writer cut them), from
    /// `NT_PRPSINFO`.
    pub fn process_info(&self) -> Option<(u32, &str)> {
        self.psinfo
            .as_ref()
            .map(|(pid, args)| (*pid, args.as_str()))
    }

    /// Bytes the program headers promise that a truncated file does not hold (0 for a
    /// whole core).
    pub fn missing_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.lost).sum()
    }

    /// The thread ids.
    pub fn tids(&self) -> Vec<u32> {
        self.threads.iter().map(|t| t.tid).collect()
    }

    /// The thread that received a fatal signal (the first with `pr_cursig` set), else the
    /// first thread.
    pub fn crashed_thread(&self) -> Option<&CoreThread> {
        self.threads
            .iter()
            .find(|t| t.signal != 0)
            .or(self.threads.first())
    }

    /// Value of auxiliary vector entry `key` (`AT_*`).
    pub fn auxv(&self, key: u64) -> Option<u64> {
        self.auxv.iter().find(|e| e.0 == key).map(|e| e.1)
    }

    /// Where the vdso was mapped (`AT_SYSINFO_EHDR`), if it was.
    pub fn vdso_address(&self) -> Option<u64> {
        self.auxv(AT_SYSINFO_EHDR).filter(|&a| a != 0)
    }

    /// Did the writer name the mapped files (`NT_FILE`)?
    pub fn has_file_notes(&self) -> bool {
        !self.files.is_empty()
    }

    /// The program's path as it was executed (`AT_EXECFN`), read from its stack.
    pub fn exec_path(&self) -> Option<String> {
        self.c_string(self.auxv(AT_EXECFN)?)
    }

    /// The memory map, like `/proc/PID/maps`: one range per segment, with permissions
    /// from its `p_flags` and file, offset and path from `NT_FILE` (anonymous without).
    /// Files `NT_FILE` names where the core has no segment at all (gdb's `gcore` writes
    /// none for the mappings it leaves out, where the kernel writes an empty one) are
    /// mapped too, with the permissions of the file's `PT_LOAD` there when `open` finds
    /// the file (else read-only).
    pub fn maps(&self, open: impl Fn(&str) -> Option<PathBuf>) -> Vec<MapRange> {
        assemble(&self.segments, &self.files, open)
    }

    /// The memory map with the files found through the dynamic linker's list of loaded
    /// objects (`r_debug`, reached through the program's `DT_DEBUG`), for cores that
    /// have no `NT_FILE`. `open` says where a path of the target can be read here (a
    /// sysroot for a foreign core); paths in the result are the target's own.
    pub fn linker_maps(
        &self,
        open: impl Fn(&str) -> Option<PathBuf>,
    ) -> Result<Vec<MapRange>, CoreError> {
        let err = |m: String| CoreError::Linker(m);
        let exe = self
            .exec_path()
            .ok_or_else(|| err("no AT_EXECFN in the auxiliary vector".into()))?;
        let exe_file = open(&exe).ok_or_else(|| err(format!("{exe} not found")))?;
        let exe_elf = ElfLoads::read(&exe_file).map_err(|e| err(format!("{exe}: {e}")))?;
        let at_phdr = self
            .auxv(AT_PHDR)
            .ok_or_else(|| err("no AT_PHDR in the auxiliary vector".into()))?;
        let exe_bias = if exe_elf.is_exec {
            0
        } else {
            at_phdr.wrapping_sub(exe_elf.phdr_vaddr)
        };
        let mut images = vec![(exe.clone(), exe_bias, exe_elf.loads.clone())];
        let (dyn_vaddr, dyn_len) = exe_elf
            .dynamic
            .ok_or_else(|| err(format!("{exe} has no PT_DYNAMIC (static program)")))?;
        let dynamic = self
            .bytes(
                exe_bias.wrapping_add(dyn_vaddr),
                dyn_len.min(MAX_DYNAMIC) as usize,
            )
            .map_err(|e| err(format!("{exe}'s .dynamic: {e}")))?;
        let r_debug = dynamic
            .chunks_exact(16)
            .map(|e| (le_u64(e, 0), le_u64(e, 8)))
            .take_while(|e| e.0 != DT_NULL.0 as u64)
            .find(|e| e.0 == DT_DEBUG.0 as u64)
            .map(|e| e.1)
            .filter(|&a| a != 0)
            .ok_or_else(|| err(format!("{exe} has no DT_DEBUG set by the dynamic linker")))?;
        let ld_base = self.auxv(AT_BASE).filter(|&b| b != 0);
        // struct r_debug { int r_version; struct link_map *r_map; ... }
        let mut lm = self
            .u64(r_debug + 8)
            .map_err(|e| err(format!("r_debug: {e}")))?;
        let mut seen = HashSet::new();
        while lm != 0 && seen.len() < MAX_LINK_MAPS && seen.insert(lm) {
            // struct link_map { l_addr, l_name, l_ld, l_next, l_prev, ... }
            let Ok(head) = self.bytes(lm, 32) else { break };
            let (bias, name_at, next) = (le_u64(&head, 0), le_u64(&head, 8), le_u64(&head, 24));
            lm = next;
            let name = self.c_string(name_at).unwrap_or_default();
            let name = if !name.is_empty() {
                name
            } else if Some(bias) == ld_base {
                // ld.so's name points into the program's text, which cores leave out.
                match &exe_elf.interp {
                    Some(i) => i.clone(),
                    None => continue,
                }
            } else {
                // The program itself (empty name), already listed.
                continue;
            };
            if images.iter().any(|i| i.0 == name) {
                continue;
            }
            // Objects with no file here (the vdso's "linux-vdso.so.1") are left anonymous.
            let Some(loads) = open(&name).and_then(|f| ElfLoads::read(&f).ok()) else {
                continue;
            };
            images.push((name, bias, loads.loads));
        }
        let page = self.arch.page_size;
        let mut files = Vec::new();
        for (path, bias, loads) in images {
            for l in loads {
                let start = align_down(bias.wrapping_add(l.vaddr), page);
                let end = align_up(bias.wrapping_add(l.vaddr).saturating_add(l.filesz), page);
                files.push(FileRange {
                    start,
                    end,
                    offset: align_down(l.offset, page),
                    path: path.clone(),
                    deleted: false,
                });
            }
        }
        files.sort_by_key(|f| f.start);
        Ok(assemble(&self.segments, &files, open))
    }

    /// Serve reads the core cannot (text and read-only data that cores leave out because
    /// the files hold them) from the files behind `maps`, as a debugger does; `open` says
    /// where a path of `maps` can be read here. Bytes in the core always win: a mapping
    /// the process wrote to is in the core. Returns how many files were opened.
    pub fn add_files(
        &mut self,
        maps: &[MapRange],
        open: impl Fn(&str) -> Option<PathBuf>,
    ) -> usize {
        let mut opened: Vec<(String, usize)> = Vec::new();
        for m in maps.iter().filter(|m| m.read && !m.deleted) {
            let Some(path) = m.path.as_deref() else {
                continue;
            };
            let index = match opened.iter().find(|o| o.0 == path) {
                Some(o) => o.1,
                None => {
                    let Some(map) = open(path).and_then(|f| super::maps::map_file(&f).ok()) else {
                        continue;
                    };
                    self.images.push(map);
                    opened.push((path.to_string(), self.images.len() - 1));
                    self.images.len() - 1
                }
            };
            self.backed.push((m.start, m.end, m.offset, index));
        }
        self.backed.sort_by_key(|b| b.0);
        opened.len()
    }

    /// Where the bytes at `addr` are: `(source, offset, bytes available)`; source None is
    /// the core itself, `Some(i)` is `images[i]`.
    fn locate(&self, addr: u64) -> Option<(Option<usize>, usize, u64)> {
        if let Some(i) = self.segment_index(addr) {
            let s = &self.segments[i];
            let off = s.file_offset + (addr - s.start);
            return Some((None, off as usize, s.start + s.file_len - addr));
        }
        if self.lost(addr) {
            return None;
        }
        let i = self
            .backed
            .partition_point(|b| b.0 <= addr)
            .checked_sub(1)?;
        let (start, end, offset, image) = self.backed[i];
        if addr >= end {
            return None;
        }
        let off = offset.checked_add(addr - start)?;
        let file_len = self.images[image].len() as u64;
        // The next segment of the core may start before this mapping ends.
        let next = self.segments[self.segments.partition_point(|s| s.start <= addr)..]
            .first()
            .map_or(u64::MAX, |s| s.start);
        let avail = (end.min(next) - addr).min(file_len.checked_sub(off)?);
        (avail > 0).then_some((Some(image), off as usize, avail))
    }

    /// A NUL-terminated string at `addr` (at most [`MAX_STRING`] bytes).
    fn c_string(&self, addr: u64) -> Option<String> {
        let (_, _, avail) = self.locate(addr)?;
        let avail = avail.min(MAX_STRING as u64) as usize;
        let bytes = self.bytes(addr, avail).ok()?;
        let end = bytes.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// Were the bytes at `addr` cut off a truncated core?
    fn lost(&self, addr: u64) -> bool {
        let i = self.segments.partition_point(|s| s.start <= addr);
        i.checked_sub(1).is_some_and(|i| {
            let s = &self.segments[i];
            let at = addr - s.start;
            s.lost > 0 && at >= s.file_len && at < s.file_len + s.lost
        })
    }

    /// The segment whose file-backed part holds `addr`.
    fn segment_index(&self, addr: u64) -> Option<usize> {
        let i = self
            .segments
            .partition_point(|s| s.start <= addr)
            .checked_sub(1)?;
        let s = &self.segments[i];
        (addr - s.start < s.file_len).then_some(i)
    }
}

impl Memory for CoreMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> MemResult<()> {
        let len = buf.len();
        let unmapped = MemoryError::Unmapped { addr, len };
        if len == 0 {
            return Ok(());
        }
        addr.checked_add(len as u64).ok_or(unmapped.clone())?;
        // A read may run across adjacent mappings (split only by their permissions), as it
        // can in a live process; nothing is copied unless all of it is there.
        let mut pieces = Vec::new();
        let (mut at, mut done) = (addr, 0usize);
        while done < len {
            let (source, off, avail) = self.locate(at).ok_or(unmapped.clone())?;
            let n = (avail.min((len - done) as u64)) as usize;
            pieces.push((source, off, done, n));
            at += n as u64;
            done += n;
        }
        for (source, off, to, n) in pieces {
            let from: &[u8] = match source {
                None => &self.data,
                Some(i) => &self.images[i],
            };
            buf[to..to + n].copy_from_slice(&from[off..off + n]);
        }
        Ok(())
    }
}

/// A thread from an `NT_PRSTATUS` note; None if it is too short for the architecture.
fn prstatus(arch: &'static Arch, desc: &[u8]) -> Option<CoreThread> {
    let words: Vec<u64> = desc
        .get(PRSTATUS_REGS..)?
        .chunks_exact(8)
        .take(arch.user_regs.len())
        .map(|w| le_u64(w, 0))
        .collect();
    let regs = Registers::from_user_regs(arch, &words)?;
    let pid = i32::from_le_bytes(desc[PRSTATUS_PID..PRSTATUS_PID + 4].try_into().ok()?);
    let signal = u16::from_le_bytes(desc[PRSTATUS_CURSIG..PRSTATUS_CURSIG + 2].try_into().ok()?);
    Some(CoreThread {
        tid: pid as u32,
        signal,
        regs,
    })
}

/// The `NT_PRPSINFO` note (64-bit `elf_prpsinfo`): `pr_pid` at 24, `pr_psargs` (80
/// bytes, NUL-padded) at 56.
fn prpsinfo(desc: &[u8]) -> Option<(u32, String)> {
    let pid = u32::from_le_bytes(desc.get(24..28)?.try_into().ok()?);
    let args = desc.get(56..136)?;
    let end = args.iter().position(|&b| b == 0).unwrap_or(args.len());
    let args = String::from_utf8_lossy(&args[..end]).trim_end().to_string();
    Some((pid, args))
}

/// The `NT_FILE` note: count, page size, `count` × (start, end, offset in pages), then
/// `count` NUL-terminated paths.
fn nt_file(desc: &[u8]) -> Result<Vec<FileRange>, CoreError> {
    let bad = |why: &str| CoreError::Malformed(format!("NT_FILE note: {why}"));
    if desc.len() < 16 {
        return Err(bad("shorter than its header"));
    }
    let (count, page) = (le_u64(desc, 0), le_u64(desc, 8));
    let table_end = count
        .checked_mul(24)
        .and_then(|n| n.checked_add(16))
        .filter(|&n| n <= desc.len() as u64)
        .ok_or_else(|| bad("more entries than bytes"))? as usize;
    let mut names = desc[table_end..].split(|&b| b == 0);
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let e = 16 + 24 * i;
        let (start, end, pgoff) = (le_u64(desc, e), le_u64(desc, e + 8), le_u64(desc, e + 16));
        let name = names
            .next()
            .ok_or_else(|| bad("fewer names than entries"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let (path, deleted) = match name.strip_suffix(" (deleted)") {
            Some(p) => (p.to_string(), true),
            None => (name, false),
        };
        if end < start {
            return Err(bad("an entry ends before it starts"));
        }
        out.push(FileRange {
            start,
            end,
            offset: pgoff.wrapping_mul(page),
            path,
            deleted,
        });
    }
    out.sort_by_key(|f| f.start);
    Ok(out)
}

/// One range per segment, split where the files mapped over it begin and end; each piece
/// takes the file that covers it (sorted `files`), or none. Then the parts of files no
/// segment covers, with permissions from the file opened through `open`.
fn assemble(
    segments: &[Segment],
    files: &[FileRange],
    open: impl Fn(&str) -> Option<PathBuf>,
) -> Vec<MapRange> {
    let mut out = Vec::new();
    for s in segments {
        let mut cuts: Vec<u64> = vec![s.start, s.end];
        for f in files.iter().filter(|f| f.start < s.end && s.start < f.end) {
            cuts.extend([f.start.max(s.start), f.end.min(s.end)]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (start, end) = (w[0], w[1]);
            let file = files.iter().find(|f| f.start <= start && end <= f.end);
            out.push(MapRange {
                start,
                end,
                offset: file.map_or(0, |f| f.offset.wrapping_add(start - f.start)),
                read: s.read,
                write: s.write,
                exec: s.exec,
                path: file.map(|f| f.path.clone()),
                deleted: file.is_some_and(|f| f.deleted),
            });
        }
    }
    let mut images: Vec<(&str, Option<ElfLoads>)> = Vec::new();
    for f in files {
        // The pieces of `f` between the segments over it.
        let over = segments
            .iter()
            .filter(|s| s.start < f.end && f.start < s.end);
        let mut gaps = Vec::new();
        let mut at = f.start;
        for s in over {
            if s.start > at {
                gaps.push((at, s.start));
            }
            at = at.max(s.end);
        }
        if at < f.end {
            gaps.push((at, f.end));
        }
        if gaps.is_empty() {
            continue;
        }
        let loads = match images.iter().position(|i| i.0 == f.path) {
            Some(i) => i,
            None => {
                let loads = (!f.deleted)
                    .then(|| open(&f.path))
                    .flatten()
                    .and_then(|p| ElfLoads::read(&p).ok());
                images.push((&f.path, loads));
                images.len() - 1
            }
        };
        for (start, end) in gaps {
            let offset = f.offset.wrapping_add(start - f.start);
            let flags = images[loads].1.as_ref().and_then(|e| {
                e.loads
                    .iter()
                    .find(|l| {
                        let first = align_down(l.offset, 4096);
                        first <= offset && offset < l.offset.saturating_add(l.filesz.max(1))
                    })
                    .map(|l| l.flags)
            });
            let flags = flags.unwrap_or(PF_R.0);
            out.push(MapRange {
                start,
                end,
                offset,
                read: flags & PF_R.0 != 0,
                write: flags & PF_W.0 != 0,
                exec: flags & PF_X.0 != 0,
                path: Some(f.path.clone()),
                deleted: f.deleted,
            });
        }
    }
    out.sort_by_key(|m| m.start);
    out
}

fn align_down(x: u64, page: u64) -> u64 {
    x & !(page.max(1) - 1)
}

fn align_up(x: u64, page: u64) -> u64 {
    align_down(x.saturating_add(page.max(1) - 1), page)
}

/// One `PT_LOAD` of an image file.
#[derive(Debug, Clone, Copy)]
struct Load {
    offset: u64,
    vaddr: u64,
    filesz: u64,
    /// `p_flags`.
    flags: u32,
}

/// What [`CoreMemory::linker_maps`] needs from an image file.
struct ElfLoads {
    is_exec: bool,
    loads: Vec<Load>,
    /// Link-time address of the program headers (`PT_PHDR`, or derived from `e_phoff`).
    phdr_vaddr: u64,
    /// `PT_DYNAMIC`: link-time address and size.
    dynamic: Option<(u64, u64)>,
    /// `PT_INTERP`: the dynamic linker's path.
    interp: Option<String>,
}

impl ElfLoads {
    fn read(path: &Path) -> Result<ElfLoads, String> {
        let data = super::maps::map_file(path).map_err(|e| e.to_string())?;
        let data: &[u8] = &data;
        let header = FileHeader64::<Endianness>::parse(data).map_err(|e| e.to_string())?;
        let endian = header.endian().map_err(|e| e.to_string())?;
        let mut out = ElfLoads {
            is_exec: header.e_type(endian) == ET_EXEC,
            loads: Vec::new(),
            phdr_vaddr: 0,
            dynamic: None,
            interp: None,
        };
        let mut phdr = None;
        for ph in header
            .program_headers(endian, data)
            .map_err(|e| e.to_string())?
        {
            match ph.p_type(endian) {
                PT_LOAD => out.loads.push(Load {
                    offset: ph.p_offset(endian),
                    vaddr: ph.p_vaddr(endian),
                    filesz: ph.p_filesz(endian),
                    flags: ph.p_flags(endian).0,
                }),
                PT_PHDR => phdr = Some(ph.p_vaddr(endian)),
                PT_DYNAMIC => out.dynamic = Some((ph.p_vaddr(endian), ph.p_memsz(endian))),
                PT_INTERP => {
                    out.interp = ph
                        .data(endian, data)
                        .ok()
                        .and_then(|d| d.split(|&b| b == 0).next())
                        .map(|s| String::from_utf8_lossy(s).into_owned());
                }
                _ => {}
            }
        }
        let phoff = header.e_phoff(endian);
        out.phdr_vaddr = phdr
            .or_else(|| {
                // The headers sit in the load that maps file offset e_phoff.
                out.loads
                    .iter()
                    .find(|l| l.offset <= phoff && phoff - l.offset < l.filesz)
                    .map(|l| l.vaddr + (phoff - l.offset))
            })
            .unwrap_or(0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{ArchKind, x86_64};

    /// A hand-built core: header, program headers, notes, then the segments' bytes.
    struct Builder {
        machine: u16,
        notes: Vec<(u32, Vec<u8>)>,
        /// (vaddr, memsz, flags, bytes in the file)
        loads: Vec<(u64, u64, u32, Vec<u8>)>,
    }

    fn note_bytes(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32 + 1).to_le_bytes());
        v.extend((desc.len() as u32).to_le_bytes());
        v.extend(n_type.to_le_bytes());
        v.extend(name);
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    impl Builder {
        fn build(&self) -> Vec<u8> {
            let phnum = 1 + self.loads.len();
            let mut notes = note_bytes(b"LINUX", 0x402, &[1, 2, 3]);
            for (t, d) in &self.notes {
                notes.extend(note_bytes(b"CORE", *t, d));
            }
            let notes_at = 64 + 56 * phnum as u64;
            let mut data_at = notes_at + notes.len() as u64;
            let mut out = Vec::new();
            // e_ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags.
            out.extend(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00");
            out.extend(ET_CORE.0.to_le_bytes());
            out.extend(self.machine.to_le_bytes());
            out.extend(1u32.to_le_bytes());
            out.extend(0u64.to_le_bytes());
            out.extend(64u64.to_le_bytes());
            out.extend(0u64.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx.
            for v in [64u16, 56, phnum as u16, 64, 0, 0] {
                out.extend(v.to_le_bytes());
            }
            let ph = |out: &mut Vec<u8>, t: u32, flags: u32, off, vaddr, filesz, memsz| {
                out.extend(t.to_le_bytes());
                out.extend(flags.to_le_bytes());
                let align = if t == PT_NOTE.0 { 4 } else { 4096 };
                for v in [off, vaddr, 0u64, filesz, memsz, align] {
                    out.extend(v.to_le_bytes());
                }
            };
            ph(&mut out, PT_NOTE.0, 0, notes_at, 0, notes.len() as u64, 0);
            for (vaddr, memsz, flags, bytes) in &self.loads {
                let n = bytes.len() as u64;
                ph(&mut out, PT_LOAD.0, *flags, data_at, *vaddr, n, *memsz);
                data_at += n;
            }
            out.extend(notes);
            for (_, _, _, bytes) in &self.loads {
                out.extend(bytes);
            }
            out
        }
    }

    fn prstatus_desc(tid: u32, sig: u16, regs: &[u64]) -> Vec<u8> {
        let mut d = vec![0u8; PRSTATUS_REGS];
        d[PRSTATUS_CURSIG..PRSTATUS_CURSIG + 2].copy_from_slice(&sig.to_le_bytes());
        d[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&tid.to_le_bytes());
        for r in regs {
            d.extend(r.to_le_bytes());
        }
        d.extend([0u8; 8]); // pr_fpvalid and padding
        d
    }

    fn aarch64_core() -> Vec<u8> {
        // x_i = 0x100 + i, sp = 0x7000, pc = 0x4444, pstate = 0.
        let mut regs: Vec<u64> = (0..31).map(|i| 0x100 + i).collect();
        regs.extend([0x7000, 0x4444, 0]);
        let mut nt_file = Vec::new();
        for v in [2u64, 4096, 0x1000, 0x4000, 0, 0x5000, 0x6000, 3] {
            nt_file.extend(v.to_le_bytes());
        }
        nt_file.extend(b"/usr/lib/libx.so\0/tmp/gone (deleted)\0");
        let mut auxv = Vec::new();
        for v in [AT_SYSINFO_EHDR, 0x9000, AT_EXECFN, 0x7010, 0, 0] {
            auxv.extend(v.to_le_bytes());
        }
        let mut stack = vec![0u8; 0x1000];
        stack[0x10..0x18].copy_from_slice(b"/bin/py\0");
        Builder {
            machine: object::elf::EM_AARCH64.0,
            notes: vec![
                (NT_PRSTATUS.0, prstatus_desc(41, 0, &regs)),
                (NT_PRSTATUS.0, prstatus_desc(42, 6, &regs)),
                (NT_FILE.0, nt_file),
                (NT_AUXV.0, auxv),
            ],
            loads: vec![
                // Text left out: in the map, not readable.
                (0x1000, 0x1000, PF_R.0 | PF_X.0, Vec::new()),
                // Two adjacent pages of one file, the second read-write; bss half dumped.
                (0x2000, 0x1000, PF_R.0, vec![0xaa; 0x1000]),
                (0x3000, 0x2000, PF_R.0 | PF_W.0, vec![0xbb; 0x1000]),
                (0x5000, 0x1000, PF_R.0, vec![0xcc; 0x1000]),
                (0x7000, 0x1000, PF_R.0 | PF_W.0, stack),
            ],
        }
        .build()
    }

    #[test]
    fn reads_segments_within_their_file_bytes() {
        let core = CoreMemory::from_bytes(aarch64_core()).unwrap();
        assert_eq!(core.arch().kind, ArchKind::Aarch64);
        assert_eq!(core.segments().len(), 5);
        assert_eq!(core.u8(0x2000).unwrap(), 0xaa);
        // Across two adjacent segments.
        assert_eq!(core.u64(0x2ffc).unwrap(), 0xbbbb_bbbb_aaaa_aaaa);
        // Past p_filesz, in a gap, in text left out, wrapping around.
        assert!(core.u8(0x4000).is_err());
        assert!(core.u64(0x3ffc).is_err());
        assert!(core.u8(0x6000).is_err());
        assert!(core.u8(0x1000).is_err());
        assert!(core.u64(u64::MAX - 3).is_err());
        let mut empty = [0u8; 0];
        core.read(0xdead_0000, &mut empty).unwrap();
        assert_eq!(core.exec_path().as_deref(), Some("/bin/py"));
        assert_eq!(core.vdso_address(), Some(0x9000));
    }

    #[test]
    fn threads_and_registers_from_prstatus() {
        let core = CoreMemory::from_bytes(aarch64_core()).unwrap();
        assert_eq!(core.tids(), vec![41, 42]);
        let t = core.crashed_thread().unwrap();
        assert_eq!((t.tid, t.signal), (42, 6));
        assert_eq!(t.regs.pc, 0x4444);
        assert_eq!(t.regs.sp(), Some(0x7000));
        assert_eq!(t.regs.get(29), Some(0x100 + 29));
        assert_eq!(t.regs.get(30), Some(0x100 + 30));
        assert_eq!(t.regs.get(0), Some(0x100));
    }

    #[test]
    fn x86_64_registers_follow_user_regs_struct() {
        // Field i holds 1000 + i.
        let regs: Vec<u64> = (0..27).map(|i| 1000 + i).collect();
        let core = CoreMemory::from_bytes(
            Builder {
                machine: object::elf::EM_X86_64.0,
                notes: vec![(NT_PRSTATUS.0, prstatus_desc(7, 11, &regs))],
                loads: vec![],
            }
            .build(),
        )
        .unwrap();
        let r = &core.threads()[0].regs;
        assert_eq!(r.pc, 1016);
        assert_eq!(r.sp(), Some(1019));
        assert_eq!(r.get(x86_64::RBP), Some(1004));
        assert_eq!(r.get(x86_64::RBX), Some(1005));
        assert_eq!(r.get(x86_64::RAX), Some(1010));
        assert_eq!(r.get(15), Some(1000));
        assert_eq!(r.get(8), Some(1009));
    }

    #[test]
    fn maps_take_files_from_nt_file_and_permissions_from_segments() {
        let core = CoreMemory::from_bytes(aarch64_core()).unwrap();
        let maps = core.maps(|_| None);
        let brief: Vec<_> = maps
            .iter()
            .map(|m| {
                (
                    m.start,
                    m.end,
                    m.offset,
                    (m.read, m.write, m.exec),
                    m.path.as_deref(),
                    m.deleted,
                )
            })
            .collect();
        let lib = Some("/usr/lib/libx.so");
        assert_eq!(
            brief,
            vec![
                (0x1000, 0x2000, 0, (true, false, true), lib, false),
                (0x2000, 0x3000, 0x1000, (true, false, false), lib, false),
                (0x3000, 0x4000, 0x2000, (true, true, false), lib, false),
                (0x4000, 0x5000, 0, (true, true, false), None, false),
                (
                    0x5000,
                    0x6000,
                    0x3000,
                    (true, false, false),
                    Some("/tmp/gone"),
                    true
                ),
                (0x7000, 0x8000, 0, (true, true, false), None, false),
            ]
        );
    }

    #[test]
    fn hostile_input_is_an_error_never_a_panic() {
        let good = aarch64_core();
        for len in 0..good.len().min(2048) {
            let _ = CoreMemory::from_bytes(good[..len].to_vec()).map(|c| {
                let _ = c.u64(0x2000);
                let _ = c.maps(|_| None);
                let _ = c.exec_path();
            });
        }
        // Every byte of the headers and notes replaced by a few nasty values.
        for i in 0..1024.min(good.len()) {
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(c) = CoreMemory::from_bytes(bad) {
                    let _ = c.u64(0x2ff8);
                    let _ = c.maps(|_| None);
                    let _ = c.exec_path();
                    let _ = c.linker_maps(|_| None);
                }
            }
        }
        let not_core = CoreMemory::from_bytes(b"\x7fELF".to_vec());
        assert!(matches!(not_core, Err(CoreError::NotCore(_))));
        let mut x86 = good.clone();
        x86[18..20].copy_from_slice(&40u16.to_le_bytes());
        assert!(matches!(
            CoreMemory::from_bytes(x86),
            Err(CoreError::Machine(40))
        ));
    }

    #[test]
    fn files_fill_in_what_the_core_left_out() {
        let mut core = CoreMemory::from_bytes(aarch64_core()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        // Text at offset 0 (0x11 bytes), the data page at 0x1000 as the file has it.
        let mut bytes = vec![0x11u8; 0x1000];
        bytes.extend(vec![0x22u8; 0x1000]);
        bytes.extend(vec![0x33u8; 0x800]);
        std::fs::write(&lib, bytes).unwrap();
        let maps = core.maps(|_| None);
        assert_eq!(core.add_files(&maps, |_| Some(lib.clone())), 1);
        assert_eq!(core.u8(0x1000).unwrap(), 0x11);
        // Text, then the core's copy of the next page: one read across both.
        assert_eq!(core.u64(0x1ffc).unwrap(), 0xaaaa_aaaa_1111_1111);
        assert_eq!(core.u8(0x2000).unwrap(), 0xaa);
        // The core's bytes win over the file's; anonymous memory left out stays out.
        assert!(core.u8(0x3000 + 0x800).is_ok_and(|b| b == 0xbb));
        assert!(core.u8(0x4000).is_err());
        // Deleted files are not opened.
        assert!(core.u8(0x6000).is_err());
    }

    #[test]
    fn a_truncated_core_loses_only_what_is_missing() {
        let good = aarch64_core();
        // Cut in the middle of the stack segment's bytes (the last 0x1000 bytes).
        let cut = good.len() - 0x800;
        let core = CoreMemory::from_bytes(good[..cut].to_vec()).unwrap();
        assert_eq!(core.u8(0x5fff).unwrap(), 0xcc);
        assert!(core.u8(0x7000).is_ok());
        assert!(core.u8(0x77ff).is_ok());
        assert!(core.u8(0x7800).is_err());
        assert_eq!(core.missing_bytes(), 0x800);
    }

    #[test]
    fn files_do_not_stand_in_for_what_truncation_lost() {
        let good = aarch64_core();
        // The last segment (0x7000, the stack, 0x1000 bytes) half cut off; a file is
        // mapped there in this test's map, with other bytes than the process had.
        let mut core = CoreMemory::from_bytes(good[..good.len() - 0x800].to_vec()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stale");
        std::fs::write(&file, vec![0x55u8; 0x1000]).unwrap();
        let maps = vec![MapRange {
            start: 0x7000,
            end: 0x8000,
            offset: 0,
            read: true,
            write: true,
            exec: false,
            path: Some("/stale".into()),
            deleted: false,
        }];
        assert_eq!(core.add_files(&maps, |_| Some(file.clone())), 1);
        assert!(core.u8(0x77ff).is_ok_and(|b| b != 0x55));
        assert!(core.u8(0x7800).is_err());
    }
}
