/*
 * test_oom.c - out of memory, injected (built with -DPMEM_METRICS_FAULT_INJECTION).
 *
 * Every allocation site fails in turn; each failure must return NULL with
 * errno ENOMEM and leave the registry and every count as they were.  And the
 * fork handlers failing to register (PMEM_METRICS_FAULT_ATFORK, read when
 * the library loads, so this test runs itself again with it set).
 */
#define _POSIX_C_SOURCE 200809L /* setenv */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

static void test_a_new_device_without_memory(void)
{
	size_t n = pmem_metrics_device_count();

	pmem_metrics_fault_fail_alloc(1);
	errno = 0;
	CHECK(pmem_metrics_alloc("oom-dev") == NULL && errno == ENOMEM);
	CHECK(pmem_metrics_device_count() == n);
	CHECK(pmem_metrics_alloc("oom-dev") != NULL); /* memory is back */
	CHECK(pmem_metrics_device_count() == n + 1);
}

static void test_a_registry_that_cannot_grow(void)
{
	char id[32];
	size_t n;
	int i = 0;
	struct pmem_metrics_snapshot *s;

	/* Fill up to a power-of-two capacity (16, 32, ...): the next insert must grow. */
	while ((n = pmem_metrics_device_count()) < 16 || (n & (n - 1)) != 0) {
		snprintf(id, sizeof(id), "oom-fill%03d", i++);
		pmem_metrics_alloc(id);
	}
	pmem_metrics_inc(&pmem_metrics_alloc("oom-fill000")->cfg_fails);
	pmem_metrics_fault_fail_alloc(2); /* 1: the device, 2: the array */
	errno = 0;
	CHECK(pmem_metrics_alloc("oom-grow") == NULL && errno == ENOMEM);
	CHECK(pmem_metrics_device_count() == n);
	s = pmem_metrics_snapshot_take();
	CHECK(s && pmem_metrics_snapshot_len(s) == n);
	for (size_t k = 1; s && k < n; k++)
		CHECK(strcmp(pmem_metrics_snapshot_id(s, k - 1), pmem_metrics_snapshot_id(s, k)) < 0);
	pmem_metrics_snapshot_abort(s);
	CHECK(pmem_metrics_alloc("oom-grow") != NULL);
	CHECK(pmem_metrics_device_count() == n + 1);
	CHECK(pmem_metrics_fetch_diff(&pmem_metrics_alloc("oom-fill000")->cfg_fails) == 1);
}

static void test_a_snapshot_without_memory(void)
{
	struct pmem_metrics *m = pmem_metrics_alloc("oom-snap");
	struct pmem_metrics_snapshot *s;

	pmem_metrics_add(&m->event_fails, 9);
	pmem_metrics_fault_fail_alloc(1);
	errno = 0;
	CHECK(pmem_metrics_snapshot_take() == NULL && errno == ENOMEM);
	CHECK(pmem_metrics_fetch_diff(&m->event_fails) == 9);
	s = pmem_metrics_snapshot_take(); /* the flush lock was released */
	CHECK(s != NULL);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_fetch_diff(&m->event_fails) == 0);
}

/* A segment opened as a registry: its open, and its snapshot, without memory. */
static void test_a_segment_registry_without_memory(void)
{
	const char *tmp = getenv("TMPDIR");
	char dir[64], path[96];
	struct pmem_metrics_registry *r;
	struct pmem_metrics_snapshot *s;
	struct pmem_metrics *m;

	snprintf(dir, sizeof(dir), "%s/pmem-oom-XXXXXX", tmp ? tmp : "/tmp");
	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/seg", dir);
	pmem_metrics_fault_fail_alloc(1);
	errno = 0;
	CHECK(pmem_metrics_registry_open(path, 4, 0600) == NULL && errno == ENOMEM);
	CHECK(access(path, F_OK) != 0); /* nothing made */
	r = pmem_metrics_registry_open(path, 4, 0600);
	CHECK(r != NULL && (m = pmem_metrics_registry_alloc(r, "oom-seg")) != NULL);
	if (!r || !m)
		return;
	pmem_metrics_add(&m->cfg_fails, 4);
	pmem_metrics_fault_fail_alloc(1);
	errno = 0;
	CHECK(pmem_metrics_registry_snapshot_take(r) == NULL && errno == ENOMEM);
	CHECK(pmem_metrics_fetch_diff(&m->cfg_fails) == 4);
	s = pmem_metrics_registry_snapshot_take(r); /* the segment's flush lock was released */
	CHECK(s != NULL && pmem_metrics_snapshot_len(s) == 1);
	pmem_metrics_snapshot_commit(s);
	CHECK(pmem_metrics_fetch_diff(&m->cfg_fails) == 0);
	unlink(path);
	rmdir(dir);
}

/* Run in a process started with PMEM_METRICS_FAULT_ATFORK=2. */
static int without_fork_handlers(void)
{
	struct pmem_metrics_snapshot *s = NULL;
	int ok = 1;

	/* Registration failed at load, and the first retry fails too. */
	errno = 0;
	ok &= pmem_metrics_alloc("atfork-dev") == NULL && errno == ENOMEM;
	ok &= pmem_metrics_device_count() == 0;
	/* The next retry registers them: everything works from here on. */
	ok &= pmem_metrics_alloc("atfork-dev") != NULL;
	ok &= pmem_metrics_snapshot_take_into(&s, 0) == 0;
	pmem_metrics_snapshot_commit(s);
	return ok ? 0 : 1;
}

static void test_fork_handlers_that_fail_to_register_are_retried_not_skipped(void)
{
	pid_t pid = fork();
	int status = -1;

	if (pid == 0) {
		setenv("PMEM_METRICS_FAULT_ATFORK", "2", 1);
		execl("/proc/self/exe", "test_oom", "atfork", (char *)NULL);
		_exit(127);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "atfork") == 0)
		return without_fork_handlers();
	RUN(test_a_new_device_without_memory);
	RUN(test_a_registry_that_cannot_grow);
	RUN(test_a_snapshot_without_memory);
	RUN(test_a_segment_registry_without_memory);
	RUN(test_fork_handlers_that_fail_to_register_are_retried_not_skipped);
	return check_summary();
}
