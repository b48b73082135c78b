//! Merging a thread's native stack with its Python stack.
//!
//! The rule: walk the native frames innermost → outermost. A native frame running the
//! interpreter's eval loop ([`NativeFrame::eval`], which the caller sets: the interpreter's
//! layout names the loop, `Layout::is_eval_function`) is replaced by the Python frames
//! that C call ran, by the rule the layout gives (`Layout::eval_runs_entry_chain`):
//! - 3.11+ ([`EntryRule::EntryFlag`]): Python calls no longer nest C calls; one eval
//!   call runs Python frames up to and including the first one marked `is_entry` (the
//!   frame the C call started with), so that many Python frames are consumed;
//! - 3.7–3.10 ([`EntryRule::PerFrame`]): every Python call is its own C call of the eval
//!   function, so each eval frame is exactly one Python frame. The wrappers that lead to
//!   it (`PyEval_EvalFrameEx`, `_PyEval_EvalFrame` when not inlined, `_PyEval_Vector`,
//!   `function_code_fastcall`…) call it through `interp->eval_frame`, so counting them
//!   too would count each Python frame twice: they are not markers.
//!
//! Every other native frame is kept, in order, including the interpreter's own call
//! plumbing (`_PyObject_Vectorcall`…): C functions of the interpreter such as
//! `time_sleep`, `builtin_sorted` or `list_sort` are often exactly what the user wants
//! to see, and telling them from plumbing needs a list that ages with every release.
//!
//! When the counts do not match (a stripped binary where the eval function has no
//! symbol, a torn read, a thread between frames) the sample is kept: native frames with no
//! Python frames left stay as they are, Python frames no eval frame claimed are appended
//! at the outer end, and a native frame named [`UNCERTAIN`] is added at the very end.

use crate::sample::Frame;

/// Name of the marker frame added when native and Python stacks do not line up.
pub const UNCERTAIN: &str = "[merge uncertain]";

/// How many Python frames one eval-loop frame ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRule {
    /// 3.7–3.10: exactly one.
    PerFrame,
    /// 3.11+: up to and including the next frame whose `is_entry` is set.
    EntryFlag,
}

/// One native pc: its symbolized levels (inlined ones first, innermost first) and
/// whether it runs the eval loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeFrame {
    /// Frames to show for this pc, innermost first (kind [`crate::sample::FrameKind::Native`]).
    pub frames: Vec<Frame>,
    /// The pc is in the interpreter's eval loop: set by the caller, which knows the
    /// interpreter (by name from its layout, or by where its entry frames are); false as
    /// symbolized.
    pub eval: bool,
}

/// A frame named [`UNCERTAIN`].
pub fn uncertain_frame() -> Frame {
    Frame::marker(UNCERTAIN)
}

/// Merge `native` (innermost first) with `python` (innermost first; `entries[i]` is
/// `is_entry` of `python[i]`, missing entries count as false). Never fails; see the
/// module documentation for the rule and what a mismatch gives.
pub fn merge(
    native: &[NativeFrame],
    python: &[Frame],
    entries: &[bool],
    rule: EntryRule,
) -> Vec<Frame> {
    let mut out = Vec::with_capacity(native.len() + python.len());
    let mut next = 0;
    let mut uncertain = false;
    for nf in native {
        if !nf.eval {
            out.extend(nf.frames.iter().cloned());
            continue;
        }
        if next >= python.len() {
            // An eval frame with no Python frame left for it.
            uncertain = true;
            out.extend(nf.frames.iter().cloned());
            continue;
        }
        match rule {
            EntryRule::PerFrame => {
                out.push(python[next].clone());
                next += 1;
            }
            EntryRule::EntryFlag => {
                let start = next;
                while next < python.len() {
                    let entry = entries.get(next).copied().unwrap_or(false);
                    next += 1;
                    if entry {
                        break;
                    }
                }
                let closed = entries.get(next - 1).copied().unwrap_or(false);
                if !closed {
                    // Ran out of Python frames without finding the entry frame.
                    uncertain = true;
                }
                out.extend(python[start..next].iter().cloned());
            }
        }
    }
    if next < python.len() {
        uncertain = true;
        out.extend(python[next..].iter().cloned());
    }
    if uncertain {
        out.push(uncertain_frame());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::FrameKind;

    fn py(name: &str) -> Frame {
        Frame::new(
            name,
            format!("{name}.py"),
            format!("{name}.py"),
            1,
            FrameKind::Python,
        )
    }

    fn nat(name: &str) -> NativeFrame {
        NativeFrame {
            frames: vec![Frame::new(name, "", "", 0, FrameKind::Native)],
            eval: name == EVAL,
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.name()).collect()
    }

    const EVAL: &str = "_PyEval_EvalFrameDefault";

    #[test]
    fn one_python_frame_per_eval_frame_up_to_310() {
        // sorted(key=f) called from g called from <module>.
        let native = [
            nat("clock_nanosleep"),
            nat("time_sleep"),
            nat(EVAL),
            nat("function_code_fastcall"),
            nat("list_sort"),
            nat("builtin_sorted"),
            nat(EVAL),
            nat("_PyFunction_Vectorcall"),
            nat(EVAL),
            nat("main"),
        ];
        let python = [py("f"), py("g"), py("<module>")];
        let got = merge(&native, &python, &[], EntryRule::PerFrame);
        assert_eq!(
            names(&got),
            [
                "clock_nanosleep",
                "time_sleep",
                "f",
                "function_code_fastcall",
                "list_sort",
                "builtin_sorted",
                "g",
                "_PyFunction_Vectorcall",
                "<module>",
                "main"
            ]
        );
        assert_eq!(got[2].kind, FrameKind::Python);
    }

    #[test]
    fn entry_flags_group_python_frames_from_311() {
        // f is run by a C call (sorted's key); g and h share one eval call with <module>.
        let native = [
            nat("clock_nanosleep"),
            nat("time_sleep"),
            nat(EVAL),
            nat("list_sort"),
            nat("builtin_sorted"),
            nat(EVAL),
            nat("PyEval_EvalCode"),
            nat("main"),
        ];
        let python = [py("f"), py("h"), py("g"), py("<module>")];
        let entries = [true, false, false, true];
        let got = merge(&native, &python, &entries, EntryRule::EntryFlag);
        assert_eq!(
            names(&got),
            [
                "clock_nanosleep",
                "time_sleep",
                "f",
                "list_sort",
                "builtin_sorted",
                "h",
                "g",
                "<module>",
                "PyEval_EvalCode",
                "main"
            ]
        );
    }

    #[test]
    fn inlined_levels_stay_together() {
        let mut n = nat("pysleep");
        n.frames.push(nat("time_sleep").frames.remove(0));
        let native = [n, nat(EVAL), nat("main")];
        let got = merge(&native, &[py("f")], &[true], EntryRule::EntryFlag);
        assert_eq!(names(&got), ["pysleep", "time_sleep", "f", "main"]);
    }

    #[test]
    fn no_eval_symbol_appends_python_frames_and_marks() {
        let native = [
            nat("clock_nanosleep"),
            nat("0x4a1b2c (python3+0xa1b2c)"),
            nat("_start"),
        ];
        let python = [py("f"), py("<module>")];
        let got = merge(&native, &python, &[false, true], EntryRule::EntryFlag);
        assert_eq!(
            names(&got),
            [
                "clock_nanosleep",
                "0x4a1b2c (python3+0xa1b2c)",
                "_start",
                "f",
                "<module>",
                UNCERTAIN
            ]
        );
    }

    #[test]
    fn more_eval_frames_than_python_frames_keeps_them_and_marks() {
        let native = [nat(EVAL), nat(EVAL), nat("main")];
        let got = merge(&native, &[py("f")], &[], EntryRule::PerFrame);
        assert_eq!(names(&got), ["f", EVAL, "main", UNCERTAIN]);
    }

    #[test]
    fn missing_entry_flag_consumes_rest_and_marks() {
        let native = [nat(EVAL), nat("main")];
        let python = [py("f"), py("g")];
        let got = merge(&native, &python, &[false, false], EntryRule::EntryFlag);
        assert_eq!(names(&got), ["f", "g", "main", UNCERTAIN]);
    }

    #[test]
    fn empty_inputs() {
        assert!(merge(&[], &[], &[], EntryRule::PerFrame).is_empty());
        let got = merge(&[], &[py("f")], &[true], EntryRule::EntryFlag);
        assert_eq!(names(&got), ["f", UNCERTAIN]);
        let got = merge(&[nat("main")], &[], &[], EntryRule::EntryFlag);
        assert_eq!(names(&got), ["main"]);
    }
}
