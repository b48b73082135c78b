//! `speedscope`: speedscope's JSON file format (file-format-schema.json).
//!
//! All frames go to `shared.frames` (`name`, `file`, and `line` when shown); each
//! thread with samples becomes one `sampled` profile in seconds, named by its
//! label, the busiest being the active one.
//!
//! With the timeline, samples are in time order and each weighs the time from its
//! tick to the next tick (see [`crate::profile::Ticks`]); ticks where the thread
//! was not sampled, and gaps between ticks, become an empty stack, so `startValue`..`endValue` is the
//! thread's real time span and speedscope's time-order view lines up with the
//! clock. Without the timeline, each distinct stack is one sample weighing its
//! count times the mean sample interval.

use std::io::{BufWriter, Write};

use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

use super::Result;
use crate::profile::Profile;

/// The `$schema` value speedscope recognises its files by.
pub const SCHEMA_URL: &str = "https://www.speedscope.app/file-format-schema.json";

#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    name: &'a str,
    exporter: String,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    shared: Shared<'a>,
    profiles: Vec<SampledProfile<'a>>,
}

#[derive(Serialize)]
struct Shared<'a> {
    frames: Vec<FrameJson<'a>>,
}

#[derive(Serialize)]
struct FrameJson<'a> {
    name: &'a str,
    file: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<i32>,
}

#[derive(Serialize)]
struct SampledProfile<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: f64,
    #[serde(rename = "endValue")]
    end_value: f64,
    samples: Stacks<'a>,
    weights: Vec<f64>,
}

/// Stack ids serialized as outermost-first frame arrays, one at a time, so a long
/// timeline is never held as one array per sample.
struct Stacks<'a> {
    profile: &'a Profile,
    stacks: Vec<Option<usize>>,
}

impl Serialize for Stacks<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.stacks.len()))?;
        for stack in &self.stacks {
            match stack {
                Some(id) => seq.serialize_element(&self.profile.stack_frames_root_first(*id))?,
                None => seq.serialize_element(&[0usize; 0])?,
            }
        }
        seq.end()
    }
}

/// One thread's samples and weights, before they become a profile.
struct Track {
    thread: usize,
    stacks: Vec<Option<usize>>,
    weights: Vec<f64>,
    start: f64,
    end: f64,
}

/// Tracks from the timeline: time order, tick-to-tick weights, gaps as empty stacks.
fn tracks_from_timeline(profile: &Profile) -> Vec<Track> {
    let ticks = profile.ticks();
    let timeline = profile.timeline().unwrap_or(&[]);
    let mut per_thread: Vec<Vec<(f64, Option<usize>)>> = vec![Vec::new(); profile.threads().len()];
    for e in timeline {
        per_thread[e.thread()].push((e.time(), e.stack()));
    }
    let mut tracks = Vec::new();
    for (thread, mut entries) in per_thread.into_iter().enumerate() {
        if entries.is_empty() {
            continue;
        }
        entries.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut track = Track {
            thread,
            stacks: Vec::with_capacity(entries.len()),
            weights: Vec::with_capacity(entries.len()),
            start: ticks.start(ticks.tick_of(entries[0].0)),
            end: 0.0,
        };
        let mut prev: Option<usize> = None;
        for (time, stack) in entries {
            let k = ticks.tick_of(time);
            let weight = match prev {
                // Two samples of one thread in one tick: the tick is counted once.
                Some(p) if p == k => 0.0,
                Some(p) if !ticks.contiguous(p, k) => {
                    track.stacks.push(None);
                    track.weights.push(ticks.start(k) - ticks.end(p));
                    ticks.end(k) - ticks.start(k)
                }
                _ => ticks.end(k) - ticks.start(k),
            };
            track.stacks.push(stack);
            track.weights.push(weight);
            track.end = ticks.end(k);
            prev = Some(k);
        }
        tracks.push(track);
    }
    tracks
}

/// Tracks from the counts alone: one sample per distinct stack.
fn tracks_from_counts(profile: &Profile) -> Vec<Track> {
    let interval = profile.sample_interval();
    let mut tracks: Vec<Track> = Vec::new();
    for (stack, thread, count) in profile.stack_counts() {
        if tracks.last().is_none_or(|t| t.thread != thread) {
            tracks.push(Track {
                thread,
                stacks: Vec::new(),
                weights: Vec::new(),
                start: 0.0,
                end: 0.0,
            });
        }
        let t = tracks.last_mut().expect("pushed above");
        t.stacks.push(Some(stack));
        t.weights.push(count as f64 * interval);
        t.end += count as f64 * interval;
    }
    tracks
}

/// Seconds rounded to the nanosecond, so that 0.06 is not written 0.060000000000000005.
fn round_ns(seconds: f64) -> f64 {
    (seconds * 1e9).round() / 1e9
}

/// Write `profile` as a speedscope file.
pub fn write_speedscope(profile: &Profile, out: &mut dyn Write) -> Result<()> {
    let frames = (0..profile.frame_table().len())
        .map(|f| {
            let function = profile.frame_table()[f].function;
            FrameJson {
                name: &profile.function_table()[function].name,
                file: profile.display_filename(function),
                line: profile.frame_line(f),
            }
        })
        .collect();
    let tracks = if profile.timeline().is_some() {
        tracks_from_timeline(profile)
    } else {
        tracks_from_counts(profile)
    };
    // Threads that never had a frame add nothing to look at.
    let tracks: Vec<Track> = tracks
        .into_iter()
        .filter(|t| profile.threads()[t.thread].samples > 0)
        .collect();
    let active_profile_index = tracks
        .iter()
        .enumerate()
        .max_by_key(|(i, t)| (profile.threads()[t.thread].samples, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i);
    let profiles = tracks
        .into_iter()
        .map(|t| SampledProfile {
            kind: "sampled",
            name: profile.thread_title(t.thread),
            unit: "seconds",
            start_value: round_ns(t.start),
            end_value: round_ns(t.end),
            samples: Stacks {
                profile,
                stacks: t.stacks,
            },
            weights: t.weights.into_iter().map(round_ns).collect(),
        })
        .collect();
    let file = File {
        schema: SCHEMA_URL,
        name: &profile.meta().title,
        exporter: format!("prof {}", env!("CARGO_PKG_VERSION")),
        active_profile_index,
        shared: Shared { frames },
        profiles,
    };
    let mut out = BufWriter::new(out);
    serde_json::to_writer(&mut out, &file)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::*;
    use serde_json::Value;

    /// speedscope's own schema (see testdata/README.md for where it comes from).
    fn validator() -> jsonschema::Validator {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/speedscope-schema.json"
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).expect("the schema compiles")
    }

    fn render(p: &Profile) -> Value {
        let mut buf = Vec::new();
        write_speedscope(p, &mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        let errors: Vec<String> = validator().iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "schema violations: {errors:?}");
        v
    }

    /// The frame names of one sample, outermost first.
    fn names(v: &Value, sample: &Value) -> Vec<String> {
        let frames = v["shared"]["frames"].as_array().unwrap();
        sample
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let f = &frames[i.as_u64().unwrap() as usize];
                format!("{}:{}", f["name"].as_str().unwrap(), f["line"])
            })
            .collect()
    }

    #[test]
    fn the_validator_rejects_a_broken_file() {
        // A schema that accepts anything would make every other test pass.
        let bad = serde_json::json!({
            "$schema": SCHEMA_URL,
            "shared": {"frames": [{"file": "x.py"}]},
            "profiles": [{"type": "sampled", "name": "t", "unit": "seconds",
                          "startValue": 0, "endValue": 1, "samples": [[0]]}]
        });
        assert!(validator().iter_errors(&bad).count() > 0);
    }

    #[test]
    fn timeline_profiles() {
        let p = two_threads(ProfileOptions {
            keep_timeline: true,
            ..Default::default()
        });
        let v = render(&p);
        assert_eq!(v["$schema"], SCHEMA_URL);
        assert_eq!(v["name"], "python app.py <&>");
        let profiles = v["profiles"].as_array().unwrap();
        assert_eq!(profiles.len(), 2);
        assert_eq!(v["activeProfileIndex"], 0, "MainThread is the busiest");

        let main = &profiles[0];
        assert_eq!(main["name"], "MainThread (tid 1001)");
        assert_eq!(main["unit"], "seconds");
        let samples = main["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 6);
        assert_eq!(
            names(&v, &samples[0]),
            ["main:1", "work:10", "compute:20"],
            "outermost first"
        );
        assert_eq!(
            names(&v, &samples[2]),
            ["main:1", "work:11", "fib:30", "fib:31", "fib:31"]
        );
        let weights: Vec<f64> = main["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap())
            .collect();
        assert!(
            weights.iter().all(|w| (w - 0.01).abs() < 1e-9),
            "{weights:?}"
        );
        assert_eq!(main["startValue"], 0.0);
        assert!((main["endValue"].as_f64().unwrap() - 0.06).abs() < 1e-9);

        // The worker: an empty stack at 0.03, and nothing at 0.05, which ends it.
        let worker = &profiles[1];
        let samples = worker["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[3], serde_json::json!([]));
        assert_eq!(names(&v, &samples[4]), ["run:3", "wait:5"]);
        assert!((worker["endValue"].as_f64().unwrap() - 0.05).abs() < 1e-9);
    }

    #[test]
    fn gaps_become_empty_samples() {
        let mut p = crate::profile::Profile::new(
            meta(),
            ProfileOptions {
                keep_timeline: true,
                ..Default::default()
            },
        );
        // Main ticks every 10 ms; the worker is seen at ticks 0 and 3 only.
        for k in 0..5 {
            p.add(&sample(k as f64 * 0.01, 1, "m", &[("main", 1)]));
            if k == 0 || k == 3 {
                p.add(&sample(k as f64 * 0.01 + 0.0001, 2, "w", &[("run", 1)]));
            }
        }
        let v = render(&p);
        let worker = &v["profiles"][1];
        assert_eq!(worker["samples"].as_array().unwrap().len(), 3);
        assert_eq!(worker["samples"][1], serde_json::json!([]));
        let w: Vec<f64> = worker["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!(
            (w[0] - 0.01).abs() < 1e-9 && (w[1] - 0.02).abs() < 1e-9 && (w[2] - 0.01).abs() < 1e-9
        );
        let span = worker["endValue"].as_f64().unwrap() - worker["startValue"].as_f64().unwrap();
        assert!(
            (span - w.iter().sum::<f64>()).abs() < 1e-9,
            "weights cover the span"
        );
    }

    #[test]
    fn without_timeline_stacks_are_weighted_by_count() {
        let p = two_threads(ProfileOptions {
            no_line_numbers: true,
            ..Default::default()
        });
        let v = render(&p);
        let main = &v["profiles"][0];
        let samples = main["samples"].as_array().unwrap();
        let frames = v["shared"]["frames"].as_array().unwrap();
        assert!(frames.iter().all(|f| f.get("line").is_none()), "--nolineno");
        let i = samples
            .iter()
            .position(|s| names(&v, s) == ["main:null", "work:null", "compute:null"])
            .expect("main;work;compute");
        let w = main["weights"][i].as_f64().unwrap();
        assert!((w - 0.04).abs() < 1e-9, "4 samples at 100 Hz: {w}");
        let total: f64 = main["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((total - 0.06).abs() < 1e-9);
    }

    #[test]
    fn empty_profile_is_valid() {
        let p = crate::profile::Profile::new(meta(), ProfileOptions::default());
        let v = render(&p);
        assert_eq!(v["profiles"], serde_json::json!([]));
    }
}
