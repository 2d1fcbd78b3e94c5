"""Where the C library shipped inside this package lives, for C code that links it.

Like ``numpy.get_include()`` or ``python -m pybind11 --includes``::

    cc app.c $(python -m pmem_metrics --cflags --libs) -pthread -o app

A C library built this way and loaded into a Python process shares the one
registry of that process with the ``pmem_metrics`` package: the flags name
the very file the package's extension loaded.  That is ``lib/`` inside the
package as ``pip install`` puts it; a wheel repaired by auditwheel may load a
renamed copy from ``pmem_metrics.libs/`` instead, and then the flags name
that one.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_SHIPPED = os.path.join(_HERE, "lib")
_DEV_NAME = "libpmemmetrics.so"  # what -lpmemmetrics finds


def _loaded_library() -> str | None:
    """The file of libpmemmetrics that this process runs the extension on, if known.

    Found by where a string of the library's own data is mapped, so it is the
    very file the dynamic loader chose, whatever the rpaths say.
    """
    from ._ffi import ffi, lib

    address = int(ffi.cast("uintptr_t", lib.pmem_metrics_field_name(0)))
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)  # range perms offset dev inode path
                if len(fields) < 6:
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end:
                    path = fields[5].rstrip("\n")
                    return path if os.path.isfile(path) else None
    except (OSError, ValueError):
        pass
    return None


def _library() -> tuple[str, str]:
    """(directory, file name) of the library C code must link to share the registry."""
    loaded = _loaded_library()
    if loaded is None:
        return _SHIPPED, _DEV_NAME
    directory, name = os.path.split(loaded)
    if os.path.isdir(_SHIPPED) and os.path.samefile(directory, _SHIPPED):
        directory = _SHIPPED  # spelled as the package's path is, symlinks and all
    return directory, name


def get_include() -> str:
    """The directory holding ``pmem_metrics.h``."""
    return os.path.join(_HERE, "include")


def get_library_dir() -> str:
    """The directory holding the ``libpmemmetrics`` this package runs on.

    ``lib/`` inside the package, unless the loader found the library
    elsewhere (an auditwheel-repaired wheel's ``pmem_metrics.libs/``).
    """
    return _library()[0]


def cflags() -> list[str]:
    """Compiler flags: the include directory."""
    return [f"-I{get_include()}"]


def libs() -> list[str]:
    """Linker flags: the library directory, an rpath to it, and the library.

    ``-lpmemmetrics`` finds ``libpmemmetrics.so`` next to the library the
    extension loaded, under one of its names (the linker then records the
    soname, by which the extension loaded it); a library renamed by auditwheel
    has no such neighbour, and is named as it is, with ``-l:``.
    """
    directory, name = _library()
    dev = os.path.isfile(os.path.join(directory, _DEV_NAME)) and name.startswith(_DEV_NAME)
    return [f"-L{directory}", f"-Wl,-rpath,{directory}", "-lpmemmetrics" if dev else f"-l:{name}"]
