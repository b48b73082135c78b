"""N threads sleeping in short naps for SECONDS, the main thread joining them; exits
with status 7 (launch mode passes it on).

usage: diag_sleep.py TRUTH N SECONDS
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import sys
import threading

import diag_truth


def napper(seconds):
    c = diag_truth.clock()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        time.sleep(0.02)
        c.add("sleep", time.perf_counter() - t0)
    c.stop()


def main():
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    main_clock = diag_truth.clock(start=T0)
    threads = [threading.Thread(target=napper, args=(seconds,), name=f"napper-{i}") for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    main_clock.add("lock", time.perf_counter() - t0)
    diag_truth.write(truth)
    sys.exit(7)


main()
