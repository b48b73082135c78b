"""`prof record` target with a known CPU split: split_a 75%, split_b 25%.

usage: rec_split.py OUTDIR

One thread alternates between split_a and split_b in short slices of random
length (0.3-1.5 ms, so no slice pattern can beat against prof's sampling
period), picking split_a while its accumulated time is below 3x split_b's.
Times are wall-clock (perf_counter), as prof's samples are: a slice in which
the thread is preempted still counts for the function it was in, for both.
OUTDIR/ready.json is written after a warm-up; OUTDIR/totals.json, the
target's own accumulated times (a, b, and elapsed: all the time since the loop
started, bookkeeping included), is rewritten about every 0.2 s.
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

perf_counter = time.perf_counter


def split_a(until):
    while perf_counter() < until:
        pass


def split_b(until):
    while perf_counter() < until:
        pass


def alternate(outdir):
    acc_a = 0.0
    acc_b = 0.0
    began = perf_counter()
    ready_at = perf_counter() + 0.3
    ready = False
    next_report = 0.0
    rnd = random.Random(12345)
    while True:
        start = perf_counter()
        until = start + rnd.uniform(0.0003, 0.0015)
        if acc_a < 3.0 * acc_b:
            split_a(until)
            acc_a += perf_counter() - start
        else:
            split_b(until)
            acc_b += perf_counter() - start
        now = perf_counter()
        if now >= next_report:
            next_report = now + 0.2
            rec_common.write_json(
                outdir, "totals.json", {"a": acc_a, "b": acc_b, "elapsed": now - began}
            )
            if not ready and now >= ready_at:
                ready = True
                rec_common.write_json(
                    outdir,
                    "ready.json",
                    {
                        "pid": os.getpid(),
                        "functions": rec_common.describe_functions(split_a, split_b),
                    },
                )


if __name__ == "__main__":
    alternate(sys.argv[1])
