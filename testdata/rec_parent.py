"""`prof record -s` target: a parent with Python and non-Python children.

usage: rec_parent.py OUTDIR SECONDS
       rec_parent.py OUTDIR SECONDS popen-child     (how the parent runs its child)

The parent starts, all at once:
  - a Python child through subprocess.Popen, burning CPU in popen_child_work;
  - a Python child through multiprocessing (fork context: no exec, the child
    is a copy of the parent), burning CPU in mp_child_work;
  - `sleep`, which is not Python;
writes OUTDIR/pids.json, and waits for them in parent_wait (idle, so prof
leaves the parent itself out of the profile). It exits 0 only if every
child did.
"""

import multiprocessing
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402


def burn(seconds):
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return n


def popen_child_work(seconds):
    return burn(seconds)


def mp_child_work(seconds):
    burn(seconds)


def parent_wait(children, mp_child):
    codes = [c.wait() for c in children]
    mp_child.join()
    return codes + [mp_child.exitcode]


def main():
    outdir, seconds = sys.argv[1], float(sys.argv[2])
    if len(sys.argv) > 3 and sys.argv[3] == "popen-child":
        popen_child_work(seconds)
        return
    popen = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), outdir, str(seconds), "popen-child"]
    )
    ctx = multiprocessing.get_context("fork")
    mp_child = ctx.Process(target=mp_child_work, args=(seconds,), name="rec-mp-child")
    mp_child.start()
    sleeper = subprocess.Popen(["sleep", str(seconds)])
    rec_common.write_json(
        outdir,
        "pids.json",
        {
            "parent": os.getpid(),
            "popen": popen.pid,
            "mp": mp_child.pid,
            "sleep": sleeper.pid,
            "functions": rec_common.describe_functions(
                popen_child_work, mp_child_work, parent_wait
            ),
        },
    )
    codes = parent_wait([popen, sleeper], mp_child)
    if any(c != 0 for c in codes):
        rec_common.die("a child failed: %r" % (codes,))


if __name__ == "__main__":
    main()
