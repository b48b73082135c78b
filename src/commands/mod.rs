//! One module per command: glue between the CLI and the library.

pub mod diagnose;
pub mod diff;
pub mod dump;
pub mod record;
pub mod report;
pub mod top;

/// `--depth` must be a number of frames prof can follow.
pub fn check_depth(depth: usize) -> anyhow::Result<()> {
    let most = crate::python::frames::MAX_DEPTH;
    if !(1..=most).contains(&depth) {
        anyhow::bail!("--depth must be between 1 and {most} frames, not {depth}");
    }
    Ok(())
}
