"""Deep stacks: the main thread parks ~1000 frames down (sleeping) and a
worker spins ~600 frames down, through three mutually recursive functions
so that neighbouring frames differ in name and line.

usage: recursion.py OUTDIR [MAIN_DEPTH [WORKER_DEPTH]]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import truth  # noqa: E402


def rec_a(n, kind):
    if n <= 0:
        truth.park(truth.snapshot(), kind)
    return rec_b(n - 1, kind)


def rec_b(n, kind):
    if n <= 0:
        truth.park(truth.snapshot(), kind)
    else:
        return rec_c(n - 1, kind)


def rec_c(n, kind):
    depth_left = n
    if depth_left <= 0:
        truth.park(truth.snapshot(), kind)
    return rec_a(depth_left - 1, kind)


def main():
    outdir, args = truth.setup()
    main_depth = int(args[0]) if args else 1000
    worker_depth = int(args[1]) if len(args) > 1 else 600
    sys.setrecursionlimit(max(main_depth, worker_depth) + 1000)
    truth.start_thread("deep-spinner", rec_a, worker_depth, "busy")
    truth.ready_when(outdir, 2)
    rec_a(main_depth, "sleep")


if __name__ == "__main__":
    truth.run(main)
