"""Pure-Python CPU work for SECONDS: in the main thread alone (N=1), or in N threads that
contend for the GIL while the main thread joins them.

usage: diag_cpu.py TRUTH N SECONDS

A thread cannot see the GIL, but it sees its own progress: each worker notes the gaps in
its progress (longer than GAP), and the truth is reconstructed afterwards: at each moment
the threads progressing hold the GIL (`python`), the others wait for it (`gil`); a moment
when none progresses (the holder descheduled) counts as `python` for one of them.
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import sys
import threading

import diag_truth

GAP = 0.0005


def spin(seconds, gaps):
    # Work in small steps, timing each: a step that took long was a wait.
    end = time.perf_counter() + seconds
    last = time.perf_counter()
    while last < end:
        n = 0
        for _ in range(40):
            n += 1
        now = time.perf_counter()
        if now - last > GAP:
            gaps.append((last, now))
        last = now


def main():
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    main_clock = diag_truth.clock(start=T0)
    if n == 1:
        spin(seconds, [])
        diag_truth.write(truth)
        return
    records = {}

    def worker(name):
        c = diag_truth.clock(name)
        gaps = []
        spin(seconds, gaps)
        c.stop()
        records[name] = (c, gaps)

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",), name=f"worker-{i}") for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    main_clock.add("lock", time.perf_counter() - t0)
    # Sweep over every boundary: who progresses between two consecutive ones.
    edges = set()
    for c, gaps in records.values():
        edges.update((c.start, c.end))
        for a, b in gaps:
            edges.update((a, b))
    edges = sorted(edges)
    names = list(records)
    for a, b in zip(edges, edges[1:]):
        mid = (a + b) / 2
        alive = [x for x in names if records[x][0].start <= mid <= records[x][0].end]
        if not alive:
            continue
        waiting = set()
        for x in alive:
            if any(g0 <= mid <= g1 for g0, g1 in records[x][1]):
                waiting.add(x)
        running = [x for x in alive if x not in waiting]
        for x in alive:
            if running:
                state = "python" if x in running else "gil"
                records[x][0].add(state, b - a)
            else:
                records[x][0].add("python", (b - a) / len(alive))
                records[x][0].add("gil", (b - a) * (len(alive) - 1) / len(alive))
    diag_truth.write(truth)


main()
