"""`prof record` launch-mode target for stop signals: leaves grandchildren behind.

usage: rec_signal.py OUTDIR

Starts two grandchildren with subprocess.Popen that would outlive it:
  - `plain`: sleeps forever, in the same process group;
  - `stubborn`: in a new session (so a process-group kill misses it), with
    SIGTERM, SIGINT and SIGHUP ignored (only SIGKILL ends it).
Both carry OUTDIR on their command line, so the test can tell them from an
unrelated process that reuses the pid. Once both are set up it writes
OUTDIR/pids.json, then burns CPU in signal_burn. On KeyboardInterrupt it
writes OUTDIR/interrupted.json and exits 42 without waiting for the
grandchildren; a SIGTERM kills it with the default action.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402

GRANDCHILD = """
import os, signal, sys, time
kind, outdir = sys.argv[1], sys.argv[2]
if kind == "stubborn":
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
open(os.path.join(outdir, "grandchild-%s.ready" % kind), "w").close()
while True:
    time.sleep(3600)
"""


def signal_burn():
    n = 0
    while True:
        n += 1


def main():
    outdir = sys.argv[1]
    plain = subprocess.Popen([sys.executable, "-c", GRANDCHILD, "plain", outdir])
    stubborn = subprocess.Popen(
        [sys.executable, "-c", GRANDCHILD, "stubborn", outdir], start_new_session=True
    )
    deadline = time.time() + 60
    for kind in ("plain", "stubborn"):
        while not os.path.exists(os.path.join(outdir, "grandchild-%s.ready" % kind)):
            if time.time() > deadline:
                rec_common.die("grandchild %s did not start" % kind)
            time.sleep(0.01)
    rec_common.write_json(
        outdir,
        "pids.json",
        {"child": os.getpid(), "grandchildren": [plain.pid, stubborn.pid]},
    )
    try:
        signal_burn()
    except KeyboardInterrupt:
        rec_common.write_json(outdir, "interrupted.json", {"code": 42})
        # os._exit: no Popen cleanup, no waiting; the grandchildren are orphaned.
        sys.stdout.flush()
        os._exit(42)


if __name__ == "__main__":
    main()
