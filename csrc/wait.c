/*
 * wait.c - deadlines, and the bounded waits built on them.
 *
 * Every wait of the library that another process can prolong (a segment's
 * locks) or that a binding must be able to interrupt (a flush waiting for
 * another) has a deadline on the monotonic clock, so a wall-clock step
 * can neither stretch nor cut it.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

static const long NS = 1000000000L;

struct pmi_deadline pmi_deadline_in(int timeout_ms)
{
	struct pmi_deadline d = {.never = timeout_ms < 0};

	if (d.never)
		return d;
	clock_gettime(CLOCK_MONOTONIC, &d.at);
	d.at.tv_sec += timeout_ms / 1000;
	d.at.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (d.at.tv_nsec >= NS) {
		d.at.tv_sec++;
		d.at.tv_nsec -= NS;
	}
	return d;
}

/* Nanoseconds left until the deadline (0 once passed); a large number if none. */
static long long left_ns(const struct pmi_deadline *d)
{
	struct timespec now;
	long long left;

	if (d->never)
		return (long long)1 << 62;
	clock_gettime(CLOCK_MONOTONIC, &now);
	left = (long long)(d->at.tv_sec - now.tv_sec) * NS + (d->at.tv_nsec - now.tv_nsec);
	return left > 0 ? left : 0;
}

bool pmi_deadline_passed(const struct pmi_deadline *d)
{
	return left_ns(d) == 0;
}

void pmi_backoff(const struct pmi_deadline *d, unsigned round)
{
	/* 20 us, doubling up to 1 ms: a lock held for microseconds costs little wait. */
	long long ns = 20000LL << (round < 6 ? round : 6);
	long long left = left_ns(d);
	struct timespec t;

	/* A lock was busy: a test's scheduler lets another process run (fault.c). */
	pmi_pause_point("wait");
	if (ns > 1000000)
		ns = 1000000;
	if (ns > left)
		ns = left;
	t.tv_sec = 0;
	t.tv_nsec = (long)ns;
	nanosleep(&t, NULL); /* EINTR: the caller looks at the lock and the deadline again */
}

int pmi_mutex_lock_by(pthread_mutex_t *mutex, const struct pmi_deadline *d)
{
	int err;

	if (d->never)
		return pthread_mutex_lock(mutex);
	err = pthread_mutex_trylock(mutex);
	if (err != EBUSY)
		return err;
	if (pmi_deadline_passed(d))
		return ETIMEDOUT;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 30) && !defined(__SANITIZE_THREAD__)
	return pthread_mutex_clocklock(mutex, CLOCK_MONOTONIC, &d->at);
#else
	/* No clocklock (or TSan does not model it): poll, the deadline still monotonic. */
	for (unsigned round = 0;; round++) {
		pmi_backoff(d, round);
		err = pthread_mutex_trylock(mutex);
		if (err != EBUSY)
			return err;
		if (pmi_deadline_passed(d))
			return ETIMEDOUT;
	}
#endif
}

uint64_t pmi_now_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

static pthread_once_t wait_once = PTHREAD_ONCE_INIT;
static int default_wait_ms = PMEM_METRICS_SEGMENT_WAIT_MS;

/* PMEM_METRICS_SEGMENT_WAIT_MS=ms in the environment: another bound (1 ms to a day). */
static void read_default_wait(void)
{
	const char *env = getenv("PMEM_METRICS_SEGMENT_WAIT_MS");
	char *end;
	long ms = env ? strtol(env, &end, 10) : 0;

	if (env && *env && !*end && ms > 0 && ms <= 86400000L)
		default_wait_ms = (int)ms;
}

int pmem_metrics_segment_wait_ms(void)
{
	pthread_once(&wait_once, read_default_wait);
	return default_wait_ms;
}

struct pmi_deadline pmi_seg_deadline(int timeout_ms)
{
	return pmi_deadline_in(timeout_ms < 0 ? pmem_metrics_segment_wait_ms() : timeout_ms);
}
