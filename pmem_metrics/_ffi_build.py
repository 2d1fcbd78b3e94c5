"""CFFI build script (out-of-line API mode) for the ``pmem_metrics._ffi`` extension.

The extension links against libpmemmetrics (``-lpmemmetrics``, so it needs the
soname, ``libpmemmetrics.so.0``), which ``setup.py`` builds with ``make -C csrc``
and installs at ``pmem_metrics/lib/``; an rpath of ``$ORIGIN/lib`` finds it
there.  So C and Python in one process share its registries, whichever allocates.

The declarations are read from the header itself (``cdef_from_header``), and
constants are declared ``...``: ``csrc/pmem_metrics.h`` is the only place a
function's signature or a constant's value is written.
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


with open(os.path.join(CSRC, "pmem_metrics.h"), encoding="utf-8") as header:
    HEADER_CDEF = cdef_from_header(header.read())

ffi = FFI()
ffi.cdef(HEADER_CDEF)

ffi.set_source(
    "_ffi",
    '#include "pmem_metrics.h"',
    include_dirs=[CSRC],
    libraries=["pmemmetrics"],
    extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
)

if __name__ == "__main__":
    ffi.compile()
