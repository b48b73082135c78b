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

/// The code a frame ran, as users see it: shared by every frame of that code, so copying a
/// frame (once per sample it appears in) costs one reference count.
#[derive(Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FrameCode {
    /// Function name as shown to users (the qualified name where the interpreter has one).
    /// The texts are shared too (the Python reader interns them), which lets a profile
    /// recognise a function by pointer.
    pub name: Arc<str>,
    /// File name exactly as the interpreter knows it (`co_filename`).
    pub filename: Arc<str>,
    /// Module-relative short file name (`json/decoder.py`).
    pub short_filename: Arc<str>,
    /// The line the function starts at (`co_firstlineno`), 0 when unknown (native code).
    #[serde(skip)]
    pub first_line: i32,
}

/// One frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// Name and file names.
    #[serde(flatten)]
    pub code: Arc<FrameCode>,
    /// Line being executed, or 0 when the interpreter has no line for this instruction.
    pub line: i32,
    /// Python or native.
    pub kind: FrameKind,
    /// Local variables, filled only when requested (`--locals`).
    pub locals: Option<Vec<LocalVar>>,
}

impl Frame {
    /// A frame with its own name and file name texts (no locals).
    pub fn new(
        name: impl Into<Arc<str>>,
        filename: impl Into<Arc<str>>,
        short_filename: impl Into<Arc<str>>,
        line: i32,
        kind: FrameKind,
    ) -> Frame {
        Frame {
            code: Arc::new(FrameCode {
                name: name.into(),
                filename: filename.into(),
                short_filename: short_filename.into(),
                first_line: 0,
            }),
            line,
            kind,
            locals: None,
        }
    }

    /// A pseudo-frame that stands for something other than code (`[merge uncertain]`,
    /// `[N frames not shown]`): a native frame with no file and no line, so every output
    /// shows it by its name alone, like a native frame without symbols, and needs no case
    /// of its own.
    pub fn marker(name: impl Into<Arc<str>>) -> Frame {
        Frame::new(name, "", "", 0, FrameKind::Native)
    }

    /// Is this a pseudo-frame made by [`Frame::marker`]?
    pub fn is_marker(&self) -> bool {
        self.kind == FrameKind::Native
            && self.filename().is_empty()
            && self.short_filename().is_empty()
            && self.line == 0
    }

    /// Function name as shown to users.
    pub fn name(&self) -> &str {
        &self.code.name
    }

    /// File name exactly as the interpreter knows it.
    pub fn filename(&self) -> &str {
        &self.code.filename
    }

    /// Module-relative short file name.
    pub fn short_filename(&self) -> &str {
        &self.code.short_filename
    }
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
    /// Shared: it is copied into every sample of the thread.
    pub thread_name: Option<Arc<str>>,
    /// The thread was on CPU (state `R`) when sampled.
    pub active: bool,
    /// The thread held the GIL when sampled.
    pub owns_gil: bool,
    /// The thread had asked for the GIL (recorded by 3.15+ only).
    #[serde(skip)]
    pub gil_requested: bool,
    /// What the thread was doing, when states are read (`diagnose`, `--states`).
    #[serde(skip)]
    pub state: Option<crate::diagnose::ThreadState>,
    /// Frames, innermost first.
    pub frames: Frames,
}

/// A stack's frames, innermost first, shared: the Python reader hands out the same stack
/// again while a thread stays where it was (a copy costs one reference count, not one per
/// frame), and the profile recognises a stack it has seen by pointer. Read it as a
/// `Vec<Frame>`; a change copies it first when it is shared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frames(Arc<Vec<Frame>>);

impl Frames {
    /// Is `other` this very stack (not only an equal one)?
    pub fn same(&self, other: &Frames) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<Vec<Frame>> for Frames {
    fn from(frames: Vec<Frame>) -> Frames {
        Frames(Arc::new(frames))
    }
}

impl FromIterator<Frame> for Frames {
    fn from_iter<I: IntoIterator<Item = Frame>>(iter: I) -> Frames {
        Frames::from(iter.into_iter().collect::<Vec<Frame>>())
    }
}

impl std::ops::Deref for Frames {
    type Target = Vec<Frame>;
    fn deref(&self) -> &Vec<Frame> {
        &self.0
    }
}

impl std::ops::DerefMut for Frames {
    fn deref_mut(&mut self) -> &mut Vec<Frame> {
        Arc::make_mut(&mut self.0)
    }
}

impl<'a> IntoIterator for &'a Frames {
    type Item = &'a Frame;
    type IntoIter = std::slice::Iter<'a, Frame>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a mut Frames {
    type Item = &'a mut Frame;
    type IntoIter = std::slice::IterMut<'a, Frame>;
    fn into_iter(self) -> Self::IntoIter {
        Arc::make_mut(&mut self.0).iter_mut()
    }
}

impl Serialize for Frames {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One thread's stack at one tick, as it flows from the sampler to the profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the start of the recording.
    pub time: f64,
    /// The sampler's tick it was taken at: its period's number on the grid from the start
    /// (see [`crate::sampler::Stamp`]); the samples of one tick share it.
    pub tick: u64,
    /// Process the thread belongs to.
    pub pid: u32,
    /// The stack and its thread.
    pub stack: ThreadStack,
}
