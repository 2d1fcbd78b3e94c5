/*
 * devices.c - a C-only user of libpmemmetrics.
 *
 * Allocates a few pmem devices, bumps their counters from several pthreads,
 * then takes a snapshot, prints every device's diffs and the aggregate, and
 * commits the flush.  Build it against the installed Python package:
 *
 *   cc devices.c $(python -m pmem_metrics --cflags --libs) -pthread -o devices
 *
 * or against `make -C csrc install PREFIX=dir` (PKG_CONFIG_PATH exported on its
 * own: in front of cc it would reach cc, not the pkg-config inside $(...)):
 *
 *   export PKG_CONFIG_PATH=dir/lib/pkgconfig
 *   cc devices.c $(pkg-config --cflags --libs pmem-metrics) -pthread -o devices
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <pmem_metrics.h>

#define NDEVICES 4
#define NTHREADS 4
#define EVENTS 100000

static void *device_model(void *arg)
{
	struct pmem_metrics *m = arg;

	for (int i = 0; i < EVENTS; i++) {
		pmem_metrics_inc(&m->queue_event_count); /* one relaxed fetch-add */
		if (i % 1000 == 0)
			pmem_metrics_inc(&m->event_fails);
	}
	return NULL;
}

static void print_row(const char *name, const uint64_t *v)
{
	printf("%-12s", name);
	for (size_t f = 0; f < PMEM_METRICS_NFIELDS; f++)
		printf(" %s=%" PRIu64, pmem_metrics_field_name(f), v[f]);
	printf("\n");
}

int main(void)
{
	pthread_t threads[NTHREADS];
	struct pmem_metrics *dev[NDEVICES];
	struct pmem_metrics_snapshot *s;
	char id[16];

	for (int d = 0; d < NDEVICES; d++) {
		snprintf(id, sizeof(id), "drv%d", d);
		dev[d] = pmem_metrics_alloc(id);
		if (!dev[d]) {
			fprintf(stderr, "pmem_metrics_alloc(%s): %s\n", id, strerror(errno));
			return 1;
		}
	}
	pmem_metrics_inc(&dev[0]->activate_fails);

	for (int t = 0; t < NTHREADS; t++)
		pthread_create(&threads[t], NULL, device_model, dev[t % NDEVICES]);
	for (int t = 0; t < NTHREADS; t++)
		pthread_join(threads[t], NULL);

	s = pmem_metrics_snapshot_take();
	if (!s) {
		fprintf(stderr, "pmem_metrics_snapshot_take: %s\n", strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++)
		print_row(pmem_metrics_snapshot_id(s, i),
			  &pmem_metrics_snapshot_diffs(s)[i * PMEM_METRICS_NFIELDS]);
	print_row("(aggregate)", pmem_metrics_snapshot_aggregate(s));
	/* Here the report was delivered: commit, so the next flush starts from it. */
	pmem_metrics_snapshot_commit(s);
	return 0;
}
