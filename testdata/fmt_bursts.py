"""Target of tests/formats.rs: one thread that alternates CPU bursts with sleeps.

usage: fmt_bursts.py OUTDIR SECONDS

main -> cycle -> (burst, then pause) until SECONDS have passed, then exits 0.
burst spins for about 30 ms, pause sleeps for about 30 ms: without --idle the
pauses are ticks in which the thread is not sampled. OUTDIR/ready.json
describes the functions (name, file, def line, last line) and the thread.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

SPAN = 0.03


def burst():
    end = time.time() + SPAN
    while time.time() < end:
        pass


def pause():
    time.sleep(SPAN)


def cycle(deadline):
    while time.time() < deadline:
        burst()
        pause()


def main():
    outdir = sys.argv[1]
    deadline = time.time() + float(sys.argv[2])
    rec_common.write_ready(
        outdir,
        {threading.current_thread().name: rec_common.native_id()},
        burst,
        pause,
        cycle,
        main,
    )
    cycle(deadline)


if __name__ == "__main__":
    main()
