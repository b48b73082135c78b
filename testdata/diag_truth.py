"""Truth for `prof diagnose` targets: each thread records how long it spent in each state,
measured around the calls themselves; `write` saves it for tests/diagnose.rs.

Time a thread does not account for (loop glue, interpreter start-up) counts as `python`.
"""
import json
import os
import threading
import time

_lock = threading.Lock()
_threads = {}


class Clock:
    """One thread's account: its life and the seconds it spent in each state."""

    def __init__(self, start=None):
        self.start = time.perf_counter() if start is None else start
        self.states = {}
        self.end = None

    def add(self, state, seconds):
        self.states[state] = self.states.get(state, 0.0) + seconds

    def stop(self):
        self.end = time.perf_counter()


def clock(name=None, start=None):
    """The account of the calling thread, opened now (or at `start`, a perf_counter())."""
    c = Clock(start)
    with _lock:
        _threads[name or threading.current_thread().name] = c
    return c


def write(path, **extra):
    """Write every account (closing those still open) and `extra` to `path`, atomically."""
    out = {"threads": {}}
    for name, c in _threads.items():
        if c.end is None:
            c.stop()
        out["threads"][name] = {"life": c.end - c.start, "states": c.states}
    out.update(extra)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
