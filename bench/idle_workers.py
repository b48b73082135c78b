"""Chrome trace size target: four threads 25 calls deep, each repeating a 4 ms CPU burst
and a 6 ms sleep, for SECONDS (default 5), then exit.

usage: idle_workers.py [SECONDS]

Without --idle every sleep is a gap in the threads' timelines: the case where the Chrome
trace writer used to end and restart every slice of the stack (see README.md).
"""

import sys
import threading
import time


def leaf():
    end = time.time() + 0.004
    while time.time() < end:
        pass


def deep(depth):
    if depth == 0:
        leaf()
        time.sleep(0.006)
    else:
        deep(depth - 1)


def worker(seconds):
    end = time.time() + seconds
    while time.time() < end:
        deep(25)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    threads = [threading.Thread(target=worker, args=(seconds,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
