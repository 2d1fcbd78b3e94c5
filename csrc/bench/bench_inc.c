/*
 * bench_inc.c - the counter hot path from C, and how it scales with threads.
 *
 * 1. One thread: pmem_metrics_inc() against a raw relaxed atomic_fetch_add()
 *    loop on a plain _Atomic uint64_t (the floor), and pmem_metrics_inc() on
 *    a device of a shared segment (a fresh one under $TMPDIR, removed after)
 *    against the same on a private device.
 * 2. T threads (1, 2, ... up to the cores online) on
 *      one-counter        every thread bumps the same counter
 *      one-device         each thread its own counter of one device
 *      devices            each thread a counter of its own device
 *      packed (control)   each thread its own counter, all in ONE cache line,
 *                         i.e. what the 64-byte layout avoids
 *      spread (control)   each thread a raw atomic of its own, 128 bytes
 *                         apart: the machine's own ceiling for private counters
 *    A device has PMEM_METRICS_NFIELDS counters, so beyond that many threads
 *    "one-device" threads share counters.
 *    reported as total throughput relative to one thread.
 *
 * Every figure is a ratio to a baseline of the same run.  Prints a table,
 * PASS/MISS lines for the targets, and with --json FILE the raw numbers.
 *
 *   make -C csrc bench            (BENCH_ARGS="--iters N --json out.json")
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pmem_metrics.h"

#define MAX_THREADS 64
#define REPEATS 5 /* best of */

enum mode { ONE_COUNTER, ONE_DEVICE, DEVICES, PACKED, SPREAD, NMODES };
static const char *const mode_name[NMODES] = {"one-counter", "one-device", "devices", "packed",
					      "spread"};

static long iters = 50000000;
static struct pmem_metrics *dev[MAX_THREADS];
static struct { _Atomic uint64_t v[8]; } packed __attribute__((aligned(64)));
static struct { _Atomic uint64_t v __attribute__((aligned(128))); } spread[MAX_THREADS];
static pthread_barrier_t start;

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Seconds for one thread to do `iters` increments through the library. */
static double time_library(struct pmem_metrics_counter *c)
{
	double t0 = now();

	for (long i = 0; i < iters; i++)
		pmem_metrics_inc(c);
	return now() - t0;
}

/* The floor: the same loop with a bare relaxed fetch-add. */
static double time_raw(_Atomic uint64_t *v)
{
	double t0 = now();

	for (long i = 0; i < iters; i++)
		atomic_fetch_add_explicit(v, 1, memory_order_relaxed);
	return now() - t0;
}

struct job {
	enum mode mode;
	int index;
	double start, end; /* read by each worker itself: the main thread may not get a core */
};

static void *worker(void *arg)
{
	struct job *j = arg;
	struct pmem_metrics_counter *c = NULL;
	_Atomic uint64_t *raw = NULL;

	switch (j->mode) {
	case ONE_COUNTER:
		c = &dev[0]->queue_event_count;
		break;
	case ONE_DEVICE:
		c = pmem_metrics_field(dev[0], (size_t)j->index % PMEM_METRICS_NFIELDS);
		break;
	case DEVICES:
		c = &dev[j->index]->queue_event_count;
		break;
	case PACKED:
		raw = &packed.v[j->index % 8];
		break;
	default:
		raw = &spread[j->index].v;
	}
	pthread_barrier_wait(&start);
	j->start = now();
	if (c)
		for (long i = 0; i < iters; i++)
			pmem_metrics_inc(c);
	else
		for (long i = 0; i < iters; i++)
			atomic_fetch_add_explicit(raw, 1, memory_order_relaxed);
	j->end = now();
	return NULL;
}

/* Increments per second with `threads` threads in `mode` (best of REPEATS). */
static double throughput(enum mode mode, int threads)
{
	double best = 0;

	for (int r = 0; r < REPEATS; r++) {
		pthread_t t[MAX_THREADS];
		struct job jobs[MAX_THREADS];
		double first = 1e300, last = 0, rate;

		pthread_barrier_init(&start, NULL, (unsigned)threads);
		for (int i = 0; i < threads; i++) {
			jobs[i] = (struct job){.mode = mode, .index = i};
			pthread_create(&t[i], NULL, worker, &jobs[i]);
		}
		for (int i = 0; i < threads; i++) {
			pthread_join(t[i], NULL);
			first = jobs[i].start < first ? jobs[i].start : first;
			last = jobs[i].end > last ? jobs[i].end : last;
		}
		rate = (double)iters * threads / (last - first);
		pthread_barrier_destroy(&start);
		if (rate > best)
			best = rate;
	}
	return best;
}

static const char *verdict(int pass)
{
	return pass ? "PASS" : "MISS";
}

int main(int argc, char **argv)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	int counts[16], ncounts = 0, max_threads = (int)(cores < MAX_THREADS ? cores : MAX_THREADS);
	double lib = 1e9, raw = 1e9, seg = 1e9, priv = 1e9, rate[NMODES][16];
	struct pmem_metrics *seg_dev = NULL;
	int seg_made = 0;
	char seg_dir[256], seg_path[300], lock_path[310];
	const char *tmp = getenv("TMPDIR");
	const char *json = NULL;
	static _Atomic uint64_t floor_counter __attribute__((aligned(64)));
	char id[32];

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
			iters = atol(argv[++i]);
		else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
			json = argv[++i];
		else if (strcmp(argv[i], "--max-threads") == 0 && i + 1 < argc)
			max_threads = atoi(argv[++i]);
	}
	if (max_threads < 1 || max_threads > MAX_THREADS)
		max_threads = max_threads < 1 ? 1 : MAX_THREADS;
	for (int i = 0; i < MAX_THREADS; i++) {
		snprintf(id, sizeof(id), "bench%02d", i);
		dev[i] = pmem_metrics_alloc(id);
	}
	for (int t = 1; t <= max_threads && ncounts < 16; t = t < 4 ? t + 1 : t * 2)
		counts[ncounts++] = t;
	if (counts[ncounts - 1] != max_threads && ncounts < 16)
		counts[ncounts++] = max_threads;

	snprintf(seg_dir, sizeof(seg_dir), "%s/pmem-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if ((seg_made = mkdtemp(seg_dir) != NULL)) {
		struct pmem_metrics_registry *r;

		snprintf(seg_path, sizeof(seg_path), "%s/segment", seg_dir);
		snprintf(lock_path, sizeof(lock_path), "%s.lock", seg_path);
		r = pmem_metrics_registry_open(seg_path, 64, 0600);
		seg_dev = r ? pmem_metrics_registry_alloc(r, "bench-segment") : NULL;
		if (!seg_dev)
			perror("segment (its comparison skipped)");
	} else {
		perror("mkdtemp (the segment comparison skipped)");
	}

	for (int r = 0; r < REPEATS; r++) { /* interleaved, best of each */
		double a = time_library(&dev[0]->activate_fails), b = time_raw(&floor_counter);

		lib = a < lib ? a : lib;
		raw = b < raw ? b : raw;
		if (seg_dev) {
			a = time_library(&seg_dev->activate_fails);
			b = time_library(&dev[1]->activate_fails);
			seg = a < seg ? a : seg;
			priv = b < priv ? b : priv;
		}
	}
	printf("# %ld cores online, %ld increments per thread, best of %d\n", cores, iters, REPEATS);
	printf("single thread: pmem_metrics_inc %.2f ns, raw atomic add %.2f ns: %.3fx the floor\n",
	       lib / (double)iters * 1e9, raw / (double)iters * 1e9, lib / raw);
	if (seg_dev)
		printf("single thread: pmem_metrics_inc on a segment's device %.2f ns, a private "
		       "device's %.2f ns: %.3fx\n",
		       seg / (double)iters * 1e9, priv / (double)iters * 1e9, seg / priv);
	printf("\n");

	printf("%-12s", "threads");
	for (int m = 0; m < NMODES; m++)
		printf(" %14s", mode_name[m]);
	printf("   (throughput relative to 1 thread)\n");
	for (int k = 0; k < ncounts; k++) {
		printf("%-12d", counts[k]);
		for (int m = 0; m < NMODES; m++) {
			rate[m][k] = throughput((enum mode)m, counts[k]);
			printf(" %13.2fx", rate[m][k] / rate[m][0]);
		}
		printf("\n");
	}
	printf("\n%s C inc <= 1.1x the raw atomic loop: %.3fx\n", verdict(lib / raw <= 1.1), lib / raw);
	if (seg_dev)
		printf("%s C inc in a segment <= 1.05x private: %.3fx\n", verdict(seg / priv <= 1.05),
		       seg / priv);
	if (ncounts > 1 && counts[1] == 2) {
		double od = rate[ONE_DEVICE][1] / rate[ONE_DEVICE][0];
		double dv = rate[DEVICES][1] / rate[DEVICES][0];

		printf("%s 2 threads, different counters of one device >= 1.8x one thread: %.2fx\n",
		       verdict(od >= 1.8), od);
		printf("%s 2 threads, different devices >= 1.8x one thread: %.2fx\n", verdict(dv >= 1.8), dv);
	}
	if (seg_made) {
		unlink(seg_path);
		unlink(lock_path);
		rmdir(seg_dir);
	}
	if (json) {
		FILE *f = fopen(json, "w");

		if (!f) {
			perror(json);
			return 1;
		}
		fprintf(f, "{\"cores\": %ld, \"iters\": %ld, \"inc_vs_raw\": %.4f, ", cores, iters,
			lib / raw);
		if (seg_dev)
			fprintf(f, "\"segment_inc_vs_private\": %.4f, ", seg / priv);
		fprintf(f, "\"threads\": [");
		for (int k = 0; k < ncounts; k++)
			fprintf(f, "%s%d", k ? ", " : "", counts[k]);
		fprintf(f, "], \"throughput\": {");
		for (int m = 0; m < NMODES; m++) {
			fprintf(f, "%s\"%s\": [", m ? ", " : "", mode_name[m]);
			for (int k = 0; k < ncounts; k++)
				fprintf(f, "%s%.0f", k ? ", " : "", rate[m][k]);
			fprintf(f, "]");
		}
		fprintf(f, "}}\n");
		fclose(f);
	}
	return 0;
}
