//! `raw` (a.k.a. collapsed): folded stacks, the input format of flamegraph.pl and inferno.
//!
//! One line per distinct stack, `root;...;leaf count`, sorted. Frames read
//! `name (file:line)` like py-spy's (`name (file)` without a line), with the
//! thread's label as the root frame under `-t`.

use std::io::{BufWriter, Write};

use super::Result;
use crate::profile::Profile;

/// Write the folded stacks of `profile`.
pub fn write_raw(profile: &Profile, out: &mut dyn Write) -> Result<()> {
    let mut out = BufWriter::new(out);
    for (stack, count) in profile.folded() {
        writeln!(out, "{stack} {count}")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::*;
    use std::collections::BTreeMap;

    /// Parse folded lines back into stack → count, failing on any malformed line.
    fn parse(text: &str) -> BTreeMap<Vec<String>, u64> {
        let mut m = BTreeMap::new();
        for line in text.lines() {
            let (stack, count) = line.rsplit_once(' ').expect("no count");
            let frames: Vec<String> = stack.split(';').map(str::to_owned).collect();
            let count: u64 = count.parse().expect("count is a number");
            assert!(m.insert(frames, count).is_none(), "duplicate line {line}");
        }
        m
    }

    fn render(opts: ProfileOptions) -> String {
        let p = two_threads(opts);
        let mut buf = Vec::new();
        write_raw(&p, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn lines_and_counts() {
        let text = render(ProfileOptions::default());
        let m = parse(&text);
        let key = |s: &str| s.split(';').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(m.len(), 5, "{text}");
        assert_eq!(
            m[&key("main (main.py:1);work (main.py:10);compute (main.py:20)")],
            3
        );
        assert_eq!(
            m[&key("main (main.py:1);work (main.py:10);compute (main.py:21)")],
            1
        );
        assert_eq!(
            m[&key(
                "main (main.py:1);work (main.py:11);fib (main.py:30);fib (main.py:31);fib (main.py:31)"
            )],
            1
        );
        assert_eq!(m[&key("run (main.py:3);wait (main.py:5)")], 4);
        assert_eq!(m.values().sum::<u64>(), 10);
        let lines: Vec<&str> = text.lines().collect();
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        assert_eq!(lines, sorted, "output is sorted");
    }

    #[test]
    fn thread_roots_and_no_line_numbers() {
        let text = render(ProfileOptions {
            threads_as_root: true,
            no_line_numbers: true,
            ..Default::default()
        });
        let m = parse(&text);
        let key = |s: &str| s.split(';').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            m[&key("MainThread (tid 1001);main (main.py);work (main.py);compute (main.py)")],
            4
        );
        assert_eq!(m[&key("worker (tid 1002);run (main.py);wait (main.py)")], 4);
        assert!(m.keys().all(|k| k[0].ends_with(')') && k.len() >= 2));
    }

    #[test]
    fn empty_profile_is_empty_output() {
        let p = crate::profile::Profile::new(meta(), ProfileOptions::default());
        let mut buf = Vec::new();
        write_raw(&p, &mut buf).unwrap();
        assert!(buf.is_empty());
    }
}
