/*
 * segment_file.c - a segment's two files: create, check, open, close, fork.
 *
 * The data file (the path a caller names) holds the counters and is what
 * readers open; the lock file beside it (the same name + ".lock") holds
 * the writers' locks (segment_lock.c) and nothing else.  A segment is
 * created whole under a temporary name and then linked in, its lock file
 * first, so the path is a complete segment or absent, and a writer that
 * finds the data file finds its lock file.
 *
 * The data file is sparse: at creation only the header and the field list
 * have storage; each chunk of SEG_SLOT_CHUNK slots gets its own (with its
 * index and claim entries) when an insert first reaches it
 * (pmi_seg_reserve()), so a segment costs what its devices use, and a full
 * file system is an insert's ENOSPC, never a SIGBUS on a page fault.  Each
 * writer touches through its mapping only slots it has made sure have
 * storage (pmi_seg_high()): reserving again what another process reserved
 * costs a system call and no space, and a `high` a scribbler raised gets
 * storage or is not followed.
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

static const char LOCK_SUFFIX[] = ".lock";

static uint64_t round64(uint64_t x)
{
	return (x + 63) / 64 * 64;
}

/* Bytes of one claim entry: the slot, then a diff per field. */
static uint64_t entry_size(uint64_t nfields)
{
	return 8 + 8 * nfields;
}

uint64_t pmi_seg_slot_size(uint64_t nfields)
{
	return round64(SEG_COUNTER_SIZE * nfields + sizeof(struct pmi_slot_tail) + ID_MAX_BYTES + 1);
}

/* The layout of a segment of `capacity` slots of `nfields` counters (every offset and size). */
static void seg_layout(uint64_t capacity, uint64_t nfields, uint64_t fields_size,
		       struct pmi_seg_header *h)
{
	h->nfields = (uint32_t)nfields;
	h->id_max_bytes = ID_MAX_BYTES;
	h->capacity = capacity;
	h->slot_size = pmi_seg_slot_size(nfields);
	h->fields_off = round64(sizeof(struct pmi_seg_header));
	h->fields_size = fields_size;
	h->index_off = round64(h->fields_off + fields_size);
	h->slots_off = round64(h->index_off + capacity * sizeof(uint32_t));
	h->claims_off = h->slots_off + capacity * h->slot_size;
	h->claim_size = round64(sizeof(struct pmi_claim) + capacity * entry_size(nfields));
	h->size = h->claims_off + SEG_CLAIMS * h->claim_size;
}

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

/* The lock file's mode for a data file of mode `mode`: read and write for whoever may write. */
static mode_t lock_mode(mode_t mode)
{
	mode_t w = mode & (S_IWUSR | S_IWGRP | S_IWOTH);

	return w | (mode_t)(w << 1);
}

/* The lock file's name for `name`, into `out` (NAME_MAX + 1 bytes): 0 or ENAMETOOLONG. */
static int lock_name(const char *name, char *out)
{
	return (size_t)snprintf(out, NAME_MAX + 1, "%s%s", name, LOCK_SUFFIX) > NAME_MAX
		       ? ENAMETOOLONG
		       : 0;
}

/* Create the lock file `lname` in `dirfd` with exactly `mode`: 0, EEXIST, or the error. */
static int lock_create(int dirfd, const char *lname, mode_t mode)
{
	int fd = openat(dirfd, lname, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	int err = 0;

	if (fd < 0)
		return errno;
	if (fchmod(fd, mode) != 0) /* the umask had its say at open */
		err = errno;
	close(fd);
	if (err)
		unlinkat(dirfd, lname, 0);
	return err;
}

static int reserve_chunk(struct pmi_seg *g, uint64_t first);

/*
 * Create the segment `name` in the directory `dirfd` whole, under a
 * temporary name, then link it in: the path is a complete segment or absent.
 */
static int seg_create(int dirfd, const char *name, uint64_t capacity, unsigned mode)
{
	static atomic_uint serial;
	char tmp[NAME_MAX + 1], lname[NAME_MAX + 1];
	struct pmi_seg_header layout = {0};
	char *fields = NULL;
	int fd, err;

	seg_layout(capacity, NFIELDS, pmi_fields_encode(NULL), &layout);
	if ((err = size_possible(layout.size)) != 0 || (err = lock_name(name, lname)) != 0)
		return err;
	if ((size_t)snprintf(tmp, sizeof(tmp), ".%s.%ld.%u.tmp", name, (long)getpid(),
			     atomic_fetch_add_explicit(&serial, 1, memory_order_relaxed)) >= sizeof(tmp))
		return ENAMETOOLONG;
	if ((err = lock_create(dirfd, lname, lock_mode((mode_t)mode))) != 0 && err != EEXIST)
		return err; /* an existing lock file is checked by whoever opens the segment */
	fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
	if (fd < 0)
		return errno;
	memcpy(layout.magic, SEG_MAGIC, sizeof(layout.magic));
	layout.version = SEG_VERSION;
	layout.byte_order = SEG_BYTE_ORDER;
	err = (fields = pmi_malloc(layout.fields_size + 1)) ? 0 : ENOMEM;
	if (err == 0 && (fchmod(fd, (mode_t)mode) != 0 || ftruncate(fd, (off_t)layout.size) != 0))
		err = errno;
	/*
	 * Storage for the header, the field list and the first chunk of slots
	 * (with the claim records' heads, which every flush reads) now; the
	 * other slots' as inserts reach them.
	 */
	if (err == 0)
		err = posix_fallocate(fd, 0, (off_t)layout.index_off);
	if (err == 0) {
		struct pmi_seg first = {.fd = fd, .capacity = layout.capacity,
					.slot_size = layout.slot_size, .index_off = layout.index_off,
					.slots_off = layout.slots_off, .claims_off = layout.claims_off,
					.claim_size = layout.claim_size};

		err = reserve_chunk(&first, 0);
	}
	if (err == 0 && pwrite(fd, &layout, sizeof(layout), 0) != (ssize_t)sizeof(layout))
		err = errno ? errno : EIO;
	if (err == 0) {
		pmi_fields_encode(fields);
		if (pwrite(fd, fields, layout.fields_size, (off_t)layout.fields_off) !=
		    (ssize_t)layout.fields_size)
			err = errno ? errno : EIO;
	}
	/* Atomic publication.  EEXIST: another process won; its segment is opened. */
	if (err == 0 && linkat(dirfd, tmp, dirfd, name, 0) != 0)
		err = errno;
	free(fields);
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
int pmi_seg_trusted(const struct stat *st, unsigned flags)
{
	if (flags & PMEM_METRICS_OPEN_TRUST)
		return 0;
	if (st->st_mode & S_IWOTH)
		return EPERM;
	if (!(flags & PMEM_METRICS_OPEN_READONLY) && st->st_uid != geteuid())
		return EPERM;
	return 0;
}

/*
 * A lock file fit for the data file `data`: a regular file of the same
 * owner (unless the caller trusts it), that no class of users may read unless it may write it (else a
 * reader could hold a writer's lock), and that only owner and group may
 * write unless the caller trusts it.
 */
static int lock_trusted(const struct stat *st, const struct stat *data, unsigned flags)
{
	mode_t m = st->st_mode;

	if (!S_ISREG(m))
		return EINVAL;
	if (st->st_uid != data->st_uid && !(flags & PMEM_METRICS_OPEN_TRUST))
		return EPERM;
	if (((m & S_IRGRP) && !(m & S_IWGRP)) || ((m & S_IROTH) && !(m & S_IWOTH)))
		return EPERM;
	if ((m & S_IWOTH) && !(flags & PMEM_METRICS_OPEN_TRUST))
		return EPERM;
	return 0;
}

/* Open the lock file of the data file `name` (stat `data`) in `dirfd`, creating it if absent. */
static int lock_open(struct pmi_seg *g, int dirfd, const char *name, const struct stat *data,
		     unsigned flags)
{
	char lname[NAME_MAX + 1];
	struct stat st;
	int err = lock_name(name, lname);

	for (int tries = 0; err == 0 && g->lock_fd < 0; tries++) {
		g->lock_fd = openat(dirfd, lname, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		if (g->lock_fd >= 0)
			break;
		err = errno == EMLINK ? ELOOP : errno;
		if (err != ENOENT || tries == 8)
			break;
		/* Removed: made again, with the mode the data file's writers need. */
		err = lock_create(dirfd, lname, lock_mode(data->st_mode & 0777));
		err = err == EEXIST ? 0 : err;
	}
	if (err == 0 && fstat(g->lock_fd, &st) != 0)
		err = errno;
	return err ? err : lock_trusted(&st, data, flags);
}

/* Whether `name` (`len` bytes) is a field name: a C identifier of at most 64 characters. */
static bool field_name_ok(const char *name, size_t len)
{
	if (len == 0 || len > 64 || (name[0] >= '0' && name[0] <= '9'))
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];

		if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
			return false;
	}
	return true;
}

/* Whether a field's doc is printable: no control character (its bytes are UTF-8 or not). */
static bool field_doc_ok(const char *doc, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)doc[i] < 0x20 || doc[i] == 0x7f)
			return false;
	return true;
}

/*
 * Read the field list of `h` into `g`: exactly `nfields` names and docs,
 * each NUL-terminated, filling the region.  0, EBADMSG, or ENOMEM.
 */
static int read_fields(struct pmi_seg *g, const struct pmi_seg_header *h)
{
	size_t at = 0, size = (size_t)h->fields_size;

	/* One block: a pointer to each name and doc, then the list itself. */
	g->field_part = pmi_malloc(2 * h->nfields * sizeof(*g->field_part) + size + 1);
	if (!g->field_part)
		return ENOMEM;
	g->fields = (char *)(g->field_part + 2 * h->nfields);
	if (pread(g->fd, g->fields, size, (off_t)h->fields_off) != (ssize_t)size)
		return EBADMSG;
	g->fields[size] = '\0';
	for (size_t f = 0; f < h->nfields; f++) {
		for (int k = 0; k < 2; k++) {
			const char *part = g->fields + at;
			size_t len = at < size ? strlen(part) : 0;

			if (at + len >= size || !(k ? field_doc_ok(part, len) : field_name_ok(part, len)))
				return EBADMSG;
			g->field_part[2 * f + (size_t)k] = part;
			at += len + 1;
		}
	}
	for (size_t f = 0; f < h->nfields; f++)
		for (size_t e = 0; e < f; e++)
			if (strcmp(g->field_part[2 * e], g->field_part[2 * f]) == 0)
				return EBADMSG; /* a name twice: which is which? */
	g->nfields = h->nfields;
	g->fields_len = size;
	{
		size_t own_len;
		const char *own = pmi_fields(&own_len);

		g->own_fields = own_len == size && memcmp(own, g->fields, size) == 0;
	}
	return at == size ? 0 : EBADMSG;
}

/*
 * Check the segment open at `g->fd` and copy out its layout; map it if
 * writable.  A writer takes only a segment of this library's field list;
 * a reader, any list the file states soundly.
 */
static int seg_check(struct pmi_seg *g, const struct stat *st, unsigned flags)
{
	struct pmi_seg_header h, want = {0};
	size_t mine = pmi_fields_encode(NULL);
	int err;

	if (!S_ISREG(st->st_mode))
		return EINVAL; /* not a regular file */
	if ((err = pmi_seg_trusted(st, flags)) != 0)
		return err;
	if ((uint64_t)st->st_size < sizeof(h) || pread(g->fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return EBADMSG; /* truncated */
	if (memcmp(h.magic, SEG_MAGIC, sizeof(h.magic)) != 0)
		return EINVAL; /* not a pmem_metrics segment */
	if (h.version != SEG_VERSION || h.byte_order != SEG_BYTE_ORDER || h.id_max_bytes != ID_MAX_BYTES)
		return EPROTO; /* another version or byte order */
	if (g->writable && (h.nfields != NFIELDS || h.fields_size != mine))
		return EPROTO; /* another field list: what would we count into? */
	if (h.nfields == 0 || h.nfields > SEG_MAX_FIELDS || h.fields_size > SEG_MAX_FIELDS_SIZE ||
	    h.capacity == 0 || h.capacity > SEG_MAX_CAPACITY)
		return EBADMSG;
	seg_layout(h.capacity, h.nfields, h.fields_size, &want);
	if (h.slot_size != want.slot_size || h.fields_off != want.fields_off ||
	    h.index_off != want.index_off || h.slots_off != want.slots_off ||
	    h.claims_off != want.claims_off || h.claim_size != want.claim_size ||
	    h.size != want.size || (uint64_t)st->st_size != h.size)
		return EBADMSG; /* corrupt, truncated or grown */
	if (want.size > SIZE_MAX)
		return EFBIG; /* more than this process can map (a 32-bit one) */
	if ((err = read_fields(g, &h)) != 0)
		return err;
	/* The fields by name and doc, byte for byte: a library with other fields refuses the file. */
	if (g->writable && !g->own_fields)
		return EPROTO;
	g->size = want.size;
	g->capacity = want.capacity;
	g->slot_size = want.slot_size;
	g->index_off = want.index_off;
	g->slots_off = want.slots_off;
	g->claims_off = want.claims_off;
	g->claim_size = want.claim_size;
	g->dev = st->st_dev;
	g->ino = st->st_ino;
	if (g->writable) {
		/* Not populated: pages of slots no insert reached yet have no storage. */
		void *p = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, g->fd, 0);

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

/* Open (creating if allowed) the data file `name` in `dirfd` into g->fd: 0 or the error. */
static int data_open(struct pmi_seg *g, int dirfd, const char *name, uint64_t capacity,
		     unsigned mode, unsigned flags)
{
	int err = 0;

	/* Never followed if a symbolic link, and only created (whole, then linked) if absent. */
	for (int tries = 0;; tries++) {
		g->fd = openat(dirfd, name, (g->writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC);
		if (g->fd >= 0 || errno != ENOENT ||
		    (flags & (PMEM_METRICS_OPEN_READONLY | PMEM_METRICS_OPEN_EXISTING)))
			break;
		if (tries == 8) {
			errno = EAGAIN; /* created and removed again, over and over */
			break;
		}
		err = seg_create(dirfd, name, capacity, mode);
		if (err != 0 && err != EEXIST)
			return err;
	}
	if (g->fd < 0)
		return errno == EMLINK ? ELOOP : errno; /* O_NOFOLLOW on a link: ELOOP (EMLINK on BSDs) */
	return 0;
}

int pmi_seg_open(struct pmi_seg *g, const char *path, uint64_t capacity, unsigned mode,
		 unsigned flags)
{
	const char *name;
	struct stat st;
	int dirfd, err;

	*g = (struct pmi_seg){.fd = -1, .lock_fd = -1,
			      .writable = !(flags & PMEM_METRICS_OPEN_READONLY)};
	if (!path || !*path || capacity == 0 || capacity > SEG_MAX_CAPACITY || (mode & ~0777u))
		return EINVAL;
	if (!(flags & (PMEM_METRICS_OPEN_READONLY | PMEM_METRICS_OPEN_EXISTING)) &&
	    ((mode & 0600) != 0600 || ((mode & S_IWOTH) && !(flags & PMEM_METRICS_OPEN_TRUST))))
		return EINVAL; /* a segment its creator could not open, or would refuse as untrusted */
	dirfd = open_dir(path, &name);
	if (dirfd < 0)
		return errno;
	err = *name ? data_open(g, dirfd, name, capacity, mode, flags) : EISDIR;
	if (err == 0 && fstat(g->fd, &st) != 0)
		err = errno;
	if (err == 0)
		err = seg_check(g, &st, flags);
	/* A reader never opens the lock file: nothing it does can touch a writer's lock. */
	if (err == 0 && g->writable)
		err = lock_open(g, dirfd, name, &st, flags);
	close(dirfd);
	if (err == 0 && !(g->path = strdup(path)))
		err = ENOMEM;
	for (int i = 0; err == 0 && i < 2; i++)
		err = pthread_mutex_init(&g->thread_lock[i], NULL);
	if (err == 0)
		err = pthread_mutex_init(&g->ref_lock, NULL);
	if (err == 0)
		err = pthread_mutex_init(&g->reserve_lock, NULL);
	if (err == 0 && g->writable && !(g->refs = calloc(g->capacity, sizeof(*g->refs))))
		err = ENOMEM;
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
	if (g->lock_fd >= 0)
		close(g->lock_fd);
	free(g->path);
	free(g->refs);
	free(g->field_part);
	g->field_part = NULL;
	g->fields = NULL;
	g->refs = NULL;
	g->map = NULL;
	g->fd = -1;
	g->lock_fd = -1;
	g->path = NULL;
}

/* 0 while `path` still names the file we opened; ESTALE once removed or replaced. */
int pmi_seg_check_identity(const struct pmi_seg *g)
{
	struct stat st;

	if (atomic_load_explicit(&((struct pmi_seg *)g)->path_forgotten, memory_order_relaxed))
		return 0; /* its final counts are read from the file it has open */
	if (lstat(g->path, &st) != 0)
		return errno == ENOENT ? ESTALE : errno;
	return st.st_dev == g->dev && st.st_ino == g->ino ? 0 : ESTALE;
}

/*
 * After fork(): the child shares the parent's open file descriptions, and
 * so would share its locks (an OFD lock is the description's, whoever uses
 * it).  Give the child a description of its own for the lock file, at the
 * same descriptor number, its own locks for the references it inherited,
 * and fresh thread locks (a parent's thread may have held them; it does not
 * exist here).  The data file holds no lock: its description is shared.
 */
int pmi_seg_after_fork(struct pmi_seg *g)
{
	char proc[64];
	int fd, err;

	for (int i = 0; i < 2; i++)
		g->thread_lock[i] = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	g->reserve_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	atomic_store_explicit(&g->mine, 0, memory_order_relaxed); /* the parent's claims stay its own */
	if (!g->writable)
		return 0;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", g->lock_fd);
	fd = open(proc, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (dup3(fd, g->lock_fd, O_CLOEXEC) < 0) {
		err = errno;
		close(fd);
		return err;
	}
	close(fd);
	return pmi_seg_refs_after_fork(g);
}

/* Storage for the chunk of slots from `first` (index entries, slots, claim entries). */
static int reserve_chunk(struct pmi_seg *g, uint64_t first)
{
	uint64_t n = first + SEG_SLOT_CHUNK > g->capacity ? g->capacity - first : SEG_SLOT_CHUNK;
	uint64_t esize = entry_size(NFIELDS);
	int err = posix_fallocate(g->fd, (off_t)(g->index_off + first * sizeof(uint32_t)),
				  (off_t)(n * sizeof(uint32_t)));

	if (err == 0)
		err = posix_fallocate(g->fd, (off_t)(g->slots_off + first * g->slot_size),
				      (off_t)(n * g->slot_size));
	for (int k = 0; err == 0 && k < SEG_CLAIMS; k++) {
		uint64_t claim = g->claims_off + (uint64_t)k * g->claim_size;
		uint64_t at = first ? claim + sizeof(struct pmi_claim) + first * esize : claim;

		err = posix_fallocate(g->fd, (off_t)at,
				      (off_t)(claim + sizeof(struct pmi_claim) + (first + n) * esize - at));
	}
	return err;
}

int pmi_seg_reserve(struct pmi_seg *g, uint64_t n)
{
	uint64_t have;
	int err = 0;

	if (n > g->capacity)
		return ENOSPC;
	/* Acquire pairs with the release store below: the storage another thread made. */
	if (n <= atomic_load_explicit(&g->reserved, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&g->reserve_lock);
	have = atomic_load_explicit(&g->reserved, memory_order_relaxed);
	/* Whole chunks, from the first this process has not made sure of. */
	for (uint64_t first = have; err == 0 && first < n; first += SEG_SLOT_CHUNK) {
		err = reserve_chunk(g, first);
		if (err == 0) {
			have = first + SEG_SLOT_CHUNK < g->capacity ? first + SEG_SLOT_CHUNK : g->capacity;
			atomic_store_explicit(&g->reserved, have, memory_order_release);
		}
	}
	pthread_mutex_unlock(&g->reserve_lock);
	return err == 0 ? 0 : err == EFBIG || err == ENOSPC ? ENOSPC : err;
}

uint64_t pmi_seg_high(struct pmi_seg *g)
{
	/* Acquire pairs with the inserts' release stores of `high`: the slots below it. */
	uint64_t high = atomic_load_explicit(&pmi_seg_hdr(g)->high, memory_order_acquire);

	if (high > g->capacity)
		high = g->capacity; /* nonsense: what the slots say is checked where they are read */
	if (pmi_seg_reserve(g, high) != 0)
		high = atomic_load_explicit(&g->reserved, memory_order_acquire); /* only a scribbler's */
	return high;
}
