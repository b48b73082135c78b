//! The one place that opens an output path: checked before recording, written once the
//! profile is complete.
//!
//! - A regular file, new or existing, is written to a temporary file in its own directory
//!   and renamed over it once complete, so a failed or empty run leaves an earlier profile
//!   intact. Through a symlink, "its own directory" is the target's: the link stays a link.
//! - A character device or a FIFO (`/dev/null`, a terminal, `mkfifo` for a reader) is
//!   written in place: renaming a file over it would replace the node itself. It is opened
//!   only once the profile is ready, since opening a FIFO waits for a reader and the
//!   recording must not.
//! - A directory, a block device or a socket is refused before recording starts.
//!
//! The check creates nothing that could be left behind: a new file's directory is tested
//! with an unnamed file (`O_TMPFILE`) that vanishes on close, even if prof is killed (on a
//! filesystem without `O_TMPFILE`, with a named file removed at once).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Format, OutputError};
use crate::profile::Profile;

/// An output path that passed the check of [`OutputPath::check`].
#[derive(Debug)]
pub struct OutputPath {
    /// The path as given, for messages and for nodes written in place.
    path: PathBuf,
    dest: Dest,
}

#[derive(Debug, PartialEq)]
enum Dest {
    /// A regular file (to be): the real path the finished profile is renamed to.
    Replace(PathBuf),
    /// A character device, a FIFO, an open file of `/proc/PID/fd`, or a file in a directory
    /// prof may not create files in: opened and written.
    InPlace,
}

/// Symlinks followed when looking for the file a dangling link names (the kernel's limit).
const MAX_LINKS: usize = 40;

impl OutputPath {
    /// Check that `path` can be written, before any recording: nothing is created,
    /// truncated or opened that a reader could notice.
    pub fn check(path: &Path) -> Result<OutputPath> {
        let cannot = || format!("cannot write {}", path.display());
        let dest = match fs::metadata(path) {
            Ok(meta) => {
                let kind = meta.file_type();
                if kind.is_file() {
                    match fs::canonicalize(path) {
                        // A /proc magic link (`/dev/stdout` on a deleted file, say) names an
                        // open file, not a place to rename to.
                        Ok(real) if !real.starts_with("/proc") => {
                            OpenOptions::new()
                                .append(true)
                                .open(&real)
                                .with_context(cannot)?;
                            match check_directory(parent(&real)) {
                                Ok(()) => Dest::Replace(real),
                                // A file the user may write in a directory they may not:
                                // written in place, as it cannot be replaced.
                                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                                    Dest::InPlace
                                }
                                Err(e) => return Err(e).with_context(cannot),
                            }
                        }
                        _ => {
                            OpenOptions::new()
                                .append(true)
                                .open(path)
                                .with_context(cannot)?;
                            Dest::InPlace
                        }
                    }
                } else if kind.is_char_device() || kind.is_fifo() {
                    // Opening would block on a FIFO and can have effects on a device.
                    writable(path).with_context(cannot)?;
                    Dest::InPlace
                } else {
                    let what = if kind.is_dir() {
                        "a directory"
                    } else if kind.is_block_device() {
                        "a block device"
                    } else if kind.is_socket() {
                        "a socket"
                    } else {
                        "not a file"
                    };
                    bail!(
                        "cannot write {}: it is {what} (give a file, a FIFO or a character device)",
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // `out/` names a directory, and `Path` would drop the slash.
                if path.file_name().is_none() || path.as_os_str().as_bytes().ends_with(b"/") {
                    bail!("cannot write {}: not a file name", path.display());
                }
                let file = link_target(path).with_context(cannot)?;
                check_directory(parent(&file)).with_context(cannot)?;
                Dest::Replace(file)
            }
            Err(e) => return Err(e).with_context(cannot),
        };
        Ok(OutputPath {
            path: path.to_path_buf(),
            dest,
        })
    }

    /// Write `profile` in `format`. A profile with no samples comes back as
    /// [`OutputError::NoSamples`] (inside the error), and a file is then left as it was.
    pub fn write(&self, format: Format, profile: &Profile) -> Result<()> {
        self.write_with(&|out| super::write(format, profile, out))
    }

    /// Write what `draw` writes, as [`OutputPath::write`] writes a profile (for outputs
    /// that are no single profile, as `prof diff`'s flame graph).
    pub fn write_with(&self, draw: &dyn Fn(&mut dyn Write) -> super::Result<()>) -> Result<()> {
        let cannot = || format!("cannot write {}", self.path.display());
        match &self.dest {
            Dest::InPlace => {
                let mut out = OpenOnWrite {
                    path: &self.path,
                    file: None,
                };
                render(draw, &mut out).with_context(cannot)?;
                let file = match out.file.take() {
                    Some(f) => f,
                    // An empty profile in a format that writes nothing still truncates.
                    None => out.open().with_context(cannot)?,
                };
                file.sync_data()
                    .or_else(ignore_unsupported)
                    .with_context(cannot)
            }
            Dest::Replace(real) => {
                let name = real
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = real.with_file_name(format!(".{name}.prof-{}.tmp", std::process::id()));
                let result = (|| -> Result<()> {
                    let mut file = File::create(&tmp)
                        .with_context(|| format!("cannot write {}", tmp.display()))?;
                    render(draw, &mut file).with_context(cannot)?;
                    // Complete on disk before it takes the old file's place.
                    file.sync_data()
                        .or_else(ignore_unsupported)
                        .with_context(cannot)?;
                    fs::rename(&tmp, real).with_context(cannot)
                })();
                if result.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                result
            }
        }
    }
}

/// Write the profile through a buffer; I/O errors come back as themselves, so the cause
/// is not said twice, and [`OutputError::NoSamples`] as itself for the caller to tell.
fn render(draw: &dyn Fn(&mut dyn Write) -> super::Result<()>, out: &mut dyn Write) -> Result<()> {
    let mut out = BufWriter::new(out);
    match draw(&mut out) {
        Ok(()) => {}
        Err(OutputError::Io(e)) => return Err(e.into()),
        Err(OutputError::Json(e)) if e.io_error_kind().is_some() => {
            return Err(io::Error::from(e).into());
        }
        Err(e) => return Err(e.into()),
    }
    out.flush()?;
    Ok(())
}

/// A node written in place, opened by the first write: a FIFO's reader is not woken, nor
/// a device touched, for a profile that turns out to have nothing to write.
struct OpenOnWrite<'p> {
    path: &'p Path,
    file: Option<File>,
}

impl OpenOnWrite<'_> {
    fn open(&self) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path)
    }
}

impl Write for OpenOnWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            self.file = Some(self.open()?);
        }
        self.file.as_mut().expect("opened above").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

/// `fsync` is not offered by every file (pipes, some devices): that is no write error.
fn ignore_unsupported(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::EROFS) | Some(libc::ENOTSUP) => Ok(()),
        _ => Err(e),
    }
}

/// The directory a file is (to be) in.
fn parent(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The file a new path names: the path itself, or the end of the chain of a dangling
/// symlink, which is where the profile goes (as a shell's `>` would put it).
fn link_target(path: &Path) -> io::Result<PathBuf> {
    let mut file = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::read_link(&file) {
            Ok(to) if to.is_absolute() => file = to,
            Ok(to) => file = parent(&file).join(to),
            Err(_) => return Ok(file),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// Whether a file can be created in `dir`, found out by creating one that has no name.
fn check_directory(dir: &Path) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a plain open(2) of a NUL-terminated path; the fd is closed right away.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd >= 0 {
        // SAFETY: fd is ours and open.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // No O_TMPFILE on this filesystem (EISDIR from kernels that predate it): a named
        // probe, removed at once, is the next best thing.
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) => {
            let probe = dir.join(format!(".prof-check-{}.tmp", std::process::id()));
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)?;
            fs::remove_file(&probe)
        }
        _ => Err(err),
    }
}

/// Whether the caller may write `path`, without opening it.
fn writable(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: access(2) only reads the NUL-terminated path.
    if unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn new_files_are_checked_without_being_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let out = OutputPath::check(&path).unwrap();
        assert_eq!(out.dest, Dest::Replace(path.clone()));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left");
        let err = OutputPath::check(&dir.path().join("no/such/dir/p.svg")).unwrap_err();
        assert!(format!("{err:#}").starts_with("cannot write "), "{err:#}");
        for name in ["", "new-dir/"] {
            let err = format!("{:#}", OutputPath::check(Path::new(name)).unwrap_err());
            assert!(err.ends_with("not a file name"), "{err}");
        }
    }

    #[test]
    fn symlinks_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.txt");
        fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.txt");
        symlink("real.txt", &link).unwrap();
        assert_eq!(
            OutputPath::check(&link).unwrap().dest,
            Dest::Replace(fs::canonicalize(&real).unwrap())
        );
        // A dangling link names the file to create.
        let dangling = dir.path().join("dangling.txt");
        symlink("sub/new.txt", &dangling).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(
            OutputPath::check(&dangling).unwrap().dest,
            Dest::Replace(dir.path().join("sub/new.txt"))
        );
        let looped = dir.path().join("loop");
        symlink("loop", &looped).unwrap();
        assert!(OutputPath::check(&looped).is_err());
    }

    #[test]
    fn nodes_are_written_in_place_or_refused() {
        let out = OutputPath::check(Path::new("/dev/null")).unwrap();
        assert_eq!(out.dest, Dest::InPlace);
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", OutputPath::check(dir.path()).unwrap_err());
        assert!(err.contains("is a directory"), "{err}");
    }
}
