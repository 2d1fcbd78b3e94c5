/*
 * segment_claim.c - claim records: flushes that hold no lock while their
 * report is on its way.
 *
 * A flush takes the flush lock only to copy the counters and move their
 * baselines (`old`) up by what it took, and writes what it took -- its
 * claim -- into a record of the segment first, holding that record's lock
 * (segment_lock.c) until the flush is settled for good: freed after its
 * publication, or withdrawn.  Other flushes go on meanwhile: they report
 * only what came after.  Not delivered: the flush moves the baselines back
 * down (relative moves commute with the flushes in between) and lets the
 * record go.  Killed at any step before its publication, with the record
 * active: the kernel drops its lock, and the next flush finds it so and
 * moves the baselines back for it -- so those counts are reported again (at
 * least once), never lost.  A kill half-way through moving makes the next
 * flush move back what had not moved yet as well: reported twice, again
 * never lost.  Published, the record says so: a flusher killed after that
 * had its report out, and the next flush lets its record go as it stands.
 *
 * While a record is active, the baselines of the slots it names may still
 * move back: no drain lets such a device go (segment_life.c), and no slot
 * it names is reused (segment_index.c).
 */
#include "internal.h"

#include <errno.h>
#include <string.h>

/* Whether a record in state `state` belongs to a flush not settled yet (live or dead). */
static bool in_use(uint64_t state)
{
	return state == CLAIM_ACTIVE || state == CLAIM_PUBLISHED;
}

static struct pmi_claim *claim_at(const struct pmi_seg *g, int k)
{
	return (struct pmi_claim *)(g->map + g->claims_off + (uint64_t)k * g->claim_size);
}

enum { ENTRY_SIZE = 8 + 8 * NFIELDS }; /* segment_layout.h: the slot, then a diff per field */

/* Entry `i` of claim `c`: its slot number and its diffs. */
static uint32_t *entry_slot(struct pmi_claim *c, uint64_t i)
{
	return (uint32_t *)((char *)(c + 1) + i * ENTRY_SIZE);
}

static uint64_t *entry_diff(struct pmi_claim *c, uint64_t i)
{
	return (uint64_t *)((char *)(c + 1) + i * ENTRY_SIZE + 8);
}

/*
 * Slots this process made sure have storage, and so claim entries too
 * (segment_file.c): a number from the file is bounded by it before use.
 */
static uint64_t reserved(const struct pmi_seg *g)
{
	/* Acquire pairs with the release store in pmi_seg_reserve(). */
	return atomic_load_explicit(&((struct pmi_seg *)g)->reserved, memory_order_acquire);
}

/* The entries of `c` (as the file says, read once and bounded). */
static uint64_t claim_len(const struct pmi_seg *g, const struct pmi_claim *c)
{
	uint64_t n = *(const volatile uint64_t *)&c->n, max = reserved(g);

	return n < max ? n : max;
}

/* Entry `i`'s device, or NULL if the entry names no slot (nothing of ours moved there). */
static struct device *entry_device(const struct pmi_seg *g, struct pmi_claim *c, uint64_t i)
{
	uint32_t slot = *(volatile uint32_t *)entry_slot(c, i);

	return slot < reserved(g) ? pmi_seg_slot(g, slot) : NULL;
}

/*
 * Move the baselines of claim `c`'s entries up by their diffs, or back
 * down, keeping `mark` at what is up: entries [0, mark / 2) have moved, and
 * an odd mark says entry mark / 2 is moving.  Up goes forwards, back goes
 * backwards from the last entry that moved, so a move back -- a withdrawal,
 * or the undoing of a dead flusher's claim, itself cut short or not --
 * moves back exactly what is up; only an entry a kill cut in the middle of
 * its move is moved back whole (reported twice, never lost).
 */
static void claim_move(const struct pmi_seg *g, struct pmi_claim *c, bool back)
{
	uint64_t n = claim_len(g, c);

	if (!back) {
		for (uint64_t i = 0; i < n; i++) {
			struct device *d = entry_device(g, c, i);

			atomic_store_explicit(&c->mark, 2 * i + 1, memory_order_relaxed);
			if (d)
				pmi_device_move(d, entry_diff(c, i), false);
			atomic_store_explicit(&c->mark, 2 * (i + 1), memory_order_relaxed);
			if (i == 0)
				pmi_pause_point("commit"); /* half moved right here */
		}
		return;
	}
	uint64_t up = (atomic_load_explicit(&c->mark, memory_order_relaxed) + 1) / 2;

	for (uint64_t i = up < n ? up : n; i-- > 0;) {
		struct device *d = entry_device(g, c, i);

		atomic_store_explicit(&c->mark, 2 * i + 1, memory_order_relaxed);
		if (d)
			pmi_device_move(d, entry_diff(c, i), true);
		atomic_store_explicit(&c->mark, 2 * i, memory_order_relaxed);
		if (i + 1 == (up < n ? up : n))
			pmi_pause_point("withdraw"); /* half moved back right here */
	}
}

void pmi_seg_claim_apply(struct pmi_seg *g, int k, bool back)
{
	claim_move(g, claim_at(g, k), back);
}

int pmi_seg_claim_open(struct pmi_seg *g)
{
	uint32_t mine = atomic_load_explicit(&g->mine, memory_order_relaxed);
	int free_k = -1;

	/*
	 * A dead flusher's claim names slots below `high`: storage this process
	 * may not have made sure of yet (a process that just opened the
	 * segment), and entries are bounded by what it has.
	 */
	pmi_seg_high(g);
	/*
	 * Only an active record can be a dead flusher's, and only a lock
	 * tells: one try each (one system call; it fails while the owner
	 * lives).  Then the first record that is not active and whose lock is
	 * free is ours -- one more (an owner between taking its lock and
	 * marking the record active holds it: the next one is tried).
	 */
	for (int k = 0; k < SEG_CLAIMS; k++) {
		struct pmi_claim *c = claim_at(g, k);
		uint64_t state;

		if ((mine & (1u << k)) || !in_use(atomic_load_explicit(&c->state, memory_order_relaxed)))
			continue;
		if (pmi_seg_claim_lock(g, k) != 0)
			continue; /* a flush of another process, its report on the way */
		/* Acquire pairs with the release store that made it active: its entries. */
		state = atomic_load_explicit(&c->state, memory_order_acquire);
		if (state == CLAIM_ACTIVE)
			claim_move(g, c, true); /* its owner died before its report was out: again */
		if (in_use(state))
			atomic_store_explicit(&c->state, 0, memory_order_release);
		if (free_k < 0)
			free_k = k; /* keep its lock: ours now */
		else
			pmi_seg_claim_unlock(g, k);
	}
	for (int k = 0; free_k < 0 && k < SEG_CLAIMS; k++) {
		if ((mine & (1u << k)) ||
		    in_use(atomic_load_explicit(&claim_at(g, k)->state, memory_order_relaxed)))
			continue;
		if (pmi_seg_claim_lock(g, k) == 0)
			free_k = k;
	}
	if (free_k >= 0)
		atomic_fetch_or_explicit(&g->mine, 1u << free_k, memory_order_relaxed);
	return free_k;
}

int pmi_seg_claim_record(struct pmi_seg *g, int k, struct device *const *devs,
			 const uint64_t *moves, size_t m)
{
	struct pmi_claim *c = claim_at(g, k);
	uint64_t n = 0;

	for (size_t i = 0; i < m; i++) {
		const uint64_t *diff = &moves[i * NFIELDS];
		bool any = false;

		for (size_t f = 0; f < NFIELDS; f++)
			any |= diff[f] != 0;
		if (!any)
			continue;
		if (n == g->capacity)
			return EBADMSG; /* more devices than slots: cannot be */
		*entry_slot(c, n) = (uint32_t)pmi_seg_slot_of(g, devs[i]);
		memcpy(entry_diff(c, n), diff, NFIELDS * sizeof(*diff));
		n++;
	}
	c->n = n;
	atomic_store_explicit(&c->mark, 0, memory_order_relaxed);
	/* Release: whoever finds it active finds its entries (claim_move()). */
	atomic_store_explicit(&c->state, CLAIM_ACTIVE, memory_order_release);
	return 0;
}

void pmi_seg_claim_publish(struct pmi_seg *g, int k)
{
	/* Release: after the report went out (the caller's line). */
	atomic_store_explicit(&claim_at(g, k)->state, CLAIM_PUBLISHED, memory_order_release);
}

void pmi_seg_claim_close(struct pmi_seg *g, int k)
{
	atomic_store_explicit(&claim_at(g, k)->state, 0, memory_order_release);
	atomic_fetch_and_explicit(&g->mine, ~(1u << k), memory_order_relaxed);
	pmi_seg_claim_unlock(g, k);
}

bool pmi_seg_claimed(struct pmi_seg *g, uint64_t s)
{
	pmi_seg_high(g); /* the claims' entries this process may read: see pmi_seg_claim_open() */
	for (int k = 0; k < SEG_CLAIMS; k++) {
		struct pmi_claim *c = claim_at(g, k);
		uint64_t n;

		/* Acquire pairs with the release store that made it active: its entries. */
		if (!in_use(atomic_load_explicit(&c->state, memory_order_acquire)))
			continue;
		n = claim_len(g, c);
		for (uint64_t i = 0; i < n; i++)
			if (*(const volatile uint32_t *)entry_slot(c, i) == s)
				return true;
	}
	return false;
}
