"""Emit line-table test vectors from the running interpreter as JSON on stdout.

For every code object taken from a built-in snippet and from a few stdlib
modules, this records the raw line table (co_lnotab on 3.8/3.9, co_linetable
on 3.10+) and the line that the interpreter's own C function
PyCode_Addr2Line() gives for every instruction byte offset. The Rust decoder in
src/python/linetable.rs is checked against these answers.

Usage: python3.X linetable_vectors.py > linetables/3.X.Y.json
Runs on CPython 3.8 and later; only the standard library is needed.
"""

import ctypes
import importlib.util
import json
import platform
import sys
import types

# Size budget for one output file: the generated JSON must stay small enough
# to commit, so stdlib code objects are dropped (snippet ones never are) once
# this many offsets have been recorded.
MAX_OFFSETS = 26000

_addr2line = ctypes.pythonapi.PyCode_Addr2Line
_addr2line.argtypes = [ctypes.py_object, ctypes.c_int]
_addr2line.restype = ctypes.c_int


def _blank(n):
    return "\n" * n


def _snippet():
    """Source exercising the corners of the three table formats."""
    long_expr = " + ".join("v%d" % (i % 7) for i in range(60))
    wide_pad = " " * 300
    straight_line = "\n".join(
        "    v%d = v%d * %d + (v%d - %d)" % (i % 7, (i + 3) % 7, i, (i + 5) % 7, i)
        for i in range(320)
    )
    one_line_heavy = ", ".join("g(%d, v0, v1)" % i for i in range(120))
    parts = [
        '"""Line-table torture snippet."""',
        "import functools",
        "import contextlib",
        "",
        "def g(*a, **k):",
        "    return a",
        "",
        "def decorator(f):",
        "    @functools.wraps(f)",
        "    def inner(*a, **k):",
        "        return f(*a, **k)",
        "    return inner",
        "",
        "@decorator",
        "@functools.lru_cache(maxsize=None)",
        "def decorated(x,",
        "              y=2,",
        "              *rest,",
        "              z=3,",
        "              **kw):",
        "    return x + y + z",
        "",
        "def long_function(v0=1, v1=2, v2=3, v3=4, v4=5, v5=6, v6=7):",
        straight_line,
        "    total = (" + long_expr + ")",
        "    heavy = (" + one_line_heavy + ")",
        "    return total, heavy",
        "",
        "def big_jumps(a, b):",
        "    x = a",
        _blank(200),
        "    y = b",
        _blank(300),
        "    z = g(",
        "        x,",
        _blank(180),
        "        y,",
        _blank(40),
        "    )",
        "    for i in range(3):",
        "        x += i",
        _blank(130),
        "        if x > 10:",
        "            break",
        "    return x + y + z[0]",
        "",
        "def wide_columns(v0, v1, v2, v3, v4, v5, v6):",
        "    a = " + wide_pad + "g(v0, v1) + g(v2, " + wide_pad + "v3)",
        "    b = [" + wide_pad + "v4, v5," + wide_pad + " v6][" + wide_pad + "1]",
        "    return " + wide_pad + "(a," + " " * 70 + "b)",
        "",
        "def comprehensions(data):",
        "    sq = [x * x for x in data if x % 2]",
        "    st = {x for x in data",
        "          if x > 1}",
        "    dc = {k: v",
        "          for k, v in zip(data, data)",
        "          if k}",
        "    ge = sum(x for x in data)",
        "    nested = [[y for y in range(x)] for x in data]",
        "    return sq, st, dc, ge, nested",
        "",
        "def exceptions(n):",
        "    try:",
        "        r = 1 / n",
        "    except ZeroDivisionError as e:",
        "        r = str(e)",
        "    except (TypeError, ValueError):",
        "        r = None",
        "    else:",
        "        r = r * 2",
        "    finally:",
        "        n = 0",
        "    try:",
        "        try:",
        "            raise KeyError(n)",
        "        finally:",
        "            n += 1",
        "    except KeyError:",
        "        pass",
        "    return r, n",
        "",
        "def with_statements(path):",
        "    with contextlib.suppress(OSError):",
        "        with open(path) as f, \\",
        "                open(path) as h:",
        "            return f.read() + h.read()",
        "    with contextlib.ExitStack() as stack:",
        "        stack.callback(g,",
        "                       1)",
        "    return None",
        "",
        "def generator(n):",
        "    for i in range(n):",
        "        got = yield i",
        "        if got:",
        "            yield from range(got)",
        "    return n",
        "",
        "async def coroutine(xs):",
        "    async with contextlib.AsyncExitStack() as st:",
        "        pass",
        "    async for x in xs:",
        "        await g(x)",
        "    r = [y async for y in xs]",
        "    return r",
        "",
        "async def async_gen(n):",
        "    for i in range(n):",
        "        yield i",
        "",
        "lam = lambda x, y=(lambda: 1): (",
        "    x +",
        "    y())",
        "",
        "class Klass(object):",
        "    attr = [i for i in range(3)]",
        "",
        "    def method(self):",
        "        return super().method()",
        "",
        "    @property",
        "    def prop(self):",
        "        def closure():",
        "            return self",
        "        return closure",
        "",
        "def multi_line(a, b, c):",
        "    result = g(",
        "        a,",
        "        b if a else",
        "        c,",
        "        key=lambda q:",
        "            q + 1,",
        "    )",
        "    s = ('abc'",
        "         'def'",
        "         f'{a!r:>{b}}')",
        "    return (result",
        "            .count(",
        "                s))",
        "",
        "def loops(n):",
        "    while n:",
        "        n -= 1",
        "        if n == 5:",
        "            continue",
        "    else:",
        "        n = -1",
        "    assert n, (",
        "        'message')",
        "    del n",
        "    return",
        "",
        "def empty():",
        "    pass",
        "",
        "def docstring_only():",
        '    """Only a docstring."""',
        "",
        "def walrus(xs):",
        "    if (n := len(xs)) > 3:",
        "        return n",
        "",
        "def globals_and_closures():",
        "    global lam",
        "    counter = 0",
        "    def bump():",
        "        nonlocal counter",
        "        counter += 1",
        "        return counter",
        "    return bump",
        "",
        "if __name__ == '__main__':",
        "    print(long_function())",
    ]
    if sys.version_info >= (3, 10):
        parts += [
            "",
            "def matching(cmd):",
            "    match cmd:",
            "        case [x, y, *rest] if x > y:",
            "            return rest",
            "        case {'k': v, **kw}:",
            "            return v",
            "        case Klass(attr=[a, *_]) | str(a):",
            "            return a",
            "        case _:",
            "            return None",
        ]
    if sys.version_info >= (3, 11):
        parts += [
            "",
            "def exception_groups():",
            "    try:",
            "        raise ExceptionGroup('eg', [ValueError(1), TypeError(2)])",
            "    except* ValueError as e:",
            "        r = e",
            "    except* TypeError:",
            "        r = None",
            "    return r",
        ]
    if sys.version_info >= (3, 12):
        parts += [
            "",
            "def generic[T](x: T) -> T:",
            "    return x",
            "",
            "type Alias[K] = list[K]",
            "",
            "class Box[T]:",
            "    def get(self) -> T:",
            "        return self.v",
        ]
    # Put some code far down the file so first_line is large too.
    parts += [
        _blank(70000),
        "def far_away(a):",
        "    return (a,",
        _blank(5000),
        "            a)",
    ]
    return "\n".join(parts) + "\n"


def _walk(code, prefix):
    """Yield (name, code) for a code object and every code nested in it."""
    name = getattr(code, "co_qualname", code.co_name)
    full = "%s:%s@%d" % (prefix, name, code.co_firstlineno)
    yield full, code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            for item in _walk(const, prefix):
                yield item


def _table(code):
    if sys.version_info >= (3, 10):
        return code.co_linetable
    return code.co_lnotab


def _vector(name, code):
    offsets = [-2]
    if sys.version_info < (3, 10):
        # f_lasti is a byte offset there, so -1 ("not started") reaches the
        # decoder unchanged.
        offsets.append(-1)
    offsets.extend(range(0, len(code.co_code), 2))
    lines = []
    for off in offsets:
        line = _addr2line(code, off)
        lines.append([off, None if line == -1 else line])
    return {
        "name": name,
        "first_line": code.co_firstlineno,
        "table": _table(code).hex(),
        "lines": lines,
    }


def _stdlib_source(module):
    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding="utf-8") as f:
        return spec.origin, f.read()


def main():
    codes = []
    snippet = compile(_snippet(), "<snippet>", "exec")
    for name, code in _walk(snippet, "snippet"):
        codes.append(_vector(name, code))
    budget = MAX_OFFSETS - sum(len(c["lines"]) for c in codes)
    for module in ("json.decoder", "textwrap"):
        path, source = _stdlib_source(module)
        top = compile(source, path, "exec")
        # Largest code objects first: they have the longest tables and the
        # most varied entries, so they are the ones worth keeping.
        found = sorted(_walk(top, module), key=lambda nc: -len(nc[1].co_code))
        for name, code in found:
            vec = _vector(name, code)
            if len(vec["lines"]) > budget:
                continue
            budget -= len(vec["lines"])
            codes.append(vec)
    out = {"version": platform.python_version(), "codes": codes}
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
