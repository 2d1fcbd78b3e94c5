/*
 * fork.c - what fork() does to the registries.
 *
 * The registry locks are only ever held by short stretches of this library's
 * code (a lookup, an insert, a copy, a commit), so the prepare handler waits
 * for them: the child gets a consistent private array.  A flush lock is
 * different: a binding may hold it while it writes a line, in code that may
 * need the very lock (a GIL) the forking thread holds, so waiting for it
 * could deadlock.  The child instead starts with it free -- unless the
 * forking thread is the one holding it, whose snapshot lives on in the child
 * and will release it.
 *
 * A segment lives in the file, shared with the parent: nothing of it is
 * re-made but the child's own handle on its locks (segment_file.c).  A
 * flush of a segment that the forking thread had open stays its parent's:
 * the child counts one more fork, and snapshot.c settles that flush
 * without moving anything when it next sees it.
 *
 * This file also holds the process-wide registry state those handlers
 * reset -- the default registry, the segments opened as registries, their
 * locks -- so that it calls nothing above the segment files.
 */
#include "internal.h"

#include <errno.h>

struct pmem_metrics_registry pmi_default_registry = {
	.lock = REGISTRY_LOCK_INITIALIZER,
	.flush_lock = PTHREAD_MUTEX_INITIALIZER,
};

/* Held while the default registry's kind is being decided (attach(), PMEM_METRICS_SHM). */
pthread_mutex_t pmi_kind_lock = PTHREAD_MUTEX_INITIALIZER;

/* The segments opened as registries, newest first, until closed (registry.c). */
pthread_mutex_t pmi_opened_lock = PTHREAD_MUTEX_INITIALIZER;
struct pmem_metrics_registry *pmi_opened;

_Thread_local struct pmem_metrics_registry *pmi_flushing;
_Atomic uint64_t pmi_forks;

static void fork_prepare(void)
{
	pthread_mutex_lock(&pmi_kind_lock);
	pthread_rwlock_wrlock(&pmi_default_registry.lock);
	pthread_mutex_lock(&pmi_opened_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&pmi_opened_lock);
	pthread_rwlock_unlock(&pmi_default_registry.lock);
	pthread_mutex_unlock(&pmi_kind_lock);
}

/* The child's own locks of a segment registry; a failure fails every later call on it. */
static void segment_after_fork(struct pmem_metrics_registry *r)
{
	int err = pmi_seg_after_fork(r->seg);

	r->lock = (pthread_rwlock_t)REGISTRY_LOCK_INITIALIZER;
	if (err && !r->broken)
		r->broken = err;
}

static void fork_child(void)
{
	struct pmem_metrics_registry *r = &pmi_default_registry;
	/* The forking thread's open flush of a private registry lives on here; a segment's does not. */
	bool flushing = pmi_flushing && !pmi_flushing->seg;

	atomic_fetch_add_explicit(&pmi_forks, 1, memory_order_relaxed);
	if (pmi_flushing && pmi_flushing->seg)
		pmi_flushing = NULL;

	/* A lock held by a thread that does not exist here is re-made, not unlocked. */
	pmi_kind_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	pmi_opened_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	r->lock = (pthread_rwlock_t)REGISTRY_LOCK_INITIALIZER;
	if (r->seg)
		segment_after_fork(r);
	else if (!flushing)
		r->flush_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	for (r = pmi_opened; r; r = r->next)
		segment_after_fork(r);
}

/*
 * The handlers are registered when the library is loaded, so fork() is
 * covered from before the first call.  pthread_atfork() can fail (ENOMEM):
 * then every call that allocates or takes a snapshot retries it, and fails
 * itself while it cannot, rather than run without fork safety.
 */
static pthread_mutex_t fork_setup_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int fork_setup_error; /* 0 once the handlers are registered */

static int atfork(void)
{
	if (pmi_fault_fail_atfork())
		return ENOMEM;
	return pthread_atfork(fork_prepare, fork_parent, fork_child);
}

__attribute__((constructor)) static void fork_register(void)
{
	atomic_store_explicit(&fork_setup_error, atfork(), memory_order_relaxed);
}

int pmi_fork_safety(void)
{
	int err;

	/*
	 * Acquire pairs with the release store below: whoever sees 0 also
	 * sees the registration it stands for.  Relaxed would do on glibc,
	 * whose pthread_atfork() takes a lock, but costs nothing here.
	 */
	if (atomic_load_explicit(&fork_setup_error, memory_order_acquire) == 0)
		return 0;
	pthread_mutex_lock(&fork_setup_lock); /* one retry at a time: never registered twice */
	err = atomic_load_explicit(&fork_setup_error, memory_order_relaxed);
	if (err != 0) {
		err = atfork();
		atomic_store_explicit(&fork_setup_error, err, memory_order_release);
	}
	pthread_mutex_unlock(&fork_setup_lock);
	return err;
}
