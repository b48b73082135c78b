"""N threads hashing large buffers with hashlib for SECONDS (hashlib releases the GIL
while it hashes more than a few KB), the main thread joining them.

usage: diag_hash.py TRUTH N SECONDS
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import hashlib
import sys
import threading

import diag_truth

BUF = b"\x5a" * (4 << 20)


def hash_blocks(seconds):
    c = diag_truth.clock()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        hashlib.sha256(BUF).digest()
        c.add("native", time.perf_counter() - t0)
    c.stop()


def main():
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    main_clock = diag_truth.clock(start=T0)
    threads = [threading.Thread(target=hash_blocks, args=(seconds,), name=f"hasher-{i}") for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    main_clock.add("lock", time.perf_counter() - t0)
    diag_truth.write(truth)


main()
