/*
 * registry.c - registries: the table of the two kinds (private.c, the
 * segment files), the default registry (attach, PMEM_METRICS_SHM), the
 * segments opened as registries, and the public calls on them.
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

/* ---- The private kind (private.c) ---------------------------------------- */

static struct device *private_alloc(struct pmem_metrics_registry *r, const char *id, size_t len,
				    int timeout_ms, int *err)
{
	(void)timeout_ms; /* the lock is only ever held by this library's short code */
	return pmi_private_alloc(r, id, len, err);
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

static void segment_drain(struct pmem_metrics_registry *r, const struct pmi_reported *rep)
{
	pmi_seg_drain(r->seg, rep);
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
	.find = pmi_private_find,
	.retire = pmi_private_retire,
	.drain = pmi_private_drain,
	.stats = pmi_private_stats,
	.device_count = pmi_private_device_count,
	.flush_lock = private_flush_lock,
	.flush_unlock = private_flush_unlock,
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
};

const struct pmi_kind *pmi_kind_of(const struct pmem_metrics_registry *r)
{
	return r->seg ? &segment_kind : &private_kind;
}

/* ---- The default registry's kind -------------------------------------------- */

/* One registry per segment: the registry this process has for the file `dev`/`ino`, if any (opened_lock held). */
static struct pmem_metrics_registry *opened_file(dev_t dev, ino_t ino)
{
	struct pmem_metrics_registry *r = &pmi_default_registry;

	if (r->seg && r->seg->dev == dev && r->seg->ino == ino)
		return r;
	return pmi_opened_by_file(dev, ino);
}

static struct pmem_metrics_registry *opened_segment(const struct pmi_seg *g)
{
	return opened_file(g->dev, g->ino);
}

/*
 * The registry this process has already for the segment `path` names, if
 * one will do for a registry opened with `flags`: a second open of the same
 * file would make a second set of locks for nothing.
 */
static struct pmem_metrics_registry *opened_path(const char *path, unsigned flags)
{
	struct pmem_metrics_registry *known;
	struct stat st;

	if (!path || lstat(path, &st) != 0 || pmi_seg_trusted(&st, flags) != 0)
		return NULL; /* the open below says why */
	pthread_mutex_lock(&pmi_opened_lock);
	known = opened_file(st.st_dev, st.st_ino);
	if (known && !(flags & PMEM_METRICS_OPEN_READONLY) && !known->seg->writable)
		known = NULL; /* read-only so far: the open below says EBUSY */
	if (known)
		known->opens++; /* one more open to close */
	pthread_mutex_unlock(&pmi_opened_lock);
	return known;
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
	if (err == 0 && (known = opened_path(path, flags)) != NULL)
		return known;
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
			.opens = 1,
		};
		pmi_opened_add(r);
	}
	err = known && g->writable && !known->seg->writable ? EBUSY : 0; /* open read-only already */
	if (known && !err)
		known->opens++;
	pthread_mutex_unlock(&pmi_opened_lock);
	if (!known)
		return r;
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

int pmem_metrics_registry_forget_path(struct pmem_metrics_registry *r)
{
	if (!r || !pmem_metrics_registry_is_shared(r)) {
		errno = EINVAL;
		return -1;
	}
	atomic_store_explicit(&r->seg->path_forgotten, 1, memory_order_relaxed);
	return 0;
}

int pmem_metrics_registry_identity(struct pmem_metrics_registry *r, uint64_t *dev, uint64_t *ino)
{
	if (!r || !dev || !ino || !pmem_metrics_registry_is_shared(r)) {
		errno = EINVAL;
		return -1;
	}
	*dev = (uint64_t)r->seg->dev; /* set once, when the file was opened */
	*ino = (uint64_t)r->seg->ino;
	return 0;
}

/*
 * Whether this process holds anything of `r` that closing it would leave
 * dangling: a flush not freed yet, or a reference to one of its devices.
 */
static bool registry_busy(struct pmem_metrics_registry *r)
{
	bool busy = atomic_load_explicit(&r->open_flushes, memory_order_acquire) != 0;

	pthread_mutex_lock(&r->seg->ref_lock);
	for (uint64_t s = 0; !busy && r->seg->refs && s < r->seg->capacity; s++)
		busy = r->seg->refs[s] != 0;
	pthread_mutex_unlock(&r->seg->ref_lock);
	return busy;
}

int pmem_metrics_registry_close(struct pmem_metrics_registry *r)
{
	int err = 0;

	if (!r) {
		errno = EINVAL;
		return -1;
	}
	pthread_mutex_lock(&pmi_opened_lock);
	if (r == &pmi_default_registry) {
		/* Attached: it stays; only the opens that handed it out are counted off. */
		if (r->opens > 0)
			r->opens--;
		else
			err = EINVAL;
	} else if (!pmi_opened_has(r)) {
		err = EINVAL; /* not a registry opened here, or closed already */
	} else if (r->opens > 1) {
		r->opens--;
	} else if (registry_busy(r)) {
		err = EBUSY;
	} else {
		pmi_opened_remove(r); /* nobody can find it any more, nor hold anything of it */
		r->opens = 0;
	}
	pthread_mutex_unlock(&pmi_opened_lock);
	if (err) {
		errno = err;
		return -1;
	}
	if (r != &pmi_default_registry && r->opens == 0) {
		pmi_seg_close(r->seg);
		pthread_rwlock_destroy(&r->lock);
		pthread_mutex_destroy(&r->flush_lock);
		free(r); /* its segment was allocated with it */
	}
	return 0;
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
		pmi_private_put((struct device *)m); /* `m` is a private device's first member */
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

size_t pmem_metrics_registry_nfields(struct pmem_metrics_registry *r)
{
	if (!r || pmi_ready(r) != 0)
		return 0;
	return r->seg ? r->seg->nfields : NFIELDS;
}

const char *pmem_metrics_registry_field_name(struct pmem_metrics_registry *r, size_t f)
{
	if (f >= pmem_metrics_registry_nfields(r))
		return NULL;
	return r->seg ? r->seg->field_part[2 * f] : pmem_metrics_field_name(f);
}

const char *pmem_metrics_registry_field_doc(struct pmem_metrics_registry *r, size_t f)
{
	if (f >= pmem_metrics_registry_nfields(r))
		return NULL;
	return r->seg ? r->seg->field_part[2 * f + 1] : pmem_metrics_field_doc(f);
}

const char *pmem_metrics_registry_fields(struct pmem_metrics_registry *r, size_t *len)
{
	size_t n = 0;
	const char *fields = NULL;

	/* This library's own list is one block, whoever has it: a binding compares a pointer. */
	if (pmem_metrics_registry_nfields(r) > 0)
		fields = r->seg && !r->seg->own_fields ? r->seg->fields : pmi_fields(&n);
	if (fields && r->seg && !r->seg->own_fields)
		n = r->seg->fields_len;
	if (len)
		*len = n;
	return fields;
}

const char *pmem_metrics_fields(size_t *len)
{
	size_t n;
	const char *fields = pmi_fields(&n);

	if (len)
		*len = n;
	return fields;
}
