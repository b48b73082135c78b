//! Why a target cannot be read: one error type, classified where the failure happens, so
//! commands match on it instead of downcasting or re-checking `/proc` after the fact.

use std::path::PathBuf;

use thiserror::Error;

use crate::process::{CoreError, MemoryError, ProcessError};
use crate::python::{LayoutError, PyError};

/// Why a target (a live process or a core file) cannot be read.
#[derive(Debug, Error)]
pub enum TargetError {
    /// What the operating system said about a live process: not found, exited,
    /// permission (with its advice), a kernel thread, prof itself, a failed ptrace stop.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// No Python interpreter in the target (the text names what was looked at).
    #[error("{0}")]
    NotPython(String),
    /// An interpreter prof cannot read: its version is unsupported or unknown.
    #[error("{0}")]
    UnsupportedVersion(String),
    /// The core file cannot be opened or parsed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A core file shorter than its own headers say, missing what prof needed.
    #[error("core file {path} is truncated ({missing} bytes of its memory are missing): {cause}")]
    TruncatedCore {
        /// The core file.
        path: PathBuf,
        /// Bytes the segments' headers promise that the file does not hold.
        missing: u64,
        /// The read that failed.
        cause: String,
    },
    /// A core file that does not hold what prof needed (the text says what).
    #[error("core file {path}: {cause}")]
    CoreMissing {
        /// The core file.
        path: PathBuf,
        /// What could not be read.
        cause: String,
    },
    /// The interpreter's data could not be read or made sense of.
    #[error(transparent)]
    Python(PyError),
}

impl TargetError {
    /// Has the target no Python interpreter?
    pub fn is_not_python(&self) -> bool {
        matches!(self, TargetError::NotPython(_))
    }

    /// Did the process exit, or never exist?
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            TargetError::Process(ProcessError::Exited(_) | ProcessError::NotFound(_))
        )
    }

    /// Is this a fact about the pid rather than a symptom of an exit (a failed read of an
    /// exiting process looks like a refusal or garbage)?
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            TargetError::Process(
                ProcessError::NotFound(_) | ProcessError::KernelThread(_) | ProcessError::Itself(_)
            )
        )
    }
}

/// The reader's errors that say what the target is, whatever kind of target it is; None
/// for the others (memory reads, inconsistent data), which each target classifies.
pub(crate) fn python_fact(e: &PyError) -> Option<TargetError> {
    match e {
        PyError::NotPython(what) => Some(TargetError::NotPython(what.clone())),
        PyError::UnknownVersion(_) | PyError::Layout(LayoutError::Unsupported(_)) => {
            Some(TargetError::UnsupportedVersion(e.to_string()))
        }
        _ => None,
    }
}

/// Is this a failed read (rather than data that made no sense)?
pub(crate) fn is_read_failure(e: &PyError) -> Option<&MemoryError> {
    match e {
        PyError::Memory(m) => Some(m),
        _ => None,
    }
}
