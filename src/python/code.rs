//! Code objects: name, file and line table, read once per code object and cached.

use std::collections::HashMap;

use super::PyError;
use super::layout::Layout;
use super::linetable::line_for_offset;
use super::objects::{read_bytes, read_str, type_name};
use crate::process::memory::{le_u32, le_u64};
use crate::process::{Memory, MemoryExt};

/// What prof keeps of one code object.
#[derive(Debug, Clone)]
pub struct CodeInfo {
    /// `co_name`.
    pub name: String,
    /// `co_qualname` where the interpreter has one (3.11+).
    pub qualname: Option<String>,
    /// `co_filename`.
    pub filename: String,
    /// Package-relative form of the file name.
    pub short_filename: String,
    /// `co_firstlineno`.
    pub first_line: i32,
    /// Raw line table (`co_lnotab` / `co_linetable`).
    pub linetable: Vec<u8>,
    /// Number of positional arguments, for `--locals`.
    pub argcount: u32,
    /// Address of the names tuple of the fast locals, for `--locals`.
    pub varnames: u64,
    /// Address of the local kinds bytes (3.11+), for `--locals`.
    pub localspluskinds: u64,
}

impl CodeInfo {
    /// The name shown to users: qualified where possible.
    pub fn display_name(&self) -> &str {
        self.qualname.as_deref().unwrap_or(&self.name)
    }

    /// Line of the instruction at byte offset `addr` (0 when the interpreter has none).
    pub fn line(&self, l: &Layout, addr: i64) -> i32 {
        line_for_offset(l.linetable, &self.linetable, self.first_line, addr).unwrap_or(0)
    }
}

/// Bounded cache of code objects by address.
#[derive(Default)]
pub struct CodeCache {
    entries: HashMap<u64, CodeInfo>,
    /// Type pointers known to be `code`.
    code_types: Vec<u64>,
}

/// Dropped wholesale when exceeded: simpler than LRU and rare in practice.
const MAX_CACHED: usize = 65536;

impl CodeCache {
    /// An empty cache; `code_type` is `&PyCode_Type` when the symbol was found.
    pub fn new(code_type: Option<u64>) -> CodeCache {
        CodeCache {
            entries: HashMap::new(),
            code_types: code_type.into_iter().collect(),
        }
    }

    /// Forget every entry (the interpreter reports that code objects were freed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Is `ob_type` the code type? Checked by name once per distinct type pointer.
    fn is_code_type<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        obj: u64,
    ) -> Result<bool, PyError> {
        let tp = mem.u64(obj + l.ob_type)?;
        if self.code_types.contains(&tp) {
            return Ok(true);
        }
        if !self.code_types.is_empty() {
            return Ok(false);
        }
        if type_name(mem, l, obj)? == "code" {
            self.code_types.push(tp);
            return Ok(true);
        }
        Ok(false)
    }

    /// The code object at `addr`, or None if `addr` is not a code object (3.13 entry frames
    /// hold None there).
    pub fn get<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        addr: u64,
    ) -> Result<Option<&CodeInfo>, PyError> {
        if !self.entries.contains_key(&addr) {
            if !self.is_code_type(mem, l, addr)? {
                return Ok(None);
            }
            let info = read_code(mem, l, addr)?;
            if self.entries.len() >= MAX_CACHED {
                self.entries.clear();
            }
            self.entries.insert(addr, info);
        }
        Ok(self.entries.get(&addr))
    }
}

fn read_code<M: Memory + ?Sized>(mem: &M, l: &Layout, addr: u64) -> Result<CodeInfo, PyError> {
    // Every field the reader needs sits in the first 256 bytes of the code object.
    let mut head = [0u8; 256];
    mem.read(addr, &mut head)?;
    let p = |off: u64| le_u64(&head, off as usize);
    let name = read_str(mem, l, p(l.co_name))?;
    let qualname = match l.co_qualname {
        Some(off) => Some(read_str(mem, l, p(off))?),
        None => None,
    };
    let filename = read_str(mem, l, p(l.co_filename))?;
    let short_filename = super::short_filename(&filename);
    let linetable = read_bytes(mem, l, p(l.co_linetable))?;
    Ok(CodeInfo {
        name,
        qualname,
        filename,
        short_filename,
        first_line: le_u32(&head, l.co_firstlineno as usize) as i32,
        linetable,
        argcount: le_u32(&head, l.co_argcount as usize),
        varnames: p(l.co_varnames),
        localspluskinds: l.co_localspluskinds.map(p).unwrap_or(0),
    })
}
