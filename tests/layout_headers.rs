//! prof's 3.13+ layouts, free-threaded ones above all, checked against CPython's own headers.
//!
//! No free-threaded interpreter can be had on these machines, but Debian's dev packages carry
//! the internal headers with `_Py_DebugOffsets_INIT`. `testdata/layout_headers.c`, built with
//! `Py_BUILD_CORE` (and `Py_GIL_DISABLED` for the free-threaded build), prints the table as
//! the interpreter would embed it, where each field prof decodes sits in it, and the offsets
//! and sizes the reader uses. The table is fed to `Layout::from_debug_offsets`, and every
//! field of the resulting layout must equal what the headers say, for 3.13, 3.14 and 3.15,
//! with and without the GIL.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use prof::python::layout::{
    DictKeysFormat, FrameRoot, GilSource, InstrSource, Layout, ManagedDict, spec_for,
};

const HEADERS: &str = "/opt/prof-pythons/debian-sid/include";

/// What the C program printed for one build.
struct FromHeaders {
    table: Vec<u8>,
    /// `section.field` → offset in `_Py_DebugOffsets`, in the order printed (prof's order).
    fields: Vec<(String, u64)>,
    reader: BTreeMap<String, u64>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Build and run the C program for 3.`minor` against `include`.
fn from_headers(include: &Path, minor: u8, free_threaded: bool, dir: &Path) -> FromHeaders {
    let tag = format!("3.{minor}{}", if free_threaded { "t" } else { "" });
    let build = dir.join(&tag);
    std::fs::create_dir_all(&build).unwrap();
    let mut fields_h = String::new();
    for (section, names) in spec_for(minor).unwrap() {
        for name in names.iter() {
            fields_h.push_str(&format!("F({section}, {name})\n"));
        }
    }
    std::fs::write(build.join("fields.h"), fields_h).unwrap();
    let bin = build.join("layout_headers");
    let inc_build = format!("-I{}", build.display());
    let inc_py = format!("-I{}", include.display());
    let mut args = vec![
        // 3.13's initializer names allocator functions that are not linked; the program only
        // reads the table, so their addresses may stay unresolved.
        "-no-pie",
        "-Wl,--unresolved-symbols=ignore-all",
        "-DPy_BUILD_CORE",
        &inc_build,
        &inc_py,
    ];
    if free_threaded {
        args.push("-DPy_GIL_DISABLED");
    }
    common::gcc(&args, &common::testdata().join("layout_headers.c"), &bin);
    let out = Command::new(&bin).output().unwrap();
    assert!(out.status.success(), "{tag}: the header program failed");
    let mut got = FromHeaders {
        table: Vec::new(),
        fields: Vec::new(),
        reader: BTreeMap::new(),
    };
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts[..] {
            ["table", hex] => got.table = unhex(hex),
            ["field", key, off] => got.fields.push((key.to_string(), off.parse().unwrap())),
            ["reader", key, v] => {
                got.reader.insert(key.to_string(), v.parse().unwrap());
            }
            _ => panic!("{tag}: unexpected line {line:?}"),
        }
    }
    got
}

/// The layout's values under the names the C program prints them with.
fn reader_values(l: &Layout) -> BTreeMap<String, u64> {
    let mut v: Vec<(&str, u64)> = vec![
        ("free_threaded", l.free_threaded as u64),
        ("rt_interp_head", l.rt_interp_head),
        ("is_next", l.is_next),
        ("is_id", l.is_id),
        ("is_threads_head", l.is_threads_head),
        ("is_modules", l.is_modules),
        ("ts_next", l.ts_next),
        ("ts_interp", l.ts_interp),
        ("ts_thread_id", l.ts_thread_id),
        ("f_size", l.f_size),
        ("f_back", l.f_back),
        ("f_code", l.f_code),
        ("f_code_tag_mask", l.f_code_tag_mask),
        ("f_localsplus", l.f_localsplus),
        ("co_firstlineno", l.co_firstlineno),
        ("co_argcount", l.co_argcount),
        ("co_filename", l.co_filename),
        ("co_name", l.co_name),
        ("co_linetable", l.co_linetable),
        ("co_varnames", l.co_varnames),
        ("ob_type", l.ob_type),
        ("tp_name", l.tp_name),
        ("tp_flags", l.tp_flags),
        ("tp_dictoffset", l.tp_dictoffset),
        ("ht_cached_keys", l.ht_cached_keys),
        ("str_length", l.str_length),
        ("str_state", l.str_state),
        ("str_kind_shift", l.str_kind_shift as u64),
        // The reader takes `compact` and `ascii` as the two bits right after `kind:3`.
        ("str_compact_after_kind", 3),
        ("str_ascii_after_kind", 4),
        ("str_ascii_data", l.str_ascii_data),
        ("str_compact_data", l.str_compact_data),
        ("var_size", l.var_size),
        ("bytes_sval", l.bytes_sval),
        ("tuple_item", l.tuple_item),
        ("long_size", l.long_size),
        ("long_digits", l.long_digits),
        ("float_val", l.float_val),
        ("dict_keys", l.dict_keys),
        ("dict_values", l.dict_values),
        ("module_dict", l.module_dict),
        ("object_size", l.object_size),
        ("tp_basicsize", l.tp_basicsize),
        ("dict_values_header", l.dict_values_header),
    ];
    let opt = |o: Option<u64>| o.unwrap_or(u64::MAX);
    v.extend([
        ("ts_native_thread_id", opt(l.ts_native_thread_id)),
        ("ts_datastack_chunk", opt(l.ts_datastack_chunk)),
        ("ts_datastack_top", opt(l.ts_datastack_chunk) + 8),
        ("f_owner", opt(l.f_owner)),
        (
            "owner_not_python",
            l.owner_not_python.map_or(u64::MAX, u64::from),
        ),
        ("co_qualname", opt(l.co_qualname)),
        ("co_localspluskinds", opt(l.co_localspluskinds)),
        ("co_code_adaptive", opt(l.co_code_adaptive)),
    ]);
    if let Some(t) = l.f_tlbc_index {
        v.push(("f_tlbc_index", t));
    }
    if let Some(t) = l.co_tlbc {
        v.push(("co_tlbc", t));
    }
    if let DictKeysFormat::Log2 {
        log2_index_bytes,
        kind,
        nentries,
        indices,
    } = l.dict_keys_format
    {
        v.push(("dict_keys_log2_index_bytes", log2_index_bytes));
        v.push(("dict_keys_kind", kind));
        v.push(("dict_keys_nentries", nentries));
        v.push(("dict_keys_indices", indices));
    }
    if let Some(o) = l.inline_values_valid {
        v.push(("inline_values_valid", o));
    }
    if let ManagedDict::Dict(o) = l.managed_dict {
        v.push(("managed_dict", o as u64));
    }
    if let FrameRoot::Direct(o) = l.frame_root {
        v.push(("frame_root", o));
    }
    if let InstrSource::Pointer(o) = l.f_instr {
        v.push(("f_instr", o));
    }
    if let GilSource::InterpGil {
        ceval_gil,
        locked,
        last_holder,
    } = l.gil
    {
        v.push(("gil_ceval_gil", ceval_gil));
        v.push(("gil_locked", locked));
        v.push(("gil_last_holder", last_holder));
    }
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Every mismatch between prof's view of one build and its headers.
fn problems(minor: u8, free_threaded: bool, h: &FromHeaders) -> Vec<String> {
    let mut bad = Vec::new();
    // prof's table description: each field where the header puts it, nothing left out.
    for (i, (key, off)) in h.fields.iter().enumerate() {
        let expect = 24 + 8 * i as u64;
        if *off != expect {
            bad.push(format!(
                "table field {key} is at {off} in the header, prof reads it at {expect}"
            ));
        }
    }
    let described = 24 + 8 * h.fields.len();
    if h.table.len() != described {
        bad.push(format!(
            "the header's table has {} bytes, prof describes {described}",
            h.table.len()
        ));
    }
    let l = match Layout::from_debug_offsets(&h.table) {
        Ok(l) => l,
        Err(e) => {
            bad.push(format!("the header's table is refused: {e}"));
            return bad;
        }
    };
    if l.version.minor != minor || l.free_threaded != free_threaded {
        bad.push(format!(
            "decoded version {} free_threaded {}",
            l.version, l.free_threaded
        ));
    }
    let ours = reader_values(&l);
    for (key, want) in &h.reader {
        if key == "ts_struct_size" {
            continue;
        }
        match ours.get(key) {
            Some(got) if got == want => {}
            Some(got) => bad.push(format!("{key}: prof uses {got}, the headers say {want}")),
            None => bad.push(format!("{key}: the headers give {want}, prof has no value")),
        }
    }
    for key in ours.keys() {
        if !h.reader.contains_key(key) {
            bad.push(format!(
                "{key}: prof has a value the headers were not asked for"
            ));
        }
    }
    // The reader copies this much of a thread state in one read: all of it must be there.
    let ts_struct = h.reader["ts_struct_size"];
    if l.ts_size < ts_struct.min(4096) {
        bad.push(format!(
            "ts_size {} is less than sizeof(PyThreadState) {ts_struct}",
            l.ts_size
        ));
    }
    bad
}

#[test]
fn layouts_match_cpython_headers() {
    let builds: Vec<(u8, PathBuf)> = [13u8, 14, 15]
        .into_iter()
        .map(|m| (m, Path::new(HEADERS).join(format!("python3.{m}"))))
        .filter(|(m, p)| {
            let ok = p.join("internal/pycore_runtime.h").exists();
            if !ok {
                eprintln!(
                    "skipped: 3.{m}: no internal headers at {} (run shared/tools/get-debian-pythons)",
                    p.display()
                );
            }
            ok
        })
        .collect();
    if builds.is_empty() {
        return;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("skipped: gcc not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let results: Vec<(String, Vec<String>)> = thread::scope(|s| {
        let handles: Vec<_> = builds
            .iter()
            .flat_map(|(m, inc)| [(*m, inc, true), (*m, inc, false)])
            .map(|(minor, inc, ft)| {
                let dir = dir.path();
                s.spawn(move || {
                    let tag = format!("3.{minor}{}", if ft { "t" } else { "" });
                    let h = from_headers(inc, minor, ft, dir);
                    (tag, problems(minor, ft, &h))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failed = Vec::new();
    for (tag, bad) in &results {
        if bad.is_empty() {
            eprintln!("ok: {tag}");
        } else {
            for b in bad {
                eprintln!("{tag}: {b}");
            }
            failed.push(format!("{tag}: {}", bad[0]));
        }
    }
    assert!(
        failed.is_empty(),
        "layouts differ from CPython's headers:\n  {}",
        failed.join("\n  ")
    );
}
