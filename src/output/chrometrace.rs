//! `chrometrace`: the Trace Event Format (`{"traceEvents": [...]}`) that Perfetto
//! and chrome://tracing open.
//!
//! Each thread becomes a track of nested slices built from its consecutive
//! samples: a function that stays on the stack, at the same depth under the same
//! callers, from one tick to the next is one long slice. Slices are per function,
//! not per line, so a function moving from line to line is not chopped up; the
//! `line` argument is the line it was first seen at. A slice ends when the tick
//! of its last sample ends (see [`crate::profile::Ticks`]); a tick in which the
//! thread was not sampled or had no frames, or a gap in time between ticks, ends
//! every slice of the thread.
//!
//! Events are `B`/`E` pairs, properly nested per thread and ordered by time, with
//! `ts` in microseconds since the start of the recording; `M` events name the
//! process (the profile's title; `process N` for subprocesses) and each thread
//! (its label). `cat` is `python` or `native`. `tid` is the
//! kernel thread id when known, else Python's thread ident.

use std::io::{BufWriter, Write};

use serde::Serialize;

use super::{OutputError, Result};
use crate::profile::Profile;
use crate::sample::FrameKind;

#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    ph: &'static str,
    ts: f64,
    pid: u32,
    tid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cat: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Args<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Args<'a> {
    Name { name: &'a str },
    Frame { file: &'a str, line: Option<i32> },
}

/// Writes events as elements of one JSON array, streaming.
struct EventWriter<'w> {
    out: BufWriter<&'w mut dyn Write>,
    first: bool,
}

impl EventWriter<'_> {
    fn push(&mut self, e: &Event) -> Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, e)?;
        Ok(())
    }
}

/// Write `profile` as a Chrome trace; needs the timeline.
pub fn write_chrometrace(profile: &Profile, out: &mut dyn Write) -> Result<()> {
    let timeline = profile
        .timeline()
        .ok_or(OutputError::NeedsTimeline("chrometrace"))?;
    let ticks = profile.ticks();
    let threads = profile.threads();
    let names: Vec<String> = (0..profile.function_table().len())
        .map(|f| profile.function_label(f))
        .collect();
    let titles: Vec<String> = (0..threads.len()).map(|t| threads[t].label()).collect();
    let tid_of = |t: usize| -> u64 {
        let th = &threads[t];
        th.os_thread_id.map_or(th.thread_id, u64::from)
    };

    let mut w = EventWriter {
        out: BufWriter::new(out),
        first: true,
    };
    w.out.write_all(b"{\"traceEvents\":[\n")?;

    let mut pids: Vec<u32> = threads.iter().map(|t| t.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    // The first process seen is the one profiled; others are its subprocesses.
    let process_names: Vec<String> = pids
        .iter()
        .map(|&pid| {
            if pid == threads[0].pid {
                profile.meta().title.clone()
            } else {
                format!("process {pid}")
            }
        })
        .collect();
    for (&pid, name) in pids.iter().zip(&process_names) {
        w.push(&Event {
            name: "process_name",
            ph: "M",
            ts: 0.0,
            pid,
            tid: 0,
            cat: None,
            args: Some(Args::Name { name }),
        })?;
    }
    for (t, title) in titles.iter().enumerate() {
        w.push(&Event {
            name: "thread_name",
            ph: "M",
            ts: 0.0,
            pid: threads[t].pid,
            tid: tid_of(t),
            cat: None,
            args: Some(Args::Name { name: title }),
        })?;
    }

    let mut per_thread: Vec<Vec<(f64, Option<usize>)>> = vec![Vec::new(); threads.len()];
    for e in timeline {
        per_thread[e.thread()].push((e.time(), e.stack()));
    }
    // Microseconds, rounded to the nanosecond so float noise does not show.
    let us = |seconds: f64| (seconds * 1e9).round() / 1e3;
    for (t, mut entries) in per_thread.into_iter().enumerate() {
        entries.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (pid, tid) = (threads[t].pid, tid_of(t));
        // The functions of the open slices, outermost first.
        let mut open: Vec<usize> = Vec::new();
        let mut prev_tick: Option<usize> = None;
        let mut frames: Vec<usize> = Vec::new();
        // Close the slices above `depth` at `at`, innermost first.
        let close = |w: &mut EventWriter, open: &mut Vec<usize>, depth: usize, at: f64| {
            while open.len() > depth {
                let function = open.pop().expect("len > depth");
                w.push(&Event {
                    name: &names[function],
                    ph: "E",
                    ts: us(at),
                    pid,
                    tid,
                    cat: None,
                    args: None,
                })?;
            }
            Ok::<(), OutputError>(())
        };
        for (time, stack) in entries {
            let k = ticks.tick_of(time);
            if prev_tick == Some(k) {
                // A second sample of the thread in one tick adds nothing to its timeline.
                continue;
            }
            frames.clear();
            if let Some(s) = stack {
                frames.extend(profile.stack_frames_root_first(s));
            }
            // Slices continue only from the tick just before; any gap ends them.
            let keep = match prev_tick {
                Some(p) if ticks.contiguous(p, k) => open
                    .iter()
                    .zip(&frames)
                    .take_while(|&(&o, &f)| o == profile.frame_table()[f].function)
                    .count(),
                _ => 0,
            };
            if let Some(p) = prev_tick {
                close(&mut w, &mut open, keep, ticks.end(p))?;
            }
            for &f in &frames[keep..] {
                let function = profile.frame_table()[f].function;
                w.push(&Event {
                    name: &names[function],
                    ph: "B",
                    ts: us(ticks.start(k)),
                    pid,
                    tid,
                    cat: Some(match profile.function_table()[function].kind {
                        FrameKind::Python => "python",
                        FrameKind::Native => "native",
                    }),
                    args: Some(Args::Frame {
                        file: &profile.function_table()[function].filename,
                        line: profile.frame_line(f),
                    }),
                })?;
                open.push(function);
            }
            prev_tick = Some(k);
        }
        if let Some(p) = prev_tick {
            close(&mut w, &mut open, 0, ticks.end(p))?;
        }
    }

    let meta = profile.meta();
    let start_unix = meta
        .start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let other = serde_json::json!({
        "title": meta.title,
        "exporter": format!("prof {}", env!("CARGO_PKG_VERSION")),
        "start_unix_seconds": start_unix,
        "requested_rate": meta.requested_rate,
        "achieved_rate": meta.achieved_rate,
        "dropped_ticks": meta.dropped_ticks,
        "errors": meta.errors,
    });
    w.out
        .write_all(b"\n],\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(&mut w.out, &other)?;
    w.out.write_all(b"}\n")?;
    w.out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::*;
    use serde_json::Value;
    use std::collections::BTreeMap;

    /// A slice rebuilt from B/E pairs: (name, start µs, end µs, depth).
    type Slice = (String, f64, f64, usize);

    /// Parse the trace, check B/E nesting and time order per thread, return slices per tid
    /// (of all processes).
    fn slices(p: &Profile) -> (Value, BTreeMap<u64, Vec<Slice>>) {
        let mut buf = Vec::new();
        write_chrometrace(p, &mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).expect("valid JSON");
        let events = v["traceEvents"].as_array().expect("traceEvents array");
        // Nesting and order hold per (pid, tid): the same tid may exist in two processes.
        let mut stacks: BTreeMap<(u64, u64), Vec<(String, f64)>> = BTreeMap::new();
        let mut last_ts: BTreeMap<(u64, u64), f64> = BTreeMap::new();
        let mut out: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
        for e in events {
            let tid = e["tid"].as_u64().unwrap();
            let pid = e["pid"].as_u64().expect("pid");
            let ph = e["ph"].as_str().unwrap();
            let ts = e["ts"].as_f64().unwrap();
            let name = e["name"].as_str().unwrap().to_owned();
            if ph == "M" {
                continue;
            }
            let last = last_ts.entry((pid, tid)).or_insert(f64::MIN);
            assert!(ts >= *last, "events of tid {tid} go back in time at {e}");
            *last = ts;
            let stack = stacks.entry((pid, tid)).or_default();
            match ph {
                "B" => stack.push((name, ts)),
                "E" => {
                    let (open, start) = stack.pop().unwrap_or_else(|| panic!("E without B: {e}"));
                    assert_eq!(open, name, "E closes the innermost open slice");
                    assert!(ts > start, "slices have a length");
                    out.entry(tid)
                        .or_default()
                        .push((name, start, ts, stack.len()));
                }
                _ => panic!("unexpected phase {ph}"),
            }
        }
        for (id, s) in &stacks {
            assert!(s.is_empty(), "{id:?} left slices open: {s:?}");
        }
        (v, out)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-3
    }

    #[test]
    fn slices_follow_the_stacks() {
        let p = two_threads(ProfileOptions {
            keep_timeline: true,
            ..Default::default()
        });
        let (v, by_tid) = slices(&p);
        let meta: Vec<&Value> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "M")
            .collect();
        assert!(meta.iter().any(|e| e["name"] == "thread_name"
            && e["tid"] == 1001
            && e["args"]["name"] == "MainThread (tid 1001)"));
        assert!(meta.iter().any(|e| e["name"] == "process_name"
            && e["pid"] == 42
            && e["args"]["name"] == "python app.py <&>"));

        let main = &by_tid[&1001];
        let find = |name: &str| -> Vec<&Slice> { main.iter().filter(|s| s.0 == name).collect() };
        // main stays on the stack all along: one slice over the 6 ticks.
        let m = find("main (main.py)");
        assert_eq!(m.len(), 1);
        assert!(close(m[0].1, 0.0) && close(m[0].2, 60_000.0), "{m:?}");
        assert_eq!(m[0].3, 0);
        // work too, though its line changes (10, 10, 11, 10, 12, 10).
        let w = find("work (main.py)");
        assert_eq!(w.len(), 1, "{w:?}");
        // compute: ticks 0-1 (line 20 then 21: one slice), then 3, then 5.
        let c: Vec<(f64, f64)> = find("compute (main.py)")
            .iter()
            .map(|s| (s.1, s.2))
            .collect();
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(close(c[0].0, 0.0) && close(c[0].1, 20_000.0));
        assert!(close(c[1].0, 30_000.0) && close(c[1].1, 40_000.0));
        assert!(close(c[2].0, 50_000.0) && close(c[2].1, 60_000.0));
        // Recursion: three nested fib slices in tick 2.
        let f = find("fib (main.py)");
        assert_eq!(
            f.iter().map(|s| s.3).collect::<Vec<_>>(),
            [4, 3, 2],
            "innermost closes first"
        );

        // The worker's slices end at its empty tick and start again after it.
        let worker = &by_tid[&1002];
        let run: Vec<(f64, f64)> = worker
            .iter()
            .filter(|s| s.0 == "run (main.py)")
            .map(|s| (s.1, s.2))
            .collect();
        assert_eq!(run.len(), 2, "{run:?}");
        assert!(close(run[0].0, 0.0) && close(run[0].1, 30_000.0));
        assert!(close(run[1].0, 40_000.0) && close(run[1].1, 50_000.0));
    }

    #[test]
    fn frame_args_and_gaps() {
        let mut p = crate::profile::Profile::new(
            meta(),
            ProfileOptions {
                keep_timeline: true,
                ..Default::default()
            },
        );
        for k in [0, 1, 3] {
            p.add(&sample(k as f64 * 0.01, 1, "m", &[("main", 7)]));
        }
        let (v, by_tid) = slices(&p);
        // Tick 2 was not sampled: two slices, not one spanning the gap.
        let spans: Vec<(f64, f64)> = by_tid[&1001].iter().map(|s| (s.1, s.2)).collect();
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert!(close(spans[0].1, 20_000.0) && close(spans[1].0, 30_000.0));
        let b = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["ph"] == "B")
            .unwrap();
        assert_eq!(b["args"]["file"], "/app/src/main.py");
        assert_eq!(b["args"]["line"], 7);
    }

    #[test]
    fn subprocesses_and_native_frames() {
        let mut p = crate::profile::Profile::new(
            meta(),
            ProfileOptions {
                keep_timeline: true,
                ..Default::default()
            },
        );
        let mut a = sample(0.0, 1, "m", &[("main", 1), ("memcpy", 0)]);
        a.stack.frames[0].kind = FrameKind::Native;
        let mut b = sample(0.0001, 1, "m", &[("child", 1)]);
        b.pid = 43;
        p.add(&a);
        p.add(&b);
        let (v, _) = slices(&p);
        let events = v["traceEvents"].as_array().unwrap();
        let process = |pid: u32| {
            events
                .iter()
                .find(|e| e["name"] == "process_name" && e["pid"] == pid)
                .map(|e| e["args"]["name"].clone())
        };
        assert_eq!(process(42).unwrap(), "python app.py <&>");
        assert_eq!(process(43).unwrap(), "process 43");
        let cat = |name: &str| {
            events
                .iter()
                .find(|e| e["ph"] == "B" && e["name"] == name)
                .map(|e| e["cat"].clone())
                .unwrap()
        };
        assert_eq!(cat("memcpy (main.py)"), "native");
        assert_eq!(cat("main (main.py)"), "python");
        assert_eq!(cat("child (main.py)"), "python");
    }

    #[test]
    fn needs_the_timeline() {
        let p = two_threads(ProfileOptions::default());
        let mut buf = Vec::new();
        let err = write_chrometrace(&p, &mut buf).unwrap_err();
        assert!(matches!(err, OutputError::NeedsTimeline(_)), "{err}");
    }

    #[test]
    fn empty_profile_is_valid() {
        let p = crate::profile::Profile::new(
            meta(),
            ProfileOptions {
                keep_timeline: true,
                ..Default::default()
            },
        );
        let (v, by_tid) = slices(&p);
        assert!(by_tid.is_empty());
        assert_eq!(v["traceEvents"], serde_json::json!([]));
    }
}
