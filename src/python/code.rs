//! Code objects: name, file and line table, read once per code object and cached.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use super::PyError;
use super::layout::Layout;
use super::linetable::line_for_offset;
use super::objects::{read_bytes, read_str, type_name};
use crate::process::memory::{le_u32, le_u64};
use crate::process::{Memory, MemoryExt};
use crate::sample::FrameCode;

/// What prof keeps of one code object.
#[derive(Debug, Clone)]
pub struct CodeInfo {
    /// The name shown to users (`co_qualname` where the interpreter has one, 3.11+, else
    /// `co_name`), `co_filename` and its package-relative form: what every frame of this
    /// code object shares.
    pub code: Arc<FrameCode>,
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
    /// Line of the instruction at byte offset `addr` (0 when the interpreter has none).
    pub fn line(&self, l: &Layout, addr: i64) -> i32 {
        line_for_offset(l.linetable, &self.linetable, self.first_line, addr).unwrap_or(0)
    }
}

/// The fields that identify a code object's contents: if a freed code object's address is
/// reused by another, at least one of them differs.
pub type Fingerprint = [u64; 5];

/// The fingerprint of the code object whose first bytes are `head`.
pub fn fingerprint(l: &Layout, head: &[u8]) -> Fingerprint {
    [
        le_u64(head, l.ob_type as usize),
        le_u64(head, l.co_name as usize),
        le_u64(head, l.co_filename as usize),
        le_u64(head, l.co_linetable as usize),
        le_u32(head, l.co_firstlineno as usize) as u64,
    ]
}

/// Whether the code object whose first bytes are `head` has the fingerprint `fp` (the
/// same as comparing [`fingerprint`]s, without building one: this runs for every frame).
pub fn fingerprint_is(l: &Layout, head: &[u8], fp: &Fingerprint) -> bool {
    le_u64(head, l.co_name as usize) == fp[1]
        && le_u64(head, l.co_filename as usize) == fp[2]
        && le_u64(head, l.ob_type as usize) == fp[0]
        && le_u64(head, l.co_linetable as usize) == fp[3]
        && le_u32(head, l.co_firstlineno as usize) as u64 == fp[4]
}

/// A cached code object with the lines already looked up in it.
#[derive(Debug)]
pub struct CodeEntry {
    /// What was read of the code object.
    pub info: CodeInfo,
    fingerprint: Fingerprint,
    /// Instruction offset -> line: a sampled frame is usually at an offset seen before,
    /// and decoding the line table from its start each time is the costly part.
    lines: HashMap<i64, i32>,
}

/// Bound on the offsets remembered per code object; cleared wholesale when exceeded.
const MAX_LINES_CACHED: usize = 4096;

impl CodeEntry {
    /// The fingerprint this entry was read with.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Line of the instruction at byte offset `offset` (0 when the interpreter has none).
    pub fn line(&mut self, l: &Layout, offset: i64) -> i32 {
        if let Some(&line) = self.lines.get(&offset) {
            return line;
        }
        let line = self.info.line(l, offset);
        if self.lines.len() >= MAX_LINES_CACHED {
            self.lines.clear();
        }
        self.lines.insert(offset, line);
        line
    }
}

/// Bounded cache of code objects by address. Every use re-checks the entry's fingerprint
/// against the code object's first bytes, so an address reused by a new code object (freed
/// start-up code, exec'd code, reloaded modules) is never shown under the old name. The
/// check is cheap because the sampler's batched read already brings those bytes along
/// (see `batch::Plan`): only a code object not seen in the previous sample costs a read.
///
/// Names and file names are interned: every code object of a function (and every frame
/// made from them) shares one allocation per distinct text, which is what lets a profile
/// recognise a function by pointer instead of hashing its name.
#[derive(Default)]
pub struct CodeCache {
    entries: HashMap<u64, CodeEntry>,
    strings: HashSet<Arc<str>>,
    /// Type pointers known to be `code`.
    code_types: Vec<u64>,
}

/// Dropped wholesale when exceeded: simpler than LRU and rare in practice.
const MAX_CACHED: usize = 65536;

impl CodeCache {
    /// An empty cache; `code_type` is `&PyCode_Type` when the symbol was found.
    pub fn new(code_type: Option<u64>) -> CodeCache {
        CodeCache {
            entries: HashMap::default(),
            strings: HashSet::default(),
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
    ) -> Result<Option<&mut CodeEntry>, PyError> {
        let mut copy = [0u8; CODE_HEAD];
        let head = match mem.peek(addr, CODE_HEAD) {
            Some(head) => head,
            None => {
                mem.read(addr, &mut copy)?;
                &copy[..]
            }
        };
        let fresh = self
            .entries
            .get(&addr)
            .is_some_and(|e| fingerprint_is(l, head, &e.fingerprint));
        if !fresh {
            if !self.is_code_type(mem, l, addr)? {
                self.entries.remove(&addr);
                return Ok(None);
            }
            let (info, fingerprint) = self.read_code(mem, l, addr)?;
            if self.entries.len() >= MAX_CACHED {
                self.entries.clear();
                self.strings.clear();
            }
            let entry = CodeEntry {
                info,
                fingerprint,
                lines: HashMap::default(),
            };
            self.entries.insert(addr, entry);
        }
        Ok(self.entries.get_mut(&addr))
    }

    fn intern(&mut self, text: String) -> Arc<str> {
        if let Some(s) = self.strings.get(text.as_str()) {
            return Arc::clone(s);
        }
        let s: Arc<str> = text.into();
        self.strings.insert(Arc::clone(&s));
        s
    }

    fn read_code<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        addr: u64,
    ) -> Result<(CodeInfo, Fingerprint), PyError> {
        let mut head = [0u8; CODE_HEAD];
        mem.read(addr, &mut head)?;
        let p = |off: u64| le_u64(&head, off as usize);
        let name = match l.co_qualname {
            Some(off) => read_str(mem, l, p(off))?,
            None => read_str(mem, l, p(l.co_name))?,
        };
        let filename = read_str(mem, l, p(l.co_filename))?;
        let short_filename = super::short_filename(&filename);
        let linetable = read_bytes(mem, l, p(l.co_linetable))?;
        let first_line = le_u32(&head, l.co_firstlineno as usize) as i32;
        let info = CodeInfo {
            code: Arc::new(FrameCode {
                name: self.intern(name),
                filename: self.intern(filename),
                short_filename: self.intern(short_filename),
                first_line,
            }),
            first_line,
            linetable,
            argcount: le_u32(&head, l.co_argcount as usize),
            varnames: p(l.co_varnames),
            localspluskinds: l.co_localspluskinds.map(p).unwrap_or(0),
        };
        Ok((info, fingerprint(l, &head)))
    }
}

/// Every field the reader needs sits in the first 256 bytes of a code object.
pub const CODE_HEAD: usize = 256;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::process::ImageMemory;
    use crate::python::layout::Version;

    /// A compact ASCII str object in `l`'s layout.
    fn ascii_str(l: &Layout, text: &str) -> Vec<u8> {
        let data = l.str_ascii_data as usize;
        let mut o = vec![0u8; data];
        o[l.str_length as usize..][..8].copy_from_slice(&(text.len() as u64).to_le_bytes());
        // kind 1, compact, ascii
        let state = (1u32 | 8 | 16) << l.str_kind_shift;
        o[l.str_state as usize..][..4].copy_from_slice(&state.to_le_bytes());
        o.extend_from_slice(text.as_bytes());
        // The reader copies a str's header and first characters in one 128-byte read.
        o.resize(o.len().max(128), 0);
        o
    }

    /// An address space with a code object at 0x10000 named `name`, its strings at `strs`.
    pub(crate) fn image(l: &Layout, name: &str, strs: u64) -> ImageMemory {
        let mut tp = vec![0u8; 64];
        tp[l.tp_name as usize..l.tp_name as usize + 8].copy_from_slice(&0x50000u64.to_le_bytes());
        let mut m = ImageMemory::new();
        m.add(0x20000, tp)
            .add(0x40000, vec![0u8; 40])
            .add(0x50000, {
                let mut n = b"code".to_vec();
                n.resize(64, 0);
                n
            });
        add_code(&mut m, l, name, 0x10000, strs);
        m
    }

    /// Another code object in an [`image`]: at `at`, named `name`, its strings at `strs`.
    pub(crate) fn add_code(m: &mut ImageMemory, l: &Layout, name: &str, at: u64, strs: u64) {
        let mut code = vec![0u8; CODE_HEAD];
        let mut put = |off: u64, v: u64| {
            code[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(l.ob_type, 0x20000);
        put(l.co_name, strs);
        if let Some(q) = l.co_qualname {
            put(q, strs);
        }
        put(l.co_filename, strs + 0x100);
        put(l.co_linetable, 0x40000);
        m.add(at, code)
            .add(strs, ascii_str(l, name))
            .add(strs + 0x100, ascii_str(l, "app.py"));
    }

    #[test]
    fn fingerprint_check_matches_fingerprint_equality() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let m = image(&l, "first", 0x30000);
        let head = m.bytes(0x10000, CODE_HEAD).unwrap();
        let fp = fingerprint(&l, &head);
        assert!(fingerprint_is(&l, &head, &fp));
        // Any one field differing (here the first line) fails the check.
        let mut other = head.clone();
        other[l.co_firstlineno as usize] ^= 1;
        assert_ne!(fingerprint(&l, &other), fp);
        assert!(!fingerprint_is(&l, &other, &fp));
    }

    #[test]
    fn reused_code_address_is_noticed_on_revalidation() {
        let l = Layout::from_table(Version::new(3, 12, 1), false).unwrap();
        let mut cache = CodeCache::new(None);
        let before = image(&l, "first", 0x30000);
        assert_eq!(
            &*cache
                .get(&before, &l, 0x10000)
                .unwrap()
                .unwrap()
                .info
                .code
                .name,
            "first"
        );
        // The address now holds another code object (its name lives elsewhere).
        let after = image(&l, "second", 0x60000);
        // The changed fingerprint makes it re-read at once.
        assert_eq!(
            &*cache
                .get(&after, &l, 0x10000)
                .unwrap()
                .unwrap()
                .info
                .code
                .name,
            "second"
        );
        // Not a code object any more: its type pointer is not the code type seen before.
        let mut code = vec![0u8; CODE_HEAD];
        code[l.ob_type as usize..l.ob_type as usize + 8].copy_from_slice(&0x80000u64.to_le_bytes());
        let mut not_code = ImageMemory::new();
        not_code.add(0x10000, code);
        assert!(cache.get(&not_code, &l, 0x10000).unwrap().is_none());
    }
}
