//! `prof diagnose`: what each thread is doing in each sample (running Python, native code,
//! waiting for the GIL, on I/O, a lock, asleep, for a child) and, over a run, which kind of
//! bottleneck the program has.
//!
//! [`state`] decides from facts alone (pure, tested with lines read from real `/proc`
//! files); [`probe`] reads those facts from a live process without stopping it; [`report`]
//! aggregates them and gives the verdict.

pub mod probe;
pub mod procfs;
pub mod report;
pub mod state;

pub use probe::{Prober, PyFacts};
pub use report::{Diagnosis, Report};
pub use state::{FdKind, State, ThreadState};
