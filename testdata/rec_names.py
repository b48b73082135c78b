"""`prof record` target for thread names in launch mode.

usage: rec_names.py OUTDIR busy|sleep SECONDS

The main thread first spins for a moment before anything imports `threading`, so
that a profiler launching it sees the thread before it has a name. Then:
  - busy: the main thread alone spins on, no other thread ever starts;
  - sleep: the main thread starts `napper`, a thread named by Python that sleeps
    from its start and wakes for a few milliseconds now and then, and goes to
    sleep at once (napper writes ready.json).
OUTDIR/ready.json gives the threads' names and native ids. The process exits
SECONDS after its start.
"""

import os
import sys
import time


def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass


def main():
    start = time.time()
    spin(0.5)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import threading

    import rec_common

    outdir, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    tids = {threading.current_thread().name: rec_common.native_id()}
    if mode == "busy":
        rec_common.write_ready(outdir, tids, spin)
        spin(start + seconds - time.time())
        return

    def nap():
        tids[threading.current_thread().name] = rec_common.native_id()
        rec_common.write_ready(outdir, tids, nap, spin)
        # Awake a fifth of the time: a few samples per wake at 100 Hz, so that a loaded
        # machine delaying prof's ticks still leaves it sampled (20 ms wakes were missed).
        while True:
            time.sleep(0.2)
            spin(0.05)

    threading.Thread(target=nap, name="napper", daemon=True).start()
    time.sleep(max(start + seconds - time.time(), 0))


if __name__ == "__main__":
    main()
