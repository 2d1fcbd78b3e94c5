/*
 * internal.h - what the files of libpmemmetrics share, and nothing else.
 *
 * The library is built -fvisibility=hidden: only the declarations of
 * pmem_metrics.h are exported.  The names below are hidden, and prefixed
 * pmi_ so that a static link cannot meet a program's own names.
 *
 *   ids.c       drive-id rules, the field tables
 *   fault.c     allocation wrappers and the test-only fault hooks
 *   wait.c      deadlines and bounded waits
 *   segment.c   the shared segment's file format: create, check, map,
 *               locks, insert, rebuild, lock-free reading
 *   registry.c  registries: the private kind, the segment kind, the
 *               default registry (attach, PMEM_METRICS_SHM), open
 *   snapshot.c  take, peek, publish, withdraw, commit
 *   fork.c      fork() handlers
 *   line.c      writing metrics lines to a destination
 *
 * Lock order, where several are held: `kind_lock`, then a registry's flush
 * lock, then its registry lock; the default registry's lock, then
 * `opened_lock` (only fork's prepare handler takes several).
 */
#ifndef PMEM_METRICS_INTERNAL_H
#define PMEM_METRICS_INTERNAL_H

/* Before any system header: F_OFD_SETLK, dup3, pthread_mutex_clocklock, glibc's rwlock kinds. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "pmem_metrics.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

enum {
	NFIELDS = PMEM_METRICS_NFIELDS,
	ID_MAX_BYTES = 4 * PMEM_METRICS_ID_MAX_CHARS /* UTF-8: at most 4 bytes a code point */
};

/* No false sharing: every counter owns exactly one 64-byte line. */
_Static_assert(sizeof(struct pmem_metrics_counter) == 64, "a counter is one cache line");
_Static_assert(alignof(struct pmem_metrics_counter) == 64, "counters start on a cache line");
_Static_assert(sizeof(struct pmem_metrics) == 64 * NFIELDS, "a device is its counters");
/*
 * Processes that share a segment add to its counters with the same inline
 * atomic add: that is only one counter if the atomics are lock-free (a
 * lock-based atomic would take a lock private to each process).
 */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic uint32_t) == 4,
	       "atomics have their plain size, so a segment's layout is the same in every process");

/* One device: the public counters first, then the id they are known by. */
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

/* A device's life: reported while live or retired; drained once its final delta was. */
enum { DEV_FREE = 0, DEV_LIVE = 1, DEV_RETIRED = 2, DEV_DRAINED = 3, DEV_STATE_MASK = 3 };

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

/* Milliseconds on CLOCK_MONOTONIC (the same clock in every process of a host). */
uint64_t pmi_now_ms(void);

/* How long a retired device stays visible to scrapes of a registry nobody flushes (ms). */
uint64_t pmi_retire_grace_ms(void);

/* Counter `f` of `m` (the static asserts above make the counters an array). */
static inline struct pmem_metrics_counter *pmi_counter(struct pmem_metrics *m, size_t f)
{
	return (struct pmem_metrics_counter *)m + f;
}

/* Compare two ids of the given lengths in bytes, as unsigned bytes. */
int pmi_id_cmp(const char *a, size_t a_len, const char *b, size_t b_len);

/* FNV-1a of every field name: a segment made with other fields is refused. */
uint64_t pmi_fields_hash(void);

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

/* ---- segment.c ---- */

struct pmi_reported;

/*
 * A shared segment, as this process opened it: its layout is copied out of
 * the file once it was checked, and only these copies are used to find
 * things, so a process that scribbles on the file cannot send us outside it.
 */
struct pmi_seg {
	int fd;          /* open for the registry's life: its locks and reads */
	bool writable;   /* opened read-write and mapped; else read by pread() only */
	char *map;       /* the file, MAP_SHARED read-write; NULL when read-only */
	uint64_t size, capacity, slot_size, index_off, slots_off, claims_off, claim_size, procs_off;
	uint64_t token; /* writable: this process's name in the insert lock (segment.c) */
	dev_t dev; /* the file's identity: one registry per segment per process */
	ino_t ino;
	char *path; /* as opened: re-checked at each flush and scrape */
	/*
	 * A segment's locks exclude other processes, not the threads of this
	 * one (byte-range locks of the open file description, which the
	 * threads share; the insert lock's word names the process): these
	 * exclude the threads first.
	 */
	pthread_mutex_t thread_lock[2];
	_Atomic uint32_t mine; /* the claims this process holds (their locks do not exclude it) */
	/*
	 * Writable: this process's references to each slot's device; the
	 * slot's byte-range lock is held while its count is above 0 (segment.c,
	 * REF_LOCK_BASE).  `ref_lock` makes a count and its lock change together.
	 */
	uint32_t *refs;
	pthread_mutex_t ref_lock;
};

enum pmi_seg_lock { SEG_REGISTRY_LOCK = 0, SEG_FLUSH_LOCK = 1 };

/* Flushes of one segment whose reports can be on their way at once (segment.c, "Claims"). */
enum { SEG_CLAIMS = 4 };
/* Processes that can have one segment open for writing at once (segment.c, the insert lock). */
enum { SEG_PROCS = 4096 };

int pmi_seg_open(struct pmi_seg *g, const char *path, uint64_t capacity, unsigned mode,
		 unsigned flags);
void pmi_seg_close(struct pmi_seg *g);
int pmi_seg_check_identity(const struct pmi_seg *g);
int pmi_seg_lock(struct pmi_seg *g, enum pmi_seg_lock which, const struct pmi_deadline *d);
void pmi_seg_unlock(struct pmi_seg *g, enum pmi_seg_lock which);
struct device *pmi_seg_alloc(struct pmi_seg *g, const char *id, size_t len,
			     const struct pmi_deadline *d, int *err);
int pmi_seg_device_count(const struct pmi_seg *g, size_t *n);
struct device *pmi_seg_find(struct pmi_seg *g, const char *id, size_t len, int *err);
int pmi_seg_retire(struct pmi_seg *g, const char *id, size_t len);
void pmi_seg_drain(struct pmi_seg *g, const struct pmi_reported *rep);
int pmi_seg_stats(const struct pmi_seg *g, struct pmem_metrics_registry_stats *out);
/* Whether `m` lies in `g`'s mapping. */
bool pmi_seg_holds(const struct pmi_seg *g, const struct pmem_metrics *m);
/* Drop this process's reference to the device `m` of `g`. */
void pmi_seg_release(struct pmi_seg *g, const struct pmem_metrics *m);
int pmi_seg_after_fork(struct pmi_seg *g);
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
/* The claim's report was delivered, or its moves undone: let claim `k` go. */
void pmi_seg_claim_close(struct pmi_seg *g, int k);

/* A slot as copied out of a segment with pread(): its counters, and where its id went. */
struct pmi_slot_copy {
	uint64_t current[NFIELDS], old[NFIELDS];
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
	char *ids;
	uint32_t *by_slot; /* each id's length, by slot number (0: no device there) */
	uint32_t *state_by_slot; /* each slot's state word, as read */
	size_t high;       /* slots the view read: [0, high) */
	bool sorted;       /* by the slots' own ids, not by the index */
};
int pmi_seg_view(const struct pmi_seg *g, struct pmi_seg_view *v);
/*
 * The caller found the ids out of order along the view: sort the slots by
 * their ids instead.  0, or EBADMSG (sorted already: the ids change as they
 * are read) with the view freed.
 */
int pmi_seg_view_sort(struct pmi_seg_view *v);
void pmi_seg_view_free(struct pmi_seg_view *v);
const char *pmi_view_id(const struct pmi_seg_view *v, size_t i);

/* The device at position `i` of a view read through the mapping. */
static inline struct device *pmi_view_device(const struct pmi_seg_view *v, size_t i)
{
	return (struct device *)(v->base + (uint64_t)v->slot[i] * v->slot_size);
}

enum pmi_snapshot_state {
	SNAPSHOT_PEEK,      /* a read-only copy: holds nothing, moves nothing */
	SNAPSHOT_OPEN,      /* a flush holding its registry's flush lock */
	SNAPSHOT_PUBLISHED, /* committed, flush lock released; can still be withdrawn */
	SNAPSHOT_SETTLED    /* aborted, or published and withdrawn: nothing more to do */
};

/*
 * What a published flush reported, for draining its retired devices: `m`
 * devices (devs[i]), each with its state word as it was at the take.
 */
struct pmi_reported {
	size_t m;
	struct device *const *devs;
	const uint32_t *states;
	const uint32_t *borns;
};

/* Live -> retired (its retirement time set first): 0, or ENOENT unless it was live. */
int pmi_device_retire(struct device *d);

/* Whether nothing was added to `d` since its baselines last moved (current == old). */
bool pmi_device_settled(struct device *d);
void pmi_snapshot_reported(const struct pmem_metrics_snapshot *s, struct pmi_reported *out);

/* Whether a device in state `word` is in a snapshot of kind `state` (snapshot.c). */
bool pmi_reports(uint32_t word, uint64_t retired_ms, enum pmi_snapshot_state state);

/* ---- registry.c ---- */

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
	struct pmem_metrics_registry *next; /* in `opened` */
};

/*
 * What differs between the kinds: each lock is taken and released by the
 * same kind's pair of functions (registry.c), each copy made by its load
 * (snapshot.c).  Errors are error numbers.
 */
struct pmi_kind {
	struct device *(*alloc)(struct pmem_metrics_registry *r, const char *id, size_t len,
				int timeout_ms, int *err);
	struct device *(*find)(struct pmem_metrics_registry *r, const char *id, size_t len,
			       int *err);
	int (*device_count)(struct pmem_metrics_registry *r, size_t *n);
	int (*retire)(struct pmem_metrics_registry *r, const char *id, size_t len);
	/* After a published flush `s` is settled for good: drain the retired devices it reported. */
	void (*drain)(struct pmem_metrics_registry *r, struct pmem_metrics_snapshot *s);
	int (*stats)(struct pmem_metrics_registry *r, struct pmem_metrics_registry_stats *out);
	int (*flush_lock)(struct pmem_metrics_registry *r, int timeout_ms);
	void (*flush_unlock)(struct pmem_metrics_registry *r);
	int (*load)(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
		    struct pmem_metrics_snapshot **out);
};
const struct pmi_kind *pmi_kind_of(const struct pmem_metrics_registry *r);

extern struct pmem_metrics_registry pmi_default_registry;
extern pthread_mutex_t pmi_opened_lock;
extern struct pmem_metrics_registry *pmi_opened;
extern pthread_mutex_t pmi_kind_lock;

/* Whether calls on `r` may go ahead: 0, or the error number (decides the default's kind). */
int pmi_ready(struct pmem_metrics_registry *r);

/* The deadline of a segment wait: timeout_ms, or if negative the default bound. */
struct pmi_deadline pmi_seg_deadline(int timeout_ms);

/* ---- snapshot.c ---- */


/* The open flush of this thread, if any: one at a time, in any registry. */
int pmi_load_private(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
		     struct pmem_metrics_snapshot **out);
int pmi_load_segment(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
		     struct pmem_metrics_snapshot **out);
/*
 * In a fork() child: a flush of a segment that the forking thread had open
 * is its parent's; it is settled here without moving anything.  Returns
 * whether the thread still holds an open flush (of a private registry).
 */
bool pmi_snapshot_after_fork(void);

/* ---- fork.c ---- */

/* 0 if fork() is covered, else the error number (and a retry was made). */
int pmi_fork_safety(void);

#endif /* PMEM_METRICS_INTERNAL_H */
