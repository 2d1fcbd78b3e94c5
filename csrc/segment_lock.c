/*
 * segment_lock.c - a segment's locks, all in its lock file.
 *
 * Every lock of a segment is a byte-range lock of an open file description
 * (fcntl F_OFD_SETLK) on the lock file PATH.lock, never on the data file:
 * the lock file is open to the segment's writers only (its mode gives read
 * access to no one who may not write: segment_file.c), so a process that
 * can only read the segment cannot take, hold or test any lock a writer
 * waits for.  The kernel drops a description's locks when its last
 * descriptor closes: a process that dies holding one frees it by
 * construction.  The byte map is in segment_layout.h (LOCK_*).
 *
 * OFD locks exclude other descriptions, not the threads sharing one: a
 * mutex of this process excludes them first.  A wait polls with a short
 * back-off until its deadline (the kernel's blocking wait has no timeout).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>

static int ofd_lock(int fd, off_t byte, short type)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

	return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

/* Whether another description holds a lock a write lock would meet on `len` bytes from `byte`. */
static bool ofd_held(int fd, off_t byte, off_t len)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = len};

	if (fcntl(fd, F_OFD_GETLK, &fl) != 0)
		return true; /* cannot tell: as held */
	return fl.l_type != F_UNLCK;
}

int pmi_seg_lock(struct pmi_seg *g, enum pmi_seg_lock which, const struct pmi_deadline *d)
{
	int err = pmi_mutex_lock_by(&g->thread_lock[which], d);

	for (unsigned round = 0; err == 0; round++) {
		err = ofd_lock(g->lock_fd, (off_t)which, F_WRLCK);
		if (err == 0)
			return 0;
		if (err != EAGAIN && err != EACCES && err != EINTR)
			break;
		if (pmi_deadline_passed(d)) {
			err = ETIMEDOUT; /* another process holds it (or is stopped holding it) */
			break;
		}
		pmi_backoff(d, round);
		err = 0;
	}
	pthread_mutex_unlock(&g->thread_lock[which]);
	return err;
}

void pmi_seg_unlock(struct pmi_seg *g, enum pmi_seg_lock which)
{
	ofd_lock(g->lock_fd, (off_t)which, F_UNLCK);
	pthread_mutex_unlock(&g->thread_lock[which]);
}

int pmi_seg_claim_lock(struct pmi_seg *g, int k)
{
	return ofd_lock(g->lock_fd, LOCK_CLAIM_BASE + k, F_WRLCK);
}

void pmi_seg_claim_unlock(struct pmi_seg *g, int k)
{
	ofd_lock(g->lock_fd, LOCK_CLAIM_BASE + k, F_UNLCK);
}

static off_t ref_byte(uint64_t slot)
{
	return LOCK_REF_BASE + (off_t)slot;
}

int pmi_seg_ref_get(struct pmi_seg *g, uint64_t s)
{
	int err = 0;

	pthread_mutex_lock(&g->ref_lock);
	if (g->refs[s] == UINT32_MAX)
		err = EOVERFLOW;
	else if (g->refs[s] == 0)
		err = ofd_lock(g->lock_fd, ref_byte(s), F_RDLCK);
	if (err == 0)
		g->refs[s]++;
	pthread_mutex_unlock(&g->ref_lock);
	return err;
}

void pmi_seg_ref_put(struct pmi_seg *g, uint64_t s)
{
	pthread_mutex_lock(&g->ref_lock);
	if (g->refs[s] > 0 && --g->refs[s] == 0)
		ofd_lock(g->lock_fd, ref_byte(s), F_UNLCK);
	pthread_mutex_unlock(&g->ref_lock);
}

bool pmi_seg_referenced(const struct pmi_seg *g, uint64_t s)
{
	return pmi_seg_any_referenced(g, s, s + 1);
}

bool pmi_seg_any_referenced(const struct pmi_seg *g, uint64_t lo, uint64_t hi)
{
	return g->lock_fd >= 0 && hi > lo && ofd_held(g->lock_fd, ref_byte(lo), (off_t)(hi - lo));
}

int pmi_seg_refs_after_fork(struct pmi_seg *g)
{
	g->ref_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	for (uint64_t s = 0; g->refs && s < g->capacity; s++) {
		int err = g->refs[s] ? ofd_lock(g->lock_fd, ref_byte(s), F_RDLCK) : 0;

		if (err)
			return err;
	}
	return 0;
}
