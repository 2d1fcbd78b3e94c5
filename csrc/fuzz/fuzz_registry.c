/*
 * fuzz_registry.c - libFuzzer target for drive ids and the registry.
 *
 * Each input is a candidate drive id (raw bytes).  pmem_metrics_id_check() is
 * diffed against an independent reference: glibc's UTF-8 decoder (mbrtowc in
 * the C.UTF-8 locale, which rejects overlongs and surrogates) plus the rules
 * it does not know (<= U+10FFFF, no NUL/C0/DEL/C1, <= 64 code points).  Then:
 * a rejected id must fail with EINVAL and change nothing; an accepted one
 * must allocate once (same pointer twice) and count exactly; every so often
 * a snapshot must be sorted, hold each id once, and sum to its aggregate.
 *
 *   make -C csrc fuzz FUZZ_SECONDS=20
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <locale.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "pmem_metrics.h"
#include "validate/check.h" /* check_aggregate_is_sum() */

static bool reference_valid(const uint8_t *p, size_t n)
{
	mbstate_t st;
	size_t chars = 0;

	memset(&st, 0, sizeof(st));
	if (n == 0)
		return false;
	while (n > 0) {
		wchar_t w;
		size_t r = mbrtowc(&w, (const char *)p, n, &st);

		if (r == 0 || r == (size_t)-1 || r == (size_t)-2)
			return false; /* NUL, invalid, truncated */
		if ((unsigned long)w > 0x10ffff || w < 0x20 || (w >= 0x7f && w <= 0x9f))
			return false;
		p += r;
		n -= r;
		chars++;
	}
	return chars <= PMEM_METRICS_ID_MAX_CHARS;
}

static void check_snapshot(void)
{
	struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();

	if (!s)
		abort();
	for (size_t i = 1; i < pmem_metrics_snapshot_len(s); i++)
		if (strcmp(pmem_metrics_snapshot_id(s, i - 1), pmem_metrics_snapshot_id(s, i)) >= 0)
			abort(); /* not strictly sorted: out of order or a duplicate */
	if (!check_aggregate_is_sum(s))
		abort();
	pmem_metrics_snapshot_commit(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	static unsigned inputs;
	const char *id = (const char *)data;
	bool valid;
	size_t before;
	struct pmem_metrics *m;

	if (!ready) {
		if (!setlocale(LC_CTYPE, "C.UTF-8"))
			abort();
		ready = true;
	}
	valid = reference_valid(data, size);
	if ((pmem_metrics_id_check(id, size) == PMEM_METRICS_ID_OK) != valid)
		abort();

	before = pmem_metrics_device_count();
	errno = 0;
	m = pmem_metrics_alloc_len(id, size);
	if (!valid) {
		if (m || errno != EINVAL || pmem_metrics_device_count() != before)
			abort();
		return 0;
	}
	if (!m || pmem_metrics_alloc_len(id, size) != m)
		abort();
	{
		uint64_t v = size * 0x9e3779b97f4a7c15u, c = pmem_metrics_count(&m->cfg_fails);

		pmem_metrics_add(&m->cfg_fails, v);
		if (pmem_metrics_count(&m->cfg_fails) != c + v)
			abort();
	}
	if (++inputs % 4096 == 0)
		check_snapshot();
	return 0;
}
