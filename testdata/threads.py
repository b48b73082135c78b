"""Fifty threads: the main thread and 49 workers parked in every idle kind
(sleep, lock, socket recv, select), plus one thread spinning in Python
(holding the GIL) and one spinning in C with the GIL released.  Thread
names are set explicitly and many are non-ASCII, covering Python's 1-, 2-
and 4-byte string layouts.  Workers reach their park through 0-3 extra
frames so that neighbouring stacks differ.

usage: threads.py OUTDIR
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import truth  # noqa: E402

WORKERS = 49
IDLE = ("sleep", "lock", "socket", "select")
NAME_STYLES = (
    "worker-{kind}-{i:02d}",
    "Ünïcødé-{kind}-{i:02d}",
    "线程-{kind}-{i:02d}",
    "поток {kind} {i:02d}",
    "🧵 {kind} #{i:02d}",
    "𠀀-{kind}-{i:02d}",
    "x" * 40 + "-{kind}-{i:02d}",
)


def layer(depth, kind):
    if depth > 0:
        return layer(depth - 1, kind)
    truth.park(truth.snapshot(), kind)


def worker(depth, kind):
    layer(depth, kind)


def main():
    outdir, _ = truth.setup()
    for i in range(WORKERS - 2):
        kind = IDLE[i % len(IDLE)]
        name = NAME_STYLES[i % len(NAME_STYLES)].format(kind=kind, i=i)
        truth.start_thread(name, worker, i % 4, kind)
    truth.start_thread("busy-python", worker, 2, "busy")
    truth.start_thread("busy-c ✓", worker, 1, "busy_c")
    truth.ready_when(outdir, WORKERS + 1)
    truth.park(truth.snapshot(), "lock")


if __name__ == "__main__":
    truth.run(main)
