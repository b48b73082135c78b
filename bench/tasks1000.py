"""Benchmark target for `--async`: 1,000 asyncio tasks sleeping two coroutines deep,
beside one task that keeps the CPU busy (yielding every few milliseconds).

usage: tasks1000.py [SECONDS] [TASKS]
"""

import asyncio
import sys
import time


async def nap():
    await asyncio.sleep(3600)


async def sleeper():
    await nap()


async def busy():
    while True:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def main(seconds, tasks):
    for i in range(tasks):
        asyncio.create_task(sleeper(), name="sleeper-%d" % i)
    asyncio.create_task(busy(), name="busy")
    await asyncio.sleep(seconds)


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3600
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    asyncio.run(main(seconds, tasks))
