"""`prof record` launch target for tests/cli.rs: how prof passed the command line on.

usage: cli_argv.py OUTDIR [ARGS...]

Writes its whole argument list (OUTDIR included) to OUTDIR/argv.json, then keeps the
CPU busy in cli_argv_work for a second so that there is something to sample, and exits 0.
"""

import json
import os
import sys
import time


def cli_argv_work(seconds):
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return n


def main():
    outdir = sys.argv[1]
    tmp = os.path.join(outdir, "argv.json.tmp")
    with open(tmp, "w") as f:
        json.dump(sys.argv[1:], f)
    os.rename(tmp, os.path.join(outdir, "argv.json"))
    cli_argv_work(1.0)


if __name__ == "__main__":
    main()
