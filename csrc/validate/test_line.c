/*
 * test_line.c - pmem_metrics_line_write() and pmem_metrics_line_cut(): whole
 * lines, a pipe whose reader left, partial writes, and cuts with another
 * writer on the same file.
 */
#define _GNU_SOURCE /* pipe2, sigpending, flock, setrlimit with -std=c11 */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static const char LINE[] = "{\"utc_timestamp_ms\":1,\"pmem\":{\"activate_fails\":1}}\n";
#define LINE_LEN (sizeof(LINE) - 1)

static char dir[] = "/tmp/test_line.XXXXXX";
static char path[64];

/* A new empty file holding `text`; an O_APPEND descriptor (with `extra` flags) to it. */
static int fresh(const char *text, int extra)
{
	int fd;

	unlink(path);
	fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | extra, 0600);
	if (fd >= 0 && text && write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		CHECK(!"setup write");
	return fd;
}

/* Whether the file holds exactly `want`. */
static bool holds(const char *want)
{
	char buf[1024];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf));
	close(fd);
	return n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0;
}

static void test_whole_line_to_a_regular_file(void)
{
	size_t sent = 0;
	int64_t start = -1;
	int fd = fresh("earlier\n", 0);

	CHECK(pmem_metrics_line_write(fd, LINE, LINE_LEN, &sent, &start) == (long)LINE_LEN);
	CHECK(sent == LINE_LEN);
	CHECK(start == 8);
	CHECK(holds("earlier\n{\"utc_timestamp_ms\":1,\"pmem\":{\"activate_fails\":1}}\n"));
	close(fd);
}

static void test_a_file_ending_mid_line_gets_the_marker_first(void)
{
	size_t sent = 0;
	int64_t start = -1;
	int fd = fresh("{\"frag", 0);

	CHECK(pmem_metrics_line_write(fd, "{}\n", 3, &sent, &start) == 3);
	CHECK(sent == 3 && start == 8); /* the marker is not part of the line */
	CHECK(holds("{\"frag\x18\n{}\n"));
	/* A line that starts with the marker already gets no second one. */
	close(fd);
	fd = fresh("{\"frag", 0);
	sent = 0;
	start = -1;
	CHECK(pmem_metrics_line_write(fd, "\x18\n{}\n", 5, &sent, &start) == 5);
	CHECK(holds("{\"frag\x18\n{}\n"));
	close(fd);
	/* Opened for writing only: read through /proc/self/fd. */
	close(fresh("{\"frag", 0));
	fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	sent = 0;
	start = -1;
	CHECK(pmem_metrics_line_write(fd, "{}\n", 3, &sent, &start) == 3);
	CHECK(holds("{\"frag\x18\n{}\n"));
	close(fd);
}

static void test_a_pipe_whose_reader_left(void)
{
	struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
	sigset_t pending;
	size_t sent = 0;
	int64_t start = -1;
	int p[2];

	sigaction(SIGPIPE, &dfl, &old); /* SIGPIPE would kill us */
	CHECK(pipe2(p, O_CLOEXEC) == 0);
	close(p[0]);
	errno = 0;
	CHECK(pmem_metrics_line_write(p[1], LINE, LINE_LEN, &sent, &start) == -1);
	CHECK(errno == EPIPE);
	CHECK(sent == 0 && start == -1);
	sigemptyset(&pending);
	CHECK(sigpending(&pending) == 0 && !sigismember(&pending, SIGPIPE));
	close(p[1]);
	sigaction(SIGPIPE, &old, NULL);
}

static void test_a_pipe_takes_part_of_a_line(void)
{
	size_t sent = 0;
	int64_t start = -1;
	char buf[64];
	int p[2];

	CHECK(pipe2(p, O_CLOEXEC) == 0);
	CHECK(pmem_metrics_line_write(p[1], LINE, 10, &sent, &start) == 10);
	CHECK(pmem_metrics_line_write(p[1], LINE + sent, LINE_LEN - sent, &sent, &start) ==
	      (long)(LINE_LEN - 10));
	CHECK(sent == LINE_LEN && start == -1); /* a pipe has no offset */
	CHECK(read(p[0], buf, sizeof(buf)) == (ssize_t)LINE_LEN && !memcmp(buf, LINE, LINE_LEN));
	/* Nothing to cut on a pipe. */
	CHECK(pmem_metrics_line_cut(p[1], start, &sent) == 0 && sent == LINE_LEN);
	close(p[0]);
	close(p[1]);
}

/* A file size limit lets `room` bytes of LINE out: sent counts them, the rest fails with EFBIG. */
static void partial(int fd, off_t room, size_t *sent, int64_t *start)
{
	struct rlimit old, lim;
	struct stat st;

	fstat(fd, &st);
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = (rlim_t)(st.st_size + room);
	setrlimit(RLIMIT_FSIZE, &lim);
	errno = 0;
	CHECK(pmem_metrics_line_write(fd, LINE, LINE_LEN, sent, start) == -1);
	CHECK(errno == EFBIG);
	setrlimit(RLIMIT_FSIZE, &old);
}

static void test_partial_write_then_cut(void)
{
	size_t sent = 0;
	int64_t start = -1;
	int fd = fresh("earlier\n", 0);

	partial(fd, 20, &sent, &start);
	CHECK(sent == 20 && start == 8);
	CHECK(pmem_metrics_line_cut(fd, start, &sent) == 1);
	CHECK(sent == 0); /* nothing of the line is left */
	CHECK(holds("earlier\n"));
	CHECK(pmem_metrics_line_cut(fd, start, &sent) == 0); /* again: nothing to do */
	close(fd);
}

static void test_no_cut_after_another_writers_line(void)
{
	size_t sent = 0, other_sent = 0;
	int64_t start = -1, other_start = -1;
	int fd = fresh("earlier\n", 0), other = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);

	partial(fd, 20, &sent, &start);
	CHECK(sent == 20);
	/* Another writer appends: it closes the fragment off first. */
	CHECK(pmem_metrics_line_write(other, "{}\n", 3, &other_sent, &other_start) == 3);
	CHECK(other_start == 8 + 20 + 2);
	CHECK(pmem_metrics_line_cut(fd, start, &sent) == 0);
	CHECK(sent == 20); /* the fragment stays */
	{
		char want[128];

		snprintf(want, sizeof(want), "earlier\n%.20s\x18\n{}\n", LINE);
		CHECK(holds(want));
	}
	close(other);
	close(fd);
}

static void test_a_writer_holding_the_lock(void)
{
	size_t sent = 0;
	int64_t start = -1;
	int fd = fresh("earlier\n", 0), holder = open(path, O_RDONLY | O_CLOEXEC);

	partial(fd, 20, &sent, &start);
	CHECK(flock(holder, LOCK_EX) == 0);
	CHECK(pmem_metrics_line_cut(fd, start, &sent) == 0 && sent == 20); /* never waits */
	errno = 0;
	CHECK(pmem_metrics_line_write(fd, "{}\n", 3, &sent, &start) == -1 && errno == EAGAIN);
	CHECK(sent == 20);
	CHECK(flock(holder, LOCK_UN) == 0);
	CHECK(pmem_metrics_line_cut(fd, start, &sent) == 1 && sent == 0);
	CHECK(holds("earlier\n"));
	close(holder);
	close(fd);
}

static void test_cut_without_o_append_moves_the_position_back(void)
{
	size_t sent = 0;
	int64_t start = -1;
	int fd;

	close(fresh("earlier\n", 0));
	fd = open(path, O_WRONLY | O_CLOEXEC);
	CHECK(lseek(fd, 0, SEEK_END) == 8);
	partial(fd, 20, &sent, &start);
	CHECK(sent == 20 && start == 8);
	CHECK(pmem_metrics_line_cut(fd, start, &sent) == 1);
	CHECK(lseek(fd, 0, SEEK_CUR) == 8);
	sent = 0;
	start = -1;
	CHECK(pmem_metrics_line_write(fd, "{}\n", 3, &sent, &start) == 3);
	CHECK(holds("earlier\n{}\n"));
	close(fd);
}

static void test_bad_arguments(void)
{
	size_t sent = 0;
	int64_t start = -1;

	errno = 0;
	CHECK(pmem_metrics_line_write(-1, LINE, LINE_LEN, &sent, &start) == -1 && errno == EBADF);
	errno = 0;
	CHECK(pmem_metrics_line_write(1, LINE, LINE_LEN, NULL, &start) == -1 && errno == EINVAL);
	errno = 0;
	CHECK(pmem_metrics_line_cut(1, 0, NULL) == -1 && errno == EINVAL);
}

int main(void)
{
	signal(SIGXFSZ, SIG_IGN); /* a write past RLIMIT_FSIZE: EFBIG, not death */
	if (!mkdtemp(dir))
		return 1;
	snprintf(path, sizeof(path), "%s/m.json", dir);
	RUN(test_whole_line_to_a_regular_file);
	RUN(test_a_file_ending_mid_line_gets_the_marker_first);
	RUN(test_a_pipe_whose_reader_left);
	RUN(test_a_pipe_takes_part_of_a_line);
	RUN(test_partial_write_then_cut);
	RUN(test_no_cut_after_another_writers_line);
	RUN(test_a_writer_holding_the_lock);
	RUN(test_cut_without_o_append_moves_the_position_back);
	RUN(test_bad_arguments);
	unlink(path);
	rmdir(dir);
	return check_summary();
}
