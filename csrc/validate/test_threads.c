/*
 * test_threads.c - many threads hammering alloc / inc / add / flush at once.
 *
 * Incrementer threads bump a deterministic pattern of (device, field) pairs,
 * allocating devices as they first reach them; an allocator thread creates
 * devices nobody bumps; two flusher threads take snapshots, check that each
 * one's aggregate equals the sum of its rows, add the rows to running totals
 * and commit (or, every few rounds, abort, or publish and then withdraw the
 * report outside the flush lock while the other flusher goes on, or wait for
 * the lock in short timed slices).  A reader checks fetch_diff never goes
 * "negative".  Afterwards every total must equal exactly what was added.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

#define NF PMEM_METRICS_NFIELDS
#define NDEV 48      /* devices bumped */
#define NSPARE 200   /* devices only allocated */
#define NBUMP 4      /* incrementer threads */
#define ITERS 60000  /* steps per incrementer */
#define NFLUSH 2     /* flusher threads */

static atomic_bool done;
/* Added to under the flush lock; a withdrawal subtracts outside it. */
static _Atomic uint64_t reported[NDEV][NF];
static atomic_int flushes, aborts, withdrawals, timeouts, bad_aggregates, bad_ids;

static void bump_id(char *buf, size_t size, int d)
{
	snprintf(buf, size, "bump%03d", d);
}

/* Step i of thread t: which device and field, and how much. */
static void step(int t, int i, int *d, int *f, uint64_t *n)
{
	*d = (i * 7 + t * 13) % NDEV;
	*f = (i / 3 + t) % NF;
	*n = (uint64_t)(i % 5 == 0 ? 3 : 1);
}

static void *bumper(void *arg)
{
	int t = (int)(intptr_t)arg;
	struct pmem_metrics *dev[NDEV] = {0};
	char id[32];

	for (int i = 0; i < ITERS; i++) {
		int d, f;
		uint64_t n;

		step(t, i, &d, &f, &n);
		if (!dev[d]) {
			bump_id(id, sizeof(id), d);
			dev[d] = pmem_metrics_alloc(id);
		}
		if (n == 1)
			pmem_metrics_inc(pmem_metrics_field(dev[d], (size_t)f));
		else
			pmem_metrics_add(pmem_metrics_field(dev[d], (size_t)f), n);
	}
	return NULL;
}

static void *allocator(void *arg)
{
	char id[32];

	(void)arg;
	for (int i = 0; i < NSPARE; i++) {
		snprintf(id, sizeof(id), "spare%04d", i);
		if (!pmem_metrics_alloc(id))
			atomic_fetch_add_explicit(&bad_ids, 1, memory_order_relaxed);
	}
	return NULL;
}

/* Add (or, withdrawing, subtract) the bumped devices' rows of `s` to the totals. */
static void account(const struct pmem_metrics_snapshot *s, bool back)
{
	const uint64_t *diffs = pmem_metrics_snapshot_diffs(s);

	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++) {
		const char *id = pmem_metrics_snapshot_id(s, i);
		int d;

		if (strncmp(id, "spare", 5) == 0) {
			for (size_t f = 0; f < NF; f++)
				if (diffs[i * NF + f] != 0)
					atomic_fetch_add_explicit(&bad_ids, 1, memory_order_relaxed);
			continue;
		}
		if (sscanf(id, "bump%d", &d) != 1 || d < 0 || d >= NDEV) {
			atomic_fetch_add_explicit(&bad_ids, 1, memory_order_relaxed);
			continue;
		}
		for (size_t f = 0; f < NF; f++) {
			if (back)
				atomic_fetch_sub_explicit(&reported[d][f], diffs[i * NF + f],
							  memory_order_relaxed);
			else
				atomic_fetch_add_explicit(&reported[d][f], diffs[i * NF + f],
							  memory_order_relaxed);
		}
	}
}

/*
 * Take a snapshot; every third round in timed slices as a binding does (0 ms
 * or 1 ms, so that some run out while the other flusher holds the lock).
 */
static struct pmem_metrics_snapshot *take(int round)
{
	struct pmem_metrics_snapshot *s = NULL;

	if (round % 3 != 1)
		return pmem_metrics_snapshot_take();
	while (pmem_metrics_snapshot_take_into(&s, round % 2) != 0) {
		if (errno != ETIMEDOUT || s != NULL)
			return NULL;
		atomic_fetch_add_explicit(&timeouts, 1, memory_order_relaxed);
		sched_yield();
	}
	return s;
}

/* One flush: check it, and (unless aborting) add it to the totals. */
static void flush_once(int round)
{
	struct pmem_metrics_snapshot *s = take(round);

	if (!s) {
		atomic_fetch_add_explicit(&bad_aggregates, 1, memory_order_relaxed);
		return;
	}
	if (!check_aggregate_is_sum(s))
		atomic_fetch_add_explicit(&bad_aggregates, 1, memory_order_relaxed);

	if (round % 5 == 4) { /* a failed write: nothing may be lost */
		pmem_metrics_snapshot_abort(s);
		atomic_fetch_add_explicit(&aborts, 1, memory_order_relaxed);
		return;
	}
	account(s, false);
	if (round % 7 == 3) {
		/*
		 * Published, then the report turns out undelivered: withdrawn
		 * with the flush lock already free, while the other flusher
		 * takes and commits.  Its counts must come again, once.
		 */
		pmem_metrics_snapshot_publish(&s);
		CHECK(!pmem_metrics_snapshot_is_open(s));
		sched_yield();
		pmem_metrics_snapshot_withdraw(&s);
		account(s, true);
		pmem_metrics_snapshot_dispose(&s);
		CHECK(s == NULL);
		atomic_fetch_add_explicit(&withdrawals, 1, memory_order_relaxed);
		return;
	}
	pmem_metrics_snapshot_commit(s);
	atomic_fetch_add_explicit(&flushes, 1, memory_order_relaxed);
}

static void *flusher(void *arg)
{
	(void)arg;
	for (int round = 0; !atomic_load_explicit(&done, memory_order_relaxed); round++)
		flush_once(round);
	return NULL;
}

static void *reader(void *arg)
{
	uint64_t bound = (uint64_t)NBUMP * ITERS * 3;
	char id[32];

	(void)arg;
	while (!atomic_load_explicit(&done, memory_order_relaxed)) {
		for (int d = 0; d < NDEV; d++) {
			bump_id(id, sizeof(id), d);
			for (size_t f = 0; f < NF; f++) {
				struct pmem_metrics_counter *c = pmem_metrics_field(pmem_metrics_alloc(id), f);

				if (pmem_metrics_fetch_diff(c) > bound) /* "negative" */
					atomic_fetch_add_explicit(&bad_aggregates, 1, memory_order_relaxed);
			}
		}
	}
	return NULL;
}

static void test_exact_totals_under_concurrency(void)
{
	pthread_t bump[NBUMP], flush[NFLUSH], alloc, rd;
	static uint64_t expect[NDEV][NF];
	char id[32];

	for (int t = 0; t < NFLUSH; t++)
		pthread_create(&flush[t], NULL, flusher, NULL);
	pthread_create(&rd, NULL, reader, NULL);
	pthread_create(&alloc, NULL, allocator, NULL);
	for (int t = 0; t < NBUMP; t++)
		pthread_create(&bump[t], NULL, bumper, (void *)(intptr_t)t);
	for (int t = 0; t < NBUMP; t++)
		pthread_join(bump[t], NULL);
	pthread_join(alloc, NULL);
	atomic_store_explicit(&done, true, memory_order_relaxed);
	for (int t = 0; t < NFLUSH; t++)
		pthread_join(flush[t], NULL);
	pthread_join(rd, NULL);
	flush_once(0); /* the final flush, committed */

	for (int t = 0; t < NBUMP; t++) {
		for (int i = 0; i < ITERS; i++) {
			int d, f;
			uint64_t n;

			step(t, i, &d, &f, &n);
			expect[d][f] += n;
		}
	}
	for (int d = 0; d < NDEV; d++) {
		struct pmem_metrics *m;

		bump_id(id, sizeof(id), d);
		m = pmem_metrics_alloc(id);
		for (size_t f = 0; f < NF; f++) {
			CHECK(reported[d][f] == expect[d][f]);
			CHECK(pmem_metrics_count(pmem_metrics_field(m, f)) == expect[d][f]);
			CHECK(pmem_metrics_fetch_diff(pmem_metrics_field(m, f)) == 0);
		}
	}
	CHECK(pmem_metrics_device_count() == NDEV + NSPARE);
	CHECK(atomic_load(&bad_aggregates) == 0);
	CHECK(atomic_load(&bad_ids) == 0);
	printf("# %d flushes committed, %d aborted, %d withdrawn; %d timed waits ran out\n",
	       atomic_load(&flushes), atomic_load(&aborts), atomic_load(&withdrawals),
	       atomic_load(&timeouts));
	CHECK(atomic_load(&withdrawals) > 0);
}

/*
 * A few hot counters bumped nonstop while a flusher snapshots in a tight
 * loop: the case where an aggregate taken from a second load of each counter
 * (Firecracker's) would stop matching the devices it is the sum of.
 */
#define HOT_BUMPERS 2
#define HOT_ITERS 3000000

static atomic_int hot_running;

static void *hot_bumper(void *arg)
{
	struct pmem_metrics *m = arg;

	for (int i = 0; i < HOT_ITERS; i++)
		pmem_metrics_inc(pmem_metrics_field(m, (size_t)i % NF));
	atomic_fetch_sub_explicit(&hot_running, 1, memory_order_relaxed);
	return NULL;
}

static void test_aggregate_is_the_sum_while_counters_are_hot(void)
{
	struct pmem_metrics *hot[2] = {pmem_metrics_alloc("hot0"), pmem_metrics_alloc("hot1")};
	pthread_t t[HOT_BUMPERS];
	uint64_t total = 0;
	int rounds = 0, mismatches = 0;

	atomic_store(&hot_running, HOT_BUMPERS);
	for (int i = 0; i < HOT_BUMPERS; i++)
		pthread_create(&t[i], NULL, hot_bumper, hot[i % 2]);
	do {
		struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();
		const uint64_t *agg = pmem_metrics_snapshot_aggregate(s);

		mismatches += !check_aggregate_is_sum(s);
		for (size_t f = 0; f < NF; f++)
			total += agg[f];
		pmem_metrics_snapshot_commit(s);
		rounds++;
	} while (atomic_load_explicit(&hot_running, memory_order_relaxed) > 0 || rounds < 2);
	for (int i = 0; i < HOT_BUMPERS; i++)
		pthread_join(t[i], NULL);
	{
		struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();

		for (size_t f = 0; f < NF; f++)
			total += pmem_metrics_snapshot_aggregate(s)[f];
		pmem_metrics_snapshot_commit(s);
	}
	CHECK(mismatches == 0);
	CHECK(total == (uint64_t)HOT_BUMPERS * HOT_ITERS);
	printf("# %d snapshots of hot counters\n", rounds);
}

/* Every round, all racers allocate one fresh id at the same instant. */
#define NRACERS 8
#define ROUNDS 300

static pthread_barrier_t start_line, finish_line;
static struct pmem_metrics *raced[NRACERS];

static void *racer(void *arg)
{
	int t = (int)(intptr_t)arg;
	char id[32];

	for (int r = 0; r < ROUNDS; r++) {
		snprintf(id, sizeof(id), "race%04d", r);
		pthread_barrier_wait(&start_line);
		raced[t] = pmem_metrics_alloc(id);
		pthread_barrier_wait(&finish_line);
		if (t == 0) {
			for (int u = 1; u < NRACERS; u++)
				if (raced[u] != raced[0] || !raced[0])
					atomic_fetch_add_explicit(&bad_ids, 1, memory_order_relaxed);
		}
		/* Nobody overwrites raced[] before racer 0 has read it. */
		pthread_barrier_wait(&start_line);
	}
	return NULL;
}

static void test_racing_allocs_of_one_id_get_one_device(void)
{
	pthread_t t[NRACERS];
	size_t before = pmem_metrics_device_count();

	atomic_store(&bad_ids, 0);
	pthread_barrier_init(&start_line, NULL, NRACERS);
	pthread_barrier_init(&finish_line, NULL, NRACERS);
	for (int i = 0; i < NRACERS; i++)
		pthread_create(&t[i], NULL, racer, (void *)(intptr_t)i);
	for (int i = 0; i < NRACERS; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&start_line);
	pthread_barrier_destroy(&finish_line);
	CHECK(atomic_load(&bad_ids) == 0);
	CHECK(pmem_metrics_device_count() == before + ROUNDS);
}

/*
 * Lookups nonstop from many threads must not keep an insert out for ever
 * (glibc's default rwlock would: it prefers readers).  A starved insert never
 * returns; the alarm then ends the process, which fails the suite.
 */
#define STORM_READERS 16
#define STORM_INSERTS 50

static atomic_bool storm_over;

static atomic_int storm_misses;

static void *lookup_storm(void *arg)
{
	struct pmem_metrics *existing = arg;

	while (!atomic_load_explicit(&storm_over, memory_order_relaxed)) {
		pmem_metrics_alloc("storm-existing");
		(void)pmem_metrics_device_count();
		/* A lookup that creates nothing finds it while the array grows. */
		if (pmem_metrics_find("storm-existing") != existing)
			atomic_fetch_add(&storm_misses, 1);
	}
	return NULL;
}

static void test_inserts_get_through_a_storm_of_lookups(void)
{
	pthread_t t[STORM_READERS];
	struct pmem_metrics *existing = pmem_metrics_alloc("storm-existing");
	size_t before;
	char id[32];

	before = pmem_metrics_device_count();
	for (int i = 0; i < STORM_READERS; i++)
		pthread_create(&t[i], NULL, lookup_storm, existing);
	alarm(60);
	for (int i = 0; i < STORM_INSERTS; i++) {
		snprintf(id, sizeof(id), "storm-new%02d", i);
		pmem_metrics_alloc(id);
	}
	alarm(0);
	atomic_store(&storm_over, true);
	for (int i = 0; i < STORM_READERS; i++)
		pthread_join(t[i], NULL);
	CHECK(pmem_metrics_device_count() == before + STORM_INSERTS);
	CHECK(atomic_load(&storm_misses) == 0);
}

/* ---- Two segments and the default registry, from threads ------------------------------ */

#define NREG 3     /* two segments opened as registries, and the private default */
#define RITERS 30000

struct registries {
	struct pmem_metrics_registry *r[NREG];
	_Atomic uint64_t reported[NREG];
	atomic_int bumpers_left;
};

static void *bump_every_registry(void *arg)
{
	struct registries *t = arg;
	struct pmem_metrics *m[NREG];

	for (int r = 0; r < NREG; r++)
		if (!(m[r] = pmem_metrics_registry_alloc(t->r[r], "x")))
			return (void *)1;
	for (int i = 0; i < RITERS; i++)
		pmem_metrics_inc(&m[i % NREG]->queue_event_count);
	atomic_fetch_sub(&t->bumpers_left, 1);
	return NULL;
}

/* Flush the registries in turn, each into its own total, until the bumpers are done. */
static void *flush_every_registry(void *arg)
{
	struct registries *t = arg;
	bool last = false;

	while (!last) {
		last = atomic_load(&t->bumpers_left) == 0;
		for (int r = 0; r < NREG; r++) {
			struct pmem_metrics_snapshot *s = pmem_metrics_registry_snapshot_take(t->r[r]);

			if (!s)
				return (void *)1;
			for (size_t d = 0; d < pmem_metrics_snapshot_len(s); d++)
				atomic_fetch_add(&t->reported[r],
						 pmem_metrics_snapshot_diffs(s)[d * NF + NF - 1]);
			pmem_metrics_snapshot_commit(s);
		}
	}
	return NULL;
}

static void test_several_registries_flush_exactly(void)
{
	const char *tmp = getenv("TMPDIR");
	struct registries t = {.bumpers_left = 2};
	pthread_t bump[2], flush[2];
	char dir[64], path[2][96];
	void *ret;

	snprintf(dir, sizeof(dir), "%s/pmem-reg-XXXXXX", tmp ? tmp : "/tmp");
	CHECK(mkdtemp(dir) != NULL);
	for (int r = 0; r < 2; r++) {
		snprintf(path[r], sizeof(path[r]), "%s/seg%d", dir, r);
		t.r[r] = pmem_metrics_registry_open(path[r], 8, 0600);
		CHECK(t.r[r] != NULL);
	}
	t.r[2] = pmem_metrics_registry_default();
	if (!t.r[0] || !t.r[1])
		return;
	/* queue_event_count, the field counted, is the last one. */
	CHECK(strcmp(pmem_metrics_field_name(NF - 1), "queue_event_count") == 0);
	for (int i = 0; i < 2; i++) {
		pthread_create(&bump[i], NULL, bump_every_registry, &t);
		pthread_create(&flush[i], NULL, flush_every_registry, &t);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(bump[i], &ret);
		CHECK(ret == NULL);
		pthread_join(flush[i], &ret);
		CHECK(ret == NULL);
	}
	for (int r = 0; r < NREG; r++)
		CHECK(atomic_load(&t.reported[r]) == 2 * RITERS / NREG);
	for (int r = 0; r < 2; r++)
		unlink(path[r]);
	rmdir(dir);
}

/* ---- Devices that come and go, from threads (TSan runs this) -------------------- */

#define CHURN_THREADS 3
#define CHURN_ITERS 4000

struct churn {
	_Atomic uint64_t added, reported;
	atomic_int left;
};

/*
 * Plug, count, unplug, over and over, 50 ids a thread: an id comes back
 * before its final flush (revived) or after it (a new device).  (A thread
 * counting into a device another thread retired races its final flush: what
 * lands after the flush's take is counted nowhere -- the hot path checks
 * nothing -- so each thread here retires only its own.)
 */
static void *churn_devices(void *arg)
{
	struct churn *c = arg;
	static atomic_int next;
	int me = atomic_fetch_add(&next, 1);

	for (int i = 0; i < CHURN_ITERS; i++) {
		char id[32];
		struct pmem_metrics *m;

		snprintf(id, sizeof(id), "churn-%d-%d", me, i % 50);
		m = pmem_metrics_alloc(id);
		if (!m)
			return (void *)1;
		pmem_metrics_add(&m->queue_event_count, 3);
		atomic_fetch_add(&c->added, 3);
		if (pmem_metrics_retire(id) != 0)
			return (void *)2;
		pmem_metrics_release(m);
	}
	atomic_fetch_sub(&c->left, 1);
	return NULL;
}

static uint64_t churn_flush(void)
{
	struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();
	uint64_t sum = 0;

	for (size_t i = 0; s && i < pmem_metrics_snapshot_len(s); i++)
		if (strncmp(pmem_metrics_snapshot_id(s, i), "churn-", 6) == 0)
			sum += pmem_metrics_snapshot_diffs(s)[i * NF + 3];
	pmem_metrics_snapshot_commit(s);
	return sum;
}

static void test_devices_come_and_go_under_threads(void)
{
	struct churn c = {.left = CHURN_THREADS};
	pthread_t t[CHURN_THREADS];
	struct pmem_metrics_registry_stats st;

	for (int i = 0; i < CHURN_THREADS; i++)
		pthread_create(&t[i], NULL, churn_devices, &c);
	while (atomic_load(&c.left) > 0)
		atomic_fetch_add(&c.reported, churn_flush());
	for (int i = 0; i < CHURN_THREADS; i++) {
		void *r;

		pthread_join(t[i], &r);
		CHECK(r == NULL);
	}
	for (int i = 0; i < 3; i++) /* the last final deltas */
		atomic_fetch_add(&c.reported, churn_flush());
	CHECK(atomic_load(&c.reported) == atomic_load(&c.added));
	CHECK(pmem_metrics_registry_stats(pmem_metrics_registry_default(), &st) == 0);
	printf("# %d threads x %d plug/unplug cycles: %llu counted, %llu reported, %zu live after\n",
	       CHURN_THREADS, CHURN_ITERS, (unsigned long long)atomic_load(&c.added),
	       (unsigned long long)atomic_load(&c.reported), st.devices);
}

int main(void)
{
	RUN(test_exact_totals_under_concurrency);
	RUN(test_racing_allocs_of_one_id_get_one_device);
	RUN(test_aggregate_is_the_sum_while_counters_are_hot);
	RUN(test_inserts_get_through_a_storm_of_lookups);
	RUN(test_several_registries_flush_exactly);
	RUN(test_devices_come_and_go_under_threads);
	return check_summary();
}
