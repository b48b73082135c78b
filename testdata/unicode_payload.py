"""Copied by unicode.py to "<outdir>/dir with spaces/módulo_ü.py" and
imported from there, so its frames carry a non-ASCII file name in a
directory with spaces.  Identifiers cover Latin-1, BMP and astral
characters; all are NFKC-stable, so co_name is exactly what is written.
"""

import truth


def 函数(kind):
    return 𠀀(kind)


def 𠀀(kind):
    return Ünïcödé().méthode(kind)


class Ünïcödé:
    def méthode(self, kind):
        return naïve_café(kind)


def naïve_café(kind):
    truth.park(truth.snapshot(), kind)
