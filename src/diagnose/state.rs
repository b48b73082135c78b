//! What a thread is doing at one instant, from the interpreter's GIL facts and the
//! kernel's view of the thread (`/proc/PID/task/TID/syscall`): pure decisions, no I/O.

use std::sync::Arc;

use serde::Serialize;

use crate::arch::ArchKind;

/// The state of one thread in one sample. The names are part of `prof diagnose --json`:
/// keep them stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// On CPU (or runnable), holding the GIL; on a free-threaded build, on CPU.
    Python,
    /// On CPU (or runnable) without the GIL: C code that released it.
    Native,
    /// Waiting to take the GIL.
    Gil,
    /// Blocked in a system call on a socket, pipe, terminal or file.
    Io,
    /// Blocked on any other futex: locks, conditions, queues, semaphores.
    Lock,
    /// Sleeping on purpose (`time.sleep`).
    Sleep,
    /// Waiting for a child process.
    Child,
    /// Anything else: counted, never guessed.
    Other,
}

impl State {
    /// Every state, in the order reports list them.
    pub const ALL: [State; 8] = [
        State::Python,
        State::Native,
        State::Gil,
        State::Io,
        State::Lock,
        State::Sleep,
        State::Child,
        State::Other,
    ];

    /// The state's name, as in the JSON and the text reports.
    pub fn name(self) -> &'static str {
        match self {
            State::Python => "python",
            State::Native => "native",
            State::Gil => "gil",
            State::Io => "io",
            State::Lock => "lock",
            State::Sleep => "sleep",
            State::Child => "child",
            State::Other => "other",
        }
    }

    /// Position in [`State::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What kind of file a blocked thread waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FdKind {
    /// A network or unix socket.
    Socket,
    /// A pipe or FIFO.
    Pipe,
    /// A terminal.
    Tty,
    /// A regular file or device.
    File,
    /// An event object of the kernel (epoll, eventfd, signalfd, timerfd).
    Event,
}

impl FdKind {
    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            FdKind::Socket => "socket",
            FdKind::Pipe => "pipe",
            FdKind::Tty => "tty",
            FdKind::File => "file",
            FdKind::Event => "event",
        }
    }
}

/// The system call an `io` wait is in, by what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// read, readv, pread.
    Read,
    /// write, writev, pwrite.
    Write,
    /// recvfrom, recvmsg, recvmmsg.
    Recv,
    /// sendto, sendmsg.
    Send,
    /// accept, accept4.
    Accept,
    /// connect.
    Connect,
    /// poll, ppoll.
    Poll,
    /// select, pselect6 (with descriptors).
    Select,
    /// epoll_wait and its variants: an event loop waiting.
    Epoll,
}

impl IoOp {
    /// The verb reports use.
    pub fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Recv => "recv",
            IoOp::Send => "send",
            IoOp::Accept => "accept",
            IoOp::Connect => "connect",
            IoOp::Poll => "poll",
            IoOp::Select => "select",
            IoOp::Epoll => "epoll_wait",
        }
    }
}

/// A thread's state with what it is waiting on, where that is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThreadState {
    /// The state.
    pub state: State,
    /// For `io`: the call, and the descriptor's kind and peer when found.
    pub io: Option<IoWait>,
    /// For `lock`: the futex's address (one address is one lock).
    pub futex: Option<u64>,
}

impl ThreadState {
    /// A state with no detail.
    pub fn plain(state: State) -> ThreadState {
        ThreadState {
            state,
            io: None,
            futex: None,
        }
    }

    /// The pseudo-frame `record --states` puts at a stack's root: `[lock]`, `[io socket]`.
    pub fn frame_label(&self) -> String {
        match self.io.as_ref().and_then(|io| io.kind) {
            Some(kind) => format!("[{} {}]", self.state.name(), kind.name()),
            None => format!("[{}]", self.state.name()),
        }
    }

    /// The word `prof dump` shows: the state, and for `io` the call, fd kind and peer
    /// (`io recv socket 127.0.0.1:5432`).
    pub fn describe(&self) -> String {
        let mut s = self.state.name().to_string();
        if let Some(io) = &self.io {
            s.push(' ');
            s.push_str(io.op.name());
            if let Some(kind) = io.kind {
                s.push(' ');
                s.push_str(kind.name());
            }
            if let Some(peer) = &io.peer {
                s.push(' ');
                s.push_str(peer);
            }
        }
        s
    }
}

/// What an `io` wait waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IoWait {
    /// The call.
    pub op: IoOp,
    /// The descriptor, when the call names one.
    pub fd: Option<i32>,
    /// The descriptor's kind, when it could be read.
    pub kind: Option<FdKind>,
    /// For a socket, its peer (`127.0.0.1:5432`, `unix:/run/x.sock`), when known.
    pub peer: Option<Arc<str>>,
}

/// `/proc/PID/task/TID/syscall`: `running`, or the blocking call's number and arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// Runnable or on CPU (not inside a blocking call).
    Running,
    /// Blocked in call `nr` with these arguments.
    Blocked {
        /// The call's number (the architecture's own numbering).
        nr: u64,
        /// Its six arguments.
        args: [u64; 6],
    },
}

/// Parse the content of a `syscall` file; None when it is neither form (a thread in a
/// state the kernel prints as `-1 sp pc`: not in a call, and not running either).
pub fn parse_syscall(text: &[u8]) -> Option<Syscall> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if text == "running" {
        return Some(Syscall::Running);
    }
    let mut words = text.split_ascii_whitespace();
    let nr: u64 = words.next()?.parse().ok()?;
    let mut args = [0u64; 6];
    for a in &mut args {
        let w = words.next()?;
        *a = u64::from_str_radix(w.strip_prefix("0x")?, 16).ok()?;
    }
    Some(Syscall::Blocked { nr, args })
}

/// How a thread waits, decided from its blocking call alone; descriptors still to be
/// resolved against `/proc` (and poll/select arrays against the target's memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// On the GIL's condition variable or mutex.
    Gil,
    /// On another futex, at this address.
    Lock(u64),
    /// Sleeping.
    Sleep,
    /// Waiting for a child.
    Child,
    /// In an I/O call on these descriptors.
    Io(IoOp, Fds),
    /// Something else.
    Other,
}

/// Where an I/O call's descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fds {
    /// The call's first argument.
    Fd(i32),
    /// A `struct pollfd` array of `n` entries at `addr` in the target.
    Poll {
        /// The array's address.
        addr: u64,
        /// Its length.
        n: u64,
    },
    /// `select`'s read, write and except sets (0: none) for descriptors below `nfds`.
    Select {
        /// One more than the highest descriptor.
        nfds: u64,
        /// The three `fd_set` addresses.
        sets: [u64; 3],
    },
}

/// Calls prof tells apart, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Futex,
    Sleep,
    Select,
    Poll,
    Epoll,
    Io(IoOp),
    Wait,
}

/// The calls by number on x86_64.
const X86_64: &[(u64, Call)] = &[
    (0, Call::Io(IoOp::Read)),
    (1, Call::Io(IoOp::Write)),
    (7, Call::Poll),
    (17, Call::Io(IoOp::Read)),
    (18, Call::Io(IoOp::Write)),
    (19, Call::Io(IoOp::Read)),
    (20, Call::Io(IoOp::Write)),
    (23, Call::Select),
    (34, Call::Sleep), // pause
    (35, Call::Sleep),
    (42, Call::Io(IoOp::Connect)),
    (43, Call::Io(IoOp::Accept)),
    (44, Call::Io(IoOp::Send)),
    (45, Call::Io(IoOp::Recv)),
    (46, Call::Io(IoOp::Send)),
    (47, Call::Io(IoOp::Recv)),
    (61, Call::Wait),
    (202, Call::Futex),
    (230, Call::Sleep),
    (232, Call::Epoll),
    (247, Call::Wait),
    (270, Call::Select),
    (271, Call::Poll),
    (281, Call::Epoll),
    (288, Call::Io(IoOp::Accept)),
    (295, Call::Io(IoOp::Read)),
    (296, Call::Io(IoOp::Write)),
    (299, Call::Io(IoOp::Recv)),
    (307, Call::Io(IoOp::Send)),
    (441, Call::Epoll),
];

/// The calls by number on aarch64 (the generic table: no select, poll or epoll_wait).
const AARCH64: &[(u64, Call)] = &[
    (22, Call::Epoll),
    (63, Call::Io(IoOp::Read)),
    (64, Call::Io(IoOp::Write)),
    (65, Call::Io(IoOp::Read)),
    (66, Call::Io(IoOp::Write)),
    (67, Call::Io(IoOp::Read)),
    (68, Call::Io(IoOp::Write)),
    (69, Call::Io(IoOp::Read)),
    (70, Call::Io(IoOp::Write)),
    (72, Call::Select),
    (73, Call::Poll),
    (95, Call::Wait),
    (98, Call::Futex),
    (101, Call::Sleep),
    (115, Call::Sleep),
    (202, Call::Io(IoOp::Accept)),
    (203, Call::Io(IoOp::Connect)),
    (206, Call::Io(IoOp::Send)),
    (207, Call::Io(IoOp::Recv)),
    (211, Call::Io(IoOp::Send)),
    (212, Call::Io(IoOp::Recv)),
    (242, Call::Io(IoOp::Accept)),
    (243, Call::Io(IoOp::Recv)),
    (260, Call::Wait),
    (269, Call::Io(IoOp::Send)),
    (441, Call::Epoll),
];

/// The span of a `struct _gil_runtime_state` whose futex words mean "waiting for the GIL":
/// `cond`, `mutex`, `switch_cond` and `switch_mutex` follow three words and an int. The
/// futex inside the condition variable moves with glibc's version (+40 with 2.36, +32 with
/// 2.43), so the whole span is matched. aarch64's mutexes are 8 bytes bigger.
pub fn gil_span(arch: ArchKind) -> (u64, u64) {
    match arch {
        ArchKind::X86_64 => (32, 208),
        ArchKind::Aarch64 => (32, 224),
    }
}

/// How a thread blocked in call `nr` with `args` waits; `gil` is the address of the GIL
/// state in use, when known. Only the futex's address tells a GIL wait from a timed lock
/// wait (on 3.9+ both are `FUTEX_WAIT_BITSET` with a timeout).
pub fn classify_wait(arch: ArchKind, nr: u64, args: [u64; 6], gil: Option<u64>) -> Wait {
    let table = match arch {
        ArchKind::X86_64 => X86_64,
        ArchKind::Aarch64 => AARCH64,
    };
    let Some(call) = table.iter().find(|c| c.0 == nr).map(|c| c.1) else {
        return Wait::Other;
    };
    let fd = Fds::Fd(args[0] as i32);
    match call {
        Call::Futex => {
            let (lo, hi) = gil_span(arch);
            match gil {
                Some(g) if args[0] >= g.wrapping_add(lo) && args[0] < g.wrapping_add(hi) => {
                    Wait::Gil
                }
                _ => Wait::Lock(args[0]),
            }
        }
        Call::Sleep => Wait::Sleep,
        Call::Wait => Wait::Child,
        // `time.sleep` on 3.10 and older: select with no descriptors.
        Call::Select if args[0] == 0 || args[1..4].iter().all(|s| *s == 0) => Wait::Sleep,
        Call::Select => Wait::Io(
            IoOp::Select,
            Fds::Select {
                nfds: args[0],
                sets: [args[1], args[2], args[3]],
            },
        ),
        Call::Poll if args[1] == 0 => Wait::Sleep,
        Call::Poll => Wait::Io(
            IoOp::Poll,
            Fds::Poll {
                addr: args[0],
                n: args[1],
            },
        ),
        Call::Epoll => Wait::Io(IoOp::Epoll, fd),
        Call::Io(op) => Wait::Io(op, fd),
    }
}

/// The state of a thread that is not blocked (running, or runnable and waiting for a CPU,
/// which counts as the state it would run in).
pub fn on_cpu(holds_gil: bool, gil_requested: bool, free_threaded: bool) -> State {
    if free_threaded || holds_gil {
        State::Python
    } else if gil_requested {
        // 3.15+: spinning in take_gil, between two waits on its condition variable.
        State::Gil
    } else {
        State::Native
    }
}

/// The kind of a descriptor from its `/proc/PID/fd/N` link.
pub fn fd_kind(link: &str) -> FdKind {
    if link.starts_with("socket:") {
        FdKind::Socket
    } else if link.starts_with("pipe:") {
        FdKind::Pipe
    } else if link.starts_with("anon_inode:") {
        FdKind::Event
    } else if link.starts_with("/dev/pts/")
        || link.starts_with("/dev/tty")
        || link == "/dev/console"
        || link == "/dev/ptmx"
    {
        FdKind::Tty
    } else {
        FdKind::File
    }
}

/// A pidfd (`anon_inode:[pidfd]`): polling it is waiting for a child (3.15's
/// `Popen.wait(timeout=)`).
pub fn is_pidfd(link: &str) -> bool {
    link == "anon_inode:[pidfd]"
}

/// The lowest descriptor below `nfds` set in one `fd_set` bitmap, given as its first
/// 64-bit words (as read from the target).
pub fn lowest_in_fd_set(nfds: u64, words: &[u64]) -> Option<i32> {
    words
        .iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| i as u64 * 64 + w.trailing_zeros() as u64)
        .filter(|fd| *fd < nfds)
        .map(|fd| fd as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(line: &str) -> (u64, [u64; 6]) {
        match parse_syscall(line.as_bytes()) {
            Some(Syscall::Blocked { nr, args }) => (nr, args),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn wait(line: &str, gil: Option<u64>) -> Wait {
        let (nr, args) = blocked(line);
        classify_wait(ArchKind::X86_64, nr, args, gil)
    }

    // Lines read from /proc/PID/task/TID/syscall of pyenv 3.8.18 (glibc 2.36, GIL state at
    // _PyRuntime+1152 = 0x7f8765f73280) and Debian sid 3.14.10 (glibc 2.43, GIL state at
    // 0xbb88a8), each thread in the call its name says.
    const PY38_GIL: u64 = 0x7f87_65f7_3280;
    const PY314_GIL: u64 = 0xbb88a8;

    #[test]
    fn running_and_garbage() {
        assert_eq!(parse_syscall(b"running\n"), Some(Syscall::Running));
        assert_eq!(parse_syscall(b""), None);
        assert_eq!(parse_syscall(b"-1 0x7ffd 0x7f00\n"), None);
        assert_eq!(parse_syscall(b"202 0x1 0x2"), None);
        assert_eq!(parse_syscall(b"\xff\xfe"), None);
    }

    #[test]
    fn waits_on_3_8() {
        let gil = Some(PY38_GIL);
        // time.sleep and select with no descriptors: pselect6(0, NULL, NULL, NULL, &ts).
        let sleep = "270 0x0 0x0 0x0 0x0 0x7ffdcfdc6360 0x0 0x7ffdcfdc6350 0x7f8765b1c9ec";
        assert_eq!(wait(sleep, gil), Wait::Sleep);
        // Lock.acquire() and Lock.acquire(timeout=100) on a held lock: 0x189 either way.
        let lock = "202 0x55d359a72480 0x189 0x0 0x0 0x0 0xffffffff 0x7f8764ff0440 0x7f8765aa3f16";
        assert_eq!(wait(lock, gil), Wait::Lock(0x55d359a72480));
        let timed = "202 0x55d359a72480 0x189 0x0 0x7f875fffe490 0x0 0xffffffff 0x7f875fffe3e0 0x7f8765aa3f16";
        assert_eq!(wait(timed, gil), Wait::Lock(0x55d359a72480));
        // A spinning thread parked on the GIL's condition variable (cond+44 with glibc 2.36).
        let on_gil = "202 0x7f8765f732cc 0x89 0x0 0x7f875d7f9620 0x0 0xffffffff 0x7f875d7f9500 0x7f8765aa3f16";
        assert_eq!(wait(on_gil, gil), Wait::Gil);
        // Without the GIL's address the same wait cannot be told from a lock.
        assert_eq!(wait(on_gil, None), Wait::Lock(0x7f8765f732cc));
        let recv = "45 0x9 0x7f87658326b0 0xa 0x0 0x0 0x0 0x7f875effc530 0x7f8765b28974";
        assert_eq!(wait(recv, gil), Wait::Io(IoOp::Recv, Fds::Fd(9)));
        let pipe = "0 0x5 0x7f8765832ce0 0x1 0x800 0x0 0x0 0x7f875e7fb540 0x7f8765b162ec";
        assert_eq!(wait(pipe, gil), Wait::Io(IoOp::Read, Fds::Fd(5)));
        let popen =
            "61 0x34d2 0x7f875cff7d9c 0x0 0x0 0x0 0x7f8765f732c0 0x7f875cff7d60 0x7f8765af1c17";
        assert_eq!(wait(popen, gil), Wait::Child);
        let select = "270 0x8 0x7f873bff2400 0x7f873bff2480 0x7f873bff2500 0x7f873bff2350 0x0 0x7f873bff2340 0x7f8765b1c9ec";
        assert_eq!(
            wait(select, gil),
            Wait::Io(
                IoOp::Select,
                Fds::Select {
                    nfds: 8,
                    sets: [0x7f873bff2400, 0x7f873bff2480, 0x7f873bff2500]
                }
            )
        );
    }

    #[test]
    fn waits_on_3_14() {
        let gil = Some(PY314_GIL);
        let sleep = "230 0x1 0x1 0x7ffd33c24890 0x0 0x0 0x0 0x7ffd33c24828 0x7fdf51c30efe";
        assert_eq!(wait(sleep, gil), Wait::Sleep);
        let lock = "202 0x7fdf50ea74c0 0x189 0x0 0x0 0x0 0xffffffff 0x7fdf50ea73b8 0x7fdf51c30efe";
        assert_eq!(wait(lock, gil), Wait::Lock(0x7fdf50ea74c0));
        // A timed lock wait makes the very call a GIL wait makes; only the address differs.
        let timed = "202 0x7fdf4bffe4a0 0x89 0x0 0x7fdf4bffe460 0x0 0xffffffff 0x7fdf4bffe388 0x7fdf51c30efe";
        assert_eq!(wait(timed, gil), Wait::Lock(0x7fdf4bffe4a0));
        // The GIL's condition variable at cond+32 with glibc 2.43.
        let on_gil =
            "202 0xbb88e8 0x89 0x2f7 0x7fdf49ffa570 0x0 0xffffffff 0x7fdf49ffa418 0x7fdf51c30efe";
        assert_eq!(wait(on_gil, gil), Wait::Gil);
        let popen = "61 0x354b 0x7fdf48ff85dc 0x0 0x0 0x0 0x0 0x7fdf48ff8558 0x7fdf51c30efe";
        assert_eq!(wait(popen, gil), Wait::Child);
        let recv = "45 0x5 0x7fdf519a6c00 0xa 0x0 0x0 0x0 0x7fdf4affc468 0x7fdf51c30efe";
        assert_eq!(wait(recv, gil), Wait::Io(IoOp::Recv, Fds::Fd(5)));
    }

    #[test]
    fn gil_span_bounds() {
        let g = 0x1000;
        let at =
            |addr: u64| classify_wait(ArchKind::X86_64, 202, [addr, 0x89, 0, 0, 0, 0], Some(g));
        assert_eq!(at(g + 31), Wait::Lock(g + 31));
        assert_eq!(at(g + 32), Wait::Gil);
        assert_eq!(at(g + 207), Wait::Gil);
        assert_eq!(at(g + 208), Wait::Lock(g + 208));
        let arm =
            |addr: u64| classify_wait(ArchKind::Aarch64, 98, [addr, 0x89, 0, 0, 0, 0], Some(g));
        assert_eq!(arm(g + 220), Wait::Gil);
        // aarch64's numbers: clock_nanosleep, wait4, recvfrom; x86_64's futex is unknown there.
        assert_eq!(
            classify_wait(ArchKind::Aarch64, 115, [1, 1, 0, 0, 0, 0], None),
            Wait::Sleep
        );
        assert_eq!(
            classify_wait(ArchKind::Aarch64, 260, [0; 6], None),
            Wait::Child
        );
        assert_eq!(
            classify_wait(ArchKind::Aarch64, 207, [4, 0, 0, 0, 0, 0], None),
            Wait::Io(IoOp::Recv, Fds::Fd(4))
        );
        assert_eq!(
            classify_wait(ArchKind::Aarch64, 202, [4, 0, 0, 0, 0, 0], None),
            Wait::Io(IoOp::Accept, Fds::Fd(4))
        );
        assert_eq!(
            classify_wait(ArchKind::X86_64, 9999, [0; 6], None),
            Wait::Other
        );
    }

    #[test]
    fn on_cpu_states() {
        assert_eq!(on_cpu(true, false, false), State::Python);
        assert_eq!(on_cpu(false, false, false), State::Native);
        assert_eq!(on_cpu(false, true, false), State::Gil);
        assert_eq!(on_cpu(false, false, true), State::Python);
    }

    #[test]
    fn fd_kinds() {
        // Links read from /proc/PID/fd of the targets above.
        assert_eq!(fd_kind("socket:[862309]"), FdKind::Socket);
        assert_eq!(fd_kind("pipe:[861571]"), FdKind::Pipe);
        assert_eq!(fd_kind("/dev/pts/3"), FdKind::Tty);
        assert_eq!(fd_kind("/dev/null"), FdKind::File);
        assert_eq!(fd_kind("/tmp/vec/out.txt"), FdKind::File);
        assert_eq!(fd_kind("anon_inode:[eventpoll]"), FdKind::Event);
        assert!(is_pidfd("anon_inode:[pidfd]"));
        assert!(!is_pidfd("anon_inode:[eventpoll]"));
    }

    #[test]
    fn fd_sets() {
        assert_eq!(lowest_in_fd_set(8, &[0b1000_0000]), Some(7));
        assert_eq!(lowest_in_fd_set(8, &[0, 0]), None);
        assert_eq!(lowest_in_fd_set(70, &[0, 1 << 5]), Some(69));
        // A bit at or past nfds is not a descriptor select waits on.
        assert_eq!(lowest_in_fd_set(3, &[0b1000]), None);
    }

    #[test]
    fn describe_words() {
        let s = ThreadState {
            state: State::Io,
            io: Some(IoWait {
                op: IoOp::Recv,
                fd: Some(5),
                kind: Some(FdKind::Socket),
                peer: Some("127.0.0.1:5432".into()),
            }),
            futex: None,
        };
        assert_eq!(s.describe(), "io recv socket 127.0.0.1:5432");
        assert_eq!(s.frame_label(), "[io socket]");
        assert_eq!(ThreadState::plain(State::Lock).frame_label(), "[lock]");
        assert_eq!(ThreadState::plain(State::Gil).describe(), "gil");
    }
}
