#!/usr/bin/env python3
"""prof vs py-spy, side by side, on the same machine in the same run.

    python3 bench/run.py                 # everything, ~10 minutes
    python3 bench/run.py --quick         # a smoke run, ~2 minutes
    python3 bench/run.py --only 1,3      # some measurements only
    python3 bench/run.py --breakdown     # also: full syscall breakdown + perf profile
    python3 bench/run.py --only 7 --pin 1  # measurement 7 also with everything on core 1

Measurements (see bench/README.md):
  1 dump      wall time per dump, remote reads (process_vm_readv) per dumped thread
  2 record    profiler CPU (user+sys) per 1000 thread-samples, -r 1000 -d 5
  3 reads     process_vm_readv per thread-sample in steady state (10 s minus 2 s record)
  4 rate      achieved thread-samples/s at -r 10000 --nonblocking on the deep target
  5 slowdown  target work rate alone / under record (100 and 1000 Hz, both modes;
              100 Hz on a target with 100 idle threads)
  6 native    --native: CPU per thread-sample, first sample, slowdown
  7 floor     CPU per tick of a sampler that only sleeps, beside prof's
  8 native memory and start-up: peak RSS (VmHWM) of record --native -r 100 -d 10, and
              dump --native wall time, on the --python target and on Debian's static,
              stripped /usr/bin/python3.11
  10 threads  1,000 threads (10 busy, 990 idle): achieved rate and profiler CPU at
              -r 1000 and at -r 100 --idle
  9 soak      (only with --soak MINUTES) RSS every minute of record --native -r 1000 on a
              target that keeps dlopen'ing, running in and dlclose'ing fresh libraries

prof and py-spy are always measured in the same loop, alternating which goes first, and
figures are medians over the repetitions. The machine is shared: read ratios, not
absolute numbers. Every process the script starts is killed on exit, Ctrl-C or error.
"""
import argparse
import collections
import glob
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEEP = os.path.join(HERE, "deep.py")
THREADS8 = os.path.join(HERE, "threads8.py")
SPIN = os.path.join(HERE, "spin.py")
THREADS1000 = os.path.join(HERE, "threads1000.py")
CHURN = os.path.join(HERE, "churn.py")
CHURN_C = os.path.join(HERE, "churn_lib.c")
# Debian's static, stripped interpreter: no libpython, no symbols but .dynsym.
DEBIAN_STATIC = "/usr/bin/python3.11"

# Every process started, so that cleanup can end them (each leads its own process group).
PROCS = []
WORK = None  # temporary directory
VERBOSE = True


def log(msg):
    if VERBOSE:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes


def spawn(cmd, cores=None, **kw):
    """Start `cmd` in its own process group; with `cores`, on those cores only (set before
    it execs, as `taskset -c` would)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    if cores is not None:
        kw["preexec_fn"] = lambda: os.sched_setaffinity(0, cores)
    PROCS[:] = [q for q in PROCS if q.returncode is None]
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    PROCS.append(p)
    return p


def end(p, grace=2.0):
    """End one process we started (its process group), SIGTERM then SIGKILL, and reap it."""
    if p.returncode is not None:
        if p.stdout:
            p.stdout.close()
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    finally:
        if p.stdout:
            p.stdout.close()


def cleanup():
    # Profilers were started after their targets: end them first, so no target is left
    # paused by a tracer.
    for p in reversed(PROCS):
        try:
            end(p)
        except Exception:
            pass
    PROCS.clear()


def run_timed(cmd, timeout, stdout=None, stderr=None, cores=None):
    """Run a profiler to completion. Returns (returncode, wall seconds, cpu seconds of the
    process and its waited-for children, from wait4's rusage). A watchdog sends SIGINT at
    `timeout` (profilers write their output on SIGINT), then SIGKILL 5 s later."""
    t0 = time.perf_counter()
    p = spawn(cmd, cores=cores, stdout=stdout or subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)

    def watchdog():
        for sig, delay in ((signal.SIGINT, timeout), (signal.SIGKILL, 5.0)):
            if done.wait(delay):
                return
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return

    done = threading.Event()
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        done.set()
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, wall, ru.ru_utime + ru.ru_stime


def start_target(script, args, py, settle=0.5, wait_ready=False, cores=None):
    """Start a Python target; give it `settle` seconds to create its threads."""
    p = spawn([py, script] + [str(a) for a in args], cores=cores, stdout=subprocess.PIPE, text=True)
    if wait_ready:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("target %s did not start: %r" % (script, line))
    time.sleep(settle)
    if p.poll() is not None:
        raise RuntimeError("target %s exited early" % script)
    return p


# ----------------------------------------------------------------------------- parsing


def raw_samples(path):
    """Thread-samples in a folded-stacks file: the sum of the counts."""
    total = 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip()
                if not line:
                    continue
                try:
                    total += int(line.rsplit(" ", 1)[1])
                except (IndexError, ValueError):
                    pass
    except FileNotFoundError:
        return 0
    return total


def strace_counts(path):
    """{syscall: calls} from an `strace -c` summary."""
    out = {}
    with open(path) as f:
        for line in f:
            tok = line.split()
            if len(tok) >= 5 and re.match(r"^[\d.]+$", tok[0]) and tok[-1] != "total":
                try:
                    out[tok[-1]] = int(tok[3])
                except ValueError:
                    pass
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if abs(x) >= 1000:
        return "%.0f" % x
    if abs(x) >= 100:
        return "%.1f" % x
    return ("%%.%df" % digits) % x


# ----------------------------------------------------------------------------- the profilers


class Profilers:
    def __init__(self, prof, pyspy):
        self.bin = {"prof": prof, "py-spy": pyspy}

    def record(self, who, pid, rate, duration, out, idle=False, nonblocking=False, native=False):
        # py-spy takes whole seconds and whole Hz only.
        cmd = [self.bin[who], "record", "-p", str(pid), "-r", str(int(rate)),
               "-d", str(int(math.ceil(duration))),
               "-f", "raw", "-o", out]
        if idle:
            cmd.append("--idle")
        if nonblocking:
            cmd.append("--nonblocking")
        if native:
            cmd.append("--native")
        return cmd

    def dump(self, who, pid, nonblocking=False, native=False):
        cmd = [self.bin[who], "dump", "-p", str(pid)]
        if nonblocking:
            cmd.append("--nonblocking")
        if native:
            cmd.append("--native")
        return cmd


def order(rep, items):
    """Alternate which one goes first from one repetition to the next."""
    return list(items) if rep % 2 == 0 else list(reversed(items))


WHO = ("prof", "py-spy")


# ----------------------------------------------------------------------------- 1. dump


def bench_dump(P, a, res):
    log("== 1. dump (%d dumps each, threads8 target)" % a.dumps)
    t = start_target(THREADS8, [a.dumps * 2 + 60], a.python, settle=0.8)
    try:
        for mode in ("default", "nonblocking"):
            nb = mode == "nonblocking"
            walls = {w: [] for w in WHO}
            cpus = {w: [] for w in WHO}
            threads = {w: [] for w in WHO}
            for rep in range(a.dumps):
                for who in order(rep, WHO):
                    outp = os.path.join(WORK, "dump.txt")
                    with open(outp, "w") as f:
                        rc, wall, cpu = run_timed(P.dump(who, t.pid, nb), 30, stdout=f)
                    if rc == 0:
                        walls[who].append(wall * 1000)
                        cpus[who].append(cpu * 1000)
                        with open(outp) as f:
                            threads[who].append(sum(1 for l in f if l.startswith("Thread ")))
            reads = {w: [] for w in WHO}
            for rep in range(a.strace_dumps):
                for who in order(rep, WHO):
                    sc = os.path.join(WORK, "dump.strace")
                    cmd = ["strace", "-c", "-f", "-e", "trace=process_vm_readv", "-o", sc] + \
                        P.dump(who, t.pid, nb)
                    rc, _, _ = run_timed(cmd, 60)
                    if rc == 0 and os.path.exists(sc):
                        reads[who].append(strace_counts(sc).get("process_vm_readv", 0))
            for who in WHO:
                th = med(threads[who])
                r = med(reads[who])
                res["dump_ms", mode, who] = med(walls[who])
                res["dump_cpu_ms", mode, who] = med(cpus[who])
                res["dump_reads_per_thread", mode, who] = r / th if r is not None and th else None
                res["dump_threads", mode, who] = th
                log("   %-6s %-11s %s ms/dump, %s threads, %s reads" %
                    (who, mode, fmt(med(walls[who])), th, r))
    finally:
        end(t)


# ----------------------------------------------------------------------------- 2. record CPU


RECORD_TARGETS = (("threads8", THREADS8, True), ("deep", DEEP, True))


def timed_record(P, a, who, script, rate, idle, nonblocking=False, native=False, cores=None):
    """One `record -f raw` of a fresh target: (thread-samples, wall s, CPU s); with
    `cores`, the target and the profiler both on those cores only."""
    # The target outlives -d a little: a profiler that falls behind (py-spy counts samples,
    # not seconds) stops when it exits.
    t = start_target(script, [a.record_secs + 1.5], a.python, cores=cores)
    try:
        out = os.path.join(WORK, "rec.txt")
        if os.path.exists(out):
            os.unlink(out)
        cmd = P.record(who, t.pid, rate, a.record_secs, out, idle=idle,
                       nonblocking=nonblocking, native=native)
        rc, wall, c = run_timed(cmd, a.record_secs + 30, cores=cores)
    finally:
        end(t)
    return raw_samples(out), wall, c


def bench_record(P, a, res):
    log("== 2. record CPU per 1000 thread-samples (-r 1000 -d %s, %d reps)" % (a.record_secs, a.reps))
    for name, script, idle in RECORD_TARGETS:
        for mode in ("default", "nonblocking"):
            cpu = {w: [] for w in WHO}
            rates = {w: [] for w in WHO}
            for rep in range(a.reps):
                for who in order(rep, WHO):
                    n, wall, c = timed_record(P, a, who, script, 1000, idle,
                                              nonblocking=mode == "nonblocking")
                    if n:
                        cpu[who].append(c / n * 1000 * 1000)  # ms per 1000 thread-samples
                        rates[who].append(n / wall)
                    log("   %-8s %-11s %-6s cpu %.3fs, %d thread-samples, wall %.2fs" %
                        (name, mode, who, c, n, wall))
            for who in WHO:
                res["cpu_per_1k", name, mode, who] = med(cpu[who])
                res["rec_rate", name, mode, who] = med(rates[who])


# ----------------------------------------------------------------------------- 3. reads / sample


def strace_record(P, who, script, py, secs, rate, idle, syscalls=None):
    """(syscall counts, thread-samples) of one record run under strace -c -f."""
    t = start_target(script, [secs + 1.5], py)
    try:
        out = os.path.join(WORK, "strace-rec.txt")
        sc = os.path.join(WORK, "rec.strace")
        for f in (out, sc):
            if os.path.exists(f):
                os.unlink(f)
        cmd = ["strace", "-c", "-f"]
        if syscalls:
            cmd += ["-e", "trace=" + syscalls]
        cmd += ["-o", sc] + P.record(who, t.pid, rate, secs, out, idle=idle)
        run_timed(cmd, secs + 30)
    finally:
        end(t)
    counts = strace_counts(sc) if os.path.exists(sc) else {}
    return counts, raw_samples(out)


def steady_state(P, a, who, script, idle, syscalls):
    """Per thread-sample syscall counts: (long run - short run) / (samples difference)."""
    long_c, long_n = strace_record(P, who, script, a.python, a.strace_long, a.strace_rate, idle, syscalls)
    short_c, short_n = strace_record(P, who, script, a.python, a.strace_short, a.strace_rate, idle, syscalls)
    dn = long_n - short_n
    if dn <= 0:
        return None, long_n, short_n
    per = {k: (long_c.get(k, 0) - short_c.get(k, 0)) / dn for k in set(long_c) | set(short_c)}
    return per, long_n, short_n


def bench_reads(P, a, res):
    log("== 3. process_vm_readv per thread-sample, steady state (%ss - %ss record, -r %d, under strace)"
        % (a.strace_long, a.strace_short, a.strace_rate))
    for name, script, idle in RECORD_TARGETS:
        for who in WHO:
            per, ln, sn = steady_state(P, a, who, script, idle, "process_vm_readv")
            v = per.get("process_vm_readv") if per else None
            res["reads_per_sample", name, who] = v
            log("   %-8s %-6s %s reads/thread-sample (%d - %d thread-samples)" % (name, who, fmt(v), ln, sn))


def bench_breakdown(P, a, res):
    """Every syscall per thread-sample in steady state, and a perf profile of prof."""
    log("== breakdown: all syscalls per thread-sample (strace -c -f, %ss - %ss)" % (a.strace_long, a.strace_short))
    for name, script, idle in RECORD_TARGETS:
        for who in WHO:
            per, ln, sn = steady_state(P, a, who, script, idle, None)
            if per:
                top = sorted(((v, k) for k, v in per.items() if v > 0.005), reverse=True)
                res["breakdown", name, who] = [(k, round(v, 3)) for v, k in top]
                log("   %-8s %-6s %s" % (name, who, ", ".join("%s %.2f" % (k, v) for v, k in top[:12])))
            else:
                log("   %-8s %-6s no steady-state figure (%d - %d thread-samples)" % (name, who, ln, sn))
    if not shutil.which("perf"):
        return
    log("== breakdown: perf record -e cpu-clock of prof record (-r 1000 -d %s)" % a.record_secs)
    for name, script, idle in RECORD_TARGETS:
        t = start_target(script, [a.record_secs + 1.5], a.python)
        data = os.path.join(WORK, "perf.data")
        try:
            cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-g", "-o", data, "--"] + \
                P.record("prof", t.pid, 1000, a.record_secs, os.path.join(WORK, "perf-rec.txt"), idle=idle)
            rc, _, _ = run_timed(cmd, a.record_secs + 30)
        finally:
            end(t)
        if rc != 0 or not os.path.exists(data):
            log("   perf did not work here (rc %s)" % rc)
            return
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym",
                              "--stdio", "-g", "none", "--percent-limit", "1.5"],
                             capture_output=True, text=True).stdout
        lines = [l for l in rep.splitlines() if l.strip() and not l.startswith("#")]
        res["perf", name] = lines[:25]
        log("   %s:\n      %s" % (name, "\n      ".join(lines[:25])))


# ----------------------------------------------------------------------------- 4. achieved rate


def bench_rate(P, a, res):
    log("== 4. achieved rate at -r 10000 --nonblocking, deep target, %ss (%d reps)" % (a.rate_secs, a.reps))
    rates = {w: [] for w in WHO}
    window_rates = {w: [] for w in WHO}
    cpu_pct = {w: [] for w in WHO}
    self_reported = []
    for rep in range(a.reps):
        for who in order(rep, WHO):
            t = start_target(DEEP, [a.rate_secs + 1.0], a.python)
            err = os.path.join(WORK, "rate.err")
            out = os.path.join(WORK, "rate.txt")
            if os.path.exists(out):
                os.unlink(out)
            try:
                with open(err, "w") as ef:
                    cmd = P.record(who, t.pid, 10000, a.rate_secs, out, idle=True, nonblocking=True)
                    rc, wall, cpu = run_timed(cmd, a.rate_secs + 20, stderr=ef)
            finally:
                end(t)
            n = raw_samples(out)
            # thread-samples per second of the profiler's wall time (start-up included, for
            # both); the deep target has one thread, so this is also ticks per second.
            rates[who].append(n / wall if n else None)
            # ... and per second of -d, the window sampled: what "-r 10000 reaches 10,000/s"
            # means. The wall time adds attach and the writing of the output, so no profiler
            # can reach the requested rate by the first figure.
            window_rates[who].append(n / a.rate_secs if n else None)
            # CPU (user + system, start-up included) per second of the profiler's wall time.
            cpu_pct[who].append(100.0 * cpu / wall)
            if who == "prof":
                m = re.search(r"([\d.]+) Hz achieved", open(err).read())
                if m:
                    self_reported.append(float(m.group(1)))
            log("   %-6s %d thread-samples in %.2fs wall = %.0f/s" % (who, n, wall, n / wall))
    for who in WHO:
        res["rate10k", who] = med(rates[who])
        res["rate10k_window", who] = med(window_rates[who])
        res["rate10k_cpu_pct", who] = med(cpu_pct[who])
    res["rate10k_prof_self"] = med(self_reported)


# ----------------------------------------------------------------------------- 10. many threads

THREAD_CONFIGS = (("-r 1000", 1000, False), ("-r 100 --idle", 100, True))


def bench_threads(P, a, res):
    secs = a.record_secs
    log("== 10. 1,000 threads (10 busy, 990 idle), -d %s, %d reps" % (secs, a.reps))
    for label, rate, idle in THREAD_CONFIGS:
        per_s = {w: [] for w in WHO}
        cpu = {w: [] for w in WHO}
        hz = []
        for rep in range(a.reps):
            for who in order(rep, WHO):
                # Outlives -d: py-spy, which counts samples rather than seconds, stops when
                # the target exits.
                t = start_target(THREADS1000, [secs + 3], a.python, settle=0.5, wait_ready=True)
                out = os.path.join(WORK, "thr.txt")
                err = os.path.join(WORK, "thr.err")
                if os.path.exists(out):
                    os.unlink(out)
                try:
                    with open(err, "w") as ef:
                        cmd = P.record(who, t.pid, rate, secs, out, idle=idle)
                        rc, wall, c = run_timed(cmd, secs + 60, stderr=ef)
                finally:
                    end(t)
                n = raw_samples(out)
                per_s[who].append(n / wall if n else None)
                cpu[who].append(100 * c / wall)
                line = ""
                if who == "prof":
                    m = re.search(r"([\d.]+) Hz achieved", open(err).read())
                    if m:
                        hz.append(float(m.group(1)))
                        line = ", %s Hz achieved" % m.group(1)
                log("   %-14s %-6s %d thread-samples in %.2fs wall, CPU %.2fs (%.0f%% of a core)%s" %
                    (label, who, n, wall, c, 100 * c / wall, line))
        for who in WHO:
            res["thr1000_rate", label, who] = med(per_s[who])
            res["thr1000_cpu", label, who] = med(cpu[who])
        res["thr1000_hz", label] = med(hz)


# ----------------------------------------------------------------------------- 5. slowdown


def spin_run(P, a, who, rate, nonblocking, idle_threads, native=False):
    """One run of the spin target, alone (who=None) or under `record`: its JSON report
    (rate, oncpu, queued, stopped) plus the profiler's thread-samples, or None."""
    args = ["--warmup", a.warmup, "--seconds", a.window, "--idle-threads", idle_threads]
    t = start_target(SPIN, args, a.python, settle=0, wait_ready=True)
    prof_proc = None
    out = os.path.join(WORK, "slow.txt")
    if os.path.exists(out):
        os.unlink(out)
    try:
        if who:
            # -d covers the whole run; the profiler stops when the target exits.
            cmd = P.record(who, t.pid, rate, a.warmup + a.window + 5, out, nonblocking=nonblocking,
                           native=native)
            started = time.perf_counter()
            prof_proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        line = ""
        timer = threading.Timer(a.warmup + a.window + 60, lambda: end(t, 0.5))
        timer.start()
        try:
            for line in t.stdout:
                if line.startswith("{"):
                    break
        finally:
            timer.cancel()
        t.wait(10)
        prof_cpu = None
        if prof_proc:
            # The profiler stops when the target exits; reap it with its rusage.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                pid, status, ru = os.wait4(prof_proc.pid, os.WNOHANG)
                if pid:
                    prof_proc.returncode = os.waitstatus_to_exitcode(status)
                    prof_cpu = (ru.ru_utime + ru.ru_stime, time.perf_counter() - started)
                    break
                time.sleep(0.01)
            else:
                end(prof_proc)
        if not line.startswith("{"):
            return None
        r = json.loads(line)
        r["samples"] = raw_samples(out) if who else 0
        if prof_cpu:
            # The profiler's CPU time as a share of one core over its whole run.
            r["prof_cpu_pct"] = 100 * prof_cpu[0] / prof_cpu[1]
        if who and not r["samples"]:
            # A profiler that failed to sample slowed nothing down: no figure.
            log("   !! %s wrote no samples: run not counted" % who)
            return None
        # The rate the target would have had with a CPU to itself: time spent runnable but
        # queued behind other processes (the shared machine's load) is taken out; time
        # stopped by the profiler and any slower progress on CPU stay in.
        if "queued" in r:
            r["own_rate"] = r["chunks"] / (r["window"] - r["queued"])
        return r
    finally:
        if prof_proc:
            end(prof_proc)
        end(t)


def bench_slowdown(P, a, res):
    log("== 5. target slowdown (%ss window after %ss warm-up, %d reps)" % (a.window, a.warmup, a.slow_reps))
    # The alone run, which every slowdown is divided by, comes twice per repetition.
    ALONE = (None, 0, False)
    cases = [
        ("cpu", 0, [ALONE] + [(w, r, nb) for r in (100, 1000) for nb in (False, True) for w in WHO]),
        ("idle100", 100, [ALONE] + [(w, 100, nb) for nb in (False, True) for w in WHO]),
    ]
    for name, idle_threads, configs in cases:
        runs = {c: [] for c in configs}
        half = len(configs) // 2
        plan = configs[:half] + [ALONE] + configs[half:]
        for rep in range(a.slow_reps):
            # Rotate the order every repetition (and reverse it every other one) so that
            # drift in the machine's load does not always hit the same configuration.
            k = rep % len(plan)
            seq = plan[k:] + plan[:k]
            if rep % 2:
                seq.reverse()
            for c in seq:
                r = spin_run(P, a, c[0], c[1], c[2], idle_threads)
                if r:
                    runs[c].append(r)
                    log("   %-8s %-6s %5s Hz %-11s %8.1f chunks/s wall, %8.1f own-core; "
                        "on CPU %4.1f%%, queued %4.1f%%, stopped %5.2f%%%s" % (
                            name, c[0] or "alone", c[1] or "-", "nonblocking" if c[2] else "default",
                            r["rate"], r.get("own_rate", 0), 100 * r.get("oncpu", 0) / r["window"],
                            100 * r.get("queued", 0) / r["window"], 100 * r.get("stopped", 0) / r["window"],
                            " (%d thread-samples, profiler %.1f%% of a core)" % (
                                r["samples"], r.get("prof_cpu_pct", -1)) if r["samples"] else ""))
        alone = runs[configs[0]]
        a_wall = med([r["rate"] for r in alone])
        a_own = med([r.get("own_rate") for r in alone])
        res["slow_alone", name] = a_wall
        res["slow_alone_n", name] = len(alone)
        if alone:
            # The noise floor: how far apart the alone runs themselves are (max/min), and
            # their interquartile spread as a fraction of the median (used by the verdicts).
            def spread(xs):
                xs = sorted(xs)
                if len(xs) < 4:
                    return (xs[-1] - xs[0]) / statistics.median(xs)
                q = statistics.quantiles(xs, n=4)
                return (q[2] - q[0]) / statistics.median(xs)
            walls = [r["rate"] for r in alone]
            owns = [r.get("own_rate", 1) for r in alone]
            res["slow_alone_spread", name] = (max(walls) / min(walls), max(owns) / min(owns))
            res["slow_alone_noise", name] = (spread(walls), spread(owns))
        for c in configs[1:]:
            mode = "nonblocking" if c[2] else "default"
            w = med([r["rate"] for r in runs[c]])
            o = med([r.get("own_rate") for r in runs[c]])
            res["slowdown", name, c[0], c[1], mode] = a_wall / w if a_wall and w else None
            res["slowdown_own", name, c[0], c[1], mode] = a_own / o if a_own and o else None
            res["prof_cpu_pct", name, c[0], c[1], mode] = med([r.get("prof_cpu_pct") for r in runs[c]])
            res["stopped_pct", name, c[0], c[1], mode] = med(
                [100 * r.get("stopped", 0) / r["window"] for r in runs[c]])


# ----------------------------------------------------------------------------- 6. --native


def bench_native(P, a, res):
    log("== 6. --native: cost per thread-sample, first sample, slowdown (%d reps)" % a.reps)
    # Cost: record --native at 100 Hz (py-spy's default rate, and what --native is for).
    for name, script, idle in RECORD_TARGETS:
        cpu = {w: [] for w in WHO}
        for rep in range(a.reps):
            for who in order(rep, WHO):
                n, wall, c = timed_record(P, a, who, script, 100, idle, native=True)
                if n:
                    cpu[who].append(c / n * 1e6)  # µs per thread-sample
                log("   %-8s %-6s cpu %.3fs, %d thread-samples" % (name, who, c, n))
        for who in WHO:
            res["native_us", name, who] = med(cpu[who])
    # First sample: a whole `dump --native` of a fresh prof (attach, module and DWARF
    # loading, one unwind and symbolization of a 120-frame stack) on the busy deep target,
    # running in a pyenv libpython that carries full DWARF.
    t = start_target(DEEP, [120], a.python, settle=0.8)
    try:
        walls = {w: [] for w in WHO}
        for rep in range(max(a.reps, 3)):
            for who in order(rep, WHO):
                rc, wall, _ = run_timed(P.dump(who, t.pid, native=True), 60,
                                        stdout=subprocess.DEVNULL)
                if rc == 0:
                    walls[who].append(wall * 1000)
        for who in WHO:
            res["native_first_ms", who] = med(walls[who])
            log("   first sample %-6s %s ms" % (who, fmt(med(walls[who]))))
    finally:
        end(t)
    # Slowdown at 100 Hz with --native.
    alone, runs = [], {w: [] for w in WHO}
    for rep in range(a.slow_reps):
        for who in order(rep, (None,) + WHO):
            r = spin_run(P, a, who, 100, False, 0, native=True)
            if r:
                (runs[who] if who else alone).append(r)
    a_wall = med([r["rate"] for r in alone])
    a_own = med([r.get("own_rate") for r in alone])
    for who in WHO:
        w = med([r["rate"] for r in runs[who]])
        o = med([r.get("own_rate") for r in runs[who]])
        res["native_slow", who] = a_wall / w if a_wall and w else None
        res["native_slow_own", who] = a_own / o if a_own and o else None
        res["native_stopped", who] = med([100 * r.get("stopped", 0) / r["window"] for r in runs[who]])


# ----------------------------------------------------------------------------- 8. native memory


def status_kb(pid, field):
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS), or None once the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kb(cmd, timeout):
    """Run a profiler to completion; its VmHWM (kB) as last read before it exited. The
    kernel keeps the high-water mark itself, so polling every 50 ms misses no peak."""
    p = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hwm = None
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        v = status_kb(p.pid, "VmHWM")
        if v is not None:
            hwm = v
        time.sleep(0.05)
    end(p)
    return hwm if p.returncode == 0 else None


def native_pythons(a):
    """(label, interpreter) pairs for measurement 8: the --python target, and Debian's
    static, stripped 3.11 when it is installed."""
    out = [("python %s" % a.version, a.python)]
    if os.path.exists(DEBIAN_STATIC) and os.path.realpath(a.python) != os.path.realpath(DEBIAN_STATIC):
        out.append(("debian static 3.11", DEBIAN_STATIC))
    else:
        log("   (no %s: the static, stripped interpreter is skipped)" % DEBIAN_STATIC)
    return out


def bench_native_memory(P, a, res):
    secs = 10 if not a.quick else 4
    log("== 8. --native memory and start-up: VmHWM of record --native -r 100 -d %d, dump --native "
        "wall ms (%d reps)" % (secs, a.reps))
    for label, py in native_pythons(a):
        hwm = {w: [] for w in WHO}
        for rep in range(a.reps):
            for who in order(rep, WHO):
                t = start_target(DEEP, [secs + 5], py, settle=0.8)
                try:
                    out = os.path.join(WORK, "mem.txt")
                    kb = peak_rss_kb(P.record(who, t.pid, 100, secs, out, native=True), secs + 30)
                finally:
                    end(t)
                if kb:
                    hwm[who].append(kb / 1024)
                log("   %-20s %-6s VmHWM %s MiB" % (label, who, fmt(kb and kb / 1024, 1)))
        t = start_target(DEEP, [60], py, settle=0.8)
        try:
            walls = {w: [] for w in WHO}
            cpus = {w: [] for w in WHO}
            for rep in range(max(a.reps, 5)):
                for who in order(rep, WHO):
                    rc, wall, cpu = run_timed(P.dump(who, t.pid, native=True), 60, stdout=subprocess.DEVNULL)
                    if rc == 0:
                        walls[who].append(wall * 1000)
                        cpus[who].append(cpu * 1000)
        finally:
            end(t)
        for who in WHO:
            res["native_hwm_mib", label, who] = med(hwm[who])
            res["native_dump_ms", label, who] = med(walls[who])
            res["native_dump_cpu_ms", label, who] = med(cpus[who])
            log("   %-20s %-6s dump --native %s ms wall (%s), %s ms CPU (%s)" % (
                label, who, fmt(med(walls[who]), 1), " ".join("%.0f" % x for x in walls[who]),
                fmt(med(cpus[who]), 1), " ".join("%.0f" % x for x in cpus[who])))


# ----------------------------------------------------------------------------- 9. soak


def bench_soak(P, a, res):
    """prof alone (two tracers cannot stop the same threads): RSS every minute."""
    minutes = a.soak
    log("== 9. soak: record --native -r 1000 for %d min on a dlopen/dlclose churn target" % minutes)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        log("   skipped: no C compiler (gcc or cc) to build bench/churn_lib.c")
        return
    lib = os.path.join(WORK, "libchurn.so")
    # With DWARF: its frames are named by file and line, the same in every copy.
    subprocess.run([gcc, "-O2", "-g", "-shared", "-fPIC", "-o", lib, CHURN_C], check=True)
    secs = minutes * 60
    t = start_target(CHURN, [lib, secs + 30], a.python, wait_ready=True)
    try:
        out = os.path.join(WORK, "soak.txt")
        cmd = P.record("prof", t.pid, 1000, secs, out, native=True)
        if a.soak_function:
            cmd.append("-F")
        p = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        series = []
        start = time.time()
        for minute in range(1, minutes + 1):
            while time.time() < start + 60 * minute and p.poll() is None:
                time.sleep(1)
            rss, hwm = status_kb(p.pid, "VmRSS"), status_kb(p.pid, "VmHWM")
            if rss is None:
                break
            series.append((minute, rss / 1024, hwm / 1024))
            log("   minute %3d: RSS %.1f MiB, VmHWM %.1f MiB" % series[-1])
        end(p)
    finally:
        end(t)
    res["soak"] = series


# ----------------------------------------------------------------------------- report


# ----------------------------------------------------------------------------- 7. tick floor


FLOOR_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")
# What prof copies per tick on deep.py: its 16 KiB data-stack chunk (seen with strace).
FLOOR_READ = 16384
# Each target's kinds of run, as (kind, --nonblocking): floor.c sleeping only, with one
# FLOOR_READ-byte copy (deep only: the tick goal's floor), with prof's own reads of one tick
# in that mode; and prof itself in that mode.
FLOOR_TARGETS = (("deep", DEEP), ("threads8", THREADS8))
FLOOR_KINDS = (("sleep", False), ("read", False), ("prof_reads", False), ("prof", False),
               ("prof_reads", True), ("prof", True))

VM_READ = re.compile(r"process_vm_readv\(\d+, \[(.*)\], (\d+), \[(.*)\], (\d+), 0\) = (\d+)")


def build_floor(work):
    """bench/floor.c compiled into `work`, or None without a C compiler."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        return None
    exe = os.path.join(work, "floor")
    subprocess.run([gcc, "-O2", "-o", exe, FLOOR_C], check=True)
    return exe


def heap_read(pid):
    """floor.c's argument for one FLOOR_READ-byte copy from the start of `pid`'s heap."""
    with open("/proc/%d/maps" % pid) as f:
        heap = next(l for l in f if l.rstrip().endswith("[heap]"))
    return "%d/%s+%d" % (FLOOR_READ, heap.split("-")[0], FLOOR_READ)


def threads_of(pid):
    """How many threads `pid` has: the thread-samples of one `--idle` tick."""
    return len(os.listdir("/proc/%d/task" % pid))


def prof_reads(prof, pid, work, nonblocking=False):
    """The `process_vm_readv` calls of one tick of `prof record -r 1000 --idle` on `pid`, as
    floor.c arguments (LOCAL/REMOTE each), and prof's calls per tick: prof runs 1 s under
    strace. In the default mode a tick is a batch read followed by a read with fewer iovecs
    (the second look): of those pairs the commonest shape (iovec counts) is kept, from its
    last tick; with `nonblocking` a tick is the batch alone: the commonest call, its last."""
    trace = os.path.join(work, "floor.strace")
    out = os.path.join(work, "floor-rec.txt")
    # -s also bounds how many iovecs strace prints; the buffers' contents are dropped below.
    cmd = ["strace", "-f", "-s", "64", "-e", "trace=process_vm_readv", "-o", trace,
           prof, "record", "-p", str(pid), "-r", "1000", "-d", "1", "--idle", "-f", "raw", "-o", out]
    if nonblocking:
        cmd.append("--nonblocking")
    run_timed(cmd, 60)
    calls = []
    with open(trace) as f:
        for line in f:
            m = VM_READ.search(re.sub(r'"(?:[^"\\]|\\.)*"(?:\.\.\.)?', '""', line))
            if not m:
                continue
            local = [int(x) for x in re.findall(r"iov_len=(\d+)", m.group(1))]
            remote = re.findall(r"iov_base=0x([0-9a-f]+), iov_len=(\d+)", m.group(3))
            if len(local) != int(m.group(2)) or len(remote) != int(m.group(4)) or \
                    int(m.group(5)) != sum(local):
                continue  # abbreviated or short: not one to replay
            calls.append(("%s/%s" % (",".join(map(str, local)), ",".join("%s+%s" % r for r in remote)),
                          (len(local), len(remote), sum(local))))
    ticks = raw_samples(out) / threads_of(pid)
    if nonblocking:
        ticks_calls = [(c,) for c in calls]
    else:
        ticks_calls = [(calls[i - 1], calls[i]) for i in range(1, len(calls))
                       if calls[i - 1][1][1] > calls[i][1][1]]
    if not ticks_calls:
        return None, None
    # A shape is the calls' iovec counts: their lengths follow the stacks' depths.
    shape = lambda tick: tuple(c[1][:2] for c in tick)
    common = collections.Counter(map(shape, ticks_calls)).most_common(1)[0][0]
    tick = [t for t in ticks_calls if shape(t) == common][-1]
    return [c[0] for c in tick], (len(calls) / ticks if ticks else None)


def describe_reads(reads):
    return "; ".join("%d local and %d remote iovecs, %d bytes" % (
        len(r.split("/")[0].split(",")), len(r.split("/")[1].split(",")),
        sum(int(x) for x in r.split("/")[0].split(","))) for r in reads)


def floor_placements(a):
    """Measurement 7's placements: (key suffix, label, cores); pinned too with --pin."""
    out = [("", "unpinned", None)]
    if a.pin is not None:
        out.append(("_pinned", "pinned to core %d" % a.pin, {a.pin}))
    return out


def floor_label(kind, nonblocking):
    return kind + (" --nonblocking" if nonblocking else "")


def bench_floor(P, a, res):
    """CPU per thread-sample of a sampler that only sleeps (and copies one block, or makes
    exactly prof's reads of a tick in each mode), next to prof's in both modes, on the
    one-thread target (where a thread-sample is a tick) and on threads8 (9 a tick). With
    --pin, each repetition runs every kind twice: unpinned, and with the target, prof and
    floor.c all on one core."""
    exe = build_floor(WORK)
    if not exe:
        log("== 7. tick floor: skipped: no C compiler (gcc or cc) to build bench/floor.c")
        return
    if not shutil.which("strace"):
        log("   no strace: prof's own reads are not replayed")
    ticks = 1000 * a.record_secs
    places = floor_placements(a)
    for name, script in FLOOR_TARGETS:
        log("== 7. tick floor at 1000 Hz on %s: floor.c (sleep; sleep + one %d-byte read; sleep + "
            "prof's reads of one tick, each mode) vs prof (each mode), per thread-sample"
            % (name, FLOOR_READ))
        kinds = [k for k in FLOOR_KINDS if (k[0] != "read" or name == "deep")
                 and (k[0] != "prof_reads" or shutil.which("strace"))]
        got = {(suffix, k): [] for suffix, _, _ in places for k in kinds}
        for rep in range(a.reps):
            for suffix, where, cores in order(rep, places):
                for kind, nb in order(rep, kinds):
                    runs = got[suffix, (kind, nb)]
                    label = floor_label(kind, nb)
                    if kind == "prof":
                        n, wall, c = timed_record(P, a, "prof", script, 1000, True, nonblocking=nb,
                                                  cores=cores)
                        if n:
                            runs.append(c / n * 1e6)
                        log("   %-26s %-17s %s" % (label, where, runs[-1:] and "%.2f µs/thread-sample" % runs[-1]))
                        continue
                    t = start_target(script, [a.record_secs + 10], a.python, cores=cores)
                    try:
                        if kind == "read":
                            reads = [heap_read(t.pid)]
                        elif kind == "prof_reads":
                            reads, per_tick = prof_reads(P.bin["prof"], t.pid, WORK, nb)
                            if not reads:
                                log("   prof's reads not found in its strace")
                                continue
                            log("   prof's reads per tick (%s): %.2f; replayed: %s"
                                % (label, per_tick or 0, describe_reads(reads)))
                            res["floor_reads", name, nb] = reads
                        else:
                            reads = []
                        threads = threads_of(t.pid)
                        pre = (lambda cores=cores: os.sched_setaffinity(0, cores)) if cores else None
                        out = subprocess.run([exe, str(t.pid), "1000", str(ticks)] + reads, preexec_fn=pre,
                                             capture_output=True, text=True, timeout=a.record_secs + 60)
                        if out.returncode == 0:
                            runs.append(float(out.stdout) / threads)
                        else:
                            log("   floor failed: %s" % out.stderr.strip())
                    finally:
                        end(t)
                    log("   %-26s %-17s %s" % (label, where, runs[-1:] and "%.2f µs/thread-sample" % runs[-1]))
        for (suffix, (kind, nb)), xs in got.items():
            res["floor_us" + suffix, name, kind, nb] = med(xs)
            res["floor_runs" + suffix, name, kind, nb] = xs
    res["floor_load"] = os.getloadavg()


def ratio(p, s, higher_is_better=False):
    if p is None or s is None or p == 0 or s == 0:
        return "n/a"
    return "%.2f×" % (p / s)


def verdict(p, s, goal=None, higher_is_better=False, noise=0.0):
    """`noise`: differences smaller than this (absolute) are not told apart."""
    bits = []
    if goal is not None and p is not None:
        short = goal - p if higher_is_better else p - goal
        if short <= 0:
            bits.append("goal met")
        elif short <= noise:
            bits.append("at goal within noise")
        else:
            bits.append("MISSES goal")
    if p is not None and s is not None:
        if abs(p - s) <= noise:
            bits.append("same as py-spy within noise")
        else:
            better = p > s if higher_is_better else p < s
            bits.append("ahead of py-spy" if better else "BEHIND py-spy")
    return ", ".join(bits)


def table(res, a):
    rows = []

    def row(metric, p, s, goal_txt="", goal=None, hib=False, digits=2, noise=0.0):
        rows.append((metric, fmt(p, digits), fmt(s, digits), ratio(p, s), goal_txt,
                     verdict(p, s, goal, hib, noise)))

    for mode in ("default", "nonblocking"):
        if ("dump_ms", mode, "prof") in res:
            row("1. dump wall ms/dump (%s)" % mode, res["dump_ms", mode, "prof"], res.get(("dump_ms", mode, "py-spy")))
    for mode in ("default", "nonblocking"):
        if ("dump_cpu_ms", mode, "prof") in res:
            row("1. dump CPU ms/dump (%s)" % mode, res["dump_cpu_ms", mode, "prof"],
                res.get(("dump_cpu_ms", mode, "py-spy")))
    for mode in ("default", "nonblocking"):
        if ("dump_reads_per_thread", mode, "prof") in res:
            row("1. dump reads/thread (%s, %s threads)" % (mode, fmt(res["dump_threads", mode, "prof"], 0)),
                res["dump_reads_per_thread", mode, "prof"], res.get(("dump_reads_per_thread", mode, "py-spy")), digits=1)
    for name, _, _ in RECORD_TARGETS:
        for mode in ("default", "nonblocking"):
            if ("cpu_per_1k", name, mode, "prof") in res:
                # deep's goal is per tick, above the floor (measurement 7).
                goal = 4 if name == "threads8" else None
                row("2. CPU ms/1000 thread-samples, %s (%s)" % (name, mode),
                    res["cpu_per_1k", name, mode, "prof"], res.get(("cpu_per_1k", name, mode, "py-spy")),
                    "≤ 4" if goal else "", goal)
    for name, _, _ in RECORD_TARGETS:
        for mode in ("default", "nonblocking"):
            if ("rec_rate", name, mode, "prof") in res:
                row("2. (thread-samples/s in those runs) %s (%s)" % (name, mode),
                    res["rec_rate", name, mode, "prof"], res.get(("rec_rate", name, mode, "py-spy")), hib=True, digits=0)
    for name, _, _ in RECORD_TARGETS:
        if ("reads_per_sample", name, "prof") in res:
            row("3. reads/thread-sample steady, %s" % name,
                res["reads_per_sample", name, "prof"], res.get(("reads_per_sample", name, "py-spy")), "≤ 2", 2)
    if ("rate10k", "prof") in res:
        row("4. thread-samples/s at -r 10000 --nonblocking, deep", res["rate10k", "prof"],
            res.get(("rate10k", "py-spy")), "", None, True, 0)
        if ("rate10k_window", "prof") in res:
            row("4. thread-samples per second of -d, in those runs", res["rate10k_window", "prof"],
                res.get(("rate10k_window", "py-spy")), "≥ 10000", 10000, True, 0)
        if res.get("rate10k_prof_self"):
            rows.append(("4. (prof's own achieved-rate line)", fmt(res["rate10k_prof_self"], 0), "", "", "", ""))
        if ("rate10k_cpu_pct", "prof") in res:
            row("4. profiler CPU, % of one core, in those runs", res["rate10k_cpu_pct", "prof"],
                res.get(("rate10k_cpu_pct", "py-spy")), "< 25", 25, digits=1)
    for i, (kind, label) in enumerate((("slowdown", "wall clock"), ("slowdown_own", "own core"))):
        for key in sorted(k for k in res if isinstance(k, tuple) and k[0] == kind and k[2] == "prof"):
            _, name, _, rate, mode = key
            skey = (kind, name, "py-spy", rate, mode)
            # Noise: the spread (interquartile, as a ratio) of the alone runs themselves.
            noise = res.get(("slow_alone_noise", name), (0, 0))[i]
            row("5. slowdown (%s), %s @ %d Hz (%s)" % (label, name, rate, mode), res[key], res.get(skey),
                "≤ 1.05", 1.05, digits=3, noise=noise)
    for name, _, _ in RECORD_TARGETS:
        if ("native_us", name, "prof") in res:
            row("6. --native µs/thread-sample @ 100 Hz, %s" % name, res["native_us", name, "prof"],
                res.get(("native_us", name, "py-spy")), "≤ 40", 40, digits=1)
    if ("native_first_ms", "prof") in res:
        row("6. --native first sample: dump --native wall ms", res["native_first_ms", "prof"],
            res.get(("native_first_ms", "py-spy")), "≤ 100", 100, digits=1)
    for kind, label in (("native_slow", "wall clock"), ("native_slow_own", "own core")):
        if (kind, "prof") in res:
            row("6. --native slowdown (%s), cpu @ 100 Hz" % label, res[kind, "prof"],
                res.get((kind, "py-spy")), "", None, digits=3)
    if ("native_stopped", "prof") in res:
        rows.append(("6. (--native: % of the window the target was stopped)",
                     fmt(res["native_stopped", "prof"], 2), fmt(res.get(("native_stopped", "py-spy")), 2),
                     "", "", ""))
    for kind, label in (("stopped_pct", "% of the window the target was stopped"),
                        ("prof_cpu_pct", "profiler CPU, % of one core")):
        for key in sorted(k for k in res if isinstance(k, tuple) and k[0] == kind and k[2] == "prof"):
            _, name, _, rate, mode = key
            p, s = res[key], res.get((kind, name, "py-spy", rate, mode))
            rows.append(("5. (%s), %s @ %d Hz (%s)" % (label, name, rate, mode), fmt(p, 2), fmt(s, 2),
                         ratio(p, s) if kind == "prof_cpu_pct" else "", "",
                         verdict(p, s) if kind == "prof_cpu_pct" else ""))
    # With --pin, each of measurement 7's rows is followed by the same figure pinned to one
    # core: unpinned, where the scheduler puts the processes moves a run by ~10 µs.
    places = [(suffix, "" if not suffix else " [%s]" % label) for suffix, label, _ in floor_placements(a)]
    for name, _ in FLOOR_TARGETS:
        def floor_rows(label, value, goal_txt="", goal=None):
            for suffix, where in places:
                v = value(lambda k, nb=False: res.get(("floor_us" + suffix, name, k, nb)))
                if v is not None:
                    rows.append(("7. %s%s" % (label, where), fmt(v, 2), "", "", goal_txt,
                                 verdict(v, None, goal) if goal is not None else ""))

        def above(a_kind, a_nb, b_kind, b_nb=False):
            def f(floor):
                x, y = floor(a_kind, a_nb), floor(b_kind, b_nb)
                return x - y if x is not None and y is not None else None
            return f

        # µs per thread-sample (= ms per 1000); on deep a thread-sample is a tick.
        for kind, nb in FLOOR_KINDS:
            label = {"sleep": "floor.c, sleep only",
                     "read": "floor.c, sleep + one %d-byte process_vm_readv" % FLOOR_READ,
                     "prof_reads": "floor.c, sleep + prof's process_vm_readv calls of one tick",
                     "prof": "prof record"}[kind]
            floor_rows("CPU µs per thread-sample at 1000 Hz, %s (%s): %s"
                       % (name, "nonblocking" if nb else "default", label),
                       lambda floor, kind=kind, nb=nb: floor(kind, nb))
        for nb in (False, True):
            mode = "nonblocking" if nb else "default"
            if name == "deep":
                floor_rows("prof above the floor (sleep + read), µs per tick, deep (%s)" % mode,
                           above("prof", nb, "read"), "≤ 10", 10)
            floor_rows("prof above the floor of its own reads, µs per thread-sample, %s (%s)" % (name, mode),
                       above("prof", nb, "prof_reads", nb))
            floor_rows("prof's own reads above sleep only, µs per thread-sample, %s (%s)" % (name, mode),
                       above("prof_reads", nb, "sleep"))
    for key in sorted(k for k in res if isinstance(k, tuple) and k[0] == "native_hwm_mib" and k[2] == "prof"):
        label = key[1]
        row("8. --native peak RSS MiB (VmHWM, -r 100 -d 10), %s" % label, res[key],
            res.get(("native_hwm_mib", label, "py-spy")), "≤ 10", 10, digits=1)
        goal = 30 if label.startswith("python") else 10
        row("8. dump --native wall ms, %s" % label, res["native_dump_ms", label, "prof"],
            res.get(("native_dump_ms", label, "py-spy")), "≤ %d" % goal, goal, digits=1)
        row("8. dump --native CPU ms, %s" % label, res["native_dump_cpu_ms", label, "prof"],
            res.get(("native_dump_cpu_ms", label, "py-spy")), "", None, digits=1)
    if res.get("soak"):
        first, last = res["soak"][0], res["soak"][-1]
        rows.append(("9. soak RSS MiB, minute %d → minute %d (VmHWM at the end)" % (first[0], last[0]),
                     "%.1f → %.1f (%.1f)" % (first[1], last[1], last[2]), "", "", "flat", ""))
    for label, _, _ in THREAD_CONFIGS:
        if ("thr1000_rate", label, "prof") in res:
            goal = 500 if "1000" in label else 100
            if res.get(("thr1000_hz", label)) is not None:
                row("10. 1,000 threads: prof's achieved Hz, %s" % label, res["thr1000_hz", label], None,
                    "≥ %d" % goal, goal, True, 0)
            row("10. 1,000 threads: thread-samples/s, %s" % label, res["thr1000_rate", label, "prof"],
                res.get(("thr1000_rate", label, "py-spy")), "", None, True, 0)
            row("10. 1,000 threads: profiler CPU, %% of one core, %s" % label,
                res["thr1000_cpu", label, "prof"], res.get(("thr1000_cpu", label, "py-spy")), digits=1)
    lines = ["| measurement | prof | py-spy | prof/py-spy | goal | verdict |",
             "|---|---:|---:|---:|---|---|"]
    lines += ["| %s |" % " | ".join(r) for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def default_python():
    root = os.environ.get("PYENV_ROOT")
    if not root:
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        except FileNotFoundError:
            root = os.path.expanduser("~/.pyenv")
    found = sorted(glob.glob(os.path.join(root, "versions", "3.12.*", "bin", "python3")))
    return found[-1] if found else sys.executable


def default_pyspy():
    # A pyenv shim is a shell script that re-execs the real binary: its start-up would be
    # counted as py-spy's CPU time, so resolve it.
    path = shutil.which("py-spy")
    if path and "/shims/" in path:
        try:
            real = subprocess.run(["pyenv", "which", "py-spy"], capture_output=True, text=True).stdout.strip()
            if real:
                return real
        except FileNotFoundError:
            pass
    return path


def default_prof():
    if os.path.exists("/tmp/prof-bench-bin"):
        return "/tmp/prof-bench-bin"
    return os.path.join(REPO, "target", "release", "prof")


def main():
    global WORK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=None, help="interpreter for the targets (default: pyenv 3.12)")
    ap.add_argument("--prof", default=None, help="prof binary (default /tmp/prof-bench-bin, else target/release/prof)")
    ap.add_argument("--py-spy", dest="pyspy", default=None, help="py-spy binary")
    ap.add_argument("--quick", action="store_true", help="1 repetition, short runs (~2 min)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8,10", help="comma-separated measurements to run")
    ap.add_argument("--breakdown", action="store_true", help="also full strace -c breakdown and perf profile")
    ap.add_argument("--window", type=float, default=3.0,
                    help="slowdown: measured seconds per run (default 3: more, shorter runs beat fewer "
                         "long ones on a shared machine, and keep the total within ~10 minutes)")
    ap.add_argument("--slow-reps", type=int, default=5, help="slowdown: repetitions (default 5)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write raw results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--soak", type=int, default=0, metavar="MINUTES",
                    help="also measurement 9: RSS of a MINUTES-long record --native (20 in the README, 60 for the hour)")
    ap.add_argument("--pin", type=int, default=None, metavar="CORE",
                    help="measurement 7 also with the target, prof and floor.c all on core CORE, "
                         "reported beside the unpinned figures")
    ap.add_argument("--soak-function", action="store_true",
                    help="soak with -F (aggregate by function), so new lines of the profile do not count")
    a = ap.parse_args()
    a.python = a.python or default_python()
    a.prof = a.prof or default_prof()
    a.pyspy = a.pyspy or default_pyspy()
    a.dumps, a.strace_dumps = 10, 3
    a.record_secs = 5
    a.strace_long, a.strace_short, a.strace_rate = 10, 2, 250
    a.rate_secs = 5
    a.warmup = 0.8
    if a.quick:
        a.reps = 1
        a.slow_reps = 1
        a.dumps, a.strace_dumps = 3, 1
        a.record_secs = 2
        a.strace_long, a.strace_short = 4, 1
        a.rate_secs = 2
        a.window = min(a.window, 2.0)
        a.warmup = 0.6
    only = set(a.only.split(","))
    if a.pin is not None and a.pin not in os.sched_getaffinity(0):
        sys.exit("run.py: --pin %d: not a core this process may run on (%s)" % (
            a.pin, ",".join(map(str, sorted(os.sched_getaffinity(0))))))
    for tool, path in (("prof", a.prof), ("py-spy", a.pyspy), ("python", a.python)):
        if not path or not os.path.exists(path):
            sys.exit("run.py: %s not found (%s)" % (tool, path))
    if ({"1", "3"} & only or a.breakdown) and not shutil.which("strace"):
        sys.exit("run.py: strace is needed for measurements 1 and 3")
    ver = subprocess.run([a.python, "-c", "import sys; print(sys.version.split()[0])"],
                         capture_output=True, text=True).stdout.strip()
    a.version = ver
    pv = subprocess.run([a.pyspy, "--version"], capture_output=True, text=True).stdout.strip()
    log("prof: %s\npy-spy: %s (%s)\ntargets: %s (Python %s)\ncores: %d, load: %s" % (
        a.prof, a.pyspy, pv, a.python, ver, os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg())))

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (e.g. `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    WORK = tempfile.mkdtemp(prefix="prof-bench-")
    P = Profilers(a.prof, a.pyspy)
    res = {}
    t0 = time.time()
    try:
        if "1" in only:
            bench_dump(P, a, res)
        if "2" in only:
            bench_record(P, a, res)
        if "3" in only:
            bench_reads(P, a, res)
        if "4" in only:
            bench_rate(P, a, res)
        if "5" in only:
            bench_slowdown(P, a, res)
        if "6" in only:
            bench_native(P, a, res)
        if "7" in only:
            bench_floor(P, a, res)
        if "8" in only:
            bench_native_memory(P, a, res)
        if "10" in only:
            bench_threads(P, a, res)
        if a.soak:
            bench_soak(P, a, res)
        if a.breakdown:
            bench_breakdown(P, a, res)
    except KeyboardInterrupt:
        log("\ninterrupted: printing what was measured")
    finally:
        cleanup()
        if not a.keep:
            shutil.rmtree(WORK, ignore_errors=True)
        else:
            log("kept %s" % WORK)
    print()
    print("prof vs py-spy: %s targets, %d cores, load %s at the end, %d rep(s), %.0fs" % (
        "Python " + ver, os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg()),
        a.reps, time.time() - t0))
    print()
    print(table(res, a))
    for name in ("cpu", "idle100"):
        if ("slow_alone_spread", name) in res:
            sw, so = res["slow_alone_spread", name]
            nw, no = res["slow_alone_noise", name]
            print("\nslowdown noise, %s target (%d alone runs): max/min %.2f× wall clock, %.2f× own core; "
                  "interquartile %.1f%% / %.1f%% (differences below it are called a tie)" % (
                      name, res["slow_alone_n", name], sw, so, 100 * nw, 100 * no), end="")
    print()
    for name, _, _ in RECORD_TARGETS:
        for who in WHO:
            if ("breakdown", name, who) in res:
                print("\nsyscalls per thread-sample, %s, %s: %s" % (name, who, ", ".join(
                    "%s %.2f" % kv for kv in res["breakdown", name, who])))
        if ("perf", name) in res:
            print("\nperf (cpu-clock) of prof record, %s:\n    %s" % (name, "\n    ".join(res["perf", name])))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({" / ".join(map(str, k)) if isinstance(k, tuple) else k: v for k, v in res.items()},
                      f, indent=1)


if __name__ == "__main__":
    main()
