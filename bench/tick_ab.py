#!/usr/bin/env python3
"""A/B of prof binaries on one target, alternating: CPU per thread-sample of `record`.

    python3 bench/tick_ab.py deep|threads8 ROUNDS BIN_A BIN_B [-- EXTRA RECORD ARGS]

Each round runs `BIN record -p PID -r 1000 -d 4 --idle -f raw` with every binary in turn
(the order reversed every other round) on one target that lives through all rounds, and
takes the CPU (user + system) from wait4's rusage, divided by the thread-samples written.
Prints, per binary, the median in µs per thread-sample (= ms per 1000) and every run. On a
shared machine read the ratio of the medians, not their values.
"""
import glob
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1:]
    if len(args) < 3:
        sys.exit(__doc__)
    target, rounds, bins = args[0], int(args[1]), args[2:]
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3")))
    python = pythons[0] if pythons else sys.executable
    out = os.path.join(tempfile.mkdtemp(prefix="tick_ab."), "out.txt")
    runs = {b: [] for b in bins}
    t = subprocess.Popen([python, os.path.join(HERE, target + ".py"), "600"], start_new_session=True)
    time.sleep(1.0)
    try:
        for r in range(rounds):
            for b in bins if r % 2 == 0 else bins[::-1]:
                cmd = [b, "record", "-p", str(t.pid), "-r", "1000", "-d", "4", "--idle",
                       "-f", "raw", "-o", out] + extra
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, _, ru = os.wait4(p.pid, 0)
                with open(out) as f:
                    n = sum(int(line.rsplit(" ", 1)[1]) for line in f if line.strip())
                runs[b].append((ru.ru_utime + ru.ru_stime) / n * 1e6)
    finally:
        os.killpg(t.pid, signal.SIGKILL)
    for b in bins:
        xs = runs[b]
        print("%-28s median %.2f µs/thread-sample  runs %s"
              % (b, statistics.median(xs), " ".join("%.1f" % x for x in xs)))


if __name__ == "__main__":
    main()
