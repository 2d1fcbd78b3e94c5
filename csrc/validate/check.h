/*
 * check.h - the validation suite's few macros, and the check every flush must pass.
 *
 * A test is a `static void test_x(void)` using CHECK(); main() lists them
 * with RUN() and returns check_summary(), which prints "N passed, N failed".
 * check_aggregate_is_sum() is also what fuzz/fuzz_registry.c checks, which
 * includes this header for it alone.
 */
#ifndef PMEM_METRICS_CHECK_H
#define PMEM_METRICS_CHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pmem_metrics.h"

/* (unused where only check_aggregate_is_sum() is wanted: the fuzz target) */
__attribute__((unused)) static int check_failures, check_passed, check_failed;

#define CHECK(cond)                                                                   \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			check_failures++;                                             \
		}                                                                     \
	} while (0)

#define RUN(test)                                                                     \
	do {                                                                          \
		int before_ = check_failures;                                         \
		test();                                                               \
		if (check_failures == before_) {                                      \
			check_passed++;                                               \
			printf("ok - %s\n", #test);                                   \
		} else {                                                              \
			check_failed++;                                               \
			printf("FAIL - %s\n", #test);                                 \
		}                                                                     \
	} while (0)

static inline int check_summary(void)
{
	printf("%d passed, %d failed\n", check_passed, check_failed);
	return check_failed != 0;
}

/*
 * Whether the aggregate of `s` is the field-wise sum (modulo 2^64) of its
 * rows' diffs, as Firecracker's "pmem" is of the "pmem_<id>" objects.  False
 * for a NULL snapshot.  It records nothing, so threads may call it: a test
 * CHECK()s it, or counts the misses itself.
 */
static inline bool check_aggregate_is_sum(const struct pmem_metrics_snapshot *s)
{
	const uint64_t *diffs = pmem_metrics_snapshot_diffs(s);
	const uint64_t *agg = pmem_metrics_snapshot_aggregate(s);
	size_t nf = pmem_metrics_snapshot_nfields(s);
	uint64_t sum[64] = {0}; /* a segment holds at most 64 fields */

	if (!s || !agg || nf > 64)
		return false;
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++)
		for (size_t f = 0; f < nf; f++)
			sum[f] += diffs[i * nf + f];
	return memcmp(sum, agg, nf * sizeof(*sum)) == 0;
}

/* UNDER_TSAN: defined when built with ThreadSanitizer (gcc or clang). */
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif

#endif /* PMEM_METRICS_CHECK_H */
