//! `pprof`: a gzipped `profile.proto` message, for `go tool pprof` and the tools
//! that read its format.
//!
//! The protobuf encoding is written by hand (a varint and length-delimited
//! encoder is all the format needs), so no code generator is involved:
//!
//! - `sample_type` = `[samples/count, wall/nanoseconds]`, `wall` being the default;
//!   a sample's wall value is its count times the mean sample interval (1/achieved
//!   rate, else 1/requested rate);
//! - one `Sample` per (stack, thread), location ids leaf first, with a `thread`
//!   string label;
//! - one `Mapping`, which every location is in: its file is the profiled program (the
//!   first word of the profile's title), and it says that functions, file names and
//!   lines are all there, so pprof neither looks for a binary to symbolize nor
//!   complains that the main binary's name is missing;
//! - one `Location` per frame of the frame table, with one `Line(function, line)`;
//!   the synthetic root frames (`-t` thread labels, `process N`) get their own
//!   functions and locations, placed last (outermost) in each sample;
//! - one `Function` per function: `name` = the function name, `system_name` =
//!   `file:name` (distinct, so pprof does not "demangle" `<module>` away),
//!   `filename` = the full file name (what `pprof -list` needs), `start_line` = the
//!   line the function starts at (`co_firstlineno`); where that is unknown (native
//!   code), the line `-F` shows (the lowest sampled line) under `-F`, else 0;
//! - `period_type` = wall/nanoseconds and `period` = 1/requested rate;
//!   `time_nanos` = the start, `duration_nanos` = the recording's length; the title
//!   and the run's rates, drops and errors as `comment`s.

use std::collections::HashMap;
use std::io::{BufWriter, Write};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::Result;
use crate::profile::Profile;

/// A protobuf message under construction, in wire format.
#[derive(Default)]
struct Message {
    buf: Vec<u8>,
}

/// Wire type of varint fields.
pub(crate) const VARINT: u8 = 0;
/// Wire type of length-delimited fields (strings, bytes, messages, packed arrays).
pub(crate) const LEN: u8 = 2;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Message {
    fn tag(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.buf, (u64::from(field) << 3) | u64::from(wire));
    }

    /// A uint64 field; zero is proto3's default and is left out.
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, VARINT);
            put_varint(&mut self.buf, v);
        }
    }

    /// An int64 field: negative values take ten bytes, as in protobuf.
    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    /// A length-delimited field, written even when empty (a repeated string may be "").
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, LEN);
        put_varint(&mut self.buf, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn message(&mut self, field: u32, m: &Message) {
        self.bytes(field, &m.buf);
    }

    /// A packed repeated varint field (proto3's encoding of repeated scalars).
    fn packed(&mut self, field: u32, values: impl IntoIterator<Item = u64>) {
        let mut inner = Vec::new();
        for v in values {
            put_varint(&mut inner, v);
        }
        if !inner.is_empty() {
            self.bytes(field, &inner);
        }
    }
}

/// The profile's string table: index 0 is "" as the format requires.
struct Strings {
    index: HashMap<String, i64>,
    table: Vec<String>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings {
            index: HashMap::new(),
            table: Vec::new(),
        };
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// profile.proto field numbers, shared by the writer and the reader ([`super::read`]).
pub(crate) mod field {
    pub const SAMPLE_TYPE: u32 = 1;
    pub const SAMPLE: u32 = 2;
    pub const MAPPING: u32 = 3;
    pub const LOCATION: u32 = 4;
    pub const FUNCTION: u32 = 5;
    pub const STRING_TABLE: u32 = 6;
    pub const TIME_NANOS: u32 = 9;
    pub const DURATION_NANOS: u32 = 10;
    pub const PERIOD_TYPE: u32 = 11;
    pub const PERIOD: u32 = 12;
    pub const COMMENT: u32 = 13;
    pub const DEFAULT_SAMPLE_TYPE: u32 = 14;

    /// `ValueType`.
    pub mod value_type {
        pub const TYPE: u32 = 1;
        pub const UNIT: u32 = 2;
    }
    /// `Sample`.
    pub mod sample {
        pub const LOCATION_ID: u32 = 1;
        pub const VALUE: u32 = 2;
        pub const LABEL: u32 = 3;
    }
    /// `Label`.
    pub mod label {
        pub const KEY: u32 = 1;
        pub const STR: u32 = 2;
    }
    /// `Mapping`.
    pub mod mapping {
        pub const ID: u32 = 1;
        pub const FILENAME: u32 = 5;
        pub const HAS_FUNCTIONS: u32 = 7;
        pub const HAS_FILENAMES: u32 = 8;
        pub const HAS_LINE_NUMBERS: u32 = 9;
    }
    /// `Location`.
    pub mod location {
        pub const ID: u32 = 1;
        pub const MAPPING_ID: u32 = 2;
        pub const ADDRESS: u32 = 3;
        pub const LINE: u32 = 4;
    }
    /// `Line`.
    pub mod line {
        pub const FUNCTION_ID: u32 = 1;
        pub const LINE: u32 = 2;
    }
    /// `Function`.
    pub mod function {
        pub const ID: u32 = 1;
        pub const NAME: u32 = 2;
        pub const SYSTEM_NAME: u32 = 3;
        pub const FILENAME: u32 = 4;
        pub const START_LINE: u32 = 5;
    }
}

/// The `system_name` prefix of the functions standing for synthetic root frames (thread
/// labels, `process N`): the reader leaves those frames out.
pub(crate) const ROOT_SYSTEM_PREFIX: &str = "prof:";

fn value_type(strings: &mut Strings, kind: &str, unit: &str) -> Message {
    let mut m = Message::default();
    m.int(field::value_type::TYPE, strings.get(kind));
    m.int(field::value_type::UNIT, strings.get(unit));
    m
}

/// Encode `profile` as an (uncompressed) profile.proto message.
fn encode(profile: &Profile) -> Vec<u8> {
    let mut strings = Strings::new();
    let mut p = Message::default();
    let meta = profile.meta();
    let functions = profile.function_table();
    let frames = profile.frame_table();

    p.message(
        field::SAMPLE_TYPE,
        &value_type(&mut strings, "samples", "count"),
    );
    p.message(
        field::SAMPLE_TYPE,
        &value_type(&mut strings, "wall", "nanoseconds"),
    );

    // Synthetic root frames, one function and location each, numbered after the real ones.
    let mut roots: HashMap<String, u64> = HashMap::new();
    let mut root_names: Vec<String> = Vec::new();
    let thread_roots: Vec<Vec<u64>> = (0..profile.threads().len())
        .map(|t| {
            profile
                .root_frames(t)
                .into_iter()
                .rev()
                .map(|label| {
                    *roots.entry(label.clone()).or_insert_with(|| {
                        root_names.push(label);
                        root_names.len() as u64
                    })
                })
                .collect()
        })
        .collect();
    let first_root_location = frames.len() as u64;
    let first_root_function = functions.len() as u64;

    let interval_ns = profile.sample_interval() * 1e9;
    let thread_key = strings.get("thread");
    let thread_labels: Vec<i64> = (0..profile.threads().len())
        .map(|t| strings.get(&profile.thread_title(t)))
        .collect();
    for (stack, thread, count) in profile.stack_counts() {
        let mut s = Message::default();
        let ids = profile
            .stack_frames(stack)
            .map(|f| f as u64 + 1)
            .chain(thread_roots[thread].iter().map(|r| first_root_location + r));
        s.packed(field::sample::LOCATION_ID, ids);
        s.packed(
            field::sample::VALUE,
            [count, (count as f64 * interval_ns).round() as u64],
        );
        let mut label = Message::default();
        label.int(field::label::KEY, thread_key);
        label.int(field::label::STR, thread_labels[thread]);
        s.message(field::sample::LABEL, &label);
        p.message(field::SAMPLE, &s);
    }

    // The program, as pprof's "main binary": already symbolized, nothing to load.
    const MAPPING_ID: u64 = 1;
    let program = meta.title.split_whitespace().next().unwrap_or("python");
    let mut mapping = Message::default();
    mapping.uint(field::mapping::ID, MAPPING_ID);
    mapping.int(field::mapping::FILENAME, strings.get(program));
    mapping.uint(field::mapping::HAS_FUNCTIONS, 1);
    mapping.uint(field::mapping::HAS_FILENAMES, 1);
    mapping.uint(field::mapping::HAS_LINE_NUMBERS, 1);
    p.message(field::MAPPING, &mapping);

    for (i, fr) in frames.iter().enumerate() {
        let mut line = Message::default();
        line.uint(field::line::FUNCTION_ID, fr.function as u64 + 1);
        line.int(
            field::line::LINE,
            i64::from(profile.frame_line(i).unwrap_or(0)),
        );
        let mut loc = Message::default();
        loc.uint(field::location::ID, i as u64 + 1);
        loc.uint(field::location::MAPPING_ID, MAPPING_ID);
        loc.message(field::location::LINE, &line);
        p.message(field::LOCATION, &loc);
    }
    for r in 1..=root_names.len() as u64 {
        let mut line = Message::default();
        line.uint(field::line::FUNCTION_ID, first_root_function + r);
        let mut loc = Message::default();
        loc.uint(field::location::ID, first_root_location + r);
        loc.uint(field::location::MAPPING_ID, MAPPING_ID);
        loc.message(field::location::LINE, &line);
        p.message(field::LOCATION, &loc);
    }

    let by_function = profile.options().by_function;
    for (i, f) in functions.iter().enumerate() {
        let mut m = Message::default();
        let name = strings.get(&f.name);
        // pprof demangles `name` when it equals `system_name`, which turns Python's
        // `<module>` and `<listcomp>` into `<unknown>`; a distinct system name avoids that.
        let system_name = strings.get(&format!("{}:{}", f.filename, f.name));
        m.uint(field::function::ID, i as u64 + 1);
        m.int(field::function::NAME, name);
        m.int(field::function::SYSTEM_NAME, system_name);
        m.int(field::function::FILENAME, strings.get(&f.filename));
        let start_line = match f.first_line {
            0 if by_function => f.lowest_line,
            line => line,
        };
        m.int(field::function::START_LINE, i64::from(start_line));
        p.message(field::FUNCTION, &m);
    }
    for (r, label) in root_names.iter().enumerate() {
        let mut m = Message::default();
        let name = strings.get(label);
        let system_name = strings.get(&format!("{ROOT_SYSTEM_PREFIX}{label}"));
        m.uint(field::function::ID, first_root_function + r as u64 + 1);
        m.int(field::function::NAME, name);
        m.int(field::function::SYSTEM_NAME, system_name);
        p.message(field::FUNCTION, &m);
    }

    let start_ns = meta
        .start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    p.int(field::TIME_NANOS, start_ns);
    p.int(
        field::DURATION_NANOS,
        (profile.duration() * 1e9).round() as i64,
    );
    let period_type = value_type(&mut strings, "wall", "nanoseconds");
    p.message(field::PERIOD_TYPE, &period_type);
    let period = if meta.requested_rate > 0.0 {
        (1e9 / meta.requested_rate).round() as i64
    } else {
        0
    };
    p.int(field::PERIOD, period);
    let comments = [
        meta.title.clone(),
        format!(
            "requested {} Hz, achieved {:.1} Hz",
            meta.requested_rate, meta.achieved_rate
        ),
        format!(
            "dropped ticks: {}, failed reads: {}",
            meta.dropped_ticks, meta.errors
        ),
    ];
    let comments: Vec<u64> = comments.iter().map(|c| strings.get(c) as u64).collect();
    p.packed(field::COMMENT, comments);
    let wall = strings.get("wall");
    p.int(field::DEFAULT_SAMPLE_TYPE, wall);

    // The string table goes last: every string above has been interned by now.
    for s in &strings.table {
        p.bytes(field::STRING_TABLE, s.as_bytes());
    }
    p.buf
}

/// Write `profile` as a gzipped pprof protobuf.
pub fn write_pprof(profile: &Profile, out: &mut dyn Write) -> Result<()> {
    let encoded = encode(profile);
    let mut gz = GzEncoder::new(BufWriter::new(out), Compression::default());
    gz.write_all(&encoded)?;
    gz.finish()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    use crate::output::read::{self, Value, Wire};

    /// The fields of a message, decoded by the reader's decoder.
    type Fields<'a> = Vec<(u32, Value<'a>)>;

    /// Every field of a message, in order; fails on wire types the writer never uses.
    fn fields(buf: &[u8]) -> Fields<'_> {
        let fs = Wire::fields(buf).unwrap();
        assert!(
            fs.iter().all(|(_, v)| !matches!(v, Value::Fixed)),
            "a fixed-width field: {fs:?}"
        );
        fs
    }

    /// A repeated scalar, packed or not.
    fn repeated(fs: &[(u32, Value)], num: u32) -> Vec<u64> {
        read::repeated(fs, num).unwrap()
    }

    fn scalar(fs: &[(u32, Value)], num: u32) -> u64 {
        read::scalar(fs, num)
    }

    fn messages<'a>(fs: &[(u32, Value<'a>)], num: u32) -> Vec<Fields<'a>> {
        read::messages(fs, num).unwrap()
    }

    /// What the tests check, read back from the bytes.
    struct Decoded {
        strings: Vec<String>,
        sample_types: Vec<(String, String)>,
        /// Folded stack (root first, function names) → (count, wall ns).
        stacks: BTreeMap<String, (u64, u64)>,
        function_names: Vec<String>,
        lines: BTreeMap<String, Vec<i64>>,
        thread_labels: Vec<String>,
        /// Function name → start_line.
        start_lines: BTreeMap<String, u64>,
        /// (id, file, has_functions, has_filenames, has_line_numbers) per mapping.
        mappings: Vec<(u64, String, u64, u64, u64)>,
        /// The mapping id of every location.
        location_mappings: Vec<u64>,
        period: u64,
        duration_nanos: u64,
        default_sample_type: String,
    }

    fn decode(gz: &[u8]) -> Decoded {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .expect("gzip");
        let p = fields(&raw);
        let strings: Vec<String> = p
            .iter()
            .filter(|(n, _)| *n == 6)
            .map(|(_, f)| match f {
                Value::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
                _ => panic!("string as varint"),
            })
            .collect();
        let s = |i: u64| strings[i as usize].clone();
        let sample_types = messages(&p, 1)
            .iter()
            .map(|vt| (s(scalar(vt, 1)), s(scalar(vt, 2))))
            .collect();
        let mut functions = BTreeMap::new();
        let mut function_names = Vec::new();
        let mut start_lines = BTreeMap::new();
        for f in messages(&p, 5) {
            let name = s(scalar(&f, 2));
            start_lines.insert(name.clone(), scalar(&f, 5));
            assert!(
                s(scalar(&f, 3)).ends_with(&format!(":{name}")),
                "system_name"
            );
            function_names.push(name.clone());
            assert!(
                functions.insert(scalar(&f, 1), name).is_none(),
                "ids are unique"
            );
        }
        let mappings = messages(&p, 3)
            .iter()
            .map(|m| {
                (
                    scalar(m, 1),
                    s(scalar(m, 5)),
                    scalar(m, 7),
                    scalar(m, 8),
                    scalar(m, 9),
                )
            })
            .collect();
        let mut locations = BTreeMap::new();
        let mut location_mappings = Vec::new();
        let mut lines: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for l in messages(&p, 4) {
            location_mappings.push(scalar(&l, 2));
            let line = &messages(&l, 4)[0];
            let name = functions[&scalar(line, 1)].clone();
            lines
                .entry(name.clone())
                .or_default()
                .push(scalar(line, 2) as i64);
            assert!(locations.insert(scalar(&l, 1), name).is_none());
        }
        let mut stacks = BTreeMap::new();
        let mut thread_labels = Vec::new();
        for sm in messages(&p, 2) {
            let mut names: Vec<String> = repeated(&sm, 1)
                .iter()
                .map(|id| locations[id].clone())
                .collect();
            names.reverse();
            let v = repeated(&sm, 2);
            assert_eq!(v.len(), 2, "one value per sample type");
            let e = stacks.entry(names.join(";")).or_insert((0, 0));
            e.0 += v[0];
            e.1 += v[1];
            for label in messages(&sm, 3) {
                assert_eq!(s(scalar(&label, 1)), "thread");
                thread_labels.push(s(scalar(&label, 2)));
            }
        }
        Decoded {
            sample_types,
            stacks,
            function_names,
            lines,
            thread_labels,
            start_lines,
            mappings,
            location_mappings,
            period: scalar(&p, 12),
            duration_nanos: scalar(&p, 10),
            default_sample_type: s(scalar(&p, 14)),
            strings,
        }
    }

    fn render(p: &Profile) -> Vec<u8> {
        let mut buf = Vec::new();
        write_pprof(p, &mut buf).unwrap();
        buf
    }

    #[test]
    fn varints() {
        let mut b = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            put_varint(&mut b, v);
        }
        assert_eq!(&b[..6], [0, 1, 127, 0x80, 1, 0xac]);
        let mut w = Wire::new(&b);
        let back: Vec<u64> = (0..6).map(|_| w.varint().unwrap()).collect();
        assert_eq!(back, [0, 1, 127, 128, 300, u64::MAX]);
        assert!(w.varint().is_err(), "every byte was read");
    }

    #[test]
    fn decodes_back() {
        let p = two_threads(ProfileOptions::default());
        let d = decode(&render(&p));
        assert_eq!(d.strings[0], "", "string 0 is empty");
        assert_eq!(
            d.sample_types,
            [
                ("samples".to_owned(), "count".to_owned()),
                ("wall".to_owned(), "nanoseconds".to_owned())
            ]
        );
        assert_eq!(d.default_sample_type, "wall");
        assert_eq!(d.period, 10_000_000);
        assert_eq!(d.duration_nanos, 60_000_000);
        let total: u64 = d.stacks.values().map(|v| v.0).sum();
        assert_eq!(total, p.total_samples());
        // compute at lines 20 and 21 are two locations of one function.
        assert_eq!(d.stacks["main;work;compute"], (4, 40_000_000));
        assert_eq!(d.stacks["main;work;fib;fib;fib"].0, 1);
        assert_eq!(d.stacks["run;wait"], (4, 40_000_000));
        let mut names = d.function_names.clone();
        names.sort();
        assert_eq!(names, ["compute", "fib", "main", "run", "wait", "work"]);
        let mut compute_lines = d.lines["compute"].clone();
        compute_lines.sort();
        assert_eq!(compute_lines, [20, 21]);
        assert!(d.thread_labels.contains(&"worker (tid 1002)".to_owned()));
        assert!(d.strings.contains(&"/app/src/main.py".to_owned()));
        assert!(d.strings.contains(&"python app.py <&>".to_owned()));
    }

    #[test]
    fn mapping_and_start_lines() {
        let mut p = crate::profile::Profile::new(meta(), ProfileOptions::default());
        let mut s = sample(0.0, 1, "m", &[("main", 9), ("work", 14)]);
        // The reader knows where each function starts; the fixture's frames do not.
        for (frame, first) in s.stack.frames.iter_mut().zip([12, 7]) {
            let code = &frame.code;
            frame.code = std::sync::Arc::new(crate::sample::FrameCode {
                name: code.name.clone(),
                filename: code.filename.clone(),
                short_filename: code.short_filename.clone(),
                first_line: first,
            });
        }
        p.add(&s);
        let d = decode(&render(&p));
        assert_eq!(d.start_lines["main"], 7);
        assert_eq!(d.start_lines["work"], 12);
        // One mapping, already symbolized, named after the program; every location in it.
        assert_eq!(d.mappings, [(1, "python".to_owned(), 1, 1, 1)]);
        assert!(!d.location_mappings.is_empty());
        assert!(d.location_mappings.iter().all(|&m| m == 1));

        // Without co_firstlineno (native code), -F still gives the lowest sampled line.
        let p = two_threads(ProfileOptions {
            by_function: true,
            ..Default::default()
        });
        let d = decode(&render(&p));
        assert_eq!(d.start_lines["compute"], 20);
        let p = two_threads(ProfileOptions::default());
        assert_eq!(decode(&render(&p)).start_lines["compute"], 0);
    }

    #[test]
    fn thread_roots_are_outermost() {
        let p = two_threads(ProfileOptions {
            threads_as_root: true,
            no_line_numbers: true,
            ..Default::default()
        });
        let d = decode(&render(&p));
        assert_eq!(d.stacks["worker (tid 1002);run;wait"].0, 4);
        assert_eq!(d.stacks["MainThread (tid 1001);main;work;compute"].0, 4);
        assert!(d.lines["work"].iter().all(|&l| l == 0), "--nolineno");
    }

    #[test]
    fn empty_profile_is_valid() {
        let p = crate::profile::Profile::new(meta(), ProfileOptions::default());
        let d = decode(&render(&p));
        assert!(d.stacks.is_empty());
        assert_eq!(d.sample_types.len(), 2);
    }

    /// `go tool pprof` reads the file and ranks the functions as expected.
    ///
    /// Skipped (with a notice) without `go`, unless PROF_REQUIRE_GO is set, as CI does.
    #[test]
    fn go_tool_pprof_reads_it() {
        let have_go = std::process::Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_go {
            assert!(
                std::env::var_os("PROF_REQUIRE_GO").is_none(),
                "PROF_REQUIRE_GO is set but `go` is not on PATH (apt-get install golang-go)"
            );
            eprintln!("SKIPPED go_tool_pprof_reads_it: `go` is not on PATH");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.pb.gz");
        let p = two_threads(ProfileOptions {
            threads_as_root: true,
            ..Default::default()
        });
        std::fs::write(&path, render(&p)).unwrap();
        let out = std::process::Command::new("go")
            .args(["tool", "pprof", "-top", "-sample_index=samples"])
            .arg(&path)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "go tool pprof failed: {stderr}");
        assert!(
            !stderr.contains("binary"),
            "pprof looked for a binary: {stderr}"
        );
        // The flat column ranks compute (4) and wait (4) first.
        let rows: Vec<(u64, String)> = stdout
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let flat = cols.first()?.parse().ok()?;
                Some((flat, cols[5..].join(" ")))
            })
            .collect();
        let flat = |name: &str| {
            rows.iter()
                .find(|r| r.1 == name)
                .unwrap_or_else(|| panic!("{name} not in pprof -top:\n{stdout}\n{stderr}"))
                .0
        };
        assert_eq!(flat("compute"), 4);
        assert_eq!(flat("wait"), 4);
        assert_eq!(flat("fib"), 1);
        assert_eq!(flat("work"), 1);
        assert!(stdout.contains("MainThread (tid 1001)"), "{stdout}");
    }
}
