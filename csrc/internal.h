/*
 * internal.h - what the files of libpmemmetrics share, and nothing else.
 *
 * The library is built -fvisibility=hidden: only the declarations of
 * pmem_metrics.h are exported.  The names below are hidden, and prefixed
 * pmi_ so that a static link cannot meet a program's own names.
 *
 *   ids.c             drive-id rules, the field tables
 *   fault.c           allocation wrappers and the test-only fault hooks
 *   wait.c            deadlines and bounded waits
 *   device.c          a device's life: its state word, retire, drain, the
 *                     grace period, moving its baselines
 *   segment_lock.c    a segment's locks, in its lock file: insert, flush,
 *                     claims', references'
 *   segment_file.c    a segment's files: create, check, open, close, fork,
 *                     storage
 *   segment_names.c   the format's offsets by name, for tools and tests
 *   segment_read.c    reading a segment without a lock: views, sorting by id
 *   segment_claim.c   claim records: flushes whose reports are on their way
 *   segment_index.c   finding and inserting ids, the sorted index, room
 *   segment_life.c    retire, drain, stats of a segment
 *   fork.c            the process-wide registry state, and fork() handlers
 *   private.c         the private kind of registry: a sorted array
 *   registry.c        registries: the kinds' table, the default registry
 *                     (attach, PMEM_METRICS_SHM), open, the public calls
 *   snapshot_copy.c   a registry's devices copied into a snapshot
 *   snapshot.c        take, peek, publish, withdraw, commit
 *   line.c            writing metrics lines to a destination
 *
 * Calls between these files only go down this list's dependency order:
 * device, then the segment files (lock, file, names, read, claim, index, life),
 * then fork, private, registry, snapshot_copy, snapshot.  segment_layout.h is the file's
 * bytes.
 *
 * Lock order, where several are held: `kind_lock`, then a registry's flush
 * lock, then its registry lock; the default registry's lock, then
 * `opened_lock` (only fork's prepare handler takes several); a segment's
 * insert lock, then its flush lock.
 */
#ifndef PMEM_METRICS_INTERNAL_H
#define PMEM_METRICS_INTERNAL_H

/* Before any system header: F_OFD_SETLK, dup3, fallocate, pthread_mutex_clocklock, rwlock kinds. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "pmem_metrics.h"
#include "segment_layout.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

enum {
	NFIELDS = PMEM_METRICS_NFIELDS,
	ID_MAX_BYTES = 4 * PMEM_METRICS_ID_MAX_CHARS /* UTF-8: at most 4 bytes a code point */
};

/* No false sharing: every counter owns exactly one 64-byte line. */
_Static_assert(sizeof(struct pmem_metrics_counter) == SEG_COUNTER_SIZE, "a counter is one cache line");
_Static_assert(alignof(struct pmem_metrics_counter) == 64, "counters start on a cache line");
_Static_assert(offsetof(struct pmem_metrics_counter, current) == SEG_COUNTER_CURRENT, "counter layout");
_Static_assert(offsetof(struct pmem_metrics_counter, old) == SEG_COUNTER_OLD, "counter layout");
_Static_assert(sizeof(struct pmem_metrics) == 64 * NFIELDS, "a device is its counters");
_Static_assert((int)NFIELDS <= (int)SEG_MAX_FIELDS, "a segment holds at most SEG_MAX_FIELDS counters");
/*
 * Processes that share a segment add to its counters with the same inline
 * atomic add: that is only one counter if the atomics are lock-free (a
 * lock-based atomic would take a lock private to each process).
 */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic uint32_t) == 4,
	       "atomics have their plain size, so a segment's layout is the same in every process");

/*
 * One device: the public counters first, then the id they are known by.
 * In a segment, a slot is exactly this (segment_layout.h: the counters,
 * struct pmi_slot_tail, the id), as the asserts below pin.
 */
struct device {
	struct pmem_metrics m;
	/*
	 * In a segment, 1 once the counters and id are set: a release store,
	 * paired with the acquire loads of readers and of a rebuild (private
	 * devices are born so).
	 */
	_Atomic uint32_t published;
	uint32_t id_len; /* bytes, without the NUL */
	/*
	 * Where the device is in its life (DEV_LIVE, DEV_RETIRED, DEV_DRAINED),
	 * with a generation above the two low bits that each retirement
	 * changes: a flush drains a device only if it is still retired as the
	 * flush saw it (not revived, not retired again).
	 */
	_Atomic uint32_t state;
	/* Private devices: the array's one while it holds the device, plus one per reference. */
	_Atomic uint32_t refs;
	/*
	 * A segment's slot: counts up each time the slot is given to a new
	 * device, so a flush that reported the old one never moves the new
	 * one's baselines (withdraw, drain).
	 */
	_Atomic uint32_t born;
	uint32_t unused;
	_Atomic uint64_t retired_ms; /* CLOCK_MONOTONIC, when it was last retired */
	char id[];
};

#define TAIL_AT(member) (offsetof(struct device, member) - sizeof(struct pmem_metrics))
_Static_assert(TAIL_AT(published) == offsetof(struct pmi_slot_tail, published), "slot layout");
_Static_assert(TAIL_AT(id_len) == offsetof(struct pmi_slot_tail, id_len), "slot layout");
_Static_assert(TAIL_AT(state) == offsetof(struct pmi_slot_tail, state), "slot layout");
_Static_assert(TAIL_AT(refs) == offsetof(struct pmi_slot_tail, refs), "slot layout");
_Static_assert(TAIL_AT(born) == offsetof(struct pmi_slot_tail, born), "slot layout");
_Static_assert(TAIL_AT(retired_ms) == offsetof(struct pmi_slot_tail, retired_ms), "slot layout");
_Static_assert(TAIL_AT(id) == sizeof(struct pmi_slot_tail), "slot layout");
#undef TAIL_AT

static inline uint32_t pmi_dev_state(uint32_t word)
{
	return word & DEV_STATE_MASK;
}

/* The state word `word` in state `state`; retiring starts a new generation. */
static inline uint32_t pmi_dev_word(uint32_t word, uint32_t state)
{
	uint32_t gen = word & ~(uint32_t)DEV_STATE_MASK;

	return (state == DEV_RETIRED ? gen + 4 : gen) | state;
}

/* Whether a slot in state `word` holds a device: live, or retired (not drained). */
static inline bool pmi_is_device(uint32_t word)
{
	return pmi_dev_state(word) == DEV_LIVE || pmi_dev_state(word) == DEV_RETIRED;
}

/* Counter `f` of `m` (the static asserts above make the counters an array). */
static inline struct pmem_metrics_counter *pmi_counter(struct pmem_metrics *m, size_t f)
{
	return (struct pmem_metrics_counter *)m + f;
}

/* ---- ids.c ---- */

/* Compare two ids of the given lengths in bytes, as unsigned bytes. */
int pmi_id_cmp(const char *a, size_t a_len, const char *b, size_t b_len);

/*
 * The field list as a segment stores it: each name, NUL, doc, NUL.  Its
 * size (with `out` NULL), or the bytes written to `out`.
 */
size_t pmi_fields_encode(char *out);
/* This library's field list so encoded, once: its bytes, and their number in *len. */
const char *pmi_fields(size_t *len);

/* ---- fault.c ---- */

void *pmi_malloc(size_t size);
void *pmi_realloc(void *p, size_t size);
void *pmi_aligned_alloc(size_t alignment, size_t size);
/* Test builds: call the pause hook (a test stops a thread here); else nothing. */
void pmi_pause_point(const char *where);
/* Test builds: whether this registration of the fork handlers is to fail. */
bool pmi_fault_fail_atfork(void);

/* ---- wait.c ---- */

/* A deadline on the monotonic clock `timeout_ms` from now; negative: none. */
struct pmi_deadline {
	struct timespec at;
	bool never;
};
struct pmi_deadline pmi_deadline_in(int timeout_ms);
/* Whether the deadline has passed. */
bool pmi_deadline_passed(const struct pmi_deadline *d);
/* Sleep a little (a growing back-off, `round` from 0), never past the deadline. */
void pmi_backoff(const struct pmi_deadline *d, unsigned round);
/* Lock `mutex` by the deadline: 0, ETIMEDOUT, or another error number. */
int pmi_mutex_lock_by(pthread_mutex_t *mutex, const struct pmi_deadline *d);
/* Milliseconds on CLOCK_MONOTONIC (the same clock in every process of a host). */
uint64_t pmi_now_ms(void);
/* The deadline of a segment wait: timeout_ms, or if negative the default bound. */
struct pmi_deadline pmi_seg_deadline(int timeout_ms);

/* ---- device.c ---- */

enum pmi_snapshot_state {
	SNAPSHOT_PEEK,      /* a read-only copy: holds nothing, moves nothing */
	SNAPSHOT_OPEN,      /* a flush holding its registry's flush lock */
	SNAPSHOT_PUBLISHED, /* committed, flush lock released; can still be withdrawn */
	SNAPSHOT_SETTLED    /* aborted, or published and withdrawn: nothing more to do */
};

/* How long a retired device stays visible to scrapes of a registry nobody flushes (ms). */
uint64_t pmi_retire_grace_ms(void);
/* Live -> retired (its retirement time set first): 0, or ENOENT unless it was live. */
int pmi_device_retire(struct device *d);
/* Whether nothing was added to `d` since its baselines last moved (current == old). */
bool pmi_device_settled(struct device *d);
/* Retired as `word` says and settled -> drained: whether it was. */
bool pmi_device_drain(struct device *d, uint32_t word);
/* Retired as `word` says, `grace` ms ago or more at `now` -> drained: whether it was. */
bool pmi_device_expire(struct device *d, uint32_t word, uint64_t now, uint64_t grace);
/* Whether a device in state `word` is in a snapshot of kind `state`. */
bool pmi_reports(uint32_t word, uint64_t retired_ms, enum pmi_snapshot_state state);
/*
 * Move `d`'s baselines (`old`) by `diff`, field by field: up, or back down.
 * The one place baselines move: commits, withdrawals, claims.
 */
void pmi_device_move(struct device *d, const uint64_t *diff, bool back);

/* ---- the segment files ---- */

/*
 * A shared segment, as this process opened it: its layout is copied out of
 * the file once it was checked, and only these copies are used to find
 * things, so a process that scribbles on the file cannot send us outside it.
 */
struct pmi_seg {
	int fd;          /* the data file: open for the registry's life, for its reads */
	int lock_fd;     /* writable: the lock file (segment_lock.c); -1 when read-only */
	bool writable;   /* opened read-write and mapped; else read by pread() only */
	char *map;       /* the data file, MAP_SHARED read-write; NULL when read-only */
	uint64_t size, capacity, slot_size, index_off, slots_off, claims_off, claim_size;
	/*
	 * The segment's own fields, as its file names them: this library's
	 * (writable: a writer refuses any other list), or another build's (a
	 * read-only registry reads a segment of any field list).
	 */
	size_t nfields;
	char *fields; /* the file's list, copied: name, NUL, doc, NUL, ... (in field_part's block) */
	size_t fields_len;
	bool own_fields; /* the list is this library's (always, for a writer) */
	const char **field_part; /* field f's name at [2f], its doc at [2f + 1]; `fields` after */
	dev_t dev; /* the data file's identity: one registry per segment per process */
	ino_t ino;
	char *path; /* as opened: re-checked at each flush and scrape */
	_Atomic int path_forgotten; /* 1: the file it has open is read whatever the path names now */
	_Atomic uint64_t read_high; /* read-only: `high` as last read (segment_read.c's guess) */
	/*
	 * A segment's locks exclude other processes, not the threads of this
	 * one (byte-range locks of the open file description, which the
	 * threads share): these exclude the threads first.
	 */
	pthread_mutex_t thread_lock[2];
	_Atomic uint32_t mine; /* the claims this process holds (their locks do not exclude it) */
	/*
	 * Writable: this process's references to each slot's device; the
	 * slot's read lock is held while its count is above 0.  `ref_lock`
	 * makes a count and its lock change together.
	 */
	uint32_t *refs;
	pthread_mutex_t ref_lock;
	/*
	 * Writable: slots [0, reserved) have storage, as this process made sure
	 * (segment_file.c): only those are touched through the mapping, so a
	 * `high` another process wrote can never send us into a hole of the
	 * sparse file (a SIGBUS once the file system is full).
	 */
	_Atomic uint64_t reserved;
	pthread_mutex_t reserve_lock;
};

/* The two locks of a segment, each a byte of its lock file. */
enum pmi_seg_lock { SEG_INSERT_LOCK = LOCK_INSERT, SEG_FLUSH_LOCK = LOCK_FLUSH };

static inline struct pmi_seg_header *pmi_seg_hdr(const struct pmi_seg *g)
{
	return (struct pmi_seg_header *)g->map;
}

static inline _Atomic uint32_t *pmi_seg_index(const struct pmi_seg *g)
{
	return (_Atomic uint32_t *)(g->map + g->index_off);
}

static inline struct device *pmi_seg_slot(const struct pmi_seg *g, uint64_t i)
{
	return (struct device *)(g->map + g->slots_off + i * g->slot_size);
}

/* The slot number of device `d` in `g`'s mapping. */
static inline uint64_t pmi_seg_slot_of(const struct pmi_seg *g, const void *d)
{
	return (uint64_t)((const char *)d - (g->map + g->slots_off)) / g->slot_size;
}

/* The id length of a device, read once: 0 if impossible. */
static inline size_t pmi_slot_id_len(const struct device *d)
{
	uint32_t len = *(const volatile uint32_t *)&d->id_len;

	return len <= ID_MAX_BYTES ? len : 0;
}

/* segment_lock.c */
int pmi_seg_lock(struct pmi_seg *g, enum pmi_seg_lock which, const struct pmi_deadline *d);
void pmi_seg_unlock(struct pmi_seg *g, enum pmi_seg_lock which);
/* Claim `k`'s lock, one try: 0, or the error (EAGAIN: its flush holds it). */
int pmi_seg_claim_lock(struct pmi_seg *g, int k);
void pmi_seg_claim_unlock(struct pmi_seg *g, int k);
/* One more reference of this process to slot `s` (its read lock taken with the first). */
int pmi_seg_ref_get(struct pmi_seg *g, uint64_t s);
/* One reference less to slot `s` (its lock let go with the last). */
void pmi_seg_ref_put(struct pmi_seg *g, uint64_t s);
/* Whether another process holds a reference to slot `s` (the kernel knows its lock). */
bool pmi_seg_referenced(const struct pmi_seg *g, uint64_t s);
/* Whether another process holds a reference to any slot in [lo, hi): one system call. */
bool pmi_seg_any_referenced(const struct pmi_seg *g, uint64_t lo, uint64_t hi);
/* After fork(): the child's own locks for the references it inherited. */
int pmi_seg_refs_after_fork(struct pmi_seg *g);

/* segment_file.c */
/* The size of a slot of `nfields` counters. */
uint64_t pmi_seg_slot_size(uint64_t nfields);
int pmi_seg_open(struct pmi_seg *g, const char *path, uint64_t capacity, unsigned mode,
		 unsigned flags);
void pmi_seg_close(struct pmi_seg *g);
int pmi_seg_check_identity(const struct pmi_seg *g);
/* Whether a segment file of status `st` may be opened with `flags`: 0, or EPERM. */
int pmi_seg_trusted(const struct stat *st, unsigned flags);
int pmi_seg_after_fork(struct pmi_seg *g);
/* Storage for slots [0, n) (with their index and claim entries): 0, or ENOSPC. */
int pmi_seg_reserve(struct pmi_seg *g, uint64_t n);
/*
 * The header's `high`, read once, bounded by the capacity and by the slots
 * with storage (reserving what a legitimate insert reserved already):
 * every slot below it may be touched through the mapping.
 */
uint64_t pmi_seg_high(struct pmi_seg *g);

/* segment_read.c */

/*
 * A slot as copied out of a segment with pread(): where its counters went
 * (current at counts[0, nfields), old at counts[nfields, 2 nfields)), and
 * its id.
 */
struct pmi_slot_copy {
	uint64_t *counts;
	uint64_t retired_ms;
	size_t id_at;
};

/*
 * The devices of a segment in the index's order, read without a lock:
 * position i is slot `slot[i]`, whose id is `len[i]` bytes at pmi_view_id().  Read through
 * the mapping where the registry has one (`base`: the devices themselves,
 * slots `slot_size` apart), else copied out with pread() (`copy`, by slot
 * number, and `ids`).  Every value in it has been bounded.
 */
struct pmi_seg_view {
	size_t n;
	uint32_t *slot;
	uint32_t *len;
	uint32_t *state;   /* each position's state word, as read with its slot */
	const char *base;
	uint64_t slot_size;
	struct pmi_slot_copy *copy;
	uint64_t *counts; /* the copies' counters: 2 nfields a slot */
	size_t nfields;
	char *ids;
	uint32_t *by_slot; /* each id's length, by slot number (0: no device there) */
	uint32_t *state_by_slot; /* each slot's state word, as read */
	size_t high;       /* slots the view read: [0, high) */
	bool sorted;       /* by the slots' own ids, not by the index */
	size_t ids_used, ids_cap; /* bytes of `ids` (a copy) */
	uint64_t alloc_failures;  /* the header's, read with the rest */
};
int pmi_seg_view(struct pmi_seg *g, struct pmi_seg_view *v);
/*
 * The caller found the ids out of order along the view: sort the slots by
 * their ids instead.  0, or EBADMSG (sorted already: the ids change as they
 * are read) with the view freed.
 */
int pmi_seg_view_sort(struct pmi_seg_view *v);
void pmi_seg_view_free(struct pmi_seg_view *v);
const char *pmi_view_id(const struct pmi_seg_view *v, size_t i);
int pmi_seg_device_count(struct pmi_seg *g, size_t *n);
/* Sort `n` slot numbers of the mapping's slots by their ids (lengths `len`, by slot). */
void pmi_seg_sort(const struct pmi_seg *g, uint32_t *v, size_t n, const uint32_t *len);
/* A header word read once, from the mapping or with pread(): 0, or EBADMSG. */
int pmi_seg_read_word(const struct pmi_seg *g, size_t off, uint64_t *out);

/* The device at position `i` of a view read through the mapping. */
static inline struct device *pmi_view_device(const struct pmi_seg_view *v, size_t i)
{
	return (struct device *)(v->base + (uint64_t)v->slot[i] * v->slot_size);
}

/* segment_claim.c */
/*
 * With the flush lock held: undo the claims of flushes whose processes died,
 * and take a free claim record: its number, or -1 if every one is in use.
 */
int pmi_seg_claim_open(struct pmi_seg *g);
/* Write into claim `k` what moving `m` devices' baselines by `moves` will take, and make it active. */
int pmi_seg_claim_record(struct pmi_seg *g, int k, struct device *const *devs,
			 const uint64_t *moves, size_t m);
/* Move the baselines by what claim `k` took: up, or back down (what had moved). */
void pmi_seg_claim_apply(struct pmi_seg *g, int k, bool back);
/* The report of claim `k`'s flush is out: a dead owner's record is let go, not undone. */
void pmi_seg_claim_publish(struct pmi_seg *g, int k);
/* The claim's baselines stay where they are for good: let claim `k` go. */
void pmi_seg_claim_close(struct pmi_seg *g, int k);
/* Whether an active claim (a flush on its way, or a dead flusher's) names slot `s`. */
bool pmi_seg_claimed(struct pmi_seg *g, uint64_t s);

/* segment_index.c */
struct device *pmi_seg_alloc(struct pmi_seg *g, const char *id, size_t len,
			     const struct pmi_deadline *d, int *err);
struct device *pmi_seg_find(struct pmi_seg *g, const char *id, size_t len, int *err);
/* Take the index entries of slots that hold no device out of it (takes the insert lock). */
void pmi_seg_compact(struct pmi_seg *g);
/* Whether `m` lies in `g`'s mapping. */
bool pmi_seg_holds(const struct pmi_seg *g, const struct pmem_metrics *m);
/* Drop this process's reference to the device `m` of `g`. */
void pmi_seg_release(struct pmi_seg *g, const struct pmem_metrics *m);

/*
 * What a published flush reported, for draining its retired devices: `m`
 * devices (devs[i]), each with its state word and `born` as they were at the take.
 */
struct pmi_reported {
	size_t m;
	struct device *const *devs;
	const uint32_t *states;
	const uint32_t *borns;
};

/* segment_life.c */
int pmi_seg_retire(struct pmi_seg *g, const char *id, size_t len);
void pmi_seg_drain(struct pmi_seg *g, const struct pmi_reported *rep);
int pmi_seg_stats(struct pmi_seg *g, struct pmem_metrics_registry_stats *out);
/* The room of `g` as the view `v` of it shows it. */
void pmi_seg_view_stats(const struct pmi_seg *g, const struct pmi_seg_view *v,
			struct pmem_metrics_registry_stats *out);

/* ---- fork.c: the process-wide registry state ---- */

/*
 * glibc's default rwlock prefers readers: a stream of lookups could keep an
 * insert, or fork(), waiting for ever.  Its writer-preferring kind cannot be
 * taken recursively for reading, and this library never does.
 */
#ifdef PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#define REGISTRY_LOCK_INITIALIZER PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#else
#define REGISTRY_LOCK_INITIALIZER PTHREAD_RWLOCK_INITIALIZER
#endif

/*
 * A registry: devices sorted by id bytes.  A device, once published, never
 * moves or goes away, and neither does a registry.  The default registry's
 * kind is decided once, at its first call (private, or a segment when
 * attached); every other registry is a segment.  From then on `seg` is
 * NULL (private) or the segment, for good.
 */
struct pmem_metrics_registry {
	/* 1 once the kind is decided: release store, acquire load (pmi_ready()). */
	_Atomic int decided;
	int broken; /* the error every call fails with (PMEM_METRICS_SHM could not attach) */
	struct pmi_seg *seg;
	pthread_rwlock_t lock; /* private: the array; both: a commit against fork() */
	/* Private: held by an open flush, from its take until it is settled. */
	pthread_mutex_t flush_lock;
	struct device **v;
	size_t n, cap;
	size_t id_bytes; /* sum of (id_len + 1) over v: the size of a snapshot's id list */
	_Atomic uint64_t flushes;        /* published flushes: none means nobody writes lines */
	_Atomic uint32_t open_flushes;   /* private: taken and not yet freed (see private_drain()) */
	_Atomic uint64_t alloc_failures; /* private: allocations that failed (no memory) */
	uint64_t swept_ms; /* private: when expired retired devices were last let go (lock held) */
	unsigned opens; /* opens not closed yet (opened_lock held): the last close frees it */
	/* In `pmi_opened`, and in opened.c's tables (opened_lock held). */
	struct pmem_metrics_registry *next, *prev, *next_by_file, *next_by_addr;
};

extern struct pmem_metrics_registry pmi_default_registry;
extern pthread_mutex_t pmi_opened_lock;
extern struct pmem_metrics_registry *pmi_opened;

/* opened.c: the segments open as registries, by file and by address (opened_lock held) */
struct pmem_metrics_registry *pmi_opened_by_file(dev_t dev, ino_t ino);
bool pmi_opened_has(const struct pmem_metrics_registry *r);
void pmi_opened_add(struct pmem_metrics_registry *r);
void pmi_opened_remove(struct pmem_metrics_registry *r);
extern pthread_mutex_t pmi_kind_lock;

/*
 * The registry whose flush this thread has open, if any (snapshot.c sets
 * it): in a fork() child, a segment's stays the parent's, and the child's
 * count of forks tells snapshot.c so.
 */
extern _Thread_local struct pmem_metrics_registry *pmi_flushing;
extern _Atomic uint64_t pmi_forks;

/* 0 if fork() is covered, else the error number (and a retry was made). */
int pmi_fork_safety(void);

/* ---- private.c ---- */

struct device *pmi_private_alloc(struct pmem_metrics_registry *r, const char *id, size_t len,
				 int *err);
struct device *pmi_private_find(struct pmem_metrics_registry *r, const char *id, size_t len,
				int *err);
int pmi_private_retire(struct pmem_metrics_registry *r, const char *id, size_t len);
void pmi_private_drain(struct pmem_metrics_registry *r, const struct pmi_reported *rep);
int pmi_private_stats(struct pmem_metrics_registry *r, struct pmem_metrics_registry_stats *out);
int pmi_private_device_count(struct pmem_metrics_registry *r, size_t *n);
/* Drop a reference to a private device; the last one frees it. */
void pmi_private_put(struct device *d);

/* ---- registry.c ---- */

/*
 * What differs between the kinds: each lock is taken and released by the
 * same kind's pair of functions.  Errors are error numbers.
 */
struct pmi_kind {
	struct device *(*alloc)(struct pmem_metrics_registry *r, const char *id, size_t len,
				int timeout_ms, int *err);
	struct device *(*find)(struct pmem_metrics_registry *r, const char *id, size_t len,
			       int *err);
	int (*device_count)(struct pmem_metrics_registry *r, size_t *n);
	int (*retire)(struct pmem_metrics_registry *r, const char *id, size_t len);
	/* After a published flush is settled for good: drain the retired devices it reported. */
	void (*drain)(struct pmem_metrics_registry *r, const struct pmi_reported *rep);
	int (*stats)(struct pmem_metrics_registry *r, struct pmem_metrics_registry_stats *out);
	int (*flush_lock)(struct pmem_metrics_registry *r, int timeout_ms);
	void (*flush_unlock)(struct pmem_metrics_registry *r);
};
const struct pmi_kind *pmi_kind_of(const struct pmem_metrics_registry *r);

/* Whether calls on `r` may go ahead: 0, or the error number (decides the default's kind). */
int pmi_ready(struct pmem_metrics_registry *r);

/* ---- snapshot_copy.c ---- */

struct pmem_metrics_snapshot {
	size_t n;         /* devices reported: one per id */
	size_t nf;        /* fields a row: its registry's (a segment's own, read-only) */
	/* Their names and docs, as pmem_metrics_registry_fields(): this library's, or a copy. */
	const char *fields;
	size_t fields_len;
	uint64_t *seen;   /* n * nf: `current` as loaded */
	uint64_t *diffs;  /* n * nf: seen - old */
	uint64_t agg[SEG_MAX_FIELDS];
	/*
	 * What a commit moves: m devices, each `old` by its own diffs.  One per
	 * id (moves == diffs), except in a segment whose damaged index let one
	 * id into two slots: both are reported as one device, and each moves
	 * by what it held.  `devs` are NULL for a peek of a copy.
	 */
	size_t m;
	struct device **devs;
	uint64_t *moves;
	uint32_t *states; /* m: each device's state word at the take (see pmi_reported) */
	uint32_t *borns;  /* m: each device's `born` at the take */
	/*
	 * In a segment: the claim record that holds what this flush moved at
	 * its take (segment_claim.c), so that it holds no flush lock while
	 * its report is on its way; -1 if it holds the flush lock instead (a
	 * private registry, or every record in use) and moves at its publish.
	 */
	int claim;
	bool locked; /* holds its registry's flush lock */
	bool has_room; /* a segment's: `room` is its stats as read with these counts */
	struct pmem_metrics_registry_stats room;
	uint64_t forks; /* pmi_forks at the take: a segment's flush forked away stays the parent's */
	enum pmi_snapshot_state state;
	struct pmem_metrics_registry *reg; /* whose flush it is */
	size_t *id_at; /* n: where each device's id starts in `ids` */
	char *ids;     /* every id, each followed by NUL: copies, never the segment's own */
	size_t ids_len;
};

/* Copy registry `r`'s devices into a new snapshot of kind `state`: 0, or the error number. */
int pmi_snapshot_load(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
		      struct pmem_metrics_snapshot **out);

#endif /* PMEM_METRICS_INTERNAL_H */
