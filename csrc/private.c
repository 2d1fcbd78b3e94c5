/*
 * private.c - the private kind of registry: a process's own devices, in a
 * sorted array of pointers on the heap.
 *
 * The array is ordered by the bytes of the id and searched with binary
 * search under the registry's rwlock: lookups share it, an insert (or a
 * device let go) takes it for writing.  A device never moves; each holds a
 * reference count (the array's, and one per handle), and the last
 * reference frees it.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The device of `id` and where it is in the array, or NULL and where it would go (*at); lock held. */
static struct device *array_find(const struct pmem_metrics_registry *r, const char *id,
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
void pmi_private_put(struct device *d)
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

		if (!pmi_device_expire(d, word, now, grace))
			continue;
		private_remove(r, i);
		pmi_private_put(d); /* the array's reference */
	}
}

struct device *pmi_private_alloc(struct pmem_metrics_registry *r, const char *id, size_t len,
				 int *err)
{
	struct device *d, *fresh, *gone = NULL;
	size_t at;

	pthread_rwlock_rdlock(&r->lock);
	d = array_find(r, id, len, &at);
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
	d = array_find(r, id, len, &at);
	if (d && !private_take(d, true)) {
		/* Drained, its drainer not here yet: take it out now (the drainer then finds it gone). */
		private_remove(r, at);
		gone = d;
		d = array_find(r, id, len, &at);
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
		pmi_private_put(gone); /* the array's reference */
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
int pmi_private_retire(struct pmem_metrics_registry *r, const char *id, size_t len)
{
	struct device *d;
	size_t at;
	int err;

	pthread_rwlock_rdlock(&r->lock);
	d = array_find(r, id, len, &at);
	err = d ? pmi_device_retire(d) : ENOENT;
	pthread_rwlock_unlock(&r->lock);
	return err;
}

/* Take drained device `d` out of the array, if it is still there: whether it was. */
static bool private_unlink(struct pmem_metrics_registry *r, struct device *d)
{
	size_t at;

	if (array_find(r, d->id, d->id_len, &at) != d)
		return false; /* an alloc() of its id took it out already */
	private_remove(r, at);
	return true;
}

void pmi_private_drain(struct pmem_metrics_registry *r, const struct pmi_reported *rep)
{
	bool any = false;

	for (size_t i = 0; i < rep->m && !any; i++)
		any = pmi_dev_state(rep->states[i]) == DEV_RETIRED;
	/*
	 * Not while another flush is out: a drained device may be freed, and
	 * one published and not yet settled could still move its baselines
	 * back (withdraw).  A later flush drains it instead.
	 */
	if (!any || atomic_load_explicit(&r->open_flushes, memory_order_acquire) > 1)
		return; /* the common case: nothing retired, no lock */
	pthread_rwlock_wrlock(&r->lock);
	for (size_t i = 0; i < rep->m; i++) {
		struct device *d = rep->devs[i];

		if (pmi_device_drain(d, rep->states[i]) && private_unlink(r, d))
			pmi_private_put(d); /* the array's reference: freed here if nobody holds one */
	}
	pthread_rwlock_unlock(&r->lock);
}

int pmi_private_stats(struct pmem_metrics_registry *r, struct pmem_metrics_registry_stats *out)
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

struct device *pmi_private_find(struct pmem_metrics_registry *r, const char *id, size_t len,
				int *err)
{
	struct device *d;
	size_t at;

	pthread_rwlock_rdlock(&r->lock);
	d = array_find(r, id, len, &at);
	if (d && !private_take(d, false))
		d = NULL;
	pthread_rwlock_unlock(&r->lock);
	if (!d)
		*err = ENOENT;
	return d;
}

int pmi_private_device_count(struct pmem_metrics_registry *r, size_t *n)
{
	pthread_rwlock_rdlock(&r->lock);
	*n = r->n;
	pthread_rwlock_unlock(&r->lock);
	return 0;
}
