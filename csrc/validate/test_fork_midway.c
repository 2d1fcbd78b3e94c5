/*
 * test_fork_midway.c - fork() while another thread is half-way through an
 * insert or a commit (built with -DPMEM_METRICS_FAULT_INJECTION, whose pause
 * hook holds that thread inside the critical section for a while).
 *
 * fork() must wait for the section to finish, so the child sees the registry
 * whole: sorted, every device once, the new one there; a commit all done.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

#define NDEV 40

static sem_t entered;
static const char *target;

static void hold(const char *where)
{
	struct timespec t = {0, 150 * 1000 * 1000};

	if (strcmp(where, target) == 0) {
		sem_post(&entered);
		nanosleep(&t, NULL); /* fork() is called now, from the main thread */
	}
}

/* In the child: the registry is sorted, each id once, `id` present; 0 if so. */
static int registry_whole(const char *id)
{
	struct pmem_metrics_snapshot *s;
	size_t n, seen = 0;
	int ok = 1;

	alarm(5);
	s = pmem_metrics_snapshot_take();
	if (!s)
		return 1;
	n = pmem_metrics_snapshot_len(s);
	ok &= n == pmem_metrics_device_count();
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			ok &= strcmp(pmem_metrics_snapshot_id(s, i - 1), pmem_metrics_snapshot_id(s, i)) < 0;
		seen += strcmp(pmem_metrics_snapshot_id(s, i), id) == 0;
	}
	pmem_metrics_snapshot_commit(s);
	return ok && seen == 1 ? 0 : 1;
}

static void *insert(void *arg)
{
	pmem_metrics_alloc(arg);
	return NULL;
}

static void *flush(void *arg)
{
	(void)arg;
	pmem_metrics_snapshot_commit(pmem_metrics_snapshot_take());
	return NULL;
}

/* Fork once `thread` is inside the `where` section; the child's exit status. */
static int fork_inside(const char *where, void *(*thread)(void *), void *arg, int (*child)(void))
{
	pthread_t t;
	int status;
	pid_t pid;

	target = where;
	sem_init(&entered, 0, 0);
	pmem_metrics_fault_pause_hook(hold);
	pthread_create(&t, NULL, thread, arg);
	sem_wait(&entered);
	fflush(NULL);
	pid = fork();
	if (pid == 0)
		_exit(child());
	pthread_join(t, NULL);
	pmem_metrics_fault_pause_hook(NULL);
	sem_destroy(&entered);
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static int child_after_insert(void)
{
	return registry_whole("mid-0000-new"); /* sorts first: the whole array moved */
}

static void test_fork_during_an_insert(void)
{
	char id[32];

	for (int i = 0; i < NDEV; i++) {
		snprintf(id, sizeof(id), "mid-%04d", i + 1);
		pmem_metrics_alloc(id);
	}
	CHECK(fork_inside("insert", insert, "mid-0000-new", child_after_insert) == 0);
	CHECK(registry_whole("mid-0000-new") == 0);
}

static int child_after_commit(void)
{
	char id[32];
	int committed = 0;

	alarm(5);
	for (int i = 0; i < NDEV; i++) {
		snprintf(id, sizeof(id), "mid-%04d", i + 1);
		committed += pmem_metrics_fetch_diff(&pmem_metrics_alloc(id)->cfg_fails) == 0;
	}
	return committed == NDEV ? 0 : 1; /* all of it, not half */
}

static void test_fork_during_a_commit(void)
{
	char id[32];

	for (int i = 0; i < NDEV; i++) {
		snprintf(id, sizeof(id), "mid-%04d", i + 1);
		pmem_metrics_add(&pmem_metrics_alloc(id)->cfg_fails, 7);
	}
	CHECK(fork_inside("commit", flush, NULL, child_after_commit) == 0);
}

int main(void)
{
	RUN(test_fork_during_an_insert);
	RUN(test_fork_during_a_commit);
	return check_summary();
}
