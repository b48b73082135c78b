//! `prof report`: the top functions of a profile file, as text, Markdown or JSON; and the
//! same table for `prof record --summary`.
//!
//! The file is read back into a [`Profile`] ([`crate::output::read`]) and the rows are
//! [`Profile::functions`], the table `prof top` shows: own counts the samples where an
//! entry is the innermost frame, total those where it is anywhere on the stack, once per
//! sample under recursion. Shares are of the samples of the threads shown.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::cli::{By, ReportArgs};
use crate::output::read::{ReadProfile, read_file};
use crate::profile::{FunctionStats, Profile, ThreadInfo};
use crate::tui::render::fmt_secs;
use crate::tui::view::{label, thread_key, thread_names};

/// Rows shown when `--top` is not given, and by `record --summary`.
pub const DEFAULT_TOP: usize = 20;

/// What goes in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// Most rows shown; 0 shows every row.
    pub top: usize,
    /// One row per line of a function rather than per function.
    pub by_line: bool,
    /// Only the samples of threads of this name (or label).
    pub thread: Option<String>,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Function name.
    pub name: String,
    /// File name as the profile holds it ("" when it has none).
    pub file: String,
    /// The line by line, else the function's first line, when known.
    pub line: Option<i32>,
    /// Samples where this was the innermost frame.
    pub own_samples: u64,
    /// Samples where this was anywhere on the stack, once per sample.
    pub total_samples: u64,
}

/// The top functions of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Samples of the threads shown: the denominator of every share.
    pub samples: u64,
    /// Seconds a sample stands for, when known.
    pub seconds_per_sample: Option<f64>,
    /// Rows, most own samples first.
    pub rows: Vec<Row>,
    /// Rows left out by `top`.
    pub more: usize,
}

impl Table {
    /// The table of `profile` for `opts`; an unknown `--thread` is an error naming the
    /// threads there are.
    pub fn new(
        profile: &Profile,
        seconds_per_sample: Option<f64>,
        opts: &TableOptions,
    ) -> Result<Table> {
        let accept = |t: &ThreadInfo| match &opts.thread {
            None => true,
            Some(name) => thread_key(t) == *name || t.label() == *name,
        };
        if let Some(name) = &opts.thread
            && !profile.threads().iter().any(accept)
        {
            let names = thread_names(profile);
            return Err(anyhow!(
                "no thread named {name:?} in the profile (its threads: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        }
        let samples = profile
            .threads()
            .iter()
            .filter(|t| accept(t))
            .map(|t| t.samples)
            .sum();
        let all = profile.functions(opts.by_line, true, accept);
        let shown = if opts.top == 0 {
            all.len()
        } else {
            opts.top.min(all.len())
        };
        let rows = all[..shown]
            .iter()
            .map(|f| row(profile, opts.by_line, f))
            .collect();
        Ok(Table {
            samples,
            seconds_per_sample,
            rows,
            more: all.len() - shown,
        })
    }

    fn share(&self, n: u64) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            n as f64 / self.samples as f64
        }
    }

    fn time(&self, n: u64) -> Option<String> {
        self.seconds_per_sample.map(|s| fmt_secs(n as f64 * s))
    }

    /// The table as aligned text; `heading` is its first line.
    pub fn text(&self, heading: &str) -> String {
        let mut out = format!("{heading}\n");
        if self.rows.is_empty() {
            out.push_str("  (no samples)\n");
            return out;
        }
        let timed = self.seconds_per_sample.is_some();
        let mut header = String::from("   %Own  %Total");
        if timed {
            header.push_str("   OwnTime TotalTime");
        }
        header.push_str("     Own   Total  Function");
        out.push_str(&header);
        out.push('\n');
        for r in &self.rows {
            let mut line = format!(
                "{:6.2}% {:6.2}%",
                100.0 * self.share(r.own_samples),
                100.0 * self.share(r.total_samples)
            );
            if let (Some(own), Some(total)) = (self.time(r.own_samples), self.time(r.total_samples))
            {
                line.push_str(&format!(" {own:>9} {total:>9}"));
            }
            line.push_str(&format!(
                " {:>7} {:>7}  {}\n",
                r.own_samples,
                r.total_samples,
                r.label()
            ));
            out.push_str(&line);
        }
        if self.more > 0 {
            out.push_str(&format!("  ... {} more (--top 0 shows all)\n", self.more));
        }
        out
    }

    /// The table in GitHub Markdown, under a `###` heading.
    pub fn markdown(&self, heading: &str) -> String {
        let mut out = format!("### {}\n\n", md_escape(heading));
        if self.rows.is_empty() {
            out.push_str("No samples.\n");
            return out;
        }
        let timed = self.seconds_per_sample.is_some();
        out.push_str("| Own | Total |");
        if timed {
            out.push_str(" Own time | Total time |");
        }
        out.push_str(" Own samples | Total samples | Function |\n|---:|---:|");
        if timed {
            out.push_str("---:|---:|");
        }
        out.push_str("---:|---:|:---|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {:.2}% | {:.2}% |",
                100.0 * self.share(r.own_samples),
                100.0 * self.share(r.total_samples)
            ));
            if let (Some(own), Some(total)) = (self.time(r.own_samples), self.time(r.total_samples))
            {
                out.push_str(&format!(" {own} | {total} |"));
            }
            out.push_str(&format!(
                " {} | {} | {} |\n",
                r.own_samples,
                r.total_samples,
                md_code(&r.label())
            ));
        }
        if self.more > 0 {
            out.push_str(&format!("\n{} more functions not shown.\n", self.more));
        }
        out
    }

    /// The table as JSON: `{"samples", "functions": [{"name", "file", "line", "own",
    /// "total", "own_samples", "total_samples"}]}`, shares as fractions.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            samples: u64,
            functions: Vec<JsonRow<'a>>,
        }
        #[derive(Serialize)]
        struct JsonRow<'a> {
            name: &'a str,
            file: &'a str,
            line: Option<i32>,
            own: f64,
            total: f64,
            own_samples: u64,
            total_samples: u64,
        }
        let json = Json {
            samples: self.samples,
            functions: self
                .rows
                .iter()
                .map(|r| JsonRow {
                    name: &r.name,
                    file: &r.file,
                    line: r.line,
                    own: self.share(r.own_samples),
                    total: self.share(r.total_samples),
                    own_samples: r.own_samples,
                    total_samples: r.total_samples,
                })
                .collect(),
        };
        serde_json::to_string_pretty(&json).expect("plain data serializes")
    }
}

impl Row {
    /// `name (file:line)`, `name (file)`, or the bare name when there is no file.
    pub fn label(&self) -> String {
        match (self.file.is_empty(), self.line) {
            (true, Some(l)) => format!("{}:{l}", self.name),
            (true, None) => self.name.clone(),
            (false, line) => label(&self.name, &self.file, line),
        }
    }
}

/// A row from [`Profile::functions`]: by function, its line is its first line (pprof's
/// `start_line`), else the lowest line sampled in it.
fn row(profile: &Profile, by_line: bool, f: &FunctionStats) -> Row {
    let line = if by_line {
        f.line
    } else {
        let info = &profile.function_table()[f.id];
        [info.first_line, info.lowest_line]
            .into_iter()
            .find(|&l| l > 0)
    };
    Row {
        name: f.name.clone(),
        file: f.filename.clone(),
        line,
        own_samples: f.own,
        total_samples: f.total,
    }
}

/// Markdown-safe text outside code spans.
pub(crate) fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\`*_[]<>|#".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` as a code span inside a table cell: `<module>` must not read as HTML, and a `|`
/// would end the cell even inside the span.
pub(crate) fn md_code(s: &str) -> String {
    let s = s.replace('|', "\\|").replace(['\n', '\r'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    if longest > 0 {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

/// Run `prof report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    let read = read_profile(&args.file)?;
    let opts = TableOptions {
        top: args.top,
        by_line: args.by == By::Line,
        thread: args.thread.clone(),
    };
    let table = Table::new(&read.profile, read.seconds_per_sample(), &opts)
        .map_err(|e| anyhow!("{}: {e}", args.file.display()))?;
    let text = if args.json {
        let mut j = table.json();
        j.push('\n');
        j
    } else {
        let heading = heading(&args.file, read.format.name(), &table, &opts);
        if args.markdown {
            table.markdown(&heading)
        } else {
            table.text(&heading)
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The profile in `path`; an error names the file.
pub(crate) fn read_profile(path: &Path) -> Result<ReadProfile> {
    read_file(path).map_err(|e| match e {
        crate::output::read::ReadError::Io(io) => anyhow!("cannot read {}: {io}", path.display()),
        e => anyhow!("{}: {e}", path.display()),
    })
}

/// `FILE (pprof): N samples, S s, thread T`.
fn heading(path: &Path, format: &str, table: &Table, opts: &TableOptions) -> String {
    let mut h = format!("{} ({format}): {} samples", path.display(), table.samples);
    if let Some(s) = table.seconds_per_sample {
        h.push_str(&format!(", {}", fmt_secs(table.samples as f64 * s)));
    }
    if let Some(t) = &opts.thread {
        h.push_str(&format!(", thread {t}"));
    }
    h
}

/// `record --summary`: the top functions of the profile just recorded, on stderr.
pub fn print_summary(profile: &Profile) {
    let opts = TableOptions {
        top: DEFAULT_TOP,
        by_line: false,
        thread: None,
    };
    let table = match Table::new(profile, Some(profile.sample_interval()), &opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("prof: {e:#}");
            return;
        }
    };
    eprint!(
        "{}",
        table.text(&format!(
            "prof: top functions of {} samples",
            profile.total_samples()
        ))
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::two_threads;

    fn opts() -> TableOptions {
        TableOptions {
            top: 0,
            by_line: false,
            thread: None,
        }
    }

    #[test]
    fn rows_shares_and_threads() {
        let p = two_threads(ProfileOptions::default());
        let t = Table::new(&p, Some(0.01), &opts()).unwrap();
        assert_eq!(t.samples, 10);
        let names: Vec<&str> = t.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names[..2], ["compute", "wait"]);
        assert_eq!((t.rows[0].own_samples, t.rows[0].total_samples), (4, 4));
        assert_eq!(t.rows[0].line, Some(20), "by function: lowest line sampled");

        let main = TableOptions {
            thread: Some("MainThread".into()),
            top: 2,
            ..opts()
        };
        let t = Table::new(&p, None, &main).unwrap();
        assert_eq!((t.samples, t.rows.len(), t.more), (6, 2, 2));
        assert!(t.rows.iter().all(|r| r.name != "wait"));
        // The label works as well as the name.
        let by_label = TableOptions {
            thread: Some("worker (tid 1002)".into()),
            ..opts()
        };
        assert_eq!(Table::new(&p, None, &by_label).unwrap().samples, 4);
        let err = Table::new(
            &p,
            None,
            &TableOptions {
                thread: Some("nope".into()),
                ..opts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("MainThread, worker"), "{err}");

        let by_line = TableOptions {
            by_line: true,
            ..opts()
        };
        let t = Table::new(&p, None, &by_line).unwrap();
        assert_eq!(
            (
                t.rows[0].name.as_str(),
                t.rows[0].line,
                t.rows[0].own_samples
            ),
            ("wait", Some(5), 4)
        );
    }

    #[test]
    fn json_as_specified() {
        let p = two_threads(ProfileOptions::default());
        let t = Table::new(&p, Some(0.01), &opts()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&t.json()).unwrap();
        assert_eq!(v["samples"], 10);
        let f = &v["functions"][0];
        let keys: Vec<&str> = f.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want = [
            "name",
            "file",
            "line",
            "own",
            "total",
            "own_samples",
            "total_samples",
        ];
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);
        assert_eq!(f["name"], "compute");
        assert_eq!(f["file"], "main.py");
        assert_eq!(f["own"], 0.4);
        assert_eq!(f["own_samples"], 4);
        let main = v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "main")
            .unwrap();
        assert_eq!(
            (main["own"].as_f64(), main["total"].as_f64()),
            (Some(0.0), Some(0.6))
        );
        let owns: Vec<f64> = v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["own"].as_f64().unwrap())
            .collect();
        assert!(owns.windows(2).all(|w| w[0] >= w[1]), "sorted by own");
    }

    #[test]
    fn text_and_markdown() {
        let p = two_threads(ProfileOptions::default());
        let t = Table::new(&p, Some(0.01), &TableOptions { top: 3, ..opts() }).unwrap();
        let text = t.text("head");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "head");
        assert!(lines[1].contains("OwnTime"), "{text}");
        assert!(
            lines[2].contains(" 40.00%") && lines[2].contains("0.04s"),
            "{text}"
        );
        assert!(lines[2].ends_with("compute (main.py:20)"), "{text}");
        assert!(lines.last().unwrap().contains("3 more"), "{text}");
        let untimed = Table::new(&p, None, &opts()).unwrap().text("h");
        assert!(!untimed.contains("OwnTime"), "{untimed}");

        let md = t.markdown("a|b <x>");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "### a\\|b \\<x\\>");
        assert_eq!(lines[3].matches('|').count(), lines[2].matches('|').count());
        assert!(
            lines[4].ends_with("| 4 | 4 | `compute (main.py:20)` |"),
            "{md}"
        );
        assert_eq!(md_code("a|b"), "`a\\|b`");
        assert_eq!(md_code("x`y"), "`` x`y ``");
    }
}
