/*
 * segment_names.c - the segment format's offsets and constants by name, for
 * tools and tests that read a segment's bytes themselves
 * (pmem_metrics_segment_offset()): every value from segment_layout.h.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>

/* The format's names, for pmem_metrics_segment_offset(): one row each, from segment_layout.h. */
#define HEADER(field) {"header." #field, offsetof(struct pmi_seg_header, field)}
#define TAIL(field) {"slot." #field, SEG_COUNTER_SIZE * NFIELDS + offsetof(struct pmi_slot_tail, field)}
static const struct {
	const char *name;
	long long value;
} format_names[] = {
	HEADER(magic), HEADER(version), HEADER(byte_order), HEADER(nfields), HEADER(id_max_bytes),
	HEADER(capacity), HEADER(slot_size), HEADER(fields_off), HEADER(fields_size),
	HEADER(index_off), HEADER(slots_off), HEADER(claims_off), HEADER(claim_size), HEADER(size),
	HEADER(seq), HEADER(used), HEADER(high), HEADER(alloc_failures), HEADER(flushes),
	{"header.end", sizeof(struct pmi_seg_header)},
	{"slot.counters", 0},
	{"counter.current", SEG_COUNTER_CURRENT},
	{"counter.old", SEG_COUNTER_OLD},
	{"counter.size", SEG_COUNTER_SIZE},
	TAIL(published), TAIL(id_len), TAIL(state), TAIL(refs), TAIL(born), TAIL(retired_ms),
	{"slot.id", SEG_COUNTER_SIZE * NFIELDS + sizeof(struct pmi_slot_tail)},
	{"claim.state", offsetof(struct pmi_claim, state)},
	{"claim.n", offsetof(struct pmi_claim, n)},
	{"claim.mark", offsetof(struct pmi_claim, mark)},
	{"claim.entries", sizeof(struct pmi_claim)},
	{"entry.slot", 0},
	{"entry.diff", 8},
	{"entry.size", 8 + 8 * NFIELDS},
	{"version", SEG_VERSION},
	{"byte_order", SEG_BYTE_ORDER},
	{"claims", SEG_CLAIMS},
	{"claim_active", (long long)CLAIM_ACTIVE},
	{"claim_published", (long long)CLAIM_PUBLISHED},
	{"slot_chunk", SEG_SLOT_CHUNK},
	{"max_capacity", SEG_MAX_CAPACITY},
	{"nfields", NFIELDS},
	{"id_max_bytes", ID_MAX_BYTES},
	{"state.free", DEV_FREE},
	{"state.live", DEV_LIVE},
	{"state.retired", DEV_RETIRED},
	{"state.drained", DEV_DRAINED},
	{"lock.insert", LOCK_INSERT},
	{"lock.flush", LOCK_FLUSH},
	{"lock.claim_base", LOCK_CLAIM_BASE},
	{"lock.ref_base", LOCK_REF_BASE},
};
#undef HEADER
#undef TAIL

long long pmem_metrics_segment_offset(const char *name)
{
	if (name && strcmp(name, "slot_size") == 0)
		return (long long)pmi_seg_slot_size(NFIELDS);
	for (size_t i = 0; name && i < sizeof(format_names) / sizeof(format_names[0]); i++)
		if (strcmp(format_names[i].name, name) == 0)
			return format_names[i].value;
	errno = ENOENT;
	return -1;
}
