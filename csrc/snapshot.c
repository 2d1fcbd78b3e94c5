/*
 * snapshot.c - flushes and peeks: take, copy, publish, withdraw, commit.
 *
 * See pmem_metrics.h for the guarantees.  A flush holds its registry's flush
 * lock from its take until it is published, committed, withdrawn or
 * aborted -- in a segment, only until its claim is recorded (segment_claim.c)
 * -- and the copy itself takes the private registry's read lock, and no
 * lock at all in a segment (segment_read.c reads it lock-free).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct pmem_metrics_snapshot {
	size_t n;         /* devices reported: one per id */
	uint64_t *seen;   /* n * NFIELDS: `current` as loaded */
	uint64_t *diffs;  /* n * NFIELDS: seen - old */
	uint64_t agg[NFIELDS];
	/*
	 * What a commit moves: m devices, each `old` by its own diffs.  One per
	 * id (moves == diffs), except in a segment whose damaged index let one
	 * id into two slots: both are reported as one device, and each moves
	 * by what it held.  `devs` are NULL for a peek of a copy.
	 */
	size_t m;
	struct device **devs;
	uint64_t *moves;
	uint32_t *states; /* m: each device's state word at the take (see pmi_reported) */
	uint32_t *borns;  /* m: each device's `born` at the take */
	/*
	 * In a segment: the claim record that holds what this flush moved at
	 * its take (segment_claim.c), so that it holds no flush lock while
	 * its report is on its way; -1 if it holds the flush lock instead (a
	 * private registry, or every record in use) and moves at its publish.
	 */
	int claim;
	bool locked; /* holds its registry's flush lock */
	uint64_t forks; /* pmi_forks at the take: a segment's flush forked away stays the parent's */
	enum pmi_snapshot_state state;
	struct pmem_metrics_registry *reg; /* whose flush it is */
	size_t *id_at; /* n: where each device's id starts in `ids` */
	char *ids;     /* every id, each followed by NUL: copies, never the segment's own */
	size_t ids_len;
};

/*
 * The open flush of this thread, if any: one at a time, in any registry (a
 * second in the same segment, opened twice, would deadlock).
 */
static _Thread_local struct pmem_metrics_snapshot *held;


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
	size_t arrays = merging ? 3 : 2;
	size_t size = sizeof(struct pmem_metrics_snapshot) +
		      arrays * n * NFIELDS * sizeof(uint64_t) +
		      n * (sizeof(struct device *) + sizeof(size_t) + 2 * sizeof(uint32_t)) + ids_len;
	struct pmem_metrics_snapshot *s = pmi_malloc(size);

	if (!s)
		return NULL;
	memset(s, 0, sizeof(*s));
	s->n = s->m = n;
	s->claim = -1;
	s->seen = (uint64_t *)(s + 1);
	s->diffs = s->seen + n * NFIELDS;
	s->moves = merging ? s->diffs + n * NFIELDS : s->diffs;
	s->devs = (struct device **)(s->seen + arrays * n * NFIELDS);
	s->id_at = (size_t *)(s->devs + n);
	s->states = (uint32_t *)(s->id_at + n);
	s->borns = s->states + n;
	s->ids = (char *)(s->borns + n);
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

	memset(s->agg, 0, sizeof(s->agg));
	for (size_t i = 0; i < v->n; i++) {
		size_t len = v->len[i];
		uint64_t *seen = &s->seen[rows * NFIELDS], *diff = &s->moves[m * NFIELDS];
		uint64_t loaded[NFIELDS];
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
			for (size_t f = 0; f < NFIELDS; f++) {
				loaded[f] = c->current[f];
				diff[f] = c->current[f] - c->old[f];
			}
		} else {
			struct device *d = pmi_view_device(v, i);

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
			seen -= NFIELDS;
			for (size_t f = 0; f < NFIELDS; f++) {
				seen[f] += loaded[f];
				s->diffs[(rows - 1) * NFIELDS + f] += diff[f];
			}
		} else {
			s->id_at[rows] = (size_t)(ids - s->ids);
			ids += len + 1;
			memcpy(seen, loaded, sizeof(loaded));
			memcpy(&s->diffs[rows * NFIELDS], diff, sizeof(loaded));
			rows++;
		}
		for (size_t f = 0; f < NFIELDS; f++)
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
	size_t ids_len = 0;
	int err = pmi_seg_check_identity(r->seg);

	/* Through the mapping where there is one (a flush moves baselines there), else copied. */
	if (err == 0)
		err = pmi_seg_view(r->seg, &v);
	if (err)
		return err;
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
	*out = s;
	return 0;
}

/* Copy registry `r`'s devices into a new snapshot of kind `state`. */
static int load(struct pmem_metrics_registry *r, enum pmi_snapshot_state state,
		struct pmem_metrics_snapshot **out)
{
	return r->seg ? load_segment(r, state, out) : load_private(r, state, out);
}

/*
 * Let go of the flush lock `s` holds.  This thread's flush is `held` while
 * it is open or holds the lock (a second one would wait for this one).
 */
static void unlock_flush(struct pmem_metrics_snapshot *s)
{
	s->locked = false;
	pmi_flushing = NULL;
	pmi_kind_of(s->reg)->flush_unlock(s->reg);
}

static void unhold(struct pmem_metrics_snapshot *s)
{
	if (held == s && s->state != SNAPSHOT_OPEN && !s->locked)
		held = NULL;
}

/*
 * A flush of a segment, its copy made under the flush lock in claim record
 * `k`'s name: record what it took there, move the baselines now, and let the
 * flush lock go, so other processes' flushes need not wait for this one's
 * report to reach its reader.  The record stays active until the flush is
 * settled for good.  With no record (k < 0: every one in use), it keeps the
 * flush lock instead, until then.
 */
static void claim(struct pmem_metrics_snapshot *s, int k)
{
	struct pmi_seg *g = s->reg->seg;

	if (k < 0)
		return;
	if (pmi_seg_claim_record(g, k, s->devs, s->moves, s->m) != 0) {
		pmi_seg_claim_close(g, k);
		return;
	}
	s->claim = k;
	pmi_pause_point("claim"); /* recorded, nothing moved yet */
	pmi_seg_claim_apply(g, k, false);
	unlock_flush(s);
}

/*
 * Whether `s` is a flush of a segment that a fork() since its take left to
 * the parent: it is settled here without moving anything or letting go of
 * anything (the parent's locks and claims stay the parent's).
 */
static bool forked_away(struct pmem_metrics_snapshot *s)
{
	if (!s->reg || !s->reg->seg || s->state == SNAPSHOT_PEEK ||
	    s->forks == atomic_load_explicit(&pmi_forks, memory_order_relaxed))
		return false;
	if (held == s)
		held = NULL;
	s->state = SNAPSHOT_SETTLED;
	s->claim = -1;
	s->locked = false;
	return true;
}

int pmem_metrics_registry_snapshot_take_into(struct pmem_metrics_registry *r,
					     struct pmem_metrics_snapshot **slot, int timeout_ms)
{
	const struct pmi_kind *kind;
	int err, k;

	if (!r || !slot || *slot) {
		errno = EINVAL;
		return -1;
	}
	if (held)
		forked_away(held);
	if (held) {
		errno = EDEADLK;
		return -1;
	}
	if ((err = pmi_ready(r)) != 0) {
		errno = err;
		return -1;
	}
	kind = pmi_kind_of(r);
	if ((err = kind->flush_lock(r, timeout_ms)) != 0) {
		errno = err;
		return -1;
	}
	pmi_pause_point("take");
	/* First: flushes whose processes died give back what they took (segment_claim.c). */
	k = r->seg ? pmi_seg_claim_open(r->seg) : -1;
	/* Counted before the copy: no device it copies is let go while it is out. */
	atomic_fetch_add_explicit(&r->open_flushes, 1, memory_order_acq_rel);
	err = load(r, SNAPSHOT_OPEN, slot);
	if (err) {
		atomic_fetch_sub_explicit(&r->open_flushes, 1, memory_order_release);
		if (k >= 0)
			pmi_seg_claim_close(r->seg, k);
		kind->flush_unlock(r);
		errno = err;
		return -1;
	}
	held = *slot;
	pmi_flushing = r;
	(*slot)->locked = true;
	(*slot)->forks = atomic_load_explicit(&pmi_forks, memory_order_relaxed);
	claim(*slot, k);
	return 0;
}

int pmem_metrics_snapshot_take_into(struct pmem_metrics_snapshot **slot, int timeout_ms)
{
	return pmem_metrics_registry_snapshot_take_into(&pmi_default_registry, slot, timeout_ms);
}

struct pmem_metrics_snapshot *pmem_metrics_registry_snapshot_take(struct pmem_metrics_registry *r)
{
	struct pmem_metrics_snapshot *s = NULL;

	return pmem_metrics_registry_snapshot_take_into(r, &s, -1) == 0 ? s : NULL;
}

struct pmem_metrics_snapshot *pmem_metrics_snapshot_take(void)
{
	return pmem_metrics_registry_snapshot_take(&pmi_default_registry);
}

int pmem_metrics_registry_snapshot_peek_into(struct pmem_metrics_registry *r,
					     struct pmem_metrics_snapshot **slot, int timeout_ms)
{
	int err;

	(void)timeout_ms; /* a peek waits for nothing: private, a read lock held by short code; a segment, none */
	if (!r || !slot || *slot) {
		errno = EINVAL;
		return -1;
	}
	if ((err = pmi_ready(r)) != 0 || (err = load(r, SNAPSHOT_PEEK, slot)) != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

int pmem_metrics_snapshot_peek_into(struct pmem_metrics_snapshot **slot)
{
	return pmem_metrics_registry_snapshot_peek_into(&pmi_default_registry, slot, -1);
}

struct pmem_metrics_snapshot *pmem_metrics_registry_snapshot_peek(struct pmem_metrics_registry *r)
{
	struct pmem_metrics_snapshot *s = NULL;

	return pmem_metrics_registry_snapshot_peek_into(r, &s, -1) == 0 ? s : NULL;
}

struct pmem_metrics_snapshot *pmem_metrics_snapshot_peek(void)
{
	return pmem_metrics_registry_snapshot_peek(&pmi_default_registry);
}

size_t pmem_metrics_snapshot_len(const struct pmem_metrics_snapshot *s)
{
	return s ? s->n : 0;
}

const char *pmem_metrics_snapshot_id(const struct pmem_metrics_snapshot *s, size_t i)
{
	return s && i < s->n ? s->ids + s->id_at[i] : NULL;
}

const char *pmem_metrics_snapshot_ids(const struct pmem_metrics_snapshot *s, size_t *len)
{
	if (len)
		*len = s ? s->ids_len : 0;
	return s ? s->ids : NULL;
}

const uint64_t *pmem_metrics_snapshot_diffs(const struct pmem_metrics_snapshot *s)
{
	return s ? s->diffs : NULL;
}

const uint64_t *pmem_metrics_snapshot_aggregate(const struct pmem_metrics_snapshot *s)
{
	return s ? s->agg : NULL;
}

const uint64_t *pmem_metrics_snapshot_counts(const struct pmem_metrics_snapshot *s)
{
	return s ? s->seen : NULL;
}

/*
 * The flush `s` is settled for good (freed after its publication, or
 * withdrawn): let go of its claim, or of the flush lock it holds.
 */
static void settle(struct pmem_metrics_snapshot *s)
{
	if (s->claim >= 0)
		pmi_seg_claim_close(s->reg->seg, s->claim);
	s->claim = -1;
	if (s->locked)
		unlock_flush(s);
	unhold(s);
}

/*
 * Move every counter's `old` by the diff `s` reported: up for a commit, back
 * down for a withdrawal -- through its claim record where it has one.
 * Relative moves commute, so a withdrawal needs no flush lock: the flushes
 * committed since keep exactly their own diffs.
 */
static void move_old(const struct pmem_metrics_snapshot *s, bool back)
{
	/*
	 * The read lock is not needed for the devices (they never move); it
	 * makes a commit atomic with respect to fork(), whose prepare handler
	 * takes the default registry's write lock, so a child never sees half
	 * of one.  (A segment's counters are shared with the child anyway.)
	 */
	struct pmem_metrics_registry *r = s->reg;

	if (s->claim >= 0) {
		pmi_seg_claim_apply(r->seg, s->claim, back);
		return;
	}
	pthread_rwlock_rdlock(&r->lock);
	for (size_t i = 0; i < s->m; i++) {
		/* A segment's slot given to another device since (after a drain): not ours to move. */
		if (back && atomic_load_explicit(&s->devs[i]->born, memory_order_acquire) != s->borns[i])
			continue;
		pmi_device_move(s->devs[i], &s->moves[i * NFIELDS], back);
		if (i == 0)
			pmi_pause_point(back ? "withdraw" : "commit"); /* half moved right here */
	}
	pthread_rwlock_unlock(&r->lock);
}

void pmem_metrics_snapshot_publish(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s || forked_away(s) || s->state != SNAPSHOT_OPEN)
		return;
	if (s->claim < 0)
		move_old(s, false); /* a claim moved at its take */
	s->state = SNAPSHOT_PUBLISHED;
	/*
	 * A private registry's flush lets its flush lock go now (a withdrawal
	 * after this is safe there: see pmi_private_drain()).  A segment's
	 * flush keeps its claim, or the flush lock, until it is settled: until
	 * then its baselines may move back, and no drain may let its devices go.
	 */
	if (!s->reg->seg)
		unlock_flush(s);
	unhold(s);
}

void pmem_metrics_snapshot_withdraw(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s || forked_away(s))
		return;
	if (s->state == SNAPSHOT_OPEN) {
		if (s->claim >= 0)
			move_old(s, true); /* it moved at its take: back down */
	} else if (s->state == SNAPSHOT_PUBLISHED) {
		move_old(s, true);
	} else {
		return;
	}
	s->state = SNAPSHOT_SETTLED;
	settle(s);
}

int pmem_metrics_snapshot_is_open(const struct pmem_metrics_snapshot *s)
{
	return s && s->state == SNAPSHOT_OPEN;
}

void pmem_metrics_snapshot_free(struct pmem_metrics_snapshot *s)
{
	struct pmi_reported rep;

	if (!s)
		return;
	if (!forked_away(s) && s->state == SNAPSHOT_OPEN) {
		if (held != s)
			return; /* open in another thread: only that thread can release it */
		pmem_metrics_snapshot_withdraw(&s);
	}
	if (s->state == SNAPSHOT_PUBLISHED) {
		/* Delivered for good (it can no longer be withdrawn): retired devices leave. */
		settle(s);
		atomic_fetch_add_explicit(&s->reg->flushes, 1, memory_order_relaxed);
		rep = (struct pmi_reported){.m = s->m, .devs = s->devs, .states = s->states,
					    .borns = s->borns};
		pmi_kind_of(s->reg)->drain(s->reg, &rep);
	}
	if (s->state != SNAPSHOT_PEEK)
		atomic_fetch_sub_explicit(&s->reg->open_flushes, 1, memory_order_release);
	free(s);
}

void pmem_metrics_snapshot_dispose(struct pmem_metrics_snapshot **slot)
{
	struct pmem_metrics_snapshot *s = slot ? *slot : NULL;

	if (!s || (s->state == SNAPSHOT_OPEN && held != s && !forked_away(s)))
		return; /* nothing, or open in another thread: the slot keeps it */
	pmem_metrics_snapshot_free(s);
	*slot = NULL;
}

void pmem_metrics_snapshot_commit(struct pmem_metrics_snapshot *s)
{
	if (!s || s->state == SNAPSHOT_PEEK)
		return;
	pmem_metrics_snapshot_publish(&s);
	pmem_metrics_snapshot_free(s);
}

void pmem_metrics_snapshot_abort(struct pmem_metrics_snapshot *s)
{
	if (!s || s->state == SNAPSHOT_PEEK)
		return;
	pmem_metrics_snapshot_free(s);
}
