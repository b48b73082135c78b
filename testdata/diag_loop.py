"""An asyncio event loop running 4 tasks that only await timers, beside N tasks that
block the loop in time.sleep between their awaits (none when N is 0), for SECONDS.

The loop's thread accounts its time blocked in time.sleep as `sleep`, and its time in the
loop's selector (waiting for the next timer) as `io`.

usage: diag_loop.py TRUTH N SECONDS
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import asyncio
import sys

import diag_truth


async def waiter(end):
    while time.perf_counter() < end:
        await asyncio.sleep(0.05)


async def blocker(end, c):
    while time.perf_counter() < end:
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        time.sleep(0.05)
        c.add("sleep", time.perf_counter() - t0)


async def main(n, seconds, c):
    # The loop waits in its selector's select(); timing it there is timing the loop's waits.
    selector = asyncio.get_running_loop()._selector
    select = selector.select

    def timed_select(timeout=None):
        t0 = time.perf_counter()
        try:
            return select(timeout)
        finally:
            c.add("io", time.perf_counter() - t0)

    selector.select = timed_select
    end = time.perf_counter() + seconds
    await asyncio.gather(*[waiter(end) for _ in range(4)], *[blocker(end, c) for _ in range(n)])


def run():
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    c = diag_truth.clock(start=T0)
    asyncio.run(main(n, seconds, c))
    diag_truth.write(truth)


run()
