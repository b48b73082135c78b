//! The target's memory map and the files behind it.

use std::path::PathBuf;

use procfs::process::{MMPermissions, MMapPath, Process};

use super::ProcessError;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset into the mapped file.
    pub offset: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// File path as the target sees it (without a ` (deleted)` suffix), if file-backed.
    pub path: Option<String>,
    /// The file was deleted after it was mapped.
    pub deleted: bool,
}

impl MapRange {
    /// Does this range contain `addr`?
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Where prof can open the file behind this mapping: through the target's root
    /// (so containers work) or, for deleted files, through `map_files`.
    pub fn open_path(&self, pid: u32) -> Option<PathBuf> {
        let path = self.path.as_ref()?;
        if self.deleted {
            return Some(PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                self.start, self.end
            )));
        }
        Some(PathBuf::from(format!("/proc/{pid}/root{path}")))
    }
}

/// Read `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> Result<Vec<MapRange>, ProcessError> {
    let proc = Process::new(pid as i32).map_err(|e| ProcessError::from_proc(pid, e))?;
    let maps = proc.maps().map_err(|e| ProcessError::from_proc(pid, e))?;
    Ok(maps
        .into_iter()
        .map(|m| {
            let (path, deleted) = match m.pathname {
                MMapPath::Path(p) => {
                    let s = p.to_string_lossy().into_owned();
                    match s.strip_suffix(" (deleted)") {
                        Some(stripped) => (Some(stripped.to_string()), true),
                        None => (Some(s), false),
                    }
                }
                _ => (None, false),
            };
            MapRange {
                start: m.address.0,
                end: m.address.1,
                offset: m.offset,
                read: m.perms.contains(MMPermissions::READ),
                write: m.perms.contains(MMPermissions::WRITE),
                exec: m.perms.contains(MMPermissions::EXECUTE),
                path,
                deleted,
            }
        })
        .collect())
}

/// Is `addr` inside a readable mapping? (`maps` sorted by address, as the kernel gives them.)
pub fn is_mapped(maps: &[MapRange], addr: u64) -> bool {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).is_some_and(|m| m.contains(addr) && m.read)
}

/// The load bias of an image mapped at `maps` (the mappings of one file, any order):
/// 0 for a non-relocatable executable (`ET_EXEC`), else the start of the mapping with the
/// lowest file offset minus the page-aligned vaddr of the `PT_LOAD` that maps that offset
/// (the first `PT_LOAD` if none matches). `loads` is `(p_offset, p_vaddr)` in file order.
pub fn load_bias(
    loads: &[(u64, u64)],
    is_exec: bool,
    maps: &[&MapRange],
    page: u64,
) -> Option<u64> {
    if is_exec {
        return Some(0);
    }
    let first = maps.iter().min_by_key(|m| m.offset)?;
    let mask = !(page.max(1) - 1);
    let vaddr = loads
        .iter()
        .find(|(off, _)| off & mask == first.offset)
        .or(loads.first())
        .map(|&(_, v)| v)
        .unwrap_or(0);
    Some(first.start.wrapping_sub(vaddr & mask))
}

/// Map the file at `path` read-only: ELF images and core files are read in place, since
/// they can be large and are mostly not needed.
pub fn map_file(path: &std::path::Path) -> std::io::Result<memmap2::Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: mapped read-only; a concurrent truncation of the file could fault, the
    // accepted risk of every reader that maps its input.
    unsafe { memmap2::Mmap::map(&f) }
}

/// The page size of the machine prof runs on.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}
