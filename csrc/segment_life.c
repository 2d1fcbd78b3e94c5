/*
 * segment_life.c - devices that come and go in a segment: retire, drain,
 * and what the segment's room holds.
 *
 * A retired device stays in the segment until a published flush reported
 * its final delta: then that flush drains it (under the flush lock, so no
 * other flush copies or claims meanwhile), unless anything could still
 * change what it reported -- counts added since (current != old), a
 * revival or a second retirement since (its state word), its slot given to
 * another device (`born`), or an active claim naming it (a flush on its
 * way, or a dead flusher's, whose baselines may still move back: the next
 * flush reports those counts and drains it then).  The slot stays the
 * drained device's until no process holds a reference to it
 * (segment_index.c reuses it).
 */
#include "internal.h"

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

/*
 * Retire `id`: live -> retired, without the insert lock (one
 * compare-and-swap on its slot).  ENOENT unless it is live.
 */
int pmi_seg_retire(struct pmi_seg *g, const char *id, size_t len)
{
	struct device *d;
	int err = 0;

	if (!g->writable)
		return EROFS;
	d = pmi_seg_find(g, id, len, &err);
	if (!d)
		return err;
	err = pmi_device_retire(d);
	pmi_seg_release(g, &d->m);
	return err;
}

void pmi_seg_drain(struct pmi_seg *g, const struct pmi_reported *rep)
{
	struct pmi_deadline dl = pmi_seg_deadline(-1);
	bool any = false;

	atomic_fetch_add_explicit(&pmi_seg_hdr(g)->flushes, 1, memory_order_relaxed);
	for (size_t i = 0; i < rep->m && !any; i++)
		any = rep->devs[i] && pmi_dev_state(rep->states[i]) == DEV_RETIRED;
	/* The common case: nothing retired, no lock.  A lock not had in time: a later flush drains. */
	if (!any || pmi_seg_lock(g, SEG_FLUSH_LOCK, &dl) != 0)
		return;
	any = false;
	pmi_pause_point("drain");
	for (size_t i = 0; i < rep->m; i++) {
		struct device *d = rep->devs[i];

		if (!d || pmi_dev_state(rep->states[i]) != DEV_RETIRED ||
		    atomic_load_explicit(&d->born, memory_order_acquire) != rep->borns[i] ||
		    pmi_seg_claimed(g, pmi_seg_slot_of(g, d)))
			continue;
		any |= pmi_device_drain(d, rep->states[i]);
	}
	pmi_seg_unlock(g, SEG_FLUSH_LOCK);
	if (any)
		pmi_seg_compact(g); /* out of the index */
}

void pmi_seg_view_stats(const struct pmi_seg *g, const struct pmi_seg_view *v,
			struct pmem_metrics_registry_stats *out)
{
	/* One lock test for every slot: a slot's own only if another process holds any. */
	bool others = pmi_seg_any_referenced(g, 0, v->high);

	out->capacity = g->capacity;
	out->alloc_failures = v->alloc_failures;
	out->devices = 0;
	out->retired = 0;
	for (size_t s = 0; s < v->high; s++) {
		uint32_t state = pmi_dev_state(v->state_by_slot[s]);

		out->devices += state == DEV_LIVE;
		/* A drained device whose references are all given back is room, not a device. */
		out->retired += state == DEV_RETIRED ||
				(state == DEV_DRAINED &&
				 ((g->refs && g->refs[s] != 0) || (others && pmi_seg_referenced(g, s))));
	}
}

int pmi_seg_stats(struct pmi_seg *g, struct pmem_metrics_registry_stats *out)
{
	struct pmi_seg_view v;
	int err = pmi_seg_view(g, &v);

	if (err)
		return err;
	pmi_seg_view_stats(g, &v, out);
	pmi_seg_view_free(&v);
	return 0;
}
