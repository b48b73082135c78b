"""`prof record` target for thread names in launch mode.

usage: rec_names.py OUTDIR busy SECONDS | OUTDIR sleep WAKES

The main thread first spins for a moment before anything imports `threading`, so
that a profiler launching it sees the thread before it has a name. Then:
  - busy: the main thread alone spins on, no other thread ever starts, and the
    process exits SECONDS after its start;
  - sleep: the main thread starts `napper`, a thread named by Python that sleeps
    from its start, and goes to sleep at once (napper writes ready.json). napper
    wakes WAKES times, each for NAP_CPU seconds of its own CPU time, then ends the
    process with the main thread still asleep: a profiler recording until the
    target exits has every wake in its window however late a loaded machine runs
    the target, and no last wake of the main thread at exit.
OUTDIR/ready.json gives the threads' names and native ids.
"""

import os
import sys
import time

# napper's CPU time per wake: a few samples at 100 Hz even when prof's ticks run late.
NAP_CPU = 0.05
# How long the main thread waits for napper to end the process before it gives up.
GIVE_UP = 60


def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass


def spin_cpu(seconds):
    """Spin until this thread has had `seconds` of CPU: a starved thread still runs as
    long as asked."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def main():
    start = time.time()
    spin(0.5)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import threading

    import rec_common

    outdir, mode, count = sys.argv[1], sys.argv[2], float(sys.argv[3])
    tids = {threading.current_thread().name: rec_common.native_id()}
    if mode == "busy":
        rec_common.write_ready(outdir, tids, spin)
        spin(start + count - time.time())
        return

    def nap():
        tids[threading.current_thread().name] = rec_common.native_id()
        rec_common.write_ready(outdir, tids, nap, spin_cpu)
        for _ in range(int(count)):
            time.sleep(0.2)
            spin_cpu(NAP_CPU)
        os._exit(0)

    threading.Thread(target=nap, name="napper", daemon=True).start()
    time.sleep(GIVE_UP)
    sys.exit("rec_names.py: napper did not end the process")


if __name__ == "__main__":
    main()
