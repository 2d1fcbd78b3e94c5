/*
 * fuzz_segment.c - libFuzzer target for the bytes of a shared segment.
 *
 * Another process can write anything into a segment; this target plays it.
 * An input is a list of patches to a good segment image (the library's own:
 * 8 slots, devices "c", "a", "b" inserted in that order, so the index is not
 * the identity), so the fuzzer works on `seq`, `used`, the index and the
 * slots, not on the magic:
 *
 *   byte 0          what to do: bit 0 truncates the read-only copy to the
 *                   length in bytes 1-2; bit 1 allocates "a" (an existing
 *                   id) as well as "d" (a new one); bit 2 takes a flush
 *   bytes 1-2       that length (little endian, modulo the image's size)
 *   then patches    offset (2 bytes, modulo the size), length (1 byte,
 *                   modulo 16, plus 1), that many bytes, to the end
 *
 * The patched image is written into two files: one open read-write (its
 * mapping is what allocations and flushes use) and one open read-only (read
 * with pread(), truncated at will).  Each file is opened again for every
 * input, so the checks of opening run on the bytes as patched.  Then peek,
 * take + commit, allocate and count, in both, and check what they claim:
 *
 *   - errors are the documented ones (EBADMSG, ENOSPC, ETIMEDOUT), nothing else;
 *   - a snapshot lists ids that pmem_metrics_id_check() accepts, strictly
 *     increasing, no more than the capacity, and its aggregate is the sum;
 *   - a flush committed and taken again reports zeros for every device the
 *     first reported (a device listed twice would have its baseline moved
 *     twice: a wrapped, huge diff);
 *   - where a peek went through before an allocation and the allocation
 *     went through, a peek after it goes through too and lists the id, and
 *     where a second allocation of the id returns the same pointer, an
 *     increment through it counts there (an allocation never makes a
 *     readable segment unreadable).
 *
 * Registries live as long as the process, one per file: so this target
 * opens its two once, at the first input, and rewrites the same two files
 * (the same inodes) for every input.  A re-open of a file this process has
 * open returns the registry it has (after checking the file all the same),
 * so the number of registries, descriptors and mappings stays two however
 * long the fuzzer runs.  The read-write file is never truncated (touching a
 * mapping past the end of its file is SIGBUS: the documented limit).
 *
 *   make -C csrc fuzz-segment FUZZ_SECONDS=20
 */
#define _GNU_SOURCE /* mkdtemp */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pmem_metrics.h"
#include "validate/check.h" /* check_aggregate_is_sum() */

#define NF PMEM_METRICS_NFIELDS
enum { CAPACITY = 8 };

static char dir[64], rw_path[96], ro_path[96];
static struct pmem_metrics_registry *rw, *ro;
static unsigned char *good, *image;
static size_t size;
static int rw_fd = -1, ro_fd = -1;

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_segment: %s (errno %d)\n", what, errno);
	abort();
}

static void cleanup(void)
{
	char lock[sizeof(rw_path) + 8];

	unlink(rw_path);
	unlink(ro_path);
	snprintf(lock, sizeof(lock), "%s.lock", rw_path); /* rw's lock file */
	unlink(lock);
	snprintf(lock, sizeof(lock), "%s.lock", ro_path);
	unlink(lock);
	rmdir(dir);
}

/* The good image, made by the library itself, and the two files with their registries. */
static void setup(void)
{
	const char *tmp = getenv("TMPDIR");
	struct stat st;
	static const char *const ids[] = {"c", "a", "b"};

	setenv("PMEM_METRICS_SEGMENT_WAIT_MS", "1000", 1);
	snprintf(dir, sizeof(dir), "%s/pmem-fuzz-XXXXXX",
		 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		fail("mkdtemp");
	snprintf(rw_path, sizeof(rw_path), "%s/rw", dir);
	snprintf(ro_path, sizeof(ro_path), "%s/ro", dir);
	atexit(cleanup);
	rw = pmem_metrics_registry_open(rw_path, CAPACITY, 0600);
	if (!rw)
		fail("open rw");
	for (size_t i = 0; i < 3; i++) {
		struct pmem_metrics *m = pmem_metrics_registry_alloc(rw, ids[i]);

		if (!m)
			fail("alloc");
		pmem_metrics_add(&m->cfg_fails, i + 1);
	}
	rw_fd = open(rw_path, O_RDWR | O_CLOEXEC);
	if (rw_fd < 0 || fstat(rw_fd, &st) != 0)
		fail("stat rw");
	size = (size_t)st.st_size;
	good = malloc(size);
	image = malloc(size);
	if (!good || !image || pread(rw_fd, good, size, 0) != (ssize_t)size)
		fail("read image");
	ro_fd = open(ro_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (ro_fd < 0 || pwrite(ro_fd, good, size, 0) != (ssize_t)size)
		fail("write ro");
	ro = pmem_metrics_registry_open_flags(ro_path, 0, 0600,
					      PMEM_METRICS_OPEN_READONLY | PMEM_METRICS_OPEN_EXISTING);
	if (!ro)
		fail("open ro");
}

static uint64_t le16(const uint8_t *p)
{
	return (uint64_t)p[0] | (uint64_t)p[1] << 8;
}

/* Whether an error number is one a segment's call may fail with here. */
static bool documented(int err)
{
	/* ETIMEDOUT: full, of devices on their way out (retired, drained), waited for no time. */
	return err == EBADMSG || err == ENOSPC || err == ETIMEDOUT;
}

/* Allocate without waiting: a full segment of retired devices would make each input wait. */
static struct pmem_metrics *alloc_now(const char *id)
{
	return pmem_metrics_registry_alloc_within(rw, id, strlen(id), 0);
}

/* Check what a snapshot claims (any registry): abort if it lies. */
static void check_listing(const struct pmem_metrics_snapshot *s)
{
	size_t n = pmem_metrics_snapshot_len(s);

	if (n > CAPACITY)
		fail("more devices than slots");
	for (size_t i = 0; i < n; i++) {
		const char *id = pmem_metrics_snapshot_id(s, i);

		if (!id || pmem_metrics_id_check(id, strlen(id)) != PMEM_METRICS_ID_OK)
			fail("an id the rules refuse");
		if (i > 0 && strcmp(pmem_metrics_snapshot_id(s, i - 1), id) >= 0)
			fail("ids not strictly increasing");
	}
	if (!check_aggregate_is_sum(s))
		fail("aggregate is not the sum");
}

/* A peek of `r`: NULL on a documented error. */
static struct pmem_metrics_snapshot *peek(struct pmem_metrics_registry *r)
{
	struct pmem_metrics_snapshot *s = NULL;

	if (pmem_metrics_registry_snapshot_peek_into(r, &s, 0) != 0) {
		if (s || !documented(errno))
			fail("peek");
		return NULL;
	}
	check_listing(s);
	return s;
}

/* Row of `id` in `s`, or SIZE_MAX. */
static size_t row_of(const struct pmem_metrics_snapshot *s, const char *id)
{
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++)
		if (strcmp(pmem_metrics_snapshot_id(s, i), id) == 0)
			return i;
	return SIZE_MAX;
}

static void flush_twice(void)
{
	struct pmem_metrics_snapshot *s = NULL;
	char first[CAPACITY][4 * PMEM_METRICS_ID_MAX_CHARS + 1];
	size_t n;

	if (pmem_metrics_registry_snapshot_take_into(rw, &s, 0) != 0) {
		if (s || !documented(errno))
			fail("take");
		return;
	}
	check_listing(s);
	n = pmem_metrics_snapshot_len(s);
	for (size_t i = 0; i < n; i++)
		strcpy(first[i], pmem_metrics_snapshot_id(s, i));
	pmem_metrics_snapshot_commit(s);
	s = NULL;
	/*
	 * Nothing was added since: a flush now reports nothing more for what the
	 * first reported.  (The commit may have drained a retired device, after
	 * which an index that hid devices is replaced by the slots themselves:
	 * those it hid are reported for the first time.)
	 */
	if (pmem_metrics_registry_snapshot_take_into(rw, &s, 0) != 0)
		fail("a second take, of the same bytes, failed");
	check_listing(s);
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++) {
		bool before = false;

		for (size_t k = 0; k < n && !before; k++)
			before = strcmp(first[k], pmem_metrics_snapshot_id(s, i)) == 0;
		for (size_t f = 0; before && f < NF; f++)
			if (pmem_metrics_snapshot_diffs(s)[i * NF + f] != 0)
				fail("a committed count reported again (or wrapped)");
	}
	pmem_metrics_snapshot_abort(s);
}

/* The count of field `f` of `id` in a new peek, or false if it cannot be read or is not listed. */
static bool listed_count(const char *id, size_t f, uint64_t *count)
{
	struct pmem_metrics_snapshot *s = peek(rw);
	size_t row = s ? row_of(s, id) : SIZE_MAX;

	if (row != SIZE_MAX)
		*count = pmem_metrics_snapshot_counts(s)[row * NF + f];
	pmem_metrics_snapshot_free(s);
	return row != SIZE_MAX;
}

/*
 * Allocate `id` in the read-write registry and check that readers agree: the
 * id is listed, and an increment through the pointer counts in its listing
 * (which, behind a scrambled index, may also hold a second slot of the id).
 */
static void alloc_and_check(const char *id)
{
	struct pmem_metrics_snapshot *before = peek(rw);
	struct pmem_metrics *m, *again;
	uint64_t was, now;

	errno = 0;
	m = alloc_now(id);
	if (!m) {
		if (!documented(errno))
			fail("alloc");
		pmem_metrics_snapshot_free(before);
		return;
	}
	/*
	 * Again: the same pointer.  (Behind an index or a count another process
	 * spoilt, it can be another slot of the id -- or the first one can be
	 * one that a rebuild then leaves out, its counts with it, or a rebuild
	 * can refuse the spoilt slots: a process that writes the segment may
	 * change its counts.  Nothing more is checked.)
	 */
	if (!(again = alloc_now(id))) {
		if (!documented(errno))
			fail("alloc, again");
		again = m; /* a rebuild the spoilt slots refuse (EBADMSG) */
	}
	if (listed_count(id, 2, &was)) {
		pmem_metrics_inc(&m->event_fails);
		if (again == m && (!listed_count(id, 2, &now) || now - was != 1))
			fail("the allocated pointer does not count in the listed device");
	} else if (before) {
		fail("an allocation made a readable segment unreadable, or its id is not listed");
	}
	pmem_metrics_snapshot_free(before);
}

/* Open `path` again: the registry this process has, or a documented refusal. */
static void reopen(const char *path, unsigned flags, struct pmem_metrics_registry *want)
{
	struct pmem_metrics_registry *r;

	errno = 0;
	r = pmem_metrics_registry_open_flags(path, 0, 0600, flags | PMEM_METRICS_OPEN_EXISTING);
	if (r ? r != want : !(errno == EBADMSG || errno == EINVAL || errno == EPROTO))
		fail("re-open");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	unsigned what = len > 0 ? data[0] : 0;
	size_t cut, n;

	if (!rw)
		setup(); /* first: it sets `size` */
	cut = len > 2 ? (size_t)(le16(data + 1) % size) : size;
	memcpy(image, good, size);
	for (size_t at = 3; at + 3 < len;) {
		size_t off = (size_t)(le16(data + at) % size), plen = data[at + 2] % 16u + 1;

		at += 3;
		if (plen > len - at)
			plen = len - at;
		if (plen > size - off)
			plen = size - off;
		memcpy(image + off, data + at, plen);
		at += plen;
	}
	if (pwrite(rw_fd, image, size, 0) != (ssize_t)size || ftruncate(ro_fd, 0) != 0 ||
	    pwrite(ro_fd, image, (what & 1) ? cut : size, 0) != (ssize_t)((what & 1) ? cut : size))
		fail("write the files");

	reopen(rw_path, 0, rw);
	reopen(ro_path, PMEM_METRICS_OPEN_READONLY, ro);

	/* The read-only copy: only pread(), so a truncated file is an error, never a signal. */
	pmem_metrics_snapshot_free(peek(ro));
	errno = 0;
	n = pmem_metrics_registry_device_count(ro);
	if (n > CAPACITY || (n == 0 && errno != 0 && !documented(errno)))
		fail("device_count (read-only)");
	errno = 0;
	if (pmem_metrics_registry_alloc(ro, "a") || errno != EROFS)
		fail("alloc in a read-only registry");

	if (what & 4)
		flush_twice();
	if (what & 2)
		alloc_and_check("a");
	alloc_and_check("d");
	errno = 0;
	n = pmem_metrics_registry_device_count(rw);
	if (n > CAPACITY || (n == 0 && errno != 0 && !documented(errno)))
		fail("device_count");
	return 0;
}
