"""`prof record -s` target: a parent starting many short-lived Python children.

usage: rec_spawner.py OUTDIR COUNT [IN_FLIGHT]
       rec_spawner.py OUTDIR child SECONDS        (what each child runs)

The parent starts COUNT children through subprocess.Popen (which forks, or vforks,
then execs the interpreter again), keeping IN_FLIGHT (default 4) alive at a time.
(A child imports nothing of its own: it lives ~0.07 s on an idle machine.)
Each child burns CPU in child_work for SECONDS (0.06) of CPU time, then
prints its own pid; the parent checks that this is the pid it started. The
parent starts them in spawn_child and waits idle in parent_wait. At the end the parent writes OUTDIR/pids.json:
the children's pids and the functions' descriptions. Exits 0 only if every
child did.
"""

import os
import subprocess
import sys
import time

CHILD_SECONDS = 0.06


def child_work(seconds):
    # CPU time, not wall-clock time: on a loaded machine the child lives longer, as
    # the profiler, descheduled as often as the child, needs it to.
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def spawn_child(me, outdir):
    return subprocess.Popen(
        [sys.executable, me, outdir, "child", str(CHILD_SECONDS)],
        stdout=subprocess.PIPE,
    )


def parent_wait(child):
    out, _ = child.communicate()
    return out


def main():
    outdir = sys.argv[1]
    if sys.argv[2] == "child":
        child_work(float(sys.argv[3]))
        sys.stdout.write("%d\n" % os.getpid())
        return
    # Only the parent needs it: importing it (inspect, json...) would triple a child's
    # start-up time.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rec_common

    count = int(sys.argv[2])
    in_flight = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    me = os.path.abspath(__file__)
    running = []
    pids = []
    started = 0
    while started < count or running:
        while started < count and len(running) < in_flight:
            running.append(spawn_child(me, outdir))
            started += 1
        child = running.pop(0)
        out = parent_wait(child)
        if child.returncode != 0:
            rec_common.die("child %d failed with %r" % (child.pid, child.returncode))
        said = int(out.decode().strip())
        if said != child.pid:
            rec_common.die("child %d says its pid is %d" % (child.pid, said))
        pids.append(said)
    rec_common.write_json(
        outdir,
        "pids.json",
        {
            "parent": os.getpid(),
            "children": pids,
            "functions": rec_common.describe_functions(child_work, parent_wait),
        },
    )


if __name__ == "__main__":
    main()
