//! Sockets' peers from `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`: pure parsers of their text.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `(inode, peer)` for every socket of a `tcp`/`udp` (v6: `tcp6`/`udp6`) table. The peer
/// is the remote address, or `listening on ADDR` for a socket without one.
pub fn parse_inet(text: &str, v6: bool) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        // sl local rem st queues tr:when retrnsmt uid timeout inode ...
        let (Some(local), Some(remote), Some(inode)) = (f.get(1), f.get(2), f.get(9)) else {
            continue;
        };
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        let (Some(remote), Some(local)) = (endpoint(remote, v6), endpoint(local, v6)) else {
            continue;
        };
        let peer = if remote.1 == 0 {
            format!("listening on {}", join(&local))
        } else {
            join(&remote)
        };
        out.push((inode, peer));
    }
    out
}

/// `(inode, peer)` for every socket of the `unix` table: `unix:PATH` when bound to a
/// path (`@name` for the abstract namespace), else `unix`.
pub fn parse_unix(text: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode [Path]
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let Some(Ok(inode)) = f.get(6).map(|i| i.parse::<u64>()) else {
            continue;
        };
        let peer = match f.get(7) {
            Some(path) => format!("unix:{path}"),
            None => "unix".to_string(),
        };
        out.push((inode, peer));
    }
    out
}

/// The inode of a `socket:[N]` link.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn join((addr, port): &(String, u16)) -> String {
    format!("{addr}:{port}")
}

/// `0100007F:1538` (the kernel prints each 32-bit word of the address in host order, here
/// little-endian) as `("127.0.0.1", 5432)`; IPv6 in brackets, a mapped IPv4 as IPv4.
fn endpoint(text: &str, v6: bool) -> Option<(String, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_le_bytes())
    };
    if !v6 {
        if addr.len() != 8 {
            return None;
        }
        return Some((Ipv4Addr::from(word(0)?).to_string(), port));
    }
    if addr.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for i in 0..4 {
        b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
    }
    let ip = Ipv6Addr::from(b);
    Some(match ip.to_ipv4_mapped() {
        Some(v4) => (v4.to_string(), port),
        None => (format!("[{ip}]"), port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // From /proc/PID/net/tcp of a test target: a listener on 127.0.0.1:56277, a connection
    // to it from port 48748 and the accepted side, a TIME_WAIT entry (inode 0) and sshd.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1064 1 00000000a4604c0b 100 0 0 10 0
   1: 0100007F:DBD5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 862309 1 00000000d24dfd6c 100 0 0 10 0
   2: 0100007F:DBD5 0100007F:BECC 01 00000000:00000000 00:00000000 00000000     0        0 861570 1 000000008fe70786 20 0 0 10 -1
   3: 0100007F:BECC 0100007F:DBD5 01 00000000:00000000 00:00000000 00000000     0        0 861584 1 00000000a5ace3a3 20 0 0 10 -1
   4: 0100007F:BECC 0100007F:DBD5 06 00000000:00000000 03:0000169F 00000000     0        0 0 3 000000008401b96d
";

    // /proc/net/tcp6: ::1 port 8080 connected to ::1 port 40000, and a mapped 10.0.0.2.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000200000A:D431 01 00000000:00000000 00:00000000 00000000  1000        0 778 1 0000000000000000 20 4 30 10 -1
";

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 20911 /run/systemd/notify
0000000000000000: 00000003 00000000 00000000 0001 03 862400
0000000000000000: 00000002 00000000 00010000 0001 01 19000 @/tmp/.X11-unix/X0
";

    #[test]
    fn tcp_peers() {
        let t = parse_inet(TCP, false);
        assert_eq!(
            t,
            vec![
                (1064, "listening on 0.0.0.0:2024".to_string()),
                (862309, "listening on 127.0.0.1:56277".to_string()),
                (861570, "127.0.0.1:48844".to_string()),
                (861584, "127.0.0.1:56277".to_string()),
            ]
        );
    }

    #[test]
    fn tcp6_peers() {
        let t = parse_inet(TCP6, true);
        assert_eq!(
            t,
            vec![
                (777, "[::1]:40000".to_string()),
                (778, "10.0.0.2:54321".to_string())
            ]
        );
        // Garbage rows are skipped.
        assert!(parse_inet("header\n 0: zz:zz yy:yy 01 0 0 0 0 0 12\n", false).is_empty());
    }

    #[test]
    fn unix_peers() {
        assert_eq!(
            parse_unix(UNIX),
            vec![
                (20911, "unix:/run/systemd/notify".to_string()),
                (862400, "unix".to_string()),
                (19000, "unix:@/tmp/.X11-unix/X0".to_string()),
            ]
        );
        assert_eq!(socket_inode("socket:[862309]"), Some(862309));
        assert_eq!(socket_inode("pipe:[1]"), None);
    }
}
