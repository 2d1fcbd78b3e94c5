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

    int pmem_metrics_attach_mode(const char *path, size_t capacity, unsigned mode);

    struct pmem_metrics_registry *pmem_metrics_registry_default(void);
    struct pmem_metrics_registry *pmem_metrics_registry_open(const char *path, size_t capacity,
                                                             unsigned mode);
    int pmem_metrics_registry_is_shared(struct pmem_metrics_registry *r);
    size_t pmem_metrics_registry_capacity(struct pmem_metrics_registry *r);
    struct pmem_metrics *pmem_metrics_registry_alloc_len(struct pmem_metrics_registry *r,
                                                         const char *drive_id, size_t len);
    size_t pmem_metrics_registry_device_count(struct pmem_metrics_registry *r);
    int pmem_metrics_registry_snapshot_take_into(struct pmem_metrics_registry *r,
                                                 struct pmem_metrics_snapshot **slot,
                                                 int timeout_ms);
    int pmem_metrics_registry_snapshot_peek_into(struct pmem_metrics_registry *r,
                                                 struct pmem_metrics_snapshot **slot,
                                                 int timeout_ms);

    long pmem_metrics_line_write(int fd, const char *buf, size_t len, size_t *sent,
                                 int64_t *start);
    int pmem_metrics_line_cut(int fd, int64_t start, size_t *sent);
    """
)

ffi.set_source(
    "_ffi",
    '#include "pmem_metrics.h"',
    include_dirs=[CSRC],
    libraries=["pmemmetrics"],
    extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
)

if __name__ == "__main__":
    ffi.compile()
