#!/usr/bin/env python3
"""A/B of prof binaries on one target, alternating: CPU per thread-sample of `record`.

    python3 bench/tick_ab.py [--floor] [--pin CORE] [--rate HZ] deep|threads8 ROUNDS BIN_A BIN_B
                             [-- EXTRA RECORD ARGS]

Each round runs `BIN record -p PID -r HZ -d 4 --idle -f raw` (HZ 1000 unless --rate) with
every binary in turn (the order reversed every other round) on one target that lives
through all rounds, and takes the CPU (user + system) from wait4's rusage, divided by the
thread-samples written. Prints, per binary, the median in µs per thread-sample (= ms per
1000) and every run, and the median thread-samples per second of wall time, CPU share of a
core, achieved rate and dropped ticks (the last two from prof's own summary line). On a
shared machine read the ratio of the medians, not their values.

With --floor, each round also runs measurement 7's floor.c for 4 s of ticks at HZ on the
same target, in the same rotation: sleep only, sleep + one 16 KiB read, and sleep +
BIN_A's own reads of one tick in the mode asked (`-- --nonblocking` or not; taken once,
with strace, before the rounds). The floors' CPU per tick is divided by the target's
threads (the thread-samples of an `--idle` tick), so every row is µs per thread-sample; on
deep.py, where a tick is one thread-sample, each binary's cost above the goal's floor
(sleep + one 16 KiB read) is printed too.

With --pin CORE, each round runs everything twice: unpinned, and with the target (every
thread of it), prof and floor.c all on core CORE (as `taskset -c CORE` would put them),
the order of the two swapped every other round; the figures are reported side by side.
On a small VM where a run lands on cores decides ~10 µs of a tick, the pinned column is
the one that can tell binaries apart.
"""
import glob
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SECS = 4
UNPINNED = "unpinned"


def take(args, flag, value=False):
    """Remove `flag` (and its value) from `args`; returns the value, True, or None."""
    if flag not in args:
        return None
    i = args.index(flag)
    if not value:
        del args[i]
        return True
    if i + 1 >= len(args):
        sys.exit("tick_ab: %s needs a value" % flag)
    v = args[i + 1]
    del args[i:i + 2]
    return v


def place(pid, cores):
    """Move every thread of `pid` to `cores` (a new thread inherits its creator's)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, OSError):
            pass  # exited meanwhile


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1:]
    floor = take(args, "--floor")
    pin = take(args, "--pin", True)
    rate = int(take(args, "--rate", True) or 1000)
    if len(args) < 3:
        sys.exit(__doc__)
    target, rounds, bins = args[0], int(args[1]), args[2:]
    all_cores = os.sched_getaffinity(0)
    placements = [(UNPINNED, all_cores)]
    if pin is not None:
        if int(pin) not in all_cores:
            sys.exit("tick_ab: core %s is not one this process may run on (%s)" % (pin, sorted(all_cores)))
        placements.append(("pinned to core %s" % pin, {int(pin)}))
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3")))
    python = pythons[0] if pythons else sys.executable
    work = tempfile.mkdtemp(prefix="tick_ab.")
    out = os.path.join(work, "out.txt")
    # runs[kind][placement] -> [figures]; a prof run's figure is a dict, a floor's a number.
    runs = {}
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
        runs = {k: {p: [] for p, _ in placements} for k in kinds}
        for r in range(rounds):
            for pname, cores in placements if r % 2 == 0 else placements[::-1]:
                place(t.pid, cores)
                # The child is placed before it execs, so that nothing of it runs elsewhere.
                pre = lambda cores=cores: os.sched_setaffinity(0, cores)
                for b in kinds if r % 2 == 0 else kinds[::-1]:
                    if b.startswith("floor: "):
                        got = subprocess.run([exe, str(t.pid), str(rate), str(SECS * rate)] + floors[b],
                                             capture_output=True, text=True, check=True, preexec_fn=pre)
                        runs[b][pname].append(float(got.stdout) / threads)
                        continue
                    cmd = [b, "record", "-p", str(t.pid), "-r", str(rate), "-d", str(SECS), "--idle",
                           "-f", "raw", "-o", out] + extra
                    err = os.path.join(work, "err.txt")
                    with open(err, "w") as ef:
                        t0 = time.perf_counter()
                        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=ef, preexec_fn=pre)
                        _, _, ru = os.wait4(p.pid, 0)
                        wall = time.perf_counter() - t0
                    with open(out) as f:
                        n = sum(int(line.rsplit(" ", 1)[1]) for line in f if line.strip())
                    cpu = ru.ru_utime + ru.ru_stime
                    summary = open(err).read()
                    hz = re.search(r"([\d.]+) Hz achieved", summary)
                    dropped = re.search(r"(\d+) dropped ticks", summary)
                    runs[b][pname].append({
                        "us": cpu / n * 1e6, "per_s": n / wall, "core": 100 * cpu / wall,
                        "hz": float(hz.group(1)) if hz else None,
                        "dropped": int(dropped.group(1)) if dropped else None})
            place(t.pid, all_cores)
            loads.append(os.getloadavg()[0])
    finally:
        os.killpg(t.pid, signal.SIGKILL)
    report(runs, placements, bins, floor and target == "deep", rate)
    print("load average (1 min) at the start and after each round: %s"
          % " ".join("%.1f" % x for x in loads))


def median_of(xs, key=None):
    xs = [x if key is None else x[key] for x in xs]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def report(runs, placements, bins, floor, rate):
    width = max(len(k) for k in runs) + (len(" above the goal's floor") if floor else 0) + 2
    for pname, _ in placements:
        print("== %s, -r %d" % (pname, rate))
        for k, by in runs.items():
            xs = by[pname]
            if k.startswith("floor: "):
                print("%-*s median %7.2f µs/thread-sample   runs %s"
                      % (width, k, median_of(xs), " ".join("%.1f" % x for x in xs)))
                continue
            print("%-*s median %7.2f µs/thread-sample   runs %s" % (
                width, k, median_of(xs, "us"), " ".join("%.1f" % x["us"] for x in xs)))
            hz = median_of(xs, "hz")
            print("%-*s        %7.0f thread-samples/s, %.1f%% of a core, %s Hz achieved, "
                  "dropped ticks %s" % (
                      width, "", median_of(xs, "per_s"), median_of(xs, "core"),
                      "%.1f" % hz if hz is not None else "n/a",
                      " ".join(str(x["dropped"]) for x in xs)))
    if len(placements) > 1 or floor:
        # Side by side: what the goal is read from.
        names = [p for p, _ in placements]
        print("== side by side (medians)")
        print("%-*s %s" % (width, "", "".join("%22s" % p for p in names)))
        for k, by in runs.items():
            key = None if k.startswith("floor: ") else "us"
            print("%-*s %s" % (width, k, "".join("%22.2f" % median_of(by[p], key) for p in names)))
        if floor:  # deep only: there a tick is one thread-sample
            base = "floor: sleep + 16 KiB read"
            for b in bins:
                print("%-*s %s" % (width, b + " above the goal's floor", "".join(
                    "%22.2f" % (median_of(runs[b][p], "us") - median_of(runs[base][p])) for p in names)))


if __name__ == "__main__":
    main()
