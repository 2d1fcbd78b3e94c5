/*
 * check.h - the validation suite's few macros.
 *
 * A test is a `static void test_x(void)` using CHECK(); main() lists them
 * with RUN() and returns check_summary(), which prints "N passed, N failed".
 */
#ifndef PMEM_METRICS_CHECK_H
#define PMEM_METRICS_CHECK_H

#include <stdio.h>

static int check_failures, check_passed, check_failed;

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

#endif /* PMEM_METRICS_CHECK_H */
