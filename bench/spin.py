"""Benchmark target for the slowdown measurement: a fixed CPU-bound loop that reports its
own work rate.

    python3 spin.py [--warmup S] [--seconds S] [--idle-threads N]

Prints "ready" once its threads exist, loops for --warmup seconds (time for a profiler to
attach, not counted), then counts loop chunks for --seconds of wall-clock time and prints
one JSON line {"rate": chunks_per_second, "oncpu": s, "queued": s, "stopped": s, ...}: the
window split, from /proc/self/task/TID/schedstat, into time on CPU, time runnable but
waiting for a CPU (other load on the machine) and time stopped (a profiler's pause). With --idle-threads N the loop runs in one
worker thread while N other threads wait on an Event (the main thread waits in join).
A profiler that pauses the process, or takes CPU the target needs, lowers the rate.
"""
import argparse
import json
import sys
import threading
import time

CHUNK = 2000


def chunk():
    x = 0
    for i in range(CHUNK):
        x += i
    return x


def nest(depth, fn):
    # A few frames of stack, so the profiler has something to walk.
    if depth:
        return nest(depth - 1, fn)
    return fn()


def schedstat():
    """(seconds on CPU, seconds runnable but waiting for a CPU) of this thread, from the
    kernel's /proc/self/task/TID/schedstat; None where it is not available."""
    try:
        with open("/proc/self/task/%d/schedstat" % threading.get_native_id()) as f:
            run, wait = f.read().split()[:2]
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError, AttributeError):
        return None


def measure(warmup, seconds, out):
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        chunk()
    s0 = schedstat()
    t0 = time.perf_counter()
    end = t0 + seconds
    n = 0
    while True:
        chunk()
        n += 1
        now = time.perf_counter()
        if now >= end:
            break
    s1 = schedstat()
    wall = now - t0
    out["rate"] = n / wall
    out["chunks"] = n
    out["window"] = wall
    if s0 and s1:
        # wall = on CPU + waiting for a CPU (machine load) + stopped (e.g. by a profiler's
        # ptrace pause; this loop never blocks otherwise).
        out["oncpu"] = s1[0] - s0[0]
        out["queued"] = s1[1] - s0[1]
        out["stopped"] = max(0.0, wall - out["oncpu"] - out["queued"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--idle-threads", type=int, default=0)
    ap.add_argument("--depth", type=int, default=10)
    a = ap.parse_args()
    out = {}
    if a.idle_threads:
        release = threading.Event()
        idle = [
            threading.Thread(target=release.wait, name="idle-%d" % i, daemon=True)
            for i in range(a.idle_threads)
        ]
        for t in idle:
            t.start()
        worker = threading.Thread(
            target=nest, args=(a.depth, lambda: measure(a.warmup, a.seconds, out)), name="worker"
        )
        worker.start()
        print("ready", flush=True)
        worker.join()
        release.set()
    else:
        print("ready", flush=True)
        nest(a.depth, lambda: measure(a.warmup, a.seconds, out))
    out["threads"] = threading.active_count()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
