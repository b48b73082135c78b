"""`prof record` target for threads that start all the time.

usage: rec_starts.py OUTDIR

Until killed: `starter-0` and `starter-1` each start a batch of 20 threads (`worker-K`),
join them, and start the next batch (starter_loop). A worker calls down four levels of
worker_call and sleeps 5 ms there. MainThread waits on an Event (main_wait).

CPython makes a new thread's state in the thread that starts it; before 3.12 that state
holds the starting thread's id until the new thread runs, and it is at the head of the
thread list. A stack read in that moment belongs to the new thread, never to its
starter. OUTDIR/ready.json describes the functions as soon as the starters run (the
thread count never settles, so it lists no threads).
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

BATCH = 20


def worker_call(n):
    if n:
        return worker_call(n - 1)
    time.sleep(0.005)


def starter_loop(k):
    count = 0
    while True:
        batch = []
        for _ in range(BATCH):
            count += 1
            name = "worker-%d-%d" % (k, count)
            batch.append(threading.Thread(target=worker_call, args=(4,), name=name))
        for t in batch:
            t.start()
        for t in batch:
            t.join()


def main_wait(forever):
    forever.wait()


def main():
    for k in range(2):
        t = threading.Thread(target=starter_loop, args=(k,), name="starter-%d" % k)
        t.daemon = True
        t.start()
    rec_common.write_json(
        sys.argv[1],
        "ready.json",
        {
            "pid": os.getpid(),
            "functions": rec_common.describe_functions(worker_call, starter_loop, main_wait),
        },
    )
    main_wait(threading.Event())


if __name__ == "__main__":
    main()
