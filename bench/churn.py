"""Soak target (bench/run.py measurement 9): for SECONDS, load a fresh copy of a small C
library (dlopen through ctypes), run in it for 50 ms from a newly created Python function
(a new code object each time, under one of 8 names), unload it and delete the copy; so the
process keeps mapping new modules and creating new code.

    python churn.py LIBCHURN_SO SECONDS
"""
import _ctypes
import ctypes
import os
import shutil
import sys
import tempfile
import time


def main():
    lib_src, seconds = sys.argv[1], float(sys.argv[2])
    tmp = tempfile.mkdtemp(prefix="prof-churn-")
    end = time.time() + seconds
    i = 0
    print("ready", flush=True)
    try:
        while time.time() < end:
            # A new file and mapping every time, under a few names: the profile itself
            # stays the same size, so what grows is the profiler's own state.
            path = os.path.join(tmp, "libchurn%d.so" % (i % 8))
            shutil.copy(lib_src, path)
            lib = ctypes.CDLL(path)
            lib.churn_spin.argtypes = [ctypes.c_double]
            lib.churn_spin.restype = ctypes.c_ulong
            ns = {}
            exec("def work_%d(lib):\n    return lib.churn_spin(0.05)\n" % (i % 8), ns)
            ns["work_%d" % (i % 8)](lib)
            handle = lib._handle
            del lib, ns
            _ctypes.dlclose(handle)
            os.unlink(path)
            i += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
