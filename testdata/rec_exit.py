"""`prof record` target: burns CPU in exit_burn, then ends in a chosen way.

usage: rec_exit.py OUTDIR SECONDS MODE

MODE is `0` or `3` (exit with that code) or `sigterm` (kill itself with
SIGTERM, so its parent sees a signal death, not an exit code). Before ending
it writes OUTDIR/ending.json, so the test knows the target got that far.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402


def exit_burn(seconds):
    # Long enough that prof samples it however slowly the interpreter starts.
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return n


def main():
    outdir, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    exit_burn(seconds)
    rec_common.write_json(outdir, "ending.json", {"pid": os.getpid(), "mode": mode})
    sys.stdout.flush()
    if mode == "sigterm":
        # The default action: no handler, no Python cleanup; a real signal death.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
        rec_common.die("still alive after SIGTERM")
    sys.exit(int(mode))


if __name__ == "__main__":
    main()
