"""Target for `prof top`'s end-to-end test: two named threads, each busy in a function
with a distinctive name, and a main thread that prints a line every 100 ms (launch mode
must keep that output off the screen). Exits with CODE (default 0) after SECONDS
(default 120), so that a failed test cannot leave it running for long.

usage: top_busy.py [SECONDS [CODE]]
"""

import sys
import threading
import time


def crunch_alpha():
    x = 0
    for i in range(20000):
        x += i * i
    return x


def alpha_loop():
    while True:
        crunch_alpha()


def crunch_beta():
    s = ""
    for i in range(2000):
        s = str(i) + s[:50]
    return s


def beta_loop():
    while True:
        crunch_beta()


def main(seconds):
    for name, target in (("alpha-thread", alpha_loop), ("beta-thread", beta_loop)):
        threading.Thread(target=target, name=name, daemon=True).start()
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        print("top_busy line %d" % n, flush=True)
        print("top_busy stderr %d" % n, file=sys.stderr, flush=True)
        n += 1
        time.sleep(0.1)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 120.0)
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
