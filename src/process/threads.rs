//! Threads of a live process and their scheduler state, read from /proc without stopping them.

use std::io::Read;

/// Kernel thread ids of `pid` (the main thread first when present).
pub fn list_threads(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    if let Some(i) = tids.iter().position(|t| *t == pid) {
        tids.swap(0, i);
    }
    Ok(tids)
}

/// The state letter in a `stat` line: the field after the last `)`, since the command
/// name in parentheses may itself contain spaces and parentheses.
pub fn parse_stat_state(stat: &[u8]) -> Option<char> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    stat[close + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .map(|b| *b as char)
}

/// The parent pid in a `stat` line (the field after the state).
pub fn parse_stat_ppid(stat: &[u8]) -> Option<u32> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's `PF_*` flags in a `stat` line (the seventh field after the state).
pub fn parse_stat_flags(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_whitespace().nth(6)?.parse().ok()
}

fn read_small(path: &str, buf: &mut [u8]) -> Option<usize> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    Some(n)
}

/// Scheduler state of one thread (`R`, `S`, `D`, `t`, `Z`…), or None if it is gone.
pub fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let mut buf = [0u8; 512];
    let n = read_small(&format!("/proc/{pid}/task/{tid}/stat"), &mut buf)?;
    parse_stat_state(&buf[..n])
}

/// Scheduler state of the process as a whole.
pub fn process_state(pid: u32) -> Option<char> {
    let mut buf = [0u8; 512];
    let n = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat_state(&buf[..n])
}

/// The kernel's `PF_*` flags of the process (its main thread), or None if it is gone.
pub fn process_flags(pid: u32) -> Option<u64> {
    let mut buf = [0u8; 512];
    let n = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat_flags(&buf[..n])
}

/// The kernel's name for a thread (`comm`, at most 15 bytes).
pub fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    let s = std::fs::read(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(String::from_utf8_lossy(&s).trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_skips_tricky_comm() {
        assert_eq!(parse_stat_state(b"123 (python3) S 1 2 3"), Some('S'));
        assert_eq!(parse_stat_state(b"123 (a) R) (b) R 1"), Some('R'));
        assert_eq!(parse_stat_state(b"123 (x y) t 1"), Some('t'));
        assert_eq!(parse_stat_state(b"garbage"), None);
        assert_eq!(parse_stat_ppid(b"123 (a) b) S 77 2 3"), Some(77));
        assert_eq!(
            parse_stat_flags(b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0"),
            Some(2129984)
        );
        assert_eq!(
            parse_stat_flags(b"9 (a) b) R 1 9 9 0 -1 4194560 7"),
            Some(4194560)
        );
    }

    #[test]
    fn own_threads_listed() {
        let me = std::process::id();
        let tids = list_threads(me).unwrap();
        assert_eq!(tids[0], me);
        // The test itself runs on a worker thread, which is on CPU while it asks.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(tids.contains(&tid));
        assert_eq!(thread_state(me, tid), Some('R'));
    }
}
