//! Connecting a live process to the readers: the glue every live command shares.

use crate::target::{LivePid, Snapshot, TargetError};

/// A live Python process ready to be read.
pub type LiveTarget = Snapshot<LivePid>;

/// Attach to `pid`: check it exists and may be read, find its interpreter.
pub fn attach(pid: u32) -> Result<LiveTarget, TargetError> {
    Snapshot::attach(LivePid::open(pid)?)
}
