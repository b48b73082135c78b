"""`prof record` target: code objects freed and their memory reused.

usage: rec_codereuse.py OUTDIR [COUNT [SLICE_MS]]

Phase 1 (run_phase1) compiles COUNT small functions stale_fn_N (file
`<phase1>`) and burns SLICE_MS in each, so a sampler sees them all; then it
drops every reference and collects, freeing their code objects. Phase 2
(run_phase2) compiles COUNT functions fresh_fn_N (file `<phase2>`) from the
same template, so their code objects are the same size and the allocator
hands them the freed addresses, and burns SLICE_MS in each. A profiler that
remembers code objects by address alone shows phase-1 names under
run_phase2. Writes OUTDIR/phases.json at the end.
"""

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

TEMPLATE = """
def {name}(until, clock):
    n = 0
    while clock() < until:
        n += 1
    return n
"""


def make(prefix, count, filename):
    src = "".join(TEMPLATE.format(name="%s_%03d" % (prefix, i)) for i in range(count))
    ns = {}
    exec(compile(src, filename, "exec"), ns)
    return [ns["%s_%03d" % (prefix, i)] for i in range(count)]


def burn_each(fns, slice_s):
    for fn in fns:
        fn(time.perf_counter() + slice_s, time.perf_counter)


def run_phase1(count, slice_s):
    fns = make("stale_fn", count, "<phase1>")
    burn_each(fns, slice_s)
    ids = [id(f.__code__) for f in fns]
    del fns
    gc.collect()
    return ids


def run_phase2(count, slice_s):
    fns = make("fresh_fn", count, "<phase2>")
    ids = [id(f.__code__) for f in fns]
    burn_each(fns, slice_s)
    return ids


def main():
    outdir = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    slice_s = (float(sys.argv[3]) if len(sys.argv) > 3 else 25.0) / 1000.0
    # Let the sampler attach before phase 1.
    time.sleep(0.5)
    stale = run_phase1(count, slice_s)
    fresh = run_phase2(count, slice_s)
    rec_common.write_json(
        outdir,
        "phases.json",
        {"reused_addresses": len(set(stale) & set(fresh)), "count": count},
    )


if __name__ == "__main__":
    main()
