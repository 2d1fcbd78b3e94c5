/*
 * test_fork.c - fork() while other threads allocate and flush.
 *
 * Background threads allocate, bump and flush nonstop (a flusher holds the
 * flush lock most of the time).  The main thread forks repeatedly; each child
 * must allocate, increment and flush without deadlock, and see the counts the
 * parent had at the fork.  A child that hangs is killed by alarm() and fails
 * the test (which then stops forking).
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

#define FORKS 40

static atomic_bool done;

static void pause_us(long us)
{
	struct timespec t = {0, us * 1000};

	nanosleep(&t, NULL);
}

static void *allocator(void *arg)
{
	char id[32];

	(void)arg;
	for (int i = 0; !atomic_load_explicit(&done, memory_order_relaxed); i++) {
		snprintf(id, sizeof(id), "fork-alloc%06d", i % 50000);
		pmem_metrics_inc(&pmem_metrics_alloc(id)->cfg_fails);
	}
	return NULL;
}

static void *flusher(void *arg)
{
	(void)arg;
	while (!atomic_load_explicit(&done, memory_order_relaxed)) {
		struct pmem_metrics_snapshot *s = pmem_metrics_snapshot_take();

		pause_us(50); /* "writing the line", with the flush lock held */
		pmem_metrics_snapshot_commit(s);
	}
	return NULL;
}

/* The child: everything must work, and promptly. */
static int child(struct pmem_metrics *before, uint64_t parent_count)
{
	struct pmem_metrics *m;
	struct pmem_metrics_snapshot *s;
	int ok = 1;

	alarm(5);
	ok &= pmem_metrics_count(&before->event_fails) == parent_count;
	m = pmem_metrics_alloc("fork-child");
	ok &= m != NULL;
	pmem_metrics_add(&m->queue_event_count, 3);
	s = pmem_metrics_snapshot_take();
	ok &= s != NULL && pmem_metrics_snapshot_len(s) == pmem_metrics_device_count();
	pmem_metrics_snapshot_commit(s);
	ok &= pmem_metrics_fetch_diff(&m->queue_event_count) == 0;
	return ok ? 0 : 1;
}

static void test_fork_while_other_threads_hold_the_locks(void)
{
	struct pmem_metrics *before = pmem_metrics_alloc("fork-before");
	pthread_t t[3];
	int failures = 0;

	pthread_create(&t[0], NULL, allocator, NULL);
	pthread_create(&t[1], NULL, flusher, NULL);
	pthread_create(&t[2], NULL, flusher, NULL);
	for (int i = 0; i < FORKS && failures == 0; i++) {
		uint64_t count;
		int status;
		pid_t pid;

		pmem_metrics_inc(&before->event_fails);
		count = pmem_metrics_count(&before->event_fails);
		pause_us(200);
		fflush(NULL);
		pid = fork();
		if (pid == 0)
			_exit(child(before, count));
		if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0)
			failures++;
	}
	atomic_store(&done, true);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	CHECK(failures == 0);
	/* The parent is unaffected by its children. */
	CHECK(failures || pmem_metrics_count(&before->event_fails) == FORKS);
}

static void test_a_snapshot_open_across_fork_can_finish_in_the_child(void)
{
	struct pmem_metrics *m = pmem_metrics_alloc("fork-open");
	struct pmem_metrics_snapshot *s;
	int status;
	pid_t pid;

	pmem_metrics_add(&m->activate_fails, 5);
	s = pmem_metrics_snapshot_take();
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		alarm(10);
		pmem_metrics_snapshot_commit(s);
		s = pmem_metrics_snapshot_take(); /* the lock was released */
		pmem_metrics_snapshot_commit(s);
		_exit(pmem_metrics_fetch_diff(&m->activate_fails) == 0 ? 0 : 1);
	}
	pmem_metrics_snapshot_abort(s);
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0);
	CHECK(pmem_metrics_fetch_diff(&m->activate_fails) == 5); /* the parent aborted */
}

int main(void)
{
	RUN(test_fork_while_other_threads_hold_the_locks);
	RUN(test_a_snapshot_open_across_fork_can_finish_in_the_child);
	return check_summary();
}
