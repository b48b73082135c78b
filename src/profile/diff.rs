//! Comparing two profiles: per-function own shares, their change in percentage points,
//! and whether the change is more than sampling noise.
//!
//! Each profile is normalised to shares of its own samples, so profiles of different
//! durations or rates compare. The significance test is the two-proportion z-test with a
//! pooled proportion, two-sided, at [`ALPHA`] with a Bonferroni correction over the
//! functions compared: one test per function, so the chance that any unchanged function is
//! flagged stays below [`ALPHA`] however many functions there are.

use std::collections::HashMap;

use super::Profile;

/// Family-wise significance level of [`compare`].
pub const ALPHA: f64 = 0.01;

/// One function's own share in both profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDiff {
    /// Function name.
    pub name: String,
    /// File name as the profiles hold it ("" when none).
    pub file: String,
    /// Samples where it was the innermost frame, in the base profile.
    pub base_samples: u64,
    /// The same in the head profile.
    pub head_samples: u64,
    /// Own share of the base profile's samples, as a fraction.
    pub base_own: f64,
    /// Own share of the head profile's samples, as a fraction.
    pub head_own: f64,
    /// `head_own - base_own` in percentage points.
    pub delta_pp: f64,
    /// Two-sided p-value of the two-proportion z-test (uncorrected).
    pub p_value: f64,
    /// `p_value` below [`ALPHA`] divided by the number of functions compared.
    pub significant: bool,
}

/// Two profiles compared function by function.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// Samples of the base profile.
    pub base_samples: u64,
    /// Samples of the head profile.
    pub head_samples: u64,
    /// Every function with own samples in either profile, largest change (either way)
    /// first.
    pub functions: Vec<FunctionDiff>,
}

/// Own samples per (name, file) over every thread: functions are matched by name and file
/// across profiles, since ids are private to each.
fn own_by_function(p: &Profile) -> HashMap<(String, String), u64> {
    let mut own = HashMap::new();
    for f in p.functions(false, true, |_| true) {
        if f.own > 0 {
            *own.entry((f.name, f.filename)).or_insert(0) += f.own;
        }
    }
    own
}

/// Whether two file names may be one file written by different formats or versions: equal,
/// or one is the other's trailing path components (a short name against a full path).
fn same_file(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long == short
        || (!short.is_empty()
            && long
                .strip_suffix(short)
                .is_some_and(|rest| rest.ends_with('/')))
}

/// The file names of `base` and `head` that name one file differently (a short name in
/// one, the full path in the other, as formats keep them): each such name mapped to the
/// longer one. A name pairs only with a name the other profile alone has, and only when
/// that pairing is unique.
pub fn shared_file_names(base: &Profile, head: &Profile) -> HashMap<String, String> {
    let files = |p: &Profile| -> Vec<String> {
        let mut v: Vec<String> = (0..p.function_table().len())
            .map(|f| p.display_filename(f).to_owned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (b, h) = (files(base), files(head));
    let only_b: Vec<&String> = b.iter().filter(|f| h.binary_search(f).is_err()).collect();
    let only_h: Vec<&String> = h.iter().filter(|f| b.binary_search(f).is_err()).collect();
    let mut map = HashMap::new();
    for x in &only_b {
        let matches: Vec<&&String> = only_h.iter().filter(|y| same_file(x, y)).collect();
        let [y] = matches[..] else { continue };
        // And x is the only match of y.
        if only_b.iter().filter(|x2| same_file(x2, y)).count() != 1 {
            continue;
        }
        let longer = if y.len() > x.len() { *y } else { *x };
        map.insert((*x).clone(), longer.clone());
        map.insert((*y).clone(), longer.clone());
    }
    map
}

/// Compare `head` against `base`.
///
/// Functions are matched by name and file, file names through [`shared_file_names`];
/// rows take the longer file name.
pub fn compare(base: &Profile, head: &Profile) -> Diff {
    let base_samples = base.total_samples();
    let head_samples = head.total_samples();
    let files = shared_file_names(base, head);
    let own = |p: &Profile| -> HashMap<(String, String), u64> {
        let mut m = HashMap::new();
        for ((name, file), n) in own_by_function(p) {
            let file = files.get(&file).cloned().unwrap_or(file);
            *m.entry((name, file)).or_insert(0) += n;
        }
        m
    };
    let b = own(base);
    let mut h = own(head);
    // (name, file, base own, head own)
    let mut pairs: Vec<(String, String, u64, u64)> = b
        .into_iter()
        .map(|(key, x1)| {
            let x2 = h.remove(&key).unwrap_or(0);
            (key.0, key.1, x1, x2)
        })
        .collect();
    pairs.extend(h.into_iter().map(|((name, file), x2)| (name, file, 0, x2)));
    let tests = pairs.len().max(1) as f64;
    let share = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let mut functions: Vec<FunctionDiff> = pairs
        .into_iter()
        .map(|(name, file, x1, x2)| {
            let (base_own, head_own) = (share(x1, base_samples), share(x2, head_samples));
            let p_value = two_proportion_p(x1, base_samples, x2, head_samples);
            FunctionDiff {
                name,
                file,
                base_samples: x1,
                head_samples: x2,
                base_own,
                head_own,
                delta_pp: 100.0 * (head_own - base_own),
                p_value,
                significant: p_value < ALPHA / tests,
            }
        })
        .collect();
    functions.sort_by(|a, b| {
        b.delta_pp
            .abs()
            .total_cmp(&a.delta_pp.abs())
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.file.cmp(&b.file))
    });
    Diff {
        base_samples,
        head_samples,
        functions,
    }
}

impl Diff {
    /// Functions whose own share grew by more than `pp` points, significantly: what
    /// `--fail-over` fails on.
    pub fn regressions(&self, pp: f64) -> impl Iterator<Item = &FunctionDiff> {
        self.functions
            .iter()
            .filter(move |f| f.significant && f.delta_pp > pp)
    }
}

/// Two-sided p-value that `x1` of `n1` and `x2` of `n2` come from one proportion (pooled
/// two-proportion z-test). 1 when there is nothing to tell apart (an empty side, or a
/// pooled share of 0 or 1).
pub fn two_proportion_p(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se <= 0.0 || !se.is_finite() {
        return 1.0;
    }
    let z = (x2 as f64 / n2f - x1 as f64 / n1f) / se;
    // P(|Z| > |z|) = erfc(|z| / sqrt 2).
    erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

/// Standard normal cumulative distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function, relative error below 1.2e-7 everywhere: the Chebyshev
/// fit of erfc(x)·exp(x²) on t = 1/(1 + x/2) (Numerical Recipes' `erfcc`), which keeps
/// tiny tail probabilities accurate instead of rounding them to 0 through `1 - erf`.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * libm::exp(poly);
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::{frame, meta, sample};

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn erfc_and_normal_cdf_match_tables() {
        // Reference values: erfc from Abramowitz & Stegun table 7.1 / high-precision
        // evaluation; Φ from standard normal tables.
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_034_8e-12),
            (-1.0, 1.842_700_792_949_715),
        ] {
            assert!(
                close(erfc(x), want, 2e-7),
                "erfc({x}) = {} not {want}",
                erfc(x)
            );
        }
        for (z, want) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746_068_542_9),
            (1.959_963_984_540_054, 0.975),
            (-1.959_963_984_540_054, 0.025),
            (-3.0, 0.001_349_898_031_630_094_6),
        ] {
            assert!(
                close(normal_cdf(z), want, 2e-7),
                "Φ({z}) = {}",
                normal_cdf(z)
            );
        }
    }

    #[test]
    fn two_proportion_test() {
        // 50/100 against 65/100: pooled 0.575, se 0.06991, z 2.1456, p 0.0319.
        let p = two_proportion_p(50, 100, 65, 100);
        assert!(close(p, 0.031_90, 1e-3), "{p}");
        // Symmetric in direction.
        assert_eq!(p, two_proportion_p(65, 100, 50, 100));
        // The same share is no evidence at all; neither is an empty profile.
        assert!(close(two_proportion_p(30, 100, 300, 1000), 1.0, 1e-9));
        assert_eq!(two_proportion_p(0, 0, 5, 10), 1.0);
        assert_eq!(two_proportion_p(0, 10, 0, 10), 1.0);
        // More samples make the same change significant.
        assert!(two_proportion_p(500, 1000, 650, 1000) < 1e-10);
    }

    /// A profile of `n` samples per function name, each the only frame under `main`.
    fn profile(counts: &[(&str, u64)]) -> Profile {
        let mut p = Profile::new(meta(), ProfileOptions::default());
        for &(name, n) in counts {
            let s = sample(0.0, 1, "MainThread", &[("main", 1), (name, 1)]);
            p.add_repeated(&s, n);
        }
        p
    }

    #[test]
    fn compare_normalises_and_flags_only_real_growth() {
        // head ran twice as long; `grows` doubled its work, the others did the same work.
        let base = profile(&[("grows", 300), ("a", 300), ("b", 300)]);
        let head = profile(&[("grows", 1200), ("a", 600), ("b", 600)]);
        let d = compare(&base, &head);
        assert_eq!((d.base_samples, d.head_samples), (900, 2400));
        let names: Vec<&str> = d.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names[0], "grows", "largest change first");
        let g = &d.functions[0];
        assert!(close(g.delta_pp, 100.0 * (0.5 - 1.0 / 3.0), 1e-9), "{g:?}");
        assert!(g.significant && g.p_value < 1e-10, "{g:?}");
        for f in &d.functions[1..] {
            assert!(f.delta_pp < 0.0, "shares are normalised: {f:?}");
        }
        assert_eq!(d.regressions(10.0).count(), 1);
        assert_eq!(d.regressions(20.0).count(), 0, "16.7 points is not over 20");
        // Functions only in one profile are compared against 0.
        let d = compare(&profile(&[("a", 10)]), &profile(&[("b", 10)]));
        assert_eq!(d.functions.len(), 2);
        assert!(d.functions.iter().all(|f| f.delta_pp.abs() == 100.0));
    }

    /// main -> a, both in `file`.
    fn in_file(file: &str) -> crate::sample::Sample {
        let mut s = sample(0.0, 1, "MainThread", &[]);
        s.stack.frames = vec![frame("a", file, 1), frame("main", file, 1)].into();
        s
    }

    #[test]
    fn short_file_names_match_paths() {
        assert!(same_file("/app/src/main.py", "main.py"));
        assert!(same_file("src/main.py", "/app/src/main.py"));
        assert!(same_file("x.py", "x.py"));
        assert!(
            !same_file("/app/domain.py", "main.py"),
            "whole components only"
        );
        assert!(!same_file("/app/main.py", ""));
        // As read back from a pprof file (full names) and a speedscope file (short ones).
        let full = ProfileOptions {
            full_filenames: true,
            ..Default::default()
        };
        let mut base = Profile::new(meta(), full);
        base.add_repeated(&in_file("/app/src/main.py"), 10);
        let mut head = Profile::new(meta(), full);
        head.add_repeated(&in_file("main.py"), 10);
        let d = compare(&base, &head);
        assert_eq!(d.functions.len(), 1, "{d:?}");
        assert_eq!(d.functions[0].file, "/app/src/main.py");
        assert_eq!(d.functions[0].delta_pp, 0.0);
        // Two candidates: no guess.
        base.add_repeated(&in_file("/other/main.py"), 10);
        head.add_repeated(&in_file("/other/main.py"), 10);
        // "/other/main.py" matches exactly; "main.py" and "/app/src/main.py" then pair.
        assert_eq!(compare(&base, &head).functions.len(), 2);
    }

    #[test]
    fn small_changes_and_small_profiles_are_not_significant() {
        // 2 points on 1000 samples each is noise.
        let d = compare(
            &profile(&[("x", 500), ("y", 500)]),
            &profile(&[("x", 520), ("y", 480)]),
        );
        assert!(d.functions.iter().all(|f| !f.significant), "{d:?}");
        assert_eq!(d.regressions(0.0).count(), 0);
        // 30 points on 10 samples each is noise too.
        let d = compare(
            &profile(&[("x", 5), ("y", 5)]),
            &profile(&[("x", 8), ("y", 2)]),
        );
        assert!(d.functions.iter().all(|f| !f.significant), "{d:?}");
    }
}
