"""`prof diff` target: two versions of one program, told apart by --slow.

usage: diff_target.py SECONDS [--slow]

One thread calls steady_a, steady_b and grows in turn, each doing a fixed number of
loop iterations per call, until SECONDS have passed. The work of each is the same, so
each takes about a third of the time; with --slow, grows does twice its work (the
"regression"), so it takes about half and steady_a and steady_b a quarter each.
Calls are short (about a millisecond), so prof's sampling period cannot beat against
them.
"""

import sys
import time

UNITS = 20000


# The loops are written out in each function, not shared: a sample's innermost frame must
# be the function itself, since prof diff compares own shares.
def steady_a():
    x = 0
    for _ in range(UNITS):
        x += 1
    return x


def steady_b():
    x = 0
    for _ in range(UNITS):
        x += 1
    return x


def grows(slow):
    x = 0
    for _ in range(2 * UNITS if slow else UNITS):
        x += 1
    return x


def main():
    seconds = float(sys.argv[1])
    slow = "--slow" in sys.argv[2:]
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        steady_a()
        steady_b()
        grows(slow)


if __name__ == "__main__":
    main()
