//! The one data model every layer shares: frames, thread stacks and samples.

use std::sync::Arc;

use serde::Serialize;

/// What kind of code a frame ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// A Python function, read from the interpreter's frame chain.
    #[default]
    Python,
    /// Native code, from the DWARF unwinder.
    Native,
}

/// One frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// Function name as shown to users (the qualified name where the interpreter has one).
    /// Shared, as are the file names: a frame is cloned for every sample it appears in.
    pub name: Arc<str>,
    /// File name exactly as the interpreter knows it (`co_filename`).
    pub filename: Arc<str>,
    /// Module-relative short file name (`json/decoder.py`).
    pub short_filename: Arc<str>,
    /// Line being executed, or 0 when the interpreter has no line for this instruction.
    pub line: i32,
    /// Python or native.
    pub kind: FrameKind,
    /// Local variables, filled only when requested (`--locals`).
    pub locals: Option<Vec<LocalVar>>,
}

/// A local variable with a short, bounded representation of its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct LocalVar {
    /// Variable name.
    pub name: String,
    /// Short repr of simple values (None, bool, int, float, str), `<type>` otherwise.
    pub repr: Option<String>,
    /// True for function arguments.
    pub arg: bool,
}

/// The stack of one thread at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadStack {
    /// Python's thread identifier (`threading.get_ident()`).
    pub thread_id: u64,
    /// Kernel thread id, when known.
    pub os_thread_id: Option<u32>,
    /// Thread name (`threading.current_thread().name`), when known.
    pub thread_name: Option<String>,
    /// The thread was on CPU (state `R`) when sampled.
    pub active: bool,
    /// The thread held the GIL when sampled.
    pub owns_gil: bool,
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
}

/// One thread's stack at one tick, as it flows from the sampler to the profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the start of the recording.
    pub time: f64,
    /// Process the thread belongs to.
    pub pid: u32,
    /// The stack and its thread.
    pub stack: ThreadStack,
}
