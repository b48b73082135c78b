"""Shared helpers of the `prof record` test targets (testdata/rec_*.py).

The targets describe themselves in OUTDIR/ready.json (function names, files and
line ranges, thread names and native ids) so that tests/record.rs compares
prof's output with what the interpreter itself reports, never with stored
answers.

Must stay valid on Python 3.7 through 3.15: no walrus, no positional-only
parameters, no f-string ``=``.
"""

import inspect
import json
import os
import sys
import threading

# One definition of these for every target script (truth.py serves the dump targets).
from truth import _spinner as spinner  # noqa: F401  (re-exported for the rec_ scripts)
from truth import code_name, native_id  # noqa: F401

def func_info(fn):
    """Name, file, def line and last source line of a plain function."""
    code = fn.__code__
    lines, start = inspect.getsourcelines(fn)
    return {
        "name": code_name(code),
        "file": code.co_filename,
        "first": code.co_firstlineno,
        "last": start + len(lines) - 1,
    }


def describe_functions(*fns):
    """{__name__: func_info} for each function.

    A plain loop, not a comprehension: a comprehension is a code object of its own
    before 3.12, and would show up in the profile under the caller's file name.
    """
    out = {}
    for fn in fns:
        out[fn.__name__] = func_info(fn)
    return out


def describe_threads(pairs):
    """[{name, native_id}] from (name, native id) pairs (a loop, as above)."""
    out = []
    for name, tid in pairs:
        out.append({"name": name, "native_id": tid})
    return out


def gil_enabled():
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)())


def write_json(outdir, name, data):
    """Atomically: the test polls for the file and must never read half of it."""
    tmp = os.path.join(outdir, name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(outdir, name))


def write_ready(outdir, tids, *fns):
    """OUTDIR/ready.json of a threaded target: its threads ({name: native id}) and the
    functions the test looks for."""
    write_json(
        outdir,
        "ready.json",
        {
            "pid": os.getpid(),
            "version": list(sys.version_info[:3]),
            "gil": gil_enabled(),
            "threads": describe_threads(sorted(tids.items())),
            "functions": describe_functions(*fns),
        },
    )


def thread_state(tid):
    """The scheduler state letter of one of this process's threads ('?' if gone)."""
    try:
        with open("/proc/self/task/%d/stat" % tid) as f:
            stat = f.read()
    except (IOError, OSError):
        return "?"
    return stat[stat.rfind(")") + 1 :].split()[0]


def die(msg):
    """Fail loudly and at once, so a broken target never looks like a slow one."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    os._exit(70)
