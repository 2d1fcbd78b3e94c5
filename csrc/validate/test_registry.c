/*
 * test_registry.c - semantics: ids, counters, snapshots, bad input (one thread, but
 * for the one that holds a flush while another waits for it).
 */
#define _POSIX_C_SOURCE 200809L /* pthread_barrier_t */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "pmem_metrics.h"

#define NF PMEM_METRICS_NFIELDS

/*
 * Field `f` of device `id`'s row in `rows` (the diffs or the counts of `s`).
 * A device missing from `s` (or a NULL snapshot) fails the test and reads 0.
 */
static uint64_t value_of(const struct pmem_metrics_snapshot *s, const uint64_t *rows,
			 const char *id, size_t f)
{
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++)
		if (strcmp(pmem_metrics_snapshot_id(s, i), id) == 0)
			return rows[i * NF + f];
	fprintf(stderr, "no device \"%s\" in the snapshot\n", id);
	CHECK(!"the device is in the snapshot");
	return 0;
}

/* The diff of field `f` of device `id` in `s` (see value_of()). */
static uint64_t diff_of(const struct pmem_metrics_snapshot *s, const char *id, size_t f)
{
	return value_of(s, pmem_metrics_snapshot_diffs(s), id, f);
}

static void test_fields_from_the_x_macro(void)
{
	CHECK(NF == 4);
	CHECK(strcmp(pmem_metrics_field_name(0), "activate_fails") == 0);
	CHECK(strcmp(pmem_metrics_field_name(3), "queue_event_count") == 0);
	CHECK(pmem_metrics_field_name(NF) == NULL);
	CHECK(pmem_metrics_field_doc(NF) == NULL);
	CHECK(strstr(pmem_metrics_field_doc(0), "activate") != NULL);
}

static void test_alloc_is_idempotent(void)
{
	size_t n = pmem_metrics_device_count();
	struct pmem_metrics *a = pmem_metrics_alloc("reg-a");
	struct pmem_metrics *b = pmem_metrics_alloc("reg-b");

	CHECK(a && b && a != b);
	CHECK(pmem_metrics_alloc("reg-a") == a);
	CHECK(pmem_metrics_alloc_len("reg-bxyz", 5) == b);
	CHECK(pmem_metrics_device_count() == n + 2);
	CHECK(pmem_metrics_field(a, 0) == &a->activate_fails);
	CHECK(pmem_metrics_field(a, 3) == &a->queue_event_count);
	CHECK(pmem_metrics_field(a, NF) == NULL);
	CHECK(pmem_metrics_field(NULL, 0) == NULL);
}

static void test_counter_semantics_and_wrap(void)
{
	struct pmem_metrics_counter *c = &pmem_metrics_alloc("reg-counter")->cfg_fails;
	struct pmem_metrics_snapshot *s;

	pmem_metrics_inc(c);
	pmem_metrics_add(c, 4);
	CHECK(pmem_metrics_count(c) == 5);
	CHECK(pmem_metrics_fetch_diff(c) == 5);
	s = pmem_metrics_snapshot_take();
	CHECK(diff_of(s, "reg-counter", 1) == 5);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_count(c) == 5);
	CHECK(pmem_metrics_fetch_diff(c) == 0);

	pmem_metrics_add(c, UINT64_MAX); /* current wraps to 4 */
	CHECK(pmem_metrics_count(c) == 4);
	CHECK(pmem_metrics_fetch_diff(c) == UINT64_MAX);
	s = pmem_metrics_snapshot_take();
	CHECK(diff_of(s, "reg-counter", 1) == UINT64_MAX);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_fetch_diff(c) == 0);
}

static void test_id_rules(void)
{
	static const struct {
		const char *id;
		size_t len;
		enum pmem_metrics_id_error want;
	} cases[] = {
		{"drv0", 4, PMEM_METRICS_ID_OK},
		{"", 0, PMEM_METRICS_ID_EMPTY},
		{"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 64, PMEM_METRICS_ID_OK},
		{"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 65, PMEM_METRICS_ID_TOO_LONG},
		{"a\0b", 3, PMEM_METRICS_ID_CONTROL},
		{"a\nb", 3, PMEM_METRICS_ID_CONTROL},
		{"\x1f", 1, PMEM_METRICS_ID_CONTROL},
		{"\x7f", 1, PMEM_METRICS_ID_CONTROL},
		{"\xc2\x80", 2, PMEM_METRICS_ID_CONTROL}, /* U+0080, C1 */
		{"\xc2\x9f", 2, PMEM_METRICS_ID_CONTROL}, /* U+009F, C1 */
		{"\xc2\xa0", 2, PMEM_METRICS_ID_OK},      /* U+00A0 */
		{"\xef\xbf\xbf", 3, PMEM_METRICS_ID_OK},  /* U+FFFF */
		{"\xf0\x9f\x98\x80", 4, PMEM_METRICS_ID_OK}, /* U+1F600 */
		{"\xf4\x8f\xbf\xbf", 4, PMEM_METRICS_ID_OK}, /* U+10FFFF */
		{"\xf4\x90\x80\x80", 4, PMEM_METRICS_ID_UTF8}, /* U+110000 */
		{"\xc0\xaf", 2, PMEM_METRICS_ID_UTF8},         /* overlong '/' */
		{"\xe0\x80\xaf", 3, PMEM_METRICS_ID_UTF8},     /* overlong '/' */
		{"\xf0\x80\x80\xaf", 4, PMEM_METRICS_ID_UTF8}, /* overlong '/' */
		{"\xed\xa0\x80", 3, PMEM_METRICS_ID_UTF8},     /* surrogate U+D800 */
		{"\xe2\x82", 2, PMEM_METRICS_ID_UTF8},         /* truncated */
		{"\x80", 1, PMEM_METRICS_ID_UTF8},             /* stray continuation */
		{"\xe2\x28\xa1", 3, PMEM_METRICS_ID_UTF8},     /* bad continuation */
		{"\xf5\x80\x80\x80", 4, PMEM_METRICS_ID_UTF8},
		{"\xff", 1, PMEM_METRICS_ID_UTF8},
	};
	char long_id[4 * 65];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum pmem_metrics_id_error got = pmem_metrics_id_check(cases[i].id, cases[i].len);

		if (got != cases[i].want)
			fprintf(stderr, "id case %zu: got %d, want %d\n", i, (int)got, (int)cases[i].want);
		CHECK(got == cases[i].want);
	}
	CHECK(pmem_metrics_id_check(NULL, 3) == PMEM_METRICS_ID_NULL);

	/* The limit counts code points, not bytes. */
	for (size_t i = 0; i < 64; i++)
		memcpy(&long_id[4 * i], "\xf0\x9f\x98\x80", 4);
	CHECK(pmem_metrics_id_check(long_id, 4 * 64) == PMEM_METRICS_ID_OK);
	memcpy(&long_id[4 * 64], "\xf0\x9f\x98\x80", 4);
	CHECK(pmem_metrics_id_check(long_id, 4 * 65) == PMEM_METRICS_ID_TOO_LONG);

	for (int e = PMEM_METRICS_ID_OK; e <= PMEM_METRICS_ID_UTF8; e++)
		CHECK(strcmp(pmem_metrics_id_strerror(e), "unknown error") != 0);
	CHECK(strcmp(pmem_metrics_id_strerror(99), "unknown error") == 0);
}

static void test_bad_ids_are_refused_and_change_nothing(void)
{
	size_t n = pmem_metrics_device_count();

	errno = 0;
	CHECK(pmem_metrics_alloc(NULL) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_alloc("") == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_alloc_len(NULL, 4) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_alloc_len("a\0b", 3) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_alloc("bad\x01") == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_alloc("\xed\xa0\x80") == NULL && errno == EINVAL);
	CHECK(pmem_metrics_device_count() == n);
}

static void test_null_counters_are_tolerated(void)
{
	/*
	 * Through volatile function pointers: the exported symbols, which the
	 * compiler cannot swap for the inline copies.
	 */
	void (*volatile inc)(struct pmem_metrics_counter *) = pmem_metrics_inc;
	void (*volatile add)(struct pmem_metrics_counter *, uint64_t) = pmem_metrics_add;
	uint64_t (*volatile count)(const struct pmem_metrics_counter *) = pmem_metrics_count;
	uint64_t (*volatile diff)(const struct pmem_metrics_counter *) = pmem_metrics_fetch_diff;
	struct pmem_metrics_counter *c = &pmem_metrics_alloc("reg-exported")->event_fails;

	inc(NULL);
	add(NULL, 5);
	CHECK(count(NULL) == 0);
	CHECK(diff(NULL) == 0);
	inc(c);
	add(c, 2);
	CHECK(count(c) == 3 && diff(c) == 3);

	CHECK(pmem_metrics_snapshot_len(NULL) == 0);
	CHECK(pmem_metrics_snapshot_id(NULL, 0) == NULL);
	CHECK(pmem_metrics_snapshot_diffs(NULL) == NULL);
	CHECK(pmem_metrics_snapshot_aggregate(NULL) == NULL);
	pmem_metrics_snapshot_commit(NULL);
	pmem_metrics_snapshot_abort(NULL);
}

static void test_snapshot_order_aggregate_and_ids(void)
{
	/* Allocated out of order; expected in byte (= code point) order. */
	static const char *const ids[] = {"snap-b", "snap-\xef\xbf\xbf", "snap-a", "snap-\xf0\x90\x80\x80", "snap-B"};
	struct pmem_metrics_snapshot *s;
	const char *all;
	size_t len, n, at = 0;

	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
		pmem_metrics_add(&pmem_metrics_alloc(ids[i])->queue_event_count, i + 1);

	s = pmem_metrics_snapshot_take();
	CHECK(s != NULL);
	n = pmem_metrics_snapshot_len(s);
	CHECK(n == pmem_metrics_device_count());
	for (size_t i = 1; i < n; i++)
		CHECK(strcmp(pmem_metrics_snapshot_id(s, i - 1), pmem_metrics_snapshot_id(s, i)) < 0);
	CHECK(pmem_metrics_snapshot_id(s, n) == NULL);

	all = pmem_metrics_snapshot_ids(s, &len);
	for (size_t i = 0; i < n; i++) {
		CHECK(strcmp(all + at, pmem_metrics_snapshot_id(s, i)) == 0);
		at += strlen(all + at) + 1;
	}
	CHECK(at == len);

	CHECK(check_aggregate_is_sum(s));
	CHECK(diff_of(s, "snap-a", 3) == 3);
	CHECK(diff_of(s, "snap-\xf0\x90\x80\x80", 3) == 4);
	pmem_metrics_snapshot_commit(s);
}

static void test_abort_keeps_counts_and_a_second_take_is_edeadlk(void)
{
	struct pmem_metrics_counter *c = &pmem_metrics_alloc("reg-abort")->activate_fails;
	struct pmem_metrics_snapshot *s;

	pmem_metrics_add(c, 7);
	s = pmem_metrics_snapshot_take();
	CHECK(diff_of(s, "reg-abort", 0) == 7);
	pmem_metrics_inc(c); /* lands during the flush: for the next one */
	errno = 0;
	CHECK(pmem_metrics_snapshot_take() == NULL && errno == EDEADLK);
	pmem_metrics_snapshot_abort(s);
	CHECK(pmem_metrics_fetch_diff(c) == 8);

	s = pmem_metrics_snapshot_take();
	CHECK(diff_of(s, "reg-abort", 0) == 8);
	pmem_metrics_inc(c);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_fetch_diff(c) == 1);
}

static void test_find_looks_up_and_creates_nothing(void)
{
	size_t n = pmem_metrics_device_count();
	struct pmem_metrics *m;

	errno = 0;
	CHECK(pmem_metrics_find("reg-find") == NULL && errno == ENOENT);
	CHECK(pmem_metrics_device_count() == n); /* nothing created */
	m = pmem_metrics_alloc("reg-find");
	CHECK(m != NULL && pmem_metrics_find("reg-find") == m);
	CHECK(pmem_metrics_registry_find(pmem_metrics_registry_default(), "reg-findx", 8) == m);
	errno = 0;
	CHECK(pmem_metrics_find("") == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_find(NULL) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_registry_find(NULL, "reg-find", 8) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_find("reg-\x01") == NULL && errno == EINVAL);
	CHECK(pmem_metrics_device_count() == n + 1);
}

/* Device `id`'s diff of field `f` in snapshot `s`; -1 if `s` has no such device. */
static int64_t diff_in(const struct pmem_metrics_snapshot *s, const char *id, size_t f)
{
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++)
		if (strcmp(pmem_metrics_snapshot_id(s, i), id) == 0)
			return (int64_t)pmem_metrics_snapshot_diffs(s)[i * NF + f];
	return -1;
}

/* One flush: device `id`'s diff of field `f` (-1: not reported), committed. */
static int64_t flush_diff(const char *id, size_t f)
{
	struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();
	int64_t d = diff_in(s, id, f);

	pmem_metrics_snapshot_commit(s);
	return d;
}

static void test_a_retired_device_is_reported_once_more_then_gone(void)
{
	struct pmem_metrics *m = pmem_metrics_alloc("ret-a"), *again;
	struct pmem_metrics_registry_stats st;
	struct pmem_metrics_snapshot *s;
	size_t n = pmem_metrics_device_count();

	pmem_metrics_add(&m->cfg_fails, 5);
	CHECK(flush_diff("ret-a", 1) == 5);
	pmem_metrics_add(&m->cfg_fails, 2);
	CHECK(pmem_metrics_retire("ret-a") == 0);
	errno = 0;
	CHECK(pmem_metrics_retire("ret-a") == -1 && errno == ENOENT); /* retired already */
	CHECK(pmem_metrics_registry_stats(pmem_metrics_registry_default(), &st) == 0 &&
	      st.retired >= 1 && st.capacity == 0);
	s = pmem_metrics_snapshot_peek(); /* a scrape still sees it (grace) */
	CHECK(diff_in(s, "ret-a", 1) == 2);
	pmem_metrics_snapshot_free(s);
	CHECK(pmem_metrics_find("ret-a") == m); /* found, not revived */
	pmem_metrics_release(m);
	CHECK(flush_diff("ret-a", 1) == 2); /* its final delta */
	CHECK(flush_diff("ret-a", 1) == -1); /* then gone */
	CHECK(pmem_metrics_device_count() == n - 1);
	s = pmem_metrics_snapshot_peek();
	CHECK(diff_in(s, "ret-a", 1) == -1);
	pmem_metrics_snapshot_free(s);
	errno = 0;
	CHECK(pmem_metrics_find("ret-a") == NULL && errno == ENOENT);
	errno = 0;
	CHECK(pmem_metrics_retire("ret-a") == -1 && errno == ENOENT);

	/* A pointer held past the final flush counts into nothing another device reports. */
	pmem_metrics_add(&m->cfg_fails, 100);
	again = pmem_metrics_alloc("ret-a"); /* a new device, from zero */
	CHECK(again && again != m && pmem_metrics_count(&again->cfg_fails) == 0);
	pmem_metrics_inc(&again->cfg_fails);
	CHECK(flush_diff("ret-a", 1) == 1);
	pmem_metrics_release(m); /* the last reference: freed (ASan would see a use after) */
	pmem_metrics_release(again);
	pmem_metrics_release(NULL);
	errno = 0;
	CHECK(pmem_metrics_retire("ret-unknown") == -1 && errno == ENOENT);
	errno = 0;
	CHECK(pmem_metrics_retire("") == -1 && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_retire(NULL) == -1 && errno == EINVAL);
}

static void test_an_alloc_before_the_final_flush_revives_it(void)
{
	struct pmem_metrics *m = pmem_metrics_alloc("ret-b");

	pmem_metrics_add(&m->event_fails, 3);
	CHECK(pmem_metrics_retire("ret-b") == 0);
	CHECK(pmem_metrics_alloc("ret-b") == m); /* the same device: nothing twice, nothing lost */
	pmem_metrics_add(&m->event_fails, 4);
	CHECK(flush_diff("ret-b", 2) == 7);
	CHECK(flush_diff("ret-b", 2) == 0); /* live: still there */
	pmem_metrics_release(m);
}

static void test_what_lands_during_the_final_flush_keeps_it_for_one_more(void)
{
	struct pmem_metrics *m = pmem_metrics_alloc("ret-c");
	struct pmem_metrics_snapshot *s = NULL;

	pmem_metrics_add(&m->activate_fails, 1);
	CHECK(pmem_metrics_retire("ret-c") == 0);
	CHECK(pmem_metrics_snapshot_take_into(&s, -1) == 0 && diff_in(s, "ret-c", 0) == 1);
	pmem_metrics_add(&m->activate_fails, 6); /* after the take */
	pmem_metrics_snapshot_publish(&s);
	pmem_metrics_snapshot_dispose(&s);
	CHECK(flush_diff("ret-c", 0) == 6); /* not lost: reported by the next */
	CHECK(flush_diff("ret-c", 0) == -1);

	pmem_metrics_release(m);

	/* A final flush withdrawn after its publish: the device stays for the next. */
	m = pmem_metrics_alloc("ret-d");
	pmem_metrics_add(&m->activate_fails, 2);
	CHECK(pmem_metrics_retire("ret-d") == 0);
	CHECK(pmem_metrics_snapshot_take_into(&s, -1) == 0 && diff_in(s, "ret-d", 0) == 2);
	pmem_metrics_snapshot_publish(&s);
	pmem_metrics_snapshot_withdraw(&s);
	pmem_metrics_snapshot_dispose(&s);
	CHECK(flush_diff("ret-d", 0) == 2);
	CHECK(flush_diff("ret-d", 0) == -1);
	pmem_metrics_release(m);
}

static void test_a_peek_reads_counts_and_changes_nothing(void)
{
	struct pmem_metrics *m = pmem_metrics_alloc("reg-peek");
	struct pmem_metrics_snapshot *flush, *peek;

	pmem_metrics_add(&m->queue_event_count, 11);
	flush = pmem_metrics_snapshot_take();
	pmem_metrics_snapshot_commit(flush);
	pmem_metrics_add(&m->queue_event_count, 4);

	flush = pmem_metrics_snapshot_take(); /* a flush in progress does not block a peek */
	peek = pmem_metrics_snapshot_peek();
	CHECK(peek != NULL);
	CHECK(value_of(peek, pmem_metrics_snapshot_counts(peek), "reg-peek", 3) == 15); /* cumulative */
	CHECK(diff_of(peek, "reg-peek", 3) == 4);                 /* since the last flush */
	pmem_metrics_snapshot_commit(peek); /* a peek is no flush: nothing happens */
	pmem_metrics_snapshot_abort(peek);
	CHECK(diff_of(peek, "reg-peek", 3) == 4); /* still there */
	pmem_metrics_snapshot_free(peek);
	CHECK(pmem_metrics_fetch_diff(&m->queue_event_count) == 4);
	pmem_metrics_snapshot_abort(flush);
	CHECK(pmem_metrics_fetch_diff(&m->queue_event_count) == 4);
	CHECK(pmem_metrics_count(&m->queue_event_count) == 15);
	CHECK(pmem_metrics_snapshot_counts(NULL) == NULL);
}

static void test_the_slot_calls_refuse_bad_slots(void)
{
	struct pmem_metrics_snapshot *s = NULL, *other = NULL;

	errno = 0;
	CHECK(pmem_metrics_snapshot_take_into(NULL, 0) == -1 && errno == EINVAL);
	CHECK(pmem_metrics_snapshot_peek_into(NULL) == -1 && errno == EINVAL);
	CHECK(pmem_metrics_snapshot_take_into(&s, 0) == 0 && s != NULL);
	CHECK(pmem_metrics_snapshot_is_open(s));
	errno = 0;
	CHECK(pmem_metrics_snapshot_take_into(&s, 0) == -1 && errno == EINVAL); /* would lose s */
	errno = 0;
	CHECK(pmem_metrics_snapshot_take_into(&other, 0) == -1 && errno == EDEADLK && !other);
	CHECK(pmem_metrics_snapshot_peek_into(&other) == 0 && !pmem_metrics_snapshot_is_open(other));
	pmem_metrics_snapshot_dispose(&other);
	pmem_metrics_snapshot_dispose(&s); /* aborts the open flush */
	CHECK(s == NULL && !pmem_metrics_snapshot_is_open(NULL));
	CHECK(pmem_metrics_snapshot_take_into(&s, 0) == 0); /* the lock was released */
	pmem_metrics_snapshot_dispose(&s);
	pmem_metrics_snapshot_publish(NULL);
	pmem_metrics_snapshot_withdraw(NULL);
	pmem_metrics_snapshot_dispose(NULL);
	pmem_metrics_snapshot_publish(&s);
	pmem_metrics_snapshot_withdraw(&s);
	pmem_metrics_snapshot_dispose(&s);
}

static void test_a_published_report_can_be_withdrawn_once(void)
{
	struct pmem_metrics_counter *c = &pmem_metrics_alloc("reg-withdraw")->event_fails;
	struct pmem_metrics_snapshot *a = NULL, *b = NULL;

	pmem_metrics_add(c, 5);
	CHECK(pmem_metrics_snapshot_take_into(&a, -1) == 0);
	CHECK(diff_of(a, "reg-withdraw", 2) == 5);
	pmem_metrics_snapshot_publish(&a);
	CHECK(a != NULL && !pmem_metrics_snapshot_is_open(a)); /* kept, settled for the lock */
	CHECK(pmem_metrics_fetch_diff(c) == 0);

	/* Another flush runs between the publish and the withdrawal. */
	pmem_metrics_add(c, 2);
	CHECK(pmem_metrics_snapshot_take_into(&b, 0) == 0);
	CHECK(diff_of(b, "reg-withdraw", 2) == 2);
	pmem_metrics_snapshot_publish(&b);

	pmem_metrics_snapshot_withdraw(&a); /* a's 5 come back, b's 2 stay reported */
	CHECK(pmem_metrics_fetch_diff(c) == 5);
	pmem_metrics_snapshot_withdraw(&a); /* once only */
	pmem_metrics_snapshot_publish(&a);  /* settled: nothing */
	CHECK(pmem_metrics_fetch_diff(c) == 5);
	pmem_metrics_snapshot_dispose(&a);
	pmem_metrics_snapshot_dispose(&b); /* published: stays published */
	CHECK(pmem_metrics_fetch_diff(c) == 5 && pmem_metrics_count(c) == 7);

	/* Withdrawing an open flush is an abort. */
	CHECK(pmem_metrics_snapshot_take_into(&a, 0) == 0);
	pmem_metrics_snapshot_withdraw(&a);
	CHECK(!pmem_metrics_snapshot_is_open(a) && pmem_metrics_fetch_diff(c) == 5);
	pmem_metrics_snapshot_dispose(&a);
	a = pmem_metrics_snapshot_take();
	CHECK(diff_of(a, "reg-withdraw", 2) == 5);
	pmem_metrics_snapshot_commit(a);
	CHECK(pmem_metrics_fetch_diff(c) == 0);
}

static void *hold_a_flush(void *arg)
{
	struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();
	pthread_barrier_t *b = arg;

	pthread_barrier_wait(b); /* holding it */
	pthread_barrier_wait(b); /* the other thread timed out */
	pmem_metrics_snapshot_abort(s);
	return NULL;
}

static void test_a_timed_take_gives_up_while_another_flush_is_open(void)
{
	struct pmem_metrics_snapshot *s = NULL;
	pthread_barrier_t b;
	pthread_t t;

	pthread_barrier_init(&b, NULL, 2);
	pthread_create(&t, NULL, hold_a_flush, &b);
	pthread_barrier_wait(&b);
	errno = 0;
	CHECK(pmem_metrics_snapshot_take_into(&s, 0) == -1 && errno == ETIMEDOUT && !s);
	errno = 0;
	CHECK(pmem_metrics_snapshot_take_into(&s, 20) == -1 && errno == ETIMEDOUT && !s);
	pthread_barrier_wait(&b);
	CHECK(pmem_metrics_snapshot_take_into(&s, -1) == 0 && s != NULL);
	pmem_metrics_snapshot_commit(s);
	pthread_join(t, NULL);
	pthread_barrier_destroy(&b);
}

int main(void)
{
	RUN(test_fields_from_the_x_macro);
	RUN(test_alloc_is_idempotent);
	RUN(test_find_looks_up_and_creates_nothing);
	RUN(test_a_retired_device_is_reported_once_more_then_gone);
	RUN(test_an_alloc_before_the_final_flush_revives_it);
	RUN(test_what_lands_during_the_final_flush_keeps_it_for_one_more);
	RUN(test_counter_semantics_and_wrap);
	RUN(test_id_rules);
	RUN(test_bad_ids_are_refused_and_change_nothing);
	RUN(test_null_counters_are_tolerated);
	RUN(test_snapshot_order_aggregate_and_ids);
	RUN(test_abort_keeps_counts_and_a_second_take_is_edeadlk);
	RUN(test_a_peek_reads_counts_and_changes_nothing);
	RUN(test_the_slot_calls_refuse_bad_slots);
	RUN(test_a_published_report_can_be_withdrawn_once);
	RUN(test_a_timed_take_gives_up_while_another_flush_is_open);
	return check_summary();
}
