"""Launch-mode target for tests/launch.rs: counts the SIGINTs it gets.

usage: launch_sigints.py OUTDIR

Counts the SIGINTs delivered to it, writes OUTDIR/ready once it listens, and burns CPU
until half a second after the first SIGINT (time for a duplicate to arrive), then writes
the count to OUTDIR/sigints.txt and exits 0. Counted through signal.set_wakeup_fd, one
byte per delivery: calls of a Python handler would merge two deliveries that come before
the interpreter looks.

Must stay valid on Python 3.7 through 3.15.
"""

import os
import signal
import sys
import time

first = [None]


def on_sigint(signum, frame):
    if first[0] is None:
        first[0] = time.time()


def main():
    outdir = sys.argv[1]
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.signal(signal.SIGINT, on_sigint)
    signal.set_wakeup_fd(w)
    open(os.path.join(outdir, "ready"), "w").close()
    deadline = time.time() + 120
    while time.time() < deadline and (first[0] is None or time.time() < first[0] + 0.5):
        pass
    try:
        delivered = os.read(r, 4096)
    except BlockingIOError:
        delivered = b""
    with open(os.path.join(outdir, "sigints.txt"), "w") as f:
        f.write(str(delivered.count(bytes([signal.SIGINT]))))


if __name__ == "__main__":
    main()
