//! What the screen shows, computed from a [`Profile`] and the [`App`]'s choices: the
//! function table (threads selected, filtered, sorted), the header's figures, and the
//! callers and callees of one entry. Pure data, drawn by [`super::render`].

use std::path::PathBuf;

use crate::profile::{FunctionStats, Neighbors, Profile, ThreadInfo};

use super::app::App;

/// Where the target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetState {
    /// A launched command that is not (yet) running Python.
    #[default]
    Starting,
    /// Being sampled.
    Running,
    /// Every sampled process exited; `code` is a launched command's exit code.
    Exited {
        /// The launched command's exit code (128+n for signal n), when prof launched it.
        code: Option<i32>,
    },
    /// The launched command never ran Python, so nothing could be sampled.
    NotPython,
}

/// Figures of the run that the profile does not hold: they come from the sampler.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The target's pid (the launched command's in launch mode).
    pub pid: Option<u32>,
    /// Its Python version, once read.
    pub python: Option<String>,
    /// Where a launched command's stdout and stderr go.
    pub log: Option<PathBuf>,
    /// Wall-clock seconds sampled (since the start or the last reset).
    pub elapsed: f64,
    /// Ticks taken.
    pub ticks: u64,
    /// Ticks skipped because sampling fell behind.
    pub dropped_ticks: u64,
    /// Thread stacks that could not be read.
    pub errors: u64,
    /// Samples lost because the display was not keeping up.
    pub lost: u64,
    /// Where the target stands.
    pub target: TargetState,
    /// The threads' states so far and the verdict (see `prof diagnose`), once sampled.
    pub states: Option<crate::diagnose::Report>,
}

impl Status {
    /// Ticks per second actually taken.
    pub fn achieved_rate(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.ticks as f64 / self.elapsed
        } else {
            0.0
        }
    }

    /// Wall-clock seconds one sample stands for: the real time between ticks (longer
    /// than 1/rate when ticks were dropped), or 1/`requested` before the first tick.
    pub fn interval(&self, requested: f64) -> f64 {
        if self.ticks > 0 && self.elapsed > 0.0 {
            self.elapsed / self.ticks as f64
        } else if requested > 0.0 && requested.is_finite() {
            1.0 / requested
        } else {
            0.01
        }
    }
}

/// How a thread is selected with `t`: its name, or its label when it has none.
pub fn thread_key(t: &ThreadInfo) -> String {
    t.name.clone().unwrap_or_else(|| t.label())
}

/// Distinct thread names, in the order they were first seen.
pub fn thread_names(profile: &Profile) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for t in profile.threads() {
        let k = thread_key(t);
        if !v.contains(&k) {
            v.push(k);
        }
    }
    v
}

/// True when the app shows thread `t`.
pub fn shows_thread(app: &App, t: &ThreadInfo) -> bool {
    match &app.thread {
        None => true,
        Some(name) => thread_key(t) == *name,
    }
}

/// The header's sample figures over the selected threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Samples with at least one frame: the denominator of every percentage.
    pub samples: u64,
    /// Every sample, with or without frames.
    pub all: u64,
    /// Samples taken while the thread was on CPU.
    pub active: u64,
    /// Samples taken while the thread held the GIL.
    pub gil: u64,
    /// Threads selected (that were sampled).
    pub threads: usize,
}

impl Totals {
    /// Share of samples on CPU, in percent.
    pub fn active_pct(&self) -> f64 {
        pct(self.active, self.all)
    }
    /// Share of samples holding the GIL, in percent.
    pub fn gil_pct(&self) -> f64 {
        pct(self.gil, self.all)
    }
}

/// `part` in percent of `whole` (0 when there is no whole).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Everything on the screen but the app's own state.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Figures over the selected threads.
    pub totals: Totals,
    /// Threads in the whole profile.
    pub all_threads: usize,
    /// The table's rows: selected threads, filtered, sorted.
    pub rows: Vec<FunctionStats>,
    /// Rows before the filter.
    pub unfiltered: usize,
    /// The open entry's label and its callers and callees, when one is open.
    pub detail: Option<(String, Neighbors)>,
}

impl View {
    /// Compute the view the app asks for.
    pub fn compute(profile: &Profile, app: &App) -> View {
        let accept = |t: &ThreadInfo| shows_thread(app, t);
        let mut totals = Totals::default();
        for t in profile.threads().iter().filter(|t| accept(t)) {
            totals.samples += t.samples;
            totals.all += t.samples + t.empty_samples;
            totals.active += t.active_samples;
            totals.gil += t.gil_samples;
            totals.threads += 1;
        }
        let mut rows = profile.functions(app.by_line, app.shows_native(), accept);
        let unfiltered = rows.len();
        if !app.filter.is_empty() {
            let needle = app.filter.to_lowercase();
            rows.retain(|r| {
                r.name.to_lowercase().contains(&needle)
                    || r.filename.to_lowercase().contains(&needle)
            });
        }
        // `functions` sorts by own then total; the stable sort keeps that as the tie-break.
        if !app.sort.by_own() {
            rows.sort_by_key(|r| std::cmp::Reverse(r.total));
        }
        let detail = app.detail_id().map(|id| {
            (
                entry_label(profile, app.by_line, id),
                profile.neighbors(app.by_line, app.shows_native(), id, accept),
            )
        });
        View {
            totals,
            all_threads: profile.threads().len(),
            rows,
            unfiltered,
            detail,
        }
    }

    /// Tell the app which rows, threads and neighbors exist.
    pub fn sync(&self, profile: &Profile, app: &mut App) {
        app.sync_threads(thread_names(profile));
        app.sync_rows(self.rows.iter().map(|r| r.id).collect());
        if let Some((_, n)) = &self.detail {
            app.sync_detail(n.callers.iter().chain(&n.callees).map(|x| x.id).collect());
        }
    }
}

/// `name (file:line)`, or `name (file)` without a line.
pub fn label(name: &str, filename: &str, line: Option<i32>) -> String {
    match line {
        Some(l) => format!("{name} ({filename}:{l})"),
        None => format!("{name} ({filename})"),
    }
}

/// The label of an entry id of [`Profile::functions`].
fn entry_label(profile: &Profile, by_line: bool, id: usize) -> String {
    if by_line {
        if id < profile.frame_table().len() {
            return profile.frame_label(id);
        }
    } else if id < profile.function_table().len() {
        return profile.function_label(id);
    }
    format!("entry {id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::two_threads;

    #[test]
    fn totals_and_rows() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        let v = View::compute(&p, &app);
        assert_eq!(v.totals.samples, 10);
        assert_eq!(v.totals.all, 11);
        assert_eq!(v.totals.threads, 2);
        assert_eq!(v.rows[0].name, "compute");
        app.sort = super::super::app::SortColumn::Total;
        let v = View::compute(&p, &app);
        let names: Vec<&str> = v.rows.iter().map(|r| r.name.as_str()).collect();
        // main and work are on 6 stacks; work wins the tie by own.
        assert_eq!(&names[..2], ["work", "main"]);

        app.thread = Some("worker".into());
        let v = View::compute(&p, &app);
        assert_eq!(v.totals.samples, 4);
        assert_eq!(v.totals.gil, 0);
        assert!(v.rows.iter().all(|r| r.name == "run" || r.name == "wait"));

        app.thread = None;
        app.filter = "FI".into();
        let v = View::compute(&p, &app);
        assert_eq!(v.rows.len(), 1);
        assert_eq!(v.rows[0].name, "fib");
        assert_eq!(v.unfiltered, 6);
    }

    #[test]
    fn status_interval() {
        let s = Status {
            elapsed: 2.0,
            ticks: 1000,
            ..Status::default()
        };
        assert!((s.interval(1000.0) - 0.002).abs() < 1e-12);
        assert!((s.achieved_rate() - 500.0).abs() < 1e-9);
        assert!((Status::default().interval(100.0) - 0.01).abs() < 1e-12);
    }
}
