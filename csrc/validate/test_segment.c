/*
 * test_segment.c - one registry in a shared segment, across processes
 * (built with -DPMEM_METRICS_FAULT_INJECTION, for the crash tests' pause hook).
 *
 * Attaching changes a process for good, so every scenario runs in processes
 * forked for it; this one only forks, waits and checks.  Totals that several
 * processes report go through an anonymous shared mapping.
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS, setuid */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

#define NF PMEM_METRICS_NFIELDS
#define NDEV 8
#define NPROC 3
#define NTHREAD 2
#define ITERS 40000

static char dir[64];

/* The path of segment `name` (two may be in use at once). */
static const char *seg_path(const char *name)
{
	static char path[2][128];
	static int next;
	char *p = path[next++ % 2];

	snprintf(p, sizeof(path[0]), "%s/%s", dir, name);
	return p;
}

/* Run fn() in a child process: its exit status (0: it returned true). */
static int in_child(bool (*fn)(const void *), const void *arg)
{
	pid_t pid;
	int status;

	fflush(stdout); /* or the child's exit would print it again */
	pid = fork();
	if (pid == 0) {
		bool ok = fn(arg);

		fflush(stdout);
		_exit(ok ? 0 : 1);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- Many processes, many threads, two flushers: exact totals ---------------- */

struct shared_totals {
	_Atomic uint64_t reported[NDEV][NF];
	atomic_int bad_aggregates, flushes;
	atomic_int bumpers_left;
};

static struct shared_totals *totals;

static void dev_id(char *buf, size_t size, int d)
{
	snprintf(buf, size, "shared%d", d);
}

/* Take, check, add to the totals, commit. */
static bool flush_into_totals(void)
{
	struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();
	const uint64_t *diffs;

	if (!s)
		return false;
	if (!check_aggregate_is_sum(s))
		atomic_fetch_add(&totals->bad_aggregates, 1);
	diffs = pmem_metrics_snapshot_diffs(s);
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++) {
		int d;

		if (sscanf(pmem_metrics_snapshot_id(s, i), "shared%d", &d) != 1 || d < 0 || d >= NDEV)
			continue;
		for (size_t f = 0; f < NF; f++)
			atomic_fetch_add(&totals->reported[d][f], diffs[i * NF + f]);
	}
	pmem_metrics_snapshot_commit(s);
	atomic_fetch_add(&totals->flushes, 1);
	return true;
}

static void *bump_thread(void *arg)
{
	int t = (int)(intptr_t)arg;
	struct pmem_metrics *dev[NDEV];
	char id[32];

	for (int d = 0; d < NDEV; d++) {
		dev_id(id, sizeof(id), d);
		dev[d] = pmem_metrics_alloc(id);
		if (!dev[d])
			return (void *)1;
	}
	for (int i = 0; i < ITERS; i++)
		pmem_metrics_inc(pmem_metrics_field(dev[(i + t) % NDEV], (size_t)(i / NDEV) % NF));
	return NULL;
}

static bool bump_and_flush(const void *arg)
{
	int p = *(const int *)arg;
	pthread_t t[NTHREAD];
	bool ok = pmem_metrics_attach(seg_path("shared"), 64) == 0;

	for (int i = 0; ok && i < NTHREAD; i++)
		pthread_create(&t[i], NULL, bump_thread, (void *)(intptr_t)(p * NTHREAD + i));
	for (int i = 0; ok && i < NTHREAD; i++) {
		void *r;

		pthread_join(t[i], &r);
		ok = ok && r == NULL;
	}
	atomic_fetch_sub(&totals->bumpers_left, 1);
	/* Two of the processes flush, concurrently, until every bumper is done. */
	while (ok && p < 2 && atomic_load(&totals->bumpers_left) > 0)
		ok = flush_into_totals();
	return ok && pmem_metrics_is_shared();
}

static bool final_flush(const void *arg)
{
	(void)arg;
	return pmem_metrics_attach(seg_path("shared"), 0) == 0 && flush_into_totals();
}

static void test_processes_share_counters_and_flush_exactly_once(void)
{
	pid_t pid[NPROC];
	int status, arg[NPROC];

	atomic_store(&totals->bumpers_left, NPROC);
	for (int p = 0; p < NPROC; p++) {
		arg[p] = p;
		pid[p] = fork();
		if (pid[p] == 0)
			_exit(bump_and_flush(&arg[p]) ? 0 : 1);
	}
	for (int p = 0; p < NPROC; p++)
		CHECK(waitpid(pid[p], &status, 0) == pid[p] && WIFEXITED(status) &&
		      WEXITSTATUS(status) == 0);
	CHECK(in_child(final_flush, NULL) == 0);
	for (int d = 0; d < NDEV; d++) {
		for (int f = 0; f < NF; f++) {
			uint64_t want = 0;

			for (int t = 0; t < NPROC * NTHREAD; t++)
				for (int i = 0; i < ITERS; i++)
					want += (i + t) % NDEV == d && (i / NDEV) % NF == f;
			CHECK(atomic_load(&totals->reported[d][f]) == want);
		}
	}
	CHECK(atomic_load(&totals->bad_aggregates) == 0);
	printf("# %d flushes across processes\n", atomic_load(&totals->flushes));
}

/* ---- fork, capacity, attach rules ------------------------------------------------ */

static bool child_counts_in_the_same_counters(const void *arg)
{
	struct pmem_metrics *m;
	pid_t pid;
	int status;

	(void)arg;
	if (pmem_metrics_attach(seg_path("fork"), 8) != 0 || !(m = pmem_metrics_alloc("forked")))
		return false;
	pid = fork();
	if (pid == 0) {
		pmem_metrics_add(&m->cfg_fails, 5);
		pmem_metrics_inc(&pmem_metrics_alloc("forked")->cfg_fails);
		_exit(pmem_metrics_is_shared() ? 0 : 1);
	}
	return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
	       pmem_metrics_count(&m->cfg_fails) == 6;
}

static void test_a_forked_child_stays_attached(void)
{
	CHECK(in_child(child_counts_in_the_same_counters, NULL) == 0);
}

static bool fill_a_small_segment(const void *arg)
{
	struct pmem_metrics_snapshot *s = NULL;
	bool ok;

	(void)arg;
	ok = pmem_metrics_attach(seg_path("small"), 2) == 0;
	ok = ok && pmem_metrics_alloc("a") && pmem_metrics_alloc("b");
	errno = 0;
	ok = ok && !pmem_metrics_alloc("c") && errno == ENOSPC;
	ok = ok && pmem_metrics_alloc("a") && pmem_metrics_device_count() == 2; /* the rest works */
	ok = ok && pmem_metrics_snapshot_take_into(&s, 0) == 0 && pmem_metrics_snapshot_len(s) == 2;
	pmem_metrics_snapshot_commit(s);
	errno = 0;
	ok = ok && pmem_metrics_attach(seg_path("other"), 0) == -1 && errno == EBUSY;
	return ok;
}

static bool attach_after_alloc(const void *arg)
{
	(void)arg;
	errno = 0;
	return pmem_metrics_alloc("private") && pmem_metrics_attach(seg_path("late"), 0) == -1 &&
	       errno == EBUSY && !pmem_metrics_is_shared();
}

static void test_capacity_and_when_to_attach(void)
{
	CHECK(in_child(fill_a_small_segment, NULL) == 0);
	CHECK(in_child(attach_after_alloc, NULL) == 0);
}

/* ---- Files that are not our segment ------------------------------------------------ */

struct refusal {
	const char *name;
	int err;
};

static bool attach_is_refused(const void *arg)
{
	const struct refusal *r = arg;

	errno = 0;
	if (pmem_metrics_attach(seg_path(r->name), 0) != -1 || errno != r->err) {
		fprintf(stderr, "%s: errno %d, wanted %d\n", r->name, errno, r->err);
		return false;
	}
	return pmem_metrics_alloc("still-private") != NULL && !pmem_metrics_is_shared();
}

static bool make_segment(const void *arg)
{
	return pmem_metrics_attach(seg_path(arg), 4) == 0 && pmem_metrics_alloc("one") &&
	       pmem_metrics_alloc("two");
}

/* A copy of a good segment, with `len` bytes at `offset` overwritten. */
static void spoilt_copy(const char *name, off_t offset, const void *bytes, size_t len)
{
	char buf[1 << 16];
	int in = open(seg_path("good"), O_RDONLY), out;
	ssize_t n;

	out = open(seg_path(name), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		CHECK(write(out, buf, (size_t)n) == n);
	if (len)
		CHECK(pwrite(out, bytes, len, offset) == (ssize_t)len);
	close(in);
	close(out);
}

/* An index that names no device is not followed: it is sorted around, then rebuilt. */
static bool a_corrupt_index_is_rebuilt(const void *arg)
{
	struct pmem_metrics_snapshot *s = NULL;

	(void)arg;
	if (pmem_metrics_attach(seg_path("badindex"), 0) != 0)
		return false;
	if (pmem_metrics_snapshot_take_into(&s, 0) != 0 || pmem_metrics_snapshot_len(s) != 2 ||
	    strcmp(pmem_metrics_snapshot_id(s, 0), "one") || strcmp(pmem_metrics_snapshot_id(s, 1), "two"))
		return false;
	pmem_metrics_snapshot_commit(s);
	return pmem_metrics_alloc("three") && pmem_metrics_device_count() == 3;
}

/* A device count beyond the capacity is refused by readers, and rebuilt by the next insert. */
static bool impossible_counts_are_rebuilt(const void *arg)
{
	(void)arg;
	if (pmem_metrics_attach(seg_path("badcount"), 0) != 0)
		return false;
	errno = 0;
	return pmem_metrics_device_count() == 0 && errno == EBADMSG && pmem_metrics_alloc("three") &&
	       pmem_metrics_device_count() == 3;
}

static void test_files_that_are_not_a_good_segment_are_refused(void)
{
	/* The header's layout, as the library says it writes it (checked by the cases below). */
	const off_t version = pmem_metrics_segment_offset("header.version");
	const off_t index_off = pmem_metrics_segment_offset("header.index_off");
	const off_t counts = pmem_metrics_segment_offset("header.used");
	uint64_t index_at = 0, fields_at = 0, huge = 1000;
	uint32_t bad_slot = 0xffffffffu, v1 = 1;
	char junk[8192];
	int fd;

	CHECK(in_child(make_segment, "good") == 0);
	CHECK(symlink(seg_path("good"), seg_path("link")) == 0);
	CHECK(mkdir(seg_path("dir"), 0700) == 0);
	fd = open(seg_path("empty"), O_WRONLY | O_CREAT, 0600);
	close(fd);
	memset(junk, 'x', sizeof(junk));
	fd = open(seg_path("junk"), O_WRONLY | O_CREAT, 0600);
	CHECK(write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk));
	close(fd);
	spoilt_copy("version", version, &v1, sizeof(v1));
	spoilt_copy("truncated", 0, NULL, 0);
	CHECK(truncate(seg_path("truncated"), 4096) == 0);
	fd = open(seg_path("good"), O_RDONLY);
	CHECK(pread(fd, &index_at, sizeof(index_at), index_off) == (ssize_t)sizeof(index_at));
	CHECK(pread(fd, &fields_at, sizeof(fields_at),
		    pmem_metrics_segment_offset("header.fields_off")) == (ssize_t)sizeof(fields_at));
	close(fd);
	spoilt_copy("fields", (off_t)fields_at, "xxxxxxxx", 8); /* a field's name */
	spoilt_copy("badindex", (off_t)index_at, &bad_slot, sizeof(bad_slot));
	spoilt_copy("badcount", counts, &huge, sizeof(huge));

	static const struct refusal refused[] = {
		{"link", ELOOP},      {"dir", EISDIR},   {"empty", EBADMSG}, {"junk", EINVAL},
		{"version", EPROTO},  {"fields", EPROTO}, {"truncated", EBADMSG},
	};
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		CHECK(in_child(attach_is_refused, &refused[i]) == 0);
	CHECK(in_child(a_corrupt_index_is_rebuilt, NULL) == 0);
	CHECK(in_child(impossible_counts_are_rebuilt, NULL) == 0);
}

/* ---- Permissions ------------------------------------------------------------- */

static bool another_user_is_refused(const void *arg)
{
	(void)arg;
	if (setgid(65534) != 0 || setuid(65534) != 0)
		return false;
	errno = 0;
	return pmem_metrics_attach(seg_path("good"), 0) == -1 && errno == EACCES;
}

/* A mode others may write is refused before anything is made, unless trusted; and refused on opening. */
static bool a_mode_for_all_is_refused_unless_trusted(const void *arg)
{
	struct pmem_metrics_registry *r;
	struct stat st;

	(void)arg;
	errno = 0;
	if (pmem_metrics_attach_mode(seg_path("for-all"), 0, 0666) != -1 || errno != EINVAL ||
	    lstat(seg_path("for-all"), &st) != -1 || errno != ENOENT)
		return false;
	errno = 0;
	if (pmem_metrics_registry_open(seg_path("for-all"), 0, 0600 | 0066) != NULL || errno != EINVAL)
		return false;
	r = pmem_metrics_registry_open_flags(seg_path("for-all"), 0, 0666, PMEM_METRICS_OPEN_TRUST);
	if (!r || stat(seg_path("for-all"), &st) != 0 || (st.st_mode & 0777) != 0666)
		return false;
	errno = 0; /* made, and now refused to those who do not say they trust it */
	return pmem_metrics_registry_open(seg_path("for-all"), 0, 0600) == NULL && errno == EPERM &&
	       pmem_metrics_registry_open_flags(seg_path("for-all"), 0, 0600,
						PMEM_METRICS_OPEN_TRUST) == r;
}

static void test_a_segment_is_the_creators_alone(void)
{
	struct stat st;

	CHECK(in_child(a_mode_for_all_is_refused_unless_trusted, NULL) == 0);
	CHECK(stat(seg_path("good"), &st) == 0 && (st.st_mode & 0777) == 0600);
	if (geteuid() == 0) /* as root, become someone else; as anyone else, root would pass */
		CHECK(in_child(another_user_is_refused, NULL) == 0);
}

/* ---- A process killed at any step ------------------------------------------------ */

static const char *kill_at;

static void kill_me(const char *where)
{
	if (kill_at && strcmp(where, kill_at) == 0)
		kill(getpid(), SIGKILL);
}

static bool die_inside(const void *arg)
{
	struct pmem_metrics_snapshot *s = NULL;

	kill_at = arg;
	if (pmem_metrics_attach(seg_path("crash"), 16) != 0 || !pmem_metrics_alloc("before"))
		return false;
	pmem_metrics_add(&pmem_metrics_alloc("before")->event_fails, 3);
	pmem_metrics_fault_pause_hook(kill_me);
	if (strcmp(kill_at, "insert") == 0)
		pmem_metrics_alloc("dying");
	else if (pmem_metrics_snapshot_take_into(&s, -1) == 0)
		pmem_metrics_snapshot_commit(s);
	return false; /* not reached: killed */
}

static bool carry_on_after_a_death(const void *arg)
{
	struct pmem_metrics_snapshot *s = NULL;
	struct pmem_metrics *m;
	uint64_t deaths = *(const uint64_t *)arg;
	bool ok;

	ok = pmem_metrics_attach(seg_path("crash"), 0) == 0 && (m = pmem_metrics_alloc("after"));
	/* Neither the registry mutex nor the flush mutex is left wedged. */
	ok = ok && pmem_metrics_snapshot_take_into(&s, 5000) == 0 && check_aggregate_is_sum(s);
	pmem_metrics_snapshot_commit(s);
	/* Nothing counted was lost: "before" holds 3 per death (flushed or still pending). */
	m = pmem_metrics_alloc("before");
	ok = ok && m && pmem_metrics_count(&m->event_fails) == 3 * deaths;
	return ok;
}

static void test_a_process_killed_at_each_step_wedges_nobody(void)
{
	static const char *const steps[] = {"insert", "take", "copy", "claim", "commit"};

	for (uint64_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		uint64_t deaths = i + 1;

		CHECK(in_child(die_inside, steps[i]) == 128 + SIGKILL);
		CHECK(in_child(carry_on_after_a_death, &deaths) == 0);
	}
}

/* ---- Registries as objects: several segments in one process ----------------------- */

static bool several_registries(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *a, *b, *def = pmem_metrics_registry_default();
	struct pmem_metrics *da, *db, *dd;
	struct pmem_metrics_snapshot *s = NULL, *s2 = NULL;
	char twin[160];

	(void)arg;
	a = pmem_metrics_registry_open(seg_path("reg-a"), 16, 0600);
	b = pmem_metrics_registry_open(seg_path("reg-b"), 0, 0600);
	CHECK(a && b && a != b && a != def && b != def);
	if (!a || !b)
		return false;
	CHECK(pmem_metrics_registry_is_shared(a) && pmem_metrics_registry_is_shared(b));
	CHECK(!pmem_metrics_registry_is_shared(def) && !pmem_metrics_is_shared());
	CHECK(pmem_metrics_registry_capacity(a) == 16);
	CHECK(pmem_metrics_registry_capacity(b) == PMEM_METRICS_SHM_DEFAULT_CAPACITY);
	CHECK(pmem_metrics_registry_capacity(def) == 0);

	/* The same segment, by another name, is the same registry. */
	snprintf(twin, sizeof(twin), "%s/reg-a-twin", dir);
	CHECK(link(seg_path("reg-a"), twin) == 0);
	CHECK(pmem_metrics_registry_open(twin, 0, 0600) == a);
	CHECK(pmem_metrics_registry_open(seg_path("reg-a"), 99, 0600) == a);

	/* One id, three registries, three sets of counters. */
	da = pmem_metrics_registry_alloc(a, "x");
	db = pmem_metrics_registry_alloc_len(b, "xyz", 1);
	dd = pmem_metrics_alloc("x");
	CHECK(da && db && dd && da != db && db != dd && da != dd);
	if (!da || !db || !dd)
		return false;
	CHECK(pmem_metrics_registry_alloc(a, "x") == da && pmem_metrics_registry_alloc(def, "x") == dd);
	pmem_metrics_inc(&da->activate_fails);
	pmem_metrics_add(&db->activate_fails, 2);
	pmem_metrics_add(&dd->activate_fails, 3);
	CHECK(pmem_metrics_registry_device_count(a) == 1 && pmem_metrics_registry_device_count(b) == 1);
	CHECK(pmem_metrics_device_count() == 1);

	/* One open flush per thread, in any registry; a peek is not a flush. */
	CHECK(pmem_metrics_registry_snapshot_take_into(a, &s, 0) == 0 && s);
	CHECK(pmem_metrics_snapshot_len(s) == 1 && pmem_metrics_snapshot_diffs(s)[0] == 1);
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_take_into(b, &s2, 0) == -1 && errno == EDEADLK && !s2);
	errno = 0;
	CHECK(pmem_metrics_snapshot_take_into(&s2, 0) == -1 && errno == EDEADLK);
	CHECK(pmem_metrics_registry_snapshot_peek_into(b, &s2, 0) == 0 &&
	      pmem_metrics_snapshot_counts(s2)[0] == 2);
	pmem_metrics_snapshot_free(s2);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_fetch_diff(&da->activate_fails) == 0);
	CHECK(pmem_metrics_fetch_diff(&db->activate_fails) == 2);
	CHECK(pmem_metrics_fetch_diff(&dd->activate_fails) == 3);
	s = pmem_metrics_registry_snapshot_peek(b);
	CHECK(s && pmem_metrics_snapshot_len(s) == 1 && strcmp(pmem_metrics_snapshot_id(s, 0), "x") == 0);
	pmem_metrics_snapshot_free(s);
	s = pmem_metrics_snapshot_take(); /* the default registry: its own flush */
	CHECK(s && pmem_metrics_snapshot_diffs(s)[0] == 3);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_fetch_diff(&db->activate_fails) == 2);

	/* Bad arguments and a NULL registry change nothing. */
	errno = 0;
	CHECK(!pmem_metrics_registry_alloc(NULL, "x") && errno == EINVAL);
	errno = 0;
	CHECK(!pmem_metrics_registry_snapshot_take(NULL) && errno == EINVAL);
	errno = 0;
	CHECK(!pmem_metrics_registry_snapshot_peek(NULL) && errno == EINVAL);
	CHECK(pmem_metrics_registry_device_count(NULL) == 0 && pmem_metrics_registry_capacity(NULL) == 0);
	CHECK(!pmem_metrics_registry_is_shared(NULL));
	errno = 0;
	CHECK(!pmem_metrics_registry_alloc(a, "") && errno == EINVAL);
	errno = 0;
	CHECK(!pmem_metrics_registry_open("", 0, 0600) && errno == EINVAL);
	errno = 0;
	CHECK(!pmem_metrics_registry_open(seg_path("reg-c"), 0, 01777) && errno == EINVAL);
	errno = 0;
	CHECK(!pmem_metrics_registry_open(seg_path("reg-c"), (size_t)1 << 30, 0600) && errno == EINVAL);
	errno = 0;
	CHECK(!pmem_metrics_registry_open(dir, 0, 0600) && errno == EISDIR);
	CHECK(pmem_metrics_registry_device_count(a) == 1);
	for (int i = 0; i < 15; i++) {
		char id[16];

		snprintf(id, sizeof(id), "fill%d", i);
		CHECK(pmem_metrics_registry_alloc(a, id) != NULL);
	}
	errno = 0;
	CHECK(!pmem_metrics_registry_alloc(a, "one-too-many") && errno == ENOSPC);
	CHECK(pmem_metrics_registry_alloc(b, "one-too-many") != NULL); /* b is not full */
	return check_failures == before;
}

/* Another process attached to reg-a as its default: opening it again gives the default. */
static bool open_what_is_attached(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics *m;

	(void)arg;
	CHECK(pmem_metrics_attach(seg_path("reg-a"), 0) == 0);
	CHECK(pmem_metrics_registry_open(seg_path("reg-a"), 0, 0600) == pmem_metrics_registry_default());
	m = pmem_metrics_alloc("x");
	CHECK(m && pmem_metrics_count(&m->activate_fails) == 1); /* what several_registries() added */
	return check_failures == before;
}

/*
 * A flush of a segment open when the process forks is its parent's to
 * finish; it holds no flush lock while open (its claim does), so the child
 * can flush meanwhile, and reports none of what the parent's flush took.
 */
static bool fork_with_a_flush_open(const void *arg)
{
	int before = check_failures, status;
	struct pmem_metrics_registry *a = pmem_metrics_registry_open(seg_path("reg-a"), 0, 0600);
	struct pmem_metrics_snapshot *s = NULL;
	struct pmem_metrics *m;
	pid_t pid;

	(void)arg;
	CHECK(a && (m = pmem_metrics_registry_alloc(a, "x")));
	pmem_metrics_add(&m->cfg_fails, 5);
	CHECK(pmem_metrics_registry_snapshot_take_into(a, &s, 0) == 0);
	pid = fork();
	if (pid == 0) {
		struct pmem_metrics_snapshot *c = NULL;
		bool ok;

		/* Not this thread's any more (no EDEADLK), and nothing of it is reported twice. */
		ok = pmem_metrics_registry_snapshot_take_into(a, &c, 0) == 0 &&
		     pmem_metrics_snapshot_diffs(c)[1] == 0;
		pmem_metrics_snapshot_commit(c);
		c = NULL;
		ok = ok && pmem_metrics_snapshot_take_into(&c, 0) == 0; /* the private default is free */
		pmem_metrics_snapshot_commit(c);
		pmem_metrics_add(&pmem_metrics_registry_alloc(a, "x")->cfg_fails, 7);
		_exit(ok ? 0 : 1);
	}
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_fetch_diff(&m->cfg_fails) == 7);
	return check_failures == before;
}

/* Opened first, then attached: refused, or the process would have two registries of one segment. */
static bool attach_what_is_open(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *a = pmem_metrics_registry_open(seg_path("reg-a"), 0, 0600);

	(void)arg;
	errno = 0;
	CHECK(a && pmem_metrics_attach(seg_path("reg-a"), 0) == -1 && errno == EBUSY);
	CHECK(!pmem_metrics_is_shared() && pmem_metrics_alloc("still-private") != NULL);
	CHECK(pmem_metrics_attach(seg_path("reg-b"), 0) == -1 && errno == EBUSY); /* devices exist */
	return check_failures == before;
}

/* PMEM_METRICS_SHM attaches before a registry is opened, so opening its segment gives the default. */
static bool open_what_the_environment_attaches(const void *arg)
{
	int before = check_failures;

	(void)arg;
	setenv("PMEM_METRICS_SHM", seg_path("reg-a"), 1);
	CHECK(pmem_metrics_registry_open(seg_path("reg-a"), 0, 0600) == pmem_metrics_registry_default());
	CHECK(pmem_metrics_is_shared());
	return check_failures == before;
}

static void test_a_process_can_hold_several_registries(void)
{
	CHECK(in_child(several_registries, NULL) == 0);
	CHECK(in_child(open_what_is_attached, NULL) == 0);
	CHECK(in_child(attach_what_is_open, NULL) == 0);
	CHECK(in_child(open_what_the_environment_attaches, NULL) == 0);
	CHECK(in_child(fork_with_a_flush_open, NULL) == 0);
}

/* ---- Devices that come and go ------------------------------------------------------- */

/* One flush of `r`: the sum of field `f` over every device it reported; -1 if the take fails. */
static int64_t flush_sum(struct pmem_metrics_registry *r, size_t f, const char *only, int64_t *one)
{
	struct pmem_metrics_snapshot *s = pmem_metrics_registry_snapshot_take(r);
	int64_t sum = 0;

	if (!s)
		return -1;
	if (one)
		*one = -1;
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++) {
		sum += (int64_t)pmem_metrics_snapshot_diffs(s)[i * NF + f];
		if (one && only && strcmp(pmem_metrics_snapshot_id(s, i), only) == 0)
			*one = (int64_t)pmem_metrics_snapshot_diffs(s)[i * NF + f];
	}
	pmem_metrics_snapshot_commit(s);
	return sum;
}

/* A peek of `r` carries the room pmem_metrics_registry_stats() gives, read with its counts. */
static bool peek_stats_agree(struct pmem_metrics_registry *r)
{
	struct pmem_metrics_registry_stats want, got;
	struct pmem_metrics_snapshot *s = pmem_metrics_registry_snapshot_peek(r);
	bool ok = s && pmem_metrics_registry_stats(r, &want) == 0 &&
		  pmem_metrics_snapshot_stats(s, &got) == 0 && got.capacity == want.capacity &&
		  got.devices == want.devices && got.retired == want.retired &&
		  got.alloc_failures == want.alloc_failures;

	pmem_metrics_snapshot_free(s);
	return ok;
}

static bool retire_and_reuse(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("churn1"), 2, 0600);
	struct pmem_metrics *a, *b, *c, *held;
	struct pmem_metrics_registry_stats st;
	int64_t one;

	(void)arg;
	a = r ? pmem_metrics_registry_alloc(r, "a") : NULL;
	b = r ? pmem_metrics_registry_alloc(r, "b") : NULL;
	CHECK(a && b);
	if (check_failures != before)
		return false;
	pmem_metrics_add(&a->cfg_fails, 3);
	errno = 0;
	CHECK(!pmem_metrics_registry_alloc(r, "c") && errno == ENOSPC); /* full of live devices */
	CHECK(pmem_metrics_registry_retire(r, "a", 1) == 0);
	errno = 0;
	CHECK(pmem_metrics_registry_retire(r, "a", 1) == -1 && errno == ENOENT);
	CHECK(pmem_metrics_registry_stats(r, &st) == 0 && st.capacity == 2 && st.devices == 1 &&
	      st.retired == 1 && st.alloc_failures == 1);
	CHECK(peek_stats_agree(r));
	CHECK(flush_sum(r, 1, "a", &one) == 3 && one == 3); /* the final delta */
	CHECK(flush_sum(r, 1, "a", &one) == 0 && one == -1); /* gone */
	CHECK(pmem_metrics_registry_device_count(r) == 1);
	/* Its slot is still referenced (`a`): no room yet (waited for), and writes there reach no one. */
	errno = 0;
	CHECK(!pmem_metrics_registry_alloc_within(r, "c", 1, 20) && errno == ETIMEDOUT);
	pmem_metrics_add(&a->cfg_fails, 1000);
	CHECK(flush_sum(r, 1, NULL, NULL) == 0);
	held = a;
	pmem_metrics_release(held); /* the last reference: the slot can be reused */
	c = pmem_metrics_registry_alloc(r, "c");
	CHECK(c == a); /* the very slot, a new device from zero */
	CHECK(c && pmem_metrics_count(&c->cfg_fails) == 0);
	pmem_metrics_inc(&c->cfg_fails);
	CHECK(flush_sum(r, 1, "c", &one) == 1 && one == 1);
	/* Retired, then allocated again before its final flush: the same device. */
	pmem_metrics_add(&b->event_fails, 2);
	CHECK(pmem_metrics_registry_retire(r, "b", 1) == 0);
	CHECK(pmem_metrics_registry_alloc(r, "b") == b);
	pmem_metrics_add(&b->event_fails, 5);
	CHECK(flush_sum(r, 2, "b", &one) == 7 && one == 7);
	CHECK(flush_sum(r, 2, "b", &one) == 0 && one == 0); /* live */
	errno = 0;
	CHECK(pmem_metrics_registry_find(r, "a", 1) == NULL && errno == ENOENT);
	return check_failures == before;
}

/* Holds a reference to "x" of segment churn2 and waits to be killed. */
static bool hold_and_wait(const void *arg)
{
	const int *fds = arg;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("churn2"), 1, 0600);
	char c = 'h';

	if (!r || !pmem_metrics_registry_find(r, "x", 1))
		return false;
	if (write(fds[1], &c, 1) != 1)
		return false;
	pause();
	return true;
}

static bool a_killed_holder_gives_its_references_back(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("churn2"), 1, 0600);
	struct pmem_metrics *x = r ? pmem_metrics_registry_alloc(r, "x") : NULL;
	struct pmem_metrics_registry_stats st;
	int fds[2];
	pid_t pid;
	char c;

	(void)arg;
	CHECK(x && pipe(fds) == 0);
	if (check_failures != before)
		return false;
	pid = fork();
	if (pid == 0)
		_exit(hold_and_wait(fds) ? 0 : 1);
	CHECK(read(fds[0], &c, 1) == 1);
	pmem_metrics_release(x);
	CHECK(pmem_metrics_registry_retire(r, "x", 1) == 0 && flush_sum(r, 0, NULL, NULL) == 0);
	errno = 0;
	CHECK(!pmem_metrics_registry_alloc_within(r, "y", 1, 20) && errno == ETIMEDOUT); /* held */
	CHECK(pmem_metrics_registry_stats(r, &st) == 0 && st.devices == 0 && st.retired == 1);
	CHECK(peek_stats_agree(r)); /* drained but held elsewhere: retired, not room */
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	CHECK(pmem_metrics_registry_stats(r, &st) == 0 && st.devices == 0 && st.retired == 0);
	CHECK(pmem_metrics_registry_alloc(r, "y") != NULL); /* the kernel let its lock go */
	close(fds[0]);
	close(fds[1]);
	return check_failures == before;
}

#define CHURNERS 3
#define CHURN_CYCLES 3000

struct churn {
	_Atomic uint64_t added, reported, withdrawn;
	atomic_int enospc, left;
};

static struct churn *churn;

static bool churner(const void *arg)
{
	int p = *(const int *)arg;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("churn3"), 64, 0600);
	bool ok = r != NULL;

	for (int i = 0; ok && i < CHURN_CYCLES; i++) {
		char id[32];
		struct pmem_metrics *m;

		snprintf(id, sizeof(id), "p%d-%d", p, i);
		m = pmem_metrics_registry_alloc(r, id);
		if (!m) {
			atomic_fetch_add(&churn->enospc, 1);
			fprintf(stderr, "churner %d: alloc %s: %s\n", p, id, strerror(errno));
			ok = false;
			break;
		}
		pmem_metrics_add(&m->queue_event_count, (uint64_t)(i % 7 + 1));
		atomic_fetch_add(&churn->added, (uint64_t)(i % 7 + 1));
		ok = pmem_metrics_registry_retire(r, id, strlen(id)) == 0;
		pmem_metrics_release(m);
	}
	atomic_fetch_sub(&churn->left, 1);
	return ok;
}

static bool churn_flusher(const void *arg)
{
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("churn3"), 64, 0600);
	struct timespec pause = {.tv_nsec = 2000000};

	(void)arg;
	while (r && atomic_load(&churn->left) > 0) {
		int64_t sum = flush_sum(r, 3, NULL, NULL);

		if (sum < 0)
			return false;
		atomic_fetch_add(&churn->reported, (uint64_t)sum);
		nanosleep(&pause, NULL);
	}
	for (int i = 0; r && i < 3; i++) /* the last final deltas, then nothing */
		atomic_fetch_add(&churn->reported, (uint64_t)flush_sum(r, 3, NULL, NULL));
	return r != NULL;
}

/*
 * A flusher whose lines never get out: each take's report is stuck a while
 * (a pipe nobody drains), then fails, and is withdrawn -- while the other
 * flusher reports, and drains, the devices it took -- and it tries again
 * at its next beat, as a periodic writer does.  (One that took again at
 * once, for ever, would hold on to the counts it keeps taking back, and to
 * the retired devices they are in: delayed, not lost.)  Bounded by the
 * churners' work: it stops when they do.
 */
static bool stalled_flusher(const void *arg)
{
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("churn3"), 64, 0600);
	struct timespec stuck = {.tv_nsec = 3000000};

	(void)arg;
	while (r && atomic_load(&churn->left) > 0) {
		struct pmem_metrics_snapshot *s = NULL;

		if (pmem_metrics_registry_snapshot_take_into(r, &s, 5000) != 0)
			return false;
		nanosleep(&stuck, NULL); /* the line, on its way */
		pmem_metrics_snapshot_withdraw(&s); /* and it failed */
		pmem_metrics_snapshot_dispose(&s);
		atomic_fetch_add(&churn->withdrawn, 1);
		nanosleep(&stuck, NULL); /* its next beat */
	}
	return r != NULL;
}

static void test_devices_come_and_go(void)
{
	pid_t pids[CHURNERS + 2];
	int ids[CHURNERS];
	struct pmem_metrics_registry_stats st;
	struct pmem_metrics_registry *r;

	CHECK(in_child(retire_and_reuse, NULL) == 0);
	CHECK(in_child(a_killed_holder_gives_its_references_back, NULL) == 0);

	/*
	 * Three processes plug and unplug through 64 slots while a fourth
	 * flushes and a fifth's flushes all fail after a while on their way.
	 */
	churn = mmap(NULL, sizeof(*churn), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(churn != MAP_FAILED);
	if (churn == MAP_FAILED)
		return;
	atomic_store(&churn->left, CHURNERS);
	fflush(stdout);
	for (int p = 0; p <= CHURNERS + 1; p++) {
		ids[p < CHURNERS ? p : 0] = p;
		pids[p] = fork();
		if (pids[p] == 0)
			_exit(p < CHURNERS    ? !churner(&p)
			      : p == CHURNERS ? !churn_flusher(NULL)
					      : !stalled_flusher(NULL));
	}
	for (int p = 0; p <= CHURNERS + 1; p++) {
		int status;

		CHECK(waitpid(pids[p], &status, 0) == pids[p] && WIFEXITED(status) &&
		      WEXITSTATUS(status) == 0);
	}
	(void)ids;
	CHECK(atomic_load(&churn->enospc) == 0);
	/*
	 * What the stalled flusher had taken when its last line failed is
	 * reported by the next flush: here, if it withdrew after the other's
	 * last (every process has exited: nothing is on its way any more).
	 */
	r = pmem_metrics_registry_open(seg_path("churn3"), 64, 0600);
	for (int i = 0; r && i < 3; i++)
		atomic_fetch_add(&churn->reported, (uint64_t)flush_sum(r, 3, NULL, NULL));
	CHECK(atomic_load(&churn->reported) == atomic_load(&churn->added));
	CHECK(r && pmem_metrics_registry_stats(r, &st) == 0 && st.devices == 0 &&
	      st.alloc_failures == 0);
	printf("# %d processes x %d plug/unplug cycles through 64 slots: %llu counted, %llu reported "
	       "(%llu flushes of a stalled flusher withdrawn meanwhile)\n",
	       CHURNERS, CHURN_CYCLES, (unsigned long long)atomic_load(&churn->added),
	       (unsigned long long)atomic_load(&churn->reported),
	       (unsigned long long)atomic_load(&churn->withdrawn));
	munmap(churn, sizeof(*churn));
}

/* ---- A process that ignores the locks ----------------------------------------------- */

/*
 * A buggy or hostile process may write the segment at any time, locks or
 * not.  It gets to spoil the numbers (that is what sharing means), never to
 * make another process read or write outside the segment or its own memory.
 * These cases play that process with a second mapping of the file.
 */
struct scribbler {
	char *base;          /* the file, mapped once more */
	uint64_t *used;      /* the header's device count */
	uint32_t *index;     /* the index */
	uint32_t *id_len[2]; /* the first two slots' id lengths */
	atomic_bool stop;
};

static struct scribbler scrib;

static bool scribbler_map(const char *path)
{
	const off_t index_off = pmem_metrics_segment_offset("header.index_off"); /* then slots_off */
	const size_t used_at = (size_t)pmem_metrics_segment_offset("header.used");
	const size_t id_len_at = (size_t)pmem_metrics_segment_offset("slot.id_len");
	uint64_t at[2], slot_size, size;
	int fd = open(path, O_RDWR);

	if (fd < 0 || pread(fd, at, sizeof(at), index_off) != (ssize_t)sizeof(at) ||
	    pread(fd, &slot_size, 8, pmem_metrics_segment_offset("header.slot_size")) != 8 ||
	    pread(fd, &size, 8, pmem_metrics_segment_offset("header.size")) != 8)
		return false;
	scrib.base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (scrib.base == MAP_FAILED)
		return false;
	scrib.used = (uint64_t *)(scrib.base + used_at);
	scrib.index = (uint32_t *)(scrib.base + at[0]);
	for (int i = 0; i < 2; i++)
		scrib.id_len[i] = (uint32_t *)(scrib.base + at[1] + i * slot_size + id_len_at);
	return true;
}

/* In the middle of a flush's copy: the count, the index and an id's length go wild. */
static void scribble_mid_copy(const char *where)
{
	if (strcmp(where, "copy") == 0) {
		*(volatile uint64_t *)scrib.used = UINT64_MAX;
		*(volatile uint32_t *)&scrib.index[1] = 0x7fffffffu;
		*(volatile uint32_t *)scrib.id_len[0] = 200;
	}
}

static void *scribble_all_the_time(void *arg)
{
	(void)arg;
	for (uint32_t i = 0; !atomic_load_explicit(&scrib.stop, memory_order_relaxed); i++) {
		*(volatile uint32_t *)scrib.id_len[i % 2] = i % 3 ? 1 : 250;
		*(volatile uint32_t *)&scrib.index[i % 2] = i % 5 ? i % 2 : 0xfffffff0u;
		*(volatile uint64_t *)scrib.used = i % 1000 ? 2 : UINT64_MAX / 2;
	}
	return NULL;
}

static bool readers_survive_a_scribbler(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("scribbled"), 4, 0600);
	struct pmem_metrics_snapshot *s = NULL;
	unsigned ok = 0, refused = 0;
	pthread_t t;

	(void)arg;
	CHECK(r && pmem_metrics_registry_alloc(r, "a") && pmem_metrics_registry_alloc(r, "b"));
	CHECK(scribbler_map(seg_path("scribbled")));
	if (check_failures != before)
		return false;

	/*
	 * Deterministic: everything at once, while a flush is copying.  What it
	 * had read stands (each value is read once); the next reader refuses
	 * the impossible count, and an insert rebuilds what it can.
	 */
	pmem_metrics_fault_pause_hook(scribble_mid_copy);
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 0) == 0 && pmem_metrics_snapshot_len(s) == 2);
	CHECK(s && strcmp(pmem_metrics_snapshot_id(s, 0), "a") == 0 &&
	      strcmp(pmem_metrics_snapshot_id(s, 1), "b") == 0);
	pmem_metrics_snapshot_commit(s);
	pmem_metrics_fault_pause_hook(NULL);
	s = NULL;
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == -1 && errno == EBADMSG && !s);
	*(volatile uint64_t *)scrib.used = 2;
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == -1 && errno == EBADMSG && !s);
	*(volatile uint32_t *)scrib.id_len[0] = 1;
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0 && pmem_metrics_snapshot_len(s) == 2);
	pmem_metrics_snapshot_free(s);

	/* Racing: lengths, index entries and counts flip while we look up, copy and insert. */
	pthread_create(&t, NULL, scribble_all_the_time, NULL);
	for (int i = 0; i < 20000; i++) {
		char id[16];

		s = NULL;
		if (pmem_metrics_registry_snapshot_peek_into(r, &s, -1) == 0) {
			for (size_t d = 0; d < pmem_metrics_snapshot_len(s); d++)
				CHECK(strlen(pmem_metrics_snapshot_id(s, d)) <= 4 * PMEM_METRICS_ID_MAX_CHARS);
			pmem_metrics_snapshot_free(s);
			ok++;
		} else {
			CHECK(errno == EBADMSG);
			refused++;
		}
		snprintf(id, sizeof(id), "n%d", i % 3);
		if (!pmem_metrics_registry_alloc(r, id))
			CHECK(errno == EBADMSG || errno == ENOSPC);
	}
	atomic_store(&scrib.stop, true);
	pthread_join(t, NULL);
	printf("# a scribbler racing 20000 peeks: %u went through, %u refused (EBADMSG)\n", ok,
	       refused);
	return check_failures == before;
}

/* ---- Looking an id up without creating it ------------------------------------------- */

struct inserter {
	struct pmem_metrics_registry *r;
	atomic_bool stop;
	int inserted;
};

/* Inserts new ids that sort before, among and after the ones looked up, so the index moves. */
static void *insert_new_ids(void *arg)
{
	struct inserter *in = arg;

	for (int i = 0; i < 3000 && !atomic_load(&in->stop); i++) {
		char id[16];

		snprintf(id, sizeof(id), "%c%04d", "akz"[i % 3], i);
		if (pmem_metrics_registry_alloc(in->r, id))
			in->inserted++;
	}
	return NULL;
}

static bool find_in_a_segment(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("find"), 4096, 0600);
	struct pmem_metrics_registry *ro;
	struct pmem_metrics *b, *m;
	struct inserter in = {.r = r};
	unsigned missed = 0;
	size_t n;
	pthread_t t;

	(void)arg;
	b = r ? pmem_metrics_registry_alloc(r, "b") : NULL;
	m = r ? pmem_metrics_registry_alloc(r, "m") : NULL;
	CHECK(b && m);
	if (check_failures != before)
		return false;
	n = pmem_metrics_registry_device_count(r);
	errno = 0;
	CHECK(pmem_metrics_registry_find(r, "c", 1) == NULL && errno == ENOENT);
	CHECK(pmem_metrics_registry_device_count(r) == n); /* nothing created */
	CHECK(pmem_metrics_registry_find(r, "b", 1) == b);

	/* Inserts moving the index under the lookups never make an id that is there go missing. */
	pthread_create(&t, NULL, insert_new_ids, &in);
	for (int i = 0; i < 200000 && in.inserted < 3000; i++) {
		missed += pmem_metrics_registry_find(r, "b", 1) != b;
		missed += pmem_metrics_registry_find(r, "m", 1) != m;
	}
	atomic_store(&in.stop, true);
	pthread_join(t, NULL);
	CHECK(missed == 0);
	CHECK(in.inserted > 0 && pmem_metrics_registry_find(r, "z0002", 5) != NULL);

	/* A scrambled index (another process's doing) still finds what is there. */
	CHECK(scribbler_map(seg_path("find")));
	if (check_failures != before)
		return false;
	scrib.index[0] = 0x7fffffffu; /* an entry that is no device */
	CHECK(pmem_metrics_registry_find(r, "m", 1) == m);
	*(volatile uint64_t *)scrib.used = UINT64_MAX; /* a count the segment cannot hold */
	errno = 0;
	CHECK(pmem_metrics_registry_find(r, "m", 1) == NULL && errno == EBADMSG);

	/* A segment for the read-only registry below, which has no mapping to point into. */
	ro = pmem_metrics_registry_open_flags(seg_path("find-ro"), 4, 0600, 0); /* read below */
	CHECK(ro && pmem_metrics_registry_alloc(ro, "x"));
	return check_failures == before;
}

static bool find_in_a_read_only_segment(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *ro;

	(void)arg;
	ro = pmem_metrics_registry_open_flags(seg_path("find-ro"), 0, 0600, PMEM_METRICS_OPEN_READONLY);
	CHECK(ro != NULL);
	errno = 0;
	CHECK(ro && pmem_metrics_registry_find(ro, "x", 1) == NULL && errno == EROFS);
	return check_failures == before;
}

static void test_find_looks_up_without_creating(void)
{
	CHECK(in_child(find_in_a_segment, NULL) == 0);
	CHECK(in_child(find_in_a_read_only_segment, NULL) == 0);
}

/* Numbers and ids that do not add up are refused, not reported; an id twice is one device. */
static bool ids_are_checked_not_trusted(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("badids"), 4, 0600);
	struct pmem_metrics *aa = r ? pmem_metrics_registry_alloc(r, "aa") : NULL;
	struct pmem_metrics *bb = r ? pmem_metrics_registry_alloc(r, "bb") : NULL;
	struct pmem_metrics_snapshot *s = NULL;
	char *id;

	(void)arg;
	CHECK(aa && bb && scribbler_map(seg_path("badids")));
	if (check_failures != before)
		return false;
	pmem_metrics_add(&aa->cfg_fails, 3);
	pmem_metrics_add(&bb->cfg_fails, 4);
	/* slot 0's id ("aa"): after id_len, state, refs, born, a pad and retired_ms */
	id = (char *)scrib.id_len[0] + 5 * sizeof(uint32_t) + sizeof(uint64_t);
	CHECK(memcmp(id, "aa", 3) == 0);

	*scrib.id_len[1] = 3; /* "bb\0": a NUL inside, as read */
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == -1 && errno == EBADMSG && !s);
	*scrib.id_len[1] = 2;
	memcpy(id, "bb", 2); /* one id in two slots: never two devices of one name */
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 0) == 0 && pmem_metrics_snapshot_len(s) == 1);
	CHECK(s && strcmp(pmem_metrics_snapshot_id(s, 0), "bb") == 0 &&
	      pmem_metrics_snapshot_diffs(s)[1] == 7 && pmem_metrics_snapshot_counts(s)[1] == 7);
	pmem_metrics_snapshot_commit(s); /* each slot moves by its own count */
	s = NULL;
	CHECK(pmem_metrics_fetch_diff(&aa->cfg_fails) == 0 && pmem_metrics_fetch_diff(&bb->cfg_fails) == 0);
	memcpy(id, "z", 2); /* "z\0": as read, "z"; its count would be reported as z's */
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == -1 && errno == EBADMSG && !s);
	memcpy(id, "\xff\xfe", 2); /* not UTF-8 */
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 0) == -1 && errno == EBADMSG && !s);
	memcpy(id, "aa", 2);
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0 && pmem_metrics_snapshot_len(s) == 2);
	pmem_metrics_snapshot_free(s);
	return check_failures == before;
}

static void test_a_process_ignoring_the_locks_cannot_crash_the_others(void)
{
	CHECK(in_child(readers_survive_a_scribbler, NULL) == 0);
	CHECK(in_child(ids_are_checked_not_trusted, NULL) == 0);
}

/* ---- A process stopped while it holds a lock ----------------------------------- */

static const char *stop_at;

static void stop_me(const char *where)
{
	if (strcmp(where, stop_at) == 0)
		raise(SIGSTOP);
}

/* A child stopped at `where`, in the middle of allocating "b" (insert) or of flushing (take). */
static pid_t stopped_child(struct pmem_metrics_registry *r, const char *where)
{
	int status;
	pid_t pid;

	stop_at = where;
	pid = fork();
	if (pid == 0) {
		struct pmem_metrics_snapshot *s = NULL;

		pmem_metrics_fault_pause_hook(stop_me);
		if (strcmp(where, "insert") == 0)
			_exit(pmem_metrics_registry_alloc(r, "b") ? 0 : 1);
		_exit(pmem_metrics_registry_snapshot_take_into(r, &s, -1) == 0 ? 0 : 1);
	}
	CHECK(waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status));
	return pid;
}

static bool others_wait_for_it_within_their_timeouts(const void *arg)
{
	int before = check_failures, status;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("stopped"), 0, 0600);
	struct pmem_metrics_snapshot *s = NULL;
	pid_t pid;

	(void)arg;
	CHECK(r && pmem_metrics_registry_alloc(r, "a"));

	/* Stopped half-way through an insert: readers and flushes take no insert lock. */
	pid = stopped_child(r, "insert");
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 100) == 0 && pmem_metrics_snapshot_len(s) == 1);
	pmem_metrics_snapshot_free(s);
	s = NULL;
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 100) == 0 && pmem_metrics_snapshot_len(s) == 1);
	pmem_metrics_snapshot_commit(s);
	s = NULL;
	CHECK(pmem_metrics_registry_alloc(r, "a") != NULL); /* found without the lock */
	errno = 0;
	CHECK(pmem_metrics_registry_alloc(r, "c") == NULL && errno == ETIMEDOUT); /* bounded */
	kill(pid, SIGCONT);
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(pmem_metrics_registry_alloc(r, "c") && pmem_metrics_registry_device_count(r) == 3);

	/* Stopped holding the flush lock: other flushes give up in time, peeks never wait. */
	pid = stopped_child(r, "take");
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 100) == -1 && errno == ETIMEDOUT && !s);
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0 && pmem_metrics_snapshot_len(s) == 3);
	pmem_metrics_snapshot_free(s);
	s = NULL;
	kill(pid, SIGKILL); /* dies holding it: the kernel releases it */
	CHECK(waitpid(pid, &status, 0) == pid && WIFSIGNALED(status));
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 1000) == 0 && pmem_metrics_snapshot_len(s) == 3);
	pmem_metrics_snapshot_commit(s);
	return check_failures == before;
}

static void test_a_stopped_process_holds_nobody_for_longer_than_they_wait(void)
{
	CHECK(in_child(others_wait_for_it_within_their_timeouts, NULL) == 0);
}

/* ---- Flushes whose reports are on their way ------------------------------------------ */

/*
 * A flush with its report on the way (taken, not yet published) holds no
 * lock: others flush meanwhile and report only what came after; killed
 * before it publishes, what it took is reported again by the next flush.
 */
static bool reports_on_their_way(const void *arg)
{
	int before = check_failures, status, out[2];
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("on-the-way"), 0, 0600);
	struct pmem_metrics_snapshot *s = NULL, *mine = NULL;
	struct pmem_metrics *m = r ? pmem_metrics_registry_alloc(r, "x") : NULL;
	char ready;
	pid_t pid, holders[4];

	(void)arg;
	CHECK(m && pipe(out) == 0);
	if (check_failures != before)
		return false;
	pmem_metrics_add(&m->cfg_fails, 5);
	pid = fork();
	if (pid == 0) { /* takes the 5, then hangs on to its report until it is killed */
		struct pmem_metrics_snapshot *c = NULL;

		if (pmem_metrics_registry_snapshot_take_into(r, &c, 0) != 0 ||
		    pmem_metrics_snapshot_diffs(c)[1] != 5 || write(out[1], "t", 1) != 1)
			_exit(1);
		pause();
		_exit(2);
	}
	CHECK(read(out[0], &ready, 1) == 1);
	pmem_metrics_add(&m->cfg_fails, 2);
	/* Not held up by the report on its way, nor reporting any of it. */
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 0) == 0 && pmem_metrics_snapshot_diffs(s)[1] == 2);
	pmem_metrics_snapshot_commit(s);
	s = NULL;
	kill(pid, SIGKILL); /* never delivered: the 5 must come back */
	CHECK(waitpid(pid, &status, 0) == pid && WIFSIGNALED(status));
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &s, 0) == 0 && pmem_metrics_snapshot_diffs(s)[1] == 5);
	pmem_metrics_snapshot_commit(s);
	s = NULL;
	CHECK(pmem_metrics_fetch_diff(&m->cfg_fails) == 0);

	/* One report on its way per claim record; one more flush holds the lock, as before. */
	for (int i = 0; i < 4; i++) {
		holders[i] = fork();
		if (holders[i] == 0) {
			struct pmem_metrics_snapshot *c = NULL;

			if (pmem_metrics_registry_snapshot_take_into(r, &c, 0) != 0 || write(out[1], "t", 1) != 1)
				_exit(1);
			pause();
			_exit(2);
		}
		CHECK(read(out[0], &ready, 1) == 1);
	}
	CHECK(pmem_metrics_registry_snapshot_take_into(r, &mine, 0) == 0); /* holds the flush lock */
	errno = 0;
	pid = fork();
	if (pid == 0) {
		struct pmem_metrics_snapshot *c = NULL;

		_exit(pmem_metrics_registry_snapshot_take_into(r, &c, 0) == -1 && errno == ETIMEDOUT ? 0 : 1);
	}
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	pmem_metrics_snapshot_commit(mine);
	for (int i = 0; i < 4; i++) {
		kill(holders[i], SIGKILL);
		CHECK(waitpid(holders[i], &status, 0) == holders[i] && WIFSIGNALED(status));
	}
	close(out[0]);
	close(out[1]);
	return check_failures == before;
}

static void test_a_report_on_its_way_holds_no_other_flush(void)
{
	CHECK(in_child(reports_on_their_way, NULL) == 0);
}

/* ---- What a segment costs ---------------------------------------------------------- */

/* The memory a file takes: its allocated blocks (a sparse file's holes take none). */
static long long file_bytes(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (long long)st.st_blocks * 512 : -1;
}

static bool small_segments(const void *arg)
{
	struct pmem_metrics_registry *small, *dflt;
	struct stat st;
	bool ok;

	(void)arg;
	/* A microVM's: 16 devices, everything (header, field list, index, claims) in 16 KiB. */
	small = pmem_metrics_registry_open(seg_path("sixteen"), 16, 0600);
	for (int i = 0; small && i < 16; i++) {
		char id[16];

		snprintf(id, sizeof(id), "pmem%d", i);
		if (!pmem_metrics_registry_alloc(small, id))
			return false;
	}
	ok = small && stat(seg_path("sixteen"), &st) == 0 && st.st_size <= 16384 &&
	     file_bytes(seg_path("sixteen")) <= 16384;
	printf("# 16 devices: a %lld-byte file, %lld bytes allocated\n", (long long)st.st_size,
	       file_bytes(seg_path("sixteen")));
	/* Opened without a capacity (the default's room), holding 4 devices: 64 KiB at most. */
	dflt = pmem_metrics_registry_open(seg_path("default"), 0, 0600);
	for (int i = 0; dflt && i < 4; i++) {
		char id[16];
		struct pmem_metrics_snapshot *s = NULL;

		snprintf(id, sizeof(id), "pmem%d", i);
		if (!pmem_metrics_registry_alloc(dflt, id))
			return false;
		/* Flushes too: their claims take room of their own. */
		if (pmem_metrics_registry_snapshot_take_into(dflt, &s, -1) != 0)
			return false;
		pmem_metrics_snapshot_commit(s);
	}
	printf("# the default capacity (%zu), 4 devices: %lld bytes allocated\n",
	       pmem_metrics_registry_capacity(dflt), file_bytes(seg_path("default")));
	return ok && dflt && pmem_metrics_registry_capacity(dflt) == PMEM_METRICS_SHM_DEFAULT_CAPACITY &&
	       file_bytes(seg_path("default")) > 0 && file_bytes(seg_path("default")) <= 65536;
}

static void test_a_segment_costs_what_its_devices_use(void)
{
	CHECK(in_child(small_segments, NULL) == 0);
}

/* ---- Closing a registry -------------------------------------------------------------- */

/* Open descriptors of this process. */
static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n - 3; /* ".", ".." and the directory's own */
}

static bool close_and_reopen(const void *arg)
{
	struct pmem_metrics_registry *r, *again, *ro;
	struct pmem_metrics_snapshot *s = NULL;
	struct pmem_metrics *m;
	int before = open_fds(), failures = check_failures;
	size_t len;

	(void)arg;
	r = pmem_metrics_registry_open(seg_path("closing"), 8, 0600);
	again = pmem_metrics_registry_open(seg_path("closing"), 8, 0600);
	CHECK(r && r == again);
	m = pmem_metrics_registry_alloc(r, "held");
	CHECK(m != NULL);
	pmem_metrics_add(&m->cfg_fails, 5);
	CHECK(pmem_metrics_registry_close(r) == 0); /* one of two opens */
	CHECK(pmem_metrics_registry_close(r) == -1 && errno == EBUSY); /* "held" still held */
	CHECK(pmem_metrics_registry_device_count(r) == 1); /* so it is still there */
	pmem_metrics_release(m);
	CHECK(pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0);
	CHECK(pmem_metrics_registry_close(r) == 0); /* the last: its files and memory go */
	CHECK(open_fds() == before);
	/* A peek taken before stays readable (ASan would see a use after the free). */
	CHECK(pmem_metrics_snapshot_len(s) == 1 && pmem_metrics_snapshot_counts(s)[1] == 5);
	CHECK(pmem_metrics_snapshot_fields(s, &len) != NULL && len > 0);
	pmem_metrics_snapshot_free(s);
	CHECK(pmem_metrics_registry_close(pmem_metrics_registry_default()) == -1 && errno == EINVAL);
	/* Removed and made again, a thousand times, opened and closed each time: nothing piles up. */
	for (int i = 0; i < 1000 && check_failures == failures; i++) {
		char lock[160];

		r = pmem_metrics_registry_open(seg_path("vm"), 4, 0600);
		ro = pmem_metrics_registry_open_flags(seg_path("vm"), 0, 0600, PMEM_METRICS_OPEN_READONLY);
		CHECK(r && ro && ro == r); /* the same file: one registry */
		CHECK(r && (m = pmem_metrics_registry_alloc(r, "d")) != NULL);
		if (m)
			pmem_metrics_release(m);
		CHECK(pmem_metrics_registry_close(ro) == 0 && pmem_metrics_registry_close(r) == 0);
		snprintf(lock, sizeof(lock), "%s.lock", seg_path("vm"));
		CHECK(unlink(seg_path("vm")) == 0 && unlink(lock) == 0);
	}
	CHECK(open_fds() == before);
	return check_failures == failures;
}

/*
 * A read-only peek (pread(), no mapping) carries the room the writer saw:
 * two live devices, one retired, one allocation refused.
 */
static bool room_read_only(const void *arg)
{
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("room"), 3, 0600);
	struct pmem_metrics *m[3] = {NULL, NULL, NULL};
	struct pmem_metrics_registry_stats want = {0}, got = {0};
	struct pmem_metrics_snapshot *s = NULL;
	int failures = check_failures;

	(void)arg;
	for (int i = 0; r && i < 3; i++)
		m[i] = pmem_metrics_registry_alloc(r, (const char *[]){"a", "b", "c"}[i]);
	CHECK(m[0] && m[1] && m[2] && !pmem_metrics_registry_alloc(r, "d"));
	CHECK(r && pmem_metrics_registry_retire(r, "b", 1) == 0);
	CHECK(r && peek_stats_agree(r) && pmem_metrics_registry_stats(r, &want) == 0);
	s = r ? pmem_metrics_registry_snapshot_take(r) : NULL; /* a flush reads no room */
	errno = 0;
	CHECK(s && pmem_metrics_snapshot_stats(s, &got) == -1 && errno == EINVAL);
	pmem_metrics_snapshot_abort(s);
	s = NULL;
	for (int i = 0; i < 3; i++)
		if (m[i])
			pmem_metrics_release(m[i]);
	CHECK(r && pmem_metrics_registry_close(r) == 0);
	r = pmem_metrics_registry_open_flags(seg_path("room"), 0, 0600, PMEM_METRICS_OPEN_READONLY);
	CHECK(r && pmem_metrics_registry_snapshot_peek_into(r, &s, 0) == 0);
	CHECK(s && pmem_metrics_snapshot_stats(s, &got) == 0);
	CHECK(want.capacity == 3 && want.devices == 2 && want.retired == 1 &&
	      want.alloc_failures == 1);
	CHECK(got.capacity == want.capacity && got.devices == want.devices &&
	      got.retired == want.retired && got.alloc_failures == want.alloc_failures);
	pmem_metrics_snapshot_free(s);
	s = pmem_metrics_snapshot_peek(); /* the private registry's: no room to give */
	errno = 0;
	CHECK(s && pmem_metrics_snapshot_stats(s, &got) == -1 && errno == EINVAL);
	pmem_metrics_snapshot_free(s);
	CHECK(r && pmem_metrics_registry_close(r) == 0);
	return check_failures == failures;
}

/*
 * Hundreds of segments open at once (the tables that find them grow): each
 * found again by an open of its file, closed in another order than opened,
 * and a second close of any of them refused.
 */
static bool many_open_at_once(const void *arg)
{
	enum { MANY = 300 };
	static struct pmem_metrics_registry *r[MANY];
	int before = open_fds(), failures = check_failures;
	char name[32];

	(void)arg;
	for (int i = 0; i < MANY; i++) {
		snprintf(name, sizeof(name), "many%d", i);
		r[i] = pmem_metrics_registry_open(seg_path(name), 1, 0600);
		CHECK(r[i] != NULL);
	}
	for (int i = 0; i < MANY; i++) {
		snprintf(name, sizeof(name), "many%d", i);
		CHECK(pmem_metrics_registry_open_flags(seg_path(name), 0, 0600,
						       PMEM_METRICS_OPEN_READONLY) == r[i]);
	}
	for (int k = 0; k < MANY; k++) {
		int i = (k * 7) % MANY; /* 7 and 300 are coprime: each once */

		CHECK(pmem_metrics_registry_close(r[i]) == 0 && pmem_metrics_registry_close(r[i]) == 0);
		errno = 0;
		if (k % 50 == 0)
			CHECK(pmem_metrics_registry_close(r[i]) == -1 && errno == EINVAL);
		snprintf(name, sizeof(name), "many%d", i);
		unlink(seg_path(name));
		snprintf(name, sizeof(name), "many%d.lock", i);
		unlink(seg_path(name));
	}
	CHECK(open_fds() == before);
	return check_failures == failures;
}

/* What a follower compares a path's lstat() with: the file the registry has open, not the path. */
static bool identity_is_the_open_files(const void *arg)
{
	int before = check_failures;
	struct pmem_metrics_registry *r = pmem_metrics_registry_open(seg_path("ident"), 4, 0600);
	struct pmem_metrics_registry *next;
	uint64_t dev = 0, ino = 0, dev2 = 0, ino2 = 0;
	struct stat st;
	char lock[160];

	(void)arg;
	CHECK(r && pmem_metrics_registry_identity(r, &dev, &ino) == 0);
	CHECK(lstat(seg_path("ident"), &st) == 0 && st.st_dev == dev && st.st_ino == ino);
	/* Removed, and a new segment made at the path: the old registry still names the old file. */
	snprintf(lock, sizeof(lock), "%s.lock", seg_path("ident"));
	CHECK(unlink(seg_path("ident")) == 0 && unlink(lock) == 0);
	next = pmem_metrics_registry_open(seg_path("ident"), 4, 0600);
	CHECK(next && next != r && pmem_metrics_registry_identity(next, &dev2, &ino2) == 0);
	CHECK(lstat(seg_path("ident"), &st) == 0 && st.st_dev == dev2 && st.st_ino == ino2);
	CHECK(r && pmem_metrics_registry_identity(r, &dev2, &ino2) == 0 && dev2 == dev && ino2 == ino);
	errno = 0;
	CHECK(pmem_metrics_registry_identity(pmem_metrics_registry_default(), &dev, &ino) == -1 &&
	      errno == EINVAL); /* a private registry has no file */
	errno = 0;
	CHECK(pmem_metrics_registry_identity(r, NULL, &ino) == -1 && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_registry_identity(NULL, &dev, &ino) == -1 && errno == EINVAL);
	CHECK(r && pmem_metrics_registry_close(r) == 0);
	CHECK(next && pmem_metrics_registry_close(next) == 0);
	return check_failures == before;
}

static void test_a_closed_registry_holds_nothing(void)
{
	CHECK(in_child(identity_is_the_open_files, NULL) == 0);
	CHECK(in_child(close_and_reopen, NULL) == 0);
	CHECK(in_child(many_open_at_once, NULL) == 0);
	CHECK(in_child(room_read_only, NULL) == 0);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");

	setenv("PMEM_METRICS_SEGMENT_WAIT_MS", "300", 1); /* the default bound, shorter for the tests */
	snprintf(dir, sizeof(dir), "%s/pmem-seg-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return 2;
	totals = mmap(NULL, sizeof(*totals), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (totals == MAP_FAILED)
		return 2;
	RUN(test_processes_share_counters_and_flush_exactly_once);
	RUN(test_a_segment_costs_what_its_devices_use);
	RUN(test_a_closed_registry_holds_nothing);
	RUN(test_a_forked_child_stays_attached);
	RUN(test_capacity_and_when_to_attach);
	RUN(test_files_that_are_not_a_good_segment_are_refused);
	RUN(test_a_segment_is_the_creators_alone);
	RUN(test_a_process_killed_at_each_step_wedges_nobody);
	RUN(test_a_process_can_hold_several_registries);
	RUN(test_a_process_ignoring_the_locks_cannot_crash_the_others);
	RUN(test_a_stopped_process_holds_nobody_for_longer_than_they_wait);
	RUN(test_a_report_on_its_way_holds_no_other_flush);
	RUN(test_find_looks_up_without_creating);
	RUN(test_devices_come_and_go);
	if (fork() == 0)
		execlp("rm", "rm", "-rf", dir, (char *)NULL);
	wait(NULL);
	return check_summary();
}
