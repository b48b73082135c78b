//! Reading profiles back: the pprof, speedscope and raw (collapsed) files `prof record`
//! writes, and files of other tools in those formats, become a [`Profile`] again, so that
//! `prof report` (and anything comparing profiles) computes its tables with the same
//! aggregation as `prof top` ([`Profile::functions`]).
//!
//! The format is told from the content, not the file name: gzip is unpacked first (pprof
//! is gzipped protobuf, but a gzipped text or JSON file is read too), a JSON object is
//! speedscope, text whose lines end in a count is folded stacks, and anything else is tried
//! as protobuf. Chrome traces and SVG flame graphs are recognised and refused by name: they
//! cannot be turned back into counted stacks.
//!
//! What the profile holds:
//!
//! - **Threads**: pprof's `thread` label, speedscope's profile names, or the thread frames
//!   that `-t` puts at the root of raw stacks. Labels that read like prof's
//!   ([`crate::profile::ThreadInfo::label`], `process N: ` before it with several
//!   processes) give the thread's name, ids and process back; any other label is the
//!   thread's name. A file without threads has one unnamed thread.
//! - **Frames**: name, file and line where the format has them (raw: `name (file:line)`,
//!   `name (file)`, or a bare name from other tools), pprof's `start_line` as the
//!   function's first line. File names are what the file holds: full names in pprof, the
//!   names `record` showed in the others. Every frame is read as Python code: no format
//!   says which frames were native. prof's synthetic root frames (thread labels,
//!   `process N`) are not frames of the stacks.
//! - **Counts**: pprof's `samples/count` value (else its time value over the period, else
//!   its first value); raw's counts; in speedscope one sample per non-empty entry when the
//!   weights are times (prof writes speedscope files with every sample in time order),
//!   and the weight itself when the unit is `none` (counts, as py-spy writes them).
//! - **Time**: when the file has times (pprof's time values, speedscope's weights), the
//!   achieved rate in [`crate::profile::ProfileMeta`] is samples per second of sampled
//!   time, so [`Profile::sample_interval`] is the time a sample stands for; see
//!   [`ReadProfile::seconds_per_sample`]. pprof's period gives the requested rate.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use thiserror::Error;

use super::Format;
use super::pprof::{LEN, ROOT_SYSTEM_PREFIX, VARINT, field};
use crate::profile::{Profile, ProfileMeta, ProfileOptions};
use crate::sample::{Frame, FrameCode, FrameKind, Sample, ThreadStack};

/// Why a file could not be read as a profile.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The content is no profile prof reads.
    #[error("not a profile prof can read: {0}")]
    Unknown(String),
    /// The content looked like `format` but broke its rules.
    #[error("malformed {format} profile: {detail}")]
    Malformed {
        /// The format the content was taken for.
        format: Format,
        /// What was wrong, for people.
        detail: String,
    },
}

/// Result of the reader.
pub type Result<T> = std::result::Result<T, ReadError>;

/// A profile read from a file, and the format it was in.
#[derive(Debug, Clone)]
pub struct ReadProfile {
    /// [`Format::Pprof`], [`Format::Speedscope`] or [`Format::Raw`].
    pub format: Format,
    /// The samples, counted per thread and stack.
    pub profile: Profile,
}

impl ReadProfile {
    /// Seconds one sample stands for, when the file says (not for raw files).
    pub fn seconds_per_sample(&self) -> Option<f64> {
        let rate = self.profile.meta().achieved_rate;
        (rate > 0.0 && rate.is_finite()).then(|| 1.0 / rate)
    }
}

/// Read the profile in the file at `path`; a title the file lacks is its path.
pub fn read_file(path: &Path) -> Result<ReadProfile> {
    let bytes = std::fs::read(path)?;
    read(&bytes, &path.display().to_string())
}

/// Read a profile from its bytes, in any of the formats the module reads.
pub fn read_bytes(bytes: &[u8]) -> Result<ReadProfile> {
    read(bytes, "")
}

/// Largest unpacked size of a gzipped file: a gzip bomb is refused, not unpacked.
const MAX_UNPACKED: u64 = 1 << 30;

fn read(bytes: &[u8], title: &str) -> Result<ReadProfile> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut unpacked = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_UNPACKED + 1)
            .read_to_end(&mut unpacked)
            .map_err(|e| ReadError::Unknown(format!("gzip data that cannot be unpacked ({e})")))?;
        if unpacked.len() as u64 > MAX_UNPACKED {
            return Err(ReadError::Unknown(
                "gzip data unpacking to more than 1 GiB".into(),
            ));
        }
        return read_unpacked(&unpacked, title, true);
    }
    read_unpacked(bytes, title, false)
}

/// Read unpacked content; `gzipped` content that is binary can only be pprof.
fn read_unpacked(bytes: &[u8], title: &str, gzipped: bool) -> Result<ReadProfile> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let chrome = || {
        ReadError::Unknown(
            "a Chrome trace (its events cannot be counted back into stacks; record with -f pprof, speedscope or raw)".into(),
        )
    };
    let (format, parsed) = match first {
        // The writer puts `traceEvents` first; other tools may not, see `speedscope`.
        Some(b'{') if contains(&bytes[..bytes.len().min(256)], b"\"traceEvents\"") => {
            return Err(chrome());
        }
        Some(b'{') => (Format::Speedscope, speedscope(bytes, title)),
        Some(b'[') => return Err(chrome()),
        // Folded stacks may start with `<module>`: only XML is an SVG.
        Some(b'<') if is_xml(bytes) => {
            return Err(ReadError::Unknown(
                "an SVG flame graph (it holds no samples to read back; record with -f pprof, speedscope or raw)".into(),
            ));
        }
        _ => match std::str::from_utf8(bytes) {
            // Protobuf is binary as soon as a varint passes 127; a tiny message can be
            // text-like, which is why pprof is tried when folded stacks fail.
            Ok(text) => match folded(text, title) {
                Ok(p) => (Format::Raw, Ok(p)),
                Err((line, raw_err)) => match pprof(bytes, title) {
                    Ok(p) => (Format::Pprof, Ok(p)),
                    // Text whose first line is no folded stack is some other text.
                    Err(_) if line == 1 => {
                        return Err(ReadError::Unknown(format!(
                            "text that is not folded stacks ({raw_err}); prof reads pprof, speedscope and raw files"
                        )));
                    }
                    Err(_) => (Format::Raw, Err(raw_err)),
                },
            },
            Err(_) => match pprof(bytes, title) {
                Err(e) if !gzipped => {
                    return Err(ReadError::Unknown(format!(
                        "binary data that is not a pprof profile ({e})"
                    )));
                }
                parsed => (Format::Pprof, parsed),
            },
        },
    };
    match parsed {
        Ok(profile) => Ok(ReadProfile { format, profile }),
        Err(detail) => Err(ReadError::Malformed { format, detail }),
    }
}

/// Collects threads, frames and counts into a profile.
struct Builder {
    profile: Profile,
    /// Thread title → (pid, the thread's stack with no frames yet).
    threads: HashMap<String, (u32, ThreadStack)>,
    /// Code by (name, file, first line), so the frames of a function share it and the
    /// profile recognises them by pointer.
    codes: HashMap<(String, String, i32), Arc<FrameCode>>,
}

impl Builder {
    fn new(meta: ProfileMeta) -> Self {
        Builder {
            profile: Profile::new(meta, ProfileOptions::default()),
            threads: HashMap::new(),
            codes: HashMap::new(),
        }
    }

    /// A frame of `name` in `file` at `line`; `first_line` is the function's, 0 if unknown.
    fn frame(&mut self, name: &str, file: &str, line: i32, first_line: i32) -> Frame {
        let code = self
            .codes
            .entry((name.to_owned(), file.to_owned(), first_line))
            .or_insert_with(|| {
                let file: Arc<str> = file.into();
                Arc::new(FrameCode {
                    name: name.into(),
                    filename: Arc::clone(&file),
                    short_filename: file,
                    first_line,
                })
            });
        Frame {
            code: Arc::clone(code),
            line: line.max(0),
            kind: FrameKind::Python,
            locals: None,
        }
    }

    /// Add `count` samples of `frames` (innermost first) on the thread titled `thread`.
    fn add(&mut self, thread: Option<&str>, frames: Vec<Frame>, count: u64) {
        let title = thread.unwrap_or("");
        let next = self.threads.len();
        let (pid, template) = self
            .threads
            .entry(title.to_owned())
            .or_insert_with(|| parse_thread_title(thread, next));
        let sample = Sample {
            time: 0.0,
            tick: 0,
            pid: *pid,
            stack: ThreadStack {
                frames: frames.into(),
                ..template.clone()
            },
        };
        self.profile.add_repeated(&sample, count);
    }
}

/// A thread's process and identity from its title (see the module doc); `index` tells
/// apart threads whose title holds no id.
fn parse_thread_title(title: Option<&str>, index: usize) -> (u32, ThreadStack) {
    let mut stack = ThreadStack {
        thread_id: index as u64,
        os_thread_id: None,
        thread_name: None,
        active: false,
        owns_gil: false,
        gil_requested: false,
        state: None,
        frames: Default::default(),
    };
    let Some(title) = title else {
        return (0, stack);
    };
    let (pid, label) = match title
        .strip_prefix("process ")
        .and_then(|r| r.split_once(": "))
        .and_then(|(pid, rest)| Some((pid.parse().ok()?, rest)))
    {
        Some((pid, rest)) => (pid, rest),
        None => (0, title),
    };
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    let anonymous = |s: &str| s.strip_prefix("thread ").and_then(hex);
    let mut name = Some(label);
    if let Some((head, tid)) = label
        .strip_suffix(')')
        .and_then(|l| l.rsplit_once(" (tid "))
        .and_then(|(h, t)| Some((h, t.parse::<u32>().ok()?)))
    {
        stack.os_thread_id = Some(tid);
        name = Some(head);
        if let Some(id) = anonymous(head) {
            stack.thread_id = id;
            name = None;
        }
    } else if let Some((head, id)) = label
        .strip_suffix(')')
        .and_then(|l| l.rsplit_once(" ("))
        .and_then(|(h, i)| Some((h, hex(i)?)))
    {
        stack.thread_id = id;
        name = Some(head);
    } else if let Some(id) = anonymous(label) {
        stack.thread_id = id;
        name = None;
    }
    stack.thread_name = name.map(Arc::from);
    (pid, stack)
}

/// True when a folded root frame is a thread label that `-t` put there.
fn is_thread_label(frame: &str) -> bool {
    let (_, stack) = parse_thread_title(Some(frame), usize::MAX);
    stack.os_thread_id.is_some() || stack.thread_id != usize::MAX as u64
}

// ---- raw (folded stacks) ----

/// Folded stacks: `root;...;leaf count` lines (see [`super::raw`]). An error says which
/// of the non-blank lines (counting from 1) was wrong, and how.
fn folded(text: &str, title: &str) -> std::result::Result<Profile, (usize, String)> {
    let mut b = Builder::new(ProfileMeta::new(title, 0.0, SystemTime::UNIX_EPOCH));
    // Lines repeat their outer frames: each label is parsed once.
    let mut by_label: HashMap<&str, Frame> = HashMap::new();
    let mut seen = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        seen += 1;
        let bad = || {
            let shown: String = line.chars().take(60).collect();
            let msg = format!("line {} is not `frame;frame;... count`: {shown:?}", n + 1);
            (seen, msg)
        };
        let (stack, count) = line.rsplit_once(' ').ok_or_else(bad)?;
        let count: u64 = count.parse().map_err(|_| bad())?;
        if stack.is_empty() {
            return Err(bad());
        }
        let mut labels: Vec<&str> = stack.split(';').collect();
        // Root frames prof adds: `process N` with several processes, the thread with -t.
        let mut process = None;
        if labels.len() > 1
            && let Some(pid) = labels[0].strip_prefix("process ")
            && pid.parse::<u32>().is_ok()
        {
            process = Some(labels.remove(0));
        }
        let thread = (labels.len() > 1 && is_thread_label(labels[0])).then(|| labels.remove(0));
        let title = match (process, thread) {
            (Some(p), Some(t)) => Some(format!("{p}: {t}")),
            (Some(p), None) => Some(p.to_owned()),
            (None, t) => t.map(str::to_owned),
        };
        let frames = labels
            .iter()
            .rev()
            .map(|l| {
                by_label
                    .entry(*l)
                    .or_insert_with(|| {
                        let (name, file, line) = parse_frame_label(l);
                        b.frame(name, file, line, 0)
                    })
                    .clone()
            })
            .collect();
        b.add(title.as_deref(), frames, count);
    }
    Ok(b.profile)
}

/// `name (file:line)`, `name (file)` or a bare `name`, as (name, file, line or 0).
fn parse_frame_label(label: &str) -> (&str, &str, i32) {
    // The first ` (`: Python names hold no space, file names may hold parentheses.
    let Some((name, inner)) = label.strip_suffix(')').and_then(|l| l.split_once(" (")) else {
        return (label, "", 0);
    };
    match inner.rsplit_once(':') {
        Some((file, line)) => match line.parse::<i32>() {
            Ok(l) if l > 0 => (name, file, l),
            _ => (name, inner, 0),
        },
        None => (name, inner, 0),
    }
}

// ---- speedscope ----

#[derive(Deserialize)]
struct SpeedscopeFile {
    #[serde(default)]
    name: Option<String>,
    shared: SpeedscopeShared,
    profiles: Vec<SpeedscopeProfile>,
}

#[derive(Deserialize)]
struct SpeedscopeShared {
    frames: Vec<SpeedscopeFrame>,
}

#[derive(Deserialize)]
struct SpeedscopeFrame {
    name: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    line: Option<i64>,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum SpeedscopeProfile {
    #[serde(rename = "sampled")]
    Sampled {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        unit: Option<String>,
        samples: Vec<Vec<usize>>,
        weights: Vec<f64>,
    },
    /// Open/close events have no samples to count: left out.
    #[serde(rename = "evented")]
    Evented {},
}

/// Seconds per unit of a time unit (pprof's and speedscope's names), None for other units.
fn seconds_per_unit(unit: &str) -> Option<f64> {
    match unit {
        "nanoseconds" => Some(1e-9),
        "microseconds" => Some(1e-6),
        "milliseconds" => Some(1e-3),
        "seconds" => Some(1.0),
        _ => None,
    }
}

fn speedscope(bytes: &[u8], title: &str) -> std::result::Result<Profile, String> {
    let file: SpeedscopeFile = serde_json::from_slice(bytes).map_err(|e| {
        if contains(bytes, b"\"traceEvents\"") {
            "this is a Chrome trace, whose events cannot be counted back into stacks".into()
        } else {
            e.to_string()
        }
    })?;
    let title = file
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(title);
    let mut b = Builder::new(ProfileMeta::new(title, 0.0, SystemTime::UNIX_EPOCH));
    let frames: Vec<Frame> = file
        .shared
        .frames
        .iter()
        .map(|f| {
            let line = f.line.and_then(|l| i32::try_from(l).ok()).unwrap_or(0);
            b.frame(&f.name, f.file.as_deref().unwrap_or(""), line, 0)
        })
        .collect();
    let (mut count_sum, mut seconds) = (0u64, 0.0);
    let mut sampled = 0;
    for p in &file.profiles {
        let SpeedscopeProfile::Sampled {
            name,
            unit,
            samples,
            weights,
        } = p
        else {
            continue;
        };
        sampled += 1;
        if samples.len() != weights.len() {
            return Err(format!(
                "profile {:?} has {} samples but {} weights",
                name.as_deref().unwrap_or(""),
                samples.len(),
                weights.len()
            ));
        }
        let scale = unit.as_deref().and_then(seconds_per_unit);
        for (stack, &w) in samples.iter().zip(weights) {
            // Empty stacks are the time between samples: no sample.
            if stack.is_empty() {
                continue;
            }
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("a sample weighs {w}"));
            }
            let count = match scale {
                Some(s) => {
                    seconds += w * s;
                    1
                }
                None => w.round() as u64,
            };
            let mut st = Vec::with_capacity(stack.len());
            for &i in stack.iter().rev() {
                let f = frames.get(i).ok_or_else(|| {
                    format!("a sample names frame {i}, of {} frames", frames.len())
                })?;
                st.push(f.clone());
            }
            count_sum += count;
            b.add(name.as_deref(), st, count);
        }
    }
    if sampled == 0 && !file.profiles.is_empty() {
        return Err("only evented profiles, which hold no samples to count".into());
    }
    if seconds > 0.0 && count_sum > 0 {
        set_rates(&mut b.profile, 0.0, count_sum as f64 / seconds, 0.0);
    }
    Ok(b.profile)
}

/// Does the content start like an XML document (an SVG)?
fn is_xml(bytes: &[u8]) -> bool {
    let start = bytes.trim_ascii_start();
    [&b"<?xml"[..], b"<svg", b"<!DOCTYPE", b"<!--"]
        .iter()
        .any(|p| start.len() >= p.len() && start[..p.len()].eq_ignore_ascii_case(p))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Put rates and duration into a built profile's meta.
fn set_rates(profile: &mut Profile, requested: f64, achieved: f64, duration: f64) {
    let meta = ProfileMeta {
        requested_rate: requested,
        achieved_rate: achieved,
        duration,
        ..profile.meta().clone()
    };
    profile.set_meta(meta);
}

// ---- pprof ----

/// One field of a protobuf message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed-width field; profile.proto has none, so it is skipped.
    Fixed,
}

/// The fields of a protobuf message, in order (also the pprof writer's tests' decoder).
pub(crate) struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }

    pub(crate) fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than ten bytes".into())
    }

    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or("field runs past the end of its message")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> std::result::Result<Option<(u32, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            LEN => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            w => return Err(format!("wire type {w} (field {num}) is not protobuf's")),
        };
        Ok(Some((num, value)))
    }

    /// Every field of `buf`.
    pub(crate) fn fields(buf: &'a [u8]) -> std::result::Result<Vec<(u32, Value<'a>)>, String> {
        let mut w = Wire::new(buf);
        let mut v = Vec::new();
        while let Some(f) = w.next_field()? {
            v.push(f);
        }
        Ok(v)
    }
}

/// The last value of scalar field `num` (protobuf's rule), 0 when absent.
pub(crate) fn scalar(fields: &[(u32, Value)], num: u32) -> u64 {
    fields
        .iter()
        .rev()
        .find_map(|&(n, v)| match (n == num, v) {
            (true, Value::Varint(x)) => Some(x),
            _ => None,
        })
        .unwrap_or(0)
}

/// Repeated varint field `num`, packed or not.
pub(crate) fn repeated(fields: &[(u32, Value)], num: u32) -> std::result::Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for &(n, v) in fields {
        if n != num {
            continue;
        }
        match v {
            Value::Varint(x) => out.push(x),
            Value::Bytes(b) => {
                let mut w = Wire::new(b);
                while w.pos < b.len() {
                    out.push(w.varint()?);
                }
            }
            Value::Fixed => return Err(format!("field {num} is not a varint")),
        }
    }
    Ok(out)
}

/// Embedded messages of field `num`.
pub(crate) fn messages<'a>(
    fields: &[(u32, Value<'a>)],
    num: u32,
) -> std::result::Result<Vec<Vec<(u32, Value<'a>)>>, String> {
    fields
        .iter()
        .filter(|(n, _)| *n == num)
        .map(|&(_, v)| match v {
            Value::Bytes(b) => Wire::fields(b),
            _ => Err(format!("field {num} is not a message")),
        })
        .collect()
}

fn pprof(buf: &[u8], title: &str) -> std::result::Result<Profile, String> {
    let top = Wire::fields(buf)?;
    let strings: Vec<&str> = top
        .iter()
        .filter(|(n, _)| *n == field::STRING_TABLE)
        .map(|&(_, v)| match v {
            Value::Bytes(b) => std::str::from_utf8(b).map_err(|_| "a string is not UTF-8".into()),
            _ => Err("a string is not a string".to_owned()),
        })
        .collect::<std::result::Result<_, String>>()?;
    if strings.first() != Some(&"") {
        return Err("no string table starting with \"\"".into());
    }
    let string = |i: u64| -> std::result::Result<&str, String> {
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i).copied())
            .ok_or_else(|| format!("string {i} of {}", strings.len()))
    };
    let value_type = |m: &[(u32, Value)]| -> std::result::Result<(String, String), String> {
        Ok((
            string(scalar(m, field::value_type::TYPE))?.to_owned(),
            string(scalar(m, field::value_type::UNIT))?.to_owned(),
        ))
    };
    let sample_types = messages(&top, field::SAMPLE_TYPE)?
        .iter()
        .map(|m| value_type(m))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if sample_types.is_empty() {
        return Err("no sample types".into());
    }
    let period = scalar(&top, field::PERIOD) as i64;
    let period_type = messages(&top, field::PERIOD_TYPE)?
        .first()
        .map(|m| value_type(m))
        .transpose()?;
    let default_type = string(scalar(&top, field::DEFAULT_SAMPLE_TYPE))?;

    // Which value counts samples, and which measures time.
    let count_index = sample_types
        .iter()
        .position(|(t, u)| t == "samples" && u == "count")
        .or_else(|| sample_types.iter().position(|(_, u)| u == "count"));
    let time_index = sample_types
        .iter()
        .position(|(t, u)| t == default_type && seconds_per_unit(u).is_some())
        .or_else(|| {
            sample_types
                .iter()
                .position(|(_, u)| seconds_per_unit(u).is_some())
        });
    let time_scale = time_index.and_then(|i| seconds_per_unit(&sample_types[i].1));
    // The period in the time value's unit, when both are times.
    let period_in_time_unit = match (&period_type, time_scale) {
        (Some((_, u)), Some(scale)) if period > 0 => {
            seconds_per_unit(u).map(|p| period as f64 * p / scale)
        }
        _ => None,
    };
    let requested = match &period_type {
        Some((_, u)) if period > 0 => {
            seconds_per_unit(u).map_or(0.0, |s| 1.0 / (period as f64 * s))
        }
        _ => 0.0,
    };

    let comments = repeated(&top, field::COMMENT)?;
    let title = match comments.first() {
        Some(&c) if !string(c)?.is_empty() => string(c)?,
        _ => title,
    };
    let start = SystemTime::UNIX_EPOCH
        + Duration::from_nanos(scalar(&top, field::TIME_NANOS).min(i64::MAX as u64));
    let duration = scalar(&top, field::DURATION_NANOS).min(i64::MAX as u64) as f64 * 1e-9;
    let mut b = Builder::new(ProfileMeta::new(title, requested, start));

    let mut mappings: HashMap<u64, &str> = HashMap::new();
    for m in messages(&top, field::MAPPING)? {
        mappings.insert(
            scalar(&m, field::mapping::ID),
            string(scalar(&m, field::mapping::FILENAME))?,
        );
    }
    // Function id → its frame's (name, file, first line), None for prof's root frames.
    let mut functions: HashMap<u64, Option<(&str, &str, i32)>> = HashMap::new();
    for f in messages(&top, field::FUNCTION)? {
        let name = string(scalar(&f, field::function::NAME))?;
        let system = string(scalar(&f, field::function::SYSTEM_NAME))?;
        let file = string(scalar(&f, field::function::FILENAME))?;
        let start = i32::try_from(scalar(&f, field::function::START_LINE) as i64).unwrap_or(0);
        let synthetic = file.is_empty() && system.starts_with(ROOT_SYSTEM_PREFIX);
        functions.insert(
            scalar(&f, field::function::ID),
            (!synthetic).then_some((name, file, start)),
        );
    }
    // Location id → its frames, innermost first (a location's lines are inlined calls,
    // the innermost first).
    let mut locations: HashMap<u64, Vec<Frame>> = HashMap::new();
    for l in messages(&top, field::LOCATION)? {
        let mut frames = Vec::new();
        let lines = messages(&l, field::location::LINE)?;
        for line in &lines {
            let id = scalar(line, field::line::FUNCTION_ID);
            let number = i32::try_from(scalar(line, field::line::LINE) as i64).unwrap_or(0);
            match functions.get(&id) {
                Some(Some((name, file, start))) => {
                    frames.push(b.frame(name, file, number, *start));
                }
                Some(None) => {}
                None => {
                    return Err(format!(
                        "a location names function {id}, which is not there"
                    ));
                }
            }
        }
        if lines.is_empty() {
            // Not symbolized: its address in its mapping's file.
            let file = mappings
                .get(&scalar(&l, field::location::MAPPING_ID))
                .copied()
                .unwrap_or("");
            let name = format!("{:#x}", scalar(&l, field::location::ADDRESS));
            frames.push(b.frame(&name, file, 0, 0));
        }
        locations.insert(scalar(&l, field::location::ID), frames);
    }

    let (mut count_sum, mut time_sum) = (0u64, 0.0f64);
    for s in messages(&top, field::SAMPLE)? {
        let values = repeated(&s, field::sample::VALUE)?;
        let value = |i: usize| values.get(i).map_or(0, |&v| (v as i64).max(0));
        let count = match (count_index, time_index, period_in_time_unit) {
            (Some(c), _, _) => value(c) as u64,
            (None, Some(t), Some(p)) if p > 0.0 => (value(t) as f64 / p).round() as u64,
            _ => value(0) as u64,
        };
        if let (Some(t), Some(scale)) = (time_index, time_scale) {
            time_sum += value(t) as f64 * scale;
        }
        let mut thread = None;
        for label in messages(&s, field::sample::LABEL)? {
            if string(scalar(&label, field::label::KEY))? == "thread" {
                thread = Some(string(scalar(&label, field::label::STR))?);
            }
        }
        let mut frames = Vec::new();
        for id in repeated(&s, field::sample::LOCATION_ID)? {
            let loc = locations
                .get(&id)
                .ok_or_else(|| format!("a sample names location {id}, which is not there"))?;
            frames.extend(loc.iter().cloned());
        }
        count_sum += count;
        b.add(thread, frames, count);
    }
    let achieved = if time_sum > 0.0 && count_sum > 0 {
        count_sum as f64 / time_sum
    } else {
        0.0
    };
    set_rates(&mut b.profile, requested, achieved, duration);
    Ok(b.profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::fixtures::*;
    use crate::profile::{FunctionStats, RunStats};

    /// The table rows that matter to a reader: (name, file, line, own, total), sorted.
    fn rows(v: Vec<FunctionStats>) -> Vec<(String, String, Option<i32>, u64, u64)> {
        let mut r: Vec<_> = v
            .into_iter()
            .map(|f| (f.name, f.filename, f.line, f.own, f.total))
            .collect();
        r.sort();
        r
    }

    fn written(format: Format, p: &Profile) -> Vec<u8> {
        let mut buf = Vec::new();
        super::super::write(format, p, &mut buf).unwrap();
        buf
    }

    /// Samples per thread name (its key in `prof top`), sorted.
    fn per_thread(p: &Profile) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = p
            .threads()
            .iter()
            .filter(|t| t.samples > 0)
            .map(|t| (crate::tui::view::thread_key(t), t.samples))
            .collect();
        v.sort();
        v
    }

    /// Each writer's file, read back, gives the table and the threads of the profile written.
    #[test]
    fn writers_round_trip() {
        let variants = [
            ProfileOptions::default(),
            ProfileOptions {
                threads_as_root: true,
                ..Default::default()
            },
            ProfileOptions {
                by_function: true,
                ..Default::default()
            },
            ProfileOptions {
                no_line_numbers: true,
                threads_as_root: true,
                ..Default::default()
            },
        ];
        for opts in variants {
            for format in [Format::Raw, Format::Speedscope, Format::Pprof] {
                let opts = ProfileOptions {
                    keep_timeline: format.needs_timeline(),
                    // pprof holds full file names, the others the names shown.
                    full_filenames: format == Format::Pprof,
                    ..opts
                };
                let original = two_threads(opts);
                let bytes = written(format, &original);
                let read = read_bytes(&bytes).unwrap_or_else(|e| panic!("{format}: {e}"));
                let what = format!("{format} {opts:?}");
                assert_eq!(read.format, format, "{what}");
                let p = &read.profile;
                assert_eq!(p.total_samples(), original.total_samples(), "{what}");
                for by_line in [false, true] {
                    // pprof shows -F's line for the function; the others fold it away.
                    if by_line && format == Format::Pprof && opts.no_line_numbers {
                        continue;
                    }
                    assert_eq!(
                        rows(p.functions(by_line, true, |_| true)),
                        rows(original.functions(by_line, true, |_| true)),
                        "{what} by_line={by_line}"
                    );
                }
                // Raw files only know threads when -t put them at the roots.
                if format != Format::Raw || opts.threads_as_root {
                    assert_eq!(per_thread(p), per_thread(&original), "{what}");
                    let worker =
                        |t: &crate::profile::ThreadInfo| t.name.as_deref() == Some("worker");
                    assert_eq!(
                        rows(p.functions(true, true, worker)),
                        rows(original.functions(true, true, worker)),
                        "{what}"
                    );
                    let main = p
                        .threads()
                        .iter()
                        .find(|t| t.name.as_deref() == Some("MainThread"))
                        .unwrap();
                    assert_eq!(main.os_thread_id, Some(1001), "{what}");
                } else {
                    assert_eq!(p.threads().len(), 1, "{what}");
                }
                let per_sample = read.seconds_per_sample();
                if format == Format::Raw {
                    assert_eq!(per_sample, None);
                } else {
                    let s = per_sample.unwrap();
                    assert!((s - 0.01).abs() < 1e-9, "{what}: {s}");
                }
            }
        }
    }

    #[test]
    fn pprof_keeps_first_lines_titles_and_rates() {
        let original = two_threads(ProfileOptions::default());
        let read = read_bytes(&written(Format::Pprof, &original)).unwrap();
        let p = &read.profile;
        assert_eq!(p.meta().title, original.meta().title);
        assert_eq!(p.meta().requested_rate, 100.0);
        assert!((p.meta().duration - 0.06).abs() < 1e-9);
        // No thread label or `process` frame became a function.
        assert_eq!(p.function_table().len(), original.function_table().len());
    }

    #[test]
    fn several_processes() {
        for format in [Format::Raw, Format::Speedscope, Format::Pprof] {
            let mut original = Profile::new(
                meta(),
                ProfileOptions {
                    threads_as_root: true,
                    keep_timeline: format.needs_timeline(),
                    ..Default::default()
                },
            );
            let a = sample(0.0, 1, "a", &[("f", 1)]);
            let mut b = sample(0.0, 1, "b", &[("g", 2)]);
            b.pid = 43;
            original.add(&a);
            original.add(&b);
            original.add(&b);
            original.finish(RunStats {
                duration: 0.02,
                ticks: 2,
                ..Default::default()
            });
            let p = read_bytes(&written(format, &original)).unwrap().profile;
            let mut threads: Vec<(u32, Option<String>, u64)> = p
                .threads()
                .iter()
                .map(|t| (t.pid, t.name.clone(), t.samples))
                .collect();
            threads.sort();
            assert_eq!(
                threads,
                [(42, Some("a".into()), 1), (43, Some("b".into()), 2)],
                "{format}"
            );
            assert!(
                p.function_table()
                    .iter()
                    .all(|f| !f.name.contains("process")),
                "{format}"
            );
        }
    }

    #[test]
    fn thread_titles() {
        let parse = |s: &str| {
            let (pid, t) = parse_thread_title(Some(s), 7);
            (
                pid,
                t.thread_name.as_deref().map(str::to_owned),
                t.thread_id,
                t.os_thread_id,
            )
        };
        assert_eq!(
            parse("MainThread (tid 12)"),
            (0, Some("MainThread".into()), 7, Some(12))
        );
        assert_eq!(parse("w (0x7f00)"), (0, Some("w".into()), 0x7f00, None));
        assert_eq!(parse("thread 0x10 (tid 3)"), (0, None, 0x10, Some(3)));
        assert_eq!(parse("thread 0x10"), (0, None, 0x10, None));
        assert_eq!(
            parse("process 9: pool (1) (tid 4)"),
            (9, Some("pool (1)".into()), 7, Some(4))
        );
        assert_eq!(
            parse("Thread 5 \"x\""),
            (0, Some("Thread 5 \"x\"".into()), 7, None)
        );
        // Labels made by ThreadInfo::label come back as the same label.
        let p = two_threads(ProfileOptions::default());
        for t in p.threads() {
            let (_, s) = parse_thread_title(Some(&t.label()), 0);
            assert_eq!(s.os_thread_id, t.os_thread_id);
            assert_eq!(s.thread_name.as_deref(), t.name.as_deref());
        }
    }

    #[test]
    fn frame_labels() {
        assert_eq!(parse_frame_label("f (a.py:3)"), ("f", "a.py", 3));
        assert_eq!(parse_frame_label("f (a.py)"), ("f", "a.py", 0));
        assert_eq!(
            parse_frame_label("<module> (/x (1)/a:b.py:12)"),
            ("<module>", "/x (1)/a:b.py", 12)
        );
        assert_eq!(
            parse_frame_label("memcpy (libc.so.6)"),
            ("memcpy", "libc.so.6", 0)
        );
        assert_eq!(parse_frame_label("[unknown]"), ("[unknown]", "", 0));
        assert_eq!(parse_frame_label("main.work"), ("main.work", "", 0));
    }

    /// Folded stacks of other tools: bare names, blank lines, CRLF, gzipped.
    #[test]
    fn other_tools_folded_stacks() {
        let text = "main;parse;lex 3\r\n\nmain;parse 1\nmain;[unknown] 2\n";
        // Python's folded stacks start with `<module>`: not to be taken for XML.
        let module = read_bytes(b"<module> (a.py:1);f (a.py:2) 5\n").unwrap();
        assert_eq!(
            (module.format, module.profile.total_samples()),
            (Format::Raw, 5)
        );
        let read = read_bytes(text.as_bytes()).unwrap();
        assert_eq!(read.format, Format::Raw);
        let p = &read.profile;
        assert_eq!(p.total_samples(), 6);
        let v = p.functions(false, true, |_| true);
        let f = |n: &str| v.iter().find(|f| f.name == n).unwrap();
        assert_eq!((f("lex").own, f("parse").total, f("main").total), (3, 4, 6));
        assert_eq!(f("main").filename, "");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
        let read = read_bytes(&gz.finish().unwrap()).unwrap();
        assert_eq!(
            (read.format, read.profile.total_samples()),
            (Format::Raw, 6)
        );

        let empty = read_bytes(b"").unwrap();
        assert_eq!(
            (empty.format, empty.profile.total_samples()),
            (Format::Raw, 0)
        );
    }

    /// speedscope files of other tools: counts as weights (`none`), evented profiles.
    #[test]
    fn other_tools_speedscope() {
        let json = r#"{"shared":{"frames":[{"name":"main","file":"a.py","line":1},{"name":"hot"}]},
            "profiles":[
              {"type":"sampled","name":"Thread 1","unit":"none","startValue":0,"endValue":9,
               "samples":[[0,1],[0]],"weights":[7,2]},
              {"type":"evented","name":"e","unit":"none","startValue":0,"endValue":1,"events":[]}]}"#;
        let read = read_bytes(json.as_bytes()).unwrap();
        assert_eq!(read.format, Format::Speedscope);
        assert_eq!(read.profile.total_samples(), 9);
        assert_eq!(read.seconds_per_sample(), None);
        let v = read.profile.functions(false, true, |_| true);
        assert_eq!((v[0].name.as_str(), v[0].own), ("hot", 7));
    }

    /// A pprof of another tool: CPU nanoseconds only, an unsymbolized location, no labels.
    #[test]
    fn other_tools_pprof() {
        fn varint(b: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                b.push(v as u8 | 0x80);
                v >>= 7;
            }
            b.push(v as u8);
        }
        fn tag(b: &mut Vec<u8>, f: u32, w: u8, payload: &[u8]) {
            varint(b, u64::from(f) << 3 | u64::from(w));
            if w == LEN {
                varint(b, payload.len() as u64);
                b.extend_from_slice(payload);
            } else {
                b.extend_from_slice(payload);
            }
        }
        let v = |x: u64| {
            let mut b = Vec::new();
            varint(&mut b, x);
            b
        };
        let msg = |fields: &[(u32, Vec<u8>, u8)]| {
            let mut b = Vec::new();
            for (f, p, w) in fields {
                tag(&mut b, *f, *w, p);
            }
            b
        };
        // Strings: 0 "", 1 cpu, 2 nanoseconds, 3 run, 4 x.go, 5 /bin/app
        let mut p = Vec::new();
        let st = msg(&[(1, v(1), VARINT), (2, v(2), VARINT)]);
        tag(&mut p, field::SAMPLE_TYPE, LEN, &st);
        for (locs, ns) in [(vec![1u64, 2], 30_000_000u64), (vec![2], 10_000_000)] {
            let mut ids = Vec::new();
            locs.iter().for_each(|&l| varint(&mut ids, l));
            let s = msg(&[(1, ids, LEN), (2, v(ns), LEN)]);
            tag(&mut p, field::SAMPLE, LEN, &s);
        }
        let m = msg(&[(1, v(1), VARINT), (5, v(5), VARINT)]);
        tag(&mut p, field::MAPPING, LEN, &m);
        let l1 = msg(&[(1, v(1), VARINT), (2, v(1), VARINT), (3, v(0x4242), VARINT)]);
        tag(&mut p, field::LOCATION, LEN, &l1);
        let line = msg(&[(1, v(1), VARINT), (2, v(7), VARINT)]);
        let l2 = msg(&[(1, v(2), VARINT), (4, line, LEN)]);
        tag(&mut p, field::LOCATION, LEN, &l2);
        let f = msg(&[(1, v(1), VARINT), (2, v(3), VARINT), (4, v(4), VARINT)]);
        tag(&mut p, field::FUNCTION, LEN, &f);
        for s in ["", "cpu", "nanoseconds", "run", "x.go", "/bin/app"] {
            tag(&mut p, field::STRING_TABLE, LEN, s.as_bytes());
        }
        tag(&mut p, field::PERIOD_TYPE, LEN, &st);
        tag(&mut p, field::PERIOD, VARINT, &v(10_000_000));

        let read = read_bytes(&p).unwrap();
        assert_eq!(read.format, Format::Pprof);
        assert_eq!(read.profile.total_samples(), 4);
        assert!((read.seconds_per_sample().unwrap() - 0.01).abs() < 1e-12);
        let v = read.profile.functions(true, true, |_| true);
        let got: Vec<(&str, &str, Option<i32>, u64, u64)> = v
            .iter()
            .map(|f| (f.name.as_str(), f.filename.as_str(), f.line, f.own, f.total))
            .collect();
        assert_eq!(
            got,
            [
                ("0x4242", "/bin/app", None, 3, 3),
                ("run", "x.go", Some(7), 1, 4)
            ]
        );
    }

    #[test]
    fn refused_and_malformed_files() {
        let p = two_threads(ProfileOptions {
            keep_timeline: true,
            ..Default::default()
        });
        let err = |b: &[u8]| read_bytes(b).unwrap_err().to_string();
        let chrome = err(&written(Format::ChromeTrace, &p));
        assert!(chrome.contains("Chrome trace"), "{chrome}");
        let svg = err(&written(Format::Flamegraph, &p));
        assert!(svg.contains("SVG"), "{svg}");
        let raw = err(b"main;f 3\nmain;g three\n");
        assert!(raw.starts_with("malformed raw profile: line 2"), "{raw}");
        let text = err(b"\nimport time\n");
        assert!(
            text.starts_with("not a profile prof can read: text"),
            "{text}"
        );
        assert!(text.contains("line 2"), "{text}");
        let json = err(br#"{"shared":{"frames":[]},"profiles":[{"type":"sampled","samples":[[0]],"weights":[1]}]}"#);
        assert!(json.contains("frame 0, of 0"), "{json}");
        let binary = err(&[0x0a, 0xff, 0xff, 0x00, 0x80]);
        assert!(
            binary.starts_with("not a profile prof can read: binary data"),
            "{binary}"
        );
        // A truncated pprof fails; it does not read as a smaller profile.
        let pprof = written(Format::Pprof, &p);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&pprof[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert!(read_bytes(&unpacked).is_ok(), "uncompressed pprof is read");
        let cut = &unpacked[..unpacked.len() - 3];
        assert!(err(cut).contains("pprof"), "{}", err(cut));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, cut).unwrap();
        let cut_gz = err(&gz.finish().unwrap());
        assert!(
            cut_gz.starts_with("malformed pprof profile: field runs past"),
            "{cut_gz}"
        );
        assert!(
            read_file(Path::new("/nonexistent/prof.pb.gz"))
                .unwrap_err()
                .to_string()
                .contains("No such file")
        );
    }
}
