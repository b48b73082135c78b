//! How the sampler learns that processes were born, replaced their program (exec) or
//! exited.
//!
//! As root, from the kernel's process events connector (netlink, `CN_IDX_PROC`): every
//! fork, exec and exit, as it happens. Without it (unprivileged, or in a nested pid
//! namespace, whose pids the connector does not speak), new processes are found by
//! listing `/proc` and reading the parent pid of the pids not seen before, as often as
//! that stays cheap; a child that is born and exits between two listings is missed. An
//! exec is also seen without the connector, by [`Image`]: a process's program image is
//! identified by its address space (see there), looked at on the sampler's liveness timer
//! and whenever a read fails.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::threads;

/// Something that happened to a process (pids are process ids, never thread ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `child` was seen for the first time, with `parent` as its parent.
    Fork {
        /// The parent's pid.
        parent: u32,
        /// The new process's pid.
        child: u32,
    },
    /// `pid` replaced its program.
    Exec {
        /// The process.
        pid: u32,
    },
    /// The main thread of `pid` exited.
    Exit {
        /// The process.
        pid: u32,
    },
}

// ---------------------------------------------------------------------------
// The kernel's process events connector

// The wire format (linux/netlink.h, linux/connector.h, linux/cn_proc.h), in host byte
// order: a netlink header, a connector header, then the payload.
const NLMSG_HDR: usize = 16;
const CN_HDR: usize = 20;
/// `nlmsg_type` of the connector's messages.
const NLMSG_DONE: u16 = 3;
/// Offsets in `struct proc_event`: `what`, `cpu`, `timestamp_ns`, then the event's data.
const EV_WHAT: usize = 0;
const EV_DATA: usize = 16;

/// One decoded connector message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Event(Event),
    /// The answer to a subscription (0, or an errno).
    Ack(u32),
    /// A thread's birth or death, or an event prof does not use.
    Other,
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The messages of one datagram from the connector, appended to `out`; anything
/// malformed ends the datagram.
fn parse_datagram(mut buf: &[u8], out: &mut Vec<Message>) {
    while buf.len() >= NLMSG_HDR {
        let Some(len) = ne_u32(buf, 0).map(|l| l as usize) else {
            return;
        };
        if len < NLMSG_HDR || len > buf.len() {
            return;
        }
        if ne_u16(buf, 4) == Some(NLMSG_DONE) {
            out.push(parse_cn(&buf[NLMSG_HDR..len]));
        }
        // Messages are padded to 4 bytes.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
}

/// One connector message (its header and a `struct proc_event`).
fn parse_cn(msg: &[u8]) -> Message {
    let (Some(idx), Some(val), Some(len)) = (ne_u32(msg, 0), ne_u32(msg, 4), ne_u16(msg, 16))
    else {
        return Message::Other;
    };
    if idx != libc::CN_IDX_PROC || val != libc::CN_VAL_PROC {
        return Message::Other;
    }
    let Some(ev) = msg.get(CN_HDR..CN_HDR + len as usize) else {
        return Message::Other;
    };
    let word = |i: usize| ne_u32(ev, EV_DATA + 4 * i);
    match ne_u32(ev, EV_WHAT) {
        Some(libc::PROC_EVENT_NONE) => word(0).map_or(Message::Other, Message::Ack),
        // parent_pid, parent_tgid, child_pid, child_tgid: a new thread has its creator's
        // tgid, and a thread's pid differs from its tgid.
        Some(libc::PROC_EVENT_FORK) => match (word(1), word(2), word(3)) {
            (Some(parent), Some(pid), Some(child)) if pid == child && parent != child => {
                Message::Event(Event::Fork { parent, child })
            }
            _ => Message::Other,
        },
        // process_pid, process_tgid: after an exec the thread that called it is the
        // process's only one, with the process's pid.
        Some(libc::PROC_EVENT_EXEC) => {
            word(1).map_or(Message::Other, |pid| Message::Event(Event::Exec { pid }))
        }
        Some(libc::PROC_EVENT_EXIT) => match (word(0), word(1)) {
            (Some(pid), Some(tgid)) if pid == tgid => Message::Event(Event::Exit { pid }),
            _ => Message::Other,
        },
        _ => Message::Other,
    }
}

/// A subscription request (`PROC_CN_MCAST_LISTEN` or `PROC_CN_MCAST_IGNORE`).
fn control_message(op: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + CN_HDR + 4);
    m.extend_from_slice(&((NLMSG_HDR + CN_HDR + 4) as u32).to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&std::process::id().to_ne_bytes());
    m.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // payload length
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&op.to_ne_bytes());
    m
}

/// A subscription to the kernel's process events (needs CAP_NET_ADMIN).
pub struct Connector {
    fd: OwnedFd,
    buf: Vec<u8>,
    msgs: Vec<Message>,
}

impl Connector {
    /// Subscribe. Fails without CAP_NET_ADMIN, on kernels without the connector, and in a
    /// nested pid namespace (the events carry the initial namespace's pids).
    pub fn open() -> io::Result<Connector> {
        if nested_pid_namespace() {
            return Err(io::Error::other("in a nested pid namespace"));
        }
        // SAFETY: plain syscalls on a socket this function owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::CN_IDX_PROC;
        // SAFETY: addr is a sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Every fork on the machine is a message: room for bursts between two ticks. Root
        // may go past the system's limit (SO_RCVBUFFORCE); otherwise whatever it allows.
        let size: libc::c_int = 4 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: an int option of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let mut c = Connector {
            fd,
            buf: vec![0; 8192],
            msgs: Vec::new(),
        };
        c.send(libc::PROC_CN_MCAST_LISTEN)?;
        // The kernel answers before send returns; an error there means no events.
        let mut events = Vec::new();
        if let Some(err) = c.drain(&mut events).1.filter(|e| *e != 0) {
            return Err(io::Error::from_raw_os_error(err as i32));
        }
        Ok(c)
    }

    fn send(&self, op: u32) -> io::Result<()> {
        let msg = control_message(op);
        // SAFETY: msg is a live buffer of the length passed. A netlink socket with no
        // address sends to the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Events received since the last call, appended to `out`. Returns whether some were
    /// lost (the socket's buffer overflowed), and the last subscription answer seen.
    fn drain(&mut self, out: &mut Vec<Event>) -> (bool, Option<u32>) {
        let (mut lost, mut ack) = (false, None);
        loop {
            // SAFETY: buf is a live buffer of the length passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        lost = true;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => break,
                }
            }
            if n == 0 {
                break;
            }
            self.msgs.clear();
            parse_datagram(&self.buf[..n as usize], &mut self.msgs);
            for m in &self.msgs {
                match *m {
                    Message::Event(e) => out.push(e),
                    Message::Ack(e) => ack = Some(e),
                    Message::Other => {}
                }
            }
        }
        (lost, ack)
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        // The kernel counts listeners and sends events while any is left: say goodbye.
        let _ = self.send(libc::PROC_CN_MCAST_IGNORE);
    }
}

/// Is prof in a pid namespace other than the initial one? (`NSpid` lists one pid per
/// level.)
fn nested_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|v| v.split_whitespace().count() > 1)
    })
}

// ---------------------------------------------------------------------------
// Listing /proc

/// Finds processes born since the last listing of `/proc`: only their stat files are
/// read, so a listing costs one directory read plus one file per new process.
#[derive(Default)]
pub struct PidScan {
    /// The pids of the last listing, sorted.
    seen: Vec<u32>,
    listing: Vec<u32>,
}

impl PidScan {
    /// A [`Event::Fork`] for each process not seen at the last call (every process at the
    /// first), in pid order. A pid freed and reused between two calls goes unnoticed.
    pub fn scan(&mut self, out: &mut Vec<Event>) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        self.listing.clear();
        self.listing.extend(
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        );
        self.listing.sort_unstable();
        let mut buf = [0u8; 512];
        let mut old = self.seen.iter().peekable();
        for &pid in &self.listing {
            while old.next_if(|&&o| o < pid).is_some() {}
            if old.next_if(|&&o| o == pid).is_some() {
                continue;
            }
            let Ok(f) = File::open(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Ok(n) = f.read_at(&mut buf, 0)
                && let Some(parent) = threads::parse_stat_ppid(&buf[..n])
            {
                out.push(Event::Fork { parent, child: pid });
            }
        }
        std::mem::swap(&mut self.seen, &mut self.listing);
    }
}

/// Every process below `root` now, from one listing of `/proc` (the kernel's `children`
/// files are not always built in): `dump -s` and the launch keeper's last sweep.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut all = Vec::new();
    PidScan::default().scan(&mut all);
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for e in &all {
            if let Event::Fork { parent, child } = *e
                && parent == p
                && !out.contains(&child)
                && out.len() < 4096
            {
                out.push(child);
                queue.push(child);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The source the sampler uses

/// Listings of `/proc` are this many times their own cost (CPU time) apart, at least:
/// they take at most 1/20 of a CPU.
const SCAN_COST_SHARE: u32 = 20;

/// Where process events come from: the connector when prof may use it, else listings of
/// `/proc` (new processes only: execs and exits are left to [`Image`]).
pub struct Watch {
    connector: Option<Connector>,
    scan: PidScan,
    /// Whether new processes are looked for at all.
    children: bool,
    /// The first poll lists every process; later ones only what is new.
    started: bool,
    next_scan: Instant,
}

impl Watch {
    /// A watch for execs and exits, and with `children` for new processes too.
    pub fn new(children: bool) -> Watch {
        Watch {
            connector: Connector::open().ok(),
            scan: PidScan::default(),
            children,
            started: false,
            next_scan: Instant::now(),
        }
    }

    /// What happened since the last call, appended to `out` in order. The first call
    /// reports every process that exists (with `children`).
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Event>) {
        let lost = match &mut self.connector {
            Some(c) => c.drain(out).0,
            None => false,
        };
        if !self.children {
            return;
        }
        // Listed: at the start (the connector only tells what happens from now on), after
        // the connector lost events, and without it as often as costs at most 1/20 of a
        // CPU.
        let due = !self.started || lost || (self.connector.is_none() && now >= self.next_scan);
        if due {
            self.started = true;
            let cost = cpu_cost(|| self.scan.scan(out));
            self.next_scan = now + (cost * SCAN_COST_SHARE).max(Duration::from_millis(1));
        }
    }
}

/// What running `f` cost: the CPU time it used (its wall time where that clock cannot be
/// read). A listing on a loaded machine can wait for a CPU for tens of milliseconds while
/// it works for a fraction of one, and the wait is no cost of prof's: counted as one, it
/// put the next listing half a second away, long enough to miss a child's whole life.
fn cpu_cost(f: impl FnOnce()) -> Duration {
    let (t, cpu) = (Instant::now(), threads::own_cpu_time());
    f();
    match (cpu, threads::own_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => t.elapsed(),
    }
}

// ---------------------------------------------------------------------------
// A process's program image

/// What became of a process since its [`Image`] was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageState {
    /// Still running the same program.
    Same,
    /// It exec'd: same pid, new program.
    Replaced,
    /// Exited, a zombie, or tearing down its address space on the way out.
    Gone,
}

/// Fields of `/proc/PID/stat` (1-based) that belong to the address space: its size, then
/// the start and end of code, the start of the stack, of the arguments and of the
/// environment. A process without an address space (exiting) has size 0. An exec builds a
/// new address space, so with address-space randomization the others change, even when the
/// same executable is run again (they read 0 for a moment, between the new address space
/// and the program loaded into it).
const ADDRESS_FIELDS: [usize; 6] = [23, 26, 27, 28, 48, 50];

fn address_fields(stat: &[u8]) -> Option<[u64; 6]> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // Field 3 (the state) is the first after the command.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut out = [0u64; 6];
    for (o, f) in out.iter_mut().zip(ADDRESS_FIELDS) {
        *o = fields.get(f - 3)?.parse().ok()?;
    }
    Some(out)
}

/// A process's program image as first seen: its address-space fields and an open
/// `/proc/PID/mem`. That file stays bound to the address space it was opened on: once that
/// is gone (exec or exit), a read returns nothing, where a live one fails with EIO at
/// address 0 — which catches an exec even without address-space randomization. (A child
/// made by vfork shares its parent's address space until it execs, so there the fields are
/// what tells.)
pub struct Image {
    stat: File,
    mem: Option<File>,
    /// The address-space fields but the size (which changes as the program runs).
    fields: [u64; 5],
}

impl Image {
    /// The image `pid` runs now; None if it is gone or cannot be read.
    pub fn open(pid: u32) -> Option<Image> {
        let stat = File::open(format!("/proc/{pid}/stat")).ok()?;
        let mem = File::open(format!("/proc/{pid}/mem")).ok();
        let mut image = Image {
            stat,
            mem,
            fields: [0; 5],
        };
        image.fields = image.read_fields()?.1;
        // Caught inside an exec, between its new address space and the program loaded into
        // it (the fields read 0; a vfork or spawn parent is released right then): wait for
        // the program, which the kernel loads in far less than this bound, else every
        // later check would take the loaded fields for a new image.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while image.fields.contains(&0) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(200));
            image.fields = image.read_fields()?.1;
        }
        Some(image)
    }

    /// The address space's size and other fields now; None once the process is gone or a
    /// zombie.
    fn read_fields(&self) -> Option<(u64, [u64; 5])> {
        let mut buf = [0u8; 1024];
        let n = self.stat.read_at(&mut buf, 0).ok().filter(|n| *n > 0)?;
        if matches!(threads::parse_stat_state(&buf[..n]), Some('Z' | 'X') | None) {
            return None;
        }
        let f = address_fields(&buf[..n])?;
        Some((f[0], [f[1], f[2], f[3], f[4], f[5]]))
    }

    /// What became of the process: one read of its stat file, and one of its memory.
    pub fn check(&self) -> ImageState {
        let Some((size, now)) = self.read_fields() else {
            return ImageState::Gone;
        };
        // No address space: on its way out (a kernel thread never gets here).
        if size == 0 {
            return ImageState::Gone;
        }
        if now != self.fields {
            return ImageState::Replaced;
        }
        let mut byte = [0u8; 1];
        match self.mem.as_ref().map(|m| m.read_at(&mut byte, 0)) {
            Some(Ok(0)) => ImageState::Replaced,
            _ => ImageState::Same,
        }
    }
}

/// Does `pid` run in its parent's address space: a child made by vfork (or by clone
/// sharing memory) that has not exec'd yet? What is in that memory is its parent's. None
/// when the kernel cannot tell (no `kcmp`, or not allowed).
pub fn shares_parent_memory(pid: u32) -> Option<bool> {
    /// `KCMP_VM` of linux/kcmp.h: compare the address spaces.
    const KCMP_VM: libc::c_long = 1;
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let parent = threads::parse_stat_ppid(&stat)?;
    // SAFETY: kcmp only compares kernel objects of the two processes.
    let order = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid as libc::c_long,
            parent as libc::c_long,
            KCMP_VM,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    (order >= 0).then_some(order == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing's cost, which spaces the listings of `/proc`, is the CPU it used: time off
    /// the CPU (a sleep here; on a loaded machine, the wait for a CPU) costs nothing, time
    /// on it does.
    #[test]
    fn a_listings_cost_is_its_cpu_time_not_its_wait() {
        let waited = cpu_cost(|| std::thread::sleep(Duration::from_millis(50)));
        let worked = cpu_cost(|| {
            let end = Instant::now() + Duration::from_millis(20);
            while Instant::now() < end {
                std::hint::spin_loop();
            }
        });
        assert!(
            waited < Duration::from_millis(5),
            "50 ms asleep cost {waited:?}"
        );
        assert!(
            worked > waited * 2,
            "20 ms of work cost {worked:?}, 50 ms asleep {waited:?}"
        );
    }

    /// A grandchild (a shell's `sleep`) is found below this process, and not below the
    /// shell's sibling.
    #[test]
    fn descendants_include_grandchildren() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let sleep: u32 = line.trim().parse().unwrap();
        let found = descendants(std::process::id());
        let below_sleep = descendants(sleep);
        let _ = std::process::Command::new("kill")
            .arg(sleep.to_string())
            .status();
        let _ = sh.wait();
        assert!(
            found.contains(&sh.id()) && found.contains(&sleep),
            "{found:?}"
        );
        assert!(below_sleep.is_empty(), "{below_sleep:?}");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn parse(s: &str) -> Vec<Message> {
        let mut out = Vec::new();
        parse_datagram(&hex(s), &mut out);
        out
    }

    /// Datagrams captured on x86_64 (Linux 6.18) while pid 0x265f ran `true` as child
    /// 0x2698: the subscription's answer, the fork, the exec and the exit.
    #[cfg(target_endian = "little")]
    #[test]
    fn real_connector_messages() {
        assert_eq!(
            parse(
                "4c000000030000000000000000000000010000000100000000000000010000002800000000000000000000008a7d29235e000000000000000000000000000000000000000000000000000000"
            ),
            [Message::Ack(0)]
        );
        assert_eq!(
            parse(
                "4c0000000300000001000000000000000100000001000000010000000000000028000000010000000000000058002b235e0000005f2600005f26000098260000982600000000000000000000"
            ),
            [Message::Event(Event::Fork {
                parent: 0x265f,
                child: 0x2698
            })]
        );
        assert_eq!(
            parse(
                "4c000000030000000000000000000000010000000100000000000000000000002800000002000000010000008f2c69235e000000982600009826000000000000000000000000000000000000"
            ),
            [Message::Event(Event::Exec { pid: 0x2698 })]
        );
        assert_eq!(
            parse(
                "4c000000030000000100000000000000010000000100000001000000000000002800000000000080010000000f6c72235e000000982600009826000000000000110000005f2600005f260000"
            ),
            [Message::Event(Event::Exit { pid: 0x2698 })]
        );
        // A comm change (0x200) is of no use; a thread's birth (pid != tgid) neither.
        assert_eq!(
            parse(
                "4c000000030000000200000000000000010000000100000002000000000000002800000000020000010000008dead4235e00000099260000be2500006f7074206367752e3036000000000000"
            ),
            [Message::Other]
        );
        assert_eq!(
            parse(
                "4c0000000300000001000000000000000100000001000000010000000000000028000000010000000000000058002b235e0000005f2600005f26000099260000982600000000000000000000"
            ),
            [Message::Other]
        );
        // Cut short, or claiming more than there is: nothing, and no panic.
        assert_eq!(parse("4c0000000300000001000000"), []);
        assert_eq!(
            parse("ff00000003000000010000000000000001000000010000000100000000000000ff00"),
            []
        );
    }

    #[test]
    fn the_subscription_has_the_kernels_layout() {
        let m = control_message(libc::PROC_CN_MCAST_LISTEN);
        assert_eq!(m.len(), 40);
        assert_eq!(ne_u32(&m, 0), Some(40));
        assert_eq!(ne_u16(&m, 4), Some(NLMSG_DONE));
        assert_eq!(ne_u32(&m, NLMSG_HDR), Some(libc::CN_IDX_PROC));
        assert_eq!(ne_u16(&m, NLMSG_HDR + 16), Some(4));
        assert_eq!(ne_u32(&m, 36), Some(libc::PROC_CN_MCAST_LISTEN));
    }

    #[test]
    fn address_fields_skip_the_command() {
        let line = b"77 (a) b) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5 1000 50 \
                     18446744073709551615 4194304 4198400 140733 0 0 0 0 0 0 0 0 0 17 1 0 0 \
                     0 0 0 6291456 6295552 6299648 140740 140750 140760 140770 0";
        assert_eq!(
            address_fields(line),
            Some([1000, 4194304, 4198400, 140733, 140740, 140760])
        );
        assert_eq!(address_fields(b"77 (x) S 1 2"), None);
    }

    #[test]
    fn an_exec_is_seen_by_the_image() {
        // The child is spawned with vfork semantics: its parent runs again as soon as the
        // exec has its new address space, before the program is loaded into it, and an
        // image opened then read 0s that the first check found changed (about 1 run in 10
        // failed here, before Image::open waited for the program). Under qemu-user (the
        // aarch64 CI part) live reads are skipped.
        if crate::process::memory::skip_without_live_reads("an_exec_is_seen_by_the_image") {
            return;
        }
        // The test binary's own child: sh, which execs sleep.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let pid = child.id();
        let image = Image::open(pid).expect("the child's image");
        assert_eq!(image.check(), ImageState::Same);
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| !e.to_string_lossy().contains("sleep"))
        {
            assert!(Instant::now() < deadline, "sh never exec'd sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(image.check(), ImageState::Replaced);
        let again = Image::open(pid).expect("sleep's image");
        assert_eq!(again.check(), ImageState::Same);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(again.check(), ImageState::Gone);
    }

    #[test]
    fn a_child_sharing_its_parents_memory_is_told() {
        if crate::process::memory::skip_without_live_reads(
            "a_child_sharing_its_parents_memory_is_told",
        ) {
            return;
        }
        extern "C" fn wait_to_be_killed(_: *mut libc::c_void) -> libc::c_int {
            // In the parent's memory, on its own stack: nothing but system calls.
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        let mut stack = vec![0u8; 64 << 10];
        // SAFETY: the child runs wait_to_be_killed on `stack`, which outlives it (it is
        // killed and reaped below), and touches nothing else of this process.
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
            libc::clone(
                wait_to_be_killed,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::SIGCHLD,
                std::ptr::null_mut(),
            )
        };
        assert!(pid > 0, "clone: {}", io::Error::last_os_error());
        let shared = shares_parent_memory(pid as u32);
        // SAFETY: pid is this test's own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        drop(stack);
        let mut own = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let separate = shares_parent_memory(own.id());
        own.kill().unwrap();
        own.wait().unwrap();
        match (shared, separate) {
            (None, None) => eprintln!("skipped: kcmp is not available here"),
            _ => assert_eq!((shared, separate), (Some(true), Some(false))),
        }
    }
}
