"""A small program with an obvious bottleneck, for prof's README command.

It "serves" requests for a few seconds: each request parses a JSON payload, renders a
report and checks a few numbers for primality the slow way. A background thread waits
on a queue (idle time that prof leaves out by default).
"""

import json
import queue
import sys
import threading
import time


def is_prime(n):
    # Deliberately naive: this is the hot spot the flame graph should show.
    if n < 2:
        return False
    for d in range(2, n):
        if n % d == 0:
            return False
    return True


def parse(payload):
    return json.loads(payload)


def render(doc):
    lines = ["%s=%s" % (k, v) for k, v in sorted(doc.items())]
    return "\n".join(lines)


def handle(i):
    doc = parse(json.dumps({"id": i, "values": list(range(200)), "name": "req-%d" % i}))
    report = render(doc)
    primes = [n for n in range(20000 + i, 20000 + i + 40) if is_prime(n)]
    return len(report) + len(primes)


def background(q):
    while True:
        item = q.get()
        if item is None:
            return


def main(seconds):
    q = queue.Queue()
    t = threading.Thread(target=background, args=(q,), name="background")
    t.start()
    end = time.time() + seconds
    served = 0
    while time.time() < end:
        handle(served)
        served += 1
    q.put(None)
    t.join()
    print("served %d requests" % served)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
