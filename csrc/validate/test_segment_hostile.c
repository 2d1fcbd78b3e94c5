/*
 * test_segment_hostile.c - a segment that other processes damage: scribbled
 * on, truncated, its index corrupted, its users killed at every step (built
 * with -DPMEM_METRICS_FAULT_INJECTION, for the pause hook).
 *
 * Every scenario runs in processes forked for it; totals that several
 * processes report go through an anonymous shared mapping.  Nothing here
 * waits for a time to pass: a process that could hang is bounded by alarm(),
 * and dying of it (a signal) is a failure.
 *
 * Skipped under TSan, which does not model processes sharing memory.
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS, setuid */

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

#define NF PMEM_METRICS_NFIELDS
/* The longest any child may take (it is killed by SIGALRM then: a failure). */
#define CHILD_BOUND_S 60

static char dir[64];

static const char *seg_path(const char *name)
{
	static char path[4][128];
	static int next;
	char *p = path[next++ % 4];

	snprintf(p, sizeof(path[0]), "%s/%s", dir, name);
	return p;
}

/* Start fn(arg) in a child process, bounded by alarm(). */
static pid_t start_child(bool (*fn)(const void *), const void *arg)
{
	pid_t pid;

	fflush(stdout); /* or the child's exit would print it again */
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		bool ok;

		alarm(CHILD_BOUND_S);
		ok = fn(arg);
		fflush(stdout);
		_exit(ok ? 0 : 1);
	}
	return pid;
}

/* A child's exit status (0: it returned true), or 128 + its signal. */
static int wait_child(pid_t pid)
{
	int status;

	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int in_child(bool (*fn)(const void *), const void *arg)
{
	return wait_child(start_child(fn, arg));
}

/* ---- The file, as another process sees it ---------------------------------------- */

/* Where the format puts a thing (docs/segment-format.md), as the library says: never a literal. */
static size_t at(const char *name)
{
	long long v = pmem_metrics_segment_offset(name);

	if (v < 0) {
		fprintf(stderr, "no offset named %s\n", name);
		abort();
	}
	return (size_t)v;
}

/* The header's fields this file needs, and a slot's (from the slot's start). */
#define HDR_SLOT_SIZE at("header.slot_size")
#define HDR_INDEX_OFF at("header.index_off")
#define HDR_SLOTS_OFF at("header.slots_off")
#define HDR_SIZE at("header.size")
#define HDR_SEQ at("header.seq")
#define HDR_USED at("header.used")
#define DEV_PUBLISHED at("slot.published")
#define DEV_ID_LEN at("slot.id_len")
#define DEV_ID at("slot.id")

struct image {
	unsigned char *base; /* the whole file, mapped read-write once more */
	uint64_t size, slot_size, index_off, slots_off;
};

static bool image_map(const char *path, struct image *im)
{
	int fd = open(path, O_RDWR);

	if (fd < 0 || pread(fd, &im->slot_size, 8, HDR_SLOT_SIZE) != 8 ||
	    pread(fd, &im->index_off, 8, HDR_INDEX_OFF) != 8 ||
	    pread(fd, &im->slots_off, 8, HDR_SLOTS_OFF) != 8 || pread(fd, &im->size, 8, HDR_SIZE) != 8) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	im->base = mmap(NULL, im->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return im->base != MAP_FAILED;
}

static volatile uint32_t *image_index(const struct image *im, size_t i)
{
	return (volatile uint32_t *)(im->base + im->index_off) + i;
}

/* Byte `at` of slot `slot`. */
static size_t image_slot_at(const struct image *im, size_t slot, size_t at)
{
	return im->slots_off + slot * im->slot_size + at;
}

/* Create segment `name` with `capacity` slots holding `ids`, in a child (the test process holds no registry). */
struct made {
	const char *name;
	size_t capacity;
	const char *const *ids;
	size_t n;
};

static bool make_segment(const void *arg)
{
	const struct made *mk = arg;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path(mk->name), mk->capacity, 0600);

	for (size_t i = 0; r && i < mk->n; i++)
		if (!pmem_metrics_registry_alloc(r, mk->ids[i]))
			return false;
	return r != NULL;
}

/*
 * What every snapshot of a segment with `capacity` slots must be: ids the
 * rules accept, strictly increasing (no device twice), no more than the
 * slots, its aggregate the sum.
 */
static bool listing_sane(const struct pmem_metrics_snapshot *s, size_t capacity)
{
	size_t n = pmem_metrics_snapshot_len(s);

	if (n > capacity || !check_aggregate_is_sum(s))
		return false;
	for (size_t i = 0; i < n; i++) {
		const char *id = pmem_metrics_snapshot_id(s, i);

		if (pmem_metrics_id_check(id, strlen(id)) != PMEM_METRICS_ID_OK ||
		    (i > 0 && strcmp(pmem_metrics_snapshot_id(s, i - 1), id) >= 0))
			return false;
	}
	return true;
}

/* ---- A scribbler across processes ------------------------------------------------ */

/* The scribbler writes until the victims have made SCRIB_ROUNDS rounds of calls between them. */
enum { SCRIB_CAPACITY = 16, SCRIB_IDS = 24, SCRIB_VICTIMS = 3, SCRIB_ROUNDS = 30000 };

struct scrib_shared {
	atomic_bool stop;
	atomic_int bad_errno, bad_listing, calls, errors;
	atomic_int victims_ready;
};

static struct scrib_shared *scr;

/* Whether `err` is an error a segment's call may fail with when its file is spoilt. */
static bool clean_error(int err)
{
	return err == EBADMSG || err == ENOSPC || err == ETIMEDOUT;
}

static void note_error(int err)
{
	atomic_fetch_add(&scr->errors, 1);
	if (!clean_error(err)) {
		int none = 0;

		atomic_compare_exchange_strong(&scr->bad_errno, &none, err);
	}
}

static void note_snapshot(struct pmem_metrics_snapshot *s)
{
	if (!listing_sane(s, SCRIB_CAPACITY))
		atomic_fetch_add(&scr->bad_listing, 1);
}

/* A victim: every call, over and over, until the scribbler is done. */
static bool victim(const void *arg)
{
	bool readonly = arg != NULL;
	struct pmem_metrics_registry *r;
	unsigned seed = (unsigned)getpid();

	if (readonly && geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
		return false;
	r = pmem_metrics_registry_open_flags(seg_path("scribbled"), 0, 0600,
					     readonly ? PMEM_METRICS_OPEN_READONLY : 0);
	if (!r)
		return false;
	atomic_fetch_add(&scr->victims_ready, 1);
	while (!atomic_load(&scr->stop)) {
		struct pmem_metrics_snapshot *s = NULL;
		char id[16];
		size_t n;

		if (!readonly) {
			struct pmem_metrics *m;

			snprintf(id, sizeof(id), "v%d", rand_r(&seed) % SCRIB_IDS);
			if ((m = pmem_metrics_registry_alloc_within(r, id, strlen(id), 50)) != NULL)
				pmem_metrics_inc(pmem_metrics_field(m, (size_t)rand_r(&seed) % NF));
			else
				note_error(errno);
			if (pmem_metrics_registry_snapshot_take_into(r, &s, 50) == 0) {
				note_snapshot(s);
				pmem_metrics_snapshot_commit(s);
			} else {
				note_error(errno);
			}
			s = NULL;
		}
		if (pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0) {
			note_snapshot(s);
			pmem_metrics_snapshot_free(s);
		} else {
			note_error(errno);
		}
		errno = 0;
		n = pmem_metrics_registry_device_count(r);
		if (n > SCRIB_CAPACITY)
			atomic_fetch_add(&scr->bad_listing, 1);
		else if (n == 0 && errno != 0)
			note_error(errno);
		atomic_fetch_add(&scr->calls, 1);
	}
	return true;
}

/*
 * Random 8-byte words anywhere in the file: half of them anything, half
 * small numbers (a plausible count, slot number or id length, so readers
 * get past the first check and into the index and the slots).
 */
static bool scribbler(const void *arg)
{
	struct image im;
	uint64_t x = 0x9e3779b97f4a7c15u ^ (uint64_t)getpid();

	(void)arg;
	if (!image_map(seg_path("scribbled"), &im))
		return false;
	while (atomic_load(&scr->victims_ready) < SCRIB_VICTIMS + (geteuid() == 0))
		sched_yield();
	for (int i = 0; atomic_load(&scr->calls) < SCRIB_ROUNDS; i++) {
		uint64_t at, word;

		x ^= x << 13; /* xorshift64 */
		x ^= x >> 7;
		x ^= x << 17;
		at = (x >> 8) % (im.size / 8) * 8;
		word = (x & 1) ? x : (x >> 32) % (SCRIB_CAPACITY + 4);
		if ((x & 6) == 0) /* every fourth word: the header and the index, where it hurts */
			at = (x >> 8) % ((im.slots_off) / 8) * 8;
		*(volatile uint64_t *)(im.base + at) = word;
		if (i % 64 == 0)
			sched_yield(); /* the victims get the processor too, on a small machine */
	}
	atomic_store(&scr->stop, true);
	return true;
}

static void test_a_scribbler_in_another_process_kills_nobody(void)
{
	static const char *const ids[] = {"v1", "v2", "v3"};
	const struct made mk = {"scribbled", SCRIB_CAPACITY, ids, 3};
	pid_t pid[SCRIB_VICTIMS + 2];
	int np = 0;

	CHECK(in_child(make_segment, &mk) == 0);
	if (geteuid() == 0) {
		/* Read-only, as another user: a file others may read, in a directory they may enter. */
		CHECK(chmod(seg_path("scribbled"), 0644) == 0 && chmod(dir, 0755) == 0);
		pid[np++] = start_child(victim, "readonly");
	}
	for (int i = 0; i < SCRIB_VICTIMS; i++)
		pid[np++] = start_child(victim, NULL);
	pid[np++] = start_child(scribbler, NULL);
	for (int i = 0; i < np; i++)
		CHECK(wait_child(pid[i]) == 0); /* no signal (SIGSEGV, SIGBUS, SIGALRM: a hang) */
	if (geteuid() == 0)
		CHECK(chmod(dir, 0700) == 0);
	CHECK(atomic_load(&scr->bad_errno) == 0);
	CHECK(atomic_load(&scr->bad_listing) == 0);
	if (atomic_load(&scr->bad_errno))
		fprintf(stderr, "an error that is not clean: %s\n", strerror(atomic_load(&scr->bad_errno)));
	printf("# %d rounds of calls against a scribbler%s, %d clean errors\n", atomic_load(&scr->calls),
	       geteuid() == 0 ? " (one reader as uid 65534)" : "", atomic_load(&scr->errors));
}

/* ---- A segment truncated under a reader --------------------------------------------- */

struct pipes {
	int ready[2], go[2];
};

/* A cut, and whether the file still holds every device's slot after it. */
struct cut {
	long len;
	bool whole;
};

/*
 * A read-only reader (pread() alone): counts and peeks, says so, waits while
 * the file is cut to `*cut` bytes, then counts and peeks again: errors, not
 * a signal.
 */
static bool read_across_a_truncation(const void *arg)
{
	const struct pipes *p = arg;
	struct pmem_metrics_registry *r =
		pmem_metrics_registry_open_flags(seg_path("truncated"), 0, 0600,
						 PMEM_METRICS_OPEN_READONLY | PMEM_METRICS_OPEN_EXISTING);
	struct pmem_metrics_snapshot *s = NULL;
	int before = check_failures;
	struct cut cut;
	size_t n;

	close(p->go[1]); /* the parent's ends: the parent closing go[1] ends the loop */
	close(p->ready[0]);
	CHECK(r && pmem_metrics_registry_device_count(r) == 3);
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0 && pmem_metrics_snapshot_len(s) == 3);
	pmem_metrics_snapshot_free(s);
	s = NULL;
	CHECK(write(p->ready[1], "r", 1) == 1);
	while (read(p->go[0], &cut, sizeof(cut)) == (ssize_t)sizeof(cut)) {
		errno = 0;
		if (cut.whole) { /* what is read is all there */
			CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0 &&
			      pmem_metrics_snapshot_len(s) == 3);
			pmem_metrics_snapshot_free(s);
			s = NULL;
		} else {
			CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == -1 && errno == EBADMSG && !s);
		}
		errno = 0;
		n = pmem_metrics_registry_device_count(r);
		/* `used` itself is gone below 80 bytes; above, the count may still be read. */
		if (cut.len < (long)HDR_USED + 8)
			CHECK(n == 0 && errno == EBADMSG);
		else
			CHECK(n == 3 || (n == 0 && errno == EBADMSG));
		CHECK(write(p->ready[1], "r", 1) == 1);
	}
	return check_failures == before;
}

static void test_a_truncated_segment_is_an_error_to_a_reader(void)
{
	static const char *const ids[] = {"t1", "t2", "t3"};
	const long cuts[] = {4096, 1000, (long)HDR_USED + 8, 64, 0};
	const struct made mk = {"truncated", 8, ids, 3};
	struct image im;
	struct pipes p;
	char c;
	pid_t pid;

	CHECK(in_child(make_segment, &mk) == 0);
	CHECK(image_map(seg_path("truncated"), &im));
	munmap(im.base, im.size); /* only its layout: the test process never touches a cut file */
	CHECK(pipe(p.ready) == 0 && pipe(p.go) == 0);
	pid = start_child(read_across_a_truncation, &p);
	close(p.ready[1]);
	close(p.go[0]);
	CHECK(read(p.ready[0], &c, 1) == 1);
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		struct cut cut = {cuts[i], (uint64_t)cuts[i] >= im.slots_off + 3 * im.slot_size};

		CHECK(truncate(seg_path("truncated"), cuts[i]) == 0);
		CHECK(write(p.go[1], &cut, sizeof(cut)) == (ssize_t)sizeof(cut));
		CHECK(read(p.ready[0], &c, 1) == 1);
	}
	close(p.go[1]);
	CHECK(wait_child(pid) == 0);
	close(p.ready[0]);
}

/* ---- SIGKILL at every pause point ---------------------------------------------------- */

/*
 * Counts added, and counts reported by reports that were delivered, per
 * device and field.  At least once: nothing added is missing from the
 * reports; a flusher killed between its report and its commit (or in the
 * middle of either) may have part of its report repeated, never more.
 */
enum { KDEV = 4, KCAPACITY = 16 };

struct kill_totals {
	_Atomic uint64_t added[KDEV][NF], reported[KDEV][NF], dying_report[KDEV][NF];
	atomic_int bad;
};

static struct kill_totals *kt;

static void kdev_id(char *buf, size_t size, int d)
{
	snprintf(buf, size, "k%d", d);
}

/* Add a known amount to every counter of the k devices of `r`. */
static bool add_known(struct pmem_metrics_registry *r, uint64_t salt)
{
	for (int d = 0; d < KDEV; d++) {
		char id[16];
		struct pmem_metrics *m;

		kdev_id(id, sizeof(id), d);
		if (!(m = pmem_metrics_registry_alloc(r, id)))
			return false;
		for (size_t f = 0; f < NF; f++) {
			uint64_t v = salt * 100 + (uint64_t)d * 10 + f + 1;

			pmem_metrics_add(pmem_metrics_field(m, f), v);
			atomic_fetch_add(&kt->added[d][f], v);
		}
	}
	return true;
}

/* Add what `s` reports to `into` (the k devices' rows). */
static void account(const struct pmem_metrics_snapshot *s, _Atomic uint64_t (*into)[NF])
{
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++) {
		int d;

		if (sscanf(pmem_metrics_snapshot_id(s, i), "k%d", &d) != 1 || d < 0 || d >= KDEV)
			continue;
		for (size_t f = 0; f < NF; f++)
			atomic_fetch_add(&into[d][f], pmem_metrics_snapshot_diffs(s)[i * NF + f]);
	}
}

static const char *kill_at;

static void kill_me(const char *where)
{
	if (kill_at && strcmp(where, kill_at) == 0)
		kill(getpid(), SIGKILL);
}

static bool die_at(const void *arg)
{
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path(arg), KCAPACITY, 0600);
	struct pmem_metrics_snapshot *s = NULL;

	kill_at = arg;
	if (!r || !add_known(r, 1))
		return false;
	pmem_metrics_fault_pause_hook(kill_me);
	if (strcmp(kill_at, "insert") == 0) {
		pmem_metrics_registry_alloc(r, "dying");
		return false; /* not reached: killed */
	}
	if (pmem_metrics_registry_snapshot_take_into(r, &s, -1) != 0)
		return false; /* "take" and "copy" die in there */
	/* The report, as written (to count it if it was delivered). */
	account(s, kt->dying_report);
	if (strcmp(kill_at, "commit") == 0) {
		pmem_metrics_snapshot_commit(s);
	} else {
		pmem_metrics_snapshot_publish(&s);
		pmem_metrics_snapshot_withdraw(&s);
	}
	return false; /* not reached: killed */
}

/* A process that has just opened the segment, whose first call is a flush. */
static bool flush_first(const void *arg)
{
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path(arg), 0, 0600);
	struct pmem_metrics_snapshot *s = NULL;

	if (!r || pmem_metrics_registry_snapshot_take_into(r, &s, 5000) != 0)
		return false;
	account(s, kt->reported);
	pmem_metrics_snapshot_commit(s);
	return true;
}

/* Add, flush and peek as usual: every call must work. */
static bool survive(const void *arg)
{
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path(arg), 0, 0600);
	int before = check_failures;
	char id[32];

	snprintf(id, sizeof(id), "new%d", (int)getpid());
	CHECK(r && pmem_metrics_registry_alloc(r, id));
	for (int i = 0; r && i < 4; i++) {
		struct pmem_metrics_snapshot *s = NULL;

		CHECK(add_known(r, 2 + (uint64_t)i));
		CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 5000) == 0 && listing_sane(s, KCAPACITY));
		account(s, kt->reported);
		pmem_metrics_snapshot_commit(s);
		s = NULL;
		CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0 && listing_sane(s, KCAPACITY));
		pmem_metrics_snapshot_free(s);
	}
	return check_failures == before;
}

static void test_a_process_killed_at_any_pause_loses_no_count(void)
{
	static const char *const steps[] = {"insert", "take",    "copy",
					    "claim",  "commit", "publish", "withdraw"};

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		bool delivered = strcmp(steps[i], "commit") == 0 || strcmp(steps[i], "withdraw") == 0 ||
				 strcmp(steps[i], "publish") == 0;
		pid_t a, b;

		memset(kt, 0, sizeof(*kt));
		CHECK(in_child(die_at, steps[i]) == 128 + SIGKILL);
		CHECK(in_child(flush_first, steps[i]) == 0); /* undoes the dead claim, if any */
		a = start_child(survive, steps[i]);
		b = start_child(survive, steps[i]);
		CHECK(wait_child(a) == 0 && wait_child(b) == 0);
		CHECK(in_child(survive, steps[i]) == 0); /* and a last one, to report the rest */
		/*
		 * The dying flusher's report was written before its commit (it was
		 * delivered), and before its withdrawal (published: delivered, as
		 * far as its segment can know -- see the note below).
		 */
		for (int d = 0; d < KDEV; d++) {
			for (size_t f = 0; f < NF; f++) {
				uint64_t added = atomic_load(&kt->added[d][f]);
				uint64_t got = atomic_load(&kt->reported[d][f]);
				uint64_t dying = delivered ? atomic_load(&kt->dying_report[d][f]) : 0;

				CHECK(got + dying >= added); /* nothing lost */
				CHECK(got <= added); /* so what repeats is part of the dying report */
				/* Published, then killed: its report was out, and is not made again. */
				if (strcmp(steps[i], "publish") == 0)
					CHECK(got + dying == added);
				if (got + dying < added)
					fprintf(stderr, "killed at %s: k%d field %zu: %llu reported of %llu\n",
						steps[i], d, f, (unsigned long long)(got + dying),
						(unsigned long long)added);
			}
		}
	}
	/*
	 * Note: a withdrawal killed half-way leaves the rest of its report
	 * committed.  If that report really never reached its reader, those
	 * counts are lost; the segment cannot know, and this test counts a
	 * published report as delivered.
	 */
}

/* ---- A corrupt index --------------------------------------------------------------- */

/*
 * Devices "c", "a", "b" in slots 0, 1, 2 (index 1, 2, 0), with pointers from
 * the test's own registry; `im` maps the same file once more.
 */
struct corrupt {
	struct pmem_metrics_registry *r;
	struct pmem_metrics *dev[3]; /* by slot */
	struct image im;
};

static bool corrupt_setup(struct corrupt *c, const char *name)
{
	static const char *const ids[] = {"c", "a", "b"};

	c->r = pmem_metrics_registry_open(seg_path(name), 8, 0600);
	for (int i = 0; c->r && i < 3; i++)
		if (!(c->dev[i] = pmem_metrics_registry_alloc(c->r, ids[i])))
			return false;
	return c->r && image_map(seg_path(name), &c->im) && *image_index(&c->im, 0) == 1 &&
	       *image_index(&c->im, 1) == 2 && *image_index(&c->im, 2) == 0;
}

static void bump_all(struct corrupt *c)
{
	for (int i = 0; i < 3; i++)
		for (size_t f = 0; f < NF; f++)
			pmem_metrics_inc(pmem_metrics_field(c->dev[i], f));
}

/*
 * A flush, committed, then another: the first lists each device once with
 * no diff above `most`; the second reports nothing (a device committed
 * twice would have its baseline moved twice: a wrapped, huge diff).
 * Returns whether the first went through (EBADMSG is the only refusal).
 */
static bool flush_is_sane(struct corrupt *c, uint64_t most)
{
	struct pmem_metrics_snapshot *s = NULL;
	int before = check_failures;

	errno = 0;
	if (pmem_metrics_registry_snapshot_take_into(c->r, &s, 0) != 0) {
		CHECK(errno == EBADMSG && !s);
		return false;
	}
	CHECK(listing_sane(s, 3));
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s) * NF; i++)
		CHECK(pmem_metrics_snapshot_diffs(s)[i] <= most);
	pmem_metrics_snapshot_commit(s);
	s = NULL;
	CHECK(pmem_metrics_registry_snapshot_take_into(c->r, &s, 0) == 0);
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s) * NF; i++)
		CHECK(pmem_metrics_snapshot_diffs(s)[i] == 0);
	pmem_metrics_snapshot_abort(s);
	return check_failures == before;
}

/* The peek of `c` lists "a", "b", "c", each once. */
static bool peek_lists_abc(struct corrupt *c)
{
	struct pmem_metrics_snapshot *s = NULL;
	bool ok = pmem_metrics_registry_snapshot_peek_into(c->r, &s, 0) == 0 &&
		  pmem_metrics_snapshot_len(s) == 3 && !strcmp(pmem_metrics_snapshot_id(s, 0), "a") &&
		  !strcmp(pmem_metrics_snapshot_id(s, 1), "b") && !strcmp(pmem_metrics_snapshot_id(s, 2), "c");

	pmem_metrics_snapshot_free(s);
	return ok;
}

/*
 * After the index was scrambled: "a" and "b" allocated again (perhaps in a
 * second slot each: the search can miss them behind a scrambled index) and
 * "d" added, one increment of cfg_fails each through the new handles: a
 * flush lists a, b, c, d once each, with both increments of "a" and "b".
 */
static bool allocations_behind_a_scrambled_index(struct corrupt *c)
{
	struct pmem_metrics *a = pmem_metrics_registry_alloc(c->r, "a");
	struct pmem_metrics *b = pmem_metrics_registry_alloc(c->r, "b");
	struct pmem_metrics *d = pmem_metrics_registry_alloc(c->r, "d");
	struct pmem_metrics_snapshot *s = NULL;
	static const char *const want[] = {"a", "b", "c", "d"};
	int before = check_failures;

	CHECK(a && b && d);
	if (check_failures != before)
		return false;
	pmem_metrics_inc(&a->cfg_fails);
	pmem_metrics_inc(&c->dev[1]->cfg_fails); /* "a", by its first handle */
	pmem_metrics_inc(&b->cfg_fails);
	pmem_metrics_inc(&c->dev[2]->cfg_fails); /* "b" */
	pmem_metrics_inc(&d->cfg_fails);
	CHECK(pmem_metrics_registry_snapshot_take_into(c->r, &s, 0) == 0 && listing_sane(s, 16) &&
	      pmem_metrics_snapshot_len(s) == 4);
	for (size_t i = 0; s && i < pmem_metrics_snapshot_len(s) && i < 4; i++) {
		CHECK(strcmp(pmem_metrics_snapshot_id(s, i), want[i]) == 0);
		CHECK(pmem_metrics_snapshot_diffs(s)[i * NF + 1] == (i < 2 ? 2 : i == 3 ? 1 : 0));
	}
	pmem_metrics_snapshot_commit(s);
	return check_failures == before;
}

/* Out of order, every entry a device: listed once each, and allocations count with what is there. */
static bool index_out_of_order(const void *arg)
{
	struct corrupt c;
	int before = check_failures;

	(void)arg;
	if (!corrupt_setup(&c, "swapped"))
		return false;
	*image_index(&c.im, 0) = 2; /* "b", "a", "c" */
	*image_index(&c.im, 1) = 1;
	bump_all(&c);
	CHECK(peek_lists_abc(&c));
	CHECK(flush_is_sane(&c, 1));
	CHECK(allocations_behind_a_scrambled_index(&c));
	return check_failures == before;
}

/* One slot named twice (and one not at all): a take commits each device once. */
static bool index_names_a_slot_twice(const void *arg)
{
	struct corrupt c;
	int before = check_failures;

	(void)arg;
	if (!corrupt_setup(&c, "twice"))
		return false;
	*image_index(&c.im, 2) = 2; /* "a", "b", "b" */
	bump_all(&c);
	bump_all(&c);
	CHECK(peek_lists_abc(&c));
	CHECK(flush_is_sane(&c, 2));
	for (int i = 0; i < 3; i++)
		CHECK(pmem_metrics_fetch_diff(&c.dev[i]->cfg_fails) == 0);
	*image_index(&c.im, 0) = 1; /* "a", "a", "a" */
	*image_index(&c.im, 1) = 1;
	*image_index(&c.im, 2) = 1;
	bump_all(&c);
	CHECK(flush_is_sane(&c, 1));
	CHECK(allocations_behind_a_scrambled_index(&c));
	return check_failures == before;
}

/*
 * Each bit of the index, the header's count and the slots' `published`, id
 * length and id flipped in turn (and flipped back): flushes and peeks list
 * no device twice and report no wrapped count; refusals are EBADMSG.
 */
static bool flipped_bits(const void *arg)
{
	struct corrupt c;
	int before = check_failures;
	uint64_t bumps = 0; /* a diff is at most every increment so far: more is a wrap */
	size_t offs[64], n = 0, flips = 0, refused = 0;

	(void)arg;
	if (!corrupt_setup(&c, "flipped"))
		return false;
	for (size_t b = 0; b < 3 * 4; b++)
		offs[n++] = c.im.index_off + b;
	offs[n++] = HDR_USED;
	for (size_t slot = 0; slot < 3; slot++) {
		offs[n++] = image_slot_at(&c.im, slot, DEV_PUBLISHED);
		offs[n++] = image_slot_at(&c.im, slot, DEV_ID_LEN);
		offs[n++] = image_slot_at(&c.im, slot, DEV_ID);
		offs[n++] = image_slot_at(&c.im, slot, DEV_ID + 1); /* the NUL after it */
	}
	for (size_t i = 0; i < n; i++) {
		for (int bit = 0; bit < 8; bit++) {
			volatile unsigned char *p = c.im.base + offs[i];
			struct pmem_metrics_snapshot *s = NULL;

			bump_all(&c);
			bumps++;
			*p ^= (unsigned char)(1u << bit);
			errno = 0;
			if (pmem_metrics_registry_snapshot_peek_into(c.r, &s, 0) == 0)
				CHECK(listing_sane(s, 3));
			else
				CHECK(errno == EBADMSG);
			pmem_metrics_snapshot_free(s);
			if (!flush_is_sane(&c, bumps))
				refused++;
			*p ^= (unsigned char)(1u << bit);
			flips++;
		}
	}
	CHECK(peek_lists_abc(&c) && flush_is_sane(&c, bumps));
	printf("# %zu bits flipped: %zu flushes refused (EBADMSG), the rest listed each device once\n",
	       flips, refused);
	return check_failures == before;
}

static void test_a_corrupt_index_never_lists_a_device_twice(void)
{
	CHECK(in_child(index_out_of_order, NULL) == 0);
	CHECK(in_child(index_names_a_slot_twice, NULL) == 0);
	CHECK(in_child(flipped_bits, NULL) == 0);
}

/* ---- A reader that takes every lock it can ----------------------------------------- */

/*
 * The reader: another uid (65534) that may read the data file and nothing
 * more.  It takes a read lock on every byte of it and past its end, both
 * kinds (the open file description's and the process's), tries the lock
 * file, then says so and holds on until the pipe closes.
 */
struct locker {
	int ready[2], done[2];
};

/* A read lock on every byte of [from, from + n) that is free: how many it got. */
static long lock_bytes(int fd, off_t from, long n)
{
	long got = 0;

	for (long b = 0; b < n; b++) {
		struct flock one = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = from + b, .l_len = 1};

		got += fcntl(fd, F_OFD_SETLK, &one) == 0;
	}
	return got;
}

static bool lock_everything(const void *arg)
{
	const struct locker *lk = arg;
	struct flock all = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
	char lock_path[160], c;
	int fd, ok = 1;

	close(lk->ready[0]);
	close(lk->done[1]);
	if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
		return false;
	fd = open(seg_path("locked"), O_RDONLY);
	snprintf(lock_path, sizeof(lock_path), "%s.lock", seg_path("locked"));
	/*
	 * Every byte, to the end of any file, if no writer holds one there;
	 * else every free byte of the first 64 KiB and of the 64 KiB from 2^32
	 * (where a library might keep per-slot locks).  The data file is all a
	 * reader can open.
	 */
	ok &= fd >= 0 && (fcntl(fd, F_OFD_SETLK, &all) == 0 ||
			  lock_bytes(fd, 0, 65536) + lock_bytes(fd, (off_t)1 << 32, 65536) > 0);
	ok &= open(lock_path, O_RDONLY) < 0 && errno == EACCES;
	ok &= open(lock_path, O_RDWR) < 0 && errno == EACCES;
	if (write(lk->ready[1], ok ? "y" : "n", 1) != 1)
		return false;
	return read(lk->done[0], &c, 1) == 0 && ok; /* held until the owner is done */
}

/* One call of the owner's, bounded: whether it succeeded within `ms`. */
static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static void test_a_reader_holding_every_lock_it_can_delays_no_writer(void)
{
	struct locker lk;
	struct pmem_metrics_registry *r;
	struct timespec t0;
	pid_t pid;
	char c = 0;
	int calls = 0;

	if (geteuid() != 0) {
		printf("# not root: the reader runs as this uid (it may then write the lock file)\n");
		return;
	}
	CHECK(pipe(lk.ready) == 0 && pipe(lk.done) == 0);
	/* Readable by everyone, writable by its owner: what a scraping agent's segment is. */
	r = pmem_metrics_registry_open(seg_path("locked"), 16, 0644);
	CHECK(r && pmem_metrics_registry_alloc(r, "before"));
	CHECK(chmod(dir, 0755) == 0);
	pid = start_child(lock_everything, &lk);
	close(lk.ready[1]);
	close(lk.done[0]);
	CHECK(read(lk.ready[0], &c, 1) == 1 && c == 'y');
	/*
	 * Every call the owner makes, with a wait bound far below the default:
	 * none may wait for the reader at all (a lock it held would make them
	 * time out, ETIMEDOUT, or refuse a slot).
	 */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int round = 0; r && round < 20; round++) {
		struct pmem_metrics_snapshot *s = NULL;
		char id[32];
		struct pmem_metrics *m;

		snprintf(id, sizeof(id), "dev%d", round);
		m = pmem_metrics_registry_alloc_within(r, id, strlen(id), 200);
		CHECK(m != NULL);
		calls++;
		if (m) {
			pmem_metrics_inc(pmem_metrics_field(m, 0));
			pmem_metrics_release(m);
		}
		CHECK(pmem_metrics_registry_retire(r, id, strlen(id)) == 0);
		calls++;
		CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 200) == 0);
		calls++;
		pmem_metrics_snapshot_commit(s);
		s = NULL;
		CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0);
		pmem_metrics_snapshot_free(s);
		calls++;
	}
	/* And a process that opens it afresh, as a new VMM would: it writes, flushes, retires. */
	CHECK(in_child(survive, "locked") == 0);
	calls++;
	printf("# a reader (uid 65534) held every lock it could: %d calls of the owner in %.0f ms\n",
	       calls, ms_since(&t0));
	close(lk.done[1]);
	CHECK(wait_child(pid) == 0);
	close(lk.ready[0]);
}

/* ---- A scribbler pointing writers at storage the file does not have ---------------- */

/*
 * On a file system that is full (a tmpfs of its own, filled up), a
 * scribbler raises `high` to the capacity and names far slots in a claim:
 * slots the sparse file has no storage for.  A writer must not touch them
 * through its mapping (a SIGBUS, there being no page to give it): every
 * call returns, with a clean error or not.
 */
static const char *full_dir;

static bool write_into_a_full_file_system(const void *arg)
{
	char path[128];
	struct pmem_metrics_registry *r;
	struct pmem_metrics_snapshot *s = NULL;
	struct pmem_metrics *m;
	int calls = 0;

	(void)arg;
	snprintf(path, sizeof(path), "%s/seg", full_dir);
	r = pmem_metrics_registry_open(path, 0, 0600);
	if (!r)
		return false;
	for (int i = 0; i < 20; i++) {
		char id[16];

		snprintf(id, sizeof(id), "new%d", i);
		m = pmem_metrics_registry_alloc_within(r, id, strlen(id), 100);
		if (m)
			pmem_metrics_release(m);
		if (pmem_metrics_registry_snapshot_take_into(r, &s, 100) == 0)
			pmem_metrics_snapshot_commit(s);
		s = NULL;
		if (pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0)
			pmem_metrics_snapshot_free(s);
		s = NULL;
		errno = 0;
		pmem_metrics_registry_device_count(r);
		calls += 4;
	}
	return calls == 80; /* reached: no signal on the way */
}

/* A default-capacity segment at `arg` with four devices. */
static bool make_four(const void *arg)
{
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(arg, 0, 0600);
	bool ok = r != NULL;

	for (int i = 0; ok && i < 4; i++) {
		char id[16];

		snprintf(id, sizeof(id), "f%d", i);
		ok = pmem_metrics_registry_alloc(r, id) != NULL;
	}
	return ok;
}

static void test_a_full_file_system_is_an_error_never_a_signal(void)
{
	char tmpl[128], path[160], filler[160];
	struct image im;
	long claims_off, claim_size;
	int fd;

	snprintf(tmpl, sizeof(tmpl), "%s/fullfs", dir);
	if (mkdir(tmpl, 0700) != 0 || mount("tmpfs", tmpl, "tmpfs", 0, "size=256k") != 0) {
		printf("# cannot mount a small tmpfs here (%s): not root?\n", strerror(errno));
		CHECK(geteuid() != 0); /* as root (CI) it must run */
		return;
	}
	full_dir = tmpl;
	snprintf(path, sizeof(path), "%s/seg", tmpl);
	CHECK(in_child(make_four, path) == 0); /* this process keeps nothing open there */
	/* Fill what is left of the file system. */
	snprintf(filler, sizeof(filler), "%s/filler", tmpl);
	fd = open(filler, O_WRONLY | O_CREAT, 0600);
	for (off_t at = 0; fd >= 0 && posix_fallocate(fd, at, 4096) == 0; at += 4096)
		;
	if (fd >= 0)
		close(fd);
	/* The scribbler: `high` to the capacity, a claim naming the last slot, active. */
	CHECK(image_map(path, &im));
	claims_off = (long)at("header.claims_off");
	claim_size = (long)at("header.claim_size");
	{
		uint64_t cap, coff, csize;

		memcpy(&cap, im.base + at("header.capacity"), 8);
		memcpy(&coff, im.base + claims_off, 8);
		memcpy(&csize, im.base + claim_size, 8);
		memcpy(im.base + at("header.high"), &cap, 8);
		/* Claim 3: one entry, slot cap - 1 (its head has storage: the first chunk's). */
		{
			unsigned char *c = im.base + coff + 3 * csize;
			uint64_t one = 1, active = (uint64_t)at("claim_active"), mark = 2;
			uint32_t last = (uint32_t)(cap - 1);

			memcpy(c + at("claim.n"), &one, 8);
			memcpy(c + at("claim.mark"), &mark, 8);
			memcpy(c + at("claim.entries") + at("entry.slot"), &last, 4);
			memcpy(c + at("claim.state"), &active, 8);
		}
	}
	munmap(im.base, im.size);
	CHECK(in_child(write_into_a_full_file_system, NULL) == 0);
	printf("# a full tmpfs, a scribbled high and claim: the writer made 80 calls, none touched a hole\n");
	CHECK(umount(tmpl) == 0);
	rmdir(tmpl);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");

#ifdef UNDER_TSAN
	puts("# skipped under TSan: processes share memory here");
	return 0;
#endif
	setenv("PMEM_METRICS_SEGMENT_WAIT_MS", "1000", 1);
	snprintf(dir, sizeof(dir), "%s/pmem-hostile-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return 2;
	scr = mmap(NULL, sizeof(*scr), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	kt = mmap(NULL, sizeof(*kt), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (scr == MAP_FAILED || kt == MAP_FAILED)
		return 2;
	RUN(test_a_scribbler_in_another_process_kills_nobody);
	RUN(test_a_truncated_segment_is_an_error_to_a_reader);
	RUN(test_a_process_killed_at_any_pause_loses_no_count);
	RUN(test_a_corrupt_index_never_lists_a_device_twice);
	RUN(test_a_reader_holding_every_lock_it_can_delays_no_writer);
	RUN(test_a_full_file_system_is_an_error_never_a_signal);
	if (fork() == 0)
		execlp("rm", "rm", "-rf", dir, (char *)NULL);
	wait(NULL);
	return check_summary();
}
