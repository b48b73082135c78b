//! `prof diff` on profiles `prof record` wrote from two versions of one program, and the
//! README's CI recipe run as a script.
//!
//! testdata/diff_target.py runs steady_a, steady_b and grows in turn, each with the same
//! work; `--slow` doubles grows' work, so its own share goes from about a third to about a
//! half while the others' shares shrink. `prof diff` must mark grows, and only grows, as
//! significantly grown, and `--fail-over` must fail on it but not on two runs of the same
//! version. The runs are in different formats, as a CI's base artifact may come from
//! another prof.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Python, assert_one_line_error, describe, run_prof};
use serde_json::Value;

/// Seconds each version runs under prof.
const SECONDS: &str = "3";

/// The interpreter the recordings use: one is enough, the reader is tested per format
/// elsewhere; the newest found, as CI would run.
fn python() -> Option<Python> {
    common::newest_python("diff")
}

/// `prof record -r 200 -o OUT [-f FORMAT] -- python diff_target.py SECONDS [--slow]`.
fn record(py: &Python, out: &Path, format: &str, slow: bool) {
    let target = common::testdata().join("diff_target.py");
    let out_s = out.to_str().unwrap();
    let mut args = vec!["record", "-r", "200", "-f", format, "-o", out_s, "--"];
    let py_s = py.path.to_str().unwrap();
    let target_s = target.to_str().unwrap();
    args.extend([py_s, target_s, SECONDS]);
    if slow {
        args.push("--slow");
    }
    let o = run_prof(&args);
    assert!(
        o.status.success() && out.exists(),
        "[{}] {}",
        py.name,
        describe(&args, &o)
    );
}

fn diff<'a>(args: &[&'a str]) -> (Vec<&'a str>, Output) {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    let out = run_prof(&all);
    (all, out)
}

fn json_of(base: &Path, head: &Path) -> Value {
    let (args, out) = diff(&[
        base.to_str().unwrap(),
        head.to_str().unwrap(),
        "--json",
        "--top",
        "0",
    ]);
    assert!(out.status.success(), "{}", describe(&args, &out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&args, &out)))
}

/// Functions whose own share grew significantly.
fn grown(v: &Value) -> Vec<String> {
    v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["significant"] == true && f["delta_pp"].as_f64().unwrap() > 0.0)
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn diff_marks_the_function_that_grew_and_gates_on_it() {
    skip_without_live_targets!();
    let Some(py) = python() else { return };
    eprintln!("using {}", py.name);
    let dir = tempfile::Builder::new()
        .prefix("prof-diff-")
        .tempdir()
        .unwrap();
    let base = dir.path().join("base.pb.gz");
    let again = dir.path().join("again.json");
    let slow = dir.path().join("slow.txt");
    record(&py, &base, "pprof", false);
    record(&py, &again, "speedscope", false);
    record(&py, &slow, "raw", true);

    let v = json_of(&base, &slow);
    let ctx = serde_json::to_string_pretty(&v).unwrap();
    assert!(v["base"]["samples"].as_u64().unwrap() > 100, "{ctx}");
    assert!(v["head"]["samples"].as_u64().unwrap() > 100, "{ctx}");
    assert_eq!(grown(&v), ["grows"], "only grows grew significantly: {ctx}");
    let grows = &v["functions"][0];
    assert_eq!(grows["name"], "grows", "largest change first: {ctx}");
    // A third to a half is about +17 points, but the iterations' cost drifts with what
    // else the machine runs (+27 was seen in CI): only a clear growth is required.
    let delta = grows["delta_pp"].as_f64().unwrap();
    assert!(delta > 8.0, "{ctx}");
    for name in ["steady_a", "steady_b"] {
        let f = v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {ctx}"));
        assert!(f["delta_pp"].as_f64().unwrap() < 0.0, "{name}: {ctx}");
    }

    // Two runs of one version: nothing grew.
    let same = json_of(&base, &again);
    assert_eq!(
        grown(&same),
        Vec::<String>::new(),
        "{}",
        serde_json::to_string_pretty(&same).unwrap()
    );

    // The gate: exit 1 naming grows, on stderr; 0 for the same version, or a larger PP.
    let (b, s, a) = (
        base.to_str().unwrap(),
        slow.to_str().unwrap(),
        again.to_str().unwrap(),
    );
    let (args, out) = diff(&[b, s, "--fail-over", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().count() == 1 && stderr.starts_with("prof: grows ("),
        "{}",
        describe(&args, &out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("* grows ("), "{}", describe(&args, &out));
    let (args, out) = diff(&[b, a, "--fail-over", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    let (args, out) = diff(&[b, s, "--fail-over", "40"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));

    // The differential flame graph.
    let svg_path = dir.path().join("diff.svg");
    let (args, out) = diff(&[b, s, "-o", svg_path.to_str().unwrap(), "--markdown"]);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("| yes | `grows ("),
        "{}",
        describe(&args, &out)
    );
    check_svg(&svg_path, &v);
}

/// Well-formed, names both profiles with their sample counts, and draws grows red.
fn check_svg(path: &Path, v: &Value) {
    let text = fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("well-formed SVG");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    let all = texts.join("\n");
    for want in [
        format!("base.pb.gz (pprof, {} samples)", v["base"]["samples"]),
        format!("slow.txt (raw, {} samples)", v["head"]["samples"]),
    ] {
        assert!(all.contains(&want), "{want} not in the SVG's text");
    }
    // base is pprof (full file names), head raw (short ones): the frames must still meet,
    // or every frame of head would look new, and red.
    // A frame is keyed by its line, so one function is several nodes, and how a function's
    // samples split over its lines drifts from run to run: a line of steady_b may grow a
    // little while steady_b shrinks. So each node's colour must say its own change (red
    // when it grew, blue when it shrank), and the changes summed over a function's nodes
    // must say what the function did: grows grew, the others shrank.
    let mut change: HashMap<&str, f64> = HashMap::new();
    for g in doc.descendants().filter(|n| n.has_tag_name("g")) {
        let title = g
            .children()
            .find(|c| c.has_tag_name("title"))
            .and_then(|t| t.text())
            .unwrap_or("");
        let Some(fill) = g
            .children()
            .find(|c| c.has_tag_name("rect"))
            .and_then(|r| r.attribute("fill"))
        else {
            continue;
        };
        let Some(name) = ["grows", "steady_a", "steady_b"]
            .into_iter()
            .find(|n| title.starts_with(&format!("{n} (")))
        else {
            continue;
        };
        // `name (file:line) (N samples, S%; +D%)`
        let delta: f64 = title
            .rsplit_once("; ")
            .and_then(|(_, rest)| rest.strip_suffix("%)"))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no change in the title {title:?}"));
        let rgb: Vec<u8> = fill
            .trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .map(|c| c.trim().parse().unwrap())
            .collect();
        let reddish = rgb[0] == 255 && rgb[1] == rgb[2];
        let bluish = rgb[2] == 255 && rgb[0] == rgb[1];
        let strong = delta.abs() < 2.0 || rgb[1].min(rgb[0]) < 250;
        if delta > 0.0 {
            assert!(reddish && strong, "{title} grew but is not red: {fill}");
        } else if delta < 0.0 {
            assert!(bluish && strong, "{title} shrank but is not blue: {fill}");
        }
        *change.entry(name).or_default() += delta;
    }
    let of = |name: &str| {
        *change
            .get(name)
            .unwrap_or_else(|| panic!("no {name} frame in the SVG"))
    };
    assert!(
        of("grows") > 8.0,
        "grows changed by {:+.2} points",
        of("grows")
    );
    for name in ["steady_a", "steady_b"] {
        assert!(of(name) < 0.0, "{name} changed by {:+.2} points", of(name));
    }
}

#[test]
fn bad_input_is_one_line() {
    skip_without_live_targets!();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    fs::write(&junk, b"\x00\x01 not a profile").unwrap();
    let empty = dir.path().join("empty.txt");
    fs::write(&empty, b"").unwrap();
    let missing: PathBuf = dir.path().join("missing");
    for (args, says) in [
        (
            vec!["diff", junk.to_str().unwrap(), junk.to_str().unwrap()],
            "junk",
        ),
        (
            vec!["diff", missing.to_str().unwrap(), junk.to_str().unwrap()],
            "cannot read",
        ),
        (
            vec!["diff", empty.to_str().unwrap(), empty.to_str().unwrap()],
            "empty.txt",
        ),
        (vec!["diff", "a", "b", "--fail-over", "x"], "--fail-over"),
    ] {
        let out = run_prof(&args);
        let line = assert_one_line_error(&args, &out);
        assert!(line.contains(says), "{line}");
    }
}

/// The `run:` lines of the README's GitHub Actions job, each with the name of its step.
fn recipe_steps() -> Vec<(String, String)> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let ci = &readme[readme.find("## In CI").expect("an In CI section")..];
    let start = ci.find("```yaml\n").expect("a yaml block in In CI") + "```yaml\n".len();
    let yaml = &ci[start..start + ci[start..].find("```").expect("the block's end")];
    let mut steps = Vec::new();
    let mut name = String::new();
    for line in yaml.lines().map(str::trim) {
        if line.starts_with("- ") {
            name = line
                .strip_prefix("- name:")
                .map(|n| n.trim().to_owned())
                .unwrap_or_default();
        } else if let Some(run) = line.strip_prefix("run:") {
            steps.push((name.clone(), run.trim().to_owned()));
        }
    }
    steps
}

#[test]
fn readme_ci_recipe_runs() {
    skip_without_live_targets!();
    let Some(py) = python() else { return };
    let steps = recipe_steps();
    let commands: Vec<&str> = steps
        .iter()
        // Installing is the CI's business: here prof is the binary under test.
        .filter(|(name, _)| name != "Install prof")
        .map(|(_, run)| run.as_str())
        .collect();
    for want in ["prof record ", "prof report ", "prof diff "] {
        assert!(
            commands.iter().any(|c| c.starts_with(want)),
            "no `{want}` step in the README's job: {steps:?}"
        );
    }
    assert!(
        commands.iter().any(|c| c.contains("--fail-over")),
        "the job does not gate: {steps:?}"
    );

    // A checkout: bench.py runs diff_target.py for 2 s; `python` and `prof` on PATH.
    let dir = tempfile::Builder::new()
        .prefix("prof-recipe-")
        .tempdir()
        .unwrap();
    let work = dir.path().join("work");
    let bin = dir.path().join("bin");
    fs::create_dir_all(work.join("base")).unwrap();
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(common::prof_path(), bin.join("prof")).unwrap();
    std::os::unix::fs::symlink(&py.path, bin.join("python")).unwrap();
    fs::write(
        work.join("bench.py"),
        format!(
            "import runpy, sys\nsys.argv = ['diff_target.py', '2']\nrunpy.run_path({:?}, run_name='__main__')\n",
            common::testdata().join("diff_target.py").to_str().unwrap()
        ),
    )
    .unwrap();
    let summary = dir.path().join("summary.md");
    fs::write(&summary, "").unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |script: &str| -> Output {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-e", "-c", script])
            .current_dir(&work)
            .env("PATH", &path)
            .env("GITHUB_STEP_SUMMARY", &summary);
        common::run_with_deadline(&mut cmd, &["sh", "-c", script])
    };
    // The base branch's artifact, as the download step would leave it.
    let base = run("prof record -o base/perf.pb.gz -- python bench.py");
    assert!(
        base.status.success(),
        "{}",
        describe(&["base recording"], &base)
    );
    for command in &commands {
        let out = run(command);
        assert!(
            out.status.success(),
            "README step failed: {}",
            describe(&[command], &out)
        );
    }
    for file in ["perf.svg", "perf.pb.gz", "perf-diff.svg"] {
        assert!(work.join(file).exists(), "the job made no {file}");
    }
    let summary = fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains("### perf.pb.gz (pprof)") && summary.contains("against base/perf.pb.gz"),
        "summary lacks the report or the diff:\n{summary}"
    );
    assert!(summary.contains("`grows ("), "{summary}");
}
