"""Consistency target: threads whose stacks go up and down as fast as they can, through
three functions with frames of three sizes.

    python stack_churn.py [THREADS]

Each thread (w0, w1, ...) runs rounds from a fixed plan: a round picks a start s and a
depth n and calls down n levels, the function at each level chosen by (s + level) mod 3,
so consecutive frames, outermost first, always go wide -> mid -> tiny -> wide ...
(CYCLE order, backwards). A stack mixing two rounds, read while the thread changed it,
breaks that order; stack_churn_check.py counts such stacks in prof's raw output. The
frames differ in length (2, 10 and 22 locals), so on 3.11+ the rounds put frames at
different data-stack addresses. The GIL changes hands every half millisecond.
"""
import random
import sys
import threading


def tiny(n, s):
    if n <= 1:
        return 0
    return CYCLE[(s + n) % 3](n - 1, s)


def mid(n, s):
    a = b = c = d = e = f = g = h = 0
    if n <= 1:
        return a + b + c + d + e + f + g + h
    return CYCLE[(s + n) % 3](n - 1, s)


def wide(n, s):
    a = b = c = d = e = f = g = h = i = j = k = m = o = p = q = r = t = u = v = w = 0
    if n <= 1:
        return a + b + c + d + e + f + g + h + i + j + k + m + o + p + q + r + t + u + v + w
    return CYCLE[(s + n) % 3](n - 1, s)


CYCLE = [tiny, mid, wide]


def churn(seed):
    rnd = random.Random(seed)
    plan = [(rnd.randrange(3), rnd.randrange(1, 60)) for _ in range(997)]
    while True:
        for s, n in plan:
            CYCLE[(s + n + 1) % 3](n, s)


def main():
    sys.setswitchinterval(0.0005)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    for i in range(count):
        threading.Thread(target=churn, args=(i,), daemon=True, name="w%d" % i).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
