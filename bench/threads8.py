"""Benchmark target: eight busy threads with moderately deep stacks."""
import sys
import threading
import time


def work(depth, end):
    if depth:
        return work(depth - 1, end)
    x = 0
    while time.time() < end:
        x += 1
    return x


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    end = time.time() + seconds
    threads = [threading.Thread(target=work, args=(20, end), name="worker-%d" % i) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
