"""`prof record --async` target: two tasks share the CPU 75/25.

usage: async_split.py OUTDIR

One event loop runs the tasks heavy and light, which take turns: each spins for a slice,
then yields with `await asyncio.sleep(0)`: light for a random length (0.3-1.5 ms, so no
slice pattern can beat against prof's sampling period), heavy until its total is three
times light's. A third task
writes OUTDIR/totals.json about every 0.2 s: each task's accumulated wall-clock time in
its slices (perf_counter, as prof's samples are wall-clock). OUTDIR/ready.json is written
after a warm-up.

Must stay valid on Python 3.7 through 3.15.
"""

import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import truth  # noqa: E402

perf_counter = time.perf_counter
acc = {"heavy": 0.0, "light": 0.0}


def spin(until):
    while perf_counter() < until:
        pass


async def light():
    while True:
        start = perf_counter()
        spin(start + random.uniform(0.0003, 0.0015))
        acc["light"] += perf_counter() - start
        await asyncio.sleep(0)


async def heavy():
    # Catches up to three times light's time at each turn: the split stays 75/25 to
    # within a slice at any moment, whatever the machine's load does to the slices.
    while True:
        start = perf_counter()
        spin(start + min(0.02, 3 * acc["light"] - acc["heavy"]))
        acc["heavy"] += perf_counter() - start
        await asyncio.sleep(0)


def dump(outdir, name, data):
    tmp = os.path.join(outdir, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(outdir, name))


async def reporter(outdir):
    await asyncio.sleep(0.3)
    dump(outdir, "totals.json", dict(acc))
    dump(
        outdir,
        "ready.json",
        {
            "pid": os.getpid(),
            "version": list(sys.version_info[:3]),
            "executable": sys.executable,
            "gil": True,
            "writer_stays": True,
            "threads": {},
        },
    )
    while True:
        dump(outdir, "totals.json", dict(acc))
        await asyncio.sleep(0.2)


async def amain(outdir):
    tasks = [
        asyncio.ensure_future(heavy()),
        asyncio.ensure_future(light()),
        asyncio.ensure_future(reporter(outdir)),
    ]
    for t, name in zip(tasks, ("heavy", "light", "reporter")):
        # 3.7's tasks have no names (it runs here to check prof's notice that it reads no
        # tasks there).
        if hasattr(t, "set_name"):
            t.set_name(name)
    await asyncio.gather(*tasks)


def main():
    outdir, _ = truth.setup()
    asyncio.run(amain(outdir))


truth.run(main)
