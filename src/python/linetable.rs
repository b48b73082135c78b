//! Maps a bytecode offset to a source line, the way `PyCode_Addr2Line` does.
//!
//! The table bytes are copied out of another process and may be torn or garbage,
//! so every decoder here is bounded by the slice length and by `MAX_ENTRIES`,
//! never indexes out of range and never allocates.

/// Which of CPython's three line-table encodings a code object uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTableFormat {
    /// 3.8–3.9 `co_lnotab`: (byte increment, signed line increment) pairs.
    Lnotab,
    /// 3.10 `co_linetable` (PEP 626): (byte length, signed line delta, -128 = no line) pairs.
    Pep626,
    /// 3.11+ location table (varint entries, lengths in 2-byte code units).
    Locations,
}

impl LineTableFormat {
    /// The encoding used by CPython `major.minor`.
    pub fn for_version(major: u8, minor: u8) -> LineTableFormat {
        // Anything older than 3.10 gets lnotab: 3.6 and 3.7 already used the
        // signed-increment form that 3.8/3.9 have.
        match (major, minor) {
            (0..=2, _) | (3, 0..=9) => LineTableFormat::Lnotab,
            (3, 10) => LineTableFormat::Pep626,
            _ => LineTableFormat::Locations,
        }
    }
}

/// Upper bound on decoded entries; a real code object needing more than this
/// would be over 64 KiB of line table, which readers refuse to copy anyway.
const MAX_ENTRIES: usize = 65536;

/// Largest varint shift accepted: five 6-bit chunks (30 bits) hold any line
/// delta a real source file produces; longer runs are garbage, and left
/// unchecked would shift past the width of the `u32` accumulator.
const MAX_VARINT_SHIFT: u32 = 28;

/// Line of the instruction at byte offset `addr` into the code (negative: not started yet,
/// answer first_line). None when the interpreter itself has no line for that instruction.
pub fn line_for_offset(
    format: LineTableFormat,
    table: &[u8],
    first_line: i32,
    addr: i64,
) -> Option<i32> {
    // Every CPython version answers co_firstlineno for a frame that has not
    // executed an instruction yet (f_lasti / prev_instr of -1).
    if addr < 0 {
        return Some(first_line);
    }
    match format {
        LineTableFormat::Lnotab => lnotab_line(table, first_line, addr),
        LineTableFormat::Pep626 => pep626_line(table, first_line, addr),
        LineTableFormat::Locations => locations_line(table, first_line, addr),
    }
}

fn lnotab_line(table: &[u8], first_line: i32, addr: i64) -> Option<i32> {
    let mut line = first_line;
    let mut start: i64 = 0;
    // A trailing odd byte is ignored, as CPython iterates over len/2 pairs.
    for (i, pair) in table.chunks_exact(2).enumerate() {
        if i >= MAX_ENTRIES {
            return None;
        }
        start += i64::from(pair[0]);
        // The increment applies from `start` on, so it must not be counted
        // for an instruction before it.
        if start > addr {
            break;
        }
        line = line.wrapping_add(i32::from(pair[1] as i8));
    }
    // Past the last pair the last line still holds; lnotab has no "no line".
    Some(line)
}

fn pep626_line(table: &[u8], first_line: i32, addr: i64) -> Option<i32> {
    let mut computed = first_line;
    let mut start: i64 = 0;
    for (i, pair) in table.chunks_exact(2).enumerate() {
        if i >= MAX_ENTRIES {
            return None;
        }
        let end = start + i64::from(pair[0]);
        let delta = pair[1] as i8;
        // -128 marks a range without a line but must not disturb the running
        // line: the next delta is relative to the last real one.
        let line = if delta == i8::MIN {
            None
        } else {
            computed = computed.wrapping_add(i32::from(delta));
            Some(computed)
        };
        // Zero-length entries only carry line deltas and can never match,
        // since addr >= start holds throughout.
        if addr < end {
            return line;
        }
        start = end;
    }
    None
}

const CODE_ONE_LINE0: u8 = 10;
const CODE_ONE_LINE2: u8 = 12;
const CODE_NO_COLUMNS: u8 = 13;
const CODE_LONG: u8 = 14;
const CODE_NONE: u8 = 15;

fn locations_line(table: &[u8], first_line: i32, addr: i64) -> Option<i32> {
    let mut computed = first_line;
    let mut start: i64 = 0;
    let mut pos = 0;
    for _ in 0..MAX_ENTRIES {
        let head = *table.get(pos)?;
        // Entry starts always have the top bit set and payload bytes never do;
        // anything else (including the bytes object's NUL terminator if the
        // reader copied one) means torn or misread data, so give up rather
        // than guess.
        if head & 0x80 == 0 {
            return None;
        }
        pos += 1;
        let code = (head >> 3) & 0x0f;
        let units = i64::from(head & 0x07) + 1;
        let line = match code {
            CODE_NONE => None,
            CODE_NO_COLUMNS | CODE_LONG => {
                let (raw, len) = read_varint(&table[pos..])?;
                pos += len;
                computed = computed.wrapping_add(signed_varint(raw));
                Some(computed)
            }
            CODE_ONE_LINE0..=CODE_ONE_LINE2 => {
                computed = computed.wrapping_add(i32::from(code - CODE_ONE_LINE0));
                Some(computed)
            }
            _ => Some(computed),
        };
        let end = start + units * 2;
        if addr < end {
            return line;
        }
        start = end;
        // Columns don't matter here; skipping the rest of the payload by its
        // encoded size (rather than scanning for the next top-bit byte as
        // CPython does) lets the check above catch a misaligned table.
        pos += match code {
            0..=9 => 1,
            CODE_ONE_LINE0..=CODE_ONE_LINE2 => 2,
            CODE_LONG => {
                let mut skipped = 0;
                for _ in 0..3 {
                    skipped += read_varint(table.get(pos + skipped..)?)?.1;
                }
                skipped
            }
            _ => 0,
        };
    }
    None
}

/// Decodes one unsigned varint (6-bit chunks, least significant first, 0x40 =
/// more follows); returns the value and the bytes it took.
fn read_varint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    let mut shift = 0;
    for (i, &b) in bytes.iter().enumerate() {
        value |= u32::from(b & 0x3f) << shift;
        if b & 0x40 == 0 {
            return Some((value, i + 1));
        }
        shift += 6;
        if shift > MAX_VARINT_SHIFT {
            return None;
        }
    }
    None
}

fn signed_varint(raw: u32) -> i32 {
    // raw >> 1 < 2^31 because the shift bound keeps raw below 2^30.
    let magnitude = (raw >> 1) as i32;
    if raw & 1 != 0 { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    const VECTOR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/linetables");

    fn parse_version(version: &str) -> (u8, u8) {
        let mut parts = version.split('.');
        let major = parts.next().and_then(|p| p.parse().ok());
        let minor = parts.next().and_then(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
        match (major, minor) {
            (Some(major), Some(minor)) => (major, minor),
            _ => panic!("unparsable version {version:?}"),
        }
    }

    fn hex_decode(hex: &str) -> Vec<u8> {
        assert!(hex.len().is_multiple_of(2), "odd-length hex {hex:?}");
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("bad hex"))
            .collect()
    }

    /// Checks one vector file; returns (version, codes, offsets, offsets without a line).
    fn check_vector_file(path: &Path) -> (String, usize, usize, usize) {
        let text = fs::read_to_string(path).expect("read vector file");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("parse vector file");
        let version = doc["version"].as_str().expect("version").to_string();
        let (major, minor) = parse_version(&version);
        let format = LineTableFormat::for_version(major, minor);
        let codes = doc["codes"].as_array().expect("codes");
        let mut offsets = 0;
        let mut no_line = 0;
        for code in codes {
            let name = code["name"].as_str().expect("name");
            let first_line = i32::try_from(code["first_line"].as_i64().expect("first_line"))
                .expect("first_line fits i32");
            let table = hex_decode(code["table"].as_str().expect("table"));
            for pair in code["lines"].as_array().expect("lines") {
                let addr = pair[0].as_i64().expect("offset");
                let expected = pair[1]
                    .as_i64()
                    .map(|l| i32::try_from(l).expect("line fits"));
                let got = line_for_offset(format, &table, first_line, addr);
                assert_eq!(
                    got, expected,
                    "{version} ({format:?}): code {name}, offset {addr}: decoder says {got:?}, \
                     interpreter says {expected:?}"
                );
                offsets += 1;
                if expected.is_none() {
                    no_line += 1;
                }
            }
        }
        (version, codes.len(), offsets, no_line)
    }

    #[test]
    fn matches_real_interpreters() {
        let mut paths: Vec<_> = fs::read_dir(VECTOR_DIR)
            .expect("vector directory")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no vectors in {VECTOR_DIR}");
        let mut formats = Vec::new();
        for path in &paths {
            let (version, codes, offsets, no_line) = check_vector_file(path);
            let (major, minor) = parse_version(&version);
            formats.push(LineTableFormat::for_version(major, minor));
            println!("{version}: {codes} codes, {offsets} offsets ({no_line} without a line)");
            assert!(codes > 0 && offsets > 0, "{version}: empty vector file");
        }
        for format in [
            LineTableFormat::Lnotab,
            LineTableFormat::Pep626,
            LineTableFormat::Locations,
        ] {
            assert!(formats.contains(&format), "no vectors for {format:?}");
        }
    }

    #[test]
    fn version_mapping() {
        use LineTableFormat::*;
        assert_eq!(LineTableFormat::for_version(3, 7), Lnotab);
        assert_eq!(LineTableFormat::for_version(3, 8), Lnotab);
        assert_eq!(LineTableFormat::for_version(3, 9), Lnotab);
        assert_eq!(LineTableFormat::for_version(3, 10), Pep626);
        assert_eq!(LineTableFormat::for_version(3, 11), Locations);
        assert_eq!(LineTableFormat::for_version(3, 15), Locations);
    }

    const ALL: [LineTableFormat; 3] = [
        LineTableFormat::Lnotab,
        LineTableFormat::Pep626,
        LineTableFormat::Locations,
    ];

    #[test]
    fn negative_addr_is_first_line() {
        for format in ALL {
            for table in [&[][..], &[0xff; 7][..], &[6, 1, 4, 2][..]] {
                for addr in [-1, -2, i64::MIN] {
                    assert_eq!(line_for_offset(format, table, 42, addr), Some(42));
                }
            }
        }
    }

    #[test]
    fn empty_table() {
        // lnotab has no way to say "no line": everything is on co_firstlineno.
        assert_eq!(line_for_offset(LineTableFormat::Lnotab, &[], 7, 0), Some(7));
        assert_eq!(
            line_for_offset(LineTableFormat::Lnotab, &[], 7, 100),
            Some(7)
        );
        for format in [LineTableFormat::Pep626, LineTableFormat::Locations] {
            assert_eq!(line_for_offset(format, &[], 7, 0), None);
            assert_eq!(line_for_offset(format, &[], 7, 100), None);
        }
    }

    #[test]
    fn lnotab_small() {
        // Two lines up at byte 6, two more at 10, then a split 300-byte jump.
        let table = [6, 1, 4, 2, 255, 0, 45, 0xfe];
        let line = |addr| line_for_offset(LineTableFormat::Lnotab, &table, 10, addr);
        assert_eq!(line(0), Some(10));
        assert_eq!(line(5), Some(10));
        assert_eq!(line(6), Some(11));
        assert_eq!(line(10), Some(13));
        assert_eq!(line(309), Some(13));
        assert_eq!(line(310), Some(11));
        assert_eq!(line(10_000), Some(11));
    }

    #[test]
    fn pep626_small() {
        let table = [6, 0, 4, 0x80, 0, 100, 2, 3];
        let line = |addr| line_for_offset(LineTableFormat::Pep626, &table, 10, addr);
        assert_eq!(line(0), Some(10));
        assert_eq!(line(4), Some(10));
        assert_eq!(line(6), None);
        assert_eq!(line(8), None);
        // The no-line entry left the running line at 10.
        assert_eq!(line(10), Some(113));
        assert_eq!(line(12), None);
    }

    #[test]
    fn locations_small() {
        let table = [
            0x80 | (CODE_NO_COLUMNS << 3), // 1 unit, line += varint
            0x04,                          // +2
            0x80 | (CODE_NONE << 3) | 1,   // 2 units without a line
            0x80 | (3 << 3) | 2,           // short form, 3 units, same line
            0x15,
            0x80 | (11 << 3), // one-line form, line + 1
            0x05,
            0x09,
            0x80 | (CODE_LONG << 3), // long form, line - 3
            0x07,
            0x00,
            0x41, // column + 1 as a two-chunk varint
            0x02,
            0x03,
        ];
        let line = |addr| line_for_offset(LineTableFormat::Locations, &table, 20, addr);
        assert_eq!(line(0), Some(22));
        assert_eq!(line(2), None);
        assert_eq!(line(4), None);
        assert_eq!(line(6), Some(22));
        assert_eq!(line(10), Some(22));
        assert_eq!(line(12), Some(23));
        assert_eq!(line(14), Some(20));
        assert_eq!(line(16), None);
    }

    #[test]
    fn truncated_tables() {
        // Entries before the cut still answer; the cut entry and beyond don't.
        let loc = [
            0x80 | (CODE_NO_COLUMNS << 3),
            0x02,
            0x80 | (CODE_LONG << 3),
            0x44,
        ];
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &loc, 1, 0),
            Some(2)
        );
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &loc, 1, 2),
            None
        );
        let loc_long_cut = [0x80 | (CODE_LONG << 3), 0x02, 0x00, 0x41];
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &loc_long_cut, 1, 0),
            Some(2)
        );
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &loc_long_cut, 1, 2),
            None
        );
        let pep = [4, 1, 6];
        assert_eq!(
            line_for_offset(LineTableFormat::Pep626, &pep, 1, 2),
            Some(2)
        );
        assert_eq!(line_for_offset(LineTableFormat::Pep626, &pep, 1, 4), None);
        let lno = [4, 1, 6];
        assert_eq!(
            line_for_offset(LineTableFormat::Lnotab, &lno, 1, 100),
            Some(2)
        );
    }

    #[test]
    fn locations_stops_at_non_entry_byte() {
        let table = [
            0x80 | (CODE_NONE << 3),
            0x00,
            0x80 | (CODE_NO_COLUMNS << 3),
            0x02,
        ];
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &table, 1, 0),
            None
        );
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &table, 1, 2),
            None
        );
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &[0; 16], 1, 0),
            None
        );
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let mut table = vec![0x80 | (CODE_NO_COLUMNS << 3)];
        table.extend([0x7f; 4]);
        table.push(0x01);
        // Five chunks (shift 24) are fine...
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &table, 0, 0),
            Some(-(((0x01 << 24) | 0xff_ffff) >> 1))
        );
        // ...a sixth would need shift 30.
        table.insert(1, 0x7f);
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &table, 0, 0),
            None
        );
        let endless = [
            0x80 | (CODE_LONG << 3),
            0x40,
            0x40,
            0x40,
            0x40,
            0x40,
            0x40,
            0x40,
        ];
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &endless, 0, 0),
            None
        );
    }

    #[test]
    fn entry_cap() {
        // One-unit entries that keep the line: entry i covers bytes 2i..2i+2.
        let table: Vec<u8> = [0x80 | (CODE_NO_COLUMNS << 3), 0x00].repeat(MAX_ENTRIES + 10);
        let last = 2 * (MAX_ENTRIES as i64 - 1);
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &table, 5, last),
            Some(5)
        );
        assert_eq!(
            line_for_offset(LineTableFormat::Locations, &table, 5, last + 2),
            None
        );
        let pairs: Vec<u8> = [1, 0].repeat(MAX_ENTRIES + 10);
        assert_eq!(
            line_for_offset(LineTableFormat::Pep626, &pairs, 5, 100),
            Some(5)
        );
        assert_eq!(
            line_for_offset(LineTableFormat::Pep626, &pairs, 5, 1 << 20),
            None
        );
        assert_eq!(
            line_for_offset(LineTableFormat::Lnotab, &pairs, 5, 1 << 20),
            None
        );
    }

    #[test]
    fn extreme_lines_wrap_instead_of_panicking() {
        let up = [0x80 | (CODE_NO_COLUMNS << 3), 0x7e, 0x7f, 0x7f, 0x7f, 0x07];
        let _ = line_for_offset(LineTableFormat::Locations, &up, i32::MAX, 0);
        let _ = line_for_offset(LineTableFormat::Pep626, &[2, 0x7f], i32::MAX, 0);
        let _ = line_for_offset(LineTableFormat::Lnotab, &[0, 0x80], i32::MIN, 0);
    }

    #[test]
    fn garbage_never_panics() {
        // xorshift, so the test is deterministic without extra dependencies.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut table = Vec::new();
        for round in 0..2000 {
            table.clear();
            let len = (next() % 300) as usize;
            for _ in 0..len {
                let b = next() as u8;
                // Bias some rounds towards plausible entry bytes and varint
                // continuations, which reach deeper into the decoder.
                table.push(match round % 3 {
                    0 => b,
                    1 => b | 0x80,
                    _ => (b & 0x7f) | 0x40,
                });
            }
            let first_line = next() as i32;
            for format in ALL {
                for addr in [0, 1, 2, 7, 64, 511, 4096, i64::MAX, (next() % 2048) as i64] {
                    let _ = line_for_offset(format, &table, first_line, addr);
                }
            }
        }
        for fill in [0x00, 0x40, 0x7f, 0x80, 0xf0, 0xf8, 0xff] {
            let table = [fill; 4096];
            for format in ALL {
                for addr in [0, 2, 1000, i64::MAX] {
                    let _ = line_for_offset(format, &table, 1, addr);
                }
            }
        }
    }
}
