"""`prof record --idle` target for idle threads whose stacks are handed out again: a
thread that wakes for a moment, changes its stack and sleeps again.

usage: rec_nap.py OUTDIR   (run under `prof record --idle ... -- python rec_nap.py OUTDIR`)

Threads:
  - `idler-0..23`: idler_wait, on an Event throughout (never on CPU): enough still
    threads for prof to hand out their stacks again instead of reading them;
  - `ticker`: ticker_loop, wakes every 2 ms for a moment (a thread that runs often, so
    the process's CPU time never stands still);
  - `napper`: sleeps in nap_0, then nap_1, nap_2 and nap_3 in turn; between two naps it
    is on CPU only for the return from one and the call of the next (microseconds).
    nap_1 is shorter than a second (prof still watches a thread that ran that lately),
    nap_2 longer (prof has stopped watching it by the time it wakes);
  - MainThread: main_wait, joins the napper, then writes OUTDIR/done.json with how long
    each nap lasted, and exits.
OUTDIR/ready.json describes the functions as soon as the threads exist.
"""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

NAPS = (1.5, 0.6, 1.5, 1.0)


def nap_0(seconds):
    time.sleep(seconds)


def nap_1(seconds):
    time.sleep(seconds)


def nap_2(seconds):
    time.sleep(seconds)


def nap_3(seconds):
    time.sleep(seconds)


def napper(lasted):
    for nap, seconds in zip((nap_0, nap_1, nap_2, nap_3), NAPS):
        t0 = time.perf_counter()
        nap(seconds)
        lasted.append(time.perf_counter() - t0)


def ticker_loop(stop):
    while not stop:
        time.sleep(0.002)


def idler_wait(ev):
    ev.wait()


def main_wait(t):
    t.join()


def main():
    ev = threading.Event()
    stop = []
    lasted = []
    for i in range(24):
        threading.Thread(target=idler_wait, args=(ev,), name="idler-%d" % i, daemon=True).start()
    ticker = threading.Thread(target=ticker_loop, args=(stop,), name="ticker", daemon=True)
    ticker.start()
    rec_common.write_json(
        sys.argv[1],
        "ready.json",
        {
            "pid": os.getpid(),
            "functions": rec_common.describe_functions(
                nap_0, nap_1, nap_2, nap_3, idler_wait, ticker_loop, main_wait
            ),
        },
    )
    t = threading.Thread(target=napper, args=(lasted,), name="napper")
    t.start()
    main_wait(t)
    stop.append(1)
    ev.set()
    ticker.join()
    rec_common.write_json(sys.argv[1], "done.json", {"naps": lasted})


if __name__ == "__main__":
    main()
