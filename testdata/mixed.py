"""Frames that are not plain function calls: generators (with yield from),
a generator expression, a comprehension (inlined since 3.12), coroutines
driven by send() and by asyncio, exec'd code, lambdas, closures, nested
classes, a decorated function, a context manager's __enter__, and Python
called back from C (sorted's key, map, a property read through getattr).
One thread has known locals, for --locals.

usage: mixed.py OUTDIR
"""

import asyncio
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import truth  # noqa: E402

EXEC_SRC = """
def exec_fn(kind):
    truth.park(truth.snapshot(), kind)

exec_fn(KIND)
"""


def inner_gen(kind):
    yield 1
    truth.park(truth.snapshot(), kind)
    yield 2


def outer_gen(kind):
    yield 0
    yield from inner_gen(kind)


def drive_generator(kind):
    for _ in outer_gen(kind):
        pass


def genexpr_and_comprehension(kind):
    values = [x for x in range(3)]
    return sum(truth.park(truth.snapshot(), kind) for _ in [values[0]])


def comprehension(kind):
    return [truth.park(truth.snapshot(), kind) for _ in range(1)]


async def inner_coro(kind):
    truth.park(truth.snapshot(), kind)


async def outer_coro(kind):
    await inner_coro(kind)


def drive_coroutine(kind):
    coro = outer_coro(kind)
    coro.send(None)


async def asyncio_main(kind):
    await asyncio.sleep(0)
    await outer_coro(kind)


def run_asyncio(kind):
    asyncio.run(asyncio_main(kind))


def exec_code(kind):
    exec(EXEC_SRC, {"truth": truth, "KIND": kind})


def call_lambda(kind):
    f = lambda k: truth.park(truth.snapshot(), k)  # noqa: E731
    f(kind)


def closure(kind):
    def inner():
        def innermost():
            truth.park(truth.snapshot(), kind)

        innermost()

    inner()


class Outer:
    class Inner:
        def method(self, kind):
            self.helper(kind)

        @staticmethod
        def helper(kind):
            truth.park(truth.snapshot(), kind)


def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@decorate
def decorated(kind):
    truth.park(truth.snapshot(), kind)


def sort_with_key(kind):
    def key(x):
        if x == 2:
            truth.park(truth.snapshot(), kind)
        return x

    return sorted([3, 2, 1], key=key)


def via_map(kind):
    def f(x):
        truth.park(truth.snapshot(), kind)

    return list(map(f, [1, 2]))


class WithProperty:
    def __init__(self, kind):
        self.kind = kind

    @property
    def value(self):
        truth.park(truth.snapshot(), self.kind)


def via_getattr(kind):
    return getattr(WithProperty(kind), "value")


def with_locals(count, label):
    answer = 42
    ratio = 1.5
    text = "héllo wörld"
    items = [1, 2, 3]
    truth.park(truth.snapshot(), "sleep", locals={"count": repr(count), "label": None, "answer": repr(answer), "ratio": None, "text": None, "items": None}, args=["count", "label"])


class Context:
    def __init__(self, kind):
        self.kind = kind

    def __enter__(self):
        truth.park(truth.snapshot(), self.kind)

    def __exit__(self, *exc):
        return False


def main():
    outdir, _ = truth.setup()
    threads = [
        ("generator", drive_generator, "sleep"),
        ("genexpr", genexpr_and_comprehension, "lock"),
        ("comprehension", comprehension, "select"),
        ("coroutine", drive_coroutine, "busy"),
        ("asyncio", run_asyncio, "socket"),
        ("exec", exec_code, "lock"),
        ("lambda", call_lambda, "select"),
        ("closure", closure, "sleep"),
        ("nested-class", Outer.Inner().method, "socket"),
        ("decorated", decorated, "lock"),
        ("sorted-key", sort_with_key, "sleep"),
        ("map", via_map, "select"),
        ("property", via_getattr, "socket"),
    ]
    for name, fn, kind in threads:
        truth.start_thread(name, fn, kind)
    truth.start_thread("locals", with_locals, 7, "label")
    truth.ready_when(outdir, len(threads) + 2)
    with Context("lock"):
        pass


if __name__ == "__main__":
    truth.run(main)
