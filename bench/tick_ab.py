#!/usr/bin/env python3
"""A/B of prof binaries on one target, alternating: CPU per thread-sample of `record`.

    python3 bench/tick_ab.py [--floor] deep|threads8 ROUNDS BIN_A BIN_B [-- EXTRA RECORD ARGS]

Each round runs `BIN record -p PID -r 1000 -d 4 --idle -f raw` with every binary in turn
(the order reversed every other round) on one target that lives through all rounds, and
takes the CPU (user + system) from wait4's rusage, divided by the thread-samples written.
Prints, per binary, the median in µs per thread-sample (= ms per 1000) and every run. On a
shared machine read the ratio of the medians, not their values.

With --floor, each round also runs measurement 7's floor.c for 4,000 ticks at 1000 Hz on
the same target, in the same rotation: sleep only, sleep + one 16 KiB read, and sleep +
BIN_A's own reads of one tick in the mode asked (`-- --nonblocking` or not; taken once,
with strace, before the rounds). The floors' CPU per tick is divided by the target's
threads (the thread-samples of an `--idle` tick), so every row is µs per thread-sample; on
deep.py a tick is one thread-sample.
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
    floor = "--floor" in args
    if floor:
        args.remove("--floor")
    if len(args) < 3:
        sys.exit(__doc__)
    target, rounds, bins = args[0], int(args[1]), args[2:]
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3")))
    python = pythons[0] if pythons else sys.executable
    work = tempfile.mkdtemp(prefix="tick_ab.")
    out = os.path.join(work, "out.txt")
    runs = {b: [] for b in bins}
    t = subprocess.Popen([python, os.path.join(HERE, target + ".py"), "600"], start_new_session=True)
    time.sleep(1.0)
    loads = [os.getloadavg()[0]]
    try:
        kinds = list(bins)
        if floor:
            sys.dont_write_bytecode = True  # no __pycache__ in bench/
            import run  # bench/run.py: measurement 7's floor.c and its replay of prof's reads
            exe = run.build_floor(work)
            reads, per_tick = run.prof_reads(bins[0], t.pid, work, "--nonblocking" in extra)
            threads = run.threads_of(t.pid)
            if not exe or not reads:
                sys.exit("tick_ab: no C compiler for floor.c, or no reads of prof found with strace")
            print("%s's reads per tick %.2f, replayed: %s" % (bins[0], per_tick or 0, run.describe_reads(reads)))
            floors = {"floor: sleep": [], "floor: sleep + 16 KiB read": [run.heap_read(t.pid)],
                      "floor: sleep + prof's reads": reads}
            kinds = list(floors) + kinds
            runs.update({k: [] for k in floors})
        for r in range(rounds):
            for b in kinds if r % 2 == 0 else kinds[::-1]:
                if b.startswith("floor: "):
                    got = subprocess.run([exe, str(t.pid), "1000", "4000"] + floors[b],
                                         capture_output=True, text=True, check=True)
                    runs[b].append(float(got.stdout) / threads)
                    continue
                cmd = [b, "record", "-p", str(t.pid), "-r", "1000", "-d", "4", "--idle",
                       "-f", "raw", "-o", out] + extra
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, _, ru = os.wait4(p.pid, 0)
                with open(out) as f:
                    n = sum(int(line.rsplit(" ", 1)[1]) for line in f if line.strip())
                runs[b].append((ru.ru_utime + ru.ru_stime) / n * 1e6)
            loads.append(os.getloadavg()[0])
    finally:
        os.killpg(t.pid, signal.SIGKILL)
    for b in runs:
        xs = runs[b]
        print("%-28s median %.2f µs/thread-sample  runs %s"
              % (b, statistics.median(xs), " ".join("%.1f" % x for x in xs)))
    print("load average (1 min) at the start and after each round: %s"
          % " ".join("%.1f" % x for x in loads))


if __name__ == "__main__":
    main()
