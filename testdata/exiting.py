"""A target that vanishes while it is being dumped: many threads with deep
stacks, and once ready.json is written, os._exit(0) after a random delay
(so the exit lands at a random point of a dump: while threads are being
listed, frames read, or the process is stopped).

usage: exiting.py OUTDIR [MIN_MS MAX_MS [THREADS [DEPTH]]]
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import truth  # noqa: E402

KINDS = ("sleep", "lock", "busy", "socket", "select", "sleep", "busy_c")


def dive(n, kind):
    if n > 0:
        return dive(n - 1, kind)
    truth.park(truth.snapshot(), kind)


def main():
    outdir, args = truth.setup()
    lo = int(args[0]) if args else 0
    hi = int(args[1]) if len(args) > 1 else 500
    threads = int(args[2]) if len(args) > 2 else 24
    depth = int(args[3]) if len(args) > 3 else 150
    sys.setrecursionlimit(depth + 500)
    delay = random.uniform(lo, hi) / 1000.0

    def exit_later():
        time.sleep(delay)
        os._exit(0)

    for i in range(threads - 1):
        truth.start_thread("diver-%02d" % i, dive, depth + i, KINDS[i % len(KINDS)])
    truth.ready_when(outdir, threads, after=exit_later)
    dive(depth, "sleep")


if __name__ == "__main__":
    truth.run(main)
