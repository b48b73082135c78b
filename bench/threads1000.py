"""Benchmark target: a thousand threads, a few busy and the rest idle (a thread pool or a
server with many connections).

    python3 threads1000.py [SECONDS] [--threads N] [--busy K]

K busy threads (default 10) loop in pure Python a few frames deep; the other N - K
(default 990) wait on an Event, a few frames deep too; the main thread waits in join.
Prints "ready" once every thread exists, and exits after SECONDS (default 10).
"""
import argparse
import threading
import time


def nest(depth, fn):
    if depth:
        return nest(depth - 1, fn)
    return fn()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("seconds", type=float, nargs="?", default=10.0)
    ap.add_argument("--threads", type=int, default=1000)
    ap.add_argument("--busy", type=int, default=10)
    a = ap.parse_args()
    end = time.time() + a.seconds
    release = threading.Event()

    def busy():
        x = 0
        while time.time() < end:
            x += 1
        return x

    # The idle ones first: a thread starts only once it gets the GIL, which busy ones hog.
    idle = [
        threading.Thread(target=nest, args=(8, release.wait), name="idle-%d" % i, daemon=True)
        for i in range(a.threads - a.busy)
    ]
    busy_threads = [
        threading.Thread(target=nest, args=(8, busy), name="busy-%d" % i, daemon=True)
        for i in range(a.busy)
    ]
    for t in idle + busy_threads:
        t.start()
    print("ready", flush=True)
    for t in busy_threads:
        t.join()
    release.set()


if __name__ == "__main__":
    main()
