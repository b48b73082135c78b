"""`prof record` target: a known call chain that burns CPU.

usage: rec_work.py OUTDIR SECONDS [THREADS]

The main thread (and THREADS-1 more threads named rec-worker-N) run
outer_work -> middle -> hot_leaf, where hot_leaf is the only loop, until
SECONDS have passed (0 = until killed); then the process exits 0.
OUTDIR/ready.json describes the functions (name, file, def line, last line)
and every thread (name, native id), written once all threads are running.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402


def hot_leaf(n):
    # The only loop: nearly every sample's innermost frame is here.
    total = 0
    for i in range(n):
        total += i * i
    return total


def middle(n):
    return hot_leaf(n)


def outer_work(deadline):
    while deadline is None or time.time() < deadline:
        middle(20000)


def worker_main(deadline, started, tids):
    tids.append((threading.current_thread().name, rec_common.native_id()))
    started.release()
    outer_work(deadline)


def main():
    outdir = sys.argv[1]
    seconds = float(sys.argv[2])
    nthreads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    deadline = time.time() + seconds if seconds > 0 else None
    started = threading.Semaphore(0)
    tids = [(threading.current_thread().name, rec_common.native_id())]
    for i in range(nthreads - 1):
        t = threading.Thread(
            target=worker_main, args=(deadline, started, tids), name="rec-worker-%d" % i
        )
        t.daemon = True
        t.start()
    for _ in range(nthreads - 1):
        started.acquire()
    rec_common.write_json(
        outdir,
        "ready.json",
        {
            "pid": os.getpid(),
            "version": list(sys.version_info[:3]),
            "functions": rec_common.describe_functions(
                hot_leaf, middle, outer_work, worker_main, main
            ),
            "threads": rec_common.describe_threads(tids),
        },
    )
    outer_work(deadline)


if __name__ == "__main__":
    main()
