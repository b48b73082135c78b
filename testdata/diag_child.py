"""A parent starting N worker processes (each sleeping about SECONDS) and waiting for
each in turn with Popen.wait().

usage: diag_child.py TRUTH N SECONDS
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import subprocess
import sys

import diag_truth


def main():
    if sys.argv[1] == "work":
        time.sleep(float(sys.argv[2]))
        return
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    c = diag_truth.clock(start=T0)
    procs = [subprocess.Popen([sys.executable, __file__, "work", str(seconds)]) for _ in range(n)]
    for p in procs:
        t0 = time.perf_counter()
        p.wait()
        c.add("child", time.perf_counter() - t0)
    diag_truth.write(truth)


main()
