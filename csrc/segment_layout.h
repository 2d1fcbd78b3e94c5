/*
 * segment_layout.h - the shared segment's bytes: the only definition of them.
 *
 * docs/segment-format.md says in prose what this header says in C; every
 * offset below is pinned by a _Static_assert, and tests take them from here
 * (Python through pmem_metrics_segment_offset()), never as literals.
 *
 * A segment is one regular file (the data file) and, beside it, the lock
 * file PATH.lock that only its writers can open.  The data file, all
 * integers in the byte order of the host that made it (`byte_order`):
 *
 *   [0, 136)                  struct pmi_seg_header
 *   [fields_off, +fields_size) each field's name, NUL, doc, NUL, in order
 *   [index_off, +4 capacity)  uint32_t slot numbers of the devices, in id order
 *   [slots_off, +capacity * slot_size)
 *                             slots: nfields counters of 64 bytes each
 *                             (current, old), then struct pmi_slot_tail, then
 *                             the id's bytes and a NUL
 *   [claims_off, +SEG_CLAIMS * claim_size)
 *                             claim records: what flushes on their way took
 *
 * Every offset and size in the header is a function of capacity and the
 * field list (seg_layout() in segment_file.c); a reader recomputes them and
 * refuses a file whose header says otherwise.  Nothing in the file is a
 * pointer.  The lock file holds no data: its bytes are only lock offsets
 * (LOCK_* below), taken with fcntl(F_OFD_SETLK).
 */
#ifndef PMEM_METRICS_SEGMENT_LAYOUT_H
#define PMEM_METRICS_SEGMENT_LAYOUT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SEG_MAGIC "PMEMSEG" /* with its NUL: 8 bytes */

enum {
	SEG_VERSION = 4,
	SEG_BYTE_ORDER = 0x01020304, /* as the host that made the file stores it */
	SEG_MAX_CAPACITY = 1 << 24,
	SEG_MAX_FIELDS = 64,
	SEG_MAX_FIELDS_SIZE = 1 << 16,
	SEG_COUNTER_SIZE = 64, /* a counter's room: one cache line */
	SEG_CLAIMS = 4,        /* claim records: flushes whose reports can be on their way at once */
	/*
	 * Slots whose storage an insert allocates at once (fallocate(): the
	 * file is sparse past them), with their index entries and claim entries.
	 */
	SEG_SLOT_CHUNK = 16,
};

struct pmi_seg_header {
	char magic[8];          /* SEG_MAGIC */
	uint32_t version;       /* SEG_VERSION */
	uint32_t byte_order;    /* SEG_BYTE_ORDER */
	uint32_t nfields;       /* counters in a slot */
	uint32_t id_max_bytes;  /* the longest id, in bytes (without its NUL) */
	uint64_t capacity;      /* slots */
	uint64_t slot_size;
	uint64_t fields_off, fields_size;
	uint64_t index_off;
	uint64_t slots_off;
	uint64_t claims_off, claim_size;
	uint64_t size;          /* the file's size */
	_Atomic uint64_t seq;   /* even while the index is whole; odd while an insert changes it */
	_Atomic uint64_t used;  /* index entries in use: index[0, used) */
	_Atomic uint64_t high;  /* slots ever handed out: [0, high) */
	_Atomic uint64_t alloc_failures; /* allocations refused for want of a slot */
	_Atomic uint64_t flushes;        /* flushes published: 0 while nobody writes lines */
};

/* The part of a slot after its counters (a device: struct device, internal.h). */
struct pmi_slot_tail {
	_Atomic uint32_t published; /* 1 once the id and counters are set (release) */
	uint32_t id_len;            /* bytes, without the NUL */
	_Atomic uint32_t state;     /* DEV_* in bits 0-1, the generation above */
	_Atomic uint32_t refs;      /* 0 in a segment (a private device's reference count) */
	_Atomic uint32_t born;      /* counts up each time the slot is given to a device */
	uint32_t unused;
	_Atomic uint64_t retired_ms; /* CLOCK_MONOTONIC ms, when it was last retired */
	/* then the id: id_len bytes and a NUL */
};

/* A slot's state word: bits 0-1 the state, bits 2-31 a generation each retirement counts up. */
enum { DEV_FREE = 0, DEV_LIVE = 1, DEV_RETIRED = 2, DEV_DRAINED = 3, DEV_STATE_MASK = 3 };

/* One device a claim moved: its slot and the amounts by field. */
struct pmi_claim_entry {
	uint32_t slot;
	uint32_t unused;
	uint64_t diff[]; /* nfields */
};

/*
 * A claim record: CLAIM_ACTIVE from before its baselines move until its
 * flush is published (a dead owner's is undone: the next flush moves them
 * back); CLAIM_PUBLISHED from then until the flush is settled for good (a
 * live owner may still withdraw; a dead owner's is let go as it stands).
 * Anything else: free.
 */
struct pmi_claim {
	_Atomic uint64_t state;
	uint64_t n; /* entries */
	/* How far the baselines moved: 2i + 1 while entry i moves, 2(i + 1) once it has. */
	_Atomic uint64_t mark;
	/* then n entries of 8 + 8 nfields bytes */
};

#define CLAIM_ACTIVE 0x434c41494d414354u    /* "CLAIMACT": no zeroed or stray word means it */
#define CLAIM_PUBLISHED 0x434c41494d505542u /* "CLAIMPUB" */

/*
 * The lock file's byte offsets.  The insert lock and the flush lock are
 * write locks; a claim's is a write lock held by its flush; a reference to
 * slot s is a read lock on LOCK_REF_BASE + s.
 */
enum { LOCK_INSERT = 0, LOCK_FLUSH = 1, LOCK_CLAIM_BASE = 8, LOCK_REF_BASE = 64 };

/* ---- Pinned: what docs/segment-format.md states ---- */

_Static_assert(offsetof(struct pmi_seg_header, magic) == 0, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, version) == 8, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, byte_order) == 12, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, nfields) == 16, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, id_max_bytes) == 20, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, capacity) == 24, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, slot_size) == 32, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, fields_off) == 40, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, fields_size) == 48, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, index_off) == 56, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, slots_off) == 64, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, claims_off) == 72, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, claim_size) == 80, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, size) == 88, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, seq) == 96, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, used) == 104, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, high) == 112, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, alloc_failures) == 120, "header layout");
_Static_assert(offsetof(struct pmi_seg_header, flushes) == 128, "header layout");
_Static_assert(sizeof(struct pmi_seg_header) == 136, "header layout");

_Static_assert(offsetof(struct pmi_slot_tail, published) == 0, "slot layout");
_Static_assert(offsetof(struct pmi_slot_tail, id_len) == 4, "slot layout");
_Static_assert(offsetof(struct pmi_slot_tail, state) == 8, "slot layout");
_Static_assert(offsetof(struct pmi_slot_tail, refs) == 12, "slot layout");
_Static_assert(offsetof(struct pmi_slot_tail, born) == 16, "slot layout");
_Static_assert(offsetof(struct pmi_slot_tail, retired_ms) == 24, "slot layout");
_Static_assert(sizeof(struct pmi_slot_tail) == 32, "slot layout: the id follows at 32");

_Static_assert(offsetof(struct pmi_claim, state) == 0, "claim layout");
_Static_assert(offsetof(struct pmi_claim, n) == 8, "claim layout");
_Static_assert(offsetof(struct pmi_claim, mark) == 16, "claim layout");
_Static_assert(sizeof(struct pmi_claim) == 24, "claim layout: entries follow at 24");
_Static_assert(offsetof(struct pmi_claim_entry, slot) == 0, "claim entry layout");
_Static_assert(offsetof(struct pmi_claim_entry, diff) == 8, "claim entry layout");

/* A counter's two words: current at 0, old at 8 (struct pmem_metrics_counter, asserted in internal.h). */
enum { SEG_COUNTER_CURRENT = 0, SEG_COUNTER_OLD = 8 };

#endif /* PMEM_METRICS_SEGMENT_LAYOUT_H */
