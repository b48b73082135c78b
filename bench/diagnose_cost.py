"""CPU cost of `prof diagnose` beside `prof record --idle` on the same target.

Starts bench/threads8.py (9 threads: eight busy, the main one in join; or, with --target
threads1000, bench/threads1000.py: 1,000 threads, 10 busy), then alternately
runs `prof diagnose -p PID -r RATE -d SECS --json` and `prof record -p PID -r RATE -d SECS
--idle -f raw -o FILE` against it, REPS times each, and prints for each the profiler's
CPU time (user+sys from wait4) per 1000 thread-samples (diagnose: `process.samples` of its
JSON; record: the sum of the raw file's counts), median over the repetitions, and the same
CPU time per second of the run (share of one core).

usage: python3 bench/diagnose_cost.py [--prof PATH] [--python PATH] [--target threads8|threads1000]
                                      [--rate HZ] [--secs S] [--reps N]
"""
import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    """Run cmd; its stdout and the CPU seconds it used."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{cmd} failed with {p.returncode}")
    return out, ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser()
    default_py = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12.*/bin/python3")))
    ap.add_argument("--prof", default="/tmp/prof-bench-bin" if os.path.exists("/tmp/prof-bench-bin") else "target/release/prof")
    ap.add_argument("--python", default=(default_py or ["python3"])[-1])
    ap.add_argument("--target", choices=["threads8", "threads1000"], default="threads8")
    ap.add_argument("--rate", default="1000")
    ap.add_argument("--secs", default="5")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    span = (float(a.secs) + 3) * 2 * a.reps + 10
    target = subprocess.Popen([a.python, os.path.join(HERE, a.target + ".py"), str(span)],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        if a.target == "threads1000":
            # Every thread exists once it says so.
            target.stdout.readline()
        time.sleep(1.0)
        pid = str(target.pid)
        costs = {"diagnose": [], "record --idle": []}
        cores = {"diagnose": [], "record --idle": []}
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "x.txt")
            for rep in range(a.reps):
                order = ["diagnose", "record --idle"]
                if rep % 2:
                    order.reverse()
                for what in order:
                    if what == "diagnose":
                        out, cpu = run([a.prof, "diagnose", "-p", pid, "-r", a.rate, "-d", a.secs, "--json"])
                        samples = json.loads(out)["process"]["samples"]
                    else:
                        _, cpu = run([a.prof, "record", "-p", pid, "-r", a.rate, "-d", a.secs, "--idle", "-f", "raw", "-o", raw])
                        with open(raw) as f:
                            samples = sum(int(line.rsplit(" ", 1)[1]) for line in f if line.strip())
                    costs[what].append(cpu / samples * 1000 * 1e3)
                    cores[what].append(cpu / float(a.secs) * 100)
                    print(f"{what}: {samples} thread-samples, {cpu:.3f} s CPU", file=sys.stderr)
        for what, v in costs.items():
            c = cores[what]
            print(f"{what}: {statistics.median(v):.2f} ms CPU per 1000 thread-samples (runs: {', '.join(f'{x:.2f}' for x in v)}); "
                  f"{statistics.median(c):.1f}% of a core (runs: {', '.join(f'{x:.1f}' for x in c)})")
    finally:
        os.killpg(target.pid, signal.SIGKILL)
        target.wait()


main()
