"""`prof record` target for --idle and --gil: busy and sleeping threads.

usage: rec_threads.py OUTDIR

Threads, until killed:
  - `busy-worker`: pure-Python loop in busy_spin (on CPU, holds the GIL);
  - `nogil-spinner`: spinner_call runs a C loop with the GIL released (on CPU,
    never holds the GIL);
  - `sleeper-0..2`: sleeper_wait, in time.sleep (off CPU);
  - MainThread: main_wait, blocked on an Event (off CPU).
A short-lived writer thread writes OUTDIR/ready.json once /proc shows the
sleepers and the main thread blocked, then exits; the file gives the number
of threads left, so the test can wait for the writer to be gone.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

_tids = {}
_lock = threading.Lock()


def register():
    with _lock:
        _tids[threading.current_thread().name] = rec_common.native_id()


def busy_spin():
    register()
    n = 0
    while True:
        n += 1


def spinner_call():
    spin = rec_common.spinner()
    register()
    spin()


def sleeper_wait():
    register()
    while True:
        time.sleep(3600)


def main_wait(forever):
    register()
    forever.wait()


def writer(names):
    deadline = time.time() + 45
    idle = [n for n in names if n.startswith("sleeper") or n == "MainThread"]
    while True:
        with _lock:
            tids = dict(_tids)
        if len(tids) == len(names) and all(rec_common.thread_state(tids[n]) == "S" for n in idle):
            break
        if time.time() > deadline:
            rec_common.die("rec_threads: threads not settled: %r" % (tids,))
        time.sleep(0.01)
    # A thread that has just blocked may still be on its way into the wait; let it settle.
    time.sleep(0.2)
    rec_common.write_ready(sys.argv[1], tids, busy_spin, spinner_call, sleeper_wait, main_wait)


def main():
    specs = [("busy-worker", busy_spin), ("nogil-spinner", spinner_call)]
    specs += [("sleeper-%d" % i, sleeper_wait) for i in range(3)]
    for name, fn in specs:
        t = threading.Thread(target=fn, name=name)
        t.daemon = True
        t.start()
    names = [n for n, _ in specs] + ["MainThread"]
    w = threading.Thread(target=writer, args=(names,), name="rec-ready-writer")
    w.daemon = True
    w.start()
    main_wait(threading.Event())


if __name__ == "__main__":
    main()
