//! `prof diff BASE HEAD`: the functions whose own share changed most between two profiles,
//! as text, Markdown or JSON; a differential flame graph with `-o`; and `--fail-over`, a
//! regression gate for CI.
//!
//! The comparison itself (shares, the test, the threshold) is [`crate::profile::diff`].

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::cli::DiffArgs;
use crate::commands::report::{md_code, md_escape, read_profile};
use crate::output::file::OutputPath;
use crate::output::flamegraph::write_differential;
use crate::output::read::ReadProfile;
use crate::profile::diff::{ALPHA, Diff, FunctionDiff, compare};
use crate::tui::view::label;

/// Run `prof diff`: 1 when `--fail-over` finds a regression, else 0.
pub fn run(args: &DiffArgs) -> Result<i32> {
    // The output is checked before any work, as record does, so a bad path fails first.
    let svg = args.output.as_deref().map(OutputPath::check).transpose()?;
    let base = read_profile(&args.base)?;
    let head = read_profile(&args.head)?;
    for (path, read) in [(&args.base, &base), (&args.head, &head)] {
        if read.profile.total_samples() == 0 {
            anyhow::bail!("{}: no samples, nothing to compare", path.display());
        }
    }
    let diff = compare(&base.profile, &head.profile);
    if let Some(svg) = svg {
        let title = format!(
            "prof diff: {} against {}",
            args.head.display(),
            args.base.display()
        );
        let subtitle = format!(
            "base {}, head {}; shares of each profile's samples: red grew, blue shrank",
            describe(&args.base, &base),
            describe(&args.head, &head)
        );
        svg.write_with(&|out| {
            write_differential(&base.profile, &head.profile, &title, &subtitle, out)
        })?;
    }
    let shown = if args.top == 0 {
        diff.functions.len()
    } else {
        args.top.min(diff.functions.len())
    };
    let heading = format!(
        "{} against {}",
        describe(&args.head, &head),
        describe(&args.base, &base)
    );
    let text = if args.json {
        json(&diff, shown) + "\n"
    } else if args.markdown {
        markdown(&diff, shown, &heading)
    } else {
        text(&diff, shown, &heading)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    let Some(pp) = args.fail_over else {
        return Ok(0);
    };
    let mut failed = false;
    for f in diff.regressions(pp) {
        failed = true;
        eprintln!(
            "prof: {} grew {:+.2} points ({:.2}% -> {:.2}% of the samples, p = {}), over --fail-over {pp}",
            function_label(f),
            f.delta_pp,
            100.0 * f.base_own,
            100.0 * f.head_own,
            fmt_p(f.p_value)
        );
    }
    Ok(i32::from(failed))
}

/// `FILE (format, N samples)`.
fn describe(path: &Path, read: &ReadProfile) -> String {
    format!(
        "{} ({}, {} samples)",
        path.display(),
        read.format.name(),
        read.profile.total_samples()
    )
}

fn function_label(f: &FunctionDiff) -> String {
    if f.file.is_empty() {
        f.name.clone()
    } else {
        label(&f.name, &f.file, None)
    }
}

/// A p-value people read: three decimals, or an exponent below 0.001.
fn fmt_p(p: f64) -> String {
    if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

/// What a `*` means, under the text and Markdown tables.
fn legend(diff: &Diff) -> String {
    format!(
        "Significant: two-proportion z-test, p < {ALPHA} / {} functions (Bonferroni)",
        diff.functions.len().max(1)
    )
}

fn text(diff: &Diff, shown: usize, heading: &str) -> String {
    let mut out = format!("{heading}\n");
    if shown == 0 {
        out.push_str("  (no samples)\n");
        return out;
    }
    out.push_str("  %Base   %Head    Change   p-value  Function\n");
    for f in &diff.functions[..shown] {
        out.push_str(&format!(
            "{:6.2}% {:6.2}% {:+7.2}pp {:>9}{} {}\n",
            100.0 * f.base_own,
            100.0 * f.head_own,
            f.delta_pp,
            fmt_p(f.p_value),
            if f.significant { "*" } else { " " },
            function_label(f)
        ));
    }
    let more = diff.functions.len() - shown;
    if more > 0 {
        out.push_str(&format!("  ... {more} more (--top 0 shows all)\n"));
    }
    out.push_str(&format!("  * {}\n", legend(diff)));
    out
}

fn markdown(diff: &Diff, shown: usize, heading: &str) -> String {
    let mut out = format!("### {}\n\n", md_escape(heading));
    if shown == 0 {
        out.push_str("No samples.\n");
        return out;
    }
    out.push_str("| Base | Head | Change | p-value | Significant | Function |\n");
    out.push_str("|---:|---:|---:|---:|:---:|:---|\n");
    for f in &diff.functions[..shown] {
        out.push_str(&format!(
            "| {:.2}% | {:.2}% | {:+.2} pp | {} | {} | {} |\n",
            100.0 * f.base_own,
            100.0 * f.head_own,
            f.delta_pp,
            fmt_p(f.p_value),
            if f.significant { "yes" } else { "" },
            md_code(&function_label(f))
        ));
    }
    let more = diff.functions.len() - shown;
    if more > 0 {
        out.push_str(&format!("\n{more} more functions not shown.\n"));
    }
    out.push_str(&format!("\n{}.\n", md_escape(&legend(diff))));
    out
}

/// `{"base": {"samples"}, "head": {"samples"}, "functions": [{"name", "file", "base_own",
/// "head_own", "delta_pp", "p_value", "significant"}]}`, shares as fractions.
fn json(diff: &Diff, shown: usize) -> String {
    #[derive(Serialize)]
    struct Side {
        samples: u64,
    }
    #[derive(Serialize)]
    struct Row<'a> {
        name: &'a str,
        file: &'a str,
        base_own: f64,
        head_own: f64,
        delta_pp: f64,
        p_value: f64,
        significant: bool,
    }
    #[derive(Serialize)]
    struct Json<'a> {
        base: Side,
        head: Side,
        functions: Vec<Row<'a>>,
    }
    let json = Json {
        base: Side {
            samples: diff.base_samples,
        },
        head: Side {
            samples: diff.head_samples,
        },
        functions: diff.functions[..shown]
            .iter()
            .map(|f| Row {
                name: &f.name,
                file: &f.file,
                base_own: f.base_own,
                head_own: f.head_own,
                delta_pp: f.delta_pp,
                p_value: f.p_value,
                significant: f.significant,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&json).expect("plain data serializes")
}
