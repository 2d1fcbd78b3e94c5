/*
 * registry.c - registries: the private kind, the segment kind, the default
 * registry (attach, PMEM_METRICS_SHM) and the segments opened as registries.
 *
 * The kind of a registry is chosen once: the default registry's at its first
 * call (a segment if attach() or PMEM_METRICS_SHM came first, else private),
 * every other registry's when it is opened.  `seg` never changes after that,
 * so every lock is released by the same kind that took it: each operation
 * is a pair of functions below, one per kind, picked by kind_of().
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct pmem_metrics_registry pmi_default_registry = {
	.lock = REGISTRY_LOCK_INITIALIZER,
	.flush_lock = PTHREAD_MUTEX_INITIALIZER,
};

/* Held while the default registry's kind is being decided (attach(), PMEM_METRICS_SHM). */
pthread_mutex_t pmi_kind_lock = PTHREAD_MUTEX_INITIALIZER;

/* The segments opened as registries, newest first; never freed. */
pthread_mutex_t pmi_opened_lock = PTHREAD_MUTEX_INITIALIZER;
struct pmem_metrics_registry *pmi_opened;

static pthread_once_t wait_once = PTHREAD_ONCE_INIT;
static int default_wait_ms = PMEM_METRICS_SEGMENT_WAIT_MS;

/* PMEM_METRICS_SEGMENT_WAIT_MS=ms in the environment: another bound (1 ms to a day). */
static void read_default_wait(void)
{
	const char *env = getenv("PMEM_METRICS_SEGMENT_WAIT_MS");
	char *end;
	long ms = env ? strtol(env, &end, 10) : 0;

	if (env && *env && !*end && ms > 0 && ms <= 86400000L)
		default_wait_ms = (int)ms;
}

int pmem_metrics_segment_wait_ms(void)
{
	pthread_once(&wait_once, read_default_wait);
	return default_wait_ms;
}

static pthread_once_t grace_once = PTHREAD_ONCE_INIT;
static uint64_t grace_ms = PMEM_METRICS_RETIRE_GRACE_MS;

/* PMEM_METRICS_RETIRE_GRACE_MS=ms in the environment: another grace period (0 ms to a day). */
static void read_grace(void)
{
	const char *env = getenv("PMEM_METRICS_RETIRE_GRACE_MS");
	char *end;
	long ms = env ? strtol(env, &end, 10) : -1;

	if (env && *env && !*end && ms >= 0 && ms <= 86400000L)
		grace_ms = (uint64_t)ms;
}

uint64_t pmi_retire_grace_ms(void)
{
	pthread_once(&grace_once, read_grace);
	return grace_ms;
}

struct pmi_deadline pmi_seg_deadline(int timeout_ms)
{
	return pmi_deadline_in(timeout_ms < 0 ? pmem_metrics_segment_wait_ms() : timeout_ms);
}

/* ---- The private kind: a sorted array of devices on the heap ------------------ */

/* The device of `id` and where it is in the array, or NULL and where it would go (*at); lock held. */
static struct device *private_find(const struct pmem_metrics_registry *r, const char *id,
				   size_t len, size_t *at)
{
	size_t lo = 0, hi = r->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		struct device *d = r->v[mid];
		int cmp = pmi_id_cmp(id, len, d->id, d->id_len);

		if (cmp == 0) {
			*at = mid;
			return d;
		}
		if (cmp < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	*at = lo;
	return NULL;
}

static struct device *device_new(const char *id, size_t len)
{
	/* Counters first, so every cache line of `m` is the device's own. */
	size_t size = sizeof(struct device) + len + 1;
	struct device *d = pmi_aligned_alloc(alignof(struct device),
					     (size + alignof(struct device) - 1) /
						     alignof(struct device) * alignof(struct device));

	if (!d)
		return NULL;
	for (size_t f = 0; f < NFIELDS; f++) {
		struct pmem_metrics_counter *c = pmi_counter(&d->m, f);

		atomic_init(&c->current, 0);
		atomic_init(&c->old, 0);
	}
	atomic_init(&d->published, 1);
	atomic_init(&d->state, DEV_LIVE);
	atomic_init(&d->refs, 2); /* the array's, and the caller's */
	atomic_init(&d->born, 0);
	d->unused = 0;
	atomic_init(&d->retired_ms, 0);
	d->id_len = (uint32_t)len;
	memcpy(d->id, id, len);
	d->id[len] = '\0';
	return d;
}

/*
 * Take a reference to `d`, found in the array under its lock (the array's
 * own reference keeps it alive meanwhile), reviving it if it was retired:
 * false if it is drained (its final delta reported; it is on its way out).
 */
static bool private_take(struct device *d, bool revive)
{
	uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

	for (;;) {
		if (pmi_dev_state(word) == DEV_DRAINED)
			return false;
		if (!revive || pmi_dev_state(word) == DEV_LIVE)
			break;
		/* Retired, not drained yet: an alloc() brings it back (the drain's CAS then fails). */
		if (atomic_compare_exchange_weak_explicit(&d->state, &word, pmi_dev_word(word, DEV_LIVE),
							  memory_order_acq_rel, memory_order_acquire))
			break;
	}
	atomic_fetch_add_explicit(&d->refs, 1, memory_order_relaxed);
	return true;
}

/* Drop a reference to a private device; the last one frees it. */
static void private_put(struct device *d)
{
	if (atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) == 1)
		free(d);
}

/* Take device `at` out of the array (write lock held); the caller drops the array's reference. */
static void private_remove(struct pmem_metrics_registry *r, size_t at)
{
	struct device *d = r->v[at];

	memmove(&r->v[at], &r->v[at + 1], (r->n - at - 1) * sizeof(*r->v));
	r->n--;
	r->id_bytes -= d->id_len + 1;
}

/*
 * A registry nobody flushes (scraped only) lets retired devices go once
 * their grace period is over -- else it would grow for ever as devices come
 * and go.  At most once a second, by an allocation of a new id (write lock
 * held).
 */
static void private_expire(struct pmem_metrics_registry *r)
{
	uint64_t now = pmi_now_ms(), grace = pmi_retire_grace_ms();

	/* Not with a flush out: it holds the devices it copied until it is settled. */
	if (atomic_load_explicit(&r->flushes, memory_order_relaxed) != 0 ||
	    atomic_load_explicit(&r->open_flushes, memory_order_acquire) != 0 ||
	    now - r->swept_ms < (grace < 1000 ? grace : 1000))
		return;
	r->swept_ms = now;
	for (size_t i = r->n; i-- > 0;) {
		struct device *d = r->v[i];
		uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

		if (pmi_dev_state(word) != DEV_RETIRED ||
		    now - atomic_load_explicit(&d->retired_ms, memory_order_relaxed) < grace ||
		    !atomic_compare_exchange_strong_explicit(&d->state, &word,
							     pmi_dev_word(word, DEV_DRAINED),
							     memory_order_acq_rel, memory_order_relaxed))
			continue;
		private_remove(r, i);
		private_put(d); /* the array's reference */
	}
}

static struct device *private_alloc(struct pmem_metrics_registry *r, const char *id, size_t len,
				    int timeout_ms, int *err)
{
	struct device *d, *fresh, *gone = NULL;
	size_t at;

	(void)timeout_ms; /* the lock is only ever held by this library's short code */
	pthread_rwlock_rdlock(&r->lock);
	d = private_find(r, id, len, &at);
	if (d && !private_take(d, true))
		d = NULL;
	pthread_rwlock_unlock(&r->lock);
	if (d)
		return d;

	/* Build the device outside the write lock; another thread may win the race. */
	fresh = device_new(id, len);
	if (!fresh) {
		atomic_fetch_add_explicit(&r->alloc_failures, 1, memory_order_relaxed);
		*err = ENOMEM;
		return NULL;
	}
	pthread_rwlock_wrlock(&r->lock);
	private_expire(r);
	d = private_find(r, id, len, &at);
	if (d && !private_take(d, true)) {
		/* Drained, its drainer not here yet: take it out now (the drainer then finds it gone). */
		private_remove(r, at);
		gone = d;
		d = private_find(r, id, len, &at);
	}
	if (!d && r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct device **v = pmi_realloc(r->v, cap * sizeof(*v));

		if (v) {
			r->v = v;
			r->cap = cap;
		}
	}
	if (!d && r->n < r->cap) {
		memmove(&r->v[at + 1], &r->v[at], (r->n - at) * sizeof(*r->v));
		pmi_pause_point("insert"); /* the array is inconsistent right here */
		r->v[at] = fresh;
		r->n++;
		r->id_bytes += len + 1;
		d = fresh;
		fresh = NULL;
	}
	pthread_rwlock_unlock(&r->lock);
	free(fresh); /* lost the race, or the array could not grow */
	if (gone)
		private_put(gone); /* the array's reference */
	if (!d) {
		atomic_fetch_add_explicit(&r->alloc_failures, 1, memory_order_relaxed);
		*err = ENOMEM;
	}
	return d;
}

/*
 * Retire `id`: live -> retired, reported by the next flush (its final
 * delta), then drained.  ENOENT unless it is live.
 */
static int private_retire(struct pmem_metrics_registry *r, const char *id, size_t len)
{
	struct device *d;
	size_t at;
	int err;

	pthread_rwlock_rdlock(&r->lock);
	d = private_find(r, id, len, &at);
	err = d ? pmi_device_retire(d) : ENOENT;
	pthread_rwlock_unlock(&r->lock);
	return err;
}

int pmi_device_retire(struct device *d)
{
	uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

	while (pmi_dev_state(word) == DEV_LIVE) {
		atomic_store_explicit(&d->retired_ms, pmi_now_ms(), memory_order_relaxed);
		/* Release: whoever sees it retired sees when. */
		if (atomic_compare_exchange_weak_explicit(&d->state, &word,
							  pmi_dev_word(word, DEV_RETIRED),
							  memory_order_acq_rel, memory_order_acquire))
			return 0;
	}
	return ENOENT;
}

/*
 * Drain device `d`, retired as `word` said: it goes (false) unless revived
 * or retired again since, or counted into since its baselines last moved.
 */
static bool drain_one(struct device *d, uint32_t word)
{
	if (pmi_dev_state(word) != DEV_RETIRED || !pmi_device_settled(d))
		return false;
	return atomic_compare_exchange_strong_explicit(&d->state, &word,
						       pmi_dev_word(word, DEV_DRAINED),
						       memory_order_acq_rel, memory_order_relaxed);
}

/* Take drained device `d` out of the array, if it is still there: whether it was. */
static bool private_unlink(struct pmem_metrics_registry *r, struct device *d)
{
	size_t at;

	if (private_find(r, d->id, d->id_len, &at) != d)
		return false; /* an alloc() of its id took it out already */
	private_remove(r, at);
	return true;
}

static void private_drain(struct pmem_metrics_registry *r, struct pmem_metrics_snapshot *s)
{
	struct pmi_reported rep;
	bool any = false;

	pmi_snapshot_reported(s, &rep);
	for (size_t i = 0; i < rep.m && !any; i++)
		any = pmi_dev_state(rep.states[i]) == DEV_RETIRED;
	/*
	 * Not while another flush is out: a drained device may be freed, and
	 * one published and not yet settled could still move its baselines
	 * back (withdraw).  A later flush drains it instead.
	 */
	if (!any || atomic_load_explicit(&r->open_flushes, memory_order_acquire) > 1)
		return; /* the common case: nothing retired, no lock */
	pthread_rwlock_wrlock(&r->lock);
	for (size_t i = 0; i < rep.m; i++) {
		struct device *d = rep.devs[i];

		if (drain_one(d, rep.states[i]) && private_unlink(r, d))
			private_put(d); /* the array's reference: freed here if nobody holds one */
	}
	pthread_rwlock_unlock(&r->lock);
}

static int private_stats(struct pmem_metrics_registry *r, struct pmem_metrics_registry_stats *out)
{
	pthread_rwlock_rdlock(&r->lock);
	out->capacity = 0;
	out->devices = 0;
	out->retired = 0;
	for (size_t i = 0; i < r->n; i++) {
		uint32_t state = pmi_dev_state(atomic_load_explicit(&r->v[i]->state,
								   memory_order_relaxed));

		out->devices += state == DEV_LIVE;
		out->retired += state == DEV_RETIRED;
	}
	pthread_rwlock_unlock(&r->lock);
	out->alloc_failures = atomic_load_explicit(&r->alloc_failures, memory_order_relaxed);
	return 0;
}

static struct device *private_find_id(struct pmem_metrics_registry *r, const char *id,
				      size_t len, int *err)
{
	struct device *d;
	size_t at;

	pthread_rwlock_rdlock(&r->lock);
	d = private_find(r, id, len, &at);
	if (d && !private_take(d, false))
		d = NULL;
	pthread_rwlock_unlock(&r->lock);
	if (!d)
		*err = ENOENT;
	return d;
}

static int private_device_count(struct pmem_metrics_registry *r, size_t *n)
{
	pthread_rwlock_rdlock(&r->lock);
	*n = r->n;
	pthread_rwlock_unlock(&r->lock);
	return 0;
}

static int private_flush_lock(struct pmem_metrics_registry *r, int timeout_ms)
{
	struct pmi_deadline d = pmi_deadline_in(timeout_ms);

	return pmi_mutex_lock_by(&r->flush_lock, &d);
}

static void private_flush_unlock(struct pmem_metrics_registry *r)
{
	pthread_mutex_unlock(&r->flush_lock);
}

/* ---- The segment kind -------------------------------------------------------- */

static struct device *segment_alloc(struct pmem_metrics_registry *r, const char *id, size_t len,
				    int timeout_ms, int *err)
{
	struct pmi_deadline d = pmi_seg_deadline(timeout_ms);

	return pmi_seg_alloc(r->seg, id, len, &d, err);
}

static struct device *segment_find(struct pmem_metrics_registry *r, const char *id, size_t len,
				   int *err)
{
	return pmi_seg_find(r->seg, id, len, err);
}

static int segment_device_count(struct pmem_metrics_registry *r, size_t *n)
{
	return pmi_seg_device_count(r->seg, n);
}

static int segment_retire(struct pmem_metrics_registry *r, const char *id, size_t len)
{
	return pmi_seg_retire(r->seg, id, len);
}

static void segment_drain(struct pmem_metrics_registry *r, struct pmem_metrics_snapshot *s)
{
	struct pmi_reported rep;

	pmi_snapshot_reported(s, &rep);
	pmi_seg_drain(r->seg, &rep);
}

static int segment_stats(struct pmem_metrics_registry *r, struct pmem_metrics_registry_stats *out)
{
	return pmi_seg_stats(r->seg, out);
}

static int segment_flush_lock(struct pmem_metrics_registry *r, int timeout_ms)
{
	struct pmi_deadline d = pmi_seg_deadline(timeout_ms);

	if (!r->seg->writable)
		return EROFS; /* a flush moves the baselines: it writes the segment */
	return pmi_seg_lock(r->seg, SEG_FLUSH_LOCK, &d);
}

static void segment_flush_unlock(struct pmem_metrics_registry *r)
{
	pmi_seg_unlock(r->seg, SEG_FLUSH_LOCK);
}

static const struct pmi_kind private_kind = {
	.alloc = private_alloc,
	.find = private_find_id,
	.retire = private_retire,
	.drain = private_drain,
	.stats = private_stats,
	.device_count = private_device_count,
	.flush_lock = private_flush_lock,
	.flush_unlock = private_flush_unlock,
	.load = pmi_load_private,
};

static const struct pmi_kind segment_kind = {
	.alloc = segment_alloc,
	.find = segment_find,
	.retire = segment_retire,
	.drain = segment_drain,
	.stats = segment_stats,
	.device_count = segment_device_count,
	.flush_lock = segment_flush_lock,
	.flush_unlock = segment_flush_unlock,
	.load = pmi_load_segment,
};

const struct pmi_kind *pmi_kind_of(const struct pmem_metrics_registry *r)
{
	return r->seg ? &segment_kind : &private_kind;
}

/* ---- The default registry's kind -------------------------------------------- */

/* One registry per segment: the registry this process has for `g`'s file, if any (opened_lock held). */
static struct pmem_metrics_registry *opened_segment(const struct pmi_seg *g)
{
	struct pmem_metrics_registry *r = &pmi_default_registry;

	if (r->seg && r->seg->dev == g->dev && r->seg->ino == g->ino)
		return r;
	for (r = pmi_opened; r; r = r->next)
		if (r->seg->dev == g->dev && r->seg->ino == g->ino)
			return r;
	return NULL;
}

/* Make the (undecided) default registry the segment at `path`; kind_lock held. */
static int attach_locked(const char *path, size_t capacity, unsigned mode, unsigned flags)
{
	struct pmem_metrics_registry *r = &pmi_default_registry;
	struct pmi_seg *g = pmi_malloc(sizeof(*g));
	int err;

	if (!g)
		return ENOMEM;
	err = pmi_seg_open(g, path, capacity ? capacity : PMEM_METRICS_SHM_DEFAULT_CAPACITY, mode,
			   flags);
	if (err == 0) {
		/*
		 * Under opened_lock, so pmem_metrics_registry_open() sees either
		 * its own registry of this segment or the attached default, never
		 * both, never neither.
		 */
		pthread_mutex_lock(&pmi_opened_lock);
		if (opened_segment(g))
			err = EBUSY;
		else
			r->seg = g;
		pthread_mutex_unlock(&pmi_opened_lock);
		if (err)
			pmi_seg_close(g);
	}
	if (err)
		free(g);
	return err;
}

/* Decide the default registry's kind, as PMEM_METRICS_SHM says; kind_lock held. */
static void decide_locked(void)
{
	struct pmem_metrics_registry *r = &pmi_default_registry;
	const char *path = getenv("PMEM_METRICS_SHM");

	if (path && *path)
		r->broken = attach_locked(path, 0, 0600, 0); /* never a silent private registry */
	/* Release pairs with the acquire load in pmi_ready(): whoever sees it sees `seg`. */
	atomic_store_explicit(&r->decided, 1, memory_order_release);
}

int pmi_ready(struct pmem_metrics_registry *r)
{
	if (pmi_fork_safety() != 0)
		return ENOMEM; /* fork() must be covered: a child re-opens its segments */
	if (!atomic_load_explicit(&r->decided, memory_order_acquire)) {
		pthread_mutex_lock(&pmi_kind_lock); /* only the default registry is ever undecided */
		if (!atomic_load_explicit(&r->decided, memory_order_relaxed))
			decide_locked();
		pthread_mutex_unlock(&pmi_kind_lock);
	}
	return r->broken;
}

int pmem_metrics_attach_flags(const char *path, size_t capacity, unsigned mode, unsigned flags)
{
	struct pmem_metrics_registry *r = &pmi_default_registry;
	int err = pmi_fork_safety() != 0 ? ENOMEM : 0;

	if (err == 0 && (flags & ~(unsigned)PMEM_METRICS_OPEN_TRUST))
		err = EINVAL; /* attached means written: never read-only; created if absent */
	if (err == 0) {
		pthread_mutex_lock(&pmi_kind_lock);
		if (!atomic_load_explicit(&r->decided, memory_order_relaxed) &&
		    getenv("PMEM_METRICS_SHM"))
			decide_locked(); /* the environment's segment first, as at any first call */
		if (atomic_load_explicit(&r->decided, memory_order_relaxed))
			err = EBUSY; /* the kind is fixed: devices, flushes, counts may exist already */
		else if ((err = attach_locked(path, capacity, mode, flags)) == 0)
			atomic_store_explicit(&r->decided, 1, memory_order_release); /* pairs: pmi_ready() */
		pthread_mutex_unlock(&pmi_kind_lock);
	}
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

int pmem_metrics_attach_mode(const char *path, size_t capacity, unsigned mode)
{
	return pmem_metrics_attach_flags(path, capacity, mode, 0);
}

int pmem_metrics_attach(const char *path, size_t capacity)
{
	return pmem_metrics_attach_flags(path, capacity, 0600, 0);
}

/* ---- Registries as objects --------------------------------------------------- */

struct pmem_metrics_registry *pmem_metrics_registry_default(void)
{
	return &pmi_default_registry;
}

struct pmem_metrics_registry *pmem_metrics_registry_open_flags(const char *path, size_t capacity,
							       unsigned mode, unsigned flags)
{
	struct pmem_metrics_registry *r, *known;
	struct pmi_seg *g;
	struct stat st;
	const char *env;
	int err = pmi_fork_safety() != 0 ? ENOMEM : 0;

	if (err == 0 && (flags & ~(unsigned)(PMEM_METRICS_OPEN_READONLY | PMEM_METRICS_OPEN_EXISTING |
					     PMEM_METRICS_OPEN_TRUST)))
		err = EINVAL;
	if (err == 0 && !(r = pmi_malloc(sizeof(*r) + sizeof(*g))))
		err = ENOMEM;
	if (err) {
		errno = err;
		return NULL;
	}
	g = (struct pmi_seg *)(r + 1);
	/* Open outside any lock (file system calls can be slow), then look for a twin. */
	err = pmi_seg_open(g, path, capacity ? capacity : PMEM_METRICS_SHM_DEFAULT_CAPACITY, mode,
			   flags);
	if (err) {
		free(r);
		errno = err;
		return NULL;
	}
	/*
	 * If PMEM_METRICS_SHM names this very segment, let the default registry
	 * attach to it first (and be found below).  Any other segment it names
	 * is left alone: opening one registry must not attach, or create, another.
	 */
	env = getenv("PMEM_METRICS_SHM");
	if (env && *env && lstat(env, &st) == 0 && st.st_dev == g->dev && st.st_ino == g->ino)
		(void)pmi_ready(&pmi_default_registry); /* its error is the default registry's */
	pthread_mutex_lock(&pmi_opened_lock);
	known = opened_segment(g);
	if (!known) {
		*r = (struct pmem_metrics_registry){
			.decided = 1,
			.seg = g,
			.lock = REGISTRY_LOCK_INITIALIZER,
			.flush_lock = PTHREAD_MUTEX_INITIALIZER,
			.next = pmi_opened,
		};
		pmi_opened = r;
	}
	pthread_mutex_unlock(&pmi_opened_lock);
	if (!known)
		return r;
	err = g->writable && !known->seg->writable ? EBUSY : 0; /* open read-only already */
	pmi_seg_close(g);
	free(r);
	if (err) {
		errno = err;
		return NULL;
	}
	return known;
}

struct pmem_metrics_registry *pmem_metrics_registry_open(const char *path, size_t capacity,
							 unsigned mode)
{
	return pmem_metrics_registry_open_flags(path, capacity, mode, 0);
}

/* ---- Calls on a registry ------------------------------------------------------ */

/* Whether a call on `r` for the id of `len` bytes may go ahead: 0, or its error number. */
static int id_call(struct pmem_metrics_registry *r, const char *drive_id, size_t len)
{
	if (!r || pmem_metrics_id_check(drive_id, len) != PMEM_METRICS_ID_OK)
		return EINVAL;
	return pmi_ready(r);
}

struct pmem_metrics *pmem_metrics_registry_alloc_within(struct pmem_metrics_registry *r,
							const char *drive_id, size_t len,
							int timeout_ms)
{
	int err = id_call(r, drive_id, len);
	struct device *d = err ? NULL : pmi_kind_of(r)->alloc(r, drive_id, len, timeout_ms, &err);

	if (!d) {
		errno = err;
		return NULL;
	}
	return &d->m;
}

struct pmem_metrics *pmem_metrics_registry_alloc_len(struct pmem_metrics_registry *r,
						     const char *drive_id, size_t len)
{
	return pmem_metrics_registry_alloc_within(r, drive_id, len, -1);
}

struct pmem_metrics *pmem_metrics_registry_alloc(struct pmem_metrics_registry *r,
						 const char *drive_id)
{
	if (!drive_id) {
		errno = EINVAL;
		return NULL;
	}
	return pmem_metrics_registry_alloc_len(r, drive_id, strlen(drive_id));
}

struct pmem_metrics *pmem_metrics_alloc_len(const char *drive_id, size_t len)
{
	return pmem_metrics_registry_alloc_len(&pmi_default_registry, drive_id, len);
}

struct pmem_metrics *pmem_metrics_alloc(const char *drive_id)
{
	return pmem_metrics_registry_alloc(&pmi_default_registry, drive_id);
}

struct pmem_metrics *pmem_metrics_registry_find(struct pmem_metrics_registry *r,
						const char *drive_id, size_t len)
{
	int err = id_call(r, drive_id, len);
	struct device *d = err ? NULL : pmi_kind_of(r)->find(r, drive_id, len, &err);

	if (!d) {
		errno = err;
		return NULL;
	}
	return &d->m;
}

struct pmem_metrics *pmem_metrics_find(const char *drive_id)
{
	if (!drive_id) {
		errno = EINVAL;
		return NULL;
	}
	return pmem_metrics_registry_find(&pmi_default_registry, drive_id, strlen(drive_id));
}

int pmem_metrics_registry_retire(struct pmem_metrics_registry *r, const char *drive_id,
				 size_t len)
{
	int err = id_call(r, drive_id, len);

	if (err == 0)
		err = pmi_kind_of(r)->retire(r, drive_id, len);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

int pmem_metrics_retire(const char *drive_id)
{
	if (!drive_id) {
		errno = EINVAL;
		return -1;
	}
	return pmem_metrics_registry_retire(&pmi_default_registry, drive_id, strlen(drive_id));
}

/* The segment registry whose mapping holds `m`, if any. */
static struct pmem_metrics_registry *segment_of(const struct pmem_metrics *m)
{
	struct pmem_metrics_registry *r = &pmi_default_registry;

	if (atomic_load_explicit(&r->decided, memory_order_acquire) && r->seg &&
	    pmi_seg_holds(r->seg, m))
		return r;
	pthread_mutex_lock(&pmi_opened_lock);
	for (r = pmi_opened; r && !pmi_seg_holds(r->seg, m); r = r->next)
		;
	pthread_mutex_unlock(&pmi_opened_lock);
	return r;
}

void pmem_metrics_release(struct pmem_metrics *m)
{
	struct pmem_metrics_registry *r;

	if (!m)
		return;
	r = segment_of(m);
	if (r)
		pmi_seg_release(r->seg, m);
	else
		private_put((struct device *)m); /* `m` is a private device's first member */
}

int pmem_metrics_registry_stats(struct pmem_metrics_registry *r,
				struct pmem_metrics_registry_stats *out)
{
	int err;

	if (!r || !out)
		err = EINVAL;
	else if ((err = pmi_ready(r)) == 0)
		err = pmi_kind_of(r)->stats(r, out);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

size_t pmem_metrics_registry_device_count(struct pmem_metrics_registry *r)
{
	size_t n = 0;
	int err = r ? pmi_ready(r) : EINVAL;

	if (err == 0)
		err = pmi_kind_of(r)->device_count(r, &n);
	if (err)
		errno = err;
	return n;
}

size_t pmem_metrics_device_count(void)
{
	return pmem_metrics_registry_device_count(&pmi_default_registry);
}

int pmem_metrics_registry_is_shared(struct pmem_metrics_registry *r)
{
	return r && pmi_ready(r) == 0 && r->seg != NULL;
}

int pmem_metrics_is_shared(void)
{
	return pmem_metrics_registry_is_shared(&pmi_default_registry);
}

size_t pmem_metrics_registry_capacity(struct pmem_metrics_registry *r)
{
	return pmem_metrics_registry_is_shared(r) ? (size_t)r->seg->capacity : 0;
}

const char *pmem_metrics_registry_path(struct pmem_metrics_registry *r)
{
	return pmem_metrics_registry_is_shared(r) ? r->seg->path : NULL;
}

int pmem_metrics_registry_is_writable(struct pmem_metrics_registry *r)
{
	return r && pmi_ready(r) == 0 && (!r->seg || r->seg->writable);
}
