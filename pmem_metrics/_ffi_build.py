"""CFFI build script (out-of-line API mode) for the ``pmem_metrics._ffi`` extension.

The extension links against libpmemmetrics (``-lpmemmetrics``, so it needs the
soname, ``libpmemmetrics.so.0``), which ``setup.py`` builds with ``make -C csrc``
and installs at ``pmem_metrics/lib/``; an rpath of ``$ORIGIN/lib`` finds it
there.  So one process has one registry, whichever language allocates.

Constants are declared ``...``: the header is the only place their values live.
"""

import os

from cffi import FFI

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "csrc")

ffi = FFI()
ffi.cdef(
    """
    #define PMEM_METRICS_NFIELDS ...
    #define PMEM_METRICS_ID_MAX_CHARS ...

    struct pmem_metrics;
    struct pmem_metrics_counter;
    struct pmem_metrics_snapshot;
    struct pmem_metrics_registry;

    void pmem_metrics_add(struct pmem_metrics_counter *c, uint64_t n);
    void pmem_metrics_inc(struct pmem_metrics_counter *c);
    uint64_t pmem_metrics_count(const struct pmem_metrics_counter *c);
    uint64_t pmem_metrics_fetch_diff(const struct pmem_metrics_counter *c);

    int pmem_metrics_id_check(const char *drive_id, size_t len);
    const char *pmem_metrics_id_strerror(int error);
    struct pmem_metrics_counter *pmem_metrics_field(struct pmem_metrics *m, size_t i);
    const char *pmem_metrics_field_name(size_t i);
    const char *pmem_metrics_field_doc(size_t i);

    struct pmem_metrics_snapshot *pmem_metrics_snapshot_take(void);
    size_t pmem_metrics_snapshot_len(const struct pmem_metrics_snapshot *s);
    const char *pmem_metrics_snapshot_ids(const struct pmem_metrics_snapshot *s, size_t *len);
    const uint64_t *pmem_metrics_snapshot_diffs(const struct pmem_metrics_snapshot *s);
    const uint64_t *pmem_metrics_snapshot_aggregate(const struct pmem_metrics_snapshot *s);
    const uint64_t *pmem_metrics_snapshot_counts(const struct pmem_metrics_snapshot *s);
    void pmem_metrics_snapshot_commit(struct pmem_metrics_snapshot *s);

    void pmem_metrics_snapshot_publish(struct pmem_metrics_snapshot **slot);
    void pmem_metrics_snapshot_withdraw(struct pmem_metrics_snapshot **slot);
    void pmem_metrics_snapshot_dispose(struct pmem_metrics_snapshot **slot);

    #define PMEM_METRICS_OPEN_READONLY ...
    #define PMEM_METRICS_OPEN_EXISTING ...
    #define PMEM_METRICS_OPEN_TRUST ...
    #define PMEM_METRICS_SEGMENT_WAIT_MS ...
    int pmem_metrics_attach_mode(const char *path, size_t capacity, unsigned mode);
    int pmem_metrics_segment_wait_ms(void);
    int pmem_metrics_attach_flags(const char *path, size_t capacity, unsigned mode,
                                  unsigned flags);

    struct pmem_metrics_registry *pmem_metrics_registry_default(void);
    struct pmem_metrics_registry *pmem_metrics_registry_open(const char *path, size_t capacity,
                                                             unsigned mode);
    struct pmem_metrics_registry *pmem_metrics_registry_open_flags(const char *path,
                                                                   size_t capacity,
                                                                   unsigned mode,
                                                                   unsigned flags);
    int pmem_metrics_registry_is_shared(struct pmem_metrics_registry *r);
    int pmem_metrics_registry_is_writable(struct pmem_metrics_registry *r);
    const char *pmem_metrics_registry_path(struct pmem_metrics_registry *r);
    size_t pmem_metrics_registry_capacity(struct pmem_metrics_registry *r);
    struct pmem_metrics *pmem_metrics_registry_alloc_len(struct pmem_metrics_registry *r,
                                                         const char *drive_id, size_t len);
    struct pmem_metrics *pmem_metrics_registry_alloc_within(struct pmem_metrics_registry *r,
                                                            const char *drive_id, size_t len,
                                                            int timeout_ms);
    size_t pmem_metrics_registry_device_count(struct pmem_metrics_registry *r);
    int pmem_metrics_registry_snapshot_take_into(struct pmem_metrics_registry *r,
                                                 struct pmem_metrics_snapshot **slot,
                                                 int timeout_ms);
    int pmem_metrics_registry_snapshot_peek_into(struct pmem_metrics_registry *r,
                                                 struct pmem_metrics_snapshot **slot,
                                                 int timeout_ms);

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
