"""`prof record` target: busy threads that live for a few ticks each.

usage: rec_short_threads.py OUTDIR   (run under `prof record ... -- python rec_short_threads.py OUTDIR`)

MainThread writes OUTDIR/ready.json, waits WARMUP seconds (prof attaches), then ROUNDS
times starts a new thread that runs short_lived: on CPU for LIFE seconds of wall time,
then it exits; main_wait joins it and sleeps PAUSE before the next. No other thread runs
Python meanwhile, so each short thread holds the GIL and is running or runnable (state R)
for its whole life. OUTDIR/done.json says how long the short threads ran short_lived in
all, in wall time.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

WARMUP = 0.5
ROUNDS = 60
LIFE = 0.0075
PAUSE = 0.02


def short_lived(lives):
    start = time.perf_counter()
    end = start + LIFE
    n = 0
    while time.perf_counter() < end:
        n += 1
    lives.append(time.perf_counter() - start)


def main_wait(t):
    t.join()


def main():
    rec_common.write_json(
        sys.argv[1],
        "ready.json",
        {"pid": os.getpid(), "functions": rec_common.describe_functions(short_lived, main_wait)},
    )
    time.sleep(WARMUP)
    lives = []
    for _ in range(ROUNDS):
        t = threading.Thread(target=short_lived, args=(lives,))
        t.start()
        main_wait(t)
        time.sleep(PAUSE)
    rec_common.write_json(sys.argv[1], "done.json", {"life": sum(lives)})


if __name__ == "__main__":
    main()
