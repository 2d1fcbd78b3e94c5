/*
 * snapshot.c - flushes and peeks: take, publish, withdraw, commit (the copy
 * itself: snapshot_copy.c).
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

/*
 * The open flush of this thread, if any: one at a time, in any registry (a
 * second in the same segment, opened twice, would deadlock).
 */
static _Thread_local struct pmem_metrics_snapshot *held;

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
	/* A peek holds nothing of its registry (which may be closed by now): first. */
	if (s->state == SNAPSHOT_PEEK || !s->reg || !s->reg->seg ||
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
	err = pmi_snapshot_load(r, SNAPSHOT_OPEN, slot);
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
	if ((err = pmi_ready(r)) != 0 || (err = pmi_snapshot_load(r, SNAPSHOT_PEEK, slot)) != 0) {
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

int pmem_metrics_snapshot_stats(const struct pmem_metrics_snapshot *s,
				struct pmem_metrics_registry_stats *out)
{
	if (!s || !out || !s->has_room) {
		errno = EINVAL;
		return -1;
	}
	*out = s->room;
	return 0;
}

size_t pmem_metrics_snapshot_nfields(const struct pmem_metrics_snapshot *s)
{
	return s ? s->nf : 0;
}

const char *pmem_metrics_snapshot_fields(const struct pmem_metrics_snapshot *s, size_t *len)
{
	if (len)
		*len = s ? s->fields_len : 0;
	return s ? s->fields : NULL;
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
	else
		pmi_seg_claim_publish(s->reg->seg, s->claim);
	s->state = SNAPSHOT_PUBLISHED;
	pmi_pause_point("publish"); /* out, and said so; not settled yet */
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
