/*
 * snapshot_copy.c - a registry's devices copied into a snapshot.
 *
 * Each counter is loaded once, and a row's diff and the aggregate come from
 * that same load.  A private registry is copied under its read lock; a
 * segment without any lock, from a view of it (segment_read.c) whose ids
 * are checked as they are copied: out of order, the slots are sorted and
 * copied again.  A segment opened read-only may have another build's
 * fields: its rows have the segment's own.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A snapshot of up to `n` devices; `merging`: with moves of their own (see above). */
static struct pmem_metrics_snapshot *snapshot_new(size_t n, size_t ids_len, bool merging,
						  enum pmi_snapshot_state state,
						  struct pmem_metrics_registry *r)
{
	/*
	 * One block: header, seen, diffs, moves, devs, id_at, ids -- the
	 * uint64_t arrays first, so they are 8-byte aligned even where pointers
	 * are 4 bytes.
	 */
	size_t arrays = merging ? 3 : 2, nf = r->seg ? r->seg->nfields : NFIELDS, own_len;
	const char *own = pmi_fields(&own_len);
	/* Another build's fields are copied: a peek outlives a registry closed after it. */
	size_t copied = r->seg && !r->seg->own_fields ? r->seg->fields_len : 0;
	size_t size = sizeof(struct pmem_metrics_snapshot) + arrays * n * nf * sizeof(uint64_t) +
		      n * (sizeof(struct device *) + sizeof(size_t) + 2 * sizeof(uint32_t)) + copied +
		      ids_len;
	struct pmem_metrics_snapshot *s = pmi_malloc(size);

	if (!s)
		return NULL;
	memset(s, 0, sizeof(*s));
	s->n = s->m = n;
	s->nf = nf;
	s->claim = -1;
	s->seen = (uint64_t *)(s + 1);
	s->diffs = s->seen + n * nf;
	s->moves = merging ? s->diffs + n * nf : s->diffs;
	s->devs = (struct device **)(s->seen + arrays * n * nf);
	s->id_at = (size_t *)(s->devs + n);
	s->states = (uint32_t *)(s->id_at + n);
	s->borns = s->states + n;
	s->fields = own;
	s->fields_len = own_len;
	if (copied) {
		s->fields = memcpy(s->borns + n, r->seg->fields, copied);
		s->fields_len = copied;
	}
	s->ids = (char *)(s->borns + n) + copied;
	s->ids_len = ids_len;
	s->state = state;
	s->reg = r;
	return s;
}

/* Device `d`'s counters, each loaded once: `current` into seen[f], current - old into diff[f]. */
static void load_counters(struct device *d, uint64_t *seen, uint64_t *diff)
{
	for (size_t f = 0; f < NFIELDS; f++) {
		struct pmem_metrics_counter *c = pmi_counter(&d->m, f);
		/*
		 * A flush holds the flush lock, which orders it after the last
		 * commit, so it could load `old` relaxed; a peek holds no such
		 * lock, so acquire pairs with the commit's release read-modify-
		 * write, as in pmem_metrics_fetch_diff().  `current` is loaded
		 * once; diff and aggregate both use that load.
		 */
		uint64_t old = atomic_load_explicit(&c->old, memory_order_acquire);

		seen[f] = atomic_load_explicit(&c->current, memory_order_relaxed);
		diff[f] = seen[f] - old;
	}
}

/*
 * Devices are separate allocations (they never move), so a large snapshot
 * walks scattered memory: ask for a device's lines a few devices ahead, so
 * the walk overlaps the cache misses instead of waiting for each in turn.
 */
enum { PREFETCH_AHEAD = 16 };

static void prefetch_device(const struct device *d)
{
#if defined(__GNUC__)
	/* Its NFIELDS counter lines, then the line the id starts on (see the static asserts). */
	for (size_t line = 0; line <= NFIELDS; line++)
		__builtin_prefetch((const char *)d + 64 * line, 0, 0);
#else
	(void)d;
#endif
}

static int load_private(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
			struct pmem_metrics_snapshot **out)
{
	struct pmem_metrics_snapshot *s;
	char *ids;

	pthread_rwlock_rdlock(&r->lock);
	s = snapshot_new(r->n, r->id_bytes, false, state, r);
	if (!s) {
		pthread_rwlock_unlock(&r->lock);
		return ENOMEM;
	}
	s->n = s->m = 0; /* counted up as devices are copied: not every one is reported */
	ids = s->ids;
	for (size_t k = 0, i = 0; k < r->n; k++) {
		struct device *d = r->v[k];
		uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

		if (k + PREFETCH_AHEAD < r->n)
			prefetch_device(r->v[k + PREFETCH_AHEAD]);
		if (!pmi_reports(word, atomic_load_explicit(&d->retired_ms, memory_order_relaxed),
				 state))
			continue;
		s->devs[i] = d;
		s->states[i] = word;
		s->borns[i] = 0; /* a private device is never reborn: it is freed */
		s->id_at[i] = (size_t)(ids - s->ids);
		memcpy(ids, d->id, d->id_len + 1);
		ids += d->id_len + 1;
		load_counters(d, &s->seen[i * NFIELDS], &s->diffs[i * NFIELDS]);
		for (size_t f = 0; f < NFIELDS; f++)
			s->agg[f] += s->diffs[i * NFIELDS + f];
		if (i == 0 && state == SNAPSHOT_OPEN)
			pmi_pause_point("copy"); /* half copied right here */
		s->n = s->m = ++i;
	}
	s->ids_len = (size_t)(ids - s->ids);
	pthread_rwlock_unlock(&r->lock);
	*out = s;
	return 0;
}

/*
 * Copy the view `v` into `s`, in its order: EAGAIN if its ids decrease
 * somewhere (the index is being changed, or is nonsense), EBADMSG for an id
 * this library would not accept.  Slots of one id (a damaged index let an
 * insert add it twice) are one device, the sum of their counts.
 */
static int copy_view(struct pmem_metrics_snapshot *s, const struct pmi_seg_view *v)
{
	char *ids = s->ids;
	size_t rows = 0, prev_len = 0;
	size_t m = 0; /* devices copied: slots, each of a row (two of one row: one id twice) */
	size_t nf = s->nf;

	memset(s->agg, 0, sizeof(s->agg));
	for (size_t i = 0; i < v->n; i++) {
		size_t len = v->len[i];
		uint64_t *seen = &s->seen[rows * nf], *diff = &s->moves[m * nf];
		uint64_t loaded[SEG_MAX_FIELDS];
		int order = -1; /* the previous id against this one: before it, as it should be */
		uint64_t retired_ms;

		if (!v->copy && i + PREFETCH_AHEAD < v->n)
			prefetch_device(pmi_view_device(v, i + PREFETCH_AHEAD));
		retired_ms = v->copy ? v->copy[v->slot[i]].retired_ms
				     : atomic_load_explicit(&pmi_view_device(v, i)->retired_ms,
							    memory_order_relaxed);
		if (!pmi_reports(v->state[i], retired_ms, s->state))
			continue; /* drained, or retired and past its grace (a peek) */
		/*
		 * The copy is what gets reported, so the copy is checked: an id
		 * this library accepts (a NUL in it would report a count under
		 * another name), and not before the one before it -- another
		 * process may write the slots as we copy.
		 */
		memcpy(ids, pmi_view_id(v, i), len);
		ids[len] = '\0';
		if (pmem_metrics_id_check(ids, len) != PMEM_METRICS_ID_OK)
			return EBADMSG;
		if (rows > 0)
			order = pmi_id_cmp(s->ids + s->id_at[rows - 1], prev_len, ids, len);
		if (order > 0)
			return EAGAIN;
		s->states[m] = v->state[i];
		if (v->copy) {
			const struct pmi_slot_copy *c = &v->copy[v->slot[i]];

			s->devs[m] = NULL; /* a copy: nothing to commit to */
			s->borns[m] = 0;
			for (size_t f = 0; f < nf; f++) {
				loaded[f] = c->counts[f];
				diff[f] = c->counts[f] - c->counts[nf + f];
			}
		} else {
			struct device *d = pmi_view_device(v, i); /* a writer's: this build's fields */

			s->devs[m] = d;
			s->borns[m] = atomic_load_explicit(&d->born, memory_order_acquire);
			load_counters(d, loaded, diff);
			/*
			 * A peek holds no lock: the slot may have been drained and given
			 * to another device while it was read.  Its state, read again,
			 * says (a flush holds the flush lock, which a reuse takes).
			 */
			if (s->state == SNAPSHOT_PEEK &&
			    atomic_load_explicit(&d->state, memory_order_acquire) != v->state[i])
				continue;
		}
		m++;
		prev_len = len;
		if (order == 0) { /* the id again: the same device, in a second slot */
			seen -= nf;
			for (size_t f = 0; f < nf; f++) {
				seen[f] += loaded[f];
				s->diffs[(rows - 1) * nf + f] += diff[f];
			}
		} else {
			s->id_at[rows] = (size_t)(ids - s->ids);
			ids += len + 1;
			memcpy(seen, loaded, nf * sizeof(*loaded));
			memcpy(&s->diffs[rows * nf], diff, nf * sizeof(*loaded));
			rows++;
		}
		for (size_t f = 0; f < nf; f++)
			s->agg[f] += diff[f];
		if (m == 1 && s->state == SNAPSHOT_OPEN)
			pmi_pause_point("copy"); /* half copied right here */
	}
	s->n = rows;
	s->m = m;
	s->ids_len = (size_t)(ids - s->ids);
	return 0;
}

static int load_segment(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
			struct pmem_metrics_snapshot **out)
{
	struct pmi_seg_view v;
	struct pmem_metrics_snapshot *s;
	struct pmem_metrics_registry_stats room;
	size_t ids_len = 0;
	int err = pmi_seg_check_identity(r->seg);

	/* Through the mapping where there is one (a flush moves baselines there), else copied. */
	if (err == 0)
		err = pmi_seg_view(r->seg, &v);
	if (err)
		return err;
	/*
	 * The segment's room, from the same reading: a scrape reads both at
	 * once.  Only a peek shows it; a flush (flush lock held) has no use for
	 * it, and it costs a lock test a drained slot.
	 */
	if (state == SNAPSHOT_PEEK)
		pmi_seg_view_stats(r->seg, &v, &room);
	/*
	 * Room for every device slot, not only the index's: a sort of the slots
	 * (the index out of order) can list more than the index did.
	 */
	for (size_t k = 0; k < v.high; k++)
		ids_len += v.by_slot[k] + 1;
	s = snapshot_new(v.high, ids_len, true, state, r);
	if (!s) {
		pmi_seg_view_free(&v);
		return ENOMEM;
	}
	/* Out of order: the index is being changed, or is nonsense.  Sort, and copy again. */
	while ((err = copy_view(s, &v)) == EAGAIN)
		if ((err = pmi_seg_view_sort(&v)) != 0)
			break;
	if (err) {
		free(s);
		pmi_seg_view_free(&v); /* if pmi_seg_view_sort() has not, giving up */
		return err == EAGAIN ? EBADMSG : err;
	}
	pmi_seg_view_free(&v);
	s->has_room = state == SNAPSHOT_PEEK;
	if (s->has_room)
		s->room = room;
	*out = s;
	return 0;
}

int pmi_snapshot_load(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
		      struct pmem_metrics_snapshot **out)
{
	return r->seg ? load_segment(r, state, out) : load_private(r, state, out);
}
