/*
 * opened.c - the segments this process has open as registries, found in
 * constant time: by their file (an open of a segment already open) and by
 * their address (a close, which must refuse what is not open here without
 * touching it).
 *
 * An agent on a host of VMs opens and closes thousands of segments, one
 * each time a VM starts: a list scanned at every open or close would make
 * that work quadratic.  Two chained hash tables, each doubling as it fills;
 * a table that cannot grow (no memory) keeps its size, and longer chains.
 * Every call here is made with pmi_opened_lock held; the list `pmi_opened`
 * (fork.c) stays the one to walk them all.
 */
#include "internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

struct table {
	struct pmem_metrics_registry **heads;
	size_t size; /* a power of two, or 0 before the first add */
};

static struct table by_file, by_addr;
static size_t count;

static size_t mix(uint64_t x, size_t size)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdu; /* a 64-bit finaliser: ino and addresses are far from random */
	x ^= x >> 33;
	return (size_t)x & (size - 1);
}

static size_t file_slot(dev_t dev, ino_t ino, size_t size)
{
	return mix((uint64_t)ino * 31u + (uint64_t)dev, size);
}

static size_t addr_slot(const struct pmem_metrics_registry *r, size_t size)
{
	return mix((uint64_t)(uintptr_t)r, size);
}

static struct pmem_metrics_registry **file_link(struct pmem_metrics_registry *r)
{
	return &r->next_by_file;
}

static struct pmem_metrics_registry **addr_link(struct pmem_metrics_registry *r)
{
	return &r->next_by_addr;
}

/* Both tables at `size` heads, re-hashed from the list: 0, or ENOMEM (the old ones kept). */
static int grow(size_t size)
{
	struct pmem_metrics_registry **f = calloc(size, sizeof(*f));
	struct pmem_metrics_registry **a = calloc(size, sizeof(*a));

	if (!f || !a) {
		free(f);
		free(a);
		return ENOMEM;
	}
	for (struct pmem_metrics_registry *r = pmi_opened; r; r = r->next) {
		size_t i = file_slot(r->seg->dev, r->seg->ino, size), j = addr_slot(r, size);

		r->next_by_file = f[i];
		f[i] = r;
		r->next_by_addr = a[j];
		a[j] = r;
	}
	free(by_file.heads);
	free(by_addr.heads);
	by_file = (struct table){f, size};
	by_addr = (struct table){a, size};
	return 0;
}

struct pmem_metrics_registry *pmi_opened_by_file(dev_t dev, ino_t ino)
{
	struct pmem_metrics_registry *r;

	if (!by_file.size) /* never grown: at most the registries of a failed first add */
		for (r = pmi_opened; r && (r->seg->dev != dev || r->seg->ino != ino); r = r->next)
			;
	else
		for (r = by_file.heads[file_slot(dev, ino, by_file.size)];
		     r && (r->seg->dev != dev || r->seg->ino != ino); r = r->next_by_file)
			;
	return r;
}

bool pmi_opened_has(const struct pmem_metrics_registry *r)
{
	struct pmem_metrics_registry *at;

	if (!by_addr.size)
		for (at = pmi_opened; at && at != r; at = at->next)
			;
	else
		for (at = by_addr.heads[addr_slot(r, by_addr.size)]; at && at != r;
		     at = at->next_by_addr)
			;
	return at != NULL;
}

void pmi_opened_add(struct pmem_metrics_registry *r)
{
	r->prev = NULL;
	r->next = pmi_opened;
	if (pmi_opened)
		pmi_opened->prev = r;
	pmi_opened = r;
	count++;
	if (count > by_file.size && grow(by_file.size ? 2 * by_file.size : 64) == 0)
		return; /* re-hashed with `r` in it */
	if (by_file.size) {
		size_t i = file_slot(r->seg->dev, r->seg->ino, by_file.size);
		size_t j = addr_slot(r, by_addr.size);

		r->next_by_file = by_file.heads[i];
		by_file.heads[i] = r;
		r->next_by_addr = by_addr.heads[j];
		by_addr.heads[j] = r;
	}
}

/* Unlink `r` from the chain at `head`, following `link`. */
static void unchain(struct pmem_metrics_registry **head, struct pmem_metrics_registry *r,
		    struct pmem_metrics_registry **(*link)(struct pmem_metrics_registry *))
{
	while (*head && *head != r)
		head = link(*head);
	if (*head)
		*head = *link(r);
}

void pmi_opened_remove(struct pmem_metrics_registry *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		pmi_opened = r->next;
	if (r->next)
		r->next->prev = r->prev;
	count--;
	if (by_file.size) {
		unchain(&by_file.heads[file_slot(r->seg->dev, r->seg->ino, by_file.size)], r,
			file_link);
		unchain(&by_addr.heads[addr_slot(r, by_addr.size)], r, addr_link);
	}
}
