/*
 * pmem_metrics.c - the registry of pmem devices and the two-step flush.
 *
 * See pmem_metrics.h for the guarantees.  Lock order, where several are
 * held: a registry's flush lock, then its registry lock; the default
 * registry's lock, then `opened_lock` (only fork's prepare handler takes two).
 */
#define _GNU_SOURCE /* pthread_rwlock_t under -std=c11; glibc's writer-preferring rwlock */

#include "pmem_metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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
	/*
	 * In a shared segment, 1 once the counters and id are set: the store is
	 * a release, paired with the acquire load of a recovery that rebuilds
	 * the index from the published slots (private devices are born so).
	 */
	_Atomic uint32_t published;
	uint32_t id_len; /* bytes, without the NUL */
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
 * A shared segment, as this process mapped it: the layout is copied out of
 * the header once it was checked, and only these copies are used to find
 * things, so a writer that scribbles on the header cannot send us outside
 * the mapping.
 */
struct shm {
	struct segment *hdr;
	size_t size;
	uint64_t capacity, slot_size;
	uint32_t *index; /* capacity entries: slot numbers in id order */
	char *slots;
	dev_t dev; /* the file's identity: one registry per segment per process */
	ino_t ino;
};

/*
 * A registry: devices sorted by id bytes.  Entries only ever get inserted; a
 * device, once published here, never moves or goes away, and neither does
 * a registry.  The process's default registry is private (an array of
 * devices on the heap) until it attaches to a segment; every other registry
 * is a segment opened by pmem_metrics_registry_open().
 */
struct pmem_metrics_registry {
	pthread_rwlock_t lock; /* the private registry's; attach() takes it too */
	/* Held by an open private flush: from its take until its publish, commit, withdrawal or abort. */
	pthread_mutex_t flush_lock;
	struct device **v;
	size_t n, cap;
	size_t id_bytes; /* sum of (id_len + 1) over v: the size of a snapshot's id list */
	/*
	 * Set once, before any device exists (by pmem_metrics_attach(), or
	 * when a segment is opened): from then on every call on the registry
	 * works on the segment, and the fields above are unused.  Release
	 * store, acquire loads (is_shared()): whoever sees it set sees `shm`.
	 */
	atomic_bool shared;
	struct shm shm;
	struct pmem_metrics_registry *next; /* in `opened` */
};

static struct pmem_metrics_registry default_registry = {
	.lock = REGISTRY_LOCK_INITIALIZER,
	.flush_lock = PTHREAD_MUTEX_INITIALIZER,
};

/* The segments pmem_metrics_registry_open() mapped, newest first; never freed. */
static pthread_mutex_t opened_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pmem_metrics_registry *opened;

static bool is_shared(const struct pmem_metrics_registry *r)
{
	return atomic_load_explicit(&r->shared, memory_order_acquire);
}

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
	struct pmem_metrics_registry *reg; /* whose flush it is */
	size_t *id_at; /* n: where each device's id starts in `ids` */
	char *ids;     /* every id, each followed by NUL: copies, never the segment's own */
	size_t ids_len;
};

/*
 * The open flush of this thread, if any: one at a time, in any registry (a
 * second in the same segment, opened twice, would deadlock).
 */
static _Thread_local struct pmem_metrics_snapshot *held;

static int fork_safety(void);    /* see fork() below */
static int ready(struct pmem_metrics_registry *r); /* see the end of the file */

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

/*
 * Lock `mutex`: for ever (timeout_ms < 0), not at all (0), or waiting up to
 * timeout_ms milliseconds on the monotonic clock (a wall-clock step cannot
 * stretch the wait).  0, or the error number (ETIMEDOUT when it is busy;
 * EOWNERDEAD from a robust mutex whose holder died).
 */
static int lock_within(pthread_mutex_t *mutex, int timeout_ms)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 30) && !defined(__SANITIZE_THREAD__)
	const clockid_t clock = CLOCK_MONOTONIC;
#else
	const clockid_t clock = CLOCK_REALTIME; /* no clocklock (or TSan does not model it) */
#endif
	struct timespec until;
	int err;

	if (timeout_ms < 0)
		return pthread_mutex_lock(mutex);
	if (timeout_ms == 0) {
		err = pthread_mutex_trylock(mutex);
		return err == EBUSY ? ETIMEDOUT : err;
	}
	clock_gettime(clock, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 30) && !defined(__SANITIZE_THREAD__)
	return pthread_mutex_clocklock(mutex, clock, &until);
#else
	return pthread_mutex_timedlock(mutex, &until);
#endif
}

/* ---- Shared segment ------------------------------------------------------- */

static int id_cmp(const char *a, size_t a_len, const char *b, size_t b_len); /* see the registry */

/*
 * A segment is one regular file, mapped MAP_SHARED by every attached process:
 *
 *   struct segment        header: what the file is, two robust process-shared
 *                         mutexes, and the counts the registry mutex guards
 *   uint32_t index[cap]   slot numbers of the devices, in id order
 *   slots[cap]            struct device each, with room for the longest id
 *
 * A device takes the next free slot and never moves.  The index is derived
 * data: a process that finds the registry mutex's holder dead (EOWNERDEAD)
 * rebuilds it from the published slots, so a half-done insert is either
 * invisible (not yet published) or complete.
 */
#define SEG_MAGIC "PMEMSEG"
enum {
	SEG_VERSION = 1,
	ID_MAX_BYTES = 4 * PMEM_METRICS_ID_MAX_CHARS, /* UTF-8: at most 4 bytes a code point */
	SEG_MAX_CAPACITY = 1 << 24
};

struct segment {
	char magic[8];
	uint32_t version;
	uint32_t nfields;
	uint64_t fields_hash; /* of the field names: a library with other fields refuses the file */
	uint64_t mutex_size;  /* sizeof(pthread_mutex_t) of the process that made it */
	uint64_t capacity, slot_size, index_off, slots_off, size;
	pthread_mutex_t registry_lock; /* robust, process-shared */
	pthread_mutex_t flush_lock;    /* robust, process-shared */
	uint64_t n, used, id_bytes;    /* guarded by registry_lock */
};

static uint64_t round64(uint64_t x)
{
	return (x + 63) / 64 * 64;
}

/* The layout of a segment of `capacity` slots (the fields after `capacity`). */
static void seg_layout(uint64_t capacity, struct segment *h)
{
	h->capacity = capacity;
	h->slot_size = round64(sizeof(struct device) + ID_MAX_BYTES + 1);
	h->index_off = round64(sizeof(struct segment));
	h->slots_off = round64(h->index_off + capacity * sizeof(uint32_t));
	h->size = h->slots_off + capacity * h->slot_size;
}

/* FNV-1a of every field name, each with its NUL. */
static uint64_t fields_hash(void)
{
	uint64_t h = 1469598103934665603u;

	for (size_t f = 0; f < NFIELDS; f++)
		for (const char *c = field_name[f];; c++) {
			h = (h ^ (unsigned char)*c) * 1099511628211u;
			if (!*c)
				break;
		}
	return h;
}

static struct device *shm_slot(const struct shm *m, uint64_t i)
{
	return (struct device *)(m->slots + i * m->slot_size);
}

/*
 * One read of a value in a segment.  Another process may write it at any
 * time (a buggy or hostile one, ignoring the locks), so a value is read
 * once into a local, checked, and only that copy is used: the compiler may
 * not read it again behind our back.
 */
static uint64_t seg_u64(const uint64_t *p)
{
	return *(const volatile uint64_t *)p;
}

static uint32_t seg_u32(const uint32_t *p)
{
	return *(const volatile uint32_t *)p;
}

/* The id length of a device in a segment, read once: 0 if impossible. */
static size_t slot_id_len(const struct device *d)
{
	uint32_t len = seg_u32(&d->id_len);

	return len <= ID_MAX_BYTES ? len : 0;
}

/* Create the segment at `path` whole, under a temporary name, then link it in. */
static int shm_create(const char *path, uint64_t capacity, unsigned mode)
{
	static atomic_uint serial;
	char tmp[PATH_MAX];
	struct segment *h;
	struct segment layout;
	pthread_mutexattr_t attr;
	int fd, err = 0;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.%ld.%u.tmp", path, (long)getpid(),
			     atomic_fetch_add_explicit(&serial, 1, memory_order_relaxed)) >= sizeof(tmp))
		return ENAMETOOLONG;
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
	if (fd < 0)
		return errno;
	seg_layout(capacity, &layout);
	if (layout.size > SIZE_MAX) {
		err = EFBIG; /* more than this process could map (a 32-bit one) */
		goto out;
	}
	/* The whole file's space up front: a later page fault can never SIGBUS. */
	if (fchmod(fd, (mode_t)mode) != 0 || (err = posix_fallocate(fd, 0, (off_t)layout.size)) != 0) {
		err = err ? err : errno;
		goto out;
	}
	h = mmap(NULL, layout.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (h == MAP_FAILED) {
		err = errno;
		goto out;
	}
	*h = layout; /* the file is zeros: n = used = id_bytes = 0 */
	h->version = SEG_VERSION;
	h->nfields = NFIELDS;
	h->fields_hash = fields_hash();
	h->mutex_size = sizeof(pthread_mutex_t);
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&h->registry_lock, &attr);
	pthread_mutex_init(&h->flush_lock, &attr);
	pthread_mutexattr_destroy(&attr);
	memcpy(h->magic, SEG_MAGIC, sizeof(h->magic)); /* last: nothing reads it before the link anyway */
	munmap(h, layout.size);
	/* Atomic publication: PATH is a complete segment or absent.  EEXIST: another process won. */
	if (link(tmp, path) != 0)
		err = errno;
out:
	unlink(tmp);
	close(fd);
	return err;
}

/* Check the segment open at `fd` and map it into `m`.  0, or the error number. */
static int shm_check_and_map(int fd, struct shm *m)
{
	struct segment h, want;
	struct stat st;
	void *p;

	if (fstat(fd, &st) != 0)
		return errno;
	if (!S_ISREG(st.st_mode))
		return EINVAL; /* not a regular file */
	if ((uint64_t)st.st_size < sizeof(h) || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return EBADMSG; /* truncated */
	if (memcmp(h.magic, SEG_MAGIC, sizeof(h.magic)) != 0)
		return EINVAL; /* not a pmem_metrics segment */
	if (h.version != SEG_VERSION || h.mutex_size != sizeof(pthread_mutex_t) ||
	    h.nfields != NFIELDS || h.fields_hash != fields_hash())
		return EPROTO; /* another version, ABI or field list */
	if (h.capacity == 0 || h.capacity > SEG_MAX_CAPACITY)
		return EBADMSG;
	seg_layout(h.capacity, &want);
	if (want.size > SIZE_MAX)
		return EFBIG; /* more than this process can map (a 32-bit one) */
	if (h.slot_size != want.slot_size || h.index_off != want.index_off ||
	    h.slots_off != want.slots_off || h.size != want.size || (uint64_t)st.st_size != h.size)
		return EBADMSG; /* corrupt, truncated or grown */
	p = mmap(NULL, want.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return errno;
	m->hdr = p;
	m->size = want.size;
	m->capacity = want.capacity;
	m->slot_size = want.slot_size;
	m->index = (uint32_t *)((char *)p + want.index_off);
	m->slots = (char *)p + want.slots_off;
	m->dev = st.st_dev;
	m->ino = st.st_ino;
	return 0;
}

/* Open the segment at `path`, creating it if absent.  0, or the error number. */
static int shm_open_path(const char *path, uint64_t capacity, unsigned mode, struct shm *m)
{
	for (int tries = 0; tries < 8; tries++) {
		int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		int err;

		if (fd >= 0) {
			err = shm_check_and_map(fd, m);
			close(fd);
			return err;
		}
		if (errno != ENOENT)
			return errno;
		err = shm_create(path, capacity, mode);
		if (err != 0 && err != EEXIST)
			return err;
	}
	return EAGAIN; /* created and removed again, over and over */
}

/*
 * Compare the ids of two slots, lengths read once each.  The slot numbers
 * come from the index, in the segment: one beyond the capacity (written
 * there behind our back) is compared by number, never looked at.
 */
static int slot_cmp(const struct shm *m, uint32_t a, uint32_t b)
{
	const struct device *x, *y;

	if (a >= m->capacity || b >= m->capacity)
		return (a > b) - (a < b);
	x = shm_slot(m, a);
	y = shm_slot(m, b);

	return id_cmp(x->id, slot_id_len(x), y->id, slot_id_len(y));
}

/*
 * Sort the first `n` index entries by id: a heapsort, whose every access is
 * bounded by `n` whatever the comparisons answer -- a process scribbling on
 * the ids while this runs can spoil the order (found later: EBADMSG, or an
 * id not found), never send it outside the index.
 */
static void index_sort(struct shm *m, uint64_t n)
{
	uint32_t *v = m->index;

	for (uint64_t end = n, start = n / 2; end > 1;) {
		uint64_t root, child;
		uint32_t t;

		if (start > 0) {
			start--; /* building the heap */
		} else {
			end--; /* the largest to the end */
			t = v[end];
			v[end] = v[0];
			v[0] = t;
		}
		for (root = start; (child = 2 * root + 1) < end; root = child) {
			if (child + 1 < end && slot_cmp(m, v[child], v[child + 1]) < 0)
				child++;
			if (slot_cmp(m, v[root], v[child]) >= 0)
				break;
			t = v[root];
			v[root] = v[child];
			v[child] = t;
		}
	}
}

/*
 * Rebuild the index and the counts from the published slots, after a
 * process died holding the registry mutex (the caller holds it now), or
 * found them impossible.  Slots are handed out in order, so the published
 * ones come first.  0, or EBADMSG if a slot is not what this library wrote.
 */
static int shm_rebuild(struct shm *m)
{
	uint64_t count = 0, bytes = 0;

	for (; count < m->capacity; count++) {
		struct device *d = shm_slot(m, count);
		size_t len;

		if (!atomic_load_explicit(&d->published, memory_order_acquire))
			break;
		len = slot_id_len(d);
		if (len == 0 || pmem_metrics_id_check(d->id, len) != PMEM_METRICS_ID_OK)
			return EBADMSG;
		m->index[count] = (uint32_t)count;
		bytes += len + 1;
	}
	index_sort(m, count);
	for (uint64_t i = 1; i < count; i++)
		if (slot_cmp(m, m->index[i - 1], m->index[i]) >= 0)
			return EBADMSG; /* one id twice (or ids that changed as they were sorted) */
	m->hdr->n = count;
	m->hdr->used = count;
	m->hdr->id_bytes = bytes;
	return 0;
}

/* Whether the counts the registry mutex guards are possible (caller holds it). */
static bool shm_counts_sane(const struct shm *m)
{
	const struct segment *h = m->hdr;

	return h->used <= m->capacity && h->n == h->used &&
	       h->id_bytes <= h->n * (ID_MAX_BYTES + 1) && h->id_bytes >= 2 * h->n;
}

/*
 * Lock a robust mutex of the segment.  A holder that died leaves EOWNERDEAD:
 * for the registry mutex the index is rebuilt first; the flush mutex guards
 * no data of its own (every counter is consistent by itself).
 */
static int shm_lock(struct shm *m, pthread_mutex_t *mutex, int timeout_ms)
{
	int err = lock_within(mutex, timeout_ms);

	if (err == EOWNERDEAD) {
		err = 0;
		if (mutex == &m->hdr->registry_lock)
			err = shm_rebuild(m);
		pthread_mutex_consistent(mutex);
		if (err) {
			pthread_mutex_unlock(mutex);
			return err;
		}
		return 0;
	}
	if (err == 0 && mutex == &m->hdr->registry_lock && !shm_counts_sane(m)) {
		err = shm_rebuild(m);
		if (err)
			pthread_mutex_unlock(mutex);
	}
	return err;
}

/* ---- Registry ------------------------------------------------------------- */

/* Compare two ids of the given lengths in bytes, as unsigned bytes. */
static int id_cmp(const char *a, size_t a_len, const char *b, size_t b_len)
{
	int r = memcmp(a, b, a_len < b_len ? a_len : b_len);

	if (r)
		return r;
	return (a_len > b_len) - (a_len < b_len);
}

/* Number of devices; caller holds the lock.  In a segment, read once and at most its capacity. */
static size_t reg_n(const struct pmem_metrics_registry *r)
{
	uint64_t n;

	if (!is_shared(r))
		return r->n;
	n = seg_u64(&r->shm.hdr->n);
	return n <= r->shm.capacity ? (size_t)n : (size_t)r->shm.capacity;
}

/*
 * Device `i` (below reg_n()) in id order, and the length of its id, which
 * the caller must use instead of reading `id_len` again; caller holds the
 * lock.  In a segment, NULL when the index names a slot that is not a
 * device (a corrupt or hostile file).
 */
static struct device *reg_at(const struct pmem_metrics_registry *r, size_t i, size_t *len)
{
	const struct shm *m = &r->shm;
	struct device *d;
	uint64_t used;
	uint32_t slot;

	if (!is_shared(r)) {
		d = r->v[i];
		*len = d->id_len;
		return d;
	}
	slot = seg_u32(&m->index[i]);
	used = seg_u64(&m->hdr->used);
	if (slot >= used || slot >= m->capacity)
		return NULL;
	d = shm_slot(m, slot);
	*len = slot_id_len(d);
	return *len ? d : NULL;
}

/*
 * Where `id` is in the registry, or would go (*at); caller holds the lock.
 * 0, or EBADMSG for a corrupt segment.
 */
static int find(const struct pmem_metrics_registry *r, const char *id, size_t len, size_t *at,
		bool *found)
{
	size_t lo = 0, hi = reg_n(r);

	*found = false;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		size_t d_len;
		struct device *d = reg_at(r, mid, &d_len);
		int cmp;

		if (!d)
			return EBADMSG;
		cmp = id_cmp(id, len, d->id, d_len);
		if (cmp == 0) {
			*found = true;
			lo = mid;
			break;
		}
		if (cmp < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	*at = lo;
	return 0;
}

/* Lock the registry for reading or writing: 0, or the error number. */
static int reg_lock_within(struct pmem_metrics_registry *r, bool write, int timeout_ms)
{
	/*
	 * A segment's registry mutex can be held by another process for as
	 * long as that process is stopped (SIGSTOP, a debugger): a bounded
	 * wait lets a flush or a scrape give up, and a binding handle signals.
	 * The private lock is only ever held by this library's own short code.
	 */
	if (is_shared(r))
		return shm_lock(&r->shm, &r->shm.hdr->registry_lock, timeout_ms);
	if (write)
		pthread_rwlock_wrlock(&r->lock);
	else
		pthread_rwlock_rdlock(&r->lock);
	return 0;
}

static int reg_lock(struct pmem_metrics_registry *r, bool write)
{
	return reg_lock_within(r, write, -1);
}

static void reg_unlock(struct pmem_metrics_registry *r)
{
	if (is_shared(r))
		pthread_mutex_unlock(&r->shm.hdr->registry_lock);
	else
		pthread_rwlock_unlock(&r->lock);
}

/* Insert `id` into the segment's registry (locked) at `at`: the device, or NULL + errno. */
static struct device *shm_insert(struct shm *m, const char *id, size_t len, size_t at)
{
	struct segment *h = m->hdr;
	uint64_t used = seg_u64(&h->used), n = seg_u64(&h->n); /* once: see seg_u64() */
	struct device *d;

	if (used >= m->capacity) {
		errno = ENOSPC;
		return NULL;
	}
	if (n > used || at > n) {
		errno = EBADMSG; /* changed since the lock was taken: someone ignores it */
		return NULL;
	}
	d = shm_slot(m, used);
	for (size_t f = 0; f < NFIELDS; f++) {
		struct pmem_metrics_counter *c = pmem_metrics_field(&d->m, f);

		atomic_store_explicit(&c->current, 0, memory_order_relaxed);
		atomic_store_explicit(&c->old, 0, memory_order_relaxed);
	}
	d->id_len = (uint32_t)len;
	memcpy(d->id, id, len);
	d->id[len] = '\0';
	/* Release pairs with the acquire load in shm_rebuild(). */
	atomic_store_explicit(&d->published, 1, memory_order_release);
	pause_point("insert"); /* published, not yet in the index: a crash here is recovered */
	memmove(&m->index[at + 1], &m->index[at], (n - at) * sizeof(*m->index));
	m->index[at] = (uint32_t)used;
	h->used = used + 1;
	h->n = n + 1;
	h->id_bytes += len + 1;
	return d;
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
	atomic_init(&d->published, 1);
	d->id_len = (uint32_t)len;
	memcpy(d->id, id, len);
	d->id[len] = '\0';
	return d;
}

/* In a segment: look `id` up and insert it if absent, all under the registry mutex. */
static struct pmem_metrics *shm_alloc(struct pmem_metrics_registry *r, const char *id, size_t len)
{
	struct device *d = NULL;
	bool found;
	size_t at;
	size_t d_len;
	int err = reg_lock(r, true);

	if (err == 0) {
		err = find(r, id, len, &at, &found);
		if (err == 0)
			d = found ? reg_at(r, at, &d_len) : shm_insert(&r->shm, id, len, at);
		if (!d && err == 0)
			err = found ? EBADMSG : errno;
		reg_unlock(r);
	}
	if (!d) {
		errno = err;
		return NULL;
	}
	return &d->m;
}

struct pmem_metrics *pmem_metrics_registry_alloc_len(struct pmem_metrics_registry *r,
						     const char *drive_id, size_t len)
{
	struct device *d, *fresh;
	bool found;
	size_t at;
	int err;

	if (!r || pmem_metrics_id_check(drive_id, len) != PMEM_METRICS_ID_OK) {
		errno = EINVAL;
		return NULL;
	}
	if ((err = ready(r)) != 0) {
		errno = err;
		return NULL;
	}
	if (is_shared(r))
		return shm_alloc(r, drive_id, len);

	reg_lock(r, false); /* private: cannot fail */
	find(r, drive_id, len, &at, &found);
	d = found ? r->v[at] : NULL;
	reg_unlock(r);
	if (d)
		return &d->m;

	/* Build the device outside the write lock; another thread may win the race. */
	fresh = device_new(drive_id, len);
	if (!fresh) {
		errno = ENOMEM;
		return NULL;
	}

	reg_lock(r, true);
	find(r, drive_id, len, &at, &found);
	if (found) {
		d = r->v[at];
	} else if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct device **v = xrealloc(r->v, cap * sizeof(*v));

		if (v) {
			r->v = v;
			r->cap = cap;
		}
	}
	if (!found && r->n < r->cap) {
		memmove(&r->v[at + 1], &r->v[at], (r->n - at) * sizeof(*r->v));
		pause_point("insert"); /* the array is inconsistent right here */
		r->v[at] = fresh;
		r->n++;
		r->id_bytes += len + 1;
		d = fresh;
		fresh = NULL;
	}
	reg_unlock(r);

	free(fresh); /* lost the race, or the array could not grow */
	if (!d) {
		errno = ENOMEM;
		return NULL;
	}
	return &d->m;
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
	return pmem_metrics_registry_alloc_len(&default_registry, drive_id, len);
}

struct pmem_metrics *pmem_metrics_alloc(const char *drive_id)
{
	return pmem_metrics_registry_alloc(&default_registry, drive_id);
}

size_t pmem_metrics_registry_device_count(struct pmem_metrics_registry *r)
{
	size_t n;

	if (!r || ready(r) != 0 || reg_lock(r, false) != 0)
		return 0;
	n = reg_n(r);
	reg_unlock(r);
	return n;
}

size_t pmem_metrics_device_count(void)
{
	return pmem_metrics_registry_device_count(&default_registry);
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
	pthread_rwlock_wrlock(&default_registry.lock);
	pthread_mutex_lock(&opened_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&opened_lock);
	pthread_rwlock_unlock(&default_registry.lock);
}

static void fork_child(void)
{
	/* A lock held by a thread that does not exist here is re-made, not unlocked. */
	default_registry.lock = (pthread_rwlock_t)REGISTRY_LOCK_INITIALIZER;
	opened_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	if (held && is_shared(held->reg)) {
		/*
		 * A segment's mutexes are shared with other processes: never
		 * re-made.  A flush the forking thread had open there is its
		 * parent's to finish; here it is settled without moving anything.
		 */
		held->state = SNAPSHOT_SETTLED;
		held = NULL;
	}
	if (!is_shared(&default_registry) && !held)
		default_registry.flush_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
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
	 * One block: header, seen, diffs, devs, id_at, ids -- the uint64_t
	 * arrays first, so they are 8-byte aligned even where pointers are 4
	 * bytes.
	 */
	size_t size = sizeof(struct pmem_metrics_snapshot) + 2 * n * NFIELDS * sizeof(uint64_t) +
		      n * (sizeof(struct device *) + sizeof(size_t)) + ids_len;
	struct pmem_metrics_snapshot *s = xmalloc(size);

	if (!s)
		return NULL;
	memset(s, 0, sizeof(*s));
	s->n = n;
	s->seen = (uint64_t *)(s + 1);
	s->diffs = s->seen + n * NFIELDS;
	s->devs = (struct device **)(s->diffs + n * NFIELDS);
	s->id_at = (size_t *)(s->devs + n);
	s->ids = (char *)(s->id_at + n);
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

/* Wait for the flush lock of `r` (its segment's, if shared); as lock_within(). */
static int flush_lock_acquire(struct pmem_metrics_registry *r, int timeout_ms)
{
	if (is_shared(r))
		return shm_lock(&r->shm, &r->shm.hdr->flush_lock, timeout_ms);
	return lock_within(&r->flush_lock, timeout_ms);
}

/* Release the flush lock that the open flush `s` holds. */
static void flush_release(const struct pmem_metrics_snapshot *s)
{
	struct pmem_metrics_registry *r = s->reg;

	held = NULL;
	pthread_mutex_unlock(is_shared(r) ? &r->shm.hdr->flush_lock : &r->flush_lock);
}

/*
 * Copy `r` into a new snapshot, loading every counter once; NULL with errno
 * ENOMEM (or EBADMSG, a corrupt segment).
 */
static struct pmem_metrics_snapshot *snapshot_load(struct pmem_metrics_registry *r,
						   enum snapshot_state state, int timeout_ms)
{
	struct pmem_metrics_snapshot *s;
	size_t n, id_bytes;
	char *ids;
	bool shared;
	int err = reg_lock_within(r, false, timeout_ms);

	if (err) {
		errno = err;
		return NULL;
	}
	shared = is_shared(r); /* once, under the lock: attach() cannot switch it now */
	n = reg_n(r);
	id_bytes = r->id_bytes;
	if (shared) {
		/* Read once, and never more than n ids can take (the loop checks the rest). */
		uint64_t claimed = seg_u64(&r->shm.hdr->id_bytes);

		id_bytes = claimed < n * (ID_MAX_BYTES + 1) ? (size_t)claimed : n * (ID_MAX_BYTES + 1);
	}
	s = snapshot_new(n, id_bytes);
	if (!s) {
		reg_unlock(r);
		errno = ENOMEM;
		return NULL;
	}
	s->state = state;
	s->reg = r;
	ids = s->ids;
	for (size_t i = 0; i < s->n; i++) {
		size_t len;
		struct device *d = reg_at(r, i, &len);
		uint64_t *seen = &s->seen[i * NFIELDS];
		uint64_t *diff = &s->diffs[i * NFIELDS];

		/* A segment's id list must fit what its header claimed (checked, not trusted). */
		if (!d || (size_t)(ids - s->ids) + len + 1 > s->ids_len)
			goto corrupt;
		if (i + PREFETCH_AHEAD < s->n && !shared)
			prefetch_device(r->v[i + PREFETCH_AHEAD]);

		s->devs[i] = d;
		s->id_at[i] = (size_t)(ids - s->ids);
		memcpy(ids, d->id, len);
		ids[len] = '\0';
		/*
		 * And each id one this library accepts: a bad one would be
		 * reported under a wrong name (a NUL in it), or not decode.  The
		 * copy is checked: it is what gets reported.
		 */
		if (shared && pmem_metrics_id_check(ids, len) != PMEM_METRICS_ID_OK)
			goto corrupt;
		ids += len + 1;
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
	if ((size_t)(ids - s->ids) != s->ids_len)
		goto corrupt; /* the header claimed more id bytes than there are */
	reg_unlock(r);
	return s;
corrupt:
	reg_unlock(r);
	free(s);
	errno = EBADMSG;
	return NULL;
}

int pmem_metrics_registry_snapshot_take_into(struct pmem_metrics_registry *r,
					     struct pmem_metrics_snapshot **slot, int timeout_ms)
{
	struct pmem_metrics_snapshot *s;
	int err;

	if (!r || !slot || *slot) {
		errno = EINVAL;
		return -1;
	}
	if (held) {
		errno = EDEADLK;
		return -1;
	}
	if ((err = ready(r)) != 0) {
		errno = err;
		return -1;
	}
	err = flush_lock_acquire(r, timeout_ms);
	if (err) {
		errno = err;
		return -1;
	}
	pause_point("take");
	s = snapshot_load(r, SNAPSHOT_OPEN, timeout_ms);
	if (!s) {
		struct pmem_metrics_snapshot unloaded = {.reg = r};

		err = errno;
		flush_release(&unloaded);
		errno = err;
		return -1;
	}
	held = s;
	*slot = s;
	return 0;
}

int pmem_metrics_snapshot_take_into(struct pmem_metrics_snapshot **slot, int timeout_ms)
{
	return pmem_metrics_registry_snapshot_take_into(&default_registry, slot, timeout_ms);
}

struct pmem_metrics_snapshot *pmem_metrics_registry_snapshot_take(struct pmem_metrics_registry *r)
{
	struct pmem_metrics_snapshot *s = NULL;

	return pmem_metrics_registry_snapshot_take_into(r, &s, -1) == 0 ? s : NULL;
}

struct pmem_metrics_snapshot *pmem_metrics_snapshot_take(void)
{
	return pmem_metrics_registry_snapshot_take(&default_registry);
}

int pmem_metrics_registry_snapshot_peek_into(struct pmem_metrics_registry *r,
					     struct pmem_metrics_snapshot **slot, int timeout_ms)
{
	int err;

	if (!r || !slot || *slot) {
		errno = EINVAL;
		return -1;
	}
	if ((err = ready(r)) != 0) {
		errno = err;
		return -1;
	}
	*slot = snapshot_load(r, SNAPSHOT_PEEK, timeout_ms); /* errno set on failure */
	return *slot ? 0 : -1;
}

int pmem_metrics_snapshot_peek_into(struct pmem_metrics_snapshot **slot)
{
	return pmem_metrics_registry_snapshot_peek_into(&default_registry, slot, -1);
}

struct pmem_metrics_snapshot *pmem_metrics_registry_snapshot_peek(struct pmem_metrics_registry *r)
{
	struct pmem_metrics_snapshot *s = NULL;

	return pmem_metrics_registry_snapshot_peek_into(r, &s, -1) == 0 ? s : NULL;
}

struct pmem_metrics_snapshot *pmem_metrics_snapshot_peek(void)
{
	return pmem_metrics_registry_snapshot_peek(&default_registry);
}

size_t pmem_metrics_snapshot_len(const struct pmem_metrics_snapshot *s)
{
	return s ? s->n : 0;
}

const char *pmem_metrics_snapshot_id(const struct pmem_metrics_snapshot *s, size_t i)
{
	return s && i < s->n ? s->ids + s->id_at[i] : NULL;
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
	 * takes the write lock, so a child never sees half of one.  (A
	 * segment's counters are shared with the child anyway.)
	 */
	struct pmem_metrics_registry *r = s->reg;
	bool shared = is_shared(r);

	if (!shared)
		pthread_rwlock_rdlock(&r->lock);
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
	if (!shared)
		pthread_rwlock_unlock(&r->lock);
}

void pmem_metrics_snapshot_publish(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s || s->state != SNAPSHOT_OPEN)
		return;
	move_old(s, false);
	s->state = SNAPSHOT_PUBLISHED;
	flush_release(s);
}

void pmem_metrics_snapshot_withdraw(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s)
		return;
	if (s->state == SNAPSHOT_OPEN) {
		s->state = SNAPSHOT_SETTLED;
		flush_release(s);
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
		flush_release(s);
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

/* ---- Attaching to a shared segment ------------------------------------------ */

static int segment_args(const char *path, size_t capacity, unsigned mode)
{
	if (!path || !*path || capacity > SEG_MAX_CAPACITY || (mode & ~0777u))
		return EINVAL;
	return fork_safety() != 0 ? ENOMEM : 0;
}

static struct pmem_metrics_registry *opened_segment(const struct shm *m); /* see below */

static int attach(const char *path, size_t capacity, unsigned mode)
{
	struct pmem_metrics_registry *r = &default_registry;
	struct shm m;
	int err = segment_args(path, capacity, mode);

	if (err)
		return err;
	/*
	 * The write lock keeps allocations out, and fork() (its prepare handler
	 * takes it too); the flush lock, a flush: nothing may straddle the switch.
	 */
	pthread_rwlock_wrlock(&r->lock);
	if (is_shared(r) || r->n > 0 || pthread_mutex_trylock(&r->flush_lock) != 0) {
		pthread_rwlock_unlock(&r->lock);
		return EBUSY;
	}
	err = shm_open_path(path, capacity ? capacity : PMEM_METRICS_SHM_DEFAULT_CAPACITY, mode, &m);
	if (err == 0) {
		/*
		 * One registry per segment: if this process has it open as a
		 * registry of its own, the default cannot become a second one.
		 * Under opened_lock, so pmem_metrics_registry_open() sees either
		 * that registry or this attached default, never neither.
		 */
		pthread_mutex_lock(&opened_lock);
		if (opened_segment(&m)) {
			err = EBUSY;
			munmap(m.hdr, m.size);
		} else {
			r->shm = m;
			atomic_store_explicit(&r->shared, true, memory_order_release); /* pairs with is_shared() */
		}
		pthread_mutex_unlock(&opened_lock);
	}
	pthread_mutex_unlock(&r->flush_lock);
	pthread_rwlock_unlock(&r->lock);
	return err;
}

static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static int env_error; /* written once, under env_once */

/* PMEM_METRICS_SHM=PATH: attach at first use; a failure fails every call. */
static void attach_from_env(void)
{
	const char *path = getenv("PMEM_METRICS_SHM");

	if (path && *path)
		env_error = attach(path, 0, 0600);
}

/*
 * Whether calls on `r` may go ahead: 0, or the error number.  fork() must be
 * covered (a child settles a held flush of a segment in its handler), and
 * the default registry first attaches as PMEM_METRICS_SHM says.
 */
static int ready(struct pmem_metrics_registry *r)
{
	if (fork_safety() != 0)
		return ENOMEM;
	if (r != &default_registry)
		return 0;
	pthread_once(&env_once, attach_from_env);
	return env_error;
}

int pmem_metrics_attach_mode(const char *path, size_t capacity, unsigned mode)
{
	int err = ready(&default_registry); /* PMEM_METRICS_SHM first: it may have attached already */

	if (err == 0)
		err = attach(path, capacity, mode);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

int pmem_metrics_attach(const char *path, size_t capacity)
{
	return pmem_metrics_attach_mode(path, capacity, 0600);
}

int pmem_metrics_is_shared(void)
{
	return pmem_metrics_registry_is_shared(&default_registry);
}

/* ---- Registries as objects --------------------------------------------------- */

struct pmem_metrics_registry *pmem_metrics_registry_default(void)
{
	return &default_registry;
}

/* The registry of the segment mapped at `m` if this process has one already (opened_lock held). */
static struct pmem_metrics_registry *opened_segment(const struct shm *m)
{
	struct pmem_metrics_registry *r = &default_registry;

	if (is_shared(r) && r->shm.dev == m->dev && r->shm.ino == m->ino)
		return r;
	for (r = opened; r; r = r->next)
		if (r->shm.dev == m->dev && r->shm.ino == m->ino)
			return r;
	return NULL;
}

struct pmem_metrics_registry *pmem_metrics_registry_open(const char *path, size_t capacity,
							 unsigned mode)
{
	struct pmem_metrics_registry *r, *known;
	struct shm m;
	struct stat st;
	const char *env;
	int err = segment_args(path, capacity, mode);

	if (err == 0 && !(r = xmalloc(sizeof(*r))))
		err = ENOMEM;
	if (err) {
		errno = err;
		return NULL;
	}
	/* Open and map outside any lock (file system calls can be slow), then look for a twin. */
	err = shm_open_path(path, capacity ? capacity : PMEM_METRICS_SHM_DEFAULT_CAPACITY, mode, &m);
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
	if (env && *env && lstat(env, &st) == 0 && st.st_dev == m.dev && st.st_ino == m.ino)
		(void)ready(&default_registry); /* its error is the default registry's to report */
	pthread_mutex_lock(&opened_lock);
	known = opened_segment(&m);
	if (!known) {
		*r = (struct pmem_metrics_registry){
			.lock = REGISTRY_LOCK_INITIALIZER, /* unused: a segment has its own locks */
			.flush_lock = PTHREAD_MUTEX_INITIALIZER,
			.shm = m,
			.next = opened,
		};
		atomic_init(&r->shared, true);
		opened = r;
	}
	pthread_mutex_unlock(&opened_lock);
	if (known) {
		munmap(m.hdr, m.size);
		free(r);
		return known;
	}
	return r;
}

int pmem_metrics_registry_is_shared(struct pmem_metrics_registry *r)
{
	return r && ready(r) == 0 && is_shared(r);
}

size_t pmem_metrics_registry_capacity(struct pmem_metrics_registry *r)
{
	return pmem_metrics_registry_is_shared(r) ? (size_t)r->shm.capacity : 0;
}
