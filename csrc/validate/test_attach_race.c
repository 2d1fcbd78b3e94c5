/*
 * test_attach_race.c - pmem_metrics_attach() racing the first call of every
 * other kind on the default registry, then fork().
 *
 * The default registry's kind is decided once: by attach() if it comes
 * first, else private by whichever call comes first.  Threads start together
 * at a barrier, each with a different small delay every round: one attaches,
 * the others allocate, peek, flush, count and ask is_shared().  Afterwards
 * exactly one kind won: either attach() returned 0 and every call went to
 * the segment, or it failed with EBUSY, nothing was created and everything
 * is private.  Then a fork() child allocates, flushes and bumps: its bump is
 * the parent's too if (and only if) the segment won.
 *
 * attach() is once per process, so every round runs in a child process of
 * its own, bounded by alarm().  Under TSan (which does not model fork()
 * children) one round runs in the test process itself, without the fork.
 */
#define _GNU_SOURCE /* pthread_barrier_t, pread */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

#define ROUNDS 200
#define HDR_USED pmem_metrics_segment_offset("header.used") /* the header's device count */

enum kind { ATTACH, ALLOC, PEEK, TAKE, COUNT, SHARED, NKINDS };

struct result {
	int rc, err;
	struct pmem_metrics *m;
	size_t count;
};

static char dir[64], path[128];
static pthread_barrier_t start;
static unsigned spin[NKINDS];
static struct result res[NKINDS];

static void *racer(void *arg)
{
	enum kind k = (enum kind)(intptr_t)arg;
	struct result *r = &res[k];
	struct pmem_metrics_snapshot *s = NULL;

	pthread_barrier_wait(&start);
	for (volatile unsigned i = 0; i < spin[k]; i++)
		; /* a different head start for each thread, each round */
	errno = 0;
	switch (k) {
	case ATTACH:
		r->rc = pmem_metrics_attach(path, 16);
		break;
	case ALLOC:
		r->m = pmem_metrics_alloc("x");
		r->rc = r->m ? 0 : -1;
		break;
	case PEEK:
		r->rc = pmem_metrics_snapshot_peek_into(&s);
		pmem_metrics_snapshot_free(s);
		break;
	case TAKE:
		r->rc = pmem_metrics_snapshot_take_into(&s, -1);
		pmem_metrics_snapshot_commit(s);
		break;
	case COUNT:
		r->count = pmem_metrics_device_count();
		r->rc = errno ? -1 : 0;
		break;
	case SHARED:
		r->rc = pmem_metrics_is_shared();
		break;
	case NKINDS:
		break;
	}
	r->err = errno;
	return NULL;
}

/* A fork() child: every call works, promptly, and it bumps "x" once. */
static bool child_after_fork(struct pmem_metrics *m)
{
	struct pmem_metrics_snapshot *s = NULL;
	bool ok;

	alarm(10);
	ok = pmem_metrics_alloc("x") == m;
	ok = ok && pmem_metrics_snapshot_take_into(&s, -1) == 0;
	pmem_metrics_snapshot_commit(s);
	s = NULL;
	ok = ok && pmem_metrics_snapshot_peek_into(&s) == 0 && pmem_metrics_snapshot_len(s) == 1;
	pmem_metrics_snapshot_free(s);
	pmem_metrics_inc(&m->queue_event_count);
	return ok;
}

/* One round: 1 if the segment won, 0 if private did, -1 on any failure. */
static int one_round(int round, bool with_fork)
{
	int before = check_failures;
	bool attached;
	pthread_t t[NKINDS];
	uint64_t used = 0;
	struct pmem_metrics *m;

	snprintf(path, sizeof(path), "%s/round%d", dir, round);
	for (int k = 0; k < NKINDS; k++)
		spin[k] = (unsigned)((round + 1) * 7919u * (unsigned)(k + 3)) % 4000u;
	CHECK(pthread_barrier_init(&start, NULL, NKINDS) == 0);
	for (int k = 0; k < NKINDS; k++)
		CHECK(pthread_create(&t[k], NULL, racer, (void *)(intptr_t)k) == 0);
	for (int k = 0; k < NKINDS; k++)
		pthread_join(t[k], NULL);
	pthread_barrier_destroy(&start);

	/* Exactly one kind won. */
	attached = res[ATTACH].rc == 0;
	CHECK(attached || (res[ATTACH].rc == -1 && res[ATTACH].err == EBUSY));
	CHECK(pmem_metrics_is_shared() == attached);
	CHECK(res[SHARED].rc == attached); /* what is_shared() said, whenever it ran */
	CHECK(res[ALLOC].rc == 0 && res[PEEK].rc == 0 && res[TAKE].rc == 0 && res[COUNT].rc == 0);
	CHECK(res[COUNT].count <= 1);
	m = pmem_metrics_alloc("x");
	CHECK(m && m == res[ALLOC].m && pmem_metrics_device_count() == 1);
	if (attached) {
		/* The device is the segment's: the file counts it. */
		int fd = open(path, O_RDONLY);

		CHECK(fd >= 0 && pread(fd, &used, sizeof(used), HDR_USED) == (ssize_t)sizeof(used) &&
		      used == 1);
		if (fd >= 0)
			close(fd);
	} else {
		CHECK(access(path, F_OK) != 0 && errno == ENOENT); /* refused before creating anything */
	}
	if (with_fork && m) {
		uint64_t was = pmem_metrics_count(&m->queue_event_count);
		int status;
		pid_t pid;

		fflush(stdout);
		pid = fork();
		if (pid == 0)
			_exit(child_after_fork(m) ? 0 : 1);
		CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
		      WEXITSTATUS(status) == 0); /* SIGALRM: a deadlock */
		CHECK(pmem_metrics_count(&m->queue_event_count) == was + attached);
	}
	return check_failures == before ? attached : -1;
}

static void test_attach_races_every_first_call(void)
{
	int won[2] = {0, 0};

#ifdef UNDER_TSAN
	int r = one_round(0, false);

	CHECK(r >= 0);
	if (r >= 0)
		won[r]++;
#else
	for (int round = 0; round < ROUNDS; round++) {
		int status, r;
		pid_t pid;

		fflush(stdout);
		pid = fork();
		if (pid == 0) {
			alarm(30);
			r = one_round(round, true);
			fflush(stdout);
			_exit(r < 0 ? 1 : 10 + r);
		}
		CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status));
		r = WIFEXITED(status) ? WEXITSTATUS(status) - 10 : -1;
		CHECK(r == 0 || r == 1);
		if (r != 0 && r != 1) {
			fprintf(stderr, "round %d: status %#x\n", round, status);
			break;
		}
		won[r]++;
	}
#endif
	printf("# attach won %d rounds, a private first call %d\n", won[1], won[0]);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(dir, sizeof(dir), "%s/pmem-attach-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return 2;
	RUN(test_attach_races_every_first_call);
	if (fork() == 0)
		execlp("rm", "rm", "-rf", dir, (char *)NULL);
	wait(NULL);
	return check_summary();
}
