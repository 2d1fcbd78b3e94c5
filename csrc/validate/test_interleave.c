/*
 * test_interleave.c - every interleaving, within a bound, of two flushes, a
 * retirement and an allocation of one device of a shared segment, each in a
 * process of its own, checked against what a flush promises (built with
 * -DPMEM_METRICS_FAULT_INJECTION, for the pause hook).
 *
 * Method
 * ======
 * Stateless model checking with replay, as CHESS does it.  Each participant
 * is a real forked process that opens the segment itself (its own open file
 * description: its own byte-range locks, dropped by the kernel when it is
 * killed) and installs a pause hook: at every pause point of the library
 * (pmi_pause_point(): "take", "copy", "claim", "commit", "withdraw",
 * "insert", "wait", and whatever points are added later) and at the
 * harness's own ("start", "line", "inc"), the process writes the point's
 * name to a pipe and blocks until the parent, the scheduler, writes 'g' (go
 * on to the next point) or kills it.  So exactly one process runs at a
 * time, and a schedule is the sequence of the scheduler's choices.  Of the
 * library's names the harness knows only "wait" (below) and "copy" (a
 * flush loaded its first device there: D, whose id sorts first).
 *
 * "wait" is where a lock attempt failed and the process is about to sleep
 * and try again (pmi_backoff()).  A process at "wait" is not picked again
 * until another has made progress (a step that did not just fail again at
 * "wait", or a kill): else it would spin for ever.  When every process left
 * is waiting, that is a deadlock: a failure.
 *
 * A depth-first search runs a schedule from scratch (a new segment, new
 * processes), replays the recorded prefix of choices (checking that the
 * same choices are offered: the library is deterministic under the
 * scheduler), takes the first choice after it, and then moves to the next
 * untried choice at the last step that has one, until none is left.
 *
 * Bound
 * =====
 * A preemption bound (CHESS): at most BOUND (1) switch away from a
 * participant that could have gone on (a kill of F1 counts as F1's step);
 * switches away from a process that finished, was killed or waits are
 * free.  Every pause point of every participant is a scheduling point.
 * That is about 5,000 schedules, some 15 to 50 s on two cores as loaded
 * (each schedule forks five processes); `test_interleave 2` explores with
 * at most two (about 45,000 schedules, some 3 to 5 minutes), `-k` goes on
 * after a failing schedule and counts them.  The number of schedules explored is printed;
 * the work is bounded by that count, not by time (each step must come
 * within STEP_MS, or the schedule fails).
 *
 * The scenario
 * ============
 * Set up in a process that exits before the others start: a segment of
 * CAPACITY slots, device "D" counted N0 on field 0, and an unrelated device
 * "E" counted E_COUNTS.  Then:
 *   F1  a flush: take; its report is on its way ("line"); then it is
 *       withdrawn (the report failed) or, in the second run, delivered
 *       (written to the scheduler's pipe) and published; dispose.  At each
 *       of its points but "start" the scheduler also explores killing it
 *       (in the second run from "line" on: before it, F1 runs the same code
 *       in both runs, so the first covers those kills).
 *   F2  a flush that delivers: take, deliver, "line", publish, dispose.
 *   R   retires "D".
 *   A   allocates "D" (the same device, revived if retired and not yet
 *       drained; else a new one of the same id), "inc", then counts A_INCS
 *       on field 0 and releases it.
 * Drains happen in the flushers' dispose.  When every participant is done
 * (or killed), a final process flushes until a flush has nothing new for D.
 *
 * The oracle
 * ==========
 * Rows of "D" whose count is N0 or more are the old device's; fewer (A's
 * alone) a new device's of the same id -- one series.  T = N0 + A_INCS.
 * Reported(D) is the sum of D's diffs over every delivered report (the
 * participants' and the final process's).
 * - While no process is killed: Reported(D) == T, and E's diffs sum to its
 *   counts exactly.  The one exception is the header's (pmem_metrics_retire()):
 *   increments through a pointer held after the final flush, or racing it,
 *   are counted nowhere.  The final flush is the last one to list the old
 *   device ("reports its final delta and then it is gone from later
 *   flushes"), and it races an increment made after it loaded D's counters
 *   (the step in which it reached "copy").  So A's A_INCS may be missing,
 *   all of them, only if A's allocation returned before that flush loaded
 *   D and A counted after.
 * - Across a kill: at least once (Reported(D) >= T, less that exception;
 *   E's at least its counts), and at most twice.
 * - Never into another device or field: every row of E shows E's counts;
 *   D's other fields stay 0; every aggregate is the sum of its rows.
 * - Once a flush's copy does not list the old D (drained), no later one
 *   does: what comes after can only be a new device's counts.
 * - After the final flushes, no device is left retired (each was drained
 *   by its final flush).
 * Any violation prints the schedule -- each step's participant and the
 * points it went from and to -- and what was reported, and fails.
 *
 * test_a_withdrawal_after_a_drain_loses_nothing replays one schedule alone:
 * F1 takes retired D (5 counts) and its line is stuck; F2 takes (D: 0),
 * publishes and drains D; F1's withdrawal moves D's baseline back on a
 * device already drained.
 */
#define _GNU_SOURCE /* POSIX's calls (fork, kill, pipes, mkdtemp) under -std=c11 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "pmem_metrics.h"

#define NF PMEM_METRICS_NFIELDS

enum {
	CAPACITY = 4,
	N0 = 5,       /* D's counts on field 0 before anyone starts */
	A_INCS = 3,   /* what A counts on field 0 */
	BOUND = 1,    /* preemptions, by default (see the header comment) */
	MAX_STEPS = 96,
	MAX_EVENTS = 32,
	MAX_ROWS = CAPACITY,
	STEP_MS = 10000 /* a process that reaches no point in this long: a failure */
};

/* E's counts, field by field: nothing of them moves, and nothing else gets into them. */
static const uint64_t E_COUNTS[NF] = {0, 7, 0, 2};

/* The participants, then the processes that set up and account. */
enum { F1, F2, R, A, NPART, FINAL = NPART, SETUP, NPROC };
static const char *const NAMES[NPROC] = {"F1", "F2", "R", "A", "final", "setup"};

struct scenario {
	const char *name;
	unsigned parts;     /* bit per participant */
	bool f1_delivers;   /* F1 publishes (else withdraws) */
	enum { KILL_NEVER, KILL_ANYWHERE, KILL_FROM_LINE } kill_f1; /* where to explore killing F1 */
	bool retire_first;  /* the set-up retires D (the replayed schedule) */
	int bound;          /* preemptions */
};

static char dir[128], seg[160], tmpl[160];

/* From the command line: the preemption bound, and whether to go on after a failing schedule. */
static int bound = BOUND;
static bool keep_going;

/* ---- In a participant ------------------------------------------------------------ */

static int up_fd = -1, down_fd = -1;

static void say_raw(const char *line, size_t len)
{
	while (len > 0) {
		ssize_t n = write(up_fd, line, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(4); /* the scheduler is gone */
		line += n;
		len -= (size_t)n;
	}
}

/* One line to the scheduler, in one write (shorter than PIPE_BUF). */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line) - 1)
		_exit(4);
	line[n++] = '\n';
	say_raw(line, (size_t)n);
}

/* The pause hook: tell the scheduler where, and wait for its 'g' (or its SIGKILL). */
static void pause_here(const char *where)
{
	int saved = errno;
	ssize_t n;
	char c;

	say("p %s", where);
	do
		n = read(down_fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1 || c != 'g')
		_exit(5);
	errno = saved;
}

/* A snapshot's rows as one line: 't' (taken) or 'd' (delivered), the aggregate's check, rows. */
static void say_snapshot(char kind, const struct pmem_metrics_snapshot *s)
{
	char line[1024];
	size_t n = pmem_metrics_snapshot_len(s), at;
	const uint64_t *counts = pmem_metrics_snapshot_counts(s), *diffs = pmem_metrics_snapshot_diffs(s);

	at = (size_t)snprintf(line, sizeof(line), "%c %d %zu", kind, check_aggregate_is_sum(s), n);
	for (size_t i = 0; i < n && at < sizeof(line); i++) {
		at += (size_t)snprintf(line + at, sizeof(line) - at, " %s", pmem_metrics_snapshot_id(s, i));
		for (size_t f = 0; f < NF && at < sizeof(line); f++)
			at += (size_t)snprintf(line + at, sizeof(line) - at, " %" PRIu64,
					       counts[i * NF + f]);
		for (size_t f = 0; f < NF && at < sizeof(line); f++)
			at += (size_t)snprintf(line + at, sizeof(line) - at, " %" PRIu64,
					       diffs[i * NF + f]);
	}
	if (at >= sizeof(line) - 1)
		_exit(4);
	say("%s", line);
}

static int do_setup(struct pmem_metrics_registry *r, const struct scenario *scn)
{
	struct pmem_metrics *d = pmem_metrics_registry_alloc(r, "D");
	struct pmem_metrics *e = pmem_metrics_registry_alloc(r, "E");

	if (!d || !e) {
		say("x 1 set-up alloc: %s", strerror(errno));
		return -1;
	}
	pmem_metrics_add(pmem_metrics_field(d, 0), N0);
	for (size_t f = 0; f < NF; f++)
		pmem_metrics_add(pmem_metrics_field(e, f), E_COUNTS[f]);
	pmem_metrics_release(d);
	pmem_metrics_release(e);
	if (scn->retire_first && pmem_metrics_registry_retire(r, "D", 1) != 0) {
		say("x 1 set-up retire: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* F1 and F2: take; deliver (before publishing) or not; "line"; publish or withdraw; dispose. */
static int do_flush(struct pmem_metrics_registry *r, bool deliver)
{
	struct pmem_metrics_snapshot *s = NULL;

	if (pmem_metrics_registry_snapshot_take_into(r, &s, -1) != 0) {
		say("x 1 take: %s", strerror(errno));
		return -1;
	}
	say_snapshot('t', s);
	if (deliver)
		say_snapshot('d', s);
	pause_here("line");
	if (deliver)
		pmem_metrics_snapshot_publish(&s);
	else
		pmem_metrics_snapshot_withdraw(&s);
	pmem_metrics_snapshot_dispose(&s);
	return 0;
}

static int do_retire(struct pmem_metrics_registry *r)
{
	if (pmem_metrics_registry_retire(r, "D", 1) != 0) {
		say("x 1 retire: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int do_alloc(struct pmem_metrics_registry *r)
{
	struct pmem_metrics *m = pmem_metrics_registry_alloc(r, "D");

	if (!m) {
		say("x 1 alloc: %s", strerror(errno));
		return -1;
	}
	pause_here("inc");
	for (int i = 0; i < A_INCS; i++)
		pmem_metrics_inc(pmem_metrics_field(m, 0));
	pmem_metrics_release(m);
	return 0;
}

/* Flush until a flush has nothing new for D (a few at most); then how many devices are retired. */
static int do_final(struct pmem_metrics_registry *r)
{
	struct pmem_metrics_registry_stats st;

	for (int round = 0; round < 4; round++) {
		struct pmem_metrics_snapshot *s = NULL;
		bool news = false;

		if (pmem_metrics_registry_snapshot_take_into(r, &s, -1) != 0) {
			say("x 1 final take: %s", strerror(errno));
			return -1;
		}
		say_snapshot('t', s);
		say_snapshot('d', s);
		for (size_t i = 0; i < pmem_metrics_snapshot_len(s); i++)
			for (size_t f = 0; f < NF; f++)
				news |= strcmp(pmem_metrics_snapshot_id(s, i), "D") == 0 &&
					pmem_metrics_snapshot_diffs(s)[i * NF + f] != 0;
		pmem_metrics_snapshot_publish(&s);
		pmem_metrics_snapshot_dispose(&s);
		if (!news) {
			if (pmem_metrics_registry_stats(r, &st) != 0) {
				say("x 1 stats: %s", strerror(errno));
				return -1;
			}
			say("z %zu", st.retired);
			return 0;
		}
	}
	say("x 1 D still has counts after 4 final flushes");
	return -1;
}

static _Noreturn void child_main(int who, const struct scenario *scn)
{
	struct pmem_metrics_registry *r;
	int err = 0;

	/*
	 * The library's own waits must never run out while the scheduler holds
	 * a process still (the scheduler bounds every step instead); the final
	 * process runs alone, and waits briefly.
	 */
	setenv("PMEM_METRICS_SEGMENT_WAIT_MS", who == FINAL ? "3000" : "86400000", 1);
	r = pmem_metrics_registry_open_flags(seg, CAPACITY, 0600,
					     who == SETUP ? 0 : PMEM_METRICS_OPEN_EXISTING);
	if (!r) {
		say("x 1 open: %s", strerror(errno));
		_exit(1);
	}
	if (who < NPART)
		pmem_metrics_fault_pause_hook(pause_here);
	if (who != SETUP)
		pause_here("start"); /* the final process too: started with the others, run after them */
	switch (who) {
	case F1:
		err = do_flush(r, scn->f1_delivers);
		break;
	case F2:
		err = do_flush(r, true);
		break;
	case R:
		err = do_retire(r);
		break;
	case A:
		err = do_alloc(r);
		break;
	case FINAL:
		err = do_final(r);
		break;
	default:
		err = do_setup(r, scn);
		break;
	}
	if (err == 0)
		say("x 0");
	_exit(err ? 1 : 0);
}

/* ---- The scheduler ---------------------------------------------------------------- */

struct row {
	char id[8];
	uint64_t count[NF], diff[NF];
};

/* A snapshot a process took ('t') or delivered ('d'), and when. */
struct event {
	char kind;
	int who;
	int step; /* 't': the step its first device was loaded in; 'd': the step it came in */
	bool agg_ok;
	size_t n;
	struct row rows[MAX_ROWS];
};

enum proc_state { P_NONE, P_RUNNING, P_PAUSED, P_DONE, P_KILLED };

struct proc {
	pid_t pid;
	int up, down;
	enum proc_state st;
	char at[32];       /* the point it is paused at */
	unsigned wait_mark; /* at "wait": the progress count then */
	int reached_copy;  /* the step it reached "copy" in: its first device's counters loaded */
	int reached_inc, left_inc; /* A: the steps its allocation returned in, and it counted in */
	bool reached_line; /* a flusher: it reached "line" (its report on its way) */
	int exit_code;
	bool said_exit;
	char msg[160];     /* what it said when it failed */
	char buf[4096];
	size_t len;
};

/* One choice: let a participant go on, or kill it. */
struct choice {
	int who;
	bool kill;
};

/* One step of the schedule, as explored: the choices offered, the one picked, what it did. */
struct frame {
	struct choice opt[2 * NPART];
	int nopt, pick;
	char from[32], to[32];
};

struct run {
	const struct scenario *scn;
	struct proc p[NPROC];
	struct event ev[MAX_EVENTS];
	int nev;
	int step;
	unsigned progress;
	bool killed;
	long retired_left; /* after the final flushes; -1 unknown */
	char why[512];     /* the first failure */
};

static void fail(struct run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct run *run, const char *fmt, ...)
{
	va_list ap;

	if (run->why[0])
		return;
	va_start(ap, fmt);
	vsnprintf(run->why, sizeof(run->why), fmt, ap);
	va_end(ap);
}

static int64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Reap `who` within the deadline (killing it if it has not gone by then): its exit status. */
static int reap(struct proc *p, int64_t deadline)
{
	int status = 0;

	for (long ns = 10000; p->pid > 0; ns = ns < 1000000 ? 2 * ns : ns) {
		pid_t got = waitpid(p->pid, &status, WNOHANG);

		if (got == p->pid || (got < 0 && errno != EINTR))
			break;
		if (got == 0 && now_ms() >= deadline) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, &status, 0); /* a SIGKILL is not refused */
			status = -1;
			break;
		}
		if (got == 0) {
			struct timespec t = {0, ns};

			nanosleep(&t, NULL);
		}
	}
	p->pid = 0;
	close_fd(&p->up);
	close_fd(&p->down);
	return status;
}

static bool parse_snapshot(struct run *run, int who, char *line)
{
	struct event *e;
	char *save = NULL, *tok;
	unsigned long n;

	if (run->nev == MAX_EVENTS)
		return false;
	e = &run->ev[run->nev];
	memset(e, 0, sizeof(*e));
	e->kind = line[0];
	e->who = who;
	e->step = e->kind == 't' && run->p[who].reached_copy >= 0 ? run->p[who].reached_copy : run->step;
	if (who == FINAL)
		e->step = MAX_STEPS + run->nev; /* after every participant's step */
	strtok_r(line, " ", &save);
	if (!(tok = strtok_r(NULL, " ", &save)))
		return false;
	e->agg_ok = strcmp(tok, "1") == 0;
	if (!(tok = strtok_r(NULL, " ", &save)) || (n = strtoul(tok, NULL, 10)) > MAX_ROWS)
		return false;
	e->n = n;
	for (size_t i = 0; i < n; i++) {
		if (!(tok = strtok_r(NULL, " ", &save)) || strlen(tok) >= sizeof(e->rows[i].id))
			return false;
		strcpy(e->rows[i].id, tok);
		for (size_t f = 0; f < 2 * NF; f++) {
			if (!(tok = strtok_r(NULL, " ", &save)))
				return false;
			(f < NF ? e->rows[i].count : e->rows[i].diff)[f % NF] = strtoull(tok, NULL, 10);
		}
	}
	run->nev++;
	return true;
}

/* `src`, cut to fit `size` bytes with its NUL. */
static void copy_str(char *dst, size_t size, const char *src)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* One line from `who`: true when it says it paused. */
static bool handle_line(struct run *run, int who, char *line)
{
	struct proc *p = &run->p[who];

	switch (line[0]) {
	case 'p':
		p->st = P_PAUSED;
		copy_str(p->at, sizeof(p->at), line + 2);
		return true;
	case 't':
	case 'd':
		if (!parse_snapshot(run, who, line))
			fail(run, "%s sent a snapshot the scheduler cannot read", NAMES[who]);
		return false;
	case 'x':
		p->said_exit = true;
		p->exit_code = atoi(line + 2);
		copy_str(p->msg, sizeof(p->msg), line + 2);
		return false;
	case 'z':
		run->retired_left = atol(line + 2);
		return false;
	default:
		fail(run, "%s said \"%s\"", NAMES[who], line);
		return false;
	}
}

/*
 * Read what `who` says until it pauses at a point or exits (then reap it):
 * true if it did either within STEP_MS.
 */
static bool await(struct run *run, int who)
{
	struct proc *p = &run->p[who];
	int64_t deadline = now_ms() + STEP_MS;

	p->st = P_RUNNING;
	for (;;) {
		char *nl;
		struct pollfd pfd = {.fd = p->up, .events = POLLIN};
		int64_t left;
		ssize_t n;

		while ((nl = memchr(p->buf, '\n', p->len)) != NULL) {
			size_t used = (size_t)(nl - p->buf) + 1;
			char line[sizeof(p->buf)];
			bool paused;

			memcpy(line, p->buf, used - 1);
			line[used - 1] = '\0';
			memmove(p->buf, p->buf + used, p->len - used);
			paused = handle_line(run, who, line);
			p->len -= used;
			if (paused)
				return true;
		}
		left = deadline - now_ms();
		if (left <= 0) {
			fail(run, "%s reached no pause point within %d ms (after \"%s\")", NAMES[who],
			     STEP_MS, p->at);
			return false;
		}
		n = poll(&pfd, 1, (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			continue; /* the deadline, above */
		n = read(p->up, p->buf + p->len, sizeof(p->buf) - 1 - p->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0) {
			p->len += (size_t)n;
			if (p->len == sizeof(p->buf) - 1) {
				fail(run, "%s said too much", NAMES[who]);
				return false;
			}
			continue;
		}
		/* End of file: it exited (or died). */
		{
			int status = reap(p, deadline);

			p->st = P_DONE;
			snprintf(p->at, sizeof(p->at), "exit");
			if (!p->said_exit || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
			    p->exit_code != 0) {
				fail(run, "%s failed: %s (status %#x)", NAMES[who],
				     p->said_exit ? p->msg : "died", (unsigned)status);
				return false;
			}
			return true;
		}
	}
}

static bool spawn(struct run *run, int who)
{
	struct proc *p = &run->p[who];
	int up[2], down[2];

	if (pipe(up) != 0)
		return false;
	if (pipe(down) != 0) {
		close(up[0]);
		close(up[1]);
		return false;
	}
	fflush(stdout);
	fflush(stderr);
	p->pid = fork();
	if (p->pid == 0) {
		/* The other processes' pipes are not this one's: their ends would hide an exit. */
		for (int i = 0; i < NPROC; i++) {
			if (i != who) {
				close_fd(&run->p[i].up);
				close_fd(&run->p[i].down);
			}
		}
		close(up[0]);
		close(down[1]);
		up_fd = up[1];
		down_fd = down[0];
		child_main(who, run->scn);
	}
	close(up[1]);
	close(down[0]);
	if (p->pid < 0) {
		close(up[0]);
		close(down[1]);
		p->pid = 0;
		return false;
	}
	p->up = up[0];
	p->down = down[1];
	p->st = P_RUNNING;
	p->reached_copy = p->reached_inc = p->left_inc = -1;
	p->reached_line = false;
	snprintf(p->at, sizeof(p->at), "-");
	return true;
}

/* Whether `who` can be picked: paused, and if at "wait", with progress made since. */
static bool enabled(const struct run *run, int who)
{
	const struct proc *p = &run->p[who];

	if (!(run->scn->parts & (1u << who)) || p->st != P_PAUSED)
		return false;
	return strcmp(p->at, "wait") != 0 || run->progress > p->wait_mark;
}

/*
 * Whether F1 may be killed where it is: anywhere but "start" (no flush yet);
 * or only once it has reached "line" -- before, it runs the same code
 * whether its report is to be delivered or not, so the other run covers it.
 */
static bool killable(const struct run *run)
{
	const struct proc *p = &run->p[F1];

	switch (run->scn->kill_f1) {
	case KILL_ANYWHERE:
		return strcmp(p->at, "start") != 0;
	case KILL_FROM_LINE:
		return p->reached_line;
	default:
		return false;
	}
}

/*
 * The choices at this step, in a fixed order: the participant that ran last
 * first (no preemption), then the others in order; killing F1 right after
 * letting it go on.  A choice that preempts is left out once the bound is
 * spent.
 */
static int options(const struct run *run, int prev, int preempted, struct choice *opt)
{
	bool prev_enabled = prev >= 0 && enabled(run, prev);
	int n = 0;

	for (int k = -1; k < NPART; k++) {
		int who = k < 0 ? prev : k;

		if (who < 0 || (k >= 0 && who == prev) || !enabled(run, who))
			continue;
		if (prev_enabled && who != prev && preempted >= run->scn->bound)
			continue;
		opt[n++] = (struct choice){who, false};
		if (who == F1 && killable(run))
			opt[n++] = (struct choice){who, true};
	}
	return n;
}

static bool same_choices(const struct choice *a, int na, const struct choice *b, int nb)
{
	for (int i = 0; i < na && na == nb; i++)
		if (a[i].who != b[i].who || a[i].kill != b[i].kill)
			return false;
	return na == nb;
}

/* Carry out one choice; false on a failure (recorded in run->why). */
static bool take_step(struct run *run, struct choice c)
{
	struct proc *p = &run->p[c.who];
	bool was_waiting = strcmp(p->at, "wait") == 0;

	if (c.kill) {
		kill(p->pid, SIGKILL);
		reap(p, now_ms() + STEP_MS);
		p->st = P_KILLED;
		snprintf(p->at, sizeof(p->at), "killed");
		run->killed = true;
		run->progress++;
		return true;
	}
	if (strcmp(p->at, "inc") == 0)
		p->left_inc = run->step;
	if (write(p->down, "g", 1) != 1) {
		fail(run, "%s cannot be told to go on: %s", NAMES[c.who], strerror(errno));
		return false;
	}
	if (!await(run, c.who))
		return false;
	if (strcmp(p->at, "inc") == 0)
		p->reached_inc = run->step;
	if (strcmp(p->at, "copy") == 0)
		p->reached_copy = run->step;
	p->reached_line |= strcmp(p->at, "line") == 0;
	if (!(was_waiting && strcmp(p->at, "wait") == 0))
		run->progress++;
	if (strcmp(p->at, "wait") == 0)
		p->wait_mark = run->progress;
	return true;
}

static void teardown(struct run *run)
{
	for (int i = 0; i < NPROC; i++) {
		if (run->p[i].pid > 0) {
			kill(run->p[i].pid, SIGKILL);
			reap(&run->p[i], now_ms() + STEP_MS);
		}
		close_fd(&run->p[i].up);
		close_fd(&run->p[i].down);
	}
	unlink(seg);
}

/* Start a process; a participant or the final process: until it waits at "start". */
static bool start(struct run *run, int who)
{
	if (!spawn(run, who)) {
		fail(run, "cannot start %s: %s", NAMES[who], strerror(errno));
		return false;
	}
	return who == SETUP || await(run, who);
}

/* Let the final process (started and waiting) flush, alone, to its end. */
static bool run_final(struct run *run)
{
	if (write(run->p[FINAL].down, "g", 1) != 1) {
		fail(run, "the final process cannot be told to go on: %s", strerror(errno));
		return false;
	}
	return await(run, FINAL);
}

/* A new file `to` with the bytes of `from`; false with errno. */
static bool copy_file(const char *from, const char *to)
{
	char buf[8192];
	int in = open(from, O_RDONLY | O_CLOEXEC), out;
	ssize_t n = 0;

	if (in < 0)
		return false;
	unlink(to);
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	while (out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			n = -1;
	close(in);
	if (out >= 0 && close(out) != 0)
		n = -1;
	return out >= 0 && n == 0;
}

/* ---- The oracle ------------------------------------------------------------------- */

static const struct row *row_of(const struct event *e, const char *id)
{
	for (size_t i = 0; i < e->n; i++)
		if (strcmp(e->rows[i].id, id) == 0)
			return &e->rows[i];
	return NULL;
}

static bool is_old_d(const struct row *d)
{
	return d && d->count[0] >= N0;
}

static void judge(struct run *run)
{
	const struct proc *a = &run->p[A];
	bool a_counted = (run->scn->parts & (1u << A)) && a->st == P_DONE;
	uint64_t t = N0 + (a_counted ? A_INCS : 0), reported = 0, e_reported[NF] = {0};
	int last_old = -1;
	bool gone = false, spared;

	for (int i = 0; i < run->nev; i++) {
		const struct event *e = &run->ev[i];
		const struct row *d = row_of(e, "D"), *er = row_of(e, "E");

		if (!e->agg_ok)
			fail(run, "a snapshot of %s: the aggregate is not the sum of its rows", NAMES[e->who]);
		if (!er || memcmp(er->count, E_COUNTS, sizeof(E_COUNTS)) != 0)
			fail(run, "a snapshot of %s: E missing or not E's counts", NAMES[e->who]);
		if (d && (d->count[0] > N0 + A_INCS || d->count[1] || d->count[2] || d->count[3] ||
			  d->diff[1] || d->diff[2] || d->diff[3]))
			fail(run, "a snapshot of %s: D holds counts nobody made", NAMES[e->who]);
		if (e->kind == 't') {
			if (is_old_d(d) && gone)
				fail(run, "%s's copy lists the old D again after an earlier copy did not",
				     NAMES[e->who]);
			if (is_old_d(d))
				last_old = e->step > last_old ? e->step : last_old;
			else
				gone = true;
			continue;
		}
		if (d)
			reported += d->diff[0];
		for (size_t f = 0; er && f < NF; f++)
			e_reported[f] += er->diff[f];
	}
	/* A's counts may be lost only through a pointer taken before the final flush's copy, counted after it. */
	spared = a_counted && a->reached_inc < last_old && a->left_inc > last_old;
	if (!run->killed) {
		if (reported != t && !(spared && reported == t - A_INCS))
			fail(run, "D: %" PRIu64 " reported of %" PRIu64 " counted%s", reported, t,
			     spared ? " (A's may be missing: counted after the final flush's copy)" : "");
		if (memcmp(e_reported, E_COUNTS, sizeof(E_COUNTS)) != 0)
			fail(run, "E: not its counts exactly once");
	} else {
		if (reported < t - (spared ? A_INCS : 0) || reported > 2 * t)
			fail(run, "D across a kill: %" PRIu64 " reported of %" PRIu64 " counted", reported, t);
		for (size_t f = 0; f < NF; f++)
			if (e_reported[f] < E_COUNTS[f] || e_reported[f] > 2 * E_COUNTS[f])
				fail(run, "E across a kill: field %zu reported %" PRIu64 " times for %" PRIu64,
				     f, e_reported[f], E_COUNTS[f]);
	}
	if (run->retired_left != 0)
		fail(run, "after the final flushes %ld device(s) are still retired", run->retired_left);
}

/* ---- Exploring ------------------------------------------------------------------- */

static void print_schedule(const struct run *run, const struct frame *stack, int len)
{
	fflush(stdout);
	fprintf(stderr, "# schedule (%s):", run->scn->name);
	for (int d = 0; d < len; d++) {
		struct choice c = stack[d].opt[stack[d].pick];

		fprintf(stderr, "%s %s %s%s%s", d % 6 ? "," : "\n#  ", NAMES[c.who],
			c.kill ? "killed at " : stack[d].from, c.kill ? stack[d].from : ">",
			c.kill ? "" : stack[d].to);
	}
	fprintf(stderr, "\n");
	for (int i = 0; i < run->nev; i++) {
		const struct event *e = &run->ev[i];

		fprintf(stderr, "#  %s %s:", NAMES[e->who], e->kind == 't' ? "took" : "delivered");
		for (size_t k = 0; k < e->n; k++) {
			fprintf(stderr, " %s diffs", e->rows[k].id);
			for (size_t f = 0; f < NF; f++)
				fprintf(stderr, "%c%" PRIu64, f ? '/' : ' ', e->rows[k].diff[f]);
			fprintf(stderr, " counts");
			for (size_t f = 0; f < NF; f++)
				fprintf(stderr, "%c%" PRIu64, f ? '/' : ' ', e->rows[k].count[f]);
			fprintf(stderr, ";");
		}
		fprintf(stderr, "\n");
	}
	fprintf(stderr, "# %s\n", run->why);
}

/*
 * One schedule: replay the first `prefix` choices of `stack`, then take the
 * first choice at each step after it (recorded in `stack`).  Its length in
 * *len; true if the promise held.
 */
static bool run_schedule(struct run *run, struct frame *stack, int prefix, int *len)
{
	const struct scenario *scn = run->scn;
	int prev = -1, preempted = 0, d;

	memset(run->p, 0, sizeof(run->p));
	for (int i = 0; i < NPROC; i++)
		run->p[i].up = run->p[i].down = -1;
	run->nev = 0;
	run->progress = 0;
	run->killed = false;
	run->retired_left = -1;
	run->why[0] = '\0';
	*len = 0;
	if (!copy_file(tmpl, seg)) {
		fail(run, "cannot copy the set-up segment: %s", strerror(errno));
		goto out;
	}
	/* All at once (they open the segment in parallel), then each until its "start". */
	for (int who = 0; who <= FINAL; who++) {
		if ((who == FINAL || (scn->parts & (1u << who))) && !spawn(run, who)) {
			fail(run, "cannot start %s: %s", NAMES[who], strerror(errno));
			goto out;
		}
	}
	for (int who = 0; who <= FINAL; who++)
		if ((who == FINAL || (scn->parts & (1u << who))) && !await(run, who))
			goto out;
	for (d = 0;; d++) {
		struct choice opt[2 * NPART], c;
		int n = options(run, prev, preempted, opt);

		*len = d;
		if (n == 0)
			break;
		if (d == MAX_STEPS) {
			fail(run, "no end after %d steps", MAX_STEPS);
			goto out;
		}
		if (d < prefix) {
			if (!same_choices(stack[d].opt, stack[d].nopt, opt, n)) {
				fail(run, "step %d: replaying offers other choices than the first run did", d);
				goto out;
			}
		} else {
			memcpy(stack[d].opt, opt, (size_t)n * sizeof(opt[0]));
			stack[d].nopt = n;
			stack[d].pick = 0;
		}
		c = stack[d].opt[stack[d].pick];
		snprintf(stack[d].from, sizeof(stack[d].from), "%s", run->p[c.who].at);
		if (prev >= 0 && c.who != prev && enabled(run, prev))
			preempted++;
		run->step = d;
		if (!take_step(run, c)) {
			*len = d + 1;
			snprintf(stack[d].to, sizeof(stack[d].to), "?");
			goto out;
		}
		snprintf(stack[d].to, sizeof(stack[d].to), "%s", run->p[c.who].at);
		prev = c.who;
	}
	for (int who = 0; who < NPART; who++) {
		if (run->p[who].st == P_PAUSED) {
			fail(run, "deadlock: %s waits, and nobody else can go on", NAMES[who]);
			goto out;
		}
	}
	if (run_final(run))
		judge(run);
out:
	teardown(run);
	return run->why[0] == '\0';
}

/* Explore every schedule of `scn` within its bound; the count explored in *count. */
static bool explore(const struct scenario *scn, long *count)
{
	static struct frame stack[MAX_STEPS];
	struct run run = {.scn = scn};
	long killed = 0, failed = 0;
	int prefix = 0;

	*count = 0;
	/* The set-up, once: every schedule starts from a copy of what it made. */
	memset(run.p, 0, sizeof(run.p));
	for (int i = 0; i < NPROC; i++)
		run.p[i].up = run.p[i].down = -1;
	unlink(seg);
	if (!start(&run, SETUP) || !await(&run, SETUP) || rename(seg, tmpl) != 0) {
		fail(&run, "set-up: %s", run.why[0] ? run.why : strerror(errno));
		fprintf(stderr, "# %s\n", run.why);
		teardown(&run);
		return false;
	}
	for (;;) {
		int len, i;
		bool ok = run_schedule(&run, stack, prefix, &len);

		++*count;
		killed += run.killed;
		if (!ok && failed++ == 0)
			print_schedule(&run, stack, len);
		if (!ok && !keep_going)
			break;
		for (i = len - 1; i >= 0 && stack[i].pick + 1 >= stack[i].nopt; i--)
			;
		if (i < 0)
			break;
		stack[i].pick++;
		prefix = i + 1;
	}
	unlink(tmpl);
	printf("# interleave: %s: %ld schedules (%ld with F1 killed), at most %d preemption%s,"
	       " every pause point%s\n",
	       scn->name, *count, killed, scn->bound, scn->bound == 1 ? "" : "s",
	       failed == 0 ? "" : keep_going ? "" : "; stopped at the first failure");
	if (failed && keep_going)
		printf("# interleave: %s: %ld of them failed\n", scn->name, failed);
	return failed == 0;
}

static void test_a_withdrawal_after_a_drain_loses_nothing(void)
{
	/* F1 to its line, F2 all the way, then F1 withdraws. */
	static const struct {
		int who;
		const char *until;
	} script[] = {{F1, "line"}, {F2, "exit"}, {F1, "exit"}};
	const struct scenario scn = {
		.name = "a withdrawal after another flush drained D",
		.parts = 1u << F1 | 1u << F2,
		.retire_first = true,
		.bound = 0,
	};
	struct frame trace[MAX_STEPS];
	struct run run = {.scn = &scn};
	int len = 0;

	memset(run.p, 0, sizeof(run.p));
	for (int i = 0; i < NPROC; i++)
		run.p[i].up = run.p[i].down = -1;
	run.retired_left = -1;
	unlink(seg);
	if (!start(&run, SETUP) || !await(&run, SETUP))
		goto out;
	for (int who = F1; who <= F2; who++)
		if (!start(&run, who))
			goto out;
	if (!start(&run, FINAL))
		goto out;
	for (size_t k = 0; k < sizeof(script) / sizeof(script[0]); k++) {
		struct proc *p = &run.p[script[k].who];

		while (p->st == P_PAUSED && strcmp(p->at, script[k].until) != 0 && len < MAX_STEPS) {
			struct frame *f = &trace[len];

			f->opt[0] = (struct choice){script[k].who, false};
			f->nopt = 1;
			snprintf(f->from, sizeof(f->from), "%s", p->at);
			run.step = len++;
			if (!take_step(&run, f->opt[0]))
				goto out;
			snprintf(f->to, sizeof(f->to), "%s", p->at);
		}
	}
	if (run_final(&run))
		judge(&run);
out:
	teardown(&run);
	if (run.why[0])
		print_schedule(&run, trace, len);
	CHECK(run.why[0] == '\0');
}

static void test_every_interleaving_when_the_first_flush_fails(void)
{
	const struct scenario scn = {
		.name = "F1 withdraws",
		.parts = 1u << F1 | 1u << F2 | 1u << R | 1u << A,
		.f1_delivers = false,
		.kill_f1 = KILL_ANYWHERE,
		.bound = bound,
	};
	long n;

	CHECK(explore(&scn, &n));
}

static void test_every_interleaving_when_both_flushes_deliver(void)
{
	const struct scenario scn = {
		.name = "F1 delivers",
		.parts = 1u << F1 | 1u << F2 | 1u << R | 1u << A,
		.f1_delivers = true,
		.kill_f1 = KILL_FROM_LINE,
		.bound = bound,
	};
	long n;

	CHECK(explore(&scn, &n));
}

int main(int argc, char **argv)
{
	const char *tmp = getenv("TMPDIR");
	struct stat st;
	char lock[sizeof(seg) + 8];

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-k") == 0)
			keep_going = true;
		else
			bound = atoi(argv[i]);
	}
	if (!tmp || !*tmp)
		tmp = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
	snprintf(dir, sizeof(dir), "%s/pmem-interleave-XXXXXX", tmp);
	if (!mkdtemp(dir))
		return 2;
	snprintf(seg, sizeof(seg), "%s/seg", dir);
	snprintf(tmpl, sizeof(tmpl), "%s/set-up", dir);
	signal(SIGPIPE, SIG_IGN); /* a child gone: write() says EPIPE */
	RUN(test_a_withdrawal_after_a_drain_loses_nothing);
	RUN(test_every_interleaving_when_the_first_flush_fails);
	RUN(test_every_interleaving_when_both_flushes_deliver);
	unlink(seg);
	snprintf(lock, sizeof(lock), "%s.lock", seg); /* the segment's lock file */
	unlink(lock);
	rmdir(dir);
	return check_summary();
}
