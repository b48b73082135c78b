"""`prof record` target for idle-thread detection: a thread that wakes after long sleeps.

usage: rec_wake.py OUTDIR   (run under `prof record ... -- python rec_wake.py OUTDIR`)

Threads:
  - `busy-worker`: busy_spin, on CPU until the end (the process's CPU time never stands
    still, so a profiler cannot tell from it alone that no idle thread ran);
  - `sleeper-0..3`: sleeper_wait, in time.sleep throughout (never on CPU);
  - `waker`: BURSTS times, sleeps SLEEP seconds (long enough for a profiler to stop
    watching it), then runs burst_K for BURST seconds of wall time;
  - MainThread: main_wait, joins the waker, then writes OUTDIR/done.json with the CPU
    time each burst got (a starved burst says so) and exits.
OUTDIR/ready.json describes the functions as soon as the threads exist.
"""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

SLEEP = 1.5
BURST = 0.2


def spin(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def burst_0():
    return spin(BURST)


def burst_1():
    return spin(BURST)


def burst_2():
    return spin(BURST)


def waker(cpu):
    for burst in (burst_0, burst_1, burst_2):
        time.sleep(SLEEP)
        t0 = time.thread_time()
        burst()
        t1 = time.thread_time()
        cpu.append(t1 - t0)


def busy_spin(stop):
    n = 0
    while not stop:
        n += 1


def sleeper_wait():
    while True:
        time.sleep(3600)


def main_wait(w):
    w.join()


def main():
    stop = []
    cpu = []
    for i in range(4):
        threading.Thread(target=sleeper_wait, name="sleeper-%d" % i, daemon=True).start()
    busy = threading.Thread(target=busy_spin, args=(stop,), name="busy-worker", daemon=True)
    busy.start()
    w = threading.Thread(target=waker, args=(cpu,), name="waker")
    w.start()
    rec_common.write_json(
        sys.argv[1],
        "ready.json",
        {
            "pid": os.getpid(),
            "functions": rec_common.describe_functions(
                burst_0, burst_1, burst_2, busy_spin, sleeper_wait, main_wait
            ),
        },
    )
    main_wait(w)
    stop.append(1)
    busy.join()
    rec_common.write_json(sys.argv[1], "done.json", {"burst_cpu": cpu})


if __name__ == "__main__":
    main()
