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
import platform
import sys
import threading

# One definition of the kernel thread id for every target script.
from truth import native_id  # noqa: F401  (re-exported for the rec_ scripts)

_QUALNAME = sys.version_info >= (3, 11)
# Keeps the spinner's executable page alive for the life of the process.
_keep = []


def code_name(code):
    """The name prof must show: co_qualname from 3.11, co_name before."""
    if _QUALNAME:
        return getattr(code, "co_qualname", code.co_name)
    return code.co_name


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


def thread_state(tid):
    """The scheduler state letter of one of this process's threads ('?' if gone)."""
    try:
        with open("/proc/self/task/%d/stat" % tid) as f:
            stat = f.read()
    except (IOError, OSError):
        return "?"
    return stat[stat.rfind(")") + 1 :].split()[0]


def spinner():
    """A C function that spins forever; ctypes releases the GIL around the call.

    It makes a thread that is on a CPU without holding the GIL, which no
    pure-Python loop can do deterministically.
    """
    import ctypes
    import mmap

    code = {"x86_64": b"\xeb\xfe", "aarch64": b"\x00\x00\x00\x14"}[platform.machine()]
    page = mmap.mmap(
        -1,
        mmap.PAGESIZE,
        flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
    )
    page.write(code)
    buf = ctypes.c_char.from_buffer(page)
    _keep.append((page, buf))
    return ctypes.CFUNCTYPE(None)(ctypes.addressof(buf))


def die(msg):
    """Fail loudly and at once, so a broken target never looks like a slow one."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    os._exit(70)
