"""A parent starting N worker processes (each sleeping about SECONDS) and waiting for
each in turn with os.waitpid, as Popen.wait() does (subprocess is not imported: its
import alone, slow on a loaded machine, would be most of the parent's own time).

usage: diag_child.py TRUTH N SECONDS
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import os
import sys

import diag_truth


def main():
    if sys.argv[1] == "work":
        time.sleep(float(sys.argv[2]))
        return
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    c = diag_truth.clock(start=T0)
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.execv(sys.executable, [sys.executable, __file__, "work", str(seconds)])
        pids.append(pid)
    for pid in pids:
        t0 = time.perf_counter()
        os.waitpid(pid, 0)
        c.add("child", time.perf_counter() - t0)
    diag_truth.write(truth)


main()
