"""Where the C library shipped inside this package lives, for C code that links it.

Like ``numpy.get_include()`` or ``python -m pybind11 --includes``::

    cc app.c $(python -m pmem_metrics --cflags --libs) -pthread -o app

A C library built this way and loaded into a Python process shares the one
registry of that process with the ``pmem_metrics`` package.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_include() -> str:
    """The directory holding ``pmem_metrics.h``."""
    return os.path.join(_HERE, "include")


def get_library_dir() -> str:
    """The directory holding ``libpmemmetrics.so``."""
    return os.path.join(_HERE, "lib")


def cflags() -> list[str]:
    """Compiler flags: the include directory."""
    return [f"-I{get_include()}"]


def libs() -> list[str]:
    """Linker flags: the library directory, an rpath to it, and ``-lpmemmetrics``."""
    lib_dir = get_library_dir()
    return [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}", "-lpmemmetrics"]
