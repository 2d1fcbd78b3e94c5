/*
 * fault.c - every memory allocation, and the test-only fault hooks.
 *
 * Built with -DPMEM_METRICS_FAULT_INJECTION (the tests' variant), any
 * allocation can be made to fail, a thread can be stopped in the middle of
 * a critical section, and the fork handlers' registration can fail.  This
 * is the only file that looks at that macro.
 */
#include "internal.h"

#include <stdlib.h>

#ifdef PMEM_METRICS_FAULT_INJECTION
static atomic_uint fail_countdown; /* 0: off; n: the n-th allocation from now fails */

void pmem_metrics_fault_fail_alloc(unsigned n)
{
	atomic_store_explicit(&fail_countdown, n, memory_order_relaxed);
}

static void (*_Atomic pause_hook)(const char *where);

void pmem_metrics_fault_pause_hook(void (*hook)(const char *where))
{
	atomic_store_explicit(&pause_hook, hook, memory_order_relaxed);
}

void pmi_pause_point(const char *where)
{
	void (*hook)(const char *) = atomic_load_explicit(&pause_hook, memory_order_relaxed);

	if (hook)
		hook(where);
}

/*
 * PMEM_METRICS_FAULT_ATFORK=n in the environment: the first n registrations
 * of the fork handlers fail (read at load time, when the first one runs).
 */
bool pmi_fault_fail_atfork(void)
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
void pmi_pause_point(const char *where)
{
	(void)where;
}

bool pmi_fault_fail_atfork(void)
{
	return false;
}

static bool alloc_should_fail(void)
{
	return false;
}
#endif

void *pmi_malloc(size_t size)
{
	return alloc_should_fail() ? NULL : malloc(size);
}

void *pmi_realloc(void *p, size_t size)
{
	return alloc_should_fail() ? NULL : realloc(p, size);
}

void *pmi_aligned_alloc(size_t alignment, size_t size)
{
	return alloc_should_fail() ? NULL : aligned_alloc(alignment, size);
}
