//! `flamegraph`: an interactive SVG flame graph drawn by inferno from the folded stacks.

use std::collections::HashMap;
use std::io::{BufWriter, Write};

use inferno::flamegraph::{self, Options};

use super::{OutputError, Result};
use crate::profile::Profile;

/// The subtitle: what the flame graph counts, and how faithfully it was sampled.
pub fn subtitle(profile: &Profile) -> String {
    let meta = profile.meta();
    let mut s = format!(
        "{} samples over {:.2} s",
        profile.total_samples(),
        profile.duration()
    );
    if meta.achieved_rate > 0.0 {
        s += &format!(" at {:.1} Hz", meta.achieved_rate);
    }
    s += &format!(" ({} Hz requested)", meta.requested_rate);
    if meta.dropped_ticks > 0 {
        s += &format!(", {} ticks dropped", meta.dropped_ticks);
    }
    if meta.errors > 0 {
        s += &format!(", {} failed reads", meta.errors);
    }
    s
}

/// Write `profile` as an SVG flame graph; [`OutputError::NoSamples`] when it is empty.
pub fn write_flamegraph(profile: &Profile, out: &mut dyn Write) -> Result<()> {
    // inferno draws an "invalid input" picture for no stacks; say what happened instead.
    if profile.total_samples() == 0 {
        return Err(OutputError::NoSamples);
    }
    let folded: Vec<String> = profile
        .folded()
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect();
    let mut opts = Options::default();
    opts.title = profile.meta().title.clone();
    opts.subtitle = Some(subtitle(profile));
    opts.count_name = "samples".to_owned();
    // Colour by name hash, so one function keeps its colour across runs and files.
    opts.hash = true;
    let mut out = BufWriter::new(out);
    flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), &mut out)?;
    out.flush()?;
    Ok(())
}

/// Write a differential flame graph of `head` against `base`: frames are as wide as in
/// `head`, red where their share of the samples grew, blue where it shrank.
///
/// `base` is scaled to `head`'s total first, so the colours compare shares of each
/// profile's own samples, not counts of runs of different lengths or rates, and tooltips
/// count `head`'s samples with the change in points of its total.
pub fn write_differential(
    base: &Profile,
    head: &Profile,
    title: &str,
    subtitle: &str,
    out: &mut dyn Write,
) -> Result<()> {
    if base.total_samples() == 0 || head.total_samples() == 0 {
        return Err(OutputError::NoSamples);
    }
    // One file named differently by the two formats must be one frame in both.
    let files = crate::profile::diff::shared_file_names(base, head);
    let scaled = |p: &Profile, to: f64| -> HashMap<String, u64> {
        let total = p.total_samples() as f64;
        let mut m = HashMap::new();
        for (stack, count) in p.folded() {
            let stack = if files.is_empty() {
                stack
            } else {
                stack
                    .split(';')
                    .map(|label| renamed(label, &files))
                    .collect::<Vec<_>>()
                    .join(";")
            };
            *m.entry(stack).or_insert(0) += (count as f64 * to / total).round() as u64;
        }
        m
    };
    let to = head.total_samples() as f64;
    let (b, h) = (scaled(base, to), scaled(head, to));
    let mut stacks: Vec<&String> = b.keys().chain(h.keys()).collect();
    stacks.sort();
    stacks.dedup();
    // inferno reads `stack before after`: the width is `after`, the colour `after - before`.
    let lines: Vec<String> = stacks
        .into_iter()
        .map(|s| {
            let before = b.get(s).copied().unwrap_or(0);
            let after = h.get(s).copied().unwrap_or(0);
            format!("{s} {before} {after}")
        })
        .collect();
    let mut opts = Options::default();
    opts.title = title.to_owned();
    opts.subtitle = Some(subtitle.to_owned());
    opts.count_name = "samples".to_owned();
    let mut out = BufWriter::new(out);
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)?;
    out.flush()?;
    Ok(())
}

/// A folded frame label, `name (file:line)` or `name (file)`, with its file renamed per
/// `files`.
fn renamed(label: &str, files: &HashMap<String, String>) -> String {
    let Some(open) = label.rfind(" (") else {
        return label.to_owned();
    };
    let Some(inner) = label[open + 2..].strip_suffix(')') else {
        return label.to_owned();
    };
    let (file, line) = match inner.rsplit_once(':') {
        Some((f, l)) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => (f, Some(l)),
        _ => (inner, None),
    };
    match (files.get(file), line) {
        (Some(to), Some(l)) => format!("{} ({to}:{l})", &label[..open]),
        (Some(to), None) => format!("{} ({to})", &label[..open]),
        (None, _) => label.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::*;

    fn svg(opts: ProfileOptions) -> String {
        let p = two_threads(opts);
        let mut buf = Vec::new();
        write_flamegraph(&p, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Text of every `<title>` of a frame rectangle (`g` element), as browsers show it.
    fn frame_titles(doc: &roxmltree::Document) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("g"))
            .filter_map(|g| g.children().find(|c| c.has_tag_name("title")))
            .filter_map(|t| t.text().map(str::to_owned))
            .collect()
    }

    #[test]
    fn well_formed_with_frames_title_and_subtitle() {
        let text = svg(ProfileOptions::default());
        let doc = roxmltree::Document::parse_with_options(
            &text,
            roxmltree::ParsingOptions {
                allow_dtd: true,
                ..Default::default()
            },
        )
        .expect("well-formed XML");
        assert!(doc.root_element().has_tag_name("svg"));
        let titles = frame_titles(&doc);
        for name in [
            "main (main.py:1)",
            "work (main.py:10)",
            "compute (main.py:20)",
            "fib (main.py:31)",
            "wait (main.py:5)",
        ] {
            assert!(
                titles.iter().any(|t| t.starts_with(name)),
                "{name} not in {titles:?}"
            );
        }
        // Each frame's tooltip carries its count: compute:20 is 3 of 10 samples.
        assert!(
            titles
                .iter()
                .any(|t| t.starts_with("compute (main.py:20) (3 samples, 30.00%)")),
            "{titles:?}"
        );
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"python app.py <&>"), "title, unescaped");
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("10 samples over 0.06 s at 100.0 Hz")),
            "{texts:?}"
        );
    }

    #[test]
    fn thread_roots() {
        let text = svg(ProfileOptions {
            threads_as_root: true,
            ..Default::default()
        });
        let doc = roxmltree::Document::parse_with_options(
            &text,
            roxmltree::ParsingOptions {
                allow_dtd: true,
                ..Default::default()
            },
        )
        .unwrap();
        let titles = frame_titles(&doc);
        assert!(
            titles
                .iter()
                .any(|t| t.starts_with("worker (tid 1002) (4 samples, 40.00%)")),
            "{titles:?}"
        );
    }

    #[test]
    fn renamed_labels() {
        let files = HashMap::from([("a.py".to_owned(), "/src/a.py".to_owned())]);
        assert_eq!(renamed("f (a.py:3)", &files), "f (/src/a.py:3)");
        assert_eq!(renamed("f (a.py)", &files), "f (/src/a.py)");
        assert_eq!(renamed("g (x (a.py):3)", &files), "g (x (a.py):3)");
        assert_eq!(renamed("f (b.py:3)", &files), "f (b.py:3)");
        assert_eq!(renamed("process 12", &files), "process 12");
    }

    #[test]
    fn empty_profile_is_an_error() {
        let p = crate::profile::Profile::new(meta(), ProfileOptions::default());
        let mut buf = Vec::new();
        assert!(matches!(
            write_flamegraph(&p, &mut buf),
            Err(OutputError::NoSamples)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn subtitle_reports_drops_and_errors() {
        let mut p = two_threads(ProfileOptions::default());
        p.finish(crate::profile::RunStats {
            duration: 2.0,
            ticks: 150,
            dropped_ticks: 50,
            errors: 3,
        });
        assert_eq!(
            subtitle(&p),
            "10 samples over 2.00 s at 75.0 Hz (100 Hz requested), 50 ticks dropped, 3 failed reads"
        );
    }
}
