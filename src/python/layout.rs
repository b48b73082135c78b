//! Every offset the Python reader needs, as one value: from `_Py_DebugOffsets` on 3.13+,
//! from small per-version tables before that.

use thiserror::Error;

use super::linetable::LineTableFormat;
use crate::process::memory::le_u64;

/// A CPython version as read from the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// 3.
    pub major: u8,
    /// 8 … 15.
    pub minor: u8,
    /// Patch release.
    pub micro: u8,
    /// `PY_VERSION_HEX` release level: 0xA alpha, 0xB beta, 0xC candidate, 0xF final.
    pub level: u8,
}

impl Version {
    /// Decode `PY_VERSION_HEX`.
    pub fn from_hex(v: u64) -> Version {
        Version {
            major: (v >> 24) as u8,
            minor: (v >> 16) as u8,
            micro: (v >> 8) as u8,
            level: ((v >> 4) & 0xf) as u8,
        }
    }

    /// A final release of major.minor.micro.
    pub fn new(major: u8, minor: u8, micro: u8) -> Version {
        Version {
            major,
            minor,
            micro,
            level: 0xf,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        match self.level {
            0xa => write!(f, "a"),
            0xb => write!(f, "b"),
            0xc => write!(f, "rc"),
            _ => Ok(()),
        }
    }
}

/// How to find a thread's innermost frame from its thread state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRoot {
    /// A frame pointer directly in the thread state (≤3.10 `frame`, 3.13+ `current_frame`).
    Direct(u64),
    /// 3.11/3.12: `tstate->cframe`, then `cframe->current_frame`.
    CFrame {
        /// Offset of `cframe` in the thread state.
        cframe: u64,
        /// Offset of `current_frame` in `_PyCFrame`.
        current: u64,
    },
}

/// Where the current instruction of a frame is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrSource {
    /// 3.8/3.9 `f_lasti`: a byte offset (i32).
    LastiBytes(u64),
    /// 3.10 `f_lasti`: an index in 2-byte code units (i32).
    LastiUnits(u64),
    /// 3.11+ `prev_instr`/`instr_ptr`: a pointer into the code object's inline bytecode.
    Pointer(u64),
}

/// How long a code object's frame is on the thread's data stack (3.11+): the interpreter
/// pushes each frame right after its caller's, this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// 3.12+: `co_framesize` (int32, in pointer-sized words) at this offset.
    Words(u64),
    /// 3.11: `co_nlocalsplus + co_stacksize` (int32s at these offsets) plus `specials` words
    /// (`FRAME_SPECIALS_SIZE`, the frame header).
    Sum {
        nlocalsplus: u64,
        stacksize: u64,
        specials: u64,
    },
}

/// How the GIL holder is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilSource {
    /// ≤3.11: `_PyRuntime.gilstate.tstate_current` points at the holder.
    RuntimeTstateCurrent(u64),
    /// 3.12+: `interp->ceval.gil` points at a `_gil_runtime_state` with `locked` and `last_holder`.
    InterpGil {
        /// Offset of the `ceval.gil` pointer in the interpreter state.
        ceval_gil: u64,
        /// Offset of `locked` (int) in the GIL state.
        locked: u64,
        /// Offset of `last_holder` in the GIL state.
        last_holder: u64,
    },
}

/// Where an int keeps its sign and its number of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongSize {
    /// ≤3.11: `ob_size` is the digit count, negative for a negative int.
    Signed,
    /// 3.12+: `lv_tag` is the digit count shifted left by 3, with the sign in its low two
    /// bits (2 for negative).
    Tagged,
}

/// How a dict's keys object (`PyDictKeysObject`) lays out its entries: a header, an index
/// table, then the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictKeysFormat {
    /// ≤3.10: `dk_size` slots, `dk_nentries`, then the index table, its entries as wide as
    /// `dk_size` needs; 24-byte (hash, key, value) entries.
    Sized {
        /// `dk_size` (word).
        size: u64,
        /// `dk_nentries` (word).
        nentries: u64,
        /// `dk_indices`.
        indices: u64,
    },
    /// 3.11+: the index table is `1 << dk_log2_index_bytes` bytes; general keys
    /// (`dk_kind` 0) have 24-byte entries, str-only keys 16-byte (key, value) ones.
    Log2 {
        /// `dk_log2_index_bytes` (byte).
        log2_index_bytes: u64,
        /// `dk_kind` (byte).
        kind: u64,
        /// `dk_nentries` (word).
        nentries: u64,
        /// `dk_indices`.
        indices: u64,
    },
}

/// 3.11+ keys objects, the same with and without the GIL (the free-threaded build's one-byte
/// mutex fits before `dk_version`'s alignment).
const DICT_KEYS_LOG2: DictKeysFormat = DictKeysFormat::Log2 {
    log2_index_bytes: 9,
    kind: 10,
    nentries: 24,
    indices: 32,
};

/// Where an instance of a class with `Py_TPFLAGS_MANAGED_DICT` keeps its attributes: words
/// before the object itself (3.11+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedDict {
    /// ≤3.10: no managed dicts; `tp_dictoffset` says where the dict is.
    None,
    /// 3.11: a values array pointer at `values`, else a dict pointer at `dict`.
    ValuesOrDict {
        /// Offset of the values pointer from the object.
        values: i64,
        /// Offset of the dict pointer from the object.
        dict: i64,
    },
    /// 3.12: one word, a values array pointer when its bit 0 is set (and cleared by adding
    /// one), else a dict pointer.
    Tagged(i64),
    /// 3.13+: a dict pointer; values without a dict are inline (see
    /// `Layout::inline_values_valid`).
    Dict(i64),
}

/// Every offset the reader uses, for one interpreter build.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The interpreter's version.
    pub version: Version,
    /// A free-threaded (no-GIL) build.
    pub free_threaded: bool,
    /// `_PyRuntime.interpreters.head`.
    pub rt_interp_head: u64,
    /// The main interpreter is embedded in `_PyRuntime`, after the runtime's own fields
    /// (3.11+); before, it is allocated apart.
    pub main_interp_in_runtime: bool,
    /// `PyInterpreterState.next`.
    pub is_next: u64,
    /// `PyInterpreterState.id`.
    pub is_id: u64,
    /// `PyInterpreterState.threads.head` (`tstate_head` ≤3.11).
    pub is_threads_head: u64,
    /// `PyInterpreterState.modules` / `imports.modules`.
    pub is_modules: u64,
    /// How the GIL holder is found.
    pub gil: GilSource,
    /// ≤3.11: offset of the GIL's state (`ceval.gil`) in `_PyRuntime`; 3.12+ find it
    /// through [`GilSource::InterpGil`]'s pointer.
    pub rt_gil: Option<u64>,
    /// `PyThreadState.gil_requested` (int), where the build records it (3.15+).
    pub ts_gil_requested: Option<u64>,
    /// Bytes of a thread state to copy in one read.
    pub ts_size: u64,
    /// `PyThreadState.next`.
    pub ts_next: u64,
    /// `PyThreadState.interp`.
    pub ts_interp: u64,
    /// `PyThreadState.thread_id`.
    pub ts_thread_id: u64,
    /// `PyThreadState.native_thread_id` (3.11+).
    pub ts_native_thread_id: Option<u64>,
    /// `PyThreadState.datastack_chunk` (3.11+); `datastack_top` follows it.
    pub ts_datastack_chunk: Option<u64>,
    /// Where the innermost frame hangs.
    pub frame_root: FrameRoot,
    /// Bytes of a frame to copy in one read.
    pub f_size: u64,
    /// The caller frame pointer.
    pub f_back: u64,
    /// The code object (`f_code` / `f_executable`).
    pub f_code: u64,
    /// Low bits of `f_executable` that are tags, not address (3.14+ stack refs).
    pub f_code_tag_mask: u64,
    /// The current instruction.
    pub f_instr: InstrSource,
    /// `owner` byte (3.11+).
    pub f_owner: Option<u64>,
    /// 3.11 `is_entry` byte.
    pub f_is_entry: Option<u64>,
    /// First owner value that is not a Python frame (3.12/3.13: CSTACK 3; 3.14+: INTERPRETER 3).
    pub owner_not_python: Option<u8>,
    /// 3.14t `tlbc_index` (int32).
    pub f_tlbc_index: Option<u64>,
    /// Local variables array in the frame.
    pub f_localsplus: u64,
    /// `co_firstlineno` (int32).
    pub co_firstlineno: u64,
    /// `co_argcount` (int32).
    pub co_argcount: u64,
    /// `co_filename`.
    pub co_filename: u64,
    /// `co_name`.
    pub co_name: u64,
    /// `co_qualname` (3.11+).
    pub co_qualname: Option<u64>,
    /// `co_lnotab` / `co_linetable`.
    pub co_linetable: u64,
    /// Names of the frame's fast locals (`co_varnames` ≤3.10, `co_localsplusnames` 3.11+).
    pub co_varnames: u64,
    /// `co_localspluskinds` (3.11+).
    pub co_localspluskinds: Option<u64>,
    /// Inline bytecode start (3.11+).
    pub co_code_adaptive: Option<u64>,
    /// 3.14t thread-local bytecode array.
    pub co_tlbc: Option<u64>,
    /// How long the code object's frames are on the data stack (3.11+).
    pub co_framesize: Option<FrameSize>,
    /// How `co_linetable` is encoded.
    pub linetable: LineTableFormat,
    /// `ob_type` in every object header.
    pub ob_type: u64,
    /// `tp_name` (a C string pointer).
    pub tp_name: u64,
    /// `tp_basicsize`.
    pub tp_basicsize: u64,
    /// `tp_flags`.
    pub tp_flags: u64,
    /// `tp_dictoffset`.
    pub tp_dictoffset: u64,
    /// `PyHeapTypeObject.ht_cached_keys`.
    pub ht_cached_keys: u64,
    /// `PyASCIIObject.length`.
    pub str_length: u64,
    /// `PyASCIIObject.state` (u32 bit field).
    pub str_state: u64,
    /// Bit position of `kind` in `state` (`compact` and `ascii` follow it).
    pub str_kind_shift: u32,
    /// Characters of a compact ASCII string.
    pub str_ascii_data: u64,
    /// Characters of a compact non-ASCII string (and legacy `data` pointer).
    pub str_compact_data: u64,
    /// `ob_size` of var-sized objects (bytes, tuple).
    pub var_size: u64,
    /// `PyBytesObject.ob_sval`.
    pub bytes_sval: u64,
    /// `PyTupleObject.ob_item`.
    pub tuple_item: u64,
    /// `ob_size` (≤3.11) or `lv_tag` (3.12+) of ints.
    pub long_size: u64,
    /// What `long_size` holds.
    pub long_size_format: LongSize,
    /// First 30-bit digit of an int.
    pub long_digits: u64,
    /// `PyFloatObject.ob_fval`.
    pub float_val: u64,
    /// `PyDictObject.ma_keys`.
    pub dict_keys: u64,
    /// `PyDictObject.ma_values`.
    pub dict_values: u64,
    /// How a dict's keys object lays out its entries.
    pub dict_keys_format: DictKeysFormat,
    /// Bytes before the first value of a values array (`PyDictValues`' header, 3.13+).
    pub dict_values_header: u64,
    /// Where instances of classes with managed dicts keep their attributes.
    pub managed_dict: ManagedDict,
    /// Instances of classes with `Py_TPFLAGS_INLINE_VALUES` keep a values array right after
    /// their `tp_basicsize` bytes (3.13+); this is the offset of its `valid` byte, set while
    /// the attributes live there rather than in a dict.
    pub inline_values_valid: Option<u64>,
    /// `PyModuleObject.md_dict`.
    pub module_dict: u64,
    /// `sizeof(PyObject)`: the smallest instance.
    pub object_size: u64,
}

/// Why no layout could be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A version prof has no tables for.
    #[error("Python {0} is not supported (prof reads CPython 3.7 to 3.15)")]
    Unsupported(Version),
    /// The `_Py_DebugOffsets` table failed validation.
    #[error("the interpreter's _Py_DebugOffsets table is invalid: {0}")]
    BadDebugOffsets(String),
}

/// Offset of `gilstate.tstate_current` on aarch64, where glibc's bigger mutexes move it.
fn tstate_current(minor: u8, aarch64: bool) -> u64 {
    let x86 = match minor {
        7 => 1480,
        8 => 1368,
        9 | 10 => 568,
        _ => 576,
    };
    if aarch64 { x86 + 16 } else { x86 }
}

impl Layout {
    /// Does one call of the eval loop run a chain of Python frames, up to and including
    /// the one marked `is_entry` (3.11+)? Before 3.11 each Python call is its own call of
    /// the eval function. The native merge counts eval-loop frames by this.
    pub fn eval_runs_entry_chain(&self) -> bool {
        (self.version.major, self.version.minor) >= (3, 11)
    }

    /// Is `function` (a symbol or DWARF name of native code) the interpreter's eval loop?
    /// GCC's split-off cold part (`_PyEval_EvalFrameDefault.cold`) counts too; the
    /// wrappers that call it (`PyEval_EvalFrameEx`, `_PyEval_Vector`...) do not.
    pub fn is_eval_function(&self, function: &str) -> bool {
        function.split('.').next() == Some("_PyEval_EvalFrameDefault")
    }

    /// The built-in table for 3.7–3.12 (`aarch64` selects the few offsets that differ).
    pub fn from_table(version: Version, aarch64: bool) -> Result<Layout, LayoutError> {
        let minor = version.minor;
        if version.major != 3 || !(7..=12).contains(&minor) {
            return Err(LayoutError::Unsupported(version));
        }
        let old = minor <= 10;
        let mut l = Layout {
            version,
            free_threaded: false,
            rt_interp_head: if minor <= 10 { 32 } else { 40 },
            main_interp_in_runtime: !old,
            is_next: 0,
            is_id: match minor {
                7 | 8 => 16,
                9 | 10 => 24,
                11 => 48,
                _ => 8,
            },
            is_threads_head: match minor {
                ..=10 => 8,
                11 => 16,
                _ => 72,
            },
            is_modules: match minor {
                7 | 8 => 56,
                9 | 10 => 856,
                11 => 888,
                _ => 944,
            },
            gil: if minor <= 11 {
                GilSource::RuntimeTstateCurrent(tstate_current(minor, aarch64))
            } else {
                GilSource::InterpGil {
                    ceval_gil: 384,
                    locked: 16,
                    last_holder: 8,
                }
            },
            // Read live with only the main thread: `interval` (5000) then `last_holder`
            // equal to PyThreadState_Get() and `locked` 1 (same on aarch64, where the
            // mutexes come after it).
            rt_gil: match minor {
                8 => Some(1152),
                9 | 10 => Some(352),
                11 => Some(360),
                _ => None,
            },
            ts_gil_requested: None,
            ts_size: match minor {
                ..=9 => 264,
                10 => 280,
                11 => 360,
                _ => 288,
            },
            ts_next: 8,
            ts_interp: 16,
            ts_thread_id: match minor {
                ..=10 => 176,
                11 => 152,
                _ => 136,
            },
            ts_datastack_chunk: match minor {
                ..=10 => None,
                11 => Some(296),
                _ => Some(232),
            },
            ts_native_thread_id: match minor {
                ..=10 => None,
                11 => Some(160),
                _ => Some(144),
            },
            frame_root: match minor {
                ..=10 => FrameRoot::Direct(24),
                11 => FrameRoot::CFrame {
                    cframe: 56,
                    current: 8,
                },
                _ => FrameRoot::CFrame {
                    cframe: 56,
                    current: 0,
                },
            },
            f_size: if old { 112 } else { 80 },
            f_back: match minor {
                ..=10 => 24,
                11 => 48,
                _ => 8,
            },
            f_code: match minor {
                ..=11 => 32,
                _ => 0,
            },
            f_code_tag_mask: 0,
            f_instr: match minor {
                ..=9 => InstrSource::LastiBytes(104),
                10 => InstrSource::LastiUnits(96),
                _ => InstrSource::Pointer(56),
            },
            f_owner: match minor {
                ..=10 => None,
                11 => Some(69),
                _ => Some(70),
            },
            f_is_entry: if minor == 11 { Some(68) } else { None },
            owner_not_python: if minor == 12 { Some(3) } else { None },
            f_tlbc_index: None,
            f_localsplus: match minor {
                ..=9 => 360,
                10 => 352,
                _ => 72,
            },
            co_firstlineno: match minor {
                ..=10 => 40,
                11 => 72,
                _ => 68,
            },
            co_argcount: match minor {
                ..=10 => 16,
                11 => 56,
                _ => 52,
            },
            co_filename: if old { 104 } else { 112 },
            co_name: if old { 112 } else { 120 },
            co_qualname: if old { None } else { Some(128) },
            co_linetable: if old { 120 } else { 136 },
            co_varnames: if old { 72 } else { 96 },
            co_localspluskinds: if old { None } else { Some(104) },
            co_code_adaptive: match minor {
                ..=10 => None,
                11 => Some(184),
                _ => Some(192),
            },
            co_tlbc: None,
            co_framesize: match minor {
                ..=10 => None,
                11 => Some(FrameSize::Sum {
                    nlocalsplus: 76,
                    stacksize: 68,
                    specials: 9,
                }),
                _ => Some(FrameSize::Words(76)),
            },
            linetable: LineTableFormat::for_version(3, minor),
            ob_type: 8,
            tp_name: 24,
            tp_basicsize: 32,
            tp_flags: 168,
            tp_dictoffset: 288,
            ht_cached_keys: match minor {
                9 => 864,
                12 => 880,
                _ => 872,
            },
            str_length: 16,
            str_state: 32,
            str_kind_shift: 2,
            str_ascii_data: if minor <= 11 { 48 } else { 40 },
            str_compact_data: if minor <= 11 { 72 } else { 56 },
            var_size: 16,
            bytes_sval: 32,
            tuple_item: 24,
            long_size: 16,
            long_size_format: if minor <= 11 {
                LongSize::Signed
            } else {
                LongSize::Tagged
            },
            long_digits: 24,
            float_val: 16,
            dict_keys: 32,
            dict_values: 40,
            dict_keys_format: if old {
                DictKeysFormat::Sized {
                    size: 8,
                    nentries: 32,
                    indices: 40,
                }
            } else {
                DICT_KEYS_LOG2
            },
            dict_values_header: 0,
            // Before the object sit the GC header (two words), then these.
            managed_dict: match minor {
                ..=10 => ManagedDict::None,
                11 => ManagedDict::ValuesOrDict {
                    values: -32,
                    dict: -24,
                },
                _ => ManagedDict::Tagged(-24),
            },
            inline_values_valid: None,
            module_dict: 16,
            object_size: 16,
        };
        if minor == 7 {
            // 3.7 has the 3.8 frame and thread layout, but a smaller runtime state and no
            // co_posonlyargcount, which moves the code object's fields.
            l.rt_interp_head = 24;
            l.gil = GilSource::RuntimeTstateCurrent(tstate_current(7, aarch64));
            // Read live on x86_64 only.
            l.rt_gil = (!aarch64).then_some(1264);
            l.is_modules = 40;
            l.ts_size = 280;
            l.co_firstlineno = 36;
            l.co_filename = 96;
            l.co_name = 104;
            l.co_linetable = 112;
            l.co_varnames = 64;
            l.ht_cached_keys = 856;
        }
        Ok(l)
    }

    /// Build the layout from the `_Py_DebugOffsets` table at the start of `_PyRuntime` (3.13+).
    pub fn from_debug_offsets(raw: &[u8]) -> Result<Layout, LayoutError> {
        let d = DebugOffsets::decode(raw)?;
        let version = d.version;
        let minor = version.minor;
        let ft = d.free_threaded;
        let g = |k: &str| d.get(k);
        let gil_base = g("interpreter_state.gil_runtime_state")?;
        let ob = g("pyobject.size")?;
        // The offsets table leaves out a few facts that are fixed per version.
        // 3.14t tags stack refs with one bit; 3.15 uses the same two bits in both builds.
        let (owner_not_python, tag_mask) = match (minor, ft) {
            (13, _) => (3, 0),
            (14, true) => (3, 1),
            _ => (3, 3),
        };
        let holder = g("interpreter_state.gil_runtime_state_holder")?;
        let locked = g("interpreter_state.gil_runtime_state_locked")?;
        let l = Layout {
            version,
            free_threaded: ft,
            rt_interp_head: g("runtime_state.interpreters_head")?,
            main_interp_in_runtime: true,
            is_next: g("interpreter_state.next")?,
            is_id: g("interpreter_state.id")?,
            is_threads_head: g("interpreter_state.threads_head")?,
            is_modules: g("interpreter_state.imports_modules")?,
            gil: GilSource::InterpGil {
                ceval_gil: g("interpreter_state.ceval_gil")?,
                locked: locked.wrapping_sub(gil_base),
                last_holder: holder.wrapping_sub(gil_base),
            },
            rt_gil: None,
            ts_gil_requested: if ft {
                None
            } else {
                d.get("thread_state.gil_requested").ok()
            },
            ts_size: g("thread_state.size")?.min(4096),
            ts_next: g("thread_state.next")?,
            ts_interp: g("thread_state.interp")?,
            ts_thread_id: g("thread_state.thread_id")?,
            ts_native_thread_id: Some(g("thread_state.native_thread_id")?),
            ts_datastack_chunk: Some(g("thread_state.datastack_chunk")?),
            frame_root: FrameRoot::Direct(g("thread_state.current_frame")?),
            f_size: g("interpreter_frame.size")?,
            f_back: g("interpreter_frame.previous")?,
            f_code: g("interpreter_frame.executable")?,
            f_code_tag_mask: tag_mask,
            f_instr: InstrSource::Pointer(g("interpreter_frame.instr_ptr")?),
            f_owner: Some(g("interpreter_frame.owner")?),
            f_is_entry: None,
            owner_not_python: Some(owner_not_python),
            f_tlbc_index: if ft {
                d.get("interpreter_frame.tlbc_index").ok()
            } else {
                None
            },
            f_localsplus: g("interpreter_frame.localsplus")?,
            co_firstlineno: g("code_object.firstlineno")?,
            co_argcount: g("code_object.argcount")?,
            co_filename: g("code_object.filename")?,
            co_name: g("code_object.name")?,
            co_qualname: Some(g("code_object.qualname")?),
            co_linetable: g("code_object.linetable")?,
            co_varnames: g("code_object.localsplusnames")?,
            co_localspluskinds: Some(g("code_object.localspluskinds")?),
            co_code_adaptive: Some(g("code_object.co_code_adaptive")?),
            co_tlbc: if ft {
                d.get("code_object.co_tlbc").ok()
            } else {
                None
            },
            // Not in the table: co_framesize follows co_firstlineno and co_nlocalsplus
            // (int32s) in 3.12-3.15, with and without the GIL (checked against each
            // version's headers). Later versions are not assumed to keep it there.
            co_framesize: (minor <= 15)
                .then(|| Ok::<_, LayoutError>(FrameSize::Words(g("code_object.firstlineno")? + 8)))
                .transpose()?,
            linetable: LineTableFormat::for_version(3, minor),
            ob_type: g("pyobject.ob_type")?,
            tp_name: g("type_object.tp_name")?,
            // Not in the table: tp_basicsize follows tp_name in every version.
            tp_basicsize: g("type_object.tp_name")? + 8,
            tp_flags: g("type_object.tp_flags")?,
            tp_dictoffset: d.get("type_object.tp_dictoffset").unwrap_or(288 + ob - 16),
            ht_cached_keys: d
                .get("heap_type_object.ht_cached_keys")
                .unwrap_or(880 + ob - 16),
            str_length: g("unicode_object.length")?,
            str_state: g("unicode_object.state")?,
            // 3.14t made `interned` a whole byte, moving the other bit fields up by 6.
            str_kind_shift: if ft && minor >= 14 { 8 } else { 2 },
            str_ascii_data: g("unicode_object.asciiobject_size")?,
            str_compact_data: d
                .get("unicode_object.compactunicodeobject_size")
                .unwrap_or(g("unicode_object.asciiobject_size")? + 16),
            var_size: g("bytes_object.ob_size")?,
            bytes_sval: g("bytes_object.ob_sval")?,
            tuple_item: g("tuple_object.ob_item")?,
            long_size: g("long_object.lv_tag")?,
            long_size_format: LongSize::Tagged,
            long_digits: g("long_object.ob_digit")?,
            float_val: g("float_object.ob_fval")?,
            dict_keys: g("dict_object.ma_keys")?,
            dict_values: g("dict_object.ma_values")?,
            // Not in the table, fixed since 3.13: the keys' and values' headers, and the
            // managed dict pointer right before the object (before the GC header with the GIL).
            dict_keys_format: DICT_KEYS_LOG2,
            dict_values_header: 8,
            managed_dict: ManagedDict::Dict(if ft { -8 } else { -24 }),
            inline_values_valid: Some(3),
            module_dict: ob,
            object_size: ob,
        };
        Ok(l)
    }
}

impl Layout {
    /// Bytes the frames of the code object whose first bytes are `code_head` take on the
    /// data stack (3.11+); None when the layout does not say, or the head is not of a code
    /// object (a size no frame has).
    pub fn frame_bytes(&self, code_head: &[u8]) -> Option<u64> {
        let int = |off: u64| {
            let at = off as usize;
            code_head
                .get(at..at + 4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
        };
        let words = match self.co_framesize? {
            FrameSize::Words(off) => int(off)?,
            FrameSize::Sum {
                nlocalsplus,
                stacksize,
                specials,
            } => int(nlocalsplus)? + int(stacksize)? + specials as i64,
        };
        let bytes = u64::try_from(words).ok()?.checked_mul(8)?;
        (8..=1 << 26).contains(&bytes).then_some(bytes)
    }

    /// Does a thread pass `--gil`? A free-threaded build has no GIL: every thread on CPU runs
    /// Python code at once, so there `--gil` keeps the threads that are on CPU.
    pub fn passes_gil_filter(&self, owns_gil: bool, on_cpu: bool) -> bool {
        if self.free_threaded { on_cpu } else { owns_gil }
    }
}

/// Ordered sections and fields of `_Py_DebugOffsets` for one minor version; every field is a u64.
pub type DebugSpec = &'static [(&'static str, &'static [&'static str])];

const DEBUG_313: DebugSpec = &[
    (
        "runtime_state",
        &["size", "finalizing", "interpreters_head"],
    ),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
        ],
    ),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
        ],
    ),
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
        ],
    ),
    ("pyobject", &["size", "ob_type"]),
    ("type_object", &["size", "tp_name", "tp_repr", "tp_flags"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    (
        "unicode_object",
        &["size", "state", "length", "asciiobject_size"],
    ),
    ("gc", &["size", "collecting"]),
];

const DEBUG_314: DebugSpec = &[
    (
        "runtime_state",
        &["size", "finalizing", "interpreters_head"],
    ),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "threads_main",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
            "code_object_generation",
            "tlbc_generation",
        ],
    ),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
        ],
    ),
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
            "stackpointer",
            "tlbc_index",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
            "co_tlbc",
        ],
    ),
    ("pyobject", &["size", "ob_type"]),
    ("type_object", &["size", "tp_name", "tp_repr", "tp_flags"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("set_object", &["size", "used", "table", "mask"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    (
        "unicode_object",
        &["size", "state", "length", "asciiobject_size"],
    ),
    ("gc", &["size", "collecting"]),
    (
        "gen_object",
        &["size", "gi_name", "gi_iframe", "gi_frame_state"],
    ),
    ("llist_node", &["next", "prev"]),
    (
        "debugger_support",
        &[
            "eval_breaker",
            "remote_debugger_support",
            "remote_debugging_enabled",
            "debugger_pending_call",
            "debugger_script_path",
            "debugger_script_path_size",
        ],
    ),
];

/// 3.15 inserted thread-state fields mid-section and added type, heap-type and exception
/// sections; checked against Debian's 3.15.2 binary (decoded table equals the compiled
/// `_Py_DebugOffsets_INIT`).
const DEBUG_315: DebugSpec = &[
    (
        "runtime_state",
        &["size", "finalizing", "interpreters_head"],
    ),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "threads_main",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
            "code_object_generation",
            "tlbc_generation",
        ],
    ),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "base_frame",
            "last_profiled_frame",
            "last_profiled_frame_seq",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
            "holds_gil",
            "gil_requested",
            "current_exception",
            "exc_state",
        ],
    ),
    ("err_stackitem", &["exc_value"]),
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
            "stackpointer",
            "tlbc_index",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
            "co_tlbc",
        ],
    ),
    ("pyobject", &["size", "ob_type"]),
    (
        "type_object",
        &[
            "size",
            "tp_name",
            "tp_repr",
            "tp_flags",
            "tp_basicsize",
            "tp_dictoffset",
        ],
    ),
    ("heap_type_object", &["size", "ht_cached_keys"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("set_object", &["size", "used", "table", "mask"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    (
        "unicode_object",
        &[
            "size",
            "state",
            "length",
            "asciiobject_size",
            "compactunicodeobject_size",
        ],
    ),
    (
        "gc",
        &[
            "size",
            "collecting",
            "frame",
            "generation_stats_size",
            "generation_stats",
        ],
    ),
    (
        "gen_object",
        &["size", "gi_name", "gi_iframe", "gi_frame_state"],
    ),
    ("llist_node", &["next", "prev"]),
    (
        "debugger_support",
        &[
            "eval_breaker",
            "remote_debugger_support",
            "remote_debugging_enabled",
            "debugger_pending_call",
            "debugger_script_path",
            "debugger_script_path_size",
        ],
    ),
];

/// Bytes of `_PyRuntime` to read so that any supported table fits.
pub const DEBUG_OFFSETS_READ: usize = 2048;

/// The decoded `_Py_DebugOffsets` table: (section.field, value) pairs.
#[derive(Debug)]
pub struct DebugOffsets {
    /// `PY_VERSION_HEX` from the table.
    pub version: Version,
    /// `free_threaded` flag.
    pub free_threaded: bool,
    fields: Vec<(String, u64)>,
}

/// The `_Py_DebugOffsets` fields prof decodes for 3.`minor`, in the table's order.
pub fn spec_for(minor: u8) -> Option<DebugSpec> {
    match minor {
        13 => Some(DEBUG_313),
        14 => Some(DEBUG_314),
        15 => Some(DEBUG_315),
        _ => None,
    }
}

impl DebugOffsets {
    /// Is this the start of a `_Py_DebugOffsets` table?
    pub fn has_cookie(raw: &[u8]) -> bool {
        raw.starts_with(b"xdebugpy")
    }

    /// Decode and validate the table.
    pub fn decode(raw: &[u8]) -> Result<DebugOffsets, LayoutError> {
        let bad = |m: String| LayoutError::BadDebugOffsets(m);
        if !Self::has_cookie(raw) {
            return Err(bad("no xdebugpy cookie".into()));
        }
        let version = Version::from_hex(le_u64(raw, 8));
        let free_threaded = le_u64(raw, 16) != 0;
        if version.major != 3 {
            return Err(bad(format!("version field {version} is not Python 3")));
        }
        let spec = spec_for(version.minor).ok_or(LayoutError::Unsupported(version))?;
        if version.level != 0xf && version.minor >= 14 {
            // Pre-releases of a minor version used other table layouts.
            return Err(LayoutError::Unsupported(version));
        }
        let mut fields = Vec::new();
        let mut off = 24usize;
        for (section, names) in spec {
            let mut size = None;
            for name in names.iter() {
                if off + 8 > raw.len() {
                    return Err(bad("table truncated".into()));
                }
                let v = le_u64(raw, off);
                off += 8;
                if *name == "size" {
                    if v == 0 || v > 1 << 24 {
                        return Err(bad(format!("{section}.size is {v}")));
                    }
                    size = Some(v);
                } else if let Some(s) = size {
                    // Fields that are not offsets into the section's own struct.
                    let free_form = matches!(
                        *name,
                        "gil_runtime_state_enabled"
                            | "tp_repr"
                            | "debugger_script_path_size"
                            | "generation_stats_size"
                    ) || section.ends_with("_support");
                    if !free_form && v >= s {
                        return Err(bad(format!("{section}.{name} = {v} exceeds size {s}")));
                    }
                }
                fields.push((format!("{section}.{name}"), v));
            }
        }
        Ok(DebugOffsets {
            version,
            free_threaded,
            fields,
        })
    }

    /// The value of `section.field`.
    pub fn get(&self, key: &str) -> Result<u64, LayoutError> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .ok_or_else(|| LayoutError::BadDebugOffsets(format!("no field {key}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encode a table in the real format from (field, value) pairs; unlisted fields get `fill`.
    pub(crate) fn encode(version: u64, ft: bool, values: &[(&str, u64)], fill: u64) -> Vec<u8> {
        let minor = ((version >> 16) & 0xff) as u8;
        let mut out = b"xdebugpy".to_vec();
        out.extend(version.to_le_bytes());
        out.extend((ft as u64).to_le_bytes());
        for (section, names) in spec_for(minor).unwrap() {
            for name in names.iter() {
                let key = format!("{section}.{name}");
                let v = values
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| *v)
                    .unwrap_or(if *name == "size" { 4096 } else { fill });
                out.extend(v.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn table_versions_build() {
        for minor in 7..=12 {
            let l = Layout::from_table(Version::new(3, minor, 0), false).unwrap();
            assert_eq!(l.version.minor, minor);
        }
        assert!(Layout::from_table(Version::new(3, 6, 0), false).is_err());
        assert!(Layout::from_table(Version::new(2, 7, 18), false).is_err());
        let arm = Layout::from_table(Version::new(3, 11, 0), true).unwrap();
        assert_eq!(arm.gil, GilSource::RuntimeTstateCurrent(592));
    }

    #[test]
    fn free_threaded_debug_offsets_select_ft_rules() {
        // Values of a 3.14t build (from the internals note, 10.2).
        let raw = encode(
            0x030e_0af0,
            true,
            &[
                ("pyobject.size", 32),
                ("pyobject.ob_type", 24),
                ("interpreter_frame.size", 88),
                ("interpreter_frame.owner", 78),
                ("interpreter_frame.tlbc_index", 72),
                ("code_object.size", 240),
                ("code_object.co_tlbc", 224),
                ("code_object.co_code_adaptive", 232),
                ("code_object.firstlineno", 84),
                ("unicode_object.asciiobject_size", 56),
                ("interpreter_state.size", 20000),
                ("interpreter_state.gil_runtime_state", 7808),
                ("interpreter_state.gil_runtime_state_holder", 7824),
                ("interpreter_state.gil_runtime_state_locked", 7832),
            ],
            8,
        );
        let l = Layout::from_debug_offsets(&raw).unwrap();
        assert!(l.free_threaded);
        assert_eq!(l.f_code_tag_mask, 1);
        assert_eq!(l.str_kind_shift, 8);
        assert_eq!(l.f_tlbc_index, Some(72));
        assert_eq!(l.co_tlbc, Some(224));
        // co_framesize of the 3.14t headers.
        assert_eq!(l.co_framesize, Some(FrameSize::Words(92)));
        assert_eq!(l.module_dict, 32);
        assert_eq!(l.str_compact_data, 72);
        assert_eq!(
            l.gil,
            GilSource::InterpGil {
                ceval_gil: 8,
                locked: 24,
                last_holder: 16
            }
        );
        let gil = Layout::from_debug_offsets(&encode(0x030e_0af0, false, &[], 8)).unwrap();
        assert!(!gil.free_threaded);
        assert_eq!(gil.f_code_tag_mask, 3);
        assert_eq!(gil.f_tlbc_index, None);
        // 3.14 records no GIL request; 3.15 does, at 40 in Debian's build.
        assert_eq!(gil.ts_gil_requested, None);
        assert_eq!(l.ts_gil_requested, None);
        let raw = encode(0x030f_02f0, false, &[("thread_state.gil_requested", 40)], 8);
        let l15 = Layout::from_debug_offsets(&raw).unwrap();
        assert_eq!(l15.ts_gil_requested, Some(40));
        // Up to 3.11 the GIL's state sits in the runtime; 3.12 points at it.
        let gil_in_runtime = |minor| {
            Layout::from_table(Version::new(3, minor, 0), false)
                .unwrap()
                .rt_gil
        };
        assert_eq!(
            [7, 8, 9, 10, 11, 12].map(gil_in_runtime),
            [
                Some(1264),
                Some(1152),
                Some(352),
                Some(352),
                Some(360),
                None
            ]
        );
    }

    #[test]
    fn gil_filter_without_a_gil_keeps_threads_on_cpu() {
        let ft = Layout::from_debug_offsets(&encode(0x030e_00f0, true, &[], 8)).unwrap();
        let gil = Layout::from_debug_offsets(&encode(0x030e_00f0, false, &[], 8)).unwrap();
        for (owns_gil, on_cpu) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(ft.passes_gil_filter(owns_gil, on_cpu), on_cpu);
            assert_eq!(gil.passes_gil_filter(owns_gil, on_cpu), owns_gil);
        }
    }

    #[test]
    fn bad_tables_rejected() {
        assert!(DebugOffsets::decode(b"xdebugp").is_err());
        let mut raw = encode(0x030d_00f0, false, &[], 8);
        raw.truncate(100);
        assert!(DebugOffsets::decode(&raw).is_err());
        let raw = encode(0x030d_00f0, false, &[("code_object.name", 99999)], 8);
        assert!(DebugOffsets::decode(&raw).is_err());
        let raw = encode(0x030e_00a1, false, &[], 8);
        assert!(matches!(
            DebugOffsets::decode(&raw),
            Err(LayoutError::Unsupported(_))
        ));
        let mut raw = encode(0x030f_02f0, false, &[], 8);
        raw[8..16].copy_from_slice(&0x0310_00f0u64.to_le_bytes());
        assert!(matches!(
            DebugOffsets::decode(&raw),
            Err(LayoutError::Unsupported(_))
        ));
    }

    #[test]
    fn eval_loop_runs_entry_chains_from_3_11() {
        for (minor, chain) in [(7, false), (10, false), (11, true), (12, true)] {
            let l = Layout::from_table(Version::new(3, minor, 0), false).unwrap();
            assert_eq!(l.eval_runs_entry_chain(), chain, "3.{minor}");
        }
    }

    #[test]
    fn eval_function_names() {
        let l = Layout::from_table(Version::new(3, 12, 0), false).unwrap();
        assert!(l.is_eval_function("_PyEval_EvalFrameDefault"));
        assert!(l.is_eval_function("_PyEval_EvalFrameDefault.cold"));
        assert!(!l.is_eval_function("PyEval_EvalFrameEx"));
        assert!(!l.is_eval_function("_PyEval_EvalFrame"));
        assert!(!l.is_eval_function("_PyEval_Vector"));
    }
}
