"""Unicode everywhere: function, class and method names in 1-, 2- and
4-byte code points, thread names likewise, and frames from a module whose
file name is non-ASCII and whose directory name has spaces.

usage: unicode.py OUTDIR
"""

import importlib
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import truth  # noqa: E402

MODULE = "módulo_ü"


def Ωμέγα(module, kind):
    return module.函数(kind)


def ünïcode_direct(kind):
    truth.park(truth.snapshot(), kind)


class Κλάση:
    class 内部:
        def 方法(self, kind):
            truth.park(truth.snapshot(), kind)


def main():
    outdir, _ = truth.setup()
    pkgdir = os.path.join(outdir, "dir with spaces")
    os.makedirs(pkgdir)
    shutil.copyfile(os.path.join(HERE, "unicode_payload.py"), os.path.join(pkgdir, MODULE + ".py"))
    sys.path.insert(0, pkgdir)
    module = importlib.import_module(MODULE)
    truth.start_thread("Ωμέγα-θέμα", Ωμέγα, module, "sleep")
    truth.start_thread("函数线程", module.函数, "socket")
    truth.start_thread("𠀀 astral 🧵", module.𠀀, "select")
    truth.start_thread("naïve café", ünïcode_direct, "lock")
    truth.start_thread("Κλάση.内部", Κλάση.内部().方法, "busy")
    truth.ready_when(outdir, 6)
    Ωμέγα(module, "lock")


if __name__ == "__main__":
    truth.run(main)
