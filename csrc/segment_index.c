/*
 * segment_index.c - finding and inserting ids in a segment.
 *
 * A device takes the next free slot (`high` counts the slots ever handed
 * out) and never moves; a slot a drained device left is reused once nobody
 * can write to it any more.  The index -- the slot numbers in id order --
 * is derived data, changed only under the insert lock (segment_lock.c):
 * finding an id is a lock-free binary search in every process, and a
 * reader copies the devices in id order without sorting.  An insert that
 * died half-way leaves `seq` odd; the next one rebuilds the index from the
 * published slots.  Nothing here trusts the index: a search compares the
 * id and the state of the slot it lands on, and a slot number out of range
 * sends a search to the slots themselves.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/*
 * Rebuild the index from the slots (the caller holds the insert lock):
 * after an insert or a drain died half-way, or when `used` is impossible.
 * The slots below `high` that hold devices are listed; one that is not
 * what this library writes (unpublished, an impossible id: another
 * process's doing) is left out, and its counts with it.  0, EBADMSG for an
 * impossible `high`, ENOMEM.
 */
static int seg_rebuild(struct pmi_seg *g, uint64_t seq, uint64_t *used)
{
	struct pmi_seg_header *h = pmi_seg_hdr(g);
	_Atomic uint32_t *index = pmi_seg_index(g);
	uint64_t high = pmi_seg_high(g);
	uint32_t *v, *len;
	size_t n = 0;

	if (high > g->capacity)
		return EBADMSG;
	v = pmi_malloc(2 * g->capacity * sizeof(*v));
	if (!v)
		return ENOMEM;
	len = v + g->capacity;
	atomic_store_explicit(&h->seq, seq | 1, memory_order_relaxed);
	for (size_t s = 0; s < high; s++) {
		struct device *d = pmi_seg_slot(g, s);
		uint32_t word;

		if (!atomic_load_explicit(&d->published, memory_order_acquire))
			continue;
		word = atomic_load_explicit(&d->state, memory_order_acquire);
		len[s] = (uint32_t)pmi_slot_id_len(d);
		if (!pmi_is_device(word) || len[s] == 0 ||
		    pmem_metrics_id_check(d->id, len[s]) != PMEM_METRICS_ID_OK)
			continue;
		v[n++] = (uint32_t)s;
	}
	pmi_seg_sort(g, v, n, len); /* an id in two slots stays in both (snapshot.c reports them as one) */
	for (size_t i = 0; i < n; i++)
		atomic_store_explicit(&index[i], v[i], memory_order_relaxed);
	/* Release pairs with the acquire loads of `used` by readers: they see the index. */
	atomic_store_explicit(&h->used, n, memory_order_release);
	*used = n; /* not read back: another process may write anything there */
	atomic_store_explicit(&h->seq, (seq | 1) + 1, memory_order_release);
	free(v);
	return 0;
}

/*
 * Where `id` is among the first `used` index entries, or would go (*at;
 * SIZE_MAX if an entry is not a device): the device, or NULL.  Without the
 * insert lock an insert or a drain may be moving the entries: the search
 * can then miss (the caller looks again, locked), never leave the index or
 * report a wrong device (it compares the id itself, and the slot's state).
 */
static struct device *seg_find(const struct pmi_seg *g, uint64_t used, uint64_t high,
			       const char *id, size_t len, size_t *at)
{
	_Atomic uint32_t *index = pmi_seg_index(g);
	size_t lo = 0, hi = used <= high ? used : high; /* the caller's `high` is bounded; so is this */

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uint32_t slot = atomic_load_explicit(&index[mid], memory_order_relaxed), state;
		struct device *d;
		size_t d_len;
		int cmp;

		if (slot >= high) {
			*at = SIZE_MAX; /* not a device: corrupt, or being moved */
			return NULL;
		}
		d = pmi_seg_slot(g, slot);
		state = pmi_dev_state(atomic_load_explicit(&d->state, memory_order_acquire));
		if (state == DEV_FREE) {
			*at = SIZE_MAX; /* given to a new device right now, or corrupt */
			return NULL;
		}
		/* A drained device's id still orders its entry until the entry is taken out. */
		d_len = pmi_slot_id_len(d);
		cmp = pmi_id_cmp(id, len, d->id, d_len);
		if (cmp == 0 && state == DEV_DRAINED) {
			*at = SIZE_MAX; /* this id, drained: its entry goes before another is made */
			return NULL;
		}
		if (cmp == 0)
			return d;
		if (cmp < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	*at = lo;
	return NULL;
}

/*
 * Look for `id` in the first `high` slots themselves, in slot order: for
 * when the index cannot be rebuilt (a slot that is no device), so that an
 * id allocated before is still found.  The device, or NULL.
 */
static struct device *seg_scan(const struct pmi_seg *g, uint64_t high, const char *id, size_t len)
{
	for (uint64_t i = 0; i < high && i < g->capacity; i++) {
		struct device *d = pmi_seg_slot(g, i);

		if (!atomic_load_explicit(&d->published, memory_order_acquire))
			break;
		if (pmi_is_device(atomic_load_explicit(&d->state, memory_order_acquire)) &&
		    pmi_slot_id_len(d) == len && memcmp(d->id, id, len) == 0)
			return d;
	}
	return NULL;
}

/* ---- References: which slots a process may still write to ------------------ */

/*
 * Take a reference to `d` if it is still the device of `id` (revive: a
 * retired one is made live again): 0, EAGAIN if it is not (drained, or its
 * slot given to another id since it was found: look again), or the lock's
 * error.  Checked after the reference's lock is held, and a slot is reused
 * only while no other process holds that lock, so a device that passes
 * here stays this id's for as long as the reference is held.
 */
static int seg_take(struct pmi_seg *g, struct device *d, const char *id, size_t len, bool revive)
{
	uint64_t s = pmi_seg_slot_of(g, d);
	uint32_t word;
	int err = pmi_seg_ref_get(g, s);

	if (err)
		return err;
	/* Acquire pairs with the release stores of `state`: the id and counters set before. */
	word = atomic_load_explicit(&d->state, memory_order_acquire);
	for (;;) {
		if (!pmi_is_device(word) || pmi_slot_id_len(d) != len || memcmp(d->id, id, len) != 0) {
			pmi_seg_ref_put(g, s);
			return EAGAIN;
		}
		if (!revive || pmi_dev_state(word) == DEV_LIVE)
			return 0;
		/* Retired, not drained yet: brought back (the drain's compare-and-swap then fails). */
		if (atomic_compare_exchange_weak_explicit(&d->state, &word, pmi_dev_word(word, DEV_LIVE),
							  memory_order_acq_rel, memory_order_acquire))
			return 0;
	}
}

bool pmi_seg_holds(const struct pmi_seg *g, const struct pmem_metrics *m)
{
	const char *p = (const char *)m, *slots = g->map + g->slots_off;

	return g->map && p >= slots && p < slots + g->capacity * g->slot_size;
}

void pmi_seg_release(struct pmi_seg *g, const struct pmem_metrics *m)
{
	pmi_seg_ref_put(g, pmi_seg_slot_of(g, m));
}

/* ---- Inserting, and taking drained devices out ------------------------------------ */

/*
 * A slot a drained device left that nobody can write to any more (insert
 * lock held): no reference to it in any process, no active claim naming it
 * (a dead flusher's claim is undone by moving baselines there), and no
 * flush copying or moving meanwhile (the flush lock, taken here by `dl`).
 * Taken (state DEV_FREE) and returned; SIZE_MAX if there is none, with
 * *err 0 or the flush lock's error.
 */
static uint64_t seg_reusable(struct pmi_seg *g, uint64_t high, const struct pmi_deadline *dl,
			     int *err)
{
	uint64_t found = SIZE_MAX;

	if ((*err = pmi_seg_lock(g, SEG_FLUSH_LOCK, dl)) != 0)
		return SIZE_MAX;
	for (uint64_t s = 0; s < high && found == SIZE_MAX; s++) {
		struct device *d = pmi_seg_slot(g, s);
		uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

		/*
		 * Drained; or left free below `high` by an insert that died after
		 * taking it (only the insert lock's holder takes one, and we hold it).
		 */
		if ((pmi_dev_state(word) != DEV_DRAINED && pmi_dev_state(word) != DEV_FREE) ||
		    g->refs[s] != 0 || pmi_seg_claimed(g, s) || pmi_seg_referenced(g, s))
			continue;
		/* A reference taken since the look at its lock checks the state after: it lets go. */
		if (atomic_compare_exchange_strong_explicit(&d->state, &word,
							    pmi_dev_word(word, DEV_FREE),
							    memory_order_acq_rel, memory_order_relaxed))
			found = s;
	}
	pmi_seg_unlock(g, SEG_FLUSH_LOCK);
	return found;
}

/*
 * Take the index entries of slots that hold no device out of it (insert
 * lock held): drained devices, and whatever else is not a device.
 */
static void seg_compact(struct pmi_seg *g, uint64_t seq, uint64_t *used)
{
	struct pmi_seg_header *h = pmi_seg_hdr(g);
	_Atomic uint32_t *index = pmi_seg_index(g);
	uint64_t high = pmi_seg_high(g), n = 0;

	atomic_store_explicit(&h->seq, seq | 1, memory_order_relaxed);
	for (uint64_t i = 0; i < *used; i++) {
		uint32_t slot = atomic_load_explicit(&index[i], memory_order_relaxed);

		if (slot >= high || !pmi_is_device(atomic_load_explicit(&pmi_seg_slot(g, slot)->state,
								     memory_order_acquire)))
			continue;
		atomic_store_explicit(&index[n++], slot, memory_order_relaxed);
	}
	/* Release pairs with the acquire loads of `used` by readers. */
	atomic_store_explicit(&h->used, n, memory_order_release);
	*used = n;
	atomic_store_explicit(&h->seq, (seq | 1) + 1, memory_order_release);
}

/*
 * In a segment nobody flushes (scraped only), retired devices past their
 * grace period are drained by whoever needs their room (insert lock held),
 * under the flush lock, and never one an active claim names (its baselines
 * may still move back).  Whether any was.
 */
static bool seg_expire(struct pmi_seg *g, uint64_t high, const struct pmi_deadline *dl)
{
	uint64_t now = pmi_now_ms(), grace = pmi_retire_grace_ms();
	bool any = false;

	if (atomic_load_explicit(&pmi_seg_hdr(g)->flushes, memory_order_relaxed) != 0)
		return false; /* lines are written: each retired device waits for its final one */
	if (pmi_seg_lock(g, SEG_FLUSH_LOCK, dl) != 0)
		return false;
	for (uint64_t s = 0; s < high; s++) {
		struct device *d = pmi_seg_slot(g, s);
		uint32_t word = atomic_load_explicit(&d->state, memory_order_acquire);

		if (!pmi_seg_claimed(g, s))
			any |= pmi_device_expire(d, word, now, grace);
	}
	pmi_seg_unlock(g, SEG_FLUSH_LOCK);
	return any;
}

/*
 * Whether devices are on their way out of a full segment: retired ones
 * waiting for their final flush, or drained ones whose last references are
 * still held.  An allocation waits for their room (within its deadline).
 */
static bool seg_leaving(struct pmi_seg *g)
{
	uint64_t high = pmi_seg_high(g);

	for (uint64_t s = 0; s < high; s++) {
		uint32_t state = pmi_dev_state(
			atomic_load_explicit(&pmi_seg_slot(g, s)->state, memory_order_relaxed));

		if (state == DEV_DRAINED || state == DEV_RETIRED)
			return true;
	}
	return false;
}

/*
 * Insert `id` at index position `at` (the caller holds the insert lock), in
 * a slot never used, or else one a drained device left: the device, or NULL
 * + *err (ENOSPC: no room).
 */
static struct device *seg_insert(struct pmi_seg *g, uint64_t *seq, uint64_t *used,
				 const char *id, size_t len, size_t at,
				 const struct pmi_deadline *dl, int *err)
{
	struct pmi_seg_header *h = pmi_seg_hdr(g);
	_Atomic uint32_t *index = pmi_seg_index(g);
	uint64_t high = pmi_seg_high(g), slot = high;
	struct device *d;
	uint32_t word;

	if (high > g->capacity || *used > high) {
		*err = EBADMSG;
		return NULL;
	}
	if (high == g->capacity) {
		slot = seg_reusable(g, high, dl, err);
		if (slot == SIZE_MAX && *err == 0 && seg_expire(g, high, dl)) {
			seg_compact(g, *seq, used);
			*seq = (*seq | 1) + 1;
			at = SIZE_MAX; /* the index moved: find the place again below */
			slot = seg_reusable(g, high, dl, err);
		}
		if (slot == SIZE_MAX) {
			*err = *err ? *err : ENOSPC;
			return NULL;
		}
		/* Its old entry, and any other drained device's, out of the index first. */
		seg_compact(g, *seq, used);
		*seq = (*seq | 1) + 1;
		at = SIZE_MAX;
	}
	if (at == SIZE_MAX && seg_find(g, *used, high, id, len, &at) == NULL && at == SIZE_MAX) {
		*err = EBADMSG;
		return NULL;
	}
	/* A slot never used before: its storage first (the file is sparse past it). */
	if (slot == high && (*err = pmi_seg_reserve(g, slot + 1)) != 0)
		return NULL;
	d = pmi_seg_slot(g, slot);
	/* A slot given to a new device: a flush that reported the old one leaves it alone. */
	atomic_fetch_add_explicit(&d->born, 1, memory_order_relaxed);
	for (size_t f = 0; f < NFIELDS; f++) {
		struct pmem_metrics_counter *c = pmi_counter(&d->m, f);

		atomic_store_explicit(&c->current, 0, memory_order_relaxed);
		atomic_store_explicit(&c->old, 0, memory_order_relaxed);
	}
	d->id_len = (uint32_t)len;
	memcpy(d->id, id, len);
	d->id[len] = '\0';
	atomic_store_explicit(&d->retired_ms, 0, memory_order_relaxed);
	/* Release pairs with the acquire loads in read_slots() and seg_rebuild(). */
	atomic_store_explicit(&d->published, 1, memory_order_release);
	word = atomic_load_explicit(&d->state, memory_order_relaxed);
	/* Release pairs with the acquire loads of `state`: whoever sees it live sees the rest. */
	atomic_store_explicit(&d->state, pmi_dev_word(word, DEV_LIVE), memory_order_release);
	if (slot == high)
		atomic_store_explicit(&h->high, high + 1, memory_order_release);
	/*
	 * The index changes now: a holder that dies from here on leaves `seq`
	 * odd.  Only the next holder of the insert lock reads `seq` (readers
	 * check the index itself), and the lock orders it after us: relaxed.
	 */
	atomic_store_explicit(&h->seq, *seq + 1, memory_order_relaxed);
	for (size_t k = *used; k > at; k--)
		atomic_store_explicit(&index[k],
				      atomic_load_explicit(&index[k - 1], memory_order_relaxed),
				      memory_order_relaxed);
	pmi_pause_point("insert"); /* the index names one slot twice right here */
	atomic_store_explicit(&index[at], (uint32_t)slot, memory_order_relaxed);
	/* Release pairs with the acquire loads of `used`: whoever sees it sees the slot and index. */
	atomic_store_explicit(&h->used, *used + 1, memory_order_release);
	atomic_store_explicit(&h->seq, *seq + 2, memory_order_release);
	return d;
}

/* Find or insert `id` (the insert lock held, `seen_*` what the search without it saw). */
static struct device *seg_alloc_locked(struct pmi_seg *g, const char *id, size_t len,
				       uint64_t seen_seq, uint64_t seen_used, size_t at,
				       const struct pmi_deadline *dl, int *err)
{
	struct pmi_seg_header *h = pmi_seg_hdr(g);
	uint64_t seq = atomic_load_explicit(&h->seq, memory_order_relaxed);
	uint64_t used = atomic_load_explicit(&h->used, memory_order_relaxed);
	uint64_t high = pmi_seg_high(g);
	struct device *d = NULL;
	/*
	 * Unless an insert began since `seen_seq` was even (each leaves it 2
	 * higher, and only ever under this lock), the index the search above
	 * missed in is the index now, and its `at` stands: no second search.
	 */
	bool search = seq != seen_seq || (seq & 1) || used != seen_used || at == SIZE_MAX;

	if (high > g->capacity)
		high = g->capacity; /* nonsense: what the slots say is checked by the rebuild */
	if ((seq & 1) || used > high) {
		/* An insert died half-way, or someone wrote nonsense: start again from the slots. */
		*err = seg_rebuild(g, seq, &used);
		seq = (seq | 1) + 1;
	}
	/*
	 * A miss is an absence if the index is in order.  One that another
	 * process scrambled (every entry in range) can hide an id that is
	 * there, which this then adds a second time: checking the whole index
	 * would make every insert O(devices), so instead a second slot of an
	 * id is reported with the first, as one device (snapshot.c).
	 */
	if (*err == 0 && search && !(d = seg_find(g, used, high, id, len, &at)) && at == SIZE_MAX) {
		/* The index names a slot that is no device (drained, or nonsense): rebuild it. */
		*err = seg_rebuild(g, seq, &used);
		seq += 2;
		if (*err == 0)
			d = seg_find(g, used, high, id, len, &at);
	}
	if (*err == EBADMSG && (d = seg_scan(g, high, id, len)) != NULL)
		*err = 0; /* no index to be had (a slot is not a device), but the id is there */
	else if (*err == 0 && !d)
		d = seg_insert(g, &seq, &used, id, len, at, dl, err);
	return d;
}

struct device *pmi_seg_alloc(struct pmi_seg *g, const char *id, size_t len,
			     const struct pmi_deadline *dl, int *err)
{
	struct pmi_seg_header *h;

	if (!g->writable) {
		*err = EROFS;
		return NULL;
	}
	h = pmi_seg_hdr(g);
	/* A device found may be drained and its slot reused before its reference is held: again. */
	for (unsigned round = 0;; round++) {
		struct device *d;
		uint64_t seen_seq, seen_used, seen_high;
		size_t at = SIZE_MAX;

		/* Acquire pairs with the release stores of `seq`, `used`, `high`: slots and index. */
		seen_seq = atomic_load_explicit(&h->seq, memory_order_acquire);
		seen_used = atomic_load_explicit(&h->used, memory_order_acquire);
		seen_high = pmi_seg_high(g);
		d = seg_find(g, seen_used, seen_high, id, len, &at);
		if (!d) {
			if ((*err = pmi_seg_lock(g, SEG_INSERT_LOCK, dl)) != 0)
				return NULL;
			d = seg_alloc_locked(g, id, len, seen_seq, seen_used, at, dl, err);
			pmi_seg_unlock(g, SEG_INSERT_LOCK);
			if (!d && *err == ENOSPC && seg_leaving(g)) {
				/* Full, but of devices on their way out: wait for their room. */
				*err = EAGAIN;
			} else if (!d) {
				if (*err == ENOSPC)
					atomic_fetch_add_explicit(&h->alloc_failures, 1,
								  memory_order_relaxed);
				return NULL;
			}
		}
		if (d)
			*err = seg_take(g, d, id, len, true);
		if (*err == 0)
			return d;
		if (*err != EAGAIN)
			return NULL;
		if (pmi_deadline_passed(dl)) {
			*err = ETIMEDOUT;
			return NULL;
		}
		pmi_backoff(dl, round);
	}
}

/*
 * Look `id` up, creating nothing, and take a reference to it: the device,
 * or NULL with *err ENOENT (not there) or EROFS (no mapping to point into).
 * A miss counts as an absence only if no insert ran across the search (the
 * sequence number even and unchanged, as a seqlock reader checks it);
 * after a few that did, or an index that is not in order, the slots
 * themselves are scanned, so an id that is there is found whatever another
 * process does to the index.
 */
struct device *pmi_seg_find(struct pmi_seg *g, const char *id, size_t len, int *err)
{
	const struct pmi_seg_header *h;

	if (!g->map) {
		*err = EROFS;
		return NULL;
	}
	h = pmi_seg_hdr(g);
	for (int tries = 0; tries < 8; tries++) {
		/* Acquire pairs with the release stores of `seq`, `used` and `high`. */
		uint64_t seq = atomic_load_explicit(&h->seq, memory_order_acquire);
		uint64_t used = atomic_load_explicit(&h->used, memory_order_acquire);
		uint64_t high = pmi_seg_high(g);
		struct device *d = NULL;
		size_t at = 0;

		if (used > high) {
			*err = EBADMSG;
			return NULL;
		}
		if (tries < 4) {
			d = seg_find(g, used, high, id, len, &at);
		} else {
			d = seg_scan(g, high, id, len);
			at = 0;
		}
		if (d) {
			*err = seg_take(g, d, id, len, false);
			if (*err == 0)
				return d;
			if (*err != EAGAIN)
				return NULL;
			continue; /* drained, or its slot reused, since: look again */
		}
		if (at == SIZE_MAX) {
			tries = tries < 4 ? 3 : tries; /* an entry that is no device: scan */
			continue;
		}
		/* The index loads above happen before the second load of `seq`. */
		atomic_thread_fence(memory_order_acquire);
		if (tries >= 4 ||
		    (!(seq & 1) && atomic_load_explicit(&h->seq, memory_order_relaxed) == seq)) {
			*err = ENOENT;
			return NULL;
		}
	}
	*err = ENOENT;
	return NULL;
}

void pmi_seg_compact(struct pmi_seg *g)
{
	struct pmi_deadline dl = pmi_seg_deadline(-1);
	struct pmi_seg_header *h = pmi_seg_hdr(g);

	/* Else the next insert does it: it finds entries that are no device. */
	if (pmi_seg_lock(g, SEG_INSERT_LOCK, &dl) == 0) {
		uint64_t seq = atomic_load_explicit(&h->seq, memory_order_relaxed);
		uint64_t used = atomic_load_explicit(&h->used, memory_order_relaxed);

		if (!(seq & 1) && used <= g->capacity)
			seg_compact(g, seq, &used);
		pmi_seg_unlock(g, SEG_INSERT_LOCK);
	}
}
