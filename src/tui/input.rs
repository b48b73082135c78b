//! Keys from the terminal's bytes.
//!
//! `prof top` reads the terminal itself instead of through crossterm's event reader:
//! that reader loops forever, at full CPU, once the terminal hangs up (its read returns
//! 0 bytes and it retries), so a closed terminal window would leave prof spinning and
//! deaf to the SIGHUP that asks it to stop. Reading here, an end of file is just an end.
//!
//! The parser covers what a terminal sends for the keys prof uses: printable text
//! (UTF-8), Enter, Backspace, Tab, Esc, control keys, and the CSI/SS3 sequences of
//! arrows, Home/End, PgUp/PgDn, Insert/Delete and F1–F4. Anything else is skipped.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Turns bytes into keys, keeping an incomplete sequence until the rest arrives.
#[derive(Debug, Default)]
pub struct KeyParser {
    pending: Vec<u8>,
}

/// What the start of a buffer holds.
enum Parsed {
    /// A key (or None for a sequence that means nothing to prof) and its length.
    Key(Option<KeyEvent>, usize),
    /// The start of a sequence whose end has not arrived yet.
    Incomplete,
}

fn key(code: KeyCode) -> Option<KeyEvent> {
    Some(KeyEvent::new(code, KeyModifiers::NONE))
}

impl KeyParser {
    /// A parser with nothing pending.
    pub fn new() -> KeyParser {
        KeyParser::default()
    }

    /// True while an incomplete sequence waits for its end (or for [`KeyParser::flush`]).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Add bytes read from the terminal; returns the keys they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<KeyEvent> {
        self.pending.extend_from_slice(bytes);
        let mut keys = Vec::new();
        let mut at = 0;
        while at < self.pending.len() {
            match parse(&self.pending[at..]) {
                Parsed::Key(k, len) => {
                    keys.extend(k);
                    at += len;
                }
                Parsed::Incomplete => break,
            }
        }
        self.pending.drain(..at);
        keys
    }

    /// Nothing more came: a lone Esc is the Esc key, any other unfinished sequence is
    /// dropped.
    pub fn flush(&mut self) -> Vec<KeyEvent> {
        let lone_esc = self.pending == [0x1b];
        self.pending.clear();
        if lone_esc {
            key(KeyCode::Esc).into_iter().collect()
        } else {
            Vec::new()
        }
    }
}

/// The first key of `b` (never empty).
fn parse(b: &[u8]) -> Parsed {
    match b[0] {
        0x1b => parse_escape(b),
        b'\r' | b'\n' => Parsed::Key(key(KeyCode::Enter), 1),
        b'\t' => Parsed::Key(key(KeyCode::Tab), 1),
        0x7f | 0x08 => Parsed::Key(key(KeyCode::Backspace), 1),
        c @ 0x01..=0x1a => Parsed::Key(
            Some(KeyEvent::new(
                KeyCode::Char((b'a' + c - 1) as char),
                KeyModifiers::CONTROL,
            )),
            1,
        ),
        0x00 | 0x1c..=0x1f => Parsed::Key(None, 1),
        _ => parse_utf8(b),
    }
}

fn parse_escape(b: &[u8]) -> Parsed {
    match b.get(1) {
        None => Parsed::Incomplete,
        Some(b'[') => parse_csi(b),
        Some(b'O') => match b.get(2) {
            None => Parsed::Incomplete,
            Some(&c) => Parsed::Key(
                match c {
                    b'A' => key(KeyCode::Up),
                    b'B' => key(KeyCode::Down),
                    b'C' => key(KeyCode::Right),
                    b'D' => key(KeyCode::Left),
                    b'H' => key(KeyCode::Home),
                    b'F' => key(KeyCode::End),
                    b'P'..=b'S' => key(KeyCode::F(c - b'P' + 1)),
                    _ => None,
                },
                3,
            ),
        },
        // Esc and then another key typed quickly (or Alt+key): the Esc alone first.
        Some(_) => Parsed::Key(key(KeyCode::Esc), 1),
    }
}

/// `ESC [ params final`: parameters and intermediates are 0x20–0x3f, the final byte
/// 0x40–0x7e.
fn parse_csi(b: &[u8]) -> Parsed {
    let mut end = 2;
    loop {
        match b.get(end) {
            None => {
                // An unterminated sequence is dropped once it is absurdly long.
                return if end > 32 {
                    Parsed::Key(None, end)
                } else {
                    Parsed::Incomplete
                };
            }
            Some(0x20..=0x3f) => end += 1,
            Some(0x40..=0x7e) => break,
            // Not a CSI after all: skip the introducer.
            Some(_) => return Parsed::Key(None, end),
        }
    }
    let params = std::str::from_utf8(&b[2..end]).unwrap_or("");
    let first: Option<u32> = params.split(';').next().and_then(|p| p.parse().ok());
    let k = match (b[end], first) {
        (b'A', _) => key(KeyCode::Up),
        (b'B', _) => key(KeyCode::Down),
        (b'C', _) => key(KeyCode::Right),
        (b'D', _) => key(KeyCode::Left),
        (b'H', _) => key(KeyCode::Home),
        (b'F', _) => key(KeyCode::End),
        (b'Z', _) => key(KeyCode::BackTab),
        (b'~', Some(1 | 7)) => key(KeyCode::Home),
        (b'~', Some(4 | 8)) => key(KeyCode::End),
        (b'~', Some(2)) => key(KeyCode::Insert),
        (b'~', Some(3)) => key(KeyCode::Delete),
        (b'~', Some(5)) => key(KeyCode::PageUp),
        (b'~', Some(6)) => key(KeyCode::PageDown),
        (b'~', Some(n @ 11..=14)) => key(KeyCode::F((n - 10) as u8)),
        _ => None,
    };
    Parsed::Key(k, end + 1)
}

fn parse_utf8(b: &[u8]) -> Parsed {
    let len = match b[0] {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        // A stray continuation or invalid lead byte.
        _ => return Parsed::Key(None, 1),
    };
    if b.len() < len {
        return Parsed::Incomplete;
    }
    match std::str::from_utf8(&b[..len])
        .ok()
        .and_then(|s| s.chars().next())
    {
        Some(c) => Parsed::Key(key(KeyCode::Char(c)), len),
        None => Parsed::Key(None, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(keys: &[KeyEvent]) -> Vec<KeyCode> {
        keys.iter().map(|k| k.code).collect()
    }

    #[test]
    fn text_and_control_keys() {
        let mut p = KeyParser::new();
        let keys = p.feed(b"q1 /\r\x7f\x03\t");
        assert_eq!(
            codes(&keys),
            [
                KeyCode::Char('q'),
                KeyCode::Char('1'),
                KeyCode::Char(' '),
                KeyCode::Char('/'),
                KeyCode::Enter,
                KeyCode::Backspace,
                KeyCode::Char('c'),
                KeyCode::Tab,
            ]
        );
        assert_eq!(keys[6].modifiers, KeyModifiers::CONTROL);
        assert_eq!(keys[0].modifiers, KeyModifiers::NONE);
        assert!(!p.has_pending());
    }

    #[test]
    fn sequences() {
        let mut p = KeyParser::new();
        let keys = p.feed(b"\x1b[A\x1b[B\x1b[C\x1b[D\x1b[H\x1b[F\x1bOH\x1bOF\x1b[1~\x1b[4~\x1b[5~\x1b[6~\x1bOP\x1b[3~\x1b[1;5A");
        assert_eq!(
            codes(&keys),
            [
                KeyCode::Up,
                KeyCode::Down,
                KeyCode::Right,
                KeyCode::Left,
                KeyCode::Home,
                KeyCode::End,
                KeyCode::Home,
                KeyCode::End,
                KeyCode::Home,
                KeyCode::End,
                KeyCode::PageUp,
                KeyCode::PageDown,
                KeyCode::F(1),
                KeyCode::Delete,
                KeyCode::Up,
            ]
        );
        // Unknown sequences are skipped, not typed.
        assert_eq!(codes(&p.feed(b"\x1b[200~x")), [KeyCode::Char('x')]);
    }

    #[test]
    fn split_reads_and_lone_escape() {
        let mut p = KeyParser::new();
        assert!(p.feed(b"\x1b").is_empty());
        assert!(p.has_pending());
        assert!(p.feed(b"[").is_empty());
        assert_eq!(codes(&p.feed(b"6~")), [KeyCode::PageDown]);
        // A lone Esc becomes a key when nothing follows.
        assert!(p.feed(b"\x1b").is_empty());
        assert_eq!(codes(&p.flush()), [KeyCode::Esc]);
        assert!(!p.has_pending());
        // Esc then a key at once: both.
        assert_eq!(codes(&p.feed(b"\x1bq")), [KeyCode::Esc, KeyCode::Char('q')]);
        // An unfinished sequence that never ends is dropped.
        assert!(p.feed(b"\x1b[1").is_empty());
        assert!(p.flush().is_empty());
    }

    #[test]
    fn utf8_text() {
        let mut p = KeyParser::new();
        let s = "é漢🦀";
        let bytes = s.as_bytes();
        let mut keys = p.feed(&bytes[..3]);
        keys.extend(p.feed(&bytes[3..]));
        assert_eq!(
            codes(&keys),
            [KeyCode::Char('é'), KeyCode::Char('漢'), KeyCode::Char('🦀')]
        );
        // Invalid bytes are skipped.
        assert_eq!(codes(&p.feed(b"\xff\x80a")), [KeyCode::Char('a')]);
    }

    #[test]
    fn garbage_never_panics_or_grows() {
        let mut p = KeyParser::new();
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let b = [(x >> 16) as u8, (x >> 8) as u8];
            let _ = p.feed(&b);
            assert!(p.pending.len() <= 40);
        }
        let _ = p.flush();
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'1', 100));
        let _ = p.feed(&long);
        assert!(p.pending.len() <= 40);
    }
}
