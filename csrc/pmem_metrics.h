/*
 * pmem_metrics.h - per-device virtio-pmem counters, Firecracker compatible.
 *
 * Overview
 * ========
 * Every pmem device, keyed by its drive id, owns one `struct pmem_metrics`:
 * a fixed set of shared incremental counters (see PMEM_METRICS_FIELDS).
 * A counter holds two unsigned 64-bit values, `current` and `old`:
 *
 *   pmem_metrics_inc(c), pmem_metrics_add(c, n)   current += n (mod 2^64)
 *   pmem_metrics_count(c)                         current
 *   pmem_metrics_fetch_diff(c)                    current - old (mod 2^64)
 *
 * A flush reports every counter's diff and then moves `old` up to what it
 * reported, in two steps so that nothing is lost when the report cannot be
 * delivered:
 *
 *   s = pmem_metrics_snapshot_take();     load every counter once
 *   ...write the report built from s...
 *   pmem_metrics_snapshot_commit(s);      old := the loaded values
 *   (or pmem_metrics_snapshot_abort(s);   nothing changes)
 *
 * Locking and ordering guarantees
 * -------------------------------
 * - inc/add/count/fetch_diff take no lock.  inc/add are one relaxed atomic
 *   fetch-add: they are safe from any thread at any time, including while a
 *   flush is in progress, and they are never lost.
 * - pmem_metrics_alloc() looks the id up under the registry read lock; an
 *   insert takes the write lock and looks again, so two threads allocating
 *   the same id get the same pointer.  In a segment the lookup takes no
 *   lock, and an insert takes the segment's insert lock and looks again: the
 *   same id is the same pointer in every thread, and the same counters in
 *   every process.
 * - Flushes are serialised: pmem_metrics_snapshot_take() blocks while another
 *   snapshot is outstanding, until that one is committed or aborted (in a
 *   segment, only while another copies: see "Reports on their way").  So two
 *   flushes never report the same increment.  The registry read lock is held
 *   only while the snapshot is copied, never while the report is written.
 *   pmem_metrics_snapshot_take_into() waits at most a given time, so a
 *   binding can wait in slices and handle signals in between.
 * - A commit moves each counter's `old` up by exactly the diff the snapshot
 *   reported (an atomic add), not to an absolute value.  That is what lets a
 *   published report be withdrawn later (pmem_metrics_snapshot_withdraw():
 *   `old` moves back down by the same amounts) without taking the flush lock
 *   and without racing the flushes that ran in between: their own diffs
 *   stay committed, and the withdrawn counts are reported again, once.
 * - A snapshot loads each counter exactly once; its per-device diffs and its
 *   aggregate are computed from those same loads, so the aggregate always
 *   equals the field-wise sum (mod 2^64) of the devices it lists.
 * - pmem_metrics_snapshot_peek() copies the same way for reading cumulative
 *   counts (a Prometheus scrape) without the flush lock: it never waits for
 *   a flush, a flush never waits for it, and it resets nothing.
 *
 * Compatibility
 * -------------
 * The four fields below are those of Firecracker v1.14 and v1.15's pmem
 * metrics, in their order.  v1.16 added two rate-limiter counters; to match
 * it, add one X() line for each to PMEM_METRICS_FIELDS, with Firecracker's
 * name and doc, after queue_event_count (nothing else changes, in C or in
 * Python).  A segment stores its field list: a writer refuses a segment of
 * another list (EPROTO), a read-only registry reads it with its own fields
 * (pmem_metrics_registry_nfields()).  The optional `id`/`properties` head of a metrics line (written
 * by the Python writer) exists only on Firecracker's main branch after
 * v1.16.1.
 *
 * Design
 * ======
 * - The field list is the X-macro PMEM_METRICS_FIELDS: adding a counter is
 *   one line there; everything else, in C and in Python, is derived from it.
 * - Each counter sits on its own 64-byte cache line, so threads bumping
 *   different counters of one device, or counters of different devices,
 *   never false-share.
 * - The process's default registry is one sorted array of device pointers,
 *   ordered by the bytes of the UTF-8 drive id (which is code-point order,
 *   like Rust's BTreeMap<String, _>), searched with binary search behind a
 *   pthread rwlock (writer-preferring on glibc, so a stream of lookups
 *   cannot starve an insert or fork()) -- or, once attached, a shared
 *   segment: fixed device slots and a sorted index in a file, locked with
 *   the kernel's byte-range locks and read without a lock (see "Shared
 *   segments" below).  More segments can be opened as registries of their
 *   own (pmem_metrics_registry_open()).
 * - The hot path is inline in this header: in an optimised build a C
 *   caller's increment compiles to one relaxed fetch-add (a `lock add` on
 *   x86-64; for the first field, whose address is the device's, also the
 *   NULL test, which the compiler cannot drop; at -O0 it is a call).  The
 *   library also exports every function as a symbol for FFI users.
 *
 * Shared segments
 * ===============
 * A segment is a regular file (normally under /dev/shm) that every process
 * sharing it maps; a process that only reads it can open it read-only.
 * What is shared, what a flush promises across processes (and across a
 * kill), how writers lock and why readers take no lock, and the threat model
 * (who can affect whom) are written once, in docs/shared-segments.md; the
 * file's bytes, in docs/segment-format.md.  Each call below says its errors.
 *
 * Limitations
 * ===========
 * - A `struct pmem_metrics *` stays valid until its reference is released
 *   (pmem_metrics_release()); a device leaves only when retired
 *   (pmem_metrics_retire()), after its final flush.
 * - Drive ids are 1 to PMEM_METRICS_ID_MAX_CHARS code points of valid UTF-8
 *   with no control characters (C0, DEL, C1).
 * - Counters wrap modulo 2^64; a diff stays right across one wrap between
 *   flushes.
 * - A snapshot must be committed or aborted by the thread that took it.
 * - fork(): the library registers pthread_atfork handlers when it is loaded
 *   (should that fail, every call that allocates or takes a snapshot retries
 *   it, and fails with errno ENOMEM while it cannot: the registry is never
 *   used without fork safety).  fork() waits for
 *   any registry operation in progress (never for a flush being written), and
 *   the child starts with every count the parent had at that moment, the
 *   registry unlocked and no flush in progress (unless the forking thread
 *   itself had one open: it may finish it in the child; a flush of a shared
 *   segment stays its parent's, and is settled in the child without
 *   moving anything).  A child shares its parent's segments.
 * - C11 only (`_Atomic`); a C++ translation unit stops at an #error below
 *   (C++'s std::atomic is a different type with no layout guarantee here).
 */
#ifndef PMEM_METRICS_H
#define PMEM_METRICS_H

#ifdef __cplusplus
#error "pmem_metrics.h is C11 only: its counters are C11 _Atomic, which C++ does not share; compile the callers of this header as C"
#else /* the rest of this header: C only, so that C++ sees the #error alone */

#if defined(__GNUC_GNU_INLINE__) && !defined(__GNUC_STDC_INLINE__)
#error "pmem_metrics.h needs C99/C11 inline semantics (not -fgnu89-inline)"
#endif

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* The library is built -fvisibility=hidden: what this header declares is what it exports. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/*
 * The counters of one pmem device, in flush order: X(name, doc).
 * This is the only place the list is written down; adding a counter is one
 * line here (every line ends in a backslash; the comment closes the list).
 */
#define PMEM_METRICS_FIELDS(X)                                                 \
	X(activate_fails, "Number of times when activate failed on a pmem device.") \
	X(cfg_fails, "Number of times when interacting with the space config of a pmem device failed.") \
	X(event_fails, "Number of times when handling events on a pmem device failed.") \
	X(queue_event_count, "Number of events triggered on the queue of this pmem device.") \
	/* end of PMEM_METRICS_FIELDS */

#define PMEM_METRICS_COUNT_FIELD_(name, doc) +1
/* Number of counters in one device. */
enum { PMEM_METRICS_NFIELDS = 0 PMEM_METRICS_FIELDS(PMEM_METRICS_COUNT_FIELD_) };
#undef PMEM_METRICS_COUNT_FIELD_

/* Longest accepted drive id, in code points. */
#define PMEM_METRICS_ID_MAX_CHARS 64

/* Why pmem_metrics_id_check() rejected an id. */
enum pmem_metrics_id_error {
	PMEM_METRICS_ID_OK = 0,
	PMEM_METRICS_ID_NULL = 1,     /* the pointer is NULL */
	PMEM_METRICS_ID_EMPTY = 2,    /* zero length */
	PMEM_METRICS_ID_TOO_LONG = 3, /* more than PMEM_METRICS_ID_MAX_CHARS */
	PMEM_METRICS_ID_CONTROL = 4,  /* NUL or another control character */
	PMEM_METRICS_ID_UTF8 = 5      /* not valid UTF-8 */
};

/* One shared incremental counter; it fills one cache line by itself. */
struct pmem_metrics_counter {
	alignas(64) _Atomic uint64_t current;
	_Atomic uint64_t old;
};

#define PMEM_METRICS_DECLARE_FIELD_(name, doc) struct pmem_metrics_counter name;
/* The counters of one pmem device. */
struct pmem_metrics {
	PMEM_METRICS_FIELDS(PMEM_METRICS_DECLARE_FIELD_)
};
#undef PMEM_METRICS_DECLARE_FIELD_

/*
 * Counter hot path.  Inline here; the library holds the external
 * definitions, so each is also an exported symbol.
 *
 * Relaxed ordering is enough for an increment: a counter orders nothing
 * else, and every read-modify-write of one atomic is totally ordered, so no
 * increment is ever lost.
 *
 * A NULL counter pointer is tolerated: inc/add do nothing, count/fetch_diff
 * return 0 (one well-predicted branch).  Note that `&m->cfg_fails` of a NULL
 * `m` is not NULL (only the first field's is): check what
 * pmem_metrics_alloc() returned, not the counter.
 */
inline void pmem_metrics_add(struct pmem_metrics_counter *c, uint64_t n)
{
	if (c)
		atomic_fetch_add_explicit(&c->current, n, memory_order_relaxed);
}

inline void pmem_metrics_inc(struct pmem_metrics_counter *c)
{
	if (c)
		atomic_fetch_add_explicit(&c->current, 1, memory_order_relaxed);
}

/* Cumulative value: everything ever added, modulo 2^64. */
inline uint64_t pmem_metrics_count(const struct pmem_metrics_counter *c)
{
	return c ? atomic_load_explicit(&c->current, memory_order_relaxed) : 0;
}

/* What the next flush would report: current - old.  Changes nothing. */
inline uint64_t pmem_metrics_fetch_diff(const struct pmem_metrics_counter *c)
{
	if (!c)
		return 0;
	/*
	 * Acquire pairs with the release read-modify-writes of `old` by a
	 * commit (pmem_metrics_snapshot_commit() or _publish()): the flusher
	 * loaded `current` before moving `old` up to it, so our later load of
	 * `current` cannot see an older value than that, and the diff never
	 * goes "negative".  A withdrawal only ever moves `old` down.
	 */
	uint64_t old = atomic_load_explicit(&c->old, memory_order_acquire);
	return atomic_load_explicit(&c->current, memory_order_relaxed) - old;
}

/* ---- Devices and the registry ---------------------------------------- */

/*
 * The metrics of the device `drive_id` (NUL-terminated UTF-8), created with
 * every counter at 0 on first use.  The same id always gives the same
 * pointer (until the device is retired and its final flush is done: see
 * pmem_metrics_retire()).  Each call takes a reference to the device, which
 * pmem_metrics_release() gives back; one never given back keeps the
 * device's room, nothing worse.  Returns NULL with errno EINVAL for an id
 * that pmem_metrics_id_check() rejects, ENOMEM when out of memory; a failed
 * call changes nothing.
 */
struct pmem_metrics *pmem_metrics_alloc(const char *drive_id);

/* As pmem_metrics_alloc(), for an id of `len` bytes that need not end in NUL. */
struct pmem_metrics *pmem_metrics_alloc_len(const char *drive_id, size_t len);

/* PMEM_METRICS_ID_OK if `len` bytes at `drive_id` form a valid id, else why not. */
enum pmem_metrics_id_error pmem_metrics_id_check(const char *drive_id, size_t len);

/* The rule behind an enum pmem_metrics_id_error, as an English phrase. */
const char *pmem_metrics_id_strerror(int error);

/*
 * The metrics of the device `drive_id` if it exists, creating nothing (a
 * retired device is found until its final flush, and not revived): NULL
 * with errno ENOENT if no device has that id, EINVAL for an id that
 * pmem_metrics_id_check() rejects.  Like pmem_metrics_alloc(), it takes a
 * reference that pmem_metrics_release() gives back.
 */
struct pmem_metrics *pmem_metrics_find(const char *drive_id);

/* Number of devices allocated so far, less those retired and drained (see below). */
size_t pmem_metrics_device_count(void);

/* ---- Devices that come and go (hot-unplug) ------------------------------ */

/*
 * Retire the device `drive_id` (a hot-unplugged drive): the next flush
 * reports its final delta (its own entry and the aggregate, as any
 * device's) and then it is gone from later flushes and peeks -- its counts
 * since that flush's take, if any, keep it for one more.  A registry that
 * nobody flushes (scraped only) stops showing it to peeks
 * PMEM_METRICS_RETIRE_GRACE_MS after it was retired (default 5 minutes:
 * long enough for scrapes to see its final count; the environment
 * variable of that name sets another, in ms) and lets it go at the next
 * retirement or allocation after that.  Until its final flush,
 * pmem_metrics_alloc() of the id gives the very same device back (nothing
 * reported twice, nothing lost); after it, a new device from zero (a
 * counter reset, as Prometheus and OpenTelemetry expect).
 *
 * Pointers stay valid: a retired device's memory (a segment's slot) is
 * reused only once no reference to it is held.  Each pmem_metrics_alloc()
 * and pmem_metrics_find() takes a reference; pmem_metrics_release() gives
 * one back.  A caller that never releases keeps its device's room for
 * good -- never unsafe.  Increments through a pointer still held after the
 * final flush go to the retired device, which nothing reports: they are
 * counted nowhere, and never into another device; so may those that race
 * the final flush (the increment checks nothing).  In a segment, the
 * references of a process that died are let go by the kernel (each is a
 * byte-range lock of its open file), without its help.
 *
 * Returns 0, or -1 with errno ENOENT (no live device of that id: unknown,
 * or retired already), EINVAL (a bad id), EROFS (a read-only registry).
 */
#define PMEM_METRICS_RETIRE_GRACE_MS 300000
int pmem_metrics_retire(const char *drive_id);

/* Give back a reference that pmem_metrics_alloc() or _find() took.  NULL: no-op. */
void pmem_metrics_release(struct pmem_metrics *m);

/* Field `i` of `m` (in PMEM_METRICS_FIELDS order); NULL if i is out of range. */
struct pmem_metrics_counter *pmem_metrics_field(struct pmem_metrics *m, size_t i);

/* Name and one-line doc of field `i`; NULL if i is out of range. */
const char *pmem_metrics_field_name(size_t i);
const char *pmem_metrics_field_doc(size_t i);

/* ---- Across processes: a shared segment ---------------------------------- */

/* Device slots of a new segment when pmem_metrics_attach() is given 0. */
#define PMEM_METRICS_SHM_DEFAULT_CAPACITY 4096

/*
 * Put this process's registry in the shared segment at `path` (a regular
 * file, normally under /dev/shm), created with room for `capacity` devices
 * (0: PMEM_METRICS_SHM_DEFAULT_CAPACITY) and mode 0600 if it does not exist;
 * an existing segment keeps its own capacity.  Every process attached to one
 * segment shares its devices: the same id is the same counters, bumped with
 * the same inline atomic add, flushed as "What a flush promises" above says.
 * The default registry's kind is decided once, at its first call: attach
 * before any other call on it (pmem_metrics_alloc(), a flush, a device
 * count, pmem_metrics_is_shared()), or it fails with EBUSY.  The
 * environment variable PMEM_METRICS_SHM=PATH attaches at that first call,
 * and if that attach fails, every registry call fails with its errno (never
 * a silent private registry).  The directory part of `path` is resolved
 * once; its last component is never followed if a symbolic link, and is
 * created (whole, under a temporary name, then linked) only if absent.
 * Returns 0, or -1 with errno:
 *   EBUSY      the default registry was used already, or the segment is
 *              open already (pmem_metrics_registry_open())
 *   EINVAL     not a regular file, or not a segment (bad magic); bad argument
 *              (a mode without 0600, which the creator itself needs, or,
 *              without PMEM_METRICS_OPEN_TRUST, with 0002, which opening
 *              would refuse: checked before anything is created)
 *   EPROTO     a segment of another version or field list
 *   EBADMSG    a truncated or corrupt segment
 *   EPERM      another user's, or writable by others (PMEM_METRICS_OPEN_TRUST);
 *              or a lock file another user's, or readable by whoever may
 *              not write it
 *   ELOOP      `path` is a symbolic link (never followed)
 *   EFBIG      a new segment over a quarter of the machine's memory, or
 *              larger than this process can map (on 32 bits)
 *   EACCES, ENOSPC, ...  from opening, creating or reserving the file
 * Once attached, allocation fails with ENOSPC when the segment is full.
 */
int pmem_metrics_attach(const char *path, size_t capacity);

/* As pmem_metrics_attach(), creating a new segment with `mode` (0660: a group may attach). */
int pmem_metrics_attach_mode(const char *path, size_t capacity, unsigned mode);

/*
 * Flags of pmem_metrics_attach_flags() and pmem_metrics_registry_open_flags().
 *   READONLY  open the file read-only, and read it with pread() alone: the
 *             registry can be peeked and counted, never flushed or
 *             allocated in (EROFS); a segment others truncate cannot kill
 *             this process.  Never creates.  (Open only, not attach.)
 *   EXISTING  never create: a missing segment is ENOENT.  (Open only.)
 *   TRUST     use a segment owned by another user, or writable by users
 *             other than its owner and group (else EPERM: see "Whose
 *             segment" in the overview).
 */
#define PMEM_METRICS_OPEN_READONLY 1u
#define PMEM_METRICS_OPEN_EXISTING 2u
#define PMEM_METRICS_OPEN_TRUST 4u

/* As pmem_metrics_attach_mode(), with PMEM_METRICS_OPEN_TRUST or 0 (else EINVAL). */
int pmem_metrics_attach_flags(const char *path, size_t capacity, unsigned mode, unsigned flags);

/*
 * How long a call waits for another process at most, in milliseconds, where
 * a segment's call has no timeout of its own (an allocation of a new id, a
 * take without one): then ETIMEDOUT.  PMEM_METRICS_SEGMENT_WAIT_MS=ms in the
 * environment (read once, 1 to 86400000) sets another bound.
 */
#define PMEM_METRICS_SEGMENT_WAIT_MS 10000

/* That bound as in force in this process, in milliseconds. */
int pmem_metrics_segment_wait_ms(void);

/* Whether this process's registry lives in a shared segment. */
int pmem_metrics_is_shared(void);

/* ---- Registries as objects ---------------------------------------------- */

/*
 * A registry: the devices that share counters, by id.  Every call above
 * works on the process's default registry (private, or a segment once
 * attached).  A process can also open any number of segments as registries
 * of their own, without attaching: an exporter reading several, say.  Each
 * call below is the default-registry call of the same name, on `r`; a NULL
 * `r` fails with EINVAL (0 where the call returns a count).  A registry
 * lives until its last open is closed (pmem_metrics_registry_close()), the
 * default registry as long as the process.
 */
struct pmem_metrics_registry;

/* The process's default registry, the one pmem_metrics_alloc() uses.  Never NULL. */
struct pmem_metrics_registry *pmem_metrics_registry_default(void);

/*
 * The segment at `path` as a registry, created as pmem_metrics_attach_mode()
 * would create it; the process's default registry is not changed.  Opening
 * a segment this process has open already (by another path, or as its
 * default registry) returns that same registry.  NULL with errno as
 * pmem_metrics_attach() (never EBUSY), or ENOMEM.
 */
struct pmem_metrics_registry *pmem_metrics_registry_open(const char *path, size_t capacity,
							 unsigned mode);

/*
 * Close one open of `r` (each pmem_metrics_registry_open*() that returned
 * it is one).  The last close lets the segment go: its files, its mapping
 * and its memory, so an agent that follows segments coming and going holds
 * only the live ones.  After its last close `r` must not be used, as a
 * closed file descriptor; snapshots already taken from it stay readable
 * (they hold copies).  -1 with errno EBUSY, changing nothing, while this
 * process holds a reference to one of its devices or a flush of it is not
 * freed; EINVAL for NULL, or a registry not open (the default registry:
 * only the opens that returned it are counted off; it stays).
 */
int pmem_metrics_registry_close(struct pmem_metrics_registry *r);

/*
 * From now on, flushes and peeks of the segment `r` read the file it has
 * open without checking that its path still names it (no ESTALE): how a
 * follower reads a segment's final counts once its file was removed or
 * replaced (a VM that exited), before it closes it.  -1 with errno EINVAL
 * for NULL or a private registry.
 */
int pmem_metrics_registry_forget_path(struct pmem_metrics_registry *r);

/*
 * The identity of the file the segment `r` has open: its st_dev and
 * st_ino, as stat() gave them when it was opened (they never change), into
 * `dev` and `ino`.  How a follower that watches the path itself (inotify,
 * or an lstat() of many paths at once) tells that the path names another
 * file now, having called pmem_metrics_registry_forget_path() so that no
 * read stats it.  -1 with errno EINVAL for a NULL pointer or a private
 * registry.  Takes no lock.
 */
int pmem_metrics_registry_identity(struct pmem_metrics_registry *r, uint64_t *dev, uint64_t *ino);

/*
 * As pmem_metrics_registry_open(), with PMEM_METRICS_OPEN_* flags: a
 * read-only registry (READONLY), no creation (EXISTING), no ownership
 * check (TRUST).  Opening a segment this process has open already returns
 * that registry; EBUSY if that one is read-only and this open is not.
 */
struct pmem_metrics_registry *pmem_metrics_registry_open_flags(const char *path, size_t capacity,
							       unsigned mode, unsigned flags);

/* Whether `r` lives in a shared segment. */
int pmem_metrics_registry_is_shared(struct pmem_metrics_registry *r);

/* The path `r`'s segment was opened or attached by; NULL for a private registry. */
const char *pmem_metrics_registry_path(struct pmem_metrics_registry *r);

/* Whether devices can be allocated in `r` and it can be flushed (not opened read-only). */
int pmem_metrics_registry_is_writable(struct pmem_metrics_registry *r);

/* The device slots of `r`'s segment; 0 for a private registry (it grows as needed). */
size_t pmem_metrics_registry_capacity(struct pmem_metrics_registry *r);

/*
 * The fields of `r`'s devices: this library's (PMEM_METRICS_FIELDS), or, for
 * a segment opened read-only, the segment's own list, whatever build made it
 * (a writer refuses a segment of another list: EPROTO).  0 / NULL for a
 * registry that cannot be used, and past the last field.
 */
size_t pmem_metrics_registry_nfields(struct pmem_metrics_registry *r);
const char *pmem_metrics_registry_field_name(struct pmem_metrics_registry *r, size_t f);
const char *pmem_metrics_registry_field_doc(struct pmem_metrics_registry *r, size_t f);
/*
 * The same list in one block, for a binding: each field's name, NUL, doc,
 * NUL, in order (a segment's as its file has it); its size in *len.
 */
const char *pmem_metrics_registry_fields(struct pmem_metrics_registry *r, size_t *len);
/*
 * This library's field list as one such block.  A registry whose list it
 * is returns this very pointer from pmem_metrics_registry_fields().
 */
const char *pmem_metrics_fields(size_t *len);

/*
 * The segment format (docs/segment-format.md), for tools and tests that
 * read the bytes themselves: the byte offset named `name` -- a header word
 * ("header.used"), a slot's word from the slot's start ("slot.state",
 * "slot.id"; "slot.counters" and "counter.old" for the counters), a claim's
 * ("claim.n", "entry.diff"), or a constant of this build ("version",
 * "slot_size", "claims", "lock.flush", "lock.ref_base"...).  -1 with errno
 * ENOENT for a name it does not know.
 */
long long pmem_metrics_segment_offset(const char *name);

struct pmem_metrics *pmem_metrics_registry_alloc(struct pmem_metrics_registry *r,
						 const char *drive_id);
struct pmem_metrics *pmem_metrics_registry_alloc_len(struct pmem_metrics_registry *r,
						     const char *drive_id, size_t len);
/*
 * As pmem_metrics_registry_alloc_len(), waiting at most `timeout_ms` for
 * another process that holds the segment's insert lock (0: not at all;
 * negative: PMEM_METRICS_SEGMENT_WAIT_MS); then NULL with errno ETIMEDOUT.
 * A binding waits in slices, and handles signals in between.  An id that
 * exists already is found without the lock, so never waits.
 */
struct pmem_metrics *pmem_metrics_registry_alloc_within(struct pmem_metrics_registry *r,
							const char *drive_id, size_t len,
							int timeout_ms);

/*
 * As pmem_metrics_find(), in `r`, for an id of `len` bytes.  In a segment it
 * takes no lock and finds an id that is there whatever other processes
 * insert meanwhile; EROFS in a read-only registry (it has no mapping for a
 * pointer to point into: read counts with a peek).
 */
struct pmem_metrics *pmem_metrics_registry_find(struct pmem_metrics_registry *r,
						const char *drive_id, size_t len);

/* As pmem_metrics_retire(), in `r`, for an id of `len` bytes. */
int pmem_metrics_registry_retire(struct pmem_metrics_registry *r, const char *drive_id,
				 size_t len);

/*
 * How full a registry is.  `capacity`: device slots (0: a private registry,
 * which grows); `devices`: live devices; `retired`: devices retired and not
 * yet let go (waiting for their final flush, or, in a segment, for the
 * references still held to them: capacity - devices - retired slots are
 * free); `alloc_failures`: allocations refused since the segment was
 * created (ENOSPC) or the process started (ENOMEM).
 */
struct pmem_metrics_registry_stats {
	size_t capacity, devices, retired;
	uint64_t alloc_failures;
};

/* Fill *out for `r`: 0, or -1 with errno (EINVAL, EBADMSG for a segment's nonsense). */
int pmem_metrics_registry_stats(struct pmem_metrics_registry *r,
				struct pmem_metrics_registry_stats *out);

/*
 * Number of devices; 0 with errno set on failure (EBADMSG: a count the
 * segment cannot hold).  In a segment, read without a lock.
 */
size_t pmem_metrics_registry_device_count(struct pmem_metrics_registry *r);

/*
 * Snapshots of `r`.  The other snapshot calls take the snapshot itself,
 * which knows its registry.  A thread has at most one open flush at a
 * time, in any registry: a second take fails with EDEADLK.
 *
 * In a segment, another process holds the flush lock while it flushes -- or
 * for as long as it is stopped (SIGSTOP, a debugger) in the middle of one.
 * `timeout_ms` bounds a take's wait for it, as in
 * pmem_metrics_snapshot_take_into(): ETIMEDOUT, nothing held; the calls
 * without it wait at most PMEM_METRICS_SEGMENT_WAIT_MS.  A peek waits for
 * nothing (no lock; `timeout_ms` is accepted for symmetry), and nor does a
 * take's copy.  Both fail with ESTALE once the segment's path no longer
 * names its file, EBADMSG for values the segment cannot hold, and a take of
 * a read-only registry with EROFS.
 */
struct pmem_metrics_snapshot;
struct pmem_metrics_snapshot *pmem_metrics_registry_snapshot_take(struct pmem_metrics_registry *r);
struct pmem_metrics_snapshot *pmem_metrics_registry_snapshot_peek(struct pmem_metrics_registry *r);
int pmem_metrics_registry_snapshot_take_into(struct pmem_metrics_registry *r,
					     struct pmem_metrics_snapshot **slot, int timeout_ms);
int pmem_metrics_registry_snapshot_peek_into(struct pmem_metrics_registry *r,
					     struct pmem_metrics_snapshot **slot, int timeout_ms);

/* ---- Flushing ---------------------------------------------------------- */

/* A consistent copy of every device's diffs, taken by one flush. */
struct pmem_metrics_snapshot;

/*
 * Start a flush: wait until no other snapshot is outstanding, then load
 * every counter of every device once.  Must be followed, in the same thread,
 * by exactly one pmem_metrics_snapshot_commit() or _abort().  Returns NULL
 * with errno ENOMEM when out of memory, EDEADLK if this thread already holds
 * an outstanding snapshot.
 */
struct pmem_metrics_snapshot *pmem_metrics_snapshot_take(void);

/*
 * A read-only copy for scraping cumulative counts: the same copy as
 * pmem_metrics_snapshot_take() makes, but it takes no flush lock (so it never
 * waits for a flush, and a flush never waits for it) and it is not a flush.
 * Free it with pmem_metrics_snapshot_free().  Returns NULL with errno ENOMEM
 * when out of memory.
 *
 * This is how to read every device's counts without taking them: the ids
 * (pmem_metrics_snapshot_len/_id/_ids), the cumulative counts
 * (pmem_metrics_snapshot_counts()) and what the next flush would report
 * (pmem_metrics_snapshot_diffs()), from one load of each counter, while the
 * flushes report exactly what they would have without it.
 */
struct pmem_metrics_snapshot *pmem_metrics_snapshot_peek(void);

/* Number of devices in the snapshot, in id order. */
size_t pmem_metrics_snapshot_len(const struct pmem_metrics_snapshot *s);

/* Id of device `i` (NUL-terminated); NULL if i is out of range. */
const char *pmem_metrics_snapshot_id(const struct pmem_metrics_snapshot *s, size_t i);

/*
 * Every id, in order, each followed by one NUL byte; *len is set to the
 * total number of bytes.  Lets a binding read all names in one call.
 */
const char *pmem_metrics_snapshot_ids(const struct pmem_metrics_snapshot *s, size_t *len);

/*
 * The fields of a snapshot's rows: its registry's (pmem_metrics_registry_nfields()),
 * which are this library's PMEM_METRICS_NFIELDS except in a segment opened
 * read-only that another build made with another field list.
 */
size_t pmem_metrics_snapshot_nfields(const struct pmem_metrics_snapshot *s);
/* Its registry's fields, as pmem_metrics_registry_fields() gives them. */
const char *pmem_metrics_snapshot_fields(const struct pmem_metrics_snapshot *s, size_t *len);

/*
 * The diffs, row-major: with nf = pmem_metrics_snapshot_nfields(s), device
 * i's field f is [i * nf + f], and the array holds
 * pmem_metrics_snapshot_len(s) * nf values.
 */
const uint64_t *pmem_metrics_snapshot_diffs(const struct pmem_metrics_snapshot *s);

/* The aggregate: pmem_metrics_snapshot_nfields(s) field-wise sums of the diffs (mod 2^64). */
const uint64_t *pmem_metrics_snapshot_aggregate(const struct pmem_metrics_snapshot *s);

/*
 * The cumulative counts (pmem_metrics_count()) the snapshot loaded, laid out
 * like pmem_metrics_snapshot_diffs().
 */
const uint64_t *pmem_metrics_snapshot_counts(const struct pmem_metrics_snapshot *s);

/*
 * A segment's room (pmem_metrics_registry_stats()) as read with the
 * snapshot's counts, from the same reading of the file: what a scrape
 * shows beside them, at no extra cost.  A peek's only: a flush has no use
 * for it and does not read it.  0, or -1 with errno EINVAL for NULL, a
 * flush's snapshot, or a snapshot of a private registry (ask the registry
 * instead).
 */
int pmem_metrics_snapshot_stats(const struct pmem_metrics_snapshot *s,
				struct pmem_metrics_registry_stats *out);

/*
 * The report built from the flush `s` was delivered: move every counter's
 * `old` up by what `s` reported, release the flush and free `s`.  Increments
 * made since the snapshot stay for the next flush.  NULL, or a peek: no-op.
 */
void pmem_metrics_snapshot_commit(struct pmem_metrics_snapshot *s);

/*
 * The report built from the flush `s` was not delivered: change nothing,
 * release the flush and free `s`.  NULL, or a peek: no-op.
 */
void pmem_metrics_snapshot_abort(struct pmem_metrics_snapshot *s);

/*
 * Free a peek, or a flush snapshot already settled by the slot calls below
 * (published or withdrawn).  An open flush is aborted first (by its own
 * thread only: one open in another thread is left alone).  NULL: no-op.
 */
void pmem_metrics_snapshot_free(struct pmem_metrics_snapshot *s);

/*
 * Interrupt-safe flushing, for bindings whose code can be interrupted between
 * any two steps (Python: a KeyboardInterrupt may be raised as soon as a C
 * call returns, before its result is stored anywhere).  Each call takes the
 * address of the caller's snapshot pointer (a `slot`, in memory the caller
 * owns and set to NULL before the first call) and updates it before it
 * returns, so the caller's cleanup always finds what is outstanding:
 *
 *   struct pmem_metrics_snapshot *slot = NULL;
 *   while (pmem_metrics_snapshot_take_into(&slot, 50) != 0)
 *           if (errno != ETIMEDOUT) fail;          (handle signals here)
 *   ...build and deliver the report from slot...
 *   pmem_metrics_snapshot_publish(&slot);          delivered
 *   (on an exception anywhere above: pmem_metrics_snapshot_withdraw(&slot),
 *    or, where a delivered report stands, _dispose(&slot) alone)
 *   pmem_metrics_snapshot_dispose(&slot);          free, *slot = NULL
 *
 * All of them must be called by the thread that took the snapshot, except
 * dispose() of a snapshot that is no longer open (any thread may free it).
 */

/*
 * As pmem_metrics_snapshot_take(), waiting at most `timeout_ms` milliseconds
 * for another flush to finish (0: do not wait; negative: wait as long as it
 * takes in a private registry, and at most PMEM_METRICS_SEGMENT_WAIT_MS in
 * a segment, where every wait is bounded).  Stores the snapshot in *slot before it returns.  Returns 0, or -1
 * with *slot NULL and errno ETIMEDOUT (another flush is still outstanding;
 * in a segment, in this process or another),
 * EDEADLK (this thread has one open), ENOMEM, or EINVAL (slot NULL or *slot
 * not NULL: it would lose the snapshot it holds).
 */
int pmem_metrics_snapshot_take_into(struct pmem_metrics_snapshot **slot, int timeout_ms);

/* As pmem_metrics_snapshot_peek(), storing it in *slot.  0, or -1 with errno ENOMEM, EINVAL. */
int pmem_metrics_snapshot_peek_into(struct pmem_metrics_snapshot **slot);

/*
 * The report built from *slot was delivered: as pmem_metrics_snapshot_commit(),
 * but the snapshot stays in *slot, so the report can still be withdrawn.
 * Does nothing unless *slot is an open flush.
 */
void pmem_metrics_snapshot_publish(struct pmem_metrics_snapshot **slot);

/*
 * The report built from *slot did not reach its reader after all: an open
 * flush is aborted (nothing changes); a published one is undone (`old` moves
 * back down by what it reported, so the next flush reports those counts).
 * Never waits.  Afterwards *slot is settled: withdraw() again, or publish(),
 * does nothing.  NULL slot or *slot: no-op.
 */
void pmem_metrics_snapshot_withdraw(struct pmem_metrics_snapshot **slot);

/* Whether `s` is a flush that is neither published, committed nor withdrawn yet. */
int pmem_metrics_snapshot_is_open(const struct pmem_metrics_snapshot *s);

/*
 * pmem_metrics_snapshot_free(*slot), then *slot = NULL: an open flush is
 * aborted first; a published one stays published (for a report whose
 * delivery, once published, stands: a line in a file).  A flush open in
 * another thread stays in *slot.  NULL slot: no-op.
 */
void pmem_metrics_snapshot_dispose(struct pmem_metrics_snapshot **slot);

/* ---- Writing metrics lines ---------------------------------------------- */

/*
 * A line goes out whole, or is cut back, or its fragment is closed off, so
 * that every line a reader parses is whole, even with several writers (in
 * any processes) on one file or pipe.  What a call did is stored in the
 * caller's memory (*sent, *start) before it returns, so a binding whose
 * code can be interrupted as a call returns never loses track of it:
 *
 *   size_t sent = 0; int64_t start = -1;
 *   while (sent < len)                        (pipes: a chunk at a time)
 *           if (pmem_metrics_line_write(fd, line + sent, len - sent,
 *                                       &sent, &start) < 0) { ... }
 *   (on a failure, before the next line:
 *    pmem_metrics_line_cut(fd, start, &sent); sent > 0 afterwards: a
 *    fragment stays, and the next line must start with
 *    PMEM_METRICS_LINE_CUT)
 *
 * Regular files: each call holds an exclusive, non-blocking flock(2) on the
 * descriptor's open file description while it looks at the file and
 * appends or truncates, so writers using this library never slip between
 * another's check and its append or cut.  Writers that do not take the
 * lock, and processes sharing one open file description (a forked child),
 * are not excluded.
 */

/*
 * What closes off a fragment: ASCII CAN, then a newline.  The CAN makes the
 * fragment's line invalid JSON even when all that is missing of it is its
 * newline; the newline ends it.  (pmem_metrics/_sink.py's CUT is the same.)
 */
#define PMEM_METRICS_LINE_CUT "\x18\n"

/*
 * Write (part of) one metrics line: `len` bytes at `buf`, the part of the
 * line that is not out yet.  What got out is added to *sent before this
 * returns; *start (if still -1) is set to the offset of the line's first
 * byte in a regular file.  Returns the bytes of `buf` written, or -1 with
 * errno.
 *
 * A regular file gets the whole of `buf` in this one call (partial writes
 * are continued), under the file's lock; first, if the file does not end in
 * a newline (another writer's fragment) and `buf` does not start with
 * PMEM_METRICS_LINE_CUT, that marker goes out with it (not counted in
 * *sent), so the line starts on a line of its own.  How the file ends is
 * read with pread(2), through /proc/self/fd for a descriptor opened for
 * writing only; a file that cannot be read is taken to end with a newline.
 * errno EAGAIN: another writer holds the lock, nothing was written (try
 * again); EIO: *sent > 0 but the line's first part no longer ends the file.
 *
 * Anything else gets one write(2) (a socket: send(2) with MSG_NOSIGNAL |
 * MSG_DONTWAIT, so it never blocks).  A reader that went away gives EPIPE,
 * never a SIGPIPE death: SIGPIPE is blocked for the call, and one it raised
 * is taken back.  EINTR, EAGAIN: nothing written, try again (once writable).
 */
long pmem_metrics_line_write(int fd, const char *buf, size_t len, size_t *sent, int64_t *start);

/*
 * Take a line that did not go out whole back out of the regular file `fd`:
 * truncate it to `start` if the file still ends exactly where the line's
 * *sent bytes do (a writer that appended since must keep its line), and
 * put a descriptor without O_APPEND back at `start`.  Returns 1 when it cut
 * (*sent is set to 0, before it returns: nothing of the line is left),
 * 0 when nothing of the line is in the file (start < 0, *sent == 0) or it
 * must stay: another writer appended after it, or holds the lock now (the
 * fragment is then closed off by the next line, which starts with
 * PMEM_METRICS_LINE_CUT).  -1 with errno on failure (*sent unchanged unless
 * the truncation itself succeeded).  Never waits.
 */
int pmem_metrics_line_cut(int fd, int64_t start, size_t *sent);

#ifdef PMEM_METRICS_FAULT_INJECTION
/*
 * Test builds only (compiled with -DPMEM_METRICS_FAULT_INJECTION): make the
 * n-th memory allocation from now fail as if out of memory; 0 turns it off.
 */
void pmem_metrics_fault_fail_alloc(unsigned n);

/*
 * Test builds only: call hook(where) in the middle of an insert ("insert",
 * with the registry write-locked and the array, or a segment's index, half
 * updated), of a flush ("take", holding the flush lock, before the copy;
 * "copy", after the first device's counters were loaded; in a segment,
 * "claim", its claim recorded and nothing moved yet) and of a commit or
 * withdrawal ("commit", "withdraw", after the first device; a segment's
 * flush commits at its take), and before each sleep of a wait for another
 * process ("wait": a lock or a device was busy; the call tries again when
 * the hook returns).  NULL turns it off.
 */
void pmem_metrics_fault_pause_hook(void (*hook)(const char *where));
#endif

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif /* __cplusplus */
#endif /* PMEM_METRICS_H */
