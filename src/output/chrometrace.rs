//! `chrometrace`: the Trace Event Format (`{"traceEvents": [...]}`) that Perfetto,
//! chrome://tracing and Chrome DevTools' performance panel open.
//!
//! Each thread becomes a track of nested slices built from its consecutive samples: a
//! function that is on the stack, at the same depth under the same callers, in one sample
//! of the thread and the next is one slice. Slices are per function, not per line, so a
//! function moving from line to line is not chopped up; the `line` argument is the line it
//! was first seen at.
//!
//! A slice ends when the tick of its function's last sample ends (see
//! [`crate::profile::Ticks`]); a new one begins when the tick that first shows it starts.
//! Ticks in which a thread was not sampled (it was idle, or the ticks were dropped) end
//! only some of its slices. The innermost function before them ends, since that is where
//! the thread stopped running Python; its callers that are still on the stack after the
//! gap run on over it, as they never returned in between as far as anyone can tell. So
//! an idle gap costs one slice, not the whole stack. A sample with no frames ends every
//! slice.
//!
//! Slices are complete (`X`) events, one per slice, so there is no begin to pair with an
//! end; per thread they come in order of start time, a caller before its callees. `ts`
//! and `dur` are whole microseconds since the start of the recording, so that a callee
//! ending with its caller ends exactly with it in any reader's arithmetic. `M` events name
//! the process (the profile's title; `process N` for subprocesses) and each thread (its
//! label). `cat` is `python` or `native`. `tid` is the kernel thread id when known, else
//! Python's thread ident.

use std::io::{BufWriter, Write};

use serde::Serialize;

use super::{OutputError, Result};
use crate::profile::Profile;
use crate::sample::FrameKind;

#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    ph: &'static str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<u64>,
    pid: u32,
    tid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cat: Option<&'static str>,
    args: Args<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Args<'a> {
    Name { name: &'a str },
    Frame { file: &'a str, line: Option<i32> },
}

/// One slice of a thread, times in whole microseconds.
struct Slice {
    /// The frame first seen for the function: its name, file and line.
    frame: usize,
    start: u64,
    end: u64,
    depth: usize,
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
            ts: 0,
            dur: None,
            pid,
            tid: 0,
            cat: None,
            args: Args::Name { name },
        })?;
    }
    for (t, title) in titles.iter().enumerate() {
        w.push(&Event {
            name: "thread_name",
            ph: "M",
            ts: 0,
            dur: None,
            pid: threads[t].pid,
            tid: tid_of(t),
            cat: None,
            args: Args::Name { name: title },
        })?;
    }

    let mut per_thread: Vec<Vec<(f64, Option<usize>)>> = vec![Vec::new(); threads.len()];
    for e in timeline {
        per_thread[e.thread()].push((e.time(), e.stack()));
    }
    let us = |seconds: f64| (seconds * 1e6).round().max(0.0) as u64;
    let function_of = |f: usize| profile.frame_table()[f].function;
    for (t, mut entries) in per_thread.into_iter().enumerate() {
        entries.sort_by(|a, b| a.0.total_cmp(&b.0));
        // The open slices, outermost first: (frame first seen, start).
        let mut open: Vec<(usize, u64)> = Vec::new();
        let mut slices: Vec<Slice> = Vec::new();
        let close = |open: &mut Vec<(usize, u64)>, slices: &mut Vec<Slice>, depth, end| {
            while open.len() > depth {
                let (frame, start) = open.pop().expect("len > depth");
                let depth = open.len();
                slices.push(Slice {
                    frame,
                    start,
                    end,
                    depth,
                });
            }
        };
        let mut prev_tick: Option<usize> = None;
        let mut frames: Vec<usize> = Vec::new();
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
            let mut keep = open
                .iter()
                .zip(&frames)
                .take_while(|&(&(o, _), &f)| function_of(o) == function_of(f))
                .count();
            if !prev_tick.is_some_and(|p| ticks.contiguous(p, k)) {
                keep = keep.min(open.len().saturating_sub(1));
            }
            if let Some(p) = prev_tick {
                close(&mut open, &mut slices, keep, us(ticks.end(p)));
            }
            let start = us(ticks.start(k));
            open.extend(frames[keep..].iter().map(|&f| (f, start)));
            prev_tick = Some(k);
        }
        if let Some(p) = prev_tick {
            close(&mut open, &mut slices, 0, us(ticks.end(p)));
        }
        // Closed innermost first; readers build the nesting from start order.
        slices.sort_by_key(|s| (s.start, s.depth));
        let (pid, tid) = (threads[t].pid, tid_of(t));
        for s in &slices {
            let function = function_of(s.frame);
            let info = &profile.function_table()[function];
            w.push(&Event {
                name: &names[function],
                ph: "X",
                ts: s.start,
                dur: Some(s.end - s.start),
                pid,
                tid,
                cat: Some(match info.kind {
                    FrameKind::Python => "python",
                    FrameKind::Native => "native",
                }),
                args: Args::Frame {
                    file: &info.filename,
                    line: profile.frame_line(s.frame),
                },
            })?;
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

    /// A slice as a reader nests it: (name, start µs, end µs, depth).
    type Slice = (String, f64, f64, usize);

    /// Parse the trace, check per thread that slices come in start order and nest, and
    /// return them per tid (of all processes).
    fn slices(p: &Profile) -> (Value, BTreeMap<u64, Vec<Slice>>) {
        let mut buf = Vec::new();
        write_chrometrace(p, &mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).expect("valid JSON");
        let events = v["traceEvents"].as_array().expect("traceEvents array");
        // Per (pid, tid): the same tid may exist in two processes. The ends of the
        // enclosing slices, outermost first.
        let mut enclosing: BTreeMap<(u64, u64), Vec<f64>> = BTreeMap::new();
        let mut last_ts: BTreeMap<(u64, u64), f64> = BTreeMap::new();
        let mut out: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
        for e in events {
            let tid = e["tid"].as_u64().unwrap();
            let pid = e["pid"].as_u64().expect("pid");
            let ph = e["ph"].as_str().unwrap();
            if ph == "M" {
                continue;
            }
            assert_eq!(ph, "X", "only complete events: {e}");
            let ts = e["ts"].as_f64().unwrap();
            let end = ts + e["dur"].as_f64().expect("dur");
            assert!(end > ts, "slices have a length: {e}");
            let name = e["name"].as_str().unwrap().to_owned();
            let last = last_ts.entry((pid, tid)).or_insert(f64::MIN);
            assert!(ts >= *last, "events of tid {tid} go back in time at {e}");
            *last = ts;
            let stack = enclosing.entry((pid, tid)).or_default();
            while stack.last().is_some_and(|&parent_end| parent_end <= ts) {
                stack.pop();
            }
            if let Some(&parent_end) = stack.last() {
                assert!(end <= parent_end, "{e} overlaps its caller's end");
            }
            out.entry(tid)
                .or_default()
                .push((name, ts, end, stack.len()));
            stack.push(end);
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
        assert_eq!(f.iter().map(|s| s.3).collect::<Vec<_>>(), [2, 3, 4]);

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
        // Ticks 2 and 5 were not sampled (the thread was idle, say).
        p.add(&sample(0.00, 1, "m", &[("main", 7), ("a", 1)]));
        p.add(&sample(0.01, 1, "m", &[("main", 7), ("a", 1)]));
        p.add(&sample(0.03, 1, "m", &[("main", 8), ("b", 1)]));
        p.add(&sample(0.04, 1, "m", &[("main", 8), ("b", 2)]));
        p.add(&sample(0.06, 1, "m", &[("main", 9), ("b", 3)]));
        let (v, by_tid) = slices(&p);
        let spans = |name: &str| -> Vec<(f64, f64, usize)> {
            by_tid[&1001]
                .iter()
                .filter(|s| s.0 == name)
                .map(|s| (s.1, s.2, s.3))
                .collect()
        };
        // main never left the stack: one slice over both gaps, up to the end of tick 6.
        assert_eq!(spans("main (main.py)"), [(0.0, 70_000.0, 0)]);
        // a ends with the last tick it was seen in; b starts with the first. Where the
        // thread stopped, in b before tick 5, is a gap even though b is seen after it.
        assert_eq!(spans("a (main.py)"), [(0.0, 20_000.0, 1)]);
        assert_eq!(
            spans("b (main.py)"),
            [(30_000.0, 50_000.0, 1), (60_000.0, 70_000.0, 1)]
        );
        let first = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["ph"] == "X")
            .unwrap();
        assert_eq!(first["name"], "main (main.py)");
        assert_eq!(first["args"]["file"], "/app/src/main.py");
        assert_eq!(first["args"]["line"], 7, "the line first seen");
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
                .find(|e| e["ph"] == "X" && e["name"] == name)
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
