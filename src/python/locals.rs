//! Local variables of a frame, for `dump --locals`: names and short, bounded reprs.

use super::PyError;
use super::code::CodeInfo;
use super::layout::Layout;
use super::objects::{read_long, read_str, type_name};
use crate::process::{Memory, MemoryExt};
use crate::sample::LocalVar;

/// Most locals shown per frame.
const MAX_LOCALS: u64 = 256;
/// Longest repr of a str value, in characters.
const MAX_REPR: usize = 80;

/// `co_localspluskinds` bit of cell and free variables, whose slots hold cell objects.
const CO_FAST_CELL_OR_FREE: u8 = 0x40 | 0x80;

/// Read the fast locals of the frame at `frame`.
pub fn read_locals<M: Memory + ?Sized>(
    mem: &M,
    l: &Layout,
    code: &CodeInfo,
    frame: u64,
) -> Result<Vec<LocalVar>, PyError> {
    let names = code.varnames;
    if names == 0 {
        return Ok(Vec::new());
    }
    let count = mem.u64(names + l.var_size)?.min(MAX_LOCALS);
    let mut out = Vec::new();
    for i in 0..count {
        let name_ptr = mem.u64(names + l.tuple_item + 8 * i)?;
        let name = read_str(mem, l, name_ptr)?;
        let kind = if code.localspluskinds != 0 {
            mem.u8(code.localspluskinds + l.bytes_sval + i)?
        } else {
            0
        };
        let value = mem.u64(frame + l.f_localsplus + 8 * i)? & !l.f_code_tag_mask;
        if value == 0 {
            // Unbound: not yet assigned, or deleted.
            continue;
        }
        let repr = if kind & CO_FAST_CELL_OR_FREE != 0 {
            Some("<cell>".to_string())
        } else {
            Some(short_repr(mem, l, value).unwrap_or_else(|_| "<unreadable>".to_string()))
        };
        out.push(LocalVar {
            name,
            repr,
            arg: (i as u32) < code.argcount,
        });
    }
    Ok(out)
}

/// Short repr of simple values; `<type>` for everything else.
pub fn short_repr<M: Memory + ?Sized>(mem: &M, l: &Layout, obj: u64) -> Result<String, PyError> {
    let tname = type_name(mem, l, obj)?;
    Ok(match tname.as_str() {
        "NoneType" => "None".to_string(),
        "bool" => match read_long(mem, l, obj)? {
            Some(0) => "False".to_string(),
            _ => "True".to_string(),
        },
        "int" => match read_long(mem, l, obj)? {
            Some(v) => v.to_string(),
            None => "<big int>".to_string(),
        },
        "float" => {
            let bits = mem.u64(obj + l.float_val)?;
            let v = f64::from_bits(bits);
            format!("{v:?}")
        }
        "str" => {
            let s = read_str(mem, l, obj)?;
            let mut short: String = s.chars().take(MAX_REPR).collect();
            if short.len() < s.len() {
                short.push('…');
            }
            format!("{short:?}")
        }
        other => format!("<{other}>"),
    })
}
