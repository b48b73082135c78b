"""A lock convoy: N threads, each taking one shared lock and holding it for HOLD seconds
(a slow call made under the lock: a sleep here), for SECONDS; the main thread joins them.

usage: diag_lock.py TRUTH N SECONDS
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import sys
import threading

import diag_truth

HOLD = 0.002


class Cache:
    def __init__(self):
        self.lock = threading.Lock()

    def get(self, c):
        t0 = time.perf_counter()
        with self.lock:
            t1 = time.perf_counter()
            c.add("lock", t1 - t0)
            time.sleep(HOLD)
            c.add("sleep", time.perf_counter() - t1)


def worker(cache, seconds):
    c = diag_truth.clock()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        cache.get(c)
    c.stop()


def main():
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    main_clock = diag_truth.clock(start=T0)
    cache = Cache()
    threads = [threading.Thread(target=worker, args=(cache, seconds), name=f"getter-{i}") for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    main_clock.add("lock", time.perf_counter() - t0)
    diag_truth.write(truth)


main()
