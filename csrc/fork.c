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
 * re-made but the child's own handle on its locks (segment.c).  A flush of a
 * segment that the forking thread had open stays its parent's.
 */
#include "internal.h"

#include <errno.h>

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
	bool flushing = pmi_snapshot_after_fork();

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
