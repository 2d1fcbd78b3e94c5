/*
 * pmem_metrics.c - the registry of pmem devices and the two-step flush.
 *
 * See pmem_metrics.h for the guarantees.  Lock order, where both are held:
 * flush_lock, then registry.lock.
 */
#define _GNU_SOURCE /* pthread_rwlock_t under -std=c11; glibc's writer-preferring rwlock */

#include "pmem_metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The external definitions of the header's inline hot path (C11 6.7.4). */
extern inline void pmem_metrics_add(struct pmem_metrics_counter *c, uint64_t n);
extern inline void pmem_metrics_inc(struct pmem_metrics_counter *c);
extern inline uint64_t pmem_metrics_count(const struct pmem_metrics_counter *c);
extern inline uint64_t pmem_metrics_fetch_diff(const struct pmem_metrics_counter *c);

enum { NFIELDS = PMEM_METRICS_NFIELDS };

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* No false sharing: every counter owns exactly one 64-byte line. */
_Static_assert(sizeof(struct pmem_metrics_counter) == 64, "a counter is one cache line");
_Static_assert(alignof(struct pmem_metrics_counter) == 64, "counters start on a cache line");
_Static_assert(sizeof(struct pmem_metrics) == 64 * NFIELDS, "a device is its counters");

/* One device: the public counters first, then the id they are known by. */
struct device {
	struct pmem_metrics m;
	size_t id_len; /* bytes, without the NUL */
	char id[];
};

#define FIELD_OFFSET_(name, doc) offsetof(struct pmem_metrics, name),
#define FIELD_NAME_(name, doc) #name,
#define FIELD_DOC_(name, doc) doc,
static const size_t field_offset[NFIELDS] = {PMEM_METRICS_FIELDS(FIELD_OFFSET_)};
static const char *const field_name[NFIELDS] = {PMEM_METRICS_FIELDS(FIELD_NAME_)};
static const char *const field_doc[NFIELDS] = {PMEM_METRICS_FIELDS(FIELD_DOC_)};

/*
 * glibc's default rwlock prefers readers: a stream of lookups could keep an
 * insert, or fork(), waiting for ever.  Its writer-preferring kind cannot be
 * taken recursively for reading, and this file never does.
 */
#ifdef PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#define REGISTRY_LOCK_INITIALIZER PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#else
#define REGISTRY_LOCK_INITIALIZER PTHREAD_RWLOCK_INITIALIZER
#endif

/*
 * The process-wide registry: devices sorted by id bytes.  Entries only ever
 * get inserted; a device, once published here, never moves or goes away.
 */
static struct {
	pthread_rwlock_t lock;
	struct device **v;
	size_t n, cap;
	size_t id_bytes; /* sum of (id_len + 1) over v: the size of a snapshot's id list */
} registry = {.lock = REGISTRY_LOCK_INITIALIZER};

/* Held by an open flush: from its take until its publish, commit, withdrawal or abort. */
static pthread_mutex_t flush_lock = PTHREAD_MUTEX_INITIALIZER;

enum snapshot_state {
	SNAPSHOT_PEEK,      /* a read-only copy: holds nothing, moves nothing */
	SNAPSHOT_OPEN,      /* a flush holding flush_lock */
	SNAPSHOT_PUBLISHED, /* committed, flush_lock released; can still be withdrawn */
	SNAPSHOT_SETTLED    /* aborted, or published and withdrawn: nothing more to do */
};

struct pmem_metrics_snapshot {
	size_t n;
	struct device **devs; /* n: whose `old` a commit moves */
	uint64_t *seen;       /* n * NFIELDS: `current` as loaded */
	uint64_t *diffs;      /* n * NFIELDS: seen - old, what a commit adds to `old` */
	uint64_t agg[NFIELDS];
	enum snapshot_state state;
	char *ids; /* every id, each followed by NUL */
	size_t ids_len;
};

/* The open flush of this thread, if any (one at a time: a second would deadlock). */
static _Thread_local struct pmem_metrics_snapshot *held;

static int fork_safety(void); /* see fork() below */

/* ---- Memory ----------------------------------------------------------------- */

#ifdef PMEM_METRICS_FAULT_INJECTION
static atomic_uint fail_countdown; /* 0: off; n: the n-th allocation from now fails */

void pmem_metrics_fault_fail_alloc(unsigned n)
{
	atomic_store_explicit(&fail_countdown, n, memory_order_relaxed);
}

static void (*_Atomic pause_hook)(const char *where);

/*
 * PMEM_METRICS_FAULT_ATFORK=n in the environment: the first n registrations
 * of the fork handlers fail (read at load time, when the first one runs).
 */
static bool fault_fail_atfork(void)
{
	static int left = -1;
	const char *env;

	if (left < 0) {
		env = getenv("PMEM_METRICS_FAULT_ATFORK");
		left = env ? atoi(env) : 0;
	}
	if (left == 0)
		return false;
	left--;
	return true;
}

void pmem_metrics_fault_pause_hook(void (*hook)(const char *where))
{
	atomic_store_explicit(&pause_hook, hook, memory_order_relaxed);
}

/* Lets a test stop a thread half-way through a critical section. */
static void pause_point(const char *where)
{
	void (*hook)(const char *) = atomic_load_explicit(&pause_hook, memory_order_relaxed);

	if (hook)
		hook(where);
}

/* Whether this allocation is the one to fail. */
static bool alloc_should_fail(void)
{
	unsigned n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);

	while (n != 0) {
		if (atomic_compare_exchange_weak_explicit(&fail_countdown, &n, n - 1,
							  memory_order_relaxed, memory_order_relaxed))
			return n == 1;
	}
	return false;
}
#else
static bool alloc_should_fail(void)
{
	return false;
}

static void pause_point(const char *where)
{
	(void)where;
}
#endif

/* Every allocation goes through these, so a test build can fail any of them. */
static void *xmalloc(size_t size)
{
	return alloc_should_fail() ? NULL : malloc(size);
}

static void *xrealloc(void *p, size_t size)
{
	return alloc_should_fail() ? NULL : realloc(p, size);
}

static void *xaligned_alloc(size_t alignment, size_t size)
{
	return alloc_should_fail() ? NULL : aligned_alloc(alignment, size);
}

/* ---- Ids ---------------------------------------------------------------- */

enum pmem_metrics_id_error pmem_metrics_id_check(const char *drive_id, size_t len)
{
	const unsigned char *p = (const unsigned char *)drive_id;
	size_t chars = 0;

	if (!p)
		return PMEM_METRICS_ID_NULL;
	if (len == 0)
		return PMEM_METRICS_ID_EMPTY;
	for (size_t i = 0; i < len; chars++) {
		unsigned char b = p[i];
		uint32_t cp;
		size_t k;

		if (b < 0x80) {
			if (b < 0x20 || b == 0x7f)
				return PMEM_METRICS_ID_CONTROL;
			i++;
			continue;
		}
		if (b >= 0xc2 && b <= 0xdf) {
			k = 1;
			cp = b & 0x1f;
		} else if (b >= 0xe0 && b <= 0xef) {
			k = 2;
			cp = b & 0x0f;
		} else if (b >= 0xf0 && b <= 0xf4) {
			k = 3;
			cp = b & 0x07;
		} else {
			return PMEM_METRICS_ID_UTF8;
		}
		if (len - i <= k)
			return PMEM_METRICS_ID_UTF8;
		for (size_t j = 1; j <= k; j++) {
			if ((p[i + j] & 0xc0) != 0x80)
				return PMEM_METRICS_ID_UTF8;
			cp = cp << 6 | (p[i + j] & 0x3f);
		}
		/* Overlong forms, UTF-16 surrogates, beyond U+10FFFF. */
		if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			return PMEM_METRICS_ID_UTF8;
		if (cp <= 0x9f) /* C1 controls, U+0080..U+009F */
			return PMEM_METRICS_ID_CONTROL;
		i += k + 1;
	}
	return chars > PMEM_METRICS_ID_MAX_CHARS ? PMEM_METRICS_ID_TOO_LONG : PMEM_METRICS_ID_OK;
}

const char *pmem_metrics_id_strerror(int error)
{
	switch (error) {
	case PMEM_METRICS_ID_OK:
		return "valid";
	case PMEM_METRICS_ID_NULL:
		return "must not be NULL";
	case PMEM_METRICS_ID_EMPTY:
		return "must not be empty";
	case PMEM_METRICS_ID_TOO_LONG:
		return "must be at most " STRINGIFY(PMEM_METRICS_ID_MAX_CHARS) " characters long";
	case PMEM_METRICS_ID_CONTROL:
		return "must not contain NUL or other control characters";
	case PMEM_METRICS_ID_UTF8:
		return "must be valid UTF-8";
	default:
		return "unknown error";
	}
}

/* ---- Registry ------------------------------------------------------------- */

/* Compare an id of `len` bytes with a device's id, as unsigned bytes. */
static int id_cmp(const char *id, size_t len, const struct device *d)
{
	int r = memcmp(id, d->id, len < d->id_len ? len : d->id_len);

	if (r)
		return r;
	return (len > d->id_len) - (len < d->id_len);
}

/* Index of `id` in the registry, or of where it would go; caller holds the lock. */
static size_t find(const char *id, size_t len, bool *found)
{
	size_t lo = 0, hi = registry.n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int r = id_cmp(id, len, registry.v[mid]);

		if (r == 0) {
			*found = true;
			return mid;
		}
		if (r < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	*found = false;
	return lo;
}

static struct device *device_new(const char *id, size_t len)
{
	/* Counters first, so every cache line of `m` is the device's own. */
	size_t size = sizeof(struct device) + len + 1;
	struct device *d = xaligned_alloc(alignof(struct device),
					 (size + alignof(struct device) - 1) / alignof(struct device) *
						 alignof(struct device));

	if (!d)
		return NULL;
	for (size_t f = 0; f < NFIELDS; f++) {
		struct pmem_metrics_counter *c = pmem_metrics_field(&d->m, f);

		atomic_init(&c->current, 0);
		atomic_init(&c->old, 0);
	}
	d->id_len = len;
	memcpy(d->id, id, len);
	d->id[len] = '\0';
	return d;
}

struct pmem_metrics *pmem_metrics_alloc_len(const char *drive_id, size_t len)
{
	struct device *d, *fresh;
	bool found;
	size_t at;

	if (pmem_metrics_id_check(drive_id, len) != PMEM_METRICS_ID_OK) {
		errno = EINVAL;
		return NULL;
	}
	if (fork_safety() != 0) {
		errno = ENOMEM;
		return NULL;
	}

	pthread_rwlock_rdlock(&registry.lock);
	at = find(drive_id, len, &found);
	d = found ? registry.v[at] : NULL;
	pthread_rwlock_unlock(&registry.lock);
	if (d)
		return &d->m;

	/* Build the device outside the write lock; another thread may win the race. */
	fresh = device_new(drive_id, len);
	if (!fresh) {
		errno = ENOMEM;
		return NULL;
	}

	pthread_rwlock_wrlock(&registry.lock);
	at = find(drive_id, len, &found);
	if (found) {
		d = registry.v[at];
	} else if (registry.n == registry.cap) {
		size_t cap = registry.cap ? registry.cap * 2 : 16;
		struct device **v = xrealloc(registry.v, cap * sizeof(*v));

		if (v) {
			registry.v = v;
			registry.cap = cap;
		}
	}
	if (!found && registry.n < registry.cap) {
		memmove(&registry.v[at + 1], &registry.v[at], (registry.n - at) * sizeof(*registry.v));
		pause_point("insert"); /* the array is inconsistent right here */
		registry.v[at] = fresh;
		registry.n++;
		registry.id_bytes += len + 1;
		d = fresh;
		fresh = NULL;
	}
	pthread_rwlock_unlock(&registry.lock);

	free(fresh); /* lost the race, or the array could not grow */
	if (!d) {
		errno = ENOMEM;
		return NULL;
	}
	return &d->m;
}

struct pmem_metrics *pmem_metrics_alloc(const char *drive_id)
{
	if (!drive_id) {
		errno = EINVAL;
		return NULL;
	}
	return pmem_metrics_alloc_len(drive_id, strlen(drive_id));
}

size_t pmem_metrics_device_count(void)
{
	size_t n;

	pthread_rwlock_rdlock(&registry.lock);
	n = registry.n;
	pthread_rwlock_unlock(&registry.lock);
	return n;
}

struct pmem_metrics_counter *pmem_metrics_field(struct pmem_metrics *m, size_t i)
{
	if (!m || i >= NFIELDS)
		return NULL;
	return (struct pmem_metrics_counter *)((char *)m + field_offset[i]);
}

const char *pmem_metrics_field_name(size_t i)
{
	return i < NFIELDS ? field_name[i] : NULL;
}

const char *pmem_metrics_field_doc(size_t i)
{
	return i < NFIELDS ? field_doc[i] : NULL;
}

/* ---- fork() ----------------------------------------------------------------- */

/*
 * The registry lock is only ever held by short stretches of C code (a lookup,
 * an insert, a snapshot's copy, a commit), so the prepare handler can wait for
 * it: the child then gets a consistent array.  The flush lock is different: a
 * binding may hold it while it writes a line, in code that may need the very
 * lock (a GIL) the forking thread holds, so waiting for it could deadlock.
 * The child instead starts with it free -- unless the forking thread is the
 * one holding it, whose snapshot lives on in the child and will release it.
 */
static void fork_prepare(void)
{
	pthread_rwlock_wrlock(&registry.lock);
}

static void fork_parent(void)
{
	pthread_rwlock_unlock(&registry.lock);
}

static void fork_child(void)
{
	/* A lock held by a thread that does not exist here is re-made, not unlocked. */
	registry.lock = (pthread_rwlock_t)REGISTRY_LOCK_INITIALIZER;
	if (!held)
		flush_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
}

/*
 * The handlers are registered when the library is loaded, so fork() is
 * covered from before the first call.  pthread_atfork() can fail (ENOMEM):
 * then every call that allocates or takes a snapshot retries it, and fails
 * itself while it cannot, rather than run without fork safety.
 */
static pthread_mutex_t fork_setup_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int fork_setup_error; /* 0 once the handlers are registered */

static int atfork(void)
{
#ifdef PMEM_METRICS_FAULT_INJECTION
	if (fault_fail_atfork())
		return ENOMEM;
#endif
	return pthread_atfork(fork_prepare, fork_parent, fork_child);
}

__attribute__((constructor)) static void fork_register(void)
{
	atomic_store_explicit(&fork_setup_error, atfork(), memory_order_relaxed);
}

/* 0 if fork() is covered, else the error number (and a retry was made). */
static int fork_safety(void)
{
	int err;

	/*
	 * Acquire pairs with the release store below: whoever sees 0 also
	 * sees the registration it stands for.  Relaxed would do on glibc,
	 * whose pthread_atfork() takes a lock, but costs nothing here.
	 */
	if (atomic_load_explicit(&fork_setup_error, memory_order_acquire) == 0)
		return 0;
	pthread_mutex_lock(&fork_setup_lock); /* one retry at a time: never registered twice */
	err = atomic_load_explicit(&fork_setup_error, memory_order_relaxed);
	if (err != 0) {
		err = atfork();
		atomic_store_explicit(&fork_setup_error, err, memory_order_release);
	}
	pthread_mutex_unlock(&fork_setup_lock);
	return err;
}

/* ---- Flushing ------------------------------------------------------------- */

static struct pmem_metrics_snapshot *snapshot_new(size_t n, size_t ids_len)
{
	/*
	 * One block: header, seen, diffs, devs, ids -- the uint64_t arrays
	 * first, so they are 8-byte aligned even where pointers are 4 bytes.
	 */
	size_t size = sizeof(struct pmem_metrics_snapshot) + 2 * n * NFIELDS * sizeof(uint64_t) +
		      n * sizeof(struct device *) + ids_len;
	struct pmem_metrics_snapshot *s = xmalloc(size);

	if (!s)
		return NULL;
	memset(s, 0, sizeof(*s));
	s->n = n;
	s->seen = (uint64_t *)(s + 1);
	s->diffs = s->seen + n * NFIELDS;
	s->devs = (struct device **)(s->diffs + n * NFIELDS);
	s->ids = (char *)(s->devs + n);
	s->ids_len = ids_len;
	return s;
}

/*
 * Devices are separate allocations (they never move), so a large snapshot
 * walks scattered memory: ask for a device's lines a few devices ahead, so
 * the walk overlaps the cache misses instead of waiting for each in turn.
 */
enum { PREFETCH_AHEAD = 16 };

static void prefetch_device(const struct device *d)
{
#if defined(__GNUC__)
	/* Its NFIELDS counter lines, then the line the id starts on (see the static asserts). */
	for (size_t line = 0; line <= NFIELDS; line++)
		__builtin_prefetch((const char *)d + 64 * line, 0, 0);
#else
	(void)d;
#endif
}

/*
 * Wait for flush_lock: for ever (timeout_ms < 0), not at all (0), or up to
 * timeout_ms milliseconds on the monotonic clock (a wall-clock step cannot
 * stretch the wait).  0, or the error number (ETIMEDOUT when it is busy).
 */
static int flush_lock_acquire(int timeout_ms)
{
	struct timespec until;
	int err;

	if (timeout_ms < 0)
		return pthread_mutex_lock(&flush_lock);
	if (timeout_ms == 0) {
		err = pthread_mutex_trylock(&flush_lock);
		return err == EBUSY ? ETIMEDOUT : err;
	}
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 30) && !defined(__SANITIZE_THREAD__)
	clock_gettime(CLOCK_MONOTONIC, &until);
#else
	/* No pthread_mutex_clocklock (or TSan does not model it): the wall clock. */
	clock_gettime(CLOCK_REALTIME, &until);
#endif
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 30) && !defined(__SANITIZE_THREAD__)
	return pthread_mutex_clocklock(&flush_lock, CLOCK_MONOTONIC, &until);
#else
	return pthread_mutex_timedlock(&flush_lock, &until);
#endif
}

static void flush_release(void)
{
	held = NULL;
	pthread_mutex_unlock(&flush_lock);
}

/* Copy the registry into a new snapshot, loading every counter once. */
static struct pmem_metrics_snapshot *snapshot_load(enum snapshot_state state)
{
	struct pmem_metrics_snapshot *s;
	char *ids;

	pthread_rwlock_rdlock(&registry.lock);
	s = snapshot_new(registry.n, registry.id_bytes);
	if (!s) {
		pthread_rwlock_unlock(&registry.lock);
		return NULL;
	}
	s->state = state;
	ids = s->ids;
	for (size_t i = 0; i < s->n; i++) {
		struct device *d = registry.v[i];
		uint64_t *seen = &s->seen[i * NFIELDS];
		uint64_t *diff = &s->diffs[i * NFIELDS];

		if (i + PREFETCH_AHEAD < s->n)
			prefetch_device(registry.v[i + PREFETCH_AHEAD]);

		s->devs[i] = d;
		memcpy(ids, d->id, d->id_len + 1);
		ids += d->id_len + 1;
		for (size_t f = 0; f < NFIELDS; f++) {
			struct pmem_metrics_counter *c = pmem_metrics_field(&d->m, f);
			/*
			 * A flush holds flush_lock, which orders it after the last
			 * commit, so it could load `old` relaxed; a peek holds no
			 * such lock, so acquire pairs with the commit's release
			 * store, as in pmem_metrics_fetch_diff().  `current` is
			 * loaded once; diff and aggregate both use that load.
			 */
			uint64_t old = atomic_load_explicit(&c->old, memory_order_acquire);

			seen[f] = atomic_load_explicit(&c->current, memory_order_relaxed);
			diff[f] = seen[f] - old;
			s->agg[f] += diff[f];
		}
		if (i == 0 && state == SNAPSHOT_OPEN)
			pause_point("copy"); /* half copied right here */
	}
	pthread_rwlock_unlock(&registry.lock);
	return s;
}

int pmem_metrics_snapshot_take_into(struct pmem_metrics_snapshot **slot, int timeout_ms)
{
	struct pmem_metrics_snapshot *s;
	int err;

	if (!slot || *slot) {
		errno = EINVAL;
		return -1;
	}
	if (held) {
		errno = EDEADLK;
		return -1;
	}
	if (fork_safety() != 0) {
		errno = ENOMEM;
		return -1;
	}
	err = flush_lock_acquire(timeout_ms);
	if (err) {
		errno = err;
		return -1;
	}
	pause_point("take");
	s = snapshot_load(SNAPSHOT_OPEN);
	if (!s) {
		pthread_mutex_unlock(&flush_lock);
		errno = ENOMEM;
		return -1;
	}
	held = s;
	*slot = s;
	return 0;
}

struct pmem_metrics_snapshot *pmem_metrics_snapshot_take(void)
{
	struct pmem_metrics_snapshot *s = NULL;

	return pmem_metrics_snapshot_take_into(&s, -1) == 0 ? s : NULL;
}

int pmem_metrics_snapshot_peek_into(struct pmem_metrics_snapshot **slot)
{
	if (!slot || *slot) {
		errno = EINVAL;
		return -1;
	}
	if (fork_safety() != 0) {
		errno = ENOMEM;
		return -1;
	}
	*slot = snapshot_load(SNAPSHOT_PEEK);
	if (!*slot) {
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

struct pmem_metrics_snapshot *pmem_metrics_snapshot_peek(void)
{
	struct pmem_metrics_snapshot *s = NULL;

	return pmem_metrics_snapshot_peek_into(&s) == 0 ? s : NULL;
}

size_t pmem_metrics_snapshot_len(const struct pmem_metrics_snapshot *s)
{
	return s ? s->n : 0;
}

const char *pmem_metrics_snapshot_id(const struct pmem_metrics_snapshot *s, size_t i)
{
	return s && i < s->n ? s->devs[i]->id : NULL;
}

const char *pmem_metrics_snapshot_ids(const struct pmem_metrics_snapshot *s, size_t *len)
{
	if (len)
		*len = s ? s->ids_len : 0;
	return s ? s->ids : NULL;
}

const uint64_t *pmem_metrics_snapshot_diffs(const struct pmem_metrics_snapshot *s)
{
	return s ? s->diffs : NULL;
}

const uint64_t *pmem_metrics_snapshot_aggregate(const struct pmem_metrics_snapshot *s)
{
	return s ? s->agg : NULL;
}

const uint64_t *pmem_metrics_snapshot_counts(const struct pmem_metrics_snapshot *s)
{
	return s ? s->seen : NULL;
}

/*
 * Move every counter's `old` by the diff `s` reported: up for a commit, back
 * down for a withdrawal.  Relative moves commute, so a withdrawal needs no
 * flush lock: the flushes committed since keep exactly their own diffs.
 */
static void move_old(const struct pmem_metrics_snapshot *s, bool back)
{
	/*
	 * The read lock is not needed for the devices (they never move); it
	 * makes a commit atomic with respect to fork(), whose prepare handler
	 * takes the write lock, so a child never sees half of one.
	 */
	pthread_rwlock_rdlock(&registry.lock);
	for (size_t i = 0; i < s->n; i++) {
		for (size_t f = 0; f < NFIELDS; f++) {
			struct pmem_metrics_counter *c = pmem_metrics_field(&s->devs[i]->m, f);
			uint64_t diff = s->diffs[i * NFIELDS + f];

			if (diff == 0)
				continue;
			/*
			 * Release pairs with the acquire loads of `old` in
			 * pmem_metrics_fetch_diff() and snapshot_load(): whoever sees
			 * the moved `old` also sees the `current` it was computed from.
			 */
			if (back)
				atomic_fetch_sub_explicit(&c->old, diff, memory_order_release);
			else
				atomic_fetch_add_explicit(&c->old, diff, memory_order_release);
		}
		if (i == 0)
			pause_point(back ? "withdraw" : "commit"); /* half moved right here */
	}
	pthread_rwlock_unlock(&registry.lock);
}

void pmem_metrics_snapshot_publish(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s || s->state != SNAPSHOT_OPEN)
		return;
	move_old(s, false);
	s->state = SNAPSHOT_PUBLISHED;
	flush_release();
}

void pmem_metrics_snapshot_withdraw(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s)
		return;
	if (s->state == SNAPSHOT_OPEN) {
		s->state = SNAPSHOT_SETTLED;
		flush_release();
	} else if (s->state == SNAPSHOT_PUBLISHED) {
		move_old(s, true);
		s->state = SNAPSHOT_SETTLED;
	}
}

int pmem_metrics_snapshot_is_open(const struct pmem_metrics_snapshot *s)
{
	return s && s->state == SNAPSHOT_OPEN;
}

void pmem_metrics_snapshot_free(struct pmem_metrics_snapshot *s)
{
	if (!s)
		return;
	if (s->state == SNAPSHOT_OPEN) {
		if (held != s)
			return; /* open in another thread: only that thread can release it */
		s->state = SNAPSHOT_SETTLED;
		flush_release();
	}
	free(s);
}

void pmem_metrics_snapshot_dispose(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s || (s->state == SNAPSHOT_OPEN && held != s))
		return; /* nothing, or open in another thread: the slot keeps it */
	pmem_metrics_snapshot_free(s);
	*slot = NULL;
}

void pmem_metrics_snapshot_commit(struct pmem_metrics_snapshot *s)
{
	if (!s || s->state == SNAPSHOT_PEEK)
		return;
	pmem_metrics_snapshot_publish(&s);
	pmem_metrics_snapshot_free(s);
}

void pmem_metrics_snapshot_abort(struct pmem_metrics_snapshot *s)
{
	if (!s || s->state == SNAPSHOT_PEEK)
		return;
	pmem_metrics_snapshot_free(s);
}
