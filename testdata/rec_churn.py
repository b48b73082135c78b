"""`prof record` target for consistent stacks: threads that call and return all the time.

usage: rec_churn.py OUTDIR

Four threads, until killed: `ping-0` and `ping-1` call ping_a -> ping_b -> ping_a ...,
`pong-0` and `pong-1` call pong_a -> pong_b -> pong_a ..., each round to another depth
(1 to 40), spin briefly in the innermost call (leaf), and return. The GIL changes hands
every half millisecond, and every call and return rewrites frames. A consistent stack of
such a thread, outermost first, is therefore churn, then a, b, a, b, ... of its own
family, then possibly leaf; anything else was read while it changed. MainThread waits on
an Event. OUTDIR/ready.json describes the functions and threads.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

_tids = {}
_lock = threading.Lock()


def leaf():
    x = 0
    for i in range(300):
        x += i
    return x


def ping_a(n):
    if n <= 1:
        return leaf()
    return ping_b(n - 1)


def ping_b(n):
    if n <= 1:
        return leaf()
    return ping_a(n - 1)


def pong_a(n):
    if n <= 1:
        return leaf()
    return pong_b(n - 1)


def pong_b(n):
    if n <= 1:
        return leaf()
    return pong_a(n - 1)


def churn(first):
    with _lock:
        _tids[threading.current_thread().name] = rec_common.native_id()
    depth = 1
    while True:
        depth = (depth * 7 + 3) % 40 + 1
        first(depth)


def main_wait(forever):
    forever.wait()


def main():
    sys.setswitchinterval(0.0005)
    specs = [("ping-0", ping_a), ("ping-1", ping_a), ("pong-0", pong_a), ("pong-1", pong_a)]
    for name, first in specs:
        t = threading.Thread(target=churn, args=(first,), name=name)
        t.daemon = True
        t.start()
    while True:
        with _lock:
            if len(_tids) == len(specs):
                tids = dict(_tids)
                break
        time.sleep(0.01)
    tids["MainThread"] = rec_common.native_id()
    rec_common.write_ready(sys.argv[1], tids, leaf, ping_a, ping_b, pong_a, pong_b, churn)
    main_wait(threading.Event())


if __name__ == "__main__":
    main()
