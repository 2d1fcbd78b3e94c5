/*
 * device.c - a device's life, the same in every kind of registry.
 *
 * A device is live from its allocation; retired (pmem_metrics_retire())
 * until a flush has reported its final delta; then drained, and let go.
 * Its state word (segment_layout.h) changes only by compare-and-swap, so a
 * revival (an alloc() of a retired id), a second retirement and a drain
 * never cross: each starts from the word the other left.  Below the
 * registries and the segment: it calls nothing but the clock.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

static pthread_once_t grace_once = PTHREAD_ONCE_INIT;
static uint64_t grace_ms = PMEM_METRICS_RETIRE_GRACE_MS;

/* PMEM_METRICS_RETIRE_GRACE_MS=ms in the environment: another grace period (0 ms to a day). */
static void read_grace(void)
{
	const char *env = getenv("PMEM_METRICS_RETIRE_GRACE_MS");
	char *end;
	long ms = env ? strtol(env, &end, 10) : -1;

	if (env && *env && !*end && ms >= 0 && ms <= 86400000L)
		grace_ms = (uint64_t)ms;
}

uint64_t pmi_retire_grace_ms(void)
{
	pthread_once(&grace_once, read_grace);
	return grace_ms;
}

int pmi_device_retire(struct device *d)
{
	uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

	while (pmi_dev_state(word) == DEV_LIVE) {
		atomic_store_explicit(&d->retired_ms, pmi_now_ms(), memory_order_relaxed);
		/* Release: whoever sees it retired sees when. */
		if (atomic_compare_exchange_weak_explicit(&d->state, &word,
							  pmi_dev_word(word, DEV_RETIRED),
							  memory_order_acq_rel, memory_order_acquire))
			return 0;
	}
	return ENOENT;
}

bool pmi_device_settled(struct device *d)
{
	for (size_t f = 0; f < NFIELDS; f++) {
		struct pmem_metrics_counter *c = pmi_counter(&d->m, f);

		if (atomic_load_explicit(&c->current, memory_order_relaxed) !=
		    atomic_load_explicit(&c->old, memory_order_acquire))
			return false;
	}
	return true;
}

/* Retired as `word` says -> drained, unless revived or retired again since. */
static bool drain_from(struct device *d, uint32_t word)
{
	return atomic_compare_exchange_strong_explicit(&d->state, &word,
						       pmi_dev_word(word, DEV_DRAINED),
						       memory_order_acq_rel, memory_order_relaxed);
}

bool pmi_device_drain(struct device *d, uint32_t word)
{
	return pmi_dev_state(word) == DEV_RETIRED && pmi_device_settled(d) && drain_from(d, word);
}

bool pmi_device_expire(struct device *d, uint32_t word, uint64_t now, uint64_t grace)
{
	return pmi_dev_state(word) == DEV_RETIRED &&
	       now - atomic_load_explicit(&d->retired_ms, memory_order_relaxed) >= grace &&
	       drain_from(d, word);
}

/*
 * A flush reports live and retired devices (a retired one's final delta);
 * a peek shows a retired one only for the grace period after its
 * retirement (a scrape-only registry is never flushed, so that is when it
 * leaves).  A drained device's final delta was reported: it is in neither.
 */
bool pmi_reports(uint32_t word, uint64_t retired_ms, enum pmi_snapshot_state state)
{
	switch (pmi_dev_state(word)) {
	case DEV_LIVE:
		return true;
	case DEV_RETIRED:
		return state != SNAPSHOT_PEEK || pmi_now_ms() - retired_ms < pmi_retire_grace_ms();
	default:
		return false;
	}
}

void pmi_device_move(struct device *d, const uint64_t *diff, bool back)
{
	for (size_t f = 0; f < NFIELDS; f++) {
		_Atomic uint64_t *old = &pmi_counter(&d->m, f)->old;
		/* A claim's amounts are in the segment: each read once. */
		uint64_t by = *(const volatile uint64_t *)&diff[f];

		if (by == 0)
			continue;
		/*
		 * Relative moves commute: a withdrawal moves back exactly what it
		 * moved, whatever flushes committed in between.  Release pairs
		 * with the acquire loads of `old` in pmem_metrics_fetch_diff() and
		 * the snapshot's copy: whoever sees the moved `old` also sees the
		 * `current` it was computed from.
		 */
		if (back)
			atomic_fetch_sub_explicit(old, by, memory_order_release);
		else
			atomic_fetch_add_explicit(old, by, memory_order_release);
	}
}
