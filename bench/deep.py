"""Benchmark target: one thread busy at the bottom of a 120-frame-deep stack."""
import sys
import time


def recurse(n, end):
    if n == 0:
        x = 0
        while time.time() < end:
            x += 1
        return x
    return recurse(n - 1, end)


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    recurse(118, time.time() + seconds)
