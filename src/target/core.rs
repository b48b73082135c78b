//! An ELF core file as a [`Target`]: a process that is gone, read from its last picture.
//!
//! The mapped files come from the core's `NT_FILE` note (kernel and gdb cores) or, without
//! one (qemu-user cores), from the dynamic linker's list of loaded objects; they are
//! opened under `--sysroot` when given (the files of another machine), and the program
//! itself from `--executable` when given. Threads are never running, so pausing is a no-op.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use libc::AT_PHDR;

use super::error::{is_read_failure, python_fact};
use super::{Paused, Target, TargetError, ThreadInfo, ThreadState};
use crate::arch::{Arch, Registers};
use crate::process::{CoreError, CoreMemory, MapRange};
use crate::python::PyError;

/// Where the files a core names are found here.
#[derive(Debug, Clone, Default)]
pub struct CoreOptions {
    /// The program the core is of (`--executable`), when the core does not name it or the
    /// file there is not the one that ran.
    pub executable: Option<PathBuf>,
    /// A directory holding the files of the machine the core comes from (`--sysroot`).
    pub sysroot: Option<PathBuf>,
}

/// A core file, parsed, with its memory map and files.
pub struct CoreFile {
    path: PathBuf,
    core: Arc<CoreMemory>,
    maps: Vec<MapRange>,
    /// The program's path as the process saw it.
    exe: Option<String>,
    opts: CoreOptions,
}

impl CoreFile {
    /// Open the core at `path` and find the files behind its mappings.
    pub fn open(path: &Path, opts: CoreOptions) -> Result<CoreFile, TargetError> {
        let mut core = CoreMemory::open(path)?;
        if core.threads().is_empty() {
            return Err(CoreError::Malformed("no thread (NT_PRSTATUS) in the core".into()).into());
        }
        let (exe, maps) = if core.has_file_notes() {
            let maps = core.maps(|p| host_path(&opts, None, p));
            // The program is the file mapped where its program headers are.
            let exe = core
                .auxv(AT_PHDR)
                .and_then(|a| maps.iter().find(|m| m.contains(a)))
                .and_then(|m| m.path.clone())
                .or_else(|| core.exec_path());
            (exe, maps)
        } else {
            let exe = core.exec_path();
            let maps = core
                .linker_maps(|p| host_path(&opts, exe.as_deref(), p))
                .map_err(|e| {
                    let hint = if opts.executable.is_none() {
                        " (give the program with --executable, and the files of the machine it ran on with --sysroot)"
                    } else {
                        ""
                    };
                    TargetError::CoreMissing {
                        path: path.to_path_buf(),
                        cause: format!("{e}{hint}"),
                    }
                })?;
            (exe, maps)
        };
        // Cores leave out what files hold (text, read-only data): read it from them.
        core.add_files(&maps, |p| host_path(&opts, exe.as_deref(), p));
        Ok(CoreFile {
            path: path.to_path_buf(),
            core: Arc::new(core),
            maps,
            exe,
            opts,
        })
    }

    /// The parsed core.
    pub fn core(&self) -> &CoreMemory {
        &self.core
    }
}

/// Where a path of the target is found here: `--executable` for the program (`exe`), else
/// under the sysroot if there, else the path itself if it exists.
fn host_path(opts: &CoreOptions, exe: Option<&str>, path: &str) -> Option<PathBuf> {
    if let Some(given) = &opts.executable
        && exe == Some(path)
    {
        return Some(given.clone());
    }
    if let Some(root) = &opts.sysroot {
        let inside = root.join(path.trim_start_matches('/'));
        if inside.exists() {
            return Some(inside);
        }
    }
    Path::new(path).exists().then(|| PathBuf::from(path))
}

impl Target for CoreFile {
    type Mem = Arc<CoreMemory>;

    fn memory(&self) -> &Arc<CoreMemory> {
        &self.core
    }

    fn reader_memory(&self) -> Arc<CoreMemory> {
        Arc::clone(&self.core)
    }

    fn pid(&self) -> u32 {
        match self.core.process_info() {
            Some((pid, _)) if pid != 0 => pid,
            _ => self.core.threads().first().map_or(0, |t| t.tid),
        }
    }

    fn describe(&self) -> String {
        format!("core file {}", self.path.display())
    }

    fn command_line(&self) -> String {
        let args = self.core.process_info().map(|(_, a)| a.to_string());
        let what = args
            .filter(|a| !a.is_empty())
            .or_else(|| self.exe.clone())
            .unwrap_or_else(|| "?".into());
        format!("{what} (core file {})", self.path.display())
    }

    fn executable(&self) -> Option<String> {
        self.exe.clone()
    }

    fn arch(&self) -> &'static Arch {
        self.core.arch()
    }

    fn page_size(&self) -> u64 {
        self.core.arch().page_size
    }

    fn maps(&self) -> Result<Vec<MapRange>, TargetError> {
        Ok(self.maps.clone())
    }

    fn vdso_address(&self) -> Option<u64> {
        self.core.vdso_address()
    }

    fn open_image(&self, map: &MapRange) -> Option<PathBuf> {
        if map.deleted {
            return None;
        }
        host_path(&self.opts, self.exe.as_deref(), map.path.as_deref()?)
    }

    fn threads(&mut self, _states: bool) -> Result<Vec<ThreadInfo>, TargetError> {
        Ok(self
            .core
            .threads()
            .iter()
            .map(|t| ThreadInfo::new(t.tid, ThreadState::Unknown))
            .collect())
    }

    fn thread_name(&self, _tid: u32) -> Option<String> {
        None
    }

    fn registers(&self, tid: u32) -> Result<Registers, TargetError> {
        self.core
            .threads()
            .iter()
            .find(|t| t.tid == tid)
            .map(|t| t.regs)
            .ok_or_else(|| TargetError::CoreMissing {
                path: self.path.clone(),
                cause: format!("no registers of thread {tid}"),
            })
    }

    fn pause(&self, _tids: &[u32]) -> Result<Paused, TargetError> {
        Ok(Paused::Nothing)
    }

    fn classify(&self, e: PyError) -> TargetError {
        if let Some(fact) = python_fact(&e) {
            return fact;
        }
        let missing = self.core.missing_bytes();
        match is_read_failure(&e) {
            Some(m) if missing > 0 => TargetError::TruncatedCore {
                path: self.path.clone(),
                missing,
                cause: format!("cannot read the Python interpreter's data: {m}"),
            },
            Some(m) => TargetError::CoreMissing {
                path: self.path.clone(),
                cause: format!(
                    "the Python interpreter's data is not in it ({m}; the writer left that memory out)"
                ),
            },
            None => TargetError::Python(e),
        }
    }
}
