/*
 * segment_read.c - reading a segment without a lock.
 *
 * Readers take no lock, in the file or the lock file: a peek (a scrape), a
 * device count and a flush's copy read the slots below `high` (published:
 * release stores by the inserter, acquire loads here) and the sorted index,
 * and check the index before they trust it (each entry a device, once; ids
 * strictly increasing; the caller checks the order on its copies).  A bad
 * index -- an insert under way, or a process that wrote nonsense -- is
 * replaced by sorting the slots themselves.  A registry with no mapping
 * (opened read-only) copies the slots out with pread(), so a process that
 * truncates the file makes it fail with EBADMSG, never a SIGBUS.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * What a sort compares: the ids of slots, their lengths read once -- in the
 * slots at `base` (the mapping), or in private copies (`copy`, `ids`).
 */
struct by_id {
	const char *base;
	uint64_t slot_size;
	const uint32_t *len; /* by slot number */
	const struct pmi_slot_copy *copy;
	const char *ids;
};

static const char *id_of(const struct by_id *c, uint32_t slot)
{
	if (c->copy)
		return c->ids + c->copy[slot].id_at;
	return ((const struct device *)(c->base + slot * c->slot_size))->id;
}

static int slot_cmp(const struct by_id *c, uint32_t a, uint32_t b)
{
	return pmi_id_cmp(id_of(c, a), c->len[a], id_of(c, b), c->len[b]);
}

/*
 * Sort `n` slot numbers by id: a heapsort, whose every access stays within
 * `v` whatever the comparisons answer (a process scribbling on the ids while
 * this runs can spoil the order -- found by the check after -- never send it
 * elsewhere).
 */
static void sort_by_id(uint32_t *v, size_t n, const struct by_id *c)
{
	for (size_t end = n, start = n / 2; end > 1;) {
		size_t root, child;
		uint32_t t;

		if (start > 0) {
			start--; /* building the heap */
		} else {
			end--; /* the largest to the end */
			t = v[end];
			v[end] = v[0];
			v[0] = t;
		}
		for (root = start; (child = 2 * root + 1) < end; root = child) {
			if (child + 1 < end && slot_cmp(c, v[child], v[child + 1]) < 0)
				child++;
			if (slot_cmp(c, v[root], v[child]) >= 0)
				break;
			t = v[root];
			v[root] = v[child];
			v[child] = t;
		}
	}
}

void pmi_seg_sort(const struct pmi_seg *g, uint32_t *v, size_t n, const uint32_t *len)
{
	struct by_id c = {.base = g->map + g->slots_off, .slot_size = g->slot_size, .len = len};

	sort_by_id(v, n, &c);
}

/*
 * The state words and id lengths of slots [0, n) at `base`, each read once,
 * into `state` and `len` (0 where the slot holds no device): EBADMSG if a
 * slot below `high` is unpublished, or a device's id impossible.  Each id is
 * checked against the rules when it is copied (snapshot.c), and by a rebuild.
 */
static int read_slots(const char *base, uint64_t slot_size, size_t n, uint32_t *state,
		      uint32_t *len)
{
	for (size_t i = 0; i < n; i++) {
		const struct device *d = (const void *)(base + i * slot_size);

		/* Acquire pairs with the release store of `published` in seg_insert(). */
		if (!atomic_load_explicit(&d->published, memory_order_acquire))
			return EBADMSG;
		/* Acquire pairs with the release stores of `state`: a device's id and counters. */
		state[i] = atomic_load_explicit(&d->state, memory_order_acquire);
		len[i] = pmi_is_device(state[i]) ? (uint32_t)pmi_slot_id_len(d) : 0;
		if (pmi_is_device(state[i]) && len[i] == 0)
			return EBADMSG;
	}
	return 0;
}

/* ---- Reading without a lock ------------------------------------------------------ */

int pmi_seg_read_word(const struct pmi_seg *g, size_t off, uint64_t *out)
{
	if (g->map) {
		/* Acquire pairs with the release stores of the header's words (inserts, rebuilds). */
		*out = atomic_load_explicit((_Atomic uint64_t *)(g->map + off), memory_order_acquire);
		return 0;
	}
	return pread(g->fd, out, sizeof(*out), (off_t)off) == (ssize_t)sizeof(*out) ? 0 : EBADMSG;
}

/*
 * `used` and `high`, each read once: 0, or EBADMSG.  `used` first: an
 * insert raises `high` before `used`, so this never sees more devices than
 * slots.
 */
static int read_counts(struct pmi_seg *g, uint64_t *used, uint64_t *high)
{
	if (pmi_seg_read_word(g, offsetof(struct pmi_seg_header, used), used) != 0)
		return EBADMSG; /* truncated under us */
	if (g->map)
		*high = pmi_seg_high(g); /* slots with storage: the mapping may touch them */
	else if (pmi_seg_read_word(g, offsetof(struct pmi_seg_header, high), high) != 0)
		return EBADMSG;
	return *used <= *high && *high <= g->capacity ? 0 : EBADMSG;
}

int pmi_seg_device_count(struct pmi_seg *g, size_t *n)
{
	uint64_t used, high;
	int err = read_counts(g, &used, &high);

	*n = err ? 0 : (size_t)used;
	return err;
}

/* pread() exactly `len` bytes at `off`: 0, or EBADMSG (the file is shorter now), or errno. */
static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	for (size_t got = 0; got < len;) {
		ssize_t r = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno;
		if (r == 0)
			return EBADMSG;
		got += (size_t)r;
	}
	return 0;
}

/* Slots read by one pread(): small enough to stay in cache, and to be reused without faults. */
enum { COPY_CHUNK = 64 };

/*
 * A segment whose header, field list, index and slots in use take at most
 * this many bytes is read whole by one pread() (two when its `high` grew
 * since the last read): a scrape of a host's thousands of small segments
 * costs a system call each, not five.
 */
enum { WHOLE_MAX = 64 * 1024 };

/* The private copies a view of `high` slots fills: ENOMEM, or 0. */
static int copies_new(const struct pmi_seg *g, struct pmi_seg_view *v)
{
	v->copy = pmi_malloc(v->high * sizeof(*v->copy) + 1);
	v->counts = pmi_malloc(v->high * 2 * g->nfields * sizeof(*v->counts) + 1);
	v->ids = pmi_malloc(v->high * 16 + 1);
	v->ids_cap = v->high * 16 + 1;
	return v->copy && v->counts && v->ids ? 0 : ENOMEM;
}

/*
 * Copy slot `s` (its bytes at `slot`, a private copy) into the view: its
 * state, id and counters.  EBADMSG if it is unpublished or its id
 * impossible (below `high`, every slot is published), ENOMEM.
 */
static int copy_slot(const struct pmi_seg *g, struct pmi_seg_view *v, size_t s, const char *slot)
{
	size_t nf = g->nfields, len;
	/* The slot's tail is past the segment's own counters, whatever this build's are. */
	size_t tail = SEG_COUNTER_SIZE * nf;
	struct pmi_slot_copy *c = &v->copy[s];
	struct pmi_slot_tail t;

	/* Private memory: the order of these loads no longer matters. */
	memcpy(&t, slot + tail, sizeof(t));
	len = pmi_is_device(t.state) && t.id_len <= ID_MAX_BYTES ? t.id_len : 0;
	if (!t.published || (pmi_is_device(t.state) && len == 0))
		return EBADMSG;
	if (v->ids_used + len > v->ids_cap) {
		char *more = pmi_realloc(v->ids, v->ids_cap = 2 * v->ids_cap + len);

		if (!more)
			return ENOMEM;
		v->ids = more;
	}
	memcpy(v->ids + v->ids_used, slot + tail + sizeof(t), len);
	c->id_at = v->ids_used;
	v->ids_used += len;
	v->by_slot[s] = (uint32_t)len;
	v->state_by_slot[s] = t.state;
	c->retired_ms = t.retired_ms;
	c->counts = v->counts + s * 2 * nf;
	for (size_t f = 0; f < nf; f++) {
		const char *ctr = slot + SEG_COUNTER_SIZE * f;

		memcpy(&c->counts[f], ctr + SEG_COUNTER_CURRENT, sizeof(uint64_t));
		memcpy(&c->counts[nf + f], ctr + SEG_COUNTER_OLD, sizeof(uint64_t));
	}
	return 0;
}

/*
 * Copy the first `v->high` slots' states, ids and counters, and the first
 * `v->n` index entries, out of the file with pread() -- for a registry
 * with no mapping: a process that truncates the file makes this fail
 * (EBADMSG), where touching a mapping of the lost pages would be a SIGBUS.
 */
static int copy_slots(const struct pmi_seg *g, struct pmi_seg_view *v)
{
	char *chunk;
	int err;

	if ((err = pread_all(g->fd, v->slot, v->n * sizeof(uint32_t), g->index_off)) != 0)
		return err;
	err = copies_new(g, v);
	chunk = pmi_malloc(COPY_CHUNK * g->slot_size);
	if (!chunk)
		err = ENOMEM;
	for (size_t s0 = 0; err == 0 && s0 < v->high; s0 += COPY_CHUNK) {
		size_t k = v->high - s0 < COPY_CHUNK ? v->high - s0 : COPY_CHUNK;

		err = pread_all(g->fd, chunk, k * g->slot_size, g->slots_off + s0 * g->slot_size);
		for (size_t j = 0; err == 0 && j < k; j++)
			err = copy_slot(g, v, s0 + j, chunk + j * g->slot_size);
	}
	free(chunk);
	return err;
}

static int view_alloc(struct pmi_seg_view *v, size_t used, size_t high);

/* The header's word at `off` in the private copy `buf` of the file's start. */
static uint64_t word_at(const char *buf, size_t off)
{
	uint64_t w;

	memcpy(&w, buf + off, sizeof(w));
	return w;
}

/*
 * A small segment read whole: one pread() of everything from the header
 * to the slots in use as of the last read (`read_high`), one more if more
 * are in use now.  `used`, `high` and the allocation failures come from
 * the copy, so they are as bounded as ever; the order of the words in one
 * copy is not promised, so a reading that makes no sense (EBADMSG) is
 * left to the careful path, word by word.  ENOSYS: too big to read whole.
 */
static int read_whole(struct pmi_seg *g, struct pmi_seg_view *v)
{
	uint64_t guess = atomic_load_explicit(&g->read_high, memory_order_relaxed), used, high;
	size_t size, want;
	char *buf;
	int err;

	if (guess > g->capacity || g->slots_off + guess * g->slot_size > WHOLE_MAX)
		return ENOSYS;
	size = (size_t)(g->slots_off + guess * g->slot_size);
	if (!(buf = pmi_malloc(size)))
		return ENOMEM;
	err = pread_all(g->fd, buf, size, 0);
	used = err ? 0 : word_at(buf, offsetof(struct pmi_seg_header, used));
	high = err ? 0 : word_at(buf, offsetof(struct pmi_seg_header, high));
	if (err == 0 && !(used <= high && high <= g->capacity))
		err = EBADMSG;
	want = err ? size : (size_t)(g->slots_off + high * g->slot_size);
	if (err == 0 && want > size) { /* more slots than last time: read them too */
		char *more = pmi_realloc(buf, want);

		err = more ? pread_all(g->fd, more + size, want - size, size) : ENOMEM;
		buf = more ? more : buf;
	}
	if (err == 0) {
		atomic_store_explicit(&g->read_high, high, memory_order_relaxed);
		err = view_alloc(v, (size_t)used, (size_t)high);
	}
	if (err == 0) {
		v->alloc_failures = word_at(buf, offsetof(struct pmi_seg_header, alloc_failures));
		memcpy(v->slot, buf + g->index_off, v->n * sizeof(uint32_t));
		err = copies_new(g, v);
	}
	for (size_t s = 0; err == 0 && s < v->high; s++)
		err = copy_slot(g, v, s, buf + g->slots_off + s * g->slot_size);
	free(buf);
	return err;
}

/* The view's arrays for `used` index entries and `high` slots: 0, or ENOMEM. */
static int view_alloc(struct pmi_seg_view *v, size_t used, size_t high)
{
	v->n = used;
	v->high = high;
	/*
	 * One block: slot[high], len[high], state[high] (by position: a sort
	 * may list up to `high`), the lengths and states by slot number[high],
	 * then a byte per slot.
	 */
	v->slot = pmi_malloc(v->high * (5 * sizeof(uint32_t) + 1) + 1);
	if (!v->slot)
		return ENOMEM;
	v->len = v->slot + v->high;
	v->state = v->len + v->high;
	v->by_slot = v->state + v->high;
	v->state_by_slot = v->by_slot + v->high;
	return 0;
}

/* The view through the mapping, or copied word by word: 0, or an error (the view freed). */
static int view_careful(struct pmi_seg *g, struct pmi_seg_view *v)
{
	uint64_t used, high;
	int err;

	if ((err = read_counts(g, &used, &high)) != 0 || (err = view_alloc(v, used, high)) != 0)
		return err;
	if (g->map) {
		_Atomic uint32_t *index = pmi_seg_index(g);

		v->base = g->map + g->slots_off;
		for (size_t i = 0; i < v->n; i++)
			v->slot[i] = atomic_load_explicit(&index[i], memory_order_relaxed);
		err = read_slots(v->base, v->slot_size, v->high, v->state_by_slot, v->by_slot);
	} else {
		err = copy_slots(g, v);
	}
	if (err == 0)
		err = pmi_seg_read_word(g, offsetof(struct pmi_seg_header, alloc_failures),
					&v->alloc_failures);
	if (err)
		pmi_seg_view_free(v);
	return err;
}

int pmi_seg_view(struct pmi_seg *g, struct pmi_seg_view *v)
{
	unsigned char *seen;
	bool ok = true;
	int err = ENOSYS;

	*v = (struct pmi_seg_view){.slot_size = g->slot_size, .nfields = g->nfields};
	if (!g->map && (err = read_whole(g, v)) != 0) {
		pmi_seg_view_free(v);
		*v = (struct pmi_seg_view){.slot_size = g->slot_size, .nfields = g->nfields};
	}
	if (err && (err = view_careful(g, v)) != 0)
		return err;
	/*
	 * The index as read: every entry a device, each once?  Whether the ids
	 * strictly increase along it is checked on the copies the caller makes
	 * (the walk it does anyway); if not, it calls pmi_seg_view_sort().
	 */
	seen = (unsigned char *)(v->state_by_slot + v->high);
	memset(seen, 0, v->high);
	for (size_t i = 0; ok && i < v->n; i++) {
		ok = v->slot[i] < v->high && !seen[v->slot[i]] && v->by_slot[v->slot[i]] != 0;
		if (ok)
			seen[v->slot[i]] = 1;
	}
	if (!ok)
		return pmi_seg_view_sort(v);
	for (size_t i = 0; i < v->n; i++) {
		v->len[i] = v->by_slot[v->slot[i]];
		v->state[i] = v->state_by_slot[v->slot[i]];
	}
	return 0;
}

int pmi_seg_view_sort(struct pmi_seg_view *v)
{
	struct by_id c = {.base = v->base, .slot_size = v->slot_size, .len = v->by_slot,
			  .copy = v->copy, .ids = v->ids};

	if (v->sorted) {
		pmi_seg_view_free(v);
		return EBADMSG; /* sorted already, and still not in order: the ids changed as we read */
	}
	v->sorted = true;
	v->n = 0;
	for (size_t s = 0; s < v->high; s++)
		if (v->by_slot[s] != 0) /* a device (its id has a length) */
			v->slot[v->n++] = (uint32_t)s;
	sort_by_id(v->slot, v->n, &c);
	for (size_t i = 0; i < v->n; i++) {
		v->len[i] = v->by_slot[v->slot[i]];
		v->state[i] = v->state_by_slot[v->slot[i]];
	}
	return 0;
}

const char *pmi_view_id(const struct pmi_seg_view *v, size_t i)
{
	struct by_id c = {.base = v->base, .slot_size = v->slot_size, .copy = v->copy, .ids = v->ids};

	return id_of(&c, v->slot[i]);
}

void pmi_seg_view_free(struct pmi_seg_view *v)
{
	if (!v->slot)
		return; /* freed already */
	free(v->slot);
	free(v->copy);
	free(v->counts);
	free(v->ids);
	v->slot = NULL;
	v->copy = NULL;
	v->counts = NULL;
	v->ids = NULL;
}

