"""N threads waiting on one Event for SECONDS (a thread pool with nothing to do); the main
thread writes its own soft limit on open files to OUT first, then joins them.

usage: diag_many.py OUT N SECONDS
"""
import resource
import sys
import threading
import time


def main():
    out, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with open(out, "w") as f:
        f.write(str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    done = threading.Event()
    threads = [threading.Thread(target=done.wait, name=f"pool-{i}") for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    done.set()
    for t in threads:
        t.join()


main()
