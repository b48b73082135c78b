//! Decoding the few object types the reader needs: str, bytes, int, float, type names.
//! Everything read here is bounded and decoded lossily: the target is not trusted.

use super::PyError;
use super::layout::{Layout, LongSize};
use crate::process::memory::{le_u32, le_u64};
use crate::process::{Memory, MemoryExt};

/// Longest string prof reads, in code points.
pub const MAX_STR_CHARS: u64 = 4096;
/// Largest bytes object prof reads (line tables).
pub const MAX_BYTES: u64 = 1 << 20;

/// Decode a `str` object.
pub fn read_str<M: Memory + ?Sized>(mem: &M, l: &Layout, addr: u64) -> Result<String, PyError> {
    if addr == 0 {
        return Err(PyError::Corrupt("null str pointer"));
    }
    // The header and the first characters of a compact ASCII string come in one read.
    let mut head = [0u8; 128];
    mem.read(addr, &mut head)
        .or_else(|_| mem.read(addr, &mut head[..(l.str_compact_data as usize + 8)]))?;
    let length = le_u64(&head, l.str_length as usize);
    let state = le_u32(&head, l.str_state as usize) >> l.str_kind_shift;
    let kind = (state & 7) as u64;
    let compact = state & 8 != 0;
    let ascii = state & 16 != 0;
    if !matches!(kind, 1 | 2 | 4) {
        return Err(PyError::Corrupt("str kind"));
    }
    if length > MAX_STR_CHARS * 16 {
        return Err(PyError::Corrupt("str length"));
    }
    let length = length.min(MAX_STR_CHARS);
    let nbytes = (length * kind) as usize;
    let data_addr = if compact {
        addr + if ascii {
            l.str_ascii_data
        } else {
            l.str_compact_data
        }
    } else {
        le_u64(&head, l.str_compact_data as usize)
    };
    let start = data_addr.wrapping_sub(addr) as usize;
    let mut local;
    let data: &[u8] = if compact && start + nbytes <= head.len() {
        &head[start..start + nbytes]
    } else {
        local = vec![0u8; nbytes];
        mem.read(data_addr, &mut local)?;
        &local
    };
    Ok(decode_kind(data, kind as usize))
}

/// Decode PEP 393 character data; lone surrogates become U+FFFD.
pub fn decode_kind(data: &[u8], kind: usize) -> String {
    match kind {
        1 => data.iter().map(|&b| b as char).collect(),
        2 => {
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        }
        _ => data
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    }
}

/// Read a `bytes` object's contents (bounded).
pub fn read_bytes<M: Memory + ?Sized>(mem: &M, l: &Layout, addr: u64) -> Result<Vec<u8>, PyError> {
    if addr == 0 {
        return Err(PyError::Corrupt("null bytes pointer"));
    }
    let size = mem.u64(addr + l.var_size)?;
    if size > MAX_BYTES {
        return Err(PyError::Corrupt("bytes size"));
    }
    Ok(mem.bytes(addr + l.bytes_sval, size as usize)?)
}

/// Read a small `int` (None if it does not fit in an i64).
pub fn read_long<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    addr: u64,
) -> Result<Option<i64>, PyError> {
    let tag = mem.u64(addr + l.long_size)?;
    let (ndigits, negative) = match l.long_size_format {
        LongSize::Tagged => (tag >> 3, tag & 3 == 2),
        LongSize::Signed => {
            let s = tag as i64;
            (s.unsigned_abs(), s < 0)
        }
    };
    if ndigits > 3 {
        return Ok(None);
    }
    let mut raw = [0u8; 12];
    mem.read(addr + l.long_digits, &mut raw[..ndigits as usize * 4])?;
    let mut v: u128 = 0;
    for i in (0..ndigits as usize).rev() {
        v = (v << 30) | (le_u32(&raw, i * 4) & 0x3fff_ffff) as u128;
    }
    if v > i64::MAX as u128 {
        return Ok(None);
    }
    Ok(Some(if negative { -(v as i64) } else { v as i64 }))
}

/// Read a C string (bounded), e.g. a type's `tp_name`.
pub fn read_cstr<M: Memory + ?Sized>(mem: &M, addr: u64, max: usize) -> Result<String, PyError> {
    let mut buf = vec![0u8; max];
    // A short read near the end of a mapping: retry smaller.
    let mut n = max;
    while mem.read(addr, &mut buf[..n]).is_err() {
        n /= 4;
        if n < 8 {
            return Err(PyError::Corrupt("unreadable C string"));
        }
    }
    let end = buf[..n].iter().position(|b| *b == 0).unwrap_or(n);
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The `tp_name` of an object's type.
pub fn type_name<M: Memory + ?Sized>(mem: &M, l: &Layout, obj: u64) -> Result<String, PyError> {
    let tp = mem.u64(obj + l.ob_type)?;
    let name = mem.u64(tp + l.tp_name)?;
    read_cstr(mem, name, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_decode_lossily() {
        assert_eq!(decode_kind(b"m\xf3dulo", 1), "módulo");
        assert_eq!(decode_kind(&[0xfd, 0x51, 0x70, 0x65], 2), "函数");
        // A lone surrogate from surrogateescape'd file names must not panic or vanish.
        assert_eq!(decode_kind(&[0x80, 0xdc], 2), "\u{fffd}");
        assert_eq!(decode_kind(&[0x00, 0x00, 0x02, 0x00], 4), "\u{20000}");
        assert_eq!(decode_kind(&[0x80, 0xdc, 0, 0], 4), "\u{fffd}");
    }
}
