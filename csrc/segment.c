/*
 * segment.c - the shared segment's file format.
 *
 * A segment is one regular file, mapped MAP_SHARED by every process that
 * writes it (increments, inserts, flushes) and read with pread() by the
 * others:
 *
 *   struct segment          what the file is, its layout, and three words:
 *                           `seq` (odd while an insert is under way), `used`
 *                           (the number of devices) and the insert lock's
 *                           holder
 *   uint32_t procs[4096]    incarnation numbers of the process slots
 *   uint32_t index[cap]     slot numbers of the devices, in id order
 *   slots[cap]              struct device each, with room for the longest id
 *   claims[4]               what flushes on their way took
 *
 * Nothing in the file is a pointer or a library's private state: only
 * integers, each read once, bounded, and then used from that copy.
 * (Process-shared pthread mutexes keep their holders' robust-list pointers
 * inside the mutex, in the file: whoever can write the file could make the
 * next unlock write where it likes.)  The flush lock and the claims' locks
 * are byte-range locks of the open file description (fcntl F_OFD_SETLK),
 * which the kernel drops when the holder's last descriptor goes: a process
 * that dies holding one frees it by construction.  The insert lock, taken
 * for every new id, is a word that names its holder by a process slot,
 * whose liveness is again such a byte-range lock (see "Locks"): one
 * compare-and-swap each way instead of two system calls.  A lock wait polls
 * with a short back-off until its deadline: the kernel's blocking wait has
 * no timeout.
 *
 * A device takes the next free slot and never moves.  The index is derived
 * data, maintained under the insert lock.  Readers take no lock: they copy
 * the index and check it (slot numbers below `used`, each once, ids strictly
 * increasing); a copy that fails the check -- an insert under way, or a
 * process that wrote nonsense -- is replaced by sorting the slots themselves.
 * An insert that died half-way leaves `seq` odd; the next insert rebuilds
 * the index from the published slots.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEG_MAGIC "PMEMSEG"
enum { SEG_VERSION = 3, SEG_MAX_CAPACITY = 1 << 24 };

struct segment {
	char magic[8];
	uint32_t version;
	uint32_t nfields;
	uint64_t fields_hash; /* of the field names: a library with other fields refuses the file */
	uint64_t capacity, slot_size, index_off, slots_off, size;
	_Atomic uint64_t seq;  /* even when the index is whole; odd while an insert changes it */
	_Atomic uint64_t used; /* devices in the index: index[0, used) */
	uint64_t claims_off, claim_size; /* SEG_CLAIMS records of flushes under way */
	uint64_t procs_off;              /* SEG_PROCS incarnation numbers (uint32_t) */
	/* The insert lock: 0, or the holder's token, (process slot + 1) << 32 | incarnation. */
	_Atomic uint64_t insert_owner;
	_Atomic uint64_t high;           /* slots ever handed out: [0, high); the rest are zeros */
	_Atomic uint64_t alloc_failures; /* allocations refused for want of a slot */
	_Atomic uint64_t flushes;        /* flushes published: 0, nobody writes lines from it */
};

/*
 * A claim: what one flush under way took (see "Claims" below).  `state` is
 * CLAIM_ACTIVE from before its `old` moved until its report was delivered
 * or its moves undone; then anything else.
 */
struct claim_entry {
	uint32_t slot;
	uint32_t unused;
	uint64_t diff[NFIELDS];
};

struct claim {
	_Atomic uint64_t state;
	uint64_t n;
	/*
	 * How far its baselines moved: 2i + 1 while entry i moves, 2(i + 1) once
	 * it has; (mark + 1) / 2 entries are to be moved back for it.
	 */
	_Atomic uint64_t mark;
	struct claim_entry e[];
};

#define CLAIM_ACTIVE 0x434c41494d414354u /* "CLAIMACT": no zeroed or stray word means it */

/*
 * Byte-range lock offsets: flushes, then one per claim (held by its owner),
 * then one per process slot (held by a process for as long as it has the
 * segment open for writing).
 */
enum { CLAIM_LOCK_BASE = 8, PROC_LOCK_BASE = 64 };

/*
 * A process's references to the devices of a segment: a read lock on one
 * byte per slot, from REF_LOCK_BASE on (past the file's end: the kernel
 * locks any range), held while the process holds a reference to the slot's
 * device.  A slot is given to a new device only while nobody holds it.
 */
#define REF_LOCK_BASE ((off_t)1 << 32)

static uint64_t round64(uint64_t x)
{
	return (x + 63) / 64 * 64;
}

/* The layout of a segment of `capacity` slots (the fields after `capacity`). */
static void seg_layout(uint64_t capacity, struct segment *h)
{
	h->capacity = capacity;
	h->slot_size = round64(sizeof(struct device) + ID_MAX_BYTES + 1);
	h->procs_off = round64(sizeof(struct segment));
	h->index_off = round64(h->procs_off + SEG_PROCS * sizeof(uint32_t));
	h->slots_off = round64(h->index_off + capacity * sizeof(uint32_t));
	h->claims_off = h->slots_off + capacity * h->slot_size;
	h->claim_size = round64(sizeof(struct claim) + capacity * sizeof(struct claim_entry));
	h->size = h->claims_off + SEG_CLAIMS * h->claim_size;
}

static struct segment *hdr(const struct pmi_seg *g)
{
	return (struct segment *)g->map;
}

static _Atomic uint32_t *seg_index(const struct pmi_seg *g)
{
	return (_Atomic uint32_t *)(g->map + g->index_off);
}

static struct device *seg_slot(const struct pmi_seg *g, uint64_t i)
{
	return (struct device *)(g->map + g->slots_off + i * g->slot_size);
}

/* The id length of a device, read once: 0 if impossible. */
static size_t slot_id_len(const struct device *d)
{
	uint32_t len = *(const volatile uint32_t *)&d->id_len;

	return len <= ID_MAX_BYTES ? len : 0;
}

/* Whether a slot in state `word` holds a device the index lists: live, or retired (not drained). */
static bool is_device(uint32_t word)
{
	uint32_t state = pmi_dev_state(word);

	return state == DEV_LIVE || state == DEV_RETIRED;
}

/* ---- Creating and opening ------------------------------------------------ */

/*
 * A new segment's size must be sane for this machine: at most a quarter of
 * its memory (a segment under /dev/shm is memory; one elsewhere is mapped
 * whole by every process that writes it).
 */
static int size_possible(uint64_t size)
{
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);

	if (size > SIZE_MAX)
		return EFBIG; /* more than this process could map (a 32-bit one) */
	if (pages > 0 && page > 0 && size > (uint64_t)pages / 4 * (uint64_t)page)
		return EFBIG;
	return 0;
}

/*
 * Create the segment `name` in the directory `dirfd` whole, under a
 * temporary name, then link it in: the path is a complete segment or absent.
 */
static int seg_create(int dirfd, const char *name, uint64_t capacity, unsigned mode)
{
	static atomic_uint serial;
	char tmp[NAME_MAX + 1];
	struct segment layout = {0}, *h;
	int fd, err;

	seg_layout(capacity, &layout);
	if ((err = size_possible(layout.size)) != 0)
		return err;
	if ((size_t)snprintf(tmp, sizeof(tmp), ".%s.%ld.%u.tmp", name, (long)getpid(),
			     atomic_fetch_add_explicit(&serial, 1, memory_order_relaxed)) >= sizeof(tmp))
		return ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
	if (fd < 0)
		return errno;
	/* The whole file's space up front: a page fault can never SIGBUS for want of it. */
	if (fchmod(fd, (mode_t)mode) != 0 || (err = posix_fallocate(fd, 0, (off_t)layout.size)) != 0) {
		err = err ? err : errno;
		goto out;
	}
	h = mmap(NULL, sizeof(*h), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (h == MAP_FAILED) {
		err = errno;
		goto out;
	}
	layout.version = SEG_VERSION;
	layout.nfields = NFIELDS;
	layout.fields_hash = pmi_fields_hash();
	memcpy(layout.magic, SEG_MAGIC, sizeof(layout.magic));
	memcpy(h, &layout, sizeof(*h)); /* the rest of the file is zeros: no device yet */
	munmap(h, sizeof(*h));
	/* Atomic publication.  EEXIST: another process won; its segment is opened. */
	if (linkat(dirfd, tmp, dirfd, name, 0) != 0)
		err = errno;
out:
	unlinkat(dirfd, tmp, 0);
	close(fd);
	return err;
}

/*
 * Whose segment: one that users other than its owner and group may write
 * could be anyone's; one another user owns is theirs to change under us.
 * Refused unless the caller said it trusts the file.  A reader is refused
 * only the first: it cannot be harmed by the file, only misinformed.
 */
static int seg_trusted(const struct stat *st, unsigned flags)
{
	if (flags & PMEM_METRICS_OPEN_TRUST)
		return 0;
	if (st->st_mode & S_IWOTH)
		return EPERM;
	if (!(flags & PMEM_METRICS_OPEN_READONLY) && st->st_uid != geteuid())
		return EPERM;
	return 0;
}

/* Check the segment open at `g->fd` and copy out its layout; map it if writable. */
static int seg_check(struct pmi_seg *g, unsigned flags)
{
	struct segment h, want;
	struct stat st;
	int err;

	if (fstat(g->fd, &st) != 0)
		return errno;
	if (!S_ISREG(st.st_mode))
		return EINVAL; /* not a regular file */
	if ((err = seg_trusted(&st, flags)) != 0)
		return err;
	if ((uint64_t)st.st_size < sizeof(h) || pread(g->fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return EBADMSG; /* truncated */
	if (memcmp(h.magic, SEG_MAGIC, sizeof(h.magic)) != 0)
		return EINVAL; /* not a pmem_metrics segment */
	if (h.version != SEG_VERSION || h.nfields != NFIELDS || h.fields_hash != pmi_fields_hash())
		return EPROTO; /* another version or field list */
	if (h.capacity == 0 || h.capacity > SEG_MAX_CAPACITY)
		return EBADMSG;
	seg_layout(h.capacity, &want);
	if (h.slot_size != want.slot_size || h.index_off != want.index_off ||
	    h.slots_off != want.slots_off || h.claims_off != want.claims_off ||
	    h.procs_off != want.procs_off ||
	    h.claim_size != want.claim_size || h.size != want.size || (uint64_t)st.st_size != h.size)
		return EBADMSG; /* corrupt, truncated or grown */
	if (want.size > SIZE_MAX)
		return EFBIG; /* more than this process can map (a 32-bit one) */
	g->size = want.size;
	g->capacity = want.capacity;
	g->slot_size = want.slot_size;
	g->index_off = want.index_off;
	g->slots_off = want.slots_off;
	g->claims_off = want.claims_off;
	g->procs_off = want.procs_off;
	g->claim_size = want.claim_size;
	g->dev = st.st_dev;
	g->ino = st.st_ino;
	if (g->writable) {
		void *p = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, g->fd, 0);

		if (p == MAP_FAILED)
			return errno;
		g->map = p;
	}
	return 0;
}

/* The directory part of `path` (".", if none), opened to resolve names in, and the name. */
static int open_dir(const char *path, const char **name)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];
	size_t len;

	if (!slash) {
		*name = path;
		return open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	}
	*name = slash + 1;
	len = slash == path ? 1 : (size_t)(slash - path);
	if (len >= sizeof(dir)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(dir, path, len);
	dir[len] = '\0';
	return open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
}

static int claim_proc(struct pmi_seg *g); /* see "Locks" */

int pmi_seg_open(struct pmi_seg *g, const char *path, uint64_t capacity, unsigned mode,
		 unsigned flags)
{
	const char *name;
	int dirfd, err = 0;

	*g = (struct pmi_seg){.fd = -1, .writable = !(flags & PMEM_METRICS_OPEN_READONLY)};
	if (!path || !*path || capacity == 0 || capacity > SEG_MAX_CAPACITY || (mode & ~0777u))
		return EINVAL;
	if (!(flags & (PMEM_METRICS_OPEN_READONLY | PMEM_METRICS_OPEN_EXISTING)) &&
	    ((mode & 0600) != 0600 || ((mode & S_IWOTH) && !(flags & PMEM_METRICS_OPEN_TRUST))))
		return EINVAL; /* a segment its creator could not open, or would refuse as untrusted */
	dirfd = open_dir(path, &name);
	if (dirfd < 0)
		return errno;
	if (!*name) {
		close(dirfd);
		return EISDIR;
	}
	/*
	 * The directory was resolved once; the name in it is never followed if
	 * a symbolic link, and only created (whole, then linked) if absent.
	 */
	for (int tries = 0;; tries++) {
		g->fd = openat(dirfd, name, (g->writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC);
		if (g->fd >= 0 || errno != ENOENT || (flags & (PMEM_METRICS_OPEN_READONLY | PMEM_METRICS_OPEN_EXISTING)))
			break;
		if (tries == 8) {
			errno = EAGAIN; /* created and removed again, over and over */
			break;
		}
		err = seg_create(dirfd, name, capacity, mode);
		if (err != 0 && err != EEXIST)
			break;
		err = 0;
	}
	if (g->fd < 0 && err == 0)
		err = errno == EMLINK ? ELOOP : errno; /* O_NOFOLLOW on a link: ELOOP (EMLINK on BSDs) */
	close(dirfd);
	if (err == 0)
		err = seg_check(g, flags);
	if (err == 0 && !(g->path = strdup(path)))
		err = ENOMEM;
	for (int i = 0; err == 0 && i < 2; i++)
		err = pthread_mutex_init(&g->thread_lock[i], NULL);
	if (err == 0)
		err = pthread_mutex_init(&g->ref_lock, NULL);
	if (err == 0 && g->writable && !(g->refs = calloc(g->capacity, sizeof(*g->refs))))
		err = ENOMEM;
	if (err == 0 && g->writable)
		err = claim_proc(g);
	if (err)
		pmi_seg_close(g);
	return err;
}

void pmi_seg_close(struct pmi_seg *g)
{
	if (g->map)
		munmap(g->map, g->size);
	if (g->fd >= 0)
		close(g->fd);
	free(g->path);
	free(g->refs);
	g->refs = NULL;
	g->map = NULL;
	g->fd = -1;
	g->path = NULL;
}

/* 0 while `path` still names the file we opened; ESTALE once removed or replaced. */
int pmi_seg_check_identity(const struct pmi_seg *g)
{
	struct stat st;

	if (lstat(g->path, &st) != 0)
		return errno == ENOENT ? ESTALE : errno;
	return st.st_dev == g->dev && st.st_ino == g->ino ? 0 : ESTALE;
}

/*
 * After fork(): the child shares the parent's open file description, and so
 * would share its locks (an OFD lock is the description's, whoever uses it).
 * Give the child a description of its own for the same file, at the same
 * descriptor number, and fresh thread locks (a parent's thread may have held
 * them; it does not exist here).
 */
static int refs_after_fork(struct pmi_seg *g);

int pmi_seg_after_fork(struct pmi_seg *g)
{
	char proc[64];
	int fd, err;

	for (int i = 0; i < 2; i++)
		g->thread_lock[i] = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	atomic_store_explicit(&g->mine, 0, memory_order_relaxed); /* the parent's claims stay its own */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", g->fd);
	fd = open(proc, (g->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (dup3(fd, g->fd, O_CLOEXEC) < 0) {
		err = errno;
		close(fd);
		return err;
	}
	close(fd);
	if (!g->writable)
		return 0;
	/* The references the child inherited are its own too: their locks, on its description. */
	if ((err = refs_after_fork(g)) != 0)
		return err;
	return claim_proc(g); /* the parent's slot stays the parent's */
}

/* ---- Locks ------------------------------------------------------------------ */

static int ofd_lock(int fd, int byte, short type)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

	return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

static _Atomic uint32_t *incarnation(const struct pmi_seg *g, uint64_t k)
{
	return (_Atomic uint32_t *)(g->map + g->procs_off) + k;
}

/*
 * The insert lock is a word in the file that names its holder, taken and
 * let go with one compare-and-swap each (a byte-range lock would cost two
 * system calls an insert).  The name is a process slot and the slot's
 * incarnation: a process that opens the segment for writing takes a free
 * slot by its byte-range lock, which it holds until its descriptor goes,
 * and counts the slot's incarnation up.  A waiter finding the word held
 * asks whether its holder lives: the slot's lock still held by someone,
 * with the same incarnation.  If not, the holder died (or the word is
 * nonsense), and the waiter takes the lock over; an insert it cut short
 * left `seq` odd, and is rebuilt.  Nothing in the word is a pointer: a
 * process that writes nonsense there delays inserts until the wait's
 * deadline, or lets two run at once (the index can then be spoilt, which
 * readers check), never more.
 */
static int claim_proc(struct pmi_seg *g)
{
	uint64_t start = (uint64_t)getpid() % SEG_PROCS;

	for (uint64_t i = 0; i < SEG_PROCS; i++) {
		uint64_t k = (start + i) % SEG_PROCS;
		uint32_t inc;

		if (ofd_lock(g->fd, PROC_LOCK_BASE + (int)k, F_WRLCK) != 0)
			continue;
		inc = atomic_fetch_add_explicit(incarnation(g, k), 1, memory_order_relaxed) + 1;
		g->token = (k + 1) << 32 | inc;
		return 0;
	}
	return EUSERS; /* SEG_PROCS processes have it open for writing */
}

/* Whether the insert lock's holder `owner` lives (a process slot still held, same incarnation). */
static bool holder_alive(const struct pmi_seg *g, uint64_t owner)
{
	uint64_t k = (owner >> 32) - 1;
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = 1};

	if (k >= SEG_PROCS)
		return false; /* no slot at all: nonsense */
	if (atomic_load_explicit(incarnation(g, k), memory_order_relaxed) != (uint32_t)owner)
		return false; /* the slot has had another process since */
	fl.l_start = PROC_LOCK_BASE + (off_t)k;
	if (fcntl(g->fd, F_OFD_GETLK, &fl) != 0)
		return true; /* cannot tell: wait (until the deadline) */
	return fl.l_type != F_UNLCK;
}

static int insert_lock(struct pmi_seg *g, const struct pmi_deadline *d)
{
	_Atomic uint64_t *owner = &hdr(g)->insert_owner;
	int err = pmi_mutex_lock_by(&g->thread_lock[SEG_REGISTRY_LOCK], d);

	for (unsigned round = 0; err == 0; round++) {
		uint64_t held = 0;

		/* Acquire pairs with the release in insert_unlock(): the last insert's writes. */
		if (atomic_compare_exchange_strong_explicit(owner, &held, g->token, memory_order_acquire,
							    memory_order_relaxed))
			return 0;
		/* Ours (this process's threads are excluded above: stale), or a dead holder's. */
		if ((held == g->token || !holder_alive(g, held)) &&
		    atomic_compare_exchange_strong_explicit(owner, &held, g->token,
							    memory_order_acquire, memory_order_relaxed))
			return 0;
		if (pmi_deadline_passed(d))
			err = ETIMEDOUT; /* another process holds it (or is stopped holding it) */
		else
			pmi_backoff(d, round);
	}
	pthread_mutex_unlock(&g->thread_lock[SEG_REGISTRY_LOCK]);
	return err;
}

static void insert_unlock(struct pmi_seg *g)
{
	uint64_t mine = g->token;

	/* Release pairs with the acquire in insert_lock(): the next holder sees this insert. */
	atomic_compare_exchange_strong_explicit(&hdr(g)->insert_owner, &mine, 0,
						memory_order_release, memory_order_relaxed);
	pthread_mutex_unlock(&g->thread_lock[SEG_REGISTRY_LOCK]);
}

int pmi_seg_lock(struct pmi_seg *g, enum pmi_seg_lock which, const struct pmi_deadline *d)
{
	int err = pmi_mutex_lock_by(&g->thread_lock[which], d);

	for (unsigned round = 0; err == 0; round++) {
		err = ofd_lock(g->fd, which, F_WRLCK);
		if (err == 0)
			return 0;
		if (err != EAGAIN && err != EACCES && err != EINTR)
			break;
		if (pmi_deadline_passed(d)) {
			err = ETIMEDOUT; /* another process holds it (or is stopped holding it) */
			break;
		}
		pmi_backoff(d, round);
		err = 0;
	}
	pthread_mutex_unlock(&g->thread_lock[which]);
	return err;
}

void pmi_seg_unlock(struct pmi_seg *g, enum pmi_seg_lock which)
{
	ofd_lock(g->fd, which, F_UNLCK);
	pthread_mutex_unlock(&g->thread_lock[which]);
}

/* ---- Sorting slots by id ------------------------------------------------------ */

/*
 * What a sort compares: the ids of slots, their lengths read once -- in the
 * slots at `base` (the mapping), or in private copies (`copy`, `ids`).
 */
struct by_id {
	const char *base;
	uint64_t slot_size;
	const uint32_t *len; /* by slot number */
	const struct pmi_slot_copy *copy;
	const char *ids;
};

static const char *id_of(const struct by_id *c, uint32_t slot)
{
	if (c->copy)
		return c->ids + c->copy[slot].id_at;
	return ((const struct device *)(c->base + slot * c->slot_size))->id;
}

static int slot_cmp(const struct by_id *c, uint32_t a, uint32_t b)
{
	return pmi_id_cmp(id_of(c, a), c->len[a], id_of(c, b), c->len[b]);
}

/*
 * Sort `n` slot numbers by id: a heapsort, whose every access stays within
 * `v` whatever the comparisons answer (a process scribbling on the ids while
 * this runs can spoil the order -- found by the check after -- never send it
 * elsewhere).
 */
static void sort_by_id(uint32_t *v, size_t n, const struct by_id *c)
{
	for (size_t end = n, start = n / 2; end > 1;) {
		size_t root, child;
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
			if (child + 1 < end && slot_cmp(c, v[child], v[child + 1]) < 0)
				child++;
			if (slot_cmp(c, v[root], v[child]) >= 0)
				break;
			t = v[root];
			v[root] = v[child];
			v[child] = t;
		}
	}
}

/*
 * The state words and id lengths of slots [0, n) at `base`, each read once,
 * into `state` and `len` (0 where the slot holds no device): EBADMSG if a
 * slot below `high` is unpublished, or a device's id impossible.  Each id is
 * checked against the rules when it is copied (snapshot.c), and by a rebuild.
 */
static int read_slots(const char *base, uint64_t slot_size, size_t n, uint32_t *state,
		      uint32_t *len)
{
	for (size_t i = 0; i < n; i++) {
		const struct device *d = (const void *)(base + i * slot_size);

		/* Acquire pairs with the release store of `published` in seg_insert(). */
		if (!atomic_load_explicit(&d->published, memory_order_acquire))
			return EBADMSG;
		/* Acquire pairs with the release stores of `state`: a device's id and counters. */
		state[i] = atomic_load_explicit(&d->state, memory_order_acquire);
		len[i] = is_device(state[i]) ? (uint32_t)slot_id_len(d) : 0;
		if (is_device(state[i]) && len[i] == 0)
			return EBADMSG;
	}
	return 0;
}

/* ---- Inserting -------------------------------------------------------------- */

/*
 * Rebuild the index from the slots (the caller holds the insert lock):
 * after an insert or a drain died half-way, or when `used` is impossible.
 * The slots below `high` that hold devices are listed; one that is not
 * what this library writes (unpublished, an impossible id: another
 * process's doing) is left out, and its counts with it.  0, EBADMSG for an
 * impossible `high`, ENOMEM.
 */
static int seg_rebuild(struct pmi_seg *g, uint64_t seq, uint64_t *used)
{
	struct segment *h = hdr(g);
	_Atomic uint32_t *index = seg_index(g);
	struct by_id c = {.base = g->map + g->slots_off, .slot_size = g->slot_size};
	uint64_t high = atomic_load_explicit(&h->high, memory_order_acquire);
	uint32_t *v, *len;
	size_t n = 0;
	int err = 0;

	if (high > g->capacity)
		return EBADMSG;
	v = pmi_malloc(2 * g->capacity * sizeof(*v));
	if (!v)
		return ENOMEM;
	len = v + g->capacity;
	c.len = len;
	atomic_store_explicit(&h->seq, seq | 1, memory_order_relaxed);
	for (size_t s = 0; s < high; s++) {
		struct device *d = seg_slot(g, s);
		uint32_t word;

		if (!atomic_load_explicit(&d->published, memory_order_acquire))
			continue;
		word = atomic_load_explicit(&d->state, memory_order_acquire);
		len[s] = (uint32_t)slot_id_len(d);
		if (!is_device(word) || len[s] == 0 ||
		    pmem_metrics_id_check(d->id, len[s]) != PMEM_METRICS_ID_OK)
			continue;
		v[n++] = (uint32_t)s;
	}
	if (err == 0)
		sort_by_id(v, n, &c); /* an id in two slots stays in both (snapshot.c reports them as one) */
	if (err == 0) {
		for (size_t i = 0; i < n; i++)
			atomic_store_explicit(&index[i], v[i], memory_order_relaxed);
		/* Release pairs with the acquire loads of `used` by readers: they see the index. */
		atomic_store_explicit(&h->used, n, memory_order_release);
		*used = n; /* not read back: another process may write anything there */
		atomic_store_explicit(&h->seq, (seq | 1) + 1, memory_order_release);
	}
	free(v);
	return err;
}

/*
 * Where `id` is among the first `used` index entries, or would go (*at;
 * SIZE_MAX if an entry is not a device): the device, or NULL.  Without the
 * insert lock an insert or a drain may be moving the entries: the search
 * can then miss (the caller looks again, locked), never leave the index or
 * report a wrong device (it compares the id itself, and the slot's state).
 */
static struct device *seg_find(const struct pmi_seg *g, uint64_t used, uint64_t high,
			       const char *id, size_t len, size_t *at)
{
	_Atomic uint32_t *index = seg_index(g);
	size_t lo = 0, hi = used <= high ? used : high; /* the caller's `high` is bounded; so is this */

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uint32_t slot = atomic_load_explicit(&index[mid], memory_order_relaxed), state;
		struct device *d;
		size_t d_len;
		int cmp;

		if (slot >= high) {
			*at = SIZE_MAX; /* not a device: corrupt, or being moved */
			return NULL;
		}
		d = seg_slot(g, slot);
		state = pmi_dev_state(atomic_load_explicit(&d->state, memory_order_acquire));
		if (state == DEV_FREE) {
			*at = SIZE_MAX; /* given to a new device right now, or corrupt */
			return NULL;
		}
		/* A drained device's id still orders its entry until the entry is taken out. */
		d_len = slot_id_len(d);
		cmp = pmi_id_cmp(id, len, d->id, d_len);
		if (cmp == 0 && state == DEV_DRAINED) {
			*at = SIZE_MAX; /* this id, drained: its entry goes before another is made */
			return NULL;
		}
		if (cmp == 0)
			return d;
		if (cmp < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	*at = lo;
	return NULL;
}

/*
 * Look for `id` in the first `high` slots themselves, in slot order: for
 * when the index cannot be rebuilt (a slot that is no device), so that an
 * id allocated before is still found.  The device, or NULL.
 */
static struct device *seg_scan(const struct pmi_seg *g, uint64_t high, const char *id, size_t len)
{
	for (uint64_t i = 0; i < high && i < g->capacity; i++) {
		struct device *d = seg_slot(g, i);

		if (!atomic_load_explicit(&d->published, memory_order_acquire))
			break;
		if (is_device(atomic_load_explicit(&d->state, memory_order_acquire)) &&
		    slot_id_len(d) == len && memcmp(d->id, id, len) == 0)
			return d;
	}
	return NULL;
}

/* ---- References: which slots a process may still write to -------------------- */

static uint64_t slot_of(const struct pmi_seg *g, const void *d)
{
	return (uint64_t)((const char *)d - (g->map + g->slots_off)) / g->slot_size;
}

static int ref_lock(int fd, uint64_t slot, short type)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_len = 1};

	fl.l_start = REF_LOCK_BASE + (off_t)slot;
	return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

/* One more reference of this process to slot `s`: its byte-range lock taken with the first. */
static int ref_get(struct pmi_seg *g, uint64_t s)
{
	int err = 0;

	pthread_mutex_lock(&g->ref_lock);
	if (g->refs[s] == UINT32_MAX)
		err = EOVERFLOW;
	else if (g->refs[s] == 0)
		err = ref_lock(g->fd, s, F_RDLCK);
	if (err == 0)
		g->refs[s]++;
	pthread_mutex_unlock(&g->ref_lock);
	return err;
}

/* One reference less to slot `s`: its lock let go with the last. */
static void ref_put(struct pmi_seg *g, uint64_t s)
{
	pthread_mutex_lock(&g->ref_lock);
	if (g->refs[s] > 0 && --g->refs[s] == 0)
		ref_lock(g->fd, s, F_UNLCK);
	pthread_mutex_unlock(&g->ref_lock);
}

/*
 * Take a reference to `d` if it is still the device of `id` (revive: a
 * retired one is made live again): 0, EAGAIN if it is not (drained, or its
 * slot given to another id since it was found: look again), or the lock's
 * error.  Checked after the reference's lock is held, and a slot is reused
 * only while no other process holds that lock, so a device that passes
 * here stays this id's for as long as the reference is held.
 */
static int seg_take(struct pmi_seg *g, struct device *d, const char *id, size_t len, bool revive)
{
	uint64_t s = slot_of(g, d);
	uint32_t word;
	int err = ref_get(g, s);

	if (err)
		return err;
	/* Acquire pairs with the release stores of `state`: the id and counters set before. */
	word = atomic_load_explicit(&d->state, memory_order_acquire);
	for (;;) {
		if (!is_device(word) || slot_id_len(d) != len || memcmp(d->id, id, len) != 0) {
			ref_put(g, s);
			return EAGAIN;
		}
		if (!revive || pmi_dev_state(word) == DEV_LIVE)
			return 0;
		/* Retired, not drained yet: brought back (the drain's compare-and-swap then fails). */
		if (atomic_compare_exchange_weak_explicit(&d->state, &word, pmi_dev_word(word, DEV_LIVE),
							  memory_order_acq_rel, memory_order_acquire))
			return 0;
	}
}

bool pmi_seg_holds(const struct pmi_seg *g, const struct pmem_metrics *m)
{
	const char *p = (const char *)m, *slots = g->map + g->slots_off;

	return g->map && p >= slots && p < slots + g->capacity * g->slot_size;
}

void pmi_seg_release(struct pmi_seg *g, const struct pmem_metrics *m)
{
	ref_put(g, slot_of(g, m));
}

/* After fork(): the child's own locks for the references it inherited (fork.c). */
static int refs_after_fork(struct pmi_seg *g)
{
	g->ref_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	for (uint64_t s = 0; g->refs && s < g->capacity; s++) {
		int err = g->refs[s] ? ref_lock(g->fd, s, F_RDLCK) : 0;

		if (err)
			return err;
	}
	return 0;
}

/* ---- Inserting, and taking drained devices out ------------------------------------ */

/* Whether an active claim (a flush on its way, or a dead flusher's) names slot `s`. */
static bool slot_claimed(const struct pmi_seg *g, uint64_t s)
{
	for (int k = 0; k < SEG_CLAIMS; k++) {
		const struct claim *c =
			(const struct claim *)(g->map + g->claims_off + (uint64_t)k * g->claim_size);
		uint64_t n = *(const volatile uint64_t *)&c->n;

		if (atomic_load_explicit(&c->state, memory_order_acquire) != CLAIM_ACTIVE)
			continue;
		for (uint64_t i = 0; i < n && i < g->capacity; i++)
			if (*(const volatile uint32_t *)&c->e[i].slot == s)
				return true;
	}
	return false;
}

/* Whether another process holds a reference to slot `s` (its lock: the kernel knows). */
static bool slot_referenced(const struct pmi_seg *g, uint64_t s)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = 1};

	fl.l_start = REF_LOCK_BASE + (off_t)s;
	if (fcntl(g->fd, F_OFD_GETLK, &fl) != 0)
		return true; /* cannot tell: leave it */
	return fl.l_type != F_UNLCK;
}

/*
 * A slot a drained device left that nobody can write to any more (insert
 * lock held): no reference to it in any process, no active claim naming it
 * (a dead flusher's claim is undone by moving baselines there), and no
 * flush copying or moving meanwhile (the flush lock, taken here by `dl`).
 * Taken (state DEV_FREE) and returned; SIZE_MAX if there is none, with
 * *err 0 or the flush lock's error.
 */
static uint64_t seg_reusable(struct pmi_seg *g, uint64_t high, const struct pmi_deadline *dl,
			     int *err)
{
	uint64_t found = SIZE_MAX;

	if ((*err = pmi_seg_lock(g, SEG_FLUSH_LOCK, dl)) != 0)
		return SIZE_MAX;
	for (uint64_t s = 0; s < high && found == SIZE_MAX; s++) {
		struct device *d = seg_slot(g, s);
		uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

		/*
		 * Drained; or left free below `high` by an insert that died after
		 * taking it (only the insert lock's holder takes one, and we hold it).
		 */
		if ((pmi_dev_state(word) != DEV_DRAINED && pmi_dev_state(word) != DEV_FREE) ||
		    g->refs[s] != 0 || slot_claimed(g, s) || slot_referenced(g, s))
			continue;
		/* A reference taken since the look at its lock checks the state after: it lets go. */
		if (atomic_compare_exchange_strong_explicit(&d->state, &word,
							    pmi_dev_word(word, DEV_FREE),
							    memory_order_acq_rel, memory_order_relaxed))
			found = s;
	}
	pmi_seg_unlock(g, SEG_FLUSH_LOCK);
	return found;
}

/*
 * Take the index entries of slots that hold no device out of it (insert
 * lock held): drained devices, and whatever else is not a device.
 */
static void seg_compact(struct pmi_seg *g, uint64_t seq, uint64_t *used)
{
	struct segment *h = hdr(g);
	_Atomic uint32_t *index = seg_index(g);
	uint64_t high = atomic_load_explicit(&h->high, memory_order_acquire), n = 0;

	if (high > g->capacity)
		high = g->capacity; /* read from the file: bounded before use */
	atomic_store_explicit(&h->seq, seq | 1, memory_order_relaxed);
	for (uint64_t i = 0; i < *used; i++) {
		uint32_t slot = atomic_load_explicit(&index[i], memory_order_relaxed);

		if (slot >= high || !is_device(atomic_load_explicit(&seg_slot(g, slot)->state,
								     memory_order_acquire)))
			continue;
		atomic_store_explicit(&index[n++], slot, memory_order_relaxed);
	}
	/* Release pairs with the acquire loads of `used` by readers. */
	atomic_store_explicit(&h->used, n, memory_order_release);
	*used = n;
	atomic_store_explicit(&h->seq, (seq | 1) + 1, memory_order_release);
}

/*
 * In a segment nobody flushes (scraped only), retired devices past their
 * grace period are drained by whoever needs their room.  Whether any was.
 */
static bool seg_expire(struct pmi_seg *g, uint64_t high)
{
	uint64_t now = pmi_now_ms(), grace = pmi_retire_grace_ms();
	bool any = false;

	if (atomic_load_explicit(&hdr(g)->flushes, memory_order_relaxed) != 0)
		return false; /* lines are written: each retired device waits for its final one */
	for (uint64_t s = 0; s < high; s++) {
		struct device *d = seg_slot(g, s);
		uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

		if (pmi_dev_state(word) == DEV_RETIRED &&
		    now - atomic_load_explicit(&d->retired_ms, memory_order_relaxed) >= grace)
			any |= atomic_compare_exchange_strong_explicit(
				&d->state, &word, pmi_dev_word(word, DEV_DRAINED), memory_order_acq_rel,
				memory_order_relaxed);
	}
	return any;
}

/*
 * Whether devices are on their way out of a full segment: retired ones
 * waiting for their final flush, or drained ones whose last references are
 * still held.  An allocation waits for their room (within its deadline).
 */
static bool seg_leaving(const struct pmi_seg *g)
{
	uint64_t high = atomic_load_explicit(&hdr(g)->high, memory_order_acquire);

	for (uint64_t s = 0; s < high && s < g->capacity; s++) {
		uint32_t state = pmi_dev_state(
			atomic_load_explicit(&seg_slot(g, s)->state, memory_order_relaxed));

		if (state == DEV_DRAINED || state == DEV_RETIRED)
			return true;
	}
	return false;
}

/*
 * Insert `id` at index position `at` (the caller holds the insert lock), in
 * a slot never used, or else one a drained device left: the device, or NULL
 * + *err (ENOSPC: no room).
 */
static struct device *seg_insert(struct pmi_seg *g, uint64_t *seq, uint64_t *used,
				 const char *id, size_t len, size_t at,
				 const struct pmi_deadline *dl, int *err)
{
	struct segment *h = hdr(g);
	_Atomic uint32_t *index = seg_index(g);
	uint64_t high = atomic_load_explicit(&h->high, memory_order_acquire), slot = high;
	struct device *d;
	uint32_t word;

	if (high > g->capacity || *used > high) {
		*err = EBADMSG;
		return NULL;
	}
	if (high == g->capacity) {
		slot = seg_reusable(g, high, dl, err);
		if (slot == SIZE_MAX && *err == 0 && seg_expire(g, high)) {
			seg_compact(g, *seq, used);
			*seq = (*seq | 1) + 1;
			at = SIZE_MAX; /* the index moved: find the place again below */
			slot = seg_reusable(g, high, dl, err);
		}
		if (slot == SIZE_MAX) {
			*err = *err ? *err : ENOSPC;
			return NULL;
		}
		/* Its old entry, and any other drained device's, out of the index first. */
		seg_compact(g, *seq, used);
		*seq = (*seq | 1) + 1;
		at = SIZE_MAX;
	}
	if (at == SIZE_MAX && seg_find(g, *used, high, id, len, &at) == NULL && at == SIZE_MAX) {
		*err = EBADMSG;
		return NULL;
	}
	d = seg_slot(g, slot);
	/* A slot given to a new device: a flush that reported the old one leaves it alone. */
	atomic_fetch_add_explicit(&d->born, 1, memory_order_relaxed);
	for (size_t f = 0; f < NFIELDS; f++) {
		struct pmem_metrics_counter *c = pmi_counter(&d->m, f);

		atomic_store_explicit(&c->current, 0, memory_order_relaxed);
		atomic_store_explicit(&c->old, 0, memory_order_relaxed);
	}
	d->id_len = (uint32_t)len;
	memcpy(d->id, id, len);
	d->id[len] = '\0';
	atomic_store_explicit(&d->retired_ms, 0, memory_order_relaxed);
	/* Release pairs with the acquire loads in read_slots() and seg_rebuild(). */
	atomic_store_explicit(&d->published, 1, memory_order_release);
	word = atomic_load_explicit(&d->state, memory_order_relaxed);
	/* Release pairs with the acquire loads of `state`: whoever sees it live sees the rest. */
	atomic_store_explicit(&d->state, pmi_dev_word(word, DEV_LIVE), memory_order_release);
	if (slot == high)
		atomic_store_explicit(&h->high, high + 1, memory_order_release);
	/*
	 * The index changes now: a holder that dies from here on leaves `seq`
	 * odd.  Only the next holder of the insert lock reads `seq` (readers
	 * check the index itself), and the lock orders it after us: relaxed.
	 */
	atomic_store_explicit(&h->seq, *seq + 1, memory_order_relaxed);
	for (size_t k = *used; k > at; k--)
		atomic_store_explicit(&index[k],
				      atomic_load_explicit(&index[k - 1], memory_order_relaxed),
				      memory_order_relaxed);
	pmi_pause_point("insert"); /* the index names one slot twice right here */
	atomic_store_explicit(&index[at], (uint32_t)slot, memory_order_relaxed);
	/* Release pairs with the acquire loads of `used`: whoever sees it sees the slot and index. */
	atomic_store_explicit(&h->used, *used + 1, memory_order_release);
	atomic_store_explicit(&h->seq, *seq + 2, memory_order_release);
	return d;
}

/* Find or insert `id` (the insert lock held, `seen_*` what the search without it saw). */
static struct device *seg_alloc_locked(struct pmi_seg *g, const char *id, size_t len,
				       uint64_t seen_seq, uint64_t seen_used, size_t at,
				       const struct pmi_deadline *dl, int *err)
{
	struct segment *h = hdr(g);
	uint64_t seq = atomic_load_explicit(&h->seq, memory_order_relaxed);
	uint64_t used = atomic_load_explicit(&h->used, memory_order_relaxed);
	uint64_t high = atomic_load_explicit(&h->high, memory_order_acquire);
	struct device *d = NULL;
	/*
	 * Unless an insert began since `seen_seq` was even (each leaves it 2
	 * higher, and only ever under this lock), the index the search above
	 * missed in is the index now, and its `at` stands: no second search.
	 */
	bool search = seq != seen_seq || (seq & 1) || used != seen_used || at == SIZE_MAX;

	if (high > g->capacity)
		high = g->capacity; /* nonsense: what the slots say is checked by the rebuild */
	if ((seq & 1) || used > high) {
		/* An insert died half-way, or someone wrote nonsense: start again from the slots. */
		*err = seg_rebuild(g, seq, &used);
		seq = (seq | 1) + 1;
	}
	/*
	 * A miss is an absence if the index is in order.  One that another
	 * process scrambled (every entry in range) can hide an id that is
	 * there, which this then adds a second time: checking the whole index
	 * would make every insert O(devices), so instead a second slot of an
	 * id is reported with the first, as one device (snapshot.c).
	 */
	if (*err == 0 && search && !(d = seg_find(g, used, high, id, len, &at)) && at == SIZE_MAX) {
		/* The index names a slot that is no device (drained, or nonsense): rebuild it. */
		*err = seg_rebuild(g, seq, &used);
		seq += 2;
		if (*err == 0)
			d = seg_find(g, used, high, id, len, &at);
	}
	if (*err == EBADMSG && (d = seg_scan(g, high, id, len)) != NULL)
		*err = 0; /* no index to be had (a slot is not a device), but the id is there */
	else if (*err == 0 && !d)
		d = seg_insert(g, &seq, &used, id, len, at, dl, err);
	return d;
}

struct device *pmi_seg_alloc(struct pmi_seg *g, const char *id, size_t len,
			     const struct pmi_deadline *dl, int *err)
{
	struct segment *h;

	if (!g->writable) {
		*err = EROFS;
		return NULL;
	}
	h = hdr(g);
	/* A device found may be drained and its slot reused before its reference is held: again. */
	for (unsigned round = 0;; round++) {
		struct device *d;
		uint64_t seen_seq, seen_used, seen_high;
		size_t at = SIZE_MAX;

		/* Acquire pairs with the release stores of `seq`, `used`, `high`: slots and index. */
		seen_seq = atomic_load_explicit(&h->seq, memory_order_acquire);
		seen_used = atomic_load_explicit(&h->used, memory_order_acquire);
		seen_high = atomic_load_explicit(&h->high, memory_order_acquire);
		d = seen_high <= g->capacity ? seg_find(g, seen_used, seen_high, id, len, &at) : NULL;
		if (!d) {
			if ((*err = insert_lock(g, dl)) != 0)
				return NULL;
			d = seg_alloc_locked(g, id, len, seen_seq, seen_used, at, dl, err);
			insert_unlock(g);
			if (!d && *err == ENOSPC && seg_leaving(g)) {
				/* Full, but of devices on their way out: wait for their room. */
				*err = EAGAIN;
			} else if (!d) {
				if (*err == ENOSPC)
					atomic_fetch_add_explicit(&h->alloc_failures, 1,
								  memory_order_relaxed);
				return NULL;
			}
		}
		if (d)
			*err = seg_take(g, d, id, len, true);
		if (*err == 0)
			return d;
		if (*err != EAGAIN)
			return NULL;
		if (pmi_deadline_passed(dl)) {
			*err = ETIMEDOUT;
			return NULL;
		}
		pmi_backoff(dl, round);
	}
}

/*
 * Look `id` up, creating nothing, and take a reference to it: the device,
 * or NULL with *err ENOENT (not there) or EROFS (no mapping to point into).
 * A miss counts as an absence only if no insert ran across the search (the
 * sequence number even and unchanged, as a seqlock reader checks it);
 * after a few that did, or an index that is not in order, the slots
 * themselves are scanned, so an id that is there is found whatever another
 * process does to the index.
 */
struct device *pmi_seg_find(struct pmi_seg *g, const char *id, size_t len, int *err)
{
	const struct segment *h;

	if (!g->map) {
		*err = EROFS;
		return NULL;
	}
	h = hdr(g);
	for (int tries = 0; tries < 8; tries++) {
		/* Acquire pairs with the release stores of `seq`, `used` and `high`. */
		uint64_t seq = atomic_load_explicit(&h->seq, memory_order_acquire);
		uint64_t used = atomic_load_explicit(&h->used, memory_order_acquire);
		uint64_t high = atomic_load_explicit(&h->high, memory_order_acquire);
		struct device *d = NULL;
		size_t at = 0;

		if (used > high || high > g->capacity) {
			*err = EBADMSG;
			return NULL;
		}
		if (tries < 4) {
			d = seg_find(g, used, high, id, len, &at);
		} else {
			d = seg_scan(g, high, id, len);
			at = 0;
		}
		if (d) {
			*err = seg_take(g, d, id, len, false);
			if (*err == 0)
				return d;
			if (*err != EAGAIN)
				return NULL;
			continue; /* drained, or its slot reused, since: look again */
		}
		if (at == SIZE_MAX) {
			tries = tries < 4 ? 3 : tries; /* an entry that is no device: scan */
			continue;
		}
		/* The index loads above happen before the second load of `seq`. */
		atomic_thread_fence(memory_order_acquire);
		if (tries >= 4 ||
		    (!(seq & 1) && atomic_load_explicit(&h->seq, memory_order_relaxed) == seq)) {
			*err = ENOENT;
			return NULL;
		}
	}
	*err = ENOENT;
	return NULL;
}

/* ---- Reading without a lock ------------------------------------------------------ */

/*
 * `used` and `high`, each read once (from the mapping, or with pread when
 * there is none): 0, or EBADMSG.  `used` first: an insert raises `high`
 * before `used`, so this never sees more devices than slots.
 */
static int read_counts(const struct pmi_seg *g, uint64_t *used, uint64_t *high)
{
	if (g->map) {
		/* Acquire pairs with the release stores of `used` and `high` (inserts, rebuilds). */
		*used = atomic_load_explicit(&hdr(g)->used, memory_order_acquire);
		*high = atomic_load_explicit(&hdr(g)->high, memory_order_acquire);
	} else if (pread(g->fd, used, sizeof(*used), offsetof(struct segment, used)) !=
			   (ssize_t)sizeof(*used) ||
		   pread(g->fd, high, sizeof(*high), offsetof(struct segment, high)) !=
			   (ssize_t)sizeof(*high)) {
		return EBADMSG; /* truncated under us */
	}
	return *used <= *high && *high <= g->capacity ? 0 : EBADMSG;
}

int pmi_seg_device_count(const struct pmi_seg *g, size_t *n)
{
	uint64_t used, high;
	int err = read_counts(g, &used, &high);

	*n = err ? 0 : (size_t)used;
	return err;
}

/* pread() exactly `len` bytes at `off`: 0, or EBADMSG (the file is shorter now), or errno. */
static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	for (size_t got = 0; got < len;) {
		ssize_t r = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno;
		if (r == 0)
			return EBADMSG;
		got += (size_t)r;
	}
	return 0;
}

/* Slots read by one pread(): small enough to stay in cache, and to be reused without faults. */
enum { COPY_CHUNK = 64 };

/*
 * Copy the first `v->high` slots' states, ids and counters, and the first
 * `v->n` index entries, out of the file with pread() -- for a registry
 * with no mapping: a process that truncates the file makes this fail
 * (EBADMSG), where touching a mapping of the lost pages would be a SIGBUS.
 */
static int copy_slots(const struct pmi_seg *g, struct pmi_seg_view *v)
{
	size_t cap = v->high * 16 + 1, used = 0;
	char *chunk;
	int err;

	if ((err = pread_all(g->fd, v->slot, v->n * sizeof(uint32_t), g->index_off)) != 0)
		return err;
	v->copy = pmi_malloc(v->high * sizeof(*v->copy) + 1);
	v->ids = pmi_malloc(cap);
	chunk = pmi_malloc(COPY_CHUNK * g->slot_size);
	if (!v->copy || !v->ids || !chunk)
		err = ENOMEM;
	for (size_t s0 = 0; err == 0 && s0 < v->high; s0 += COPY_CHUNK) {
		size_t k = v->high - s0 < COPY_CHUNK ? v->high - s0 : COPY_CHUNK;

		err = pread_all(g->fd, chunk, k * g->slot_size, g->slots_off + s0 * g->slot_size);
		for (size_t j = 0; err == 0 && j < k; j++) {
			struct device *d = (struct device *)(chunk + j * g->slot_size);
			struct pmi_slot_copy *c = &v->copy[s0 + j];
			uint32_t word = atomic_load_explicit(&d->state, memory_order_relaxed);
			size_t len = is_device(word) ? slot_id_len(d) : 0;

			if (!atomic_load_explicit(&d->published, memory_order_relaxed) ||
			    (is_device(word) && len == 0)) {
				err = EBADMSG; /* below `high`, every slot is published */
				break;
			}
			if (used + len > cap) {
				char *more = pmi_realloc(v->ids, cap = 2 * cap + len);

				if (!more) {
					err = ENOMEM;
					break;
				}
				v->ids = more;
			}
			memcpy(v->ids + used, d->id, len);
			c->id_at = used;
			used += len;
			v->by_slot[s0 + j] = (uint32_t)len;
			v->state_by_slot[s0 + j] = word;
			c->retired_ms = atomic_load_explicit(&d->retired_ms, memory_order_relaxed);
			for (size_t f = 0; f < NFIELDS; f++) {
				struct pmem_metrics_counter *ctr = pmi_counter(&d->m, f);

				/* Private memory: the order of these loads no longer matters. */
				c->old[f] = atomic_load_explicit(&ctr->old, memory_order_relaxed);
				c->current[f] = atomic_load_explicit(&ctr->current, memory_order_relaxed);
			}
		}
	}
	free(chunk);
	return err;
}

int pmi_seg_view(const struct pmi_seg *g, struct pmi_seg_view *v)
{
	uint64_t used, high;
	unsigned char *seen;
	bool ok = true;
	int err;

	*v = (struct pmi_seg_view){.slot_size = g->slot_size};
	if ((err = read_counts(g, &used, &high)) != 0)
		return err;
	v->n = (size_t)used;
	v->high = (size_t)high;
	/*
	 * One block: slot[high], len[high], state[high] (by position: a sort
	 * may list up to `high`), the lengths and states by slot number[high],
	 * then a byte per slot.
	 */
	v->slot = pmi_malloc(v->high * (5 * sizeof(uint32_t) + 1) + 1);
	if (!v->slot)
		return ENOMEM;
	v->len = v->slot + v->high;
	v->state = v->len + v->high;
	v->by_slot = v->state + v->high;
	v->state_by_slot = v->by_slot + v->high;
	seen = (unsigned char *)(v->state_by_slot + v->high);
	if (g->map) {
		_Atomic uint32_t *index = seg_index(g);

		v->base = g->map + g->slots_off;
		for (size_t i = 0; i < v->n; i++)
			v->slot[i] = atomic_load_explicit(&index[i], memory_order_relaxed);
		err = read_slots(v->base, v->slot_size, v->high, v->state_by_slot, v->by_slot);
	} else {
		err = copy_slots(g, v);
	}
	if (err) {
		pmi_seg_view_free(v);
		return err;
	}
	/*
	 * The index as read: every entry a device, each once?  Whether the ids
	 * strictly increase along it is checked on the copies the caller makes
	 * (the walk it does anyway); if not, it calls pmi_seg_view_sort().
	 */
	memset(seen, 0, v->high);
	for (size_t i = 0; ok && i < v->n; i++) {
		ok = v->slot[i] < v->high && !seen[v->slot[i]] && v->by_slot[v->slot[i]] != 0;
		if (ok)
			seen[v->slot[i]] = 1;
	}
	if (!ok)
		return pmi_seg_view_sort(v);
	for (size_t i = 0; i < v->n; i++) {
		v->len[i] = v->by_slot[v->slot[i]];
		v->state[i] = v->state_by_slot[v->slot[i]];
	}
	return 0;
}

int pmi_seg_view_sort(struct pmi_seg_view *v)
{
	struct by_id c = {.base = v->base, .slot_size = v->slot_size, .len = v->by_slot,
			  .copy = v->copy, .ids = v->ids};

	if (v->sorted) {
		pmi_seg_view_free(v);
		return EBADMSG; /* sorted already, and still not in order: the ids changed as we read */
	}
	v->sorted = true;
	v->n = 0;
	for (size_t s = 0; s < v->high; s++)
		if (v->by_slot[s] != 0) /* a device (its id has a length) */
			v->slot[v->n++] = (uint32_t)s;
	sort_by_id(v->slot, v->n, &c);
	for (size_t i = 0; i < v->n; i++) {
		v->len[i] = v->by_slot[v->slot[i]];
		v->state[i] = v->state_by_slot[v->slot[i]];
	}
	return 0;
}

const char *pmi_view_id(const struct pmi_seg_view *v, size_t i)
{
	struct by_id c = {.base = v->base, .slot_size = v->slot_size, .copy = v->copy, .ids = v->ids};

	return id_of(&c, v->slot[i]);
}

void pmi_seg_view_free(struct pmi_seg_view *v)
{
	if (!v->slot)
		return; /* freed already */
	free(v->slot);
	free(v->copy);
	free(v->ids);
	v->slot = NULL;
	v->copy = NULL;
	v->ids = NULL;
}

/* ---- Claims: flushes that hold no lock while their report is delivered ---------- */

/*
 * A flush takes the flush lock only to copy the counters and move their
 * baselines (`old`) up by what it took, and writes what it took -- its claim
 * -- into a record of the segment first, holding that record's byte-range
 * lock for as long as the report is on its way.  Other flushes go on
 * meanwhile: they report only what came after.  Delivered: the record is
 * let go.  Not delivered: the flush moves the baselines back down (relative
 * moves commute with the flushes in between) and lets it go.  Killed at any
 * step with the record active: the kernel drops its lock, and the next flush
 * finds it so and moves the baselines back for it -- so those counts are
 * reported again (at least once), never lost.  A kill half-way through
 * moving makes the next flush move back what had not moved yet as well:
 * reported twice, again never lost.
 */

static struct claim *claim_at(const struct pmi_seg *g, int k)
{
	return (struct claim *)(g->map + g->claims_off + (uint64_t)k * g->claim_size);
}

/*
 * Move the baselines of claim `c`'s entries up (back: down again) by their
 * diffs, marking how far it got; back, only what had moved (the mark may
 * say one entry more: it is moved back whole -- reported twice, never lost).
 */
static void claim_move(const struct pmi_seg *g, struct claim *c, bool back)
{
	uint64_t n = *(volatile uint64_t *)&c->n;

	if (n > g->capacity)
		n = g->capacity;
	if (back) {
		uint64_t moved = (atomic_load_explicit(&c->mark, memory_order_relaxed) + 1) / 2;

		n = moved < n ? moved : n;
	}
	for (uint64_t i = 0; i < n; i++) {
		uint32_t slot = *(volatile uint32_t *)&c->e[i].slot;
		struct device *d;

		if (slot >= g->capacity)
			continue; /* not a device: nothing of ours moved there */
		d = seg_slot(g, slot);
		if (!back)
			atomic_store_explicit(&c->mark, 2 * i + 1, memory_order_relaxed);
		for (size_t f = 0; f < NFIELDS; f++) {
			_Atomic uint64_t *old = &pmi_counter(&d->m, f)->old;
			uint64_t diff = *(volatile uint64_t *)&c->e[i].diff[f];

			/*
			 * Release pairs with the acquire loads of `old` by readers:
			 * whoever sees it moved sees the `current` it came from.
			 */
			if (diff && back)
				atomic_fetch_sub_explicit(old, diff, memory_order_release);
			else if (diff)
				atomic_fetch_add_explicit(old, diff, memory_order_release);
		}
		if (!back)
			atomic_store_explicit(&c->mark, 2 * (i + 1), memory_order_relaxed);
		if (i == 0)
			pmi_pause_point(back ? "withdraw" : "commit"); /* half moved right here */
	}
}

void pmi_seg_claim_apply(struct pmi_seg *g, int k, bool back)
{
	claim_move(g, claim_at(g, k), back);
}

int pmi_seg_claim_open(struct pmi_seg *g)
{
	uint32_t mine = atomic_load_explicit(&g->mine, memory_order_relaxed);
	int free_k = -1;

	/*
	 * Only an active record can be a dead flusher's, and only a lock
	 * tells: one try each (one system call; it fails while the owner
	 * lives).  Then the first record that is not active and whose lock is
	 * free is ours -- one more (an owner between taking its lock and
	 * marking the record active holds it: the next one is tried).
	 */
	for (int k = 0; k < SEG_CLAIMS; k++) {
		struct claim *c = claim_at(g, k);

		if ((mine & (1u << k)) ||
		    atomic_load_explicit(&c->state, memory_order_relaxed) != CLAIM_ACTIVE)
			continue;
		if (ofd_lock(g->fd, CLAIM_LOCK_BASE + k, F_WRLCK) != 0)
			continue; /* a flush of another process, its report on the way */
		/* Acquire pairs with the release store that made it active: its entries. */
		if (atomic_load_explicit(&c->state, memory_order_acquire) == CLAIM_ACTIVE) {
			/* Its owner died with its report on the way, or before: report it again. */
			claim_move(g, c, true);
			atomic_store_explicit(&c->state, 0, memory_order_release);
		}
		if (free_k < 0)
			free_k = k; /* keep its lock: ours now */
		else
			ofd_lock(g->fd, CLAIM_LOCK_BASE + k, F_UNLCK);
	}
	for (int k = 0; free_k < 0 && k < SEG_CLAIMS; k++) {
		if ((mine & (1u << k)) ||
		    atomic_load_explicit(&claim_at(g, k)->state, memory_order_relaxed) == CLAIM_ACTIVE)
			continue;
		if (ofd_lock(g->fd, CLAIM_LOCK_BASE + k, F_WRLCK) == 0)
			free_k = k;
	}
	if (free_k >= 0)
		atomic_fetch_or_explicit(&g->mine, 1u << free_k, memory_order_relaxed);
	return free_k;
}

int pmi_seg_claim_record(struct pmi_seg *g, int k, struct device *const *devs,
			 const uint64_t *moves, size_t m)
{
	struct claim *c = claim_at(g, k);
	uint64_t n = 0;
	const char *slots = g->map + g->slots_off;

	for (size_t i = 0; i < m; i++) {
		const uint64_t *diff = &moves[i * NFIELDS];
		bool any = false;

		for (size_t f = 0; f < NFIELDS; f++)
			any |= diff[f] != 0;
		if (!any)
			continue;
		if (n == g->capacity)
			return EBADMSG; /* more devices than slots: cannot be */
		c->e[n].slot = (uint32_t)(((const char *)devs[i] - slots) / g->slot_size);
		memcpy(c->e[n].diff, diff, sizeof(c->e[n].diff));
		n++;
	}
	c->n = n;
	atomic_store_explicit(&c->mark, 0, memory_order_relaxed);
	/* Release: whoever finds it active finds its entries (claim_move()). */
	atomic_store_explicit(&c->state, CLAIM_ACTIVE, memory_order_release);
	return 0;
}

void pmi_seg_claim_close(struct pmi_seg *g, int k)
{
	atomic_store_explicit(&claim_at(g, k)->state, 0, memory_order_release);
	atomic_fetch_and_explicit(&g->mine, ~(1u << k), memory_order_relaxed);
	ofd_lock(g->fd, CLAIM_LOCK_BASE + k, F_UNLCK);
}

/* ---- Devices that come and go -------------------------------------------------------- */

/*
 * Retire `id`: live -> retired, without the insert lock (one
 * compare-and-swap on its slot).  ENOENT unless it is live.
 */
int pmi_seg_retire(struct pmi_seg *g, const char *id, size_t len)
{
	struct device *d;
	int err = 0;

	if (!g->writable)
		return EROFS;
	d = pmi_seg_find(g, id, len, &err);
	if (!d)
		return err;
	err = pmi_device_retire(d);
	pmi_seg_release(g, &d->m);
	return err;
}

/*
 * After a published flush: drain the retired devices it reported that
 * nothing was added to since (still retired as it saw them, their slots
 * not reborn), and take them out of the index.  The slot stays the drained
 * device's until no process holds a reference to it (seg_reusable()).
 */
void pmi_seg_drain(struct pmi_seg *g, const struct pmi_reported *rep)
{
	struct pmi_deadline dl = pmi_seg_deadline(-1);
	bool any = false;

	atomic_fetch_add_explicit(&hdr(g)->flushes, 1, memory_order_relaxed);
	for (size_t i = 0; i < rep->m; i++) {
		struct device *d = rep->devs[i];
		uint32_t word = rep->states[i];

		if (!d || pmi_dev_state(word) != DEV_RETIRED ||
		    atomic_load_explicit(&d->born, memory_order_acquire) != rep->borns[i] ||
		    !pmi_device_settled(d))
			continue;
		any |= atomic_compare_exchange_strong_explicit(&d->state, &word,
							       pmi_dev_word(word, DEV_DRAINED),
							       memory_order_acq_rel, memory_order_relaxed);
	}
	/* Out of the index: else the next insert does it (it finds entries that are no device). */
	if (any && insert_lock(g, &dl) == 0) {
		uint64_t seq = atomic_load_explicit(&hdr(g)->seq, memory_order_relaxed);
		uint64_t used = atomic_load_explicit(&hdr(g)->used, memory_order_relaxed);

		if (!(seq & 1) && used <= g->capacity)
			seg_compact(g, seq, &used);
		insert_unlock(g);
	}
}

int pmi_seg_stats(const struct pmi_seg *g, struct pmem_metrics_registry_stats *out)
{
	struct pmi_seg_view v;
	uint64_t failures;
	int err = pmi_seg_view(g, &v);

	if (err)
		return err;
	out->capacity = g->capacity;
	out->devices = 0;
	out->retired = 0;
	for (size_t s = 0; s < v.high; s++) {
		uint32_t state = pmi_dev_state(v.state_by_slot[s]);

		out->devices += state == DEV_LIVE;
		/* A drained device whose references are all given back is room, not a device. */
		out->retired += state == DEV_RETIRED ||
				(state == DEV_DRAINED &&
				 ((g->refs && g->refs[s] != 0) || slot_referenced(g, s)));
	}
	pmi_seg_view_free(&v);
	if (g->map)
		failures = atomic_load_explicit(&hdr(g)->alloc_failures, memory_order_relaxed);
	else if (pread(g->fd, &failures, sizeof(failures),
		       offsetof(struct segment, alloc_failures)) != (ssize_t)sizeof(failures))
		return EBADMSG;
	out->alloc_failures = failures;
	return 0;
}
