"""Launch-mode target for tests/launch.rs: a chain of processes, each the child of the last.

usage: launch_tree.py OUTDIR DEPTH IGNORE END [LEVEL]

The launched command is level 1; level N starts level N+1 down to DEPTH. Level 2
starts its child in a new session, so that the deeper levels are outside prof's
process group and only their environment ties them to the test. Every level ignores
the signals named in IGNORE (comma-separated names without SIG, e.g. `INT,TERM`;
`-` for none), then writes OUTDIR/level-N.pid once its child has written its own:
OUTDIR/level-1.pid means the whole chain is up. Levels below the first sleep until
killed. Level 1 then does END: `exit` burns CPU in chain_burn for one second and
exits 0 without waiting for its child; `stay` burns CPU in chain_burn until killed.

Must stay valid on Python 3.7 through 3.15.
"""

import os
import signal
import subprocess
import sys
import time


def chain_burn(seconds):
    end = None if seconds is None else time.time() + seconds
    n = 0
    while end is None or time.time() < end:
        n += 1


def write_pid(outdir, level):
    path = os.path.join(outdir, "level-%d.pid" % level)
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)


def main():
    outdir, depth, ignore, end = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    level = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    if ignore != "-":
        for name in ignore.split(","):
            signal.signal(getattr(signal, "SIG" + name), signal.SIG_IGN)
    if level < depth:
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), outdir, str(depth), ignore, end,
             str(level + 1)],
            start_new_session=(level == 2),
        )
        below = os.path.join(outdir, "level-%d.pid" % (level + 1))
        deadline = time.time() + 60
        while not os.path.exists(below):
            if time.time() > deadline:
                sys.exit("level %d did not start" % (level + 1))
            time.sleep(0.01)
    write_pid(outdir, level)
    if level > 1:
        while True:
            time.sleep(3600)
    if end == "exit":
        chain_burn(1.0)
        sys.stdout.flush()
        os._exit(0)
    chain_burn(None)


if __name__ == "__main__":
    main()
