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
