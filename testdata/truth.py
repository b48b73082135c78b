"""Ground truth for prof's integration tests.

A target script parks each of its threads with ``park(snapshot(), kind)``
written on ONE line: ``snapshot()`` records the caller's frames as the
interpreter itself sees them, and because the call to ``park`` is on the same
line, every recorded line is exactly the line prof must report while the
thread sits in ``park``.  Once every thread has parked, a short-lived writer
thread writes ``<outdir>/ready.json`` (atomically) and exits, so the test sees
the process with only the threads described in the file.

Must stay valid on Python 3.7 through 3.15: no walrus, no positional-only
parameters, no f-string ``=``.
"""

import json
import os
import platform
import socket
import select
import sys
import threading
import time
import traceback

_QUALNAME = sys.version_info >= (3, 11)

# Syscall numbers, used only to confirm from /proc that a thread really is
# blocked where it claims to be before the target reports itself ready.
_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
_GETTID = {"x86_64": 186, "aarch64": 178}.get(platform.machine())

IDLE_KINDS = ("sleep", "lock", "socket", "select")
BUSY_KINDS = ("busy", "busy_c")

_registry = {}
_registry_lock = threading.Lock()
# Keeps objects a parked thread blocks on (socket peers, pipe ends, the
# executable page) alive for the life of the process.
_keep = []


def code_name(code):
    """The name prof must report: co_qualname from 3.11, co_name before."""
    if _QUALNAME:
        return getattr(code, "co_qualname", code.co_name)
    return code.co_name


def snapshot():
    """The caller's stack, outermost first, as [filename, name, line]."""
    frames = []
    f = sys._getframe(1)
    while f is not None:
        frames.append([f.f_code.co_filename, code_name(f.f_code), f.f_lineno])
        f = f.f_back
    frames.reverse()
    return frames


def native_id():
    if hasattr(threading, "get_native_id"):
        return threading.get_native_id()
    # 3.7 has no get_native_id; the kernel tid is what prof must report.
    import ctypes

    return ctypes.CDLL(None, use_errno=True).syscall(_GETTID)


def _spinner():
    """A C function that spins forever; ctypes drops the GIL around it.

    It gives a thread that is busy on a CPU without holding the GIL, which
    no pure-Python loop can do deterministically.
    """
    import ctypes
    import mmap

    code = {"x86_64": b"\xeb\xfe", "aarch64": b"\x00\x00\x00\x14"}[platform.machine()]
    page = mmap.mmap(
        -1,
        mmap.PAGESIZE,
        flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
    )
    page.write(code)
    buf = ctypes.c_char.from_buffer(page)
    _keep.append((page, buf))
    return ctypes.CFUNCTYPE(None)(ctypes.addressof(buf))


def _register(frames, kind, park_line, extra):
    entry = {
        "name": threading.current_thread().name,
        "native_id": native_id(),
        "frames": frames,
        "park": kind,
        "park_frames": [[park.__code__.co_filename, code_name(park.__code__), park_line]],
    }
    entry.update(extra)
    with _registry_lock:
        _registry[str(threading.get_ident())] = entry


def park(frames, kind, **extra):
    """Record ``frames`` for this thread, then block forever in ``kind``.

    Each blocking statement is a single line announced by the line before it,
    so the park frame's own line is known too.  Every blocking call is a C
    function: prof must show no Python frame below ``park``.
    """
    here = sys._getframe()
    if kind == "sleep":
        _register(frames, kind, here.f_lineno + 1, extra)
        while True: time.sleep(3600)  # noqa: E701
    elif kind == "lock":
        lock = threading.Lock()
        lock.acquire()
        _register(frames, kind, here.f_lineno + 1, extra)
        lock.acquire()
    elif kind == "socket":
        a, b = socket.socketpair()
        _keep.append((a, b))
        _register(frames, kind, here.f_lineno + 1, extra)
        while True: a.recv(1)  # noqa: E701
    elif kind == "select":
        r, w = os.pipe()
        _keep.append((r, w))
        _register(frames, kind, here.f_lineno + 1, extra)
        while True: select.select([r], [], [])  # noqa: E701
    elif kind == "busy":
        n = 0
        _register(frames, kind, here.f_lineno + 1, extra)
        while True: n += 1  # noqa: E701
    elif kind == "busy_c":
        spin = _spinner()
        _register(frames, kind, here.f_lineno + 1, extra)
        spin()
    raise ValueError("unknown park kind %r" % (kind,))


def _blocked(tid, kind):
    """True once /proc shows ``tid`` inside the syscall ``kind`` blocks in.

    A thread that has registered may still be waiting for the GIL (a futex)
    on its way to the blocking call; for the non-futex kinds that is
    distinguishable, for ``lock`` it is not, hence the settle delay later.
    """
    if kind in BUSY_KINDS or _FUTEX is None:
        return True
    try:
        with open("/proc/self/task/%d/syscall" % tid) as f:
            first = f.read().split()[0]
    except (IOError, OSError, IndexError):
        return False
    if first == "running":
        return False
    if kind == "lock":
        return int(first) == _FUTEX
    return int(first) != _FUTEX


def _die(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    os._exit(70)


def _write_ready(outdir, writer_stays):
    with _registry_lock:
        threads = dict(_registry)
    data = {
        "pid": os.getpid(),
        "version": list(sys.version_info[:3]),
        "executable": sys.executable,
        "gil": bool(getattr(sys, "_is_gil_enabled", lambda: True)()),
        "writer_stays": writer_stays,
        "threads": threads,
    }
    tmp = os.path.join(outdir, "ready.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(outdir, "ready.json"))


def ready_when(outdir, count, after=None, settle=0.1, timeout=45.0):
    """Write ready.json once ``count`` threads are parked.

    Runs in a writer thread that exits afterwards unless ``after`` is given,
    in which case ``after()`` runs in it (and the file says the writer
    stays, so the harness expects one thread more than the file lists).
    """

    def writer():
        try:
            deadline = time.time() + timeout
            while True:
                with _registry_lock:
                    entries = list(_registry.values())
                if len(entries) > count:
                    _die("truth: %d threads parked, expected %d" % (len(entries), count))
                if len(entries) == count and all(
                    _blocked(e["native_id"], e["park"]) for e in entries
                ):
                    break
                if time.time() > deadline:
                    _die(
                        "truth: timed out, %d/%d threads parked: %r"
                        % (len(entries), count, [(e["name"], e["park"]) for e in entries])
                    )
                time.sleep(0.01)
            # Covers the lock kind, whose futex wait looks like a GIL wait.
            time.sleep(settle)
            _write_ready(outdir, after is not None)
            if after is not None:
                after()
        except BaseException:
            _die("truth: writer failed\n" + traceback.format_exc())

    t = threading.Thread(target=writer, name="truth-writer")
    t.daemon = True
    t.start()


def start_thread(name, fn, *args):
    """Start a daemon thread whose failure kills the process loudly.

    Without this a typo in a target would leave the test waiting for
    ready.json until its timeout.
    """

    def guard():
        try:
            fn(*args)
        except BaseException:
            _die("truth: thread %r failed\n%s" % (name, traceback.format_exc()))

    t = threading.Thread(target=guard, name=name)
    t.daemon = True
    t.start()
    return t


def run(main):
    try:
        main()
    except BaseException:
        _die("truth: main failed\n" + traceback.format_exc())


def setup():
    """Common start of every target: argv[1] is the output directory."""
    if len(sys.argv) < 2:
        _die("usage: %s OUTDIR [ARGS...]" % sys.argv[0])
    outdir = sys.argv[1]
    if not os.path.isdir(outdir):
        _die("truth: %s is not a directory" % outdir)
    return outdir, sys.argv[2:]
