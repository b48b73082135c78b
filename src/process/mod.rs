//! The target layer: memory, maps, threads and stopping a live process.

pub mod core;
pub mod events;
pub mod keeper;
pub mod limits;
pub mod maps;
pub mod memory;
pub mod ptrace;
pub mod regs;
pub mod spawn;
pub mod threads;

pub use core::{CoreError, CoreMemory, CoreThread};
pub use maps::{MapRange, read_maps};
pub use memory::{ImageMemory, LiveMemory, MemResult, Memory, MemoryError, MemoryExt, Overlay};

use thiserror::Error;

/// Why a process cannot be examined.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// No such process.
    #[error("no process with pid {0}")]
    NotFound(u32),
    /// The kernel refuses access; the message says which setting to change.
    #[error("permission denied for pid {pid}: {advice}")]
    Permission {
        /// The target.
        pid: u32,
        /// What the user can do about it.
        advice: String,
    },
    /// The process exited while we looked at it.
    #[error("process {0} exited")]
    Exited(u32),
    /// A kernel thread: it runs no program, so it has no memory or stack to read.
    #[error("pid {0} is a kernel thread, not a program: it has no user-space stack to read")]
    KernelThread(u32),
    /// prof's own pid, where a stop is needed: the kernel never lets a process ptrace itself.
    #[error(
        "pid {0} is prof itself: a process cannot ptrace (stop) its own threads, so it cannot read its own native stacks"
    )]
    Itself(u32),
    /// A ptrace stop or register read failed for another reason than the ones above.
    #[error("cannot stop or read the registers of pid {pid}: {msg}")]
    Ptrace {
        /// The target.
        pid: u32,
        /// What the kernel said.
        msg: String,
    },
    /// Anything else the kernel said.
    #[error("cannot read /proc for pid {pid}: {msg}")]
    Other {
        /// The target.
        pid: u32,
        /// The error.
        msg: String,
    },
}

impl ProcessError {
    pub(crate) fn from_proc(pid: u32, e: procfs::ProcError) -> ProcessError {
        match e {
            procfs::ProcError::NotFound(_) => {
                if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    ProcessError::Exited(pid)
                } else {
                    ProcessError::NotFound(pid)
                }
            }
            procfs::ProcError::PermissionDenied(_) => permission_error(pid),
            e => ProcessError::Other {
                pid,
                msg: e.to_string(),
            },
        }
    }
}

/// Build the permission error with the advice that applies on this machine.
pub fn permission_error(pid: u32) -> ProcessError {
    ProcessError::Permission {
        pid,
        advice: permission_advice(pid),
    }
}

/// `PF_EXITING`: the process has begun to exit (its memory may already be gone).
const PF_EXITING: u64 = 0x4;
/// `PF_KTHREAD`: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Is `pid` a kernel thread? (Its `stat` flags are readable whoever owns it.)
pub fn is_kernel_thread(pid: u32) -> bool {
    threads::process_flags(pid).is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Has the process exited, or begun to? Decided from its state and the kernel's flags,
/// which anyone may read, never from a failed read (which may be a refusal).
pub fn is_exiting(pid: u32) -> bool {
    !is_alive(pid) || threads::process_flags(pid).is_none_or(|f| f & PF_EXITING != 0)
}

/// The pid tracing `pid`, if another process is (only one tracer is allowed).
fn tracer_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse::<u32>()
        .ok()?;
    (tracer != 0 && tracer != std::process::id()).then_some(tracer)
}

fn has_cap_sys_ptrace() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 19) != 0)
}

fn in_container() -> bool {
    std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
        || std::fs::read_to_string("/proc/1/cgroup").is_ok_and(|s| {
            s.contains("docker") || s.contains("kubepods") || s.contains("containerd")
        })
}

/// Explain, for this machine, why reading another process may be refused.
pub fn permission_advice(pid: u32) -> String {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let cap = has_cap_sys_ptrace();
    let target_uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| {
                    v.split_whitespace()
                        .nth(1)
                        .and_then(|u| u.parse::<u32>().ok())
                })
        });
    let me = unsafe { libc::geteuid() };
    let container = !cap && in_container();
    // Another user's process needs CAP_SYS_PTRACE whatever ptrace_scope says; in a container
    // even root lacks it unless the container was given it.
    if let Some(uid) = target_uid
        && uid != me
        && !cap
    {
        let how = if container {
            "run prof as that user, or as root in a container started with `--cap-add SYS_PTRACE`"
        } else {
            "run prof as that user or with sudo (CAP_SYS_PTRACE)"
        };
        return format!("the process belongs to uid {uid} and you are uid {me}: {how}");
    }
    if let Some(tracer) = tracer_of(pid) {
        let name = threads::thread_comm(tracer, tracer).unwrap_or_else(|| "?".into());
        return format!(
            "it is already being traced by pid {tracer} ({name}), and a process can have only one tracer: detach that first"
        );
    }
    if container {
        return "prof needs CAP_SYS_PTRACE inside a container: run the container with \
                `--cap-add SYS_PTRACE` (docker/podman) or add SYS_PTRACE to the pod's securityContext"
            .to_string();
    }
    match scope {
        Some(3) => "kernel.yama.ptrace_scope is 3 (attaching disabled until reboot)".to_string(),
        Some(2) if !cap => {
            "kernel.yama.ptrace_scope is 2: only root (CAP_SYS_PTRACE) may attach; run prof with sudo"
                .to_string()
        }
        Some(1) if !cap => "kernel.yama.ptrace_scope is 1: run prof with sudo, launch the program \
                            through prof (`prof record -- python app.py`), or set \
                            `sysctl kernel.yama.ptrace_scope=0`"
            .to_string(),
        _ if !cap => "run prof with sudo (CAP_SYS_PTRACE)".to_string(),
        _ => "the kernel refused access even with CAP_SYS_PTRACE (a security module such as \
              SELinux or AppArmor may block ptrace)"
            .to_string(),
    }
}

/// The auxiliary vector's `(AT_*, value)` pairs from its raw bytes (`/proc/PID/auxv`, or a
/// core's `NT_AUXV` note); both architectures prof reads are 64-bit little-endian.
pub fn parse_auxv(raw: &[u8]) -> Vec<(u64, u64)> {
    raw.chunks_exact(16)
        .map(|e| (memory::le_u64(e, 0), memory::le_u64(e, 8)))
        .collect()
}

/// Where the kernel mapped the vdso of live process `pid` (`AT_SYSINFO_EHDR`).
pub fn vdso_address(pid: u32) -> Option<u64> {
    let raw = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    parse_auxv(&raw)
        .into_iter()
        .find(|e| e.0 == libc::AT_SYSINFO_EHDR)
        .map(|e| e.1)
        .filter(|&a| a != 0)
}

/// The command line of a process, for messages and titles.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(" "))
    }
}

/// Is the process still there (and not a zombie)?
pub fn is_alive(pid: u32) -> bool {
    match threads::process_state(pid) {
        Some(state) => state != 'Z' && state != 'X',
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_vdso_from_auxv_matches_the_c_library() {
        // SAFETY: getauxval only reads the process's own auxiliary vector.
        let libc_says = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        assert_eq!(
            vdso_address(std::process::id()),
            (libc_says != 0).then_some(libc_says)
        );
        let raw = std::fs::read("/proc/self/auxv").unwrap();
        let pairs = parse_auxv(&raw);
        // SAFETY: as above.
        let page = unsafe { libc::getauxval(libc::AT_PAGESZ) };
        assert!(pairs.contains(&(libc::AT_PAGESZ, page)), "{pairs:?}");
    }
}
