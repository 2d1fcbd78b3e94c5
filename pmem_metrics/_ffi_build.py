"""CFFI build script (out-of-line API mode) for the ``pmem_metrics._ffi`` extension.

The extension links against libpmemmetrics (``-lpmemmetrics``, so it needs the
soname, ``libpmemmetrics.so.0``), which ``setup.py`` builds with ``make -C csrc``
and installs at ``pmem_metrics/lib/``; an rpath of ``$ORIGIN/lib`` finds it
there.  So C and Python in one process share its registries, whichever allocates.

The declarations are read from the header itself (``cdef_from_header``), and
constants are declared ``...``: ``csrc/pmem_metrics.h`` is the only place a
function's signature or a constant's value is written.  inotify(7) is bound here
too (``inotify_init1``, ``inotify_add_watch``, ``inotify_rm_watch`` and the
``IN_*`` constants, their values from ``<sys/inotify.h>``); ``PMI_HAVE_INOTIFY``
says whether the platform has it (elsewhere the calls fail with ``ENOSYS``).
"""

import os
import re

from cffi import FFI

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "csrc")


def cdef_from_header(text: str) -> str:
    """The CFFI declarations of the public header *text*: the one place they are written.

    Integer ``#define``s and enum constants become ``#define NAME ...`` (their
    values stay in the header), structs are opaque but those of plain
    fields (a few integers: their layout stays C's, ``...``), enums keep their
    listed values, and every prototype (an inline definition too) is declared
    as it stands.  The test-only fault-injection block is left out.
    """
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"#ifdef PMEM_METRICS_FAULT_INJECTION.*?#endif", "", text, flags=re.S)
    consts = re.findall(r"^#define (PMEM_METRICS_\w+)[ \t]+[0-9]+u?[ \t]*$", text, flags=re.M)
    text = re.sub(r"^#.*?(?<!\\)$", "", text, flags=re.M | re.S)  # with continued lines
    consts += re.findall(r"enum\s*\{\s*(PMEM_METRICS_\w+)\s*=[^}]*\}\s*;", text)
    text = re.sub(r"enum\s*\{[^}]*\}\s*;", "", text)
    enums = re.findall(r"enum\s+\w+\s*\{[^}]*\}\s*;", text)
    text = re.sub(r"enum\s+\w+\s*\{[^}]*\}\s*;", "", text)
    # Structs of plain fields (not the counters', whose fields are atomics) keep them.
    plain = {
        name: " ".join(body.split())
        for name, body in re.findall(r"struct\s+(pmem_metrics\w*)\s*\{([^}]*)\}\s*;", text)
        if re.fullmatch(r"[\w\s,;]*", body) and "_Atomic" not in body
    }
    structs = sorted(set(re.findall(r"struct\s+(pmem_metrics\w*)", text)) - set(plain))
    text = re.sub(r"struct\s+\w+\s*\{[^}]*\}\s*;", "", text)
    text = re.sub(r"\binline\s+([^;{]*?\))\s*\{(?:[^{}]|\{[^{}]*\})*\}", r"\1;", text)
    protos = re.findall(r"([A-Za-z_][^;{}]*?\bpmem_metrics_\w+\s*\([^;{}]*\))\s*;", text)
    return "\n".join(
        [f"#define {name} ..." for name in consts]
        + [f"struct {name};" for name in structs]
        + [f"struct {name} {{ {body} ...; }};" for name, body in sorted(plain.items())]
        + [" ".join(e.split()) for e in enums]
        + [" ".join(p.split()) + ";" for p in protos]
    )


INOTIFY_NAMES = (
    "IN_NONBLOCK IN_CLOEXEC IN_CREATE IN_DELETE IN_MOVED_FROM IN_MOVED_TO IN_DELETE_SELF "
    "IN_MOVE_SELF IN_ONLYDIR IN_DONT_FOLLOW IN_EXCL_UNLINK IN_ISDIR IN_IGNORED IN_Q_OVERFLOW"
).split()
"""The inotify(7) flags and event bits ``pmem_metrics._inotify`` uses: values from the header."""

INOTIFY_CDEF = "\n".join(
    [
        "#define PMI_HAVE_INOTIFY ...",
        "#define PMI_INOTIFY_EVENT_SIZE ...",
        *(f"#define {name} ..." for name in INOTIFY_NAMES),
        "int inotify_init1(int flags);",
        "int inotify_add_watch(int fd, const char *pathname, uint32_t mask);",
        "int inotify_rm_watch(int fd, int wd);",
    ]
)
"""inotify, for finding segments as they appear (``pmem_metrics.fleet``)."""

# Where there is no <sys/inotify.h>, the calls fail with ENOSYS (a fleet rescans instead).
INOTIFY_SOURCE = "\n".join(
    [
        "#if defined(__linux__)",
        "#include <sys/inotify.h>",
        "#define PMI_HAVE_INOTIFY 1",
        "#define PMI_INOTIFY_EVENT_SIZE sizeof(struct inotify_event)",
        "#else",
        "#include <errno.h>",
        "#include <stdint.h>",
        "#define PMI_HAVE_INOTIFY 0",
        "#define PMI_INOTIFY_EVENT_SIZE 16",
        *(f"#define {name} 0" for name in INOTIFY_NAMES),
        "static int inotify_init1(int f) { (void)f; errno = ENOSYS; return -1; }",
        "static int inotify_add_watch(int fd, const char *p, uint32_t m)",
        "{ (void)fd; (void)p; (void)m; errno = ENOSYS; return -1; }",
        "static int inotify_rm_watch(int fd, int wd)",
        "{ (void)fd; (void)wd; errno = ENOSYS; return -1; }",
        "#endif",
    ]
)

with open(os.path.join(CSRC, "pmem_metrics.h"), encoding="utf-8") as header:
    HEADER_CDEF = cdef_from_header(header.read())

ffi = FFI()
ffi.cdef(HEADER_CDEF)
ffi.cdef(INOTIFY_CDEF)

ffi.set_source(
    "_ffi",
    '#include "pmem_metrics.h"\n' + INOTIFY_SOURCE,
    include_dirs=[CSRC],
    libraries=["pmemmetrics"],
    extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
)

if __name__ == "__main__":
    ffi.compile()
