"""A target that replaces itself: phase 1 runs phase_a, then execs the same
interpreter on this script again (same pid, new image), and phase 2 runs phase_b.

usage: rec_exec.py OUTDIR SECONDS_A SECONDS_B [phase2]

Each phase burns CPU for its SECONDS of wall-clock time and writes
OUTDIR/phase1.json or OUTDIR/phase2.json (its pid and the functions' descriptions)
when it starts. Phase 1 writes ready.json too, so attach-mode tests can wait for
it. Phase 2 exits 0 when done.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rec_common  # noqa: E402


def burn(seconds):
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return n


def phase_a(seconds):
    return burn(seconds)


def phase_b(seconds):
    return burn(seconds)


def describe(name, outdir):
    info = {
        "pid": os.getpid(),
        "version": list(sys.version_info[:3]),
        "functions": rec_common.describe_functions(phase_a, phase_b, burn),
    }
    rec_common.write_json(outdir, name, info)


def main():
    outdir, seconds_a, seconds_b = sys.argv[1], sys.argv[2], sys.argv[3]
    if len(sys.argv) > 4 and sys.argv[4] == "phase2":
        describe("phase2.json", outdir)
        phase_b(float(seconds_b))
        return
    describe("phase1.json", outdir)
    describe("ready.json", outdir)
    phase_a(float(seconds_a))
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), outdir, seconds_a, seconds_b, "phase2"])


if __name__ == "__main__":
    main()
