"""asyncio tasks for `prof dump/record --async`, with their own truth.

usage: async_tree.py OUTDIR [SLEEPERS]

The main thread's event loop runs:
  * outer, awaiting gather(left, right); left awaits mid -> leaf_sleep -> asyncio.sleep;
    right awaits the task leaf (`await task`), which sleeps;
  * on 3.11+, tg_parent with a TaskGroup of tg_a and tg_b, each waiting on an Event;
  * sock_reader, blocked in loop.sock_recv on a socket pair;
  * auto, an auto-named task whose name nobody asks for (3.12+ keep an int until then):
    its name is predicted from the task created just before it;
  * SLEEPERS (default 1000) tasks sleeper-N sleeping;
  * spinner, a CPU-heavy task that never yields once started.
A second thread, side-loop, runs its own event loop: side-main awaits side-b, which awaits
the task side-a, which sleeps.

Once everything is parked, the spinner (the running task) writes OUTDIR/ready.json with
every task of both loops as the interpreter sees it: name (get_name(), except for auto),
id, the thread running its loop, running or waiting, the await chain of its coroutines
(cr_await/gi_yieldfrom, outermost first, [file, name, line] as truth.py records frames),
the frame get_stack() gives, and who awaits it (on 3.14+ from asyncio.capture_call_graph,
checked against the links this script builds); then it spins forever.

Must stay valid on Python 3.8 through 3.15.
"""

import asyncio
import json
import os
import socket
import sys
import threading
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import truth  # noqa: E402

HOUR = 3600


def chain(task):
    """The await chain of a suspended task's coroutines, outermost first."""
    out = []
    obj = task.get_coro()
    while obj is not None and len(out) < 100:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            break
        out.append([frame.f_code.co_filename, truth.code_name(frame.f_code), frame.f_lineno])
        if hasattr(obj, "cr_await"):
            obj = obj.cr_await
        else:
            obj = getattr(obj, "gi_yieldfrom", None)
    return out


async def leaf_sleep():
    await asyncio.sleep(HOUR)


async def mid():
    await leaf_sleep()


async def left():
    await mid()


async def child():
    await asyncio.sleep(HOUR)


async def right(leaf):
    await leaf


async def outer(left_task, right_task):
    await asyncio.gather(left_task, right_task)


async def wait_event(event):
    await event.wait()


async def tg_parent(event, names):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(wait_event(event), name=names[0])
        tg.create_task(wait_event(event), name=names[1])


async def sock_reader(loop, sock):
    await loop.sock_recv(sock, 1)


async def sleeper():
    await asyncio.sleep(HOUR)


def side_thread(state):
    async def side_a():
        await asyncio.sleep(HOUR)

    async def side_b(a):
        await a

    async def side_main():
        a = asyncio.create_task(side_a(), name="side-a")
        b = asyncio.create_task(side_b(a), name="side-b")
        state["loop"] = asyncio.get_running_loop()
        state["links"] = {"side-a": ["side-b"], "side-b": [asyncio.current_task().get_name()]}
        await asyncio.sleep(0.1)
        state["ready"].set()
        await b

    asyncio.run(side_main())


def describe(task, name, thread, links, running_frames=None):
    entry = {
        "name": name,
        "id": id(task),
        "thread": thread,
        "state": "running" if running_frames is not None else "waiting",
        "frames": running_frames if running_frames is not None else chain(task),
        "awaited_by": links.get(name, []),
    }
    stack = task.get_stack(limit=1) if running_frames is None else []
    entry["stack_top"] = [
        [f.f_code.co_filename, truth.code_name(f.f_code), f.f_lineno] for f in stack
    ]
    if hasattr(asyncio, "capture_call_graph"):
        graph = asyncio.capture_call_graph(task)
        entry["call_graph_awaited_by"] = [id(g.future) for g in graph.awaited_by]
    return entry


def main():
    outdir, args = truth.setup()
    sleepers = int(args[0]) if args else 1000
    side = {"ready": threading.Event()}
    truth.start_thread("side-loop", side_thread, side)

    async def amain():
        # First: the side loop's tasks take auto-name numbers from the same counter.
        while not side["ready"].is_set():
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        links = {}
        names = {me: me.get_name()}

        def task(coro, name):
            t = loop.create_task(coro, name=name)
            names[t] = name
            return t

        leaf = task(child(), "leaf")
        lt = task(left(), "left")
        rt = task(right(leaf), "right")
        ot = task(outer(lt, rt), "outer")
        links.update({"leaf": ["right"], "left": ["outer"], "right": ["outer"]})
        links["outer"] = [names[me]]
        if sys.version_info >= (3, 11):
            event = asyncio.Event()
            task(tg_parent(event, ("tg_a", "tg_b")), "tg_parent")
            links.update({"tg_a": ["tg_parent"], "tg_b": ["tg_parent"]})
        a, b = socket.socketpair()
        a.setblocking(False)
        truth._keep.append((a, b))
        task(sock_reader(loop, a), "sock_reader")
        probe = loop.create_task(sleeper())
        auto = loop.create_task(sleeper())
        # Named after the probe's counter + 1, without asking auto for its name.
        names[probe] = probe.get_name()
        names[auto] = "Task-%d" % (int(names[probe].split("-")[1]) + 1)
        for i in range(sleepers):
            task(sleeper(), "sleeper-%d" % i)
        await asyncio.sleep(0.3)

        async def spinner():
            try:
                report()
            except BaseException:
                truth._die("async_tree: spinner failed\n" + traceback.format_exc())
            here = sys._getframe()
            line = here.f_lineno + 4
            me_frames = [[here.f_code.co_filename, truth.code_name(here.f_code), line]]
            write(outdir, entries + [describe(spin, "spinner", main_id, links, me_frames)])
            n = 0
            while True: n += 1  # noqa: E701

        entries = []
        main_id = threading.get_ident()

        def report():
            side_loop = side["loop"]
            side_thread_id = [
                t.ident for t in threading.enumerate() if t.name == "side-loop"
            ][0]
            for t in asyncio.all_tasks(loop):
                if t is spin:
                    continue
                name = names[t] if t in names else t.get_name()
                entries.append(describe(t, name, main_id, links))
            side_tasks = asyncio.all_tasks(side_loop)
            for t in side_tasks:
                entries.append(describe(t, t.get_name(), side_thread_id, side["links"]))
            check_call_graph(entries)

        spin = task(spinner(), "spinner")
        await ot

    asyncio.run(amain())


def check_call_graph(entries):
    """On 3.14+, the interpreter's own call graph must agree with the links built here."""
    by_id = {e["id"]: e["name"] for e in entries}
    for e in entries:
        if "call_graph_awaited_by" not in e:
            continue
        got = sorted(by_id.get(i, "?") for i in e["call_graph_awaited_by"])
        if got != sorted(e["awaited_by"]):
            truth._die(
                "async_tree: capture_call_graph says %s is awaited by %r, the script built %r"
                % (e["name"], got, e["awaited_by"])
            )


def write(outdir, entries):
    by_name = {e["name"]: e["id"] for e in entries}
    for e in entries:
        e["awaited_by"] = [by_name[n] for n in e["awaited_by"]]
    data = {
        "pid": os.getpid(),
        "version": list(sys.version_info[:3]),
        "executable": sys.executable,
        "gil": bool(getattr(sys, "_is_gil_enabled", lambda: True)()),
        "writer_stays": True,
        "threads": {},
        "tasks": entries,
    }
    tmp = os.path.join(outdir, "ready.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    os.replace(tmp, os.path.join(outdir, "ready.json"))


truth.run(main)
