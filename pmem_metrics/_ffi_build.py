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
    values stay in the header), the structs are opaque, enums keep their
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
    structs = sorted(set(re.findall(r"struct\s+(pmem_metrics\w*)", text)))
    text = re.sub(r"struct\s+\w+\s*\{[^}]*\}\s*;", "", text)
    text = re.sub(r"\binline\s+([^;{]*?\))\s*\{(?:[^{}]|\{[^{}]*\})*\}", r"\1;", text)
    protos = re.findall(r"([A-Za-z_][^;{}]*?\bpmem_metrics_\w+\s*\([^;{}]*\))\s*;", text)
    return "\n".join(
        [f"#define {name} ..." for name in consts]
        + [f"struct {name};" for name in structs]
        + [" ".join(e.split()) for e in enums]
        + [" ".join(p.split()) + ";" for p in protos]
    )


with open(os.path.join(CSRC, "pmem_metrics.h"), encoding="utf-8") as header:
    HEADER_CDEF = cdef_from_header(header.read())

ffi = FFI()
ffi.cdef(HEADER_CDEF)
# The extension's own functions (below).
ffi.cdef(
    """
    long pmem_line_write(int fd, const char *buf, size_t len, int socket, size_t *sent,
                         int64_t *start);
    int pmem_line_cut(int fd, int64_t start);
    """
)

# The writer's two system calls, in C for the same reason as the snapshot
# slots: what a call did is recorded in memory Python owns before the call
# returns, so an exception raised as it returns cannot lose track of it.
LINE_IO = r"""
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * One write of (part of) a metrics line.  What got out is added to *sent
 * before this returns; for a regular file, *start (if still -1) is set to
 * where the line began.  A reader that went away gives EPIPE, never a
 * SIGPIPE death: a socket gets send(MSG_NOSIGNAL | MSG_DONTWAIT), which also
 * never blocks; anything else a write() with SIGPIPE blocked for the call
 * (and a SIGPIPE it raised taken back).  -1 with errno, or the bytes written.
 */
static long pmem_line_write(int fd, const char *buf, size_t len, int socket, size_t *sent,
                            int64_t *start)
{
    sigset_t pipe, old;
    ssize_t n;
    int err;

    if (socket) {
        n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        err = errno;
    } else {
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe, &old);
        n = write(fd, buf, len);
        err = errno;
        if (n < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
            struct timespec none = {0, 0};

            sigtimedwait(&pipe, NULL, &none);
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (n > 0) {
        if (*start < 0) {
            off_t at = lseek(fd, 0, SEEK_CUR); /* -1 for a pipe: start stays unknown */

            if (at >= n)
                *start = (int64_t)(at - n);
        }
        *sent += (size_t)n;
    }
    errno = err;
    return (long)n;
}

/*
 * Cut a regular file back to `start`, where a line that did not go out whole
 * began, if it is longer (never longer than it was: someone else may have
 * shrunk it), and put a non-append descriptor's position there.  0, or -1
 * with errno.  start < 0: nothing of the line was written, nothing to do.
 */
static int pmem_line_cut(int fd, int64_t start)
{
    struct stat st;
    int flags;

    if (start < 0)
        return 0;
    if (fstat(fd, &st) != 0)
        return -1;
    if (st.st_size > start && ftruncate(fd, (off_t)start) != 0)
        return -1;
    flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && !(flags & O_APPEND) && lseek(fd, (off_t)start, SEEK_SET) < 0)
        return -1;
    return 0;
}
"""

ffi.set_source(
    "_ffi",
    '#include "pmem_metrics.h"\n' + LINE_IO,
    include_dirs=[CSRC],
    libraries=["pmemmetrics"],
    extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
)

if __name__ == "__main__":
    ffi.compile()
