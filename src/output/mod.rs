//! Profile writers for `prof record`: one file per format, all reading a [`Profile`].
//!
//! | format        | `-f` names              | extensions (`-o`)                        |
//! |---------------|-------------------------|------------------------------------------|
//! | flamegraph    | `flamegraph`            | `.svg`                                   |
//! | raw           | `raw`, `collapsed`      | `.txt`, `.folded`, `.collapsed`          |
//! | speedscope    | `speedscope`            | `.json`, `.speedscope.json`              |
//! | chrometrace   | `chrometrace`, `chrome` | `.trace.json`, `.chrome.json`            |
//! | pprof         | `pprof`                 | `.pb.gz`, `.pprof`, `.pb`                |
//!
//! A bare `.json` means speedscope because py-spy writes speedscope files as
//! `.json`; Chrome traces are told apart by a second extension.
//!
//! [`read`] reads pprof, speedscope and raw files back into a [`Profile`].

pub mod chrometrace;
pub mod file;
pub mod flamegraph;
pub mod pprof;
pub mod raw;
pub mod read;
pub mod speedscope;

use std::fmt;
use std::io::Write;
use std::path::Path;

use thiserror::Error;

use crate::profile::Profile;

/// Why a profile could not be written.
#[derive(Debug, Error)]
pub enum OutputError {
    /// Writing the output failed.
    #[error("cannot write the profile: {0}")]
    Io(#[from] std::io::Error),
    /// Serializing JSON failed (only ever an I/O failure underneath).
    #[error("cannot write the profile: {0}")]
    Json(#[from] serde_json::Error),
    /// The format orders samples in time, and the profile did not keep the timeline.
    #[error("the {0} format needs the samples' timeline (ProfileOptions::keep_timeline)")]
    NeedsTimeline(&'static str),
    /// No sample had a stack, and the format cannot express an empty profile.
    #[error("no samples were collected, so there is no flame graph to draw")]
    NoSamples,
}

/// Result of the writers.
pub type Result<T> = std::result::Result<T, OutputError>;

/// The file formats `prof record` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Interactive SVG flame graph (inferno).
    Flamegraph,
    /// Folded stacks, one `root;...;leaf count` line per stack.
    Raw,
    /// speedscope's JSON file format, one sampled profile per thread.
    Speedscope,
    /// Chrome's Trace Event Format, for Perfetto and chrome://tracing.
    ChromeTrace,
    /// Gzipped pprof protobuf, for `go tool pprof` and friends.
    Pprof,
}

/// Everything about a format but its writer, written once: its `-f` name and the other
/// names it answers to, the extension of the files written by default, and the file-name
/// suffixes that imply it (see the module table).
struct Spec {
    format: Format,
    name: &'static str,
    aliases: &'static [&'static str],
    extension: &'static str,
    suffixes: &'static [&'static str],
}

/// One [`Spec`] per format, in the order of the enum (and of the lists shown to users).
const SPECS: [Spec; 5] = [
    Spec {
        format: Format::Flamegraph,
        name: "flamegraph",
        aliases: &[],
        extension: "svg",
        suffixes: &[".svg"],
    },
    Spec {
        format: Format::Raw,
        name: "raw",
        aliases: &["collapsed"],
        extension: "txt",
        suffixes: &[".txt", ".folded", ".collapsed"],
    },
    Spec {
        format: Format::Speedscope,
        name: "speedscope",
        aliases: &[],
        extension: "json",
        suffixes: &[".json", ".speedscope.json"],
    },
    Spec {
        format: Format::ChromeTrace,
        name: "chrometrace",
        aliases: &["chrome"],
        extension: "trace.json",
        suffixes: &[".trace.json", ".chrome.json"],
    },
    Spec {
        format: Format::Pprof,
        name: "pprof",
        aliases: &[],
        extension: "pb.gz",
        suffixes: &[".pb.gz", ".pprof", ".pb"],
    },
];

impl Format {
    /// Every format, in the order they are listed to users.
    pub const ALL: [Format; 5] = {
        let mut all = [Format::Flamegraph; 5];
        let mut i = 0;
        while i < SPECS.len() {
            all[i] = SPECS[i].format;
            i += 1;
        }
        all
    };

    fn spec(self) -> &'static Spec {
        // SPECS is in the enum's order (checked by a test).
        &SPECS[self as usize]
    }

    /// The format's canonical `-f` name.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The format an output file name implies, if any (see the module table).
    pub fn from_extension(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        // The longest suffix that matches: `.trace.json` must not be taken for speedscope.
        SPECS
            .iter()
            .flat_map(|s| s.suffixes.iter().map(move |suffix| (*suffix, s.format)))
            .filter(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix))
            .max_by_key(|(suffix, _)| suffix.len())
            .map(|(_, f)| f)
    }

    /// The extension (without the dot) of files written in this format by default.
    pub fn default_extension(self) -> &'static str {
        self.spec().extension
    }

    /// True when the writer wants [`crate::profile::ProfileOptions::keep_timeline`]:
    /// speedscope keeps samples in time order with it, Chrome trace cannot do without.
    pub fn needs_timeline(self) -> bool {
        matches!(self, Format::Speedscope | Format::ChromeTrace)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `-f`'s values, named as in `SPECS`: clap parses them (with `collapsed` = `raw`), lists
/// them in `--help` and names them when one is wrong.
impl clap::ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Self] {
        &Format::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let spec = self.spec();
        Some(clap::builder::PossibleValue::new(spec.name).aliases(spec.aliases.iter().copied()))
    }
}

/// Write `profile` in `format`.
pub fn write(format: Format, profile: &Profile, out: &mut dyn Write) -> Result<()> {
    match format {
        Format::Flamegraph => flamegraph::write_flamegraph(profile, out),
        Format::Raw => raw::write_raw(profile, out),
        Format::Speedscope => speedscope::write_speedscope(profile, out),
        Format::ChromeTrace => chrometrace::write_chrometrace(profile, out),
        Format::Pprof => pprof::write_pprof(profile, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_follow_the_enum() {
        for (i, s) in SPECS.iter().enumerate() {
            assert_eq!(s.format as usize, i, "{}", s.name);
            assert_eq!(Format::ALL[i], s.format);
        }
    }

    #[test]
    fn names() {
        use clap::ValueEnum;
        let parse = |name: &str| Format::from_str(name, true).ok();
        for f in Format::ALL {
            assert_eq!(parse(f.name()), Some(f));
        }
        assert_eq!(parse("collapsed"), Some(Format::Raw));
        assert_eq!(parse("FlameGraph"), Some(Format::Flamegraph));
        assert_eq!(parse("svg"), None);
    }

    #[test]
    fn extensions() {
        let of = |p: &str| Format::from_extension(Path::new(p));
        assert_eq!(of("out.svg"), Some(Format::Flamegraph));
        assert_eq!(of("/tmp/x/OUT.SVG"), Some(Format::Flamegraph));
        assert_eq!(of("a.txt"), Some(Format::Raw));
        assert_eq!(of("a.folded"), Some(Format::Raw));
        assert_eq!(of("a.collapsed"), Some(Format::Raw));
        assert_eq!(of("a.json"), Some(Format::Speedscope));
        assert_eq!(of("a.speedscope.json"), Some(Format::Speedscope));
        assert_eq!(of("a.trace.json"), Some(Format::ChromeTrace));
        assert_eq!(of("a.chrome.json"), Some(Format::ChromeTrace));
        assert_eq!(of("a.pb.gz"), Some(Format::Pprof));
        assert_eq!(of("a.pprof"), Some(Format::Pprof));
        assert_eq!(of("a.gz"), None);
        assert_eq!(of("a"), None);
        assert_eq!(of(".svg"), None, "a bare extension is no file name");
        for f in Format::ALL {
            let name = format!("profile.{}", f.default_extension());
            assert_eq!(Format::from_extension(Path::new(&name)), Some(f), "{name}");
        }
    }

    #[test]
    fn timeline_formats() {
        let need: Vec<Format> = Format::ALL
            .into_iter()
            .filter(|f| f.needs_timeline())
            .collect();
        assert_eq!(need, [Format::Speedscope, Format::ChromeTrace]);
    }
}
